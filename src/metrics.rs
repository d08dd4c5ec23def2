//! Metrics of a run in the Prometheus text exposition format, for
//! node_exporter's textfile collector (`--collector.textfile.directory`):
//! findings by kind and severity, candidates that were changes in flight,
//! what was scanned, how long it took, and when the check last ran and last
//! succeeded. `deploy/prometheus/alerts.yml` holds the alerting rules on them;
//! `crate::pushgateway` sends the same text to a Pushgateway.
//!
//! The exposition is the official `prometheus-client` crate's: [`registry`]
//! builds a [`Registry`] whose constant labels (for example
//! `partition="2/8"`) go on every series, with a [`LastRun`] collector in
//! it; [`LastRun::record`] replaces what the collector reports and
//! [`encode`] writes the registry in the Prometheus text format 0.0.4, the
//! one the textfile collector reads (not OpenMetrics: no `# EOF`, no
//! `# UNIT`). A long-running process keeps the registry and the
//! [`LastRun`], records each run, and encodes on every scrape.
//!
//! Every series is a gauge named `blobcheck_*`: each holds what the last
//! run saw, which can be less than the run before (a counter would get a
//! `_total` suffix and promise never to fall). They come from a collector
//! rather than from `Gauge` and `Family` handles for two reasons: series the
//! last run cannot give are absent, not zero (no findings from a run that
//! did not check; no last success before the first one; no per-column series
//! without columns), and the order of the series is fixed (a `Family` is a
//! hash map). The crate writes the constant labels before the series' own;
//! the order of labels carries no meaning.
//!
//! The file is replaced atomically ([`crate::paths::write_atomically`]:
//! temporary file in the same directory, fsync, rename, directory synced),
//! so the collector never reads half a file. A failed run writes a file too,
//! with `blobcheck_last_run_success 0` and the previous file's
//! `blobcheck_last_success_timestamp_seconds` carried over, so that alerts
//! see both the failure and how long the data has been stale.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result, one_line};
use crate::report::{ColumnSummary, FindingCounts, Summary};

/// The series whose value carries over from the previous file on failure.
const LAST_SUCCESS: &str = "blobcheck_last_success_timestamp_seconds";

/// Label names the series use themselves; a constant label may not reuse them.
const SERIES_LABELS: [&str; 5] = ["kind", "direction", "severity", "table", "column"];

/// What a finished (or failed) run reports.
#[derive(Debug, Clone, Copy)]
pub struct RunMetrics<'a> {
    /// The run's totals; `None` when the run failed before it had any. When
    /// given, its series are written whatever `success` says (a run that
    /// checked everything and then failed, say, to write its output still
    /// reports what it found); pass `None` for a partial run whose counts
    /// would mislead.
    pub summary: Option<&'a Summary>,
    /// The check completed.
    pub success: bool,
    /// When the run ended.
    pub finished_at: SystemTime,
    /// The last successful run before this one, for a failed run (ignored on
    /// success: this run is then the last success). [`write`] also reads it
    /// from the file it replaces.
    pub last_success: Option<SystemTime>,
    /// Constant labels added to every series, e.g. `("partition", "2/8")`.
    /// Names must be valid Prometheus label names, distinct, not reserved
    /// (`__*`) and not one of the series' own (`kind`, `direction`,
    /// `severity`, `table`, `column`): see [`validate_labels`].
    pub labels: &'a [(String, String)],
}

/// A registry with `labels` on every series and a [`LastRun`] collector,
/// which reports nothing until a run is recorded. Constant labels that
/// [`validate_labels`] rejects are left out, so the exposition is always
/// valid.
pub fn registry(labels: &[(String, String)]) -> (Registry, LastRun) {
    let constant = usable_labels(labels)
        .into_iter()
        .map(|(name, value)| (Cow::Owned(name.clone()), Cow::Owned(value.clone())));
    let mut registry = Registry::with_labels(constant);
    let last_run = LastRun::default();
    registry.register_collector(Box::new(last_run.clone()));
    (registry, last_run)
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // A String takes every write, and the collectors of this module never
    // fail, so there is no error to report.
    prometheus_text::encode(&mut text, registry)
        .expect("encoding the metrics into a String cannot fail");
    text
}

