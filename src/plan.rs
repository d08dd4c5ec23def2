//! Chunk planning: id ranges, where a chunk ends, and where a chunk has to be
//! cut so that every stream read for it is complete.
//!
//! Invariants (checked by the property tests in `scan`):
//! - chunks are disjoint, in ascending order, and together cover the whole
//!   range asked for, from its start (below the first blob) to its end (up to
//!   2⁶⁴−1, above the last blob);
//! - inside a chunk, an id is merged only once every stream has been read
//!   past it, so no count is ever partial.

/// An inclusive range of blob ids. Inclusive because the full range ends at
/// `u64::MAX`, which a half-open range could not express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub start: u64,
    pub end: u64,
}

impl IdRange {
    /// Every possible blob id.
    pub const ALL: IdRange = IdRange {
        start: 0,
        end: u64::MAX,
    };

    pub fn new(start: u64, end: u64) -> IdRange {
        assert!(start <= end, "empty id range {start}..={end}");
        IdRange { start, end }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.start <= id && id <= self.end
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

/// The end of a chunk that starts at the beginning of a blob batch read with
/// `LIMIT limit`: a full batch ends the chunk at its last id (the next chunk
/// starts right after it); a short batch means no blob is left in the range,
/// so the chunk runs to the range's end.
pub fn chunk_end(batch: &[(u64, u64)], limit: u64, range_end: u64) -> u64 {
    match batch.last() {
        Some(&(last, _)) if batch.len() as u64 >= limit => last,
        _ => range_end,
    }
}

/// How far a chunk `..=hi` can be merged after reading one batch of every
/// reference stream with `LIMIT limit`: a full batch may have stopped early,
/// so everything beyond its last id is unknown for now. Each batch groups by
/// id, so the last id of a full batch is itself complete.
pub fn merge_cut<'a>(
    hi: u64,
    limit: u64,
    batches: impl IntoIterator<Item = &'a [(u64, u64)]>,
) -> u64 {
    batches
        .into_iter()
        .filter(|batch| batch.len() as u64 >= limit)
        .filter_map(|batch| batch.last().map(|&(id, _)| id))
        .fold(hi, u64::min)
}

/// Adapts the chunk size so that a chunk takes about `target` to check, as
/// pt-table-checksum's `--chunk-time` does: fast chunks grow, slow ones
/// shrink, within `[min, max]` rows. Without a target the size stays fixed.
#[derive(Debug, Clone)]
pub struct ChunkSizer {
    target: Option<std::time::Duration>,
    min: u64,
    max: u64,
    current: f64,
}

impl ChunkSizer {
    pub fn new(
        initial: u64,
        target: Option<std::time::Duration>,
        min: u64,
        max: u64,
    ) -> ChunkSizer {
        let (min, max) = (min.max(1), max.max(min.max(1)));
        let initial = if target.is_some() {
            initial.clamp(min, max)
        } else {
            initial.max(1)
        };
        ChunkSizer {
            target,
            min,
            max,
            current: initial as f64,
        }
    }

    /// Rows to ask for in the next chunk.
    pub fn size(&self) -> u64 {
        self.current.round() as u64
    }

    /// Takes note that a chunk of `rows` rows took `elapsed`.
    pub fn observe(&mut self, rows: u64, elapsed: std::time::Duration) {
        let Some(target) = self.target else { return };
        if rows == 0 {
            return;
        }
        let seconds = elapsed.as_secs_f64().max(1e-4);
        let ideal = rows as f64 * target.as_secs_f64() / seconds;
        // Move halfway, and at most double or halve at once: one noisy
        // chunk must not swing the size.
        let next = (0.5 * self.current + 0.5 * ideal).clamp(self.current / 2.0, self.current * 2.0);
        self.current = next.clamp(self.min as f64, self.max as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_end_full_and_short_batches() {
        assert_eq!(chunk_end(&[(3, 1), (9, 1)], 2, u64::MAX), 9);
        assert_eq!(chunk_end(&[(3, 1)], 2, u64::MAX), u64::MAX);
        assert_eq!(chunk_end(&[], 2, 500), 500);
    }

    #[test]
    fn merge_cut_takes_the_lowest_full_batch() {
        let full_a: &[(u64, u64)] = &[(5, 1), (7, 2)];
        let full_b: &[(u64, u64)] = &[(6, 1), (8, 1)];
        let short: &[(u64, u64)] = &[(1, 1)];
        assert_eq!(merge_cut(100, 2, [full_a, full_b, short]), 7);
        assert_eq!(merge_cut(100, 2, [short]), 100);
        assert_eq!(merge_cut(6, 2, [full_b]), 6);
    }

    #[test]
    fn chunk_sizer_converges_to_the_target_time_within_bounds() {
        use std::time::Duration;
        let mut sizer = ChunkSizer::new(1000, Some(Duration::from_millis(500)), 100, 1_000_000);
        // The servers manage 200,000 rows per second: 100,000 rows per 0.5 s.
        for _ in 0..40 {
            let rows = sizer.size();
            sizer.observe(rows, Duration::from_secs_f64(rows as f64 / 200_000.0));
        }
        assert!(
            (sizer.size() as i64 - 100_000).abs() < 1000,
            "{}",
            sizer.size()
        );
        // Suddenly 100 times slower: it shrinks, never below the minimum.
        for _ in 0..40 {
            let rows = sizer.size();
            sizer.observe(rows, Duration::from_secs_f64(rows as f64 / 20.0));
        }
        assert_eq!(sizer.size(), 100);

        let mut fixed = ChunkSizer::new(7, None, 100, 1000);
        fixed.observe(7, Duration::from_secs(100));
        assert_eq!(fixed.size(), 7, "no target: the size stays as given");
    }
}
