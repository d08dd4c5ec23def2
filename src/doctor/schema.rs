//! The schema checks: the blob table and every reference column, through
//! `db`'s per-column inspection (the same steps as [`db::inspect`]), every
//! problem reported rather than the first, each with its fix.

use std::borrow::Cow;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::report::{Mark, Report};
use super::server::{ServerFacts, account_sql};
use super::{Doctor, quote};
use crate::config::{Ident, TableName};
use crate::db::{
    self, BlobScan, ColumnFacts, LeadingIndex, ReferenceScan, Schema, ServerIdent, TableLookup,
};
use crate::error::{Result, one_line};

impl Doctor<'_> {
    /// A connection for the schema checks of `table` on `server`, when the
    /// server answers and the table is there; otherwise a `skip` line, or
    /// the `FAIL` that says why not.
    async fn open_table(
        &self,
        report: &mut Report<'_>,
        reachable: &[bool],
        facts: &[ServerFacts],
        server: usize,
        table: &TableName,
    ) -> Result<Option<Conn>> {
        let name = &self.db.servers[server].name;
        if !reachable[server] {
            report.line(
                Mark::Skip,
                format!("not checked: server `{name}` is unreachable (see above)"),
            )?;
            return Ok(None);
        }
        let mut conn = match self.db.conn(server).await {
            Ok(conn) => conn,
            Err(e) => {
                report.line(Mark::Fail, format!("lost the connection: {e}"))?;
                return Ok(None);
            }
        };
        let account = account_sql(&facts[server].account);
        let found = self
            .table(report, server, &mut conn, table, &account)
            .await?;
        Ok(found.then_some(conn))
    }

    /// Reports a table that cannot be read; returns whether it can.
    async fn table(
        &self,
        report: &mut Report<'_>,
        server: usize,
        conn: &mut Conn,
        table: &TableName,
        account: &str,
    ) -> Result<bool> {
        let unreadable =
            |e: mysql_async::Error| format!("cannot read information_schema: {}", one_line(e));
        let lookup = match db::lookup_table(conn, table).await {
            Ok(lookup) => lookup,
            Err(e) => {
                report.line(Mark::Fail, unreadable(e))?;
                return Ok(false);
            }
        };
        let server_name = &self.db.servers[server].name;
        match lookup {
            TableLookup::Found => return Ok(true),
            TableLookup::NoDatabase => report.line_fix(
                Mark::Fail,
                format!(
                    "database `{}` not found on server `{server_name}` (or the account may not read it)",
                    table.database
                ),
                Some(format!(
                    "check the database name and the server; if it is right: GRANT SELECT ON {}.* TO {account};",
                    table.database.quoted()
                )),
            )?,
            TableLookup::NoTable => {
                let others = match db::tables_in(conn, &table.database).await {
                    Ok(others) => others,
                    Err(e) => {
                        report.line(Mark::Fail, unreadable(e))?;
                        return Ok(false);
                    }
                };
                report.line_fix(
                    Mark::Fail,
                    format!(
                        "table `{table}` not found on server `{server_name}` (or the account may not read it); {}",
                        tables_there(&others)
                    ),
                    Some(format!(
                        "check the table name; if it is right: GRANT SELECT ON {} TO {account};",
                        table.quoted()
                    )),
                )?;
            }
        }
        Ok(false)
    }

    /// Reports one column: found, integer. Returns it when usable.
    async fn column(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        table: &TableName,
        column: &Ident,
        role: &str,
        setting: &str,
    ) -> Result<Option<ColumnFacts>> {
        let found = match db::lookup_column(conn, table, column).await {
            Ok(found) => found,
            Err(e) => {
                report.line(
                    Mark::Fail,
                    format!("cannot read information_schema: {}", one_line(e)),
                )?;
                return Ok(None);
            }
        };
        let problem = match found {
            None => format!("{role}column `{column}` not found in table `{table}`"),
            Some(found) if !found.is_integer() => format!(
                "{role}column {} is {}, not an integer type: it cannot hold blob ids",
                quote(&found.resolved.column),
                found.type_text()
            ),
            Some(found) => {
                report.line(
                    Mark::Ok,
                    format!(
                        "{role}column {} {}",
                        quote(&found.resolved.column),
                        found.type_text()
                    ),
                )?;
                return Ok(Some(found));
            }
        };
        let candidates = integer_candidates(conn, table).await;
        report.line_fix(
            Mark::Fail,
            problem,
            Some(format!(
                "set {setting} to the column that holds blob ids; {candidates}"
            )),
        )?;
        Ok(None)
    }

    /// The blob table's section: its columns, negative ids, the index the
    /// scan walks, and the plans of its queries.
    pub(super) async fn blob_table(
        &self,
        report: &mut Report<'_>,
        reachable: &[bool],
        facts: &[ServerFacts],
        schema: Option<&Schema>,
    ) -> Result<()> {
        let b = &self.config.blobs;
        let server_name = self.db.servers[b.server].name.clone();
        report.section(format!("blob table {} on {server_name}", b.table))?;
        let Some(mut conn) = self
            .open_table(report, reachable, facts, b.server, &b.table)
            .await?
        else {
            return Ok(());
        };
        let id = self
            .column(report, &mut conn, &b.table, &b.id, "id ", "[blobs] id")
            .await?;
        let count = self
            .column(
                report,
                &mut conn,
                &b.table,
                &b.count,
                "count ",
                "[blobs] count",
            )
            .await?;
        if let Some(count) = &count
            && count.nullable
        {
            report.line(
                Mark::Warn,
                format!(
                    "count column {} may be NULL: a NULL count stops the check",
                    quote(&count.resolved.column)
                ),
            )?;
        }
        let Some(id) = id else {
            return Ok(());
        };
        if !id.info().unsigned {
            self.negative_ids(report, &mut conn, &id).await?;
        }
        let Some(index) = self.blob_index(report, &mut conn, &id).await? else {
            return Ok(());
        };
        if count.is_none() {
            return Ok(());
        }
        // The check's own schema when it has one; else as the check would
        // build it (the count column's nullability only adds a COALESCE to
        // the sketch, which leaves its plan as it is).
        let blobs = match schema {
            Some(schema) => Cow::Borrowed(&schema.blobs),
            None => Cow::Owned(BlobScan::new(b, ServerIdent(index.name), false)),
        };
        self.explain_blobs(report, &mut conn, &blobs).await
    }

    /// A signed id column may hold negative ids, which `check` refuses;
    /// MIN over the key is one index lookup.
    async fn negative_ids(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        id: &ColumnFacts,
    ) -> Result<()> {
        let column = ServerIdent(id.resolved.column.clone());
        let smallest = conn
            .query_first::<mysql_async::Row, _>(db::smallest_sql(&self.config.blobs.table, &column))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get::<Option<i64>, _>(0).flatten());
        match smallest.filter(|&n| n < 0) {
            Some(smallest) => report.line(
                Mark::Fail,
                format!(
                    "id column {} holds negative ids (the smallest is {smallest}): blob ids must be 0 to 18446744073709551615, and check stops on them",
                    quote(&id.resolved.column)
                ),
            ),
            None => Ok(()),
        }
    }

    /// The index the scan walks the blob ids by, or why there is none.
    async fn blob_index(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        id: &ColumnFacts,
    ) -> Result<Option<LeadingIndex>> {
        let table = &self.config.blobs.table;
        let name = &id.resolved.column;
        let Some(indexes) = leading_indexes(report, conn, table, name).await? else {
            return Ok(None);
        };
        let Some(index) = db::blob_id_index(&indexes) else {
            let primary = db::primary_key_columns(conn, table)
                .await
                .unwrap_or_default();
            let suggestion = match primary.as_slice() {
                [only] => format!(
                    "set [blobs] id to the primary key `{}`, if that is the blob id",
                    one_line(&only.0)
                ),
                _ => "set [blobs] id to the blob table's primary key".to_owned(),
            };
            report.line_fix(
                Mark::Fail,
                format!(
                    "id column {} is neither the primary key nor a unique index of that column alone: the scan walks the blob ids in order",
                    quote(name)
                ),
                Some(suggestion),
            )?;
            return Ok(None);
        };
        report.line(
            Mark::Ok,
            format!(
                "id column {} has {}: the scan walks it in order",
                quote(name),
                if index.is_primary() {
                    "the primary key".to_owned()
                } else {
                    format!("the unique index {}", quote(&index.name))
                }
            ),
        )?;
        Ok(Some(index.clone()))
    }

    /// Reference column `i`'s section: its column, its index, its table's
    /// primary key, and the plans of its queries.
    pub(super) async fn reference(
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
        let Some(mut conn) = self
            .open_table(report, reachable, facts, r.server, &r.table)
            .await?
        else {
            return Ok(());
        };
        let setting = format!("column of [[references]] #{}", i + 1);
        let Some(column) = self
            .column(report, &mut conn, &r.table, &r.column, "", &setting)
            .await?
        else {
            return Ok(());
        };
        let info = column.info();
        if info.nullable {
            report.line(
                Mark::Info,
                "nullable: NULL is not a reference (the summary counts NULLs apart)",
            )?;
        }
        if !info.unsigned {
            report.line(
                Mark::Info,
                "signed: a negative value is never a blob id (the summary counts them apart)",
            )?;
        }
        let Some(index) = self.reference_index(report, &mut conn, i, &column).await? else {
            return Ok(());
        };
        let primary_key = self.primary_key(report, &mut conn, &r.table).await?;
        let scan = match schema {
            Some(schema) => Cow::Borrowed(&schema.references[i]),
            None => Cow::Owned(ReferenceScan::new(
                r,
                ServerIdent(index.name),
                info,
                primary_key,
            )),
        };
        self.explain_reference(report, &mut conn, &scan).await
    }

    /// The index that starts with reference column `i`, or why there is
    /// none.
    async fn reference_index(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        i: usize,
        column: &ColumnFacts,
    ) -> Result<Option<LeadingIndex>> {
        let r = &self.config.references[i];
        let Some(indexes) =
            leading_indexes(report, conn, &r.table, &column.resolved.column).await?
        else {
            return Ok(None);
        };
        let Some(index) = indexes.into_iter().next() else {
            report.line_fix(
                Mark::Fail,
                format!(
                    "no index starts with `{}`: counting its references would read the whole table",
                    r.column
                ),
                Some(db::add_index_sql(&r.table, &r.column)),
            )?;
            return Ok(None);
        };
        report.line(
            Mark::Ok,
            format!(
                "index {} starts with `{}`{}",
                quote(&index.name),
                r.column,
                match (index.is_primary(), index.unique, index.columns) {
                    (true, _, _) => " (the primary key)".to_owned(),
                    (false, true, 1) => " (unique)".to_owned(),
                    (false, _, 1) => String::new(),
                    (false, _, n) => format!(" ({n} columns)"),
                }
            ),
        )?;
        Ok(Some(index))
    }

    /// A reference table's primary key, which names the rows behind a
    /// finding; a warning when it has none.
    async fn primary_key(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        table: &TableName,
    ) -> Result<Vec<ServerIdent>> {
        let primary_key = match db::primary_key_columns(conn, table).await {
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
                    "table `{table}` has no primary key: the rows behind a finding cannot be named"
                ),
            )?;
        } else {
            let key: Vec<String> = primary_key.iter().map(|k| quote(&k.0)).collect();
            report.line(
                Mark::Ok,
                format!(
                    "primary key ({}): the rows behind a finding can be named",
                    one_line(key.join(", "))
                ),
            )?;
        }
        Ok(primary_key)
    }
}

