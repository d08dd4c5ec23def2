//! `blobcheck repair-sql`: turns a findings file into a repair plan for a
//! person to review and run on the primary. Nothing here writes: every
//! session is READ ONLY, and the plan is only printed.
//!
//! Each finding is read again first (a stable point read: stored count,
//! every reference column, stored count again), so the plan reflects the
//! databases now, not when the check ran:
//!
//! - a count that is still wrong by exactly what the check saw gets
//!   `UPDATE … SET count = <actual> WHERE id = <id> AND count = <stored>;`,
//!   guarded by the count it expects, so it changes nothing if the count
//!   moved in the meantime, and running the plan twice is harmless;
//! - one that changed gets a comment and no statement (check again);
//! - one that is consistent now gets a comment;
//! - a missing blob gets a comment listing the rows that reference it:
//!   there is no automatic fix.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::Config;
use crate::db::{DbSource, Schema};
use crate::error::{Error, Result, one_line};
use crate::finding::AffectedRow;
use crate::finding::{Finding, Kind, classify};
use crate::read::{PointRead, PointReads, RunReads, read_points};

/// Ids per point-read query.
const BATCH: usize = 500;
/// Reads of an id whose stored count moved during the read, before it is
/// reported as changed.
const READS: usize = 3;
/// Rows listed per column for each missing blob.
pub const AFFECTED_ROWS: u64 = 100;

/// What a repair plan came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// Guarded UPDATE statements printed.
    pub statements: u64,
    /// Missing blobs listed (no statement: no automatic fix).
    pub missing: u64,
    /// Findings whose counts are different now: no statement.
    pub changed: u64,
    /// Findings that are consistent now.
    pub resolved: u64,
}

/// One line of a findings file, as `blobcheck check --format json` writes
/// it; other fields are ignored.
#[derive(Debug, Deserialize)]
struct Line {
    kind: Kind,
    blob_id: u64,
    stored: Option<u64>,
    actual: u64,
    #[serde(default)]
    references: BTreeMap<String, u64>,
}

/// A finding from the file.
#[derive(Debug, Clone)]
struct Listed {
    /// 1-based line in the file.
    line: usize,
    kind: Kind,
    blob_id: u64,
    stored: Option<u64>,
    actual: u64,
    /// The columns it named.
    labels: Vec<String>,
}

/// The message of a serde_json error without its position (which is about
/// the line alone, not the file).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    format!("column {}: {}", e.column(), one_line(text))
}

/// Reads and validates the findings file. Every problem names its line.
fn read_findings(path: &Path) -> Result<Vec<Listed>> {
    let shown = one_line(path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read findings {shown}: {}", one_line(e))))?;
    let mut listed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| line_error(path, n + 1, reason);
        let parsed: Line = serde_json::from_str(line).map_err(|e| bad(json_reason(&e)))?;
        if classify(parsed.stored, parsed.actual) != Some(parsed.kind) {
            return Err(bad(format!(
                "kind {} does not fit stored {} and actual {}",
                parsed.kind.as_str(),
                parsed
                    .stored
                    .map_or_else(|| "null".to_owned(), |s| s.to_string()),
                parsed.actual
            )));
        }
        listed.push(Listed {
            line: n + 1,
            kind: parsed.kind,
            blob_id: parsed.blob_id,
            stored: parsed.stored,
            actual: parsed.actual,
            labels: parsed.references.into_keys().collect(),
        });
    }
    Ok(listed)
}

fn line_error(path: &Path, line: usize, reason: String) -> Error {
    Error::Usage(format!(
        "findings {}, line {line}: {reason}",
        one_line(path.display())
    ))
}

/// Every column a finding names must be one the configuration checks:
/// otherwise the findings come from another configuration, and counting
/// the references again with this one would give other numbers.
fn check_labels(config: &Config, path: &Path, listed: &[Listed]) -> Result<()> {
    let labels: BTreeSet<&str> = config.references.iter().map(|r| r.label.as_str()).collect();
    for finding in listed {
        if let Some(unknown) = finding
            .labels
            .iter()
            .find(|label| !labels.contains(label.as_str()))
        {
            return Err(line_error(
                path,
                finding.line,
                format!(
                    "column `{}` is not in the configuration: these findings come from another configuration",
                    one_line(unknown)
                ),
            ));
        }
    }
    Ok(())
}

