//! Faults during a run: a server restarted mid-run, and the process killed
//! mid-run and resumed from its checkpoint. Each test has servers of its own,
//! since it restarts or loads them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use blobcheck::demo::FixtureServers;
use common::{
    expected_fixture_findings, kill_once_checkpointed, read_findings, wait_until_checkpointed,
    write_fixture_config,
};

fn blobcheck() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blobcheck"))
}

/// Arguments that make a fixture check take several seconds: a small rate
/// cap, small chunks, and confirmation of every candidate.
const SLOW: [&str; 12] = [
    "--max-rows-per-second",
    "500",
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

/// `blobcheck check` of the fixture configuration with JSON findings in
/// `output`, a checkpoint, the slow settings and `extra`; resuming if
/// `resume`.
fn checkpointed_check(
    config: &std::path::Path,
    output: &std::path::Path,
    checkpoint: &std::path::Path,
    extra: &[&str],
    resume: bool,
) -> Command {
    let mut command = blobcheck();
    command
        .args(["check", "--config", config.to_str().unwrap()])
        .args(["--format", "json", "--output", output.to_str().unwrap()])
        .args(["--checkpoint", checkpoint.to_str().unwrap()])
        .args(SLOW)
        .args(extra)
        .stderr(Stdio::piped());
    if resume {
        command.arg("--resume");
    }
    command
}

/// The `blobcheck_last_run_success` a metrics file says.
fn last_run_success(metrics: &std::path::Path) -> Option<String> {
    let prom = std::fs::read_to_string(metrics).ok()?;
    prom.lines()
        .find_map(|l| l.strip_prefix("blobcheck_last_run_success "))
        .map(str::to_owned)
}

#[test]
fn a_server_restarted_mid_run_is_retried_and_the_findings_stay_exact() {
    let mut servers = FixtureServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(&servers, dir.path());
    let output = dir.path().join("findings.jsonl");
    let mut child = blobcheck()
        .args([
            "check",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "json",
        ])
        .args(["--output", output.to_str().unwrap()])
        .args(SLOW)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, line by line, as the check writes it.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            let line = line.unwrap();
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the check must still be running"
    );
    servers.shard.stop_server().unwrap();
    // Down until a read has failed on it (the check sleeps between reads
    // at this rate, so a fixed window could fall between two of them).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("retrying") => break,
            Ok(_) => {}
            Err(e) => panic!("no read failed on the stopped shard: {e}"),
        }
    }
    servers.shard.start_server().unwrap();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("retrying"),
        "the restart was noticed: {stderr}"
    );
    assert_eq!(read_findings(&output), expected_fixture_findings());
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_with_the_same_findings() {
    let servers = FixtureServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(&servers, dir.path());
    let checkpoint = dir.path().join("run.checkpoint");
    let output = dir.path().join("findings.jsonl");
    let run = |resume: bool| checkpointed_check(&config, &output, &checkpoint, &[], resume);

    // Kill the first run once its checkpoint shows progress but before it
    // ends.
    let mut child = run(false).spawn().unwrap();
    kill_once_checkpointed(&mut child, &checkpoint, 2000, Duration::from_secs(60));
    let partial = read_findings(&output);
    assert!(
        !partial.is_empty() && partial.len() < expected_fixture_findings().len(),
        "killed mid-run: {} findings written",
        partial.len()
    );

    let resumed = run(true).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resuming the unfinished run"), "{stderr}");
    assert!(stderr.contains("run          resumed"), "{stderr}");
    assert_eq!(read_findings(&output), expected_fixture_findings());
}

