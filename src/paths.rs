//! The files one command writes or reads must be distinct: `--output F`
//! with `--checkpoint F` would leave F holding the checkpoint and no
//! findings. Two paths are the same file when they resolve to the same
//! place (another spelling, a symbolic link, also one that dangles) or,
//! for files that exist, are the same inode (a hard link).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Refuses the first pair of `files` (an option name and its path) that
/// name one file.
pub fn refuse_collisions(files: &[(&str, &Path)]) -> Result<()> {
    let places: Vec<(PathBuf, Option<(u64, u64)>)> = files
        .iter()
        .map(|(_, path)| (resolved(path), inode(path)))
        .collect();
    for (i, (first, first_path)) in files.iter().enumerate() {
        for (j, (second, second_path)) in files.iter().enumerate().skip(i + 1) {
            let same_place = places[i].0 == places[j].0;
            let same_inode = places[i].1.is_some() && places[i].1 == places[j].1;
            if same_place || same_inode {
                return Err(Error::Usage(format!(
                    "{first} {} and {second} {} are the same file: give each its own",
                    first_path.display(),
                    second_path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one whole: a temporary file beside it (`.NAME.PID.N.tmp`, which
/// no `*.prom` collector reads and no other writer shares), fsync, rename,
/// and the directory synced (best effort). Through a symbolic link the
/// link's target is written, not replaced by a file; a path that is not a
/// regular file (a device, a directory) is refused, so that `/dev/null`
/// stays a device.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let target = resolved(path);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(
            "a loop of symbolic links: give a file",
        ));
    }
    let existing = std::fs::metadata(&target).ok();
    if existing.as_ref().is_some_and(|m| !m.is_file()) {
        return Err(std::io::Error::other(
            "not a regular file: it is replaced on every write, so give a file",
        ));
    }
    // The temporary name stays within the file system's limit on names
    // (255 bytes) however long the target's is.
    use std::os::unix::ffi::OsStrExt;
    let target_name = target.file_name().unwrap_or_default().as_bytes();
    let mut name = b".".to_vec();
    name.extend_from_slice(&target_name[..target_name.len().min(200)]);
    name.extend_from_slice(
        format!(
            ".{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    let temporary = target.with_file_name(std::ffi::OsStr::from_bytes(&name));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        // A file replaced keeps its permissions (a 0640 metrics file stays
        // 0640).
        if let Some(existing) = &existing {
            file.set_permissions(existing.permissions())?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &target)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    // Make the rename itself durable. Best effort: some file systems cannot
    // sync a directory, and the new file is in place either way.
    if let Some(directory) = target.parent()
        && let Ok(directory) = std::fs::File::open(directory)
    {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Where `path` leads: absolute, with `.`/`..` and symbolic links resolved
/// as far as the file system allows, also for a file not created yet.
fn resolved(path: &Path) -> PathBuf {
    resolved_within(path, 16)
}

fn resolved_within(path: &Path, links_left: u32) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let parent = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    let parent = std::fs::canonicalize(&parent).unwrap_or_else(|_| lexical(&parent));
    // A link whose target does not exist yet: writing to it creates the target.
    if links_left > 0
        && let Ok(target) = std::fs::read_link(&absolute)
    {
        return resolved_within(&parent.join(target), links_left - 1);
    }
    match absolute.file_name() {
        Some(name) => parent.join(name),
        None => lexical(&absolute),
    }
}

/// `.` and `..` removed without asking the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_go_through_links_and_refuse_devices() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.prom");
        let link = dir.path().join("link.prom");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"one").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        write_atomically(&link, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let error = write_atomically(Path::new("/dev/null"), b"x").unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["link.prom", "target.prom"],
            "no temporary file left"
        );

        // Permissions kept; a loop of links refused; a long name written.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&target, b"three").unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::os::unix::fs::symlink(dir.path().join("l2"), dir.path().join("l1")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("l1"), dir.path().join("l2")).unwrap();
        let error = write_atomically(&dir.path().join("l1"), b"x").unwrap_err();
        assert!(error.to_string().contains("loop"), "{error}");
        assert!(
            std::fs::symlink_metadata(dir.path().join("l1"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let long = dir.path().join("m".repeat(250));
        write_atomically(&long, b"long").unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"long");
    }

    fn collide(a: &Path, b: &Path) -> bool {
        refuse_collisions(&[("--output", a), ("--checkpoint", b)]).is_err()
    }

    #[test]
    fn spellings_links_and_hard_links_of_one_file_collide() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("out");
        // Not created yet, two spellings.
        assert!(collide(
            &file,
            &d.join(".").join("sub").join("..").join("out")
        ));
        assert!(!collide(&file, &d.join("other")));
        // A dangling link to it, then a link to an existing file.
        std::os::unix::fs::symlink(&file, d.join("link")).unwrap();
        assert!(collide(&file, &d.join("link")));
        std::fs::write(&file, "x").unwrap();
        assert!(collide(&d.join("link"), &file));
        std::fs::hard_link(&file, d.join("hard")).unwrap();
        assert!(collide(&file, &d.join("hard")));
        let error = refuse_collisions(&[
            ("--output", &file),
            ("--metrics-file", &d.join("m")),
            ("--checkpoint", &d.join("hard")),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("--output") && error.contains("--checkpoint"),
            "{error}"
        );
        assert!(!error.contains('\n'));
    }
}
