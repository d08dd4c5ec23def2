//! What the README promises about a run as a whole, each against real
//! servers and mostly through the real binary: exit 0 on a consistent
//! database, `--log-format json`, the write-privilege warning of `check`,
//! refusing to resume another check's checkpoint, and a run that fails mid-way
//! (a server lost for good): exit 2 once `--retry-for` is spent, the
//! checkpoint saved when it fails, the metrics of a failed run, and a resume
//! that ends with the findings of an uninterrupted run.
//!
//! Tests share this binary's fixture servers; what a test creates lives in
//! databases and accounts named `promises_*`. The test that stops a server
//! has servers of its own.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blobcheck::check::{self, CheckOptions, CheckpointOptions};
use blobcheck::config::Config;
use blobcheck::demo::FixtureServers;
use blobcheck::report::{Format, Reporter};
use blobcheck::scan::ScanOptions;
use blobcheck::throttle::ThrottleOptions;
use common::{
    Captured, expected_fixture_findings, kill_once_checkpointed, parse_jsonl, read_findings,
    run_cli, servers, write_fixture_config, write_temp,
};

fn blobcheck() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blobcheck"))
}

/// With `SLOW`, a fixture check takes several seconds.
const RATE_CAP: [&str; 2] = ["--max-rows-per-second", "500"];

/// Small chunks and confirmation of every candidate.
const SLOW: [&str; 10] = [
    "--chunk-size",
    "200",
    "--chunk-time",
    "0",
    "--settle-delay",
    "0.5",
    "--confirmations",
    "1",
    "--progress",
    "none",
];

/// The one line of a failed run's stderr that says why (the last line).
fn error_line(stderr: &str) -> &str {
    let line = stderr.lines().last().unwrap_or("");
    assert!(line.starts_with("blobcheck: error: "), "{stderr}");
    line
}

// ---------------------------------------------------------------------------
// A small database of our own on both fixture servers.
// ---------------------------------------------------------------------------

/// Blob ids 1, 2, 3, 5 with their counts; references on both servers, a NULL
/// among them. Consistent in `promises_clean`; in `promises_fault` blob 2
/// claims 3 references and has 2.
const CLEAN_GLOBAL: &str = "\
    CREATE TABLE Blobs (ID bigint unsigned PRIMARY KEY, Refs bigint unsigned NOT NULL); \
    CREATE TABLE Refs (ID bigint unsigned PRIMARY KEY, BlobID bigint unsigned, KEY BlobID (BlobID)); \
    INSERT INTO Refs VALUES (10, 1), (11, 2), (12, NULL);";
const CLEAN_SHARD: &str = "\
    CREATE TABLE Refs (ID bigint unsigned PRIMARY KEY, BlobID bigint unsigned, KEY BlobID (BlobID)); \
    INSERT INTO Refs VALUES (20, 2), (21, 5), (22, 5), (23, 5);";

/// Accounts on both servers: SELECT only; SELECT and INSERT; SELECT plus a
/// column-level SELECT grant (which SHOW GRANTS lists as `SELECT (a, b)`).
const ACCOUNTS: [(&str, &str); 3] = [
    (
        "promises_ro",
        "GRANT SELECT ON promises_clean.* TO promises_ro@'%';",
    ),
    (
        "promises_rw",
        "GRANT SELECT, INSERT ON promises_clean.* TO promises_rw@'%';",
    ),
    (
        "promises_cols",
        "GRANT SELECT ON promises_clean.* TO promises_cols@'%'; \
         GRANT SELECT (ID, BlobID) ON promises_clean.Refs TO promises_cols@'%';",
    ),
];
const ACCOUNT_PASSWORD: &str = "promises-pw";

fn small_databases() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let s = servers();
        let mut global = String::new();
        let mut shard = String::new();
        for (db, blobs) in [
            ("promises_clean", "(1, 1), (2, 2), (3, 0), (5, 3)"),
            ("promises_fault", "(1, 1), (2, 3), (3, 0), (5, 3)"),
        ] {
            global.push_str(&format!(
                "CREATE DATABASE {db}; USE {db}; {CLEAN_GLOBAL} INSERT INTO Blobs VALUES {blobs};\n"
            ));
            shard.push_str(&format!("CREATE DATABASE {db}; USE {db}; {CLEAN_SHARD}\n"));
        }
        for (user, grants) in ACCOUNTS {
            let sql = format!(
                "CREATE USER {user}@'%' IDENTIFIED BY '{ACCOUNT_PASSWORD}'; {grants}\n\
                 GRANT SELECT ON promises_fault.* TO {user}@'%';\n"
            );
            global.push_str(&sql);
            shard.push_str(&sql);
        }
        s.global.run_sql(&global).unwrap();
        s.shard.run_sql(&shard).unwrap();
    });
}

