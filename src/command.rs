//! The commands as the command line gives them: its raw flags
//! ([`CheckArgs`], with the `[check]` overrides in
//! [`config::Overrides`](crate::config::Overrides)) resolved once into a
//! run's options, the run, its output file and its metrics file. `main.rs`
//! parses the arguments into these, calls one function per command and
//! maps what it returns to an exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check::{self, CheckOptions, CheckpointOptions, Scope, StopRequest};
use crate::config::{Config, Overrides};
use crate::db::Protocol;
use crate::error::{Error, Result};
use crate::metrics::{self, RunMetrics, RunProgress};
use crate::partition::Partition;
use crate::plan::IdRange;
use crate::progress::{LiveProgress, ProgressMode};
use crate::pushgateway;
use crate::report::{Format, Reporter, Summary};

/// The flags of `check` and `demo`, as given.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Output format: a table for people, or one JSON object per finding per line.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Write findings (and, in text format, the summary) to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Overrides,
    /// Write Prometheus metrics of the run to FILE (atomically), for node_exporter's textfile collector; written on failure too.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Push the run's metrics to the Prometheus Pushgateway at URL (http://host:9091) at its end, failed runs included; grouped by job and partition.
    #[arg(long, value_name = "URL")]
    pub metrics_push: Option<String>,
    /// The `job` label of the pushed metrics' group (with --metrics-push).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "blobcheck",
        requires = "metrics_push"
    )]
    pub metrics_job: String,
    /// Keep progress, pending candidates and findings in FILE (written atomically every few seconds).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Continue the run the checkpoint file describes (starts afresh if the file does not exist yet).
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    /// Check only partition K (0-based) of N: one block of 65,536 ids out of every N, so that N processes check every id once, each about the same number of rows.
    #[arg(long, value_name = "K/N", conflicts_with = "range")]
    pub partition: Option<Partition>,
    /// Check only ids FIRST to LAST (inclusive), e.g. 0-1000000.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    pub range: Option<IdRange>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// `--range FIRST-LAST`.
fn parse_range(text: &str) -> std::result::Result<IdRange, String> {
    let bad = || format!("range `{text}` must be FIRST-LAST with FIRST <= LAST, e.g. 0-1000000");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    Ok(IdRange::new(first, last))
}

/// How often a run that keeps a checkpoint saves it.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

impl CheckArgs {
    /// The run's options, every one decided here from the configuration's
    /// `[check]` section and these flags: the overrides applied and
    /// validated, the derived scan, confirmation and throttle options, the
    /// scope, the checkpoint, the progress display (none when `quiet`) and
    /// the protocol (`BLOBCHECK_PROTOCOL`, read here and nowhere else).
    pub fn check_options(
        &self,
        config: &Config,
        quiet: bool,
        stop: StopRequest,
    ) -> Result<CheckOptions> {
        let settings = config
            .check
            .overridden(&self.settings)
            .map_err(Error::Usage)?;
        let scope = match (self.partition, self.range) {
            (Some(partition), _) => Scope::Partition(partition),
            (None, Some(range)) => Scope::Range(range),
            (None, None) => Scope::Range(IdRange::ALL),
        };
        Ok(CheckOptions {
            scope,
            scan: settings.scan_options(),
            confirm: settings.confirm_options(),
            throttle: settings.throttle_options(),
            checkpoint: self.checkpoint.clone().map(|path| CheckpointOptions {
                path,
                resume: self.resume,
                interval: CHECKPOINT_INTERVAL,
            }),
            progress: if quiet {
                ProgressMode::None
            } else {
                self.progress
            },
            live_progress: None,
            retry_for: settings.retry_for(),
            max_connections_per_server: settings.max_connections_per_server,
            affected_rows: settings.affected_rows,
            protocol: Protocol::from_env(),
            stop: Some(stop),
        })
    }

    /// Where `--metrics-push` sends the run's metrics: the group of its
    /// job and partition. `None` without the option.
    fn push_target(&self) -> Result<Option<pushgateway::Target>> {
        self.metrics_push
            .as_deref()
            .map(|url| {
                pushgateway::Target::new(url, &self.metrics_job, &metric_labels(self.partition))
            })
            .transpose()
    }

