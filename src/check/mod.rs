//! One check from start to end: connect, inspect the schema, scan, confirm,
//! report, keep a checkpoint. The CLI's `check` and `demo` both come through
//! here.
//!
//! ```text
//! scan ──outcomes──▶ candidates ──waves──▶ confirm ──findings──▶ reporter
//!                        │                                  │
//!                        └──────────── checkpoint ◀─────────┘
//! ```
//!
//! This loop is the only owner of the run's state, so a checkpoint is always
//! a consistent snapshot of it.

mod resume;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::confirm::{Candidate, ConfirmOptions, WaveOutcome, confirm_wave};
use crate::db::{DbSource, Protocol};
use crate::error::{Error, Result};
use crate::finding::{Direction, Finding, Kind};
use crate::partition::Partition;
use crate::plan::IdRange;
use crate::progress::{LiveProgress, Progress, ProgressMode};
use crate::read::{PointReads, RunReads, ScanReads};
use crate::report::{ColumnSummary, Reporter, SketchCounts, Summary};
use crate::scan::{Checked, ChunkOutcome, ScanOptions, scan};
use crate::throttle::ThrottleOptions;
use resume::{identity, starting_state};

/// Which ids to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this range.
    Range(IdRange),
    /// One of N partitions: the blocks of ids it owns (`partition`).
    Partition(Partition),
}

/// Where to keep a checkpoint, and whether to resume from it.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub path: PathBuf,
    pub resume: bool,
    pub interval: Duration,
}

/// Asks a running check to stop before its end (SIGTERM, SIGINT): it stops
/// reading, saves its checkpoint, and returns its summary marked as
/// interrupted, with the findings confirmed so far.
#[derive(Debug, Clone)]
pub struct StopRequest(tokio::sync::watch::Receiver<Option<String>>);

impl StopRequest {
    /// The sender asks with the reason (the signal's name).
    pub fn channel() -> (tokio::sync::watch::Sender<Option<String>>, StopRequest) {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        (sender, StopRequest(receiver))
    }

