//! The scan: walks the id range chunk by chunk, reads every stream of a chunk
//! concurrently, merges them, and hands each chunk's outcome to the caller in
//! ascending id order.
//!
//! The data comes through the read seam ([`ScanReads`], and
//! [`PointReads`] for the ids a sketch locates): the databases in
//! production (`db::DbSource`), an in-memory model in the property tests.
//! Both run the same chunking code.
//!
//! Where things are: this file holds the pipeline (the planner, the chunk
//! tasks' work, the reorder buffer); `exact.rs` the exact method's reads
//! of a chunk; `sketched.rs` the sketch's reads of a range (sums, halving,
//! located ids, rows read where the sums do not settle).
//!
//! `scan` knows no SQL and nothing of confirmation: it hands on
//! candidates, and the caller decides what they are.
//!
//! Shape of the pipeline:
//!
//! ```text
//! planner ──chunks──▶ up to `jobs` chunk tasks ──outcomes──▶ reorder ──▶ channel
//! (blob PK,           (reference batches of all             (by range
//!  keyset)             columns at once, merge)               start)
//! ```
//!
//! Memory is bounded by `jobs × chunk size × (columns + 1)` rows plus the
//! reorder buffer, which admits no new task while it holds `2 × jobs`
//! outcomes; never by the size of a table.

mod exact;
mod sketched;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::Result;
use crate::finding::Finding;
use crate::partition::{Partition, block_of, block_range};
use crate::plan::{ChunkSizer, IdRange};
use crate::read::{PointReads, ScanReads};
use crate::sketch::{self, SpanSizer};
use exact::{check_chunk, plan_chunk};
use sketched::sketch_range;

/// How chunks are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every id of every chunk, one row per id and table.
    Exact,
    /// Three sums per table and chunk of about `target_rows` rows; chunks
    /// the sums do not clear are read exactly (`sketch`).
    Sketch { target_rows: u64 },
}

/// How the scan is cut and how much of it runs at once.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Rows per batch, for the blob table and each reference column: the
    /// first chunk's size, and every chunk's when `chunk_time` is `None`.
    pub chunk_size: u64,
    /// Chunks in flight at once.
    pub jobs: usize,
    /// Aim for chunks that take this long, within the bounds below.
    pub chunk_time: Option<Duration>,
    pub min_chunk_size: u64,
    pub max_chunk_size: u64,
    /// Consistent ids with at least this many references are handed over
    /// too, in `ChunkOutcome::watch` (only from chunks read exactly).
    pub hot_threshold: u64,
    pub method: Method,
}

impl ScanOptions {
    /// Every chunk `chunk_size` rows.
    pub fn fixed(chunk_size: u64, jobs: usize) -> ScanOptions {
        ScanOptions {
            chunk_size,
            jobs,
            chunk_time: None,
            min_chunk_size: chunk_size,
            max_chunk_size: chunk_size,
            hot_threshold: u64::MAX,
            method: Method::Exact,
        }
    }
}

/// One task's work.
#[derive(Debug)]
enum Work {
    /// A chunk with its blob rows read, to check exactly.
    Exact(Chunk),
    /// A range to check by its sketch; `probe`: its span is not backed by
    /// what the chunks before it held (see `SpanSizer::proven`), so its
    /// tables are probed for the row bound before they are summed.
    Sketch { range: IdRange, probe: bool },
    /// Ids this process does not read: another partition's blocks, or a
    /// stretch its tables' indexes showed empty.
    Skip(IdRange),
}

/// A piece of the id range with its blob rows already read.
#[derive(Debug)]
struct Chunk {
    range: IdRange,
    blobs: Vec<(u64, u64)>,
    /// The batch size this chunk was planned with; its reference batches
    /// use the same.
    limit: u64,
}

