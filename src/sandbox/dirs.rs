//! The sandboxes' private directories under a temp dir short enough for socket paths,
//! and the removal of those whose process died (killing any server left in them).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::DIR_PREFIX;

/// Unix socket paths must stay below ~108 bytes; keep a margin.
const MAX_SOCKET_PATH: usize = 100;

/// A short temp directory: `std::env::temp_dir()` unless that would make socket paths
/// too long, then `/tmp`.
pub(super) fn base_temp_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    // bcsb-<pid>-<seq>-<label:24>/mysqld.sock
    if tmp.as_os_str().len() + 60 < MAX_SOCKET_PATH {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

pub(super) fn sanitize_label(name: &str) -> String {
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
/// on the first [`Sandbox::start`](super::Sandbox::start) in a process; returns the
/// directories removed.
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