    /// The files the run reads or writes, by the option that names them.
    fn files<'a>(&'a self, config_path: Option<&'a Path>) -> Vec<(&'static str, &'a Path)> {
        [
            ("--config", config_path),
            ("--output", self.output.as_deref()),
            ("--checkpoint", self.checkpoint.as_deref()),
            ("--metrics-file", self.metrics_file.as_deref()),
        ]
        .into_iter()
        .filter_map(|(option, path)| path.map(|path| (option, path)))
        .collect()
    }
}

/// `check`: runs the check `config` describes (read from `config_path`, if
/// from a file) with `args`, and writes its metrics file. Returns the number
/// of findings; a run stopped by `stop` ends in [`Error::Interrupted`] (or
/// [`Error::Abandoned`] when it did not stop in time).
pub async fn check(
    config: &Config,
    config_path: Option<&Path>,
    args: &CheckArgs,
    quiet: bool,
    stop: StopRequest,
) -> Result<u64> {
    let push = args.push_target()?;
    let started_at = std::time::SystemTime::now();
    let prepared = (|| {
        let options = args.check_options(config, quiet, stop.clone())?;
        crate::paths::refuse_collisions(&args.files(config_path))?;
        let out = open_output(args.output.as_deref(), Lines::Blocks)?;
        Ok((options, out))
    })();
    let (mut options, out) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            // A scheduled check that cannot start is a failed run too.
            if let Some(target) = push {
                push_unstarted(target, started_at).await;
            }
            return Err(e);
        }
    };
    let live = std::sync::Arc::new(LiveProgress::default());
    let progress_pushes = push.clone().map(|target| {
        options.live_progress = Some(std::sync::Arc::clone(&live));
        ProgressPushes::start(target, started_at, std::sync::Arc::clone(&live))
    });

    // The check labels the columns once it knows them all: discovery adds
    // the shards' at its start.
    let reporter = Reporter::new(args.format, out, Vec::new());
    let result = finish_or_give_up(check::run(config, &options, reporter), stop).await;
    // Only a run that got to its end counts as one: an interrupted run's
    // counts are partial, and published they would resolve the alerts of
    // the last complete run.
    let complete = result.as_ref().ok().filter(|s| s.interrupted.is_none());
    let finished_at = std::time::SystemTime::now();
    if let Some(path) = &args.metrics_file {
        let written = write_metrics(path, &metric_labels(args.partition), complete, finished_at);
        if let Err(e) = written {
            // The check's own outcome matters more than the metrics'.
            if complete.is_some() {
                return Err(e);
            }
            tracing::error!("{e}");
        }
    }
    if let Some(target) = push {
        // The last progress push lands before the run's own, never after.
        if let Some(pushes) = progress_pushes {
            pushes.stop().await;
        }
        let progress = RunProgress {
            running: false,
            started_at,
            fraction: if complete.is_some() {
                1.0
            } else {
                live.fraction()
            },
            rows: live.rows(),
        };
        // A Pushgateway that is down does not undo a check: its findings
        // are written and its exit status stands; the metrics it could not
        // deliver show as staleness (no new success), which the alerts see.
        if let Err(e) = push_metrics(target, complete, finished_at, progress).await {
            tracing::error!("{e}");
        }
    }
    let summary = result?;
    match summary.interrupted {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(summary.findings.total),
    }
}

/// A check that could not start (its configuration, its options, its
/// output): with `--metrics-push`, the Pushgateway hears of the failure,
/// as of any failed run. Called by `main.rs` when the configuration does
/// not load, and by [`check`] for what fails before the run.
pub async fn report_unstarted_check(args: &CheckArgs) {
    if let Ok(Some(target)) = args.push_target() {
        push_unstarted(target, std::time::SystemTime::now()).await;
    }
}

/// The failure of a run that never started, pushed; a push that fails is
/// logged, the run's own error is the one reported.
async fn push_unstarted(target: pushgateway::Target, started_at: std::time::SystemTime) {
    let progress = RunProgress {
        running: false,
        started_at,
        fraction: 0.0,
        rows: 0,
    };
    let finished_at = std::time::SystemTime::now();
    if let Err(e) = push_metrics(target, None, finished_at, progress).await {
        tracing::error!("{e}");
    }
}

/// `demo`'s settle delay unless one is given: nothing writes to the
/// fixtures, so confirmation needs no long wait; the reads are the same as
/// in production.
const DEMO_SETTLE_DELAY: f64 = 0.5;

