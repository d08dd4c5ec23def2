//! Watch benchmark: churn on two servers with binary logs, a fault injected
//! every few seconds, and `blobcheck watch` (the binary, as a process)
//! following them. Measures the detection latency of each fault (from its
//! commit to its finding line in the output file), false findings, the
//! churn's rate, and the watch's CPU time and resident memory over the run.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench watch -- --blobs 100000 --seconds 120 [--settle-delay 3] \
//!     [--confirmations 2] [--fault-every-ms 2000] [--writers 12] [--blobcheck PATH] \
//!     [--replicas DELAY_SECS] [--bulk-delete N] [--max-waiting N]
//! ```
//!
//! Not a timed test: without arguments (as `cargo test --benches` runs it)
//! it only prints how to run it. Results go to BENCHMARKS.md.

#[path = "../tests/churn_support/mod.rs"]
mod churn_support;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/watch_support/mod.rs"]
mod watch_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use churn_support::{Dataset, WriterOptions, Writers, blocking};
use watch_support::{FAULT_BASE, Faults, Pair, logged_pair};

struct Args {
    blobs: usize,
    seconds: u64,
    settle: String,
    confirmations: String,
    fault_every: Duration,
    writers: usize,
    binary: std::path::PathBuf,
    /// Follow replicas, the shard's this many seconds behind.
    replicas: Option<u64>,
    /// Then delete this many references at once (counts left as they are).
    bulk: u64,
    max_waiting: String,
}

fn parse() -> Option<Args> {
    let raw: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if raw.is_empty() {
        return None;
    }
    let value = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1).cloned())
    };
    let default_binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("blobcheck")))
        .unwrap_or_default();
    Some(Args {
        blobs: value("--blobs").map_or(100_000, |v| v.parse().unwrap()),
        seconds: value("--seconds").map_or(120, |v| v.parse().unwrap()),
        settle: value("--settle-delay").unwrap_or_else(|| "3".into()),
        confirmations: value("--confirmations").unwrap_or_else(|| "2".into()),
        fault_every: Duration::from_millis(
            value("--fault-every-ms").map_or(2_000, |v| v.parse().unwrap()),
        ),
        writers: value("--writers").map_or(12, |v| v.parse().unwrap()),
        binary: value("--blobcheck").map_or(default_binary, Into::into),
        replicas: value("--replicas").map(|v| v.parse().unwrap()),
        bulk: value("--bulk-delete").map_or(0, |v| v.parse().unwrap()),
        max_waiting: value("--max-waiting").unwrap_or_else(|| "100000".into()),
    })
}

