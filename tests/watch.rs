//! `blobcheck watch` against real servers with binary logs: faults injected
//! at random moments under churn are each reported exactly, and nothing
//! else is (not the churn's changes in flight, not the data set's
//! pre-existing faults, which no change touches).

mod churn_support;
mod common;
mod watch_support;

use std::sync::Arc;
use std::time::Duration;

use churn_support::{Dataset, WriterOptions, Writers, blocking, writer_seed};
use watch_support::{
    FAULT_BASE, Faults, HIGH_FAULT_BASE, Pair, RunningWatch, bare, free_port, get, loaded_pair,
    wait_found, wait_ok, watch_command, watch_options,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_fault_is_reported_exactly_under_churn() {
    let data = Arc::new(Dataset::generate("wchurn", 21, 20_000, 40, 300, false));
    let (global, shard) = loaded_pair("wchurn", data.global_sql(), data.shard_sql()).await;
    let urls = Urls {
        write_global: global.root_url(),
        write_shard: shard.root_url(),
        watch_global: global.root_url(),
        watch_shard: shard.root_url(),
    };
    churn_with_faults(&urls, &data, Duration::from_millis(1_000)).await;
}

/// The same on replicas: the writers and the faults go to the primaries,
/// the watch follows the replicas (which log what they apply), and the
/// shard replica applies everything a second after the global one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_replicas_with_the_shard_behind_every_fault_is_reported_exactly() {
    let shard = tokio::task::spawn_blocking(|| Pair::start("wrep_shard", 33, 1));
    let global = blocking(|| Pair::start("wrep_global", 31, 0)).await;
    let shard = shard.await.unwrap();
    let data = Arc::new(Dataset::generate("wrep", 13, 10_000, 20, 300, false));
    let (global_sql, shard_sql) = (data.global_sql(), data.shard_sql());
    let (global, shard) = blocking(move || {
        global.primary.run_sql(&global_sql).unwrap();
        shard.primary.run_sql(&shard_sql).unwrap();
        global.wait_caught_up();
        shard.wait_caught_up();
        (global, shard)
    })
    .await;
    let urls = Urls {
        write_global: global.primary.root_url(),
        write_shard: shard.primary.root_url(),
        watch_global: global.replica.root_url(),
        watch_shard: shard.replica.root_url(),
    };
    // The settle delay covers the writers' pause and the replicas' lag
    // difference; the confirmation's re-reads span twice that.
    churn_with_faults(&urls, &data, Duration::from_millis(1_500)).await;
}

/// Where the application writes and what the watch follows.
struct Urls {
    write_global: String,
    write_shard: String,
    watch_global: String,
    watch_shard: String,
}

