//! The metrics file as Prometheus reads it. Every file blobcheck writes
//! must pass `promtool check metrics` (Debian package `prometheus`), which
//! parses the text format and lints it, and be read without error by
//! node_exporter's textfile collector (`prometheus-node-exporter`), which
//! the tests start on a free port of 127.0.0.1 with only that collector and
//! scrape over HTTP. A missing tool fails the test with the package to
//! install; `.ci/run` installs both.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use blobcheck::metrics::{self, RunMetrics};
use blobcheck::report::{ColumnSummary, FindingCounts, Summary};
use common::{run_cli, servers, tool};

fn promtool() -> PathBuf {
    tool(&["promtool"], "prometheus")
}

fn node_exporter() -> PathBuf {
    tool(
        &["prometheus-node-exporter", "node_exporter"],
        "prometheus-node-exporter",
    )
}

/// `promtool check metrics` on `text`: `Ok` when it parses and the linter
/// has nothing to say (exit 0, no output).
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    // promtool may stop reading at the first error; the status tells.
    let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    let output = child.wait_with_output().expect("wait for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {said}", output.status))
    }
}

/// node_exporter with only its textfile collector, reading a directory of
/// its own; killed when dropped.
struct TextfileCollector {
    child: Child,
    port: u16,
    directory: tempfile::TempDir,
}

impl TextfileCollector {
    /// Starts it on a free port once its directory holds `files`.
    fn start(files: &[(&str, &str)]) -> TextfileCollector {
        let mut directory = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        let binary = node_exporter();
        // The port is free when asked, but another process may take it
        // before node_exporter binds it: then try another.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .unwrap()
                .port();
            let child = Command::new(&binary)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(["--collector.disable-defaults", "--collector.textfile"])
                .arg(format!(
                    "--collector.textfile.directory={}",
                    directory.path().display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut collector = TextfileCollector {
                child,
                port,
                directory,
            };
            match collector.wait_until_listening() {
                Ok(()) => return collector,
                Err(failure) => {
                    failures.push(failure);
                    directory = collector.stop();
                }
            }
        }
        panic!("node_exporter did not start: {failures:?}");
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                let _ = self
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr);
                return Err(format!("exited with {status}: {stderr}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("not listening after 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it and hands back its directory.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let directory = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.directory, directory)
    }

    fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// One `GET /metrics`; its body.
    fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // HTTP/1.0: one response, not chunked, then the connection closes.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        assert!(
            head.lines().next().is_some_and(|l| l.contains(" 200 ")),
            "{head}"
        );
        body.to_owned()
    }

    /// Scrapes until the collector's own verdict on the files is in (its
    /// gathering errors show in the scrape after the one that had them):
    /// `Ok` with the scrape when it read every file, found nothing twice
    /// and reported no error; `Err` saying what it reported otherwise.
    fn verdict(&self) -> Result<Scrape, String> {
        let first = Scrape(self.scrape());
        let second = Scrape(self.scrape());
        for scrape in [&first, &second] {
            let error = scrape.value("node_textfile_scrape_error", &[]);
            if error != Some(0.0) {
                return Err(format!("node_textfile_scrape_error {error:?}"));
            }
        }
        let gathering = second.value(
            "promhttp_metric_handler_errors_total",
            &[("cause", "gathering")],
        );
        if gathering != Some(0.0) {
            return Err(format!("gathering errors: {gathering:?}"));
        }
        Ok(second)
    }
}

impl Drop for TextfileCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape as node_exporter writes it: one sample per line, labels sorted,
/// a label missing from a series written as `""`.
struct Scrape(String);

impl Scrape {
    /// The value of the series `name` with exactly `labels` (empty values
    /// count as absent, as they do in Prometheus).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(label, value)| (label.to_string(), value.to_string()))
            .collect();
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((series_name, labels)) => (series_name, parse_labels(labels)?),
                None => (series, BTreeMap::new()),
            };
            (series_name == name && labels == wanted).then(|| value.parse().ok())?
        })
    }
}

