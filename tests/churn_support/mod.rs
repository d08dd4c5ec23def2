//! Shared by `tests/churn.rs` and `tests/replica.rs`: a data set shaped like
//! the production schema with injected persistent faults, writers that change
//! references the way the application does (two steps on two servers, in
//! either order, with a pause between them), and a check run in process whose
//! findings are compared with the injected faults.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobcheck::check::{self, CheckOptions};
use blobcheck::config::Config;
use blobcheck::report::{Format, Reporter, Summary};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{Captured, Exact, parse_jsonl};

/// Ids of blobs the writers create: far above the generated ones, so they
/// never collide with a fault.
pub const NEW_BLOB_BASE: u64 = 1 << 40;
/// Labels of the reference columns in the configuration.
pub const LABELS: [&str; 4] = ["sent", "body", "header", "attachment"];

/// One row that references blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefRow {
    /// Global `SentMessage(SentMessageID, BlobStorageID)`.
    Sent(u64, u64),
    /// Shard `Attachment(AttachmentID, BlobStorageID)`.
    Attachment(u64, u64),
    /// Shard `MessageData(MessageID, Body, Header)`.
    Message(u64, u64, u64),
}

/// What kind of persistent fault a blob id carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    TooHigh,
    TooLow,
    StoredZero,
    Missing,
    Orphan,
    /// Stored 0 and no reference: fine, never reported (a control).
    ZeroUnreferenced,
}

/// A fault the check must report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub kind: &'static str,
    pub blob_id: u64,
    /// `Some((stored, actual))` for blobs the writers never touch: reported
    /// exactly. `None` for hot blobs: only the difference is fixed.
    pub exact: Option<(Option<u64>, u64)>,
    /// `stored − actual` (a missing row counts as 0).
    pub difference: i128,
    /// For blobs the writers never touch: (column label, references),
    /// sorted, nonzero only.
    pub references: Option<Vec<(String, u64)>>,
}

/// The generated data set: its rows, its faults, and what the writers may
/// touch.
pub struct Dataset {
    pub global_db: String,
    pub shard_db: String,
    /// BlobStorageID → NumReferences.
    pub blobs: BTreeMap<u64, u64>,
    /// Reference rows the writers may delete (their blobs are not faulty).
    pub removable: Vec<RefRow>,
    /// Reference rows of faulty blobs: never touched.
    pub frozen: Vec<RefRow>,
    /// Rows with a NULL reference: `(table is Sent, id)`.
    pub nulls: Vec<(bool, u64)>,
    /// Non-faulty blobs the writers may add references to.
    pub addable: Vec<u64>,
    /// Heavily referenced blobs: (id, stored − actual, churned by the
    /// writers).
    pub hot: Vec<(u64, i128, bool)>,
    /// Removable reference rows of each churned hot blob.
    pub hot_rows: Vec<Vec<RefRow>>,
    pub expected: Vec<Expected>,
    pub next_sent: u64,
    pub next_attachment: u64,
    pub next_message: u64,
}

/// Spreads reference slots (one blob id per reference) over the three
/// tables: messages pair two different blobs as body and header.
fn distribute(
    rng: &mut StdRng,
    mut slots: Vec<u64>,
    ids: &mut (u64, u64, u64),
    rows: &mut Vec<RefRow>,
) {
    slots.shuffle(rng);
    let mut slots = slots.into_iter().peekable();
    while let Some(blob) = slots.next() {
        let r = rng.random_range(0..10);
        if r < 5 && slots.peek().is_some_and(|&h| h != blob) {
            let header = slots.next().unwrap();
            ids.2 += 1;
            rows.push(RefRow::Message(ids.2, blob, header));
        } else if r < 8 {
            ids.1 += 1;
            rows.push(RefRow::Attachment(ids.1, blob));
        } else {
            ids.0 += 1;
            rows.push(RefRow::Sent(ids.0, blob));
        }
    }
}

