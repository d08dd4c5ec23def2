//! Configuration: the TOML file, its validation, and the typed model the rest
//! of the library works from.
//!
//! Everything that ends up in SQL passes through [`Ident`], which accepts only
//! plain identifiers and always renders them backtick-quoted, so nothing from
//! the file reaches a query unvalidated or unquoted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

mod names;
mod settings;

pub use names::{Ident, TableName};
pub use settings::{CheckSettings, Method, Overrides};

/// One server the check reads from.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// The connection URL with any password removed; the password is kept
    /// apart so that printing a `Server` can never leak it.
    pub url: String,
    pub password: Option<Secret>,
    pub connect_timeout: std::time::Duration,
    pub tls: Tls,
    /// Found in the `Shard` table by `[discovery]`, not configured.
    pub discovered: bool,
}

/// How the connection to a server is encrypted, as MySQL's `--ssl-mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP.
    Disabled,
    /// Encrypted; the server's certificate is not checked.
    Required,
    /// Encrypted; the certificate must chain to the CA (the built-in web
    /// roots when no CA file is given), whatever host name it names.
    VerifyCa(Option<PathBuf>),
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyIdentity(Option<PathBuf>),
}

/// A password. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The blob table: its primary key and reference-count columns.
#[derive(Debug, Clone)]
pub struct BlobTable {
    pub server: usize,
    pub table: TableName,
    pub id: Ident,
    pub count: Ident,
}

/// One column that holds references to blob ids.
#[derive(Debug, Clone)]
pub struct ReferenceColumn {
    pub server: usize,
    pub table: TableName,
    pub column: Ident,
    /// How the column is named in reports: `server:database.table.column`
    /// unless the configuration gives a name.
    pub label: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub servers: Vec<Server>,
    pub blobs: BlobTable,
    pub references: Vec<ReferenceColumn>,
    pub check: CheckSettings,
    /// Mail shards to find at run time, if configured.
    pub discovery: Option<Discovery>,
}

/// `[discovery]`: the mail shards are read from the global `Shard` table at
/// the start of every run, and a template of reference columns is applied to
/// each, so a new shard is checked without editing the configuration.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The server holding the `Shard` table.
    pub server: usize,
    pub table: TableName,
    /// `Shard.Type` of mail shards.
    pub shard_type: u64,
    /// How to log in to every discovered shard: blobcheck's own account,
    /// never the table's `Username`/`Pwd`.
    pub user: String,
    pub password: Option<Secret>,
    pub tls: Tls,
    pub connect_timeout: std::time::Duration,
    pub references: Vec<ReferenceTemplate>,
}

/// A reference column on every discovered shard: `table` is a table name in
/// the shard's database (`Shard.DBname`).
#[derive(Debug, Clone)]
pub struct ReferenceTemplate {
    pub table: Ident,
    pub column: Ident,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    servers: BTreeMap<String, RawServer>,
    blobs: RawBlobs,
    #[serde(default)]
    references: Vec<RawReference>,
    #[serde(default)]
    check: CheckSettings,
    discovery: Option<RawDiscovery>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    server: String,
    #[serde(default = "default_shard_table")]
    table: String,
    #[serde(rename = "type", default = "default_shard_type")]
    shard_type: u64,
    user: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    connect_timeout_secs: Option<u64>,
    ssl_mode: Option<String>,
    ssl_ca: Option<PathBuf>,
    references: Vec<RawTemplate>,
}

fn default_shard_table() -> String {
    "ProtonMailGlobal.Shard".to_owned()
}

