//! What an inconsistency is: the kinds, their classification from a stored
//! and an actual count, and how bad each one is.

use serde::{Deserialize, Serialize};

/// The kinds of inconsistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The blob row exists, is referenced, and its count is wrong.
    CountMismatch,
    /// Referenced, but there is no blob row.
    MissingBlob,
    /// The count is above zero and nothing references the blob.
    OrphanBlob,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CountMismatch => "count_mismatch",
            Kind::MissingBlob => "missing_blob",
            Kind::OrphanBlob => "orphan_blob",
        }
    }
}

/// Which way a stored count is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Stored above actual: the blob will outlive its last reference (leak).
    TooHigh,
    /// Stored below actual: the blob will be deleted while still referenced.
    TooLow,
}

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Storage is leaked; nothing is lost.
    Warning,
    /// A count too low: the blob will be deleted while still referenced once
    /// enough references go away.
    Error,
    /// Data is lost or about to be: a reference to a missing blob, or a count
    /// of zero on a referenced blob (the asynchronous cleanup deletes it).
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// One inconsistency, exact: the blob id, the count stored in the blob table
/// (`None` when the row is missing), the real number of references, and the
/// nonzero per-column counts behind it (column index, count), in column order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub blob_id: u64,
    pub stored: Option<u64>,
    pub actual: u64,
    pub references: Vec<(usize, u64)>,
}

impl Finding {
    pub fn direction(&self) -> Option<Direction> {
        match (self.kind, self.stored) {
            (Kind::MissingBlob, _) | (_, None) => None,
            (_, Some(stored)) if stored > self.actual => Some(Direction::TooHigh),
            (_, Some(_)) => Some(Direction::TooLow),
        }
    }

    pub fn severity(&self) -> Severity {
        match (self.kind, self.stored) {
            (Kind::MissingBlob, _) | (Kind::CountMismatch, Some(0)) => Severity::Critical,
            (Kind::CountMismatch, Some(stored)) if stored < self.actual => Severity::Error,
            _ => Severity::Warning,
        }
    }

    /// `stored − actual` as a signed number, the quantity confirmation reads
    /// compare (a missing row counts as stored 0).
    pub fn difference(&self) -> i128 {
        difference(self.stored, self.actual)
    }
}

/// `stored − actual`, a missing row counting as stored 0.
pub fn difference(stored: Option<u64>, actual: u64) -> i128 {
    i128::from(stored.unwrap_or(0)) - i128::from(actual)
}

/// Classifies one blob id from its stored count (`None`: no blob row) and its
/// real reference count. `None` means consistent.
pub fn classify(stored: Option<u64>, actual: u64) -> Option<Kind> {
    match stored {
        None if actual > 0 => Some(Kind::MissingBlob),
        None => None,
        Some(stored) if actual == 0 && stored > 0 => Some(Kind::OrphanBlob),
        Some(stored) if actual > 0 && stored != actual => Some(Kind::CountMismatch),
        Some(_) => None,
    }
}

/// A row that references a blob, named by its table and primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffectedRow {
    /// Index of the reference column.
    pub column: usize,
    /// `database.table`.
    pub table: String,
    /// Primary-key column and value, in key order.
    pub key: Vec<(String, String)>,
}

impl AffectedRow {
    /// `ProtonMailShard.MessageData MessageID=123`.
    pub fn display(&self) -> String {
        let key: Vec<String> = self.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {}", self.table, key.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: Kind, stored: Option<u64>, actual: u64) -> Finding {
        Finding {
            kind,
            blob_id: 1,
            stored,
            actual,
            references: vec![],
        }
    }

    #[test]
    fn classification_table() {
        assert_eq!(classify(None, 0), None);
        assert_eq!(classify(None, 3), Some(Kind::MissingBlob));
        assert_eq!(classify(Some(0), 0), None, "zero-count blobs await cleanup");
        assert_eq!(classify(Some(2), 0), Some(Kind::OrphanBlob));
        assert_eq!(classify(Some(2), 2), None);
        assert_eq!(classify(Some(0), 1), Some(Kind::CountMismatch));
        assert_eq!(classify(Some(3), 2), Some(Kind::CountMismatch));
        assert_eq!(classify(Some(u64::MAX), 1), Some(Kind::CountMismatch));
    }

    #[test]
    fn direction_and_severity() {
        let low_zero = finding(Kind::CountMismatch, Some(0), 2);
        assert_eq!(low_zero.direction(), Some(Direction::TooLow));
        assert_eq!(low_zero.severity(), Severity::Critical);

        let low = finding(Kind::CountMismatch, Some(1), 2);
        assert_eq!(low.direction(), Some(Direction::TooLow));
        assert_eq!(low.severity(), Severity::Error);

        let high = finding(Kind::CountMismatch, Some(5), 2);
        assert_eq!(high.direction(), Some(Direction::TooHigh));
        assert_eq!(high.severity(), Severity::Warning);

        let missing = finding(Kind::MissingBlob, None, 2);
        assert_eq!(missing.direction(), None);
        assert_eq!(missing.severity(), Severity::Critical);
        assert_eq!(missing.difference(), -2);

        let orphan = finding(Kind::OrphanBlob, Some(4), 0);
        assert_eq!(orphan.direction(), Some(Direction::TooHigh));
        assert_eq!(orphan.severity(), Severity::Warning);
        assert_eq!(orphan.difference(), 4);
    }
}
