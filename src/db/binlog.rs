//! Following a server's binary log as a replication client: the one place
//! that speaks the replication protocol (through `mysql_async`'s binlog
//! stream) and decodes row events into the blob ids they touch.
//!
//! A [`Follower`] is given the tables to watch ([`WatchedTable`]: the blob
//! table's id column, reference columns) and turns the stream into
//! [`StreamEvent`]s: the ids one row event touches (in its before and after
//! images, every watched column), transaction ends (the coordinates after
//! one are a safe place to resume) and heartbeats (the stream is idle and
//! caught up). Everything else is skipped after reading its header.
//!
//! Column positions come from `information_schema` (MySQL 5.7's table-map
//! events carry no names), checked against every table-map event: a table
//! altered since the definition was read (a DDL statement in the log, a
//! column count or type that no longer matches) is read again, and until a
//! definition matches, every integer in the row is taken as touched. Extra
//! ids cost a point read each and can never make a finding: findings come
//! from point reads only.
//!
//! MariaDB specifics: `@mariadb_slave_capability = 4` makes the server send
//! its own events (GTID event 162, which `mysql_common` does not decode:
//! its 13-byte body is read here) instead of placeholders. The statement
//! text of a row change (MariaDB's annotate events, MySQL's rows-query
//! events) is looked up only for findings ([`statement_at`]), with `SHOW
//! BINLOG EVENTS`, because `mysql_async` cannot ask a MariaDB server to
//! send annotate events in the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};
use serde::{Deserialize, Serialize};

use super::connect::replication_conn;
use super::dialect::server_code;
use crate::config::Server;
use crate::error::{Error, Result, one_line};

/// Where a server's log is: a file and a byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Coordinates {
    pub file: String,
    pub position: u64,
}

impl std::fmt::Display for Coordinates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.position)
    }
}

/// What a watched column holds for the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The blob table's id column.
    BlobId,
    /// A configured reference column (its index in the configuration).
    Reference(usize),
}

/// One table whose row changes touch blobs, and the columns that say which.
#[derive(Debug, Clone)]
pub struct WatchedTable {
    pub database: String,
    pub table: String,
    pub columns: Vec<(String, Watched)>,
}

/// Where a change sits in the log, as a finding reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The row event's end in the log.
    pub coordinates: Coordinates,
    /// Where to look for the statement's text (the event before its first
    /// table map: an annotate or rows-query event if the server logs one).
    pub statement_at: Option<Coordinates>,
    /// The transaction's GTID (`domain-server-sequence` on MariaDB,
    /// `uuid:number` on MySQL), where the server has one.
    pub gtid: Option<String>,
    /// When the transaction was committed on the server that first ran it,
    /// in Unix seconds (the event's timestamp).
    pub committed_at: u32,
}

/// What the stream says, in log order.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// One row event's touched ids (unsorted, may repeat).
    Touched { ids: Vec<u64>, change: Change },
    /// A transaction ended: the coordinates after it are a safe place to
    /// resume, and every change before them has been handed on.
    Committed {
        coordinates: Coordinates,
        gtid: Option<String>,
        timestamp: u32,
        /// A statement that removed watched rows without row events
        /// (`TRUNCATE`, `DROP TABLE`, a dropped partition or database):
        /// their blobs are not known, only a full check sees them.
        unseen: Option<String>,
    },
    /// The stream is idle: nothing more has been logged up to here.
    Heartbeat { coordinates: Coordinates },
}

/// Why a stream stopped.
#[derive(Debug)]
pub enum StreamFault {
    /// The connection or the server went away: open it again.
    Lost(Error),
    /// The position asked for is no longer in the server's logs.
    Purged { at: Coordinates, reason: String },
    /// Opening again will not help (the account may not replicate).
    Fatal(Error),
}

/// Replication server id the watch registers with unless configured: in
/// the upper half of the 32-bit range, where server ids of real servers
/// are rare.
pub const DEFAULT_REPLICATION_SERVER_ID: u32 = 3_735_900_000;
/// Host name the watch registers with, so that `SHOW SLAVE HOSTS` tells a
/// watch's own stale registration from another replica's.
pub const REPLICA_HOST_NAME: &str = "blobcheck-watch";
/// How often an idle server sends a heartbeat (nanoseconds).
const HEARTBEAT_PERIOD_NS: u64 = 1_000_000_000;
/// A stream this long without an event or a heartbeat is lost.
const STREAM_SILENCE: Duration = Duration::from_secs(10);

