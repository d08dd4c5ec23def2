//! Throttling, as pt-table-checksum and gh-ost do it: the scan reads only
//! while every server it reads is within its limits, and no faster than a
//! given number of rows per second.
//!
//! * **Replica lag.** While `Seconds_Behind_Master` exceeds `--max-lag` on any
//!   server, or replication is not running there (`NULL`), reads pause.
//! * **Load.** While `Threads_running` exceeds `--max-threads-running` on any
//!   server, reads pause.
//! * **Rate.** `--max-rows-per-second` caps the rows read, all concurrent
//!   readers together, with a token bucket holding about one second of rows.
//!
//! One background task polls every server each `check_interval` and publishes
//! "paused or not" on a watch channel; [`Throttle::wait_ready`] waits on it.
//! The throttle only decides when the scan may read: it never runs the scan's
//! queries. Pauses are logged with `tracing` when they start (warn, with the
//! reason) and when they end (info, with how long they lasted).
//!
//! Usage: build one [`Throttle`] per check with [`Throttle::start`], call
//! [`Throttle::wait_ready`] before each query and [`Throttle::consume`] with
//! the rows each query returned.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};
use tokio::sync::watch;
use tracing::instrument::WithSubscriber;

use crate::db::dialect;

/// When the scan may read.
#[derive(Debug, Clone)]
pub struct ThrottleOptions {
    /// Pause while a replica's `Seconds_Behind_Master` is above this, or
    /// replication is not running there. `None`: lag is not checked.
    pub max_lag: Option<Duration>,
    /// Pause while a server's `Threads_running` is above this. `None`: not
    /// checked. The checker's own connections count too (its `--jobs`
    /// queries plus this throttle's status poll), so set the limit well above
    /// `--jobs`.
    pub max_threads_running: Option<u64>,
    /// Rows per second, all readers together. `None` or `Some(0)`: unlimited.
    pub max_rows_per_second: Option<u64>,
    /// How often each server's status is polled (default 1 s).
    pub check_interval: Duration,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        ThrottleOptions {
            max_lag: None,
            max_threads_running: None,
            max_rows_per_second: None,
            check_interval: Duration::from_secs(1),
        }
    }
}

/// What the throttle held back, for the run's summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThrottleStats {
    /// Times reads were paused because a server was over a limit.
    pub pauses: u64,
    /// Wall-clock time reads were paused for that reason (an ongoing pause
    /// included).
    pub paused_seconds: f64,
    /// Wall-clock time during which reads were held back by
    /// `max_rows_per_second`.
    pub rate_limited_seconds: f64,
}

/// The shortest poll interval accepted, so that a zero interval is no busy loop.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// A server's poll that takes longer than this (or the check interval, if
/// longer) is abandoned; the server keeps its previous state.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides when the scan may read. Shared by all readers (`Arc`).
///
/// The background polling task ends when the `Throttle` is dropped.
pub struct Throttle {
    /// The polling task's verdict; `None` when no server limit is checked.
    gate: Option<watch::Receiver<Gate>>,
    /// Rows per second; `None` when unlimited.
    rate: Option<f64>,
    bucket: Mutex<Bucket>,
    stats: Arc<Mutex<Counters>>,
}

/// What the polling task publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gate {
    /// The first round of polls is done: until then nothing is known.
    polled: bool,
    /// Some server is over a limit.
    paused: bool,
}

impl Gate {
    fn open(self) -> bool {
        self.polled && !self.paused
    }
}

