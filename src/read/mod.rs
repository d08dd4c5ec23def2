//! The read seam: every read a check, its confirmation and `repair-sql`
//! make of the databases goes through the traits of this module.
//!
//! The traits are split by who asks, so that a consumer names only what it
//! uses:
//!
//! - [`ScanReads`]: the scan's batches, sketches and probes (`scan`).
//! - [`PointReads`]: counts of a few ids at a time (`confirm`, `repair`,
//!   the sketch's located ids), and [`read_points`], the one stable point
//!   read built on them.
//! - [`RunReads`]: what a whole run reads besides (`check`): the blob id
//!   span, the NULL and negative references, the rows a finding names.
//!
//! All of them extend [`ReferenceColumns`], which says how many reference columns
//! the reads cover: a column is always named by its position in the
//! configuration.
//!
//! `db::DbSource` answers them from the servers, with retries with backoff,
//! the throttle and the bounded waits; the in-memory model (`memory`, in
//! tests) answers them from sorted maps, so that the property tests run the
//! very code of `scan`, `confirm` and `check` on data brute force can judge.
//!
//! This module knows no SQL and no server: only ids, counts and ranges.

mod points;

#[cfg(test)]
pub(crate) mod memory;

use std::future::Future;

use crate::error::Result;
use crate::finding::AffectedRow;
use crate::finding::Finding;
use crate::plan::IdRange;
use crate::sketch::{Moments, Weights};

pub use points::{PointRead, read_points};

/// How many reference columns a source reads: columns are `0..count`, in
/// the order of the configuration.
pub trait ReferenceColumns: Send + Sync + 'static {
    fn column_count(&self) -> usize;
}

/// The scan's reads. Every batch is sorted by id, holds each id at most
/// once, lies inside `range` and has at most `limit` rows: the first
/// `limit` ids of the range that have rows.
pub trait ScanReads: ReferenceColumns {
    /// The random weights the sketch sums use (`sketch::Weights`): the
    /// same for every sketch of one run.
    fn weights(&self) -> &Weights;

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
}

/// Point reads: the counts of a few ids (sorted, distinct) at a time.
pub trait PointReads: ReferenceColumns {
    /// `(id, stored count)` of those of `ids` that have a blob row, sorted
    /// by id.
    fn stored_counts(&self, ids: &[u64]) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// `(id, references, fingerprint)` of those of `ids` that one column
    /// references, sorted by id, with a fingerprint of which rows reference
    /// the id (their primary keys), so that confirmation can tell a set of
    /// references that changed from one that held still although its size
    /// is the same. A source that cannot tell rows apart gives 0.
    fn reference_points(
        &self,
        column: usize,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<(u64, u64, u64)>>> + Send;
}

/// What a whole run reads besides the scan and the point reads.
pub trait RunReads: ReferenceColumns {
    /// The smallest and largest blob id, `None` for an empty table; an
    /// error names an id outside 0 to 2⁶⁴ − 1.
    fn blob_id_span(&self) -> impl Future<Output = Result<Option<(u64, u64)>>> + Send;

    /// `(NULL, negative)` references per column, read in batches of at most
    /// `limit` rows within the rate cap.
    fn unusable_counts(&self, limit: u64) -> impl Future<Output = Result<Vec<(u64, u64)>>> + Send;

    /// Up to `limit` rows per column that reference the finding's blob,
    /// named by table and primary key.
    fn affected_rows(
        &self,
        finding: &Finding,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<AffectedRow>>> + Send;
}
