//! Reporting: findings as a readable table or as JSON lines, and the summary
//! of a run. Findings are written as they arrive, so a long run shows its
//! first findings early and memory does not grow with their number.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::finding::{AffectedRow, Direction, Finding, Kind, Severity};
use crate::plan::IdRange;

/// How findings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people, then a summary.
    Text,
    /// One JSON object per finding per line; the summary goes to stderr.
    Json,
}

/// Totals of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The ids checked; `None` when a partition turned out empty.
    pub range: Option<IdRange>,
    /// `K/N` when the run checked one partition.
    pub partition: Option<String>,
    pub blob_table: String,
    pub blob_rows: u64,
    /// Per reference column: label, references counted, NULL or negative
    /// values seen (not references).
    pub columns: Vec<ColumnSummary>,
    pub servers: Vec<String>,
    pub findings: FindingCounts,
    /// Re-reads each candidate needed to agree with (0: unconfirmed).
    pub confirmations: u32,
    /// Candidates that settled to consistent: changes that were in flight.
    pub transient: u64,
    /// Busy blobs re-read although the scan saw them consistent, found
    /// consistent.
    pub watched: u64,
    /// Candidates that kept changing through every read allowed.
    pub unsettled: Vec<u64>,
    /// With `--method sketch`: how this process checked its chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sketch: Option<SketchCounts>,
    /// Why the run stopped before its end (a signal's name): what it
    /// reports is what it checked so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// How the run began, when it keeps a checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
    /// Time spent paused by the throttle.
    pub throttled_seconds: f64,
    pub seconds: f64,
}

/// How a run that keeps a checkpoint began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// From the start of its range, without `--resume`.
    New,
    /// `--resume`, and the checkpoint described an unfinished run: it was
    /// continued.
    Resumed,
    /// `--resume`, but the checkpoint held a finished run: a resume only
    /// ever continues an unfinished run, so this one started anew.
    NewAfterFinished,
    /// `--resume`, but there was no checkpoint yet.
    NewWithoutCheckpoint,
}

impl Start {
    pub fn describe(self) -> &'static str {
        match self {
            Start::New => "new (any earlier checkpoint started over)",
            Start::Resumed => "resumed: continued the unfinished run of the checkpoint",
            Start::NewAfterFinished => "new: the checkpoint held a finished run",
            Start::NewWithoutCheckpoint => "new: no checkpoint yet",
        }
    }
}

/// Chunk outcomes of a `--method sketch` run by how they were checked
/// (`scan::Checked`); a resumed run counts only what it checked itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SketchCounts {
    /// Chunks the sums showed consistent.
    pub clean: u64,
    /// Chunks whose sums located every inconsistent id (halving the chunk
    /// where needed).
    pub located: u64,
    /// Chunks with pieces the sums did not settle, read row by row.
    pub partly_rows: u64,
    /// Chunks read row by row: a sum was too large to trust, or the id
    /// space was too sparse to sketch.
    pub exact: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ColumnSummary {
    pub label: String,
    pub references: u64,
    /// Rows whose value is NULL: not a reference.
    pub nulls: u64,
    /// Rows whose value is negative (signed columns): never a blob id.
    pub negative: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FindingCounts {
    pub total: u64,
    pub count_mismatch_too_low: u64,
    pub count_mismatch_too_low_stored_zero: u64,
    pub count_mismatch_too_high: u64,
    pub missing_blob: u64,
    pub orphan_blob: u64,
    pub critical: u64,
    pub error: u64,
    pub warning: u64,
}

impl FindingCounts {
    pub fn add(&mut self, finding: &Finding) {
        self.total += 1;
        match (finding.kind, finding.direction()) {
            (Kind::CountMismatch, Some(Direction::TooLow)) => {
                self.count_mismatch_too_low += 1;
                if finding.stored == Some(0) {
                    self.count_mismatch_too_low_stored_zero += 1;
                }
            }
            (Kind::CountMismatch, _) => self.count_mismatch_too_high += 1,
            (Kind::MissingBlob, _) => self.missing_blob += 1,
            (Kind::OrphanBlob, _) => self.orphan_blob += 1,
        }
        match finding.severity() {
            Severity::Critical => self.critical += 1,
            Severity::Error => self.error += 1,
            Severity::Warning => self.warning += 1,
        }
    }
}

#[derive(Serialize)]
struct JsonAffectedRow<'a> {
    column: &'a str,
    table: &'a str,
    key: KeyMap<'a>,
}