/// `demo`: `check` against two throwaway servers loaded with the bundled
/// fixtures.
pub async fn demo(args: &CheckArgs, quiet: bool, stop: StopRequest) -> Result<u64> {
    let mut args = args.clone();
    args.settings.settle_delay.get_or_insert(DEMO_SETTLE_DELAY);
    crate::demo::run(async |config| check(config, None, &args, quiet, stop).await).await
}

/// `demo --watch`: two throwaway servers with binary logs, the watch
/// following them, and a short application: correct two-step changes on
/// both servers, then one buggy change of each kind, each reported as it
/// is found, with its latency. Returns the number of findings.
pub async fn demo_watch(stop: StopRequest) -> Result<u64> {
    eprintln!(
        "blobcheck demo --watch: starting two throwaway MariaDB servers with binary logs and loading fixtures/ ..."
    );
    let servers = tokio::task::spawn_blocking(|| crate::demo::FixtureServers::start_with(true))
        .await
        .map_err(|e| Error::Sandbox(format!("demo setup failed: {e}")))??;
    let config = servers.config()?;
    let (stop_watch, watch_stop) = StopRequest::channel();
    let forward = stop_watch.clone();
    let mut user_stop = stop;
    tokio::spawn(async move {
        let reason = user_stop.requested().await;
        let _ = forward.send(Some(reason));
    });
    let settings = config
        .check
        .overridden(&crate::config::Overrides {
            settle_delay: Some(DEMO_SETTLE_DELAY),
            confirmations: Some(1),
            ..crate::config::Overrides::default()
        })
        .map_err(Error::Usage)?;
    let options = crate::watch::WatchOptions {
        confirm: settings.confirm_options(),
        scan: settings.scan_options(),
        throttle: settings.throttle_options(),
        retry_for: settings.retry_for(),
        max_connections_per_server: settings.max_connections_per_server,
        affected_rows: 0,
        max_waiting: 100_000,
        state: None,
        state_interval: STATE_INTERVAL,
        listen: None,
        replication_server_id: crate::db::binlog::DEFAULT_REPLICATION_SERVER_ID,
        max_behind: Duration::from_secs(60),
        config_path: None,
        stop: Some(watch_stop),
    };
    let reporter = Reporter::new(
        Format::Text,
        Box::new(whole_lines(std::io::stdout())),
        Vec::new(),
    );
    let watching = {
        let config = config.clone();
        tokio::spawn(async move { crate::watch::run(&config, &options, reporter).await })
    };
    // The watch reads each log's end first; let the streams open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "blobcheck demo --watch: the application writes correct two-step changes on both servers ..."
    );
    let servers = tokio::task::spawn_blocking(move || -> Result<crate::demo::FixtureServers> {
        let run = |global: bool, sql: &str| {
            let server = if global {
                &servers.global
            } else {
                &servers.shard
            };
            server
                .run_sql(sql)
                .map_err(|e| Error::Sandbox(format!("demo application: {e}")))
        };
        for (global, sql) in crate::demo::DemoApp::correct_steps() {
            run(global, &sql)?;
        }
        std::thread::sleep(Duration::from_secs(1));
        for (what, steps) in crate::demo::DemoApp::faults() {
            for (global, sql) in &steps {
                run(*global, sql)?;
            }
            eprintln!("blobcheck demo --watch: the application's bug: {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(servers)
    })
    .await
    .map_err(|e| Error::Sandbox(format!("demo application failed: {e}")))??;
    // Settle delay, the first read and the confirmation's re-reads.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_watch.send(Some("the end of the demo".into()));
    let summary = watching
        .await
        .map_err(|e| Error::Sandbox(format!("the watch failed: {e}")))?;
    let _ = tokio::task::spawn_blocking(move || drop(servers)).await;
    let summary = summary?;
    eprintln!(
        "blobcheck demo --watch: servers stopped and removed; {} events read, {} touched ids judged, {} findings (the application injected 6)",
        summary.events, summary.judged, summary.findings
    );
    Ok(summary.findings)
}

/// The labels of a run's series: a partition's carry it.
fn metric_labels(partition: Option<Partition>) -> Vec<(String, String)> {
    partition
        .map(|p| vec![("partition".to_owned(), p.to_string())])
        .unwrap_or_default()
}

/// The metrics file of a run: `complete` is its summary if it got to its
/// end.
fn write_metrics(
    path: &Path,
    labels: &[(String, String)],
    complete: Option<&Summary>,
    finished_at: std::time::SystemTime,
) -> Result<()> {
    metrics::write(
        path,
        RunMetrics {
            summary: complete,
            success: complete.is_some(),
            finished_at,
            last_success: None,
            labels,
        },
    )
}

/// The run's metrics to the Pushgateway: a complete run replaces its
/// group, a failed one updates only its `blobcheck_last_run_*` series (the
/// last success's stay). The labels are the group's, not the body's.
async fn push_metrics(
    target: pushgateway::Target,
    complete: Option<&Summary>,
    finished_at: std::time::SystemTime,
    progress: RunProgress,
) -> Result<()> {
    let body = metrics::render(&RunMetrics {
        summary: complete,
        success: complete.is_some(),
        finished_at,
        last_success: None,
        labels: &[],
    }) + &metrics::render_progress(progress);
    let mode = if complete.is_some() {
        pushgateway::Mode::Replace
    } else {
        pushgateway::Mode::Update
    };
    tokio::task::spawn_blocking(move || target.push(&body, mode, pushgateway::ATTEMPTS))
        .await
        .map_err(|e| Error::Output {
            path: "metrics push".into(),
            reason: e.to_string(),
        })?
}

/// How often a running check pushes how far it is.
const PROGRESS_PUSH_INTERVAL: Duration = Duration::from_secs(30);

/// The progress a running check pushes, at its start and every
/// [`PROGRESS_PUSH_INTERVAL`]: one try each (the next one comes soon), a
/// warning at the first failure of a run of them.
struct ProgressPushes {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressPushes {
    fn start(
        target: pushgateway::Target,
        started_at: std::time::SystemTime,
        live: std::sync::Arc<LiveProgress>,
    ) -> ProgressPushes {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut failing = false;
            loop {
                let body = metrics::render_progress(RunProgress {
                    running: true,
                    started_at,
                    fraction: live.fraction(),
                    rows: live.rows(),
                });
                let target = target.clone();
                let pushed = tokio::task::spawn_blocking(move || {
                    target.push(&body, pushgateway::Mode::Update, 1)
                })
                .await;
                match pushed {
                    Ok(Err(e)) if !failing => {
                        tracing::warn!("{e} (progress; the run goes on)");
                        failing = true;
                    }
                    Ok(Ok(())) => failing = false,
                    _ => {}
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(PROGRESS_PUSH_INTERVAL) => {}
                }
            }
        });
        ProgressPushes { stop, task }
    }

    /// Stops the pushes, waiting for one in flight.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// How long a stop request may take to be carried out by the check itself
/// (it saves its checkpoint and prints its summary) before the process
/// gives up on it: a read stuck on a server that does not answer.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the check; if a stop is asked for and the check has not ended
/// `STOP_GRACE` later, gives up on it as interrupted (its last periodic
/// checkpoint stays for `--resume`).
async fn finish_or_give_up(
    run: impl std::future::Future<Output = Result<Summary>>,
    mut stop: StopRequest,
) -> Result<Summary> {
    let give_up = async {
        let signal = stop.requested().await;
        tokio::time::sleep(STOP_GRACE).await;
        tracing::error!(
            "the check did not stop within {} s of {signal} (a server not answering?): giving up",
            STOP_GRACE.as_secs()
        );
        signal
    };
    tokio::select! {
        result = run => result,
        signal = give_up => Err(Error::Abandoned { signal }),
    }
}

/// The flags of `watch`, as given.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Output format of the findings (as `check`'s), each written and flushed as soon as it is confirmed.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Append findings to FILE instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Keep each server's log position and the ids still waiting in FILE (written atomically every few seconds and at shutdown); a restart resumes from it and misses no change.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Serve /metrics (Prometheus) and /healthz on ADDR, e.g. 127.0.0.1:9187.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The server id the watch registers with as a replica: one no server or replica of the followed servers uses.
    #[arg(long, value_name = "N", default_value_t = crate::db::binlog::DEFAULT_REPLICATION_SERVER_ID, value_parser = clap::value_parser!(u32).range(1..))]
    pub server_id: u32,
    /// Touched ids held in memory at most; past it they are folded into id ranges, scanned in chunks.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_waiting: u64,
    /// /healthz answers 503 when a stream is more than SECS behind its server's log.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub max_behind: u64,
    #[command(flatten)]
    pub settings: Overrides,
}

