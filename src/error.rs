//! The one error type of the library. Every variant renders as a single line
//! that names the server, table or option at fault, so the CLI can print it as
//! is, and none of them ever carries a password.

use std::path::PathBuf;

/// Why a check could not be carried out (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read configuration {path}: {reason}")]
    ConfigRead { path: PathBuf, reason: String },

    #[error("configuration {path}: {reason}")]
    ConfigInvalid { path: PathBuf, reason: String },

    #[error("server `{server}` ({address}): cannot connect: {reason}")]
    Connect {
        server: String,
        address: String,
        reason: String,
    },

    #[error("server `{server}`: {reason}")]
    Schema { server: String, reason: String },

    #[error("server `{server}`: query failed: {reason}")]
    Query { server: String, reason: String },

    #[error("{0}")]
    Usage(String),

    /// A server is not set up for `watch` (binary log, grants, server id).
    #[error("server `{server}`: {reason}")]
    Prerequisite { server: String, reason: String },

    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },

    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },

    #[error("{0}")]
    Sandbox(String),

    #[error(
        "interrupted by {signal}: the check stopped before its end; its summary and metrics say what it checked"
    )]
    Interrupted { signal: String },

    #[error(
        "interrupted by {signal}: a read that did not return held the stop up, so the check was abandoned without a summary; the metrics say the run failed, and --resume continues from the last checkpoint saved"
    )]
    Abandoned { signal: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Folds white space and escapes control characters, so that an error from
/// a server, the OS or a configuration value stays one printable line.
pub(crate) fn one_line(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    folded
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Replaces every double-quoted string in a parser's message with `"…"`:
/// such messages quote the offending value, which may be a password.
pub(crate) fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    if inside {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_control_characters() {
        assert_eq!(one_line("a\nb\r\tc"), "a b c");
        assert_eq!(one_line("x\u{1b}[2J\0y"), "x\\u{1b}[2J\\0y");
    }

    #[test]
    fn quoted_values_are_dropped() {
        assert_eq!(
            without_quoted_values(r#"invalid type: string "mysql://u:pw@h", expected struct"#),
            r#"invalid type: string "…", expected struct"#
        );
        assert_eq!(without_quoted_values("no quotes"), "no quotes");
        assert_eq!(without_quoted_values(r#"open "secret"#), r#"open "…"#);
    }
}
