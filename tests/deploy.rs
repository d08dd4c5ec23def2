//! The files of `deploy/`, each through the tool that knows its format:
//! the alerting rules through `promtool check rules` and their unit tests
//! through `promtool test rules` (Debian's `prometheus`), the scrape
//! configuration through `promtool check config`, the systemd units
//! through `systemd-analyze verify` and `systemd-analyze security`, the
//! Kubernetes manifests through `kubernetes-validate --strict` (PyPI), and
//! the dashboard and the runbook links against the README. Whether
//! Prometheus gets data for every expression is tests/production.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tool;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Runs a command; panics with what it said unless it exits 0.
fn passes(command: &mut Command) -> String {
    let output = command.output().expect("the tool starts");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{command:?}: {}\n{said}",
        output.status
    );
    said
}

/// The names of the alerts in the rules file, in order.
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(deploy("prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_rules_are_valid_and_every_alert_is_unit_tested() {
    let promtool = tool(&["promtool"], "prometheus");
    let said = passes(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(deploy("prometheus/alerts.yml")),
    );
    let names = alert_names();
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{said}"
    );
    passes(
        Command::new(&promtool)
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(deploy("prometheus")),
    );
    // Each alert is tested firing, and not firing.
    let tests = std::fs::read_to_string(deploy("prometheus/alerts.test.yml")).unwrap();
    for name in &names {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{name}: no test where it fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name}: no test where it stays quiet"
        );
    }
    // The scrape configuration loads the same rules.
    passes(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
}

#[test]
fn every_alert_links_to_its_runbook_entry_in_the_readme() {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let names = alert_names();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let anchor = name.to_lowercase();
        assert!(
            rules.contains(&format!(
                "runbook_url: https://docs.example.com/blobcheck/README.md#{anchor}\n"
            )),
            "{name} has no runbook_url to #{anchor}"
        );
        // GitHub-style anchors: a heading `#### BlobcheckX` is `#blobcheckx`.
        assert!(
            readme
                .lines()
                .any(|l| l.trim_start_matches('#').trim() == name && l.starts_with("####")),
            "README.md has no runbook heading `#### {name}`"
        );
    }
}

/// The units as installed, with the binary this test run built in place of
/// /usr/bin/blobcheck (verify checks that the command exists).
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let mut units = Vec::new();
    for name in [
        "blobcheck-watch.service",
        "blobcheck-check.service",
        "blobcheck-check.timer",
    ] {
        let text = std::fs::read_to_string(deploy("systemd").join(name))
            .unwrap()
            .replace("/usr/bin/blobcheck", env!("CARGO_BIN_EXE_blobcheck"));
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    units
}

#[test]
fn the_systemd_units_verify_and_are_locked_down() {
    let analyze = tool(&["systemd-analyze"], "systemd");
    let dir = tempfile::tempdir().unwrap();
    let units = units_in(dir.path());
    // The man pages are checked where the package installs them
    // (deploy/debian/check-package).
    let said = passes(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .args(&units),
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    for service in &units[..2] {
        // Exposure 0 is locked down, 10 not at all (the threshold counts
        // tenths): up to 2 is what systemd calls "OK".
        let said = passes(
            Command::new(&analyze)
                .args(["security", "--offline=yes", "--threshold=20"])
                .arg(service),
        );
        assert!(said.contains("Overall exposure level"), "{said}");
    }
    let watch = std::fs::read_to_string(deploy("systemd/blobcheck-watch.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=blobcheck-watch",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LoadCredential=global:",
    ] {
        assert!(watch.contains(line), "the watch unit lacks {line}");
    }
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let validate = tool(
        &["kubernetes-validate"],
        "kubernetes-validate (pip install kubernetes-validate)",
    );
    let manifests: Vec<PathBuf> = ["config.yaml", "watch.yaml", "check-cronjob.yaml"]
        .iter()
        .map(|name| deploy("kubernetes").join(name))
        .collect();
    let said = passes(Command::new(validate).args(["--strict"]).args(&manifests));
    for kind in [
        "configmap/blobcheck-config",
        "secret/blobcheck-passwords",
        "deployment/blobcheck-watch",
        "service/blobcheck-watch",
        "persistentvolumeclaim/blobcheck-watch-state",
        "cronjob/blobcheck-check",
        "persistentvolumeclaim/blobcheck-findings",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}")),
            "{kind}: {said}"
        );
    }
    assert!(!said.contains("WARN"), "{said}");
    let watch = std::fs::read_to_string(deploy("kubernetes/watch.yaml")).unwrap();
    for line in [
        "replicas: 1",
        "type: Recreate",
        "path: /healthz",
        "path: /livez",
    ] {
        assert!(watch.contains(line), "watch.yaml lacks {line}");
    }
    let cron = std::fs::read_to_string(deploy("kubernetes/check-cronjob.yaml")).unwrap();
    for line in [
        "concurrencyPolicy: Forbid",
        "completionMode: Indexed",
        "--metrics-push",
    ] {
        assert!(cron.contains(line), "check-cronjob.yaml lacks {line}");
    }
}

/// The configuration the manifests carry is one blobcheck accepts: taken
/// out of the ConfigMap and loaded as `check` and `watch` load it (the
/// servers it names do not exist here; the password files it names are
/// made first).
#[test]
fn the_configuration_in_the_configmap_parses() {
    let manifest = std::fs::read_to_string(deploy("kubernetes/config.yaml")).unwrap();
    let start = manifest.find("blobcheck.toml: |\n").unwrap() + "blobcheck.toml: |\n".len();
    let text: String = manifest[start..]
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("[discovery]"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace(
        "/run/secrets/blobcheck/",
        &format!("{}/", dir.path().display()),
    );
    std::fs::write(dir.path().join("global"), "pw\n").unwrap();
    std::fs::write(dir.path().join("shards"), "pw\n").unwrap();
    let config = common::write_temp(dir.path(), "blobcheck.toml", &text);
    blobcheck::config::Config::load(&config).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_in_every_panel() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("dashboard.json")).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "blobcheck");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut expressions = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    // Both modes: findings, freshness and progress of the full check;
    // findings, latency, lag, backlog and streams of the watch.
    for series in [
        "blobcheck_findings_by_severity",
        "blobcheck_last_success_timestamp_seconds",
        "blobcheck_check_progress_ratio",
        "blobcheck_duration_seconds",
        "blobcheck_watch_findings_total",
        "blobcheck_watch_detection_latency_seconds_bucket",
        "blobcheck_watch_behind_seconds",
        "blobcheck_watch_waiting_ids",
        "blobcheck_watch_stream_up",
    ] {
        assert!(
            expressions.iter().any(|e| e.contains(series)),
            "no panel reads {series}"
        );
    }
    // Every expression parses as PromQL (promtool's parser).
    let promtool = tool(&["promtool"], "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let rules: String = expressions
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:panel{i}\n        expr: '{}'\n",
                e.replace("$__rate_interval", "1m").replace('\'', "''")
            )
        })
        .collect();
    let file = common::write_temp(
        dir.path(),
        "dashboard-rules.yml",
        &format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    );
    passes(Command::new(promtool).args(["check", "rules"]).arg(file));
}
