//! Throwaway MariaDB/MySQL servers for `blobcheck demo` and the integration tests.
//!
//! Each [`Sandbox`] owns a private temporary directory (`/tmp/bcsb-<pid>-<seq>-<label>`)
//! holding the datadir, the unix socket, the pid file, the error log and the server's
//! tmpdir, and a `mariadbd` process listening on `127.0.0.1:<free port>` with a
//! password-less `root` account (reachable over TCP and the socket).
//!
//! The tmpdir is private because a starting server deletes every `#sql*` file in its
//! tmpdir, which would break the temporary tables of other servers sharing `/tmp`.
//!
//! * One template datadir is initialised per process (lazily, with
//!   `mariadb-install-db`) and copied for each server, so starting a server costs
//!   a file copy plus server start-up.
//! * Servers never outlive the process that started them: `mariadbd` is spawned
//!   with `PR_SET_PDEATHSIG = SIGKILL` from one dedicated, never-exiting spawner
//!   thread (the death signal fires when the *thread* that forked exits).
//! * Directories left behind by dead processes are removed on the first start
//!   in a process (see [`cleanup_stale_dirs`]).
//! * Dropping a [`Sandbox`] shuts the server down (SIGTERM, up to ~10 s, then
//!   SIGKILL) and removes its directory; it never panics.
//!
//! This file holds the handle ([`Sandbox`], its accessors and URLs), its options and
//! its errors; the rest has one concern per file:
//!
//! * `server.rs`: one server's start (free port, readiness wait) and stop;
//! * `client.rs`: SQL through the command-line client;
//! * `template.rs`: the per-process template datadir, and copying it;
//! * `dirs.rs`: the private directories, and removing those of dead processes;
//! * `spawn.rs`: spawning servers tied to this process;
//! * `binaries.rs`: finding the server, install-db and client programs.

mod binaries;
mod client;
mod dirs;
mod server;
mod spawn;
mod template;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};

pub use dirs::{cleanup_stale_dirs, pid_alive};

/// Prefix of every directory this module creates under the temp dir.
const DIR_PREFIX: &str = "bcsb-";
/// Lines of error.log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 20;

/// Options for [`Sandbox::start`].
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Label used in directory names and messages.
    pub name: String,
    /// Extra `mariadbd` arguments, appended last (e.g. `--server-id=2`, `--log-bin`).
    pub extra_args: Vec<String>,
}

impl SandboxOptions {
    /// Options with the given label and no extra server arguments.
    pub fn new(name: impl Into<String>) -> Self {
        SandboxOptions {
            name: name.into(),
            extra_args: Vec::new(),
        }
    }

    /// Append one extra `mariadbd` argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// Errors from starting, driving or stopping a sandbox server. All messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "MariaDB server binary not found: install mariadb-server (apt-get install mariadb-server)"
    )]
    ServerNotFound,
    #[error(
        "mariadb-install-db not found: install mariadb-server (apt-get install mariadb-server)"
    )]
    InstallDbNotFound,
    #[error(
        "MariaDB command-line client not found: install mariadb-client (apt-get install mariadb-client)"
    )]
    ClientNotFound,
    #[error("sandbox: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("mariadb-install-db failed ({status}): {output}")]
    InstallDb { status: String, output: String },
    #[error("sandbox '{name}': server exited during start-up ({status}); error.log: {log_tail}")]
    ServerExited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error(
        "sandbox '{name}': no free port after {attempts} attempts (last tried {port}); error.log: {log_tail}"
    )]
    PortInUse {
        name: String,
        attempts: usize,
        port: u16,
        log_tail: String,
    },
    #[error("sandbox '{name}': server not ready after {secs} s; error.log: {log_tail}")]
    StartTimeout {
        name: String,
        secs: u64,
        log_tail: String,
    },
    #[error("sandbox '{name}': server did not shut down within {secs} s and was killed")]
    ShutdownTimeout { name: String, secs: u64 },
    #[error("sandbox '{name}': server is not running")]
    NotRunning { name: String },
    #[error("sandbox '{name}': server is already running")]
    AlreadyRunning { name: String },
    #[error("sandbox '{name}': client failed ({status}): {stderr}")]
    Client {
        name: String,
        status: String,
        stderr: String,
    },
}

impl SandboxError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A running (or stopped, after [`Sandbox::stop_server`]) throwaway server.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    dir: PathBuf,
    datadir: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
    error_log: PathBuf,
    tmpdir: PathBuf,
    /// Size of error.log when the current server run started.
    log_offset: u64,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl Sandbox {
    /// The label given in [`SandboxOptions::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Unix socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's datadir.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// The sandbox's private directory (datadir, socket, pid file, error log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the server's error log.
    pub fn error_log(&self) -> &Path {
        &self.error_log
    }

    /// `mysql://root@127.0.0.1:PORT` (root, empty password, over TCP).
    pub fn root_url(&self) -> String {
        self.url_for("root", "")
    }

    /// `mysql://USER:PASSWORD@127.0.0.1:PORT`, percent-encoding user and password.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        if password.is_empty() {
            format!("mysql://{}@127.0.0.1:{}", pct_encode(user), self.port)
        } else {
            format!(
                "mysql://{}:{}@127.0.0.1:{}",
                pct_encode(user),
                pct_encode(password),
                self.port
            )
        }
    }
}

/// `--option=` followed by a path that need not be UTF-8.
fn opt(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

/// How a process ended, as error messages say it.
fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Percent-encodes all but the unreserved characters of RFC 3986, for URL user info.
fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::client::{one_line, unescape_batch};
    use super::dirs::sanitize_label;
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(unescape_batch(r"a\tb\nc\\d"), "a\tb\nc\\d");
        assert_eq!(unescape_batch("plain"), "plain");
    }

    #[test]
    fn labels_and_urls() {
        assert_eq!(sanitize_label("src/replica 1"), "src_replica_1");
        assert_eq!(sanitize_label(""), "sb");
        assert_eq!(pct_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(
            SandboxError::ServerNotFound.to_string(),
            "MariaDB server binary not found: install mariadb-server (apt-get install mariadb-server)"
        );
        assert_eq!(
            one_line("ERROR 1064 (42000) at line 1:\nnear 'x'\n"),
            "ERROR 1064 (42000) at line 1: | near 'x'"
        );
    }

    #[test]
    fn stat_parsing() {
        assert!(pid_alive(std::process::id()));
    }
}
