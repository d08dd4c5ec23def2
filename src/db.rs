//! The database side: connections, the schema checks made before a scan, the
//! SQL the scan runs, and [`DbSource`], which answers the scan's batches from
//! the servers.
//!
//! Every session is read-only and READ COMMITTED; no statement locks or
//! writes. All identifiers come from [`crate::config`] already validated and
//! are quoted here; the only other values in SQL are integers the scan made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, SslOpts};

use crate::config::{Config, Ident, Server, TableName, Tls};
use crate::error::{Error, Result, one_line};
use crate::finding::AffectedRow;
use crate::finding::Finding;
use crate::plan::IdRange;
use crate::read::{PointReads, ReferenceColumns, RunReads, ScanReads};
use crate::same_column::{Columns, Resolved, Role};
use crate::sketch::{self, Moments};
use crate::throttle::Throttle;

/// How long one batch query may take before it counts as lost (and is
/// retried). Batches are index range scans of at most a chunk; this is far
/// above what a healthy one needs. A query is also never given longer than
/// what is left of the retry budget plus the connect timeout (`DbSource::rows`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

/// Connections per server the check opens at most, unless configured
/// (`[check] max_connections_per_server`): few enough to leave the
/// application most of a server's `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS_PER_SERVER: usize = 10;

/// Statements run on every new connection, before anything else.
pub const SESSION_SETUP: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION TRANSACTION READ ONLY",
];

/// One connection pool per configured server.
pub struct Databases {
    pub servers: Vec<Server>,
    pub pools: Vec<Pool>,
    /// Per server, one permit per connection the pool may open: the scan's
    /// and confirmation's queries wait here for a turn (within the retry
    /// budget), so that a pool smaller than the reads in flight queues
    /// them instead of timing them out.
    permits: Vec<Arc<tokio::sync::Semaphore>>,
}

/// `host:port` of a server, for messages.
pub fn address(server: &Server) -> String {
    Opts::from_url(&server.url)
        .map(|o| format!("{}:{}", o.ip_or_hostname(), o.tcp_port()))
        .unwrap_or_else(|_| "?".into())
}

fn pool_for(server: &Server, max_connections: usize) -> Result<Pool> {
    let opts = Opts::from_url(&server.url).map_err(|e| Error::Connect {
        server: server.name.clone(),
        address: "?".into(),
        reason: one_line(e),
    })?;
    let constraints = PoolConstraints::new(0, max_connections.max(1)).expect("0 ≤ max");
    // Idle connections stay open for a minute (mysql_async's default closes
    // every connection above the minimum as soon as it is returned, so each
    // query would connect anew), and are not reset on return: the session
    // only ever holds SESSION_SETUP, and a reset would drop the prepared
    // statements with it.
    let pool_opts = PoolOpts::default()
        .with_constraints(constraints)
        .with_inactive_connection_ttl(Duration::from_secs(60))
        .with_reset_connection(false);
    let mut builder = OptsBuilder::from_opts(opts)
        .init(SESSION_SETUP.iter().map(|s| s.to_string()).collect())
        .pool_opts(pool_opts)
        .stmt_cache_size(64);
    if let Some(password) = &server.password {
        builder = builder.pass(Some(password.0.clone()));
    }
    builder = builder.ssl_opts(ssl_opts(&server.tls));
    Ok(Pool::new(builder))
}

fn ssl_opts(tls: &Tls) -> Option<SslOpts> {
    let with_ca = |ca: &Option<std::path::PathBuf>| {
        let opts = SslOpts::default();
        match ca {
            Some(ca) => opts
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true),
            None => opts,
        }
    };
    match tls {
        Tls::Disabled => None,
        Tls::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        Tls::VerifyCa(ca) => Some(with_ca(ca).with_danger_skip_domain_validation(true)),
        Tls::VerifyIdentity(ca) => Some(with_ca(ca)),
    }
}

/// Privileges that only read (or only show status): anything else on any
/// object means the account could write.
pub const READ_PRIVILEGES: [&str; 9] = [
    "SELECT",
    "USAGE",
    "SHOW VIEW",
    "SHOW DATABASES",
    "PROCESS",
    "REPLICATION CLIENT",
    "SLAVE MONITOR",
    "BINLOG MONITOR",
    "REPLICA MONITOR",
];

/// Privileges beyond reading that the account holds, from `SHOW GRANTS`:
/// a checker needs SELECT only, and an account that could write is one
/// mistake away from harm.
pub async fn write_privileges(
    conn: &mut Conn,
) -> std::result::Result<Vec<String>, mysql_async::Error> {
    let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
    Ok(privileges_beyond_reading(&grants))
}

/// The privileges beyond reading in `SHOW GRANTS` lines, parsed as `doctor`
/// parses them (column lists such as `SELECT (a, b)` are not privileges).
fn privileges_beyond_reading(grants: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for grant in grants {
        // `None`: a role granted to the account; its privileges show separately.
        let Some((privileges, _, grant_option)) = crate::doctor::parse_grant(grant) else {
            continue;
        };
        for privilege in privileges {
            if !READ_PRIVILEGES.contains(&privilege.as_str()) && !found.contains(&privilege) {
                found.push(privilege);
            }
        }
        if grant_option && !found.iter().any(|p| p == "GRANT OPTION") {
            found.push("GRANT OPTION".to_owned());
        }
    }
    found
}

/// One connection to one server, outside any pool: for the few queries made
/// before the check's pools exist (shard discovery).
pub async fn connect_once(server: &Server) -> Result<(Pool, Conn)> {
    let pool = pool_for(server, 1)?;
    let failed = |reason: String| Error::Connect {
        server: server.name.clone(),
        address: address(server),
        reason,
    };
    match tokio::time::timeout(server.connect_timeout, pool.get_conn()).await {
        Ok(Ok(conn)) => Ok((pool, conn)),
        Ok(Err(e)) => Err(failed(one_line(e))),
        Err(_) => Err(failed(format!(
            "no answer within {} s",
            server.connect_timeout.as_secs()
        ))),
    }
}

