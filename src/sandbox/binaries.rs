//! The programs a sandbox runs: the server, `mariadb-install-db` and the client, found
//! once per process on PATH or in the usual server directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::SandboxError;

#[derive(Debug)]
pub(super) struct Binaries {
    pub(super) server: PathBuf,
    pub(super) install_db: PathBuf,
    pub(super) client: PathBuf,
}

const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/libexec",
    "/usr/local/sbin",
    "/usr/local/mysql/bin",
    "/usr/bin",
    "/usr/local/bin",
];

pub(super) fn binaries() -> Result<&'static Binaries, SandboxError> {
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

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
