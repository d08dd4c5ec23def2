//! Shard discovery: the mail shards are the `Shard` table's rows of the mail
//! type (`Type = 2`). Each is turned into a server and the configured
//! template of reference columns, so a new shard is checked from the first
//! run after it appears in the table. Credentials come from blobcheck's own
//! configuration, never from the table's `Username`/`Pwd` columns.

use mysql_async::Row;
use mysql_async::prelude::Queryable;

use crate::config::{Config, Discovery, Ident, ReferenceColumn, Server, TableName};
use crate::db::connect_once;
use crate::error::{Error, Result, one_line};

/// One row of the `Shard` table, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: u64,
    pub host: String,
    pub port: u16,
    pub database: Ident,
}

impl Shard {
    /// The server name discovered shards go by in reports.
    pub fn server_name(&self) -> String {
        format!("shard{}", self.id)
    }
}

/// `SELECT … FROM Shard WHERE Type = n`, through its `Type` index.
pub fn shards_sql(discovery: &Discovery) -> String {
    format!(
        "SELECT `ShardID`, `Hostname`, `Port`, `DBname` FROM {} WHERE `Type` = {} ORDER BY `ShardID`",
        discovery.table.quoted(),
        discovery.shard_type
    )
}

/// Reads the mail shards from the `Shard` table.
pub async fn read_shards(config: &Config, discovery: &Discovery) -> Result<Vec<Shard>> {
    let server = &config.servers[discovery.server];
    let (pool, mut conn) = connect_once(server).await?;
    let failed = |reason: String| Error::Query {
        server: server.name.clone(),
        reason: format!("reading the shards from {}: {reason}", discovery.table),
    };
    let rows: Vec<Row> = conn
        .query(shards_sql(discovery))
        .await
        .map_err(|e| failed(one_line(e)))?;
    drop(conn);
    let _ = pool.disconnect().await;

    let mut shards = Vec::with_capacity(rows.len());
    for mut row in rows {
        let id: Option<u64> = row.take_opt(0).and_then(|v| v.ok());
        let host: Option<String> = row.take_opt(1).and_then(|v| v.ok());
        let port: Option<u64> = row.take_opt(2).and_then(|v| v.ok());
        let database: Option<String> = row.take_opt(3).and_then(|v| v.ok());
        let (Some(id), Some(host), Some(database)) = (id, host, database) else {
            tracing::warn!(
                "{}: a shard row without ShardID, Hostname or DBname is skipped",
                discovery.table
            );
            continue;
        };
        let port = match port {
            None => 3306,
            Some(port) => u16::try_from(port)
                .map_err(|_| failed(format!("shard {id} has port {port}, not a TCP port")))?,
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(failed(format!(
                "shard {id} has host name `{}`, which is not one",
                host.escape_debug()
            )));
        }
        let database =
            Ident::new(&database).map_err(|e| failed(format!("shard {id} DBname: {e}")))?;
        shards.push(Shard {
            id,
            host,
            port,
            database,
        });
    }
    Ok(shards)
}

/// The configuration with every discovered shard added as a server with the
/// template's reference columns. Without `[discovery]` it is returned as is.
pub async fn expand(config: &Config) -> Result<Config> {
    let Some(discovery) = &config.discovery else {
        return Ok(config.clone());
    };
    let shards = read_shards(config, discovery).await?;
    let described: Vec<String> = shards
        .iter()
        .map(|s| format!("{} ({}:{}/{})", s.server_name(), s.host, s.port, s.database))
        .collect();
    tracing::info!(
        "discovered {} shards in {}: {}",
        shards.len(),
        discovery.table,
        if described.is_empty() {
            "none".to_owned()
        } else {
            described.join(", ")
        }
    );
    add_shards(config, discovery, &shards)
}

/// Adds the shards to the configuration (pure, for tests).
pub fn add_shards(config: &Config, discovery: &Discovery, shards: &[Shard]) -> Result<Config> {
    let mut expanded = config.clone();
    let conflict = |reason: String| Error::ConfigInvalid {
        path: "[discovery]".into(),
        reason,
    };
    for shard in shards {
        let name = shard.server_name();
        if expanded.servers.iter().any(|s| s.name == name) {
            return Err(conflict(format!(
                "discovered shard {} would be named `{name}`, which a [servers.{name}] section already uses; rename that section",
                shard.id
            )));
        }
        let server = Server {
            name: name.clone(),
            url: format!("mysql://{}@{}:{}", discovery.user, shard.host, shard.port),
            password: discovery.password.clone(),
            connect_timeout: discovery.connect_timeout,
            tls: discovery.tls.clone(),
            discovered: true,
        };
        let index = expanded.servers.len();
        expanded.servers.push(server);
        for template in &discovery.references {
            let table = TableName {
                database: shard.database.clone(),
                table: template.table.clone(),
            };
            // The same shard also configured by hand would count its
            // references twice.
            if let Some(twin) = expanded.references.iter().find(|r| {
                r.server != index
                    && same_address(&expanded.servers[r.server], &expanded.servers[index])
                    && r.table == table
                    && r.column == template.column
            }) {
                return Err(conflict(format!(
                    "{table}.{} on {}:{} is both configured ({}) and discovered (shard {}); remove one",
                    template.column, shard.host, shard.port, twin.label, shard.id
                )));
            }
            expanded.references.push(ReferenceColumn {
                server: index,
                label: format!("{name}:{table}.{}", template.column),
                table,
                column: template.column.clone(),
            });
        }
    }
    if expanded.references.is_empty() {
        return Err(conflict(
            "no reference column: no [[references]] entry and no shard found".into(),
        ));
    }
    Ok(expanded)
}