impl Databases {
    /// Pools already opened, `max_connections` connections each at most.
    pub fn from_pools(servers: Vec<Server>, pools: Vec<Pool>, max_connections: usize) -> Databases {
        Databases {
            permits: (0..servers.len())
                .map(|_| Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))))
                .collect(),
            servers,
            pools,
        }
    }

    /// Opens a pool per server and proves each one answers, so a wrong host
    /// or password is reported before any work starts.
    pub async fn connect(config: &Config, max_connections_per_server: usize) -> Result<Databases> {
        let max = max_connections_per_server.max(1);
        let mut pools = Vec::with_capacity(config.servers.len());
        for server in &config.servers {
            pools.push(pool_for(server, max)?);
        }
        let databases = Databases::from_pools(config.servers.clone(), pools, max);
        let checks = (0..databases.servers.len()).map(|i| databases.conn(i));
        futures_util::future::try_join_all(checks).await?;
        Ok(databases)
    }

    /// Warns about every server where the account could do more than read.
    pub async fn warn_if_writable(&self) {
        for (i, server) in self.servers.iter().enumerate() {
            let Ok(mut conn) = self.conn(i).await else {
                continue;
            };
            match write_privileges(&mut conn).await {
                Ok(privileges) if !privileges.is_empty() => tracing::warn!(
                    "server `{}`: the account can do more than read ({}); blobcheck only reads, but use a SELECT-only account",
                    server.name,
                    privileges.join(", ")
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(
                    "server `{}`: SHOW GRANTS failed: {}",
                    server.name,
                    one_line(e)
                ),
            }
        }
    }

    /// A connection to server `i`, within the server's connect timeout.
    pub async fn conn(&self, i: usize) -> Result<Conn> {
        let server = &self.servers[i];
        let failed = |reason: String| Error::Connect {
            server: server.name.clone(),
            address: address(server),
            reason,
        };
        match tokio::time::timeout(server.connect_timeout, self.pools[i].get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(failed(one_line(e))),
            Err(_) => Err(failed(format!(
                "no answer within {} s",
                server.connect_timeout.as_secs()
            ))),
        }
    }

    pub fn query_error(&self, i: usize, e: impl std::fmt::Display) -> Error {
        Error::Query {
            server: self.servers[i].name.clone(),
            reason: one_line(e),
        }
    }

    /// Closes every pool; a server that no longer answers is given its
    /// connect timeout, then left.
    pub async fn disconnect(self) {
        for (pool, server) in self.pools.into_iter().zip(&self.servers) {
            let _ = tokio::time::timeout(server.connect_timeout, pool.disconnect()).await;
        }
    }
}

/// What the schema check learned about one integer column.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub data_type: String,
    pub unsigned: bool,
    pub nullable: bool,
}

/// The column types that can hold blob ids.
pub const INTEGER_TYPES: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];

/// The online DDL that gives `column` the index the scan needs.
pub fn add_index_sql(table: &TableName, column: &Ident) -> String {
    format!(
        "ALTER TABLE {} ADD INDEX {} ({}), ALGORITHM=INPLACE, LOCK=NONE;",
        table.quoted(),
        column.quoted(),
        column.quoted()
    )
}

async fn column_info(
    db: &Databases,
    server: usize,
    conn: &mut Conn,
    table: &TableName,
    column: &Ident,
) -> Result<(ColumnInfo, Resolved)> {
    let schema_error = |reason: String| Error::Schema {
        server: db.servers[server].name.clone(),
        reason,
    };
    let database_exists: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (table.database.as_str(),),
        )
        .await
        .map_err(|e| db.query_error(server, e))?;
    if database_exists.is_none() {
        return Err(schema_error(format!(
            "database `{}` not found (or the account may not read it)",
            table.database
        )));
    }
    let table_exists: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (table.database.as_str(), table.table.as_str()),
        )
        .await
        .map_err(|e| db.query_error(server, e))?;
    if table_exists.is_none() {
        return Err(schema_error(format!(
            "table `{table}` not found (or the account may not read it)"
        )));
    }
    type Row = (String, String, String, String, String, String);
    let row: Option<Row> = conn
        .exec_first(
            "SELECT DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            (
                table.database.as_str(),
                table.table.as_str(),
                column.as_str(),
            ),
        )
        .await
        .map_err(|e| db.query_error(server, e))?;
    let Some((data_type, column_type, nullable, schema, table_name, column_name)) = row else {
        return Err(schema_error(format!(
            "column `{column}` not found in table `{table}`"
        )));
    };
    let data_type = data_type.to_ascii_lowercase();
    if !INTEGER_TYPES.contains(&data_type.as_str()) {
        return Err(schema_error(format!(
            "column `{table}`.`{column}` is {column_type}, not an integer type: it cannot hold blob ids"
        )));
    }
    let info = ColumnInfo {
        data_type,
        unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
        nullable: nullable.eq_ignore_ascii_case("YES"),
    };
    let resolved = Resolved {
        schema,
        table: table_name,
        column: column_name,
    };
    Ok((info, resolved))
}

/// Indexes whose first column is `column`, best first: the primary key,
/// then unique, then the rest by name. Each entry is (name, unique, number
/// of columns).
async fn leading_indexes(
    db: &Databases,
    server: usize,
    conn: &mut Conn,
    table: &TableName,
    column: &Ident,
) -> Result<Vec<(String, bool, u64)>> {
    conn.exec(
        LEADING_INDEXES_SQL,
        (
            table.database.as_str(),
            table.table.as_str(),
            column.as_str(),
        ),
    )
    .await
    .map_err(|e| db.query_error(server, e))
}

async fn primary_key_columns(
    db: &Databases,
    server: usize,
    conn: &mut Conn,
    table: &TableName,
) -> Result<Vec<ServerIdent>> {
    let columns: Vec<String> = conn
        .exec(
            PRIMARY_KEY_SQL,
            (table.database.as_str(), table.table.as_str()),
        )
        .await
        .map_err(|e| db.query_error(server, e))?;
    Ok(columns.into_iter().map(ServerIdent).collect())
}

/// Indexes whose first column is `?` (database, table, column), best
/// first: the primary key, then unique, then by name; each row is (name,
/// unique, number of columns).
pub const LEADING_INDEXES_SQL: &str = "SELECT s.INDEX_NAME, s.NON_UNIQUE = 0, \
    (SELECT COUNT(*) FROM information_schema.STATISTICS c \
      WHERE c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
        AND c.INDEX_NAME = s.INDEX_NAME) \
    FROM information_schema.STATISTICS s \
    WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.COLUMN_NAME = ? AND s.SEQ_IN_INDEX = 1 \
    ORDER BY s.INDEX_NAME = 'PRIMARY' DESC, s.NON_UNIQUE, s.INDEX_NAME";

/// The primary-key columns of a table (database, table), in key order.
pub const PRIMARY_KEY_SQL: &str = "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
    WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
    ORDER BY SEQ_IN_INDEX";

/// A reference column as the scan reads it.
#[derive(Debug, Clone)]
pub struct ReferenceScan {
    pub server: usize,
    pub table: TableName,
    pub column: Ident,
    pub index: ServerIdent,
    pub info: ColumnInfo,
    pub label: String,
    /// The table's primary-key columns, to name the rows that reference a
    /// blob; empty when the table has none.
    pub primary_key: Vec<ServerIdent>,
}

/// The blob table as the scan reads it.
#[derive(Debug, Clone)]
pub struct BlobScan {
    pub server: usize,
    pub table: TableName,
    pub id: Ident,
    pub count: Ident,
    pub index: ServerIdent,
    /// The count column may hold NULL: its sketch sums must not skip such
    /// rows (see `sketch_sql`).
    pub count_nullable: bool,
}

/// Everything the scan needs to know about the schema, checked.
#[derive(Debug, Clone)]
pub struct Schema {
    pub blobs: BlobScan,
    pub references: Vec<ReferenceScan>,
}

/// A name the server reported (an index, a primary-key column). Unlike names from the
/// configuration it may hold any character; quoting doubles backticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdent(pub String);

impl ServerIdent {
    pub fn quoted(&self) -> String {
        format!("`{}`", self.0.replace('`', "``"))
    }
}

