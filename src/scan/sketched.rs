//! The sketch's reads of a range (`--method sketch`; the arithmetic is in
//! `crate::sketch`): a few sums per table, probes that bound the rows a sum
//! reads, halving where the sums do not settle, point reads of the ids they
//! locate, and rows read one by one where nothing else settles a piece.

use std::time::Instant;

use futures_util::future::try_join_all;

use super::exact::{exact_part, read_rows};
use super::{Checked, ChunkOutcome, Work, span_of};
use crate::error::Result;
use crate::finding::Finding;
use crate::plan::IdRange;
use crate::read::{PointRead, PointReads, ScanReads, read_points};
use crate::sketch::{self, Moments, Verdict};

/// A piece of a sketched chunk that its sums do not settle is halved while
/// it holds more than this many rows (blob rows and references together),
/// and read row by row below. A quarter of `--sketch-rows` (2048 rows by
/// default): the client decodes that many rows in about a millisecond, about
/// what one more round of sketch queries costs the servers.
pub(super) fn split_min_rows(target_rows: u64) -> u64 {
    (target_rows / 4).max(1)
}

/// The blob table's and all reference columns' moments over `range`, with
/// the references counted per column; `None` where a sum is too large to be
/// trusted exact.
async fn sketch_moments<S: ScanReads + PointReads>(
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
    /// Pieces the sums did not settle, to read row by row, in id order.
    unsettled: Vec<IdRange>,
}

/// The finding of a stable point read (`read::read_points`) of an id the
/// sums located, if it shows exactly the difference they put on it: a read
/// during which the stored count moved is not trusted, nor any other
/// difference.
fn located_as(read: PointRead, difference: i128) -> Option<Finding> {
    (read.stable && read.finding.difference() == difference).then_some(read.finding)
}

/// Decides `top` by its sums; where they do not settle a piece, halves it
/// (sketching the first half and deriving the second) until every piece is
/// clean, has its one inconsistent id located, or is small enough to read
/// row by row. Pieces come out in id order.
async fn settle<S: ScanReads + PointReads>(
    source: &S,
    top: Piece,
    min_rows: u64,
) -> Result<Settled> {
    let mut settled = Settled::default();
    let mut stack = vec![top];
    while let Some(piece) = stack.pop() {
        let span = span_of(piece.range);
        let verdict = sketch::decide(
            piece.range.start,
            span,
            source.weights(),
            &piece.blobs,
            &piece.references,
        );
        match verdict {
            Verdict::Clean => {}
            Verdict::Single { id, difference } => {
                settled.located.push((piece.range, id, difference));
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

/// The probes of a range for the first id past `row_bound` rows of a table
/// (`ScanReads::sketch_cut`): which tables were probed, and where each cut.
struct Probes {
    /// Whether the blob table was probed: it holds one row per id, so it
    /// cannot hold more rows than the span, and is probed only where the
    /// span exceeds the bound.
    blobs: bool,
    /// Whether the reference columns were probed: a column can hold any
    /// number of rows in a span, so they are probed whenever there is a
    /// bound.
    references: bool,
    /// Per table probed (the blob table first, then the columns in order),
    /// the first id past the bound, if any.
    cuts: Vec<Option<u64>>,
}

impl Probes {
    /// Probes the tables of `range` that may hold more than `row_bound`
    /// rows in it. No bound: a span the chunks before it back needs no
    /// probe, as a probe reads what the sum reads again.
    async fn read<S: ScanReads>(
        source: &S,
        range: IdRange,
        row_bound: Option<u64>,
    ) -> Result<Probes> {
        let blobs = row_bound.is_some_and(|bound| span_of(range) > bound);
        let references = row_bound.is_some();
        let cuts = try_join_all(
            blobs
                .then_some(None)
                .into_iter()
                .chain((0..source.column_count()).filter(|_| references).map(Some))
                .map(|table| source.sketch_cut(table, range, row_bound.unwrap_or(u64::MAX))),
        )
        .await?;
        Ok(Probes {
            blobs,
            references,
            cuts,
        })
    }

    /// The earliest id past the bound in any table.
    fn cut(&self) -> Option<u64> {
        self.cuts.iter().flatten().min().copied()
    }

    /// The rows the probes read, given the rows the sums of the (cut)
    /// range read: a probe that found no cut read at least what its table's
    /// sum read (the whole range, where nothing was cut).
    fn rows_read(&self, blob_rows: u64, column_rows: &[u64]) -> u64 {
        let probed_rows = self
            .blobs
            .then_some(blob_rows)
            .into_iter()
            .chain(column_rows.iter().copied().filter(|_| self.references));
        self.cuts
            .iter()
            .zip(probed_rows)
            .filter(|(cut, _)| cut.is_none())
            .map(|(_, rows)| rows)
            .sum()
    }
}

/// Checks `range` by its sketch (see `sketch`): pieces the sums do not
/// settle are halved and sketched again, ids they locate are read exactly,
/// and what is left is read row by row. Where a sum is too large to trust,
/// the range's first chunk is read row by row and the rest handed back.
pub(super) async fn sketch_range<S: ScanReads + PointReads>(
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
    // Where every table holds at most `row_bound` rows.
    let probes = Probes::read(source, range, row_bound).await?;
    let (range, rest) = match probes.cut() {
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
    let Some((top, columns)) = sketch_moments(source, range).await? else {
        // A sum too large to trust: the first chunk read exactly, the rest
        // of the cut range and everything past the cut handed back.
        let (outcome, mut more) = exact_part(source, range, limit, hot_threshold).await?;
        more.extend(rest);
        return Ok((outcome, more));
    };
    source
        .probed(probes.rows_read(top.blobs.rows, &columns))
        .await;
    let outcome =
        settle_outcome(source, top, columns, limit, hot_threshold, split_min_rows).await?;
    Ok((outcome, rest))
}

/// The outcome of a sketched range from its sums (`top`, with the
/// references counted per column): what `settle` locates is read exactly,
/// what it leaves unsettled is read row by row.
async fn settle_outcome<S: ScanReads + PointReads>(
    source: &S,
    top: Piece,
    columns: Vec<u64>,
    limit: u64,
    hot_threshold: u64,
    split_min_rows: u64,
) -> Result<ChunkOutcome> {
    let mut outcome = ChunkOutcome {
        range: top.range,
        findings: Vec::new(),
        blobs: top.blobs.rows,
        references: columns,
        watch: Vec::new(),
        read_at: Instant::now(),
        checked: Checked::SketchClean,
    };
    let Settled {
        located,
        mut unsettled,
    } = settle(source, top, split_min_rows).await?;
    if !located.is_empty() {
        unsettled.extend(read_located(source, located, &mut outcome.findings).await?);
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
    Ok(outcome)
}

/// Reads the ids the sums located (one per piece) with one stable point
/// read, adding to `findings` each that shows exactly the difference the
/// sums put on it; returns the pieces of those that did not, to be read
/// row by row.
async fn read_located<S: PointReads>(
    source: &S,
    located: Vec<(IdRange, u64, i128)>,
    findings: &mut Vec<Finding>,
) -> Result<Vec<IdRange>> {
    let ids: Vec<u64> = located.iter().map(|&(_, id, _)| id).collect();
    let reads = read_points(source, &ids).await?;
    let mut unsettled = Vec::new();
    for ((piece, _, difference), read) in located.into_iter().zip(reads) {
        match located_as(read, difference) {
            Some(finding) => findings.push(finding),
            None => unsettled.push(piece),
        }
    }
    Ok(unsettled)
}