/// How often the watch saves its state file.
const STATE_INTERVAL: Duration = Duration::from_secs(3);

impl WatchArgs {
    /// The watch's options, decided once from the configuration's `[check]`
    /// settings and these flags.
    pub fn watch_options(
        &self,
        config: &Config,
        config_path: Option<&Path>,
        stop: StopRequest,
    ) -> Result<crate::watch::WatchOptions> {
        let settings = config
            .check
            .overridden(&self.settings)
            .map_err(Error::Usage)?;
        Ok(crate::watch::WatchOptions {
            confirm: settings.confirm_options(),
            scan: settings.scan_options(),
            throttle: settings.throttle_options(),
            retry_for: settings.retry_for(),
            max_connections_per_server: settings.max_connections_per_server,
            affected_rows: settings.affected_rows,
            max_waiting: self.max_waiting as usize,
            state: self.state.clone(),
            state_interval: STATE_INTERVAL,
            listen: self.listen,
            replication_server_id: self.server_id,
            max_behind: Duration::from_secs(self.max_behind),
            config_path: config_path.map(Path::to_path_buf),
            stop: Some(stop),
        })
    }
}

/// `watch`: follows every server's binary log until a signal, then saves
/// the state. Returns the number of findings reported.
pub async fn watch(
    config: &Config,
    config_path: Option<&Path>,
    args: &WatchArgs,
    stop: StopRequest,
) -> Result<u64> {
    let options = args.watch_options(config, config_path, stop)?;
    let files: Vec<(&'static str, &Path)> = [
        ("--config", config_path),
        ("--output", args.output.as_deref()),
        ("--state", args.state.as_deref()),
    ]
    .into_iter()
    .filter_map(|(option, path)| path.map(|path| (option, path)))
    .collect();
    crate::paths::refuse_collisions(&files)?;
    let out: Box<dyn Write + Send> = match &args.output {
        // Appended to: a restarted watch keeps what it found before.
        Some(path) => Box::new(whole_lines(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::Output {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
        )),
        None => Box::new(whole_lines(std::io::stdout())),
    };
    let reporter = Reporter::new(args.format, out, Vec::new());
    let summary = crate::watch::run(config, &options, reporter).await?;
    tracing::info!(
        "watch stopped after {:.0} s: {} events, {} touched ids, {} judged, {} findings",
        summary.seconds,
        summary.events,
        summary.touched,
        summary.judged,
        summary.findings
    );
    Ok(summary.findings)
}

/// `doctor`: every readiness check, reported on stdout. Ready is a success;
/// not ready an error that points at the report.
pub async fn doctor(config: &Config, watch: bool) -> Result<()> {
    let ready = {
        let mut out = std::io::stdout().lock();
        crate::doctor::run_for(config, &mut out, watch).await
    }?;
    if ready {
        Ok(())
    } else {
        Err(Error::Usage("not ready: see the FAIL lines above".into()))
    }
}

/// `repair-sql`: the guarded statements for the findings in `findings`,
/// written to `output` (stdout when none), and a count of them on stderr
/// unless `quiet`.
pub async fn repair_sql(
    config: &Config,
    config_path: &Path,
    findings: &Path,
    output: Option<&Path>,
    quiet: bool,
) -> Result<()> {
    if let Some(output) = output {
        crate::paths::refuse_collisions(&[
            ("--config", config_path),
            ("--findings", findings),
            ("--output", output),
        ])?;
    }
    // Whole lines: a plan cut short by a kill ends with a whole statement.
    let mut out = open_output(output, Lines::Whole)?;
    let stats = crate::repair::run(config, findings, &mut out).await?;
    out.flush().map_err(|e| Error::Output {
        path: output.map_or("stdout".into(), |p| p.display().to_string()),
        reason: e.to_string(),
    })?;
    if !quiet {
        eprintln!(
            "blobcheck repair-sql: {} guarded UPDATE statements, {} missing blobs (no automatic fix), {} changed since the check, {} resolved",
            stats.statements, stats.missing, stats.changed, stats.resolved
        );
    }
    Ok(())
}

/// How an output is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// In blocks: `check`'s findings, where a line cut by a kill is one a
    /// reader (`repair-sql`) refuses.
    Blocks,
    /// Whole lines: every write the system sees ends at a line end. A
    /// repair plan cut short by a kill then ends with a whole guarded
    /// statement, never with an UPDATE cut before its guard (`mysql` runs a
    /// last statement even without its `;`).
    Whole,
}