    /// Waits until a stop is asked for (at once if it already was); never
    /// returns if the sender is gone without asking.
    pub async fn requested(&mut self) -> String {
        // The borrow of the value ends before any other wait, so that the
        // future can move between threads.
        let reason = self
            .0
            .wait_for(Option::is_some)
            .await
            .ok()
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub scope: Scope,
    /// The scan as it runs. Its `hot_threshold` is the confirmation's when
    /// confirmation is on (busy blobs the scan sees consistent are
    /// re-read too), `u64::MAX` otherwise: `CheckSettings::scan_options`
    /// derives it so.
    pub scan: ScanOptions,
    pub confirm: ConfirmOptions,
    pub throttle: ThrottleOptions,
    pub checkpoint: Option<CheckpointOptions>,
    pub progress: ProgressMode,
    /// Kept up to date with how far the scan is, for reports while it runs.
    pub live_progress: Option<Arc<LiveProgress>>,
    /// How long a failing query is retried before the check gives up.
    pub retry_for: Duration,
    /// Connections opened to one server at most (the pool's size is capped
    /// by it; reads beyond it wait for a turn).
    pub max_connections_per_server: usize,
    /// Rows listed per column for each missing blob or count too low.
    pub affected_rows: u64,
    /// How scan batches travel.
    pub protocol: Protocol,
    /// Stops the run early when asked.
    pub stop: Option<StopRequest>,
}

impl CheckOptions {
    /// The whole id space, unconfirmed, unthrottled, no checkpoint, no
    /// progress display, the binary protocol: what tests of static data
    /// want.
    pub fn new(scan: ScanOptions) -> CheckOptions {
        CheckOptions {
            scope: Scope::Range(IdRange::ALL),
            scan,
            confirm: ConfirmOptions::disabled(),
            throttle: ThrottleOptions::default(),
            checkpoint: None,
            progress: ProgressMode::None,
            live_progress: None,
            retry_for: Duration::from_secs(300),
            max_connections_per_server: crate::db::DEFAULT_MAX_CONNECTIONS_PER_SERVER,
            affected_rows: 10,
            protocol: Protocol::Binary,
            stop: None,
        }
    }
}

/// Candidates gathered into one confirmation task.
const WAVE_SIZE: usize = 2_000;
/// Waves confirming at once; past this the scan waits.
const MAX_WAVES: usize = 16;

/// A wave on its way: its candidates as the scan read them (for the
/// checkpoint) and the task confirming them.
struct Wave {
    candidates: Vec<Finding>,
    task: JoinHandle<Result<WaveOutcome>>,
}

/// Candidates not yet handed to a wave.
#[derive(Default)]
struct OpenWave {
    candidates: Vec<Candidate>,
    /// The earliest and the latest scan read of its candidates.
    oldest: Option<Instant>,
    newest: Option<Instant>,
}

impl OpenWave {
    /// Notes a scan read of candidates. Chunks come in id order, not in
    /// the order they were read (`--jobs` read at once), so the latest
    /// read is the latest of all, not the last one noted: the wave's first
    /// re-read must come a settle delay after every candidate's scan read.
    fn note_read_at(&mut self, read_at: Instant) {
        self.oldest = Some(self.oldest.map_or(read_at, |t| t.min(read_at)));
        self.newest = Some(self.newest.map_or(read_at, |t| t.max(read_at)));
    }
}

enum Event {
    Stop(String),
    Outcome(Option<ChunkOutcome>),
    Wave(Result<WaveOutcome>),
    OpenWaveDue,
    CheckpointDue,
}

/// Runs a whole check. Each finding is written to `reporter` as soon as it
/// is confirmed (at once when confirmation is off). Returns the summary
/// (also written to the reporter).
pub async fn run(
    config: &Config,
    options: &CheckOptions,
    mut reporter: Reporter,
) -> Result<Summary> {
    let started = Instant::now();
    let config = &crate::discovery::expand(config).await?;
    reporter.set_labels(config.references.iter().map(|r| r.label.clone()).collect());
    // Each chunk in flight reads every column of a server at once, the
    // planner reads one batch ahead, and each confirmation wave reads every
    // column of a server at once too. Capped by
    // `max_connections_per_server`: the rest wait for a turn.
    let mut source = DbSource::open(
        config,
        options.scan.jobs + MAX_WAVES.min(4),
        options.max_connections_per_server,
    )
    .await?;
    // Only once the check is sure to run: a failing run says one thing.
    source.databases.warn_if_writable().await;
    let throttle = source.throttle_with(options.throttle.clone());
    source.retry_for = options.retry_for;
    source.protocol = options.protocol;
    let source = Arc::new(source);

    let result = run_with_source(config, options, &mut reporter, &source, started).await;
    let throttle_stats = throttle.stats();
    drop(throttle);
    if let Ok(source) = Arc::try_unwrap(source) {
        source.databases.disconnect().await;
    }
    let mut summary = result?;
    summary.throttled_seconds = throttle_stats.paused_seconds + throttle_stats.rate_limited_seconds;
    summary.seconds = started.elapsed().as_secs_f64();
    reporter.finish(&summary).map_err(|e| output_error(&e))?;
    Ok(summary)
}

fn output_error(e: &std::io::Error) -> Error {
    Error::Output {
        path: "output".into(),
        reason: crate::error::one_line(e),
    }
}

/// The summary of a run before it has read anything: what it checks, where.
fn summary_frame(config: &Config, options: &CheckOptions, range: Option<IdRange>) -> Summary {
    Summary {
        range,
        partition: match options.scope {
            Scope::Partition(partition) => Some(partition.to_string()),
            Scope::Range(_) => None,
        },
        blob_table: format!(
            "{}:{}",
            config.servers[config.blobs.server].name, config.blobs.table
        ),
        servers: config
            .servers
            .iter()
            .map(|s| {
                if s.discovered {
                    format!("{} (discovered)", s.name)
                } else {
                    s.name.clone()
                }
            })
            .collect(),
        columns: config
            .references
            .iter()
            .map(|r| ColumnSummary {
                label: r.label.clone(),
                ..ColumnSummary::default()
            })
            .collect(),
        confirmations: options.confirm.confirmations,
        ..Summary::default()
    }
}

/// Counts the NULL and negative references of every column, in batches of
/// `batch` rows within the rate cap.
async fn count_unusable<S: RunReads>(
    source: &S,
    batch: u64,
    columns: &mut [ColumnSummary],
) -> Result<()> {
    let unusable = source.unusable_counts(batch).await?;
    for (column, (nulls, negative)) in columns.iter_mut().zip(unusable) {
        column.nulls = nulls;
        column.negative = negative;
    }
    Ok(())
}

/// Every read of a whole check: the scan's, the confirmation's and the
/// run's own.
pub trait CheckReads: ScanReads + PointReads + RunReads {}

impl<S: ScanReads + PointReads + RunReads> CheckReads for S {}

async fn run_with_source<S: CheckReads>(
    config: &Config,
    options: &CheckOptions,
    reporter: &mut Reporter,
    source: &Arc<S>,
    started: Instant,
) -> Result<Summary> {
    let span = source.blob_id_span().await?;
    let (range, partition) = match options.scope {
        Scope::Range(range) => (range, Partition::WHOLE),
        Scope::Partition(partition) => (IdRange::ALL, partition),
    };
    let mut summary = summary_frame(config, options, Some(range));
    tracing::info!(
        "checking ids {range}: {} on `{}` against {} reference columns on {} servers",
        config.blobs.table,
        config.servers[config.blobs.server].name,
        config.references.len(),
        config.servers.len()
    );

    // NULLs and negative values belong to no id: count them in the run (or
    // the partition) that covers the start of the id space.
    if range.start == 0 && partition.owns(0) {
        count_unusable(&**source, options.scan.chunk_size, &mut summary.columns).await?;
    }

    let scope = match options.scope {
        Scope::Range(range) => format!("range {range}"),
        // Named with its blocks: a checkpoint of a partition cut another
        // way (from the span, before blocks) belongs to another check.
        Scope::Partition(partition) => format!(
            "partition {partition} in blocks of {} ids",
            crate::partition::BLOCK_IDS
        ),
    };
    let (mut state, start) = starting_state(
        options,
        identity(config, &scope),
        range,
        config.references.len(),
    )?;
    summary.start = start;
    for finding in &state.findings {
        report_finding(reporter, &**source, finding, options.affected_rows).await?;
    }

    let mut run = Run {
        options,
        partition,
        source,
        reporter,
        waves: VecDeque::new(),
        open: OpenWave::default(),
        progress: Progress::new(
            options.progress,
            range,
            span.map(|(_, last)| last),
            options.live_progress.clone(),
        ),
        last_checkpoint: Instant::now(),
        sketch: SketchCounts::default(),
        interrupted: None,
    };
    // Candidates a killed run left unconfirmed are read again from now on.
    let pending = std::mem::take(&mut state.pending);
    run.add_candidates(pending, Instant::now());

    let result = run.drive(&mut state).await;
    run.progress.finish();
    for wave in &run.waves {
        wave.task.abort();
    }
    result?;

    run.fill_summary(&state, &mut summary);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The state of a run in progress, apart from what the checkpoint holds.
struct Run<'a, S> {
    options: &'a CheckOptions,
    /// The blocks this run checks (`Partition::WHOLE`: every id of its range).
    partition: Partition,
    source: &'a Arc<S>,
    reporter: &'a mut Reporter,
    waves: VecDeque<Wave>,
    open: OpenWave,
    progress: Progress,
    last_checkpoint: Instant,
    sketch: SketchCounts,
    /// Why the run stopped before its end, if it did.
    interrupted: Option<String>,
}

impl<S: CheckReads> Run<'_, S> {
    fn add_candidates(&mut self, findings: Vec<Finding>, read_at: Instant) {
        if findings.is_empty() {
            return;
        }
        self.open.note_read_at(read_at);
        self.open.candidates.extend(
            findings
                .into_iter()
                .map(|f| Candidate::new(f, self.options.confirm.hot_threshold)),
        );
        if self.open.candidates.len() >= WAVE_SIZE {
            self.launch_open_wave();
        }
    }

