//! `blobcheck demo`: two throwaway MariaDB servers (global and shard), the
//! bundled fixtures loaded into them, a SELECT-only account, and a check with
//! the example configuration pointed at them.

use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::sandbox::{Sandbox, SandboxOptions};

pub const EXAMPLE_CONFIG: &str = include_str!("../examples/proton.toml");
pub const GLOBAL_FIXTURE: &str = include_str!("../fixtures/global.sql");
pub const SHARD_FIXTURE: &str = include_str!("../fixtures/shard.sql");
pub const EXPECTED_FINDINGS: &str = include_str!("../fixtures/expected.jsonl");

/// The read-only account the demo (and the tests) check with.
pub const CHECKER_USER: &str = "blobcheck";
pub const CHECKER_PASSWORD: &str = "demo-only";

/// SQL that creates the read-only checking account for `databases`.
pub fn create_checker_sql(databases: &[&str]) -> String {
    let mut sql = format!(
        "CREATE USER IF NOT EXISTS '{CHECKER_USER}'@'%' IDENTIFIED BY '{CHECKER_PASSWORD}';\n"
    );
    for database in databases {
        sql.push_str(&format!(
            "GRANT SELECT ON `{database}`.* TO '{CHECKER_USER}'@'%';\n"
        ));
    }
    sql
}

/// The example configuration with its servers replaced by `servers`
/// (name, URL); everything else (tables, columns, labels) stays as shipped.
pub fn example_config_for(servers: &[(&str, String)]) -> Result<Config> {
    let mut table: toml::Table = EXAMPLE_CONFIG
        .parse()
        .map_err(|e| Error::Sandbox(format!("examples/proton.toml: {e}")))?;
    let mut replaced = toml::Table::new();
    for (name, url) in servers {
        let mut server = toml::Table::new();
        server.insert("url".into(), toml::Value::String(url.clone()));
        replaced.insert((*name).into(), toml::Value::Table(server));
    }
    table.insert("servers".into(), toml::Value::Table(replaced));
    Config::parse(&table.to_string(), Path::new("examples/proton.toml"))
}

/// The two fixture servers, loaded, with the checking account.
pub struct FixtureServers {
    pub global: Sandbox,
    pub shard: Sandbox,
}

impl FixtureServers {
    /// Starts both servers at once and loads the fixtures.
    pub fn start() -> Result<FixtureServers> {
        FixtureServers::start_with(false)
    }

    /// Starts both servers, with binary logs (row format, full images) and
    /// the checking account allowed to follow them when `logged`.
    pub fn start_with(logged: bool) -> Result<FixtureServers> {
        let sandbox_error = |e: crate::sandbox::SandboxError| Error::Sandbox(e.to_string());
        let options = move |name: &str, server_id: u32| {
            let options = SandboxOptions::new(name);
            if logged {
                options
                    .arg("--log-bin=mysql-bin")
                    .arg(format!("--server-id={server_id}"))
                    .arg("--binlog-format=ROW")
                    .arg("--binlog-row-image=FULL")
            } else {
                options
            }
        };
        let replication = if logged {
            format!(
                "GRANT REPLICATION SLAVE, REPLICATION CLIENT, SLAVE MONITOR ON *.* TO '{CHECKER_USER}'@'%';\n"
            )
        } else {
            String::new()
        };
        let shard_grants = create_checker_sql(&["ProtonMailShard"]) + &replication;
        let shard = std::thread::spawn(move || -> Result<Sandbox, crate::sandbox::SandboxError> {
            let shard = Sandbox::start(options("shard1", 2))?;
            shard.run_sql(SHARD_FIXTURE)?;
            shard.run_sql(&shard_grants)?;
            Ok(shard)
        });
        let global = Sandbox::start(options("global", 1)).map_err(sandbox_error)?;
        global.run_sql(GLOBAL_FIXTURE).map_err(sandbox_error)?;
        global
            .run_sql(&(create_checker_sql(&["ProtonMailGlobal"]) + &replication))
            .map_err(sandbox_error)?;
        let shard = shard
            .join()
            .map_err(|_| Error::Sandbox("starting the shard server failed".into()))?
            .map_err(sandbox_error)?;
        Ok(FixtureServers { global, shard })
    }

    /// The example configuration pointed at these servers, with the
    /// SELECT-only account.
    pub fn config(&self) -> Result<Config> {
        example_config_for(&[
            (
                "global",
                self.global.url_for(CHECKER_USER, CHECKER_PASSWORD),
            ),
            ("shard1", self.shard.url_for(CHECKER_USER, CHECKER_PASSWORD)),
        ])
    }
}

