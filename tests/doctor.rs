//! `blobcheck doctor` against real servers: the fixture setup is ready, an
//! account that can write is warned about, a replica's lag and stopped
//! replication are reported, and a misconfigured setup gets every one of
//! its problems, each with its fix, in one run.
//!
//! The fixture servers are shared by every test of this binary: nothing here
//! changes their tables; what a test creates lives in databases of its own,
//! named `doctor_*`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use blobcheck::config::Config;
use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER, GLOBAL_FIXTURE, create_checker_sql};
use blobcheck::sandbox::{Sandbox, SandboxOptions};

/// Runs the doctor; returns (ready, output).
async fn doctor(config: &Config) -> (bool, String) {
    let mut out = Vec::new();
    let ready = blobcheck::doctor::run(config, &mut out)
        .await
        .expect("the doctor runs to its verdict");
    (ready, String::from_utf8(out).expect("UTF-8 output"))
}

async fn fixture_config() -> Config {
    tokio::task::spawn_blocking(|| common::servers().config())
        .await
        .unwrap()
        .unwrap()
}

/// The lines of the section that starts with `heading` (without it).
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no section `{heading}` in:\n{text}");
    lines.take_while(|l| l.starts_with("  ")).collect()
}

/// The verdict and everything after it.
fn verdict(text: &str) -> &str {
    &text[text.find("\nverdict: ").expect("a verdict") + 1..]
}

