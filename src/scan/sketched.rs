//! The sketch's reads of a range (`--method sketch`; the arithmetic is in
//! `crate::sketch`): three sums per table, probes that bound the rows a sum
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
    /// Findings of pieces whose sums two ids explained, already read.
    found: Vec<Finding>,
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

/// The two inconsistent ids that explain `piece`'s sums (`sketch::pairs`),
/// read exactly with the stable point read confirmation uses: `None` unless
/// exactly one candidate pair reads with the differences the sums put on it.
/// Such a pair accounts for all three moments, so what is left of the piece
/// is as settled as a clean piece.
async fn read_pair<S: ScanReads + PointReads>(
    source: &S,
    piece: &Piece,
) -> Result<Option<[Finding; 2]>> {
    let span = span_of(piece.range);
    let offered = sketch::pairs(piece.range.start, span, &piece.blobs, &piece.references);
    if offered.is_empty() {
        return Ok(None);
    }
    let mut ids: Vec<u64> = offered.iter().flatten().map(|&(id, _)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    let reads = read_points(source, &ids).await?;
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
async fn settle<S: ScanReads + PointReads>(
    source: &S,
    top: Piece,
    min_rows: u64,
) -> Result<Settled> {
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
        let reads = read_points(source, &ids).await?;
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
