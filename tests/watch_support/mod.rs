//! Shared by the watch tests and the watch benchmark's checks: servers with
//! binary logs, a buggy writer that injects one fault of each kind at random
//! moments (on blob ids of its own, so that the expected finding is exact),
//! and a watch run in process.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use blobcheck::check::StopRequest;
use blobcheck::config::Config;
use blobcheck::confirm::ConfirmOptions;
use blobcheck::report::{Format, Reporter};
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use blobcheck::scan::ScanOptions;
use blobcheck::watch::{WatchOptions, WatchSummary};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{Captured, Exact, parse_jsonl};

/// A server with a binary log in row format, full images.
pub fn logged_server(name: &str, server_id: u32) -> Sandbox {
    Sandbox::start(
        SandboxOptions::new(name)
            .arg("--log-bin=mysql-bin")
            .arg(format!("--server-id={server_id}"))
            .arg("--binlog-format=ROW")
            .arg("--binlog-row-image=FULL"),
    )
    .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// Global and shard servers with binary logs, started at once.
pub fn logged_pair(name: &str) -> (Sandbox, Sandbox) {
    let shard_name = format!("{name}_shard");
    let shard = std::thread::spawn(move || logged_server(&shard_name, 12));
    let global = logged_server(&format!("{name}_global"), 11);
    (global, shard.join().unwrap())
}

/// `logged_pair`, loaded with `global_sql` and `shard_sql`, off the
/// runtime.
pub async fn loaded_pair(name: &str, global_sql: String, shard_sql: String) -> (Sandbox, Sandbox) {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let (global, shard) = logged_pair(&name);
        global.run_sql(&global_sql).unwrap();
        shard.run_sql(&shard_sql).unwrap();
        (global, shard)
    })
    .await
    .expect("starting and loading the servers")
}

/// Watch options for tests: settle delay and confirmations as given, the
/// defaults otherwise.
pub fn watch_options(settle: Duration, confirmations: u32, stop: StopRequest) -> WatchOptions {
    WatchOptions {
        confirm: ConfirmOptions {
            settle_delay: settle,
            confirmations,
            hot_threshold: 100,
            ..ConfirmOptions::disabled()
        },
        scan: ScanOptions::fixed(5_000, 2),
        throttle: blobcheck::throttle::ThrottleOptions::default(),
        retry_for: Duration::from_secs(60),
        max_connections_per_server: 10,
        affected_rows: 3,
        max_waiting: 100_000,
        state: None,
        state_interval: Duration::from_secs(1),
        listen: None,
        replication_server_id: blobcheck::db::binlog::DEFAULT_REPLICATION_SERVER_ID,
        max_behind: Duration::from_secs(60),
        config_path: None,
        stop: Some(stop),
    }
}

/// A watch running in process, its findings captured as JSON lines.
pub struct RunningWatch {
    pub out: Captured,
    stop: tokio::sync::watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<blobcheck::error::Result<WatchSummary>>,
}

impl RunningWatch {
    /// Starts the watch and waits until every stream is reading (its log
    /// position is taken at start, so a write after this returns is seen).
    pub async fn start(
        config: &Config,
        options: impl FnOnce(StopRequest) -> WatchOptions,
    ) -> RunningWatch {
        let (stop, request) = StopRequest::channel();
        let options = options(request);
        let out = Captured::default();
        let labels = config.references.iter().map(|r| r.label.clone()).collect();
        // Whole lines, as the command writes them: the test reads while
        // the watch writes.
        let lines = std::io::LineWriter::new(out.clone());
        let reporter = Reporter::new(Format::Json, Box::new(lines), labels);
        let config = config.clone();
        let task =
            tokio::spawn(async move { blobcheck::watch::run(&config, &options, reporter).await });
        // The start positions are read before the streams open; give them
        // the time to open.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !task.is_finished(),
            "the watch ended at start: {:?}",
            task.await
        );
        RunningWatch { out, stop, task }
    }

    pub fn findings(&self) -> Vec<Exact> {
        parse_jsonl(&self.out.text())
    }

    /// The raw JSON lines.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits until every expected finding is in, or `limit` passes.
    pub async fn wait_for(&self, expected: &[Exact], limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let found = self.findings();
            if expected.iter().all(|e| found.iter().any(|f| same(f, e))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) -> (Vec<Exact>, WatchSummary) {
        let _ = self.stop.send(Some("test".into()));
        let summary = self
            .task
            .await
            .expect("the watch task")
            .expect("the watch ends without error");
        (parse_jsonl(&self.out.text()), summary)
    }
}

