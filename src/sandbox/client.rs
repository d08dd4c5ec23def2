//! SQL through the command-line client, over the server's socket as root: scripts,
//! files and queries whose rows come back unescaped.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use super::binaries::binaries;
use super::{Sandbox, SandboxError, opt, status_text};

impl Sandbox {
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
}

enum Input<'a> {
    Text(&'a str),
    File(fs::File),
}

pub(super) fn one_line(text: &str) -> String {
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
pub(super) fn unescape_batch(field: &str) -> String {
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
