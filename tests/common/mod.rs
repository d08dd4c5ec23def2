//! Shared by the integration tests: one pair of real MariaDB servers per test
//! binary (global and shard, as in production), loaded with the fixtures, and
//! helpers to run a check and read its findings.
#![allow(dead_code)]

pub mod config_text;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use blobcheck::check::{self, CheckOptions, Scope};
use blobcheck::config::Config;
use blobcheck::demo::FixtureServers;
use blobcheck::plan::IdRange;
use blobcheck::report::{Format, Reporter, Summary};
use blobcheck::scan::ScanOptions;

/// The fixture servers of this test binary, started on first use. They are
/// never dropped: the sandbox kills them when the test process exits.
pub fn servers() -> &'static FixtureServers {
    static SERVERS: OnceLock<FixtureServers> = OnceLock::new();
    SERVERS.get_or_init(|| FixtureServers::start().expect("start the fixture servers"))
}

/// A `Write` whose bytes can be read after the reporter that owned it is gone.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A finding as the JSON output gives it, reduced to what must be exact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exact {
    pub kind: String,
    pub blob_id: u64,
    pub stored: Option<u64>,
    pub actual: u64,
    /// (column label, count), sorted, nonzero only.
    pub references: Vec<(String, u64)>,
}

pub fn parse_jsonl(text: &str) -> Vec<Exact> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let mut references: Vec<(String, u64)> = v["references"]
                .as_object()
                .expect("references object")
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().expect("exact count")))
                .collect();
            references.sort();
            Exact {
                kind: v["kind"].as_str().unwrap().to_owned(),
                blob_id: v["blob_id"].as_u64().expect("blob_id is an exact u64"),
                stored: v["stored"].as_u64(),
                actual: v["actual"].as_u64().unwrap(),
                references,
            }
        })
        .collect()
}

pub fn expected_fixture_findings() -> Vec<Exact> {
    let mut expected = parse_jsonl(blobcheck::demo::EXPECTED_FINDINGS);
    expected.sort();
    expected
}

/// Runs a whole check in process with JSON output; returns the findings
/// (sorted) and the summary.
pub async fn check_json(
    config: &Config,
    range: IdRange,
    chunk_size: u64,
    jobs: usize,
) -> (Vec<Exact>, Summary) {
    check_scope(config, Scope::Range(range), chunk_size, jobs).await
}

/// `check_json` with `--method sketch` at `target_rows` rows per sketch.
pub async fn check_sketch(
    config: &Config,
    target_rows: u64,
    chunk_size: u64,
    jobs: usize,
) -> (Vec<Exact>, Summary) {
    let options = CheckOptions::new(ScanOptions {
        method: blobcheck::scan::Method::Sketch { target_rows },
        ..ScanOptions::fixed(chunk_size, jobs)
    });
    check_in_order(config, &options).await
}

/// `check_json` for any scope.
pub async fn check_scope(
    config: &Config,
    scope: Scope,
    chunk_size: u64,
    jobs: usize,
) -> (Vec<Exact>, Summary) {
    let options = CheckOptions {
        scope,
        ..CheckOptions::new(ScanOptions::fixed(chunk_size, jobs))
    };
    check_in_order(config, &options).await
}

/// Runs a whole check in process with any options, asserts that the
/// findings come in ascending id order, once each, and returns them sorted,
/// with the summary.
pub async fn check_in_order(config: &Config, options: &CheckOptions) -> (Vec<Exact>, Summary) {
    let (text, summary) = check_jsonl(config, options).await;
    let mut findings = parse_jsonl(&text);
    assert!(
        findings.windows(2).all(|w| w[0].blob_id < w[1].blob_id),
        "findings come in ascending id order, once each"
    );
    findings.sort();
    (findings, summary)
}

/// Runs a whole check in process with any options; returns the JSON lines
/// as written and the summary.
pub async fn check_jsonl(config: &Config, options: &CheckOptions) -> (String, Summary) {
    let out = Captured::default();
    let labels = config.references.iter().map(|r| r.label.clone()).collect();
    let reporter = Reporter::new(Format::Json, Box::new(out.clone()), labels);
    let summary = check::run(config, options, reporter)
        .await
        .expect("the check runs");
    (out.text(), summary)
}

/// The example configuration pointed at this binary's fixture servers.
pub async fn fixture_config() -> Config {
    tokio::task::spawn_blocking(|| servers().config())
        .await
        .unwrap()
        .unwrap()
}

/// Runs the blobcheck binary; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_blobcheck"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run blobcheck");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes `text` to a file in a fresh temporary directory.
pub fn write_temp(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes the example configuration, pointed at `servers` with the
/// SELECT-only account (password in the URL), to `dir/proton.toml`.
pub fn write_fixture_config(servers: &FixtureServers, dir: &Path) -> std::path::PathBuf {
    let user = blobcheck::demo::CHECKER_USER;
    let password = blobcheck::demo::CHECKER_PASSWORD;
    let text = blobcheck::demo::EXAMPLE_CONFIG
        .replace(
            "url = \"mysql://blobcheck@127.0.0.1:3306\"",
            &format!("url = \"{}\"", servers.global.url_for(user, password)),
        )
        .replace(
            "url = \"mysql://blobcheck@127.0.0.1:3307\"",
            &format!("url = \"{}\"", servers.shard.url_for(user, password)),
        )
        .replace("password_env = \"BLOBCHECK_GLOBAL_PASSWORD\"\n", "")
        .replace("password_env = \"BLOBCHECK_SHARD_PASSWORD\"\n", "");
    write_temp(dir, "proton.toml", &text)
}

/// Kills `child`, a `blobcheck check --checkpoint`, once its checkpoint shows
/// the scan past id `past` with a finding saved: mid-run, with something to
/// resume. Panics if the run ends first or that takes longer than `within`.
pub fn kill_once_checkpointed(
    child: &mut std::process::Child,
    checkpoint: &Path,
    past: u64,
    within: std::time::Duration,
) {
    wait_until_checkpointed(child, checkpoint, past, within);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until the checkpoint of `child`, a `blobcheck check --checkpoint`,
/// shows the scan past id `past` with a finding saved. Panics if the run
/// ends first or that takes longer than `within`.
pub fn wait_until_checkpointed(
    child: &mut std::process::Child,
    checkpoint: &Path,
    past: u64,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!(
                "the run ended before it could be killed: {status:?} {stderr}; checkpoint {:?}",
                std::fs::read_to_string(checkpoint)
                    .map(|t| t.chars().take(400).collect::<String>())
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint past id {past} with findings within {within:?}"
        );
        if let Ok(text) = std::fs::read_to_string(checkpoint)
            && let Ok(saved) = serde_json::from_str::<serde_json::Value>(&text)
            && saved["next_start"].as_u64().is_some_and(|n| n > past)
            && saved["findings"].as_array().is_some_and(|f| !f.is_empty())
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sorted findings of a JSON-lines file.
pub fn read_findings(path: &Path) -> Vec<Exact> {
    let mut findings = parse_jsonl(&std::fs::read_to_string(path).unwrap_or_default());
    findings.sort();
    findings
}

/// A tool the tests need, from PATH or where Debian puts it; a missing one
/// fails the test with the package to install (`.ci/run` installs them).
pub fn tool(names: &[&str], package: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let directories = std::env::split_paths(&path).chain([
        std::path::PathBuf::from("/usr/bin"),
        std::path::PathBuf::from("/usr/sbin"),
    ]);
    for directory in directories {
        for name in names {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found: install `{package}` (.ci/run does)",
        names.join(" or ")
    );
}