/// A configuration over `database` of `small_databases` as `user`.
fn small_config(database: &str, user: &str) -> String {
    let s = servers();
    format!(
        "[servers.global]\nurl = \"{}\"\n\n[servers.shard1]\nurl = \"{}\"\n\n\
         [blobs]\nserver = \"global\"\ntable = \"{database}.Blobs\"\nid = \"ID\"\ncount = \"Refs\"\n\n\
         [[references]]\nserver = \"global\"\ntable = \"{database}.Refs\"\ncolumn = \"BlobID\"\n\n\
         [[references]]\nserver = \"shard1\"\ntable = \"{database}.Refs\"\ncolumn = \"BlobID\"\n",
        s.global.url_for(user, ACCOUNT_PASSWORD),
        s.shard.url_for(user, ACCOUNT_PASSWORD),
    )
}

/// Runs `check` on `config` (written to a file in `dir`), confirmed as in
/// production with a short settle delay; returns (status, stdout, stderr).
fn check_small(
    dir: &Path,
    config: &str,
    global_args: &[&str],
    args: &[&str],
) -> (i32, String, String) {
    let path = write_temp(dir, "small.toml", config);
    let mut all: Vec<&str> = global_args.to_vec();
    all.extend(["check", "--config", path.to_str().unwrap()]);
    all.extend(["--settle-delay", "0.2", "--progress", "none"]);
    all.extend_from_slice(args);
    run_cli(&all, &[])
}

