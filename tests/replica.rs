//! The check is meant to run on replicas. Two primary/replica pairs (global
//! and shard, GTID replication), as in production: the writers change
//! references on the primaries, the check reads the replicas, which lag
//! independently (the shard replica applies events one second late, the
//! global replica at once). With a settle delay longer than the writers'
//! pause between their two steps plus the lag difference, the confirmed
//! check reports exactly the injected faults. At rest, with the shard
//! replica's SQL thread stopped, `--max-lag` pauses the check until it runs
//! again.

mod churn_support;
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobcheck::check::CheckOptions;
use blobcheck::confirm::ConfirmOptions;
use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER, create_checker_sql};
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use blobcheck::scan::ScanOptions;
use blobcheck::throttle::ThrottleOptions;
use churn_support::{
    Comparison, Dataset, WriterOptions, Writers, blocking, run_check, run_check_during,
};
use mysql_async::prelude::Queryable;

/// How late the shard replica applies what the shard primary wrote
/// (`MASTER_DELAY`, whole seconds): the two replicas lag independently.
const SHARD_REPLICA_DELAY_SECS: u64 = 1;

/// Log lines written while the test runs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Polls a replica's `Seconds_Behind_Master` every 250 ms until `stop`;
/// returns the largest value seen (`None` if replication ever stopped).
fn sample_lag(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Option<u64>> {
    tokio::spawn(async move {
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&url).unwrap());
        let mut max = Some(0);
        while !stop.load(Ordering::SeqCst) {
            let mut conn = pool.get_conn().await.unwrap();
            let row: Option<mysql_async::Row> =
                conn.query_first("SHOW SLAVE STATUS").await.unwrap();
            let lag = row.and_then(|r| r.get::<Option<u64>, _>("Seconds_Behind_Master").flatten());
            max = match (max, lag) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            drop(conn);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = pool.disconnect().await;
        max
    })
}

/// A primary (binary log, row format) and its replica (GTID, replicating as
/// root), started at once and replicating.
struct Pair {
    primary: Sandbox,
    replica: Sandbox,
}