/// Checks that every table and column exists, holds integers and has an
/// index that starts with it; the errors say how to fix what is not so.
pub async fn inspect(config: &Config, db: &Databases) -> Result<Schema> {
    let b = &config.blobs;
    let mut conn = db.conn(b.server).await?;
    let server = &db.servers[b.server];
    // Every column once: see `same_column`.
    let mut columns = Columns::new(db.servers.len());
    let itself = columns.server(b.server, &server.name, &mut conn).await?;
    let (_, id) = column_info(db, b.server, &mut conn, &b.table, &b.id).await?;
    columns.add(Role::BlobId, "[blobs] id", &itself, id)?;
    let (count_info, count) = column_info(db, b.server, &mut conn, &b.table, &b.count).await?;
    columns.add(Role::BlobCount, "[blobs] count", &itself, count)?;
    let indexes = leading_indexes(db, b.server, &mut conn, &b.table, &b.id).await?;
    let Some((index, _, _)) = indexes
        .into_iter()
        .find(|(_, unique, columns)| *unique && *columns == 1)
    else {
        return Err(Error::Schema {
            server: server.name.clone(),
            reason: format!(
                "`{}`.`{}` must be the primary key (or a unique index of that column alone): the scan walks it in order",
                b.table, b.id
            ),
        });
    };
    let blobs = BlobScan {
        server: b.server,
        table: b.table.clone(),
        id: b.id.clone(),
        count: b.count.clone(),
        index: ServerIdent(index),
        count_nullable: count_info.nullable,
    };
    drop(conn);

    let mut references = Vec::with_capacity(config.references.len());
    for r in &config.references {
        let mut conn = db.conn(r.server).await?;
        let server = &db.servers[r.server];
        let itself = columns.server(r.server, &server.name, &mut conn).await?;
        let (info, resolved) = column_info(db, r.server, &mut conn, &r.table, &r.column).await?;
        columns.add(Role::Reference, &r.label, &itself, resolved)?;
        let indexes = leading_indexes(db, r.server, &mut conn, &r.table, &r.column).await?;
        let Some((index, _, _)) = indexes.into_iter().next() else {
            return Err(Error::Schema {
                server: server.name.clone(),
                reason: format!(
                    "`{}`.`{}` has no index that starts with it, so counting its references would scan the whole table; add one online with: {}",
                    r.table,
                    r.column,
                    add_index_sql(&r.table, &r.column)
                ),
            });
        };
        let primary_key = primary_key_columns(db, r.server, &mut conn, &r.table).await?;
        references.push(ReferenceScan {
            server: r.server,
            table: r.table.clone(),
            column: r.column.clone(),
            index: ServerIdent(index),
            info,
            label: r.label.clone(),
            primary_key,
        });
    }
    Ok(Schema { blobs, references })
}

/// `SELECT id, count … ORDER BY id LIMIT n` over the primary key.
pub fn blob_batch_sql(blobs: &BlobScan, range: IdRange, limit: u64) -> String {
    blob_batch_with(
        blobs,
        &range.start.to_string(),
        &range.end.to_string(),
        &limit.to_string(),
    )
}

/// `blob_batch_sql` as a prepared statement: start, end, limit.
pub fn blob_batch_statement(blobs: &BlobScan) -> String {
    blob_batch_with(blobs, "?", "?", "?")
}

fn blob_batch_with(blobs: &BlobScan, start: &str, end: &str, limit: &str) -> String {
    format!(
        "SELECT {id}, {count} FROM {table} FORCE INDEX ({index}) \
         WHERE {id} >= {start} AND {id} <= {end} ORDER BY {id} LIMIT {limit}",
        id = blobs.id.quoted(),
        count = blobs.count.quoted(),
        table = blobs.table.quoted(),
        index = blobs.index.quoted(),
    )
}

/// The smallest and largest blob id: two index dives
/// ("Select tables optimized away").
pub fn blob_id_span_sql(blobs: &BlobScan) -> String {
    format!(
        "SELECT MIN({id}), MAX({id}) FROM {table}",
        id = blobs.id.quoted(),
        table = blobs.table.quoted(),
    )
}

/// `SELECT column, COUNT(*) … GROUP BY column ORDER BY column LIMIT n`
/// through the column's index: an index-only range scan, and one row per
/// distinct id however many rows reference it.
pub fn reference_batch_sql(reference: &ReferenceScan, range: IdRange, limit: u64) -> String {
    reference_batch_with(
        reference,
        &range.start.to_string(),
        &range.end.to_string(),
        &limit.to_string(),
    )
}

/// `reference_batch_sql` as a prepared statement: start, end, limit.
pub fn reference_batch_statement(reference: &ReferenceScan) -> String {
    reference_batch_with(reference, "?", "?", "?")
}

fn reference_batch_with(reference: &ReferenceScan, start: &str, end: &str, limit: &str) -> String {
    format!(
        "SELECT {col}, COUNT(*) FROM {table} FORCE INDEX ({index}) \
         WHERE {col} >= {start} AND {col} <= {end} GROUP BY {col} ORDER BY {col} LIMIT {limit}",
        col = reference.column.quoted(),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
    )
}

/// The blob table's moments over a chunk (see `sketch`): `COUNT(*)`,
/// `Σ count`, `Σ count·t`, `Σ count·t²` with `t = id − start`, one row,
/// summed in DOUBLE (exact below `sketch::EXACT_LIMIT`, see `sketch`).
pub fn blob_sketch_sql(blobs: &BlobScan, range: IdRange) -> String {
    sketch_sql(
        &blobs.table,
        &blobs.index,
        &blobs.id,
        Some((&blobs.count, blobs.count_nullable)),
        Some(range),
    )
}

/// `blob_sketch_sql` as a prepared statement, bound with `sketch_params`.
pub fn blob_sketch_statement(blobs: &BlobScan) -> String {
    sketch_sql(
        &blobs.table,
        &blobs.index,
        &blobs.id,
        Some((&blobs.count, blobs.count_nullable)),
        None,
    )
}

/// A reference column's moments over a chunk: `COUNT(*)` (which is also
/// `Σ 1`), `Σ t`, `Σ t²`, one row, from an index-only range scan.
pub fn reference_sketch_sql(reference: &ReferenceScan, range: IdRange) -> String {
    sketch_sql(
        &reference.table,
        &reference.index,
        &reference.column,
        None,
        Some(range),
    )
}

/// `reference_sketch_sql` as a prepared statement, bound with
/// `sketch_params`.
pub fn reference_sketch_statement(reference: &ReferenceScan) -> String {
    sketch_sql(
        &reference.table,
        &reference.index,
        &reference.column,
        None,
        None,
    )
}

