//! The watch's live metrics, kept in one `prometheus-client` registry and
//! encoded on every scrape of `/metrics` (through [`crate::metrics::encode`]),
//! and what `/healthz` says.
//!
//! Counters end in `_total` and only grow while the process lives; per
//! server series carry a `server` label. Rates (events and touched ids per
//! second) are the counters' `rate()` in Prometheus.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::finding::Finding;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub kind: String,
    pub severity: String,
}

/// Every series of the watch.
pub struct WatchMetrics {
    registry: Registry,
    pub findings: Family<FindingLabels, Counter>,
    pub waiting_ids: Gauge,
    pub waiting_ranges: Gauge,
    pub events: Family<ServerLabel, Counter>,
    pub touched: Family<ServerLabel, Counter>,
    pub behind_seconds: Family<ServerLabel, Gauge<f64, AtomicU64>>,
    pub behind_bytes: Family<ServerLabel, Gauge>,
    pub last_event: Family<ServerLabel, Gauge<f64, AtomicU64>>,
    pub up: Family<ServerLabel, Gauge>,
    pub gaps: Family<ServerLabel, Counter>,
    pub reconnects: Family<ServerLabel, Counter>,
    pub latency: Histogram,
    pub judged: Counter,
    pub transient: Counter,
    pub unsettled: Counter,
    pub ranges_scanned: Counter,
    /// When this process started (Unix seconds): the alerts tell a
    /// counter that starts above 0 in a new process from a gap in their
    /// data.
    pub started: Gauge<f64, AtomicU64>,
    /// How far behind a stream may be before `/healthz` fails.
    max_behind: Duration,
    servers: Mutex<Vec<String>>,
}

