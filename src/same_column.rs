//! One column must be read once. A column that reaches the configuration
//! twice (spelled `Body` and `body`, one server under two `[servers.*]`
//! names, one shard reached as `127.0.0.1` and as `localhost`, a configured
//! server that discovery also finds under another host name) would have each
//! of its references counted twice, and every blob it references would look
//! like a `count_mismatch`. Names in the configuration cannot tell, so the
//! servers are asked: each server by what it says it is
//! ([`SERVER_IDENTITY_SQL`]), each column by the names `information_schema`
//! resolves it to, folded as the server folds them (column names are always
//! case-insensitive, database and table names unless
//! `lower_case_table_names` is 0).
//!
//! [`crate::db::inspect`] feeds every column it checks (the blob table's id
//! and count, then every reference column) to [`Columns::add`], which
//! refuses the second of two that are the same, and a reference column that
//! is the blob table's own id or count column.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::{Error, Result, one_line};

/// What a server says it is. Two servers on one host differ in port,
/// socket and data directory; two hosts in their host name. MariaDB has no
/// `@@server_uuid`; `@@server_id` is one more value that one server always
/// gives the same. A table-less `SELECT`: it reads no table.
pub const SERVER_IDENTITY_SQL: &str = "SELECT @@hostname, @@port, @@datadir, @@socket, \
    @@server_id, @@lower_case_table_names";

/// The answer to [`SERVER_IDENTITY_SQL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub hostname: String,
    pub port: u64,
    pub datadir: String,
    pub socket: String,
    pub server_id: u64,
    pub lower_case_table_names: u64,
}

impl ServerIdentity {
    /// `host:port` as the server names itself, for messages.
    pub fn address(&self) -> String {
        one_line(format!("{}:{}", self.hostname, self.port))
    }
}

/// A column as `information_schema.COLUMNS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl std::fmt::Display for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            one_line(format!("{}.{}.{}", self.schema, self.table, self.column))
        )
    }
}

/// What a column is to the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    BlobId,
    BlobCount,
    Reference,
}

/// The identity of one column: equal exactly when two entries are the same
/// column of the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    server: ServerIdentity,
    schema: String,
    table: String,
    column: String,
}

fn key(server: &ServerIdentity, resolved: &Resolved) -> Key {
    let fold_names = server.lower_case_table_names != 0;
    let fold = |name: &str, fold: bool| {
        if fold {
            name.to_lowercase()
        } else {
            name.to_owned()
        }
    };
    Key {
        server: server.clone(),
        schema: fold(&resolved.schema, fold_names),
        table: fold(&resolved.table, fold_names),
        column: fold(&resolved.column, true),
    }
}

struct Entry {
    role: Role,
    label: String,
    key: Key,
    resolved: Resolved,
}

/// The columns seen so far, and what each server said it is (asked once per
/// server).
pub struct Columns {
    servers: Vec<Option<ServerIdentity>>,
    seen: Vec<Entry>,
}

impl Columns {
    pub fn new(servers: usize) -> Columns {
        Columns {
            servers: vec![None; servers],
            seen: Vec::new(),
        }
    }

    /// What server `i` says it is, asked on `conn` the first time.
    pub async fn server(
        &mut self,
        i: usize,
        name: &str,
        conn: &mut Conn,
    ) -> Result<ServerIdentity> {
        if let Some(known) = &self.servers[i] {
            return Ok(known.clone());
        }
        type Row = (
            Option<String>,
            Option<u64>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
        );
        let row: Option<Row> =
            conn.query_first(SERVER_IDENTITY_SQL)
                .await
                .map_err(|e| Error::Query {
                    server: name.to_owned(),
                    reason: format!("asking the server what it is: {}", one_line(e)),
                })?;
        let Some((hostname, port, datadir, socket, server_id, lower_case_table_names)) = row else {
            return Err(Error::Query {
                server: name.to_owned(),
                reason: "asking the server what it is: no answer".into(),
            });
        };
        let identity = ServerIdentity {
            hostname: hostname.unwrap_or_default(),
            port: port.unwrap_or_default(),
            datadir: datadir.unwrap_or_default(),
            socket: socket.unwrap_or_default(),
            server_id: server_id.unwrap_or_default(),
            lower_case_table_names: lower_case_table_names.unwrap_or_default(),
        };
        self.servers[i] = Some(identity.clone());
        Ok(identity)
    }