/// The sums of one table over `key BETWEEN start AND end`, each row weighed
/// by `weight` (the stored count) or by 1; with `range` as literals, or
/// `None` for placeholders.
///
/// Measured on MariaDB 10.11 (`BENCHMARKS.md`), each form here is the
/// cheaper of two: DOUBLE sums (`* 1e0`) against DECIMAL sums of integers,
/// `BETWEEN` against `>= AND <=` (one condition to evaluate per row, not
/// three), and for a reference column `COUNT(*)` once against a second
/// count as `Σ 1`.
fn sketch_sql(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    weight: Option<(&Ident, bool)>,
    range: Option<IdRange>,
) -> String {
    let (start, end) = match range {
        Some(range) => (range.start.to_string(), range.end.to_string()),
        None => ("?".to_owned(), "?".to_owned()),
    };
    let key = key.quoted();
    let t = format!("({key} - {start})");
    let sums = match weight {
        Some((weight, nullable)) => {
            // SUM skips NULL, which would pass a NULL count as consistent;
            // summed as 10¹⁶ (past `sketch::EXACT_LIMIT`) it sends the chunk
            // to be read row by row, where the NULL is named, as the exact
            // method names it.
            let w = if nullable {
                format!("COALESCE({} * 1e0, 1e16)", weight.quoted())
            } else {
                format!("{} * 1e0", weight.quoted())
            };
            format!("SUM({w}), SUM({w} * {t}), SUM({w} * {t} * {t})")
        }
        None => format!("SUM({t} * 1e0), SUM({t} * 1e0 * {t})"),
    };
    format!(
        "SELECT COUNT(*), {sums} \
         FROM {table} FORCE INDEX ({index}) WHERE {key} BETWEEN {start} AND {end}",
        table = table.quoted(),
        index = index.quoted(),
    )
}

/// The key of the `(rows + 1)`-th row of `range` through the table's index:
/// `SELECT key … WHERE key >= start AND key <= end ORDER BY key LIMIT rows, 1`,
/// an index-only range scan that reads at most `rows + 1` entries and
/// returns one. A sketch of `range` cut before that key reads at most
/// `rows` rows of the table (`scan::sketch_range`).
pub fn sketch_cut_sql(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    range: IdRange,
    rows: u64,
) -> String {
    sketch_cut_with(
        table,
        index,
        key,
        &range.start.to_string(),
        &range.end.to_string(),
        &rows.to_string(),
    )
}

fn sketch_cut_with(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    start: &str,
    end: &str,
    rows: &str,
) -> String {
    format!(
        "SELECT {key} FROM {table} FORCE INDEX ({index}) \
         WHERE {key} >= {start} AND {key} <= {end} ORDER BY {key} LIMIT {rows}, 1",
        key = key.quoted(),
        table = table.quoted(),
        index = index.quoted(),
    )
}

/// The parameters of a sketch statement, in placeholder order: the start
/// for each of the three `t` and the lower bound, then the end.
fn sketch_params(range: IdRange) -> Vec<u64> {
    vec![
        range.start,
        range.start,
        range.start,
        range.start,
        range.end,
    ]
}

/// `column IN (…)` for `ids`. Literals above 2⁶³−1 are DECIMAL to the
/// server, and an IN list that mixes them with BIGINT literals is not used
/// for a range scan (MariaDB falls back to a full scan), so the two kinds go
/// into separate lists.
fn in_condition(column: &Ident, ids: &[u64]) -> String {
    let list = |ids: &mut dyn Iterator<Item = &u64>| -> String {
        let ids: Vec<String> = ids.map(u64::to_string).collect();
        format!("{} IN ({})", column.quoted(), ids.join(","))
    };
    let small = ids.iter().filter(|&&id| id <= i64::MAX as u64).count();
    match (small, ids.len() - small) {
        (0, 0) => "FALSE".to_owned(),
        (_, 0) | (0, _) => list(&mut ids.iter()),
        _ => format!(
            "({} OR {})",
            list(&mut ids.iter().filter(|&&id| id <= i64::MAX as u64)),
            list(&mut ids.iter().filter(|&&id| id > i64::MAX as u64))
        ),
    }
}

/// Point reads of stored counts for confirmation. No ORDER BY: the caller
/// sorts, so the server never needs a sort.
pub fn blob_points_sql(blobs: &BlobScan, ids: &[u64]) -> String {
    format!(
        "SELECT {id}, {count} FROM {table} FORCE INDEX ({index}) WHERE {condition}",
        id = blobs.id.quoted(),
        count = blobs.count.quoted(),
        table = blobs.table.quoted(),
        index = blobs.index.quoted(),
        condition = in_condition(&blobs.id, ids),
    )
}

/// Point reads of one column's reference counts for confirmation.
///
/// The third column fingerprints which rows reference each id: the XOR of
/// a 64-bit hash (the first 16 hex digits of an MD5) of each row's primary
/// key, read from the same index (an InnoDB secondary index holds the
/// primary key). Confirmation uses it to tell a blob whose references were
/// replaced by as many others (a draft saved again: one reference added,
/// one removed) from one that held still. Two different sets of rows give
/// the same XOR only as often as two random 64-bit numbers agree; a linear
/// hash such as CRC32 would not do (the XOR of the CRC32s of `10` and `13`
/// is that of `11` and `12`). Each key part is prefixed by its length, so
/// that no two keys spell the same text. 0 when the table has no primary
/// key.
pub fn reference_points_sql(reference: &ReferenceScan, ids: &[u64]) -> String {
    let fingerprint = if reference.primary_key.is_empty() {
        "0".to_owned()
    } else {
        let key: Vec<String> = reference
            .primary_key
            .iter()
            .map(|part| format!("LENGTH({0}), {0}", part.quoted()))
            .collect();
        format!(
            "BIT_XOR(CAST(CONV(SUBSTRING(MD5(CONCAT_WS(',', {})), 1, 16), 16, 10) AS UNSIGNED))",
            key.join(", ")
        )
    };
    format!(
        "SELECT {col}, COUNT(*), {fingerprint} FROM {table} FORCE INDEX ({index}) WHERE {condition} GROUP BY {col}",
        col = reference.column.quoted(),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
        condition = in_condition(&reference.column, ids),
    )
}

/// The primary keys of up to `limit` rows that reference `id`: an
/// index-only lookup, since an InnoDB secondary index holds the primary key.
pub fn affected_rows_sql(reference: &ReferenceScan, id: u64, limit: u64) -> Option<String> {
    if reference.primary_key.is_empty() {
        return None;
    }
    let key: Vec<String> = reference
        .primary_key
        .iter()
        .map(ServerIdent::quoted)
        .collect();
    Some(format!(
        "SELECT {key} FROM {table} FORCE INDEX ({index}) WHERE {col} = {id} LIMIT {limit}",
        key = key.join(", "),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
        col = reference.column.quoted(),
    ))
}

/// Values of a reference column that are no reference: NULL, or in a
/// signed column a negative number (never a blob id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Null,
    Negative,
}

/// The columns one batch of `kind` rows is ordered and resumed by: the
/// table's primary key, behind the column itself for negative values (the
/// order of the column's index, which InnoDB extends with the primary key).
fn unusable_keys(reference: &ReferenceScan, kind: Unusable) -> Vec<String> {
    let mut keys = Vec::with_capacity(reference.primary_key.len() + 1);
    if kind == Unusable::Negative {
        keys.push(reference.column.quoted());
    }
    keys.extend(reference.primary_key.iter().map(ServerIdent::quoted));
    keys
}

/// Whether a column can hold `kind` values at all.
pub fn can_hold(reference: &ReferenceScan, kind: Unusable) -> bool {
    match kind {
        Unusable::Null => reference.info.nullable,
        Unusable::Negative => !reference.info.unsigned,
    }
}

