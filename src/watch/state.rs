//! `--state FILE`: where each server's log was read to (a transaction
//! boundary, so a restart re-reads no half transaction) and the ids and
//! ranges still waiting, as JSON, replaced atomically
//! ([`crate::paths::write_atomically`]). Ids are JSON integers: exact.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::db::binlog::Coordinates;
use crate::error::{Error, Result};

const VERSION: u32 = 1;

/// One server's place in its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPlace {
    /// The configured server's name.
    pub server: String,
    pub coordinates: Coordinates,
    /// The last transaction's GTID read, where the server has them.
    pub gtid: Option<String>,
}

/// What a watch keeps between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    pub version: u32,
    pub servers: Vec<ServerPlace>,
    /// Touched ids not yet judged (and those being judged), ascending.
    pub waiting: Vec<u64>,
    /// Ranges not yet scanned, inclusive.
    pub ranges: Vec<(u64, u64)>,
    /// Broken blobs already reported, with the stored and actual counts
    /// they were reported with: not reported again after a restart unless
    /// their numbers change.
    #[serde(default)]
    pub reported: Vec<(u64, Option<u64>, u64)>,
}

impl WatchState {
    pub fn new() -> WatchState {
        WatchState {
            version: VERSION,
            ..WatchState::default()
        }
    }

    /// The saved state, or `None` when the file does not exist yet.
    pub fn load(path: &Path) -> Result<Option<WatchState>> {
        let bad = |reason: String| Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let state: WatchState = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a watch state file ({e})")))?;
        if state.version != VERSION {
            return Err(bad(format!(
                "state version {} is not {VERSION}: remove the file to start at the end of every log",
                state.version
            )));
        }
        if let Some((s, e)) = state.ranges.iter().find(|(s, e)| s > e) {
            return Err(bad(format!("range {s}-{e} ends before it starts")));
        }
        Ok(Some(state))
    }

    pub fn place(&self, server: &str) -> Option<&ServerPlace> {
        self.servers.iter().find(|p| p.server == server)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec(self).expect("the state serializes");
        crate::paths::write_atomically(path, &text).map_err(|e| Error::Output {
            path: path.display().to_string(),
            reason: crate::error::one_line(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.json");
        assert_eq!(WatchState::load(&path).unwrap(), None);
        let mut state = WatchState::new();
        state.servers.push(ServerPlace {
            server: "global".into(),
            coordinates: Coordinates {
                file: "mysql-bin.000002".into(),
                position: 1234,
            },
            gtid: Some("0-1-9".into()),
        });
        state.waiting = vec![1, u64::MAX];
        state.ranges = vec![(5, 9)];
        state.save(&path).unwrap();
        assert_eq!(WatchState::load(&path).unwrap(), Some(state));
        std::fs::write(&path, "{").unwrap();
        assert!(WatchState::load(&path).is_err());
        std::fs::write(
            &path,
            r#"{"version":1,"servers":[],"waiting":[],"ranges":[[9,5]]}"#,
        )
        .unwrap();
        assert!(WatchState::load(&path).is_err());
    }
}
