//! Progress while a check runs: rows per second and an ETA, as a bar on a
//! terminal or as a log line every half minute otherwise (cron, Kubernetes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::plan::IdRange;
use crate::report::{format_duration, thousands};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    None,
}

const LOG_EVERY: Duration = Duration::from_secs(30);
/// Resolution of the bar: permille of the id span.
const BAR_STEPS: u64 = 1000;

/// How far a running check is, for whoever reports it while it runs (the
/// progress pushed to a Pushgateway): the share of the id span scanned and
/// the rows read. Written by [`Progress::advance`], read at any time.
#[derive(Debug, Default)]
pub struct LiveProgress {
    /// The fraction's `f64` bits.
    fraction: AtomicU64,
    rows: AtomicU64,
}

impl LiveProgress {
    /// The share of the id span scanned, 0 to 1.
    pub fn fraction(&self) -> f64 {
        f64::from_bits(self.fraction.load(Ordering::Relaxed))
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    fn set(&self, fraction: f64, rows: u64) {
        self.fraction.store(fraction.to_bits(), Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
    }
}

/// Tracks how far the scan is, by position in the id span (ids are dense
/// enough in practice for that to track time) and by rows read.
pub struct Progress {
    bar: Option<ProgressBar>,
    log: bool,
    started: Instant,
    last_log: Instant,
    start: u64,
    /// The last id that holds data: progress is measured up to here, not up
    /// to the end of the range (often 2⁶⁴−1, far beyond the last blob).
    last: u64,
    rows: u64,
    live: Option<Arc<LiveProgress>>,
}

impl Progress {
    /// `range` is what is scanned; `last_blob` the largest blob id, if any;
    /// `live` is kept up to date with every advance.
    pub fn new(
        mode: ProgressMode,
        range: IdRange,
        last_blob: Option<u64>,
        live: Option<Arc<LiveProgress>>,
    ) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let (bar, log) = match mode {
            ProgressMode::Auto if terminal => (true, false),
            ProgressMode::Auto => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Log => (false, true),
            ProgressMode::None => (false, false),
        };
        let bar = bar.then(|| {
            let bar = ProgressBar::with_draw_target(Some(BAR_STEPS), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        let last = last_blob
            .unwrap_or(range.start)
            .clamp(range.start, range.end);
        Progress {
            bar,
            log,
            started: Instant::now(),
            last_log: Instant::now(),
            start: range.start,
            last,
            rows: 0,
            live,
        }
    }

    fn fraction(&self, position: u64) -> f64 {
        if self.last <= self.start {
            return 1.0;
        }
        let done = position.saturating_sub(self.start) as f64;
        (done / (self.last - self.start) as f64).clamp(0.0, 1.0)
    }

    /// The scan has finished everything up to `position` and read `rows`
    /// more rows.
    pub fn advance(&mut self, position: u64, rows: u64) {
        self.rows += rows;
        let fraction = self.fraction(position);
        if let Some(live) = &self.live {
            live.set(fraction, self.rows);
        }
        let elapsed = self.started.elapsed();
        let rate = self.rows as f64 / elapsed.as_secs_f64().max(1e-3);
        let eta = if fraction > 0.0 {
            format_duration(elapsed.mul_f64((1.0 - fraction) / fraction))
        } else {
            "unknown".to_owned()
        };
        if let Some(bar) = &self.bar {
            bar.set_position((fraction * BAR_STEPS as f64) as u64);
            bar.set_message(format!(
                "{} rows, {} rows/s, ETA {eta}",
                thousands(self.rows),
                thousands(rate as u64)
            ));
        }
        if self.log && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                "progress {:.1}%: {} rows read, {} rows/s, at id {position}, ETA {eta}",
                fraction * 100.0,
                thousands(self.rows),
                thousands(rate as u64),
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