impl Pair {
    fn start(name: &str, server_id: u32, delay_secs: u64) -> Pair {
        let primary_name = format!("{name}_primary");
        let primary = std::thread::spawn(move || {
            Sandbox::start(
                SandboxOptions::new(primary_name.as_str())
                    .arg("--log-bin=mysql-bin")
                    .arg(format!("--server-id={server_id}"))
                    .arg("--binlog-format=ROW"),
            )
            .unwrap_or_else(|e| panic!("starting {primary_name}: {e}"))
        });
        let replica_name = format!("{name}_replica");
        let replica = Sandbox::start(
            SandboxOptions::new(replica_name.as_str())
                .arg(format!("--server-id={}", server_id + 1)),
        )
        .unwrap_or_else(|e| panic!("starting {replica_name}: {e}"));
        let primary = primary.join().unwrap();
        replica
            .run_sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
                 MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
                 MASTER_DELAY={delay_secs}; START SLAVE;",
                primary.port()
            ))
            .unwrap();
        let pair = Pair { primary, replica };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // ON once the I/O thread is connected and the SQL thread runs.
            let rows = pair
                .replica
                .query("SHOW GLOBAL STATUS LIKE 'Slave_running'")
                .unwrap();
            if rows[0][1] == "ON" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: replication did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pair
    }

    /// Waits until the replica has applied everything the primary wrote.
    fn wait_caught_up(&self) {
        let position = &self.primary.query("SELECT @@gtid_binlog_pos").unwrap()[0][0];
        let waited = self
            .replica
            .query(&format!("SELECT MASTER_GTID_WAIT('{position}', 60)"))
            .unwrap();
        assert_eq!(
            waited[0][0], "0",
            "the replica did not reach GTID {position} within 60 s"
        );
    }

    /// One query's rows on the primary and on the replica.
    fn both(&self, sql: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        (
            self.primary.query(sql).unwrap(),
            self.replica.query(sql).unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_replicas_during_churn_on_the_primaries() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let t0 = Instant::now();
    let shard =
        tokio::task::spawn_blocking(|| Pair::start("rep_shard", 3, SHARD_REPLICA_DELAY_SECS));
    let global = blocking(|| Pair::start("rep_global", 1, 0)).await;
    let shard = shard.await.unwrap();
    println!(
        "two primary/replica pairs replicating after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Load on the primaries: the replicas get the data by replication.
    let data = Arc::new(Dataset::generate("rep", 11, 20_000, 60, 2_000, false));
    let (global, shard) = {
        let d = Arc::clone(&data);
        let shard = tokio::task::spawn_blocking(move || {
            shard.primary.run_sql(&d.shard_sql()).unwrap();
            shard.wait_caught_up();
            shard
        });
        let d = Arc::clone(&data);
        let global = blocking(move || {
            global.primary.run_sql(&d.global_sql()).unwrap();
            global.wait_caught_up();
            global
        })
        .await;
        (global, shard.await.unwrap())
    };
    let global = Arc::new(global);
    let shard = Arc::new(shard);
    {
        let (global, shard, d) = (Arc::clone(&global), Arc::clone(&shard), Arc::clone(&data));
        blocking(move || {
            let (p, r) = global.both(&format!(
                "SELECT COUNT(*), SUM(NumReferences) FROM `{}`.BlobStorage; SELECT COUNT(*) FROM `{}`.SentMessage",
                d.global_db, d.global_db
            ));
            assert_eq!(p, r, "the global replica holds what the primary holds");
            let (p, r) = shard.both(&format!(
                "SELECT COUNT(*) FROM `{}`.MessageData; SELECT COUNT(*) FROM `{}`.Attachment",
                d.shard_db, d.shard_db
            ));
            assert_eq!(p, r, "the shard replica holds what the primary holds");
            // The checking account lives on the replicas only: SELECT on the
            // data, and SLAVE MONITOR to read the replica lag (MariaDB 10.5+;
            // REPLICATION CLIENT on MySQL and older MariaDB).
            for (pair, db) in [(&global, &d.global_db), (&shard, &d.shard_db)] {
                pair.replica
                    .run_sql(&format!(
                        "{}GRANT SLAVE MONITOR ON *.* TO '{CHECKER_USER}'@'%';",
                        create_checker_sql(&[db.as_str()])
                    ))
                    .unwrap();
            }
        })
        .await;
    }
    println!(
        "{} blobs loaded on the primaries and replicated after {:.1} s; {} injected faults; shard replica {} s late",
        data.blobs.len(),
        t0.elapsed().as_secs_f64(),
        data.expected.len(),
        SHARD_REPLICA_DELAY_SECS
    );
    let config = data.config(
        &global.replica.url_for(CHECKER_USER, CHECKER_PASSWORD),
        &shard.replica.url_for(CHECKER_USER, CHECKER_PASSWORD),
    );

    let writers = Writers::start(
        Arc::new(data.app()),
        &global.primary.root_url(),
        &shard.primary.root_url(),
        WriterOptions {
            writers: std::env::var("CHURN_WRITERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(12),
            ..WriterOptions::default()
        },
    )
    .await;
    let sampling = Arc::new(AtomicBool::new(false));
    let lags = [
        sample_lag(global.replica.root_url(), Arc::clone(&sampling)),
        sample_lag(shard.replica.root_url(), Arc::clone(&sampling)),
    ];
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Reads pause while a replica lags more than 2 s (the shard replica
    // lags about 1 s).
    let base = CheckOptions {
        throttle: ThrottleOptions {
            max_lag: Some(Duration::from_secs(2)),
            max_rows_per_second: Some(10_000),
            check_interval: Duration::from_millis(500),
            ..ThrottleOptions::default()
        },
        ..CheckOptions::new(ScanOptions::fixed(100, 2))
    };

    // A single pass on the replicas: the lag difference adds false findings.
    let (found, summary, single_rate) = run_check_during(&writers, &config, &base).await;
    let single = Comparison::new(&found, &data.expected);
    println!(
        "single pass on the replicas: {:.1} s at {single_rate:.0} operations/s: {} findings, {} false, {} missed",
        summary.seconds,
        found.len(),
        single.false_findings.len(),
        single.missed.len(),
    );

    // Confirmed, but with a settle delay shorter than the lag difference:
    // a change in flight on the replicas outlasts the reads that confirm it.
    let short = Duration::from_millis(150);
    let (found, summary) = run_check(
        &config,
        &CheckOptions {
            confirm: ConfirmOptions {
                settle_delay: short,
                confirmations: 2,
                batch_size: 500,
                hot_threshold: 100,
            },
            // The scan watches busy blobs for the confirmation.
            scan: ScanOptions {
                hot_threshold: 100,
                ..base.scan
            },
            ..base.clone()
        },
    )
    .await;
    let too_short = Comparison::new(&found, &data.expected);
    println!(
        "confirmed on the replicas with settle {short:?} (< the lag difference): {:.1} s: {} findings, {} false, {} missed; {} transient",
        summary.seconds,
        found.len(),
        too_short.false_findings.len(),
        too_short.missed.len(),
        summary.transient,
    );

    // Confirmed: the reads of a candidate span 2 settle delays, 3.2 s, more
    // than a change can stay in flight on the replicas: the writers' pause
    // (50 ms) plus the lag difference, which the throttle keeps at most
    // max_lag (2 s) plus the 1 s granularity of Seconds_Behind_Master.
    let settle = Duration::from_millis(1600);
    let options = CheckOptions {
        confirm: ConfirmOptions {
            settle_delay: settle,
            confirmations: 2,
            batch_size: 500,
            hot_threshold: 100,
        },
        // The scan watches busy blobs for the confirmation.
        scan: ScanOptions {
            hot_threshold: 100,
            ..base.scan
        },
        ..base.clone()
    };
    let (found, summary, rate) = run_check_during(&writers, &config, &options).await;
    let result = Comparison::new(&found, &data.expected);
    println!(
        "confirmed on the replicas (settle {settle:?}, 2 confirmations, max lag 2 s): {:.1} s at {rate:.0} operations/s, throttled {:.1} s: {} findings; {} transient, {} unsettled {:?}; {}",
        summary.seconds,
        summary.throttled_seconds,
        found.len(),
        summary.transient,
        summary.unsettled.len(),
        summary.unsettled,
        result.describe()
    );

    let report = writers.stop().await;
    println!("writers: {report}");
    sampling.store(true, Ordering::SeqCst);
    let [global_lag, shard_lag] = lags;
    println!(
        "largest Seconds_Behind_Master seen: global replica {:?}, shard replica {:?}",
        global_lag.await.unwrap(),
        shard_lag.await.unwrap()
    );
    {
        let (global, shard) = (Arc::clone(&global), Arc::clone(&shard));
        blocking(move || {
            global.wait_caught_up();
            shard.wait_caught_up();
        })
        .await;
    }
    let (at_rest, _) = run_check(&config, &CheckOptions::new(ScanOptions::fixed(5_000, 2))).await;
    let at_rest = Comparison::new(&at_rest, &data.expected);
    assert!(
        at_rest.is_exact(),
        "caught up and at rest, the replicas must hold exactly the injected faults: {}",
        at_rest.describe()
    );

    // The lag throttle, made to act for sure: the shard replica's SQL thread
    // is stopped before the check starts (`Seconds_Behind_Master` is NULL,
    // which --max-lag treats as over the limit), so the throttle's first poll
    // pauses every read; the thread is started again only once the pause is
    // in the log.
    {
        let shard = Arc::clone(&shard);
        blocking(move || shard.replica.run_sql("STOP SLAVE SQL_THREAD").unwrap()).await;
    }
    let logged_before = logs.text().len();
    let lag_options = CheckOptions {
        throttle: ThrottleOptions {
            max_lag: Some(Duration::from_secs(2)),
            check_interval: Duration::from_millis(200),
            ..ThrottleOptions::default()
        },
        ..CheckOptions::new(ScanOptions::fixed(5_000, 2))
    };
    let check = run_check(&config, &lag_options);
    tokio::pin!(check);
    let mut restarted = false;
    let (paused_found, paused) = loop {
        tokio::select! {
            done = &mut check => break done,
            _ = tokio::time::sleep(Duration::from_millis(50)), if !restarted => {
                if logs.text()[logged_before..].contains("replication is not running") {
                    let shard = Arc::clone(&shard);
                    blocking(move || shard.replica.run_sql("START SLAVE SQL_THREAD").unwrap()).await;
                    restarted = true;
                }
            }
        }
    };
    if !restarted {
        let shard = Arc::clone(&shard);
        blocking(move || shard.replica.run_sql("START SLAVE SQL_THREAD").unwrap()).await;
    }
    assert!(
        restarted,
        "the check ran to its end while the shard replica's SQL thread was stopped: --max-lag never paused it"
    );
    let paused_found = Comparison::new(&paused_found, &data.expected);
    let lag_log = logs.text()[logged_before..].to_owned();
    println!(
        "with the shard replica's SQL thread stopped at the start: throttled {:.1} s; {}",
        paused.throttled_seconds,
        paused_found.describe()
    );
    assert!(
        lag_log.contains("replication is not running") && lag_log.contains("pausing"),
        "the pause is logged with its reason: {lag_log}"
    );
    assert!(
        lag_log.contains("again, after"),
        "the end of the pause is logged: {lag_log}"
    );
    assert!(
        paused.throttled_seconds > 0.0,
        "the lag throttle held the reads back (no rate cap in this run)"
    );
    assert!(
        paused_found.is_exact(),
        "after the pause the check reports exactly the injected faults: {}",
        paused_found.describe()
    );

    let text = logs.text();
    assert!(
        !text.contains("cannot read replica lag"),
        "with SLAVE MONITOR the checking account reads the lag: {text}"
    );
    assert!(
        result.is_exact(),
        "on the replicas during churn the confirmed check must report exactly the injected faults: {}",
        result.describe()
    );
    assert!(
        rate >= 100.0,
        "the writers must really churn: {rate:.0} operations/s"
    );
    assert!(summary.transient > 0, "changes in flight were seen");
    assert!(
        !single.false_findings.is_empty() && !too_short.false_findings.is_empty(),
        "unconfirmed, or confirmed with a settle delay below the lag difference, changes in flight are reported"
    );

    let (global, shard) = (
        Arc::try_unwrap(global).ok().unwrap(),
        Arc::try_unwrap(shard).ok().unwrap(),
    );
    blocking(move || {
        for pair in [&global, &shard] {
            let _ = pair.replica.run_sql("STOP SLAVE");
        }
        drop((global, shard));
    })
    .await;
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
}
