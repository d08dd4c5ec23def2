//! Confirmation tells apart two reads with the same counts over other rows
//! by a fingerprint of the referencing rows' primary keys, computed by the
//! server in the point read. Checked here on a real server: sets of rows
//! that an XOR of CRC32s cannot tell apart (it is affine over GF(2)),
//! composite keys whose parts would spell the same text, a row that
//! references a blob twice (body and header), and the per-run salt.

mod common;

use blobcheck::db::{Databases, DbSource, inspect};
use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER};
use blobcheck::read::PointReads;

/// The fingerprint of blob 20's referencing rows in `rows` (SQL values of
/// `R (A, B, BlobRef)` with primary key `(A, B)`), read the way
/// confirmation reads it, with the fingerprints salted by `salt`.
async fn fingerprint_of(database: &str, rows: &str) -> (u64, u64) {
    salted_fingerprint_of(database, rows, 7).await
}

async fn salted_fingerprint_of(database: &str, rows: &str, salt: u32) -> (u64, u64) {
    let sql = format!(
        "DROP DATABASE IF EXISTS {database};
         CREATE DATABASE {database};
         CREATE TABLE {database}.Blobs (ID bigint unsigned PRIMARY KEY, N bigint unsigned NOT NULL) ENGINE=InnoDB;
         CREATE TABLE {database}.R (A bigint unsigned, B varchar(8), BlobRef bigint unsigned,
             PRIMARY KEY (A, B), KEY (BlobRef)) ENGINE=InnoDB;
         INSERT INTO {database}.Blobs VALUES (20, 2);
         INSERT INTO {database}.R VALUES {rows};
         GRANT SELECT ON {database}.* TO '{CHECKER_USER}'@'%';"
    );
    tokio::task::spawn_blocking(move || common::servers().global.run_sql(&sql).unwrap())
        .await
        .unwrap();
    let url = common::servers()
        .global
        .url_for(CHECKER_USER, CHECKER_PASSWORD);
    let text = format!(
        "[servers.global]\nurl = \"{url}\"\n\n[blobs]\nserver = \"global\"\ntable = \"{database}.Blobs\"\nid = \"ID\"\ncount = \"N\"\n\n[[references]]\nserver = \"global\"\ntable = \"{database}.R\"\ncolumn = \"BlobRef\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_temp(dir.path(), "blobcheck.toml", &text);
    let config = blobcheck::config::Config::load(&path).unwrap();
    let databases = Databases::connect(&config, 2).await.unwrap();
    let schema = inspect(&config, &databases).await.unwrap();
    let source = DbSource::new(databases, schema).with_fingerprint_salt(salt);
    let points = source.reference_points(0, &[20]).await.unwrap();
    let [(20, count, fingerprint)] = points[..] else {
        panic!("one point for blob 20: {points:?}");
    };
    (count, fingerprint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_rows_in_the_same_number_have_another_fingerprint() {
    let sets = [
        ("fp_a", "(10, 'a', 20), (13, 'a', 20)"),
        ("fp_b", "(11, 'a', 20), (12, 'a', 20)"),
        ("fp_c", "(1000, 'a', 20), (1003, 'a', 20)"),
        // Key parts that would spell the same text joined with commas.
        ("fp_d", "(1, '2,3', 20), (4, 'a', 20)"),
        ("fp_e", "(1, '2', 20), (4, 'a', 20)"),
        // Four keys that differ only in their last digit, 0 to 3: their
        // CRC32s XOR to 0, whatever the other digits.
        (
            "fp_g",
            "(20, 'a', 20), (21, 'a', 20), (22, 'a', 20), (23, 'a', 20)",
        ),
        (
            "fp_h",
            "(30, 'a', 20), (31, 'a', 20), (32, 'a', 20), (33, 'a', 20)",
        ),
        (
            "fp_i",
            "(1, 'b0', 20), (1, 'b1', 20), (1, 'b2', 20), (1, 'b3', 20)",
        ),
    ];
    let mut seen = Vec::new();
    for (database, rows) in sets {
        let (count, fingerprint) = fingerprint_of(database, rows).await;
        assert_eq!(count, rows.matches("20)").count() as u64, "{rows}");
        assert!(
            !seen.contains(&fingerprint),
            "{rows}: fingerprint {fingerprint} seen before ({seen:?})"
        );
        seen.push(fingerprint);
    }
    // Which an XOR of the same CRC32s could not have told apart.
    let xor_of = |database: &str| {
        let sql = format!(
            "SELECT BIT_XOR(CRC32(CONCAT_WS(',', 7, LENGTH(A), A, LENGTH(B), B))) FROM {database}.R"
        );
        common::servers().global.query(&sql).unwrap()[0][0].clone()
    };
    let (a, b, g, h, i) = tokio::task::spawn_blocking(move || {
        (
            xor_of("fp_a"),
            xor_of("fp_b"),
            xor_of("fp_g"),
            xor_of("fp_h"),
            xor_of("fp_i"),
        )
    })
    .await
    .unwrap();
    assert_eq!(a, b);
    assert_eq!((&g, &h), (&i, &i));
    // The same rows, the same fingerprint, whatever the order they came in.
    let again = fingerprint_of("fp_f", "(13, 'a', 20), (10, 'a', 20)").await;
    assert_eq!(again, (2, seen[0]));
    // Another run's salt, another fingerprint of the same rows.
    let salted = salted_fingerprint_of("fp_f", "(13, 'a', 20), (10, 'a', 20)", 8).await;
    assert_eq!(salted.0, 2);
    assert_ne!(salted.1, seen[0]);
}