fn marks<'a>(lines: &[&'a str], mark: &str) -> Vec<&'a str> {
    let prefix = format!("  {mark:<4}  ");
    lines
        .iter()
        .copied()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("doctor-test.toml")).expect("a valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_setup_is_ready() {
    let config = fixture_config().await;
    let (ready, text) = doctor(&config).await;
    assert!(ready, "{text}");
    assert!(!text.contains("  FAIL  "), "{text}");
    assert!(!text.contains("  WARN  "), "{text}");
    assert!(
        text.contains("\nverdict: READY: blobcheck check can run\n"),
        "{text}"
    );

    for server in ["global", "shard1"] {
        let lines = section(&text, &format!("server {server}"));
        assert!(
            lines[0].starts_with("  ok    reachable at 127.0.0.1:"),
            "{text}"
        );
        assert!(lines[0].contains("MariaDB"), "{text}");
        assert!(
            lines.iter().any(|l| l
                .starts_with("  ok    account blobcheck@% can only read: SELECT ON `ProtonMail")),
            "{text}"
        );
        assert!(
            lines.contains(
                &"  ok    sessions are READ ONLY (blobcheck sets this on every connection)"
            ),
            "{text}"
        );
        // A SELECT-only account may not read the replica status: worth
        // knowing, not a warning while max_lag is off.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  info  cannot read replica status")
                    && l.contains("grant SLAVE MONITOR")),
            "{text}"
        );
        assert!(
            lines.contains(&"        hint: GRANT SLAVE MONITOR ON *.* TO 'blobcheck'@'%';"),
            "{text}"
        );
        assert!(
            lines.contains(&"  ok    blobcheck opens at most 10 of max_connections 500"),
            "{text}"
        );
    }

    let blob = section(&text, "blob table ProtonMailGlobal.BlobStorage on global");
    assert_eq!(
        blob[..3],
        [
            "  ok    id column `BlobStorageID` bigint(20) unsigned NOT NULL",
            "  ok    count column `NumReferences` bigint(20) unsigned NOT NULL",
            "  ok    id column `BlobStorageID` has the primary key: the scan walks it in order",
        ],
        "{text}"
    );
    assert_eq!(blob.len(), 7, "three facts, four plans: {text}");
    let explains = marks(&blob, "ok");
    assert!(
        explains
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN batch         range, key PRIMARY")),
        "{text}"
    );
    assert!(
        explains
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN points        range, key PRIMARY")),
        "{text}"
    );
    assert!(
        explains
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN sketch        range, key PRIMARY")),
        "{text}"
    );
    assert!(
        explains
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN id span")
                && l.contains("Select tables optimized away")),
        "{text}"
    );

    let mut explained = 4;
    for reference in &config.references {
        let lines = section(&text, &format!("reference {}", reference.label));
        assert!(marks(&lines, "WARN").is_empty() && marks(&lines, "FAIL").is_empty());
        let column = reference.column.as_str();
        assert!(
            lines[0].starts_with(&format!("  ok    column `{column}` bigint(20) unsigned")),
            "{text}"
        );
        assert!(
            lines.contains(&format!("  ok    index `{column}` starts with `{column}`").as_str()),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("  ok    primary key (")),
            "{text}"
        );
        for query in ["batch", "points", "sketch", "affected rows"] {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("  ok    EXPLAIN {query:<13} ")))
                .unwrap_or_else(|| panic!("no EXPLAIN {query} for {}:\n{text}", reference.label));
            assert!(line.contains(&format!("key {column}")), "{line}");
            assert!(line.contains("Using index"), "index-only: {line}");
            explained += 1;
        }
        let nullable = lines.iter().any(|l| l.starts_with("  info  nullable"));
        let nulls = lines
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN NULL count"));
        assert_eq!(nullable, nulls, "{text}");
        explained += usize::from(nulls);
    }
    let ok_explains = text
        .lines()
        .filter(|l| l.starts_with("  ok    EXPLAIN "))
        .count();
    assert_eq!(ok_explains, explained);
    assert_eq!(
        explained,
        4 + 7 * 4 + 5,
        "the five nullable columns count NULLs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_can_write_is_ready_but_warned() {
    let servers = tokio::task::spawn_blocking(common::servers).await.unwrap();
    let mut config = fixture_config().await;
    config.servers[0].url = servers.global.root_url();
    config.servers[1].url = servers.shard.root_url();
    for server in &mut config.servers {
        server.password = None;
    }
    let (ready, text) = doctor(&config).await;
    // The sessions are READ ONLY whatever the account may do, so the check
    // is safe to run: ready, with a warning per server.
    assert!(ready, "{text}");
    assert!(
        text.contains("\nverdict: READY with 2 warnings: blobcheck check can run\n"),
        "{text}"
    );
    for server in ["global", "shard1"] {
        let lines = section(&text, &format!("server {server}"));
        let warned = marks(&lines, "WARN");
        assert_eq!(warned.len(), 1, "{text}");
        assert!(warned[0].contains("the account can write"), "{text}");
        assert!(warned[0].contains("use a SELECT-only account"), "{text}");
        assert!(warned[0].contains("ALL PRIVILEGES ON *.*"), "{text}");
        assert!(
            !text.contains("PASSWORD"),
            "no grant line is echoed: {text}"
        );
        // Root may read the replica status: these are no replicas.
        assert!(lines.contains(&"  ok    not a replica"), "{text}");
    }
    let global_fix = section(&text, "server global")
        .into_iter()
        .find(|l| l.starts_with("        fix: "))
        .unwrap();
    assert!(
        global_fix.contains("GRANT SELECT ON `ProtonMailGlobal`.* TO 'blobcheck'@'%';"),
        "{global_fix}"
    );
}