impl Dataset {
    /// About `blob_count` blobs with two references each on average, every
    /// kind of fault on `faults` ids, and four hot blobs with `hot_refs`
    /// references each: two consistent, under constant churn, one counted
    /// one too high and one counted one too low, under churn too if
    /// `churn_hot_faults`.
    pub fn generate(
        name: &str,
        seed: u64,
        blob_count: usize,
        faults: usize,
        hot_refs: u64,
        churn_hot_faults: bool,
    ) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut id = 1000u64;
        let mut ids = Vec::with_capacity(blob_count);
        for _ in 0..blob_count {
            id += rng.random_range(1..=3);
            ids.push(id);
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.shuffle(&mut rng);
        let hot_ids: Vec<u64> = order[..4].iter().map(|&i| ids[i]).collect();
        let faulty: Vec<(u64, FaultKind)> = order[4..4 + faults]
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let kind = [
                    FaultKind::TooHigh,
                    FaultKind::TooLow,
                    FaultKind::StoredZero,
                    FaultKind::Missing,
                    FaultKind::Orphan,
                    FaultKind::ZeroUnreferenced,
                ][n % 6];
                (ids[i], kind)
            })
            .collect();
        let special: BTreeSet<u64> = hot_ids
            .iter()
            .copied()
            .chain(faulty.iter().map(|f| f.0))
            .collect();

        let mut blobs = BTreeMap::new();
        let mut counters = (0u64, 0u64, 0u64);
        // Ordinary blobs: consistent, 0 to 8 references (about 2).
        let mut slots = Vec::new();
        let mut addable = Vec::new();
        for &id in ids.iter().filter(|id| !special.contains(id)) {
            let k = match rng.random_range(0..100) {
                0..=4 => 0,
                5..=29 => 1,
                30..=79 => 2,
                80..=94 => 3,
                _ => rng.random_range(4..=8),
            };
            slots.extend(std::iter::repeat_n(id, k as usize));
            blobs.insert(id, k);
            addable.push(id);
        }
        let mut removable = Vec::new();
        distribute(&mut rng, slots, &mut counters, &mut removable);

        // Faulty blobs, each kind in turn, with references of their own.
        let mut expected = Vec::new();
        let mut frozen_slots = Vec::new();
        let mut add_fault = |rng: &mut StdRng,
                             blobs: &mut BTreeMap<u64, u64>,
                             frozen_slots: &mut Vec<u64>,
                             id: u64,
                             kind: FaultKind| {
            let actual = match kind {
                FaultKind::Orphan | FaultKind::ZeroUnreferenced => 0,
                _ => rng.random_range(2..=4),
            };
            frozen_slots.extend(std::iter::repeat_n(id, actual as usize));
            let stored = match kind {
                FaultKind::TooHigh => Some(actual + rng.random_range(1..=3)),
                FaultKind::TooLow => Some(actual - 1),
                FaultKind::StoredZero | FaultKind::ZeroUnreferenced => Some(0),
                FaultKind::Missing => None,
                FaultKind::Orphan => Some(rng.random_range(1..=3)),
            };
            if let Some(stored) = stored {
                blobs.insert(id, stored);
            }
            let kind = match kind {
                FaultKind::ZeroUnreferenced => return,
                FaultKind::Missing => "missing_blob",
                FaultKind::Orphan => "orphan_blob",
                _ => "count_mismatch",
            };
            expected.push(Expected {
                kind,
                blob_id: id,
                exact: Some((stored, actual)),
                difference: i128::from(stored.unwrap_or(0)) - i128::from(actual),
                references: None,
            });
        };
        for &(id, kind) in &faulty {
            add_fault(&mut rng, &mut blobs, &mut frozen_slots, id, kind);
        }
        // References far above every blob, up to the top of the id space.
        for id in [(1u64 << 63) + 11, u64::MAX - 7, u64::MAX] {
            add_fault(
                &mut rng,
                &mut blobs,
                &mut frozen_slots,
                id,
                FaultKind::Missing,
            );
        }
        let mut frozen = Vec::new();
        distribute(&mut rng, frozen_slots, &mut counters, &mut frozen);

        // Hot blobs: thousands of references each, in attachments and sent
        // messages; two consistent, one too high by 1, one too low by 1.
        let mut hot = Vec::new();
        let mut hot_rows = Vec::new();
        for (n, &id) in hot_ids.iter().enumerate() {
            let difference: i128 = [0, 0, 1, -1][n];
            let churned = difference == 0 || churn_hot_faults;
            let mut rows = Vec::new();
            for _ in 0..hot_refs {
                if rng.random_bool(0.7) {
                    counters.1 += 1;
                    rows.push(RefRow::Attachment(counters.1, id));
                } else {
                    counters.0 += 1;
                    rows.push(RefRow::Sent(counters.0, id));
                }
            }
            let stored = (i128::from(hot_refs) + difference) as u64;
            blobs.insert(id, stored);
            if difference != 0 {
                expected.push(Expected {
                    kind: "count_mismatch",
                    blob_id: id,
                    exact: (!churned).then_some((Some(stored), hot_refs)),
                    difference,
                    references: None,
                });
            }
            hot.push((id, difference, churned));
            if churned {
                hot_rows.push(rows);
            } else {
                frozen.extend(rows);
            }
        }

        // NULL references: not references at all.
        let mut nulls = Vec::new();
        for n in 0..20 {
            if n % 2 == 0 {
                counters.0 += 1;
                nulls.push((true, counters.0));
            } else {
                counters.1 += 1;
                nulls.push((false, counters.1));
            }
        }

        // The references of every fault the writers never touch, per column.
        let mut per_column: BTreeMap<u64, BTreeMap<&str, u64>> = BTreeMap::new();
        for row in &frozen {
            let labelled: Vec<(&str, u64)> = match *row {
                RefRow::Sent(_, blob) => vec![("sent", blob)],
                RefRow::Attachment(_, blob) => vec![("attachment", blob)],
                RefRow::Message(_, body, header) => vec![("body", body), ("header", header)],
            };
            for (label, blob) in labelled {
                *per_column
                    .entry(blob)
                    .or_default()
                    .entry(label)
                    .or_default() += 1;
            }
        }
        for e in expected.iter_mut().filter(|e| e.exact.is_some()) {
            let columns = per_column.remove(&e.blob_id).unwrap_or_default();
            e.references = Some(
                columns
                    .into_iter()
                    .map(|(l, n)| (l.to_owned(), n))
                    .collect(),
            );
        }
        expected.sort_by_key(|e| e.blob_id);
        Dataset {
            global_db: format!("{name}_global"),
            shard_db: format!("{name}_shard"),
            blobs,
            removable,
            frozen,
            nulls,
            addable,
            hot,
            hot_rows,
            expected,
            next_sent: counters.0 + 1,
            next_attachment: counters.1 + 1,
            next_message: counters.2 + 1,
        }
    }

    fn all_rows(&self) -> impl Iterator<Item = &RefRow> {
        self.removable
            .iter()
            .chain(&self.frozen)
            .chain(self.hot_rows.iter().flatten())
    }

    /// Number of reference rows (not NULL) of each kind: (sent, messages,
    /// attachments).
    pub fn row_counts(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for row in self.all_rows() {
            match row {
                RefRow::Sent(..) => counts.0 += 1,
                RefRow::Message(..) => counts.1 += 1,
                RefRow::Attachment(..) => counts.2 += 1,
            }
        }
        counts
    }

    pub fn global_sql(&self) -> String {
        let db = &self.global_db;
        let mut sql = format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; USE `{db}`;\n\
             CREATE TABLE BlobStorage (\
               BlobStorageID bigint unsigned NOT NULL AUTO_INCREMENT, \
               Version tinyint unsigned NOT NULL DEFAULT 1, \
               NumReferences bigint unsigned NOT NULL DEFAULT 1, \
               Size int unsigned NOT NULL DEFAULT 0, \
               PRIMARY KEY (BlobStorageID), KEY NumReferences (NumReferences)) ENGINE=InnoDB;\n\
             CREATE TABLE SentMessage (\
               SentMessageID bigint unsigned NOT NULL AUTO_INCREMENT, \
               UserID int unsigned NOT NULL DEFAULT 0, \
               BlobStorageID bigint unsigned NULL, \
               PRIMARY KEY (SentMessageID), KEY BlobStorageID (BlobStorageID)) ENGINE=InnoDB;\n"
        );
        insert(
            &mut sql,
            "BlobStorage (BlobStorageID, NumReferences, Size)",
            self.blobs
                .iter()
                .map(|(id, n)| format!("({id},{n},{})", id % 100_000)),
        );
        let sent = self.all_rows().filter_map(|r| match r {
            RefRow::Sent(id, blob) => Some(format!("({id},{},{blob})", id % 97)),
            _ => None,
        });
        let null_sent = self
            .nulls
            .iter()
            .filter(|n| n.0)
            .map(|(_, id)| format!("({id},0,NULL)"));
        insert(
            &mut sql,
            "SentMessage (SentMessageID, UserID, BlobStorageID)",
            sent.chain(null_sent),
        );
        sql
    }

    pub fn shard_sql(&self) -> String {
        let db = &self.shard_db;
        let mut sql = format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; USE `{db}`;\n\
             CREATE TABLE MessageData (\
               MessageID bigint unsigned NOT NULL, \
               UserID int unsigned NOT NULL DEFAULT 0, \
               Body bigint unsigned NOT NULL, \
               Header bigint unsigned NOT NULL, \
               PRIMARY KEY (MessageID), KEY Body (Body), KEY Header (Header)) ENGINE=InnoDB;\n\
             CREATE TABLE Attachment (\
               AttachmentID bigint unsigned NOT NULL AUTO_INCREMENT, \
               MessageID bigint unsigned NOT NULL DEFAULT 0, \
               BlobStorageID bigint unsigned NULL, \
               PRIMARY KEY (AttachmentID), KEY BlobStorageID (BlobStorageID)) ENGINE=InnoDB;\n"
        );
        insert(
            &mut sql,
            "MessageData (MessageID, UserID, Body, Header)",
            self.all_rows().filter_map(|r| match r {
                RefRow::Message(id, body, header) => {
                    Some(format!("({id},{},{body},{header})", id % 97))
                }
                _ => None,
            }),
        );
        let attachments = self.all_rows().filter_map(|r| match r {
            RefRow::Attachment(id, blob) => Some(format!("({id},{},{blob})", id / 3)),
            _ => None,
        });
        let null_attachments = self
            .nulls
            .iter()
            .filter(|n| !n.0)
            .map(|(_, id)| format!("({id},0,NULL)"));
        insert(
            &mut sql,
            "Attachment (AttachmentID, MessageID, BlobStorageID)",
            attachments.chain(null_attachments),
        );
        sql
    }

    /// The configuration the check runs with: the blob table and the
    /// SentMessage column on `global_url`, three columns on `shard_url`.
    pub fn config(&self, global_url: &str, shard_url: &str) -> Config {
        let text = self.config_text(global_url, shard_url);
        Config::parse(&text, std::path::Path::new("churn.toml")).unwrap()
    }

    /// `config` as TOML, for the command line.
    pub fn config_text(&self, global_url: &str, shard_url: &str) -> String {
        format!(
            r#"
[servers.global]
url = "{global_url}"
[servers.shard]
url = "{shard_url}"
[blobs]
server = "global"
table = "{g}.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"
[[references]]
server = "global"
table = "{g}.SentMessage"
column = "BlobStorageID"
name = "sent"
[[references]]
server = "shard"
table = "{s}.MessageData"
column = "Body"
name = "body"
[[references]]
server = "shard"
table = "{s}.MessageData"
column = "Header"
name = "header"
[[references]]
server = "shard"
table = "{s}.Attachment"
column = "BlobStorageID"
name = "attachment"
"#,
            g = self.global_db,
            s = self.shard_db,
        )
    }

    /// The application's state, for the writers.
    pub fn app(&self) -> App {
        App {
            global_db: self.global_db.clone(),
            shard_db: self.shard_db.clone(),
            state: Mutex::new(AppState {
                removable: self.removable.clone(),
                addable: self.addable.clone(),
                hot_rows: self.hot_rows.clone(),
            }),
            hot: self.hot.iter().filter(|h| h.2).map(|h| h.0).collect(),
            next_sent: AtomicU64::new(self.next_sent),
            next_attachment: AtomicU64::new(self.next_attachment),
            next_message: AtomicU64::new(self.next_message),
            next_blob: AtomicU64::new(NEW_BLOB_BASE),
        }
    }
}

