//! The command line: parses arguments, hands each command over to the
//! library (`blobcheck::command`), and maps what it returns to an exit
//! status. The process's own concerns stay here: the panic hook, the log
//! subscriber, the runtime, and the signals that stop a run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use blobcheck::check;
use blobcheck::command::{self, CheckArgs, WatchArgs};
use blobcheck::config::Config;
use blobcheck::error::Error;
use blobcheck::{EXIT_CONSISTENT, EXIT_ERROR, EXIT_FINDINGS, EXIT_INTERRUPTED};

#[derive(Parser)]
#[command(
    name = "blobcheck",
    version = blobcheck::VERSION,
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
    /// Follow every server's binary log and judge each blob a change touches, seconds after the change; runs until SIGTERM or SIGINT, then saves its state and exits 0.
    Watch {
        /// The TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        args: WatchArgs,
    },
    /// Start two throwaway MariaDB servers, load the bundled fixtures, check them, clean up.
    Demo {
        /// Instead of a check: start the servers with binary logs, follow them with `watch`, play a short application with one bug of each kind, and print each finding as it is detected.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        args: CheckArgs,
    },
    /// Check that every server, table, column and index is ready for a check, and say how to fix what is not (exit 0 ready, 2 not).
    Doctor {
        /// The TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Also check what `watch` needs of every server it follows: binary log settings, replication grants, server id.
        #[arg(long)]
        watch: bool,
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
    /// Write the manual pages (blobcheck.1 and one per command) into DIR, for packaging.
    #[command(hide = true)]
    Man {
        /// Where to write the pages; created if missing.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
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
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    runtime.block_on(command::report_unstarted_check(&args));
                    return Err(e);
                }
            };
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(command::check(&config, Some(&path), &args, quiet, stop))
        }
        Command::Watch { config: path, args } => {
            let config = Config::load(&path)?;
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(command::watch(&config, Some(&path), &args, stop))?;
            // Stopped by a signal, as a service is: a success.
            Ok(0)
        }
        Command::Demo { watch: true, .. } => {
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(command::demo_watch(stop))
        }
        Command::Demo { watch: false, args } => {
            let stop = stop_on_signals(&runtime)?;
            runtime.block_on(command::demo(&args, quiet, stop))
        }
        Command::Doctor { config, watch } => {
            let config = Config::load(&config)?;
            runtime.block_on(command::doctor(&config, watch))?;
            Ok(0)
        }
        Command::Man { dir } => {
            write_manual(&dir)?;
            Ok(0)
        }
        Command::RepairSql {
            config: config_path,
            findings,
            output,
        } => {
            let config = Config::load(&config_path)?;
            runtime.block_on(command::repair_sql(
                &config,
                &config_path,
                &findings,
                output.as_deref(),
                quiet,
            ))?;
            // Writing a plan is a success whatever it holds.
            Ok(0)
        }
    }
}

/// The manual pages of every command, from the same definitions as `--help`.
fn write_manual(dir: &std::path::Path) -> Result<(), Error> {
    use clap::CommandFactory;
    let failed = |e: std::io::Error| Error::Output {
        path: format!("manual pages in {}", dir.display()),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(failed)
}