#[derive(Debug, Default)]
struct Counters {
    pauses: u64,
    paused_seconds: f64,
    pause_started: Option<Instant>,
    rate_limited_seconds: f64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Throttle {
    /// Starts throttling on `servers`: (name, pool) for every server the
    /// check reads. Must be called within a tokio runtime.
    ///
    /// If `max_lag` or `max_threads_running` is set, one background task
    /// polls every server each `check_interval`, on a connection taken from
    /// the server's pool for the poll and returned right after (so a pool
    /// shared with the scan should allow one connection more than the scan
    /// uses, or the poll waits for a free one). [`wait_ready`](Self::wait_ready)
    /// waits for the first round of polls. The task ends when the `Throttle`
    /// is dropped.
    pub fn start(options: ThrottleOptions, servers: Vec<(String, Pool)>) -> Arc<Throttle> {
        let stats = Arc::new(Mutex::new(Counters::default()));
        let polls_needed = options.max_lag.is_some() || options.max_threads_running.is_some();
        let gate = if polls_needed && !servers.is_empty() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let (tx, rx) = watch::channel(Gate {
                        polled: false,
                        paused: false,
                    });
                    let watched = servers
                        .into_iter()
                        .map(|(name, pool)| Watched::new(name, pool, &options))
                        .collect();
                    let task = poll_servers(options.clone(), watched, tx, Arc::clone(&stats));
                    runtime.spawn(task.with_current_subscriber());
                    Some(rx)
                }
                Err(_) => {
                    tracing::warn!(
                        "throttling: no tokio runtime to poll servers from; --max-lag and --max-threads-running are not checked"
                    );
                    None
                }
            }
        } else {
            None
        };
        let rate = options
            .max_rows_per_second
            .filter(|&r| r > 0)
            .map(|r| r as f64);
        Arc::new(Throttle {
            gate,
            rate,
            bucket: Mutex::new(Bucket::full(rate.unwrap_or(0.0), Instant::now())),
            stats,
        })
    }

    /// A throttle that never waits.
    pub fn unlimited() -> Arc<Throttle> {
        Throttle::start(ThrottleOptions::default(), Vec::new())
    }

    /// Waits while any server is over a limit (and, right after `start`,
    /// until every server has been polled once). Call before each query.
    pub async fn wait_ready(&self) {
        let Some(gate) = &self.gate else { return };
        let mut gate = gate.clone();
        // An error means the polling task is gone: nothing to wait for.
        let _ = gate.wait_for(|g| g.open()).await;
    }

    /// Accounts for `rows` just read and sleeps as long as needed to keep
    /// the average rate, across all callers, at or below
    /// `max_rows_per_second`. Reads may run one second of rows ahead (the
    /// bucket's burst); a request bigger than that sleeps `rows / rate`.
    pub async fn consume(&self, rows: u64) {
        let Some(rate) = self.rate else { return };
        if rows == 0 {
            return;
        }
        let (wait, limited) = lock(&self.bucket).take(rate, rows, Instant::now());
        if !limited.is_zero() {
            lock(&self.stats).rate_limited_seconds += limited.as_secs_f64();
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    pub fn stats(&self) -> ThrottleStats {
        let counters = lock(&self.stats);
        let ongoing = counters
            .pause_started
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        ThrottleStats {
            pauses: counters.pauses,
            paused_seconds: counters.paused_seconds + ongoing,
            rate_limited_seconds: counters.rate_limited_seconds,
        }
    }
}

// ---------------------------------------------------------------------------
// The rate limit: a token bucket that may go into debt.

/// Tokens are rows. The bucket refills at `rate` rows per second up to one
/// second of rows; a caller takes its rows at once and, if that leaves the
/// bucket in debt, sleeps until the debt is repaid. Later callers add to the
/// debt and sleep longer, so all callers together stay under the rate.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Until when reads are already counted as rate limited.
    limited_until: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst(rate),
            updated: now,
            limited_until: now,
        }
    }

    /// Takes `rows` at `now`; returns how long the caller must sleep and how
    /// much wall-clock time that adds to the rate-limited time (sleeps of
    /// concurrent callers overlap and count once).
    fn take(&mut self, rate: f64, rows: u64, now: Instant) -> (Duration, Duration) {
        if rate.is_nan() || rate <= 0.0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + elapsed * rate).min(burst(rate));
        self.tokens -= rows as f64;
        if self.tokens >= 0.0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        let wait = Duration::try_from_secs_f64(-self.tokens / rate).unwrap_or(Duration::MAX);
        let Some(wake) = now.checked_add(wait) else {
            return (wait, Duration::ZERO);
        };
        let limited = wake.saturating_duration_since(self.limited_until.max(now));
        self.limited_until = self.limited_until.max(wake);
        (wait, limited)
    }
}

