//! Every query the scan runs is an index range scan with no temporary table
//! and no filesort, proven with EXPLAIN on real servers; and every session is
//! read-only and READ COMMITTED.

mod common;

use blobcheck::config::Config;
use blobcheck::db::{self, Databases};
use blobcheck::plan::IdRange;
use blobcheck::sketch::Weights;
use mysql_async::Row;
use mysql_async::prelude::Queryable;

async fn fixture_config() -> Config {
    tokio::task::spawn_blocking(|| common::servers().config())
        .await
        .unwrap()
        .unwrap()
}

struct Plan {
    access: String,
    key: String,
    extra: String,
}

async fn explain(databases: &Databases, server: usize, sql: &str) -> Vec<Plan> {
    let mut conn = databases.conn(server).await.unwrap();
    let rows: Vec<Row> = conn.query(format!("EXPLAIN {sql}")).await.unwrap();
    rows.into_iter()
        .map(|row| {
            let text = |name: &str| -> String {
                row.get_opt::<Option<String>, _>(name)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or_default()
            };
            Plan {
                access: text("type"),
                key: text("key"),
                extra: text("Extra"),
            }
        })
        .collect()
}

fn assert_index_scan(plans: &[Plan], sql: &str, index: &str, accesses: &[&str]) {
    assert_eq!(plans.len(), 1, "one table, no derived table: {sql}");
    let plan = &plans[0];
    assert!(
        accesses.contains(&plan.access.as_str()),
        "access type {} for {sql}",
        plan.access
    );
    assert_eq!(plan.key, index, "index used by {sql}");
    assert!(
        !plan.extra.contains("temporary"),
        "temporary table for {sql}: {}",
        plan.extra
    );
    assert!(
        !plan.extra.contains("filesort"),
        "filesort for {sql}: {}",
        plan.extra
    );
}

