//! The `[check]` settings ([`CheckSettings`]), the command line's overrides
//! of them ([`Overrides`]), and the options of scan, confirmation and
//! throttle derived from them, once.

use serde::Deserialize;

/// How a check runs: the `[check]` section; command-line options override
/// each value.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckSettings {
    /// Rows per batch of the first chunk (of every chunk when `chunk_time`
    /// is 0).
    pub chunk_size: u64,
    /// Chunks in flight at once.
    pub jobs: usize,
    /// Target seconds per chunk; 0 keeps `chunk_size` fixed.
    pub chunk_time: f64,
    pub min_chunk_size: u64,
    pub max_chunk_size: u64,
    /// Seconds between the reads that confirm a candidate.
    pub settle_delay: f64,
    /// Re-reads that must agree before a candidate is reported; 0 reports
    /// the scan's candidates unconfirmed.
    pub confirmations: u32,
    /// Blobs with at least this many references are re-read even when the
    /// scan saw them consistent, and judged on more reads.
    pub hot_threshold: u64,
    /// Pause while any server's replica lag exceeds this many seconds.
    pub max_lag: Option<f64>,
    /// Pause while any server has more threads running than this.
    pub max_threads_running: Option<u64>,
    /// Cap on rows read per second, over all servers.
    pub max_rows_per_second: Option<u64>,
    /// Seconds a failing query is retried (dropped connection, restarted
    /// server) before the check gives up.
    pub retry_for: f64,
    /// Rows listed per column for each missing blob or count too low.
    pub affected_rows: u64,
    /// How chunks are checked: row by row, or by sums first.
    pub method: Method,
    /// With `method = "sketch"`: rows per sketched chunk.
    pub sketch_rows: u64,
    /// Connections the check opens to one server at most; reads beyond
    /// that wait for a turn.
    pub max_connections_per_server: usize,
}

/// The command line's value for each `[check]` setting, `None` where it
/// gives none: the raw flags, which [`CheckSettings::overridden`] applies
/// to the file's settings. The doc comments are the command line's help.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Rows per batch of the first chunk; of every chunk with --chunk-time 0 [config: check.chunk_size; default 10000].
    #[arg(long, value_name = "ROWS")]
    pub chunk_size: Option<u64>,
    /// Target seconds per chunk; the chunk size adapts to it. 0 keeps --chunk-size fixed [config: check.chunk_time; default 0.5].
    #[arg(long, value_name = "SECONDS")]
    pub chunk_time: Option<f64>,
    /// Smallest adaptive chunk [config: check.min_chunk_size; default 1000].
    #[arg(long, value_name = "ROWS")]
    pub min_chunk_size: Option<u64>,
    /// Largest adaptive chunk; bounds memory [config: check.max_chunk_size; default 20000].
    #[arg(long, value_name = "ROWS")]
    pub max_chunk_size: Option<u64>,
    /// How chunks are checked: `exact` reads one row per id and table; `sketch` has the servers sum each chunk and reads exactly only the chunks the sums do not clear (see README) [config: check.method; default exact].
    #[arg(long, value_enum, value_name = "METHOD")]
    pub method: Option<Method>,
    /// With --method sketch: rows per sketched chunk [config: check.sketch_rows; default 8192].
    #[arg(long, value_name = "ROWS")]
    pub sketch_rows: Option<u64>,
    /// Chunks checked at once [config: check.jobs; default 4].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Seconds between the reads that confirm a candidate [config: check.settle_delay; default 3].
    #[arg(long, value_name = "SECONDS")]
    pub settle_delay: Option<f64>,
    /// Re-reads that must agree before a finding is reported; 0 reports single-pass candidates [config: check.confirmations; default 2].
    #[arg(long, value_name = "N")]
    pub confirmations: Option<u32>,
    /// Blobs with at least N references are re-read even when the scan saw them consistent, and need twice the agreeing reads [config: check.hot_threshold; default 100].
    #[arg(long, value_name = "N")]
    pub hot_threshold: Option<u64>,
    /// Pause while any server's replica lag exceeds SECONDS [config: check.max_lag; default: off].
    #[arg(long, value_name = "SECONDS")]
    pub max_lag: Option<f64>,
    /// Pause while any server runs more than N threads [config: check.max_threads_running; default: off].
    #[arg(long, value_name = "N")]
    pub max_threads_running: Option<u64>,
    /// Read at most N rows per second, over all servers [config: check.max_rows_per_second; default: off].
    #[arg(long, value_name = "N")]
    pub max_rows_per_second: Option<u64>,
    /// Seconds a failing query is retried before the check gives up [config: check.retry_for; default 300].
    #[arg(long, value_name = "SECONDS")]
    pub retry_for: Option<f64>,
    /// Connections opened to one server at most; reads beyond that wait for a turn [config: check.max_connections_per_server; default 10].
    #[arg(long, value_name = "N")]
    pub max_connections_per_server: Option<usize>,
    /// Rows listed per column for each missing blob or count too low; 0 lists none [config: check.affected_rows; default 10].
    #[arg(long, value_name = "N")]
    pub affected_rows: Option<u64>,
}

