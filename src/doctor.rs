//! `blobcheck doctor`: checks, before a long run, everything a check needs
//! and says what to fix. It never stops at the first problem: every server,
//! the blob table and every reference column get their lines, each with a
//! mark, then one verdict.
//!
//! ```text
//! server global
//!   ok    reachable at 10.0.0.1:3306: version 10.11.6-MariaDB
//!   WARN  the account can write (account root@% has ALL PRIVILEGES ON *.*): use a SELECT-only account …
//!         fix: CREATE USER 'blobcheck'@'%' IDENTIFIED BY '…'; GRANT SELECT ON `ProtonMailGlobal`.* TO 'blobcheck'@'%';
//!
//! reference shard1:ProtonMailShard.MessageData.Body
//!   ok    column `Body` bigint(20) unsigned NOT NULL
//!   FAIL  no index starts with `Body`: counting its references would read the whole table
//!         fix: ALTER TABLE `ProtonMailShard`.`MessageData` ADD INDEX `Body` (`Body`), ALGORITHM=INPLACE, LOCK=NONE;
//!
//! verdict: NOT READY: 1 problem, 1 warning; fix the FAIL lines, then run blobcheck doctor again
//!   FAIL  reference shard1:ProtonMailShard.MessageData.Body: no index starts with `Body`: …
//!         fix: ALTER TABLE …
//! ```
//!
//! Marks: `ok`; `info` (worth knowing, nothing to do); `skip` (not checked
//! because of a problem reported above); `WARN` (the check runs, but
//! something deserves attention); `FAIL` (the check would not run, or would
//! read whole tables). Ready means no `FAIL`: warnings alone do not block,
//! because the check is safe in spite of them (an account that can write is
//! still confined to READ ONLY sessions).
//!
//! The schema checks re-read `information_schema` the way [`db::inspect`]
//! does, but per column and without stopping; when every server answers,
//! [`db::inspect`] itself runs too, and its schema (the exact indexes the
//! check would use) is what the EXPLAIN lines are about. With `[discovery]`,
//! the shards are read first, as the check reads them, and checked like
//! configured servers.

use std::collections::BTreeSet;
use std::io::Write;

use futures_util::future::join_all;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, Row, Value};

use crate::config::{Config, Ident, Server, TableName, Tls};
use crate::db::{
    self, BlobScan, ColumnInfo, Databases, INTEGER_TYPES, ReferenceScan, Schema, ServerIdent,
    address, dialect,
};
use crate::discovery;
use crate::error::{Error, Result, one_line};
use crate::plan::IdRange;

/// Access types of an index lookup or range scan.
const INDEX_ACCESS: [&str; 5] = ["range", "ref", "ref_or_null", "eq_ref", "const"];

/// `Extra` notes that mean the server reads nothing at all.
const NOTHING_TO_READ: [&str; 3] = [
    "Impossible WHERE",
    "No matching min/max row",
    "no matching row in const table",
];

/// Ids the point-read queries are explained with: below 2⁶³, at it and at
/// the very end, so both forms of the IN list are covered.
const SAMPLE_IDS: [u64; 3] = [1, 1 << 63, u64::MAX];

/// The status of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Info,
    Skip,
    Warn,
    Fail,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Info => "info",
            Mark::Skip => "skip",
            Mark::Warn => "WARN",
            Mark::Fail => "FAIL",
        }
    }
}

/// A warning or a problem, kept for the verdict.
struct Noted {
    mark: Mark,
    subject: String,
    message: String,
    fix: Option<String>,
}

/// Writes the lines and keeps the warnings and problems.
struct Report<'a> {
    out: &'a mut dyn Write,
    subject: String,
    noted: Vec<Noted>,
}

fn output_error(e: std::io::Error) -> Error {
    Error::Output {
        path: "output".into(),
        reason: one_line(e),
    }
}

impl Report<'_> {
    fn write(&mut self, text: &str) -> Result<()> {
        self.out.write_all(text.as_bytes()).map_err(output_error)
    }

    /// Starts a section about `subject`.
    fn section(&mut self, subject: String) -> Result<()> {
        self.write(&format!("\n{subject}\n"))?;
        self.subject = subject;
        Ok(())
    }

    fn line(&mut self, mark: Mark, message: impl Into<String>) -> Result<()> {
        self.line_fix(mark, message, None::<String>)
    }

    fn line_fix(
        &mut self,
        mark: Mark,
        message: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Result<()> {
        let message = message.into();
        let fix = fix.map(Into::into);
        let mut text = format!("  {:<4}  {message}\n", mark.as_str());
        if let Some(fix) = &fix {
            // A remedy for a problem; for what is only worth knowing, a hint.
            let word = if matches!(mark, Mark::Warn | Mark::Fail) {
                "fix"
            } else {
                "hint"
            };
            text.push_str(&format!("        {word}: {fix}\n"));
        }
        self.write(&text)?;
        if matches!(mark, Mark::Warn | Mark::Fail) {
            self.noted.push(Noted {
                mark,
                subject: self.subject.clone(),
                message,
                fix,
            });
        }
        Ok(())
    }

    fn problems(&self) -> usize {
        self.noted.iter().filter(|n| n.mark == Mark::Fail).count()
    }

    /// The last lines: the verdict, then every problem and warning again
    /// with its fix, problems first.
    fn verdict(&mut self) -> Result<bool> {
        let problems = self.problems();
        let warnings = self.noted.len() - problems;
        let verdict = match (problems, warnings) {
            (0, 0) => "verdict: READY: blobcheck check can run".to_owned(),
            (0, w) => format!(
                "verdict: READY with {}: blobcheck check can run",
                plural(w as u64, "warning")
            ),
            (p, w) => format!(
                "verdict: NOT READY: {}, {}; fix the FAIL lines, then run blobcheck doctor again",
                plural(p as u64, "problem"),
                plural(w as u64, "warning")
            ),
        };
        let mut text = format!("\n{verdict}\n");
        let mut noted: Vec<&Noted> = self.noted.iter().collect();
        noted.sort_by_key(|n| n.mark != Mark::Fail);
        for n in noted {
            text.push_str(&format!(
                "  {:<4}  {}: {}\n",
                n.mark.as_str(),
                n.subject,
                n.message
            ));
            if let Some(fix) = &n.fix {
                text.push_str(&format!("        fix: {fix}\n"));
            }
        }
        self.write(&text)?;
        self.out.flush().map_err(output_error)?;
        Ok(problems == 0)
    }
}