/// Churn, 18 faults injected at random moments (six above 2⁶³), and the
/// watch's findings compared with them: exactly, nothing else, and each
/// with the change that made it.
async fn churn_with_faults(urls: &Urls, data: &Arc<Dataset>, settle: Duration) {
    let config = data.config(&urls.watch_global, &urls.watch_shard);
    let watch = RunningWatch::start(&config, |stop| watch_options(settle, 2, stop)).await;

    let writers = Writers::start(
        Arc::new(data.app()),
        &urls.write_global,
        &urls.write_shard,
        WriterOptions::default(),
    )
    .await;
    let seed = writer_seed();
    let mut faults = Faults::new(
        &urls.write_global,
        &urls.write_shard,
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    faults
        .inject_randomly(12, Duration::from_millis(800), seed)
        .await;
    let mut high = Faults::new(
        &urls.write_global,
        &urls.write_shard,
        &data.global_db,
        &data.shard_db,
        HIGH_FAULT_BASE,
    );
    high.inject_randomly(6, Duration::from_millis(500), seed ^ 1)
        .await;
    // Churn goes on while the last faults are judged.
    tokio::time::sleep(settle * 5).await;
    let churn = writers.stop().await;
    println!("churn: {churn}");

    let mut expected = faults.expected.clone();
    expected.extend(high.expected.clone());
    watch.wait_for(&expected, Duration::from_secs(40)).await;
    // Anything false would have had the time to show too.
    tokio::time::sleep(settle * 5).await;
    let lines = watch.lines();
    let (found, summary) = watch.stop().await;
    println!("{summary:?}");
    assert_eq!(
        bare(&found),
        bare(&expected),
        "the watch must report exactly the injected faults (seed {seed})"
    );
    // Each names the change: when, where in which log, and the statement
    // (MariaDB annotates row events by default).
    for line in &lines {
        assert!(
            line["changed_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(line["latency_seconds"].as_f64().is_some(), "{line}");
        let changes = line["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("no changes: {line}"));
        for change in changes {
            assert!(
                change["binlog"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("mysql-bin.")),
                "{line}"
            );
            assert!(
                change["gtid"]
                    .as_str()
                    .is_some_and(|g| g.split('-').count() == 3),
                "{line}"
            );
            assert!(
                change["committed_at"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z')),
                "{line}"
            );
        }
        let id = line["blob_id"].as_u64().unwrap();
        let faulty = faults
            .statements
            .get(&id)
            .or_else(|| high.statements.get(&id))
            .expect("a fault's id");
        assert!(
            changes
                .iter()
                .any(|c| c["statement"].as_str() == Some(faulty.as_str())),
            "the finding names the faulty write `{faulty}`: {line}"
        );
    }
    faults.close().await;
    high.close().await;
}

/// `blobcheck watch` as a process, its stderr kept per port.
fn spawn_watch(config: &std::path::Path, dir: &std::path::Path, port: u16) -> std::process::Child {
    watch_command(config, dir, port)
        .stderr(std::fs::File::create(dir.join(format!("stderr-{port}.log"))).unwrap())
        .spawn()
        .expect("blobcheck watch starts")
}

/// Waits until `/healthz` answers 200 (every stream is up).
async fn wait_healthy(port: u16, limit: Duration) -> bool {
    blocking(move || wait_ok(&format!("http://127.0.0.1:{port}/healthz"), limit)).await
}

/// kill -9 while faults wait to be judged, more faults while it is down:
/// the restarted watch resumes from its state and reports every one, each
/// once. /metrics and /healthz answer; SIGTERM saves the state and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_restarted_and_stopped_it_misses_nothing() {
    let data = Arc::new(Dataset::generate("wkill", 5, 2_000, 10, 150, false));
    let (global, shard) = loaded_pair("wkill", data.global_sql(), data.shard_sql()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watch.toml");
    std::fs::write(
        &config,
        data.config_text(&global.root_url(), &shard.root_url()),
    )
    .unwrap();
    let port = free_port();
    let mut watch = spawn_watch(&config, dir.path(), port);
    assert!(
        wait_healthy(port, Duration::from_secs(20)).await,
        "the watch never became healthy"
    );

    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    for n in 0..6 {
        faults.inject(n).await;
    }
    wait_found(dir.path(), &faults.expected, Duration::from_secs(20)).await;
    // Six more, and a kill before they can be judged.
    for n in 0..6 {
        faults.inject(n).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    watch.kill().unwrap();
    watch.wait().unwrap();
    // Some were still waiting or being confirmed when it died: the restart
    // must find them from the state it left.
    let at_kill = common::read_findings(&dir.path().join("found.jsonl")).len();
    assert!(
        at_kill < 12,
        "all 12 were reported before the kill: the kill tested nothing"
    );
    // Six while it is down.
    for n in 0..6 {
        faults.inject(n).await;
    }
    let port = free_port();
    let mut watch = spawn_watch(&config, dir.path(), port);
    assert!(
        wait_healthy(port, Duration::from_secs(20)).await,
        "the restarted watch never became healthy"
    );
    let found = wait_found(dir.path(), &faults.expected, Duration::from_secs(30)).await;

    let (status, metrics) = blocking(move || get(&format!("http://127.0.0.1:{port}/metrics")))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200);
    for series in [
        "blobcheck_watch_findings_total{kind=\"missing_blob\",severity=\"critical\"}",
        "blobcheck_watch_stream_up{server=\"shard\"} 1",
        "blobcheck_watch_detection_latency_seconds_bucket",
        "blobcheck_watch_events_total{server=\"global\"}",
    ] {
        assert!(
            metrics.contains(series),
            "/metrics lacks {series}:\n{metrics}"
        );
    }

    let pid = watch.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = blocking(move || watch.wait().unwrap()).await;
    assert_eq!(status.code(), Some(0), "SIGTERM ends the watch with 0");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["servers"].as_array().unwrap().len(), 2, "{state}");

    let mut unique = bare(&found);
    unique.dedup();
    let logs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stderr"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(
        unique,
        bare(&faults.expected),
        "every fault, before, around and after the kill; the watch logged:\n{}",
        logs.join("\n---\n")
    );
    // Reported twice only if the kill fell between a report and the state
    // saved right after it.
    assert!(
        found.len() <= unique.len() + 1,
        "findings reported again after the restart: {found:?}"
    );
    faults.close().await;
}

/// Each missing prerequisite ends the watch at start with exit 2 and one
/// line naming the server and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_prerequisite_has_its_one_line_error() {
    use blobcheck::sandbox::{Sandbox, SandboxOptions};
    let (unlogged, statement, good) = blocking(|| {
        let unlogged =
            std::thread::spawn(|| Sandbox::start(SandboxOptions::new("wpre_nolog")).unwrap());
        let statement = std::thread::spawn(|| {
            Sandbox::start(
                SandboxOptions::new("wpre_mixed")
                    .arg("--log-bin=mysql-bin")
                    .arg("--server-id=21")
                    .arg("--binlog-format=MIXED")
                    .arg("--binlog-row-image=MINIMAL"),
            )
            .unwrap()
        });
        let good = watch_support::logged_server("wpre_good", 22);
        (unlogged.join().unwrap(), statement.join().unwrap(), good)
    })
    .await;
    let data = Dataset::generate("wpre", 3, 200, 2, 120, false);
    let load = format!("{}\n{}", data.global_sql(), data.shard_sql());
    let checker = blobcheck::demo::create_checker_sql(&[&data.global_db, &data.shard_db]);
    let (unlogged, statement, good) = blocking(move || {
        for server in [&unlogged, &statement, &good] {
            server.run_sql(&load).unwrap();
        }
        good.run_sql(&checker).unwrap();
        (unlogged, statement, good)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let select_only = good.url_for(
        blobcheck::demo::CHECKER_USER,
        blobcheck::demo::CHECKER_PASSWORD,
    );
    type Case<'a> = (&'a str, String, String, &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            "binary log off",
            unlogged.root_url(),
            good.root_url(),
            &[],
            &["server `global`", "binary log is off", "log_bin"],
        ),
        (
            "statement format, minimal images",
            good.root_url(),
            statement.root_url(),
            &[],
            &[
                "server `shard`",
                "binlog_format is MIXED",
                "binlog_format=ROW",
                "binlog_row_image is MINIMAL",
                "binlog_row_image=FULL",
            ],
        ),
        (
            "SELECT only",
            select_only.clone(),
            good.root_url(),
            &[],
            &[
                "server `global`",
                "GRANT REPLICATION SLAVE, REPLICATION CLIENT",
                "ON *.*",
            ],
        ),
        (
            "server id taken",
            good.root_url(),
            good.root_url(),
            &["--server-id", "22"],
            &["server `global`", "server_id is 22", "--server-id"],
        ),
    ];
    for (case, global_url, shard_url, extra, wanted) in cases {
        let config = dir.path().join("pre.toml");
        std::fs::write(&config, data.config_text(&global_url, &shard_url)).unwrap();
        let mut args = vec!["watch", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (status, _, stderr) = common::run_cli(&args, &[]);
        assert_eq!(status, 2, "{case}: exit 2; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{case}: one error line: {stderr}");
        for want in wanted {
            assert!(
                lines[0].contains(want),
                "{case}: `{want}` not in: {}",
                lines[0]
            );
        }
        // `doctor --watch` says the same, as FAIL lines, in the section of
        // the server at fault (a server id given to `watch` it cannot know).
        if extra.is_empty() {
            let (status, stdout, _) = common::run_cli(
                &["doctor", "--watch", "--config", config.to_str().unwrap()],
                &[],
            );
            assert_eq!(status, 2, "{case}: doctor --watch is not ready:\n{stdout}");
            let fails: Vec<&str> = stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("FAIL") && l.contains("for watch:"))
                .collect();
            // The problem, or its fix on the line below it.
            assert!(
                !fails.is_empty() && stdout.contains(wanted[1]),
                "{case}: doctor --watch lacks `{}`:\n{stdout}",
                wanted[1]
            );
        }
    }
    // A server ready for the watch gets its ok line.
    let config = dir.path().join("good.toml");
    std::fs::write(
        &config,
        data.config_text(&good.root_url(), &good.root_url()),
    )
    .unwrap();
    let (_, stdout, _) = common::run_cli(
        &["doctor", "--watch", "--config", config.to_str().unwrap()],
        &[],
    );
    assert!(
        stdout.contains("ok    for watch: binary log on, binlog_format ROW, binlog_row_image FULL"),
        "{stdout}"
    );
}

/// What servers do to a stream: a reference table altered while watching
/// (a column added before the reference column), a server restarted
/// mid-stream, and a bulk delete of more references than the watch holds
/// (its ids folded into ranges and scanned): every fault still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_restarts_and_bulk_deletes_keep_it_exact() {
    let data = Arc::new(Dataset::generate("wddl", 8, 2_000, 6, 120, false));
    let (global, mut shard) = loaded_pair("wddl", data.global_sql(), data.shard_sql()).await;
    let config = data.config(&global.root_url(), &shard.root_url());
    let watch = RunningWatch::start(&config, |stop| {
        let mut options = watch_options(Duration::from_millis(500), 1, stop);
        options.max_waiting = 1_000;
        options
    })
    .await;
    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );

    // A column before the reference column: positions move.
    let alter = format!(
        "ALTER TABLE `{}`.Attachment ADD COLUMN Extra bigint unsigned NOT NULL DEFAULT 77 FIRST",
        data.shard_db
    );
    let shard_url = shard.root_url();
    blocking({
        let alter = alter.clone();
        move || {
            let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&shard_url).unwrap());
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let mut conn = pool.get_conn().await.unwrap();
                    mysql_async::prelude::Queryable::query_drop(&mut conn, alter)
                        .await
                        .unwrap();
                });
        }
    })
    .await;
    for n in 0..6 {
        faults.inject(n).await;
    }
    watch
        .wait_for(&faults.expected, Duration::from_secs(20))
        .await;
    assert_eq!(
        bare(&watch.findings()),
        bare(&faults.expected),
        "after the ALTER TABLE"
    );

    // The shard restarts under the stream.
    shard = blocking(move || {
        shard.restart().unwrap();
        shard
    })
    .await;
    for n in 0..6 {
        faults.inject(n).await;
    }
    watch
        .wait_for(&faults.expected, Duration::from_secs(30))
        .await;
    assert_eq!(
        bare(&watch.findings()),
        bare(&faults.expected),
        "after the shard restarted"
    );

    // A bulk delete of 5,000 references whose counts stay: 5,000 orphans,
    // past the bound of 1,000 ids.
    let base = 1u64 << 52;
    let blobs: Vec<String> = (1..=5_000u64)
        .map(|i| format!("({},1,1)", base + i * 3))
        .collect();
    let rows: Vec<String> = (1..=5_000u64)
        .map(|i| format!("({},0,0,{})", (1u64 << 46) + i, base + i * 3))
        .collect();
    let setup_global = format!(
        "INSERT INTO `{}`.BlobStorage (BlobStorageID, NumReferences, Size) VALUES {}",
        data.global_db,
        blobs.join(",")
    );
    let setup_shard = format!(
        "INSERT INTO `{}`.Attachment (AttachmentID, Extra, MessageID, BlobStorageID) VALUES {}",
        data.shard_db,
        rows.join(",")
    );
    let bulk = format!(
        "DELETE FROM `{}`.Attachment WHERE AttachmentID > {}",
        data.shard_db,
        1u64 << 46
    );
    let (g, s) = (global.root_url(), shard.root_url());
    blocking(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                use mysql_async::prelude::Queryable;
                let gp = mysql_async::Pool::new(mysql_async::Opts::from_url(&g).unwrap());
                let sp = mysql_async::Pool::new(mysql_async::Opts::from_url(&s).unwrap());
                gp.get_conn()
                    .await
                    .unwrap()
                    .query_drop(setup_global)
                    .await
                    .unwrap();
                sp.get_conn()
                    .await
                    .unwrap()
                    .query_drop(setup_shard)
                    .await
                    .unwrap();
                // Judged consistent before the delete.
                tokio::time::sleep(Duration::from_secs(3)).await;
                sp.get_conn().await.unwrap().query_drop(bulk).await.unwrap();
            })
    })
    .await;
    let mut expected = faults.expected.clone();
    for i in 1..=5_000u64 {
        expected.push(common::Exact {
            kind: "orphan_blob".into(),
            blob_id: base + i * 3,
            stored: Some(1),
            actual: 0,
            references: Vec::new(),
        });
    }
    watch.wait_for(&expected, Duration::from_secs(60)).await;
    let (found, summary) = watch.stop().await;
    println!("{summary:?}");
    assert_eq!(bare(&found), bare(&expected), "after the bulk delete");
    faults.close().await;
}