/// One bounded batch of the rows whose value is `kind`, by keyset over the
/// column's index: `SELECT keys … WHERE col IS NULL [AND keys > after]
/// ORDER BY keys LIMIT n` (for negative values `col < 0`, with the column
/// as the first key). `after` holds one value (SQL literal or `?`) per key,
/// the last row of the previous batch. `None` when the column cannot hold
/// such values or the table has no primary key to resume by.
pub fn unusable_batch_sql(
    reference: &ReferenceScan,
    kind: Unusable,
    after: Option<&[String]>,
    limit: u64,
) -> Option<String> {
    if !can_hold(reference, kind) || reference.primary_key.is_empty() {
        return None;
    }
    let col = reference.column.quoted();
    let keys = unusable_keys(reference, kind);
    let mut condition = match kind {
        Unusable::Null => format!("{col} IS NULL"),
        Unusable::Negative => format!("{col} < 0"),
    };
    if let Some(after) = after {
        // (k1, k2, …) > (v1, v2, …), spelled out so that every MySQL and
        // MariaDB version turns it into index ranges.
        let alternatives: Vec<String> = (0..keys.len())
            .map(|i| {
                let mut terms: Vec<String> = (0..i)
                    .map(|j| format!("{} = {}", keys[j], after[j]))
                    .collect();
                terms.push(format!("{} > {}", keys[i], after[i]));
                terms.join(" AND ")
            })
            .collect();
        condition = format!("{condition} AND ({})", alternatives.join(" OR "));
    }
    Some(format!(
        "SELECT {keys} FROM {table} FORCE INDEX ({index}) WHERE {condition} ORDER BY {keys} LIMIT {limit}",
        keys = keys.join(", "),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
    ))
}

/// The parameters of `unusable_batch_sql` with `?` for `after`, in
/// placeholder order, from the previous batch's last row.
fn unusable_params(last: &[mysql_async::Value]) -> Vec<mysql_async::Value> {
    (0..last.len())
        .flat_map(|i| last[..=i].iter().cloned())
        .collect()
}

/// Rows whose reference is `kind`, in one unbounded count: only for a table
/// without a primary key, which no keyset can resume.
pub fn unusable_count_sql(reference: &ReferenceScan, kind: Unusable) -> Option<String> {
    if !can_hold(reference, kind) {
        return None;
    }
    let condition = match kind {
        Unusable::Null => format!("{} IS NULL", reference.column.quoted()),
        Unusable::Negative => format!("{} < 0", reference.column.quoted()),
    };
    Some(format!(
        "SELECT COUNT(*) FROM {} FORCE INDEX ({}) WHERE {condition}",
        reference.table.quoted(),
        reference.index.quoted(),
    ))
}

/// How scan batches travel: SQL text, or prepared statements with the
/// binary protocol. See BENCHMARKS.md for how they compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Text,
    Binary,
}

impl Protocol {
    /// `BLOBCHECK_PROTOCOL=text|binary`, a knob for benchmarks. The default
    /// is binary: at 10⁷ blobs it saved 12% of the client's CPU and 10 to 15%
    /// of wall time (BENCHMARKS.md), decoding integers instead of text.
    pub fn from_env() -> Protocol {
        match std::env::var("BLOBCHECK_PROTOCOL").as_deref() {
            Ok("text") => Protocol::Text,
            _ => Protocol::Binary,
        }
    }
}

/// A query: SQL text, or a statement to prepare with its parameters.
enum Query {
    Text(String),
    Prepared(String, Vec<mysql_async::Value>),
}

/// What a query reads, for the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// One row read per row returned: the blob table's batches.
    Scan,
    /// `(id, COUNT(*))` groups: as many rows read as the counts add up to
    /// (a reference column's batches).
    ScanGrouped,
    Points,
}

/// Answers the scan's batches from the servers.
pub struct DbSource {
    pub databases: Databases,
    pub schema: Schema,
    /// How long a query keeps being retried after connection failures (a
    /// restarted server, a dropped connection) before the check gives up.
    pub retry_for: Duration,
    pub throttle: Arc<Throttle>,
    pub protocol: Protocol,
}

/// Errors worth another try: the connection or the server went away, or
/// the server asked to come back later. Anything else (a wrong column, a
/// missing privilege) would fail again.
fn retryable(error: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, Error as E};
    match error {
        E::Io(_) => true,
        E::Driver(DriverError::ConnectionClosed | DriverError::PoolDisconnected) => true,
        // Server shutdown, connection killed, too many connections, query
        // interrupted, lock wait timeout, deadlock, lost connection.
        E::Server(server) => matches!(
            server.code,
            1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 2006 | 2013
        ),
        _ => false,
    }
}

/// A key value as text: numbers as digits, text as is, bytes as hex.
fn value_text(value: Option<&mysql_async::Value>) -> String {
    use mysql_async::Value;
    match value {
        None | Some(Value::NULL) => "NULL".to_owned(),
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::UInt(n)) => n.to_string(),
        Some(Value::Bytes(bytes)) => match std::str::from_utf8(bytes) {
            Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
            _ => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        },
        Some(other) => other.as_sql(true),
    }
}

/// A sketch's DOUBLE sum as read.
enum SketchSum {
    /// A whole number below `sketch::EXACT_LIMIT` (NULL, the sum of no rows,
    /// is 0): exact.
    Exact(u128),
    /// At or above the limit: it may have been rounded.
    Untrusted,
}

/// `None` when the value is no sum of non-negative whole terms at all.
fn value_sketch_sum(value: Option<&mysql_async::Value>) -> Option<SketchSum> {
    use mysql_async::Value;
    let sum = match value? {
        Value::NULL => return Some(SketchSum::Exact(0)),
        Value::Double(x) => *x,
        Value::Float(x) => f64::from(*x),
        Value::Int(n) => *n as f64,
        Value::UInt(n) => *n as f64,
        Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.parse::<f64>().ok()?,
        _ => return None,
    };
    if !(sum >= 0.0 && sum.fract() == 0.0) {
        return None;
    }
    // Below the limit (itself below 2⁵³) the conversion is exact.
    Some(if sum < sketch::EXACT_LIMIT as f64 {
        SketchSum::Exact(sum as u128)
    } else {
        SketchSum::Untrusted
    })
}

fn parse_pair(row: Row, server: &str, what: &str) -> Result<(u64, u64)> {
    let mut row = row;
    let id = row.take_opt::<u64, _>(0);
    let count = row.take_opt::<u64, _>(1);
    match (id, count) {
        (Some(Ok(id)), Some(Ok(count))) => Ok((id, count)),
        (Some(Ok(id)), count) => Err(Error::Query {
            server: server.to_owned(),
            reason: match count {
                Some(Err(e)) if e.0 == mysql_async::Value::NULL => {
                    format!(
                        "{what}: id {id} has a NULL count: set it to the number of its references"
                    )
                }
                _ => format!("{what}: id {id} has a count that is not a non-negative integer"),
            },
        }),
        _ => Err(Error::Query {
            server: server.to_owned(),
            reason: format!("{what}: an id that is not a non-negative integer"),
        }),
    }
}