struct KeyMap<'a>(&'a [(String, String)]);

impl Serialize for KeyMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            // Integer keys stay numbers, exact at any size.
            match value.parse::<u64>() {
                Ok(n) => map.serialize_entry(name, &n)?,
                Err(_) => map.serialize_entry(name, value)?,
            }
        }
        map.end()
    }
}

/// A finding as one JSON line.
#[derive(Serialize)]
pub struct JsonFinding<'a> {
    pub kind: Kind,
    pub blob_id: u64,
    pub stored: Option<u64>,
    pub actual: u64,
    /// `stored − actual`; a missing row counts as 0.
    pub difference: i128,
    pub direction: Option<Direction>,
    pub severity: Severity,
    pub references: ReferenceMap<'a>,
    /// For missing blobs and counts too low: rows that reference the blob,
    /// up to the limit per column.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    affected_rows: Vec<JsonAffectedRow<'a>>,
}

/// The nonzero per-column counts, as a JSON object in column order.
pub struct ReferenceMap<'a> {
    pub counts: &'a [(usize, u64)],
    pub labels: &'a [String],
}

impl Serialize for ReferenceMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.counts.len()))?;
        for &(column, count) in self.counts {
            map.serialize_entry(&self.labels[column], &count)?;
        }
        map.end()
    }
}

impl<'a> JsonFinding<'a> {
    pub fn new(
        finding: &'a Finding,
        labels: &'a [String],
        affected: &'a [AffectedRow],
    ) -> JsonFinding<'a> {
        JsonFinding {
            kind: finding.kind,
            blob_id: finding.blob_id,
            stored: finding.stored,
            actual: finding.actual,
            difference: finding.difference(),
            direction: finding.direction(),
            severity: finding.severity(),
            references: ReferenceMap {
                counts: &finding.references,
                labels,
            },
            affected_rows: affected
                .iter()
                .map(|row| JsonAffectedRow {
                    column: &labels[row.column],
                    table: &row.table,
                    key: KeyMap(&row.key),
                })
                .collect(),
        }
    }
}

/// Where a finding of `watch` came from: the changes that touched the blob
/// before it was found (the last few, oldest first), and when.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    /// When the latest of the changes was committed (UTC, RFC 3339), if
    /// any is known: ids left waiting by a previous run, and those a range
    /// scan found, have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    pub detected_at: String,
    /// Seconds from the latest change's commit to the finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_seconds: Option<f64>,
    /// The changes, oldest first. One operation of the application writes
    /// on several servers, so the write that broke the count is one of
    /// them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeNote>,
}

/// One change: the server, its log coordinates (`file:position`, the end of
/// its row event), its GTID, its commit time (the event's timestamp, in
/// seconds), and the statement's text where the server logs it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeNote {
    pub server: String,
    pub binlog: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    pub committed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
}

#[derive(Serialize)]
struct JsonWatchFinding<'a> {
    #[serde(flatten)]
    finding: JsonFinding<'a>,
    #[serde(flatten)]
    origin: &'a Origin,
}

