//! Bounds on every wait and every read, against real servers: more
//! reference columns than the server accepts connections, a server stopped
//! mid-run, a server that accepts TCP and never answers, the rows one query
//! may read (sketch after a gap, NULL and negative counts), and the rate cap
//! inside a real check. Each test starts the servers it needs.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobcheck::check::CheckOptions;
use blobcheck::config::Config;
use blobcheck::demo::FixtureServers;
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use blobcheck::scan::{Method, ScanOptions};
use blobcheck::throttle::ThrottleOptions;

fn blobcheck() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blobcheck"))
}

fn start(options: SandboxOptions) -> Sandbox {
    let name = options.name.clone();
    Sandbox::start(options).unwrap_or_else(|e| panic!("starting sandbox {name}: {e}"))
}

/// `Blobs.BlobStorage` with `ids` (each stored count 1) and `tables`
/// reference tables `Blobs.R0…`, the id `i` referenced once from
/// `R(i mod tables)`; NULL and negative rows added to `R0`. Returns the
/// configuration text (connect timeout 2 s).
fn load(server: &Sandbox, ids: &[(u64, u64)], tables: usize, nulls: u64, negative: u64) -> String {
    let mut sql = String::from(
        "CREATE DATABASE Blobs; USE Blobs;
         CREATE TABLE BlobStorage (BlobStorageID BIGINT UNSIGNED PRIMARY KEY, NumReferences INT UNSIGNED NOT NULL);\n",
    );
    for &(first, last) in ids {
        sql.push_str(&format!(
            "INSERT INTO BlobStorage SELECT seq, 1 FROM seq_{first}_to_{last};\n"
        ));
    }
    for t in 0..tables {
        sql.push_str(&format!(
            "CREATE TABLE R{t} (ID INT AUTO_INCREMENT PRIMARY KEY, BlobStorageID BIGINT NULL, KEY (BlobStorageID));\n"
        ));
        for &(first, last) in ids {
            sql.push_str(&format!(
                "INSERT INTO R{t} (BlobStorageID) SELECT seq FROM seq_{first}_to_{last} WHERE seq % {tables} = {t};\n"
            ));
        }
    }
    if nulls > 0 {
        sql.push_str(&format!(
            "INSERT INTO R0 (BlobStorageID) SELECT NULL FROM seq_1_to_{nulls};\n"
        ));
    }
    if negative > 0 {
        sql.push_str(&format!(
            "INSERT INTO R0 (BlobStorageID) SELECT -seq FROM seq_1_to_{negative};\n"
        ));
    }
    // Two faults: a count too high, and a missing blob.
    sql.push_str(&format!(
        "UPDATE BlobStorage SET NumReferences = 5 WHERE BlobStorageID = {};
         INSERT INTO R0 (BlobStorageID) VALUES (99999999);\n",
        ids[0].0
    ));
    server.run_sql(&sql).unwrap();
    let mut config = format!(
        "[servers.db]\nurl = \"{}\"\nconnect_timeout_secs = 2\n\n\
         [blobs]\nserver = \"db\"\ntable = \"Blobs.BlobStorage\"\nid = \"BlobStorageID\"\ncount = \"NumReferences\"\n\n",
        server.root_url()
    );
    for t in 0..tables {
        config.push_str(&format!(
            "[[references]]\nserver = \"db\"\ntable = \"Blobs.R{t}\"\ncolumn = \"BlobStorageID\"\n\n"
        ));
    }
    config
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    common::write_temp(dir, "bounds.toml", text)
}

/// The two faults `load` injects, as (kind, blob id).
fn injected(first_id: u64) -> Vec<(String, u64)> {
    vec![
        ("count_mismatch".to_owned(), first_id),
        ("missing_blob".to_owned(), 99_999_999),
    ]
}

fn kinds(stdout: &str) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = common::parse_jsonl(stdout)
        .into_iter()
        .map(|f| (f.kind, f.blob_id))
        .collect();
    found.sort();
    found
}

