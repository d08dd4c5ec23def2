//! EXPLAIN judging: the plan of every query the check runs, read from the
//! server and judged against what the query needs (an index range scan or
//! lookup on the expected index, no temporary table, no filesort).

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::report::{Mark, Report};
use super::{Doctor, field, quote};
use crate::config::{Discovery, Ident, Server};
use crate::db::{self, BlobScan, ReferenceScan};
use crate::discovery;
use crate::error::{Result, one_line};
use crate::plan::IdRange;
use crate::sketch::Weights;

/// Access types of an index lookup or range scan.
const INDEX_ACCESS: [&str; 5] = ["range", "ref", "ref_or_null", "eq_ref", "const"];

/// `Extra` notes that mean the server reads nothing at all.
const NOTHING_TO_READ: [&str; 3] = [
    "Impossible WHERE",
    "No matching min/max row",
    "no matching row in const table",
];

/// Ids the point-read queries are explained with: below 2⁶³, at it and at
/// the very end, so both forms of the IN list are covered.
const SAMPLE_IDS: [u64; 3] = [1, 1 << 63, u64::MAX];

/// One EXPLAIN row, the parts that matter.
struct PlanRow {
    access: String,
    key: String,
    rows: String,
    extra: String,
}

enum Expect<'a> {
    /// An index lookup or range scan on this index, no temporary table, no
    /// filesort.
    Index(&'a str),
    /// The same through whichever index.
    AnyIndex,
    /// Two index dives: MIN and MAX of the primary key.
    OptimizedAway,
}

/// The Shard table's query, read once per run: a poor plan is worth a
/// warning, never a failure. Nothing is said when the server cannot be
/// reached again (reading the shards just worked).
pub(super) async fn shards(report: &mut Report<'_>, d: &Discovery, server: &Server) -> Result<()> {
    let Ok((pool, mut conn)) = db::connect_once(server).await else {
        return Ok(());
    };
    let sql = discovery::shards_sql(d);
    let label = format!("EXPLAIN {:<13}", "shards");
    let written = match conn.query::<Row, _>(db::explain_sql(&sql)).await {
        Ok(rows) => {
            let plans = plan_rows(&rows);
            let shown = show_plans(&plans);
            match judge(&plans, &Expect::AnyIndex) {
                None => report.line(Mark::Ok, format!("{label} {shown}")),
                Some(problem) => report.line_fix(
                    Mark::Warn,
                    format!("{label} {shown}: {problem}"),
                    Some(db::add_index_sql(
                        &d.table,
                        &Ident::new("Type").expect("a valid name"),
                    )),
                ),
            }
        }
        Err(e) => report.line(
            Mark::Warn,
            format!("EXPLAIN shards failed: {}", one_line(e)),
        ),
    };
    drop(conn);
    let _ = pool.disconnect().await;
    written
}

impl Doctor<'_> {
    /// The plans of the blob table's queries: batch, points, sketch, id
    /// span.
    pub(super) async fn explain_blobs(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        blobs: &BlobScan,
    ) -> Result<()> {
        let key = blobs.index.0.as_str();
        let queries = [
            (
                "batch",
                db::blob_batch_sql(blobs, IdRange::ALL, self.config.check.chunk_size),
                Expect::Index(key),
            ),
            (
                "points",
                db::blob_points_sql(blobs, &SAMPLE_IDS),
                Expect::Index(key),
            ),
            (
                "sketch",
                db::blob_sketch_sql(blobs, &Weights::from_seed(0), IdRange::new(0, 4095)),
                Expect::Index(key),
            ),
            (
                "id span",
                db::blob_id_span_sql(blobs),
                Expect::OptimizedAway,
            ),
        ];
        for (what, sql, expect) in queries {
            self.explain(report, conn, what, &sql, expect).await?;
        }
        Ok(())
    }

    /// The plans of a reference column's queries, all through its index:
    /// batch, points, sketch, and those it needs (affected rows, the NULL
    /// and negative counts).
    pub(super) async fn explain_reference(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        scan: &ReferenceScan,
    ) -> Result<()> {
        let key = scan.index.0.as_str();
        let settings = &self.config.check;
        let mut queries = vec![
            (
                "batch",
                db::reference_batch_sql(scan, IdRange::ALL, settings.chunk_size),
            ),
            ("points", db::reference_points_sql(scan, &SAMPLE_IDS, 0)),
            (
                "sketch",
                db::reference_sketch_sql(scan, &Weights::from_seed(0), IdRange::new(0, 4095)),
            ),
        ];
        if let Some(sql) = db::affected_rows_sql(scan, 1, settings.affected_rows.max(1)) {
            queries.push(("affected rows", sql));
        }
        let unusable = [
            ("NULL count", db::Unusable::Null),
            ("negative count", db::Unusable::Negative),
        ];
        for (what, kind) in unusable {
            if let Some(sql) = db::unusable_batch_sql(scan, kind, None, settings.chunk_size)
                .or_else(|| db::unusable_count_sql(scan, kind))
            {
                queries.push((what, sql));
            }
        }
        for (what, sql) in queries {
            self.explain(report, conn, what, &sql, Expect::Index(key))
                .await?;
        }
        Ok(())
    }

    /// One query's plan, as a line: `ok`, or `FAIL` with what is wrong and
    /// the query.
    async fn explain(
        &self,
        report: &mut Report<'_>,
        conn: &mut Conn,
        what: &str,
        sql: &str,
        expect: Expect<'_>,
    ) -> Result<()> {
        let rows: Vec<Row> = match conn.query(db::explain_sql(sql)).await {
            Ok(rows) => rows,
            Err(e) => {
                return report.line(
                    Mark::Fail,
                    format!("EXPLAIN {what} failed: {}: {sql}", one_line(e)),
                );
            }
        };
        let plans = plan_rows(&rows);
        let shown = show_plans(&plans);
        let label = format!("EXPLAIN {what:<13}");
        match judge(&plans, &expect) {
            None => report.line(Mark::Ok, format!("{label} {shown}")),
            Some(problem) => report.line(
                Mark::Fail,
                format!("{label} {shown}: {problem}; the query: {sql}"),
            ),
        }
    }
}

