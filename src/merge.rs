//! Merging: one pass over the sorted stored counts and the sorted per-column
//! reference counts of one id range, classifying every id that appears in any
//! of them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::finding::{Finding, Kind, classify};

/// Merges the `(id, stored count)` rows of the blob table with the
/// `(id, reference count)` rows of every reference column, all sorted by id
/// with each id at most once per stream, and appends the inconsistent ids to
/// `findings` in ascending id order.
///
/// The caller hands in exactly the rows of one id range, so every count seen
/// here is complete.
pub fn merge_into(blobs: &[(u64, u64)], columns: &[&[(u64, u64)]], findings: &mut Vec<Finding>) {
    merge_watching(blobs, columns, findings, u64::MAX, &mut Vec::new());
}

/// `merge_into`, also appending to `watch` the consistent ids with at least
/// `hot_threshold` references (stored or counted), as 0-difference
/// readings: busy blobs that confirmation re-reads anyway.
pub fn merge_watching(
    blobs: &[(u64, u64)],
    columns: &[&[(u64, u64)]],
    findings: &mut Vec<Finding>,
    hot_threshold: u64,
    watch: &mut Vec<Finding>,
) {
    // Heads of the reference streams, smallest id first. Only nonempty
    // streams take part, so a chunk that one shard of many touches costs
    // little.
    let mut heads: BinaryHeap<Reverse<(u64, usize)>> = columns
        .iter()
        .enumerate()
        .filter_map(|(column, rows)| rows.first().map(|&(id, _)| Reverse((id, column))))
        .collect();
    let mut positions = vec![0usize; columns.len()];
    let mut per_column: Vec<(usize, u64)> = Vec::new();
    let mut blob_rows = blobs.iter().peekable();

    loop {
        let next_reference = heads.peek().map(|Reverse((id, _))| *id);
        let next_blob = blob_rows.peek().map(|&&(id, _)| id);
        let id = match (next_blob, next_reference) {
            (None, None) => break,
            (Some(b), None) => b,
            (None, Some(r)) => r,
            (Some(b), Some(r)) => b.min(r),
        };

        let stored = blob_rows
            .next_if(|&&(blob_id, _)| blob_id == id)
            .map(|&(_, count)| count);

        per_column.clear();
        let mut actual: u64 = 0;
        while let Some(&Reverse((head_id, column))) = heads.peek() {
            if head_id != id {
                break;
            }
            heads.pop();
            let rows = columns[column];
            let count = rows[positions[column]].1;
            actual = actual.saturating_add(count);
            per_column.push((column, count));
            positions[column] += 1;
            if let Some(&(next_id, _)) = rows.get(positions[column]) {
                debug_assert!(
                    next_id > id,
                    "reference stream {column} is not strictly sorted"
                );
                heads.push(Reverse((next_id, column)));
            }
        }

        let kind = classify(stored, actual);
        if kind.is_some() || stored.unwrap_or(0).max(actual) >= hot_threshold {
            per_column.sort_unstable();
            let finding = Finding {
                kind: kind.unwrap_or(Kind::CountMismatch),
                blob_id: id,
                stored,
                actual,
                references: per_column.clone(),
            };
            if kind.is_some() {
                findings.push(finding);
            } else {
                watch.push(finding);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::finding::Kind;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The brute-force model: every id, every stream, counted in maps.
    pub(crate) fn brute_force(
        blobs: &BTreeMap<u64, u64>,
        columns: &[BTreeMap<u64, u64>],
    ) -> Vec<Finding> {
        let mut ids: Vec<u64> = blobs.keys().copied().collect();
        for column in columns {
            ids.extend(column.keys().copied());
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let references: Vec<(usize, u64)> = columns
                    .iter()
                    .enumerate()
                    .filter_map(|(c, m)| m.get(&id).map(|&n| (c, n)))
                    .filter(|&(_, n)| n > 0)
                    .collect();
                let actual = references.iter().map(|&(_, n)| n).sum();
                let stored = blobs.get(&id).copied();
                classify(stored, actual).map(|kind| Finding {
                    kind,
                    blob_id: id,
                    stored,
                    actual,
                    references,
                })
            })
            .collect()
    }

    fn as_rows(map: &BTreeMap<u64, u64>) -> Vec<(u64, u64)> {
        map.iter().map(|(&k, &v)| (k, v)).collect()
    }

    #[test]
    fn merges_all_kinds_at_the_edges_of_the_id_space() {
        let blobs = vec![(0, 1), (5, 0), (6, 2), (u64::MAX - 1, 3), (u64::MAX, 1)];
        let a = vec![(0, 1), (6, 1), (7, 4), (u64::MAX, 1)];
        let b = vec![(6, 2), (u64::MAX - 1, 3)];
        let mut findings = Vec::new();
        merge_into(&blobs, &[&a, &b], &mut findings);
        let summary: Vec<(Kind, u64, Option<u64>, u64)> = findings
            .iter()
            .map(|f| (f.kind, f.blob_id, f.stored, f.actual))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Kind::CountMismatch, 6, Some(2), 3),
                (Kind::MissingBlob, 7, None, 4),
            ]
        );
        assert_eq!(findings[0].references, vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn busy_consistent_blobs_are_watched() {
        let blobs = vec![(1, 500), (2, 3), (3, 499)];
        let a = vec![(1, 500), (2, 3), (3, 500)];
        let (mut findings, mut watch) = (Vec::new(), Vec::new());
        merge_watching(&blobs, &[&a], &mut findings, 500, &mut watch);
        assert_eq!(
            findings.iter().map(|f| f.blob_id).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(
            watch
                .iter()
                .map(|f| (f.blob_id, f.difference()))
                .collect::<Vec<_>>(),
            vec![(1, 0)]
        );
    }

    #[test]
    fn empty_input_has_no_findings() {
        let mut findings = Vec::new();
        merge_into(&[], &[&[], &[]], &mut findings);
        assert!(findings.is_empty());
    }

    fn id() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..64,
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(1u64 << 63),
            (1u64 << 63) - 3..(1u64 << 63) + 3,
        ]
    }

    fn count_map() -> impl Strategy<Value = BTreeMap<u64, u64>> {
        proptest::collection::btree_map(id(), 0u64..4, 0..40)
    }

    proptest! {
        #[test]
        fn merge_equals_brute_force(
            blobs in count_map(),
            columns in proptest::collection::vec(
                proptest::collection::btree_map(id(), 1u64..4, 0..40), 0..6),
        ) {
            let blob_rows = as_rows(&blobs);
            let column_rows: Vec<Vec<(u64, u64)>> = columns.iter().map(as_rows).collect();
            let column_slices: Vec<&[(u64, u64)]> = column_rows.iter().map(Vec::as_slice).collect();
            let mut findings = Vec::new();
            merge_into(&blob_rows, &column_slices, &mut findings);
            prop_assert_eq!(findings, brute_force(&blobs, &columns));
        }
    }
}
