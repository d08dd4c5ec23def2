//! The schema check made before a scan: every table and column exists,
//! holds integers and has an index that starts with it ([`inspect`]), and
//! what the scan learns from it ([`Schema`]).

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::connect::Databases;
use super::sql::{
    COLUMN_SQL, DATABASE_EXISTS_SQL, LEADING_INDEXES_SQL, PRIMARY_KEY_SQL, TABLE_EXISTS_SQL,
    add_index_sql,
};
use crate::config::{Config, Ident, TableName};
use crate::error::{Error, Result};
use crate::same_column::{Columns, Resolved, Role};

/// What the schema check learned about one integer column.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub data_type: String,
    pub unsigned: bool,
    pub nullable: bool,
}

/// The column types that can hold blob ids.
pub const INTEGER_TYPES: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];

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
        .exec_first(DATABASE_EXISTS_SQL, (table.database.as_str(),))
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
            TABLE_EXISTS_SQL,
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
            COLUMN_SQL,
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