/// `exact` reads one row per id and table; `sketch` has the servers sum
/// each chunk and reads exactly only the chunks the sums do not clear
/// (`sketch` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Exact,
    Sketch,
}

impl Method {
    pub fn scan_method(self, sketch_rows: u64) -> crate::scan::Method {
        match self {
            Method::Exact => crate::scan::Method::Exact,
            Method::Sketch => crate::scan::Method::Sketch {
                target_rows: sketch_rows,
            },
        }
    }
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            chunk_size: 10_000,
            jobs: 4,
            chunk_time: 0.5,
            min_chunk_size: 1_000,
            max_chunk_size: 20_000,
            settle_delay: 3.0,
            confirmations: 2,
            hot_threshold: 100,
            max_lag: None,
            max_threads_running: None,
            max_rows_per_second: None,
            retry_for: 300.0,
            affected_rows: 10,
            method: Method::Exact,
            sketch_rows: 8_192,
            max_connections_per_server: crate::db::DEFAULT_MAX_CONNECTIONS_PER_SERVER,
        }
    }
}

fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(value)
}

impl CheckSettings {
    /// These settings with every value the command line gives in place of
    /// the file's, validated: the one place a setting is decided.
    pub fn overridden(&self, overrides: &Overrides) -> std::result::Result<CheckSettings, String> {
        let o = overrides;
        // Every field named, none left to `..`: a new setting must say
        // whether the command line overrides it.
        let settings = CheckSettings {
            chunk_size: o.chunk_size.unwrap_or(self.chunk_size),
            jobs: o.jobs.unwrap_or(self.jobs),
            chunk_time: o.chunk_time.unwrap_or(self.chunk_time),
            min_chunk_size: o.min_chunk_size.unwrap_or(self.min_chunk_size),
            max_chunk_size: o.max_chunk_size.unwrap_or(self.max_chunk_size),
            settle_delay: o.settle_delay.unwrap_or(self.settle_delay),
            confirmations: o.confirmations.unwrap_or(self.confirmations),
            hot_threshold: o.hot_threshold.unwrap_or(self.hot_threshold),
            max_lag: o.max_lag.or(self.max_lag),
            max_threads_running: o.max_threads_running.or(self.max_threads_running),
            max_rows_per_second: o.max_rows_per_second.or(self.max_rows_per_second),
            retry_for: o.retry_for.unwrap_or(self.retry_for),
            affected_rows: o.affected_rows.unwrap_or(self.affected_rows),
            method: o.method.unwrap_or(self.method),
            sketch_rows: o.sketch_rows.unwrap_or(self.sketch_rows),
            max_connections_per_server: o
                .max_connections_per_server
                .unwrap_or(self.max_connections_per_server),
        };
        settings.validate()?;
        Ok(settings)
    }