/// MariaDB's GTID event, which `mysql_common` does not decode.
const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB's own events that hold no row changes: annotate rows, binlog
/// checkpoint, GTID list, start encryption.
const MARIADB_SKIPPED_EVENTS: [u8; 4] = [160, 161, 163, 164];
/// MariaDB's compressed query and row events (`log_bin_compress`), which
/// `mysql_common` cannot read.
const MARIADB_UNREADABLE_EVENTS: [u8; 7] = [165, 166, 167, 168, 169, 170, 171];

/// A server's binary-log settings as far as `watch` needs them.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub log_bin: bool,
    pub format: String,
    pub row_image: String,
    pub log_replica_updates: bool,
    pub server_id: u32,
    /// Whether the server replicates from another (it has replica status).
    pub is_replica: bool,
    /// MariaDB's `log_bin_compress` or MySQL's
    /// `binlog_transaction_compression`: events watch cannot read.
    pub compressed: bool,
}

/// `@@log_bin, @@binlog_format, @@binlog_row_image, @@log_slave_updates,
/// @@server_id`, as the server answers them.
type RawLogSettings = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<u64>,
);

/// Reads the settings `watch` depends on.
pub async fn log_settings(conn: &mut Conn) -> std::result::Result<LogSettings, mysql_async::Error> {
    let row: Option<RawLogSettings> = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@log_slave_updates, @@server_id",
        )
        .await?;
    let (log_bin, format, row_image, log_replica_updates, server_id) =
        row.unwrap_or((None, None, None, None, None));
    let mut is_replica = false;
    for statement in super::dialect::REPLICA_STATUS_SQL {
        match conn.query_iter(statement).await {
            Ok(mut result) => {
                let rows: Vec<mysql_async::Row> = result.collect().await?;
                is_replica = !rows.is_empty();
                break;
            }
            Err(e) if super::dialect::is_parse_error(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    // Only one of the two exists on a given server.
    let mut compressed = false;
    for variable in ["@@log_bin_compress", "@@binlog_transaction_compression"] {
        if let Ok(Some(Some(on))) = conn
            .query_first::<Option<i64>, _>(format!("SELECT {variable}"))
            .await
        {
            compressed |= on == 1;
        }
    }
    Ok(LogSettings {
        compressed,
        log_bin: log_bin == Some(1),
        format: format.unwrap_or_default().to_ascii_uppercase(),
        row_image: row_image.unwrap_or_default().to_ascii_uppercase(),
        log_replica_updates: log_replica_updates == Some(1),
        server_id: server_id.unwrap_or(0) as u32,
        is_replica,
    })
}

/// Everything wrong with a server's settings for `watch`, each with its
/// fix, in the order a DBA would change them.
pub fn settings_problems(settings: &LogSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if !settings.log_bin {
        problems.push(
            "the binary log is off: start the server with log_bin (and binlog_format=ROW, binlog_row_image=FULL)"
                .to_owned(),
        );
        return problems;
    }
    if settings.format != "ROW" {
        problems.push(format!(
            "binlog_format is {}: watch reads row events, set binlog_format=ROW",
            settings.format
        ));
    }
    if settings.row_image != "FULL" {
        problems.push(format!(
            "binlog_row_image is {}: set binlog_row_image=FULL (a deleted reference row must show its reference column, which a {} image leaves out)",
            settings.row_image, settings.row_image
        ));
    }
    if settings.compressed {
        problems.push(
            "the binary log is compressed: watch cannot read compressed events; set log_bin_compress=OFF (MariaDB) or binlog_transaction_compression=OFF (MySQL)"
                .to_owned(),
        );
    }
    if settings.is_replica && !settings.log_replica_updates {
        problems.push(
            "the server is a replica without log_slave_updates: what it replicates is not in its own log; set log_slave_updates=ON (log_replica_updates on MySQL 8)"
                .to_owned(),
        );
    }
    problems
}

/// The GRANT that lets `watch` follow a server's log; none of the
/// privileges lets the account write. MariaDB 10.5 and later also need
/// SLAVE MONITOR to say whether the server is a replica.
pub fn replication_grant(version: super::dialect::ServerVersion, account: &str) -> String {
    let monitor = match version.replica_monitor_privilege() {
        "REPLICATION CLIENT" => String::new(),
        other => format!(", {other}"),
    };
    format!("GRANT REPLICATION SLAVE, REPLICATION CLIENT{monitor} ON *.* TO {account}")
}

/// What the server says it is.
pub async fn server_version(
    conn: &mut Conn,
) -> std::result::Result<super::dialect::ServerVersion, mysql_async::Error> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(super::dialect::ServerVersion::parse(
        &version.unwrap_or_default(),
    ))
}

/// The end of the server's log now (`SHOW MASTER STATUS`, or MySQL 8.4's
/// `SHOW BINARY LOG STATUS`).
pub async fn log_end(
    conn: &mut Conn,
) -> std::result::Result<Option<Coordinates>, mysql_async::Error> {
    for statement in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
        match conn.query_iter(statement).await {
            Ok(mut result) => {
                let rows: Vec<mysql_async::Row> = result.collect().await?;
                return Ok(rows.first().and_then(|row| {
                    let file: String = row.get(0)?;
                    let position: u64 = row.get(1)?;
                    Some(Coordinates { file, position })
                }));
            }
            Err(e) if super::dialect::is_parse_error(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The server's log files, oldest first, with their sizes.
pub async fn log_files(
    conn: &mut Conn,
) -> std::result::Result<Vec<(String, u64)>, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .iter()
        .filter_map(|row| Some((row.get::<String, _>(0)?, row.get::<u64, _>(1)?)))
        .collect())
}

/// Replicas registered with the server: (server id, host).
pub async fn registered_replicas(
    conn: &mut Conn,
) -> std::result::Result<Vec<(u32, String)>, mysql_async::Error> {
    // MySQL 8.4 knows only the new name.
    let rows: Vec<mysql_async::Row> = match conn.query("SHOW SLAVE HOSTS").await {
        Err(e) if super::dialect::is_parse_error(&e) => conn.query("SHOW REPLICAS").await?,
        other => other?,
    };
    Ok(rows
        .iter()
        .filter_map(|row| {
            let id: u32 = row.get(0)?;
            let host: String = row.get::<Option<String>, _>(1)?.unwrap_or_default();
            Some((id, host))
        })
        .collect())
}

/// The text of the statement that made a change, if the server logged it
/// (MariaDB's `binlog_annotate_row_events`, MySQL's
/// `binlog_rows_query_log_events`): the annotate or rows-query event at
/// `at`, read with `SHOW BINLOG EVENTS` (two events at most).
pub async fn statement_at(
    conn: &mut Conn,
    at: &Coordinates,
) -> std::result::Result<Option<String>, mysql_async::Error> {
    // The file name comes from the server; quote it as a string literal.
    let file = at.file.replace('\\', "\\\\").replace('\'', "''");
    let sql = format!(
        "SHOW BINLOG EVENTS IN '{file}' FROM {} LIMIT 2",
        at.position
    );
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    // Statements may hold bytes that are no UTF-8 (`_binary` literals):
    // read as bytes, shown lossily.
    let text = |row: &mysql_async::Row, column: &str| -> Option<String> {
        let bytes: Option<Vec<u8>> = row.get_opt(column)?.ok()?;
        Some(String::from_utf8_lossy(&bytes?).into_owned())
    };
    Ok(rows.iter().find_map(|row| {
        let kind = text(row, "Event_type")?;
        let info = text(row, "Info")?;
        matches!(kind.as_str(), "Annotate_rows" | "Rows_query").then(|| {
            // MySQL prefixes the text with `# `.
            info.strip_prefix("# ").unwrap_or(&info).to_owned()
        })
    }))
}

/// A watched column's place in a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    position: usize,
    unsigned: bool,
}

/// A table's definition as far as the watch reads its rows.
#[derive(Debug, Clone)]
struct Layout {
    columns: usize,
    /// Per watched column: where it is (`None`: not in the table).
    slots: Vec<Option<Slot>>,
    /// Which positions hold integers.
    integers: Vec<bool>,
}

/// How one table id's rows are read.
#[derive(Debug, Clone)]
enum Reading {
    /// Not a watched table.
    Skip,
    /// The watched columns at these positions.
    Slots(Arc<Vec<Slot>>),
    /// The definition does not match the log's: every integer is taken.
    EveryInteger,
}

/// Follows one server's log.
pub struct Follower {
    server: Server,
    version: super::dialect::ServerVersion,
    replication_id: u32,
    watched: Vec<WatchedTable>,
    /// For information_schema reads.
    lookup: Option<Conn>,
    stream: Option<BinlogStream>,
    /// Where the next event starts (the end of the last one read).
    at: Coordinates,
    /// The last safe place to resume: after a whole transaction.
    safe: Coordinates,
    layouts: HashMap<usize, Layout>,
    /// Per table id of the current log: how its rows are read.
    tables: HashMap<u64, Reading>,
    gtid: Option<String>,
    /// Where the current statement's text would be.
    statement_at: Option<Coordinates>,
    /// The end of the event before the current one.
    previous_end: Option<Coordinates>,
    /// A table's definition changed (a DDL statement for it was logged).
    stale: bool,
}

impl Follower {
    /// A follower that will start reading at `from` (the stream is opened
    /// by the first [`Follower::next`]).
    pub fn new(
        server: Server,
        version: super::dialect::ServerVersion,
        replication_id: u32,
        watched: Vec<WatchedTable>,
        from: Coordinates,
    ) -> Follower {
        Follower {
            server,
            version,
            replication_id,
            watched,
            lookup: None,
            stream: None,
            safe: from.clone(),
            at: from,
            layouts: HashMap::new(),
            tables: HashMap::new(),
            gtid: None,
            statement_at: None,
            previous_end: None,
            stale: true,
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Query {
            server: self.server.name.clone(),
            reason: one_line(reason),
        }
    }

    /// Goes on from `at` instead (over a gap in the logs).
    pub fn restart_at(&mut self, at: Coordinates) {
        self.stream = None;
        self.safe = at.clone();
        self.at = at;
        self.tables.clear();
        self.previous_end = None;
    }

    /// Drops the stream; the next [`Follower::next`] reconnects and goes on
    /// from the last safe coordinates (events after them come again).
    pub async fn disconnect(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
        }
        self.lookup = None;
        self.at = self.safe.clone();
        self.tables.clear();
        self.previous_end = None;
        self.statement_at = None;
        self.gtid = None;
    }

    async fn open(&mut self) -> std::result::Result<(), StreamFault> {
        let mut conn = replication_conn(&self.server)
            .await
            .map_err(StreamFault::Lost)?;
        let setup = [
            // MariaDB: send GTID and its other own events as they are.
            "SET @mariadb_slave_capability = 4".to_owned(),
            format!("SET @master_heartbeat_period = {HEARTBEAT_PERIOD_NS}"),
        ];
        for statement in setup {
            conn.query_drop(statement)
                .await
                .map_err(|e| StreamFault::Lost(self.error(e)))?;
        }
        let file = self.at.file.clone().into_bytes();
        let request = BinlogStreamRequest::new(self.replication_id)
            .with_filename(&file)
            .with_pos(self.at.position)
            .with_hostname(REPLICA_HOST_NAME.as_bytes());
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| self.stream_error(e))?;
        self.stream = Some(stream);
        Ok(())
    }

    /// The next event worth handing on. Errors leave the follower
    /// disconnected; calling again reconnects.
    pub async fn next(&mut self) -> std::result::Result<StreamEvent, StreamFault> {
        loop {
            if self.stream.is_none() {
                self.open().await?;
            }
            // The server sends a heartbeat every second when idle: a
            // stream silent for much longer is a connection gone half-open.
            let read = match tokio::time::timeout(
                STREAM_SILENCE,
                self.stream.as_mut().expect("opened").next(),
            )
            .await
            {
                Ok(read) => read,
                Err(_) => {
                    self.disconnect().await;
                    return Err(StreamFault::Lost(self.error(format!(
                        "nothing from the server for {} s (heartbeats are due every second)",
                        STREAM_SILENCE.as_secs()
                    ))));
                }
            };
            let event = match read {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    let error = self.stream_error(e);
                    self.disconnect().await;
                    return Err(error);
                }
                None => {
                    self.disconnect().await;
                    return Err(StreamFault::Lost(
                        self.error("the server closed the binary log stream"),
                    ));
                }
            };
            match self.handle(&event).await {
                Ok(Some(out)) => return Ok(out),
                Ok(None) => {}
                Err(fault) => {
                    self.disconnect().await;
                    return Err(fault);
                }
            }
        }
    }

    fn stream_error(&self, e: mysql_async::Error) -> StreamFault {
        match server_code(&e) {
            // The position is not in the server's logs (purged); 1236 also
            // covers other fatal replication errors, told apart by text.
            Some(1236) if is_purged(&e.to_string()) => StreamFault::Purged {
                at: self.at.clone(),
                reason: one_line(&e),
            },
            Some(code) if super::dialect::ACCESS_DENIED.contains(&code) || code == 1045 => {
                StreamFault::Fatal(Error::Prerequisite {
                    server: self.server.name.clone(),
                    reason: format!(
                        "the account may not read the binary log ({}): {}",
                        one_line(&e),
                        replication_grant(self.version, "<account>")
                    ),
                })
            }
            _ => StreamFault::Lost(self.error(e)),
        }
    }

    async fn handle(
        &mut self,
        event: &Event,
    ) -> std::result::Result<Option<StreamEvent>, StreamFault> {
        let header = event.header();
        let kind = header.event_type_raw();
        let end = header.log_pos() as u64;
        let timestamp = header.timestamp();
        // A rotate's and a fake event's log_pos is 0: positions come from
        // the rotate itself.
        let previous_end = self.previous_end.take();
        if end != 0 {
            self.previous_end = Some(Coordinates {
                file: self.at.file.clone(),
                position: end,
            });
        }
        if kind == MARIADB_GTID_EVENT {
            let gtid = mariadb_gtid(event.data(), header.server_id()).ok_or_else(|| {
                StreamFault::Lost(self.error("a MariaDB GTID event too short to read"))
            })?;
            self.gtid = Some(gtid);
            self.statement_at = None;
            self.advance(end);
            return Ok(None);
        }
        if MARIADB_UNREADABLE_EVENTS.contains(&kind) {
            return Err(StreamFault::Fatal(Error::Prerequisite {
                server: self.server.name.clone(),
                reason: format!(
                    "a compressed event (type {kind}) at {}: watch cannot read compressed binary logs; set log_bin_compress=OFF",
                    self.at
                ),
            }));
        }
        let data = match event.read_data() {
            Ok(Some(data)) => data,
            // Events this library does not know and that hold no rows
            // (MariaDB's annotate, binlog checkpoint, GTID list, start
            // encryption): nothing to take.
            Ok(None) if MARIADB_SKIPPED_EVENTS.contains(&kind) => {
                self.advance(end);
                return Ok(None);
            }
            Ok(None) => {
                return Err(StreamFault::Fatal(self.error(format!(
                    "an event of unknown type {kind} at {}: it may hold row changes, so watch stops rather than skip it",
                    self.at
                ))));
            }
            Err(e) => {
                return Err(StreamFault::Lost(
                    self.error(format!("cannot decode an event at {}: {e}", self.at)),
                ));
            }
        };
        let out = match data {
            EventData::RotateEvent(rotate) => {
                // The server's first, artificial rotate (log position 0)
                // comes before it says whether events carry checksums, so
                // its name may end in the checksum's four bytes: it names
                // the file asked for, which is kept.
                let file = if end == 0 && rotate.name().starts_with(self.at.file.as_str()) {
                    self.at.file.clone()
                } else {
                    rotate.name().into_owned()
                };
                let between_transactions = !self.in_transaction();
                self.at = Coordinates {
                    file,
                    position: rotate.position(),
                };
                self.previous_end = None;
                // Table ids are per log file on some servers.
                self.tables.clear();
                if between_transactions {
                    self.safe = self.at.clone();
                }
                return Ok(None);
            }
            EventData::HeartbeatEvent => {
                if end != 0 {
                    self.at.position = end;
                }
                let coordinates = self.at.clone();
                Some(StreamEvent::Heartbeat { coordinates })
            }
            EventData::GtidEvent(gtid) => {
                self.gtid = Some(format!("{}:{}", uuid_text(&gtid.sid()), gtid.gno()));
                self.statement_at = None;
                None
            }
            EventData::TableMapEvent(tme) => {
                if self.statement_at.is_none() {
                    self.statement_at = previous_end;
                }
                self.map_table(&tme).await.map_err(StreamFault::Lost)?;
                None
            }
            EventData::RowsQueryEvent(_) => {
                self.statement_at = Some(Coordinates {
                    file: self.at.file.clone(),
                    position: end.saturating_sub(header.event_size() as u64),
                });
                None
            }
            EventData::RowsEvent(rows) => {
                let touched = self.touched(&rows).map_err(StreamFault::Lost)?;
                let change = Change {
                    coordinates: Coordinates {
                        file: self.at.file.clone(),
                        position: end,
                    },
                    statement_at: self.statement_at.clone(),
                    gtid: self.gtid.clone(),
                    committed_at: timestamp,
                };
                if rows
                    .flags()
                    .contains(mysql_async::binlog::RowsEventFlags::STMT_END)
                {
                    self.statement_at = None;
                }
                (!touched.is_empty()).then_some(StreamEvent::Touched {
                    ids: touched,
                    change,
                })
            }
            EventData::XidEvent(_) => Some(self.committed(end, timestamp, None)),
            EventData::QueryEvent(query) => {
                let text = query.query();
                if mentions_watched(&text, &self.watched) {
                    self.stale = true;
                    self.tables.clear();
                }
                let schema = query.schema();
                let unseen = removes_rows_unseen(&text, &schema, &self.watched)
                    .then(|| one_line(text.chars().take(300).collect::<String>()));
                let upper = text
                    .trim_start()
                    .get(..8)
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if upper.starts_with("COMMIT") || upper.starts_with("ROLLBACK") {
                    Some(self.committed(end, timestamp, None))
                } else if upper.starts_with("BEGIN") {
                    None
                } else {
                    // A statement logged on its own (DDL): its own
                    // transaction.
                    Some(self.committed(end, timestamp, unseen))
                }
            }
            _ => None,
        };
        if !matches!(out, Some(StreamEvent::Heartbeat { .. })) {
            self.advance(end);
        }
        if let Some(StreamEvent::Committed { .. }) = &out {
            self.safe = self.at.clone();
        }
        Ok(out)
    }

    fn in_transaction(&self) -> bool {
        self.safe != self.at
    }

    fn advance(&mut self, end: u64) {
        if end != 0 {
            self.at.position = end;
        }
    }

    fn committed(&mut self, end: u64, timestamp: u32, unseen: Option<String>) -> StreamEvent {
        self.advance(end);
        self.statement_at = None;
        StreamEvent::Committed {
            coordinates: self.at.clone(),
            gtid: self.gtid.take(),
            timestamp,
            unseen,
        }
    }

    /// Decides how the rows of a table id are read.
    async fn map_table(&mut self, tme: &TableMapEvent<'_>) -> Result<()> {
        let table_id = tme.table_id();
        if self.tables.contains_key(&table_id) {
            return Ok(());
        }
        let database = tme.database_name();
        let table = tme.table_name();
        let Some(index) = self.watched.iter().position(|w| {
            w.database.eq_ignore_ascii_case(&database) && w.table.eq_ignore_ascii_case(&table)
        }) else {
            self.tables.insert(table_id, Reading::Skip);
            return Ok(());
        };
        if self.stale {
            self.layouts.clear();
            self.stale = false;
        }
        let mut reading = self.reading_for(index, tme).await?;
        if matches!(reading, Reading::EveryInteger) {
            // Perhaps altered since it was read: read it again, once.
            self.layouts.remove(&index);
            reading = self.reading_for(index, tme).await?;
            if matches!(reading, Reading::EveryInteger) {
                tracing::warn!(
                    "server `{}`: {}.{} in the log does not match its definition now (altered since?); taking every integer of its rows as touched until it does",
                    self.server.name,
                    database,
                    table
                );
            }
        }
        self.tables.insert(table_id, reading);
        Ok(())
    }

    async fn reading_for(&mut self, index: usize, tme: &TableMapEvent<'_>) -> Result<Reading> {
        if !self.layouts.contains_key(&index) {
            let layout = self.read_layout(index).await?;
            self.layouts.insert(index, layout);
        }
        let layout = &self.layouts[&index];
        let columns = tme.columns_count() as usize;
        let integers_match = (0..columns).all(|i| {
            let logged = tme
                .get_column_type(i)
                .ok()
                .flatten()
                .is_some_and(is_integer_type);
            layout.integers.get(i).is_some_and(|&known| known == logged)
        });
        // A watched column gone from the definition (renamed, dropped):
        // its references may still be in the log's rows.
        let all_found = layout.slots.iter().all(Option::is_some);
        if layout.columns != columns || !integers_match || !all_found {
            return Ok(Reading::EveryInteger);
        }
        Ok(Reading::Slots(Arc::new(
            layout.slots.iter().flatten().copied().collect(),
        )))
    }

    async fn read_layout(&mut self, index: usize) -> Result<Layout> {
        if self.lookup.is_none() {
            self.lookup = Some(replication_conn(&self.server).await?);
        }
        let watched = &self.watched[index];
        let conn = self.lookup.as_mut().expect("connected");
        let rows: Vec<(String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (watched.database.as_str(), watched.table.as_str()),
            )
            .await
            .map_err(|e| Error::Query {
                server: self.server.name.clone(),
                reason: one_line(e),
            })?;
        let slots = watched
            .columns
            .iter()
            .map(|(name, _)| {
                rows.iter()
                    .position(|(column, _, _)| column.eq_ignore_ascii_case(name))
                    .map(|position| Slot {
                        position,
                        unsigned: rows[position].2.to_ascii_lowercase().contains("unsigned"),
                    })
            })
            .collect();
        let integers = rows
            .iter()
            .map(|(_, data_type, _)| {
                super::schema::INTEGER_TYPES.contains(&data_type.to_ascii_lowercase().as_str())
            })
            .collect();
        Ok(Layout {
            columns: rows.len(),
            slots,
            integers,
        })
    }

    fn touched(&self, rows: &RowsEventData<'_>) -> Result<Vec<u64>> {
        let table_id = rows.table_id();
        let reading = match self.tables.get(&table_id) {
            None | Some(Reading::Skip) => return Ok(Vec::new()),
            Some(reading) => reading.clone(),
        };
        let tme = self
            .stream
            .as_ref()
            .and_then(|s| s.get_tme(table_id))
            .ok_or_else(|| {
                self.error(format!("a row event at {} for an unmapped table", self.at))
            })?;
        let mut ids = Vec::new();
        for row in rows.rows(tme) {
            let (before, after) = row.map_err(|e| {
                self.error(format!("cannot decode a row event at {}: {e}", self.at))
            })?;
            for image in [before, after].iter().flatten() {
                match &reading {
                    Reading::Slots(slots) => {
                        for slot in slots.iter() {
                            ids.extend(image_value(image, slot.position, slot.unsigned));
                        }
                    }
                    Reading::EveryInteger => {
                        for position in 0..image.len() {
                            ids.extend(image_value(image, position, true));
                        }
                    }
                    Reading::Skip => {}
                }
            }
        }
        Ok(ids)
    }
}