/// The same finding, references aside.
pub fn same(a: &Exact, b: &Exact) -> bool {
    a.kind == b.kind && a.blob_id == b.blob_id && a.stored == b.stored && a.actual == b.actual
}

/// Faults of every kind, each on blob ids of its own.
pub struct Faults {
    global: Pool,
    shard: Pool,
    global_db: String,
    shard_db: String,
    next_id: u64,
    next_row: u64,
    pub expected: Vec<Exact>,
    /// When each fault was committed.
    pub committed: Vec<(u64, Instant)>,
    /// Each fault's faulty statement, by blob id: the last write that
    /// touched the blob, which its finding must name.
    pub statements: std::collections::HashMap<u64, String>,
    last: String,
}

/// Blob ids the fault writer uses: apart from the data set's and the churn
/// writers'.
pub const FAULT_BASE: u64 = 1 << 50;
/// And some above 2⁶³.
pub const HIGH_FAULT_BASE: u64 = (1 << 63) + 1_000;

impl Faults {
    pub fn new(
        global_url: &str,
        shard_url: &str,
        global_db: &str,
        shard_db: &str,
        base: u64,
    ) -> Faults {
        Faults {
            global: Pool::new(Opts::from_url(global_url).unwrap()),
            shard: Pool::new(Opts::from_url(shard_url).unwrap()),
            global_db: global_db.to_owned(),
            shard_db: shard_db.to_owned(),
            next_id: base,
            // Rows apart per base too.
            next_row: (1 << 45) + (base >> 40) * 1_000_000,
            expected: Vec::new(),
            committed: Vec::new(),
            statements: std::collections::HashMap::new(),
            last: String::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn row(&mut self) -> u64 {
        self.next_row += 1;
        self.next_row
    }

    async fn global(&mut self, sql: &str) {
        self.global
            .get_conn()
            .await
            .unwrap()
            .query_drop(sql)
            .await
            .unwrap();
        self.last = sql.to_owned();
    }

    async fn shard(&mut self, sql: &str) {
        self.shard
            .get_conn()
            .await
            .unwrap()
            .query_drop(sql)
            .await
            .unwrap();
        self.last = sql.to_owned();
    }

    /// A blob with `count` stored and one attachment referencing it, made
    /// the right way (count first).
    async fn blob_with_reference(&mut self, count: u64) -> (u64, u64) {
        let id = self.id();
        let row = self.row();
        self.global(&format!(
            "INSERT INTO `{}`.BlobStorage (BlobStorageID, NumReferences, Size) VALUES ({id}, {count}, 1)",
            self.global_db
        ))
        .await;
        self.shard(&format!(
            "INSERT INTO `{}`.Attachment (AttachmentID, MessageID, BlobStorageID) VALUES ({row}, 0, {id})",
            self.shard_db
        ))
        .await;
        (id, row)
    }

    fn expect(&mut self, kind: &str, id: u64, stored: Option<u64>, actual: u64) {
        self.expected.push(Exact {
            kind: kind.to_owned(),
            blob_id: id,
            stored,
            actual,
            references: Vec::new(),
        });
        self.committed.push((id, Instant::now()));
        self.statements.insert(id, self.last.clone());
    }

    /// Injects fault `n` (of the six kinds, in turn).
    pub async fn inject(&mut self, n: usize) {
        match n % 6 {
            0 => {
                // A reference added without its count.
                let (id, _) = self.blob_with_reference(1).await;
                let row = self.row();
                self.shard(&format!(
                    "INSERT INTO `{}`.Attachment (AttachmentID, MessageID, BlobStorageID) VALUES ({row}, 0, {id})",
                    self.shard_db
                ))
                .await;
                self.expect("count_mismatch", id, Some(1), 2);
            }
            1 => {
                // A count incremented without a reference.
                let (id, _) = self.blob_with_reference(1).await;
                self.global(&format!(
                    "UPDATE `{}`.BlobStorage SET NumReferences = NumReferences + 1 WHERE BlobStorageID = {id}",
                    self.global_db
                ))
                .await;
                self.expect("count_mismatch", id, Some(2), 1);
            }
            2 => {
                // A count set to 0 while referenced.
                let (id, _) = self.blob_with_reference(1).await;
                self.global(&format!(
                    "UPDATE `{}`.BlobStorage SET NumReferences = 0 WHERE BlobStorageID = {id}",
                    self.global_db
                ))
                .await;
                self.expect("count_mismatch", id, Some(0), 1);
            }
            3 => {
                // A referenced blob's row deleted.
                let (id, _) = self.blob_with_reference(1).await;
                self.global(&format!(
                    "DELETE FROM `{}`.BlobStorage WHERE BlobStorageID = {id}",
                    self.global_db
                ))
                .await;
                self.expect("missing_blob", id, None, 1);
            }
            4 => {
                // The last reference removed without the count.
                let (id, row) = self.blob_with_reference(1).await;
                self.shard(&format!(
                    "DELETE FROM `{}`.Attachment WHERE AttachmentID = {row}",
                    self.shard_db
                ))
                .await;
                self.expect("orphan_blob", id, Some(1), 0);
            }
            _ => {
                // A reference to an id that never existed.
                let id = self.id();
                let row = self.row();
                self.shard(&format!(
                    "INSERT INTO `{}`.Attachment (AttachmentID, MessageID, BlobStorageID) VALUES ({row}, 0, {id})",
                    self.shard_db
                ))
                .await;
                self.expect("missing_blob", id, None, 1);
            }
        }
    }

    /// Injects `count` faults at random moments, `max_gap` apart at most.
    pub async fn inject_randomly(&mut self, count: usize, max_gap: Duration, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for n in 0..count {
            let gap = rng.random_range(0..=max_gap.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            self.inject(n).await;
        }
    }

    pub async fn close(self) {
        let _ = self.global.disconnect().await;
        let _ = self.shard.disconnect().await;
    }
}

/// Sorted, references dropped: for comparing with `Faults::expected`.
pub fn bare(findings: &[Exact]) -> Vec<Exact> {
    let mut out: Vec<Exact> = findings
        .iter()
        .map(|f| Exact {
            references: Vec::new(),
            ..f.clone()
        })
        .collect();
    out.sort();
    out
}

/// A primary and its replica, both with binary logs; the replica logs what
/// it applies (`log_slave_updates`), `delay_secs` late (`MASTER_DELAY`).
pub struct Pair {
    pub primary: Sandbox,
    pub replica: Sandbox,
}

impl Pair {
    pub fn start(name: &str, server_id: u32, delay_secs: u64) -> Pair {
        let primary_name = format!("{name}_primary");
        let primary = std::thread::spawn(move || logged_server(&primary_name, server_id));
        let replica_name = format!("{name}_replica");
        let replica = Sandbox::start(
            SandboxOptions::new(replica_name.as_str())
                .arg("--log-bin=mysql-bin")
                .arg(format!("--server-id={}", server_id + 1))
                .arg("--binlog-format=ROW")
                .arg("--binlog-row-image=FULL")
                .arg("--log-slave-updates=ON"),
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = replica
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
        Pair { primary, replica }
    }

    /// Waits until the replica has applied everything the primary wrote.
    pub fn wait_caught_up(&self) {
        let position = &self.primary.query("SELECT @@gtid_binlog_pos").unwrap()[0][0];
        let waited = self
            .replica
            .query(&format!("SELECT MASTER_GTID_WAIT('{position}', 120)"))
            .unwrap();
        assert_eq!(
            waited[0][0], "0",
            "the replica did not reach GTID {position}"
        );
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `blobcheck watch` as a process, settling fast (0.5 s, one
/// confirmation): findings in `dir/found.jsonl`, its state in
/// `dir/state.json`, `/metrics` on `port`. The caller sets stderr.
pub fn watch_command(
    config: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_blobcheck"));
    command
        .args(["watch", "--config"])
        .arg(config)
        .args(["--format", "json", "--output"])
        .arg(dir.join("found.jsonl"))
        .arg("--state")
        .arg(dir.join("state.json"))
        .args(["--settle-delay", "0.5", "--confirmations", "1"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    command
}

/// Waits until `dir/found.jsonl` holds every expected finding, or `limit`
/// passed; returns what it holds.
pub async fn wait_found(dir: &std::path::Path, expected: &[Exact], limit: Duration) -> Vec<Exact> {
    let deadline = Instant::now() + limit;
    loop {
        let found = crate::common::read_findings(&dir.join("found.jsonl"));
        let all = expected.iter().all(|e| found.iter().any(|f| same(f, e)));
        if all || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One HTTP GET: (status, body); `None` when nothing answers.
pub fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Polls `url` until it answers 200, for `limit`. Blocking.
pub fn wait_ok(url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some((200, _)) = get(url) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