/// Waits for `child` at most `limit`; kills it and panics past that.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> (i32, String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return (status.code().unwrap_or(-1), stderr, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 40 reference columns on a server that accepts 20 connections (the case
/// that stalled for 600 s): the check opens at most its cap (10 by
/// default), queues the rest, and reports exactly the injected faults. With
/// a cap above what the server accepts, "Too many connections" is retried
/// within the budget: the run ends with the right findings, or with one
/// line and exit 2, never a stall.
#[test]
fn more_columns_than_the_server_accepts_connections_never_stall() {
    let server = start(SandboxOptions::new("few-connections").arg("--max-connections=20"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &load(&server, &[(1, 4000)], 40, 0, 0));
    let retry_for = 20;
    let run = |extra: &[&str]| {
        let mut child = blobcheck()
            .args(["check", "--config", config.to_str().unwrap()])
            .args([
                "--format",
                "json",
                "--confirmations",
                "0",
                "--progress",
                "none",
            ])
            .args(["--retry-for", &retry_for.to_string(), "--chunk-size", "500"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let (code, stderr, elapsed) = wait_within(
            &mut child,
            Duration::from_secs(retry_for + 2 + 60),
            "a check with more columns than connections",
        );
        (code, stdout, stderr, elapsed)
    };

    let (code, stdout, stderr, _) = run(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(kinds(&stdout), injected(1), "{stderr}");
    assert!(!stderr.contains("Too many connections"), "{stderr}");

    // Twice what the server accepts.
    let (code, stdout, stderr, elapsed) = run(&["--max-connections-per-server", "40"]);
    match code {
        1 => assert_eq!(kinds(&stdout), injected(1), "{stderr}"),
        2 => {
            let last = stderr.trim_end().lines().last().unwrap_or("");
            assert!(last.contains("Too many connections"), "{stderr}");
        }
        other => panic!("exit {other}: {stderr}"),
    }
    assert!(
        elapsed < Duration::from_secs(retry_for + 2 + 30),
        "{elapsed:?}"
    );

    // And the cap is validated.
    let (code, _, stderr, _) = run(&["--max-connections-per-server", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("max connections per server 0"), "{stderr}");
}

/// Sends SIGSTOP to a server and SIGCONT when dropped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

/// A server stopped (SIGSTOP) in the middle of a run accepts TCP and never
/// answers: the run ends within the retry budget plus the connect timeout
/// (and a generous margin), exit 2, its last line naming the server.
#[test]
fn a_server_stopped_mid_run_ends_the_run_within_the_retry_budget() {
    let server = start(SandboxOptions::new("stopped"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &load(&server, &[(1, 3000)], 3, 0, 0));
    let checkpoint = dir.path().join("checkpoint");
    let retry_for = 5;
    let mut child = blobcheck()
        .args(["check", "--config", config.to_str().unwrap()])
        .args([
            "--format",
            "json",
            "--confirmations",
            "0",
            "--progress",
            "none",
        ])
        .args(["--retry-for", &retry_for.to_string()])
        .args([
            "--max-rows-per-second",
            "500",
            "--chunk-size",
            "100",
            "--chunk-time",
            "0",
        ])
        .args(["--checkpoint", checkpoint.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run: once the checkpoint shows the scan under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(Instant::now() < deadline, "no progress within 60 s");
        if let Ok(text) = std::fs::read_to_string(&checkpoint)
            && let Ok(saved) = serde_json::from_str::<serde_json::Value>(&text)
            && saved["next_start"].as_u64().is_some_and(|n| n > 0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Stopped::new(server.pid().expect("the server runs"));
    let (code, stderr, elapsed) = wait_within(
        &mut child,
        Duration::from_secs(retry_for + 2 + 30),
        "a check reading a stopped server",
    );
    drop(stopped);
    assert_eq!(code, 2, "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(last.contains("`db`"), "{stderr}");
    assert!(last.contains("gave up after retrying for 5 s"), "{stderr}");
    assert!(elapsed >= Duration::from_secs(retry_for), "{elapsed:?}");
}

/// A server that accepts TCP connections and never writes a byte: the run
/// ends after the connect timeout with exit 2 and one line.
#[test]
fn a_server_that_never_answers_ends_the_run_with_one_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[servers.db]\nurl = \"mysql://root@127.0.0.1:{port}\"\nconnect_timeout_secs = 2\n\n\
             [blobs]\nserver = \"db\"\ntable = \"Blobs.BlobStorage\"\nid = \"BlobStorageID\"\ncount = \"NumReferences\"\n\n\
             [[references]]\nserver = \"db\"\ntable = \"Blobs.R0\"\ncolumn = \"BlobStorageID\"\n"
        ),
    );
    let mut child = blobcheck()
        .args(["check", "--config", config.to_str().unwrap()])
        .args(["--retry-for", "5", "--progress", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr, _) =
        wait_within(&mut child, Duration::from_secs(5 + 2 + 30), "silent server");
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no answer within 2 s"), "{stderr}");
}

/// `(Rows_examined, query)` of every slow-log entry after `offset` bytes.
fn slow_log_entries(path: &Path, offset: u64) -> Vec<(u64, String)> {
    let mut file = std::fs::File::open(path).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).unwrap();
    let mut entries = Vec::new();
    let mut examined = None;
    for line in BufReader::new(file).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("Rows_examined:").nth(1) {
            examined = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if !line.starts_with('#')
            && !line.starts_with("SET timestamp")
            && !line.starts_with("use ")
            && let Some(n) = examined.take()
        {
            entries.push((n, line));
        }
    }
    entries
}

/// After a long gap in the ids a sketch span grows eightfold per empty
/// chunk and lands on dense ids (52,127 rows in one query at
/// `--sketch-rows 256` before); NULL and negative references were one count
/// over the whole index. Every query the check runs now reads at most the
/// chunk size or `sketch::row_bound` rows (plus the one row a `LIMIT n, 1`
/// probe stops at), measured by the server itself in its slow log.
#[test]
fn no_query_reads_more_than_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let slow_log = dir.path().join("slow.log");
    let server = start(
        SandboxOptions::new("bounded")
            .arg("--slow-query-log=1")
            .arg("--long-query-time=0")
            .arg(format!("--slow-query-log-file={}", slow_log.display())),
    );
    let config = write_config(
        dir.path(),
        &load(&server, &[(1, 300), (200_000, 230_000)], 1, 3_000, 40),
    );
    let offset = std::fs::metadata(&slow_log).unwrap().len();
    let chunk_size = 1000u64;
    let sketch_rows = 256u64;
    let output = blobcheck()
        .args(["check", "--config", config.to_str().unwrap()])
        .args([
            "--format",
            "json",
            "--confirmations",
            "0",
            "--progress",
            "none",
        ])
        .args([
            "--method",
            "sketch",
            "--sketch-rows",
            &sketch_rows.to_string(),
        ])
        .args(["--chunk-size", &chunk_size.to_string(), "--chunk-time", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(kinds(&stdout), injected(1), "{stderr}");
    assert!(
        stderr.contains("(+3,000 NULL and 40 negative, not references)"),
        "{stderr}"
    );

    let entries = slow_log_entries(&slow_log, offset);
    let scans: Vec<&(u64, String)> = entries
        .iter()
        .filter(|(_, query)| query.contains("FORCE INDEX"))
        .collect();
    assert!(
        scans.len() > 20,
        "the slow log holds the check's queries: {entries:?}"
    );
    assert!(
        scans.iter().any(|(_, q)| q.contains("SUM(")),
        "sketch queries are logged"
    );
    assert!(
        scans.iter().any(|(_, q)| q.contains("IS NULL")),
        "NULL batches are logged"
    );
    let bound = chunk_size.max(blobcheck::sketch::row_bound(sketch_rows)) + 1;
    let worst = scans.iter().max_by_key(|(n, _)| *n).unwrap();
    assert!(
        worst.0 <= bound,
        "a query examined {} rows (bound {bound}): {}",
        worst.0,
        worst.1
    );
}

/// Rows the summary says were read: blob rows, references, NULL and
/// negative values.
fn rows_read(summary: &blobcheck::report::Summary) -> u64 {
    summary.blob_rows
        + summary
            .columns
            .iter()
            .map(|c| c.references + c.nulls + c.negative)
            .sum::<u64>()
}

/// `rows` read in `seconds` stayed under `cap` per second over all servers:
/// the bucket starts with one second of rows, and a tenth is slack.
fn assert_under_cap(rows: u64, seconds: f64, cap: u64, what: &str) {
    let allowed = cap as f64 * 1.1 * (seconds + 1.0);
    assert!(
        (rows as f64) <= allowed,
        "{what}: {rows} rows in {seconds:.2} s is over {cap} rows/s"
    );
}

/// `--max-rows-per-second` caps the rows read over all servers together
/// (two here), in a real check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_holds_over_all_servers_in_a_real_check() {
    let (servers, config) = tokio::task::spawn_blocking(|| {
        let servers = FixtureServers::start().unwrap();
        let config: Config = servers.config().unwrap();
        (servers, config)
    })
    .await
    .unwrap();
    let cap = 4_000;
    let options = CheckOptions {
        throttle: ThrottleOptions {
            max_rows_per_second: Some(cap),
            ..ThrottleOptions::default()
        },
        ..CheckOptions::new(ScanOptions::fixed(500, 4))
    };
    let started = Instant::now();
    let (findings, summary) = common::check_in_order(&config, &options).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(findings, common::expected_fixture_findings());
    let rows = rows_read(&summary);
    assert!(rows > 3 * cap, "enough rows to measure: {rows}");
    assert_under_cap(rows, seconds, cap, "exact check");
    assert!(summary.throttled_seconds > 0.0);
    drop(servers);
}

/// The rows the sketch's sums read count against the cap too: a clean,
/// dense table is settled almost entirely by sums, and still takes as long
/// as its rows at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_rows_count_against_the_rate_cap() {
    let (server, text) = tokio::task::spawn_blocking(|| {
        let server = start(SandboxOptions::new("sketch-rate"));
        let text = load(&server, &[(1, 40_000)], 2, 0, 0);
        (server, text)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&text, &dir.path().join("bounds.toml")).unwrap();
    let cap = 20_000;
    let options = CheckOptions {
        throttle: ThrottleOptions {
            max_rows_per_second: Some(cap),
            ..ThrottleOptions::default()
        },
        ..CheckOptions::new(ScanOptions {
            method: Method::Sketch { target_rows: 4096 },
            ..ScanOptions::fixed(1000, 4)
        })
    };
    let started = Instant::now();
    let (findings, summary) = common::check_in_order(&config, &options).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        findings
            .iter()
            .map(|f| (f.kind.clone(), f.blob_id))
            .collect::<Vec<_>>(),
        injected(1)
    );
    let sketch = summary.sketch.clone().expect("sketch counts");
    assert!(
        sketch.clean >= 10,
        "most chunks settled by their sums: {sketch:?}"
    );
    let rows = rows_read(&summary);
    assert!(rows >= 80_000, "{rows}");
    assert_under_cap(rows, seconds, cap, "sketch check");
    drop(server);
}

/// A pause that outlasts the retry budget ends the run like a failure that
/// does: exit 2 and one line, not a wait for good (a server that stopped
/// answering while over a limit would otherwise hold every read). Here
/// `--max-threads-running 1` with a query sleeping on the server.
#[test]
fn a_pause_longer_than_the_retry_budget_ends_the_run() {
    let server = start(SandboxOptions::new("paused"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &load(&server, &[(1, 100)], 1, 0, 0));
    let url = server.root_url();
    // A second running thread for as long as the test needs.
    let sleeper = std::thread::spawn(move || {
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&url).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use mysql_async::prelude::Queryable;
            let mut conn = pool.get_conn().await.unwrap();
            let _: Result<Option<u64>, _> = conn.query_first("SELECT SLEEP(60)").await;
        });
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .query(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'",
        )
        .unwrap()
        .iter()
        .any(|row| row.first().is_some_and(|n| n == "1"))
    {
        assert!(
            Instant::now() < deadline,
            "the sleeping query never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = blobcheck()
        .args(["check", "--config", config.to_str().unwrap()])
        .args([
            "--retry-for",
            "3",
            "--max-threads-running",
            "1",
            "--progress",
            "none",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr, _) =
        wait_within(&mut child, Duration::from_secs(3 + 2 + 30), "paused check");
    assert_eq!(code, 2, "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        last.contains("reads stayed paused") && last.contains("--retry-for 3 s"),
        "{stderr}"
    );
    assert!(stderr.contains("pausing"), "the pause was logged: {stderr}");
    for row in server
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'")
        .unwrap()
    {
        let _ = server.run_sql(&format!("KILL QUERY {}", row[0]));
    }
    let _ = sleeper.join();
}
