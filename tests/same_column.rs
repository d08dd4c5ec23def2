//! One column reached twice by the configuration would count every one of
//! its references twice. Each way of reaching it twice (another spelling of
//! the column, one server under two names, one shard in two `Shard` rows as
//! `127.0.0.1` and `localhost`, a configured server that discovery finds
//! under another host name) is refused by `check`, `doctor` and
//! `repair-sql` with one line and exit status 2; the same names on two
//! different servers are two columns, and each is counted once.
//!
//! The fixture servers are shared by the tests of this binary; what they
//! create lives in databases of their own, named `dup_*`.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER};
use common::{parse_jsonl, run_cli, servers, write_temp};

/// A blob id no fixture blob has: referenced once on each server's
/// `dup_same.T`.
const FAR_ID: u64 = 9_223_372_036_854_775_813;

/// Creates, once, the discovery tables and the twin tables the cases use.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let s = servers();
        let port = s.shard.port();
        let same = format!(
            "DROP DATABASE IF EXISTS dup_same; CREATE DATABASE dup_same;
             CREATE TABLE dup_same.T (ID bigint unsigned PRIMARY KEY, BlobRef bigint unsigned, KEY BlobRef (BlobRef));
             INSERT INTO dup_same.T VALUES (1, {FAR_ID});
             GRANT SELECT ON dup_same.* TO '{CHECKER_USER}'@'%';"
        );
        s.shard.run_sql(&same).unwrap();
        s.global.run_sql(&same).unwrap();
        // dup_two: the shard server twice, as 127.0.0.1 and as localhost;
        // dup_one: once, as localhost.
        s.global
            .run_sql(&format!(
                "DROP DATABASE IF EXISTS dup_two; CREATE DATABASE dup_two;
                 CREATE TABLE dup_two.Shard LIKE ProtonMailGlobal.Shard;
                 INSERT INTO dup_two.Shard (ShardID, Hostname, Port, DBname, Type) VALUES
                     (2, '127.0.0.1', {port}, 'ProtonMailShard', 2),
                     (7, 'localhost', {port}, 'ProtonMailShard', 2);
                 DROP DATABASE IF EXISTS dup_one; CREATE DATABASE dup_one;
                 CREATE TABLE dup_one.Shard LIKE ProtonMailGlobal.Shard;
                 INSERT INTO dup_one.Shard (ShardID, Hostname, Port, DBname, Type) VALUES
                     (2, 'localhost', {port}, 'ProtonMailShard', 2);
                 GRANT SELECT ON dup_two.* TO '{CHECKER_USER}'@'%';
                 GRANT SELECT ON dup_one.* TO '{CHECKER_USER}'@'%';"
            ))
            .unwrap();
    });
}

fn global_url() -> String {
    servers().global.url_for(CHECKER_USER, CHECKER_PASSWORD)
}

fn shard_url() -> String {
    servers().shard.url_for(CHECKER_USER, CHECKER_PASSWORD)
}

/// The shard server's URL with `localhost` for `127.0.0.1`.
fn shard_url_localhost() -> String {
    let url = shard_url();
    assert!(url.contains("@127.0.0.1:"), "{url}");
    url.replace("@127.0.0.1:", "@localhost:")
}

/// `(server host:port, what it resolves to)` as the refusal names it, from
/// what the shard server says it is.
fn on_shard(resolved: &str) -> String {
    let rows = servers().shard.query("SELECT @@hostname, @@port").unwrap();
    format!("(server {}:{}, {resolved})", rows[0][0], rows[0][1])
}

/// A configuration: the fixture blob table on `global`, the servers given
/// (name, URL), the references (server, table, column), then `tail`.
fn config(servers: &[(&str, String)], references: &[(&str, &str, &str)], tail: &str) -> String {
    let mut text = format!("[servers.global]\nurl = \"{}\"\n", global_url());
    for (name, url) in servers {
        text.push_str(&format!("\n[servers.{name}]\nurl = \"{url}\"\n"));
    }
    text.push_str(
        "\n[blobs]\nserver = \"global\"\ntable = \"ProtonMailGlobal.BlobStorage\"\n\
         id = \"BlobStorageID\"\ncount = \"NumReferences\"\n",
    );
    for (server, table, column) in references {
        text.push_str(&format!(
            "\n[[references]]\nserver = \"{server}\"\ntable = \"{table}\"\ncolumn = \"{column}\"\n"
        ));
    }
    text.push_str(tail);
    text
}