/// Renders the metrics of a finished run (success = the check completed;
/// failed runs still write a file so that alerting sees the failure).
///
/// Constant labels that [`validate_labels`] rejects are left out, so the
/// output is always valid; [`write`] refuses them instead.
pub fn render(run: &RunMetrics) -> String {
    let (registry, last_run) = registry(run.labels);
    last_run.record(run);
    encode(&registry)
}

/// Writes the file atomically (temp file in the same directory, fsync,
/// rename), carrying over `blobcheck_last_success_timestamp_seconds` from
/// the existing file when this run failed.
///
/// The temporary file is `.NAME.PID.N.tmp`, so the textfile collector (which
/// reads `*.prom`) never sees it, and concurrent writers do not collide. The
/// file is created with the usual permissions (0666 less the umask), so that
/// node_exporter, usually another user, can read it.
pub fn write(path: &Path, run: RunMetrics<'_>) -> Result<()> {
    validate_labels(run.labels).map_err(|reason| {
        Error::Usage(format!(
            "metrics file {}: {}",
            path.display(),
            one_line(reason)
        ))
    })?;
    let mut run = run;
    if !run.success {
        run.last_success = run.last_success.max(previous_last_success(path));
    }
    let text = render(&run);

    crate::paths::write_atomically(path, text.as_bytes()).map_err(|e| Error::Output {
        path: format!("metrics file {}", path.display()),
        reason: one_line(e),
    })
}

/// The series of the last run recorded, as a `prometheus-client`
/// collector. Clones share one state: the registry holds one, the process
/// that records runs another.
#[derive(Debug, Clone, Default)]
pub struct LastRun(Arc<Mutex<Option<Snapshot>>>);

impl LastRun {
    /// Replaces what the collector reports with `run` (its constant labels
    /// are the registry's, not taken from `run`).
    pub fn record(&self, run: &RunMetrics<'_>) {
        let snapshot = Snapshot::of(run);
        // A panic elsewhere while the lock was held cannot leave a
        // half-written snapshot: it is replaced whole.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }
}

impl Collector for LastRun {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match state.as_ref() {
            Some(snapshot) => snapshot.encode(&mut encoder),
            None => Ok(()),
        }
    }
}

/// What one run reports, owned, so that the collector can outlive the run.
#[derive(Debug)]
struct Snapshot {
    finished_at: f64,
    success: bool,
    last_success: Option<f64>,
    totals: Option<Totals>,
}

/// The part of a run's summary the series show.
#[derive(Debug)]
struct Totals {
    seconds: f64,
    findings: FindingCounts,
    transient: u64,
    unsettled: u64,
    blob_table: String,
    blob_rows: u64,
    /// One entry per column label.
    columns: Vec<ColumnSummary>,
}

impl Snapshot {
    fn of(run: &RunMetrics<'_>) -> Snapshot {
        let last_success = if run.success {
            Some(run.finished_at)
        } else {
            run.last_success
        };
        Snapshot {
            finished_at: seconds_since_epoch(run.finished_at),
            success: run.success,
            last_success: last_success.map(seconds_since_epoch),
            totals: run.summary.map(|summary| Totals {
                seconds: summary.seconds,
                findings: summary.findings.clone(),
                transient: summary.transient,
                unsettled: summary.unsettled.len() as u64,
                blob_table: summary.blob_table.clone(),
                blob_rows: summary.blob_rows,
                columns: columns_by_label(&summary.columns),
            }),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            encoder,
            "blobcheck_last_run_timestamp_seconds",
            "When the last run of blobcheck ended, successful or not (seconds since the Unix epoch).",
            self.finished_at,
        )?;
        gauge(
            encoder,
            "blobcheck_last_run_success",
            "1 if the last run of blobcheck completed the check, 0 if it failed.",
            u64::from(self.success),
        )?;
        if let Some(last_success) = self.last_success {
            gauge(
                encoder,
                LAST_SUCCESS,
                "When the last successful run of blobcheck ended (seconds since the Unix epoch).",
                last_success,
            )?;
        }
        let Some(totals) = &self.totals else {
            return Ok(());
        };
        totals.encode(encoder)
    }
}