fn insert(sql: &mut String, into: &str, rows: impl Iterator<Item = String>) {
    let rows: Vec<String> = rows.collect();
    for batch in rows.chunks(2000) {
        let _ = writeln!(sql, "INSERT INTO {into} VALUES {};", batch.join(","));
    }
}

/// What the writers share: which rows exist and may be removed, which blobs
/// may be referenced. A row is taken out before it is removed and put in
/// only after both steps of its creation, so no two writers ever act on the
/// same row and every count stays consistent once the writers stop.
pub struct App {
    pub global_db: String,
    pub shard_db: String,
    state: Mutex<AppState>,
    hot: Vec<u64>,
    next_sent: AtomicU64,
    next_attachment: AtomicU64,
    next_message: AtomicU64,
    next_blob: AtomicU64,
}

struct AppState {
    removable: Vec<RefRow>,
    addable: Vec<u64>,
    hot_rows: Vec<Vec<RefRow>>,
}

/// Operations, as shares out of 100.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Add a reference to an ordinary blob.
    pub add: u32,
    /// Remove a reference (a sent message, an attachment or a whole
    /// message) from ordinary blobs.
    pub remove: u32,
    /// Create a message with a new body blob and a new or existing header.
    pub create: u32,
    // The rest: add or remove a reference of a hot blob.
}

