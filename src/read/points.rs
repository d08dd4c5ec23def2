//! The one stable point read: what confirmation, `repair-sql` and the
//! sketch's located ids all read of an id.

use futures_util::future::try_join_all;

use super::PointReads;
use crate::error::Result;
use crate::finding::{Finding, Kind, classify};

/// What one point read saw of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRead {
    /// The finding the read amounts to (its kind is only meaningful when
    /// the difference is not zero).
    pub finding: Finding,
    /// The stored count held still during the read.
    pub stable: bool,
    /// Which rows referenced the id, over every column
    /// (`PointReads::reference_points`).
    pub fingerprint: u64,
}

/// One point read of `ids` (sorted, distinct): stored counts, reference
/// counts of every column, stored counts again.
pub async fn read_points<S: PointReads>(source: &S, ids: &[u64]) -> Result<Vec<PointRead>> {
    let before = source.stored_counts(ids).await?;
    let columns =
        try_join_all((0..source.column_count()).map(|c| source.reference_points(c, ids))).await?;
    let after = source.stored_counts(ids).await?;

    let lookup = |rows: &[(u64, u64)], id: u64| -> Option<u64> {
        rows.binary_search_by_key(&id, |&(k, _)| k)
            .ok()
            .map(|i| rows[i].1)
    };
    let point = |rows: &[(u64, u64, u64)], id: u64| -> Option<(u64, u64)> {
        rows.binary_search_by_key(&id, |&(k, _, _)| k)
            .ok()
            .map(|i| (rows[i].1, rows[i].2))
    };
    Ok(ids
        .iter()
        .map(|&id| {
            let stored = lookup(&after, id);
            let mut fingerprint = 0u64;
            let mut references = Vec::new();
            for (c, rows) in columns.iter().enumerate() {
                let Some((n, rows_fingerprint)) = point(rows, id) else {
                    continue;
                };
                // Each column's rows are other rows: mix the column in.
                fingerprint ^= rows_fingerprint.rotate_left(7 * c as u32 + 1);
                if n > 0 {
                    references.push((c, n));
                }
            }
            let actual = references.iter().map(|&(_, n)| n).sum();
            let kind = classify(stored, actual).unwrap_or(Kind::CountMismatch);
            PointRead {
                finding: Finding {
                    kind,
                    blob_id: id,
                    stored,
                    actual,
                    references,
                },
                stable: lookup(&before, id) == stored,
                fingerprint,
            }
        })
        .collect())
}