impl WatchMetrics {
    pub fn new(servers: &[String], max_behind: Duration) -> WatchMetrics {
        let mut registry = Registry::default();
        let findings = Family::<FindingLabels, Counter>::default();
        let waiting_ids = Gauge::<i64, AtomicI64>::default();
        let waiting_ranges = Gauge::<i64, AtomicI64>::default();
        let events = Family::<ServerLabel, Counter>::default();
        let touched = Family::<ServerLabel, Counter>::default();
        let behind_seconds = Family::<ServerLabel, Gauge<f64, AtomicU64>>::default();
        let behind_bytes = Family::<ServerLabel, Gauge>::default();
        let last_event = Family::<ServerLabel, Gauge<f64, AtomicU64>>::default();
        let up = Family::<ServerLabel, Gauge>::default();
        let gaps = Family::<ServerLabel, Counter>::default();
        let reconnects = Family::<ServerLabel, Counter>::default();
        // 0.5 s to about 2 minutes.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.5, 1.6, 13,
        ));
        let judged = Counter::default();
        let transient = Counter::default();
        let unsettled = Counter::default();
        let ranges_scanned = Counter::default();
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(unix_seconds(SystemTime::now()));
        registry.register(
            "blobcheck_watch_started_timestamp_seconds",
            "When the watch process started (Unix seconds)",
            started.clone(),
        );
        registry.register(
            "blobcheck_watch_findings",
            "Inconsistencies confirmed and reported, by kind and severity",
            findings.clone(),
        );
        registry.register(
            "blobcheck_watch_waiting_ids",
            "Touched blob ids waiting to be judged",
            waiting_ids.clone(),
        );
        registry.register(
            "blobcheck_watch_waiting_ranges",
            "Id ranges waiting to be scanned (ids past the memory bound)",
            waiting_ranges.clone(),
        );
        registry.register(
            "blobcheck_watch_events",
            "Binary log events read, per server",
            events.clone(),
        );
        registry.register(
            "blobcheck_watch_touched_ids",
            "Blob ids touched by row events, per server",
            touched.clone(),
        );
        registry.register(
            "blobcheck_watch_behind_seconds",
            "How far the watch is behind the server's log, in seconds (0 when caught up)",
            behind_seconds.clone(),
        );
        registry.register(
            "blobcheck_watch_behind_bytes",
            "How far the watch is behind the end of the server's log, in bytes",
            behind_bytes.clone(),
        );
        registry.register(
            "blobcheck_watch_last_event_timestamp_seconds",
            "Commit time of the last event read, per server (Unix seconds)",
            last_event.clone(),
        );
        registry.register(
            "blobcheck_watch_stream_up",
            "1 while the server's binary log stream is connected",
            up.clone(),
        );
        registry.register(
            "blobcheck_watch_log_gaps",
            "Times the saved log position was no longer on the server (a full check closes the gap)",
            gaps.clone(),
        );
        registry.register(
            "blobcheck_watch_reconnects",
            "Times the stream was lost and opened again",
            reconnects.clone(),
        );
        registry.register(
            "blobcheck_watch_detection_latency_seconds",
            "From the commit of the change that touched a blob to its finding",
            latency.clone(),
        );
        registry.register(
            "blobcheck_watch_judged_ids",
            "Touched ids read and judged",
            judged.clone(),
        );
        registry.register(
            "blobcheck_watch_transient",
            "Ids that looked wrong once and were changes in flight",
            transient.clone(),
        );
        registry.register(
            "blobcheck_watch_unsettled",
            "Ids that kept changing through every read allowed (neither reported nor passed)",
            unsettled.clone(),
        );
        registry.register(
            "blobcheck_watch_ranges_scanned",
            "Id ranges scanned because they held more touched ids than the bound",
            ranges_scanned.clone(),
        );
        let metrics = WatchMetrics {
            registry,
            findings,
            waiting_ids,
            waiting_ranges,
            events,
            touched,
            behind_seconds,
            behind_bytes,
            last_event,
            up,
            gaps,
            reconnects,
            latency,
            judged,
            transient,
            unsettled,
            ranges_scanned,
            started,
            max_behind,
            servers: Mutex::new(servers.to_vec()),
        };
        for server in servers {
            let label = metrics.label(server);
            metrics.up.get_or_create(&label).set(0);
            let _ = metrics.gaps.get_or_create(&label);
            let _ = metrics.events.get_or_create(&label);
            let _ = metrics.touched.get_or_create(&label);
        }
        // Every kind and severity a finding can have, at 0 from the start,
        // so that `increase()` sees the first one.
        let pairs = [
            ("count_mismatch", "warning"),
            ("count_mismatch", "error"),
            ("count_mismatch", "critical"),
            ("missing_blob", "critical"),
            ("orphan_blob", "warning"),
        ];
        for (kind, severity) in pairs {
            let _ = metrics.findings.get_or_create(&FindingLabels {
                kind: kind.to_owned(),
                severity: severity.to_owned(),
            });
        }
        metrics
    }

    pub fn label(&self, server: &str) -> ServerLabel {
        ServerLabel {
            server: server.to_owned(),
        }
    }

    pub fn found(&self, finding: &Finding, latency: Option<Duration>) {
        self.findings
            .get_or_create(&FindingLabels {
                kind: finding.kind.as_str().to_owned(),
                severity: finding.severity().as_str().to_owned(),
            })
            .inc();
        if let Some(latency) = latency {
            self.latency.observe(latency.as_secs_f64());
        }
    }

    /// The Prometheus text exposition (0.0.4).
    pub fn encode(&self) -> String {
        crate::metrics::encode(&self.registry)
    }

    /// `Ok` while every stream is up and no further behind than allowed;
    /// else one reason per server at fault.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut reasons = Vec::new();
        for server in servers.iter() {
            let label = self.label(server);
            if self.up.get_or_create(&label).get() == 0 {
                reasons.push(format!("server `{server}`: binary log stream down"));
                continue;
            }
            let behind = self.behind_seconds.get_or_create(&label).get();
            if behind > self.max_behind.as_secs_f64() {
                reasons.push(format!(
                    "server `{server}`: {behind:.0} s behind its binary log (limit {} s)",
                    self.max_behind.as_secs()
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// Seconds since the Unix epoch of a system time (0 before it).
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