/// `blob_sql` is a range scan of the primary key, and `reference_sql` of
/// every reference column an index-only range scan of its index.
async fn assert_range_scans(
    databases: &Databases,
    schema: &db::Schema,
    blob_sql: &str,
    reference_sql: impl Fn(&db::ReferenceScan) -> String,
) {
    let plans = explain(databases, schema.blobs.server, blob_sql).await;
    assert_index_scan(&plans, blob_sql, "PRIMARY", &["range"]);
    for reference in &schema.references {
        let sql = reference_sql(reference);
        let plans = explain(databases, reference.server, &sql).await;
        assert_index_scan(&plans, &sql, reference.column.as_str(), &["range"]);
        assert!(
            plans[0].extra.contains("Using index"),
            "index-only: {sql}: {}",
            plans[0].extra
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scan_query_is_an_index_range_scan() {
    let config = fixture_config().await;
    let databases = Databases::connect(&config, 4).await.unwrap();
    let schema = db::inspect(&config, &databases).await.unwrap();
    let ranges = [
        IdRange::ALL,
        IdRange::new(100, 5000),
        IdRange::new(1 << 63, u64::MAX),
        IdRange::new(7, 7),
    ];

    for range in ranges {
        assert_range_scans(
            &databases,
            &schema,
            &db::blob_batch_sql(&schema.blobs, range, 1000),
            |reference| db::reference_batch_sql(reference, range, 1000),
        )
        .await;
    }

    // --method sketch: the same scans, summed on the server.
    let sketch_ranges = [
        IdRange::new(0, 4095),
        IdRange::new(100, 5000),
        IdRange::new(1 << 63, (1 << 63) + 4095),
        IdRange::new(u64::MAX - 4095, u64::MAX),
        IdRange::new(7, 7),
    ];
    for range in sketch_ranges {
        let blob_sql = db::blob_sketch_sql(&schema.blobs, &Weights::from_seed(1), range);
        if range.start == range.end {
            // `BETWEEN 7 AND 7` on the primary key is a point lookup: the
            // optimizer reads the one row (or finds none) while planning.
            let plans = explain(&databases, schema.blobs.server, &blob_sql).await;
            assert_eq!(plans.len(), 1, "{blob_sql}");
            assert!(
                plans[0].access == "const"
                    || plans[0]
                        .extra
                        .contains("Impossible WHERE noticed after reading const tables"),
                "a point lookup: {blob_sql}: {} {}",
                plans[0].access,
                plans[0].extra
            );
            for reference in &schema.references {
                let sql = db::reference_sketch_sql(reference, &Weights::from_seed(1), range);
                let plans = explain(&databases, reference.server, &sql).await;
                assert_index_scan(&plans, &sql, reference.column.as_str(), &["range", "ref"]);
            }
            continue;
        }
        assert_range_scans(&databases, &schema, &blob_sql, |reference| {
            db::reference_sketch_sql(reference, &Weights::from_seed(1), range)
        })
        .await;
    }

    // The probes that cut a sketch's range before it is summed: the same
    // index range scans, stopping at the row after the bound.
    for range in [IdRange::new(0, 1 << 20), IdRange::new(1 << 63, u64::MAX)] {
        let blobs = &schema.blobs;
        assert_range_scans(
            &databases,
            &schema,
            &db::sketch_cut_sql(&blobs.table, &blobs.index, &blobs.id, range, 1024),
            |r| db::sketch_cut_sql(&r.table, &r.index, &r.column, range, 1024),
        )
        .await;
    }

    // Confirmation's point reads: a range of points, never a sort, whether
    // the ids are below 2^63, above it, or both.
    let id_sets: [&[u64]; 3] = [
        &[1, 100, 4244],
        &[1 << 63, u64::MAX],
        &[1, 100, 4244, 1 << 63, u64::MAX],
    ];
    for ids in id_sets {
        let sql = db::blob_points_sql(&schema.blobs, ids);
        let plans = explain(&databases, schema.blobs.server, &sql).await;
        assert_index_scan(&plans, &sql, "PRIMARY", &["range"]);
        for reference in &schema.references {
            let sql = db::reference_points_sql(reference, ids, 4_242_424_242);
            let plans = explain(&databases, reference.server, &sql).await;
            assert_index_scan(&plans, &sql, reference.column.as_str(), &["range"]);
            assert!(
                plans[0].extra.contains("Using index"),
                "index-only: {sql}: {}",
                plans[0].extra
            );
        }
    }

    // Naming the rows behind a finding: a lookup on the column's index,
    // which holds the primary key too.
    for reference in &schema.references {
        let sql = db::affected_rows_sql(reference, 4244, 10)
            .expect("every fixture table has a primary key");
        let plans = explain(&databases, reference.server, &sql).await;
        assert_index_scan(&plans, &sql, reference.column.as_str(), &["ref"]);
        assert!(
            plans[0].extra.contains("Using index"),
            "index-only: {sql}: {}",
            plans[0].extra
        );
    }

    let sql = db::blob_id_span_sql(&schema.blobs);
    let plans = explain(&databases, schema.blobs.server, &sql).await;
    assert_eq!(plans.len(), 1);
    assert!(
        plans[0].extra.contains("Select tables optimized away"),
        "{sql}: {}",
        plans[0].extra
    );

    // NULL and negative values, in keyset batches: the first batch, and
    // one resumed after a real row of the column (literals as the server
    // gave them), for every column that can hold such values.
    let mut null_queries = 0;
    for reference in &schema.references {
        for kind in [db::Unusable::Null, db::Unusable::Negative] {
            let Some(first) = db::unusable_batch_sql(reference, kind, None, 1000) else {
                continue;
            };
            if kind == db::Unusable::Null {
                null_queries += 1;
            }
            let mut sqls = vec![first.clone()];
            let mut conn = databases.conn(reference.server).await.unwrap();
            let row: Option<Row> = conn
                .query_first(first.replace("LIMIT 1000", "LIMIT 1"))
                .await
                .unwrap();
            let after: Vec<String> = match row {
                Some(row) => row.unwrap().iter().map(|v| v.as_sql(true)).collect(),
                // No such row: resume after plausible integers.
                None => reference
                    .primary_key
                    .iter()
                    .map(|_| "5".to_owned())
                    .chain((kind == db::Unusable::Negative).then(|| "-5".to_owned()))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
            };
            drop(conn);
            sqls.push(db::unusable_batch_sql(reference, kind, Some(&after), 1000).unwrap());
            for sql in sqls {
                let plans = explain(&databases, reference.server, &sql).await;
                assert_index_scan(
                    &plans,
                    &sql,
                    reference.column.as_str(),
                    &["ref", "range", "ref_or_null"],
                );
                assert!(
                    plans[0].extra.contains("Using index"),
                    "index-only: {sql}: {}",
                    plans[0].extra
                );
            }
        }
    }
    assert_eq!(null_queries, 5, "the five nullable reference columns");
    databases.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_read_only_and_read_committed_even_for_root() {
    let servers = tokio::task::spawn_blocking(common::servers).await.unwrap();
    let mut config = fixture_config().await;
    // Root may write; the session settings alone must stop it.
    config.servers[0].url = servers.global.root_url();
    config.servers[0].password = None;
    let databases = Databases::connect(&config, 2).await.unwrap();
    let mut conn = databases.conn(0).await.unwrap();
    let (isolation, read_only): (String, u64) = conn
        .query_first("SELECT @@SESSION.tx_isolation, @@SESSION.tx_read_only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(isolation, "READ-COMMITTED");
    assert_eq!(read_only, 1);
    let write = conn
        .query_drop("UPDATE ProtonMailGlobal.BlobStorage SET NumReferences = NumReferences WHERE BlobStorageID = 100")
        .await;
    let error = write
        .expect_err("a write in a read-only session must fail")
        .to_string();
    assert!(error.contains("READ ONLY"), "{error}");
    drop(conn);
    databases.disconnect().await;
}

#[test]
fn the_checking_account_has_select_only() {
    let servers = common::servers();
    let grants = servers
        .global
        .query(&format!(
            "SHOW GRANTS FOR '{}'@'%'",
            blobcheck::demo::CHECKER_USER
        ))
        .unwrap();
    let text: Vec<String> = grants.into_iter().flatten().collect();
    let joined = text.join("\n");
    assert!(
        joined.contains("GRANT SELECT ON `ProtonMailGlobal`.*"),
        "{joined}"
    );
    for privilege in [
        "INSERT",
        "UPDATE",
        "DELETE",
        "ALL PRIVILEGES",
        "PROCESS",
        "SUPER",
    ] {
        assert!(!joined.contains(privilege), "{privilege} granted: {joined}");
    }
}
