//! The database side: connections, the schema checks made before a scan, the
//! SQL the scan runs, and [`DbSource`], which answers the scan's batches from
//! the servers.
//!
//! Every session is read-only and READ COMMITTED; no statement locks or
//! writes. All identifiers come from [`crate::config`] already validated and
//! are quoted here; the only other values in SQL are integers the scan made.
//!
//! One concern per file:
//! - `connect`: pools, TLS, the session setup, [`Databases`], [`connect_once`];
//! - `schema`: the per-column inspection ([`inspect`]) and what it yields
//!   ([`Schema`], [`ReferenceScan`], [`BlobScan`], [`ServerIdent`]);
//! - `sql`: the text of every query (`*_sql`, `*_statement`);
//! - `source`: [`DbSource`] (retries, permits, timeouts, decoding) and
//!   [`Protocol`];
//! - [`dialect`]: what differs between MySQL 5.7/8.x and MariaDB, and the
//!   statements whose answers are parsed (`SHOW GRANTS`).

mod connect;
pub mod dialect;
mod schema;
mod source;
mod sql;

pub use connect::{
    DEFAULT_MAX_CONNECTIONS_PER_SERVER, Databases, SESSION_SETUP, address, connect_once,
};
pub use schema::{
    BlobScan, ColumnInfo, INTEGER_TYPES, ReferenceScan, Schema, ServerIdent, inspect,
};
pub use source::{DbSource, Protocol};
pub use sql::{
    COLUMN_SQL, DATABASE_EXISTS_SQL, LEADING_INDEXES_SQL, PRIMARY_KEY_SQL, TABLE_EXISTS_SQL,
    Unusable, add_index_sql, affected_rows_sql, blob_batch_sql, blob_batch_statement,
    blob_id_span_sql, blob_points_sql, blob_sketch_sql, blob_sketch_statement, can_hold,
    reference_batch_sql, reference_batch_statement, reference_points_sql, reference_sketch_sql,
    reference_sketch_statement, sketch_cut_sql, unusable_batch_sql, unusable_count_sql,
};
