//! blobcheck finds every inconsistency between a blob table's reference
//! counts and the references held in other tables, on other servers.
//!
//! The library is the whole tool; `src/main.rs` only parses the command line.
//! See `ARCHITECTURE.md` for the map of the modules and how data flows.

pub mod check;
pub mod checkpoint;
pub mod command;
pub mod config;
pub mod confirm;
pub mod db;
pub mod demo;
pub mod discovery;
pub mod doctor;
pub mod error;
pub mod finding;
pub mod merge;
pub mod metrics;
pub mod partition;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod pushgateway;
pub mod read;
pub mod repair;
pub mod report;
pub mod same_column;
pub mod sandbox;
pub mod scan;
pub mod sketch;
pub mod throttle;
pub mod watch;

/// Exit status: the check ran and found nothing.
pub const EXIT_CONSISTENT: i32 = 0;
/// Exit status: the check ran and found inconsistencies.
pub const EXIT_FINDINGS: i32 = 1;
/// Exit status: the check could not be carried out.
pub const EXIT_ERROR: i32 = 2;
/// Exit status: the check was stopped by SIGTERM or SIGINT before its end
/// (it saved its checkpoint, summary and metrics first).
pub const EXIT_INTERRUPTED: i32 = 3;

/// The version `--version` prints: the crate's and the commit it was built
/// from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BLOBCHECK_COMMIT"),
    ")"
);
