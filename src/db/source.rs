//! [`DbSource`]: the scan's and confirmation's reads answered by the
//! servers, with retries of lost connections, the throttle asked before each
//! query, the server's connection permits, timeouts, and the decoding of
//! what the servers return.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::Row;
use mysql_async::prelude::Queryable;

use super::connect::Databases;
use super::schema::{ReferenceScan, Schema, inspect};
use super::sql::{
    Unusable, affected_rows_sql, blob_batch_sql, blob_batch_statement, blob_id_span_sql,
    blob_points_sql, blob_sketch_sql, blob_sketch_statement, can_hold, reference_batch_sql,
    reference_batch_statement, reference_points_sql, reference_sketch_sql,
    reference_sketch_statement, row_fingerprint, sketch_cut_sql, sketch_cut_with, sketch_params,
    unusable_batch_sql, unusable_count_sql, unusable_keys, unusable_params,
};
use crate::config::Config;
use crate::error::{Error, Result, one_line};
use crate::finding::{AffectedRow, Finding};
use crate::plan::IdRange;
use crate::read::{PointReads, ReferenceColumns, RunReads, ScanReads};
use crate::sketch::{self, Moments, Weights};
use crate::throttle::Throttle;

/// How long one batch query may take before it counts as lost (and is
/// retried). Batches are index range scans of at most a chunk; this is far
/// above what a healthy one needs. A query is also never given longer than
/// what is left of the retry budget plus the connect timeout (`DbSource::rows`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// The random weights of this run's sketches, drawn when the source is
    /// made, and the prepared sketch statements that hold them.
    sketches: Arc<SketchStatements>,
    /// Salts confirmation's row fingerprints (`sql::reference_points_sql`),
    /// drawn when the source is made.
    fingerprint_salt: u32,
}

/// The sketch statements of one run. They carry the run's weights as
/// literals (two lists of 1,024 numbers), so they are built once, when the
/// weights are drawn, rather than for every chunk.
struct SketchStatements {
    weights: Weights,
    blobs: String,
    references: Vec<String>,
}

impl SketchStatements {
    fn new(schema: &Schema, weights: Weights) -> SketchStatements {
        SketchStatements {
            blobs: blob_sketch_statement(&schema.blobs, &weights),
            references: schema
                .references
                .iter()
                .map(|reference| reference_sketch_statement(reference, &weights))
                .collect(),
            weights,
        }
    }
}

/// Errors worth another try: the connection or the server went away, or
/// the server asked to come back later. Anything else (a wrong column, a
/// missing privilege) would fail again.
fn retryable(error: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, Error as E};
    match error {
        E::Io(_) => true,
        E::Driver(DriverError::ConnectionClosed) => true,
        // Only the run's own end disconnects a pool: a read still in
        // flight then stops, without a retry or a warning.
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

/// A whole number read as an integer or as the digits of a `DECIMAL`.
fn value_whole(value: Option<&mysql_async::Value>) -> Option<u128> {
    use mysql_async::Value;
    match value? {
        Value::Int(n) => u128::try_from(*n).ok(),
        Value::UInt(n) => Some(u128::from(*n)),
        Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
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
            retry_for: Duration::from_secs(300),
            throttle: Throttle::unlimited(),
            protocol: Protocol::Binary,
            sketches: Arc::new(SketchStatements::new(&schema, Weights::random())),
            fingerprint_salt: sketch::random_seed() as u32,
            schema,
        }
    }

    /// This source with the sketches' weights replaced (tests that need
    /// known weights).
    pub fn with_weights(mut self, weights: Weights) -> DbSource {
        self.sketches = Arc::new(SketchStatements::new(&self.schema, weights));
        self
    }

    /// This source with confirmation's row fingerprints salted by `salt`
    /// instead of a random number (tests that compare fingerprints across
    /// sources).
    pub fn with_fingerprint_salt(mut self, salt: u32) -> DbSource {
        self.fingerprint_salt = salt;
        self
    }

    /// Starts a throttle over every server of this source and makes every
    /// read wait for it; returns it (for its statistics).
    pub fn throttle_with(
        &mut self,
        options: crate::throttle::ThrottleOptions,
    ) -> Arc<crate::throttle::Throttle> {
        let servers = self
            .databases
            .servers
            .iter()
            .zip(&self.databases.pools)
            .map(|(s, p)| (s.name.clone(), p.clone()))
            .collect();
        let throttle = crate::throttle::Throttle::start(options, servers);
        self.throttle = Arc::clone(&throttle);
        throttle
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
        let (sums, random) = match summed[..] {
            [w, wt, random] => ([w, wt], random),
            [t, random] => ([u128::from(rows_read), t], random),
            _ => return Err(bad("a sketch query returned the wrong number of columns")),
        };
        Ok(Some(Moments {
            rows: rows_read,
            sums,
            random,
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
    fn weights(&self) -> &Weights {
        &self.sketches.weights
    }

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
            || blob_sketch_sql(blobs, &self.sketches.weights, range),
            || self.sketches.blobs.clone(),
            || sketch_params(range),
        );
        self.moments(blobs.server, query, &what).await
    }

    async fn reference_sketch(&self, column: usize, range: IdRange) -> Result<Option<Moments>> {
        let reference = &self.schema.references[column];
        let query = self.scan_query(
            || reference_sketch_sql(reference, &self.sketches.weights, range),
            || self.sketches.references[column].clone(),
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
        let query = Query::Text(reference_points_sql(reference, ids, self.fingerprint_salt));
        let mut points = self
            .rows(reference.server, &query)
            .await?
            .into_iter()
            .map(|row| {
                let sums = (value_whole(row.as_ref(2)), value_whole(row.as_ref(3)));
                let (id, n) = parse_pair(row, name, &reference.label)?;
                match sums {
                    (Some(sum), Some(squares)) => Ok((id, n, row_fingerprint(sum, squares))),
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
