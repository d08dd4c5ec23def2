//! Integration tests for `blobcheck::throttle`: the rate cap, and pauses on
//! Threads_running and replica lag measured on real MariaDB servers.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobcheck::sandbox::{Sandbox, SandboxOptions};
use blobcheck::throttle::{Throttle, ThrottleOptions};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool, Row};

/// Log lines written while a test runs.
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
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

/// Captures this thread's logs (and those of the throttle's task, which
/// inherits the subscriber of the thread that starts it).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn start(options: SandboxOptions) -> Sandbox {
    let name = options.name.clone();
    Sandbox::start(options).unwrap_or_else(|e| panic!("starting sandbox {name}: {e}"))
}

fn pool(url: &str) -> Pool {
    Pool::new(Opts::from_url(url).unwrap())
}

/// Whether `wait_ready` returns within `limit`.
async fn ready_within(throttle: &Throttle, limit: Duration) -> bool {
    tokio::time::timeout(limit, throttle.wait_ready())
        .await
        .is_ok()
}

fn polling(max_lag: Option<u64>, max_threads_running: Option<u64>) -> ThrottleOptions {
    ThrottleOptions {
        max_lag: max_lag.map(Duration::from_secs),
        max_threads_running,
        check_interval: Duration::from_millis(200),
        ..ThrottleOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_shared_by_concurrent_callers() {
    let throttle = Throttle::start(
        ThrottleOptions {
            max_rows_per_second: Some(10_000),
            ..ThrottleOptions::default()
        },
        Vec::new(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let throttle = Arc::clone(&throttle);
        tasks.push(tokio::spawn(async move {
            for _ in 0..75 {
                throttle.consume(100).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    // 30,000 rows at 10,000 rows/s with one second of burst: 2 s.
    assert!(
        elapsed >= Duration::from_millis(1800),
        "30,000 rows took only {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(10),
        "30,000 rows took {elapsed:?}"
    );
    let stats = throttle.stats();
    assert!(stats.rate_limited_seconds > 1.0, "{stats:?}");
    assert!(stats.rate_limited_seconds < 10.0, "{stats:?}");
    assert_eq!(stats.pauses, 0);

    // One huge request sleeps rows / rate, no more.
    let throttle = Throttle::start(
        ThrottleOptions {
            max_rows_per_second: Some(10_000),
            ..ThrottleOptions::default()
        },
        Vec::new(),
    );
    let started = Instant::now();
    throttle.consume(25_000).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");
    assert!(elapsed <= Duration::from_secs(8), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_while_threads_running_is_over_the_limit() {
    let (logs, _guard) = capture_logs();
    let server = start(SandboxOptions::new("thr_threads"));
    let load = pool(&server.root_url());
    let watched = pool(&server.root_url());

    // Five connections busy until the test says so (each waits for a lock
    // the test holds), plus the poll itself: 6 > 3. Nothing here depends on
    // how fast the machine is.
    let mut holder = load.get_conn().await.unwrap();
    let _: Vec<Row> = holder
        .query("SELECT GET_LOCK('thr_threads', 0)")
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let load = load.clone();
        waiters.push(tokio::spawn(async move {
            let mut conn = load.get_conn().await.unwrap();
            let _: Vec<Row> = conn
                .query("SELECT GET_LOCK('thr_threads', 600)")
                .await
                .unwrap();
            let _: Vec<Row> = conn
                .query("SELECT RELEASE_LOCK('thr_threads')")
                .await
                .unwrap();
        }));
    }
    // Let the waits start.
    let mut probe = load.get_conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(String, String)> = probe
            .query("SHOW GLOBAL STATUS LIKE 'Threads_running'")
            .await
            .unwrap();
        if rows[0].1.parse::<u64>().unwrap() >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(probe);

    let throttle = Throttle::start(polling(None, Some(3)), vec![("busy".into(), watched)]);
    assert!(
        !ready_within(&throttle, Duration::from_secs(1)).await,
        "wait_ready returned while 5 queries were running"
    );
    let _: Vec<Row> = holder
        .query("SELECT RELEASE_LOCK('thr_threads')")
        .await
        .unwrap();
    drop(holder);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert!(
        ready_within(&throttle, Duration::from_secs(30)).await,
        "wait_ready still blocked after the queries ended"
    );
    let stats = throttle.stats();
    assert!(stats.pauses >= 1, "{stats:?}");
    assert!(stats.paused_seconds > 0.5, "{stats:?}");
    let text = logs.text();
    assert!(
        text.contains("throttling: server `busy` Threads_running")
            && text.contains("> --max-threads-running 3; pausing"),
        "{text}"
    );
    assert!(text.contains("resuming after"), "{text}");

    // Dropping the throttle ends its task.
    drop(throttle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while logs.count("throttling: polling stopped") == 0 {
        assert!(Instant::now() < deadline, "the polling task did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.disconnect().await.unwrap();
}

/// (Slave_IO_Running, Slave_SQL_Running, Seconds_Behind_Master).
async fn replica_status(pool: &Pool) -> Option<(String, String, Option<u64>)> {
    let mut conn = pool.get_conn().await.unwrap();
    let row: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await.unwrap();
    row.map(|row| {
        (
            row.get::<String, _>("Slave_IO_Running").unwrap(),
            row.get::<String, _>("Slave_SQL_Running").unwrap(),
            row.get::<Option<u64>, _>("Seconds_Behind_Master").unwrap(),
        )
    })
}

/// Waits up to `limit` for the replica's status to satisfy `ok`.
async fn wait_status(
    pool: &Pool,
    limit: Duration,
    ok: impl Fn(&(String, String, Option<u64>)) -> bool,
) -> (String, String, Option<u64>) {
    let deadline = Instant::now() + limit;
    loop {
        let status = replica_status(pool).await.expect("a replica");
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "replica status {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_on_replica_lag_and_stopped_replication() {
    let (logs, _guard) = capture_logs();
    let primary = start(
        SandboxOptions::new("thr_primary")
            .arg("--log-bin=mysql-bin")
            .arg("--server-id=1"),
    );
    let replica = start(SandboxOptions::new("thr_replica").arg("--server-id=2"));
    replica
        .run_sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
             MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;",
            primary.port()
        ))
        .unwrap();
    let primary_pool = pool(&primary.root_url());
    let replica_pool = pool(&replica.root_url());
    wait_status(&replica_pool, Duration::from_secs(30), |s| {
        s.0 == "Yes" && s.1 == "Yes" && s.2 == Some(0)
    })
    .await;
    primary
        .run_sql(
            "CREATE DATABASE thr; CREATE TABLE thr.beat (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME);",
        )
        .unwrap();

    // Replication running, no lag: no wait (the primary is not a replica).
    let servers = vec![
        ("primary".to_string(), primary_pool.clone()),
        ("replica".to_string(), replica_pool.clone()),
    ];
    let throttle = Throttle::start(polling(Some(5), None), servers.clone());
    assert!(ready_within(&throttle, Duration::from_secs(3)).await);
    assert_eq!(throttle.stats().pauses, 0);

    // SQL thread stopped: Seconds_Behind_Master is NULL, reads pause.
    replica.run_sql("STOP SLAVE SQL_THREAD").unwrap();
    wait_status(&replica_pool, Duration::from_secs(10), |s| s.2.is_none()).await;
    // The throttle sees it at its next poll (every 200 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !ready_within(&throttle, Duration::from_millis(1500)).await,
        "wait_ready returned while replication was stopped"
    );
    assert_eq!(
        logs.count("throttling: server `replica` replication is not running"),
        1,
        "{}",
        logs.text()
    );
    let waiter = {
        let throttle = Arc::clone(&throttle);
        tokio::spawn(async move {
            let started = Instant::now();
            throttle.wait_ready().await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    replica.run_sql("START SLAVE SQL_THREAD").unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_ready returns once replication runs again")
        .unwrap();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    let stats = throttle.stats();
    assert!(stats.pauses >= 1, "{stats:?}");
    assert!(stats.paused_seconds >= 1.5, "{stats:?}");
    drop(throttle);

    // Real lag: a delayed replica falls behind the primary's writes.
    replica
        .run_sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=120; START SLAVE;")
        .unwrap();
    wait_status(&replica_pool, Duration::from_secs(30), |s| {
        s.0 == "Yes" && s.1 == "Yes" && s.2 == Some(0)
    })
    .await;
    let throttle = Throttle::start(polling(Some(2), None), servers.clone());
    // (Right after START SLAVE, MariaDB may show a few seconds of lag for
    // a moment.)
    assert!(ready_within(&throttle, Duration::from_secs(10)).await);
    primary
        .run_sql("INSERT INTO thr.beat (at) VALUES (NOW())")
        .unwrap();
    let lagging = wait_status(&replica_pool, Duration::from_secs(30), |s| {
        s.2.is_some_and(|lag| lag >= 4)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !ready_within(&throttle, Duration::from_secs(1)).await,
        "wait_ready returned while the replica lagged {lagging:?}"
    );
    let text = logs.text();
    assert!(
        text.contains("throttling: server `replica` replica lag ")
            && text.contains(" s > --max-lag 2 s; pausing"),
        "{text}"
    );
    replica
        .run_sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE;")
        .unwrap();
    assert!(
        ready_within(&throttle, Duration::from_secs(20)).await,
        "wait_ready still blocked after the replica caught up: {:?}",
        replica_status(&replica_pool).await
    );
    assert!(throttle.stats().pauses >= 1);
    drop(throttle);

    replica.run_sql("STOP SLAVE").unwrap();
    primary_pool.disconnect().await.unwrap();
    replica_pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_check_without_privilege_warns_once_and_does_not_block() {
    let (logs, _guard) = capture_logs();
    let server = start(SandboxOptions::new("thr_priv"));
    server
        .run_sql(
            "CREATE DATABASE app; \
             CREATE USER 'reader'@'%' IDENTIFIED BY 'pw'; \
             GRANT SELECT ON app.* TO 'reader'@'%';",
        )
        .unwrap();
    let limited = pool(&server.url_for("reader", "pw"));
    let throttle = Throttle::start(
        polling(Some(5), Some(50)),
        vec![("limited".into(), limited.clone())],
    );
    let started = Instant::now();
    assert!(ready_within(&throttle, Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Several more polls: still ready, still one warning.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ready_within(&throttle, Duration::from_millis(100)).await);
    let text = logs.text();
    assert_eq!(
        logs.count("cannot read replica lag on server `limited`"),
        1,
        "{text}"
    );
    assert!(text.contains("SLAVE MONITOR"), "{text}");
    assert!(text.contains("REPLICATION CLIENT"), "{text}");
    assert_eq!(throttle.stats().pauses, 0);
    drop(throttle);
    limited.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_never_waits() {
    let throttle = Throttle::unlimited();
    let started = Instant::now();
    for _ in 0..1000 {
        throttle.wait_ready().await;
        throttle.consume(1_000_000).await;
    }
    throttle.consume(u64::MAX).await;
    // No limit set: no task, no wait, even with servers given.
    let idle = Throttle::start(
        ThrottleOptions::default(),
        vec![(
            "nowhere".into(),
            pool("mysql://root@127.0.0.1:1"), // never contacted
        )],
    );
    idle.wait_ready().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let stats = throttle.stats();
    assert_eq!(stats.pauses, 0);
    assert_eq!(stats.paused_seconds, 0.0);
    assert_eq!(stats.rate_limited_seconds, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_does_not_block() {
    // A failed poll leaves the previous state: before any poll succeeds,
    // that is "not paused".
    let throttle = Throttle::start(
        polling(Some(5), Some(10)),
        vec![("gone".into(), pool("mysql://root@127.0.0.1:1"))],
    );
    assert!(ready_within(&throttle, Duration::from_secs(10)).await);
    assert_eq!(throttle.stats().pauses, 0);
}
