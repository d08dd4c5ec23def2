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