/// The indexes that start with `column`, best first, or a `FAIL` line when
/// they cannot be read.
async fn leading_indexes(
    report: &mut Report<'_>,
    conn: &mut Conn,
    table: &TableName,
    column: &str,
) -> Result<Option<Vec<LeadingIndex>>> {
    match db::leading_indexes(conn, table, column).await {
        Ok(indexes) => Ok(Some(indexes)),
        Err(e) => {
            report.line(
                Mark::Fail,
                format!("cannot read the indexes: {}", one_line(e)),
            )?;
            Ok(None)
        }
    }
}

/// `tables there: a, b, …`: at most 20 names.
fn tables_there(others: &[String]) -> String {
    if others.is_empty() {
        return "the account sees no table there".to_owned();
    }
    let names: Vec<String> = others.iter().take(20).map(one_line).collect();
    format!(
        "tables there: {}{}",
        names.join(", "),
        if others.len() > 20 { ", …" } else { "" }
    )
}

/// The columns a setting that names no usable column could name instead.
async fn integer_candidates(conn: &mut Conn, table: &TableName) -> String {
    match db::integer_columns(conn, table).await {
        Ok(integers) if integers.is_empty() => "the table has no integer column".to_owned(),
        Ok(integers) => {
            let integers: Vec<String> = integers.iter().map(one_line).collect();
            format!("integer columns of `{table}`: {}", integers.join(", "))
        }
        Err(e) => format!("cannot list the columns of `{table}`: {}", one_line(e)),
    }
}