impl Totals {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let f = &self.findings;
        gauge(
            encoder,
            "blobcheck_duration_seconds",
            "How long the last run with a summary took, in seconds.",
            self.seconds,
        )?;
        gauges(
            encoder,
            "blobcheck_findings",
            "Inconsistencies found by the last run, by kind (and direction for count_mismatch).",
            [
                (
                    &[("kind", "count_mismatch"), ("direction", "too_low")][..],
                    f.count_mismatch_too_low,
                ),
                (
                    &[("kind", "count_mismatch"), ("direction", "too_high")][..],
                    f.count_mismatch_too_high,
                ),
                (&[("kind", "missing_blob")][..], f.missing_blob),
                (&[("kind", "orphan_blob")][..], f.orphan_blob),
            ],
        )?;
        gauges(
            encoder,
            "blobcheck_findings_by_severity",
            "Inconsistencies found by the last run, by severity.",
            [
                ([("severity", "critical")], f.critical),
                ([("severity", "error")], f.error),
                ([("severity", "warning")], f.warning),
            ],
        )?;
        gauge(
            encoder,
            "blobcheck_findings_stored_zero",
            "count_mismatch findings too low with a stored count of 0: referenced blobs the cleanup will delete.",
            f.count_mismatch_too_low_stored_zero,
        )?;
        gauge(
            encoder,
            "blobcheck_transient_candidates",
            "Candidates of the last run that settled to consistent when read again: changes in flight, not findings.",
            self.transient,
        )?;
        gauge(
            encoder,
            "blobcheck_unsettled_candidates",
            "Candidates of the last run that kept changing through every read allowed: neither reported nor cleared.",
            self.unsettled,
        )?;
        gauges(
            encoder,
            "blobcheck_blob_rows_scanned",
            "Rows of the blob table read by the last run.",
            [([("table", self.blob_table.as_str())], self.blob_rows)],
        )?;
        // No columns: the per-column families are left out, not left empty.
        if self.columns.is_empty() {
            return Ok(());
        }
        let per_column = |value: fn(&ColumnSummary) -> u64| {
            self.columns
                .iter()
                .map(move |column| ([("column", column.label.as_str())], value(column)))
        };
        gauges(
            encoder,
            "blobcheck_references_scanned",
            "References counted by the last run, per reference column.",
            per_column(|column| column.references),
        )?;
        gauges(
            encoder,
            "blobcheck_null_references",
            "NULL values seen in a reference column by the last run (not references).",
            per_column(|column| column.nulls),
        )?;
        gauges(
            encoder,
            "blobcheck_negative_references",
            "Negative values seen in a signed reference column by the last run (not references).",
            per_column(|column| column.negative),
        )
    }
}

/// How far a check is, as pushed while it runs ([`render_progress`]).
#[derive(Debug, Clone, Copy)]
pub struct RunProgress {
    /// The check is still running (0 in the push that ends it).
    pub running: bool,
    pub started_at: SystemTime,
    /// The share of the id span scanned, 0 to 1.
    pub fraction: f64,
    pub rows: u64,
}

impl Collector for RunProgress {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauge(
            &mut encoder,
            "blobcheck_check_running",
            "1 while a check runs, 0 once it has ended (pushed to a Pushgateway).",
            u64::from(self.running),
        )?;
        gauge(
            &mut encoder,
            "blobcheck_check_started_timestamp_seconds",
            "When the running or last check started (seconds since the Unix epoch).",
            seconds_since_epoch(self.started_at),
        )?;
        gauge(
            &mut encoder,
            "blobcheck_check_progress_ratio",
            "Share of the id span the running or last check has scanned, 0 to 1.",
            self.fraction.clamp(0.0, 1.0),
        )?;
        gauge(
            &mut encoder,
            "blobcheck_check_rows_read",
            "Rows the running or last check has read so far.",
            self.rows,
        )
    }
}

/// The progress series of a check, in the text format: pushed while it
/// runs and, with `running` 0, with the run's metrics at its end.
pub fn render_progress(progress: RunProgress) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(progress));
    encode(&registry)
}

/// One gauge without labels of its own.
fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// A family of gauges, one per label set, in the order given.
fn gauges<S: EncodeLabelSet, N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, N)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Labels are unique in a valid configuration; should two columns share
/// one, they are added up rather than written as a duplicate series.
fn columns_by_label(columns: &[ColumnSummary]) -> Vec<ColumnSummary> {
    let mut merged: Vec<ColumnSummary> = Vec::with_capacity(columns.len());
    for column in columns {
        match merged.iter_mut().find(|seen| seen.label == column.label) {
            Some(seen) => {
                seen.references += column.references;
                seen.nulls += column.nulls;
                seen.negative += column.negative;
            }
            None => merged.push(column.clone()),
        }
    }
    merged
}