/// `2025-01-31 23:59:59 UTC`.
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (proleptic Gregorian), after Howard Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn output_error(e: std::io::Error) -> Error {
    Error::Output {
        path: "output".into(),
        reason: one_line(e),
    }
}

fn stored_text(stored: Option<u64>) -> String {
    stored.map_or_else(|| "no blob row".to_owned(), |s| format!("stored {s}"))
}

/// Reads every id again; ids whose stored count moved during a read are
/// read again, up to `READS` times. Returns per id the last read and
/// whether it was stable.
async fn reread<S: PointReads>(source: &S, ids: &[u64]) -> Result<BTreeMap<u64, (Finding, bool)>> {
    let mut reads = BTreeMap::new();
    let mut pending: Vec<u64> = ids.to_vec();
    for attempt in 0..READS {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut unstable = Vec::new();
        for batch in pending.chunks(BATCH) {
            for PointRead {
                finding, stable, ..
            } in read_points(source, batch).await?
            {
                if !stable {
                    unstable.push(finding.blob_id);
                }
                reads.insert(finding.blob_id, (finding, stable));
            }
        }
        pending = unstable;
    }
    Ok(reads)
}

/// Reads the findings file, reads every finding again, and prints the
/// repair plan to `out`. Executes nothing that writes.
pub async fn run(config: &Config, findings: &Path, out: &mut dyn Write) -> Result<RepairStats> {
    let listed = read_findings(findings)?;
    // As the check does: the discovered shards are columns too.
    let config = &crate::discovery::expand(config).await?;
    check_labels(config, findings, &listed)?;
    let mut ids: Vec<u64> = listed.iter().map(|f| f.blob_id).collect();
    ids.sort_unstable();
    ids.dedup();

    let source = DbSource::open(config, 1, config.check.max_connections_per_server).await?;
    let result = plan(
        config,
        findings,
        &listed,
        &ids,
        &source,
        &source.schema,
        out,
    )
    .await;
    source.databases.disconnect().await;
    result
}

/// What became of one finding when it was read again.
enum Outcome<'a> {
    /// Still wrong by exactly what the check saw: a guarded UPDATE.
    Update {
        stored: u64,
        actual: u64,
        why: &'static str,
    },
    /// Different now: a comment, no statement.
    Changed(String),
    /// Consistent now: a comment.
    Resolved(String),
    /// Still missing: the rows that reference it.
    Missing(&'a Finding),
}

/// Decides what to print for a finding from its fresh read.
fn outcome<'a>(finding: &Listed, now: &'a Finding, stable: bool) -> Outcome<'a> {
    let was = format!("{}, actual {}", stored_text(finding.stored), finding.actual);
    let is = format!("{}, actual {}", stored_text(now.stored), now.actual);
    let changed = || Outcome::Changed(format!("changed since the check ({was}): now {is}"));
    if !stable {
        return Outcome::Changed(format!(
            "changed since the check ({was}): its count kept moving while it was read"
        ));
    }
    if classify(now.stored, now.actual).is_none() {
        return Outcome::Resolved(format!("resolved since the check ({was}; now {is})"));
    }
    match (finding.kind, now.stored) {
        (Kind::MissingBlob, None) => Outcome::Missing(now),
        (Kind::MissingBlob, Some(_)) => changed(),
        (_, Some(stored)) if now.stored == finding.stored && now.actual == finding.actual => {
            let why = match finding.kind {
                Kind::OrphanBlob => {
                    "orphan: nothing references it; a count of 0 lets the asynchronous cleanup delete the blob"
                }
                _ if stored > now.actual => "too high: storage leak",
                _ if stored == 0 => {
                    "too low, stored 0: the cleanup would delete it while referenced"
                }
                _ => "too low: it would be deleted while still referenced",
            };
            Outcome::Update {
                stored,
                actual: now.actual,
                why,
            }
        }
        _ => changed(),
    }
}