fn default_shard_type() -> u64 {
    2
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    table: String,
    column: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    connect_timeout_secs: Option<u64>,
    ssl_mode: Option<String>,
    ssl_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlobs {
    server: String,
    table: String,
    id: String,
    count: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReference {
    server: String,
    table: String,
    column: String,
    name: Option<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigRead {
            path: path.to_owned(),
            reason: crate::error::one_line(e),
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `origin` is only used in error messages and
    /// to resolve relative `password_file` paths.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let invalid = |reason: String| Error::ConfigInvalid {
            path: origin.to_owned(),
            reason: crate::error::one_line(reason),
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(toml_error_line(&e, text)))?;

        if raw.servers.is_empty() {
            return Err(invalid("no [servers.NAME] section".into()));
        }
        let names: Vec<String> = raw.servers.keys().cloned().collect();
        let server_index = |name: &str, place: &str| -> Result<usize> {
            names.iter().position(|n| n == name).ok_or_else(|| {
                invalid(format!(
                    "{place}: unknown server `{name}` (configured: {})",
                    names.join(", ")
                ))
            })
        };

        let mut servers = Vec::with_capacity(raw.servers.len());
        for (name, raw_server) in &raw.servers {
            servers.push(
                build_server(name, raw_server, origin)
                    .map_err(|reason| invalid(format!("[servers.{name}]: {reason}")))?,
            );
        }

        let blobs = BlobTable {
            server: server_index(&raw.blobs.server, "[blobs]")?,
            table: TableName::parse(&raw.blobs.table)
                .map_err(|e| invalid(format!("[blobs] table: {e}")))?,
            id: Ident::new(&raw.blobs.id).map_err(|e| invalid(format!("[blobs] id: {e}")))?,
            count: Ident::new(&raw.blobs.count)
                .map_err(|e| invalid(format!("[blobs] count: {e}")))?,
        };

        if raw.references.is_empty() && raw.discovery.is_none() {
            return Err(invalid(
                "no [[references]] entry and no [discovery] section".into(),
            ));
        }
        let mut references: Vec<ReferenceColumn> = Vec::with_capacity(raw.references.len());
        for (n, r) in raw.references.iter().enumerate() {
            let place = format!("[[references]] #{}", n + 1);
            let server = server_index(&r.server, &place)?;
            let table =
                TableName::parse(&r.table).map_err(|e| invalid(format!("{place} table: {e}")))?;
            let column =
                Ident::new(&r.column).map_err(|e| invalid(format!("{place} column: {e}")))?;
            let label = r
                .name
                .clone()
                .unwrap_or_else(|| format!("{}:{}.{}", r.server, table, column));
            if let Some(twin) = references
                .iter()
                .find(|o| o.server == server && o.table == table && o.column == column)
            {
                return Err(invalid(format!(
                    "{place}: {} is listed twice; each column must appear once or its references would be counted twice",
                    twin.label
                )));
            }
            if references.iter().any(|o| o.label == label) {
                return Err(invalid(format!("{place}: name `{label}` is used twice")));
            }
            references.push(ReferenceColumn {
                server,
                table,
                column,
                label,
            });
        }

        raw.check
            .validate()
            .map_err(|e| invalid(format!("[check]: {e}")))?;

        let discovery = match &raw.discovery {
            None => None,
            Some(d) => Some(
                build_discovery(d, server_index(&d.server, "[discovery]")?, origin)
                    .map_err(|reason| invalid(format!("[discovery]: {reason}")))?,
            ),
        };

        Ok(Config {
            servers,
            blobs,
            references,
            check: raw.check,
            discovery,
        })
    }
}

fn build_discovery(
    raw: &RawDiscovery,
    server: usize,
    origin: &Path,
) -> std::result::Result<Discovery, String> {
    let table = TableName::parse(&raw.table).map_err(|e| format!("table: {e}"))?;
    if raw.user.is_empty() || raw.user.contains(['@', ':', '/']) {
        return Err(format!(
            "user `{}` is not a plain user name",
            raw.user.escape_debug()
        ));
    }
    // The shards' account is described like a server, minus the address.
    let account = build_server(
        "discovered",
        &RawServer {
            url: format!("mysql://{}@localhost", raw.user),
            password_env: raw.password_env.clone(),
            password_file: raw.password_file.clone(),
            password_credential: raw.password_credential.clone(),
            connect_timeout_secs: raw.connect_timeout_secs,
            ssl_mode: raw.ssl_mode.clone(),
            ssl_ca: raw.ssl_ca.clone(),
        },
        origin,
    )?;
    if raw.references.is_empty() {
        return Err("no [[discovery.references]] entry: nothing to check on the shards".into());
    }
    let mut references: Vec<ReferenceTemplate> = Vec::new();
    for (n, r) in raw.references.iter().enumerate() {
        let place = format!("[[discovery.references]] #{}", n + 1);
        let table = Ident::new(&r.table).map_err(|e| {
            format!("{place} table: {e} (give the table alone; the database is the shard's DBname)")
        })?;
        let column = Ident::new(&r.column).map_err(|e| format!("{place} column: {e}"))?;
        if references
            .iter()
            .any(|o| o.table == table && o.column == column)
        {
            return Err(format!("{place}: {table}.{column} is listed twice"));
        }
        references.push(ReferenceTemplate { table, column });
    }
    Ok(Discovery {
        server,
        table,
        shard_type: raw.shard_type,
        user: raw.user.clone(),
        password: account.password,
        tls: account.tls,
        connect_timeout: account.connect_timeout,
        references,
    })
}

fn build_server(name: &str, raw: &RawServer, origin: &Path) -> std::result::Result<Server, String> {
    Ident::new(name).map_err(|e| format!("server name: {e}"))?;
    let opts = mysql_async::Opts::from_url(&raw.url)
        .map_err(|e| format!("invalid url: {}", crate::error::one_line(e)))?;
    let mut password = opts.pass().map(|p| Secret(p.to_owned()));
    let sources = [
        raw.password_env.is_some(),
        raw.password_file.is_some(),
        raw.password_credential.is_some(),
    ];
    if sources.iter().filter(|given| **given).count() > 1 {
        return Err(
            "give one of password_env, password_file and password_credential, not several".into(),
        );
    }
    if let Some(var) = &raw.password_env {
        let value = std::env::var(var)
            .map_err(|_| format!("password_env: environment variable {var} is not set"))?;
        password = Some(Secret(value));
    }
    let file = match (&raw.password_file, &raw.password_credential) {
        (Some(file), _) if file.is_relative() => {
            Some(origin.parent().unwrap_or(Path::new(".")).join(file))
        }
        (Some(file), _) => Some(file.clone()),
        (None, Some(name)) => Some(credential_path(name)?),
        (None, None) => None,
    };
    if let Some(file) = &file {
        let value = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "{} {}: {}",
                if raw.password_file.is_some() {
                    "password_file"
                } else {
                    "password_credential"
                },
                file.display(),
                crate::error::one_line(e)
            )
        })?;
        // A trailing newline is an artefact of how the file was written,
        // never part of the password.
        password = Some(Secret(value.trim_end_matches(['\n', '\r']).to_owned()));
    }
    let ca = raw.ssl_ca.as_ref().map(|file| {
        if file.is_relative() {
            origin.parent().unwrap_or(Path::new(".")).join(file)
        } else {
            file.clone()
        }
    });
    if let Some(ca) = &ca
        && !ca.is_file()
    {
        return Err(format!("ssl_ca {}: no such file", ca.display()));
    }
    let mode = raw
        .ssl_mode
        .as_deref()
        .unwrap_or(if ca.is_some() {
            "verify_identity"
        } else {
            "disabled"
        })
        .to_ascii_lowercase()
        .replace('-', "_");
    let tls = match mode.as_str() {
        "disabled" => Tls::Disabled,
        "required" => Tls::Required,
        "verify_ca" => Tls::VerifyCa(ca.clone()),
        "verify_identity" => Tls::VerifyIdentity(ca.clone()),
        other => {
            return Err(format!(
                "ssl_mode `{}` is not one of disabled, required, verify_ca, verify_identity",
                other.escape_debug()
            ));
        }
    };
    if ca.is_some() && matches!(tls, Tls::Disabled | Tls::Required) {
        return Err(format!(
            "ssl_ca is set but ssl_mode = {mode} does not verify the certificate: use verify_ca or verify_identity"
        ));
    }
    Ok(Server {
        name: name.to_owned(),
        url: strip_password(&raw.url),
        password,
        connect_timeout: std::time::Duration::from_secs(raw.connect_timeout_secs.unwrap_or(10)),
        tls,
        discovered: false,
    })
}

