//! Shard discovery against real servers: the shards come from the global
//! `Shard` table, a shard added there is checked on the next run, and the
//! table's own credentials are never used.

mod common;

use blobcheck::check::{CheckOptions, run};
use blobcheck::config::Config;
use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER, FixtureServers, create_checker_sql};
use blobcheck::report::{Format, Reporter};
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use blobcheck::scan::ScanOptions;
use common::{Captured, Exact, expected_fixture_findings, parse_jsonl};

fn discovery_config(servers: &FixtureServers, dir: &std::path::Path) -> Config {
    let password_file = common::write_temp(dir, "shard-password", &format!("{CHECKER_PASSWORD}\n"));
    let text = format!(
        r#"
[servers.global]
url = "{global}"

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
server = "global"
table  = "ProtonMailGlobal.SentAttachment"
column = "BlobStorageID"

[discovery]
server = "global"
user = "{CHECKER_USER}"
password_file = "{password_file}"

[[discovery.references]]
table = "Attachment"
column = "BlobStorageID"
[[discovery.references]]
table = "OutsideAttachment"
column = "BlobStorageID"
[[discovery.references]]
table = "ContactData"
column = "BlobStorageID"
[[discovery.references]]
table = "MessageData"
column = "Body"
[[discovery.references]]
table = "MessageData"
column = "Header"
"#,
        global = servers.global.url_for(CHECKER_USER, CHECKER_PASSWORD),
        password_file = password_file.display(),
    );
    Config::parse(&text, std::path::Path::new("discovery.toml")).unwrap()
}

async fn check(config: &Config) -> (Vec<Exact>, blobcheck::report::Summary) {
    let out = Captured::default();
    let reporter = Reporter::new(Format::Json, Box::new(out.clone()), vec![]);
    let summary = run(
        config,
        &CheckOptions::new(ScanOptions::fixed(1000, 2)),
        reporter,
    )
    .await
    .unwrap();
    let mut findings = parse_jsonl(&out.text());
    findings.sort();
    (findings, summary)
}

/// The fixture expectations with the shard named as discovery names it.
fn expected_as(shard: &str) -> Vec<Exact> {
    let mut expected = expected_fixture_findings();
    for finding in &mut expected {
        for (label, _) in &mut finding.references {
            if let Some(rest) = label.strip_prefix("shard1:") {
                *label = format!("{shard}:{rest}");
            }
        }
        finding.references.sort();
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_come_from_the_shard_table_and_a_new_one_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, extra) = tokio::task::spawn_blocking(|| {
        let servers = FixtureServers::start().unwrap();
        // Point the fixture's mail shard (ShardID 2, Type 2) at the shard
        // server. Its Username/Pwd stay 'root'/'override': if blobcheck used
        // them, it could not log in.
        servers
            .global
            .run_sql(&format!(
                "UPDATE ProtonMailGlobal.Shard SET Hostname = '127.0.0.1', Port = {} WHERE ShardID = 2",
                servers.shard.port()
            ))
            .unwrap();
        // A new, almost empty shard: one message whose body and header are
        // blob 4244, which the other data references exactly 5000 times.
        let extra = Sandbox::start(SandboxOptions::new("shard9")).unwrap();
        extra.run_sql(blobcheck::demo::SHARD_FIXTURE).unwrap();
        extra
            .run_sql(
                "USE ProtonMailShard; DELETE FROM Attachment; DELETE FROM OutsideAttachment; \
                 DELETE FROM ContactData; DELETE FROM MessageData; \
                 INSERT INTO MessageData (MessageID, UserID, Body, Header) VALUES (1, 1, 4244, 4244);",
            )
            .unwrap();
        extra.run_sql(&create_checker_sql(&["ProtonMailShard"])).unwrap();
        (servers, extra)
    })
    .await
    .unwrap();
    let config = discovery_config(&servers, dir.path());

    let (findings, summary) = check(&config).await;
    assert_eq!(findings, expected_as("shard2"));
    assert!(
        summary.servers.contains(&"shard2 (discovered)".to_owned()),
        "{:?}",
        summary.servers
    );
    assert_eq!(
        summary.servers.len(),
        2,
        "the Type 1, 3 and 5 rows are not mail shards"
    );

    // The new shard appears in the table: the next run checks it.
    servers
        .global
        .run_sql(&format!(
            "INSERT INTO ProtonMailGlobal.Shard VALUES (9, '127.0.0.1', {}, 'ProtonMailShard', 'root', 'override', 0, 1000, 0, 2, 0)",
            extra.port()
        ))
        .unwrap();
    let (findings, summary) = check(&config).await;
    assert!(
        summary.servers.contains(&"shard9 (discovered)".to_owned()),
        "{:?}",
        summary.servers
    );
    let mut expected = expected_as("shard2");
    expected.push(Exact {
        kind: "count_mismatch".into(),
        blob_id: 4244,
        stored: Some(5000),
        actual: 5002,
        references: vec![],
    });
    let got_4244 = findings
        .iter()
        .find(|f| f.blob_id == 4244)
        .expect("blob 4244 is now referenced twice more");
    assert!(
        got_4244
            .references
            .contains(&("shard9:ProtonMailShard.MessageData.Body".to_owned(), 1))
    );
    assert!(
        got_4244
            .references
            .contains(&("shard9:ProtonMailShard.MessageData.Header".to_owned(), 1))
    );
    let expected_without_refs: Vec<(String, u64, Option<u64>, u64)> = {
        let mut e: Vec<_> = expected
            .iter()
            .map(|f| (f.kind.clone(), f.blob_id, f.stored, f.actual))
            .collect();
        e.sort();
        e
    };
    let mut got: Vec<_> = findings
        .iter()
        .map(|f| (f.kind.clone(), f.blob_id, f.stored, f.actual))
        .collect();
    got.sort();
    assert_eq!(got, expected_without_refs);

    tokio::task::spawn_blocking(move || drop((servers, extra)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_discovered_shard_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let servers = tokio::task::spawn_blocking(|| {
        let servers = FixtureServers::start().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        servers
            .global
            .run_sql(&format!("UPDATE ProtonMailGlobal.Shard SET Hostname = '127.0.0.1', Port = {port} WHERE ShardID = 2"))
            .unwrap();
        servers
    })
    .await
    .unwrap();
    let config = discovery_config(&servers, dir.path());
    let reporter = Reporter::new(Format::Json, Box::new(std::io::sink()), vec![]);
    let error = run(
        &config,
        &CheckOptions::new(ScanOptions::fixed(1000, 2)),
        reporter,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("server `shard2` (127.0.0.1:"), "{error}");
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        !error.contains(CHECKER_PASSWORD) && !error.contains("override"),
        "{error}"
    );
    tokio::task::spawn_blocking(move || drop(servers))
        .await
        .unwrap();
}