    pub fn scan_options(&self) -> crate::scan::ScanOptions {
        let confirm = self.confirm_options();
        crate::scan::ScanOptions {
            chunk_size: self.chunk_size,
            jobs: self.jobs,
            chunk_time: (self.chunk_time > 0.0).then(|| seconds(self.chunk_time)),
            min_chunk_size: self.min_chunk_size,
            max_chunk_size: self.max_chunk_size,
            // Busy blobs the scan sees consistent are candidates too (a
            // single read can catch changes in flight that hide a fault),
            // when there is a confirmation to re-read them.
            hot_threshold: if confirm.enabled() {
                confirm.hot_threshold
            } else {
                u64::MAX
            },
            method: self.method.scan_method(self.sketch_rows),
        }
    }

    pub fn confirm_options(&self) -> crate::confirm::ConfirmOptions {
        crate::confirm::ConfirmOptions {
            settle_delay: seconds(self.settle_delay),
            confirmations: self.confirmations,
            hot_threshold: self.hot_threshold,
            ..crate::confirm::ConfirmOptions::disabled()
        }
    }

    pub fn throttle_options(&self) -> crate::throttle::ThrottleOptions {
        crate::throttle::ThrottleOptions {
            max_lag: self.max_lag.map(seconds),
            max_threads_running: self.max_threads_running,
            max_rows_per_second: self.max_rows_per_second,
            ..crate::throttle::ThrottleOptions::default()
        }
    }

    pub fn retry_for(&self) -> std::time::Duration {
        seconds(self.retry_for)
    }

    /// Checks every value; shared by the file and the command line.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let rows = |what: &str, n: u64| {
            if n == 0 || n > 10_000_000 {
                Err(format!("{what} {n} is out of range (1 to 10000000)"))
            } else {
                Ok(())
            }
        };
        let secs = |what: &str, v: f64, max: f64| {
            if !(0.0..=max).contains(&v) {
                Err(format!("{what} {v} s is out of range (0 to {max})"))
            } else {
                Ok(())
            }
        };
        rows("chunk size", self.chunk_size)?;
        rows("min chunk size", self.min_chunk_size)?;
        rows("max chunk size", self.max_chunk_size)?;
        rows("sketch rows", self.sketch_rows)?;
        if self.min_chunk_size > self.max_chunk_size {
            return Err(format!(
                "min chunk size {} is above max chunk size {}",
                self.min_chunk_size, self.max_chunk_size
            ));
        }
        if self.jobs == 0 || self.jobs > 256 {
            return Err(format!("jobs {} is out of range (1 to 256)", self.jobs));
        }
        secs("chunk time", self.chunk_time, 3600.0)?;
        secs("settle delay", self.settle_delay, 3600.0)?;
        secs("retry time", self.retry_for, 86_400.0)?;
        if let Some(lag) = self.max_lag {
            secs("max lag", lag, 86_400.0)?;
        }
        if self.affected_rows > 10_000 {
            return Err(format!(
                "affected rows {} is out of range (0 to 10000)",
                self.affected_rows
            ));
        }
        if self.max_connections_per_server == 0 || self.max_connections_per_server > 10_000 {
            return Err(format!(
                "max connections per server {} is out of range (1 to 10000)",
                self.max_connections_per_server
            ));
        }
        if self.confirmations > 100 {
            return Err(format!(
                "confirmations {} is out of range (0 to 100)",
                self.confirmations
            ));
        }
        // 0 would make every blob busy; a limit of 0 running threads or
        // rows per second could never be met, and the check would wait
        // forever.
        at_least_one("hot threshold", Some(self.hot_threshold))?;
        at_least_one("max threads running", self.max_threads_running)?;
        at_least_one("max rows per second", self.max_rows_per_second)?;
        Ok(())
    }
}

fn at_least_one(what: &str, value: Option<u64>) -> std::result::Result<(), String> {
    match value {
        Some(0) => Err(format!("{what} 0 is out of range (at least 1)")),
        _ => Ok(()),
    }
}