fn plan_rows(rows: &[Row]) -> Vec<PlanRow> {
    rows.iter()
        .map(|row| {
            let get = |name: &str| field(row, &[name]).flatten().unwrap_or_default();
            PlanRow {
                access: get("type"),
                key: get("key"),
                rows: get("rows"),
                extra: get("Extra"),
            }
        })
        .collect()
}

/// `range, key Body, rows 2505, Using where; Using index`.
fn show_plans(plans: &[PlanRow]) -> String {
    plans
        .iter()
        .map(|p| {
            let mut parts = Vec::new();
            if !p.access.is_empty() {
                parts.push(p.access.clone());
            }
            if !p.key.is_empty() {
                parts.push(format!("key {}", p.key));
            }
            if !p.rows.is_empty() {
                parts.push(format!("rows {}", p.rows));
            }
            if !p.extra.is_empty() {
                parts.push(p.extra.clone());
            }
            one_line(parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What is wrong with a plan, if anything.
fn judge(plans: &[PlanRow], expect: &Expect) -> Option<String> {
    let [plan] = plans else {
        return Some(format!(
            "{} rows in the plan, expected one table read once",
            plans.len()
        ));
    };
    if NOTHING_TO_READ.iter().any(|n| plan.extra.contains(n)) {
        return None;
    }
    match expect {
        Expect::OptimizedAway => (!plan.extra.contains("Select tables optimized away"))
            .then(|| "expected two index dives (Select tables optimized away)".to_owned()),
        Expect::Index(_) | Expect::AnyIndex => index_problems(plan, expect),
    }
}

/// What keeps `plan` from being an index range scan or lookup (on the
/// expected index, if one is).
fn index_problems(plan: &PlanRow, expect: &Expect) -> Option<String> {
    let mut problems = Vec::new();
    if !INDEX_ACCESS.contains(&plan.access.as_str()) {
        problems.push(match plan.access.as_str() {
            "ALL" => "a full table scan".to_owned(),
            "index" => "a full index scan".to_owned(),
            other => format!("access type {other}"),
        });
    }
    if let Expect::Index(key) = expect
        && plan.key != *key
    {
        problems.push(format!("not through index {}", quote(key)));
    }
    if plan.extra.contains("Using temporary") {
        problems.push("a temporary table".to_owned());
    }
    if plan.extra.contains("Using filesort") {
        problems.push("a filesort".to_owned());
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{}, expected an index range scan or lookup",
            problems.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(access: &str, key: &str, extra: &str) -> PlanRow {
        PlanRow {
            access: access.into(),
            key: key.into(),
            rows: "10".into(),
            extra: extra.into(),
        }
    }

    #[test]
    fn plans_are_judged() {
        let index = Expect::Index("Body");
        assert!(judge(&[plan("range", "Body", "Using where; Using index")], &index).is_none());
        assert!(judge(&[plan("ref", "Body", "Using index")], &index).is_none());
        let full = judge(&[plan("ALL", "", "Using where")], &index).unwrap();
        assert!(full.contains("full table scan"), "{full}");
        assert!(full.contains("not through index `Body`"), "{full}");
        let sort = judge(
            &[plan(
                "range",
                "Body",
                "Using where; Using temporary; Using filesort",
            )],
            &index,
        )
        .unwrap();
        assert!(
            sort.contains("temporary") && sort.contains("filesort"),
            "{sort}"
        );
        assert!(
            judge(
                &[plan("", "", "Select tables optimized away")],
                &Expect::OptimizedAway
            )
            .is_none()
        );
        assert!(
            judge(
                &[plan("index", "PRIMARY", "Using index")],
                &Expect::OptimizedAway
            )
            .is_some()
        );
        assert!(
            judge(
                &[plan(
                    "",
                    "",
                    "Impossible WHERE noticed after reading const tables"
                )],
                &index
            )
            .is_none()
        );
        assert!(judge(&[], &index).is_some());
    }
}