/// What one contiguous id range held.
#[derive(Debug, Clone)]
pub struct ChunkOutcome {
    pub range: IdRange,
    pub findings: Vec<Finding>,
    /// Blob rows read.
    pub blobs: u64,
    /// References counted, per column.
    pub references: Vec<u64>,
    /// Busy ids the scan saw consistent (difference 0), in id order.
    pub watch: Vec<Finding>,
    /// When the last read of this range ended: candidates are re-read a
    /// settle delay after it.
    pub read_at: Instant,
    /// How the range was checked.
    pub checked: Checked,
}

/// How a chunk outcome's range was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Row by row.
    Exact,
    /// By its sums, which showed it consistent.
    SketchClean,
    /// By its sums, which located every inconsistent id (halving the
    /// range where needed), each read exactly.
    SketchLocated,
    /// By its sums, with pieces they did not settle read row by row.
    SketchRows,
    /// Not read: another partition's ids, or ids that hold no rows.
    Skipped,
}

/// The number of ids in `range`, 2⁶⁴ counting as 2⁶⁴ − 1.
fn span_of(range: IdRange) -> u64 {
    (range.end - range.start).saturating_add(1)
}

/// The most rows any one table held in an outcome.
fn most_rows(outcome: &ChunkOutcome) -> u64 {
    outcome
        .references
        .iter()
        .copied()
        .chain([outcome.blobs])
        .max()
        .unwrap_or(0)
}

/// What every chunk task and the planner share.
struct Shared<S> {
    source: Arc<S>,
    /// Rows per batch, adapted to `--chunk-time`.
    sizer: Mutex<ChunkSizer>,
    /// The sketch's spans, adapted to how many rows ids hold.
    span_sizer: Mutex<SpanSizer>,
    hot_threshold: u64,
    /// See `sketched::split_min_rows`; 0 for the exact method.
    split_min_rows: u64,
    /// See `sketch::row_bound`; `u64::MAX` for the exact method.
    row_bound: u64,
}

impl<S: ScanReads + PointReads> Shared<S> {
    fn new(source: Arc<S>, options: &ScanOptions) -> Shared<S> {
        let (split_min_rows, row_bound, target_rows) = match options.method {
            Method::Sketch { target_rows } => (
                sketched::split_min_rows(target_rows),
                sketch::row_bound(target_rows),
                target_rows,
            ),
            Method::Exact => (0, u64::MAX, options.chunk_size),
        };
        Shared {
            source,
            sizer: Mutex::new(ChunkSizer::new(
                options.chunk_size,
                options.chunk_time,
                options.min_chunk_size,
                options.max_chunk_size,
            )),
            span_sizer: Mutex::new(SpanSizer::new(target_rows)),
            hot_threshold: options.hot_threshold,
            split_min_rows,
            row_bound,
        }
    }

    /// Does one task's work: returns its outcome and the work it hands back
    /// (the rest of a chunk whose reference batches stopped early, the rest
    /// of a range a sketch did not settle).
    async fn work(&self, work: Work) -> Result<(ChunkOutcome, Vec<Work>)> {
        let source = &*self.source;
        let (outcome, more) = match work {
            Work::Skip(range) => return Ok((skipped(range), Vec::new())),
            Work::Exact(chunk) => {
                let started = Instant::now();
                let limit = chunk.limit;
                let (outcome, rest) = check_chunk(source, chunk, self.hot_threshold).await?;
                self.sizer.lock().unwrap().observe(limit, started.elapsed());
                (outcome, rest.map(Work::Exact).into_iter().collect())
            }
            Work::Sketch { range, probe } => {
                let limit = self.sizer.lock().unwrap().size();
                sketch_range(
                    source,
                    range,
                    limit,
                    self.hot_threshold,
                    self.split_min_rows,
                    probe.then_some(self.row_bound),
                )
                .await?
            }
        };
        // How many ids hold how many rows, for the sketch's next spans.
        self.span_sizer
            .lock()
            .unwrap()
            .observe(span_of(outcome.range), most_rows(&outcome));
        Ok((outcome, more))
    }

