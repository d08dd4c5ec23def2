//! Faults during a run: a server restarted mid-run, and the process killed
//! mid-run and resumed from its checkpoint. Each test has servers of its own,
//! since it restarts or loads them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use blobcheck::demo::FixtureServers;
use common::{
    expected_fixture_findings, kill_once_checkpointed, read_findings, write_fixture_config,
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
    let run = |resume: bool| {
        let mut command = blobcheck();
        command
            .args([
                "check",
                "--config",
                config.to_str().unwrap(),
                "--format",
                "json",
            ])
            .args(["--output", output.to_str().unwrap()])
            .args(["--checkpoint", checkpoint.to_str().unwrap()])
            .args(SLOW)
            .stderr(Stdio::piped());
        if resume {
            command.arg("--resume");
        }
        command
    };

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
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert_eq!(read_findings(&output), expected_fixture_findings());

    // Resuming a finished run reports the same again without scanning.
    let again = run(true).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(read_findings(&output), expected_fixture_findings());
}
