//! The scan: walks the id range chunk by chunk, reads every stream of a chunk
//! concurrently, merges them, and hands each chunk's outcome to the caller in
//! ascending id order.
//!
//! The data comes from a [`Source`]: the databases in production (see
//! `db::DbSource`), an in-memory model in the property tests. Both run the
//! same chunking code.
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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::Result;
use crate::finding::Finding;
use crate::merge::merge_watching;
use crate::plan::{ChunkSizer, IdRange, chunk_end, merge_cut};
use crate::sketch::{self, Moments, SpanSizer, Verdict};

/// Where the scan reads from. Every batch is sorted by id, holds each id at
/// most once, lies inside `range` and has at most `limit` rows: the first
/// `limit` ids of the range that have rows.
pub trait Source: Send + Sync + 'static {
    /// `(id, stored count)` rows of the blob table.
    fn blob_batch(
        &self,
        range: IdRange,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// `(id, number of rows referencing id)` of one reference column.
    fn reference_batch(
        &self,
        column: usize,
        range: IdRange,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// `(id, stored count)` of those of `ids` (sorted, distinct) that have a
    /// blob row: point reads for confirmation.
    fn stored_counts(&self, ids: &[u64]) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// `(id, references)` of those of `ids` (sorted, distinct) that one
    /// column references, sorted by id.
    fn reference_counts(
        &self,
        column: usize,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// `(id, references, fingerprint)` of those of `ids` (sorted,
    /// distinct) that one column references, sorted by id: as
    /// `reference_counts`, with a fingerprint of which rows reference the
    /// id (their primary keys), so that confirmation can tell a set of
    /// references that changed from one that held still although its size
    /// is the same. A source that cannot tell rows apart gives 0.
    fn reference_points(
        &self,
        column: usize,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<(u64, u64, u64)>>> + Send {
        async move {
            let counts = self.reference_counts(column, ids).await?;
            Ok(counts.into_iter().map(|(id, n)| (id, n, 0)).collect())
        }
    }

    /// The blob table's moments over `range` (at most `sketch::MAX_SPAN`
    /// ids), `None` when a sum reaches `sketch::EXACT_LIMIT` and may have
    /// been rounded.
    fn blob_sketch(&self, range: IdRange) -> impl Future<Output = Result<Option<Moments>>> + Send;

    /// One reference column's moments over `range` (at most
    /// `sketch::MAX_SPAN` ids), `None` as for `blob_sketch`.
    fn reference_sketch(
        &self,
        column: usize,
        range: IdRange,
    ) -> impl Future<Output = Result<Option<Moments>>> + Send;

    /// The key of the `(rows + 1)`-th row in key order of `range` in the
    /// blob table (`column` `None`) or in one reference column: a sketch of
    /// `range` that ends before it reads at most `rows` rows of that table.
    /// `None` when the range holds `rows` rows or fewer. Reads at most
    /// `rows + 1` rows. The default never cuts: for test sources small
    /// enough not to need it.
    fn sketch_cut(
        &self,
        column: Option<usize>,
        range: IdRange,
        rows: u64,
    ) -> impl Future<Output = Result<Option<u64>>> + Send {
        let _ = (column, range, rows);
        async { Ok(None) }
    }

    /// `rows` read by `sketch_cut` probes that found no cut (they read what
    /// the sums then read again), for the rate cap.
    fn probed(&self, rows: u64) -> impl Future<Output = ()> + Send {
        let _ = rows;
        async {}
    }

    fn column_count(&self) -> usize;
}

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
}

/// Reads the next chunk of blob rows starting at `start`, which is at most
/// `range.end`.
async fn plan_chunk<S: Source>(
    source: &S,
    start: u64,
    range: IdRange,
    limit: u64,
) -> Result<Chunk> {
    let batch_range = IdRange::new(start, range.end);
    let blobs = source.blob_batch(batch_range, limit).await?;
    let end = chunk_end(&blobs, limit, range.end);
    Ok(Chunk {
        range: IdRange::new(start, end),
        blobs,
        limit,
    })
}

/// Reads one batch of every reference column over `chunk`, merges as far as
/// all of them are complete, and returns what is left of the chunk if a
/// reference batch was full before the chunk's end.
async fn check_chunk<S: Source>(
    source: &S,
    mut chunk: Chunk,
    hot_threshold: u64,
) -> Result<(ChunkOutcome, Option<Chunk>)> {
    let limit = chunk.limit;
    let batches = try_join_all(
        (0..source.column_count()).map(|column| source.reference_batch(column, chunk.range, limit)),
    )
    .await?;
    let cut = merge_cut(chunk.range.end, limit, batches.iter().map(Vec::as_slice));
    let columns: Vec<&[(u64, u64)]> = batches
        .iter()
        .map(|rows| &rows[..rows.partition_point(|&(id, _)| id <= cut)])
        .collect();
    let blobs_done = chunk.blobs.partition_point(|&(id, _)| id <= cut);
    let rest_blobs = chunk.blobs.split_off(blobs_done);

    let mut outcome = ChunkOutcome {
        range: IdRange::new(chunk.range.start, cut),
        findings: Vec::new(),
        blobs: chunk.blobs.len() as u64,
        references: columns
            .iter()
            .map(|rows| rows.iter().map(|&(_, n)| n).sum())
            .collect(),
        watch: Vec::new(),
        read_at: Instant::now(),
        checked: Checked::Exact,
    };
    merge_watching(
        &chunk.blobs,
        &columns,
        &mut outcome.findings,
        hot_threshold,
        &mut outcome.watch,
    );
    outcome.read_at = Instant::now();

    let rest = (cut < chunk.range.end).then(|| Chunk {
        range: IdRange::new(cut + 1, chunk.range.end),
        blobs: rest_blobs,
        limit,
    });
    Ok((outcome, rest))
}

/// Checks the first chunk of `range` exactly; what is left of the range is
/// handed back to be sketched again.
async fn exact_part<S: Source>(
    source: &S,
    range: IdRange,
    limit: u64,
    hot_threshold: u64,
) -> Result<(ChunkOutcome, Vec<Work>)> {
    let chunk = plan_chunk(source, range.start, range, limit).await?;
    let chunk_end = chunk.range.end;
    let (outcome, rest) = check_chunk(source, chunk, hot_threshold).await?;
    let mut more: Vec<Work> = rest.into_iter().map(Work::Exact).collect();
    if chunk_end < range.end {
        more.push(Work::Sketch {
            range: IdRange::new(chunk_end + 1, range.end),
            probe: true,
        });
    }
    Ok((outcome, more))
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

/// A piece of a sketched chunk that its sums do not settle is halved while
/// it holds more than this many rows (blob rows and references together),
/// and read row by row below. A quarter of `--sketch-rows` (2048 rows by
/// default): the client decodes that many rows in about a millisecond, about
/// what one more round of sketch queries costs the servers.
fn split_min_rows(target_rows: u64) -> u64 {
    (target_rows / 4).max(1)
}

/// The blob table's and all reference columns' moments over `range`, with
/// the references counted per column; `None` where a sum is too large to be
/// trusted exact.
async fn sketch_moments<S: Source>(
    source: &S,
    range: IdRange,
) -> Result<Option<(Piece, Vec<u64>)>> {
    let (blobs, columns) = tokio::try_join!(
        source.blob_sketch(range),
        try_join_all(
            (0..source.column_count()).map(|column| source.reference_sketch(column, range))
        ),
    )?;
    let (Some(blobs), Some(columns)) = (blobs, columns.into_iter().collect::<Option<Vec<_>>>())
    else {
        return Ok(None);
    };
    let references = columns
        .iter()
        .fold(Moments::default(), |total, column| total.plus(column));
    let piece = Piece {
        range,
        blobs,
        references,
    };
    Ok(Some((
        piece,
        columns.iter().map(|column| column.rows).collect(),
    )))
}

/// A piece of a sketched chunk with its moments, `t` counted from the
/// piece's start.
struct Piece {
    range: IdRange,
    blobs: Moments,
    references: Moments,
}

impl Piece {
    /// What is left of this piece after `first`, its sketched first half:
    /// derived by subtraction, no query. `None` when the subtraction does not
    /// come out (the rows changed between the two sketches).
    fn second_half(&self, first: &Piece) -> Option<Piece> {
        let delta = first.range.end - self.range.start + 1;
        Some(Piece {
            range: IdRange::new(first.range.end + 1, self.range.end),
            blobs: self.blobs.minus(&first.blobs)?.shifted(delta)?,
            references: self.references.minus(&first.references)?.shifted(delta)?,
        })
    }
}

/// What the sums settled of a chunk.
#[derive(Default)]
struct Settled {
    /// One id per piece, with the difference the sums put on it.
    located: Vec<(IdRange, u64, i128)>,
    /// Findings of pieces whose sums two ids explained, already read.
    found: Vec<Finding>,
    /// Pieces the sums did not settle, to read row by row, in id order.
    unsettled: Vec<IdRange>,
}

/// The finding of a stable point read (`confirm::read_points`) of an id the
/// sums located, if it shows exactly the difference they put on it: a read
/// during which the stored count moved is not trusted, nor any other
/// difference.
fn located_as(read: crate::confirm::PointRead, difference: i128) -> Option<Finding> {
    (read.stable && read.finding.difference() == difference).then_some(read.finding)
}

/// The two inconsistent ids that explain `piece`'s sums (`sketch::pairs`),
/// read exactly with the stable point read confirmation uses: `None` unless
/// exactly one candidate pair reads with the differences the sums put on it.
/// Such a pair accounts for all three moments, so what is left of the piece
/// is as settled as a clean piece.
async fn read_pair<S: Source>(source: &S, piece: &Piece) -> Result<Option<[Finding; 2]>> {
    let span = span_of(piece.range);
    let offered = sketch::pairs(piece.range.start, span, &piece.blobs, &piece.references);
    if offered.is_empty() {
        return Ok(None);
    }
    let mut ids: Vec<u64> = offered.iter().flatten().map(|&(id, _)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    let reads = crate::confirm::read_points(source, &ids).await?;
    let read_as = |id: u64, difference: i128| {
        located_as(reads[ids.binary_search(&id).ok()?].clone(), difference)
    };
    let mut confirmed = offered
        .iter()
        .filter_map(|&[(a, da), (b, db)]| Some([read_as(a, da)?, read_as(b, db)?]));
    match (confirmed.next(), confirmed.next()) {
        (Some(pair), None) => Ok(Some(pair)),
        _ => Ok(None),
    }
}

/// Decides `top` by its sums; where they do not settle a piece and no pair
/// of ids explains them, halves it (sketching the first half and deriving
/// the second) until every piece is clean, has its one or two inconsistent
/// ids located, or is small enough to read row by row. Pieces come out in
/// id order.
async fn settle<S: Source>(source: &S, top: Piece, min_rows: u64) -> Result<Settled> {
    let mut settled = Settled::default();
    let mut stack = vec![top];
    while let Some(piece) = stack.pop() {
        let span = span_of(piece.range);
        match sketch::decide(piece.range.start, span, &piece.blobs, &piece.references) {
            Verdict::Clean => {}
            Verdict::Single { id, difference } => {
                settled.located.push((piece.range, id, difference));
            }
            Verdict::Unresolved if let Some(pair) = read_pair(source, &piece).await? => {
                settled.found.extend(pair);
            }
            Verdict::Unresolved
                if span < 2 || piece.blobs.rows + piece.references.rows <= min_rows =>
            {
                settled.unsettled.push(piece.range);
            }
            Verdict::Unresolved => {
                let first = IdRange::new(piece.range.start, piece.range.start + span / 2 - 1);
                match sketch_moments(source, first).await? {
                    Some((first, _)) => match piece.second_half(&first) {
                        Some(second) => {
                            stack.push(second);
                            stack.push(first);
                        }
                        None => settled.unsettled.push(piece.range),
                    },
                    None => settled.unsettled.push(piece.range),
                }
            }
        }
    }
    Ok(settled)
}

/// Reads all of `range` row by row, as the exact method does, adding its
/// findings and busy ids to `outcome`.
async fn read_rows<S: Source>(
    source: &S,
    range: IdRange,
    limit: u64,
    hot_threshold: u64,
    outcome: &mut ChunkOutcome,
) -> Result<()> {
    let mut start = range.start;
    loop {
        let mut chunk = plan_chunk(source, start, range, limit).await?;
        let chunk_end = chunk.range.end;
        loop {
            let (part, rest) = check_chunk(source, chunk, hot_threshold).await?;
            outcome.findings.extend(part.findings);
            outcome.watch.extend(part.watch);
            match rest {
                Some(rest) => chunk = rest,
                None => break,
            }
        }
        match chunk_end.checked_add(1) {
            Some(next) if chunk_end < range.end => start = next,
            _ => return Ok(()),
        }
    }
}

/// Checks `range` by its sketch (see `sketch`): pieces the sums do not
/// settle are halved and sketched again, ids they locate are read exactly,
/// and what is left is read row by row. Where a sum is too large to trust,
/// the range's first chunk is read row by row and the rest handed back.
async fn sketch_range<S: Source>(
    source: &S,
    range: IdRange,
    limit: u64,
    hot_threshold: u64,
    split_min_rows: u64,
    row_bound: Option<u64>,
) -> Result<(ChunkOutcome, Vec<Work>)> {
    let fallback = || exact_part(source, range, limit, hot_threshold);
    if span_of(range) > sketch::MAX_SPAN {
        return fallback().await;
    }
    // Where every table holds at most `row_bound` rows: the blob table
    // (one row per id) cannot hold more than the span, a reference column
    // can, so it is always probed. A span the chunks before it back needs
    // no probe: a probe reads what the sum reads again.
    let probe_blobs = row_bound.is_some_and(|bound| span_of(range) > bound);
    let probe_references = row_bound.is_some();
    let cuts = try_join_all(
        probe_blobs
            .then_some(None)
            .into_iter()
            .chain(
                (0..source.column_count())
                    .filter(|_| probe_references)
                    .map(Some),
            )
            .map(|table| source.sketch_cut(table, range, row_bound.unwrap_or(u64::MAX))),
    )
    .await?;
    let (range, rest) = match cuts.iter().flatten().min().copied() {
        // One id holds more rows than the bound: read as the exact method
        // reads it, the rest sketched again.
        Some(cut) if cut <= range.start => return fallback().await,
        Some(cut) => (
            IdRange::new(range.start, cut - 1),
            vec![Work::Sketch {
                range: IdRange::new(cut, range.end),
                probe: true,
            }],
        ),
        None => (range, Vec::new()),
    };
    let fallback = || exact_part(source, range, limit, hot_threshold);
    let Some((top, columns)) = sketch_moments(source, range).await? else {
        return fallback().await;
    };
    // A probe that found no cut read at least what its table's sum read
    // (the whole range, where nothing was cut); the sketch counts that.
    let probed_rows = probe_blobs
        .then_some(top.blobs.rows)
        .into_iter()
        .chain(columns.iter().copied().filter(|_| probe_references));
    let probed: u64 = cuts
        .iter()
        .zip(probed_rows)
        .filter(|(cut, _)| cut.is_none())
        .map(|(_, rows)| rows)
        .sum();
    source.probed(probed).await;
    let mut outcome = ChunkOutcome {
        range,
        findings: Vec::new(),
        blobs: top.blobs.rows,
        references: columns,
        watch: Vec::new(),
        read_at: Instant::now(),
        checked: Checked::SketchClean,
    };
    let Settled {
        located,
        found,
        mut unsettled,
    } = settle(source, top, split_min_rows).await?;
    if !found.is_empty() {
        outcome.findings.extend(found);
        outcome.checked = Checked::SketchLocated;
    }
    if !located.is_empty() {
        let ids: Vec<u64> = located.iter().map(|&(_, id, _)| id).collect();
        let reads = crate::confirm::read_points(source, &ids).await?;
        for ((piece, _, difference), read) in located.into_iter().zip(reads) {
            match located_as(read, difference) {
                Some(finding) => outcome.findings.push(finding),
                None => unsettled.push(piece),
            }
        }
        outcome.checked = Checked::SketchLocated;
    }
    if !unsettled.is_empty() {
        unsettled.sort_unstable_by_key(|piece| piece.start);
        for piece in unsettled {
            read_rows(source, piece, limit, hot_threshold, &mut outcome).await?;
        }
        outcome
            .watch
            .sort_unstable_by_key(|finding| finding.blob_id);
        outcome.checked = Checked::SketchRows;
    }
    outcome
        .findings
        .sort_unstable_by_key(|finding| finding.blob_id);
    outcome.read_at = Instant::now();
    Ok((outcome, rest))
}

/// Scans `range`, sending each chunk's outcome to `outcomes` in ascending
/// id order; the outcomes' ranges are contiguous and cover `range` exactly.
/// A full channel holds the scan back. Stops early, without error, when the
/// receiver is dropped.
pub async fn scan<S: Source>(
    source: Arc<S>,
    range: IdRange,
    options: ScanOptions,
    outcomes: mpsc::Sender<ChunkOutcome>,
) -> Result<()> {
    let jobs = options.jobs.max(1);
    let hot_threshold = options.hot_threshold;
    let sizer = Arc::new(Mutex::new(ChunkSizer::new(
        options.chunk_size,
        options.chunk_time,
        options.min_chunk_size,
        options.max_chunk_size,
    )));
    let span_sizer = Arc::new(Mutex::new(SpanSizer::new(match options.method {
        Method::Sketch { target_rows } => target_rows,
        Method::Exact => options.chunk_size,
    })));
    let (split_min_rows, row_bound) = match options.method {
        Method::Sketch { target_rows } => {
            (split_min_rows(target_rows), sketch::row_bound(target_rows))
        }
        Method::Exact => (0, u64::MAX),
    };
    let spawn_work = |tasks: &mut JoinSet<_>, work: Work| {
        let source = Arc::clone(&source);
        let sizer = Arc::clone(&sizer);
        let span_sizer = Arc::clone(&span_sizer);
        tasks.spawn(async move {
            let (outcome, more) = match work {
                Work::Exact(chunk) => {
                    let started = Instant::now();
                    let limit = chunk.limit;
                    let (outcome, rest) = check_chunk(&*source, chunk, hot_threshold).await?;
                    sizer.lock().unwrap().observe(limit, started.elapsed());
                    (outcome, rest.map(Work::Exact).into_iter().collect())
                }
                Work::Sketch { range, probe } => {
                    let limit = sizer.lock().unwrap().size();
                    sketch_range(
                        &*source,
                        range,
                        limit,
                        hot_threshold,
                        split_min_rows,
                        probe.then_some(row_bound),
                    )
                    .await?
                }
            };
            // How many ids hold how many rows, for the sketch's next spans.
            span_sizer
                .lock()
                .unwrap()
                .observe(span_of(outcome.range), most_rows(&outcome));
            Ok((outcome, more))
        });
    };

    // The planner runs at most `jobs` chunks ahead of the workers. Exact:
    // it walks the blob table's primary key and reads each chunk's blob
    // rows. Sketch: it cuts the range by the span sizer, reading nothing,
    // except where the span has grown too long to sketch (ids are sparse
    // there, or absent up to 2⁶⁴ − 1): there it plans an exact chunk.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Work>>(jobs);
    let planner_source = Arc::clone(&source);
    let planner_sizer = Arc::clone(&sizer);
    let planner_span_sizer = Arc::clone(&span_sizer);
    let method = options.method;
    let planner = tokio::spawn(async move {
        let mut start = range.start;
        loop {
            let (span, probe) = {
                let sizer = planner_span_sizer.lock().unwrap();
                (sizer.span(), !sizer.proven(sizer.span()))
            };
            let (work, end) = match method {
                Method::Sketch { .. } if span <= sketch::MAX_SPAN => {
                    let end = start.saturating_add(span - 1).min(range.end);
                    let range = IdRange::new(start, end);
                    (Ok(Work::Sketch { range, probe }), Some(end))
                }
                _ => {
                    let limit = planner_sizer.lock().unwrap().size();
                    match plan_chunk(&*planner_source, start, range, limit).await {
                        Ok(chunk) => {
                            let end = chunk.range.end;
                            (Ok(Work::Exact(chunk)), Some(end))
                        }
                        Err(e) => (Err(e), None),
                    }
                }
            };
            let next = end.and_then(|end| end.checked_add(1).filter(|_| end < range.end));
            if chunk_tx.send(work).await.is_err() {
                return;
            }
            match next {
                Some(next) => start = next,
                None => return,
            }
        }
    });

    let mut tasks: JoinSet<Result<(ChunkOutcome, Vec<Work>)>> = JoinSet::new();
    // Work handed back by tasks (remainders of chunks whose reference
    // batches stopped early, the rest of a range a sketch did not settle);
    // it comes before anything new from the planner so the reorder buffer
    // drains.
    let mut remainders: VecDeque<Work> = VecDeque::new();
    let mut reorder: BTreeMap<u64, ChunkOutcome> = BTreeMap::new();
    let mut next_start: Option<u64> = Some(range.start);
    let mut planner_done = false;

    let result = async {
        loop {
            let admit = tasks.len() < jobs && (tasks.is_empty() || reorder.len() < 2 * jobs);
            if admit && let Some(work) = remainders.pop_front() {
                spawn_work(&mut tasks, work);
                continue;
            }
            if tasks.is_empty() && planner_done {
                break;
            }
            tokio::select! {
                chunk = chunk_rx.recv(), if admit && !planner_done => match chunk {
                    Some(work) => spawn_work(&mut tasks, work?),
                    None => planner_done = true,
                },
                Some(joined) = tasks.join_next() => {
                    let (outcome, more) = joined.map_err(|e| {
                        crate::error::Error::Usage(format!("internal error in a chunk task: {e}"))
                    })??;
                    remainders.extend(more);
                    reorder.insert(outcome.range.start, outcome);
                    while let Some(outcome) = next_start.and_then(|start| reorder.remove(&start)) {
                        next_start = outcome.range.end.checked_add(1);
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
pub(crate) mod tests {
    use super::*;
    use crate::finding::Kind;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The whole database as sorted maps, answering batches with the same
    /// semantics as the SQL (range, order, limit).
    pub(crate) struct MemorySource {
        pub blobs: BTreeMap<u64, u64>,
        /// Each column's `id → number of referencing rows`.
        pub columns: Vec<BTreeMap<u64, u64>>,
        pub largest_batch: AtomicU64,
        /// Blob batches read: chunks read exactly.
        pub blob_batches: AtomicU64,
        /// The ranges of the blob sketches read: chunks and halves.
        pub blob_sketches: Mutex<Vec<IdRange>>,
    }

    fn batch(map: &BTreeMap<u64, u64>, range: IdRange, limit: u64) -> Vec<(u64, u64)> {
        map.range(range.start..=range.end)
            .take(limit as usize)
            .map(|(&k, &v)| (k, v))
            .collect()
    }

    pub(crate) fn points(map: &BTreeMap<u64, u64>, ids: &[u64]) -> Vec<(u64, u64)> {
        ids.iter()
            .filter_map(|id| map.get(id).map(|&n| (*id, n)))
            .collect()
    }

    impl Source for MemorySource {
        async fn blob_batch(&self, range: IdRange, limit: u64) -> Result<Vec<(u64, u64)>> {
            self.blob_batches.fetch_add(1, Ordering::Relaxed);
            Ok(batch(&self.blobs, range, limit))
        }
        async fn reference_batch(
            &self,
            column: usize,
            range: IdRange,
            limit: u64,
        ) -> Result<Vec<(u64, u64)>> {
            let rows = batch(&self.columns[column], range, limit);
            self.largest_batch
                .fetch_max(rows.len() as u64, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok(rows)
        }
        async fn stored_counts(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
            Ok(points(&self.blobs, ids))
        }
        async fn reference_counts(&self, column: usize, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
            Ok(points(&self.columns[column], ids))
        }
        async fn blob_sketch(&self, range: IdRange) -> Result<Option<Moments>> {
            assert!(range.end - range.start < sketch::MAX_SPAN);
            self.blob_sketches.lock().unwrap().push(range);
            let rows = self
                .blobs
                .range(range.start..=range.end)
                .map(|(&k, &v)| (k, v));
            Ok(Moments::of_blobs(range.start, rows))
        }
        async fn reference_sketch(&self, column: usize, range: IdRange) -> Result<Option<Moments>> {
            assert!(range.end - range.start < sketch::MAX_SPAN);
            let rows = self.columns[column]
                .range(range.start..=range.end)
                .map(|(&k, &v)| (k, v));
            tokio::task::yield_now().await;
            Ok(Moments::of_references(range.start, rows))
        }
        async fn sketch_cut(
            &self,
            column: Option<usize>,
            range: IdRange,
            rows: u64,
        ) -> Result<Option<u64>> {
            let map = match column {
                Some(column) => &self.columns[column],
                None => &self.blobs,
            };
            let mut seen = 0u64;
            for (&id, &n) in map.range(range.start..=range.end) {
                // A blob row is one row; a reference entry is `n` rows.
                seen += if column.is_some() { n } else { 1 };
                if seen > rows {
                    return Ok(Some(id));
                }
            }
            Ok(None)
        }
        fn column_count(&self) -> usize {
            self.columns.len()
        }
    }

    pub(crate) fn run(
        source: MemorySource,
        range: IdRange,
        chunk_size: u64,
        jobs: usize,
    ) -> (Vec<Finding>, Vec<IdRange>, u64, Vec<u64>) {
        run_with(source, range, ScanOptions::fixed(chunk_size, jobs))
    }

    pub(crate) fn run_with(
        source: MemorySource,
        range: IdRange,
        options: ScanOptions,
    ) -> (Vec<Finding>, Vec<IdRange>, u64, Vec<u64>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut findings = Vec::new();
        let mut ranges = Vec::new();
        let mut blobs = 0;
        let mut references = vec![0; source.columns.len()];
        for outcome in collect(&runtime, Arc::new(source), range, options) {
            findings.extend(outcome.findings);
            ranges.push(outcome.range);
            blobs += outcome.blobs;
            for (total, n) in references.iter_mut().zip(outcome.references) {
                *total += n;
            }
        }
        (findings, ranges, blobs, references)
    }

    /// Runs a scan to its end and returns its outcomes in order.
    pub(crate) fn collect(
        runtime: &tokio::runtime::Runtime,
        source: Arc<MemorySource>,
        range: IdRange,
        options: ScanOptions,
    ) -> Vec<ChunkOutcome> {
        runtime.block_on(async {
            let (tx, mut rx) = mpsc::channel(2);
            let scanning = tokio::spawn(scan(source, range, options, tx));
            let mut outcomes = Vec::new();
            while let Some(outcome) = rx.recv().await {
                outcomes.push(outcome);
            }
            scanning.await.unwrap().unwrap();
            outcomes
        })
    }

    fn id() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => 0u64..200,
            1 => Just(u64::MAX),
            1 => u64::MAX - 5..=u64::MAX,
            1 => (1u64 << 63) - 3..(1u64 << 63) + 3,
            1 => any::<u64>(),
        ]
    }

    fn model() -> impl Strategy<Value = (BTreeMap<u64, u64>, Vec<BTreeMap<u64, u64>>)> {
        (
            proptest::collection::btree_map(
                id(),
                prop_oneof![Just(0u64), Just(1), Just(2), 0u64..6],
                0..60,
            ),
            proptest::collection::vec(proptest::collection::btree_map(id(), 1u64..5, 0..60), 0..5),
        )
    }

    fn source(blobs: &BTreeMap<u64, u64>, columns: &[BTreeMap<u64, u64>]) -> MemorySource {
        MemorySource {
            blobs: blobs.clone(),
            columns: columns.to_vec(),
            largest_batch: AtomicU64::new(0),
            blob_batches: AtomicU64::new(0),
            blob_sketches: Mutex::default(),
        }
    }

    /// A scan of the whole id space finds exactly what brute force finds,
    /// its outcomes tile the space in order, and it counts every row.
    fn whole_run_equals_brute_force(
        blobs: &BTreeMap<u64, u64>,
        columns: &[BTreeMap<u64, u64>],
        options: ScanOptions,
    ) -> std::result::Result<(), TestCaseError> {
        let expected = crate::merge::tests::brute_force(blobs, columns);
        let (findings, ranges, blob_rows, references) =
            run_with(source(blobs, columns), IdRange::ALL, options);
        prop_assert_eq!(&findings, &expected);
        prop_assert_eq!(ranges.first().map(|r| r.start), Some(0));
        prop_assert_eq!(ranges.last().map(|r| r.end), Some(u64::MAX));
        for pair in ranges.windows(2) {
            prop_assert_eq!(pair[0].end.checked_add(1), Some(pair[1].start));
        }
        prop_assert_eq!(blob_rows, blobs.len() as u64);
        let expected_refs: Vec<u64> = columns.iter().map(|c| c.values().sum()).collect();
        prop_assert_eq!(references, expected_refs);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn scan_equals_brute_force_at_any_chunk_size_and_jobs(
            (blobs, columns) in model(),
            chunk_size in prop_oneof![Just(1u64), Just(2), 1u64..10, 10u64..100],
            jobs in 1usize..6,
        ) {
            whole_run_equals_brute_force(&blobs, &columns, ScanOptions::fixed(chunk_size, jobs))?;
        }

        #[test]
        fn adaptive_chunk_sizes_change_nothing(
            (blobs, columns) in model(),
            max_chunk_size in 1u64..12,
            jobs in 1usize..4,
        ) {
            let expected = crate::merge::tests::brute_force(&blobs, &columns);
            // A target far below a chunk's real time makes every chunk
            // shrink toward the minimum, so sizes change from chunk to chunk.
            let options = ScanOptions {
                chunk_size: max_chunk_size,
                jobs,
                chunk_time: Some(Duration::from_nanos(1)),
                min_chunk_size: 1,
                max_chunk_size,
                hot_threshold: u64::MAX,
                method: Method::Exact,
            };
            let (findings, _, _, _) = run_with(source(&blobs, &columns), IdRange::ALL, options);
            prop_assert_eq!(findings, expected);
        }

        #[test]
        fn sub_ranges_find_exactly_their_share(
            (blobs, columns) in model(),
            start in id(),
            len in prop_oneof![0u64..50, any::<u64>()],
            chunk_size in 1u64..8,
        ) {
            let range = IdRange::new(start, start.saturating_add(len));
            let expected: Vec<Finding> = crate::merge::tests::brute_force(&blobs, &columns)
                .into_iter()
                .filter(|f| range.contains(f.blob_id))
                .collect();
            let (findings, ranges, _, _) = run(source(&blobs, &columns), range, chunk_size, 3);
            prop_assert_eq!(findings, expected);
            prop_assert_eq!(ranges.first().map(|r| r.start), Some(range.start));
            prop_assert_eq!(ranges.last().map(|r| r.end), Some(range.end));
        }
    }

    /// A model where each chunk of `sketch_rows` ids has few faults, so the
    /// sketches' blind spot (four or more faults cancelling in all three
    /// sums) cannot hide one: ids are dense from `base`, counts mostly
    /// right, a few changed.
    fn sketch_model() -> impl Strategy<Value = (BTreeMap<u64, u64>, Vec<BTreeMap<u64, u64>>)> {
        (
            prop_oneof![Just(0u64), Just(1u64 << 63), Just(u64::MAX - 400)],
            1usize..300,
            proptest::collection::vec((0usize..400, 0u64..4, 0usize..3), 0..6),
            1usize..4,
        )
            .prop_map(|(base, n, faults, column_count)| {
                let mut blobs = BTreeMap::new();
                let mut columns = vec![BTreeMap::new(); column_count];
                for i in 0..n as u64 {
                    let Some(id) = base.checked_add(i * 2) else {
                        break;
                    };
                    let count = i % 3;
                    blobs.insert(id, count);
                    if count > 0 {
                        columns[(i % column_count as u64) as usize].insert(id, count);
                    }
                }
                for (at, value, what) in faults {
                    let Some(id) = base.checked_add(at as u64) else {
                        continue;
                    };
                    match what {
                        0 => {
                            blobs.insert(id, value);
                        }
                        1 => {
                            blobs.remove(&id);
                        }
                        _ => {
                            let column = &mut columns[at % column_count];
                            if value == 0 {
                                column.remove(&id);
                            } else {
                                column.insert(id, value);
                            }
                        }
                    }
                }
                (blobs, columns)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// `--method sketch` finds exactly what the brute-force count does
        /// (up to five faults in all: the moments see through up to three
        /// per chunk, and the exact fallback reads the rest), at any sketch
        /// size, exact chunk size and number of jobs, tiling the range.
        #[test]
        fn sketch_scan_equals_brute_force(
            (blobs, columns) in sketch_model(),
            target_rows in prop_oneof![Just(1u64), 1u64..20, 20u64..500],
            chunk_size in 1u64..50,
            jobs in 1usize..5,
        ) {
            let options = ScanOptions {
                method: Method::Sketch { target_rows },
                ..ScanOptions::fixed(chunk_size, jobs)
            };
            whole_run_equals_brute_force(&blobs, &columns, options)?;
        }

        /// The general model (sparse ids anywhere in the 64-bit space, any
        /// number of faults) through `--method sketch`: every finding it
        /// reports is real, and it misses none wherever it promises
        /// completeness (`sketch_promises_completeness`), which is nearly
        /// every case; the exact method misses none, always.
        #[test]
        fn sketch_scan_reports_only_real_faults(
            (blobs, columns) in model(),
            target_rows in 1u64..30,
            jobs in 1usize..4,
        ) {
            let expected = crate::merge::tests::brute_force(&blobs, &columns);
            let (exact, _, _, _) =
                run_with(source(&blobs, &columns), IdRange::ALL, ScanOptions::fixed(7, jobs));
            prop_assert_eq!(&exact, &expected);
            let options = ScanOptions {
                method: Method::Sketch { target_rows },
                ..ScanOptions::fixed(7, jobs)
            };
            let (findings, _, _, _) = run_with(source(&blobs, &columns), IdRange::ALL, options);
            for finding in &findings {
                prop_assert!(expected.contains(finding), "{finding:?} is not real");
            }
            if sketch_promises_completeness(&expected) {
                prop_assert_eq!(&findings, &expected);
            }
        }
    }

    /// Whether the sketch promises to find every one of `faults` (sorted by
    /// id). Its blind spot is a piece (a stretch of ids narrower than
    /// `sketch::MAX_SPAN`, holding a run of consecutive faults) whose sums
    /// are zero, or equal those of one or two of its faults (ids the sums
    /// locate and point reads confirm, which settles the piece), while
    /// other faults remain. The sums are taken modulo 2¹²⁸, where a true
    /// zero stays zero, so `true` is never wrong (at worst a promise is
    /// missed). Cost: quadratic in the faults per stretch, cubic in the
    /// small ones (pairs).
    fn sketch_promises_completeness(faults: &[Finding]) -> bool {
        use std::collections::HashSet;
        type Sums = [u128; 3];
        let sums = |id: u64, d: i128| -> Sums {
            let (id, d) = (u128::from(id), d as u128);
            [d, d.wrapping_mul(id), d.wrapping_mul(id).wrapping_mul(id)]
        };
        let add = |a: Sums, b: Sums| -> Sums {
            [
                a[0].wrapping_add(b[0]),
                a[1].wrapping_add(b[1]),
                a[2].wrapping_add(b[2]),
            ]
        };
        let faults: Vec<(u64, i128, Sums)> = faults
            .iter()
            .map(|f| {
                let d = i128::from(f.stored.unwrap_or(0)) - i128::from(f.actual);
                (f.blob_id, d, sums(f.blob_id, d))
            })
            .collect();
        let small = |d: i128| d.abs() <= sketch::PAIR_DIFFERENCES;
        for (i, &(first, _, _)) in faults.iter().enumerate() {
            let mut run: Sums = [0; 3];
            let mut singles: HashSet<Sums> = HashSet::new();
            let mut pairs: HashSet<Sums> = HashSet::new();
            for j in i..faults.len() {
                let (id, d, m) = faults[j];
                if id - first >= sketch::MAX_SPAN {
                    break;
                }
                run = add(run, m);
                if small(d) {
                    for &(_, e, n) in &faults[i..j] {
                        if small(e) {
                            pairs.insert(add(m, n));
                        }
                    }
                }
                singles.insert(m);
                let len = j - i + 1;
                if run == [0; 3]
                    || (len > 1 && singles.contains(&run))
                    || (len > 2 && pairs.contains(&run))
                {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn the_completeness_promise_excludes_the_blind_spot_only() {
        let fault = |blob_id: u64, stored: u64, actual: u64| Finding {
            kind: Kind::CountMismatch,
            blob_id,
            stored: Some(stored),
            actual,
            references: Vec::new(),
        };
        // +1, −3, +3, −1 on consecutive ids cancel in all three sums.
        let cancelling = [
            fault(4, 4, 3),
            fault(5, 0, 3),
            fault(6, 6, 3),
            fault(7, 2, 3),
        ];
        assert!(!sketch_promises_completeness(&cancelling));
        // Cancelling at every other id, with one fault (or a pair of small
        // ones) between them that the sums locate: no run of faults without
        // the located ones cancels, but the piece is settled by them.
        let spaced = [
            fault(10, 4, 3),
            fault(12, 0, 3),
            fault(14, 6, 3),
            fault(16, 2, 3),
        ];
        let mut one = spaced.to_vec();
        one.insert(2, fault(13, 9, 2));
        assert!(!sketch_promises_completeness(&one));
        let mut two = spaced.to_vec();
        two.insert(1, fault(11, 5, 2));
        two.insert(3, fault(13, 1, 2));
        assert!(!sketch_promises_completeness(&two));
        two[3] = fault(13, 1, 7);
        assert!(
            sketch_promises_completeness(&two),
            "a difference of 6 is not among the pairs tried"
        );
        // Too far apart to share a piece, or not cancelling: promised.
        let apart = [
            fault(4, 4, 3),
            fault(5 + sketch::MAX_SPAN, 0, 3),
            fault(6 + 2 * sketch::MAX_SPAN, 6, 3),
            fault(7 + 3 * sketch::MAX_SPAN, 2, 3),
        ];
        assert!(sketch_promises_completeness(&apart));
        let mut near_miss = cancelling.to_vec();
        near_miss[3] = fault(7, 1, 3);
        assert!(sketch_promises_completeness(&near_miss));
        assert!(sketch_promises_completeness(&[]));
    }

    /// The sketch clears clean chunks and locates one or two faults without
    /// reading a chunk row by row; three faults in one chunk are located by
    /// halving it, unless they lie so close together that the piece holding
    /// them is small enough to read row by row.
    #[test]
    fn sketch_reads_exactly_only_what_its_sums_do_not_settle() {
        let blobs: BTreeMap<u64, u64> = (1000u64..11_000).map(|id| (id, 1)).collect();
        let clean: BTreeMap<u64, u64> = blobs.clone();
        // (findings, blob batches read row by row, halves sketched)
        let sketch = |columns: Vec<BTreeMap<u64, u64>>| {
            let source = Arc::new(source(&blobs, &columns));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            // The first chunk is [0, 9999]; pieces of 2500 rows or fewer
            // (about 1250 ids here) are read row by row.
            let options = ScanOptions {
                method: Method::Sketch {
                    target_rows: 10_000,
                },
                ..ScanOptions::fixed(500, 2)
            };
            let outcomes = collect(&runtime, Arc::clone(&source), IdRange::ALL, options);
            let findings: Vec<u64> = outcomes
                .into_iter()
                .flat_map(|o| o.findings)
                .map(|f| f.blob_id)
                .collect();
            let halves: Vec<(u64, u64)> = source
                .blob_sketches
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.end < 10_000 && r.end != 9_999)
                .map(|r| (r.start, r.end))
                .collect();
            (
                findings,
                source.blob_batches.load(Ordering::Relaxed),
                halves,
            )
        };

        let (findings, exact, halves) = sketch(vec![clean.clone()]);
        assert!(findings.is_empty());
        assert!(halves.is_empty());
        // Only the stretch from the last blob to 2⁶⁴ − 1, too long to sketch,
        // is read exactly: the span grows eightfold per empty chunk until
        // the planner reads the rest as one exact chunk.
        assert!(exact <= 2, "{exact} exact reads of a clean table");

        let mut one = clean.clone();
        one.insert(5_000, 3);
        let (findings, exact_one, halves) = sketch(vec![one]);
        assert_eq!(findings, vec![5_000]);
        assert_eq!(exact_one, exact, "a lone fault is located by the sums");
        assert!(halves.is_empty());

        let mut two = clean.clone();
        two.insert(5_000, 3);
        two.remove(&5_002);
        let (findings, exact_two, halves) = sketch(vec![two]);
        assert_eq!(findings, vec![5_000, 5_002]);
        assert_eq!(exact_two, exact, "two faults are located by the sums");
        assert!(halves.is_empty());

        let mut apart = clean.clone();
        apart.insert(2_000, 2);
        apart.insert(5_000, 3);
        apart.remove(&8_000);
        let (findings, exact_apart, halves) = sketch(vec![apart]);
        assert_eq!(findings, vec![2_000, 5_000, 8_000]);
        assert_eq!(exact_apart, exact, "three faults apart: located by halving");
        assert_eq!(halves, vec![(0, 4_999)], "[5000, 9999] is derived");

        let mut close = clean;
        close.insert(5_000, 3);
        close.remove(&5_002);
        close.insert(5_004, 2);
        let (findings, exact_close, halves) = sketch(vec![close]);
        assert_eq!(findings, vec![5_000, 5_002, 5_004]);
        assert!(
            exact_close > exact,
            "three faults close together are read exactly"
        );
        // [5000, 6249] holds 2501 rows, so it is halved once more.
        assert_eq!(
            halves,
            vec![(0, 4_999), (5_000, 7_499), (5_000, 6_249), (5_000, 5_624)]
        );
    }

    /// A span that grew eightfold over a long gap in the ids is cut before
    /// it is summed where it lands on dense ids: no sketch of more than one
    /// id sums more than `sketch::row_bound` rows of any table, and the
    /// findings stay exact.
    #[test]
    fn sketches_after_a_gap_read_at_most_the_row_bound() {
        let mut blobs: BTreeMap<u64, u64> = (1..300u64).map(|id| (id, 1)).collect();
        blobs.extend((200_000..260_000u64).map(|id| (id, 1)));
        let mut references = blobs.clone();
        // Dense references on one id, and faults in the dense region.
        blobs.insert(230_000, 5_000);
        references.insert(230_000, 5_000);
        references.insert(210_001, 2);
        references.remove(&250_003);
        let columns = vec![references];
        let expected = crate::merge::tests::brute_force(&blobs, &columns);
        assert_eq!(expected.len(), 2);
        let target_rows = 256;
        let bound = sketch::row_bound(target_rows);
        let source = Arc::new(source(&blobs, &columns));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let options = ScanOptions {
            method: Method::Sketch { target_rows },
            ..ScanOptions::fixed(500, 3)
        };
        let outcomes = collect(&runtime, Arc::clone(&source), IdRange::ALL, options);
        let findings: Vec<Finding> = outcomes.into_iter().flat_map(|o| o.findings).collect();
        assert_eq!(findings, expected);
        let sketches = source.blob_sketches.lock().unwrap().clone();
        assert!(
            sketches
                .iter()
                .any(|r| r.end >= 200_000 && r.start < 230_000),
            "the dense region is sketched"
        );
        for range in sketches.iter().filter(|r| r.start < r.end) {
            let blob_rows = blobs.range(range.start..=range.end).count() as u64;
            let reference_rows: u64 = columns[0]
                .range(range.start..=range.end)
                .map(|(_, &n)| n)
                .sum();
            assert!(
                blob_rows <= bound && reference_rows <= bound,
                "sketch of {range} summed {blob_rows} blob rows and {reference_rows} references, bound {bound}"
            );
        }
    }

    #[test]
    fn dense_references_past_the_last_blob_stay_within_the_chunk_size() {
        // One blob, then 100,000 distinct ids referenced above it.
        let blobs = BTreeMap::from([(10u64, 1u64)]);
        let column: BTreeMap<u64, u64> = (11u64..100_011).map(|id| (id, 1)).collect();
        let single = BTreeMap::from([(10u64, 1_000_000u64)]);
        let (findings, _, _, _) = {
            let source = source(&blobs, &[column, single]);
            run(source, IdRange::ALL, 1000, 4)
        };
        assert_eq!(findings.len(), 100_001);
        assert_eq!(findings[0].kind, Kind::CountMismatch);
        assert_eq!(findings[0].actual, 1_000_000);
        assert!(findings[1..].iter().all(|f| f.kind == Kind::MissingBlob));

        let source = source(&blobs, &[(11u64..100_011).map(|id| (id, 1)).collect()]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let source = Arc::new(source);
        let largest_outcome = collect(
            &runtime,
            Arc::clone(&source),
            IdRange::ALL,
            ScanOptions::fixed(1000, 4),
        )
        .iter()
        .map(|o| o.findings.len())
        .max()
        .unwrap();
        assert!(source.largest_batch.load(Ordering::Relaxed) <= 1000);
        assert!(
            largest_outcome <= 1001,
            "an outcome held {largest_outcome} findings"
        );
    }

    #[test]
    fn empty_tables_scan_the_whole_range_once() {
        let (findings, ranges, blobs, _) = run(
            source(&BTreeMap::new(), &[BTreeMap::new()]),
            IdRange::ALL,
            5,
            2,
        );
        assert!(findings.is_empty());
        assert_eq!(ranges, vec![IdRange::ALL]);
        assert_eq!(blobs, 0);
    }
}