/// A `[discovery]` section reading the shards from `table` on `global`,
/// with the one template column `MessageData.Body`.
fn discovery(dir: &Path, table: &str) -> String {
    let password = write_temp(dir, "shard-password", &format!("{CHECKER_PASSWORD}\n"));
    format!(
        "\n[discovery]\nserver = \"global\"\ntable = \"{table}\"\nuser = \"{CHECKER_USER}\"\n\
         password_file = \"{}\"\n\n[[discovery.references]]\ntable = \"MessageData\"\ncolumn = \"Body\"\n",
        password.display()
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = |t: &str| t.chars().take(4000).collect::<String>();
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            head(&self.stdout),
            head(&self.stderr)
        )
    }
}

fn run(args: &[&str]) -> Run {
    let (code, stdout, stderr) = run_cli(args, &[("BLOBCHECK_LOG", "warn")]);
    Run {
        code,
        stdout,
        stderr,
    }
}

/// Runs `check`, `doctor` and `repair-sql` (with an empty findings file) on
/// `text`.
fn all_three(dir: &Path, text: &str) -> [(&'static str, Run); 3] {
    let path = write_temp(dir, "blobcheck.toml", text);
    let path = path.to_str().unwrap();
    let findings = write_temp(dir, "findings.jsonl", "");
    [
        (
            "check",
            run(&["check", "--config", path, "--format", "json"]),
        ),
        ("doctor", run(&["doctor", "--config", path])),
        (
            "repair-sql",
            run(&[
                "repair-sql",
                "--config",
                path,
                "--findings",
                findings.to_str().unwrap(),
            ]),
        ),
    ]
}

/// Asserts that each command refused the configuration with `refusal`:
/// `check` and `repair-sql` as their one error line, `doctor` as a FAIL line
/// and its "not ready" line.
fn assert_refused(case: &str, runs: &[(&str, Run)], refusal: &str) {
    for (command, r) in runs {
        assert_eq!(r.code, 2, "{case}, {command}: {r:?}");
        assert!(
            !r.stderr.contains("panicked") && !r.stdout.contains(CHECKER_PASSWORD),
            "{case}, {command}: {r:?}"
        );
        if *command == "doctor" {
            let fail = r
                .stdout
                .lines()
                .find(|l| l.starts_with("  FAIL  ") && l.contains(refusal))
                .unwrap_or_else(|| panic!("{case}, doctor: no FAIL line with `{refusal}`: {r:?}"));
            assert!(fail.contains(refusal), "{fail}");
            assert!(r.stdout.contains("\nverdict: NOT READY: "), "{case}: {r:?}");
            assert_eq!(
                r.stderr, "blobcheck: error: not ready: see the FAIL lines above\n",
                "{case}: {r:?}"
            );
        } else {
            assert!(r.stdout.is_empty(), "{case}, {command}: {r:?}");
            assert_eq!(
                r.stderr,
                format!("blobcheck: error: {refusal}\n"),
                "{case}, {command}: {r:?}"
            );
        }
    }
}

fn same_column(first: &str, second: &str, resolved: &str) -> String {
    format!(
        "reference columns `{first}` and `{second}` are the same column {}: remove one, or every reference in it is counted twice",
        on_shard(resolved)
    )
}

#[test]
fn a_column_spelled_in_another_case_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &[("shard1", shard_url())],
        &[
            ("shard1", "ProtonMailShard.MessageData", "Body"),
            ("shard1", "ProtonMailShard.MessageData", "body"),
        ],
        "",
    );
    assert_refused(
        "Body and body",
        &all_three(dir.path(), &text),
        &same_column(
            "shard1:ProtonMailShard.MessageData.Body",
            "shard1:ProtonMailShard.MessageData.body",
            "ProtonMailShard.MessageData.Body",
        ),
    );
}

#[test]
fn one_server_under_two_names_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &[("shard1", shard_url()), ("shard1b", shard_url())],
        &[
            ("shard1", "ProtonMailShard.MessageData", "Body"),
            ("shard1b", "ProtonMailShard.MessageData", "Body"),
        ],
        "",
    );
    assert_refused(
        "two server names",
        &all_three(dir.path(), &text),
        &same_column(
            "shard1:ProtonMailShard.MessageData.Body",
            "shard1b:ProtonMailShard.MessageData.Body",
            "ProtonMailShard.MessageData.Body",
        ),
    );
}

#[test]
fn one_shard_in_two_shard_rows_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &[],
        &[("global", "ProtonMailGlobal.SentMessage", "BlobStorageID")],
        &discovery(dir.path(), "dup_two.Shard"),
    );
    assert_refused(
        "127.0.0.1 and localhost in the Shard table",
        &all_three(dir.path(), &text),
        &same_column(
            "shard2:ProtonMailShard.MessageData.Body",
            "shard7:ProtonMailShard.MessageData.Body",
            "ProtonMailShard.MessageData.Body",
        ),
    );
}