/// The bucket holds one second of rows.
fn burst(rate: f64) -> f64 {
    rate
}

// ---------------------------------------------------------------------------
// The servers' status.

const THREADS_RUNNING_SQL: &str = "SHOW GLOBAL STATUS LIKE 'Threads_running'";

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replica lag as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lag {
    /// No replication configured.
    NotReplica,
    /// The largest lag of its replication channels, in seconds.
    Seconds(u64),
    /// Some channel is not replicating (`Seconds_Behind_Master` is NULL).
    Stopped,
}

/// Why a status row could not be used.
#[derive(Debug)]
enum ReadError {
    /// The query failed.
    Query(mysql_async::Error),
    /// The answer has not the expected shape; checking it again is useless.
    Shape(String),
}

/// The lag of a replication status result: the max over its rows.
fn lag_of_rows(rows: &[Row]) -> Result<Lag, String> {
    let mut lag = Lag::NotReplica;
    for row in rows {
        let value = dialect::LAG_COLUMNS
            .iter()
            .find_map(|&column| row.get_opt::<Option<u64>, &str>(column));
        let seconds = match value {
            None => return Err("no Seconds_Behind_Master column".to_owned()),
            Some(Err(e)) => return Err(format!("Seconds_Behind_Master: {}", one_line(e))),
            Some(Ok(seconds)) => seconds,
        };
        lag = match (lag, seconds) {
            (Lag::Stopped, _) | (_, None) => Lag::Stopped,
            (Lag::Seconds(a), Some(b)) => Lag::Seconds(a.max(b)),
            (Lag::NotReplica, Some(b)) => Lag::Seconds(b),
        };
    }
    Ok(lag)
}

fn threads_of_row(row: Option<Row>) -> Result<u64, String> {
    let Some(row) = row else {
        return Err("no Threads_running status variable".to_owned());
    };
    match row.get_opt::<String, usize>(1) {
        Some(Ok(text)) => text
            .trim()
            .parse()
            .map_err(|_| format!("Threads_running is {text:?}, not a number")),
        Some(Err(e)) => Err(format!("Threads_running: {}", one_line(e))),
        None => Err("Threads_running has no value column".to_owned()),
    }
}

fn fmt_secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

/// A limit a server is over, since when.
#[derive(Debug)]
struct Over {
    /// What kind of excess (a new kind is logged anew).
    kind: &'static str,
    reason: String,
    since: Instant,
}

/// One polled server, owned by the polling task.
struct Watched {
    name: String,
    pool: Pool,
    /// Index into `dialect::REPLICA_STATUS_SQL`; `None` when lag is not checked here.
    lag_statement: Option<usize>,
    check_threads: bool,
    lag_over: Option<Over>,
    threads_over: Option<Over>,
}

impl Watched {
    fn new(name: String, pool: Pool, options: &ThrottleOptions) -> Watched {
        Watched {
            name,
            pool,
            lag_statement: options.max_lag.map(|_| 0),
            check_threads: options.max_threads_running.is_some(),
            lag_over: None,
            threads_over: None,
        }
    }

    fn over(&self) -> impl Iterator<Item = &Over> {
        self.lag_over.iter().chain(self.threads_over.iter())
    }