    /// Plans `range` from its start, at most `jobs` pieces of work ahead of
    /// the tasks (the channel's capacity). Exact: walks the blob table's
    /// primary key and reads each chunk's blob rows. Sketch: cuts the range
    /// by the span sizer, reading nothing, except where the span has grown
    /// too long to sketch (ids are sparse there, or absent up to
    /// 2⁶⁴ − 1): there it plans an exact chunk. With several partitions,
    /// it skips the other partitions' blocks, and before it enters one of
    /// its own it asks every table's index for its next row, so that it
    /// jumps over empty stretches instead of planning each empty block.
    /// Ends after the range's end, after an error (sent on), or when the
    /// receiver is gone.
    async fn plan(
        &self,
        range: IdRange,
        partition: Partition,
        method: Method,
        work: mpsc::Sender<Result<Work>>,
    ) {
        let mut start = range.start;
        // Whether the next row at or after `start` is still to be asked for.
        let mut entering = true;
        loop {
            let (next, end) = match self
                .next_work(start, range, partition, method, entering)
                .await
            {
                Ok(planned) => {
                    entering = planned.probe_next;
                    (Ok(planned.work), Some(planned.end))
                }
                Err(e) => (Err(e), None),
            };
            let after = end.and_then(|end| end.checked_add(1).filter(|_| end < range.end));
            if work.send(next).await.is_err() {
                return;
            }
            match after {
                Some(after) => start = after,
                None => return,
            }
        }
    }

    /// The work that starts at `start`, and where it ends.
    async fn next_work(
        &self,
        start: u64,
        range: IdRange,
        partition: Partition,
        method: Method,
        entering: bool,
    ) -> Result<Planned> {
        let planned = |work, end, probe_next| Planned {
            work,
            end,
            probe_next,
        };
        let mut within = range;
        if partition != Partition::WHOLE {
            if let Some(foreign) = partition.foreign_from(start) {
                let end = foreign.end.min(range.end);
                return Ok(planned(Work::Skip(IdRange::new(start, end)), end, true));
            }
            if entering {
                let ahead = IdRange::new(start, range.end);
                // The next row, or, when another partition owns its block,
                // the start of this partition's next block after it: sparse
                // ids cost one look per block of this partition's that the
                // scan enters, not one per row of every partition.
                // (where to go on, whether a row is known to be there)
                let to = match first_row(&*self.source, ahead).await? {
                    None => None,
                    Some(first) if partition.owns(first) => Some((first, true)),
                    Some(first) => partition
                        .next_owned_block(block_of(first))
                        .map(|block| (block_range(block).start, false)),
                };
                match to.filter(|&(to, _)| to <= range.end) {
                    None => return Ok(planned(Work::Skip(ahead), range.end, false)),
                    Some((to, row_there)) if to > start => {
                        return Ok(planned(
                            Work::Skip(IdRange::new(start, to - 1)),
                            to - 1,
                            !row_there,
                        ));
                    }
                    Some(_) => {}
                }
            }
            within.end = within.end.min(block_range(block_of(start)).end);
        }
        let (span, probe) = {
            let sizer = self.span_sizer.lock().unwrap();
            (sizer.span(), !sizer.proven(sizer.span()))
        };
        match method {
            Method::Sketch { .. } if span <= sketch::MAX_SPAN => {
                let end = start.saturating_add(span - 1).min(within.end);
                let range = IdRange::new(start, end);
                Ok(planned(Work::Sketch { range, probe }, end, false))
            }
            _ => {
                let limit = self.sizer.lock().unwrap().size();
                let chunk = plan_chunk(&*self.source, start, within, limit).await?;
                let end = chunk.range.end;
                Ok(planned(Work::Exact(chunk), end, false))
            }
        }
    }
}

/// One step of the plan: the work, the last id it covers, and whether the
/// step after it must first ask the indexes for their next row.
struct Planned {
    work: Work,
    end: u64,
    probe_next: bool,
}