impl DbSource {
    pub fn new(databases: Databases, schema: Schema) -> DbSource {
        DbSource {
            databases,
            schema,
            retry_for: Duration::from_secs(300),
            throttle: Throttle::unlimited(),
            protocol: Protocol::from_env(),
        }
    }

    /// Opens every server of `config` and inspects its tables: the one way
    /// `check` and `repair-sql` reach the databases. Each server gets
    /// `reads_per_column` connections for every column it holds (the blob
    /// table counts as one) and two more, at most `max_connections`. The
    /// source retries for 300 s and is not throttled until the caller says
    /// otherwise.
    pub async fn open(
        config: &Config,
        reads_per_column: usize,
        max_connections: usize,
    ) -> Result<DbSource> {
        let widest = (0..config.servers.len())
            .map(|server| {
                config
                    .references
                    .iter()
                    .filter(|r| r.server == server)
                    .count()
                    + usize::from(config.blobs.server == server)
            })
            .max()
            .unwrap_or(1);
        let pool_size = (reads_per_column * widest + 2).min(max_connections.max(1));
        let databases = Databases::connect(config, pool_size).await?;
        match inspect(config, &databases).await {
            Ok(schema) => Ok(DbSource::new(databases, schema)),
            Err(e) => {
                databases.disconnect().await;
                Err(e)
            }
        }
    }

    /// A scan query in the configured protocol: SQL text, or the prepared
    /// statement with its parameters. Only the one used is built.
    fn scan_query(
        &self,
        text: impl FnOnce() -> String,
        statement: impl FnOnce() -> String,
        params: impl FnOnce() -> Vec<u64>,
    ) -> Query {
        match self.protocol {
            Protocol::Text => Query::Text(text()),
            Protocol::Binary => Query::Prepared(
                statement(),
                params().into_iter().map(mysql_async::Value::from).collect(),
            ),
        }
    }

    /// Runs one query that returns `(id, count)` pairs (see `rows`).
    async fn pairs(
        &self,
        server: usize,
        query: Query,
        what: &str,
        read: Read,
    ) -> Result<Vec<(u64, u64)>> {
        let name = &self.databases.servers[server].name;
        let rows = self.rows(server, &query).await?;
        let pairs = rows
            .into_iter()
            .map(|row| parse_pair(row, name, what))
            .collect::<Result<Vec<_>>>()?;
        match read {
            Read::Scan => self.throttle.consume(pairs.len() as u64).await,
            Read::ScanGrouped => {
                let read = pairs
                    .iter()
                    .map(|&(_, n)| n)
                    .fold(0u64, u64::saturating_add);
                self.throttle.consume(read).await;
            }
            Read::Points => {}
        }
        Ok(pairs)
    }