/// How the writers run.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub writers: usize,
    /// Longest pause between the two steps of an operation.
    pub max_pause: Duration,
    pub mix: Mix,
    /// Longest pause between two operations of one writer (0: none).
    pub max_think: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            writers: 12,
            max_pause: Duration::from_millis(50),
            mix: Mix {
                add: 35,
                remove: 30,
                create: 25,
            },
            max_think: Duration::ZERO,
        }
    }
}

/// Operations completed, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    pub total: AtomicU64,
    pub add: AtomicU64,
    pub remove: AtomicU64,
    pub create: AtomicU64,
    pub hot: AtomicU64,
    /// Statements retried after a deadlock or lock wait timeout.
    pub retries: AtomicU64,
}

/// The writers' seed: `CHURN_SEED` to replay a run, else drawn once per
/// test process and printed, so that a failure can be replayed.
pub fn writer_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let seed = std::env::var("CHURN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random::<u64>());
        println!("writers seeded with CHURN_SEED={seed}");
        seed
    })
}

/// Writers running against the primaries.
pub struct Writers {
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    pools: Vec<Pool>,
    started: Instant,
}

/// One side of an operation: statements on one server, in one transaction.
struct Step {
    global: bool,
    sql: Vec<String>,
}

impl Writers {
    pub async fn start(
        app: Arc<App>,
        global_url: &str,
        shard_url: &str,
        options: WriterOptions,
    ) -> Writers {
        let global = Pool::new(Opts::from_url(global_url).unwrap());
        let shard = Pool::new(Opts::from_url(shard_url).unwrap());
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for n in 0..options.writers {
            let global_conn = global.get_conn().await.expect("writer connects to global");
            let shard_conn = shard.get_conn().await.expect("writer connects to shard");
            let app = Arc::clone(&app);
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            let seed = writer_seed() ^ n as u64;
            tasks.push(tokio::spawn(async move {
                writer(
                    app,
                    global_conn,
                    shard_conn,
                    counters,
                    stop,
                    options,
                    StdRng::seed_from_u64(seed),
                )
                .await
            }));
        }
        Writers {
            counters,
            stop,
            tasks,
            pools: vec![global, shard],
            started: Instant::now(),
        }
    }

