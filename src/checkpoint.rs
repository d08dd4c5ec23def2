//! Checkpoints: enough of a run's state, written atomically every few
//! seconds, that a killed run can be resumed and end with the same findings
//! an uninterrupted run gives.
//!
//! The scan hands over its outcomes in ascending id order, so its progress is
//! one number, the next id to scan. Candidates not yet confirmed are kept
//! with their scan read and confirmed again after a resume; confirmed
//! findings are kept so that the resumed run reports them again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::plan::IdRange;

const VERSION: u32 = 1;

/// A run's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// What was being checked (servers, tables, columns, range); a resume
    /// against anything else is refused.
    pub identity: String,
    pub range: IdRange,
    /// The next id to scan; `None` once the scan has covered the range.
    pub next_start: Option<u64>,
    /// Candidates awaiting confirmation, as the scan read them.
    pub pending: Vec<Finding>,
    /// Findings confirmed so far, in the order they were reported.
    pub findings: Vec<Finding>,
    pub blob_rows: u64,
    /// References counted so far, per column.
    pub references: Vec<u64>,
    pub transient: u64,
    /// Busy blobs re-read and found consistent.
    #[serde(default)]
    pub watched: u64,
    pub unsettled: Vec<u64>,
    /// Every candidate confirmed or dismissed and the scan done.
    pub complete: bool,
}

impl Checkpoint {
    pub fn new(identity: String, range: IdRange, columns: usize) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            identity,
            range,
            next_start: Some(range.start),
            pending: Vec::new(),
            findings: Vec::new(),
            blob_rows: 0,
            references: vec![0; columns],
            transient: 0,
            watched: 0,
            unsettled: Vec::new(),
            complete: false,
        }
    }

    /// Reads a checkpoint; `Ok(None)` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(path, format!("cannot read it: {e}"))),
        };
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| unreadable(path, format!("not a blobcheck checkpoint ({e})")))?;
        if checkpoint.version != VERSION {
            return Err(unreadable(
                path,
                format!("version {} is not {VERSION}", checkpoint.version),
            ));
        }
        Ok(Some(checkpoint))
    }

    /// Checks that a loaded checkpoint can describe a run over `columns`
    /// reference columns: its position lies in its range, and every id and
    /// column it names exists. A file edited by hand or damaged on disk is
    /// refused here rather than trusted.
    pub fn validate(
        &self,
        columns: usize,
        range: Option<IdRange>,
    ) -> std::result::Result<(), String> {
        if let Some(range) = range
            && self.range != range
        {
            return Err(format!("its range {} is not the run's {range}", self.range));
        }
        for finding in &self.findings {
            let actual: u64 = finding.references.iter().map(|&(_, n)| n).sum();
            if crate::finding::classify(finding.stored, finding.actual) != Some(finding.kind)
                || actual != finding.actual
            {
                return Err(format!(
                    "the finding for blob id {} does not add up (kind, stored, actual and references disagree)",
                    finding.blob_id
                ));
            }
        }
        if let Some(next) = self.next_start
            && !self.range.contains(next)
        {
            return Err(format!(
                "next_start {next} lies outside its range {}",
                self.range
            ));
        }
        if self.complete && (self.next_start.is_some() || !self.pending.is_empty()) {
            return Err("it says complete but still has work to do".into());
        }
        if self.references.len() != columns {
            return Err(format!(
                "it counts {} reference columns, the configuration has {columns}",
                self.references.len()
            ));
        }
        for finding in self.pending.iter().chain(&self.findings) {
            if !self.range.contains(finding.blob_id) {
                return Err(format!(
                    "blob id {} lies outside its range {}",
                    finding.blob_id, self.range
                ));
            }
            if let Some(&(column, _)) = finding.references.iter().find(|(c, _)| *c >= columns) {
                return Err(format!(
                    "blob id {} names reference column {column}, the configuration has {columns}",
                    finding.blob_id
                ));
            }
        }
        Ok(())
    }

    /// Writes the checkpoint so that a crash leaves either the old or the
    /// new one whole: a temporary file, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec(self).map_err(|e| checkpoint_error(path, e))?;
        text.push(b'\n');
        crate::paths::write_atomically(path, &text).map_err(|e| checkpoint_error(path, e))
    }
}

fn checkpoint_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Output {
        path: format!("checkpoint {}", path.display()),
        reason: crate::error::one_line(reason),
    }
}

/// A checkpoint that exists but cannot be used.
pub fn unreadable(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: crate::error::one_line(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Kind;

    #[test]
    fn round_trip_keeps_ids_above_two_to_the_63_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.checkpoint");
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        let mut checkpoint = Checkpoint::new("x".into(), IdRange::ALL, 2);
        checkpoint.next_start = Some(u64::MAX - 1);
        checkpoint.pending.push(Finding {
            kind: Kind::MissingBlob,
            blob_id: u64::MAX,
            stored: None,
            actual: 2,
            references: vec![(1, 2)],
        });
        checkpoint.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(checkpoint));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["run.checkpoint"], "no temporary file left");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        std::fs::write(&path, "{").unwrap();
        let error = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(error.contains("not a blobcheck checkpoint"), "{error}");
        assert!(!error.contains("cannot write"), "{error}");
        assert!(!error.contains('\n'));
    }

    #[test]
    fn validation_refuses_positions_ids_and_columns_outside_the_run() {
        let range = IdRange::new(10, 20);
        let valid = Checkpoint::new("x".into(), range, 2);
        assert_eq!(valid.validate(2, None), Ok(()));
        assert!(
            valid
                .validate(3, None)
                .unwrap_err()
                .contains("2 reference columns")
        );

        let mut past_end = valid.clone();
        past_end.next_start = Some(21);
        assert!(
            past_end
                .validate(2, None)
                .unwrap_err()
                .contains("next_start 21")
        );

        let finding = |blob_id, column| Finding {
            kind: Kind::MissingBlob,
            blob_id,
            stored: None,
            actual: 1,
            references: vec![(column, 1)],
        };
        let mut outside = valid.clone();
        outside.findings.push(finding(9, 0));
        assert!(outside.validate(2, None).unwrap_err().contains("blob id 9"));

        let mut no_such_column = valid.clone();
        no_such_column.pending.push(finding(15, 2));
        assert!(
            no_such_column
                .validate(2, None)
                .unwrap_err()
                .contains("column 2")
        );

        assert!(
            valid
                .validate(2, Some(IdRange::new(10, 21)))
                .unwrap_err()
                .contains("range")
        );
        assert_eq!(valid.validate(2, Some(range)), Ok(()));
        let mut wrong_kind = valid.clone();
        wrong_kind.findings.push(Finding {
            kind: Kind::CountMismatch,
            blob_id: 12,
            stored: Some(3),
            actual: 3,
            references: vec![(0, 3)],
        });
        assert!(
            wrong_kind
                .validate(2, None)
                .unwrap_err()
                .contains("blob id 12")
        );

        let mut complete_with_work = valid.clone();
        complete_with_work.complete = true;
        assert!(complete_with_work.validate(2, None).is_err());
        complete_with_work.next_start = None;
        assert_eq!(complete_with_work.validate(2, None), Ok(()));
    }
}