    /// Runs one query, retrying with backoff while the failure is one a
    /// reconnect can cure. Scan reads count against
    /// `--max-rows-per-second` (the caller consumes); confirmation's point
    /// reads (a few ids each) do not, so that findings are not held back
    /// behind the scan, but they still wait out pauses for lag and load.
    ///
    /// Nothing here waits past the retry budget: a turn at the server's
    /// connections is awaited until `retry_for` plus the connect timeout
    /// have passed, a new connection is given the server's connect timeout,
    /// and the query no longer than what is left of the budget plus the
    /// connect timeout (and never more than `QUERY_TIMEOUT`). A server that accepts TCP and never
    /// answers therefore fails the read after about `retry_for` plus the
    /// connect timeout.
    async fn rows(&self, server: usize, query: &Query) -> Result<Vec<Row>> {
        let name = &self.databases.servers[server].name;
        let connect_timeout = self.databases.servers[server].connect_timeout;
        let deadline = Instant::now() + self.retry_for;
        let mut delay = Duration::from_millis(100);
        loop {
            // A pause (lag, load) that outlasts the budget ends the read
            // too: a server that stopped answering while over a limit
            // would otherwise hold every read for good.
            if tokio::time::timeout_at(deadline.into(), self.throttle.wait_ready())
                .await
                .is_err()
            {
                return Err(Error::Query {
                    server: name.clone(),
                    reason: format!(
                        "reads stayed paused (--max-lag or --max-threads-running, see the log) for longer than --retry-for {} s",
                        self.retry_for.as_secs()
                    ),
                });
            }
            let failure = match tokio::time::timeout_at(
                (deadline + connect_timeout).into(),
                self.databases.permits[server].acquire(),
            )
            .await
            {
                Err(_) | Ok(Err(_)) => format!(
                    "every connection blobcheck may open to the server was busy for {} s",
                    (self.retry_for + connect_timeout).as_secs()
                ),
                Ok(Ok(_permit)) => {
                    let attempt = async {
                        let mut conn = match tokio::time::timeout(
                            connect_timeout,
                            self.databases.pools[server].get_conn(),
                        )
                        .await
                        {
                            Ok(Ok(conn)) => conn,
                            Ok(Err(e)) => return Err(Some(e)),
                            Err(_) => return Err(None),
                        };
                        let left =
                            deadline.saturating_duration_since(Instant::now()) + connect_timeout;
                        let run = async {
                            match query {
                                Query::Text(sql) => conn.query::<Row, _>(sql.as_str()).await,
                                Query::Prepared(statement, params) => {
                                    conn.exec::<Row, _, _>(statement.as_str(), params.clone())
                                        .await
                                }
                            }
                        };
                        match tokio::time::timeout(left.min(QUERY_TIMEOUT), run).await {
                            Ok(result) => result.map_err(Some),
                            Err(_) => Err(None),
                        }
                    };
                    match attempt.await {
                        Ok(rows) => return Ok(rows),
                        Err(Some(e)) if !retryable(&e) => {
                            return Err(self.databases.query_error(server, e));
                        }
                        Err(Some(e)) => one_line(e),
                        Err(None) => "no answer in time".to_owned(),
                    }
                }
            };
            if Instant::now() + delay > deadline {
                return Err(Error::Query {
                    server: name.clone(),
                    reason: format!(
                        "{failure} (gave up after retrying for {} s)",
                        self.retry_for.as_secs()
                    ),
                });
            }
            tracing::warn!(
                "server `{name}`: {failure}; retrying in {:.1} s",
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Runs one sketch query (`blob_sketch_sql`, `reference_sketch_sql`):
    /// `COUNT(*)` and the sums. `Ok(None)` when a sum is too large to be
    /// trusted exact (`sketch::EXACT_LIMIT`).
    async fn moments(&self, server: usize, query: Query, what: &str) -> Result<Option<Moments>> {
        let name = &self.databases.servers[server].name;
        let rows = self.rows(server, &query).await?;
        let bad = |reason: &str| Error::Query {
            server: name.clone(),
            reason: format!("{what}: {reason}"),
        };
        let Ok([mut row]) = <[Row; 1]>::try_from(rows) else {
            return Err(bad("a sketch query did not return one row"));
        };
        let Some(Ok(rows_read)) = row.take_opt::<u64, _>(0) else {
            return Err(bad("a sketch's COUNT is not a non-negative integer"));
        };
        self.throttle.consume(rows_read).await;
        let mut summed = Vec::with_capacity(3);
        for column in 1..row.len() {
            match value_sketch_sum(row.as_ref(column)) {
                Some(SketchSum::Exact(n)) => summed.push(n),
                Some(SketchSum::Untrusted) => return Ok(None),
                None => return Err(bad("a sketch sum is not a non-negative whole number")),
            }
        }
        // The blob table's query sums `Σ count` too; a reference column's
        // `Σ 1` is its count.
        let sums = match summed[..] {
            [w, wt, wtt] => [w, wt, wtt],
            [t, tt] => [u128::from(rows_read), t, tt],
            _ => return Err(bad("a sketch query returned the wrong number of columns")),
        };
        Ok(Some(Moments {
            rows: rows_read,
            sums,
        }))
    }

    async fn unusable_count(
        &self,
        reference: &ReferenceScan,
        kind: Unusable,
        limit: u64,
    ) -> Result<u64> {
        let limit = limit.max(1);
        if !can_hold(reference, kind) {
            return Ok(0);
        }
        let Some(first) = unusable_batch_sql(reference, kind, None, limit) else {
            // No primary key: nothing to resume a batch by.
            tracing::warn!(
                "`{}` has no primary key: its {} values are counted in one read, not in batches",
                reference.label,
                if kind == Unusable::Null {
                    "NULL"
                } else {
                    "negative"
                }
            );
            let Some(sql) = unusable_count_sql(reference, kind) else {
                return Ok(0);
            };
            let rows = self.rows(reference.server, &Query::Text(sql)).await?;
            let n = rows
                .into_iter()
                .next()
                .and_then(|mut row| row.take_opt::<u64, _>(0))
                .and_then(std::result::Result::ok)
                .unwrap_or(0);
            self.throttle.consume(n).await;
            return Ok(n);
        };
        let keys = unusable_keys(reference, kind).len();
        let placeholders = vec!["?".to_owned(); keys];
        let Some(next) = unusable_batch_sql(reference, kind, Some(&placeholders), limit) else {
            return Ok(0);
        };
        let mut query = Query::Prepared(first, Vec::new());
        let mut total = 0;
        loop {
            let rows = self.rows(reference.server, &query).await?;
            let n = rows.len() as u64;
            total += n;
            self.throttle.consume(n).await;
            if n < limit {
                return Ok(total);
            }
            let Some(last) = rows.into_iter().last() else {
                return Ok(total);
            };
            query = Query::Prepared(next.clone(), unusable_params(&last.unwrap()));
        }
    }
}

impl ReferenceColumns for DbSource {
    fn column_count(&self) -> usize {
        self.schema.references.len()
    }
}

impl ScanReads for DbSource {
    async fn blob_batch(&self, range: IdRange, limit: u64) -> Result<Vec<(u64, u64)>> {
        let blobs = &self.schema.blobs;
        let what = blobs.table.to_string();
        let query = self.scan_query(
            || blob_batch_sql(blobs, range, limit),
            || blob_batch_statement(blobs),
            || vec![range.start, range.end, limit],
        );
        self.pairs(blobs.server, query, &what, Read::Scan).await
    }

    async fn reference_batch(
        &self,
        column: usize,
        range: IdRange,
        limit: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let reference = &self.schema.references[column];
        let query = self.scan_query(
            || reference_batch_sql(reference, range, limit),
            || reference_batch_statement(reference),
            || vec![range.start, range.end, limit],
        );
        self.pairs(reference.server, query, &reference.label, Read::ScanGrouped)
            .await
    }

    async fn blob_sketch(&self, range: IdRange) -> Result<Option<Moments>> {
        let blobs = &self.schema.blobs;
        let what = blobs.table.to_string();
        let query = self.scan_query(
            || blob_sketch_sql(blobs, range),
            || blob_sketch_statement(blobs),
            || sketch_params(range),
        );
        self.moments(blobs.server, query, &what).await
    }

    async fn reference_sketch(&self, column: usize, range: IdRange) -> Result<Option<Moments>> {
        let reference = &self.schema.references[column];
        let query = self.scan_query(
            || reference_sketch_sql(reference, range),
            || reference_sketch_statement(reference),
            || sketch_params(range),
        );
        self.moments(reference.server, query, &reference.label)
            .await
    }

    async fn sketch_cut(
        &self,
        column: Option<usize>,
        range: IdRange,
        rows: u64,
    ) -> Result<Option<u64>> {
        let (server, table, index, key, what) = match column {
            None => {
                let b = &self.schema.blobs;
                (b.server, &b.table, &b.index, &b.id, b.table.to_string())
            }
            Some(column) => {
                let r = &self.schema.references[column];
                (r.server, &r.table, &r.index, &r.column, r.label.clone())
            }
        };
        let query = self.scan_query(
            || sketch_cut_sql(table, index, key, range, rows),
            || sketch_cut_with(table, index, key, "?", "?", "?"),
            || vec![range.start, range.end, rows],
        );
        let found = self.rows(server, &query).await?;
        let Some(mut row) = found.into_iter().next() else {
            // Counted by `probed` once the sums say how many rows it read.
            return Ok(None);
        };
        self.throttle.consume(rows.saturating_add(1)).await;
        match row.take_opt::<u64, _>(0) {
            Some(Ok(id)) => Ok(Some(id)),
            _ => Err(Error::Query {
                server: self.databases.servers[server].name.clone(),
                reason: format!("{what}: an id that is not a non-negative integer"),
            }),
        }
    }

    async fn probed(&self, rows: u64) {
        self.throttle.consume(rows).await;
    }
}

impl PointReads for DbSource {
    async fn stored_counts(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
        let blobs = &self.schema.blobs;
        let what = blobs.table.to_string();
        let mut rows = self
            .pairs(
                blobs.server,
                Query::Text(blob_points_sql(blobs, ids)),
                &what,
                Read::Points,
            )
            .await?;
        rows.sort_unstable();
        Ok(rows)
    }

    async fn reference_points(&self, column: usize, ids: &[u64]) -> Result<Vec<(u64, u64, u64)>> {
        let reference = &self.schema.references[column];
        let name = &self.databases.servers[reference.server].name;
        let query = Query::Text(reference_points_sql(reference, ids));
        let mut points = self
            .rows(reference.server, &query)
            .await?
            .into_iter()
            .map(|mut row| {
                let fingerprint = row.take_opt::<u64, _>(2);
                let (id, n) = parse_pair(row, name, &reference.label)?;
                match fingerprint {
                    Some(Ok(fingerprint)) => Ok((id, n, fingerprint)),
                    _ => Err(Error::Query {
                        server: name.clone(),
                        reason: format!(
                            "{}: a row fingerprint that is not an integer",
                            reference.label
                        ),
                    }),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        points.sort_unstable();
        Ok(points)
    }
}

impl RunReads for DbSource {
    /// The smallest and largest blob id, `None` for an empty table.
    async fn blob_id_span(&self) -> Result<Option<(u64, u64)>> {
        let blobs = &self.schema.blobs;
        let rows = self
            .rows(blobs.server, &Query::Text(blob_id_span_sql(blobs)))
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        // A signed id column may hold negative ids, which no unsigned
        // reference can name and the scan (0 to 2⁶⁴ − 1) never reads.
        let id_at = |i: usize| -> Result<Option<u64>> {
            match row.as_ref(i) {
                None | Some(mysql_async::Value::NULL) => Ok(None),
                Some(value) => mysql_async::from_value_opt::<u64>(value.clone())
                    .map(Some)
                    .map_err(|_| Error::Schema {
                        server: self.databases.servers[blobs.server].name.clone(),
                        reason: format!(
                            "`{}`.`{}` holds the id {}: blob ids must be integers from 0 to 18446744073709551615",
                            blobs.table,
                            blobs.id,
                            value_text(Some(value))
                        ),
                    }),
            }
        };
        Ok(match (id_at(0)?, id_at(1)?) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        })
    }

    /// Up to `limit` rows per column that reference the finding's blob,
    /// named by table and primary key.
    async fn affected_rows(&self, finding: &Finding, limit: u64) -> Result<Vec<AffectedRow>> {
        let mut rows = Vec::new();
        for &(column, _) in &finding.references {
            let reference = &self.schema.references[column];
            let Some(sql) = affected_rows_sql(reference, finding.blob_id, limit) else {
                continue;
            };
            let found = self.rows(reference.server, &Query::Text(sql)).await?;
            for row in found {
                let key = reference
                    .primary_key
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.0.clone(), value_text(row.as_ref(i))))
                    .collect();
                rows.push(AffectedRow {
                    column,
                    table: reference.table.to_string(),
                    key,
                });
            }
        }
        Ok(rows)
    }

    /// NULL and negative values per reference column, `(nulls, negative)`.
    /// Read in batches of at most `limit` rows by keyset over the column's
    /// index (`unusable_batch_sql`), each counted against
    /// `--max-rows-per-second` and retried like the scan's batches.
    async fn unusable_counts(&self, limit: u64) -> Result<Vec<(u64, u64)>> {
        let mut counts = Vec::with_capacity(self.schema.references.len());
        for reference in &self.schema.references {
            let nulls = self
                .unusable_count(reference, Unusable::Null, limit)
                .await?;
            let negative = self
                .unusable_count(reference, Unusable::Negative, limit)
                .await?;
            counts.push((nulls, negative));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::Value;

    fn sum(value: Value) -> Option<Option<u128>> {
        value_sketch_sum(Some(&value)).map(|sum| match sum {
            SketchSum::Exact(n) => Some(n),
            SketchSum::Untrusted => None,
        })
    }

    fn reference(nullable: bool, unsigned: bool, primary_key: &[&str]) -> ReferenceScan {
        ReferenceScan {
            server: 0,
            table: TableName::parse("d.t").unwrap(),
            column: Ident::new("c").unwrap(),
            index: ServerIdent("c".into()),
            info: ColumnInfo {
                data_type: "bigint".into(),
                unsigned,
                nullable,
            },
            label: "c".into(),
            primary_key: primary_key
                .iter()
                .map(|k| ServerIdent((*k).into()))
                .collect(),
        }
    }

    #[test]
    fn unusable_values_are_read_in_keyset_batches_after_the_last_row() {
        let two = reference(true, false, &["a", "b"]);
        assert_eq!(
            unusable_batch_sql(&two, Unusable::Null, None, 100).unwrap(),
            "SELECT `a`, `b` FROM `d`.`t` FORCE INDEX (`c`) WHERE `c` IS NULL ORDER BY `a`, `b` LIMIT 100"
        );
        let after = ["?".to_owned(), "?".to_owned(), "?".to_owned()];
        assert_eq!(
            unusable_batch_sql(&two, Unusable::Negative, Some(&after), 100).unwrap(),
            "SELECT `c`, `a`, `b` FROM `d`.`t` FORCE INDEX (`c`) WHERE `c` < 0 AND \
             (`c` > ? OR `c` = ? AND `a` > ? OR `c` = ? AND `a` = ? AND `b` > ?) ORDER BY `c`, `a`, `b` LIMIT 100"
        );
        // The placeholders above, from the last row (c, a, b) = (-3, 7, 9).
        let last = [Value::Int(-3), Value::Int(7), Value::Int(9)];
        assert_eq!(
            unusable_params(&last),
            [-3, -3, 7, -3, 7, 9].map(Value::Int).to_vec()
        );
        // What a column cannot hold is not read; without a primary key
        // nothing resumes a batch.
        assert!(
            unusable_batch_sql(&reference(false, false, &["a"]), Unusable::Null, None, 1).is_none()
        );
        assert!(
            unusable_batch_sql(&reference(true, true, &["a"]), Unusable::Negative, None, 1)
                .is_none()
        );
        assert!(
            unusable_batch_sql(&reference(true, false, &[]), Unusable::Null, None, 1).is_none()
        );
        assert!(unusable_count_sql(&reference(true, false, &[]), Unusable::Null).is_some());
    }

    #[test]
    fn column_lists_in_grants_are_not_privileges() {
        let grants = |lines: &[&str]| {
            privileges_beyond_reading(&lines.iter().map(|l| l.to_string()).collect::<Vec<_>>())
        };
        let select_only = [
            "GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'",
            "GRANT SELECT (`Size`, `BlobStorageID`) ON `db`.`BlobStorage` TO `u`@`%`",
            "GRANT SELECT ON `db`.* TO `u`@`%`",
            "GRANT `reader` TO `u`@`%`",
        ];
        assert_eq!(grants(&select_only), Vec::<String>::new());
        assert_eq!(
            grants(&[
                "GRANT SELECT (`a`, `b`), UPDATE (`c`, `d`), INSERT ON `db`.`t` TO `u`@`%`",
                "GRANT SELECT ON `db`.* TO `u`@`%` WITH GRANT OPTION",
            ]),
            ["UPDATE", "INSERT", "GRANT OPTION"]
        );
        assert_eq!(
            grants(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"]),
            ["ALL PRIVILEGES"]
        );
    }

    #[test]
    fn sketch_sums_are_trusted_only_when_whole_and_below_the_limit() {
        let limit = sketch::EXACT_LIMIT;
        // Binary protocol.
        assert_eq!(sum(Value::NULL), Some(Some(0)));
        assert_eq!(sum(Value::Double(0.0)), Some(Some(0)));
        assert_eq!(
            sum(Value::Double((limit - 1) as f64)),
            Some(Some(limit - 1))
        );
        assert_eq!(sum(Value::Double(limit as f64)), Some(None));
        assert_eq!(sum(Value::Double(1e300)), Some(None));
        assert_eq!(sum(Value::Double(f64::INFINITY)), None);
        assert_eq!(sum(Value::Double(-1.0)), None);
        assert_eq!(sum(Value::Double(2.5)), None);
        assert_eq!(sum(Value::Double(f64::NAN)), None);
        // Text protocol, as MariaDB prints DOUBLE.
        let text = |s: &str| sum(Value::Bytes(s.as_bytes().to_vec()));
        assert_eq!(text("822"), Some(Some(822)));
        assert_eq!(text("9.99454163338125e14"), Some(Some(999_454_163_338_125)));
        assert_eq!(text("9.007199254740991e15"), Some(None));
        assert_eq!(text("1e15"), Some(None));
        assert_eq!(text("0.5"), None);
        assert_eq!(text("-3"), None);
        assert_eq!(text("sum"), None);
    }
}
