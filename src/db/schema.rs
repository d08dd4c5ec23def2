//! The schema check made before a scan: every table and column exists,
//! holds integers and has an index that starts with it ([`inspect`]), and
//! what the scan learns from it ([`Schema`]).
//!
//! The inspection is made of per-table and per-column steps
//! ([`lookup_table`], [`lookup_column`], [`leading_indexes`],
//! [`blob_id_index`], [`primary_key_columns`]) that `inspect` turns into
//! errors at the first problem, and `doctor` into report lines, every
//! problem at once.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::connect::Databases;
use super::sql::{
    COLUMN_SQL, COLUMN_TYPES_SQL, DATABASE_EXISTS_SQL, LEADING_INDEXES_SQL, PRIMARY_KEY_SQL,
    TABLE_EXISTS_SQL, TABLES_IN_SQL, add_index_sql,
};
use crate::config::{BlobTable, Config, Ident, ReferenceColumn, TableName};
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

/// Whether a configured table is there, as far as the account can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableLookup {
    NoDatabase,
    NoTable,
    Found,
}

/// Whether `table`'s database, then the table itself, exist.
pub async fn lookup_table(
    conn: &mut Conn,
    table: &TableName,
) -> std::result::Result<TableLookup, mysql_async::Error> {
    let database_exists: Option<u8> = conn
        .exec_first(DATABASE_EXISTS_SQL, (table.database.as_str(),))
        .await?;
    if database_exists.is_none() {
        return Ok(TableLookup::NoDatabase);
    }
    let table_exists: Option<u8> = conn
        .exec_first(
            TABLE_EXISTS_SQL,
            (table.database.as_str(), table.table.as_str()),
        )
        .await?;
    Ok(match table_exists {
        Some(_) => TableLookup::Found,
        None => TableLookup::NoTable,
    })
}

/// One column as `information_schema` describes it.
#[derive(Debug, Clone)]
pub struct ColumnFacts {
    /// Lower case: `bigint`.
    pub data_type: String,
    /// As the server shows it: `bigint(20) unsigned`.
    pub column_type: String,
    pub nullable: bool,
    /// Database, table and column as the server spells them.
    pub resolved: Resolved,
}

impl ColumnFacts {
    /// Whether the column can hold blob ids.
    pub fn is_integer(&self) -> bool {
        INTEGER_TYPES.contains(&self.data_type.as_str())
    }

    pub fn info(&self) -> ColumnInfo {
        ColumnInfo {
            data_type: self.data_type.clone(),
            unsigned: self.column_type.to_ascii_lowercase().contains("unsigned"),
            nullable: self.nullable,
        }
    }

    /// `bigint(20) unsigned NOT NULL`.
    pub fn type_text(&self) -> String {
        format!(
            "{}{}",
            self.column_type,
            if self.nullable { " NULL" } else { " NOT NULL" }
        )
    }
}

/// The column `column` of `table`, `None` when the table has no such
/// column (or the account may not see it).
pub async fn lookup_column(
    conn: &mut Conn,
    table: &TableName,
    column: &Ident,
) -> std::result::Result<Option<ColumnFacts>, mysql_async::Error> {
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
        .await?;
    Ok(row.map(
        |(data_type, column_type, nullable, schema, table_name, column_name)| ColumnFacts {
            data_type: data_type.to_ascii_lowercase(),
            column_type,
            nullable: nullable.eq_ignore_ascii_case("YES"),
            resolved: Resolved {
                schema,
                table: table_name,
                column: column_name,
            },
        },
    ))
}

/// The names of `table`'s integer columns, in table order: the columns a
/// setting that names no usable column could name instead.
pub async fn integer_columns(
    conn: &mut Conn,
    table: &TableName,
) -> std::result::Result<Vec<String>, mysql_async::Error> {
    let columns: Vec<(String, String)> = conn
        .exec(
            COLUMN_TYPES_SQL,
            (table.database.as_str(), table.table.as_str()),
        )
        .await?;
    Ok(columns
        .into_iter()
        .filter(|(_, data_type)| INTEGER_TYPES.contains(&data_type.to_ascii_lowercase().as_str()))
        .map(|(name, _)| name)
        .collect())
}

/// Up to 21 table names of `database`, by name: what a table name that is
/// not found may have meant.
pub async fn tables_in(
    conn: &mut Conn,
    database: &Ident,
) -> std::result::Result<Vec<String>, mysql_async::Error> {
    conn.exec(TABLES_IN_SQL, (database.as_str(),)).await
}

/// The schema check of one column: found, and an integer type.
async fn inspect_column(
    db: &Databases,
    server: usize,
    conn: &mut Conn,
    table: &TableName,
    column: &Ident,
) -> Result<ColumnFacts> {
    let schema_error = |reason: String| Error::Schema {
        server: db.servers[server].name.clone(),
        reason,
    };
    let lookup = lookup_table(conn, table)
        .await
        .map_err(|e| db.query_error(server, e))?;
    match lookup {
        TableLookup::NoDatabase => {
            return Err(schema_error(format!(
                "database `{}` not found (or the account may not read it)",
                table.database
            )));
        }
        TableLookup::NoTable => {
            return Err(schema_error(format!(
                "table `{table}` not found (or the account may not read it)"
            )));
        }
        TableLookup::Found => {}
    }
    let found = lookup_column(conn, table, column)
        .await
        .map_err(|e| db.query_error(server, e))?;
    let Some(found) = found else {
        return Err(schema_error(format!(
            "column `{column}` not found in table `{table}`"
        )));
    };
    if !found.is_integer() {
        return Err(schema_error(format!(
            "column `{table}`.`{column}` is {}, not an integer type: it cannot hold blob ids",
            found.column_type
        )));
    }
    Ok(found)
}

