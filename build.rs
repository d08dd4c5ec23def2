//! Records the commit the binary is built from, for `--version`: the
//! `BLOBCHECK_COMMIT` environment variable if the build sets it (a source
//! tarball has no git history), else `git rev-parse HEAD`, else `unknown`.
//! Edits not committed do not show: the commit names the history the build
//! started from.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BLOBCHECK_COMMIT");
    let commit = std::env::var("BLOBCHECK_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves (a commit, a checkout). Only files
            // that exist: cargo takes a missing one as always changed.
            let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
            watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            for path in watched {
                if let Some(file) = git(&["rev-parse", "--git-path", &path])
                    && std::path::Path::new(&file).exists()
                {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            Some(head)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BLOBCHECK_COMMIT={commit}");
}