    fn launch_open_wave(&mut self) {
        let open = std::mem::take(&mut self.open);
        if open.candidates.is_empty() {
            return;
        }
        let candidates: Vec<Finding> = open.candidates.iter().map(|c| c.finding.clone()).collect();
        // An ordinary candidate's first re-read comes a settle delay after
        // the newest candidate's scan read, so that every read of it is a
        // settle delay after the one before (`confirm_wave` re-reads busy
        // ones at once: their verdict uses re-reads only).
        let first_read =
            open.newest.unwrap_or_else(Instant::now) + self.options.confirm.settle_delay;
        let task = tokio::spawn(confirm_wave(
            Arc::clone(self.source),
            open.candidates,
            self.options.confirm,
            first_read,
        ));
        self.waves.push_back(Wave { candidates, task });
    }

    async fn emit(&mut self, findings: &[Finding], state: &mut Checkpoint) -> Result<()> {
        for finding in findings {
            report_finding(
                self.reporter,
                &**self.source,
                finding,
                self.options.affected_rows,
            )
            .await?;
        }
        self.reporter.flush().map_err(|e| output_error(&e))?;
        state.findings.extend_from_slice(findings);
        Ok(())
    }

    fn save_checkpoint(&mut self, state: &mut Checkpoint) -> Result<()> {
        let Some(checkpoint) = &self.options.checkpoint else {
            return Ok(());
        };
        state.pending = self
            .waves
            .iter()
            .flat_map(|w| w.candidates.iter().cloned())
            .chain(self.open.candidates.iter().map(|c| c.finding.clone()))
            .collect();
        state.save(&checkpoint.path)?;
        state.pending.clear();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// What the run did, into its summary.
    fn fill_summary(&mut self, state: &Checkpoint, summary: &mut Summary) {
        summary.blob_rows = state.blob_rows;
        for (column, n) in summary.columns.iter_mut().zip(&state.references) {
            column.references = *n;
        }
        summary.transient = state.transient;
        summary.watched = state.watched;
        if matches!(self.options.scan.method, crate::scan::Method::Sketch { .. }) {
            summary.sketch = Some(self.sketch.clone());
        }
        summary.unsettled = state.unsettled.clone();
        summary.interrupted = self.interrupted.take();
        summary.findings = self.reporter.counts().clone();
    }

    /// Takes one chunk's outcome into the run: counts it, moves the
    /// checkpoint's position past it, and reports its findings (without
    /// confirmation) or makes them candidates.
    async fn take_outcome(&mut self, outcome: ChunkOutcome, state: &mut Checkpoint) -> Result<()> {
        if !self.options.confirm.enabled() {
            // Written before the state moves past the chunk: if
            // writing them fails (an affected-rows read on a lost
            // server), the checkpoint resumes from the chunk.
            self.emit(&outcome.findings, state).await?;
        }
        match outcome.checked {
            Checked::Exact => self.sketch.exact += 1,
            Checked::SketchClean => self.sketch.clean += 1,
            Checked::SketchLocated => self.sketch.located += 1,
            Checked::SketchRows => self.sketch.partly_rows += 1,
            Checked::Skipped => {}
        }
        state.blob_rows = state.blob_rows.saturating_add(outcome.blobs);
        let mut rows = outcome.blobs;
        for (total, n) in state.references.iter_mut().zip(&outcome.references) {
            *total = total.saturating_add(*n);
            rows = rows.saturating_add(*n);
        }
        state.next_start = outcome
            .range
            .end
            .checked_add(1)
            .filter(|_| outcome.range.end < state.range.end);
        self.progress.advance(outcome.range.end, rows);
        if self.options.confirm.enabled() {
            let mut candidates = outcome.findings;
            candidates.extend(outcome.watch);
            candidates.sort_by_key(|f| f.blob_id);
            self.add_candidates(candidates, outcome.read_at);
        }
        Ok(())
    }

    /// Takes a finished confirmation wave into the run: reports what it
    /// confirmed, then counts the rest.
    async fn take_wave(&mut self, outcome: WaveOutcome, state: &mut Checkpoint) -> Result<()> {
        // Reported before the wave leaves the pending candidates:
        // if that fails, the checkpoint still holds them all.
        self.emit(&outcome.confirmed, state).await?;
        self.waves.pop_front();
        state.transient = state.transient.saturating_add(outcome.transient);
        state.watched = state.watched.saturating_add(outcome.watched);
        if !outcome.unsettled.is_empty() {
            tracing::warn!(
                "{} candidates kept changing through every confirmation read and are not reported (ids {:?}{})",
                outcome.unsettled.len(),
                &outcome.unsettled[..outcome.unsettled.len().min(10)],
                if outcome.unsettled.len() > 10 {
                    ", …"
                } else {
                    ""
                }
            );
        }
        state.unsettled.extend(outcome.unsettled);
        Ok(())
    }

    /// Runs the scan and the confirmations to the end. On failure the
    /// checkpoint is saved first, so a resume loses nothing.
    async fn drive(&mut self, state: &mut Checkpoint) -> Result<()> {
        let result = self.drive_to_end(state).await;
        if result.is_err() {
            let _ = self.save_checkpoint(state);
        }
        result
    }

    async fn drive_to_end(&mut self, state: &mut Checkpoint) -> Result<()> {
        let (outcome_tx, mut outcome_rx) =
            mpsc::channel::<ChunkOutcome>(self.options.scan.jobs.max(1) * 2);
        let mut scanner = state.next_start.map(|start| {
            let range = IdRange::new(start, state.range.end);
            tokio::spawn(scan(
                Arc::clone(self.source),
                range,
                self.partition,
                self.options.scan,
                outcome_tx,
            ))
        });
        let mut scan_done = scanner.is_none();
        let mut stop = self.options.stop.clone();
        // Written once before the scan starts: a checkpoint that cannot be
        // written fails the run now, not after the work.
        self.save_checkpoint(state)?;
        let checkpoint_interval = self
            .options
            .checkpoint
            .as_ref()
            .map(|c| c.interval)
            .unwrap_or(Duration::MAX);

        loop {
            if scan_done && self.waves.is_empty() && self.open.candidates.is_empty() {
                break;
            }
            if scan_done {
                self.launch_open_wave();
            }
            let open_due = self
                .open
                .oldest
                .map(|t| t + self.options.confirm.settle_delay);
            let checkpoint_due = self.last_checkpoint.checked_add(checkpoint_interval);
            let accept_outcomes = !scan_done && self.waves.len() < MAX_WAVES;
            let front = self.waves.front_mut().map(|w| &mut w.task);
            let event = tokio::select! {
                biased;
                reason = async { match stop.as_mut() { Some(stop) => stop.requested().await, None => std::future::pending().await } } => Event::Stop(reason),
                outcome = outcome_rx.recv(), if accept_outcomes => Event::Outcome(outcome),
                joined = async { match front { Some(task) => task.await, None => std::future::pending().await } } => {
                    Event::Wave(joined.map_err(|e| Error::Usage(format!("internal error in confirmation: {e}"))).and_then(|r| r))
                }
                _ = sleep_until(open_due), if open_due.is_some() => Event::OpenWaveDue,
                _ = sleep_until(checkpoint_due), if checkpoint_due.is_some() => Event::CheckpointDue,
            };
            match event {
                Event::Stop(reason) => {
                    // Outcomes already received are in the state; the
                    // candidates of every wave go into the checkpoint as
                    // pending, to be confirmed by a resumed run.
                    if let Some(scanner) = scanner.take() {
                        scanner.abort();
                    }
                    tracing::warn!(
                        "stopping on {reason}: no more reads; the summary counts what was checked so far"
                    );
                    self.save_checkpoint(state)?;
                    self.interrupted = Some(reason);
                    return Ok(());
                }
                Event::Outcome(Some(outcome)) => self.take_outcome(outcome, state).await?,
                Event::Outcome(None) => {
                    // The scan has ended: it covered its range, or failed.
                    scan_done = true;
                    if let Some(scanner) = scanner.take() {
                        scanner.await.map_err(|e| {
                            Error::Usage(format!("internal error in the scan: {e}"))
                        })??;
                    }
                }
                Event::Wave(outcome) => self.take_wave(outcome?, state).await?,
                Event::OpenWaveDue => self.launch_open_wave(),
                Event::CheckpointDue => self.save_checkpoint(state)?,
            }
        }

        state.next_start = None;
        state.complete = true;
        self.save_checkpoint(state)?;
        Ok(())
    }
}

/// Writes one finding, with the rows it affects where people need them:
/// the messages a missing blob or a count too low puts at risk.
async fn report_finding<S: RunReads>(
    reporter: &mut Reporter,
    source: &S,
    finding: &Finding,
    affected_rows: u64,
) -> Result<()> {
    let at_risk =
        finding.kind == Kind::MissingBlob || finding.direction() == Some(Direction::TooLow);
    let affected = if at_risk && affected_rows > 0 {
        source.affected_rows(finding, affected_rows).await?
    } else {
        Vec::new()
    };
    reporter
        .finding(finding, &affected)
        .map_err(|e| output_error(&e))
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! Whole checks (waves, checkpoints, the summary) on the in-memory
    //! model, against brute force.

    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;
    use crate::read::memory::MemorySource;
    use crate::report::{Format, Start};

    /// What the reporter wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_open_wave_waits_for_its_latest_scan_read_whatever_order_chunks_come_in() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut open = OpenWave::default();
        // The chunk of lower ids was read last: it comes first all the same.
        open.note_read_at(at(5));
        open.note_read_at(at(2));
        open.note_read_at(at(3));
        assert_eq!(open.oldest, Some(at(2)));
        assert_eq!(open.newest, Some(at(5)));
    }