/// The README's production command, run twice as a daily job runs it: the
/// second run reads the databases again (a resume only continues an
/// unfinished run), so a fault repaired in between is gone and a new one is
/// found.
#[test]
fn a_daily_job_with_resume_checks_the_databases_anew_after_a_finished_run() {
    let servers = FixtureServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(&servers, dir.path());
    let checkpoint = dir.path().join("run.checkpoint");
    let output = dir.path().join("findings.jsonl");
    let run = || {
        blobcheck()
            .args(["check", "--config", config.to_str().unwrap()])
            .args(["--format", "json", "--output", output.to_str().unwrap()])
            .args(["--checkpoint", checkpoint.to_str().unwrap(), "--resume"])
            .args(["--settle-delay", "0.3", "--progress", "none"])
            .output()
            .unwrap()
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run          new: no checkpoint yet"),
        "{stderr}"
    );
    let expected = expected_fixture_findings();
    assert_eq!(read_findings(&output), expected);

    // Between the runs: one count too high is repaired, and a consistent,
    // referenced blob gets its count set to 0 (critical).
    let repaired = expected
        .iter()
        .find(|f| f.kind == "count_mismatch" && f.stored > Some(f.actual))
        .expect("the fixtures hold a count too high")
        .clone();
    let faulty: std::collections::BTreeSet<u64> = expected.iter().map(|f| f.blob_id).collect();
    let consistent = servers
        .global
        .query(
            "SELECT BlobStorageID, NumReferences FROM ProtonMailGlobal.BlobStorage \
             WHERE NumReferences > 0 ORDER BY BlobStorageID",
        )
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row[0].parse::<u64>().unwrap(),
                row[1].parse::<u64>().unwrap(),
            )
        })
        .find(|(id, _)| !faulty.contains(id))
        .expect("a consistent blob with references");
    servers
        .global
        .run_sql(&format!(
            "UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = {} WHERE BlobStorageID = {}; \
             UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = 0 WHERE BlobStorageID = {}",
            repaired.actual, repaired.blob_id, consistent.0
        ))
        .unwrap();

    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds a finished run"), "{stderr}");
    assert!(
        stderr.contains("run          new: the checkpoint held a finished run"),
        "{stderr}"
    );
    let found = read_findings(&output);
    let new: Vec<_> = found
        .iter()
        .filter(|f| f.blob_id == consistent.0)
        .map(|f| (f.kind.as_str(), f.stored, f.actual))
        .collect();
    assert_eq!(new, vec![("count_mismatch", Some(0), consistent.1)]);
    let rest: Vec<_> = found
        .into_iter()
        .filter(|f| f.blob_id != consistent.0)
        .collect();
    let expected_rest: Vec<_> = expected
        .into_iter()
        .filter(|f| f.blob_id != repaired.blob_id)
        .collect();
    assert_eq!(rest, expected_rest);
}

/// SIGTERM (what Kubernetes sends before it kills a pod) and SIGINT stop a
/// run cleanly: it stops reading, saves its checkpoint, writes its metrics
/// as a failed run, prints its summary and exits 3; resumed, it ends with
/// exactly the findings an uninterrupted run gives.
#[test]
fn a_signal_stops_the_run_with_checkpoint_summary_and_metrics() {
    let servers = FixtureServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(&servers, dir.path());
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let name = if signal == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        };
        let checkpoint = dir.path().join(format!("{name}.checkpoint"));
        let output = dir.path().join(format!("{name}.jsonl"));
        let metrics = dir.path().join(format!("{name}.prom"));
        let metrics_arg = ["--metrics-file", metrics.to_str().unwrap()];
        let run =
            |resume: bool| checkpointed_check(&config, &output, &checkpoint, &metrics_arg, resume);
        let mut child = run(false).spawn().unwrap();
        wait_until_checkpointed(&mut child, &checkpoint, 2000, Duration::from_secs(60));
        let sent = std::time::Instant::now();
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let stopped = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&stopped.stderr);
        assert_eq!(stopped.status.code(), Some(3), "{name}: {stderr}");
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "{name}: stopped in {:?}",
            sent.elapsed()
        );
        assert!(
            stderr.contains(&format!("interrupted by {name}")),
            "{stderr}"
        );
        assert!(
            stderr.contains("Result: incomplete (interrupted)"),
            "{name}: the summary: {stderr}"
        );
        assert_eq!(last_run_success(&metrics).as_deref(), Some("0"), "{name}");
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
        assert_eq!(saved["complete"], false, "{name}");
        let partial = read_findings(&output);
        assert!(partial.len() < expected_fixture_findings().len(), "{name}");

        let resumed = run(true).output().unwrap();
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert_eq!(resumed.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("resuming the unfinished run"), "{stderr}");
        assert_eq!(
            read_findings(&output),
            expected_fixture_findings(),
            "{name}"
        );
        assert_eq!(last_run_success(&metrics).as_deref(), Some("1"), "{name}");
    }
}

/// A signal while a server does not answer at all (SIGSTOP): the run
/// cannot save a summary from a read that never returns, so it gives up
/// within its grace and exits 3, with the metrics of a failed run.
#[test]
fn a_signal_while_a_server_does_not_answer_still_ends_the_run() {
    let servers = FixtureServers::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixture_config(&servers, dir.path());
    // Long enough that only the signal can end the wait.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("# connect_timeout_secs = 10", "connect_timeout_secs = 600");
    assert!(text.contains("connect_timeout_secs = 600"));
    std::fs::write(&config, text).unwrap();
    let metrics = dir.path().join("run.prom");
    let pid = servers.global.pid().unwrap() as i32;
    // SAFETY: kill(2) on the server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let mut child = blobcheck()
        .args(["check", "--config", config.to_str().unwrap()])
        .args([
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--retry-for",
            "600",
        ])
        .args(["--progress", "none"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sent = std::time::Instant::now();
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = sent + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            panic!("the run did not end within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not stop within"), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM") && stderr.contains("without a summary"),
        "{stderr}"
    );
    assert_eq!(last_run_success(&metrics).as_deref(), Some("0"));
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        !prom.contains("blobcheck_findings"),
        "no partial counts: {prom}"
    );
}