/// The UTC time of a Unix timestamp, RFC 3339 with seconds
/// (`2026-12-02T01:02:03Z`), or with milliseconds when `millis`.
pub fn utc_text(unix: f64, millis: bool) -> String {
    let whole = unix.floor() as i64;
    let (days, secs) = (whole.div_euclid(86_400), whole.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    if millis {
        let ms = ((unix - unix.floor()) * 1_000.0).floor() as i64;
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Writes findings as they come and the summary at the end.
pub struct Reporter {
    format: Format,
    out: Box<dyn Write + Send>,
    labels: Vec<String>,
    counts: FindingCounts,
    wrote_header: bool,
}

impl Reporter {
    pub fn new(format: Format, out: Box<dyn Write + Send>, labels: Vec<String>) -> Reporter {
        Reporter {
            format,
            out,
            labels,
            counts: FindingCounts::default(),
            wrote_header: false,
        }
    }

    /// The column labels, when the columns are only known once the check
    /// has started (shard discovery).
    pub fn set_labels(&mut self, labels: Vec<String>) {
        self.labels = labels;
    }

    pub fn counts(&self) -> &FindingCounts {
        &self.counts
    }

    /// Pushes what was written so far out to the file or terminal.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Writes one finding with the rows it affects (may be empty).
    pub fn finding(&mut self, finding: &Finding, affected: &[AffectedRow]) -> std::io::Result<()> {
        self.counts.add(finding);
        match self.format {
            Format::Json => {
                serde_json::to_writer(
                    &mut self.out,
                    &JsonFinding::new(finding, &self.labels, affected),
                )?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                if !self.wrote_header {
                    self.wrote_header = true;
                    writeln!(
                        self.out,
                        "{:<15} {:<9} {:>20} {:>8} {:>8}  DETAIL",
                        "KIND", "SEVERITY", "BLOB_ID", "STORED", "ACTUAL"
                    )?;
                }
                let stored = finding
                    .stored
                    .map_or_else(|| "-".to_owned(), |s| s.to_string());
                writeln!(
                    self.out,
                    "{:<15} {:<9} {:>20} {:>8} {:>8}  {}",
                    finding.kind.as_str(),
                    finding.severity().as_str(),
                    finding.blob_id,
                    stored,
                    finding.actual,
                    detail(finding, &self.labels)
                )?;
                if !affected.is_empty() {
                    let rows: Vec<String> = affected.iter().map(AffectedRow::display).collect();
                    let listed = affected.len() as u64;
                    let more = finding.actual.saturating_sub(listed);
                    writeln!(
                        self.out,
                        "{:>66}affected: {}{}",
                        "",
                        rows.join("; "),
                        if more > 0 {
                            format!("; and {more} more")
                        } else {
                            String::new()
                        }
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Writes one finding of `watch` with where it came from, and flushes
    /// it out at once.
    pub fn watch_finding(
        &mut self,
        finding: &Finding,
        affected: &[AffectedRow],
        origin: &Origin,
    ) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                self.counts.add(finding);
                let line = JsonWatchFinding {
                    finding: JsonFinding::new(finding, &self.labels, affected),
                    origin,
                };
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")?;
            }
            Format::Text => {
                self.finding(finding, affected)?;
                let indent = format!("{:>66}", "");
                let mut lines = Vec::new();
                match &origin.latency_seconds {
                    Some(latency) => lines.push(format!(
                        "{indent}found {latency:.1} s after the change{}:",
                        if origin.changes.len() > 1 {
                            "s that touched it last"
                        } else {
                            " that touched it last"
                        }
                    )),
                    None => lines.push(format!(
                        "{indent}found {}; no change recorded (left waiting by an earlier run, or found by a range scan)",
                        origin.detected_at
                    )),
                }
                for change in &origin.changes {
                    let mut line = format!(
                        "{indent}  {} on {} at {}",
                        change.committed_at, change.server, change.binlog
                    );
                    if let Some(gtid) = &change.gtid {
                        line.push_str(&format!(" (GTID {gtid})"));
                    }
                    if let Some(statement) = &change.statement {
                        line.push_str(&format!(": {}", crate::error::one_line(statement)));
                    }
                    lines.push(line);
                }
                let line = lines.join("\n");
                writeln!(self.out, "{line}")?;
            }
        }
        self.out.flush()
    }

    /// Writes the summary: after the findings in text mode, to stderr in
    /// JSON mode (so the output stays one finding per line).
    pub fn finish(mut self, summary: &Summary) -> std::io::Result<()> {
        let text = summary_text(summary);
        match self.format {
            Format::Text => {
                if self.wrote_header {
                    writeln!(self.out)?;
                }
                self.out.write_all(text.as_bytes())?;
            }
            Format::Json => eprint!("{text}"),
        }
        self.out.flush()
    }
}

fn detail(finding: &Finding, labels: &[String]) -> String {
    let what = match (finding.kind, finding.direction()) {
        (Kind::CountMismatch, Some(Direction::TooLow)) if finding.stored == Some(0) => {
            "too low, stored 0: will be deleted while referenced"
        }
        (Kind::CountMismatch, Some(Direction::TooLow)) => "too low: premature deletion",
        (Kind::CountMismatch, _) => "too high: storage leak",
        (Kind::MissingBlob, _) => "referenced but no blob row",
        (Kind::OrphanBlob, _) => "no references: storage leak",
    };
    if finding.references.is_empty() {
        return what.to_owned();
    }
    let columns: Vec<String> = finding
        .references
        .iter()
        .map(|&(column, count)| format!("{}={count}", labels[column]))
        .collect();
    format!("{what}; {}", columns.join(", "))
}

/// Groups digits in threes, for numbers people have to read at a glance.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The summary of a run as people read it: one line per part, then the
/// result.
pub fn summary_text(summary: &Summary) -> String {
    let mut s = String::new();
    // Writing to a String never fails.
    let _ = write_summary(&mut s, summary);
    s
}

fn write_summary(s: &mut String, summary: &Summary) -> fmt::Result {
    writeln!(s, "Summary")?;
    write_scope(s, summary)?;
    write_columns(s, &summary.columns)?;
    write_findings(s, &summary.findings)?;
    write_checking(s, summary)?;
    write_run(s, summary)?;
    write_result(s, summary)
}

/// What was checked: the id range (and partition), the servers, the blob
/// table.
fn write_scope(s: &mut String, summary: &Summary) -> fmt::Result {
    match (&summary.partition, summary.range) {
        (Some(partition), Some(range)) => {
            writeln!(s, "  id range     {range} (partition {partition})")?;
        }
        (Some(partition), None) => {
            writeln!(s, "  id range     none: partition {partition} is empty")?;
        }
        (None, Some(range)) => {
            writeln!(s, "  id range     {range}")?;
        }
        (None, None) => {}
    }
    writeln!(s, "  servers      {}", summary.servers.join(", "))?;
    writeln!(
        s,
        "  blob rows    {} in {}",
        thousands(summary.blob_rows),
        summary.blob_table
    )
}

/// The references counted, in all and per column, with the NULL and
/// negative values each column held.
fn write_columns(s: &mut String, columns: &[ColumnSummary]) -> fmt::Result {
    let references: u64 = columns.iter().map(|c| c.references).sum();
    writeln!(
        s,
        "  references   {} in {} columns",
        thousands(references),
        columns.len()
    )?;
    let width = columns.iter().map(|c| c.label.len()).max().unwrap_or(0);
    for column in columns {
        write!(
            s,
            "    {:<width$}  {:>13}",
            column.label,
            thousands(column.references)
        )?;
        match (column.nulls, column.negative) {
            (0, 0) => {}
            (nulls, 0) => {
                write!(s, "  (+{} NULL, not references)", thousands(nulls))?;
            }
            (0, negative) => {
                write!(s, "  (+{} negative, not references)", thousands(negative))?;
            }
            (nulls, negative) => {
                write!(
                    s,
                    "  (+{} NULL and {} negative, not references)",
                    thousands(nulls),
                    thousands(negative)
                )?;
            }
        }
        writeln!(s)?;
    }
    Ok(())
}

/// The findings by kind and by severity.
fn write_findings(s: &mut String, f: &FindingCounts) -> fmt::Result {
    writeln!(
        s,
        "  findings     {}: count_mismatch too low {} (stored 0: {}), too high {}; missing_blob {}; orphan_blob {}",
        thousands(f.total),
        thousands(f.count_mismatch_too_low),
        thousands(f.count_mismatch_too_low_stored_zero),
        thousands(f.count_mismatch_too_high),
        thousands(f.missing_blob),
        thousands(f.orphan_blob),
    )?;
    writeln!(
        s,
        "  severity     critical {}, error {}, warning {}",
        thousands(f.critical),
        thousands(f.error),
        thousands(f.warning)
    )
}

/// How the findings were checked: the confirmation, the sketch's chunks,
/// and the candidates that never settled.
fn write_checking(s: &mut String, summary: &Summary) -> fmt::Result {
    if summary.confirmations > 0 {
        writeln!(
            s,
            "  confirmed    each finding read again by id, {} times in agreement, a settle delay apart; {} candidates were changes in flight (transient), {} never settled; {} busy blobs re-read and consistent",
            crate::confirm::agreeing(summary.confirmations),
            thousands(summary.transient),
            thousands(summary.unsettled.len() as u64),
            thousands(summary.watched)
        )?;
    } else {
        writeln!(s, "  confirmed    no: single pass (--confirmations 0)")?;
    }
    if let Some(sketch) = &summary.sketch {
        writeln!(
            s,
            "  method       sketch: {} chunks consistent by their sums, {} with their inconsistencies located by them, {} read in part row by row, {} read row by row",
            thousands(sketch.clean),
            thousands(sketch.located),
            thousands(sketch.partly_rows),
            thousands(sketch.exact)
        )?;
    }
    if !summary.unsettled.is_empty() {
        let shown: Vec<String> = summary
            .unsettled
            .iter()
            .take(20)
            .map(u64::to_string)
            .collect();
        writeln!(
            s,
            "  unsettled    {}{} (kept changing; not reported; check again later)",
            shown.join(", "),
            if summary.unsettled.len() > 20 {
                ", ..."
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// How the run began and how long it took.
fn write_run(s: &mut String, summary: &Summary) -> fmt::Result {
    if let Some(start) = summary.start {
        writeln!(s, "  run          {}", start.describe())?;
    }
    if summary.throttled_seconds >= 0.1 {
        writeln!(
            s,
            "  throttled    {}",
            format_duration(Duration::from_secs_f64(summary.throttled_seconds))
        )?;
    }
    writeln!(
        s,
        "  time         {}",
        format_duration(Duration::from_secs_f64(summary.seconds))
    )
}

/// The last line, after why the run stopped early if it did.
fn write_result(s: &mut String, summary: &Summary) -> fmt::Result {
    let f = &summary.findings;
    if let Some(reason) = &summary.interrupted {
        writeln!(
            s,
            "  interrupted  by {reason}: stopped before the end; {}",
            if summary.start.is_some() {
                "--resume with the checkpoint continues"
            } else {
                "without --checkpoint, run it again from the start"
            }
        )?;
        writeln!(
            s,
            "Result: incomplete (interrupted): {} inconsistencies so far ({} critical).",
            thousands(f.total),
            thousands(f.critical)
        )
    } else if f.total == 0 {
        writeln!(s, "Result: consistent, no findings.")
    } else {
        writeln!(
            s,
            "Result: {} inconsistencies ({} critical).",
            thousands(f.total),
            thousands(f.critical)
        )
    }
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.2} s")
    } else {
        let total = d.as_secs();
        format!("{}h{:02}m{:02}s", total / 3600, total / 60 % 60, total % 60)
    }
}

#[cfg(test)]
mod utc_tests {
    use super::utc_text;

    #[test]
    fn utc_text_is_rfc3339() {
        assert_eq!(utc_text(0.0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(951_782_400.0, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc_text(1_796_173_323.25, true), "2026-12-02T01:02:03.250Z");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["g:a.b.c".into(), "s:d.e.f".into()]
    }

    #[test]
    fn json_line_is_exact_above_two_to_the_63() {
        let finding = Finding {
            kind: Kind::MissingBlob,
            blob_id: u64::MAX,
            stored: None,
            actual: 3,
            references: vec![(1, 3)],
        };
        let labels = labels();
        let line = serde_json::to_string(&JsonFinding::new(&finding, &labels, &[])).unwrap();
        assert_eq!(
            line,
            r#"{"kind":"missing_blob","blob_id":18446744073709551615,"stored":null,"actual":3,"difference":-3,"direction":null,"severity":"critical","references":{"s:d.e.f":3}}"#
        );
    }

    #[test]
    fn text_row_and_summary() {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut reporter = Reporter::new(Format::Text, Box::new(Shared(buffer.clone())), labels());
        reporter
            .finding(
                &Finding {
                    kind: Kind::CountMismatch,
                    blob_id: 42,
                    stored: Some(0),
                    actual: 2,
                    references: vec![(0, 1), (1, 1)],
                },
                &[AffectedRow {
                    column: 1,
                    table: "d.e".into(),
                    key: vec![("MessageID".into(), "7".into())],
                }],
            )
            .unwrap();
        assert_eq!(reporter.counts().critical, 1);
        let summary = Summary {
            findings: reporter.counts().clone(),
            ..Summary::default()
        };
        reporter.finish(&summary).unwrap();
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("KIND "), "{text}");
        assert!(
            text.contains("count_mismatch  critical                    42        0        2  too low, stored 0"),
            "{text}"
        );
        assert!(text.contains("g:a.b.c=1, s:d.e.f=1"), "{text}");
        assert!(
            text.contains("affected: d.e MessageID=7; and 1 more"),
            "{text}"
        );
        assert!(
            text.contains("Result: 1 inconsistencies (1 critical)."),
            "{text}"
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }
}