/// An index whose first column is the one asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadingIndex {
    pub name: String,
    pub unique: bool,
    /// How many columns the index has.
    pub columns: u64,
}

impl LeadingIndex {
    pub fn is_primary(&self) -> bool {
        self.name == "PRIMARY"
    }
}

/// Indexes whose first column is `column`, best first: the primary key,
/// then unique, then the rest by name.
pub async fn leading_indexes(
    conn: &mut Conn,
    table: &TableName,
    column: &str,
) -> std::result::Result<Vec<LeadingIndex>, mysql_async::Error> {
    let rows: Vec<(String, bool, u64)> = conn
        .exec(
            LEADING_INDEXES_SQL,
            (table.database.as_str(), table.table.as_str(), column),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(name, unique, columns)| LeadingIndex {
            name,
            unique,
            columns,
        })
        .collect())
}

/// The index the scan walks the blob ids by: the best unique index of the
/// id column alone (the primary key, if it is that).
pub fn blob_id_index(indexes: &[LeadingIndex]) -> Option<&LeadingIndex> {
    indexes.iter().find(|i| i.unique && i.columns == 1)
}

/// The primary-key columns of `table`, in key order; empty when it has
/// none.
pub async fn primary_key_columns(
    conn: &mut Conn,
    table: &TableName,
) -> std::result::Result<Vec<ServerIdent>, mysql_async::Error> {
    let columns: Vec<String> = conn
        .exec(
            PRIMARY_KEY_SQL,
            (table.database.as_str(), table.table.as_str()),
        )
        .await?;
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

impl BlobScan {
    /// The configured blob table, read through `index`.
    pub fn new(blobs: &BlobTable, index: ServerIdent, count_nullable: bool) -> BlobScan {
        BlobScan {
            server: blobs.server,
            table: blobs.table.clone(),
            id: blobs.id.clone(),
            count: blobs.count.clone(),
            index,
            count_nullable,
        }
    }
}

impl ReferenceScan {
    /// The configured reference column, read through `index`.
    pub fn new(
        reference: &ReferenceColumn,
        index: ServerIdent,
        info: ColumnInfo,
        primary_key: Vec<ServerIdent>,
    ) -> ReferenceScan {
        ReferenceScan {
            server: reference.server,
            table: reference.table.clone(),
            column: reference.column.clone(),
            index,
            info,
            label: reference.label.clone(),
            primary_key,
        }
    }
}

/// Checks that every table and column exists, holds integers and has an
/// index that starts with it; the errors say how to fix what is not so.
pub async fn inspect(config: &Config, db: &Databases) -> Result<Schema> {
    // Every column once: see `same_column`.
    let mut columns = Columns::new(db.servers.len());
    let blobs = inspect_blobs(config, db, &mut columns).await?;
    let mut references = Vec::with_capacity(config.references.len());
    for r in &config.references {
        references.push(inspect_reference(r, db, &mut columns).await?);
    }
    Ok(Schema { blobs, references })
}

async fn inspect_blobs(config: &Config, db: &Databases, columns: &mut Columns) -> Result<BlobScan> {
    let b = &config.blobs;
    let mut conn = db.conn(b.server).await?;
    let server = &db.servers[b.server];
    let itself = columns.server(b.server, &server.name, &mut conn).await?;
    let id = inspect_column(db, b.server, &mut conn, &b.table, &b.id).await?;
    columns.add(Role::BlobId, "[blobs] id", &itself, id.resolved)?;
    let count = inspect_column(db, b.server, &mut conn, &b.table, &b.count).await?;
    columns.add(Role::BlobCount, "[blobs] count", &itself, count.resolved)?;
    let indexes = leading_indexes(&mut conn, &b.table, b.id.as_str())
        .await
        .map_err(|e| db.query_error(b.server, e))?;
    let Some(index) = blob_id_index(&indexes) else {
        return Err(Error::Schema {
            server: server.name.clone(),
            reason: format!(
                "`{}`.`{}` must be the primary key (or a unique index of that column alone): the scan walks it in order",
                b.table, b.id
            ),
        });
    };
    Ok(BlobScan::new(
        b,
        ServerIdent(index.name.clone()),
        count.nullable,
    ))
}

async fn inspect_reference(
    r: &ReferenceColumn,
    db: &Databases,
    columns: &mut Columns,
) -> Result<ReferenceScan> {
    let mut conn = db.conn(r.server).await?;
    let server = &db.servers[r.server];
    let itself = columns.server(r.server, &server.name, &mut conn).await?;
    let column = inspect_column(db, r.server, &mut conn, &r.table, &r.column).await?;
    let info = column.info();
    columns.add(Role::Reference, &r.label, &itself, column.resolved)?;
    let indexes = leading_indexes(&mut conn, &r.table, r.column.as_str())
        .await
        .map_err(|e| db.query_error(r.server, e))?;
    let Some(index) = indexes.into_iter().next() else {
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
    let primary_key = primary_key_columns(&mut conn, &r.table)
        .await
        .map_err(|e| db.query_error(r.server, e))?;
    Ok(ReferenceScan::new(
        r,
        ServerIdent(index.name),
        info,
        primary_key,
    ))
}