/// The smallest id of `range` that any table has a row for: the blob
/// table's or a reference column's next key, one index read each.
async fn first_row<S: ScanReads>(source: &S, range: IdRange) -> Result<Option<u64>> {
    let tables = std::iter::once(None).chain((0..source.column_count()).map(Some));
    let firsts = try_join_all(tables.map(|table| source.sketch_cut(table, range, 0))).await?;
    Ok(firsts.into_iter().flatten().min())
}

/// The outcome of ids not read.
fn skipped(range: IdRange) -> ChunkOutcome {
    ChunkOutcome {
        range,
        findings: Vec::new(),
        blobs: 0,
        references: Vec::new(),
        watch: Vec::new(),
        read_at: Instant::now(),
        checked: Checked::Skipped,
    }
}

/// Outcomes that finished out of order, held until every range before
/// theirs has come.
struct Reorder {
    held: BTreeMap<u64, ChunkOutcome>,
    /// Where the next outcome to send starts; `None` past 2⁶⁴ − 1.
    next_start: Option<u64>,
}

impl Reorder {
    fn new(start: u64) -> Reorder {
        Reorder {
            held: BTreeMap::new(),
            next_start: Some(start),
        }
    }

    fn len(&self) -> usize {
        self.held.len()
    }

    fn insert(&mut self, outcome: ChunkOutcome) {
        self.held.insert(outcome.range.start, outcome);
    }

    /// The next outcome in id order, if it has come.
    fn pop(&mut self) -> Option<ChunkOutcome> {
        let outcome = self.held.remove(&self.next_start?)?;
        self.next_start = outcome.range.end.checked_add(1);
        Some(outcome)
    }
}

/// Scans `range`, sending each chunk's outcome to `outcomes` in ascending
/// id order; the outcomes' ranges are contiguous and cover `range` exactly.
/// A full channel holds the scan back. Stops early, without error, when the
/// receiver is dropped.
pub async fn scan<S: ScanReads + PointReads>(
    source: Arc<S>,
    range: IdRange,
    partition: Partition,
    options: ScanOptions,
    outcomes: mpsc::Sender<ChunkOutcome>,
) -> Result<()> {
    let jobs = options.jobs.max(1);
    let shared = Arc::new(Shared::new(source, &options));
    let (work_tx, mut work_rx) = mpsc::channel::<Result<Work>>(jobs);
    let planner = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.plan(range, partition, options.method, work_tx).await }
    });
    let spawn = |tasks: &mut JoinSet<_>, work: Work| {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { shared.work(work).await });
    };

    let mut tasks: JoinSet<Result<(ChunkOutcome, Vec<Work>)>> = JoinSet::new();
    // Work handed back by tasks comes before anything new from the planner,
    // so that the reorder buffer drains.
    let mut handed_back: VecDeque<Work> = VecDeque::new();
    let mut reorder = Reorder::new(range.start);
    let mut planner_done = false;

    let result = async {
        loop {
            let admit = tasks.len() < jobs && (tasks.is_empty() || reorder.len() < 2 * jobs);
            if admit && let Some(work) = handed_back.pop_front() {
                spawn(&mut tasks, work);
                continue;
            }
            if tasks.is_empty() && planner_done {
                break;
            }
            tokio::select! {
                work = work_rx.recv(), if admit && !planner_done => match work {
                    Some(work) => spawn(&mut tasks, work?),
                    None => planner_done = true,
                },
                Some(joined) = tasks.join_next() => {
                    let (outcome, more) = joined.map_err(|e| {
                        crate::error::Error::Usage(format!("internal error in a chunk task: {e}"))
                    })??;
                    handed_back.extend(more);
                    reorder.insert(outcome);
                    while let Some(outcome) = reorder.pop() {
                        if outcomes.send(outcome).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
    .await;

    planner.abort();
    tasks.abort_all();
    result
}

#[cfg(test)]
mod tests;
