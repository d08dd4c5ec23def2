//! Connecting: one pool per server, TLS as configured, the session setup
//! every connection starts with, and the single connections made before the
//! pools exist (shard discovery, `doctor`).

use std::sync::Arc;
use std::time::Duration;

use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use super::dialect::write_privileges;
use crate::config::{Config, Server, Tls};
use crate::error::{Error, Result, one_line};

/// Connections per server the check opens at most, unless configured
/// (`[check] max_connections_per_server`): few enough to leave the
/// application most of a server's `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS_PER_SERVER: usize = 10;

/// Statements run on every new connection, before anything else.
pub const SESSION_SETUP: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION TRANSACTION READ ONLY",
];

/// One connection pool per configured server.
pub struct Databases {
    pub servers: Vec<Server>,
    pub pools: Vec<Pool>,
    /// Per server, one permit per connection the pool may open: the scan's
    /// and confirmation's queries wait here for a turn (within the retry
    /// budget), so that a pool smaller than the reads in flight queues
    /// them instead of timing them out.
    pub(super) permits: Vec<Arc<tokio::sync::Semaphore>>,
}

/// `host:port` of a server, for messages.
pub fn address(server: &Server) -> String {
    Opts::from_url(&server.url)
        .map(|o| format!("{}:{}", o.ip_or_hostname(), o.tcp_port()))
        .unwrap_or_else(|_| "?".into())
}

fn pool_for(server: &Server, max_connections: usize) -> Result<Pool> {
    let opts = Opts::from_url(&server.url).map_err(|e| Error::Connect {
        server: server.name.clone(),
        address: "?".into(),
        reason: one_line(e),
    })?;
    let constraints = PoolConstraints::new(0, max_connections.max(1)).expect("0 ≤ max");
    // Idle connections stay open for a minute (mysql_async's default closes
    // every connection above the minimum as soon as it is returned, so each
    // query would connect anew), and are not reset on return: the session
    // only ever holds SESSION_SETUP, and a reset would drop the prepared
    // statements with it.
    let pool_opts = PoolOpts::default()
        .with_constraints(constraints)
        .with_inactive_connection_ttl(Duration::from_secs(60))
        .with_reset_connection(false);
    let mut builder = OptsBuilder::from_opts(opts)
        .init(SESSION_SETUP.iter().map(|s| s.to_string()).collect())
        .pool_opts(pool_opts)
        .stmt_cache_size(64);
    if let Some(password) = &server.password {
        builder = builder.pass(Some(password.0.clone()));
    }
    builder = builder.ssl_opts(ssl_opts(&server.tls));
    Ok(Pool::new(builder))
}

fn ssl_opts(tls: &Tls) -> Option<SslOpts> {
    let with_ca = |ca: &Option<std::path::PathBuf>| {
        let opts = SslOpts::default();
        match ca {
            Some(ca) => opts
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true),
            None => opts,
        }
    };
    match tls {
        Tls::Disabled => None,
        Tls::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        Tls::VerifyCa(ca) => Some(with_ca(ca).with_danger_skip_domain_validation(true)),
        Tls::VerifyIdentity(ca) => Some(with_ca(ca)),
    }
}

/// One connection of its own to `server` (no pool), within the connect
/// timeout: for a binary-log stream, which keeps its connection for good.
pub async fn replication_conn(server: &Server) -> Result<Conn> {
    let failed = |reason: String| Error::Connect {
        server: server.name.clone(),
        address: address(server),
        reason,
    };
    let opts = Opts::from_url(&server.url).map_err(|e| failed(one_line(e)))?;
    let mut builder = OptsBuilder::from_opts(opts)
        .init(SESSION_SETUP.iter().map(|s| s.to_string()).collect())
        .ssl_opts(ssl_opts(&server.tls));
    if let Some(password) = &server.password {
        builder = builder.pass(Some(password.0.clone()));
    }
    match tokio::time::timeout(server.connect_timeout, Conn::new(builder)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(failed(one_line(e))),
        Err(_) => Err(failed(format!(
            "no answer within {} s",
            server.connect_timeout.as_secs()
        ))),
    }
}

/// One connection to one server, outside any pool: for the few queries made
/// before the check's pools exist (shard discovery).
pub async fn connect_once(server: &Server) -> Result<(Pool, Conn)> {
    let pool = pool_for(server, 1)?;
    let conn = conn_within_timeout(server, &pool).await?;
    Ok((pool, conn))
}

/// A connection from `pool` to `server`, within the server's connect
/// timeout.
async fn conn_within_timeout(server: &Server, pool: &Pool) -> Result<Conn> {
    let failed = |reason: String| Error::Connect {
        server: server.name.clone(),
        address: address(server),
        reason,
    };
    match tokio::time::timeout(server.connect_timeout, pool.get_conn()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(failed(one_line(e))),
        Err(_) => Err(failed(format!(
            "no answer within {} s",
            server.connect_timeout.as_secs()
        ))),
    }
}

impl Databases {
    /// Pools already opened, `max_connections` connections each at most.
    pub fn from_pools(servers: Vec<Server>, pools: Vec<Pool>, max_connections: usize) -> Databases {
        Databases {
            permits: (0..servers.len())
                .map(|_| Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))))
                .collect(),
            servers,
            pools,
        }
    }

    /// Opens a pool per server and proves each one answers, so a wrong host
    /// or password is reported before any work starts.
    pub async fn connect(config: &Config, max_connections_per_server: usize) -> Result<Databases> {
        let max = max_connections_per_server.max(1);
        let mut pools = Vec::with_capacity(config.servers.len());
        for server in &config.servers {
            pools.push(pool_for(server, max)?);
        }
        let databases = Databases::from_pools(config.servers.clone(), pools, max);
        let checks = (0..databases.servers.len()).map(|i| databases.conn(i));
        futures_util::future::try_join_all(checks).await?;
        Ok(databases)
    }

    /// Warns about every server where the account could do more than read.
    pub async fn warn_if_writable(&self) {
        for (i, server) in self.servers.iter().enumerate() {
            let Ok(mut conn) = self.conn(i).await else {
                continue;
            };
            match write_privileges(&mut conn).await {
                Ok(privileges) if !privileges.is_empty() => tracing::warn!(
                    "server `{}`: the account can do more than read ({}); blobcheck only reads, but use a SELECT-only account",
                    server.name,
                    privileges.join(", ")
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(
                    "server `{}`: SHOW GRANTS failed: {}",
                    server.name,
                    one_line(e)
                ),
            }
        }
    }

    /// A connection to server `i`, within the server's connect timeout.
    pub async fn conn(&self, i: usize) -> Result<Conn> {
        conn_within_timeout(&self.servers[i], &self.pools[i]).await
    }

    pub fn query_error(&self, i: usize, e: impl std::fmt::Display) -> Error {
        Error::Query {
            server: self.servers[i].name.clone(),
            reason: one_line(e),
        }
    }

    /// Closes every pool; a server that no longer answers is given its
    /// connect timeout, then left.
    pub async fn disconnect(self) {
        for (pool, server) in self.pools.into_iter().zip(&self.servers) {
            let _ = tokio::time::timeout(server.connect_timeout, pool.disconnect()).await;
        }
    }
}