    /// Adds one column; refuses it if an earlier one is the same column, or
    /// if it is a reference column that is the blob table's id or count.
    pub fn add(
        &mut self,
        role: Role,
        label: &str,
        server: &ServerIdentity,
        resolved: Resolved,
    ) -> Result<()> {
        let key = key(server, &resolved);
        if role == Role::Reference
            && let Some(twin) = self.seen.iter().find(|e| e.key == key)
        {
            let at = format!("(server {}, {})", server.address(), twin.resolved);
            return Err(Error::Usage(one_line(match twin.role {
                Role::Reference => format!(
                    "reference columns `{}` and `{label}` are the same column {at}: remove one, or every reference in it is counted twice",
                    twin.label
                ),
                Role::BlobCount => format!(
                    "reference column `{label}` is the blob table's count column {at}: it holds the counts, not references; remove it"
                ),
                Role::BlobId => format!(
                    "reference column `{label}` is the blob table's id column {at}: a blob's own id is no reference to it; remove it"
                ),
            })));
        }
        self.seen.push(Entry {
            role,
            label: label.to_owned(),
            key,
            resolved,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(hostname: &str, port: u64, lower_case_table_names: u64) -> ServerIdentity {
        ServerIdentity {
            hostname: hostname.into(),
            port,
            datadir: format!("/var/lib/mysql-{port}/"),
            socket: format!("/run/mysqld-{port}.sock"),
            server_id: 1,
            lower_case_table_names,
        }
    }

    fn column(schema: &str, table: &str, column: &str) -> Resolved {
        Resolved {
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
        }
    }

    fn columns_with_blob_table(at: &ServerIdentity) -> Columns {
        let mut columns = Columns::new(1);
        columns
            .add(Role::BlobId, "[blobs] id", at, column("G", "Blobs", "Id"))
            .unwrap();
        columns
            .add(
                Role::BlobCount,
                "[blobs] count",
                at,
                column("G", "Blobs", "NumReferences"),
            )
            .unwrap();
        columns
    }

    #[test]
    fn the_same_column_twice_is_refused_naming_both_labels() {
        let shard = server("db3", 3307, 0);
        let mut columns = columns_with_blob_table(&server("db1", 3306, 0));
        columns
            .add(
                Role::Reference,
                "a",
                &shard,
                column("S", "MessageData", "Body"),
            )
            .unwrap();
        // Column names are case-insensitive whatever the settings.
        let error = columns
            .add(
                Role::Reference,
                "b",
                &shard,
                column("S", "MessageData", "body"),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "reference columns `a` and `b` are the same column (server db3:3307, S.MessageData.Body): remove one, or every reference in it is counted twice"
        );
    }

    #[test]
    fn table_names_differ_by_case_only_where_the_server_says_so() {
        // lower_case_table_names = 0: `T` and `t` are two tables.
        let mut columns = Columns::new(1);
        let sensitive = server("db3", 3307, 0);
        columns
            .add(Role::Reference, "a", &sensitive, column("S", "T", "Ref"))
            .unwrap();
        columns
            .add(Role::Reference, "b", &sensitive, column("S", "t", "Ref"))
            .unwrap();
        columns
            .add(Role::Reference, "c", &sensitive, column("s", "T", "Ref"))
            .unwrap();
        // 1 or 2: one table.
        for setting in [1, 2] {
            let folding = server("db4", 3307, setting);
            let mut columns = Columns::new(1);
            columns
                .add(Role::Reference, "a", &folding, column("S", "T", "Ref"))
                .unwrap();
            assert!(
                columns
                    .add(Role::Reference, "b", &folding, column("s", "t", "REF"))
                    .is_err(),
                "lower_case_table_names = {setting}"
            );
        }
    }

    #[test]
    fn the_same_names_on_another_server_are_another_column() {
        let mut columns = Columns::new(3);
        let names = column("S", "MessageData", "Body");
        columns
            .add(Role::Reference, "a", &server("db3", 3307, 0), names.clone())
            .unwrap();
        // Another host, another port on the same host, another instance
        // behind the same host name and port (another data directory).
        columns
            .add(Role::Reference, "b", &server("db4", 3307, 0), names.clone())
            .unwrap();
        columns
            .add(Role::Reference, "c", &server("db3", 3308, 0), names.clone())
            .unwrap();
        let other_datadir = ServerIdentity {
            datadir: "/data/other/".into(),
            ..server("db3", 3307, 0)
        };
        columns
            .add(Role::Reference, "d", &other_datadir, names.clone())
            .unwrap();
        assert_eq!(columns.seen.len(), 4);
        assert!(
            columns
                .add(Role::Reference, "e", &server("db4", 3307, 0), names)
                .is_err()
        );
    }

    #[test]
    fn the_blob_tables_own_columns_are_no_reference_columns() {
        let global = server("db1", 3306, 0);
        let mut columns = columns_with_blob_table(&global);
        let error = columns
            .add(
                Role::Reference,
                "r",
                &global,
                column("G", "Blobs", "numreferences"),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "reference column `r` is the blob table's count column (server db1:3306, G.Blobs.NumReferences): it holds the counts, not references; remove it"
        );
        let error = columns
            .add(Role::Reference, "r", &global, column("G", "Blobs", "Id"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("is the blob table's id column"), "{error}");
        // Another column of the blob table may reference blobs.
        columns
            .add(
                Role::Reference,
                "r",
                &global,
                column("G", "Blobs", "ParentId"),
            )
            .unwrap();
    }
}
