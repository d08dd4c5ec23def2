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
//! The passes, in order: the `[discovery]` shards, read first as the check
//! reads them and then checked like configured servers; every server
//! (`server`: version, TLS, grants, read-only, replication, connections);
//! the blob table and every reference column (`schema`), through the same
//! per-column inspection as [`db::inspect`], but without stopping; and the
//! plan of every query the check runs (`explain`). When every server
//! answers, [`db::inspect`] itself runs too, and its schema (the exact
//! indexes the check would use) is what the EXPLAIN lines are about.
//! `report` writes the lines and the verdict.

mod explain;
mod report;
mod schema;
mod server;

use std::io::Write;

use futures_util::future::join_all;
use mysql_async::{Conn, OptsBuilder, Pool, Row, Value};

pub use report::Mark;

use crate::config::{Config, Discovery};
use crate::db::{self, Databases, ServerIdent};
use crate::discovery::{self, Shard};
use crate::error::{Result, one_line};
use report::{Report, plural};

/// Checks every server, the blob table, every reference column and the plan
/// of every query the check runs; writes one line per fact and a verdict.
/// Returns whether the check is ready to run (no `FAIL` line). Only an
/// output that cannot be written is an error.
pub async fn run(config: &Config, out: &mut dyn Write) -> Result<bool> {
    run_for(config, out, false).await
}

/// [`run`], and with `watch` also what `blobcheck watch` needs of every
/// server it would follow (binary log settings, grants, server id), as
/// `FAIL` lines: the watch would not start without them.
pub async fn run_for(config: &Config, out: &mut dyn Write, watch: bool) -> Result<bool> {
    let mut report = Report::new(out);
    report.write(&header(config))?;

    // The check adds the discovered shards first; so does the doctor. If
    // that fails, what is configured is still checked.
    let expanded = discover(config, &mut report).await?;
    let config = expanded.as_ref().unwrap_or(config);

    let (databases, conns) = connect(config).await;
    let doctor = Doctor {
        config,
        db: &databases,
        watch,
    };
    let result = doctor.run(&mut report, conns).await;
    databases.disconnect().await;
    result?;
    report.verdict()
}

/// The first line: what is about to be checked.
fn header(config: &Config) -> String {
    format!(
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
    )
}

/// Connects to every server at once, so unreachable ones cost one timeout
/// in all rather than one each, with the check's own connection settings
/// (TLS included). A server that cannot be reached gets a pool that is
/// never used, and its error in place of a connection.
async fn connect(config: &Config) -> (Databases, Vec<Result<Conn>>) {
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
    (databases, conns)
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
    explain::shards(report, d, server).await?;
    describe_shards(report, d, &shards)?;
    match discovery::add_shards(config, d, &shards) {
        Ok(expanded) => Ok(Some(expanded)),
        Err(e) => {
            report.line(Mark::Fail, e.to_string())?;
            Ok(None)
        }
    }
}

/// The mail shards found, or a warning that there are none.
fn describe_shards(report: &mut Report<'_>, d: &Discovery, shards: &[Shard]) -> Result<()> {
    if shards.is_empty() {
        return report.line_fix(
            Mark::Warn,
            format!(
                "no mail shard in {} (no row with Type = {}): only the configured references are checked",
                d.table, d.shard_type
            ),
            Some("check [discovery] type: the Shard table's Type of mail shards"),
        );
    }
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
    )
}

struct Doctor<'a> {
    config: &'a Config,
    db: &'a Databases,
    /// Also check what `watch` needs of every server it would follow.
    watch: bool,
}

impl Doctor<'_> {
    /// Every pass after discovery, in the order of the report.
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
}

/// A name the server reported, quoted for a message.
fn quote(name: &str) -> String {
    ServerIdent(name.to_owned()).quoted()
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