/// Room for the longest line of a repair plan (a few hundred bytes: names
/// are at most 64 characters) many times over: a line longer than this
/// could reach the system in pieces.
const WHOLE_LINE_CAPACITY: usize = 64 * 1024;

/// `inner` written to in whole lines only (see [`Lines::Whole`]).
fn whole_lines<W: Write>(inner: W) -> std::io::LineWriter<W> {
    std::io::LineWriter::with_capacity(WHOLE_LINE_CAPACITY, inner)
}

/// FILE, or stdout when none is given, buffered as `lines` says. FILE is
/// opened at once (so that one that cannot be written is named before
/// anything is read) but emptied only when the run first writes to it: a
/// run that fails before it reports anything leaves the previous run's
/// findings in place.
fn open_output(path: Option<&Path>, lines: Lines) -> Result<Box<dyn Write + Send>> {
    fn buffered<W: Write + Send + 'static>(inner: W, lines: Lines) -> Box<dyn Write + Send> {
        match lines {
            Lines::Blocks => Box::new(std::io::BufWriter::new(inner)),
            Lines::Whole => Box::new(whole_lines(inner)),
        }
    }
    Ok(match path {
        Some(path) => {
            // `/dev/stdout` and the like name a stream the caller opened
            // (perhaps `>> app.log`): appended to, never emptied.
            let stream = path.starts_with("/dev") || path.starts_with("/proc");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .append(stream)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::Output {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            buffered(
                EmptiedOnFirstWrite {
                    file,
                    emptied: stream,
                },
                lines,
            )
        }
        None => buffered(std::io::stdout(), lines),
    })
}