/// Checks every server, the blob table, every reference column and the plan
/// of every query the check runs; writes one line per fact and a verdict.
/// Returns whether the check is ready to run (no `FAIL` line). Only an
/// output that cannot be written is an error.
pub async fn run(config: &Config, out: &mut dyn Write) -> Result<bool> {
    let mut report = Report {
        out,
        subject: String::new(),
        noted: Vec::new(),
    };
    report.write(&format!(
        "blobcheck doctor: {}, blob table {} on `{}`, {}{}\n",
        plural(config.servers.len() as u64, "server"),
        config.blobs.table,
        config.servers[config.blobs.server].name,
        plural(config.references.len() as u64, "reference column"),
        match &config.discovery {
            Some(d) => format!(
                ", mail shards from {} on `{}`",
                d.table, config.servers[d.server].name
            ),
            None => String::new(),
        }
    ))?;

    // The check adds the discovered shards first; so does the doctor. If
    // that fails, what is configured is still checked.
    let expanded = discover(config, &mut report).await?;
    let config = expanded.as_ref().unwrap_or(config);

    // Connect to every server at once, so unreachable ones cost one
    // timeout in all rather than one each, with the check's own connection
    // settings (TLS included).
    let connections = join_all(config.servers.iter().map(db::connect_once)).await;
    let mut pools = Vec::with_capacity(connections.len());
    let mut conns = Vec::with_capacity(connections.len());
    for connection in connections {
        match connection {
            Ok((pool, conn)) => {
                pools.push(pool);
                conns.push(Ok(conn));
            }
            Err(e) => {
                // Never used: the server is reported unreachable and skipped.
                pools.push(Pool::new(OptsBuilder::default()));
                conns.push(Err(e));
            }
        }
    }
    let databases = Databases::from_pools(config.servers.clone(), pools, 1);
    let doctor = Doctor {
        config,
        db: &databases,
    };
    let result = doctor.run(&mut report, conns).await;
    databases.disconnect().await;
    result?;
    report.verdict()
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The `[discovery]` section: reads the mail shards as the check does and
/// returns the configuration with them added.
async fn discover(config: &Config, report: &mut Report<'_>) -> Result<Option<Config>> {
    let Some(d) = &config.discovery else {
        return Ok(None);
    };
    let server = &config.servers[d.server];
    report.section(format!(
        "discovery {} on {} (mail shards: Type = {})",
        d.table, server.name, d.shard_type
    ))?;
    let shards = match discovery::read_shards(config, d).await {
        Ok(shards) => shards,
        Err(e) => {
            report.line_fix(
                Mark::Fail,
                format!("cannot read the mail shards: {e}"),
                Some(format!(
                    "check [discovery] server and table; the account needs SELECT on {}",
                    d.table
                )),
            )?;
            return Ok(None);
        }
    };
    // The Shard table is small and read once per run: a poor plan is worth
    // a warning, never a failure.
    if let Ok((pool, mut conn)) = db::connect_once(server).await {
        let sql = discovery::shards_sql(d);
        let label = format!("EXPLAIN {:<13}", "shards");
        match conn.query::<Row, _>(format!("EXPLAIN {sql}")).await {
            Ok(rows) => {
                let plans = plan_rows(&rows);
                let shown = show_plans(&plans);
                match judge(&plans, &Expect::AnyIndex) {
                    None => report.line(Mark::Ok, format!("{label} {shown}"))?,
                    Some(problem) => report.line_fix(
                        Mark::Warn,
                        format!("{label} {shown}: {problem}"),
                        Some(format!(
                            "ALTER TABLE {} ADD INDEX `Type` (`Type`), ALGORITHM=INPLACE, LOCK=NONE;",
                            d.table.quoted()
                        )),
                    )?,
                }
            }
            Err(e) => report.line(
                Mark::Warn,
                format!("EXPLAIN shards failed: {}", one_line(e)),
            )?,
        }
        drop(conn);
        let _ = pool.disconnect().await;
    }
    if shards.is_empty() {
        report.line_fix(
            Mark::Warn,
            format!(
                "no mail shard in {} (no row with Type = {}): only the configured references are checked",
                d.table, d.shard_type
            ),
            Some("check [discovery] type: the Shard table's Type of mail shards"),
        )?;
    } else {
        let described: Vec<String> = shards
            .iter()
            .map(|s| {
                one_line(format!(
                    "{} ({}:{}/{})",
                    s.server_name(),
                    s.host,
                    s.port,
                    s.database
                ))
            })
            .collect();
        report.line(
            Mark::Ok,
            format!(
                "{}: {}",
                plural(shards.len() as u64, "mail shard"),
                described.join(", ")
            ),
        )?;
    }
    match discovery::add_shards(config, d, &shards) {
        Ok(expanded) => Ok(Some(expanded)),
        Err(e) => {
            report.line(Mark::Fail, e.to_string())?;
            Ok(None)
        }
    }
}

/// What one server told about itself.
#[derive(Default)]
struct ServerFacts {
    reachable: bool,
    /// `user@host` as CURRENT_USER() gives it.
    account: Option<(String, String)>,
    mariadb: bool,
    /// (major, minor) of the version.
    version: Option<(u32, u32)>,
}

struct Doctor<'a> {
    config: &'a Config,
    db: &'a Databases,
}