/// Whether a replication error says the log asked for is gone.
fn is_purged(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("could not find first log file")
        || lower.contains("purged")
        || lower.contains("could not open log file")
}

/// A row image's integer at `position` as a blob id: BIGINT UNSIGNED values
/// above 2⁶³ arrive as negative signed integers, so the column's signedness
/// (from its definition) decides. Negative values of signed columns and
/// NULLs are no blob id.
fn image_value(image: &BinlogRow, position: usize, unsigned: bool) -> Option<u64> {
    match image.as_ref(position)? {
        BinlogValue::Value(value) => blob_id(value, unsigned),
        _ => None,
    }
}

/// A decoded integer as a blob id (see [`image_value`]).
pub(crate) fn blob_id(value: &Value, unsigned: bool) -> Option<u64> {
    match *value {
        Value::UInt(v) => Some(v),
        Value::Int(v) if v >= 0 => Some(v as u64),
        Value::Int(v) if unsigned => Some(v as u64),
        _ => None,
    }
}

fn is_integer_type(t: mysql_async::consts::ColumnType) -> bool {
    use mysql_async::consts::ColumnType::*;
    matches!(
        t,
        MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_LONGLONG
    )
}

/// MariaDB's GTID event body: sequence number (8 bytes), domain id (4),
/// flags (1), little-endian; the server id is the event header's. The
/// flags are not needed: a DDL statement's own transaction ends with its
/// query event, which the follower treats as a commit.
fn mariadb_gtid(data: &[u8], server_id: u32) -> Option<String> {
    let sequence = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    data.get(12)?;
    Some(format!("{domain}-{server_id}-{sequence}"))
}