fn same_address(a: &Server, b: &Server) -> bool {
    let address = |s: &Server| {
        mysql_async::Opts::from_url(&s.url)
            .map(|o| (o.ip_or_hostname().to_owned(), o.tcp_port()))
            .ok()
    };
    address(a).is_some() && address(a) == address(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[servers.global]
url = "mysql://checker@10.0.0.1:3306"
[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"
[[references]]
server = "global"
table = "ProtonMailGlobal.SentMessage"
column = "BlobStorageID"
[discovery]
server = "global"
user = "checker"
password_env = "BLOBCHECK_DISCOVERY_TEST_PASSWORD"
[[discovery.references]]
table = "MessageData"
column = "Body"
[[discovery.references]]
table = "Attachment"
column = "BlobStorageID"
"#;

    fn shard(id: u64, host: &str, port: u16) -> Shard {
        Shard {
            id,
            host: host.into(),
            port,
            database: Ident::new("ProtonMailShard").unwrap(),
        }
    }

    fn config(text: &str) -> Config {
        // SAFETY: tests in this module are the only readers of this variable.
        unsafe { std::env::set_var("BLOBCHECK_DISCOVERY_TEST_PASSWORD", "shard-pw") };
        Config::parse(text, Path::new("d.toml")).unwrap()
    }

    #[test]
    fn every_shard_gets_the_template_and_the_configured_account() {
        let config = config(CONFIG);
        let discovery = config.discovery.clone().unwrap();
        assert_eq!(discovery.table.to_string(), "ProtonMailGlobal.Shard");
        assert_eq!(discovery.shard_type, 2);
        let expanded = add_shards(
            &config,
            &discovery,
            &[shard(2, "10.0.0.2", 3306), shard(7, "db7", 3307)],
        )
        .unwrap();
        let labels: Vec<&str> = expanded
            .references
            .iter()
            .map(|r| r.label.as_str())
            .collect();
        assert_eq!(
            labels,
            [
                "global:ProtonMailGlobal.SentMessage.BlobStorageID",
                "shard2:ProtonMailShard.MessageData.Body",
                "shard2:ProtonMailShard.Attachment.BlobStorageID",
                "shard7:ProtonMailShard.MessageData.Body",
                "shard7:ProtonMailShard.Attachment.BlobStorageID",
            ]
        );
        let shard7 = &expanded.servers[2];
        assert_eq!(shard7.url, "mysql://checker@db7:3307");
        assert_eq!(shard7.password.as_ref().unwrap().0, "shard-pw");
        assert!(shard7.discovered);
        assert_eq!(expanded.references[3].server, 2);
    }

    #[test]
    fn a_shard_configured_and_discovered_is_refused() {
        let text = CONFIG.replace(
            "[discovery]",
            "[servers.s]\nurl = \"mysql://c@10.0.0.2:3306\"\n[[references]]\nserver = \"s\"\ntable = \"ProtonMailShard.MessageData\"\ncolumn = \"Body\"\n[discovery]",
        );
        let config = config(&text);
        let discovery = config.discovery.clone().unwrap();
        let error = add_shards(&config, &discovery, &[shard(2, "10.0.0.2", 3306)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "configuration [discovery]: ProtonMailShard.MessageData.Body on 10.0.0.2:3306 is both configured (s:ProtonMailShard.MessageData.Body) and discovered (shard 2); remove one"
        );
        // A shard at another address is another server: both are checked,
        // each column on its own server.
        let expanded = add_shards(&config, &discovery, &[shard(2, "10.0.0.3", 3306)]).unwrap();
        let columns: Vec<(&str, &str)> = expanded
            .references
            .iter()
            .map(|r| (r.label.as_str(), expanded.servers[r.server].url.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                (
                    "global:ProtonMailGlobal.SentMessage.BlobStorageID",
                    "mysql://checker@10.0.0.1:3306"
                ),
                (
                    "s:ProtonMailShard.MessageData.Body",
                    "mysql://c@10.0.0.2:3306"
                ),
                (
                    "shard2:ProtonMailShard.MessageData.Body",
                    "mysql://checker@10.0.0.3:3306"
                ),
                (
                    "shard2:ProtonMailShard.Attachment.BlobStorageID",
                    "mysql://checker@10.0.0.3:3306"
                ),
            ]
        );
    }

    #[test]
    fn discovery_needs_a_template() {
        let text = CONFIG.replace("[[discovery.references]]\ntable = \"MessageData\"\ncolumn = \"Body\"\n[[discovery.references]]\ntable = \"Attachment\"\ncolumn = \"BlobStorageID\"\n", "references = []\n");
        let error = Config::parse(&text, Path::new("d.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("nothing to check on the shards"), "{error}");
    }
}