/// Runs the demo: start, load, check with `check`, clean up. Returns what
/// `check` returns (the number of findings).
pub async fn run(check: impl AsyncFnOnce(&Config) -> Result<u64>) -> Result<u64> {
    eprintln!("blobcheck demo: starting two throwaway MariaDB servers and loading fixtures/ ...");
    let servers = tokio::task::spawn_blocking(FixtureServers::start)
        .await
        .map_err(|e| Error::Sandbox(format!("demo setup failed: {e}")))??;
    eprintln!(
        "blobcheck demo: global on 127.0.0.1:{}, shard1 on 127.0.0.1:{}; checking as the SELECT-only user `{CHECKER_USER}` with examples/proton.toml",
        servers.global.port(),
        servers.shard.port()
    );
    let expected = EXPECTED_FINDINGS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let config = servers.config()?;
    let result = check(&config).await;
    // Shutting the servers down blocks for a moment; keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(servers)).await;
    let findings = result?;
    eprintln!(
        "blobcheck demo: servers stopped and removed; {findings} findings (fixtures/expected.jsonl lists {expected})"
    );
    Ok(findings)
}

/// `demo --watch`'s application: what it writes, in order, and the faults
/// it injects (a description of each, for the person watching).
pub struct DemoApp;

impl DemoApp {
    /// Two-step reference changes on both servers, done right: new blobs
    /// with their attachments, references added to existing blobs and
    /// removed again (count first on the way in, reference first on the
    /// way out).
    pub fn correct_steps() -> Vec<(bool, String)> {
        let mut steps = Vec::new();
        for i in 0..10u64 {
            let blob = 900_000 + i;
            let attachment = 800_000 + i;
            steps.push((true, format!(
                "INSERT INTO ProtonMailGlobal.BlobStorage (BlobStorageID, NumReferences, Hash, Size) VALUES ({blob}, 1, UNHEX(MD5('{blob}')), 10)"
            )));
            steps.push((false, format!(
                "INSERT INTO ProtonMailShard.Attachment (AttachmentID, UserID, FileName, MIMEType, FileSize, BlobStorageID) VALUES ({attachment}, 1, 'a', 'text/plain', 10, {blob})"
            )));
            steps.push((true, format!(
                "UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = NumReferences + 1 WHERE BlobStorageID = {blob}"
            )));
            steps.push((false, format!(
                "INSERT INTO ProtonMailShard.Attachment (AttachmentID, UserID, FileName, MIMEType, FileSize, BlobStorageID) VALUES ({}, 1, 'b', 'text/plain', 10, {blob})",
                attachment + 100
            )));
            steps.push((
                false,
                format!(
                    "DELETE FROM ProtonMailShard.Attachment WHERE AttachmentID = {}",
                    attachment + 100
                ),
            ));
            steps.push((true, format!(
                "UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = NumReferences - 1 WHERE BlobStorageID = {blob}"
            )));
        }
        steps
    }

    /// One buggy change of each kind, on blobs of its own: (description,
    /// steps), the last step being the bug.
    pub fn faults() -> Vec<(&'static str, Vec<(bool, String)>)> {
        let blob = |id: u64| {
            format!(
                "INSERT INTO ProtonMailGlobal.BlobStorage (BlobStorageID, NumReferences, Hash, Size) VALUES ({id}, 1, UNHEX(MD5('{id}')), 10)"
            )
        };
        let attach = |row: u64, id: u64| {
            format!(
                "INSERT INTO ProtonMailShard.Attachment (AttachmentID, UserID, FileName, MIMEType, FileSize, BlobStorageID) VALUES ({row}, 1, 'f', 'text/plain', 10, {id})"
            )
        };
        let count = |id: u64, to: &str| {
            format!(
                "UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = {to} WHERE BlobStorageID = {id}"
            )
        };
        vec![
            (
                "a reference added without its count",
                vec![
                    (true, blob(910_001)),
                    (false, attach(810_001, 910_001)),
                    (false, attach(810_011, 910_001)),
                ],
            ),
            (
                "a count incremented without a reference",
                vec![
                    (true, blob(910_002)),
                    (false, attach(810_002, 910_002)),
                    (true, count(910_002, "NumReferences + 1")),
                ],
            ),
            (
                "a count set to 0 while referenced",
                vec![
                    (true, blob(910_003)),
                    (false, attach(810_003, 910_003)),
                    (true, count(910_003, "0")),
                ],
            ),
            (
                "a referenced blob's row deleted",
                vec![
                    (true, blob(910_004)),
                    (false, attach(810_004, 910_004)),
                    (
                        true,
                        "DELETE FROM ProtonMailGlobal.BlobStorage WHERE BlobStorageID = 910004"
                            .to_owned(),
                    ),
                ],
            ),
            (
                "the last reference removed without the count",
                vec![
                    (true, blob(910_005)),
                    (false, attach(810_005, 910_005)),
                    (
                        false,
                        "DELETE FROM ProtonMailShard.Attachment WHERE AttachmentID = 810005"
                            .to_owned(),
                    ),
                ],
            ),
            (
                "a reference to a blob that never existed",
                vec![(false, attach(810_006, 910_006))],
            ),
        ]
    }
}
