//! The bundled fixtures, checked over two real servers with the SELECT-only
//! account: the findings must equal fixtures/expected.jsonl exactly, at every
//! chunk size and degree of parallelism.

mod common;

use blobcheck::plan::IdRange;
use common::{Exact, check_json, expected_fixture_findings, run_cli, servers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_findings_are_exact_at_every_chunk_size() {
    let config = common::fixture_config().await;
    let expected = expected_fixture_findings();
    assert_eq!(
        expected.len(),
        477,
        "fixtures/expected.jsonl changed: update this test"
    );
    for (chunk_size, jobs) in [
        (1, 1),
        (2, 3),
        (3, 2),
        (7, 4),
        (100, 1),
        (100, 8),
        (1000, 2),
        (10_000, 4),
    ] {
        let (findings, summary) = check_json(&config, IdRange::ALL, chunk_size, jobs).await;
        assert_eq!(findings, expected, "chunk size {chunk_size}, jobs {jobs}");
        assert_eq!(summary.blob_rows, 2993, "chunk size {chunk_size}");
        let references: u64 = summary.columns.iter().map(|c| c.references).sum();
        assert_eq!(references, 10_568, "chunk size {chunk_size}");
        // NULL references are counted apart, never as references.
        let nulls: Vec<u64> = summary.columns.iter().map(|c| c.nulls).collect();
        assert_eq!(nulls, vec![6, 5, 7, 4, 5, 0, 0]);
        assert!(
            summary.sketch.is_none(),
            "no sketch counts for --method exact"
        );
    }
}

/// `--method sketch` on the fixtures: one blob in six is inconsistent, so
/// most chunks hold several faults, and are halved until their pieces are
/// settled by their sums or small enough to read row by row; the smallest
/// sketches hold one or none and are settled by their sums at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_method_finds_exactly_the_fixture_findings() {
    use blobcheck::check::CheckOptions;
    use blobcheck::db::Protocol;
    use blobcheck::scan::{Method, ScanOptions};

    let config = common::fixture_config().await;
    let expected = expected_fixture_findings();
    for (target_rows, chunk_size, jobs) in [(2, 3, 2), (5, 7, 4), (40, 100, 3), (4096, 10_000, 4)] {
        for protocol in [Protocol::Text, Protocol::Binary] {
            let options = CheckOptions {
                protocol,
                ..CheckOptions::new(ScanOptions {
                    method: Method::Sketch { target_rows },
                    ..ScanOptions::fixed(chunk_size, jobs)
                })
            };
            let (findings, summary) = common::check_in_order(&config, &options).await;
            let what = format!("sketch rows {target_rows}, chunk size {chunk_size}, {protocol:?}");
            assert_eq!(findings, expected, "{what}");
            assert_eq!(summary.blob_rows, 2993, "{what}");
            let references: u64 = summary.columns.iter().map(|c| c.references).sum();
            assert_eq!(references, 10_568, "{what}");
            // The summary says how the chunks were checked; the stretch up
            // to 2⁶⁴ − 1 is always read row by row, and the smallest
            // sketches are mostly settled by their sums.
            let counts = summary.sketch.expect("a sketch run counts its chunks");
            assert!(counts.exact > 0, "{what}: {counts:?}");
            if target_rows <= 5 {
                assert!(counts.clean > 0 && counts.located > 0, "{what}: {counts:?}");
            } else {
                assert!(counts.partly_rows > 0, "{what}: {counts:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_keeps_every_persistent_finding() {
    use blobcheck::check::CheckOptions;
    use blobcheck::confirm::ConfirmOptions;
    use blobcheck::scan::ScanOptions;
    use std::time::Duration;

    let config = common::fixture_config().await;
    let options = CheckOptions {
        confirm: ConfirmOptions {
            settle_delay: Duration::from_millis(300),
            confirmations: 2,
            batch_size: 50,
            hot_threshold: 100,
        },
        // The scan watches busy blobs for the confirmation.
        ..CheckOptions::new(ScanOptions {
            hot_threshold: 100,
            ..ScanOptions::fixed(500, 3)
        })
    };
    let (text, summary) = common::check_jsonl(&config, &options).await;
    let mut findings = common::parse_jsonl(&text);
    findings.sort();
    assert_eq!(findings, expected_fixture_findings());
    assert_eq!(summary.transient, 0, "nothing changes the fixtures");
    assert!(summary.unsettled.is_empty());
    assert_eq!(summary.confirmations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affected_rows_name_real_referencing_rows() {
    use blobcheck::check::CheckOptions;
    use blobcheck::scan::ScanOptions;

    let config = common::fixture_config().await;
    let options = CheckOptions {
        affected_rows: 3,
        ..CheckOptions::new(ScanOptions::fixed(1000, 2))
    };
    let (text, _) = common::check_jsonl(&config, &options).await;
    let mut checked = 0;
    for line in text.lines() {
        let finding: serde_json::Value = serde_json::from_str(line).unwrap();
        let at_risk = finding["kind"] == "missing_blob" || finding["direction"] == "too_low";
        let rows = finding["affected_rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !at_risk {
            assert!(rows.is_empty(), "only blobs at risk list rows: {line}");
            continue;
        }
        // Up to 3 rows per column, as many as there are.
        let expected: u64 = finding["references"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap().min(3))
            .sum();
        assert_eq!(rows.len() as u64, expected, "{line}");
        // Spot-check that each named row really references the blob.
        if checked < 40 {
            for row in &rows {
                let label = row["column"].as_str().unwrap();
                let column = label.rsplit('.').next().unwrap();
                let (key, value) = row["key"].as_object().unwrap().iter().next().unwrap();
                let server = if label.starts_with("global:") {
                    &servers().global
                } else {
                    &servers().shard
                };
                let got = server
                    .query(&format!(
                        "SELECT {column} FROM {} WHERE {key} = {value}",
                        row["table"].as_str().unwrap()
                    ))
                    .unwrap();
                assert_eq!(
                    got,
                    vec![vec![finding["blob_id"].as_u64().unwrap().to_string()]],
                    "{line}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_protocols_find_the_same() {
    use blobcheck::check::CheckOptions;
    use blobcheck::db::Protocol;
    use blobcheck::scan::ScanOptions;

    let config = common::fixture_config().await;
    for protocol in [Protocol::Text, Protocol::Binary] {
        for chunk_size in [3, 1000] {
            let options = CheckOptions {
                protocol,
                ..CheckOptions::new(ScanOptions::fixed(chunk_size, 2))
            };
            let (text, _) = common::check_jsonl(&config, &options).await;
            let mut findings = common::parse_jsonl(&text);
            findings.sort();
            assert_eq!(
                findings,
                expected_fixture_findings(),
                "{protocol:?}, chunk size {chunk_size}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_ranges_split_the_findings_exactly() {
    let config = common::fixture_config().await;
    let expected = expected_fixture_findings();
    // Cut inside the bulk ids, at 2^63 and just below 2^64.
    let cuts = [0u64, 2000, 2001, 1 << 63, u64::MAX - 1000, u64::MAX];
    let mut union: Vec<Exact> = Vec::new();
    for pair in cuts.windows(2) {
        let start = if pair[0] == 0 { 0 } else { pair[0] + 1 };
        let range = IdRange::new(start, pair[1]);
        let (findings, _) = check_json(&config, range, 5, 3).await;
        assert!(
            findings.iter().all(|f| range.contains(f.blob_id)),
            "{range}"
        );
        union.extend(findings);
    }
    union.sort();
    assert_eq!(union, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_together_find_exactly_what_one_run_finds() {
    use blobcheck::check::Scope;
    use blobcheck::partition::Partition;
    let config = common::fixture_config().await;
    let expected = expected_fixture_findings();
    for n in [1u64, 2, 3, 7, 16] {
        let mut union: Vec<Exact> = Vec::new();
        let mut blob_rows = 0;
        for k in 0..n {
            let (findings, summary) =
                common::check_scope(&config, Scope::Partition(Partition { k, n }), 97, 2).await;
            blob_rows += summary.blob_rows;
            union.extend(findings);
        }
        union.sort();
        assert_eq!(union, expected, "{n} partitions");
        assert_eq!(blob_rows, 2993, "{n} partitions read every blob row once");
    }
}

#[test]
fn the_cli_reports_the_fixture_findings_and_exits_1() {
    let servers = servers();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n",
        blobcheck::demo::EXAMPLE_CONFIG
            .replace(
                "url = \"mysql://blobcheck@127.0.0.1:3306\"",
                &format!(
                    "url = \"mysql://blobcheck@127.0.0.1:{}\"",
                    servers.global.port()
                )
            )
            .replace(
                "url = \"mysql://blobcheck@127.0.0.1:3307\"",
                &format!(
                    "url = \"mysql://blobcheck@127.0.0.1:{}\"",
                    servers.shard.port()
                )
            )
    );
    let config_path = common::write_temp(dir.path(), "proton.toml", &config);
    let password_env = [
        (
            "BLOBCHECK_GLOBAL_PASSWORD",
            blobcheck::demo::CHECKER_PASSWORD,
        ),
        (
            "BLOBCHECK_SHARD_PASSWORD",
            blobcheck::demo::CHECKER_PASSWORD,
        ),
    ];
    let output = dir.path().join("findings.jsonl");
    let (code, stdout, stderr) = run_cli(
        &[
            "check",
            "--config",
            config_path.to_str().unwrap(),
            "--format",
            "json",
            "--output",
            output.to_str().unwrap(),
            "--chunk-size",
            "50",
        ],
        &password_env,
    );
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stdout.is_empty(), "--output takes the findings: {stdout}");
    let mut findings = common::parse_jsonl(&std::fs::read_to_string(&output).unwrap());
    findings.sort();
    assert_eq!(findings, expected_fixture_findings());
    assert!(stderr.contains("Result: 477 inconsistencies"), "{stderr}");
    assert!(
        !stderr.contains(blobcheck::demo::CHECKER_PASSWORD),
        "password leaked: {stderr}"
    );

    // The text report: one row per finding, then the summary.
    let (code, stdout, _) = run_cli(
        &["check", "--config", config_path.to_str().unwrap()],
        &password_env,
    );
    assert_eq!(code, 1);
    assert!(stdout.starts_with("KIND"), "{stdout}");
    let rows = stdout
        .lines()
        .filter(|l| {
            l.starts_with("count_mismatch")
                || l.starts_with("missing_blob")
                || l.starts_with("orphan_blob")
        })
        .count();
    assert_eq!(rows, 477);
    assert!(
        stdout.contains("missing_blob    critical  18446744073709551615        -        8"),
        "{stdout}"
    );
    assert!(stdout.contains("Result: 477 inconsistencies"), "{stdout}");
}

#[test]
fn doctor_and_repair_sql_from_the_command_line() {
    let servers = servers();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_fixture_config(servers, dir.path());
    let (code, stdout, stderr) = run_cli(&["doctor", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("verdict: READY"), "{stdout}");

    let findings = common::write_temp(
        dir.path(),
        "findings.jsonl",
        blobcheck::demo::EXPECTED_FINDINGS,
    );
    let plan = dir.path().join("repair.sql");
    let (code, stdout, stderr) = run_cli(
        &[
            "repair-sql",
            "--config",
            config.to_str().unwrap(),
            "--findings",
            findings.to_str().unwrap(),
            "--output",
            plan.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("135 guarded UPDATE statements, 342 missing blobs"),
        "{stderr}"
    );
    let plan = std::fs::read_to_string(&plan).unwrap();
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("UPDATE ")).count(),
        135
    );

    // A config whose reference column has no index: not ready, exit 2.
    let broken = common::write_temp(
        dir.path(),
        "broken.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("column = \"Body\"", "column = \"UserID\""),
    );
    let (code, stdout, stderr) = run_cli(&["doctor", "--config", broken.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("ADD INDEX `UserID` (`UserID`), ALGORITHM=INPLACE, LOCK=NONE;"),
        "{stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The committed fixtures are exactly what `fixtures/generate.py` writes:
/// run it in a scratch directory (it writes next to itself) and compare
/// every file byte for byte, so an edit by hand or a changed generator
/// cannot go unnoticed.
#[test]
fn generate_py_reproduces_the_committed_fixtures() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("generate.py");
    std::fs::copy(fixtures.join("generate.py"), &script).unwrap();
    let output = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 must be installed to check the fixtures");
    assert!(
        output.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["global.sql", "shard.sql", "expected.jsonl", "README.md"] {
        let generated = std::fs::read(dir.path().join(name)).unwrap();
        let committed = std::fs::read(fixtures.join(name)).unwrap();
        assert!(
            generated == committed,
            "fixtures/{name} is not what fixtures/generate.py writes: run python3 fixtures/generate.py and commit the result"
        );
    }
}