/// Seconds since the Unix epoch, rounded to the millisecond, so that a
/// value read back from a file and written again does not drift. Written
/// as the shortest decimal that reads back as the same `f64`, which for a
/// whole number of milliseconds has at most three decimals.
fn seconds_since_epoch(time: SystemTime) -> f64 {
    let (sign, since) = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => (1.0, since),
        Err(before) => (-1.0, before.duration()),
    };
    let millis = (since.as_nanos() + 500_000) / 1_000_000;
    sign * millis as f64 / 1000.0
}

/// Reads the previous file's last-success timestamp, if any (tolerant of a
/// missing or malformed file: `None` then).
pub fn previous_last_success(path: &Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix(LAST_SUCCESS)?;
            let rest = match rest.strip_prefix('{') {
                Some(labels) => skip_labels(labels)?,
                None if rest.starts_with([' ', '\t']) => rest,
                None => return None,
            };
            let since = parse_seconds(rest.split_whitespace().next()?)?;
            SystemTime::UNIX_EPOCH.checked_add(since)
        })
        .max()
}

/// Parses a non-negative number of seconds: exactly when written as
/// `DIGITS[.DIGITS]` (as this module writes it; no float rounding), else as a
/// float (`1.7e9`). `None` for anything negative, infinite or not a number.
fn parse_seconds(text: &str) -> Option<Duration> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !whole.is_empty() && digits(whole) && digits(fraction) {
        let seconds: u64 = whole.parse().ok()?;
        let mut nanos = 0u32;
        for (i, digit) in fraction.bytes().take(9).enumerate() {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
        }
        return Some(Duration::new(seconds, nanos));
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(value).ok()
}

/// Checks constant labels: valid Prometheus label names
/// (`[a-zA-Z_][a-zA-Z0-9_]*`), not reserved (`__*`), not used by the series
/// themselves (`kind`, `direction`, `severity`, `table`, `column`), each
/// name once. Values may be any text.
pub fn validate_labels(labels: &[(String, String)]) -> std::result::Result<(), String> {
    for (i, (name, _)) in labels.iter().enumerate() {
        if !is_label_name(name) {
            return Err(format!(
                "`{name}` is not a label name (letters, digits and _, not starting with a digit)"
            ));
        }
        if name.starts_with("__") {
            return Err(format!(
                "label `{name}`: names starting with __ are reserved"
            ));
        }
        if SERIES_LABELS.contains(&name.as_str()) {
            return Err(format!(
                "label `{name}` is used by the series themselves; choose another name"
            ));
        }
        if labels[..i].iter().any(|(other, _)| other == name) {
            return Err(format!("label `{name}` is given twice"));
        }
    }
    Ok(())
}

/// Parses one `NAME=VALUE` constant label, as a command-line value parser.
pub fn parse_label(text: &str) -> std::result::Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    let label = (name.to_owned(), value.to_owned());
    validate_labels(std::slice::from_ref(&label))?;
    Ok(label)
}

