//! `blobcheck watch`: follows the binary log of every server the
//! configuration names and judges the blobs each change touched, seconds
//! after the change.
//!
//! ```text
//! db::binlog::Follower (one task per server) ──StreamEvent──▶ run loop
//!                                                              │ touched ids
//!                                                              ▼
//!                                       pending (wait --settle-delay, bounded;
//!                                              overflow → id ranges)
//!                                                              │ due
//!                       ┌──────────────────────────────────────┴──────────┐
//!                       ▼ ids                                    ranges   ▼
//!   judge: read_points, then confirm::confirm_wave        scan::scan (chunked)
//!                       │ confirmed                               │ candidates
//!                       ▼                                         └──▶ judge
//!   report (with the change: server, coordinates, GTID, statement) + metrics
//! ```
//!
//! The run loop owns all state: the ids waiting, the ids being judged, each
//! server's place in its log (moved only at transaction ends, after the
//! transaction's ids were taken in), and what was reported. The state file
//! is a snapshot of it, so a restart re-reads at most a few seconds of log
//! and never skips a change. A blob that stays broken is reported once, and
//! again only when its numbers change or after it was seen consistent.

mod http;
pub mod metrics;
mod pending;
mod service;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::check::StopRequest;
use crate::config::Config;
use crate::confirm::{Candidate, ConfirmOptions, confirm_wave};
use crate::db::DbSource;
use crate::db::binlog::{
    self, Change, Coordinates, Follower, REPLICA_HOST_NAME, StreamEvent, StreamFault, Watched,
    WatchedTable,
};
use crate::error::{Error, Result, one_line};
use crate::finding::{Direction, Finding, Kind};
use crate::partition::Partition;
use crate::plan::IdRange;
use crate::read::{RunReads, read_points};
use crate::report::{ChangeNote, Origin, Reporter, utc_text};
use crate::scan::{ScanOptions, scan};
use metrics::{WatchMetrics, unix_seconds};
use pending::Pending;
use service::{LIVENESS_LIMIT, Liveness, ServiceManager};
use state::ServerPlace;
pub use state::WatchState;

/// How the watch runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The confirmation of a touched id; its settle delay is also how long
    /// a touched id waits before its first read.
    pub confirm: ConfirmOptions,
    /// Chunked reads of ranges that hold more touched ids than the bound.
    pub scan: ScanOptions,
    /// When reads may happen (`check`'s limits).
    pub throttle: crate::throttle::ThrottleOptions,
    pub retry_for: Duration,
    pub max_connections_per_server: usize,
    pub affected_rows: u64,
    /// Touched ids held at most; past it, id ranges.
    pub max_waiting: usize,
    pub state: Option<PathBuf>,
    pub state_interval: Duration,
    pub listen: Option<SocketAddr>,
    /// The server id the watch registers with as a replica.
    pub replication_server_id: u32,
    /// `/healthz` fails when a stream is further behind than this.
    pub max_behind: Duration,
    /// The configuration file, for the command a gap message gives.
    pub config_path: Option<PathBuf>,
    pub stop: Option<StopRequest>,
}

/// A blob touched again and again is judged at the latest this many settle
/// delays after the touch that started its wait.
const MAX_WAIT_DELAYS: u32 = 4;
/// The shortest settle delay the watch takes.
const MIN_SETTLE_DELAY: Duration = Duration::from_millis(100);
/// Ranges held at most past the bound on ids.
const MAX_RANGES: usize = 64;
/// Judging tasks at once.
const MAX_JUDGES: usize = 4;
/// How soon after a finding the state is saved, at most once per interval.
const REPORT_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a due id whose changes are not yet in every server's log is
/// looked at again.
const READY_RETRY: Duration = Duration::from_millis(100);
/// Confirmation waves at once; past this, due ids wait.
const MAX_WAVES: usize = 16;
/// Ids one judging task takes.
const JUDGE_BATCH: usize = 2_000;
/// Events waiting between the followers and the run loop.
const CHANNEL: usize = 256;
/// How long a look-up made for a report or a metric may take (the
/// statement's text, affected rows, a log's end) before it is left out.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the lag behind each server's log is measured.
const BEHIND_INTERVAL: Duration = Duration::from_secs(5);
/// Broken blobs remembered so that they are reported once.
const MAX_REPORTED: usize = 100_000;

/// A change that touched an id.
#[derive(Debug, Clone)]
struct Touch {
    server: usize,
    change: Arc<Change>,
}

/// Changes kept per waiting id, the latest last.
const MAX_TOUCHES: usize = 4;

/// Why an id waits: the last few changes that touched it. The changes of
/// one operation land on several servers, whose streams are read at their
/// own pace, and commit times have a resolution of one second: which one
/// broke the count cannot be told from the order they arrive in, so a
/// finding names them all.
#[derive(Debug, Clone)]
struct Touches(Vec<Touch>);

impl Touches {
    /// These and `touch`, the oldest dropped past `MAX_TOUCHES`.
    fn with(previous: Option<&Touches>, touch: Touch) -> Touches {
        let mut list = previous.map(|t| t.0.clone()).unwrap_or_default();
        if list.len() == MAX_TOUCHES {
            list.remove(0);
        }
        list.push(touch);
        Touches(list)
    }
}

/// What a follower task tells the run loop.
enum FromStream {
    Event(StreamEvent),
    /// The stream was lost; it is being opened again.
    Down(String),
    Up,
    /// The saved place is gone from the server: read from `resumed` on.
    Gap {
        lost: Coordinates,
        resumed: Coordinates,
        reason: String,
    },
    Fatal(Error),
}