/// Test tables on the shard, outside the fixture databases.
fn create_bad_tables() {
    common::servers()
        .shard
        .run_sql(&format!(
            "DROP DATABASE IF EXISTS doctor_bad;
             CREATE DATABASE doctor_bad;
             CREATE TABLE doctor_bad.NoIndex (ID bigint unsigned PRIMARY KEY, BlobRef bigint unsigned) ENGINE=InnoDB;
             CREATE TABLE doctor_bad.NoKey (BlobRef bigint unsigned NOT NULL, KEY BlobRef (BlobRef)) ENGINE=InnoDB;
             INSERT INTO doctor_bad.NoIndex VALUES (1, 100), (2, NULL);
             INSERT INTO doctor_bad.NoKey VALUES (100);
             GRANT SELECT ON doctor_bad.* TO '{CHECKER_USER}'@'%';"
        ))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_of_a_misconfigured_setup_is_reported_in_one_run() {
    tokio::task::spawn_blocking(create_bad_tables)
        .await
        .unwrap();
    let servers = tokio::task::spawn_blocking(common::servers).await.unwrap();
    let global = servers.global.url_for(CHECKER_USER, CHECKER_PASSWORD);
    let shard = servers.shard.url_for(CHECKER_USER, CHECKER_PASSWORD);
    let dead = dead_port();
    let config = parse(&format!(
        r#"
[servers.global]
url = "{global}"
[servers.shard1]
url = "{shard}"
[servers.shard2]
url = "mysql://blobcheck:pw@127.0.0.1:{dead}"
connect_timeout_secs = 5

[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"

[[references]]
server = "global"
table = "ProtonMailGlobal.SentMessage"
column = "BlobStorageIDX"

[[references]]
server = "shard1"
table = "ProtonMailShard.Attachment"
column = "FileName"

[[references]]
server = "shard1"
table = "doctor_bad.NoIndex"
column = "BlobRef"

[[references]]
server = "shard2"
table = "ProtonMailShard.Attachment"
column = "BlobStorageID"

[[references]]
server = "shard1"
table = "ProtonMailShard.MessageData"
column = "Body"
name = "bodies"

[[references]]
server = "shard1"
table = "doctor_bad.NoKey"
column = "BlobRef"

[[references]]
server = "shard1"
table = "doctor_nowhere.T"
column = "BlobRef"

[[references]]
server = "shard1"
table = "ProtonMailShard.Atachment"
column = "BlobStorageID"
"#
    ));
    let started = Instant::now();
    let (ready, text) = doctor(&config).await;
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");
    assert!(!ready, "{text}");

    // The unreachable server, and what could not be checked because of it.
    let lines = section(&text, "server shard2");
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("  FAIL  cannot connect to 127.0.0.1:{dead}: ")),
        "{text}"
    );
    assert!(
        lines[1].starts_with("        fix: check host and port in the url of [servers.shard2]"),
        "{text}"
    );
    assert_eq!(
        section(
            &text,
            "reference shard2:ProtonMailShard.Attachment.BlobStorageID"
        ),
        ["  skip  not checked: server `shard2` is unreachable (see above)"],
        "{text}"
    );
    // The reachable servers are still checked in full.
    for server in ["global", "shard1"] {
        assert!(
            marks(&section(&text, &format!("server {server}")), "FAIL").is_empty(),
            "{text}"
        );
    }
    assert!(
        marks(
            &section(&text, "blob table ProtonMailGlobal.BlobStorage on global"),
            "FAIL"
        )
        .is_empty(),
        "{text}"
    );

    let wrong = section(
        &text,
        "reference global:ProtonMailGlobal.SentMessage.BlobStorageIDX",
    );
    assert_eq!(
        wrong[0],
        "  FAIL  column `BlobStorageIDX` not found in table `ProtonMailGlobal.SentMessage`",
        "{text}"
    );
    assert!(
        wrong[1].starts_with("        fix: set column of [[references]] #1 to the column that holds blob ids; integer columns of `ProtonMailGlobal.SentMessage`: SentMessageID, UserID, MessageID, State, Version, BlobStorageID"),
        "{text}"
    );

    let varchar = section(
        &text,
        "reference shard1:ProtonMailShard.Attachment.FileName",
    );
    assert!(
        varchar[0].starts_with("  FAIL  column `FileName` is varchar(255)")
            && varchar[0].ends_with("not an integer type: it cannot hold blob ids"),
        "{text}"
    );
    assert!(
        varchar[1].starts_with("        fix: set column of [[references]] #2 to the column that holds blob ids; integer columns of `ProtonMailShard.Attachment`: AttachmentID,"),
        "{text}"
    );

    let no_index = section(&text, "reference shard1:doctor_bad.NoIndex.BlobRef");
    assert!(
        no_index.contains(
            &"  FAIL  no index starts with `BlobRef`: counting its references would read the whole table"
        ),
        "{text}"
    );
    assert!(
        no_index.contains(
            &"        fix: ALTER TABLE `doctor_bad`.`NoIndex` ADD INDEX `BlobRef` (`BlobRef`), ALGORITHM=INPLACE, LOCK=NONE;"
        ),
        "{text}"
    );
    assert!(
        no_index.contains(
            &"  info  nullable: NULL is not a reference (the summary counts NULLs apart)"
        )
    );

    let no_key = section(&text, "reference shard1:doctor_bad.NoKey.BlobRef");
    assert!(
        no_key.contains(
            &"  WARN  table `doctor_bad.NoKey` has no primary key: the rows behind a finding cannot be named"
        ),
        "{text}"
    );
    assert!(marks(&no_key, "FAIL").is_empty(), "{text}");
    // No primary key, no query naming rows; the others are explained.
    assert!(!no_key.iter().any(|l| l.contains("EXPLAIN affected rows")));
    assert_eq!(
        marks(&no_key, "ok")
            .iter()
            .filter(|l| l.contains("EXPLAIN"))
            .count(),
        3,
        "{text}"
    );

    let nowhere = section(&text, "reference shard1:doctor_nowhere.T.BlobRef");
    assert_eq!(
        nowhere,
        [
            "  FAIL  database `doctor_nowhere` not found on server `shard1` (or the account may not read it)",
            "        fix: check the database name and the server; if it is right: GRANT SELECT ON `doctor_nowhere`.* TO 'blobcheck'@'%';",
        ],
        "{text}"
    );
    let typo = section(
        &text,
        "reference shard1:ProtonMailShard.Atachment.BlobStorageID",
    );
    assert_eq!(
        typo,
        [
            "  FAIL  table `ProtonMailShard.Atachment` not found on server `shard1` (or the account may not read it); tables there: Attachment, ContactData, MessageData, OutsideAttachment",
            "        fix: check the table name; if it is right: GRANT SELECT ON `ProtonMailShard`.`Atachment` TO 'blobcheck'@'%';",
        ],
        "{text}"
    );

    // A good column among bad ones is checked in full, EXPLAIN included.
    let good = section(
        &text,
        "reference bodies (shard1:ProtonMailShard.MessageData.Body)",
    );
    assert!(
        marks(&good, "FAIL").is_empty() && marks(&good, "WARN").is_empty(),
        "{text}"
    );
    assert_eq!(
        marks(&good, "ok")
            .iter()
            .filter(|l| l.contains("EXPLAIN") && l.contains("key Body"))
            .count(),
        4,
        "{text}"
    );

    // The verdict names every problem again, with its fix.
    let verdict = verdict(&text);
    assert!(
        verdict.starts_with("verdict: NOT READY: 6 problems, 1 warning;"),
        "{verdict}"
    );
    for needle in [
        "  FAIL  server shard2: cannot connect",
        "  FAIL  reference global:ProtonMailGlobal.SentMessage.BlobStorageIDX: column `BlobStorageIDX` not found",
        "  FAIL  reference shard1:ProtonMailShard.Attachment.FileName: column `FileName` is varchar(255)",
        "  FAIL  reference shard1:doctor_bad.NoIndex.BlobRef: no index starts with `BlobRef`",
        "        fix: ALTER TABLE `doctor_bad`.`NoIndex` ADD INDEX `BlobRef` (`BlobRef`), ALGORITHM=INPLACE, LOCK=NONE;",
        "  FAIL  reference shard1:doctor_nowhere.T.BlobRef: database `doctor_nowhere` not found",
        "  FAIL  reference shard1:ProtonMailShard.Atachment.BlobStorageID: table `ProtonMailShard.Atachment` not found",
        "  WARN  reference shard1:doctor_bad.NoKey.BlobRef: table `doctor_bad.NoKey` has no primary key",
    ] {
        assert!(
            verdict.contains(needle),
            "{needle} missing from:\n{verdict}"
        );
    }
    assert!(
        verdict.find("  WARN  ").unwrap() > verdict.rfind("  FAIL  ").unwrap(),
        "problems come first: {verdict}"
    );
    assert!(!text.contains(":pw@"), "no password in the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_blob_table_and_a_missing_index_also_show_what_the_check_would_say() {
    tokio::task::spawn_blocking(create_bad_tables)
        .await
        .unwrap();
    let servers = tokio::task::spawn_blocking(common::servers).await.unwrap();
    let global = servers.global.url_for(CHECKER_USER, CHECKER_PASSWORD);
    let shard = servers.shard.url_for(CHECKER_USER, CHECKER_PASSWORD);
    // NumReferences has an index, but not a unique one; Hash is binary.
    let config = parse(&format!(
        r#"
[servers.global]
url = "{global}"
[servers.shard1]
url = "{shard}"

[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "NumReferences"
count = "Hash"

[[references]]
server = "shard1"
table = "ProtonMailShard.Attachment"
column = "BlobStorageID"
"#
    ));
    let (ready, text) = doctor(&config).await;
    assert!(!ready, "{text}");
    let blob = section(&text, "blob table ProtonMailGlobal.BlobStorage on global");
    assert_eq!(
        blob,
        [
            "  ok    id column `NumReferences` bigint(20) unsigned NOT NULL",
            "  FAIL  count column `Hash` is binary(16) NOT NULL, not an integer type: it cannot hold blob ids",
            "        fix: set [blobs] count to the column that holds blob ids; integer columns of `ProtonMailGlobal.BlobStorage`: BlobStorageID, Version, Type, NumReferences, Size, ShardID",
            "  FAIL  id column `NumReferences` is neither the primary key nor a unique index of that column alone: the scan walks the blob ids in order",
            "        fix: set [blobs] id to the primary key `BlobStorageID`, if that is the blob id",
        ],
        "{text}"
    );
    // Every server answers, so the check's own schema check ran as well.
    let check = section(&text, "blobcheck check");
    assert_eq!(check.len(), 1, "{text}");
    assert!(
        check[0].starts_with("  info  would stop at the first problem above: server `global`: "),
        "{text}"
    );
    // The reference column is fine and explained.
    let reference = section(
        &text,
        "reference shard1:ProtonMailShard.Attachment.BlobStorageID",
    );
    assert!(marks(&reference, "FAIL").is_empty(), "{text}");
    assert!(
        verdict(&text).starts_with("verdict: NOT READY: 2 problems, 0 warnings;"),
        "{text}"
    );

    // A missing index alone: the check's own error is the same problem.
    let config = parse(&format!(
        r#"
[servers.global]
url = "{global}"
[servers.shard1]
url = "{shard}"

[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"

[[references]]
server = "shard1"
table = "doctor_bad.NoIndex"
column = "BlobRef"
"#
    ));
    let (ready, text) = doctor(&config).await;
    assert!(!ready, "{text}");
    let check = section(&text, "blobcheck check");
    assert!(
        check[0].starts_with("  info  would stop at the first problem above: server `shard1`: `doctor_bad.NoIndex`.`BlobRef` has no index"),
        "{text}"
    );
    assert!(
        verdict(&text).starts_with("verdict: NOT READY: 1 problem, 0 warnings;"),
        "{text}"
    );
}

/// A server that accepts few connections: the connections a check may open
/// (the default cap, then a configured one) are compared with its
/// `max_connections`, with a warning past half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_is_compared_with_max_connections() {
    let server = tokio::task::spawn_blocking(|| {
        start(SandboxOptions::new("doctor-connections").arg("--max-connections=12"))
    })
    .await
    .unwrap();
    let config = |check: &str| {
        parse(&format!(
            "[servers.db]\nurl = \"{}\"\n\n[blobs]\nserver = \"db\"\ntable = \"d.b\"\nid = \"id\"\ncount = \"n\"\n\n\
             [[references]]\nserver = \"db\"\ntable = \"d.r\"\ncolumn = \"b\"\n\n[check]\n{check}\n",
            server.root_url()
        ))
    };
    let (_, text) = doctor(&config("")).await;
    let lines = section(&text, "server db");
    assert!(
        lines.contains(
            &"  WARN  blobcheck may open 10 connections, more than half of max_connections 12"
        ),
        "{text}"
    );
    assert!(
        lines.contains(&"        fix: set [check] max_connections_per_server (or --max-connections-per-server) to 6 or less"),
        "{text}"
    );
    let (_, text) = doctor(&config("max_connections_per_server = 6")).await;
    let lines = section(&text, "server db");
    assert!(
        lines.contains(&"  ok    blobcheck opens at most 6 of max_connections 12"),
        "{text}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------
// Replication.

fn start(options: SandboxOptions) -> Sandbox {
    let name = options.name.clone();
    Sandbox::start(options).unwrap_or_else(|e| panic!("starting sandbox {name}: {e}"))
}

/// Runs `query` on the sandbox until its first value is `want`.
fn wait_for(sandbox: &Sandbox, query: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sandbox.query(query).unwrap_or_default();
        if rows.first().and_then(|r| r.first()).map(String::as_str) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{query}` gave {rows:?}, waited for {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shows_its_lag_and_a_stopped_replication_is_a_warning() {
    let (primary, replica) = tokio::task::spawn_blocking(|| {
        let primary = start(
            SandboxOptions::new("doc_primary")
                .arg("--log-bin=mysql-bin")
                .arg("--server-id=1"),
        );
        let replica = start(
            SandboxOptions::new("doc_replica")
                .arg("--server-id=2")
                .arg("--read-only"),
        );
        replica
            .run_sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
                 MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;",
                primary.port()
            ))
            .unwrap();
        primary.run_sql(GLOBAL_FIXTURE).unwrap();
        primary
            .run_sql(&create_checker_sql(&["ProtonMailGlobal"]))
            .unwrap();
        primary
            .run_sql(&format!(
                "GRANT SLAVE MONITOR ON *.* TO '{CHECKER_USER}'@'%'; \
                 CREATE TABLE ProtonMailGlobal.doctor_done (id int PRIMARY KEY); \
                 INSERT INTO ProtonMailGlobal.doctor_done VALUES (1);"
            ))
            .unwrap();
        wait_for(
            &replica,
            "SELECT COUNT(*) FROM ProtonMailGlobal.doctor_done",
            "1",
        );
        (primary, replica)
    })
    .await
    .unwrap();

    let replica_url = replica.url_for(CHECKER_USER, CHECKER_PASSWORD);
    let config = parse(&format!(
        r#"
[servers.global]
url = "{replica_url}"

[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"

[[references]]
server = "global"
table = "ProtonMailGlobal.SentMessage"
column = "BlobStorageID"
"#
    ));
    let (ready, text) = doctor(&config).await;
    assert!(ready, "{text}");
    let lines = section(&text, "server global");
    assert!(
        lines.contains(&"  info  read_only is ON: a replica"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  ok    replica, replication running, lag ")),
        "{text}"
    );
    assert!(
        text.contains("\nverdict: READY: blobcheck check can run\n"),
        "{text}"
    );

    let replica = tokio::task::spawn_blocking(move || {
        replica.run_sql("STOP SLAVE SQL_THREAD").unwrap();
        wait_for(
            &replica,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_SQL'",
            "0",
        );
        replica
    })
    .await
    .unwrap();
    let (ready, text) = doctor(&config).await;
    assert!(
        ready,
        "a stopped replica is a warning, not a failure: {text}"
    );
    let warned = marks(&section(&text, "server global"), "WARN");
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].starts_with("  WARN  replica, replication stopped: replication (IO Yes, SQL No"),
        "{text}"
    );
    assert!(warned[0].contains("the data is stale"), "{text}");
    assert!(
        text.contains("        fix: START SLAVE; on this replica"),
        "{text}"
    );
    assert!(
        text.contains("\nverdict: READY with 1 warning: blobcheck check can run\n"),
        "{text}"
    );
    tokio::task::spawn_blocking(move || drop((primary, replica)))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// Shard discovery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_shards_are_checked_like_configured_ones() {
    // Own servers: the fixture's Shard table points at port 3306, and this
    // test changes it.
    let servers = tokio::task::spawn_blocking(|| blobcheck::demo::FixtureServers::start().unwrap())
        .await
        .unwrap();
    let dead = dead_port();
    servers
        .global
        .run_sql(&format!(
            "UPDATE ProtonMailGlobal.Shard SET Port = {} WHERE ShardID = 2;
             INSERT INTO ProtonMailGlobal.Shard (ShardID, Hostname, Port, DBname, Type) VALUES (7, '127.0.0.1', {dead}, 'ProtonMailShard', 2);",
            servers.shard.port()
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = common::write_temp(dir.path(), "pw", CHECKER_PASSWORD);
    let config = parse(&format!(
        r#"
[servers.global]
url = "{global}"

[blobs]
server = "global"
table = "ProtonMailGlobal.BlobStorage"
id = "BlobStorageID"
count = "NumReferences"

[[references]]
server = "global"
table = "ProtonMailGlobal.SentMessage"
column = "BlobStorageID"

[discovery]
server = "global"
user = "{CHECKER_USER}"
password_file = "{password_file}"
connect_timeout_secs = 5

[[discovery.references]]
table = "Attachment"
column = "BlobStorageID"
[[discovery.references]]
table = "MessageData"
column = "Body"
"#,
        global = servers.global.url_for(CHECKER_USER, CHECKER_PASSWORD),
        password_file = password_file.display(),
    ));
    let (ready, text) = doctor(&config).await;
    assert!(!ready, "{text}");
    let discovery = section(
        &text,
        "discovery ProtonMailGlobal.Shard on global (mail shards: Type = 2)",
    );
    assert!(
        discovery.contains(
            &format!(
                "  ok    2 mail shards: shard2 (127.0.0.1:{}/ProtonMailShard), shard7 (127.0.0.1:{dead}/ProtonMailShard)",
                servers.shard.port()
            )
            .as_str()
        ),
        "{text}"
    );
    assert!(
        discovery
            .iter()
            .any(|l| l.starts_with("  ok    EXPLAIN shards        ref, key Type")),
        "{text}"
    );
    let shard2 = section(&text, "server shard2 (discovered)");
    assert!(
        shard2[0].starts_with("  ok    reachable at 127.0.0.1:"),
        "{text}"
    );
    let shard7 = section(&text, "server shard7 (discovered)");
    assert!(
        shard7[0].starts_with(&format!("  FAIL  cannot connect to 127.0.0.1:{dead}: ")),
        "{text}"
    );
    assert_eq!(
        shard7[1],
        "        fix: ProtonMailGlobal.Shard lists this shard (ShardID 7): check its Hostname and Port there, that the server runs, and that this host may connect to it",
        "{text}"
    );
    for column in ["Attachment.BlobStorageID", "MessageData.Body"] {
        let lines = section(&text, &format!("reference shard2:ProtonMailShard.{column}"));
        assert!(
            marks(&lines, "FAIL").is_empty() && marks(&lines, "WARN").is_empty(),
            "{text}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("  ok    EXPLAIN "))
                .count(),
            if column.starts_with("Attachment") {
                5
            } else {
                4
            },
            "{text}"
        );
        assert_eq!(
            section(&text, &format!("reference shard7:ProtonMailShard.{column}")),
            ["  skip  not checked: server `shard7` is unreachable (see above)"],
            "{text}"
        );
    }
    assert!(
        verdict(&text).starts_with("verdict: NOT READY: 1 problem, "),
        "{text}"
    );

    // The shard that does not answer gone from the table, all is well.
    servers
        .global
        .run_sql("DELETE FROM ProtonMailGlobal.Shard WHERE ShardID = 7;")
        .unwrap();
    let (ready, text) = doctor(&config).await;
    assert!(ready, "{text}");
    assert!(!text.contains("shard7"), "{text}");
    tokio::task::spawn_blocking(move || drop(servers))
        .await
        .unwrap();
}
