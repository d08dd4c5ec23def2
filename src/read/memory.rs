//! The in-memory model: the whole database as sorted maps, answering every
//! read with the semantics of the SQL (range, order, limit). The property
//! tests of `scan`, `confirm` and `check` run on it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{PointReads, ReferenceColumns, RunReads, ScanReads};
use crate::error::Result;
use crate::finding::{AffectedRow, Finding};
use crate::plan::IdRange;
use crate::sketch::{self, Moments, Weights};

/// Blob rows and reference columns, with counters of what was read.
pub(crate) struct MemorySource {
    pub blobs: BTreeMap<u64, u64>,
    /// Each column's `id → number of referencing rows`.
    pub columns: Vec<BTreeMap<u64, u64>>,
    pub largest_batch: AtomicU64,
    /// Blob batches read: chunks read exactly.
    pub blob_batches: AtomicU64,
    /// The ranges of the blob sketches read: chunks and halves.
    pub blob_sketches: Mutex<Vec<IdRange>>,
    /// The sketches' random weights (seed 0 unless a test sets others).
    pub weights: Weights,
}

impl MemorySource {
    pub(crate) fn new(blobs: BTreeMap<u64, u64>, columns: Vec<BTreeMap<u64, u64>>) -> Self {
        MemorySource {
            blobs,
            columns,
            largest_batch: AtomicU64::new(0),
            blob_batches: AtomicU64::new(0),
            blob_sketches: Mutex::new(Vec::new()),
            weights: Weights::from_seed(0),
        }
    }
}

/// The first `limit` entries of `map` in `range`.
fn batch(map: &BTreeMap<u64, u64>, range: IdRange, limit: u64) -> Vec<(u64, u64)> {
    map.range(range.start..=range.end)
        .take(limit as usize)
        .map(|(&k, &v)| (k, v))
        .collect()
}

/// The entries of `map` at `ids`, in the order of `ids`.
pub(crate) fn points(map: &BTreeMap<u64, u64>, ids: &[u64]) -> Vec<(u64, u64)> {
    ids.iter()
        .filter_map(|id| map.get(id).map(|&n| (*id, n)))
        .collect()
}

impl ReferenceColumns for MemorySource {
    fn column_count(&self) -> usize {
        self.columns.len()
    }
}

impl ScanReads for MemorySource {
    fn weights(&self) -> &Weights {
        &self.weights
    }

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

    async fn blob_sketch(&self, range: IdRange) -> Result<Option<Moments>> {
        assert!(range.end - range.start < sketch::MAX_SPAN);
        self.blob_sketches.lock().unwrap().push(range);
        let rows = self
            .blobs
            .range(range.start..=range.end)
            .map(|(&k, &v)| (k, v));
        Ok(Moments::of_blobs(range.start, &self.weights, rows))
    }

    async fn reference_sketch(&self, column: usize, range: IdRange) -> Result<Option<Moments>> {
        assert!(range.end - range.start < sketch::MAX_SPAN);
        let rows = self.columns[column]
            .range(range.start..=range.end)
            .map(|(&k, &v)| (k, v));
        tokio::task::yield_now().await;
        Ok(Moments::of_references(range.start, &self.weights, rows))
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
}

impl PointReads for MemorySource {
    async fn stored_counts(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
        Ok(points(&self.blobs, ids))
    }

    /// The model cannot tell rows apart: every fingerprint is 0.
    async fn reference_points(&self, column: usize, ids: &[u64]) -> Result<Vec<(u64, u64, u64)>> {
        Ok(points(&self.columns[column], ids)
            .into_iter()
            .map(|(id, n)| (id, n, 0))
            .collect())
    }
}

impl RunReads for MemorySource {
    async fn blob_id_span(&self) -> Result<Option<(u64, u64)>> {
        Ok(self
            .blobs
            .first_key_value()
            .zip(self.blobs.last_key_value())
            .map(|((&first, _), (&last, _))| (first, last)))
    }

    /// The model's columns hold ids only: no NULL, nothing negative.
    async fn unusable_counts(&self, _limit: u64) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); self.columns.len()])
    }

    /// Row `k` of column `c` is named `column c`, `row=k`.
    async fn affected_rows(&self, finding: &Finding, limit: u64) -> Result<Vec<AffectedRow>> {
        Ok(finding
            .references
            .iter()
            .flat_map(|&(column, n)| {
                (0..n.min(limit)).map(move |k| AffectedRow {
                    column,
                    table: format!("column {column}"),
                    key: vec![("row".to_owned(), k.to_string())],
                })
            })
            .collect())
    }
}