#[test]
fn a_consistent_database_exits_0_and_one_fault_exits_1() {
    small_databases();
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check_small(
        dir.path(),
        &small_config("promises_clean", "promises_ro"),
        &[],
        &["--format", "json"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "", "no findings: {stderr}");

    // The control: the same database with one count wrong.
    let (code, stdout, stderr) = check_small(
        dir.path(),
        &small_config("promises_fault", "promises_ro"),
        &[],
        &["--format", "json"],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let found = parse_jsonl(&stdout);
    assert_eq!(found.len(), 1, "{stdout}");
    assert_eq!(
        (
            found[0].kind.as_str(),
            found[0].blob_id,
            found[0].stored,
            found[0].actual
        ),
        ("count_mismatch", 2, Some(3), 2)
    );
}

#[test]
fn log_format_json_writes_every_log_line_as_a_json_object() {
    small_databases();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("run.checkpoint");
    let output = dir.path().join("findings.txt");
    // The findings and the summary go to --output: stderr holds the log only,
    // with at least the line saying that there was no checkpoint to resume.
    let (code, stdout, stderr) = check_small(
        dir.path(),
        &small_config("promises_clean", "promises_rw"),
        &["--log-format", "json"],
        &[
            "--output",
            output.to_str().unwrap(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--resume",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            assert!(value["level"].is_string(), "{line}");
            assert!(value["fields"]["message"].is_string(), "{line}");
            value
        })
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("starting a new run")),
        "{stderr}"
    );
    // The write-privilege warning of this account is a JSON line too.
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("can do more than read")),
        "{stderr}"
    );
    // The same run with text logs writes the same messages as plain lines.
    std::fs::remove_file(&checkpoint).unwrap();
    let (code, _, text) = check_small(
        dir.path(),
        &small_config("promises_clean", "promises_rw"),
        &[],
        &[
            "--output",
            output.to_str().unwrap(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--resume",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("starting a new run"), "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "{text}"
    );
}

#[test]
fn the_write_privilege_warning_names_accounts_that_can_write_and_only_those() {
    small_databases();
    let dir = tempfile::tempdir().unwrap();
    let warning = "can do more than read";
    for (user, warned) in [
        ("promises_ro", false),
        ("promises_rw", true),
        ("promises_cols", false),
    ] {
        let (code, stdout, stderr) = check_small(
            dir.path(),
            &small_config("promises_clean", user),
            &[],
            &["--format", "json"],
        );
        assert_eq!(code, 0, "{user}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(warning)).collect();
        if warned {
            // Once per server, naming the privilege.
            assert_eq!(lines.len(), 2, "{user}: {stderr}");
            for server in ["`global`", "`shard1`"] {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.contains(server) && l.contains("INSERT")),
                    "{user}: {stderr}"
                );
            }
        } else {
            assert!(lines.is_empty(), "{user}: a false warning: {stderr}");
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoints of other checks.
// ---------------------------------------------------------------------------

#[test]
fn resuming_a_checkpoint_of_another_configuration_or_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(servers(), dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let header = "[[references]]\nserver = \"shard1\"\ntable  = \"ProtonMailShard.MessageData\"\ncolumn = \"Header\"\n";
    assert!(text.contains(header), "{text}");
    let other = write_temp(dir.path(), "other.toml", &text.replace(header, ""));
    let checkpoint = dir.path().join("run.checkpoint");
    let output = dir.path().join("findings.jsonl");
    let run = |config: &Path, extra: &[&str]| {
        let mut command = blobcheck();
        command
            .args(["check", "--config", config.to_str().unwrap()])
            .args(["--format", "json", "--output", output.to_str().unwrap()])
            .args(["--checkpoint", checkpoint.to_str().unwrap()])
            .args(SLOW)
            .args(extra)
            .stderr(Stdio::piped());
        command
    };

    // An unfinished run of the fixture check.
    let mut child = run(&config, &RATE_CAP).spawn().unwrap();
    kill_once_checkpointed(&mut child, &checkpoint, 2000, Duration::from_secs(60));
    let saved = std::fs::read(&checkpoint).unwrap();

    for (case, config, extra) in [
        ("one reference column fewer", &other, &["--resume"][..]),
        (
            "another range",
            &config,
            &["--resume", "--range", "0-1000000"][..],
        ),
    ] {
        let refused = run(config, extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{case}: {stderr}");
        let line = error_line(&stderr);
        assert!(
            line.contains("belongs to another check") && line.contains("run.checkpoint"),
            "{case}: {line}"
        );
        assert_eq!(
            std::fs::read(&checkpoint).unwrap(),
            saved,
            "{case}: a refused resume leaves the checkpoint as it was"
        );
    }

    // The control: the check it belongs to resumes it, to the same findings
    // as an uninterrupted run.
    let resumed = run(&config, &["--resume"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resuming the unfinished run"), "{stderr}");
    assert_eq!(read_findings(&output), expected_fixture_findings());
}

// ---------------------------------------------------------------------------
// A server lost mid-run.
// ---------------------------------------------------------------------------

/// Waits until `child`'s checkpoint shows the scan past id `past` with a
/// finding saved (without killing it).
fn wait_checkpointed(child: &mut Child, checkpoint: &Path, past: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the server was stopped"
        );
        assert!(Instant::now() < deadline, "no progress within 60 s");
        if let Ok(text) = std::fs::read_to_string(checkpoint)
            && let Ok(saved) = serde_json::from_str::<serde_json::Value>(&text)
            && saved["next_start"].as_u64().is_some_and(|n| n > past)
            && saved["findings"].as_array().is_some_and(|f| !f.is_empty())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_checkpoint(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("a checkpoint file")).unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One check in process with JSON output into `out`.
async fn check_into(
    config: &Config,
    options: &CheckOptions,
    out: &Captured,
) -> blobcheck::error::Result<blobcheck::report::Summary> {
    let labels = config.references.iter().map(|r| r.label.clone()).collect();
    let reporter = Reporter::new(Format::Json, Box::new(out.clone()), labels);
    check::run(config, options, reporter).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_loses_a_server_saves_its_checkpoint_and_metrics_and_resumes() {
    let mut fixture = blocking(|| FixtureServers::start().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fixture.config().unwrap();
    let checkpoint = dir.path().join("run.checkpoint");

    // 1. In process, with no periodic checkpoint (one an hour): the
    //    checkpoint that exists after the failure was written because the
    //    run failed.
    let options = |resume: bool| CheckOptions {
        throttle: ThrottleOptions {
            max_rows_per_second: Some(if resume { 0 } else { 500 }),
            ..ThrottleOptions::default()
        },
        checkpoint: Some(CheckpointOptions {
            path: checkpoint.clone(),
            resume,
            interval: Duration::from_secs(3600),
        }),
        retry_for: Duration::from_secs(2),
        ..CheckOptions::new(ScanOptions::fixed(200, 2))
    };
    let out = Captured::default();
    let failing = options(false);
    let (result, returned) = tokio::join!(check_into(&config, &failing, &out), async {
        // Stop the shard server once the second chunk's findings are
        // coming out (the first chunk, 200 blob rows up to id 769, holds 40).
        while out.text().lines().count() <= 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Only the one written before anything was read.
        let initial: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
        assert!(
            initial["next_start"] == 0 && initial["findings"].as_array().unwrap().is_empty(),
            "no checkpoint but the first before the failure: {initial}"
        );
        blocking(move || {
            fixture.shard.stop_server().unwrap();
            fixture
        })
        .await
    });
    fixture = returned;
    let error = result
        .expect_err("the shard server is gone for good")
        .to_string();
    assert!(error.contains("shard1") && !error.contains('\n'), "{error}");
    // The checkpoint is consistent: every finding written below its
    // `next_start` is saved, the rest are found again from there.
    let saved = read_checkpoint(&checkpoint);
    let written = parse_jsonl(&out.text());
    assert_eq!(saved["complete"], false, "{saved}");
    let next_start = saved["next_start"].as_u64().unwrap();
    assert!(next_start > 769, "past the first chunk: {saved}");
    let saved_ids: Vec<u64> = saved["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["blob_id"].as_u64().unwrap())
        .collect();
    let below: Vec<u64> = written
        .iter()
        .map(|f| f.blob_id)
        .filter(|&id| id < next_start)
        .collect();
    assert_eq!(saved_ids, below, "next start {next_start}");
    assert!(written.len() < expected_fixture_findings().len());

    // The server back, the run resumes to the findings of an uninterrupted run.
    fixture = blocking(move || {
        fixture.shard.start_server().unwrap();
        fixture
    })
    .await;
    let out = Captured::default();
    let summary = check_into(&config, &options(true), &out).await.unwrap();
    let mut found = parse_jsonl(&out.text());
    found.sort();
    assert_eq!(found, expected_fixture_findings());
    assert_eq!(summary.findings.total, 477);

    // 2. The binary: a server lost for good ends the run with exit 2 once
    //    --retry-for is spent, the metrics of a failed run, and a
    //    checkpoint to resume.
    std::fs::remove_file(&checkpoint).unwrap();
    let config_path = write_fixture_config(&fixture, dir.path());
    let metrics = dir.path().join("blobcheck.prom");
    let output = dir.path().join("findings.jsonl");
    let command = |extra: &[&str]| {
        let mut command = blobcheck();
        command
            .args(["check", "--config", config_path.to_str().unwrap()])
            .args(["--format", "json", "--output", output.to_str().unwrap()])
            .args(["--checkpoint", checkpoint.to_str().unwrap()])
            .args(["--metrics-file", metrics.to_str().unwrap()])
            .args(["--retry-for", "2"])
            .args(SLOW)
            .args(extra)
            .stderr(Stdio::piped());
        command
    };
    let mut resume = command(&["--resume"]);
    let mut child = command(&RATE_CAP).spawn().unwrap();
    {
        let checkpoint = checkpoint.clone();
        let (returned, child_back) = blocking(move || {
            wait_checkpointed(&mut child, &checkpoint, 2000);
            fixture.shard.stop_server().unwrap();
            (fixture, child)
        })
        .await;
        fixture = returned;
        child = child_back;
    }
    let failed = blocking(move || child.wait_with_output().unwrap()).await;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(2), "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("shard1") && line.contains("retry"), "{line}");
    let prom = std::fs::read_to_string(&metrics).expect("a metrics file for the failed run");
    assert!(prom.contains("\nblobcheck_last_run_success 0\n"), "{prom}");
    let saved = read_checkpoint(&checkpoint);
    assert_eq!(saved["complete"], false, "{saved}");
    assert!(
        saved["next_start"].as_u64().is_some_and(|n| n > 2000),
        "{saved}"
    );

    fixture = blocking(move || {
        fixture.shard.start_server().unwrap();
        fixture
    })
    .await;
    let resumed = blocking(move || resume.output().unwrap()).await;
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resuming the unfinished run"), "{stderr}");
    assert_eq!(read_findings(&output), expected_fixture_findings());
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("\nblobcheck_last_run_success 1\n"), "{prom}");
    blocking(move || drop(fixture)).await;
}
