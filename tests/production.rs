//! What an SRE installs, with real parts: the watch speaking systemd's
//! notification protocol and reading its password as a systemd credential;
//! a real Prometheus (Debian's `prometheus`) scraping a real `watch` and a
//! real Pushgateway (`prometheus-pushgateway`) fed by real `check` runs,
//! loaded with `deploy/prometheus/alerts.yml`, in which every expression of
//! `deploy/dashboard.json` returns data, every rule evaluates, and the
//! page-worthy alerts fire on injected critical faults. The files of
//! `deploy/` themselves are validated in tests/deploy.rs.

mod churn_support;
mod common;
mod watch_support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use churn_support::{Dataset, blocking};
use watch_support::{
    FAULT_BASE, Faults, free_port, get, loaded_pair, wait_found, wait_ok, watch_command,
};

/// A process the test started; killed when dropped, its stderr kept in a
/// file for the failure messages.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts `binary` with `args(port)` on a free port until `ready_path`
    /// answers 200 (another process may take the port first: then another).
    fn start(
        name: &'static str,
        binary: &Path,
        dir: &Path,
        args: impl Fn(u16) -> Vec<String>,
        ready_path: &str,
    ) -> Daemon {
        let mut failures = Vec::new();
        for attempt in 0..4 {
            let port = free_port();
            let log = dir.join(format!("{name}-{attempt}.log"));
            let child = Command::new(binary)
                .args(args(port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut daemon = Daemon { child, port, log };
            if wait_ok(
                &format!("http://127.0.0.1:{port}{ready_path}"),
                Duration::from_secs(30),
            ) {
                return daemon;
            }
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            failures.push(daemon.stderr());
        }
        panic!("{name} did not start: {failures:?}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages sent to the notification socket, read as they come, as
/// systemd does: a socket left unread fills up (10 datagrams) and the
/// sender's next notification blocks.
struct Notifications(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notifications {
    fn listen(socket: UnixDatagram) -> Notifications {
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let received = std::sync::Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                received.lock().unwrap().push(message);
            }
        });
        Notifications(messages)
    }

    fn so_far(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Under systemd: `READY=1` once it follows both servers, `WATCHDOG=1` at
/// half the watchdog interval while it runs, `STATUS=` lines, and
/// `STOPPING=1` on SIGTERM, then exit 0. Its passwords come from
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`) through
/// `password_credential`; without that directory it stops at once with
/// one line. `/livez` answers while the run loop turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_speaks_systemds_protocol_and_reads_its_credentials() {
    let data = Dataset::generate("sdnotify", 3, 500, 0, 20, false);
    let account =
        "CREATE USER 'watcher'@'%' IDENTIFIED BY 'w-pass'; GRANT ALL ON *.* TO 'watcher'@'%';";
    let (global, shard) = loaded_pair(
        "sdnotify",
        data.global_sql() + account,
        data.shard_sql() + account,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("global"), "w-pass\n").unwrap();
    std::fs::write(credentials.join("shards"), "w-pass").unwrap();
    let text = data
        .config_text(
            &global.url_for("watcher", ""),
            &shard.url_for("watcher", ""),
        )
        .replacen(
            "[servers.shard]",
            "password_credential = \"global\"\n[servers.shard]",
            1,
        )
        .replacen("[blobs]", "password_credential = \"shards\"\n[blobs]", 1);
    let config = common::write_temp(dir.path(), "watch.toml", &text);

    // Without the directory systemd makes: one line, exit 2, at once.
    let port = free_port();
    let output = watch_command(&config, dir.path(), port)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("password_credential `global`: CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );

    let socket_path = dir.path().join("notify.sock");
    let notifications = Notifications::listen(UnixDatagram::bind(&socket_path).unwrap());
    let port = free_port();
    let log = dir.path().join("watch.log");
    let mut watch = watch_command(&config, dir.path(), port)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("NOTIFY_SOCKET", &socket_path)
        // A 4-second watchdog: a ping every second.
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("WATCHDOG_PID")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = notifications.so_far();
    while !messages.iter().any(|m| m.contains("READY=1")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        messages = notifications.so_far();
    }
    let watch_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap_or_else(|| {
            panic!(
                "no READY=1 in {messages:?}; the watch logged:\n{}",
                watch_log()
            )
        })
        .clone();
    assert!(ready.contains("STATUS=following 2 servers"), "{ready:?}");
    // Ready means followed: the streams are up moments later.
    assert!(
        blocking(move || wait_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(20)
        ))
        .await,
        "{}",
        watch_log()
    );
    let (status, body) = blocking(move || get(&format!("http://127.0.0.1:{port}/livez")))
        .await
        .expect("/livez answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // It works with those passwords: a fault is found.
    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    faults.inject(2).await;
    let expected = faults.expected.clone();
    let found = wait_found(dir.path(), &expected, Duration::from_secs(20)).await;
    assert_eq!(
        watch_support::bare(&found),
        watch_support::bare(&faults.expected),
        "{}",
        watch_log()
    );

    // Pings while it runs: 4 to 6 in the next 5 seconds at one a second.
    let pings = |messages: &[String]| messages.iter().filter(|m| *m == "WATCHDOG=1\n").count();
    let before = pings(&notifications.so_far());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let messages = notifications.so_far();
    let sent = pings(&messages) - before;
    assert!(
        (4..=6).contains(&sent),
        "{sent} watchdog pings in 5 s with WATCHDOG_USEC=4000000: {messages:?}"
    );
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = blocking(move || watch.wait().unwrap()).await;
    assert_eq!(status.code(), Some(0), "{}", watch_log());
    // The reader may still be taking the last one in.
    std::thread::sleep(Duration::from_millis(200));
    let messages = notifications.so_far();
    let last = messages.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("STOPPING=1\n") && last.contains("STATUS=stopping"),
        "the last message is {last:?}: {messages:?}"
    );
    faults.close().await;
}

/// A dashboard expression with Grafana's variables replaced.
fn as_query(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
}

/// Prometheus's answer to an instant query: its `data.result`.
fn query(prometheus: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let url = format!("{prometheus}/api/v1/query?query={}", percent_encode(expr));
    let (status, body) = get(&url).ok_or("Prometheus does not answer")?;
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || answer["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// The alerts Prometheus holds, pending or firing: (name, state, labels).
fn alerts(prometheus: &str) -> Vec<(String, String, serde_json::Value)> {
    let Some((200, body)) = get(&format!("{prometheus}/api/v1/alerts")) else {
        return Vec::new();
    };
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                a["state"].as_str().unwrap_or("").to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

/// The whole monitoring path: a watch scraped directly and two partitions
/// of a check pushed to a Pushgateway (the second failing on its next run,
/// which keeps its last success's series), all in a real Prometheus with
/// the shipped scrape jobs and rules. Every dashboard expression returns
/// data, the detection latency is a real number, every rule evaluates
/// without error and reads series that exist, the page-worthy alerts fire
/// with their labels, and the alerts of a healthy setup do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_watch_and_the_pushed_check_and_pages() {
    let data = Dataset::generate("prom", 9, 2_000, 6, 50, false);
    let (global, shard) = loaded_pair("prom", data.global_sql(), data.shard_sql()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_temp(
        dir.path(),
        "blobcheck.toml",
        &data.config_text(&global.root_url(), &shard.root_url()),
    );

    let pushgateway = {
        let binary = common::tool(
            &["prometheus-pushgateway", "pushgateway"],
            "prometheus-pushgateway",
        );
        let dir = dir.path().to_owned();
        blocking(move || {
            Daemon::start(
                "pushgateway",
                &binary,
                &dir,
                |port| {
                    vec![
                        format!("--web.listen-address=127.0.0.1:{port}"),
                        // Debian's default is a file shared by every
                        // Pushgateway of the machine.
                        format!(
                            "--persistence.file={}",
                            dir.join("pushgateway.data").display()
                        ),
                    ]
                },
                "/-/ready",
            )
        })
        .await
    };
    let watch_port = free_port();
    let mut watch = watch_command(&config, dir.path(), watch_port)
        .stderr(std::fs::File::create(dir.path().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    assert!(
        blocking(move || wait_ok(
            &format!("http://127.0.0.1:{watch_port}/healthz"),
            Duration::from_secs(30)
        ))
        .await,
        "the watch never became healthy"
    );

    // Prometheus with the shipped scrape jobs and rules, pointed at these
    // processes, scraping and evaluating every second.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/prometheus.yml"
    ))
    .unwrap();
    for needle in [
        "127.0.0.1:9187",
        "pushgateway.monitoring.svc:9091",
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
    ] {
        assert!(shipped.contains(needle), "prometheus.yml lacks {needle}");
    }
    let prometheus_config = shipped
        .replace("127.0.0.1:9187", &format!("127.0.0.1:{watch_port}"))
        .replace(
            "pushgateway.monitoring.svc:9091",
            &format!("127.0.0.1:{}", pushgateway.port),
        )
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).unwrap();
    std::fs::write(prometheus_dir.join("prometheus.yml"), prometheus_config).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml"),
        prometheus_dir.join("alerts.yml"),
    )
    .unwrap();
    let prometheus = {
        let binary = common::tool(&["prometheus"], "prometheus");
        let dir = dir.path().to_owned();
        let prometheus_dir = prometheus_dir.clone();
        blocking(move || {
            Daemon::start(
                "prometheus",
                &binary,
                &dir,
                |port| {
                    vec![
                        format!(
                            "--config.file={}",
                            prometheus_dir.join("prometheus.yml").display()
                        ),
                        format!(
                            "--storage.tsdb.path={}",
                            prometheus_dir.join("data").display()
                        ),
                        format!("--web.listen-address=127.0.0.1:{port}"),
                    ]
                },
                "/-/ready",
            )
        })
        .await
    };

    // Faults of every kind while Prometheus watches, critical ones among
    // them; the watch reports each.
    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..6 {
        faults.inject(n).await;
    }
    let expected = faults.expected.clone();
    let found = wait_found(dir.path(), &expected, Duration::from_secs(30)).await;
    assert_eq!(
        watch_support::bare(&found),
        watch_support::bare(&faults.expected)
    );

    // Two partitions of the full check push to the Pushgateway; the
    // second one's next run fails (its server refuses the password).
    let check = |partition: &str, config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_blobcheck"))
            .args(["check", "--config"])
            .arg(config)
            .args(["--partition", partition, "--format", "json", "--output"])
            .arg(
                dir.path()
                    .join(format!("check-{}.jsonl", partition.replace('/', "-"))),
            )
            .args([
                "--settle-delay",
                "0.2",
                "--progress",
                "none",
                "--retry-for",
                "0",
            ])
            .args([
                "--metrics-push",
                &pushgateway.url(),
                "--metrics-job",
                "blobcheck-check",
            ])
            .output()
            .unwrap()
    };
    for partition in ["0/2", "1/2"] {
        let output = check(partition, &config);
        assert_eq!(
            output.status.code(),
            Some(1),
            "check {partition}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let refused = common::write_temp(
        dir.path(),
        "refused.toml",
        &data.config_text(&global.url_for("root", "wrong-password"), &shard.root_url()),
    );
    let output = check("1/2", &refused);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("metrics push"),
        "the push failed: {stderr}"
    );

    // A run whose configuration does not load reports its failure too.
    let broken = common::write_temp(dir.path(), "broken.toml", "[servers.global\n");
    let output = check("1/3", &broken);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The groups as the Pushgateway holds them: 1/2 failed last, its last
    // success's findings and timestamp kept; no run is still running.
    let (_, pushed) = get(&format!("{}/metrics", pushgateway.url())).unwrap();
    let series = |name: &str, partition: &str| -> Option<f64> {
        pushed.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key.starts_with(&format!("{name}{{"))
                && key.contains(&format!("partition=\"{partition}\""))
                && key.contains("job=\"blobcheck-check\""))
            .then(|| value.parse().ok())?
        })
    };
    assert_eq!(
        series("blobcheck_last_run_success", "0/2"),
        Some(1.0),
        "{pushed}"
    );
    assert_eq!(
        series("blobcheck_last_run_success", "1/2"),
        Some(0.0),
        "{pushed}"
    );
    assert!(
        series("blobcheck_last_success_timestamp_seconds", "1/2").is_some(),
        "{pushed}"
    );
    assert!(
        series("blobcheck_findings_by_severity", "1/2").is_some(),
        "{pushed}"
    );
    for partition in ["0/2", "1/2"] {
        assert_eq!(
            series("blobcheck_check_running", partition),
            Some(0.0),
            "{pushed}"
        );
        assert!(series("blobcheck_check_started_timestamp_seconds", partition).is_some());
    }
    assert_eq!(
        series("blobcheck_check_progress_ratio", "0/2"),
        Some(1.0),
        "{pushed}"
    );
    assert_eq!(
        series("blobcheck_last_run_success", "1/3"),
        Some(0.0),
        "{pushed}"
    );
    assert_eq!(
        series("blobcheck_last_success_timestamp_seconds", "1/3"),
        None
    );
    // Both partitions together found every critical fault of the data set
    // and of the fault writer: their counts add up to the findings files.
    let critical_pushed: f64 = ["0/2", "1/2"]
        .iter()
        .map(|p| {
            pushed
                .lines()
                .filter(|l| {
                    l.starts_with("blobcheck_findings_by_severity{")
                        && l.contains(&format!("partition=\"{p}\""))
                        && l.contains("severity=\"critical\"")
                })
                .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
                .sum::<f64>()
        })
        .sum();
    let critical_files = ["0-2", "1-2"]
        .iter()
        .map(|p| {
            std::fs::read_to_string(dir.path().join(format!("check-{p}.jsonl")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"severity\":\"critical\""))
                .count()
        })
        .sum::<usize>();
    assert!(
        critical_files >= 3,
        "the check found {critical_files} critical findings"
    );
    assert_eq!(critical_pushed, critical_files as f64, "{pushed}");

    // One more critical fault, so that the latency histogram moves inside
    // the window the dashboard reads.
    faults.inject(3).await;
    let expected = faults.expected.clone();
    wait_found(dir.path(), &expected, Duration::from_secs(30)).await;

    let prometheus_url = prometheus.url();
    let outcome = blocking(move || -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Every dashboard expression returns data.
        let mut missing = dashboard_expressions();
        while !missing.is_empty() {
            let mut still = Vec::new();
            for (title, expr) in missing {
                match query(&prometheus_url, &as_query(&expr)) {
                    Ok(result) if !result.is_empty() => {}
                    Ok(_) => still.push((title, expr)),
                    Err(e) => return Err(format!("panel {title:?}: {expr}: {e}")),
                }
            }
            missing = still;
            if Instant::now() > deadline {
                return Err(format!("dashboard expressions without data: {missing:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // The latency is a real number: from the commit to the finding.
        let p99 = query(
            &prometheus_url,
            "histogram_quantile(0.99, sum by (le) (rate(blobcheck_watch_detection_latency_seconds_bucket[1m])))",
        )?;
        let value: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
        if !(value > 0.0 && value < 60.0) {
            return Err(format!("p99 detection latency {value}"));
        }
        // The page-worthy alerts fire, with their labels.
        let wanted = [
            ("BlobcheckCriticalFindings", Some("0/2")),
            ("BlobcheckCriticalFindings", Some("1/2")),
            ("BlobcheckFindings", Some("0/2")),
            ("BlobcheckLastRunFailed", Some("1/2")),
            ("BlobcheckWatchCriticalFinding", None),
            ("BlobcheckWatchFindings", None),
        ];
        loop {
            let alerts = alerts(&prometheus_url);
            let absent: Vec<_> = wanted
                .iter()
                .filter(|(name, partition)| {
                    !alerts.iter().any(|(n, state, labels)| {
                        n == name
                            && state == "firing"
                            && partition.is_none_or(|p| labels["partition"] == p)
                            && labels["severity"]
                                == if name.contains("Critical") {
                                    "page"
                                } else {
                                    "ticket"
                                }
                    })
                })
                .collect();
            if absent.is_empty() {
                // A healthy setup's alerts stay quiet: not even pending (an
                // alert with a `for:` is pending as soon as its condition
                // holds).
                for quiet in [
                    "BlobcheckWatchStreamDown",
                    "BlobcheckWatchBehind",
                    "BlobcheckWatchLogGap",
                    "BlobcheckWatchBacklog",
                    "BlobcheckWatchAbsent",
                    "BlobcheckMetricsAbsent",
                    "BlobcheckNotSucceeding",
                ] {
                    if alerts.iter().any(|(n, _, _)| n == quiet) {
                        return Err(format!("{quiet} is pending or firing: {alerts:?}"));
                    }
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("not firing: {absent:?}; firing: {alerts:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Every rule evaluates, and every series it reads exists.
        let (_, body) = get(&format!("{prometheus_url}/api/v1/rules")).unwrap();
        let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut count = 0;
        for group in rules["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                count += 1;
                if rule["health"] != "ok" {
                    return Err(format!("rule {} is {}: {}", rule["name"], rule["health"], rule["lastError"]));
                }
                let expr = rule["query"].as_str().unwrap();
                for name in metric_names(expr) {
                    let result = query(&prometheus_url, &format!("count({name})"))?;
                    if result.is_empty() {
                        return Err(format!("rule {}: no series {name}", rule["name"]));
                    }
                }
            }
        }
        if count != 14 {
            return Err(format!("{count} rules loaded"));
        }
        Ok(())
    })
    .await;
    if let Err(failure) = outcome {
        panic!(
            "{failure}\nprometheus logged:\n{}\nthe watch logged:\n{}",
            prometheus.stderr(),
            std::fs::read_to_string(dir.path().join("watch.log")).unwrap_or_default()
        );
    }
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = blocking(move || watch.wait().unwrap()).await;
    assert_eq!(status.code(), Some(0));
    faults.close().await;
}

/// A Pushgateway that does not answer: the run's findings are written, the
/// push is tried three times, one error line says so, and the run keeps
/// its exit status (1: findings), so that a Job does not check again for
/// a Pushgateway that is down. A bad URL is refused before the check
/// starts.
#[test]
fn a_push_that_cannot_land_is_one_error_line_and_the_exit_status_stands() {
    let servers = common::servers();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_fixture_config(servers, dir.path());
    let config = config.to_str().unwrap();
    let output = dir.path().join("findings.jsonl");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let (status, _, stderr) = common::run_cli(
        &[
            "check",
            "--config",
            config,
            "--format",
            "json",
            "--output",
            output.to_str().unwrap(),
            "--confirmations",
            "0",
            "--progress",
            "none",
            "--quiet",
            "--metrics-push",
            &nobody,
        ],
        &[],
    );
    assert_eq!(status, 1, "{stderr}");
    // The run's summary (stderr, with --format json), then one error line.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Pushgateway"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!(
            "ERROR cannot write the metrics to the Pushgateway at {nobody}/metrics/job/blobcheck: "
        )) && lines[0].ends_with("(tried 3 times)"),
        "{stderr}"
    );
    // 1 s and 2 s between the tries.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        common::read_findings(&output).len(),
        common::expected_fixture_findings().len()
    );

    let (status, _, stderr) = common::run_cli(
        &[
            "check",
            "--config",
            config,
            "--metrics-push",
            "pushgateway:9091",
        ],
        &[],
    );
    assert_eq!(status, 2);
    assert_eq!(
        stderr.trim(),
        "blobcheck: error: --metrics-push pushgateway:9091: the Pushgateway's URL must start with http:// or https://"
    );
}

/// The `blobcheck_*` series an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("blobcheck_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        i = end;
    }
    names
}