/// (resident kB, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (rss, cpu)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(args) = parse() else {
        println!(
            "watch benchmark: cargo bench --bench watch -- --blobs 100000 --seconds 120 (see benches/watch.rs)"
        );
        return;
    };
    let data = Arc::new(Dataset::generate("wbench", 7, args.blobs, 20, 300, false));
    let (global_sql, shard_sql) = (data.global_sql(), data.shard_sql());
    let t = Instant::now();
    // (write URLs, watched URLs, the servers kept alive)
    let (write, watched, _servers): ((String, String), (String, String), Box<dyn std::any::Any>) =
        match args.replicas {
            None => {
                let (global, shard) = blocking(|| logged_pair("wbench")).await;
                let (global, shard) = blocking(move || {
                    global.run_sql(&global_sql).unwrap();
                    shard.run_sql(&shard_sql).unwrap();
                    (global, shard)
                })
                .await;
                let urls = (global.root_url(), shard.root_url());
                (urls.clone(), urls, Box::new((global, shard)))
            }
            Some(delay) => {
                let shard =
                    tokio::task::spawn_blocking(move || Pair::start("wbench_shard", 43, delay));
                let global = blocking(|| Pair::start("wbench_global", 41, 0)).await;
                let shard = shard.await.unwrap();
                let (global, shard) = blocking(move || {
                    global.primary.run_sql(&global_sql).unwrap();
                    shard.primary.run_sql(&shard_sql).unwrap();
                    global.wait_caught_up();
                    shard.wait_caught_up();
                    (global, shard)
                })
                .await;
                (
                    (global.primary.root_url(), shard.primary.root_url()),
                    (global.replica.root_url(), shard.replica.root_url()),
                    Box::new((global, shard)),
                )
            }
        };
    println!(
        "{} blobs loaded in {:.1} s{}",
        data.blobs.len(),
        t.elapsed().as_secs_f64(),
        args.replicas
            .map(|d| format!("; the watch follows replicas, the shard's {d} s behind"))
            .unwrap_or_default()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watch.toml");
    std::fs::write(&config, data.config_text(&watched.0, &watched.1)).unwrap();
    let output = dir.path().join("found.jsonl");
    let mut watch = std::process::Command::new(&args.binary)
        .args(["watch", "--config"])
        .arg(&config)
        .args(["--format", "json", "--output"])
        .arg(&output)
        .args([
            "--settle-delay",
            &args.settle,
            "--confirmations",
            &args.confirmations,
            "--max-waiting",
            &args.max_waiting,
        ])
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("blobcheck watch starts");
    let pid = watch.id();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let writers = Writers::start(
        Arc::new(data.app()),
        &write.0,
        &write.1,
        WriterOptions {
            writers: args.writers,
            ..WriterOptions::default()
        },
    )
    .await;
    let mut faults = Faults::new(
        &write.0,
        &write.1,
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    let started = Instant::now();
    let mut seen_at: HashMap<u64, Instant> = HashMap::new();
    let mut rss = Vec::new();
    let (_, cpu_start) = usage(pid);
    let mut next_fault = Instant::now();
    let mut n = 0;
    let poll = |seen_at: &mut HashMap<u64, Instant>| {
        for f in common::read_findings(&output) {
            seen_at.entry(f.blob_id).or_insert_with(Instant::now);
        }
    };
    while started.elapsed() < Duration::from_secs(args.seconds) {
        if Instant::now() >= next_fault {
            faults.inject(n).await;
            n += 1;
            next_fault += args.fault_every;
        }
        poll(&mut seen_at);
        if rss.len() < started.elapsed().as_secs() as usize + 1 {
            rss.push(usage(pid).0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cpu_churn) = usage(pid);
    let churn = writers.stop().await;
    if args.bulk > 0 {
        bulk_delete(&write, &data, args.bulk, pid, &output).await;
    }
    let deadline = Instant::now() + Duration::from_secs(if args.bulk > 0 { 300 } else { 60 });
    while Instant::now() < deadline {
        poll(&mut seen_at);
        let bulk_seen = seen_at.keys().filter(|&&id| id > BULK_BASE).count() as u64;
        if faults
            .committed
            .iter()
            .all(|(id, _)| seen_at.contains_key(id))
            && bulk_seen >= args.bulk
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cpu_end) = usage(pid);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = watch.wait().unwrap();

    let mut latencies: Vec<f64> = faults
        .committed
        .iter()
        .filter_map(|(id, at)| {
            seen_at
                .get(id)
                .map(|seen| seen.duration_since(*at).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let found = common::read_findings(&output);
    // The bulk delete's orphans are expected too: stored 1, actual 0.
    let bulk = |f: &common::Exact| {
        f.blob_id > BULK_BASE
            && f.blob_id <= BULK_BASE + args.bulk
            && f.kind == "orphan_blob"
            && f.stored == Some(1)
            && f.actual == 0
    };
    let bulk_found = found.iter().filter(|f| bulk(f)).count();
    let false_findings: Vec<&common::Exact> = found
        .iter()
        .filter(|f| !bulk(f) && !faults.expected.iter().any(|e| watch_support::same(f, e)))
        .collect();
    if args.bulk > 0 {
        println!(
            "bulk delete: {} orphans expected, {bulk_found} found",
            args.bulk
        );
    }
    let missed = faults.expected.len() - latencies.len();
    let churn_seconds = args.seconds as f64;
    println!("churn: {churn}");
    println!(
        "faults injected {}, found {}, missed {missed}, false findings {}",
        faults.expected.len(),
        latencies.len(),
        false_findings.len()
    );
    println!(
        "detection latency (commit to finding line): p50 {:.2} s, p99 {:.2} s, max {:.2} s (settle {} s, {} confirmations)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        args.settle,
        args.confirmations
    );
    let ops = writers_ops(&churn);
    println!(
        "watch CPU: {:.2} s over {churn_seconds:.0} s of churn ({:.3} s per 1,000 operations), {:.2} s in all",
        cpu_churn - cpu_start,
        (cpu_churn - cpu_start) / (ops / 1_000.0),
        cpu_end - cpu_start
    );
    let first = rss.first().copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let max = rss.iter().copied().max().unwrap_or(0);
    println!(
        "watch RSS: first {:.1} MB, last {:.1} MB, max {:.1} MB ({} samples)",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        max as f64 / 1024.0,
        rss.len()
    );
    println!("watch exit status: {:?}", status.code());
    for f in false_findings.iter().take(10) {
        println!("FALSE: {f:?}");
    }
    faults.close().await;
}

/// Lines in the findings file.
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Blob ids of the bulk delete's blobs: above this.
const BULK_BASE: u64 = 1 << 53;

/// The operation count from `Writers::stop`'s line.
fn writers_ops(line: &str) -> f64 {
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1.0)
}

/// Creates `n` blobs with one reference each, then deletes every reference
/// in one statement without touching the counts (`n` orphans), and watches
/// the watch's memory until it has reported them all.
async fn bulk_delete(
    write: &(String, String),
    data: &Dataset,
    n: u64,
    pid: u32,
    output: &std::path::Path,
) {
    use mysql_async::prelude::Queryable;
    let base = BULK_BASE;
    let global = mysql_async::Pool::new(mysql_async::Opts::from_url(&write.0).unwrap());
    let shard = mysql_async::Pool::new(mysql_async::Opts::from_url(&write.1).unwrap());
    for chunk in (1..=n).collect::<Vec<u64>>().chunks(10_000) {
        let blobs: Vec<String> = chunk
            .iter()
            .map(|i| format!("({},1,1)", base + i))
            .collect();
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| format!("({},0,{})", (1u64 << 47) + i, base + i))
            .collect();
        let mut g = global.get_conn().await.unwrap();
        g.query_drop(format!(
            "INSERT INTO `{}`.BlobStorage (BlobStorageID, NumReferences, Size) VALUES {}",
            data.global_db,
            blobs.join(",")
        ))
        .await
        .unwrap();
        let mut s = shard.get_conn().await.unwrap();
        s.query_drop(format!(
            "INSERT INTO `{}`.Attachment (AttachmentID, MessageID, BlobStorageID) VALUES {}",
            data.shard_db,
            rows.join(",")
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = usage(pid).0;
    let t = Instant::now();
    let mut s = shard.get_conn().await.unwrap();
    s.query_drop(format!(
        "DELETE FROM `{}`.Attachment WHERE AttachmentID > {}",
        data.shard_db,
        1u64 << 47
    ))
    .await
    .unwrap();
    println!(
        "bulk delete of {n} references in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut max = before;
    let t = Instant::now();
    let mut last_count = Instant::now();
    let lines_before = lines_in(output);
    while t.elapsed() < Duration::from_secs(300) {
        max = max.max(usage(pid).0);
        if last_count.elapsed() > Duration::from_secs(2) {
            last_count = Instant::now();
            if lines_in(output) >= lines_before + n as usize {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "bulk delete: {} findings written {:.1} s after the delete; watch RSS {:.1} MB before, {:.1} MB at most until then",
        lines_in(output) - lines_before,
        t.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        max as f64 / 1024.0
    );
}
