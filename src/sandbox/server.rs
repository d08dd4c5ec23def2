//! One server's life: [`Sandbox::start`] (a fresh copy of the template datadir, a free
//! port, retried while the port turns out to be taken), the readiness wait, restart,
//! and shutdown (SIGTERM, then SIGKILL), also on drop.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::binaries::{Binaries, binaries, is_root};
use super::dirs::{base_temp_dir, cleanup_stale_dirs, sanitize_label};
use super::spawn::spawn_tied;
use super::template::{copy_dir, template_datadir};
use super::{DIR_PREFIX, LOG_TAIL_LINES, Sandbox, SandboxError, SandboxOptions, opt, status_text};

/// How long to wait for a freshly started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits for a clean shutdown before SIGKILL.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop_server`/`restart` wait for a clean shutdown before SIGKILL.
const STOP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many fresh ports to try when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

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