    pub fn ops(&self) -> u64 {
        self.counters.total.load(Ordering::SeqCst)
    }

    /// Asks every writer to stop after its current operation (both steps)
    /// and waits; panics if a writer failed.
    pub async fn stop(self) -> String {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("a writer failed: {e}"),
                Err(e) => panic!("a writer panicked: {e}"),
            }
        }
        for pool in self.pools {
            let _ = pool.disconnect().await;
        }
        let c = &self.counters;
        let elapsed = self.started.elapsed().as_secs_f64();
        let total = c.total.load(Ordering::SeqCst);
        format!(
            "{total} operations in {elapsed:.1} s ({:.0}/s): {} add, {} remove, {} create, {} hot; {} retried statements",
            total as f64 / elapsed,
            c.add.load(Ordering::SeqCst),
            c.remove.load(Ordering::SeqCst),
            c.create.load(Ordering::SeqCst),
            c.hot.load(Ordering::SeqCst),
            c.retries.load(Ordering::SeqCst),
        )
    }
}

fn is_retryable(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205)
}

async fn run_step(conn: &mut Conn, sql: &[String], counters: &Counters) -> Result<(), String> {
    loop {
        let result: Result<(), mysql_async::Error> = async {
            if sql.len() == 1 {
                conn.query_drop(&sql[0]).await
            } else {
                conn.query_drop("START TRANSACTION").await?;
                for statement in sql {
                    conn.query_drop(statement).await?;
                }
                conn.query_drop("COMMIT").await
            }
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if is_retryable(&e) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let _ = conn.query_drop("ROLLBACK").await;
            }
            Err(e) => return Err(format!("{sql:?}: {e}")),
        }
    }
}

