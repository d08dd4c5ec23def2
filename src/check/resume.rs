//! Where a run starts: what identifies a run for resuming, and whether a
//! checkpoint is continued (`--resume` only ever continues an unfinished
//! run) or a new run begins.

use super::CheckOptions;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::plan::IdRange;
use crate::report::Start;

/// What identifies a run for resuming: everything that decides which rows
/// are read and how they are labelled.
pub(super) fn identity(config: &Config, scope: &str) -> String {
    let servers: Vec<String> = config
        .servers
        .iter()
        .map(|s| format!("{}={}", s.name, s.url))
        .collect();
    let references: Vec<String> = config
        .references
        .iter()
        .map(|r| {
            format!(
                "{}@{}:{}.{}",
                r.label, config.servers[r.server].name, r.table, r.column
            )
        })
        .collect();
    format!(
        "servers {}; blobs {}.{}/{}; references {}; {scope}",
        servers.join(","),
        config.blobs.table,
        config.blobs.id,
        config.blobs.count,
        references.join(",")
    )
}

/// The state a run starts from, and how it started when it keeps a
/// checkpoint. `--resume` only ever continues an unfinished run: a
/// checkpoint that holds a finished one (as a daily job leaves it) starts a
/// new run, so that every run reads the databases as they are now.
pub(super) fn starting_state(
    options: &CheckOptions,
    identity: String,
    range: IdRange,
    columns: usize,
) -> Result<(Checkpoint, Option<Start>)> {
    let fresh = |identity| Checkpoint::new(identity, range, columns);
    let Some(checkpoint) = &options.checkpoint else {
        return Ok((fresh(identity), None));
    };
    let path = &checkpoint.path;
    if !checkpoint.resume {
        return Ok((fresh(identity), Some(Start::New)));
    }
    let Some(saved) = Checkpoint::load(path)? else {
        tracing::info!(
            "no checkpoint at {} yet: starting a new run",
            path.display()
        );
        return Ok((fresh(identity), Some(Start::NewWithoutCheckpoint)));
    };
    if saved.complete {
        // Whatever it checked, there is nothing to continue.
        tracing::info!(
            "checkpoint {} holds a finished run: starting a new run",
            path.display()
        );
        return Ok((fresh(identity), Some(Start::NewAfterFinished)));
    }
    if saved.identity != identity {
        return Err(Error::Usage(format!(
            "checkpoint {} belongs to another check (other servers, tables or range); remove it or drop --resume",
            path.display()
        )));
    }
    saved
        .validate(columns, Some(range))
        .map_err(|reason| crate::checkpoint::unreadable(path, reason))?;
    tracing::info!(
        "resuming the unfinished run of {}: {} findings so far, {} candidates pending, next id {}",
        path.display(),
        saved.findings.len(),
        saved.pending.len(),
        saved
            .next_start
            .map_or("none (scan done)".into(), |n| n.to_string())
    );
    Ok((saved, Some(Start::Resumed)))
}