#[test]
fn a_configured_server_that_discovery_finds_under_another_name_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &[("shard1", shard_url())],
        &[("shard1", "ProtonMailShard.MessageData", "Body")],
        &discovery(dir.path(), "dup_one.Shard"),
    );
    assert_refused(
        "configured as 127.0.0.1, discovered as localhost",
        &all_three(dir.path(), &text),
        &same_column(
            "shard1:ProtonMailShard.MessageData.Body",
            "shard2:ProtonMailShard.MessageData.Body",
            "ProtonMailShard.MessageData.Body",
        ),
    );

    // The control: the shard only discovered, as localhost, is checked.
    let text = config(
        &[],
        &[("global", "ProtonMailGlobal.SentMessage", "BlobStorageID")],
        &discovery(dir.path(), "dup_one.Shard"),
    );
    let path = write_temp(dir.path(), "control.toml", &text);
    let r = run(&[
        "check",
        "--config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let findings = parse_jsonl(&r.stdout);
    assert!(
        findings.iter().any(|f| f
            .references
            .iter()
            .any(|(label, _)| label == "shard2:ProtonMailShard.MessageData.Body")),
        "{r:?}"
    );
}

#[test]
fn the_blob_tables_count_column_is_no_reference_column() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &[],
        &[("global", "ProtonMailGlobal.BlobStorage", "numreferences")],
        "",
    );
    let path = write_temp(dir.path(), "blobcheck.toml", &text);
    let r = run(&["check", "--config", path.to_str().unwrap()]);
    let rows = servers().global.query("SELECT @@hostname, @@port").unwrap();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(
        r.stderr,
        format!(
            "blobcheck: error: reference column `global:ProtonMailGlobal.BlobStorage.numreferences` is the blob table's count column (server {}:{}, ProtonMailGlobal.BlobStorage.NumReferences): it holds the counts, not references; remove it\n",
            rows[0][0], rows[0][1]
        ),
        "{r:?}"
    );
}

#[test]
fn the_same_names_on_two_servers_are_two_columns_each_counted_once() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    // Also through another spelling of the host: the servers differ, the
    // URLs do not decide.
    let text = config(
        &[("shard1", shard_url_localhost())],
        &[
            ("global", "dup_same.T", "BlobRef"),
            ("shard1", "dup_same.T", "BlobRef"),
        ],
        "",
    );
    let [(_, check), (_, doctor), (_, repair)] = all_three(dir.path(), &text);

    assert_eq!(check.code, 1, "{check:?}");
    let far: Vec<_> = parse_jsonl(&check.stdout)
        .into_iter()
        .filter(|f| f.blob_id == FAR_ID)
        .collect();
    assert_eq!(far.len(), 1, "{check:?}");
    assert_eq!(far[0].kind, "missing_blob");
    assert_eq!(far[0].actual, 2, "one reference on each server");
    assert_eq!(
        far[0].references,
        [
            ("global:dup_same.T.BlobRef".to_owned(), 1),
            ("shard1:dup_same.T.BlobRef".to_owned(), 1)
        ]
    );

    assert_eq!(doctor.code, 0, "{doctor:?}");
    assert!(doctor.stdout.contains("\nverdict: READY"), "{doctor:?}");

    assert_eq!(repair.code, 0, "{repair:?}");
    assert!(
        repair
            .stdout
            .contains("-- ==== 1. counts to set: 0 guarded UPDATE statements"),
        "{repair:?}"
    );
    // With the finding: the plan reads it again, as the same 2 references.
    let findings = write_temp(
        dir.path(),
        "far.jsonl",
        &check
            .stdout
            .lines()
            .filter(|l| l.contains(&format!("\"blob_id\":{FAR_ID},")))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let path = dir.path().join("blobcheck.toml");
    let r = run(&[
        "repair-sql",
        "--config",
        path.to_str().unwrap(),
        "--findings",
        findings.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("-- blob {FAR_ID}: MISSING, referenced 2 times")),
        "{r:?}"
    );
}

/// The query that asks a server what it is reads no table.
#[test]
fn the_server_identity_query_reads_no_table() {
    let rows = servers()
        .shard
        .query(&format!(
            "EXPLAIN {}",
            blobcheck::same_column::SERVER_IDENTITY_SQL
        ))
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].last().map(String::as_str),
        Some("No tables used"),
        "{rows:?}"
    );
}