    /// A configuration of `columns` reference columns; nothing connects to
    /// its server.
    fn config(columns: usize) -> Config {
        let mut text = String::from(
            "[servers.global]\nurl = \"mysql://u@127.0.0.1:1\"\n\n\
             [blobs]\nserver = \"global\"\ntable = \"d.Blobs\"\nid = \"ID\"\ncount = \"N\"\n",
        );
        for c in 0..columns {
            text.push_str(&format!(
                "\n[[references]]\nserver = \"global\"\ntable = \"d.R{c}\"\ncolumn = \"B\"\n"
            ));
        }
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    /// `(blob id, stored, actual)` of every finding line a JSON reporter
    /// wrote.
    fn reported(written: &Written) -> Vec<(u64, Option<u64>, u64)> {
        let bytes = written.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    v["blob_id"].as_u64().unwrap(),
                    v["stored"].as_u64(),
                    v["actual"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Runs a whole check of the model with `options`; returns the summary
    /// and what was reported.
    fn check(
        source: MemorySource,
        options: &CheckOptions,
    ) -> (Summary, Vec<(u64, Option<u64>, u64)>) {
        let config = config(source.columns.len());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let written = Written::default();
        let mut reporter = Reporter::new(
            Format::Json,
            Box::new(written.clone()),
            config.references.iter().map(|r| r.label.clone()).collect(),
        );
        let source = Arc::new(source);
        let summary = runtime
            .block_on(run_with_source(
                &config,
                options,
                &mut reporter,
                &source,
                Instant::now(),
            ))
            .unwrap();
        (summary, reported(&written))
    }

    /// The input a CI run found: four faults at 84, 89, 94 and 99 with
    /// differences +1, −3, +3, −1 in one sketched piece cancel in all three
    /// sums. The sketch misses them (its known blind spot) but reports
    /// nothing false; the exact method finds them all.
    /// A pattern that cancelled the three exact moments the sketch used to
    /// rely on (found by the property tests, and missed in every run then)
    /// is found with random weights, as by the exact method.
    #[test]
    fn a_pattern_the_old_moments_missed_is_found() {
        let blobs: BTreeMap<u64, u64> = [(68, 0), (69, 0), (70, 0), (71, 0), (84, 1), (94, 3)]
            .into_iter()
            .collect();
        let columns: Vec<BTreeMap<u64, u64>> = vec![
            [(89, 3), (99, 1), (100, 3), (102, 1), (103, 1)]
                .into_iter()
                .collect(),
            [(68, 2), (102, 1)].into_iter().collect(),
        ];
        let expected: Vec<(u64, Option<u64>, u64)> =
            crate::merge::tests::brute_force(&blobs, &columns)
                .iter()
                .map(|f| (f.blob_id, f.stored, f.actual))
                .collect();
        let confirm = ConfirmOptions {
            settle_delay: Duration::from_secs(1),
            confirmations: 2,
            batch_size: 7,
            hot_threshold: 3,
        };
        let mut sketched = ScanOptions::fixed(17, 1);
        sketched.method = crate::scan::Method::Sketch {
            target_rows: 4 * 17,
        };
        let mut options = CheckOptions::new(sketched);
        options.confirm = confirm;
        let (_, mut found) = check(MemorySource::new(blobs.clone(), columns.clone()), &options);
        found.sort_unstable();
        assert_eq!(found, expected);
        let mut options = CheckOptions::new(ScanOptions::fixed(17, 1));
        options.confirm = confirm;
        let (_, mut found) = check(MemorySource::new(blobs, columns), &options);
        found.sort_unstable();
        assert_eq!(found, expected);
    }

    fn model() -> impl Strategy<Value = (BTreeMap<u64, u64>, Vec<BTreeMap<u64, u64>>)> {
        let id = prop_oneof![
            3 => 0u64..300,
            1 => u64::MAX - 3..=u64::MAX,
            1 => (1u64 << 63) - 2..(1u64 << 63) + 2,
        ];
        (
            proptest::collection::btree_map(id.clone(), 0u64..4, 0..80),
            proptest::collection::vec(proptest::collection::btree_map(id, 1u64..4, 0..80), 1..4),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A whole check, confirmed in waves and checkpointed, reports
        /// exactly the inconsistencies brute force finds, each once, and
        /// counts every row; a second run resuming its finished checkpoint
        /// checks anew and reports them again.
        #[test]
        fn a_whole_check_reports_exactly_what_brute_force_finds(
            (blobs, columns) in model(),
            chunk_size in 1u64..40,
            jobs in 1usize..4,
            sketch in any::<bool>(),
        ) {
            let expected: Vec<(u64, Option<u64>, u64)> =
                crate::merge::tests::brute_force(&blobs, &columns)
                    .iter()
                    .map(|f| (f.blob_id, f.stored, f.actual))
                    .collect();
            let dir = tempfile::tempdir().unwrap();
            let mut scan = ScanOptions::fixed(chunk_size, jobs);
            if sketch {
                scan.method = crate::scan::Method::Sketch { target_rows: 4 * chunk_size };
            }
            let mut options = CheckOptions::new(scan);
            options.confirm = ConfirmOptions {
                settle_delay: Duration::from_secs(1),
                confirmations: 2,
                batch_size: 7,
                hot_threshold: 3,
            };
            options.checkpoint = Some(CheckpointOptions {
                path: dir.path().join("checkpoint.json"),
                resume: true,
                interval: Duration::from_secs(2),
            });
            for run in 0..2 {
                let (summary, mut found) =
                    check(MemorySource::new(blobs.clone(), columns.clone()), &options);
                found.sort_unstable();
                if sketch && expected.len() > 3 {
                    // Four or more faults can cancel in all three sums of a
                    // piece (+1, −3, +3, −1 at consecutive ids), the blind
                    // spot `sketch::four_faults_with_binomial_differences_cancel`
                    // pins; three or fewer never can (their differences
                    // would solve a Vandermonde system). What the sketch
                    // reports is still always real.
                    for finding in &found {
                        prop_assert!(expected.contains(finding), "run {}: {:?} is not real", run, finding);
                    }
                } else {
                    prop_assert_eq!(&found, &expected, "run {}", run);
                }
                prop_assert_eq!(summary.blob_rows, blobs.len() as u64);
                let references: Vec<u64> = summary.columns.iter().map(|c| c.references).collect();
                let expected_references: Vec<u64> =
                    columns.iter().map(|c| c.values().sum()).collect();
                prop_assert_eq!(references, expected_references);
                prop_assert!(summary.unsettled.is_empty());
                prop_assert_eq!(summary.transient, 0);
                let expected_start = if run == 0 { Start::NewWithoutCheckpoint } else { Start::NewAfterFinished };
                prop_assert_eq!(summary.start, Some(expected_start));
            }
        }
    }
}