fn usable_labels(labels: &[(String, String)]) -> Vec<&(String, String)> {
    let mut usable: Vec<&(String, String)> = Vec::with_capacity(labels.len());
    for label in labels {
        let fine = validate_labels(std::slice::from_ref(label)).is_ok()
            && !usable.iter().any(|(name, _)| *name == label.0);
        if fine {
            usable.push(label);
        }
    }
    usable
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Skips a label set after its `{`, honouring quoted values and escapes;
/// returns what follows the closing `}`.
fn skip_labels(text: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(&text[i + 1..]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ColumnSummary, FindingCounts};

    fn at(seconds: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(seconds * 1000 + millis)
    }

    fn summary() -> Summary {
        Summary {
            partition: Some("2/8".into()),
            blob_table: "ProtonMailGlobal.BlobStorage".into(),
            blob_rows: 1_000_000,
            columns: vec![
                ColumnSummary {
                    label: "global:ProtonMailGlobal.SentMessage.BlobStorageID".into(),
                    references: 700_000,
                    nulls: 12,
                    negative: 3,
                },
                ColumnSummary {
                    label: "body".into(),
                    references: 300_001,
                    nulls: 0,
                    negative: 0,
                },
            ],
            findings: FindingCounts {
                total: 477,
                count_mismatch_too_low: 120,
                count_mismatch_too_low_stored_zero: 40,
                count_mismatch_too_high: 200,
                missing_blob: 57,
                orphan_blob: 100,
                critical: 97,
                error: 80,
                warning: 300,
            },
            transient: 5,
            unsettled: vec![7, 9],
            seconds: 12.5,
            ..Summary::default()
        }
    }

    const SUCCESS: &str = r#"# HELP blobcheck_last_run_timestamp_seconds When the last run of blobcheck ended, successful or not (seconds since the Unix epoch).
# TYPE blobcheck_last_run_timestamp_seconds gauge
blobcheck_last_run_timestamp_seconds 1767225600.25
# HELP blobcheck_last_run_success 1 if the last run of blobcheck completed the check, 0 if it failed.
# TYPE blobcheck_last_run_success gauge
blobcheck_last_run_success 1
# HELP blobcheck_last_success_timestamp_seconds When the last successful run of blobcheck ended (seconds since the Unix epoch).
# TYPE blobcheck_last_success_timestamp_seconds gauge
blobcheck_last_success_timestamp_seconds 1767225600.25
# HELP blobcheck_duration_seconds How long the last run with a summary took, in seconds.
# TYPE blobcheck_duration_seconds gauge
blobcheck_duration_seconds 12.5
# HELP blobcheck_findings Inconsistencies found by the last run, by kind (and direction for count_mismatch).
# TYPE blobcheck_findings gauge
blobcheck_findings{kind="count_mismatch",direction="too_low"} 120
blobcheck_findings{kind="count_mismatch",direction="too_high"} 200
blobcheck_findings{kind="missing_blob"} 57
blobcheck_findings{kind="orphan_blob"} 100
# HELP blobcheck_findings_by_severity Inconsistencies found by the last run, by severity.
# TYPE blobcheck_findings_by_severity gauge
blobcheck_findings_by_severity{severity="critical"} 97
blobcheck_findings_by_severity{severity="error"} 80
blobcheck_findings_by_severity{severity="warning"} 300
# HELP blobcheck_findings_stored_zero count_mismatch findings too low with a stored count of 0: referenced blobs the cleanup will delete.
# TYPE blobcheck_findings_stored_zero gauge
blobcheck_findings_stored_zero 40
# HELP blobcheck_transient_candidates Candidates of the last run that settled to consistent when read again: changes in flight, not findings.
# TYPE blobcheck_transient_candidates gauge
blobcheck_transient_candidates 5
# HELP blobcheck_unsettled_candidates Candidates of the last run that kept changing through every read allowed: neither reported nor cleared.
# TYPE blobcheck_unsettled_candidates gauge
blobcheck_unsettled_candidates 2
# HELP blobcheck_blob_rows_scanned Rows of the blob table read by the last run.
# TYPE blobcheck_blob_rows_scanned gauge
blobcheck_blob_rows_scanned{table="ProtonMailGlobal.BlobStorage"} 1000000
# HELP blobcheck_references_scanned References counted by the last run, per reference column.
# TYPE blobcheck_references_scanned gauge
blobcheck_references_scanned{column="global:ProtonMailGlobal.SentMessage.BlobStorageID"} 700000
blobcheck_references_scanned{column="body"} 300001
# HELP blobcheck_null_references NULL values seen in a reference column by the last run (not references).
# TYPE blobcheck_null_references gauge
blobcheck_null_references{column="global:ProtonMailGlobal.SentMessage.BlobStorageID"} 12
blobcheck_null_references{column="body"} 0
# HELP blobcheck_negative_references Negative values seen in a signed reference column by the last run (not references).
# TYPE blobcheck_negative_references gauge
blobcheck_negative_references{column="global:ProtonMailGlobal.SentMessage.BlobStorageID"} 3
blobcheck_negative_references{column="body"} 0
"#;

    #[test]
    fn renders_a_summary_exactly() {
        let summary = summary();
        let text = render(&RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(1_767_225_600, 250),
            last_success: Some(at(1, 0)),
            labels: &[],
        });
        assert_eq!(text, SUCCESS);
    }

    #[test]
    fn zero_findings_are_still_written() {
        let summary = Summary::default();
        let text = render(&RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(10, 0),
            last_success: None,
            labels: &[],
        });
        for line in [
            "blobcheck_findings{kind=\"count_mismatch\",direction=\"too_low\"} 0",
            "blobcheck_findings{kind=\"count_mismatch\",direction=\"too_high\"} 0",
            "blobcheck_findings{kind=\"missing_blob\"} 0",
            "blobcheck_findings{kind=\"orphan_blob\"} 0",
            "blobcheck_findings_by_severity{severity=\"critical\"} 0",
            "blobcheck_findings_stored_zero 0",
            "blobcheck_unsettled_candidates 0",
            "blobcheck_last_success_timestamp_seconds 10.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // No columns: the per-column families are left out, not left empty.
        assert!(!text.contains("blobcheck_references_scanned"), "{text}");
    }

    #[test]
    fn constant_labels_go_on_every_series() {
        let summary = summary();
        let labels = [
            ("partition".to_owned(), "2/8".to_owned()),
            ("cluster".to_owned(), "eu".to_owned()),
        ];
        let text = render(&RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(100, 0),
            last_success: None,
            labels: &labels,
        });
        // The registry's constant labels come first, in the order given.
        assert!(text.lines().any(|l| l
            == r#"blobcheck_findings{partition="2/8",cluster="eu",kind="count_mismatch",direction="too_low"} 120"#));
        assert!(
            text.lines()
                .any(|l| l == r#"blobcheck_last_run_success{partition="2/8",cluster="eu"} 1"#)
        );
        let samples = text.lines().filter(|l| !l.starts_with('#'));
        for line in samples {
            assert!(line.contains(r#"{partition="2/8",cluster="eu""#), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut summary = summary();
        summary.blob_table = "db.\"blobs\"".into();
        summary.columns[0].label = "plain:a.b-c é".into();
        summary.columns[1].label = "back\\slash \"quoted\"\nnew line".into();
        let labels = [("site".to_owned(), "a\\b\"c\nd".to_owned())];
        let text = render(&RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(100, 0),
            last_success: None,
            labels: &labels,
        });
        assert!(text.lines().any(|l| l
            == r#"blobcheck_blob_rows_scanned{site="a\\b\"c\nd",table="db.\"blobs\""} 1000000"#));
        assert!(text.lines().any(|l| l
            == r#"blobcheck_references_scanned{site="a\\b\"c\nd",column="back\\slash \"quoted\"\nnew line"} 300001"#));
        // Only backslash, double quote and line feed are escaped.
        assert!(text.lines().any(|l| l
            == r#"blobcheck_references_scanned{site="a\\b\"c\nd",column="plain:a.b-c é"} 700000"#));
    }

    #[test]
    fn failed_run_without_summary_reports_only_the_run() {
        let text = render(&RunMetrics {
            summary: None,
            success: false,
            finished_at: at(200, 5),
            last_success: Some(at(100, 0)),
            labels: &[],
        });
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "blobcheck_last_run_timestamp_seconds 200.005",
                "blobcheck_last_run_success 0",
                "blobcheck_last_success_timestamp_seconds 100.0",
            ]
        );
        // Never succeeded: the series is left out.
        let text = render(&RunMetrics {
            summary: None,
            success: false,
            finished_at: at(200, 0),
            last_success: None,
            labels: &[],
        });
        assert!(!text.contains(LAST_SUCCESS), "{text}");
    }

    #[test]
    fn bad_constant_labels_are_refused_by_write_and_left_out_by_render() {
        for (name, why) in [
            ("kind", "used by the series"),
            ("1st", "not a label name"),
            ("a-b", "not a label name"),
            ("__name__", "reserved"),
            ("", "not a label name"),
        ] {
            let labels = [(name.to_owned(), "x".to_owned())];
            let error = validate_labels(&labels).unwrap_err();
            assert!(error.contains(why), "{name}: {error}");
        }
        let twice = [
            ("site".to_owned(), "a".to_owned()),
            ("site".to_owned(), "b".to_owned()),
        ];
        assert!(validate_labels(&twice).unwrap_err().contains("twice"));

        let labels = [
            ("site".to_owned(), "a".to_owned()),
            ("kind".to_owned(), "x".to_owned()),
            ("site".to_owned(), "b".to_owned()),
        ];
        let summary = summary();
        let run = RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(1, 0),
            last_success: None,
            labels: &labels,
        };
        let text = render(&run);
        assert!(text.contains(r#"{site="a",kind="missing_blob"}"#), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobcheck.prom");
        let error = write(&path, run).unwrap_err();
        assert!(matches!(error, Error::Usage(_)), "{error}");
        assert!(!path.exists());

        assert_eq!(
            parse_label("partition=2/8=x").unwrap(),
            ("partition".to_owned(), "2/8=x".to_owned())
        );
        assert!(parse_label("partition").is_err());
        assert!(parse_label("severity=x").is_err());
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_creates_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobcheck.prom");
        let summary = summary();
        let run = RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(1_767_225_600, 250),
            last_success: None,
            labels: &[],
        };
        write(&path, run).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SUCCESS);
        assert_eq!(files_in(dir.path()), ["blobcheck.prom"]);

        // Replacing it works the same way.
        write(
            &path,
            RunMetrics {
                success: false,
                ..run
            },
        )
        .unwrap();
        assert_eq!(files_in(dir.path()), ["blobcheck.prom"]);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("\nblobcheck_last_run_success 0\n")
        );

        // The file gets the permissions a plainly created file gets (0666
        // less the umask), so node_exporter, usually another user, can read
        // it wherever the umask lets others read.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let plain = dir.path().join("plain");
            std::fs::File::create(&plain).unwrap();
            let usual = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, usual, "{mode:o} against {usual:o}");
            if usual & 0o004 != 0 {
                assert_ne!(mode & 0o004, 0, "readable by others: {mode:o}");
            }
        }
    }

    #[test]
    fn write_errors_are_one_line_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("blobcheck.prom");
        let run = RunMetrics {
            summary: None,
            success: false,
            finished_at: at(1, 0),
            last_success: None,
            labels: &[],
        };
        let error = write(&path, run).unwrap_err();
        assert!(matches!(error, Error::Output { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("metrics file"), "{message}");
        assert!(message.contains("blobcheck.prom"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        // The target is a directory: the rename fails, the temporary goes.
        let path = dir.path().join("taken.prom");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(write(&path, run).is_err());
        assert_eq!(files_in(dir.path()), ["taken.prom"]);
    }

    #[test]
    fn a_failed_run_keeps_the_previous_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobcheck.prom");
        let labels = [("partition".to_owned(), "2/8".to_owned())];
        let summary = summary();
        let success = RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(1_767_225_600, 123),
            last_success: None,
            labels: &labels,
        };
        write(&path, success).unwrap();
        assert_eq!(previous_last_success(&path), Some(at(1_767_225_600, 123)));

        // Two failures in a row: the success time carries over unchanged.
        for (finished, written) in [
            (at(1_767_312_000, 0), "1767312000.0"),
            (at(1_767_398_400, 999), "1767398400.999"),
        ] {
            let failure = RunMetrics {
                summary: None,
                success: false,
                finished_at: finished,
                last_success: None,
                labels: &labels,
            };
            write(&path, failure).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(
                    "\nblobcheck_last_success_timestamp_seconds{partition=\"2/8\"} 1767225600.123\n"
                ),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "\nblobcheck_last_run_timestamp_seconds{{partition=\"2/8\"}} {written}\n"
                )),
                "{text}"
            );
            assert!(text.contains("\nblobcheck_last_run_success{partition=\"2/8\"} 0\n"));
            assert!(!text.contains("blobcheck_findings"), "{text}");
        }

        // A later time known to the caller wins over the file's.
        let failure = RunMetrics {
            summary: None,
            success: false,
            finished_at: at(1_767_500_000, 0),
            last_success: Some(at(1_767_400_000, 0)),
            labels: &labels,
        };
        write(&path, failure).unwrap();
        assert_eq!(previous_last_success(&path), Some(at(1_767_400_000, 0)));

        // A success replaces it.
        write(
            &path,
            RunMetrics {
                finished_at: at(1_767_600_000, 0),
                ..success
            },
        )
        .unwrap();
        assert_eq!(previous_last_success(&path), Some(at(1_767_600_000, 0)));
    }

    #[test]
    fn previous_last_success_tolerates_missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobcheck.prom");
        assert_eq!(previous_last_success(&path), None);
        for text in [
            "",
            "garbage\n\0\u{1}",
            "blobcheck_last_success_timestamp_seconds\n",
            "blobcheck_last_success_timestamp_seconds abc\n",
            "blobcheck_last_success_timestamp_seconds NaN\n",
            "blobcheck_last_success_timestamp_seconds -5\n",
            "blobcheck_last_success_timestamp_seconds +Inf\n",
            "blobcheck_last_success_timestamp_seconds 1e300\n",
            "blobcheck_last_success_timestamp_seconds{a=\"}\n",
            "blobcheck_last_success_timestamp_seconds_other 5\n",
            "# blobcheck_last_success_timestamp_seconds 5\n",
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(previous_last_success(&path), None, "{text:?}");
        }
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        assert_eq!(previous_last_success(&path), None);
        std::fs::write(
            &path,
            "blobcheck_last_success_timestamp_seconds{a=\"x} \\\"y\\\\\"} 42.5 1700000000000\n",
        )
        .unwrap();
        assert_eq!(previous_last_success(&path), Some(at(42, 500)));
        // A directory is not a file either.
        assert_eq!(previous_last_success(dir.path()), None);
    }

    #[test]
    fn timestamps_round_to_the_millisecond_and_survive_a_round_trip() {
        assert_eq!(seconds_since_epoch(at(0, 0)), 0.0);
        assert_eq!(
            seconds_since_epoch(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_999_600_000)),
            2.0
        );
        assert_eq!(
            seconds_since_epoch(SystemTime::UNIX_EPOCH - Duration::from_millis(1500)),
            -1.5
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        for (millis, written) in [
            (1, "1767225600.001"),
            (123, "1767225600.123"),
            (999, "1767225600.999"),
        ] {
            let time = at(1_767_225_600, millis);
            let success = RunMetrics {
                summary: None,
                success: true,
                finished_at: time,
                last_success: None,
                labels: &[],
            };
            write(&path, success).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(&format!("\n{LAST_SUCCESS} {written}\n")),
                "{text}"
            );
            assert_eq!(previous_last_success(&path), Some(time));
        }
        // Files written before the exposition came from prometheus-client
        // gave three decimals; they carry over as well.
        std::fs::write(&path, format!("{LAST_SUCCESS} 1767225600.250\n")).unwrap();
        assert_eq!(previous_last_success(&path), Some(at(1_767_225_600, 250)));
        assert_eq!(parse_seconds("1.5e3"), Some(Duration::from_secs(1500)));
        assert_eq!(parse_seconds("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_seconds("7.1234567891"),
            Some(Duration::new(7, 123_456_789))
        );
        assert_eq!(parse_seconds(".5"), Some(Duration::from_millis(500)));
        for bad in ["", "-1", "1.2.3", "x", "99999999999999999999", "inf"] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_are_written_as_the_exposition_format_spells_floats() {
        for (seconds, written) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.25, "0.25"),
        ] {
            let summary = Summary {
                seconds,
                ..Summary::default()
            };
            let text = render(&RunMetrics {
                summary: Some(&summary),
                success: true,
                finished_at: at(1, 0),
                last_success: None,
                labels: &[],
            });
            let line = format!("blobcheck_duration_seconds {written}");
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    /// A long-running process keeps one registry and encodes it on every
    /// scrape: it reports nothing before the first run, then always the
    /// last run recorded, through any clone of the collector.
    #[test]
    fn a_kept_registry_reports_the_last_run_recorded() {
        let labels = [("partition".to_owned(), "2/8".to_owned())];
        let (registry, last_run) = registry(&labels);
        assert_eq!(encode(&registry), "");

        let summary = summary();
        let success = RunMetrics {
            summary: Some(&summary),
            success: true,
            finished_at: at(1_767_225_600, 250),
            last_success: None,
            labels: &labels,
        };
        last_run.clone().record(&success);
        let first = encode(&registry);
        assert_eq!(first, render(&success));
        assert_eq!(encode(&registry), first, "encoding does not change it");
        assert!(
            first.contains("\nblobcheck_findings{partition=\"2/8\",kind=\"missing_blob\"} 57\n")
        );

        let failure = RunMetrics {
            summary: None,
            success: false,
            finished_at: at(1_767_312_000, 0),
            last_success: Some(at(1_767_225_600, 250)),
            labels: &labels,
        };
        last_run.record(&failure);
        let second = encode(&registry);
        assert_eq!(second, render(&failure));
        assert!(second.contains("\nblobcheck_last_run_success{partition=\"2/8\"} 0\n"));
        assert!(!second.contains("blobcheck_findings"), "{second}");
    }
}