fn ref_insert(app: &App, row: RefRow) -> Step {
    match row {
        RefRow::Sent(id, blob) => Step {
            global: true,
            sql: vec![format!(
                "INSERT INTO `{}`.SentMessage (SentMessageID, UserID, BlobStorageID) VALUES ({id}, {}, {blob})",
                app.global_db,
                id % 97
            )],
        },
        RefRow::Attachment(id, blob) => Step {
            global: false,
            sql: vec![format!(
                "INSERT INTO `{}`.Attachment (AttachmentID, MessageID, BlobStorageID) VALUES ({id}, {}, {blob})",
                app.shard_db,
                id / 3
            )],
        },
        RefRow::Message(id, body, header) => Step {
            global: false,
            sql: vec![format!(
                "INSERT INTO `{}`.MessageData (MessageID, UserID, Body, Header) VALUES ({id}, {}, {body}, {header})",
                app.shard_db,
                id % 97
            )],
        },
    }
}

fn ref_delete(app: &App, row: RefRow) -> Step {
    match row {
        RefRow::Sent(id, _) => Step {
            global: true,
            sql: vec![format!(
                "DELETE FROM `{}`.SentMessage WHERE SentMessageID = {id}",
                app.global_db
            )],
        },
        RefRow::Attachment(id, _) => Step {
            global: false,
            sql: vec![format!(
                "DELETE FROM `{}`.Attachment WHERE AttachmentID = {id}",
                app.shard_db
            )],
        },
        RefRow::Message(id, _, _) => Step {
            global: false,
            sql: vec![format!(
                "DELETE FROM `{}`.MessageData WHERE MessageID = {id}",
                app.shard_db
            )],
        },
    }
}

fn blobs_of(row: RefRow) -> Vec<u64> {
    match row {
        RefRow::Sent(_, blob) | RefRow::Attachment(_, blob) => vec![blob],
        RefRow::Message(_, body, header) => vec![body, header],
    }
}

fn count_update(app: &App, blobs: &[u64], delta: &str) -> String {
    let ids: Vec<String> = blobs.iter().map(u64::to_string).collect();
    format!(
        "UPDATE `{}`.BlobStorage SET NumReferences = NumReferences {delta} 1 WHERE BlobStorageID IN ({})",
        app.global_db,
        ids.join(",")
    )
}

/// A new reference row to `blob`: an attachment (70%) or a sent message.
fn new_ref_row(app: &App, rng: &mut StdRng, blob: u64) -> RefRow {
    if rng.random_bool(0.7) {
        RefRow::Attachment(app.next_attachment.fetch_add(1, Ordering::SeqCst), blob)
    } else {
        RefRow::Sent(app.next_sent.fetch_add(1, Ordering::SeqCst), blob)
    }
}

enum Op {
    /// Add `row` (to the hot blob `hot`, if any).
    Add(RefRow, Option<usize>),
    /// Remove `row`.
    Remove(RefRow),
    /// A new message: its row, its new blobs, the existing header if any.
    Create(RefRow, Vec<u64>, Option<u64>),
}

