//! The command line: parses arguments and hands over to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use blobcheck::check::{self, CheckOptions, CheckpointOptions, Scope};
use blobcheck::config::Config;
use blobcheck::error::Error;
use blobcheck::metrics::{self, RunMetrics};
use blobcheck::plan::{IdRange, Partition};
use blobcheck::progress::ProgressMode;
use blobcheck::report::{Format, Reporter};
use blobcheck::{EXIT_CONSISTENT, EXIT_ERROR, EXIT_FINDINGS, EXIT_INTERRUPTED};

#[derive(Parser)]
#[command(
    name = "blobcheck",
    version,
    about = "Finds blob reference-count inconsistencies across MySQL/MariaDB servers",
    after_help = "Exit status: 0 consistent, 1 findings, 2 could not check."
)]
struct Cli {
    /// Only errors on stderr: no progress, no log lines.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log lines on stderr as text, or as JSON objects for log shippers.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Output format: a table for people, or one JSON object per finding per line.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write findings (and, in text format, the summary) to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Rows per batch of the first chunk; of every chunk with --chunk-time 0 [config: check.chunk_size; default 10000].
    #[arg(long, value_name = "ROWS")]
    chunk_size: Option<u64>,
    /// Target seconds per chunk; the chunk size adapts to it. 0 keeps --chunk-size fixed [config: check.chunk_time; default 0.5].
    #[arg(long, value_name = "SECONDS")]
    chunk_time: Option<f64>,
    /// Smallest adaptive chunk [config: check.min_chunk_size; default 1000].
    #[arg(long, value_name = "ROWS")]
    min_chunk_size: Option<u64>,
    /// Largest adaptive chunk; bounds memory [config: check.max_chunk_size; default 20000].
    #[arg(long, value_name = "ROWS")]
    max_chunk_size: Option<u64>,
    /// How chunks are checked: `exact` reads one row per id and table; `sketch` has the servers sum each chunk and reads exactly only the chunks the sums do not clear (see README) [config: check.method; default exact].
    #[arg(long, value_enum, value_name = "METHOD")]
    method: Option<blobcheck::config::Method>,
    /// With --method sketch: rows per sketched chunk [config: check.sketch_rows; default 8192].
    #[arg(long, value_name = "ROWS")]
    sketch_rows: Option<u64>,
    /// Chunks checked at once [config: check.jobs; default 4].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Seconds between the reads that confirm a candidate [config: check.settle_delay; default 3].
    #[arg(long, value_name = "SECONDS")]
    settle_delay: Option<f64>,
    /// Re-reads that must agree before a finding is reported; 0 reports single-pass candidates [config: check.confirmations; default 2].
    #[arg(long, value_name = "N")]
    confirmations: Option<u32>,
    /// Blobs with at least N references are re-read even when the scan saw them consistent, and need twice the agreeing reads [config: check.hot_threshold; default 100].
    #[arg(long, value_name = "N")]
    hot_threshold: Option<u64>,
    /// Pause while any server's replica lag exceeds SECONDS [config: check.max_lag; default: off].
    #[arg(long, value_name = "SECONDS")]
    max_lag: Option<f64>,
    /// Pause while any server runs more than N threads [config: check.max_threads_running; default: off].
    #[arg(long, value_name = "N")]
    max_threads_running: Option<u64>,
    /// Read at most N rows per second, over all servers [config: check.max_rows_per_second; default: off].
    #[arg(long, value_name = "N")]
    max_rows_per_second: Option<u64>,
    /// Seconds a failing query is retried before the check gives up [config: check.retry_for; default 300].
    #[arg(long, value_name = "SECONDS")]
    retry_for: Option<f64>,
    /// Connections opened to one server at most; reads beyond that wait for a turn [config: check.max_connections_per_server; default 10].
    #[arg(long, value_name = "N")]
    max_connections_per_server: Option<usize>,
    /// Rows listed per column for each missing blob or count too low; 0 lists none [config: check.affected_rows; default 10].
    #[arg(long, value_name = "N")]
    affected_rows: Option<u64>,
    /// Write Prometheus metrics of the run to FILE (atomically), for node_exporter's textfile collector; written on failure too.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Keep progress, pending candidates and findings in FILE (written atomically every few seconds).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Continue the run the checkpoint file describes (starts afresh if the file does not exist yet).
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    /// Check only the K-th (0-based) of N disjoint slices of the id space, so that N processes check everything once.
    #[arg(long, value_name = "K/N", conflicts_with = "range")]
    partition: Option<Partition>,
    /// Check only ids FIRST to LAST (inclusive), e.g. 0-1000000.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    range: Option<IdRange>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

fn parse_range(text: &str) -> Result<IdRange, String> {
    let bad = || format!("range `{text}` must be FIRST-LAST with FIRST <= LAST, e.g. 0-1000000");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    Ok(IdRange::new(first, last))
}

#[derive(Subcommand)]
enum Command {
    /// Check the databases a configuration file describes.
    Check {
        /// The TOML configuration (see examples/proton.toml).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        args: CheckArgs,
    },
    /// Start two throwaway MariaDB servers, load the bundled fixtures, check them, clean up.
    Demo {
        #[command(flatten)]
        args: CheckArgs,
    },
    /// Check that every server, table, column and index is ready for a check, and say how to fix what is not (exit 0 ready, 2 not).
    Doctor {
        /// The TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Re-verify the findings of a check and print guarded UPDATE statements for a person to review and run on the primary; runs nothing itself.
    RepairSql {
        /// The TOML configuration the check ran with.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The findings, as `check --format json` wrote them.
        #[arg(long, value_name = "FILE.jsonl")]
        findings: PathBuf,
        /// Write the plan to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // A bug must still end in one line and the "could not check" status,
    // never in a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("blobcheck: internal error: {message}");
        std::process::exit(EXIT_ERROR);
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let default_filter = if cli.quiet {
        "error"
    } else {
        "warn,blobcheck=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLOBCHECK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let quiet = cli.quiet;
    match run(cli.command, quiet) {
        Ok(0) => ExitCode::from(EXIT_CONSISTENT as u8),
        Ok(_) => ExitCode::from(EXIT_FINDINGS as u8),
        Err(e @ (Error::Interrupted { .. } | Error::Abandoned { .. })) => {
            eprintln!("blobcheck: {e}");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(e) => {
            eprintln!("blobcheck: error: {e}");
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

/// How long a stop request may take to be carried out by the check itself
/// (it saves its checkpoint and prints its summary) before the process
/// gives up on it: a read stuck on a server that does not answer.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the check; if a stop is asked for and the check has not ended
/// `STOP_GRACE` later, gives up on it as interrupted (its last periodic
/// checkpoint stays for `--resume`).
async fn finish_or_give_up(
    run: impl std::future::Future<Output = Result<blobcheck::report::Summary, Error>>,
    mut stop: check::StopRequest,
) -> Result<blobcheck::report::Summary, Error> {
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

/// The first SIGTERM or SIGINT asks the check to stop (it saves its
/// checkpoint, summary and metrics); a second one ends the process at once.
fn stop_on_signals(runtime: &tokio::runtime::Runtime) -> Result<check::StopRequest, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = runtime.enter();
    let listen =
        |kind| signal(kind).map_err(|e| Error::Usage(format!("cannot listen for signals: {e}")));
    let (mut terminate, mut interrupt) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
    );
    let (sender, stop) = check::StopRequest::channel();
    runtime.spawn(async move {
        let first = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        let _ = sender.send(Some(first.to_owned()));
        // A second signal: out at once, with the status a shell gives a
        // process the signal killed, since nothing more is written.
        let status = tokio::select! {
            _ = terminate.recv() => 128 + libc::SIGTERM,
            _ = interrupt.recv() => 128 + libc::SIGINT,
        };
        eprintln!("blobcheck: a second signal: exiting at once, nothing more written");
        std::process::exit(status);
    });
    Ok(stop)
}

/// `demo`'s settle delay unless one is given.
const DEMO_SETTLE_DELAY: f64 = 0.5;

/// Help and version go out as clap writes them; a usage error becomes one
/// line and the "could not check" status, like every other error.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            // clap's message may go on over several lines ("the following
            // required arguments were not provided:" and then the option):
            // everything before the usage, on one line.
            let text = error.to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:"))
                .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let message = if message.is_empty() {
                "invalid arguments"
            } else {
                message
            };
            eprintln!("blobcheck: error: {message} (see blobcheck --help)");
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

/// Runs the command; returns the number of findings.
fn run(command: Command, quiet: bool) -> Result<u64, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the runtime: {e}")))?;
    match command {
        Command::Check { config: path, args } => {
            let config = Config::load(&path)?;
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(check_with(&config, Some(&path), &args, quiet, stop))
        }
        Command::Demo { mut args } => {
            // Nothing writes to the fixtures, so confirmation needs no long
            // wait; the reads are the same as in production.
            args.settle_delay.get_or_insert(DEMO_SETTLE_DELAY);
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(blobcheck::demo::run(async |config| {
                check_with(config, None, &args, quiet, stop).await
            }))
        }
        Command::Doctor { config } => {
            let config = Config::load(&config)?;
            let ready = runtime.block_on(async {
                let mut out = std::io::stdout().lock();
                blobcheck::doctor::run(&config, &mut out).await
            })?;
            if ready {
                Ok(0)
            } else {
                Err(Error::Usage("not ready: see the FAIL lines above".into()))
            }
        }
        Command::RepairSql {
            config: config_path,
            findings,
            output,
        } => {
            let config = Config::load(&config_path)?;
            if let Some(output) = &output {
                blobcheck::paths::refuse_collisions(&[
                    ("--config", &config_path),
                    ("--findings", &findings),
                    ("--output", output),
                ])?;
            }
            let mut out = open_output(output.as_deref())?;
            let stats = runtime.block_on(blobcheck::repair::run(&config, &findings, &mut out))?;
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
            // Writing a plan is a success whatever it holds.
            Ok(0)
        }
    }
}

/// FILE, or stdout when none is given, buffered. FILE is opened at once
/// (so that one that cannot be written is named before anything is read)
/// but emptied only when the run first writes to it: a run that fails
/// before it reports anything leaves the previous run's findings in place.
fn open_output(path: Option<&std::path::Path>) -> Result<Box<dyn std::io::Write + Send>, Error> {
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
            Box::new(std::io::BufWriter::new(EmptiedOnFirstWrite {
                file,
                emptied: stream,
            }))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
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

impl std::io::Write for EmptiedOnFirstWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.empty_once()?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.empty_once()?;
        self.file.flush()
    }
}

async fn check_with(
    config: &Config,
    config_path: Option<&std::path::Path>,
    args: &CheckArgs,
    quiet: bool,
    stop: check::StopRequest,
) -> Result<u64, Error> {
    let mut settings = config.check.clone();
    settings.chunk_size = args.chunk_size.unwrap_or(settings.chunk_size);
    settings.jobs = args.jobs.unwrap_or(settings.jobs);
    settings.chunk_time = args.chunk_time.unwrap_or(settings.chunk_time);
    settings.min_chunk_size = args.min_chunk_size.unwrap_or(settings.min_chunk_size);
    settings.max_chunk_size = args.max_chunk_size.unwrap_or(settings.max_chunk_size);
    settings.settle_delay = args.settle_delay.unwrap_or(settings.settle_delay);
    settings.confirmations = args.confirmations.unwrap_or(settings.confirmations);
    settings.hot_threshold = args.hot_threshold.unwrap_or(settings.hot_threshold);
    settings.max_lag = args.max_lag.or(settings.max_lag);
    settings.max_threads_running = args.max_threads_running.or(settings.max_threads_running);
    settings.max_rows_per_second = args.max_rows_per_second.or(settings.max_rows_per_second);
    settings.retry_for = args.retry_for.unwrap_or(settings.retry_for);
    settings.affected_rows = args.affected_rows.unwrap_or(settings.affected_rows);
    settings.max_connections_per_server = args
        .max_connections_per_server
        .unwrap_or(settings.max_connections_per_server);
    settings.method = args.method.unwrap_or(settings.method);
    settings.sketch_rows = args.sketch_rows.unwrap_or(settings.sketch_rows);
    settings.validate().map_err(Error::Usage)?;
    let files: Vec<(&str, &std::path::Path)> = [
        ("--config", config_path),
        ("--output", args.output.as_deref()),
        ("--checkpoint", args.checkpoint.as_deref()),
        ("--metrics-file", args.metrics_file.as_deref()),
    ]
    .into_iter()
    .filter_map(|(option, path)| path.map(|path| (option, path)))
    .collect();
    blobcheck::paths::refuse_collisions(&files)?;

    let out = open_output(args.output.as_deref())?;
    let labels = config.references.iter().map(|r| r.label.clone()).collect();
    let reporter = Reporter::new(args.format, out, labels);
    let scope = match (args.partition, args.range) {
        (Some(partition), _) => Scope::Partition(partition),
        (None, Some(range)) => Scope::Range(range),
        (None, None) => Scope::Range(IdRange::ALL),
    };
    let options = CheckOptions {
        scope,
        scan: settings.scan_options(),
        confirm: settings.confirm_options(),
        throttle: settings.throttle_options(),
        checkpoint: args.checkpoint.clone().map(|path| CheckpointOptions {
            path,
            resume: args.resume,
            interval: std::time::Duration::from_secs(2),
        }),
        progress: if quiet {
            ProgressMode::None
        } else {
            args.progress
        },
        retry_for: settings.retry_for(),
        max_connections_per_server: settings.max_connections_per_server,
        affected_rows: settings.affected_rows,
        protocol: blobcheck::db::Protocol::from_env(),
        stop: Some(stop.clone()),
    };
    let result = finish_or_give_up(check::run(config, &options, reporter), stop).await;
    // Only a run that got to its end counts as one: an interrupted run's
    // counts are partial, and published they would resolve the alerts of
    // the last complete run.
    let complete = result.as_ref().ok().filter(|s| s.interrupted.is_none());
    if let Some(path) = &args.metrics_file {
        let labels: Vec<(String, String)> = args
            .partition
            .map(|p| vec![("partition".to_owned(), p.to_string())])
            .unwrap_or_default();
        let written = metrics::write(
            path,
            RunMetrics {
                summary: complete,
                success: complete.is_some(),
                finished_at: std::time::SystemTime::now(),
                last_success: None,
                labels: &labels,
            },
        );
        if let Err(e) = written {
            // The check's own outcome matters more than the metrics'.
            if complete.is_some() {
                return Err(e);
            }
            tracing::error!("{e}");
        }
    }
    let summary = result?;
    match summary.interrupted {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(summary.findings.total),
    }
}