fn uuid_text(sid: &[u8; 16]) -> String {
    let hex: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether a logged statement may change a watched table's definition:
/// it names one of the tables (any case, quoted or not). Generous on
/// purpose: a needless re-read costs one query.
fn mentions_watched(statement: &str, watched: &[WatchedTable]) -> bool {
    let lower = statement.to_ascii_lowercase();
    let ddl = ["alter", "create", "drop", "rename", "truncate"];
    let first = lower.split_whitespace().next().unwrap_or("");
    ddl.contains(&first)
        && watched
            .iter()
            .any(|w| lower.contains(&w.table.to_ascii_lowercase()))
}

/// Whether a logged statement removes rows of a watched table without row
/// events: `TRUNCATE`, `DROP TABLE`, a partition dropped, truncated or
/// exchanged, or `DROP DATABASE` of a watched table's database. `schema`
/// is the statement's default database.
fn removes_rows_unseen(statement: &str, schema: &str, watched: &[WatchedTable]) -> bool {
    let lower = statement.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '`' || c == '.' || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let names_table = |w: &WatchedTable| {
        let table = w.table.to_ascii_lowercase();
        let database = w.database.to_ascii_lowercase();
        words.iter().any(|word| *word == table)
            && (words.iter().any(|word| *word == database)
                || schema.eq_ignore_ascii_case(&w.database))
    };
    match words.as_slice() {
        ["truncate", ..] => watched.iter().any(names_table),
        ["drop", "table" | "tables", ..] => watched.iter().any(names_table),
        ["drop", "database" | "schema", rest @ ..] => watched
            .iter()
            .any(|w| rest.contains(&w.database.to_ascii_lowercase().as_str())),
        ["alter", "table", ..] => {
            let partition = words
                .windows(2)
                .any(|p| matches!(p, ["drop" | "truncate" | "exchange", "partition"]));
            partition && watched.iter().any(names_table)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_removed_without_row_events_are_noticed() {
        let watched = [WatchedTable {
            database: "Shard".into(),
            table: "Attachment".into(),
            columns: vec![("BlobStorageID".into(), Watched::Reference(0))],
        }];
        let unseen = |sql: &str, schema: &str| removes_rows_unseen(sql, schema, &watched);
        assert!(unseen("TRUNCATE TABLE `Shard`.`Attachment`", ""));
        assert!(unseen("truncate attachment", "shard"));
        assert!(unseen("DROP TABLE IF EXISTS Shard.Attachment", ""));
        assert!(unseen("DROP DATABASE `Shard`", ""));
        assert!(unseen("ALTER TABLE Attachment DROP PARTITION p1", "Shard"));
        assert!(!unseen("TRUNCATE TABLE Other.Attachment", "Other"));
        assert!(!unseen("ALTER TABLE Shard.Attachment ADD COLUMN x INT", ""));
        assert!(!unseen("DELETE FROM Shard.Attachment", ""));
        assert!(!unseen("DROP TABLE Shard.AttachmentOld", ""));
    }

    #[test]
    fn ids_above_two_to_the_63_keep_their_value() {
        let above = (1u64 << 63) + 5;
        assert_eq!(blob_id(&Value::Int(above as i64), true), Some(above));
        assert_eq!(blob_id(&Value::UInt(above), false), Some(above));
        assert_eq!(blob_id(&Value::Int(-1), true), Some(u64::MAX));
        assert_eq!(blob_id(&Value::Int(-1), false), None);
        assert_eq!(blob_id(&Value::Int(7), false), Some(7));
        assert_eq!(blob_id(&Value::NULL, true), None);
        assert_eq!(blob_id(&Value::Bytes(b"12".to_vec()), true), None);
    }

    #[test]
    fn mariadb_gtid_events_are_read() {
        let mut body = Vec::new();
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.push(1);
        assert_eq!(mariadb_gtid(&body, 7), Some("3-7-42".to_owned()));
        assert_eq!(mariadb_gtid(&body[..12], 7), None);
    }

    #[test]
    fn purged_logs_are_told_from_other_replication_errors() {
        assert!(is_purged(
            "ERROR 1236 (HY000): Could not find first log file name in binary log index file"
        ));
        assert!(is_purged(
            "ERROR 1236: Cannot replicate because the master purged required binary logs"
        ));
        assert!(!is_purged(
            "ERROR 1236: log event entry exceeded max_allowed_packet"
        ));
        assert!(!is_purged(
            "ERROR 1236: A slave with the same server_uuid/server_id as this slave has connected to the master"
        ));
    }

    #[test]
    fn ddl_on_a_watched_table_is_noticed() {
        let watched = [WatchedTable {
            database: "Shard".into(),
            table: "MessageData".into(),
            columns: vec![("Body".into(), Watched::Reference(0))],
        }];
        assert!(mentions_watched(
            "ALTER TABLE `Shard`.`MessageData` ADD COLUMN x INT FIRST",
            &watched
        ));
        assert!(mentions_watched(
            "alter table messagedata drop column y",
            &watched
        ));
        assert!(!mentions_watched("ALTER TABLE Other ADD z INT", &watched));
        assert!(!mentions_watched(
            "INSERT INTO MessageData VALUES (1)",
            &watched
        ));
    }

    #[test]
    fn problems_name_their_fix() {
        let good = LogSettings {
            log_bin: true,
            format: "ROW".into(),
            row_image: "FULL".into(),
            log_replica_updates: false,
            server_id: 1,
            is_replica: false,
            compressed: false,
        };
        assert!(settings_problems(&good).is_empty());
        let minimal = LogSettings {
            row_image: "MINIMAL".into(),
            ..good.clone()
        };
        assert!(settings_problems(&minimal)[0].contains("binlog_row_image=FULL"));
        let statement = LogSettings {
            format: "MIXED".into(),
            ..good.clone()
        };
        assert!(settings_problems(&statement)[0].contains("binlog_format=ROW"));
        let compressed = LogSettings {
            compressed: true,
            ..good.clone()
        };
        assert!(settings_problems(&compressed)[0].contains("log_bin_compress=OFF"));
        let replica = LogSettings {
            is_replica: true,
            ..good.clone()
        };
        assert!(settings_problems(&replica)[0].contains("log_slave_updates"));
        let off = LogSettings {
            log_bin: false,
            ..good
        };
        assert_eq!(settings_problems(&off).len(), 1);
    }
}