/// A table's columns as `information_schema` gives them.
struct ColumnRow {
    name: String,
    data_type: String,
    column_type: String,
    nullable: bool,
}

impl ColumnRow {
    /// `bigint(20) unsigned NOT NULL`.
    fn type_text(&self) -> String {
        format!(
            "{}{}",
            self.column_type,
            if self.nullable { " NULL" } else { " NOT NULL" }
        )
    }

    fn is_integer(&self) -> bool {
        INTEGER_TYPES.contains(&self.data_type.as_str())
    }

    fn info(&self) -> ColumnInfo {
        ColumnInfo {
            data_type: self.data_type.clone(),
            unsigned: self.column_type.to_ascii_lowercase().contains("unsigned"),
            nullable: self.nullable,
        }
    }
}

fn quote(name: &str) -> String {
    ServerIdent(name.to_owned()).quoted()
}

/// Whether a table is there, as far as the account can see.
enum TableLookup {
    NoDatabase,
    NoTable { others: Vec<String> },
    Found(Vec<ColumnRow>),
}

/// One EXPLAIN row, the parts that matter.
struct PlanRow {
    access: String,
    key: String,
    rows: String,
    extra: String,
}

enum Expect<'a> {
    /// An index lookup or range scan on this index, no temporary table, no
    /// filesort.
    Index(&'a str),
    /// The same through whichever index.
    AnyIndex,
    /// Two index dives: MIN and MAX of the primary key.
    OptimizedAway,
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        other => Some(other.as_sql(true)),
    }
}

/// The first of `names` that the row has, as text (`Some(None)`: NULL).
fn field(row: &Row, names: &[&str]) -> Option<Option<String>> {
    names.iter().find_map(|name| {
        row.columns_ref()
            .iter()
            .position(|c| c.name_str().eq_ignore_ascii_case(name))
            .map(|i| text(row.as_ref(i)))
    })
}

