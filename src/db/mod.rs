//! The database side: connections, the schema checks made before a scan, the
//! SQL the check runs, and [`DbSource`], which answers the read seam
//! (`crate::read`) from the servers. Only this module knows SQL text and
//! MySQL error codes.
//!
//! Every session is read-only and READ COMMITTED; no statement locks or
//! writes. All identifiers come from [`crate::config`] already validated and
//! are quoted here; the only other values in SQL are integers the scan made.
//!
//! One concern per file:
//! - `connect`: pools, TLS, the session setup, [`Databases`], [`connect_once`];
//! - `schema`: the per-table and per-column inspection, which [`inspect`]
//!   and `doctor` share, and what it yields ([`Schema`], [`ReferenceScan`],
//!   [`BlobScan`], [`ServerIdent`]);
//! - `sql`: the text of every query (`*_sql`, `*_statement`); only the
//!   builders other modules run or EXPLAIN are re-exported;
//! - `source`: [`DbSource`] (`open`, retries, permits, timeouts, decoding)
//!   and [`Protocol`];
//! - [`binlog`]: following a server's binary log as a replication client
//!   ([`binlog::Follower`]), the settings `watch` needs, and the statement
//!   text of a change;
//! - [`dialect`]: what differs between MySQL 5.7/8.x and MariaDB, and the
//!   statements whose answers are parsed (`SHOW GRANTS`).

pub mod binlog;
mod connect;
pub mod dialect;
mod schema;
mod source;
mod sql;

pub use connect::{
    DEFAULT_MAX_CONNECTIONS_PER_SERVER, Databases, address, connect_once, replication_conn,
};
pub use schema::{
    BlobScan, ColumnFacts, ColumnInfo, LeadingIndex, ReferenceScan, Schema, ServerIdent,
    TableLookup, blob_id_index, inspect, integer_columns, leading_indexes, lookup_column,
    lookup_table, primary_key_columns, tables_in,
};
pub use source::{DbSource, Protocol};
pub use sql::{
    MAX_CONNECTIONS_SQL, SSL_CIPHER_SQL, Unusable, VERSION_AND_ACCOUNT_SQL, add_index_sql,
    affected_rows_sql, blob_batch_sql, blob_id_span_sql, blob_points_sql, blob_sketch_sql,
    explain_sql, reference_batch_sql, reference_points_sql, reference_sketch_sql, sketch_cut_sql,
    smallest_sql, unusable_batch_sql, unusable_count_sql,
};