/// What a judging task came to.
struct Judged {
    /// The ids settled by this task (candidates still to confirm excluded).
    ids: Vec<u64>,
    consistent: Vec<u64>,
    confirmed: Vec<Finding>,
    transient: u64,
    /// Ids that kept changing through every read allowed: judged again.
    unsettled: Vec<u64>,
    /// Ids that looked wrong (or busy), to be confirmed in a wave of their
    /// own, so that a long confirmation never holds up first reads.
    candidates: Vec<Candidate>,
}

/// What the watch did, for its last log line.
#[derive(Debug, Default, Clone)]
pub struct WatchSummary {
    pub events: u64,
    pub touched: u64,
    pub judged: u64,
    pub findings: u64,
    pub seconds: f64,
}

/// Follows every server's log until `options.stop` asks it to stop, then
/// saves the state and returns.
pub async fn run(
    config: &Config,
    options: &WatchOptions,
    mut reporter: Reporter,
) -> Result<WatchSummary> {
    let started = Instant::now();
    if options.confirm.confirmations == 0 {
        return Err(Error::Usage(
            "watch needs --confirmations of at least 1: one read of a blob under change is no finding".into(),
        ));
    }
    if options.confirm.settle_delay < MIN_SETTLE_DELAY {
        return Err(Error::Usage(format!(
            "watch needs --settle-delay of at least {} s: the changes of one operation need the time to land",
            MIN_SETTLE_DELAY.as_secs_f64()
        )));
    }
    let config = &crate::discovery::expand(config).await?;
    reporter.set_labels(config.references.iter().map(|r| r.label.clone()).collect());
    let mut source = DbSource::open(
        config,
        options.scan.jobs + MAX_JUDGES,
        options.max_connections_per_server,
    )
    .await?;
    source.retry_for = options.retry_for;
    // Reads wait for the same limits as `check`'s (replica lag, threads
    // running, rows per second); the streams do not: falling behind the
    // logs would only delay the findings.
    source.throttle_with(options.throttle.clone());
    let source = Arc::new(source);

    let watched = watched_tables(config);
    let followed: Vec<usize> = (0..config.servers.len())
        .filter(|i| watched.contains_key(i))
        .collect();
    let state = match &options.state {
        Some(path) => WatchState::load(path)?,
        None => None,
    };
    let names: Vec<String> = followed
        .iter()
        .map(|&i| config.servers[i].name.clone())
        .collect();
    let metrics = Arc::new(WatchMetrics::new(&names, options.max_behind));
    let liveness = Arc::new(Liveness::new(LIVENESS_LIMIT));
    if let Some(addr) = options.listen {
        let bound = http::serve(addr, Arc::clone(&metrics), Arc::clone(&liveness)).await?;
        tracing::info!("serving /metrics and /healthz on http://{bound}");
    }

    let (tx, rx) = mpsc::channel(CHANNEL);
    let mut places = Vec::new();
    let mut primaries = Vec::new();
    let mut streams = JoinSet::new();
    // One replication id per stream: two configured servers may be one
    // instance, and a server drops a replica that registers with the id of
    // another one connected.
    let replication_id = |k: usize| options.replication_server_id.wrapping_add(k as u32).max(1);
    // Every server at once: one that is down is waited for (retry_for)
    // while the others get ready, not before them. The first error in the
    // configuration's order is the one reported.
    let starts = futures_util::future::join_all(followed.iter().enumerate().map(|(k, &server)| {
        start_place(
            &source,
            server,
            replication_id(k),
            options,
            state.as_ref(),
            &metrics,
        )
    }))
    .await;
    for ((k, &server), started) in followed.iter().enumerate().zip(starts) {
        let replication_id = replication_id(k);
        let (place, version, is_replica) = started?;
        tracing::info!(
            "server `{}`: following its binary log from {}",
            config.servers[server].name,
            place.coordinates
        );
        let follower = Follower::new(
            config.servers[server].clone(),
            version,
            replication_id,
            watched[&server].clone(),
            place.coordinates.clone(),
        );
        places.push((server, place));
        if !is_replica {
            primaries.push(server);
        }
        streams.spawn(follow(server, follower, tx.clone(), Arc::clone(&source)));
    }
    drop(tx);

    let mut watch = Watch {
        config,
        options,
        source,
        metrics,
        reporter,
        pending: Pending::new(options.max_waiting, MAX_RANGES),
        judging: HashMap::new(),
        scanning: Vec::new(),
        places,
        reported: HashMap::new(),
        last_event: HashMap::new(),
        watermark: HashMap::new(),
        reports_unsaved: false,
        saved_at: Instant::now(),
        primaries,
        summary: WatchSummary::default(),
        manager: ServiceManager::from_env(),
        liveness,
    };
    if let Some(state) = &state {
        watch.restore(state);
    }
    watch
        .manager
        .ready(&format!("following {} servers", watch.places.len()));
    let result = watch.run_loop(rx, &mut streams).await;
    streams.abort_all();
    watch.save_state()?;
    let mut summary = result?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The tables to watch on each server: the blob table's id, and every
/// reference column grouped by table.
fn watched_tables(config: &Config) -> HashMap<usize, Vec<WatchedTable>> {
    let mut tables: HashMap<usize, Vec<WatchedTable>> = HashMap::new();
    let mut add = |server: usize, table: &crate::config::TableName, column: &str, role: Watched| {
        let list = tables.entry(server).or_default();
        let database = table.database.as_str();
        let name = table.table.as_str();
        match list
            .iter_mut()
            .find(|t| t.database == database && t.table == name)
        {
            Some(t) => t.columns.push((column.to_owned(), role)),
            None => list.push(WatchedTable {
                database: database.to_owned(),
                table: name.to_owned(),
                columns: vec![(column.to_owned(), role)],
            }),
        }
    };
    add(
        config.blobs.server,
        &config.blobs.table,
        config.blobs.id.as_str(),
        Watched::BlobId,
    );
    for (i, reference) in config.references.iter().enumerate() {
        add(
            reference.server,
            &reference.table,
            reference.column.as_str(),
            Watched::Reference(i),
        );
    }
    tables
}

fn prerequisite(server: &str, reason: impl Into<String>) -> Error {
    Error::Prerequisite {
        server: server.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that `server` can be followed and decides where to start: the
/// state's place if the server still has it, else (loudly) its oldest log;
/// without a state, the end of its log.
async fn start_place(
    source: &DbSource,
    server: usize,
    replication_id: u32,
    options: &WatchOptions,
    state: Option<&WatchState>,
    metrics: &WatchMetrics,
) -> Result<(ServerPlace, crate::db::dialect::ServerVersion, bool)> {
    let name = source.databases.servers[server].name.clone();
    let mut conn = source.databases.conn(server).await?;
    let query_error = |e: mysql_async::Error| source.databases.query_error(server, e);
    let version = binlog::server_version(&mut conn)
        .await
        .map_err(query_error)?;
    let grant = binlog::replication_grant(version, "<account>");
    let denied = |e: mysql_async::Error| {
        if crate::db::dialect::is_access_denied(&e) {
            prerequisite(
                &name,
                format!(
                    "the account may not read the binary log or replica status ({}): {grant}",
                    one_line(&e)
                ),
            )
        } else {
            source.databases.query_error(server, e)
        }
    };
    let settings = binlog::log_settings(&mut conn).await.map_err(denied)?;
    let problems = binlog::settings_problems(&settings);
    if !problems.is_empty() {
        return Err(prerequisite(
            &name,
            format!("watch needs {}", problems.join("; ")),
        ));
    }
    if settings.server_id == replication_id {
        return Err(prerequisite(
            &name,
            format!(
                "the server's own server_id is {}, the id watch registers with here: pass --server-id with an id no server or replica uses (the watch takes it and the next ones, one per server it follows)",
                settings.server_id
            ),
        ));
    }
    match binlog::registered_replicas(&mut conn).await {
        Ok(replicas) => {
            if let Some((id, host)) = replicas
                .iter()
                .find(|(id, host)| *id == replication_id && host != REPLICA_HOST_NAME)
            {
                return Err(prerequisite(
                    &name,
                    format!(
                        "replica `{host}` already uses server id {id}, which watch would register with (and so disconnect it): pass --server-id with an unused id"
                    ),
                ));
            }
        }
        Err(e) => tracing::warn!(
            "server `{name}`: cannot list its replicas to check that server id {replication_id} is free ({}); a replica using it would be disconnected (MariaDB 10.5+: GRANT REPLICATION MASTER ADMIN lets the watch check)",
            one_line(e)
        ),
    }
    let end = binlog::log_end(&mut conn)
        .await
        .map_err(denied)?
        .ok_or_else(|| {
            prerequisite(&name, "SHOW MASTER STATUS returned nothing: is log_bin on?")
        })?;
    let saved = state.and_then(|s| s.place(&name));
    let Some(saved) = saved else {
        let place = ServerPlace {
            server: name,
            coordinates: end,
            gtid: None,
        };
        return Ok((place, version, settings.is_replica));
    };
    let files = binlog::log_files(&mut conn).await.map_err(denied)?;
    if files
        .iter()
        .any(|(file, _)| *file == saved.coordinates.file)
    {
        return Ok((saved.clone(), version, settings.is_replica));
    }
    let oldest = files
        .first()
        .map(|(file, _)| Coordinates {
            file: file.clone(),
            position: 4,
        })
        .unwrap_or(end);
    log_gap(
        &name,
        &saved.coordinates,
        &oldest,
        "the file was purged while the watch was down",
        options,
        metrics,
    );
    let place = ServerPlace {
        server: name,
        coordinates: oldest,
        gtid: None,
    };
    Ok((place, version, settings.is_replica))
}

/// Says loudly that changes may have been missed, and what closes the gap.
fn log_gap(
    server: &str,
    lost: &Coordinates,
    resumed: &Coordinates,
    reason: &str,
    options: &WatchOptions,
    metrics: &WatchMetrics,
) {
    metrics.gaps.get_or_create(&metrics.label(server)).inc();
    let config = options
        .config_path
        .as_ref()
        .map_or_else(|| "FILE".to_owned(), |p| p.display().to_string());
    tracing::error!(
        "server `{server}`: GAP in the binary log: position {lost} is no longer on the server ({reason}); changes between it and {resumed} were not seen. Continuing from {resumed}. Run a full check to close the gap: blobcheck check --config {config}"
    );
}

/// One follower's task: hands its events on, reopens a lost stream with
/// backoff, and skips to the oldest log over a purged position.
async fn follow(
    server: usize,
    mut follower: Follower,
    tx: mpsc::Sender<(usize, FromStream)>,
    source: Arc<DbSource>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut up = false;
    loop {
        match follower.next().await {
            Ok(event) => {
                if !up {
                    up = true;
                    backoff = Duration::from_millis(250);
                    if tx.send((server, FromStream::Up)).await.is_err() {
                        return;
                    }
                }
                if tx.send((server, FromStream::Event(event))).await.is_err() {
                    return;
                }
            }
            Err(StreamFault::Lost(e)) => {
                up = false;
                if tx
                    .send((server, FromStream::Down(e.to_string())))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(StreamFault::Purged { at, reason }) => {
                let oldest = match source.databases.conn(server).await {
                    Ok(mut conn) => binlog::log_files(&mut conn).await.ok().and_then(|files| {
                        files.first().map(|(file, _)| Coordinates {
                            file: file.clone(),
                            position: 4,
                        })
                    }),
                    Err(_) => None,
                };
                match oldest {
                    Some(oldest) if oldest != at => {
                        follower.restart_at(oldest.clone());
                        let gap = FromStream::Gap {
                            lost: at,
                            resumed: oldest,
                            reason,
                        };
                        if tx.send((server, gap)).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = tx.send((server, FromStream::Down(reason))).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            Err(StreamFault::Fatal(e)) => {
                let _ = tx.send((server, FromStream::Fatal(e))).await;
                return;
            }
        }
    }
}

/// The run loop's state.
struct Watch<'a> {
    config: &'a Config,
    options: &'a WatchOptions,
    source: Arc<DbSource>,
    metrics: Arc<WatchMetrics>,
    reporter: Reporter,
    pending: Pending<Instant, Option<Touches>>,
    /// Ids being judged, with the change that touched them.
    judging: HashMap<u64, Option<Touches>>,
    /// Ranges being scanned.
    scanning: Vec<IdRange>,
    /// Per followed server: its place (moved at transaction ends).
    places: Vec<(usize, ServerPlace)>,
    /// Broken blobs reported, with the numbers they were reported with.
    reported: HashMap<u64, (Option<u64>, u64)>,
    /// Per server: when its last event was committed, and whether the
    /// stream was idle since (a heartbeat).
    last_event: HashMap<usize, (u32, bool, Coordinates)>,
    /// Per server: the latest commit time its log has shown.
    watermark: HashMap<usize, u32>,
    /// Findings reported since the state was last saved.
    reports_unsaved: bool,
    saved_at: Instant,
    /// Followed servers that replicate from none: an idle one's heartbeat
    /// says its log holds everything committed so far.
    primaries: Vec<usize>,
    summary: WatchSummary,
    /// systemd's end: readiness, status, the watchdog.
    manager: ServiceManager,
    /// What `/livez` answers from.
    liveness: Arc<Liveness>,
}

/// A task's ids and what came of them.
type Task<T> = (Vec<u64>, Result<T>);

/// The ids of every judging and confirming task running, by task: a task
/// that panics says nothing of its ids.
type TaskIds = HashMap<tokio::task::Id, Vec<u64>>;

/// A joined task's result; a task that panicked failed for its ids.
fn task_result<T>(
    joined: std::result::Result<(tokio::task::Id, Task<T>), tokio::task::JoinError>,
    running: &mut TaskIds,
) -> Task<T> {
    match joined {
        Ok((task, result)) => {
            running.remove(&task);
            result
        }
        Err(e) => (
            running.remove(&e.id()).unwrap_or_default(),
            Err(Error::Usage(format!("a judging task failed: {e}"))),
        ),
    }
}

enum Wake {
    Stop,
    Stream(Option<(usize, FromStream)>),
    StreamTaskEnded(String),
    Judged(Task<Judged>),
    Scanned((IdRange, Result<()>)),
    ScanBatch(Vec<Finding>),
    Tick,
    Save,
    Behind,
}

impl Watch<'_> {
    fn restore(&mut self, state: &WatchState) {
        let now = Instant::now();
        for &id in &state.waiting {
            self.pending.touch(id, now, now, None);
        }
        for &(start, end) in &state.ranges {
            self.pending.touch_range(IdRange::new(start, end), now, now);
        }
        for &(id, stored, actual) in &state.reported {
            self.reported.insert(id, (stored, actual));
        }
        if !state.waiting.is_empty() || !state.ranges.is_empty() {
            tracing::info!(
                "{} ids and {} ranges left waiting by the last run are judged first",
                state.waiting.len(),
                state.ranges.len()
            );
        }
    }

    fn snapshot(&self) -> WatchState {
        let mut state = WatchState::new();
        state.servers = self.places.iter().map(|(_, p)| p.clone()).collect();
        let (ids, ranges) = self.pending.snapshot();
        let mut waiting: Vec<u64> = ids.into_iter().map(|(id, _)| id).collect();
        waiting.extend(self.judging.keys().copied());
        waiting.sort_unstable();
        waiting.dedup();
        state.waiting = waiting;
        state.ranges = ranges
            .iter()
            .chain(&self.scanning)
            .map(|r| (r.start, r.end))
            .collect();
        let mut reported: Vec<(u64, Option<u64>, u64)> = self
            .reported
            .iter()
            .map(|(&id, &(stored, actual))| (id, stored, actual))
            .collect();
        reported.sort_unstable();
        state.reported = reported;
        state
    }

    /// Saves the state if findings were reported since the last save and
    /// the last save is a second old.
    /// The run loop made progress at `now`: for the watchdog and `/livez`.
    fn turned(&mut self, now: Instant) {
        self.manager.turned(now);
        self.liveness.turned(now);
    }

    fn save_reports(&mut self) -> Result<()> {
        if self.reports_unsaved && self.saved_at.elapsed() >= REPORT_SAVE_INTERVAL {
            self.save_state()?;
        }
        Ok(())
    }

    fn save_state(&mut self) -> Result<()> {
        self.saved_at = Instant::now();
        self.reports_unsaved = false;
        match &self.options.state {
            Some(path) => self.snapshot().save(path),
            None => Ok(()),
        }
    }

    async fn run_loop(
        &mut self,
        mut rx: mpsc::Receiver<(usize, FromStream)>,
        streams: &mut JoinSet<()>,
    ) -> Result<WatchSummary> {
        let mut stop = self.options.stop.clone();
        let mut judges: JoinSet<Task<Judged>> = JoinSet::new();
        let mut waves: JoinSet<Task<Judged>> = JoinSet::new();
        let mut running: TaskIds = HashMap::new();
        let mut scans: JoinSet<(IdRange, Result<()>)> = JoinSet::new();
        // A range scan hands its candidates over a batch at a time, and
        // waits while the confirmations are full: a range of a million
        // broken blobs costs the memory of a few batches.
        let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<Finding>>(1);
        let mut save = tokio::time::interval(self.options.state_interval);
        let mut behind = tokio::time::interval(BEHIND_INTERVAL);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let wake = tokio::select! {
                biased;
                _ = async {
                    match stop.as_mut() {
                        Some(stop) => { stop.requested().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => Wake::Stop,
                Some(ended) = streams.join_next(), if !streams.is_empty() => Wake::StreamTaskEnded(
                    ended.err().map(|e| e.to_string()).unwrap_or_else(|| "it returned".into()),
                ),
                Some(judged) = judges.join_next_with_id(), if !judges.is_empty() => Wake::Judged(task_result(judged, &mut running)),
                Some(judged) = waves.join_next_with_id(), if !waves.is_empty() => Wake::Judged(task_result(judged, &mut running)),
                Some(scanned) = scans.join_next(), if !scans.is_empty() => Wake::Scanned(
                    scanned.unwrap_or_else(|e| (IdRange::ALL, Err(Error::Usage(format!("a range scan failed: {e}"))))),
                ),
                Some(batch) = batch_rx.recv(), if waves.len() < MAX_WAVES && judges.len() < MAX_JUDGES => Wake::ScanBatch(batch),
                _ = save.tick() => Wake::Save,
                _ = behind.tick() => Wake::Behind,
                _ = tick.tick() => Wake::Tick,
                message = rx.recv() => Wake::Stream(message),
            };
            match wake {
                Wake::Stop => {
                    tracing::info!("stopping: saving the state");
                    self.manager.stopping("stopping: saving the state");
                    return Ok(self.summary.clone());
                }
                Wake::Stream(None) => {
                    return Err(Error::Usage("every binary log stream ended".into()));
                }
                Wake::StreamTaskEnded(why) => {
                    return Err(Error::Usage(format!(
                        "a binary log follower ended ({why}); the state is saved, restart the watch"
                    )));
                }
                Wake::Stream(Some((server, message))) => self.on_stream(server, message)?,
                Wake::Judged((ids, Err(e))) => self.retry_later(ids, &e),
                Wake::Judged((_, Ok(mut judged))) => {
                    let candidates = std::mem::take(&mut judged.candidates);
                    if !candidates.is_empty() {
                        let source = Arc::clone(&self.source);
                        let options = self.options.confirm;
                        let ids: Vec<u64> = candidates.iter().map(|c| c.finding.blob_id).collect();
                        let task_ids = ids.clone();
                        let task = waves.spawn(async move {
                            let result = confirm(source, candidates, options).await;
                            (ids, result)
                        });
                        running.insert(task.id(), task_ids);
                    }
                    self.on_judged(judged).await?;
                }
                Wake::Scanned((range, Err(e))) => {
                    tracing::warn!("scanning ids {range} failed ({e}); it is scanned again later");
                    let later =
                        Instant::now() + self.options.confirm.settle_delay * MAX_WAIT_DELAYS;
                    // A scan task that panicked does not say its range:
                    // every range being scanned is scanned again.
                    let failed: Vec<IdRange> = if range == IdRange::ALL {
                        std::mem::take(&mut self.scanning)
                    } else {
                        self.scanning.retain(|r| *r != range);
                        vec![range]
                    };
                    for range in failed {
                        self.pending.touch_range(range, later, later);
                    }
                }
                Wake::ScanBatch(candidates) => {
                    self.judge_scanned(&mut judges, &mut running, candidates);
                }
                Wake::Scanned((range, Ok(()))) => {
                    // Its last batch may wait in the channel: judged before
                    // the range leaves the state.
                    while let Ok(candidates) = batch_rx.try_recv() {
                        self.judge_scanned(&mut judges, &mut running, candidates);
                    }
                    self.scanning.retain(|r| *r != range);
                    self.metrics.ranges_scanned.inc();
                }
                Wake::Tick => self.save_reports()?,
                Wake::Save => self.save_state()?,
                Wake::Behind => {
                    self.measure_behind().await;
                    self.report_status();
                }
            }
            self.start_due(
                &mut judges,
                &mut running,
                waves.len(),
                &mut scans,
                &batch_tx,
            );
            self.turned(Instant::now());
            self.metrics.waiting_ids.set(self.pending.len() as i64);
            self.metrics
                .waiting_ranges
                .set((self.pending.range_count() + self.scanning.len()) as i64);
        }
    }

    /// Ids whose reads failed (past the retry budget): back to waiting,
    /// with the changes that touched them, judged again later.
    fn retry_later(&mut self, ids: Vec<u64>, error: &Error) {
        tracing::warn!(
            "reading {} touched ids failed ({error}); they are judged again later",
            ids.len()
        );
        let later = Instant::now() + self.options.confirm.settle_delay * MAX_WAIT_DELAYS;
        for id in ids {
            let touch = self.judging.remove(&id).flatten();
            self.pending.touch(id, later, later, touch);
        }
    }

    fn raise_watermark(&mut self, server: usize, timestamp: u32) {
        let mark = self.watermark.entry(server).or_insert(0);
        *mark = (*mark).max(timestamp);
    }

    fn server_name(&self, server: usize) -> &str {
        &self.config.servers[server].name
    }

    fn on_stream(&mut self, server: usize, message: FromStream) -> Result<()> {
        let label = self.metrics.label(self.server_name(server));
        match message {
            FromStream::Event(event) => {
                self.metrics.events.get_or_create(&label).inc();
                self.summary.events += 1;
                match event {
                    StreamEvent::Touched { mut ids, change } => {
                        ids.sort_unstable();
                        ids.dedup();
                        self.metrics
                            .touched
                            .get_or_create(&label)
                            .inc_by(ids.len() as u64);
                        self.summary.touched += ids.len() as u64;
                        self.metrics
                            .last_event
                            .get_or_create(&label)
                            .set(f64::from(change.committed_at));
                        self.last_event.insert(
                            server,
                            (change.committed_at, false, change.coordinates.clone()),
                        );
                        self.raise_watermark(server, change.committed_at);
                        let now = Instant::now();
                        let due = now + self.options.confirm.settle_delay;
                        let deadline = now + self.options.confirm.settle_delay * MAX_WAIT_DELAYS;
                        let touch = Touch {
                            server,
                            change: Arc::new(change),
                        };
                        for id in ids {
                            // Being judged: its finding names this change too.
                            if let Some(judged) = self.judging.get_mut(&id) {
                                *judged = Some(Touches::with(judged.as_ref(), touch.clone()));
                            }
                            let touches = Touches::with(
                                self.pending.origin(id).and_then(Option::as_ref),
                                touch.clone(),
                            );
                            self.pending.touch(id, due, deadline, Some(touches));
                        }
                    }
                    StreamEvent::Committed {
                        coordinates,
                        gtid,
                        timestamp,
                        unseen,
                    } => {
                        if let Some(statement) = unseen {
                            self.metrics.gaps.get_or_create(&label).inc();
                            let config = self
                                .options
                                .config_path
                                .as_ref()
                                .map_or_else(|| "FILE".to_owned(), |p| p.display().to_string());
                            tracing::error!(
                                "server `{}`: GAP: `{statement}` at {coordinates} removed watched rows without row events, so the blobs they referenced are not known; run a full check: blobcheck check --config {config}",
                                self.server_name(server)
                            );
                        }
                        if let Some((_, place)) = self.places.iter_mut().find(|(s, _)| *s == server)
                        {
                            place.coordinates = coordinates.clone();
                            if gtid.is_some() {
                                place.gtid = gtid;
                            }
                        }
                        if timestamp != 0 {
                            self.metrics
                                .last_event
                                .get_or_create(&label)
                                .set(f64::from(timestamp));
                        }
                        self.raise_watermark(server, timestamp);
                        self.last_event
                            .insert(server, (timestamp, false, coordinates));
                    }
                    StreamEvent::Heartbeat { coordinates } => {
                        // Not on a replica: idle, it may still have a
                        // delayed past to apply.
                        if self.primaries.contains(&server) {
                            let now = unix_seconds(SystemTime::now()) as u32;
                            self.raise_watermark(server, now.saturating_sub(1));
                        }
                        let at = self.last_event.get(&server).map_or(0, |e| e.0);
                        self.last_event.insert(server, (at, true, coordinates));
                    }
                }
            }
            FromStream::Up => {
                self.metrics.up.get_or_create(&label).set(1);
            }
            FromStream::Down(reason) => {
                self.metrics.up.get_or_create(&label).set(0);
                self.metrics.reconnects.get_or_create(&label).inc();
                tracing::warn!(
                    "server `{}`: binary log stream lost ({}); reconnecting",
                    self.server_name(server),
                    one_line(reason)
                );
            }
            FromStream::Gap {
                lost,
                resumed,
                reason,
            } => {
                log_gap(
                    self.server_name(server),
                    &lost,
                    &resumed,
                    &reason,
                    self.options,
                    &self.metrics,
                );
            }
            FromStream::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    /// Starts judging what is due, and scanning due ranges, within limits.
    fn start_due(
        &mut self,
        judges: &mut JoinSet<Task<Judged>>,
        running: &mut TaskIds,
        waves: usize,
        scans: &mut JoinSet<(IdRange, Result<()>)>,
        batches: &mpsc::Sender<Vec<Finding>>,
    ) {
        let now = Instant::now();
        // Past MAX_WAVES confirmations at once, due ids wait: memory stays
        // bounded whatever the share of ids that look wrong.
        // Every followed server's log has passed this second: each has
        // applied everything committed before it (replicas apply in
        // order), so a change from an earlier second has all its other
        // halves in place, however far one replica lags behind another.
        let applied = self.applied_through();
        let ready = |touches: &Option<Touches>| match touches {
            Some(touches) => touches
                .0
                .iter()
                .all(|t| u64::from(t.change.committed_at) < applied),
            None => true,
        };
        let retry = now + READY_RETRY;
        while judges.len() < MAX_JUDGES && waves < MAX_WAVES {
            let due = self.pending.take_ready(now, JUDGE_BATCH, retry, ready);
            if due.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(due.len());
            for (id, touch) in due {
                // Judged already: it is judged again once this ends.
                if self.judging.contains_key(&id) {
                    let again = now + self.options.confirm.settle_delay;
                    self.pending.touch(id, again, again, touch);
                    continue;
                }
                self.judging.insert(id, touch);
                ids.push(id);
            }
            if !ids.is_empty() {
                self.spawn_judge(judges, running, ids, Vec::new());
            }
        }
        if scans.is_empty() {
            for range in self.pending.take_due_ranges(now) {
                self.scanning.push(range);
                let source = Arc::clone(&self.source);
                let options = self.options.scan;
                let batches = batches.clone();
                scans.spawn(
                    async move { (range, scan_range(source, range, options, batches).await) },
                );
            }
        }
    }

    /// The second every followed server's log has passed (the earliest of
    /// their latest event times; 0 until each has logged an event).
    fn applied_through(&self) -> u64 {
        self.places
            .iter()
            .map(|(server, _)| self.watermark.get(server).copied().unwrap_or(0))
            .min()
            .map_or(0, u64::from)
    }

    /// A range scan's candidates: being judged, so in the state file until
    /// settled.
    fn judge_scanned(
        &mut self,
        judges: &mut JoinSet<Task<Judged>>,
        running: &mut TaskIds,
        candidates: Vec<Finding>,
    ) {
        for c in &candidates {
            self.judging.entry(c.blob_id).or_insert(None);
        }
        self.spawn_judge(judges, running, Vec::new(), candidates);
    }

    fn spawn_judge(
        &self,
        judges: &mut JoinSet<Task<Judged>>,
        running: &mut TaskIds,
        mut ids: Vec<u64>,
        scanned: Vec<Finding>,
    ) {
        ids.sort_unstable();
        let source = Arc::clone(&self.source);
        let confirm = self.options.confirm;
        let mut all: Vec<u64> = ids.clone();
        all.extend(scanned.iter().map(|f| f.blob_id));
        let task_ids = all.clone();
        let task = judges.spawn(async move { (all, judge(source, ids, scanned, confirm).await) });
        running.insert(task.id(), task_ids);
    }

    async fn on_judged(&mut self, judged: Judged) -> Result<()> {
        self.summary.judged += judged.ids.len() as u64;
        self.metrics.judged.inc_by(judged.ids.len() as u64);
        self.metrics.transient.inc_by(judged.transient);
        self.metrics.unsettled.inc_by(judged.unsettled.len() as u64);
        // Never passed, never reported: watched again, with the change
        // that touched them.
        let again = Instant::now() + self.options.confirm.settle_delay;
        for &id in &judged.unsettled {
            let touch = self.judging.remove(&id).flatten();
            tracing::debug!("blob {id} kept changing through every read: judged again");
            self.pending.touch(id, again, again, touch);
        }
        for id in &judged.consistent {
            if self.reported.remove(id).is_some() {
                tracing::info!("blob {id} is consistent again");
            }
        }
        let mut touches: HashMap<u64, Option<Touches>> = HashMap::new();
        for id in &judged.ids {
            if let Some(touch) = self.judging.remove(id) {
                touches.insert(*id, touch);
            }
        }
        let mut reported_any = false;
        for finding in judged.confirmed {
            let numbers = (finding.stored, finding.actual);
            if self.reported.get(&finding.blob_id) == Some(&numbers) {
                continue;
            }
            if self.reported.len() < MAX_REPORTED || self.reported.contains_key(&finding.blob_id) {
                self.reported.insert(finding.blob_id, numbers);
            }
            let touch = touches.get(&finding.blob_id).cloned().flatten();
            self.report(&finding, touch.as_ref()).await?;
            reported_any = true;
            // A batch of thousands, each with its look-ups, is work going
            // on: the watchdog and /livez hear of it, and the state keeps
            // up (at most once a second) so that a restart in the middle
            // does not report them again.
            self.reports_unsaved = true;
            self.save_reports()?;
            self.turned(Instant::now());
        }
        // Soon (within a second, not after every wave: a million findings
        // would write the state a million times): a restart must not
        // report them again.
        if reported_any {
            self.reports_unsaved = true;
            self.save_reports()?;
        }
        Ok(())
    }

    async fn report(&mut self, finding: &Finding, touches: Option<&Touches>) -> Result<()> {
        let detected = SystemTime::now();
        let at_risk =
            finding.kind == Kind::MissingBlob || finding.direction() == Some(Direction::TooLow);
        let affected = if at_risk && self.options.affected_rows > 0 {
            let read = self
                .source
                .affected_rows(finding, self.options.affected_rows);
            match tokio::time::timeout(LOOKUP_TIMEOUT, read).await {
                Ok(Ok(rows)) => rows,
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let detected_unix = unix_seconds(detected);
        // Oldest first by commit time; among equal times, as they came.
        let mut list: Vec<&Touch> = touches.map(|t| t.0.iter().collect()).unwrap_or_default();
        list.sort_by_key(|t| t.change.committed_at);
        let mut changes = Vec::with_capacity(list.len());
        for touch in &list {
            changes.push(ChangeNote {
                server: self.server_name(touch.server).to_owned(),
                binlog: touch.change.coordinates.to_string(),
                gtid: touch.change.gtid.clone(),
                committed_at: utc_text(f64::from(touch.change.committed_at), false),
                statement: statement(&self.source, touch).await,
            });
        }
        let latest = list.last().map(|t| f64::from(t.change.committed_at));
        let latency = latest.map(|committed| (detected_unix - committed).max(0.0));
        self.metrics
            .found(finding, latency.map(Duration::from_secs_f64));
        self.summary.findings += 1;
        let origin = Origin {
            changed_at: latest.map(|committed| utc_text(committed, false)),
            detected_at: utc_text(detected_unix, true),
            latency_seconds: latency.map(|l| (l * 10.0).round() / 10.0),
            changes,
        };
        self.reporter
            .watch_finding(finding, &affected, &origin)
            .map_err(|e| Error::Output {
                path: "output".into(),
                reason: one_line(e),
            })
    }

    /// How far behind each server's log the watch is.
    async fn measure_behind(&mut self) {
        let now = unix_seconds(SystemTime::now());
        let mut lookups = Vec::new();
        for (server, _) in self.places.clone() {
            let label = self.metrics.label(self.server_name(server));
            let Some((timestamp, idle, at)) = self.last_event.get(&server).cloned() else {
                continue;
            };
            let seconds = if idle || timestamp == 0 {
                0.0
            } else {
                (now - f64::from(timestamp)).max(0.0)
            };
            self.metrics
                .behind_seconds
                .get_or_create(&label)
                .set(seconds);
            let source = &self.source;
            lookups.push(async move {
                // A server that does not answer must not hold up the run
                // loop: every server is asked at once, for a few seconds.
                let measured = tokio::time::timeout(LOOKUP_TIMEOUT, async {
                    let mut conn = source.databases.conn(server).await.ok()?;
                    let end = binlog::log_end(&mut conn).await.ok().flatten()?;
                    if end.file == at.file {
                        return Some(end.position.saturating_sub(at.position));
                    }
                    let files = binlog::log_files(&mut conn).await.ok()?;
                    Some(bytes_between(&files, &at, &end))
                })
                .await;
                (label, measured.ok().flatten())
            });
        }
        for (label, bytes) in futures_util::future::join_all(lookups).await {
            let Some(bytes) = bytes else {
                continue;
            };
            // Caught up with the log's end: not behind, whatever the last
            // event's time.
            if bytes == 0 {
                self.metrics.behind_seconds.get_or_create(&label).set(0.0);
            }
            self.metrics
                .behind_bytes
                .get_or_create(&label)
                .set(bytes.min(i64::MAX as u64) as i64);
        }
    }

    /// What `systemctl status` shows: servers followed, ids waiting,
    /// findings.
    fn report_status(&self) {
        self.manager.status(&format!(
            "following {} servers; {} ids waiting; {} findings",
            self.places.len(),
            self.pending.len(),
            self.summary.findings
        ));
    }
}

/// The statement's text, if the server logged it; a failed look-up is
/// no reason to hold the finding back.
async fn statement(source: &DbSource, touch: &Touch) -> Option<String> {
    let at = touch.change.statement_at.as_ref()?;
    let lookup = async {
        let mut conn = source.databases.conn(touch.server).await.ok()?;
        binlog::statement_at(&mut conn, at).await.ok().flatten()
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
}

/// Bytes of log from `from` to `to`, over the files between them.
fn bytes_between(files: &[(String, u64)], from: &Coordinates, to: &Coordinates) -> u64 {
    let mut total = 0u64;
    let mut counting = false;
    for (file, size) in files {
        if *file == from.file {
            counting = true;
            total += size.saturating_sub(from.position);
            continue;
        }
        if *file == to.file {
            return total + to.position;
        }
        if counting {
            total += size;
        }
    }
    total
}

/// Reads touched ids once: the consistent ones are settled, the rest (and
/// busy ones) become candidates for a confirmation wave.
async fn judge(
    source: Arc<DbSource>,
    ids: Vec<u64>,
    scanned: Vec<Finding>,
    confirm: ConfirmOptions,
) -> Result<Judged> {
    let mut candidates: Vec<Candidate> = scanned
        .into_iter()
        .map(|f| Candidate::new(f, confirm.hot_threshold))
        .collect();
    let mut consistent = Vec::new();
    for batch in ids.chunks(confirm.batch_size.max(1)) {
        for read in read_points(&*source, batch).await? {
            let busy =
                read.finding.stored.unwrap_or(0).max(read.finding.actual) >= confirm.hot_threshold;
            if read.stable && read.finding.difference() == 0 && !busy {
                consistent.push(read.finding.blob_id);
            } else {
                candidates.push(Candidate::new(read.finding, confirm.hot_threshold));
            }
        }
    }
    let settled: Vec<u64> = consistent.clone();
    candidates.sort_by_key(|c| c.finding.blob_id);
    Ok(Judged {
        ids: settled,
        consistent,
        confirmed: Vec::new(),
        transient: 0,
        unsettled: Vec::new(),
        candidates,
    })
}

/// Confirms candidates the way `check` confirms its own, re-reading them a
/// settle delay apart.
async fn confirm(
    source: Arc<DbSource>,
    candidates: Vec<Candidate>,
    confirm: ConfirmOptions,
) -> Result<Judged> {
    let ids: Vec<u64> = candidates.iter().map(|c| c.finding.blob_id).collect();
    let outcome = confirm_wave(
        source,
        candidates,
        confirm,
        Instant::now() + confirm.settle_delay,
    )
    .await?;
    Ok(Judged {
        ids,
        consistent: Vec::new(),
        confirmed: outcome.confirmed,
        transient: outcome.transient + outcome.watched,
        unsettled: outcome.unsettled,
        candidates: Vec::new(),
    })
}

/// Scans one range with the scan's chunked reads; returns its candidates
/// (inconsistent ids, and busy ones), to be judged.
async fn scan_range(
    source: Arc<DbSource>,
    range: IdRange,
    options: ScanOptions,
    batches: mpsc::Sender<Vec<Finding>>,
) -> Result<()> {
    tracing::info!("scanning ids {range}: more ids were touched than the watch holds");
    let (tx, mut rx) = mpsc::channel(4);
    let scanning = tokio::spawn(scan(source, range, Partition::WHOLE, options, tx));
    let mut batch = Vec::new();
    while let Some(outcome) = rx.recv().await {
        batch.extend(outcome.findings);
        batch.extend(outcome.watch);
        if batch.len() >= JUDGE_BATCH {
            // Waits while the confirmations are full (and so does the scan).
            if batches.send(std::mem::take(&mut batch)).await.is_err() {
                break;
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.send(batch).await;
    }
    scanning
        .await
        .map_err(|e| Error::Usage(format!("a range scan failed: {e}")))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_behind_span_files() {
        let files = vec![
            ("b.1".to_owned(), 1_000),
            ("b.2".to_owned(), 500),
            ("b.3".to_owned(), 300),
        ];
        let at = |file: &str, position| Coordinates {
            file: file.into(),
            position,
        };
        assert_eq!(
            bytes_between(&files, &at("b.1", 400), &at("b.3", 100)),
            600 + 500 + 100
        );
        assert_eq!(bytes_between(&files, &at("b.2", 0), &at("b.3", 0)), 500);
    }
}
