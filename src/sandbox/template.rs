//! The template datadir: initialised once per process with `mariadb-install-db`,
//! removed at exit, and copied for each server.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Instant;

use super::binaries::{Binaries, is_root};
use super::dirs::base_temp_dir;
use super::{DIR_PREFIX, LOG_TAIL_LINES, SandboxError, opt, status_text};

/// The per-process template datadir, initialised on first use. A failed initialisation
/// is retried by the next caller.
pub(super) fn template_datadir(bins: &Binaries) -> Result<PathBuf, SandboxError> {
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
/// After a crash or kill, [`cleanup_stale_dirs`](super::cleanup_stale_dirs) in a later
/// process removes it.
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
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<(), SandboxError> {
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
