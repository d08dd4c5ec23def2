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

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every directory this module creates under the temp dir.
const DIR_PREFIX: &str = "bcsb-";
/// How long to wait for a freshly started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits for a clean shutdown before SIGKILL.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop_server`/`restart` wait for a clean shutdown before SIGKILL.
const STOP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many fresh ports to try when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of error.log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 20;
/// Unix socket paths must stay below ~108 bytes; keep a margin.
const MAX_SOCKET_PATH: usize = 100;

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
    /// Create a fresh datadir (copied from the per-process template), start a server on a
    /// free port and wait until it answers.
    pub fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        let bins = binaries()?;
        static CLEANUP: OnceLock<()> = OnceLock::new();
        CLEANUP.get_or_init(|| {
            cleanup_stale_dirs();
        });
        let template = template_datadir(bins)?;

        let label = sanitize_label(&opts.name);
        let name = if opts.name.is_empty() {
            "sandbox".to_string()
        } else {
            opts.name.clone()
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base_temp_dir().join(format!("{DIR_PREFIX}{}-{seq}-{label}", std::process::id()));
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir)
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;

        let mut sb = Sandbox {
            name,
            datadir: dir.join("data"),
            socket: dir.join("mysqld.sock"),
            pid_file: dir.join("mysqld.pid"),
            error_log: dir.join("error.log"),
            tmpdir: dir.join("tmp"),
            log_offset: 0,
            dir,
            port: 0,
            extra_args: opts.extra_args,
            child: None,
        };
        // From here on, `sb`'s Drop removes the directory if anything fails.

        let mut last_port = 0;
        let mut last_tail = String::new();
        for _ in 0..PORT_ATTEMPTS {
            if sb.datadir.exists() {
                // A failed attempt may have touched the datadir: start from a fresh copy.
                let _ = fs::remove_dir_all(&sb.datadir);
            }
            let copy_started = Instant::now();
            copy_dir(&template, &sb.datadir)?;
            tracing::trace!(
                sandbox = %sb.name,
                elapsed_ms = copy_started.elapsed().as_millis() as u64,
                "copied template datadir"
            );
            let _ = fs::remove_file(&sb.error_log);
            sb.port = free_port()?;
            last_port = sb.port;
            match sb.start_server() {
                Ok(()) => {
                    tracing::debug!(
                        sandbox = %sb.name,
                        port = sb.port,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "sandbox server started"
                    );
                    return Ok(sb);
                }
                Err(SandboxError::ServerExited { log_tail, .. }) if port_conflict(&log_tail) => {
                    tracing::debug!(sandbox = %sb.name, port = sb.port, "port taken, retrying");
                    last_tail = log_tail;
                }
                Err(e) => return Err(e),
            }
        }
        Err(SandboxError::PortInUse {
            name: sb.name.clone(),
            attempts: PORT_ATTEMPTS,
            port: last_port,
            log_tail: last_tail,
        })
    }

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

    /// OS pid of the server process, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is currently alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
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

    /// Run SQL text through the command-line client over the socket as root.
    /// Stops at the first error; the error carries the client's stderr.
    pub fn run_sql(&self, sql: &str) -> Result<(), SandboxError> {
        self.client(Input::Text(sql), false).map(|_| ())
    }

    /// Run a SQL file through the command-line client over the socket as root.
    pub fn load_sql_file(&self, path: &Path) -> Result<(), SandboxError> {
        let file = fs::File::open(path)
            .map_err(|e| SandboxError::io(format!("opening {}", path.display()), e))?;
        self.client(Input::File(file), false).map(|_| ())
    }

    /// Run a query through the client and return its rows (batch mode, no headers).
    /// Values are unescaped (`\t`, `\n`, `\\`, `\0`); SQL NULL comes back as `"NULL"`.
    /// With several statements, the rows of all result sets are concatenated.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, SandboxError> {
        let out = self.client(Input::Text(sql), true)?;
        Ok(out
            .lines()
            .map(|line| line.split('\t').map(unescape_batch).collect())
            .collect())
    }

    /// Clean shutdown, then start again on the same port and datadir.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        self.stop_server()?;
        self.start_server()
    }

    /// Clean shutdown (SIGTERM, then SIGKILL after 30 s, reported as an error).
    /// Does nothing if the server is not running.
    pub fn stop_server(&mut self) -> Result<(), SandboxError> {
        self.shutdown(STOP_SHUTDOWN_TIMEOUT)
    }

    /// Start the server on the existing port and datadir and wait until it answers.
    pub fn start_server(&mut self) -> Result<(), SandboxError> {
        if self.is_running() {
            return Err(SandboxError::AlreadyRunning {
                name: self.name.clone(),
            });
        }
        self.child = None;
        let bins = binaries()?;
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.pid_file);
        fs::create_dir_all(&self.tmpdir)
            .map_err(|e| SandboxError::io(format!("creating {}", self.tmpdir.display()), e))?;

        let mut cmd = Command::new(&bins.server);
        cmd.arg("--no-defaults")
            .arg(opt("--datadir=", &self.datadir))
            .arg(opt("--socket=", &self.socket))
            .arg(opt("--tmpdir=", &self.tmpdir))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(opt("--pid-file=", &self.pid_file))
            .arg(opt("--log-error=", &self.error_log))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=256M")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--innodb-doublewrite=0");
        let wants_binlog = self.extra_args.iter().any(|a| {
            let a = a.replace('_', "-");
            a == "--log-bin" || a.starts_with("--log-bin=")
        });
        if !wants_binlog {
            cmd.arg("--skip-log-bin");
        }
        cmd.arg("--max-connections=500");
        if is_root() {
            cmd.arg("--user=root");
        }
        cmd.args(&self.extra_args);
        let console = fs::File::create(self.dir.join("console.log"))
            .map_err(|e| SandboxError::io("creating console.log", e))?;
        let console2 = console
            .try_clone()
            .map_err(|e| SandboxError::io("creating console.log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(console2));

        self.log_offset = fs::metadata(&self.error_log).map(|m| m.len()).unwrap_or(0);
        let child = spawn_tied(cmd)
            .map_err(|e| SandboxError::io(format!("starting {}", bins.server.display()), e))?;
        self.child = Some(child);
        self.wait_ready(bins)
    }

    fn wait_ready(&mut self, bins: &Binaries) -> Result<(), SandboxError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut delay = Duration::from_millis(10);
        loop {
            let status = match self.child.as_mut() {
                Some(c) => c
                    .try_wait()
                    .map_err(|e| SandboxError::io("waiting for server", e))?,
                None => {
                    return Err(SandboxError::NotRunning {
                        name: self.name.clone(),
                    });
                }
            };
            if let Some(status) = status {
                self.child = None;
                return Err(SandboxError::ServerExited {
                    name: self.name.clone(),
                    status: status_text(status),
                    log_tail: self.log_tail(),
                });
            }
            if self.socket.exists() && self.ping(bins) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log_tail = self.log_tail();
                let _ = self.shutdown(Duration::from_secs(2));
                return Err(SandboxError::StartTimeout {
                    name: self.name.clone(),
                    secs: READY_TIMEOUT.as_secs(),
                    log_tail,
                });
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// One `SELECT 1` through the client over the socket.
    fn ping(&self, bins: &Binaries) -> bool {
        Command::new(&bins.client)
            .arg("--no-defaults")
            .arg(opt("--socket=", &self.socket))
            .args(["--user=root", "--connect-timeout=5", "--batch"])
            .args(["-e", "SELECT 1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn client(&self, input: Input<'_>, capture: bool) -> Result<String, SandboxError> {
        let bins = binaries()?;
        if self.child.is_none() {
            return Err(SandboxError::NotRunning {
                name: self.name.clone(),
            });
        }
        let mut cmd = Command::new(&bins.client);
        cmd.arg("--no-defaults")
            .arg(opt("--socket=", &self.socket))
            .args([
                "--user=root",
                "--connect-timeout=10",
                "--default-character-set=utf8mb4",
                "--batch",
                "--skip-column-names",
            ])
            .stdout(if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        let output = match input {
            Input::File(f) => {
                cmd.stdin(Stdio::from(f));
                cmd.output()
                    .map_err(|e| SandboxError::io("running the client", e))?
            }
            Input::Text(sql) => {
                cmd.stdin(Stdio::piped());
                let mut child = cmd
                    .spawn()
                    .map_err(|e| SandboxError::io("running the client", e))?;
                let stdin = child.stdin.take();
                let sql = sql.to_owned();
                // Feed stdin from another thread so large inputs and outputs cannot deadlock.
                let writer = thread::spawn(move || {
                    if let Some(mut stdin) = stdin {
                        let _ = stdin.write_all(sql.as_bytes());
                    }
                });
                let out = child
                    .wait_with_output()
                    .map_err(|e| SandboxError::io("running the client", e))?;
                let _ = writer.join();
                out
            }
        };
        if !output.status.success() {
            return Err(SandboxError::Client {
                name: self.name.clone(),
                status: status_text(output.status),
                stderr: one_line(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. Never panics.
    fn shutdown(&mut self, timeout: Duration) -> Result<(), SandboxError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(SandboxError::ShutdownTimeout {
            name: self.name.clone(),
            secs: timeout.as_secs(),
        })
    }

    /// Last lines error.log got since this server run started, joined into one line.
    fn log_tail(&self) -> String {
        let bytes = fs::read(&self.error_log).unwrap_or_default();
        let from = usize::try_from(self.log_offset)
            .unwrap_or(0)
            .min(bytes.len());
        let mut text = String::from_utf8_lossy(&bytes[from..]).into_owned();
        if text.trim().is_empty() {
            text = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        if lines.is_empty() {
            return "(empty)".to_string();
        }
        lines[start..].join(" | ")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(DROP_SHUTDOWN_TIMEOUT) {
            tracing::warn!("{e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(
                "sandbox '{}': removing {}: {e}",
                self.name,
                self.dir.display()
            );
        }
    }
}

enum Input<'a> {
    Text(&'a str),
    File(fs::File),
}

// ---------------------------------------------------------------------------------------
// Binaries

#[derive(Debug)]
struct Binaries {
    server: PathBuf,
    install_db: PathBuf,
    client: PathBuf,
}

const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/libexec",
    "/usr/local/sbin",
    "/usr/local/mysql/bin",
    "/usr/bin",
    "/usr/local/bin",
];

fn binaries() -> Result<&'static Binaries, SandboxError> {
    static BINS: OnceLock<Result<Binaries, Missing>> = OnceLock::new();
    let found = BINS.get_or_init(|| {
        Ok(Binaries {
            server: find_binary(&["mariadbd", "mysqld"]).ok_or(Missing::Server)?,
            install_db: find_binary(&["mariadb-install-db", "mysql_install_db"])
                .ok_or(Missing::InstallDb)?,
            client: find_binary(&["mariadb", "mysql"]).ok_or(Missing::Client)?,
        })
    });
    found.as_ref().map_err(|missing| match missing {
        Missing::Server => SandboxError::ServerNotFound,
        Missing::InstallDb => SandboxError::InstallDbNotFound,
        Missing::Client => SandboxError::ClientNotFound,
    })
}

#[derive(Debug, Clone, Copy)]
enum Missing {
    Server,
    InstallDb,
    Client,
}

/// First of `names` found on PATH or in the usual server directories.
fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SEARCH_DIRS.iter().map(PathBuf::from));
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------
// Template datadir

/// The per-process template datadir, initialised on first use. A failed initialisation
/// is retried by the next caller.
fn template_datadir(bins: &Binaries) -> Result<PathBuf, SandboxError> {
    static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut guard = TEMPLATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = guard.as_ref() {
        return Ok(path.clone());
    }
    let root = base_temp_dir().join(format!("{DIR_PREFIX}{}-tpl", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)
        .map_err(|e| SandboxError::io(format!("creating {}", root.display()), e))?;
    register_template_cleanup(&root);
    let datadir = root.join("data");
    // A private tmpdir: a starting server deletes every `#sql*` file in its tmpdir, which
    // breaks other servers (including concurrent install-db runs) sharing /tmp.
    let tmpdir = root.join("tmp");
    fs::create_dir_all(&tmpdir)
        .map_err(|e| SandboxError::io(format!("creating {}", tmpdir.display()), e))?;
    let started = Instant::now();
    let mut cmd = Command::new(&bins.install_db);
    cmd.arg("--no-defaults")
        .arg(opt("--datadir=", &datadir))
        .arg(opt("--tmpdir=", &tmpdir))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db");
    if is_root() {
        cmd.arg("--user=root");
    }
    // Help install-db find the server when it is not in its compiled-in location.
    if let Some(dir) = bins.server.parent() {
        let mut path = OsString::from(dir);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::io(format!("running {}", bins.install_db.display()), e))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&root);
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        // Keep the server's messages, not install-db's long advice that follows them.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take_while(|l| !l.starts_with("The problem could be conflicting"))
            .collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        return Err(SandboxError::InstallDb {
            status: status_text(out.status),
            output: lines[start..].join(" | "),
        });
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sandbox template datadir initialised"
    );
    *guard = Some(datadir.clone());
    Ok(datadir)
}

/// Remove the template directory at normal process exit (statics are never dropped).
/// After a crash or kill, [`cleanup_stale_dirs`] in a later process removes it.
fn register_template_cleanup(root: &Path) {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    if ROOT.set(root.to_path_buf()).is_ok() {
        extern "C" fn remove_template() {
            if let Some(root) = ROOT.get() {
                let _ = fs::remove_dir_all(root);
            }
        }
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe {
            libc::atexit(remove_template);
        }
    }
}

/// Recursive copy of a directory tree (files, directories, symlinks). Files are copied by
/// a few threads: creating the ~200 small files of a datadir dominates the cost.
fn copy_dir(from: &Path, to: &Path) -> Result<(), SandboxError> {
    let mut files = Vec::new();
    copy_tree_structure(from, to, &mut files)?;
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let chunk = files.len().div_ceil(threads).max(1);
    thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<(), SandboxError> {
                    for (src, dst) in part {
                        fs::copy(src, dst).map_err(|e| {
                            SandboxError::io(format!("copying {}", src.display()), e)
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(SandboxError::io(
                    "copying datadir",
                    io::Error::other("copy thread panicked"),
                ))
            })
        })
    })
}

/// Create the directories and symlinks of `from` under `to`; collect the files to copy.
fn copy_tree_structure(
    from: &Path,
    to: &Path,
    files: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), SandboxError> {
    let ctx = |p: &Path| format!("copying template datadir to {}", p.display());
    fs::create_dir_all(to).map_err(|e| SandboxError::io(ctx(to), e))?;
    let entries = fs::read_dir(from).map_err(|e| SandboxError::io(ctx(to), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SandboxError::io(ctx(to), e))?;
        let ty = entry
            .file_type()
            .map_err(|e| SandboxError::io(ctx(to), e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree_structure(&src, &dst, files)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| SandboxError::io(ctx(&dst), e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| SandboxError::io(ctx(&dst), e))?;
        } else {
            files.push((src, dst));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Directories

/// A short temp directory: `std::env::temp_dir()` unless that would make socket paths
/// too long, then `/tmp`.
fn base_temp_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    // bcsb-<pid>-<seq>-<label:24>/mysqld.sock
    if tmp.as_os_str().len() + 60 < MAX_SOCKET_PATH {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

fn sanitize_label(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if s.is_empty() { "sb".to_string() } else { s }
}

/// Remove sandbox directories (`bcsb-<pid>-...` under the temp dir and `/tmp`) whose owning
/// process no longer exists, killing any server still running from them. Runs automatically
/// on the first [`Sandbox::start`] in a process; returns the directories removed.
pub fn cleanup_stale_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !Path::new("/proc/self").exists() {
        return removed;
    }
    let mut bases = vec![base_temp_dir(), PathBuf::from("/tmp")];
    bases.dedup();
    for base in bases {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || pid_alive(pid) {
                continue;
            }
            let path = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            kill_orphan_server(&path);
            if fs::remove_dir_all(&path).is_ok() {
                tracing::debug!("removed stale sandbox dir {}", path.display());
                removed.push(path);
            }
        }
    }
    removed
}

/// If a server from a stale directory is somehow still running, kill it.
fn kill_orphan_server(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join("mysqld.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    if cmdline.windows(needle.len()).any(|w| w == needle)
        && let Ok(pid) = libc::pid_t::try_from(pid)
    {
        // SAFETY: kill(2) on a process whose command line names our stale directory.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a process with this pid exists and has not finished dying (Linux /proc).
///
/// A process counts as dead once it is a zombie with no threads left: a multi-threaded
/// process's main thread can show up as a zombie while other threads still run (and
/// still hold its sockets open).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) S ..."; comm may contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    if !matches!(state, Some('Z' | 'X')) {
        return true;
    }
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| t.file_name().to_str() != Some(&pid.to_string()))
                .count()
                > 0
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Spawning

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawn `cmd` so that it is SIGKILLed when this process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so all such
/// children are forked by one dedicated thread that lives as long as the process.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid,
        // setpgid) and builds io::Errors without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Own process group: terminal signals (Ctrl-C) go to us, not the server;
                // we shut it down ourselves.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
    }

    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let result = req.cmd.spawn();
                    if let Err(mpsc::SendError(Ok(mut child))) = req.reply.send(result) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start sandbox spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(SpawnRequest {
            cmd,
            reply: reply_tx,
        });
    if sent.is_err() {
        return Err(io::Error::other("sandbox spawner thread is not running"));
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("sandbox spawner thread is not running")))
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn free_port() -> Result<u16, SandboxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| SandboxError::io("finding a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| SandboxError::io("finding a free port", e))?
        .port();
    drop(listener);
    Ok(port)
}

fn port_conflict(log_tail: &str) -> bool {
    log_tail.contains("Address already in use")
        || log_tail.contains("Bind on TCP/IP port")
        || log_tail.contains("another server running on port")
}

fn opt(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "(no output)".to_string()
    } else {
        lines.join(" | ")
    }
}

/// Undo the client's batch-mode escaping of a single value.
fn unescape_batch(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

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
