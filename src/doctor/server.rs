//! The server checks: reachable, version, TLS, the account's grants,
//! read-only sessions, replication and its lag, and the connections the
//! check may open against `max_connections`.

use std::collections::BTreeSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::report::{Mark, Report};
use super::{Doctor, field, text};
use crate::config::{Server, Tls};
use crate::db::dialect::{self, ServerVersion};
use crate::db::{self, address};
use crate::error::{Error, Result, one_line};

/// What one server told about itself.
#[derive(Default)]
pub(super) struct ServerFacts {
    pub(super) reachable: bool,
    /// `user@host` as CURRENT_USER() gives it.
    pub(super) account: Option<(String, String)>,
    version: ServerVersion,
}

/// `'user'@'host'` for a GRANT statement.
pub(super) fn account_sql(account: &Option<(String, String)>) -> String {
    match account {
        Some((user, host)) => format!(
            "'{}'@'{}'",
            user.replace('\'', "''"),
            host.replace('\'', "''")
        ),
        None => "'blobcheck'@'%'".to_owned(),
    }
}

impl Doctor<'_> {
    /// The section of server `i`, from its connection (or why there is
    /// none).
    pub(super) async fn server(
        &self,
        report: &mut Report<'_>,
        i: usize,
        connection: Result<Conn>,
    ) -> Result<ServerFacts> {
        let server = &self.db.servers[i];
        report.section(if server.discovered {
            format!("server {} (discovered)", server.name)
        } else {
            format!("server {}", server.name)
        })?;
        let mut facts = ServerFacts::default();
        let mut conn = match connection {
            Ok(conn) => conn,
            Err(e) => {
                self.unreachable(report, server, &e)?;
                return Ok(facts);
            }
        };
        facts.reachable = true;
        self.identity(report, server, &mut conn, &mut facts).await?;
        self.tls(report, server, &mut conn).await?;
        self.grants(report, i, &mut conn, &facts).await?;
        self.read_only(report, &mut conn).await?;
        self.replication(report, &mut conn, &facts).await?;
        self.connections(report, &mut conn).await?;
        let followed =
            self.config.blobs.server == i || self.config.references.iter().any(|r| r.server == i);
        if self.watch && followed {
            self.watch_readiness(report, &mut conn).await?;
        }
        Ok(facts)
    }

    /// Whether `blobcheck watch` could follow this server's log (`doctor
    /// --watch`): what would stop it is a `FAIL`.
    async fn watch_readiness(&self, report: &mut Report<'_>, conn: &mut Conn) -> Result<()> {
        use crate::db::binlog;
        let version = match binlog::server_version(conn).await {
            Ok(version) => version,
            Err(_) => return Ok(()),
        };
        let grant = binlog::replication_grant(version, "<account>");
        let settings = match binlog::log_settings(conn).await {
            Ok(settings) => settings,
            Err(e) => {
                return report.line_fix(
                    Mark::Fail,
                    format!(
                        "for watch: cannot read the binary log settings or replica status: {}",
                        one_line(e)
                    ),
                    Some(grant),
                );
            }
        };
        let problems = binlog::settings_problems(&settings);
        if !problems.is_empty() {
            for problem in problems {
                report.line(Mark::Fail, format!("for watch: {problem}"))?;
            }
            return Ok(());
        }
        if let Err(e) = binlog::log_end(conn).await {
            return report.line_fix(
                Mark::Fail,
                format!(
                    "for watch: the account may not read the binary log position: {}",
                    one_line(e)
                ),
                Some(grant),
            );
        }
        if settings.server_id == binlog::DEFAULT_REPLICATION_SERVER_ID {
            return report.line_fix(
                Mark::Fail,
                format!(
                    "for watch: the server's server_id {} is the id watch registers with by default",
                    settings.server_id
                ),
                Some("pass watch --server-id with an id no server or replica uses".to_owned()),
            );
        }
        report.line(
            Mark::Ok,
            format!(
                "for watch: binary log on, binlog_format ROW, binlog_row_image FULL{}; the account may read the log position",
                if settings.is_replica {
                    ", log_slave_updates on this replica"
                } else {
                    ""
                }
            ),
        )
    }

    /// A server that cannot be reached, with what to check.
    fn unreachable(&self, report: &mut Report<'_>, server: &Server, e: &Error) -> Result<()> {
        let reason = match e {
            Error::Connect { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        let fix = match (
            reason.contains("Access denied"),
            &self.config.discovery,
            server.discovered,
        ) {
            (true, Some(_), true) => {
                "check the user and password of [discovery] (user, password_env, password_file or password_credential)"
                    .to_owned()
            }
            (false, Some(d), true) => format!(
                "{} lists this shard (ShardID {}): check its Hostname and Port there, that the server runs, and that this host may connect to it",
                d.table,
                server.name.trim_start_matches("shard")
            ),
            (true, _, _) => format!(
                "check the user and password of [servers.{}] (url, password_env, password_file or password_credential)",
                server.name
            ),
            (false, _, _) => format!(
                "check host and port in the url of [servers.{}], that the server runs, and that this host may connect to it",
                server.name
            ),
        };
        report.line_fix(
            Mark::Fail,
            format!("cannot connect to {}: {reason}", address(server)),
            Some(fix),
        )
    }

    /// The version and the account, into `facts`.
    async fn identity(
        &self,
        report: &mut Report<'_>,
        server: &Server,
        conn: &mut Conn,
        facts: &mut ServerFacts,
    ) -> Result<()> {
        let identity: std::result::Result<Option<(String, String)>, _> =
            conn.query_first(db::VERSION_AND_ACCOUNT_SQL).await;
        match identity {
            Ok(Some((version, account))) => {
                facts.version = ServerVersion::parse(&version);
                facts.account = account
                    .rsplit_once('@')
                    .map(|(u, h)| (u.to_owned(), h.to_owned()));
                let version = one_line(&version);
                report.line(
                    Mark::Ok,
                    format!("reachable at {}: version {version}", address(server)),
                )?;
                if !facts.version.is_tested() {
                    report.line(
                        Mark::Warn,
                        format!(
                            "version {version} is older than blobcheck is tested with (MySQL 5.7, MariaDB 10.3)"
                        ),
                    )?;
                }
                Ok(())
            }
            Ok(None) => report.line(
                Mark::Ok,
                format!("reachable at {}: version unknown", address(server)),
            ),
            Err(e) => report.line(
                Mark::Warn,
                format!(
                    "reachable at {}, but SELECT VERSION() failed: {}",
                    address(server),
                    one_line(e)
                ),
            ),
        }
    }

    /// Whether the session is READ ONLY as blobcheck asks, and whether the
    /// server is a read-only replica.
    async fn read_only(&self, report: &mut Report<'_>, conn: &mut Conn) -> Result<()> {
        let [first, second] = dialect::READ_ONLY_SQL;
        let read_only: std::result::Result<Option<Row>, _> = match conn.query_first(first).await {
            Ok(row) => Ok(row),
            Err(_) => conn.query_first(second).await,
        };
        let row = match read_only {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(()),
            Err(e) => {
                return report.line(
                    Mark::Warn,
                    format!("cannot read @@read_only: {}", one_line(e)),
                );
            }
        };
        let on =
            |v: Option<String>| v.is_some_and(|v| !(v == "0" || v.eq_ignore_ascii_case("OFF")));
        if on(text(row.as_ref(0))) {
            report.line(
                Mark::Ok,
                "sessions are READ ONLY (blobcheck sets this on every connection)",
            )?;
        } else {
            report.line(
                Mark::Fail,
                "sessions are not READ ONLY although blobcheck asks for it",
            )?;
        }
        if on(text(row.as_ref(1))) {
            report.line(Mark::Info, "read_only is ON: a replica")
        } else {
            report.line(
                Mark::Info,
                "read_only is OFF: a primary or a writable replica (reading a replica spares the primary)",
            )
        }
    }

    /// Compares the connections a check opens at most with what the server
    /// accepts: over half of `max_connections` leaves the application too
    /// few.
    async fn connections(&self, report: &mut Report<'_>, conn: &mut Conn) -> Result<()> {
        let cap = self.config.check.max_connections_per_server;
        let max: std::result::Result<Option<u64>, _> =
            conn.query_first(db::MAX_CONNECTIONS_SQL).await;
        match max {
            Ok(Some(max)) if (cap as u64).saturating_mul(2) > max => report.line_fix(
                Mark::Warn,
                format!(
                    "blobcheck may open {cap} connections, more than half of max_connections {max}"
                ),
                Some(format!(
                    "set [check] max_connections_per_server (or --max-connections-per-server) to {} or less",
                    (max / 2).max(1)
                )),
            ),
            Ok(Some(max)) => report.line(
                Mark::Ok,
                format!("blobcheck opens at most {cap} of max_connections {max}"),
            ),
            Ok(None) => Ok(()),
            Err(e) => report.line(
                Mark::Warn,
                format!("cannot read @@max_connections: {}", one_line(e)),
            ),
        }
    }

    async fn tls(&self, report: &mut Report<'_>, server: &Server, conn: &mut Conn) -> Result<()> {
        let mode = match &server.tls {
            Tls::Disabled => "disabled",
            Tls::Required => "required",
            Tls::VerifyCa(_) => "verify_ca",
            Tls::VerifyIdentity(_) => "verify_identity",
        };
        let cipher: Option<(String, String)> =
            conn.query_first(db::SSL_CIPHER_SQL).await.ok().flatten();
        match (
            cipher.map(|(_, c)| c).filter(|c| !c.is_empty()),
            &server.tls,
        ) {
            (Some(cipher), _) => report.line(
                Mark::Ok,
                format!(
                    "connection encrypted ({}; ssl_mode {mode})",
                    one_line(cipher)
                ),
            ),
            (None, Tls::Disabled) => report.line(
                Mark::Info,
                "connection not encrypted (ssl_mode disabled; set ssl_mode to encrypt it)",
            ),
            (None, _) => report.line(
                Mark::Fail,
                format!("connection not encrypted although ssl_mode is {mode}"),
            ),
        }
    }

    /// What the account may do: only read (ok), or more (a warning with the
    /// grants of a SELECT-only account).
    async fn grants(
        &self,
        report: &mut Report<'_>,
        server: usize,
        conn: &mut Conn,
        facts: &ServerFacts,
    ) -> Result<()> {
        let who = match &facts.account {
            Some((user, host)) => format!("account {user}@{host}"),
            None => "account".to_owned(),
        };
        let grants = match dialect::grants(conn).await {
            Ok(grants) => grants,
            Err(e) => {
                return report.line(
                    Mark::Warn,
                    format!("cannot read the {who}'s grants: {}", one_line(e)),
                );
            }
        };
        // Never print a line itself: it may carry a password hash.
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for grant in &grants {
            let object = one_line(&grant.object);
            reads.extend(grant.reads().map(|p| format!("{p} ON {object}")));
            writes.extend(grant.beyond_reading().map(|p| format!("{p} ON {object}")));
        }
        if writes.is_empty() {
            let what = if reads.is_empty() {
                "no privileges shown".to_owned()
            } else {
                reads.join(", ")
            };
            return report.line(Mark::Ok, format!("{who} can only read: {what}"));
        }
        let shown = writes.len().min(6);
        report.line_fix(
            Mark::Warn,
            format!(
                "the account can write ({who} has {}{}): use a SELECT-only account (blobcheck's sessions are READ ONLY, so the check itself still cannot write)",
                writes[..shown].join(", "),
                if writes.len() > shown {
                    format!(" and {} more", writes.len() - shown)
                } else {
                    String::new()
                }
            ),
            Some(self.select_only_account(server)),
        )
    }

    /// The statements that make a SELECT-only account for what the check
    /// reads on `server`.
    fn select_only_account(&self, server: usize) -> String {
        let databases: BTreeSet<String> = std::iter::once(&self.config.blobs)
            .filter(|b| b.server == server)
            .map(|b| b.table.database.quoted())
            .chain(
                self.config
                    .references
                    .iter()
                    .filter(|r| r.server == server)
                    .map(|r| r.table.database.quoted()),
            )
            .collect();
        let grants: Vec<String> = databases
            .iter()
            .map(|d| format!("GRANT SELECT ON {d}.* TO 'blobcheck'@'%';"))
            .collect();
        format!(
            "CREATE USER 'blobcheck'@'%' IDENTIFIED BY '…'; {}",
            grants.join(" ")
        )
    }

    /// The replica status: not a replica, the lag, a stopped replication,
    /// or why it cannot be read.
    async fn replication(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        facts: &ServerFacts,
    ) -> Result<()> {
        let mut result = None;
        for sql in dialect::REPLICA_STATUS_SQL {
            match conn.query::<Row, _>(sql).await {
                Err(e) if dialect::is_parse_error(&e) => continue,
                other => {
                    result = Some(other);
                    break;
                }
            }
        }
        match result {
            Some(Ok(rows)) => self.replica(report, &rows),
            Some(Err(e)) => self.replica_status_unreadable(report, &e, facts),
            None => report.line(
                Mark::Info,
                format!(
                    "{}: replica lag unknown",
                    dialect::no_replica_status_statement()
                ),
            ),
        }
    }

    /// Why the replica status could not be read; for a missing privilege,
    /// the grant.
    fn replica_status_unreadable(
        &self,
        report: &mut Report<'_>,
        e: &mysql_async::Error,
        facts: &ServerFacts,
    ) -> Result<()> {
        let enforced = self.config.check.max_lag.is_some();
        let mark = if enforced { Mark::Warn } else { Mark::Info };
        let consequence = if enforced {
            "max_lag cannot be enforced here"
        } else {
            "replica lag unknown"
        };
        if !dialect::is_access_denied(e) {
            return report.line(
                mark,
                format!(
                    "cannot read replica status ({}): {consequence}",
                    one_line(e)
                ),
            );
        }
        report.line_fix(
            mark,
            format!(
                "cannot read replica status: {consequence}; grant SLAVE MONITOR (MariaDB 10.5+) or REPLICATION CLIENT (MySQL, older MariaDB)"
            ),
            Some(format!(
                "GRANT {} ON *.* TO {};",
                facts.version.replica_monitor_privilege(),
                account_sql(&facts.account)
            )),
        )
    }

    /// The replica status rows, one per replication channel: the largest
    /// lag, or the channels that do not replicate.
    fn replica(&self, report: &mut Report<'_>, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return report.line(Mark::Ok, "not a replica");
        }
        let mut lag: Option<u64> = Some(0);
        let mut stopped = Vec::new();
        for row in rows {
            let seconds = field(row, &dialect::LAG_COLUMNS)
                .flatten()
                .and_then(|s| s.parse::<u64>().ok());
            match seconds {
                Some(s) => lag = lag.map(|l| l.max(s)),
                None => {
                    lag = None;
                    stopped.push(stopped_channel(row));
                }
            }
        }
        let Some(seconds) = lag else {
            return report.line_fix(
                Mark::Warn,
                format!(
                    "replica, replication stopped: {}: the data is stale, findings may be false or missing",
                    stopped.join("; ")
                ),
                Some("START SLAVE; on this replica, or point the url at a replica that replicates"),
            );
        };
        self.replica_lag(report, seconds, rows.len())
    }

    /// A replica that replicates, `seconds` behind, against `max_lag` and
    /// the settle delay.
    fn replica_lag(&self, report: &mut Report<'_>, seconds: u64, channels: usize) -> Result<()> {
        let settings = &self.config.check;
        let channels = if channels > 1 {
            format!(" ({channels} channels)")
        } else {
            String::new()
        };
        if let Some(max) = settings.max_lag
            && seconds as f64 > max
        {
            report.line(
                Mark::Warn,
                format!(
                    "replica{channels}, lag {seconds} s, above max_lag {max} s: the check pauses until it drops"
                ),
            )
        } else if settings.confirmations > 0 && seconds as f64 >= settings.settle_delay {
            report.line_fix(
                Mark::Warn,
                format!(
                    "replica{channels}, lag {seconds} s, not below settle_delay {} s: confirmation cannot tell a change in flight from an inconsistency",
                    settings.settle_delay
                ),
                Some("raise [check] settle_delay above the lag, or wait for the replica to catch up"),
            )
        } else {
            report.line(
                Mark::Ok,
                format!("replica{channels}, replication running, lag {seconds} s"),
            )
        }
    }
}

/// A replication channel that does not replicate: `channel `x` (IO No,
/// SQL Yes, last error: …)`.
fn stopped_channel(row: &Row) -> String {
    let channel = field(row, &dialect::CHANNEL_COLUMNS)
        .flatten()
        .filter(|c| !c.is_empty())
        .map(|c| format!("channel `{}`", one_line(c)))
        .unwrap_or_else(|| "replication".to_owned());
    let io = field(row, &dialect::IO_RUNNING_COLUMNS)
        .flatten()
        .unwrap_or_default();
    let sql = field(row, &dialect::SQL_RUNNING_COLUMNS)
        .flatten()
        .unwrap_or_default();
    let error = field(row, &dialect::LAST_ERROR_COLUMNS)
        .flatten()
        .filter(|e| !e.is_empty())
        .map(|e| format!(", last error: {}", one_line(e)))
        .unwrap_or_default();
    format!("{channel} (IO {io}, SQL {sql}{error})")
}
