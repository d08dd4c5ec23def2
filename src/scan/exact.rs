//! The exact method's reads: a chunk's blob rows, every reference column's
//! batch over it, and their merge; also the row-by-row reading the sketch
//! falls back to.

use std::time::Instant;

use futures_util::future::try_join_all;

use super::{Checked, Chunk, ChunkOutcome, Work};
use crate::error::Result;
use crate::merge::merge_watching;
use crate::plan::{IdRange, chunk_end, merge_cut};
use crate::read::ScanReads;

/// Reads the next chunk of blob rows starting at `start`, which is at most
/// `range.end`.
pub(super) async fn plan_chunk<S: ScanReads>(
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
pub(super) async fn check_chunk<S: ScanReads>(
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
pub(super) async fn exact_part<S: ScanReads>(
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

/// Reads all of `range` row by row, as the exact method does, adding its
/// findings and busy ids to `outcome`.
pub(super) async fn read_rows<S: ScanReads>(
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