/// The saved position purged while the watch was down: said loudly (an
/// ERROR line with GAP and the command that closes it, the gaps metric),
/// and the watch carries on from the oldest log, where it still finds
/// what changed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_position_is_reported_as_a_gap() {
    let data = Arc::new(Dataset::generate("wgap", 9, 500, 2, 120, false));
    let (global, shard) = loaded_pair("wgap", data.global_sql(), data.shard_sql()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watch.toml");
    std::fs::write(
        &config,
        data.config_text(&global.root_url(), &shard.root_url()),
    )
    .unwrap();
    let port = free_port();
    let mut watch = spawn_watch(&config, dir.path(), port);
    assert!(wait_healthy(port, Duration::from_secs(20)).await);
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = blocking(move || watch.wait().unwrap()).await;
    assert_eq!(status.code(), Some(0));

    // While it is down: a new log file, and the old ones purged.
    let shard = blocking(move || {
        // MariaDB keeps a file until its binlog checkpoint has passed it:
        // flush and purge until the first file is gone.
        let first = shard.query("SHOW BINARY LOGS").unwrap()[0][0].clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            shard.run_sql("FLUSH BINARY LOGS").unwrap();
            let newest = shard.query("SHOW MASTER STATUS").unwrap()[0][0].clone();
            shard
                .run_sql(&format!("PURGE BINARY LOGS TO '{newest}'"))
                .unwrap();
            if shard.query("SHOW BINARY LOGS").unwrap()[0][0] != first {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{first} never purged");
            std::thread::sleep(Duration::from_millis(300));
        }
        shard
    })
    .await;
    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    faults.inject(5).await;

    let port = free_port();
    let mut watch = spawn_watch(&config, dir.path(), port);
    assert!(wait_healthy(port, Duration::from_secs(20)).await);
    let found = wait_found(dir.path(), &faults.expected, Duration::from_secs(20)).await;
    let (_, metrics) = blocking(move || get(&format!("http://127.0.0.1:{port}/metrics")))
        .await
        .unwrap();
    // References removed with no row events: a gap too.
    let truncate = format!("TRUNCATE TABLE `{}`.Attachment", data.shard_db);
    let shard = blocking(move || {
        shard.run_sql(&truncate).unwrap();
        shard
    })
    .await;
    let mut after_truncate = String::new();
    for _ in 0..50 {
        after_truncate = blocking(move || get(&format!("http://127.0.0.1:{port}/metrics")))
            .await
            .unwrap()
            .1;
        if after_truncate.contains("blobcheck_watch_log_gaps_total{server=\"shard\"} 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        after_truncate.contains("blobcheck_watch_log_gaps_total{server=\"shard\"} 2"),
        "a TRUNCATE of a reference table is a gap:\n{after_truncate}"
    );
    drop(shard);
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    blocking(move || watch.wait().unwrap()).await;
    let stderr = std::fs::read_to_string(dir.path().join(format!("stderr-{port}.log"))).unwrap();
    assert_eq!(bare(&found), bare(&faults.expected), "{stderr}");
    assert!(
        metrics.contains("blobcheck_watch_log_gaps_total{server=\"shard\"} 1"),
        "{stderr}\n{metrics}"
    );
    let gap = stderr
        .lines()
        .find(|l| l.contains("GAP"))
        .unwrap_or_else(|| panic!("no GAP line: {stderr}"));
    assert!(
        gap.contains("ERROR") && gap.contains("server `shard`"),
        "{gap}"
    );
    assert!(gap.contains("blobcheck check --config"), "{gap}");
    assert!(
        stderr.contains("removed watched rows without row events"),
        "{stderr}"
    );
    faults.close().await;
}