/// `(major, minor)` of a version string such as `10.11.6-MariaDB-log`.
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `'user'@'host'` for a GRANT statement.
fn account_sql(account: &Option<(String, String)>) -> String {
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
    async fn run(&self, report: &mut Report<'_>, connections: Vec<Result<Conn>>) -> Result<()> {
        let mut facts = Vec::with_capacity(connections.len());
        for (i, connection) in connections.into_iter().enumerate() {
            facts.push(self.server(report, i, connection).await?);
        }
        let reachable: Vec<bool> = facts.iter().map(|f| f.reachable).collect();

        // The check's own schema check, when it can run at all: its schema
        // is exactly what the check would use.
        let inspected = if reachable.iter().all(|&r| r) {
            Some(db::inspect(self.config, self.db).await)
        } else {
            None
        };
        let schema = match &inspected {
            Some(Ok(schema)) => Some(schema),
            _ => None,
        };

        self.blob_table(report, &reachable, &facts, schema).await?;
        for i in 0..self.config.references.len() {
            self.reference(report, &reachable, &facts, i, schema)
                .await?;
        }

        // What `blobcheck check` itself would say: the same problem as a
        // FAIL above, or (should the two ever disagree) a FAIL of its own.
        if let Some(Err(e)) = inspected {
            report.section("blobcheck check".to_owned())?;
            if report.problems() == 0 {
                report.line(Mark::Fail, format!("would stop with: {e}"))?;
            } else {
                report.line(
                    Mark::Info,
                    format!("would stop at the first problem above: {e}"),
                )?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Servers.

    async fn server(
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
                let reason = match &e {
                    Error::Connect { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                let fix = match (
                    reason.contains("Access denied"),
                    &self.config.discovery,
                    server.discovered,
                ) {
                    (true, Some(_), true) => {
                        "check the user and password of [discovery] (user, password_env or password_file)".to_owned()
                    }
                    (false, Some(d), true) => format!(
                        "{} lists this shard (ShardID {}): check its Hostname and Port there, that the server runs, and that this host may connect to it",
                        d.table,
                        server.name.trim_start_matches("shard")
                    ),
                    (true, _, _) => format!(
                        "check the user and password of [servers.{}] (url, password_env or password_file)",
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
                )?;
                return Ok(facts);
            }
        };
        facts.reachable = true;

        let identity: std::result::Result<Option<(String, String)>, _> =
            conn.query_first("SELECT VERSION(), CURRENT_USER()").await;
        match identity {
            Ok(Some((version, account))) => {
                facts.mariadb = version.contains("MariaDB");
                facts.version = parse_version(&version);
                facts.account = account
                    .rsplit_once('@')
                    .map(|(u, h)| (u.to_owned(), h.to_owned()));
                let version = one_line(&version);
                let supported = match (facts.mariadb, facts.version) {
                    (true, Some(v)) => v >= (10, 3),
                    (false, Some(v)) => v >= (5, 7),
                    (_, None) => true,
                };
                report.line(
                    Mark::Ok,
                    format!("reachable at {}: version {version}", address(server)),
                )?;
                if !supported {
                    report.line(
                        Mark::Warn,
                        format!(
                            "version {version} is older than blobcheck is tested with (MySQL 5.7, MariaDB 10.3)"
                        ),
                    )?;
                }
            }
            Ok(None) => report.line(
                Mark::Ok,
                format!("reachable at {}: version unknown", address(server)),
            )?,
            Err(e) => report.line(
                Mark::Warn,
                format!(
                    "reachable at {}, but SELECT VERSION() failed: {}",
                    address(server),
                    one_line(e)
                ),
            )?,
        }

        self.tls(report, server, &mut conn).await?;
        self.grants(report, i, &mut conn, &facts).await?;

        let read_only: std::result::Result<Option<Row>, _> = conn
            .query_first("SELECT @@SESSION.tx_read_only, @@GLOBAL.read_only")
            .await;
        let read_only = match read_only {
            Ok(row) => Ok(row),
            // MySQL 8 knows only transaction_read_only.
            Err(_) => {
                conn.query_first("SELECT @@SESSION.transaction_read_only, @@GLOBAL.read_only")
                    .await
            }
        };
        match read_only {
            Ok(Some(row)) => {
                let on = |v: Option<String>| {
                    v.is_some_and(|v| !(v == "0" || v.eq_ignore_ascii_case("OFF")))
                };
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
                    report.line(Mark::Info, "read_only is ON: a replica")?;
                } else {
                    report.line(
                        Mark::Info,
                        "read_only is OFF: a primary or a writable replica (reading a replica spares the primary)",
                    )?;
                }
            }
            Ok(None) => {}
            Err(e) => report.line(
                Mark::Warn,
                format!("cannot read @@read_only: {}", one_line(e)),
            )?,
        }

        self.replication(report, &mut conn, &facts).await?;
        self.connections(report, &mut conn).await?;
        Ok(facts)
    }

    /// Compares the connections a check opens at most with what the server
    /// accepts: over half of `max_connections` leaves the application too
    /// few.
    async fn connections(&self, report: &mut Report<'_>, conn: &mut Conn) -> Result<()> {
        let cap = self.config.check.max_connections_per_server;
        let max: std::result::Result<Option<u64>, _> =
            conn.query_first("SELECT @@GLOBAL.max_connections").await;
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
        let cipher: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .await
            .ok()
            .flatten();
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
            Some(format!(
                "CREATE USER 'blobcheck'@'%' IDENTIFIED BY '…'; {}",
                grants.join(" ")
            )),
        )
    }

    async fn replication(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        facts: &ServerFacts,
    ) -> Result<()> {
        let settings = &self.config.check;
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
        let rows = match result {
            Some(Ok(rows)) => rows,
            Some(Err(e)) => {
                let denied = dialect::is_access_denied(&e);
                let mark = if settings.max_lag.is_some() {
                    Mark::Warn
                } else {
                    Mark::Info
                };
                let consequence = if settings.max_lag.is_some() {
                    "max_lag cannot be enforced here"
                } else {
                    "replica lag unknown"
                };
                if !denied {
                    return report.line(
                        mark,
                        format!(
                            "cannot read replica status ({}): {consequence}",
                            one_line(e)
                        ),
                    );
                }
                let privilege = match (facts.mariadb, facts.version) {
                    (true, Some(v)) if v >= (10, 5) => "SLAVE MONITOR",
                    _ => "REPLICATION CLIENT",
                };
                return report.line_fix(
                    mark,
                    format!(
                        "cannot read replica status: {consequence}; grant SLAVE MONITOR (MariaDB 10.5+) or REPLICATION CLIENT (MySQL, older MariaDB)"
                    ),
                    Some(format!(
                        "GRANT {privilege} ON *.* TO {};",
                        account_sql(&facts.account)
                    )),
                );
            }
            None => {
                return report.line(
                    Mark::Info,
                    format!(
                        "{}: replica lag unknown",
                        dialect::no_replica_status_statement()
                    ),
                );
            }
        };
        if rows.is_empty() {
            return report.line(Mark::Ok, "not a replica");
        }
        let mut lag: Option<u64> = Some(0);
        let mut stopped = Vec::new();
        for row in &rows {
            let channel = field(row, &dialect::CHANNEL_COLUMNS)
                .flatten()
                .filter(|c| !c.is_empty())
                .map(|c| format!("channel `{}`", one_line(c)))
                .unwrap_or_else(|| "replication".to_owned());
            let seconds = field(row, &dialect::LAG_COLUMNS)
                .flatten()
                .and_then(|s| s.parse::<u64>().ok());
            match seconds {
                Some(s) => lag = lag.map(|l| l.max(s)),
                None => {
                    lag = None;
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
                    stopped.push(format!("{channel} (IO {io}, SQL {sql}{error})"));
                }
            }
        }
        match lag {
            None => report.line_fix(
                Mark::Warn,
                format!(
                    "replica, replication stopped: {}: the data is stale, findings may be false or missing",
                    stopped.join("; ")
                ),
                Some("START SLAVE; on this replica, or point the url at a replica that replicates"),
            ),
            Some(seconds) => {
                let channels = if rows.len() > 1 {
                    format!(" ({} channels)", rows.len())
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
    }

    // -----------------------------------------------------------------
    // Tables and columns.

    async fn lookup(
        &self,
        conn: &mut Conn,
        table: &TableName,
    ) -> std::result::Result<TableLookup, mysql_async::Error> {
        let rows: Vec<(String, String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS \
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (table.database.as_str(), table.table.as_str()),
            )
            .await?;
        if !rows.is_empty() {
            return Ok(TableLookup::Found(
                rows.into_iter()
                    .map(|(name, data_type, column_type, nullable)| ColumnRow {
                        name,
                        data_type: data_type.to_ascii_lowercase(),
                        column_type,
                        nullable: nullable.eq_ignore_ascii_case("YES"),
                    })
                    .collect(),
            ));
        }
        let database: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (table.database.as_str(),),
            )
            .await?;
        if database.is_none() {
            return Ok(TableLookup::NoDatabase);
        }
        let others: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
                  ORDER BY TABLE_NAME LIMIT 21",
                (table.database.as_str(),),
            )
            .await?;
        Ok(TableLookup::NoTable { others })
    }

    /// Reports a table that cannot be read; returns its columns when it
    /// can.
    async fn table(
        &self,
        report: &mut Report<'_>,
        server: usize,
        conn: &mut Conn,
        table: &TableName,
        account: &str,
    ) -> Result<Option<Vec<ColumnRow>>> {
        let lookup = match self.lookup(conn, table).await {
            Ok(lookup) => lookup,
            Err(e) => {
                report.line(
                    Mark::Fail,
                    format!("cannot read information_schema: {}", one_line(e)),
                )?;
                return Ok(None);
            }
        };
        let server_name = &self.db.servers[server].name;
        match lookup {
            TableLookup::Found(columns) => Ok(Some(columns)),
            TableLookup::NoDatabase => {
                report.line_fix(
                    Mark::Fail,
                    format!(
                        "database `{}` not found on server `{server_name}` (or the account may not read it)",
                        table.database
                    ),
                    Some(format!(
                        "check the database name and the server; if it is right: GRANT SELECT ON {}.* TO {account};",
                        table.database.quoted()
                    )),
                )?;
                Ok(None)
            }
            TableLookup::NoTable { others } => {
                let listed = if others.is_empty() {
                    "the account sees no table there".to_owned()
                } else {
                    let names: Vec<String> = others.iter().take(20).map(one_line).collect();
                    format!(
                        "tables there: {}{}",
                        names.join(", "),
                        if others.len() > 20 { ", …" } else { "" }
                    )
                };
                report.line_fix(
                    Mark::Fail,
                    format!(
                        "table `{table}` not found on server `{server_name}` (or the account may not read it); {listed}"
                    ),
                    Some(format!(
                        "check the table name; if it is right: GRANT SELECT ON {} TO {account};",
                        table.quoted()
                    )),
                )?;
                Ok(None)
            }
        }
    }

    /// Reports one column: found, integer. Returns it when usable.
    fn column<'c>(
        &self,
        report: &mut Report<'_>,
        columns: &'c [ColumnRow],
        table: &TableName,
        column: &Ident,
        role: &str,
        setting: &str,
    ) -> Result<Option<&'c ColumnRow>> {
        let integers: Vec<String> = columns
            .iter()
            .filter(|c| c.is_integer())
            .map(|c| one_line(&c.name))
            .collect();
        let candidates = if integers.is_empty() {
            "the table has no integer column".to_owned()
        } else {
            format!("integer columns of `{table}`: {}", integers.join(", "))
        };
        let Some(found) = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(column.as_str()))
        else {
            report.line_fix(
                Mark::Fail,
                format!("{role}column `{column}` not found in table `{table}`"),
                Some(format!(
                    "set {setting} to the column that holds blob ids; {candidates}"
                )),
            )?;
            return Ok(None);
        };
        if !found.is_integer() {
            report.line_fix(
                Mark::Fail,
                format!(
                    "{role}column {} is {}, not an integer type: it cannot hold blob ids",
                    quote(&found.name),
                    found.type_text()
                ),
                Some(format!(
                    "set {setting} to the column that holds blob ids; {candidates}"
                )),
            )?;
            return Ok(None);
        }
        report.line(
            Mark::Ok,
            format!("{role}column {} {}", quote(&found.name), found.type_text()),
        )?;
        Ok(Some(found))
    }

    /// Indexes whose first column is `column`, best first, as
    /// [`db::inspect`] orders them: (name, unique, number of columns).
    async fn leading_indexes(
        &self,
        conn: &mut Conn,
        table: &TableName,
        column: &str,
    ) -> std::result::Result<Vec<(String, bool, u64)>, mysql_async::Error> {
        conn.exec(
            db::LEADING_INDEXES_SQL,
            (table.database.as_str(), table.table.as_str(), column),
        )
        .await
    }

    async fn primary_key(
        &self,
        conn: &mut Conn,
        table: &TableName,
    ) -> std::result::Result<Vec<String>, mysql_async::Error> {
        conn.exec(
            db::PRIMARY_KEY_SQL,
            (table.database.as_str(), table.table.as_str()),
        )
        .await
    }

    /// A connection for the schema checks, or a `skip` line.
    async fn schema_conn(
        &self,
        report: &mut Report<'_>,
        reachable: &[bool],
        server: usize,
    ) -> Result<Option<Conn>> {
        let name = &self.db.servers[server].name;
        if !reachable[server] {
            report.line(
                Mark::Skip,
                format!("not checked: server `{name}` is unreachable (see above)"),
            )?;
            return Ok(None);
        }
        match self.db.conn(server).await {
            Ok(conn) => Ok(Some(conn)),
            Err(e) => {
                report.line(Mark::Fail, format!("lost the connection: {e}"))?;
                Ok(None)
            }
        }
    }

    async fn blob_table(
        &self,
        report: &mut Report<'_>,
        reachable: &[bool],
        facts: &[ServerFacts],
        schema: Option<&Schema>,
    ) -> Result<()> {
        let b = &self.config.blobs;
        let server_name = self.db.servers[b.server].name.clone();
        report.section(format!("blob table {} on {server_name}", b.table))?;
        let Some(mut conn) = self.schema_conn(report, reachable, b.server).await? else {
            return Ok(());
        };
        let account = account_sql(&facts[b.server].account);
        let Some(columns) = self
            .table(report, b.server, &mut conn, &b.table, &account)
            .await?
        else {
            return Ok(());
        };
        let id = self.column(report, &columns, &b.table, &b.id, "id ", "[blobs] id")?;
        let count = self.column(
            report,
            &columns,
            &b.table,
            &b.count,
            "count ",
            "[blobs] count",
        )?;
        if let Some(count) = count
            && count.nullable
        {
            report.line(
                Mark::Warn,
                format!(
                    "count column {} may be NULL: a NULL count stops the check",
                    quote(&count.name)
                ),
            )?;
        }
        let Some(id) = id else {
            return Ok(());
        };
        if !id.info().unsigned {
            // A signed id column may hold negative ids, which `check`
            // refuses; MIN over the key is one index lookup.
            let sql = format!(
                "SELECT MIN({}) FROM {}",
                ServerIdent(id.name.clone()).quoted(),
                b.table.quoted()
            );
            let smallest = conn
                .query_first::<Row, _>(sql)
                .await
                .ok()
                .flatten()
                .and_then(|row| row.get::<Option<i64>, _>(0).flatten());
            if let Some(smallest) = smallest.filter(|&n| n < 0) {
                report.line(
                    Mark::Fail,
                    format!(
                        "id column {} holds negative ids (the smallest is {smallest}): blob ids must be 0 to 18446744073709551615, and check stops on them",
                        quote(&id.name)
                    ),
                )?;
            }
        }
        let indexes = match self.leading_indexes(&mut conn, &b.table, &id.name).await {
            Ok(indexes) => indexes,
            Err(e) => {
                return report.line(
                    Mark::Fail,
                    format!("cannot read the indexes: {}", one_line(e)),
                );
            }
        };
        let index = indexes
            .iter()
            .find(|(_, unique, columns)| *unique && *columns == 1);
        let Some((index, _, _)) = index else {
            let primary = self
                .primary_key(&mut conn, &b.table)
                .await
                .unwrap_or_default();
            let suggestion = match primary.as_slice() {
                [only] => format!(
                    "set [blobs] id to the primary key `{}`, if that is the blob id",
                    one_line(only)
                ),
                _ => "set [blobs] id to the blob table's primary key".to_owned(),
            };
            return report.line_fix(
                Mark::Fail,
                format!(
                    "id column {} is neither the primary key nor a unique index of that column alone: the scan walks the blob ids in order",
                    quote(&id.name)
                ),
                Some(suggestion),
            );
        };
        report.line(
            Mark::Ok,
            format!(
                "id column {} has {}: the scan walks it in order",
                quote(&id.name),
                if index == "PRIMARY" {
                    "the primary key".to_owned()
                } else {
                    format!("the unique index {}", quote(index))
                }
            ),
        )?;
        if count.is_none() {
            return Ok(());
        }

        let own;
        let blobs = match schema {
            Some(schema) => &schema.blobs,
            None => {
                own = BlobScan {
                    server: b.server,
                    table: b.table.clone(),
                    id: b.id.clone(),
                    count: b.count.clone(),
                    index: ServerIdent(index.clone()),
                    count_nullable: false,
                };
                &own
            }
        };
        let key = blobs.index.0.as_str();
        let queries = [
            (
                "batch",
                db::blob_batch_sql(blobs, IdRange::ALL, self.config.check.chunk_size),
                Expect::Index(key),
            ),
            (
                "points",
                db::blob_points_sql(blobs, &SAMPLE_IDS),
                Expect::Index(key),
            ),
            (
                "sketch",
                db::blob_sketch_sql(blobs, IdRange::new(0, 4095)),
                Expect::Index(key),
            ),
            (
                "id span",
                db::blob_id_span_sql(blobs),
                Expect::OptimizedAway,
            ),
        ];
        for (what, sql, expect) in queries {
            self.explain(report, &mut conn, what, &sql, expect).await?;
        }
        Ok(())
    }

    async fn reference(
        &self,
        report: &mut Report<'_>,
        reachable: &[bool],
        facts: &[ServerFacts],
        i: usize,
        schema: Option<&Schema>,
    ) -> Result<()> {
        let r = &self.config.references[i];
        let server_name = &self.db.servers[r.server].name;
        let default_label = format!("{server_name}:{}.{}", r.table, r.column);
        let label = one_line(&r.label);
        report.section(if label == default_label {
            format!("reference {label}")
        } else {
            format!("reference {label} ({default_label})")
        })?;
        let Some(mut conn) = self.schema_conn(report, reachable, r.server).await? else {
            return Ok(());
        };
        let account = account_sql(&facts[r.server].account);
        let Some(columns) = self
            .table(report, r.server, &mut conn, &r.table, &account)
            .await?
        else {
            return Ok(());
        };
        let Some(column) = self.column(
            report,
            &columns,
            &r.table,
            &r.column,
            "",
            &format!("column of [[references]] #{}", i + 1),
        )?
        else {
            return Ok(());
        };
        if column.nullable {
            report.line(
                Mark::Info,
                "nullable: NULL is not a reference (the summary counts NULLs apart)",
            )?;
        }
        let info = column.info();
        if !info.unsigned {
            report.line(
                Mark::Info,
                "signed: a negative value is never a blob id (the summary counts them apart)",
            )?;
        }

        let indexes = match self
            .leading_indexes(&mut conn, &r.table, &column.name)
            .await
        {
            Ok(indexes) => indexes,
            Err(e) => {
                return report.line(
                    Mark::Fail,
                    format!("cannot read the indexes: {}", one_line(e)),
                );
            }
        };
        let Some((index, unique, width)) = indexes.into_iter().next() else {
            return report.line_fix(
                Mark::Fail,
                format!(
                    "no index starts with `{}`: counting its references would read the whole table",
                    r.column
                ),
                Some(db::add_index_sql(&r.table, &r.column)),
            );
        };
        report.line(
            Mark::Ok,
            format!(
                "index {} starts with `{}`{}",
                quote(&index),
                r.column,
                match (index == "PRIMARY", unique, width) {
                    (true, _, _) => " (the primary key)".to_owned(),
                    (false, true, 1) => " (unique)".to_owned(),
                    (false, _, 1) => String::new(),
                    (false, _, n) => format!(" ({n} columns)"),
                }
            ),
        )?;

        let primary_key = match self.primary_key(&mut conn, &r.table).await {
            Ok(key) => key,
            Err(e) => {
                report.line(
                    Mark::Warn,
                    format!("cannot read the primary key: {}", one_line(e)),
                )?;
                Vec::new()
            }
        };
        if primary_key.is_empty() {
            report.line(
                Mark::Warn,
                format!(
                    "table `{}` has no primary key: the rows behind a finding cannot be named",
                    r.table
                ),
            )?;
        } else {
            let key: Vec<String> = primary_key.iter().map(|k| quote(k)).collect();
            report.line(
                Mark::Ok,
                format!(
                    "primary key ({}): the rows behind a finding can be named",
                    one_line(key.join(", "))
                ),
            )?;
        }

        let own;
        let scan = match schema {
            Some(schema) => &schema.references[i],
            None => {
                own = ReferenceScan {
                    server: r.server,
                    table: r.table.clone(),
                    column: r.column.clone(),
                    index: ServerIdent(index),
                    info,
                    label: r.label.clone(),
                    primary_key: primary_key.into_iter().map(ServerIdent).collect(),
                };
                &own
            }
        };
        let key = scan.index.0.as_str();
        let mut queries = vec![
            (
                "batch",
                db::reference_batch_sql(scan, IdRange::ALL, self.config.check.chunk_size),
            ),
            ("points", db::reference_points_sql(scan, &SAMPLE_IDS)),
            (
                "sketch",
                db::reference_sketch_sql(scan, IdRange::new(0, 4095)),
            ),
        ];
        if let Some(sql) = db::affected_rows_sql(scan, 1, self.config.check.affected_rows.max(1)) {
            queries.push(("affected rows", sql));
        }
        let limit = self.config.check.chunk_size;
        let unusable = [
            ("NULL count", db::Unusable::Null),
            ("negative count", db::Unusable::Negative),
        ];
        for (what, kind) in unusable {
            if let Some(sql) = db::unusable_batch_sql(scan, kind, None, limit)
                .or_else(|| db::unusable_count_sql(scan, kind))
            {
                queries.push((what, sql));
            }
        }
        for (what, sql) in queries {
            self.explain(report, &mut conn, what, &sql, Expect::Index(key))
                .await?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Query plans.

    async fn explain(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        what: &str,
        sql: &str,
        expect: Expect<'_>,
    ) -> Result<()> {
        let rows: Vec<Row> = match conn.query(format!("EXPLAIN {sql}")).await {
            Ok(rows) => rows,
            Err(e) => {
                return report.line(
                    Mark::Fail,
                    format!("EXPLAIN {what} failed: {}: {sql}", one_line(e)),
                );
            }
        };
        let plans = plan_rows(&rows);
        let shown = show_plans(&plans);
        let label = format!("EXPLAIN {what:<13}");
        match judge(&plans, &expect) {
            None => report.line(Mark::Ok, format!("{label} {shown}")),
            Some(problem) => report.line(
                Mark::Fail,
                format!("{label} {shown}: {problem}; the query: {sql}"),
            ),
        }
    }
}

fn plan_rows(rows: &[Row]) -> Vec<PlanRow> {
    rows.iter()
        .map(|row| {
            let get = |name: &str| field(row, &[name]).flatten().unwrap_or_default();
            PlanRow {
                access: get("type"),
                key: get("key"),
                rows: get("rows"),
                extra: get("Extra"),
            }
        })
        .collect()
}

/// `range, key Body, rows 2505, Using where; Using index`.
fn show_plans(plans: &[PlanRow]) -> String {
    plans
        .iter()
        .map(|p| {
            let mut parts = Vec::new();
            if !p.access.is_empty() {
                parts.push(p.access.clone());
            }
            if !p.key.is_empty() {
                parts.push(format!("key {}", p.key));
            }
            if !p.rows.is_empty() {
                parts.push(format!("rows {}", p.rows));
            }
            if !p.extra.is_empty() {
                parts.push(p.extra.clone());
            }
            one_line(parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What is wrong with a plan, if anything.
fn judge(plans: &[PlanRow], expect: &Expect) -> Option<String> {
    let [plan] = plans else {
        return Some(format!(
            "{} rows in the plan, expected one table read once",
            plans.len()
        ));
    };
    if NOTHING_TO_READ.iter().any(|n| plan.extra.contains(n)) {
        return None;
    }
    match expect {
        Expect::OptimizedAway => (!plan.extra.contains("Select tables optimized away"))
            .then(|| "expected two index dives (Select tables optimized away)".to_owned()),
        Expect::Index(_) | Expect::AnyIndex => {
            let mut problems = Vec::new();
            if !INDEX_ACCESS.contains(&plan.access.as_str()) {
                problems.push(match plan.access.as_str() {
                    "ALL" => "a full table scan".to_owned(),
                    "index" => "a full index scan".to_owned(),
                    other => format!("access type {other}"),
                });
            }
            if let Expect::Index(key) = expect
                && plan.key != *key
            {
                problems.push(format!("not through index {}", quote(key)));
            }
            if plan.extra.contains("Using temporary") {
                problems.push("a temporary table".to_owned());
            }
            if plan.extra.contains("Using filesort") {
                problems.push("a filesort".to_owned());
            }
            (!problems.is_empty()).then(|| {
                format!(
                    "{}, expected an index range scan or lookup",
                    problems.join(", ")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed() {
        assert_eq!(parse_version("10.11.6-MariaDB-0+deb12u1"), Some((10, 11)));
        assert_eq!(parse_version("8.0.36"), Some((8, 0)));
        assert_eq!(parse_version("x"), None);
    }

    fn plan(access: &str, key: &str, extra: &str) -> PlanRow {
        PlanRow {
            access: access.into(),
            key: key.into(),
            rows: "10".into(),
            extra: extra.into(),
        }
    }

    #[test]
    fn plans_are_judged() {
        let index = Expect::Index("Body");
        assert!(judge(&[plan("range", "Body", "Using where; Using index")], &index).is_none());
        assert!(judge(&[plan("ref", "Body", "Using index")], &index).is_none());
        let full = judge(&[plan("ALL", "", "Using where")], &index).unwrap();
        assert!(full.contains("full table scan"), "{full}");
        assert!(full.contains("not through index `Body`"), "{full}");
        let sort = judge(
            &[plan(
                "range",
                "Body",
                "Using where; Using temporary; Using filesort",
            )],
            &index,
        )
        .unwrap();
        assert!(
            sort.contains("temporary") && sort.contains("filesort"),
            "{sort}"
        );
        assert!(
            judge(
                &[plan("", "", "Select tables optimized away")],
                &Expect::OptimizedAway
            )
            .is_none()
        );
        assert!(
            judge(
                &[plan("index", "PRIMARY", "Using index")],
                &Expect::OptimizedAway
            )
            .is_some()
        );
        assert!(
            judge(
                &[plan(
                    "",
                    "",
                    "Impossible WHERE noticed after reading const tables"
                )],
                &index
            )
            .is_none()
        );
        assert!(judge(&[], &index).is_some());
    }
}