/// Writes one line of the plan to `$out`; a failed write is an
/// `Error::Output` returned from the calling function.
macro_rules! w {
    ($out:expr) => {
        writeln!($out).map_err(output_error)?
    };
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(output_error)?
    };
}

/// `1 row`, `2 rows`.
fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The blob table's names as the plan's statements and comments quote them.
struct BlobNames {
    table: String,
    id: String,
    count: String,
}

impl BlobNames {
    fn of(config: &Config) -> BlobNames {
        let blobs = &config.blobs;
        BlobNames {
            table: blobs.table.quoted(),
            id: blobs.id.quoted(),
            count: blobs.count.quoted(),
        }
    }
}

/// Each blob once, in the order of the file, with what its fresh read
/// made of it. A blob the re-read did not return is left out.
fn outcomes<'a>(
    listed: &[Listed],
    reads: &'a BTreeMap<u64, (Finding, bool)>,
) -> Vec<(u64, Outcome<'a>)> {
    let mut seen = BTreeSet::new();
    listed
        .iter()
        .filter(|f| seen.insert(f.blob_id))
        .filter_map(|f| {
            let (now, stable) = reads.get(&f.blob_id)?;
            Some((f.blob_id, outcome(f, now, *stable)))
        })
        .collect()
}

/// How many outcomes of each sort the plan holds.
fn tally(outcomes: &[(u64, Outcome)]) -> RepairStats {
    let mut stats = RepairStats::default();
    for (_, outcome) in outcomes {
        match outcome {
            Outcome::Update { .. } => stats.statements += 1,
            Outcome::Changed(_) => stats.changed += 1,
            Outcome::Resolved(_) => stats.resolved += 1,
            Outcome::Missing(_) => stats.missing += 1,
        }
    }
    stats
}

async fn plan<S: PointReads + RunReads>(
    config: &Config,
    findings: &Path,
    listed: &[Listed],
    ids: &[u64],
    source: &S,
    schema: &Schema,
    out: &mut dyn Write,
) -> Result<RepairStats> {
    let reads = reread(source, ids).await?;
    let read_at = SystemTime::now();
    let outcomes = outcomes(listed, &reads);
    let stats = tally(&outcomes);
    let names = BlobNames::of(config);

    // Written as it goes: a plan for millions of findings never sits in
    // memory as text.
    write_header(
        out,
        config,
        &names,
        findings,
        (listed.len(), ids.len()),
        read_at,
    )?;
    write_updates(out, &names, &outcomes, stats.statements)?;
    write_changed(out, &outcomes, &stats)?;
    write_missing(
        out,
        config,
        &names,
        source,
        schema,
        &outcomes,
        stats.missing,
    )
    .await?;
    write_summary(out, &stats)?;
    out.flush().map_err(output_error)?;
    Ok(stats)
}

/// The plan's opening comment: where it comes from, what it is about, and
/// how to run it. `counted` is the findings file's lines and blobs.
fn write_header(
    out: &mut dyn Write,
    config: &Config,
    names: &BlobNames,
    findings: &Path,
    counted: (usize, usize),
    read_at: SystemTime,
) -> Result<()> {
    let BlobNames { table, id, count } = names;
    let (lines, blobs) = counted;
    let server = &config.servers[config.blobs.server];
    w!(out, "-- blobcheck repair plan");
    w!(
        out,
        "-- generated by blobcheck {} at {}",
        env!("CARGO_PKG_VERSION"),
        utc(read_at)
    );
    w!(
        out,
        "-- findings: {} ({lines} lines, {blobs} blobs)",
        one_line(findings.display()),
    );
    let servers: Vec<String> = config
        .servers
        .iter()
        .map(|s| format!("{}={}", one_line(&s.name), one_line(&s.url)))
        .collect();
    w!(out, "-- configuration: servers {}", servers.join(", "));
    w!(
        out,
        "-- blob table: {table} (id {id}, count {count}) on server `{}`",
        one_line(&server.name)
    );
    w!(
        out,
        "-- every finding was read again just now: stored count, every reference column, stored count again."
    );
    w!(out, "--");
    w!(
        out,
        "-- REVIEW BEFORE RUNNING. Run it ON THE PRIMARY of that blob table, not on a replica."
    );
    w!(
        out,
        "-- Each UPDATE is guarded by the count it expects (... AND {count} = <stored>), so it changes"
    );
    w!(
        out,
        "-- nothing if the count changed meanwhile, and running this file twice is harmless. There is no"
    );
    w!(
        out,
        "-- transaction: every statement stands alone. Afterwards, run blobcheck check again."
    );
    w!(
        out,
        "-- A count set to 0 (orphans) lets the asynchronous cleanup delete the blob for good: apply those"
    );
    w!(
        out,
        "-- only if the configuration lists every column on every shard that can reference a blob."
    );
    Ok(())
}