/// Where systemd put the credential `name` of the unit (`LoadCredential=`
/// or `SetCredential=`): `$CREDENTIALS_DIRECTORY/name`.
fn credential_path(name: &str) -> std::result::Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "password_credential `{}` must be a credential name, not a path",
            name.escape_debug()
        ));
    }
    let directory = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        format!(
            "password_credential `{name}`: CREDENTIALS_DIRECTORY is not set (it is set by systemd for a unit with LoadCredential={name}:FILE)"
        )
    })?;
    Ok(PathBuf::from(directory).join(name))
}

/// `mysql://user:pw@host` → `mysql://user@host`.
fn strip_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{scheme}://{user}{host}")
}

/// The TOML error as one line: message and position, without the excerpt of
/// the file (which could contain a password).
fn toml_error_line(error: &toml::de::Error, text: &str) -> String {
    let message = crate::error::one_line(crate::error::without_quoted_values(error.message()));
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[servers.global]
url = "mysql://checker:secret@127.0.0.1:3306"
[servers.shard1]
url = "mysql://checker:secret@127.0.0.1:3307"

[blobs]
server = "global"
table  = "ProtonMailGlobal.BlobStorage"
id     = "BlobStorageID"
count  = "NumReferences"

[[references]]
server = "global"
table  = "ProtonMailGlobal.SentMessage"
column = "BlobStorageID"

[[references]]
server = "shard1"
table  = "ProtonMailShard.MessageData"
column = "Body"
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_issue_example_parses() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.servers.len(), 2);
        assert_eq!(config.servers[config.blobs.server].name, "global");
        assert_eq!(
            config.blobs.table.to_string(),
            "ProtonMailGlobal.BlobStorage"
        );
        assert_eq!(
            config.references[1].label,
            "shard1:ProtonMailShard.MessageData.Body"
        );
        assert_eq!(config.references[1].server, 1);
        assert_eq!(config.servers[0].url, "mysql://checker@127.0.0.1:3306");
        assert_eq!(config.servers[0].password.as_ref().unwrap().0, "secret");
    }

    #[test]
    fn the_method_is_read_from_the_check_section() {
        assert_eq!(parse(EXAMPLE).unwrap().check.method, Method::Exact);
        let text = format!("{EXAMPLE}\n[check]\nmethod = \"sketch\"\nsketch_rows = 2048\n");
        let config = parse(&text).unwrap();
        assert_eq!(
            config.check.method.scan_method(config.check.sketch_rows),
            crate::scan::Method::Sketch { target_rows: 2048 }
        );
        let err = parse(&format!("{EXAMPLE}\n[check]\nmethod = \"crc\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn overrides_replace_what_they_give_and_are_validated() {
        let file = parse(&format!("{EXAMPLE}\n[check]\njobs = 2\nmax_lag = 5\n"))
            .unwrap()
            .check;
        let kept = file.overridden(&Overrides::default()).unwrap();
        assert_eq!(
            (kept.jobs, kept.max_lag, kept.chunk_size),
            (2, Some(5.0), 10_000)
        );
        let given = Overrides {
            jobs: Some(8),
            max_lag: Some(1.5),
            max_rows_per_second: Some(100),
            method: Some(Method::Sketch),
            ..Overrides::default()
        };
        let overridden = file.overridden(&given).unwrap();
        assert_eq!(overridden.jobs, 8);
        assert_eq!(overridden.max_lag, Some(1.5));
        assert_eq!(overridden.max_rows_per_second, Some(100));
        assert_eq!(overridden.method, Method::Sketch);
        assert_eq!(overridden.chunk_size, 10_000, "not given: the file's");
        let err = file
            .overridden(&Overrides {
                jobs: Some(0),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(err, "jobs 0 is out of range (1 to 256)");
    }

    #[test]
    fn the_scan_watches_busy_blobs_only_for_a_confirmation() {
        let settings = CheckSettings {
            hot_threshold: 50,
            ..CheckSettings::default()
        };
        assert_eq!(settings.scan_options().hot_threshold, 50);
        assert_eq!(settings.confirm_options().hot_threshold, 50);
        let unconfirmed = CheckSettings {
            confirmations: 0,
            ..settings
        };
        assert_eq!(unconfirmed.scan_options().hot_threshold, u64::MAX);
    }

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert_eq!(Ident::new("Body").unwrap().quoted(), "`Body`");
        for bad in ["", "a`b", "a b", "a;b", "x'", &"a".repeat(65), "é"] {
            assert!(Ident::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TableName::parse("NoDatabase").is_err());
        assert_eq!(TableName::parse("db.t$1").unwrap().quoted(), "`db`.`t$1`");
    }

    #[test]
    fn unknown_server_is_named() {
        let text = EXAMPLE.replace("server = \"shard1\"", "server = \"shard9\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown server `shard9`"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn malformed_toml_is_one_line_with_position() {
        let err = parse("[servers.global\nurl = 1").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn injection_in_identifiers_is_refused() {
        let text = EXAMPLE.replace("column = \"Body\"", "column = \"Body`; DROP TABLE x; --\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("[[references]] #2 column"), "{err}");
    }

    #[test]
    fn duplicate_reference_column_is_refused() {
        let text = format!(
            "{EXAMPLE}\n[[references]]\nserver = \"global\"\ntable = \"ProtonMailGlobal.SentMessage\"\ncolumn = \"BlobStorageID\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn password_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = EXAMPLE.replacen(
            "url = \"mysql://checker:secret@127.0.0.1:3306\"",
            &format!(
                "url = \"mysql://checker@127.0.0.1:3306\"\npassword_file = \"{}\"",
                file.display()
            ),
            1,
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.servers[0].password.as_ref().unwrap().0, "from-file");

        let text = EXAMPLE.replacen(
            "url = \"mysql://checker:secret@127.0.0.1:3306\"",
            "url = \"mysql://checker@127.0.0.1:3306\"\npassword_env = \"BLOBCHECK_TEST_UNSET_VARIABLE\"",
            1,
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("BLOBCHECK_TEST_UNSET_VARIABLE is not set"),
            "{err}"
        );
    }

    #[test]
    fn a_credential_is_a_name_and_one_password_source_is_allowed() {
        for bad in ["", "a/b", "/etc/passwd", ".", ".."] {
            let error = credential_path(bad).unwrap_err();
            assert!(
                error.contains("must be a credential name"),
                "{bad:?}: {error}"
            );
        }
        let text = EXAMPLE.replacen(
            "url = \"mysql://checker:secret@127.0.0.1:3306\"",
            "url = \"mysql://checker@127.0.0.1:3306\"\npassword_file = \"pw\"\npassword_credential = \"global\"",
            1,
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("give one of password_env, password_file and password_credential"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let config = parse(EXAMPLE).unwrap();
        let dump = format!("{config:?}");
        assert!(!dump.contains("secret"), "{dump}");
    }

    #[test]
    fn strip_password_keeps_the_rest() {
        assert_eq!(strip_password("mysql://u:p@h:1/db"), "mysql://u@h:1/db");
        assert_eq!(strip_password("mysql://u@h"), "mysql://u@h");
        assert_eq!(strip_password("mysql://h:3306"), "mysql://h:3306");
    }
}