    /// Polls the server once. A failure leaves the previous state, except
    /// that a check the account may not run is turned off for good.
    async fn poll(&mut self, options: &ThrottleOptions) {
        let mut conn = match self.pool.get_conn().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(
                    "throttling: cannot poll server `{}`: {}",
                    self.name,
                    one_line(e)
                );
                return;
            }
        };
        if let Some(max_lag) = options.max_lag {
            match self.read_lag(&mut conn).await {
                Ok(None) => {}
                Ok(Some(lag)) => self.update_lag(lag, max_lag),
                Err(e) => self.lag_failed(e),
            }
        }
        if let Some(max) = options.max_threads_running
            && self.check_threads
        {
            match read_threads(&mut conn).await {
                Ok(n) => self.update_threads(n, max),
                Err(e) => self.threads_failed(e),
            }
        }
    }

    /// The replica lag, or `None` when lag is not (or no longer) checked.
    async fn read_lag(&mut self, conn: &mut Conn) -> Result<Option<Lag>, ReadError> {
        while let Some(i) = self.lag_statement {
            let Some(&sql) = dialect::REPLICA_STATUS_SQL.get(i) else {
                self.lag_statement = None;
                return Err(ReadError::Shape(dialect::no_replica_status_statement()));
            };
            match conn.query::<Row, _>(sql).await {
                Ok(rows) => return lag_of_rows(&rows).map(Some).map_err(ReadError::Shape),
                Err(e) if dialect::is_parse_error(&e) => {
                    tracing::debug!(
                        "throttling: server `{}` does not know {sql}; trying the next form",
                        self.name
                    );
                    self.lag_statement = Some(i + 1);
                }
                Err(e) => return Err(ReadError::Query(e)),
            }
        }
        Ok(None)
    }

    fn lag_failed(&mut self, e: ReadError) {
        let denied = matches!(&e, ReadError::Query(q) if dialect::is_access_denied(q));
        match e {
            ReadError::Query(q) if !denied => {
                tracing::debug!(
                    "throttling: cannot read replica lag on server `{}`: {}",
                    self.name,
                    one_line(q)
                );
                return;
            }
            ReadError::Query(q) => tracing::warn!(
                "throttling: cannot read replica lag on server `{}` ({}): --max-lag is not checked there; grant the checking account REPLICATION CLIENT (MySQL, MariaDB up to 10.4) or SLAVE MONITOR (MariaDB 10.5 and later)",
                self.name,
                one_line(q)
            ),
            ReadError::Shape(reason) => tracing::warn!(
                "throttling: cannot read replica lag on server `{}` ({reason}): --max-lag is not checked there",
                self.name
            ),
        }
        self.lag_statement = None;
        self.set_lag_over(None, || "replica lag is no longer checked".to_owned());
    }

    fn threads_failed(&mut self, e: ReadError) {
        match e {
            ReadError::Query(q) if !dialect::is_access_denied(&q) => {
                tracing::debug!(
                    "throttling: cannot read Threads_running on server `{}`: {}",
                    self.name,
                    one_line(q)
                );
                return;
            }
            ReadError::Query(q) => tracing::warn!(
                "throttling: cannot read Threads_running on server `{}` ({}): --max-threads-running is not checked there",
                self.name,
                one_line(q)
            ),
            ReadError::Shape(reason) => tracing::warn!(
                "throttling: cannot read Threads_running on server `{}` ({reason}): --max-threads-running is not checked there",
                self.name
            ),
        }
        self.check_threads = false;
        let name = self.name.clone();
        set_over(&name, &mut self.threads_over, None, || {
            "Threads_running is no longer checked".to_owned()
        });
    }

    fn update_lag(&mut self, lag: Lag, max_lag: Duration) {
        let name = self.name.clone();
        let max = fmt_secs(max_lag);
        match lag {
            Lag::Stopped => self.set_lag_over(
                Some((
                    "stopped",
                    format!(
                        "server `{name}` replication is not running (Seconds_Behind_Master is NULL)"
                    ),
                )),
                String::new,
            ),
            Lag::Seconds(s) if Duration::from_secs(s) > max_lag => self.set_lag_over(
                Some((
                    "lag",
                    format!("server `{name}` replica lag {s} s > --max-lag {max} s"),
                )),
                String::new,
            ),
            Lag::Seconds(s) => {
                self.set_lag_over(None, || format!("replica lag {s} s ≤ --max-lag {max} s"))
            }
            Lag::NotReplica => self.set_lag_over(None, || "not a replica any more".to_owned()),
        }
    }

    fn set_lag_over(&mut self, over: Option<(&'static str, String)>, ok: impl FnOnce() -> String) {
        let name = self.name.clone();
        set_over(&name, &mut self.lag_over, over, ok);
    }

    fn update_threads(&mut self, n: u64, max: u64) {
        let name = self.name.clone();
        let over = (n > max).then(|| {
            (
                "threads",
                format!("server `{name}` Threads_running {n} > --max-threads-running {max}"),
            )
        });
        set_over(&name, &mut self.threads_over, over, || {
            format!("Threads_running {n} ≤ --max-threads-running {max}")
        });
    }
}