/// Section 1: a guarded UPDATE for each count still wrong by exactly what
/// the check saw.
fn write_updates(
    out: &mut dyn Write,
    names: &BlobNames,
    outcomes: &[(u64, Outcome)],
    statements: u64,
) -> Result<()> {
    let BlobNames { table, id, count } = names;
    w!(out);
    w!(
        out,
        "-- ==== 1. counts to set: {}",
        plural(statements, "guarded UPDATE statement")
    );
    for (blob, outcome) in outcomes {
        if let Outcome::Update {
            stored,
            actual,
            why,
        } = outcome
        {
            w!(out);
            w!(
                out,
                "-- blob {blob}: stored {stored}, actual {actual} ({why})"
            );
            w!(
                out,
                "UPDATE {table} SET {count} = {actual} WHERE {id} = {blob} AND {count} = {stored};"
            );
        }
    }
    Ok(())
}

/// Section 2: findings that changed or resolved since the check, one
/// comment each.
fn write_changed(
    out: &mut dyn Write,
    outcomes: &[(u64, Outcome)],
    stats: &RepairStats,
) -> Result<()> {
    w!(out);
    w!(
        out,
        "-- ==== 2. different since the check, no statement: {} changed (run blobcheck again), {} resolved",
        stats.changed,
        stats.resolved
    );
    for (blob, outcome) in outcomes {
        match outcome {
            Outcome::Changed(what) => {
                w!(out, "-- blob {blob}: {what}; run blobcheck again");
            }
            Outcome::Resolved(what) => w!(out, "-- blob {blob}: {what}"),
            _ => {}
        }
    }
    Ok(())
}