/// A file emptied on the first write or flush, not when it is opened.
struct EmptiedOnFirstWrite {
    file: std::fs::File,
    emptied: bool,
}

impl EmptiedOnFirstWrite {
    fn empty_once(&mut self) -> std::io::Result<()> {
        if !self.emptied {
            // A pipe or a device cannot be emptied; it holds nothing old.
            if self.file.metadata()?.is_file() {
                self.file.set_len(0)?;
            }
            self.emptied = true;
        }
        Ok(())
    }
}

impl Write for EmptiedOnFirstWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.empty_once()?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.empty_once()?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every write call it is given, as given.
    #[derive(Default)]
    struct Recorded(Vec<Vec<u8>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes a small plan piece by piece, as the repair writers do
    /// (`write!` then `writeln!`), and returns the plan.
    fn write_plan(out: &mut impl Write) -> String {
        let mut plan = String::new();
        for blob in [7u64, u64::MAX, 1 << 63] {
            let set = format!(
                "UPDATE `ProtonMailGlobal`.`BlobStorage` SET `NumReferences` = {} ",
                blob % 5
            );
            let guard = format!("WHERE `BlobStorageID` = {blob} AND `NumReferences` = 0;");
            write!(out, "{set}").unwrap();
            writeln!(out, "{guard}").unwrap();
            plan.push_str(&format!("{set}{guard}\n"));
        }
        writeln!(out, "-- summary: 3 UPDATE statements").unwrap();
        plan.push_str("-- summary: 3 UPDATE statements\n");
        out.flush().unwrap();
        plan
    }

    /// Whether every write ends at a line end (a kill between two writes
    /// leaves whole lines) and together they are `plan`.
    fn whole(writes: &[Vec<u8>], plan: &str) -> bool {
        writes.concat() == plan.as_bytes() && writes.iter().all(|w| w.ends_with(b"\n"))
    }

    /// A repair plan reaches the system in whole lines only; block
    /// buffering, as `check`'s findings use, would cut them.
    #[test]
    fn whole_lines_reach_the_system_only_at_line_ends() {
        let mut out = whole_lines(Recorded::default());
        let plan = write_plan(&mut out);
        let writes = out.into_inner().map_err(|_| ()).unwrap().0;
        assert!(whole(&writes, &plan), "{writes:?}");

        // The same plan through a small block buffer: some write ends
        // inside a statement.
        let mut blocks = std::io::BufWriter::with_capacity(64, Recorded::default());
        let plan = write_plan(&mut blocks);
        let writes = blocks.into_inner().map_err(|_| ()).unwrap().0;
        assert!(!whole(&writes, &plan), "{writes:?}");
    }
}