/// Records whether a server is over one limit, and logs the changes.
fn set_over(
    name: &str,
    slot: &mut Option<Over>,
    over: Option<(&'static str, String)>,
    ok: impl FnOnce() -> String,
) {
    match (slot.as_mut(), over) {
        (None, None) => {}
        (Some(current), Some((kind, reason))) if current.kind == kind => {
            if current.reason != reason {
                tracing::debug!("throttling: still paused: {reason}");
                current.reason = reason;
            }
        }
        (_, Some((kind, reason))) => {
            tracing::warn!("throttling: {reason}; pausing");
            *slot = Some(Over {
                kind,
                reason,
                since: Instant::now(),
            });
        }
        (Some(current), None) => {
            tracing::info!(
                "throttling: server `{name}` {} again, after {:.1} s over the limit",
                ok(),
                current.since.elapsed().as_secs_f64()
            );
            *slot = None;
        }
    }
}

async fn read_threads(conn: &mut Conn) -> Result<u64, ReadError> {
    let row = conn
        .query_first::<Row, _>(THREADS_RUNNING_SQL)
        .await
        .map_err(ReadError::Query)?;
    threads_of_row(row).map_err(ReadError::Shape)
}

/// The polling task: polls every server each interval and publishes whether
/// reads must pause, until the `Throttle` (the only receiver) is dropped.
async fn poll_servers(
    options: ThrottleOptions,
    mut servers: Vec<Watched>,
    gate: watch::Sender<Gate>,
    stats: Arc<Mutex<Counters>>,
) {
    let interval = options.check_interval.max(MIN_CHECK_INTERVAL);
    let poll_timeout = interval.max(MIN_POLL_TIMEOUT);
    let options = &options;
    loop {
        let round = join_all(servers.iter_mut().map(|server| async move {
            let name = server.name.clone();
            if tokio::time::timeout(poll_timeout, server.poll(options))
                .await
                .is_err()
            {
                tracing::debug!(
                    "throttling: polling server `{name}` took over {} s; keeping its last state",
                    fmt_secs(poll_timeout)
                );
            }
        }));
        tokio::select! {
            biased;
            _ = gate.closed() => break,
            _ = round => {}
        }

        let reasons: Vec<&str> = servers
            .iter()
            .flat_map(Watched::over)
            .map(|o| o.reason.as_str())
            .collect();
        let paused = !reasons.is_empty();
        {
            let mut counters = lock(&stats);
            match (counters.pause_started, paused) {
                (None, true) => {
                    counters.pauses += 1;
                    counters.pause_started = Some(Instant::now());
                }
                (Some(since), false) => {
                    let lasted = since.elapsed().as_secs_f64();
                    counters.paused_seconds += lasted;
                    counters.pause_started = None;
                    tracing::info!(
                        "throttling: every server within its limits; resuming after {lasted:.1} s paused"
                    );
                }
                _ => {}
            }
        }
        let new = Gate {
            polled: true,
            paused,
        };
        gate.send_if_modified(|g| std::mem::replace(g, new) != new);

        tokio::select! {
            biased;
            _ = gate.closed() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tracing::debug!("throttling: polling stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn default_interval_is_one_second() {
        let o = ThrottleOptions::default();
        assert_eq!(o.check_interval, Duration::from_secs(1));
        assert!(o.max_lag.is_none() && o.max_threads_running.is_none());
        assert!(o.max_rows_per_second.is_none());
    }

    #[test]
    fn bucket_allows_one_second_burst_then_waits() {
        let t0 = Instant::now();
        let mut b = Bucket::full(1000.0, t0);
        assert_eq!(b.take(1000.0, 600, t0), (Duration::ZERO, Duration::ZERO));
        assert_eq!(b.take(1000.0, 400, t0), (Duration::ZERO, Duration::ZERO));
        let (wait, limited) = b.take(1000.0, 500, t0);
        assert!((secs(wait) - 0.5).abs() < 1e-6, "{wait:?}");
        assert!((secs(limited) - 0.5).abs() < 1e-6, "{limited:?}");
        // A second caller at the same instant queues behind the first: its
        // sleep ends later, and only the extra time counts as limited.
        let (wait, limited) = b.take(1000.0, 250, t0);
        assert!((secs(wait) - 0.75).abs() < 1e-6, "{wait:?}");
        assert!((secs(limited) - 0.25).abs() < 1e-6, "{limited:?}");
    }

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(100.0, t0);
        assert_eq!(b.take(100.0, 100, t0).0, Duration::ZERO);
        // Half a second later, 50 rows are back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(100.0, 50, t1).0, Duration::ZERO);
        let (wait, _) = b.take(100.0, 10, t1);
        assert!((secs(wait) - 0.1).abs() < 1e-6, "{wait:?}");
        // After a long idle time the bucket holds one second of rows, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.take(100.0, 100, t2).0, Duration::ZERO);
        let (wait, _) = b.take(100.0, 1, t2);
        assert!((secs(wait) - 0.01).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn huge_request_sleeps_rows_over_rate_not_more() {
        let t0 = Instant::now();
        let mut b = Bucket::full(1000.0, t0);
        // 1000 rows of burst are there: 10,000 rows cost 9 s.
        let (wait, limited) = b.take(1000.0, 10_000, t0);
        assert!((secs(wait) - 9.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(wait, limited);
        // Once that time has passed, the debt is repaid: the bucket is
        // empty, not in debt, and refills from there.
        let t1 = t0 + Duration::from_secs(9);
        let (wait, _) = b.take(1000.0, 1, t1);
        assert!((secs(wait) - 0.001).abs() < 1e-6, "{wait:?}");
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(b.take(1000.0, 999, t2).0, Duration::ZERO);
        // Absurd requests do not panic.
        let mut b = Bucket::full(1.0, t0);
        let (wait, _) = b.take(1.0, u64::MAX, t0);
        assert!(wait > Duration::from_secs(1_000_000));
    }

    #[test]
    fn average_rate_holds_over_many_small_takes() {
        // Callers that sleep as told read 10,000 rows in 100-row pieces at
        // 1,000 rows/s: 1 s of burst plus 9 s.
        let t0 = Instant::now();
        let mut b = Bucket::full(1000.0, t0);
        let mut now = t0;
        for _ in 0..100 {
            let (wait, _) = b.take(1000.0, 100, now);
            now += wait;
        }
        let total = secs(now - t0);
        assert!((total - 9.0).abs() < 1e-3, "{total}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = Bucket::full(0.0, t0);
        assert_eq!(b.take(0.0, 1_000_000, t0), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn gate_opens_only_after_first_poll_and_without_pause() {
        assert!(
            !Gate {
                polled: false,
                paused: false
            }
            .open()
        );
        assert!(
            !Gate {
                polled: true,
                paused: true
            }
            .open()
        );
        assert!(
            Gate {
                polled: true,
                paused: false
            }
            .open()
        );
    }

    #[test]
    fn set_over_tracks_kind_changes() {
        let mut slot = None;
        set_over("s", &mut slot, Some(("lag", "lag 10".into())), String::new);
        let since = slot.as_ref().map(|o: &Over| o.since);
        set_over("s", &mut slot, Some(("lag", "lag 12".into())), String::new);
        assert_eq!(slot.as_ref().map(|o| o.reason.as_str()), Some("lag 12"));
        assert_eq!(slot.as_ref().map(|o| o.since), since);
        set_over(
            "s",
            &mut slot,
            Some(("stopped", "stopped".into())),
            String::new,
        );
        assert_eq!(slot.as_ref().map(|o| o.kind), Some("stopped"));
        set_over("s", &mut slot, None, || "ok".into());
        assert!(slot.is_none());
    }

    #[test]
    fn unlimited_never_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = Throttle::unlimited();
            let started = Instant::now();
            t.wait_ready().await;
            t.consume(u64::MAX).await;
            assert!(started.elapsed() < Duration::from_secs(1));
            let s = t.stats();
            assert_eq!(s.pauses, 0);
            assert_eq!(s.rate_limited_seconds, 0.0);
        });
    }
}