fn choose(app: &App, rng: &mut StdRng, mix: Mix) -> Op {
    let r = rng.random_range(0..100);
    let mut state = app.state.lock().unwrap();
    if r < mix.add {
        let blob = state.addable[rng.random_range(0..state.addable.len())];
        drop(state);
        return Op::Add(new_ref_row(app, rng, blob), None);
    }
    if r < mix.add + mix.remove && !state.removable.is_empty() {
        let i = rng.random_range(0..state.removable.len());
        return Op::Remove(state.removable.swap_remove(i));
    }
    if r < mix.add + mix.remove + mix.create {
        let existing_header = rng
            .random_bool(0.5)
            .then(|| state.addable[rng.random_range(0..state.addable.len())]);
        drop(state);
        let body = app.next_blob.fetch_add(1, Ordering::SeqCst);
        let mut new_blobs = vec![body];
        let header = existing_header.unwrap_or_else(|| {
            let header = app.next_blob.fetch_add(1, Ordering::SeqCst);
            new_blobs.push(header);
            header
        });
        let id = app.next_message.fetch_add(1, Ordering::SeqCst);
        return Op::Create(
            RefRow::Message(id, body, header),
            new_blobs,
            existing_header,
        );
    }
    let hot = rng.random_range(0..app.hot.len());
    let rows = &mut state.hot_rows[hot];
    // Keep each hot blob's references about constant.
    if rng.random_bool(0.5) && !rows.is_empty() {
        let i = rng.random_range(0..rows.len());
        Op::Remove(rows.swap_remove(i))
    } else {
        drop(state);
        Op::Add(new_ref_row(app, rng, app.hot[hot]), Some(hot))
    }
}