/// Section 3: each missing blob with the rows that reference it (up to
/// `AFFECTED_ROWS` per column, read now), or the query that lists them.
async fn write_missing<S: RunReads>(
    out: &mut dyn Write,
    config: &Config,
    names: &BlobNames,
    source: &S,
    schema: &Schema,
    outcomes: &[(u64, Outcome<'_>)],
    missing: u64,
) -> Result<()> {
    let labels: Vec<String> = config
        .references
        .iter()
        .map(|r| one_line(&r.label))
        .collect();
    w!(out);
    w!(
        out,
        "-- ==== 3. {} (no row in {}): no automatic fix",
        plural(missing, "missing blob"),
        names.table
    );
    for (blob, outcome) in outcomes {
        let Outcome::Missing(now) = outcome else {
            continue;
        };
        let affected = source.affected_rows(now, AFFECTED_ROWS).await?;
        w!(out);
        w!(
            out,
            "-- blob {blob}: MISSING, referenced {}; no automatic fix: restore the blob row from backup or repair the referencing rows",
            plural(now.actual, "time")
        );
        for &(column, n) in &now.references {
            let reference = &schema.references[column];
            w!(out, "--   {}: {}", labels[column], plural(n, "row"));
            if reference.primary_key.is_empty() {
                w!(
                    out,
                    "--     (no primary key to name them: SELECT * FROM {} WHERE {} = {blob} LIMIT {AFFECTED_ROWS};)",
                    reference.table.quoted(),
                    reference.column.quoted()
                );
                continue;
            }
            let rows: Vec<&AffectedRow> = affected.iter().filter(|r| r.column == column).collect();
            for row in &rows {
                w!(out, "--     {}", one_line(row.display()));
            }
            let more = n.saturating_sub(rows.len() as u64);
            if more > 0 {
                w!(
                    out,
                    "--     … and {more} more: SELECT * FROM {} WHERE {} = {blob};",
                    reference.table.quoted(),
                    reference.column.quoted()
                );
            }
        }
    }
    Ok(())
}

/// The closing line: what the plan came to.
fn write_summary(out: &mut dyn Write, stats: &RepairStats) -> Result<()> {
    w!(out);
    w!(
        out,
        "-- summary: {}; {} (no automatic fix); {} changed since the check (run blobcheck again); {} resolved since the check",
        plural(stats.statements, "UPDATE statement"),
        plural(stats.missing, "missing blob"),
        stats.changed,
        stats.resolved
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)),
            "2000-02-29 01:02:03 UTC"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "2025-12-31 23:59:59 UTC"
        );
    }

    fn listed(kind: Kind, stored: Option<u64>, actual: u64) -> Listed {
        Listed {
            line: 1,
            kind,
            blob_id: 9,
            stored,
            actual,
            labels: vec![],
        }
    }

    fn read(stored: Option<u64>, actual: u64) -> Finding {
        Finding {
            kind: classify(stored, actual).unwrap_or(Kind::CountMismatch),
            blob_id: 9,
            stored,
            actual,
            references: vec![(0, actual)],
        }
    }

    #[test]
    fn only_what_is_still_exactly_as_seen_gets_a_statement() {
        let same = read(Some(3), 2);
        assert!(matches!(
            outcome(&listed(Kind::CountMismatch, Some(3), 2), &same, true),
            Outcome::Update {
                stored: 3,
                actual: 2,
                why: "too high: storage leak"
            }
        ));
        // The same numbers, but the count moved during the read.
        assert!(matches!(
            outcome(&listed(Kind::CountMismatch, Some(3), 2), &same, false),
            Outcome::Changed(_)
        ));
        // Another reference since: still wrong, not by the same amount.
        let moved = read(Some(3), 1);
        let Outcome::Changed(text) =
            outcome(&listed(Kind::CountMismatch, Some(3), 2), &moved, true)
        else {
            panic!("a change")
        };
        assert_eq!(
            text,
            "changed since the check (stored 3, actual 2): now stored 3, actual 1"
        );
        let fixed = read(Some(2), 2);
        assert!(matches!(
            outcome(&listed(Kind::CountMismatch, Some(3), 2), &fixed, true),
            Outcome::Resolved(_)
        ));
        let orphan = read(Some(4), 0);
        assert!(matches!(
            outcome(&listed(Kind::OrphanBlob, Some(4), 0), &orphan, true),
            Outcome::Update { stored: 4, actual: 0, why } if why.starts_with("orphan")
        ));
        // A missing blob stays missing whatever its references do; a row
        // that appeared is a change.
        let missing = read(None, 5);
        assert!(matches!(
            outcome(&listed(Kind::MissingBlob, None, 2), &missing, true),
            Outcome::Missing(_)
        ));
        let restored = read(Some(1), 2);
        assert!(matches!(
            outcome(&listed(Kind::MissingBlob, None, 2), &restored, true),
            Outcome::Changed(_)
        ));
        // A zero count that is too low becomes the actual count.
        let zero = read(Some(0), 1);
        assert!(matches!(
            outcome(&listed(Kind::CountMismatch, Some(0), 1), &zero, true),
            Outcome::Update { stored: 0, actual: 1, why } if why.starts_with("too low, stored 0")
        ));
    }

    #[test]
    fn json_errors_name_the_column_only() {
        let e = serde_json::from_str::<Line>("{\"kind\": \"count_mismatch\", \"blob_id\": -1}")
            .unwrap_err();
        let reason = json_reason(&e);
        assert!(!reason.contains("at line"), "{reason}");
        assert!(reason.starts_with("column "), "{reason}");
    }
}