/// `a="x",b="y\"z"}` into its labels, empty values left out.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return after.is_empty().then_some(labels);
        }
        let (label, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        if !value.is_empty() {
            labels.insert(label.to_owned(), value);
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Both tools accept `text` as a file `blobcheck.prom`; the collector's
/// scrape.
fn both_accept(text: &str) -> Scrape {
    promtool_check(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let collector = TextfileCollector::start(&[("blobcheck.prom", text)]);
    collector
        .verdict()
        .unwrap_or_else(|e| panic!("textfile collector: {e}\n{text}"))
}

fn at(seconds: u64, millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(seconds * 1000 + millis)
}

fn summary() -> Summary {
    Summary {
        blob_table: "ProtonMailGlobal.BlobStorage".into(),
        blob_rows: 1_000_000,
        columns: vec![
            ColumnSummary {
                label: "global:ProtonMailGlobal.SentMessage.BlobStorageID".into(),
                references: 700_000,
                nulls: 12,
                negative: 3,
            },
            ColumnSummary {
                label: "body".into(),
                references: 300_001,
                nulls: 0,
                negative: 0,
            },
        ],
        findings: FindingCounts {
            total: 477,
            count_mismatch_too_low: 120,
            count_mismatch_too_low_stored_zero: 40,
            count_mismatch_too_high: 200,
            missing_blob: 57,
            orphan_blob: 100,
            critical: 97,
            error: 80,
            warning: 300,
        },
        transient: 5,
        unsettled: vec![7, 9],
        seconds: 12.5,
        ..Summary::default()
    }
}

/// Every shape of file `metrics::render` writes (with findings, without,
/// constant labels, label values to escape, constant labels it leaves
/// out, failed runs with and without an earlier success) passes both tools,
/// which read back the values written.
#[test]
fn both_tools_accept_every_shape_of_file_render_writes() {
    let summary = summary();
    let success = RunMetrics {
        summary: Some(&summary),
        success: true,
        finished_at: at(1_767_225_600, 250),
        last_success: None,
        labels: &[],
    };
    let scrape = both_accept(&metrics::render(&success));
    let findings = |kind, direction| {
        scrape.value(
            "blobcheck_findings",
            &[("kind", kind), ("direction", direction)],
        )
    };
    assert_eq!(findings("count_mismatch", "too_low"), Some(120.0));
    assert_eq!(findings("count_mismatch", "too_high"), Some(200.0));
    assert_eq!(findings("missing_blob", ""), Some(57.0));
    assert_eq!(findings("orphan_blob", ""), Some(100.0));
    assert_eq!(
        scrape.value("blobcheck_last_success_timestamp_seconds", &[]),
        Some(1_767_225_600.25)
    );
    assert_eq!(
        scrape.value(
            "blobcheck_negative_references",
            &[(
                "column",
                "global:ProtonMailGlobal.SentMessage.BlobStorageID"
            )]
        ),
        Some(3.0)
    );

    let empty = Summary::default();
    let scrape = both_accept(&metrics::render(&RunMetrics {
        summary: Some(&empty),
        ..success
    }));
    assert_eq!(
        scrape.value("blobcheck_findings_stored_zero", &[]),
        Some(0.0)
    );
    assert_eq!(scrape.value("blobcheck_references_scanned", &[]), None);

    let mut escaped = summary.clone();
    escaped.blob_table = "db.\"blobs\"".into();
    escaped.columns[1].label = "back\\slash \"quoted\"\nnew line".into();
    let labels = [
        ("partition".to_owned(), "2/8".to_owned()),
        ("site".to_owned(), "a\\b\"c\nd".to_owned()),
    ];
    let scrape = both_accept(&metrics::render(&RunMetrics {
        summary: Some(&escaped),
        labels: &labels,
        ..success
    }));
    let constant = [("partition", "2/8"), ("site", "a\\b\"c\nd")];
    assert_eq!(
        scrape.value(
            "blobcheck_blob_rows_scanned",
            &[constant[0], constant[1], ("table", "db.\"blobs\"")]
        ),
        Some(1e6)
    );
    assert_eq!(
        scrape.value(
            "blobcheck_references_scanned",
            &[
                constant[0],
                constant[1],
                ("column", "back\\slash \"quoted\"\nnew line")
            ]
        ),
        Some(300_001.0)
    );
    assert_eq!(
        scrape.value("blobcheck_last_run_success", &constant),
        Some(1.0)
    );

    // Constant labels it cannot write are left out, not written invalid.
    let bad = [
        ("site".to_owned(), "a".to_owned()),
        ("kind".to_owned(), "x".to_owned()),
        ("1st".to_owned(), "x".to_owned()),
        ("site".to_owned(), "b".to_owned()),
    ];
    let scrape = both_accept(&metrics::render(&RunMetrics {
        labels: &bad,
        ..success
    }));
    assert_eq!(
        scrape.value(
            "blobcheck_findings",
            &[("site", "a"), ("kind", "missing_blob")]
        ),
        Some(57.0)
    );

    for last_success in [Some(at(100, 0)), None] {
        let scrape = both_accept(&metrics::render(&RunMetrics {
            summary: None,
            success: false,
            finished_at: at(200, 5),
            last_success,
            labels: &labels,
        }));
        assert_eq!(
            scrape.value("blobcheck_last_run_success", &constant),
            Some(0.0)
        );
        assert_eq!(
            scrape.value("blobcheck_last_run_timestamp_seconds", &constant),
            Some(200.005)
        );
        assert_eq!(
            scrape.value("blobcheck_last_success_timestamp_seconds", &constant),
            last_success.map(|_| 100.0)
        );
        assert_eq!(scrape.value("blobcheck_duration_seconds", &constant), None);
    }
}

/// The two checks together refuse what Prometheus would not take, so that
/// passing them means something: promtool the syntax and a missing HELP,
/// the collector a series given twice.
#[test]
fn the_tools_reject_what_prometheus_would() {
    for good in [
        "# HELP a x\n# TYPE a gauge\na 1\n",
        "# HELP a x\n# TYPE a gauge\na{b=\"\\\\\\\"\\n\"} -Inf\n",
    ] {
        both_accept(good);
    }
    for bad in [
        "a 1\n",                                                                   // no HELP
        "# HELP a x\n# TYPE a gauge\na{b=\"x\"} one\n",                            // bad value
        "# HELP a x\n# TYPE a gauge\na{b=\"x\\q\"} 1\n",                           // bad escape
        "# HELP a x\n# TYPE a gauge\na{b=\"x\",b=\"y\"} 1\n",                      // label twice
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n",                                  // series twice
        "# HELP a x\n# TYPE a gauge\na{1b=\"x\"} 1\n",                             // bad label name
        "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na 3\n", // family reopened
        "# HELP 1a x\n# TYPE 1a gauge\n1a 1\n", // bad metric name
        "# HELP a x\n# TYPE a gauge\na 1",      // no final newline
    ] {
        let promtool = promtool_check(bad);
        let collector = TextfileCollector::start(&[("bad.prom", bad)])
            .verdict()
            .map(|_| ());
        assert!(
            promtool.is_err() || collector.is_err(),
            "both accepted {bad:?}"
        );
    }
}

/// The files the binary writes for a run with findings, a failed run and a
/// consistent run: both tools accept each, and the collector serves their
/// values. A failed run keeps the last success and writes no findings.
#[test]
fn the_cli_writes_files_both_tools_accept_on_success_and_on_failure() {
    let servers = servers();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_fixture_config(servers, dir.path());
    let collector = TextfileCollector::start(&[]);
    let metrics = collector.directory().join("blobcheck.prom");
    let (code, _, stderr) = run_cli(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--confirmations",
            "0",
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--partition",
            "0/1",
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "blobcheck_last_run_success{partition=\"0/1\"} 1",
        "blobcheck_findings{partition=\"0/1\",kind=\"missing_blob\"} 342",
        "blobcheck_findings{partition=\"0/1\",kind=\"orphan_blob\"} 58",
        "blobcheck_findings_by_severity{partition=\"0/1\",severity=\"critical\"} 361",
        "blobcheck_null_references{partition=\"0/1\",column=\"global:ProtonMailGlobal.SentMessage.BlobStorageID\"} 6",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    promtool_check(&text).unwrap();
    let scrape = collector.verdict().unwrap();
    let partition = ("partition", "0/1");
    for (name, labels, value) in [
        ("blobcheck_last_run_success", vec![partition], 1.0),
        (
            "blobcheck_findings",
            vec![partition, ("kind", "missing_blob")],
            342.0,
        ),
        (
            "blobcheck_findings",
            vec![partition, ("kind", "orphan_blob")],
            58.0,
        ),
        (
            "blobcheck_findings_by_severity",
            vec![partition, ("severity", "critical")],
            361.0,
        ),
        (
            "blobcheck_null_references",
            vec![
                partition,
                (
                    "column",
                    "global:ProtonMailGlobal.SentMessage.BlobStorageID",
                ),
            ],
            6.0,
        ),
        (
            "blobcheck_blob_rows_scanned",
            vec![partition, ("table", "global:ProtonMailGlobal.BlobStorage")],
            2993.0,
        ),
    ] {
        assert_eq!(
            scrape.value(name, &labels),
            Some(value),
            "{name} {labels:?}\n{}",
            scrape.0
        );
    }
    let success_line = text
        .lines()
        .find(|l| l.starts_with("blobcheck_last_success_timestamp_seconds"))
        .unwrap()
        .to_owned();

    // A run that cannot check: the failure shows, the last success stays.
    let broken = common::write_temp(
        dir.path(),
        "broken.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!(":{}", servers.shard.port()), ":1"),
    );
    let (code, _, _) = run_cli(
        &[
            "check",
            "--config",
            broken.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--partition",
            "0/1",
        ],
        &[],
    );
    assert_eq!(code, 2);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("blobcheck_last_run_success{partition=\"0/1\"} 0"),
        "{text}"
    );
    assert!(text.contains(&success_line), "{text}");
    assert!(
        !text.contains("blobcheck_findings{"),
        "no findings from a run that did not check: {text}"
    );
    promtool_check(&text).unwrap();
    let scrape = collector.verdict().unwrap();
    assert_eq!(
        scrape.value("blobcheck_last_run_success", &[partition]),
        Some(0.0)
    );
    let carried: f64 = success_line.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert_eq!(
        scrape.value("blobcheck_last_success_timestamp_seconds", &[partition]),
        Some(carried)
    );
    assert_eq!(
        scrape.value("blobcheck_findings", &[partition, ("kind", "missing_blob")]),
        None
    );

    // A consistent run: blob 4244 and its 5,000 references agree.
    let (code, _, stderr) = run_cli(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--range",
            "4244-4244",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    promtool_check(&text).unwrap();
    let scrape = collector.verdict().unwrap();
    assert_eq!(scrape.value("blobcheck_last_run_success", &[]), Some(1.0));
    for (kind, direction) in [
        ("count_mismatch", "too_low"),
        ("count_mismatch", "too_high"),
        ("missing_blob", ""),
        ("orphan_blob", ""),
    ] {
        assert_eq!(
            scrape.value(
                "blobcheck_findings",
                &[("kind", kind), ("direction", direction)]
            ),
            Some(0.0),
            "{kind} {direction}"
        );
    }
    assert_eq!(
        scrape.value(
            "blobcheck_blob_rows_scanned",
            &[("table", "global:ProtonMailGlobal.BlobStorage")]
        ),
        Some(1.0)
    );
    let references: f64 = text
        .lines()
        .filter(|l| l.starts_with("blobcheck_references_scanned{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(references, 5000.0, "{text}");
    assert!(
        scrape.value("blobcheck_last_success_timestamp_seconds", &[]) > Some(carried),
        "a new success"
    );
}