async fn writer(
    app: Arc<App>,
    mut global: Conn,
    mut shard: Conn,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    options: WriterOptions,
    mut rng: StdRng,
) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        let op = choose(&app, &mut rng, options.mix);
        let (reference, count) = match &op {
            Op::Add(row, _) => (
                ref_insert(&app, *row),
                Step {
                    global: true,
                    sql: vec![count_update(&app, &blobs_of(*row), "+")],
                },
            ),
            Op::Remove(row) => (
                ref_delete(&app, *row),
                Step {
                    global: true,
                    sql: vec![count_update(&app, &blobs_of(*row), "-")],
                },
            ),
            Op::Create(row, new_blobs, existing) => {
                let values: Vec<String> = new_blobs
                    .iter()
                    .map(|id| format!("({id}, 1, {})", id % 100_000))
                    .collect();
                let mut sql = vec![format!(
                    "INSERT INTO `{}`.BlobStorage (BlobStorageID, NumReferences, Size) VALUES {}",
                    app.global_db,
                    values.join(",")
                )];
                if let Some(existing) = existing {
                    sql.push(count_update(&app, &[*existing], "+"));
                }
                (ref_insert(&app, *row), Step { global: true, sql })
            }
        };
        let (first, second) = if rng.random_bool(0.5) {
            (reference, count)
        } else {
            (count, reference)
        };
        let pause = rng.random_range(0..=options.max_pause.as_millis() as u64);
        for (n, step) in [first, second].into_iter().enumerate() {
            if n == 1 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let conn = if step.global { &mut global } else { &mut shard };
            run_step(conn, &step.sql, &counters).await?;
        }
        // Both steps done: the new rows may now be removed or referenced.
        {
            let mut state = app.state.lock().unwrap();
            match op {
                Op::Add(row, Some(hot)) => {
                    state.hot_rows[hot].push(row);
                    counters.hot.fetch_add(1, Ordering::Relaxed);
                }
                Op::Add(row, None) => {
                    state.removable.push(row);
                    counters.add.fetch_add(1, Ordering::Relaxed);
                }
                Op::Remove(row) => {
                    if app.hot.iter().any(|h| blobs_of(row).contains(h)) {
                        counters.hot.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.remove.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Op::Create(row, new_blobs, _) => {
                    state.removable.push(row);
                    state.addable.extend(new_blobs);
                    counters.create.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        counters.total.fetch_add(1, Ordering::SeqCst);
        if !options.max_think.is_zero() {
            let think = rng.random_range(0..=options.max_think.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }
    let _ = global.disconnect().await;
    let _ = shard.disconnect().await;
    Ok(())
}

/// Runs a whole check in process with JSON output; returns the findings in
/// the order reported and the summary.
pub async fn run_check(config: &Config, options: &CheckOptions) -> (Vec<Exact>, Summary) {
    let out = Captured::default();
    let labels = config.references.iter().map(|r| r.label.clone()).collect();
    let reporter = Reporter::new(Format::Json, Box::new(out.clone()), labels);
    let summary = check::run(config, options, reporter)
        .await
        .expect("the check runs");
    (parse_jsonl(&out.text()), summary)
}

/// `run_check` while `writers` churn; also returns their operations per
/// second during the check.
pub async fn run_check_during(
    writers: &Writers,
    config: &Config,
    options: &CheckOptions,
) -> (Vec<Exact>, Summary, f64) {
    let ops_before = writers.ops();
    let (found, summary) = run_check(config, options).await;
    let rate = (writers.ops() - ops_before) as f64 / summary.seconds;
    (found, summary, rate)
}

/// How a check's findings compare with the injected faults.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Reported, but not an injected fault.
    pub false_findings: Vec<Exact>,
    /// Injected, not reported.
    pub missed: Vec<Expected>,
    /// Reported with another kind, count or difference than injected.
    pub wrong: Vec<String>,
    pub matched: usize,
}

impl Comparison {
    pub fn new(found: &[Exact], expected: &[Expected]) -> Comparison {
        let mut comparison = Comparison::default();
        let by_id: BTreeMap<u64, &Expected> = expected.iter().map(|e| (e.blob_id, e)).collect();
        let mut seen = BTreeSet::new();
        for f in found {
            let Some(e) = by_id.get(&f.blob_id) else {
                comparison.false_findings.push(f.clone());
                continue;
            };
            if !seen.insert(f.blob_id) {
                comparison
                    .wrong
                    .push(format!("{} reported twice", f.blob_id));
                continue;
            }
            let difference = i128::from(f.stored.unwrap_or(0)) - i128::from(f.actual);
            let exact_ok = e.exact.is_none_or(|(stored, actual)| {
                f.stored == stored
                    && f.actual == actual
                    && e.references.as_ref().is_none_or(|r| *r == f.references)
            }) && f
                .references
                .iter()
                .all(|(l, _)| LABELS.contains(&l.as_str()));
            if f.kind != e.kind || difference != e.difference || !exact_ok {
                comparison.wrong.push(format!(
                    "blob {}: reported {} stored {:?} actual {} (difference {difference}) {:?}; injected {} {:?} difference {} {:?}",
                    f.blob_id, f.kind, f.stored, f.actual, f.references, e.kind, e.exact, e.difference, e.references
                ));
            } else {
                comparison.matched += 1;
            }
        }
        comparison.missed = expected
            .iter()
            .filter(|e| !seen.contains(&e.blob_id))
            .cloned()
            .collect();
        comparison
    }

    pub fn is_exact(&self) -> bool {
        self.false_findings.is_empty() && self.missed.is_empty() && self.wrong.is_empty()
    }

    pub fn describe(&self) -> String {
        let ids = |v: &[Exact]| -> Vec<String> {
            v.iter()
                .take(20)
                .map(|f| {
                    format!(
                        "{}:{} stored {:?} actual {}",
                        f.kind, f.blob_id, f.stored, f.actual
                    )
                })
                .collect()
        };
        format!(
            "{} matched; {} false findings {:?}; {} missed {:?}; {} wrong {:?}",
            self.matched,
            self.false_findings.len(),
            ids(&self.false_findings),
            self.missed.len(),
            self.missed
                .iter()
                .take(20)
                .map(|e| (e.kind, e.blob_id, e.difference))
                .collect::<Vec<_>>(),
            self.wrong.len(),
            self.wrong.iter().take(20).collect::<Vec<_>>(),
        )
    }
}

/// Runs blocking work (starting or stopping servers, loading SQL) off the
/// runtime's workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
