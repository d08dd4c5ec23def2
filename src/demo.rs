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
        let sandbox_error = |e: crate::sandbox::SandboxError| Error::Sandbox(e.to_string());
        let shard = std::thread::spawn(|| -> Result<Sandbox, crate::sandbox::SandboxError> {
            let shard = Sandbox::start(SandboxOptions::new("shard1"))?;
            shard.run_sql(SHARD_FIXTURE)?;
            shard.run_sql(&create_checker_sql(&["ProtonMailShard"]))?;
            Ok(shard)
        });
        let global = Sandbox::start(SandboxOptions::new("global")).map_err(sandbox_error)?;
        global.run_sql(GLOBAL_FIXTURE).map_err(sandbox_error)?;
        global
            .run_sql(&create_checker_sql(&["ProtonMailGlobal"]))
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
