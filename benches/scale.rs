//! Scale benchmark: generates mail-like blob data with injected faults, loads
//! it into throwaway MariaDB servers, and measures `blobcheck check` against
//! the floor (index-only scans of every index the check reads) and against
//! the single `LEFT JOIN … GROUP BY` query.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench scale -- --blobs 1000000 [--shards 1] [--seed 1] [--runs 3] \
//!     [--single-query-max 2000000] [--keep] [-- <extra blobcheck args>]
//! ```
//!
//! Run `cargo bench --bench scale -- --help` for every option, and see
//! BENCHMARKS.md for what it measures and the results. Not a timed test:
//! nothing here runs under `cargo test` (run without arguments, as
//! `cargo test --benches` does, it only prints how to run it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use blobcheck::demo::{CHECKER_PASSWORD, CHECKER_USER, create_checker_sql};
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Command line

const USAGE: &str = "\
usage: cargo bench --bench scale -- [options] [-- <extra blobcheck args>]

  --blobs N               blobs to generate (default 1000000)
  --shards S              mail shards, one server each (default 1)
  --seed X                RNG seed (default 1)
  --runs R                blobcheck runs per setting (default 3)
  --setting \"ARGS\"        a blobcheck setting to time (repeatable; replaces the
                          defaults \"--jobs 1 --chunk-size 10000\", \"--jobs 2 --chunk-size 10000\",
                          \"--jobs 4 --chunk-size 10000\", \"--jobs 4 --chunk-size 1000\")
                          A setting \"partitions=N ARGS\" runs N processes at once with
                          --partition K/N (as deploy/kubernetes/check-cronjob.yaml does) and checks
                          their outputs, merged by blob id, against the ground truth (and reports the balance);
                          leading NAME=VALUE tokens set environment variables, e.g.
                          \"BLOBCHECK_PROTOCOL=binary --jobs 4\".
  --common \"ARGS\"         args added to every setting (e.g. \"--confirmations 0\")
  --single-query-max N    time the single LEFT JOIN query only when blobs <= N (default 2000000)
  --single-query-timeout S  its timeout in seconds (default 1800)
  --buffer-pool SIZE[,SHARD_SIZE]
                          innodb_buffer_pool_size per server, or for the global server and
                          for each shard (default: from the data size)
  --cold-buffer-pool SIZE after the warm runs, shrink every server's buffer pool to SIZE
                          (smaller than the data: each pass reads from disk) and time the
                          floor and every setting again, reported as the cold runs
  --blobcheck PATH        the binary to time (default: target/release/blobcheck next to this bench)
  --workdir DIR           where to write the generated files (default: a new dir under /tmp)
  --keep                  keep the generated files (and, on a terminal, the servers until Enter)
  --hold SECS             after the blobcheck runs, keep the servers up SECS seconds (for perf, top, ...)
  --quiet-wait SECS       before each timed run, wait up to SECS for the machine to be idle
                          (other processes < 0.15 cores; default 60, 0 = do not wait)
  --no-floor-check        do not fail when EXPLAIN shows a floor query not using its index
  -- ARGS...              one more setting: these args are passed to blobcheck
";

struct Args {
    blobs: u64,
    shards: usize,
    seed: u64,
    runs: usize,
    settings: Vec<Vec<String>>,
    common: Vec<String>,
    single_query_max: u64,
    single_query_timeout: u64,
    /// (global server, each shard).
    buffer_pool: Option<(String, String)>,
    cold_buffer_pool: Option<String>,
    blobcheck: Option<PathBuf>,
    workdir: Option<PathBuf>,
    keep: bool,
    hold: u64,
    quiet_wait: u64,
    floor_check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends `--bench` to a harness = false binary's arguments.
    if raw.last().map(String::as_str) == Some("--bench") {
        raw.pop();
    }
    let mut args = Args {
        blobs: 1_000_000,
        shards: 1,
        seed: 1,
        runs: 3,
        settings: Vec::new(),
        common: Vec::new(),
        single_query_max: 2_000_000,
        single_query_timeout: 1800,
        buffer_pool: None,
        cold_buffer_pool: None,
        blobcheck: None,
        workdir: None,
        keep: false,
        hold: 0,
        quiet_wait: 60,
        floor_check: true,
    };
    let mut extra: Option<Vec<String>> = None;
    let mut it = raw.into_iter();
    fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        it.next().ok_or_else(|| format!("{flag} needs a value"))
    }
    fn number<T: std::str::FromStr>(text: String, flag: &str) -> Result<T, String> {
        let clean: String = text.chars().filter(|c| *c != '_').collect();
        // Accept 1e6-style numbers too.
        if let Some((m, e)) = clean.split_once(['e', 'E'])
            && let (Ok(m), Ok(e)) = (m.parse::<u64>(), e.parse::<u32>())
            && let Some(v) = 10u64.checked_pow(e).and_then(|p| p.checked_mul(m))
            && let Ok(v) = v.to_string().parse::<T>()
        {
            return Ok(v);
        }
        clean
            .parse::<T>()
            .map_err(|_| format!("{flag}: `{text}` is not a valid number"))
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--blobs" => args.blobs = number(value(&mut it, &a)?, &a)?,
            "--shards" => args.shards = number(value(&mut it, &a)?, &a)?,
            "--seed" => args.seed = number(value(&mut it, &a)?, &a)?,
            "--runs" => args.runs = number(value(&mut it, &a)?, &a)?,
            "--setting" => args.settings.push(
                value(&mut it, &a)?
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            ),
            "--common" => args
                .common
                .extend(value(&mut it, &a)?.split_whitespace().map(String::from)),
            "--single-query-max" => args.single_query_max = number(value(&mut it, &a)?, &a)?,
            "--single-query-timeout" => {
                args.single_query_timeout = number(value(&mut it, &a)?, &a)?
            }
            "--buffer-pool" => {
                let v = value(&mut it, &a)?;
                args.buffer_pool = Some(match v.split_once(',') {
                    Some((g, s)) => (g.to_string(), s.to_string()),
                    None => (v.clone(), v),
                });
            }
            "--cold-buffer-pool" => {
                let v = value(&mut it, &a)?;
                pool_bytes(&v).ok_or_else(|| format!("{a}: `{v}` is not a size like 1G"))?;
                args.cold_buffer_pool = Some(v);
            }
            "--blobcheck" => args.blobcheck = Some(PathBuf::from(value(&mut it, &a)?)),
            "--workdir" => args.workdir = Some(PathBuf::from(value(&mut it, &a)?)),
            "--keep" => args.keep = true,
            "--hold" => args.hold = number(value(&mut it, &a)?, &a)?,
            "--quiet-wait" => args.quiet_wait = number(value(&mut it, &a)?, &a)?,
            "--no-floor-check" => args.floor_check = false,
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            "--" => {
                extra = Some(it.by_ref().collect());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.blobs < 100 {
        return Err("--blobs must be at least 100".into());
    }
    if args.shards == 0 || args.shards > 64 {
        return Err("--shards must be 1 to 64".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if args.settings.is_empty() {
        for s in [
            "--jobs 1 --chunk-size 10000",
            "--jobs 2 --chunk-size 10000",
            "--jobs 4 --chunk-size 10000",
            "--jobs 4 --chunk-size 1000",
        ] {
            args.settings
                .push(s.split_whitespace().map(String::from).collect());
        }
    }
    if !args.common.is_empty() {
        for s in args.settings.iter_mut() {
            s.extend(args.common.iter().cloned());
        }
    }
    if let Some(extra) = extra
        && !extra.is_empty()
    {
        args.settings.push(extra);
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// The reference columns

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Col {
    SentMessage,
    SentAttachment,
    Attachment,
    OutsideAttachment,
    ContactData,
    Body,
    Header,
}

impl Col {
    fn table(self) -> &'static str {
        match self {
            Col::SentMessage => "SentMessage",
            Col::SentAttachment => "SentAttachment",
            Col::Attachment => "Attachment",
            Col::OutsideAttachment => "OutsideAttachment",
            Col::ContactData => "ContactData",
            Col::Body | Col::Header => "MessageData",
        }
    }
    /// The column, which is also the name of its index in schema.sql.
    fn column(self) -> &'static str {
        match self {
            Col::Body => "Body",
            Col::Header => "Header",
            _ => "BlobStorageID",
        }
    }
}

const GLOBAL_COLS: [Col; 2] = [Col::SentMessage, Col::SentAttachment];
const SHARD_COLS: [Col; 5] = [
    Col::Attachment,
    Col::OutsideAttachment,
    Col::ContactData,
    Col::Body,
    Col::Header,
];

/// Report labels, in the order `Data::for_each_ref` numbers them.
fn labels(shards: usize) -> Vec<String> {
    let mut l: Vec<String> = GLOBAL_COLS
        .iter()
        .map(|c| format!("global:{}.{}", c.table(), c.column()))
        .collect();
    for s in 1..=shards {
        for c in SHARD_COLS {
            l.push(format!("shard{s}:{}.{}", c.table(), c.column()));
        }
    }
    l
}

// ---------------------------------------------------------------------------
// Generated data

#[derive(Default)]
struct ShardRows {
    attachment: Vec<Option<u64>>,
    outside: Vec<Option<u64>>,
    contact: Vec<Option<u64>>,
    /// (MessageID, Body, Header)
    messages: Vec<(u64, u64, u64)>,
}

struct Data {
    /// (BlobStorageID, NumReferences), ascending ids.
    blobs: Vec<(u64, u64)>,
    sent_message: Vec<Option<u64>>,
    sent_attachment: Vec<Option<u64>>,
    shards: Vec<ShardRows>,
    injected: BTreeMap<&'static str, u64>,
    /// Blobs per stored NumReferences bucket, for the printout.
    heavy: Vec<u64>,
}

impl Data {
    /// Calls `f(label index, blob id)` for every non-NULL reference row.
    fn for_each_ref(&self, mut f: impl FnMut(usize, u64)) {
        for v in self.sent_message.iter().flatten() {
            f(0, *v);
        }
        for v in self.sent_attachment.iter().flatten() {
            f(1, *v);
        }
        for (s, shard) in self.shards.iter().enumerate() {
            let base = 2 + 5 * s;
            for v in shard.attachment.iter().flatten() {
                f(base, *v);
            }
            for v in shard.outside.iter().flatten() {
                f(base + 1, *v);
            }
            for v in shard.contact.iter().flatten() {
                f(base + 2, *v);
            }
            for &(_, body, header) in &shard.messages {
                f(base + 3, body);
                f(base + 4, header);
            }
        }
    }

    fn reference_rows(&self) -> u64 {
        let mut n = 0u64;
        self.for_each_ref(|_, _| n += 1);
        n
    }
}

/// splitmix64: cheap deterministic filler values.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn log_uniform(rng: &mut StdRng, lo: u64, hi: u64) -> u64 {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    (rng.random_range(l..h).exp() as u64).clamp(lo, hi)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    TooHigh,
    TooLowDecrement,
    TooLowExtraRef,
    StoredZero,
    MissingRow,
    MissingInGap,
    Orphan,
    AboveLast,
}

const FAULTS: [Fault; 8] = [
    Fault::TooHigh,
    Fault::TooLowDecrement,
    Fault::TooLowExtraRef,
    Fault::StoredZero,
    Fault::MissingRow,
    Fault::MissingInGap,
    Fault::Orphan,
    Fault::AboveLast,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::TooHigh => "count too high",
            Fault::TooLowDecrement => "count too low (decremented)",
            Fault::TooLowExtraRef => "count too low (reference added)",
            Fault::StoredZero => "stored 0 with references",
            Fault::MissingRow => "blob row deleted, references kept",
            Fault::MissingInGap => "references to an id in a gap",
            Fault::Orphan => "orphan (count > 0, references removed)",
            Fault::AboveLast => "references above the last blob",
        }
    }
}

const NO_ROLE: u8 = u8::MAX;

fn generate(n: usize, shards: usize, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);

    // Sparse AUTO_INCREMENT-like ids (about 1.26 ids per row, as in the real
    // dump), the last few above 2^63.
    let high = (n / 100_000).clamp(3, n / 2);
    let mut ids = Vec::with_capacity(n);
    let mut id: u64 = rng.random_range(12..40);
    for i in 0..n {
        if i == n - high {
            id = (1u64 << 63) + rng.random_range(0..1000);
        } else if i > 0 {
            id += if rng.random_bool(0.87) {
                1
            } else {
                rng.random_range(2..=4)
            };
        }
        ids.push(id);
    }

    // Intended reference counts: 98.8% exactly 1, 1.1% 2..10, 0.05% 11..1000,
    // 0.05% 0 (awaiting cleanup), and one blob in 50,000 with 10^4..10^5.
    let mut count = vec![1u64; n];
    for c in count.iter_mut() {
        let p: f64 = rng.random();
        *c = if p < 0.0005 {
            0
        } else if p < 0.9885 {
            1
        } else if p < 0.9995 {
            rng.random_range(2..=10)
        } else {
            log_uniform(&mut rng, 11, 1000)
        };
    }
    let heavy_n = (n / 50_000).max(2);
    let heavy_cap = (n as u64 / 5).max(10);
    let mut heavy: HashSet<usize> = HashSet::new();
    while heavy.len() < heavy_n {
        let i = rng.random_range(0..n);
        if heavy.insert(i) {
            count[i] = log_uniform(&mut rng, 10_000, 100_000).min(heavy_cap);
        }
    }

    // Faults, about one per 10^4 blobs, every kind.
    let fault_n = (n / 10_000).max(FAULTS.len());
    let multi: Vec<usize> = (0..n).filter(|&i| count[i] >= 2).collect();
    let mut faults: HashMap<usize, Fault> = HashMap::new();
    let mut gap_ids: Vec<u64> = Vec::new();
    let mut above: Vec<u64> = Vec::new();
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    for k in 0..fault_n {
        let f = FAULTS[k % FAULTS.len()];
        *injected.entry(f.name()).or_default() += 1;
        match f {
            Fault::MissingInGap => loop {
                let i = rng.random_range(0..n - 1);
                if ids[i] + 1 < ids[i + 1] {
                    gap_ids.push(rng.random_range(ids[i] + 1..ids[i + 1]));
                    break;
                }
            },
            Fault::AboveLast => {
                let last = ids[n - 1];
                above.push(if above.is_empty() {
                    u64::MAX
                } else {
                    last + rng.random_range(1..1_000_000)
                });
            }
            _ => loop {
                let i = if f == Fault::TooLowDecrement && !multi.is_empty() {
                    multi[rng.random_range(0..multi.len())]
                } else {
                    rng.random_range(0..n)
                };
                if count[i] >= 1 && !faults.contains_key(&i) {
                    let f = if f == Fault::TooLowDecrement && count[i] < 2 {
                        Fault::TooLowExtraRef
                    } else {
                        f
                    };
                    faults.insert(i, f);
                    break;
                }
            },
        }
    }

    // Roles: which column references each blob. Multi-reference blobs are
    // deduplicated bodies and attachments; single-reference blobs are mostly
    // a message's body or header.
    let mut role = vec![NO_ROLE; n];
    let body_budget = (0.35 * n as f64) as u64;
    let mut tail_body = 0u64;
    let pick = |rng: &mut StdRng, table: &[(Col, f64)]| -> Col {
        let mut p: f64 = rng.random();
        for &(c, w) in table {
            if p < w {
                return c;
            }
            p -= w;
        }
        table[table.len() - 1].0
    };
    let mut candidates = Vec::new(); // single-reference blobs that become Body or Header
    for i in 0..n {
        if count[i] == 0 || faults.get(&i) == Some(&Fault::Orphan) {
            continue;
        }
        if count[i] >= 2 {
            let mut c = if heavy.contains(&i) {
                if rng.random_bool(0.6) {
                    Col::Body
                } else {
                    Col::Attachment
                }
            } else {
                pick(
                    &mut rng,
                    &[
                        (Col::Body, 0.45),
                        (Col::Attachment, 0.35),
                        (Col::SentAttachment, 0.08),
                        (Col::OutsideAttachment, 0.06),
                        (Col::ContactData, 0.06),
                    ],
                )
            };
            if c == Col::Body {
                if tail_body + count[i] <= body_budget {
                    tail_body += count[i];
                } else {
                    c = Col::Attachment;
                }
            }
            role[i] = c as u8;
        } else {
            let p: f64 = rng.random();
            role[i] = if p < 0.06 {
                Col::Attachment as u8
            } else if p < 0.09 {
                Col::SentMessage as u8
            } else if p < 0.105 {
                Col::SentAttachment as u8
            } else if p < 0.11 {
                Col::OutsideAttachment as u8
            } else if p < 0.12 {
                Col::ContactData as u8
            } else {
                candidates.push(i);
                NO_ROLE
            };
        }
    }
    // Every message has one Body and one Header: headers = bodies.
    if (candidates.len() as u64 + tail_body) % 2 == 1 {
        let i = candidates.pop().unwrap();
        role[i] = Col::Attachment as u8;
    }
    assert!(
        candidates.len() as u64 >= tail_body,
        "too few single-reference blobs"
    );
    let mut bodies_left = (candidates.len() as u64 - tail_body) / 2;
    let mut left = candidates.len() as u64;
    for &i in &candidates {
        let is_body = rng.random_range(0..left) < bodies_left;
        left -= 1;
        if is_body {
            bodies_left -= 1;
            role[i] = Col::Body as u8;
        } else {
            role[i] = Col::Header as u8;
        }
    }
    drop(candidates);

    // Reference lists per column, and stored counts after the faults.
    let mut lists: Vec<Vec<u64>> = vec![Vec::new(); 7];
    let mut blobs = Vec::with_capacity(n);
    for i in 0..n {
        if role[i] != NO_ROLE {
            let list = &mut lists[role[i] as usize];
            for _ in 0..count[i] {
                list.push(ids[i]);
            }
        }
        let mut stored = count[i];
        match faults.get(&i) {
            Some(Fault::TooHigh) => stored += rng.random_range(1..=3),
            Some(Fault::TooLowDecrement) => stored = rng.random_range(1..count[i]),
            Some(Fault::TooLowExtraRef) => {
                let c = [Col::Attachment, Col::SentMessage, Col::ContactData][i % 3];
                lists[c as usize].push(ids[i]);
            }
            Some(Fault::StoredZero) => stored = 0,
            Some(Fault::MissingRow) => continue,
            _ => {}
        }
        blobs.push((ids[i], stored));
    }
    drop(role);
    for (k, &g) in gap_ids.iter().enumerate() {
        let c = [Col::Attachment, Col::SentMessage, Col::OutsideAttachment][k % 3];
        for _ in 0..rng.random_range(1..=3) {
            lists[c as usize].push(g);
        }
    }
    let mut extra_messages: Vec<(u64, u64)> = Vec::new();
    for (k, &a) in above.iter().enumerate() {
        match k % 3 {
            // A whole message whose body and header are both past the end.
            0 => extra_messages.push((a, a.saturating_sub(1).max(ids[n - 1] + 1))),
            1 => lists[Col::Attachment as usize].push(a),
            _ => lists[Col::SentAttachment as usize].extend([a, a]),
        }
    }
    for l in lists.iter_mut() {
        l.shuffle(&mut rng);
    }

    // Messages: Body/Header pairs, spread over the shards by user.
    let mut data = Data {
        blobs,
        sent_message: Vec::new(),
        sent_attachment: Vec::new(),
        shards: (0..shards).map(|_| ShardRows::default()).collect(),
        injected,
        heavy: Vec::new(),
    };
    let bodies = std::mem::take(&mut lists[Col::Body as usize]);
    let headers = std::mem::take(&mut lists[Col::Header as usize]);
    assert_eq!(bodies.len(), headers.len());
    let mut pairs: Vec<(u64, u64)> = bodies.into_iter().zip(headers).collect();
    pairs.extend(extra_messages);
    pairs.shuffle(&mut rng);
    let mut message_id = 100_000u64;
    for (b, h) in pairs {
        message_id += rng.random_range(1..=3);
        let s = rng.random_range(0..shards);
        data.shards[s].messages.push((message_id, b, h));
    }
    // The other columns, with a few NULLs (not references).
    let spread = |rng: &mut StdRng, list: Vec<u64>, null_p: f64| -> Vec<Vec<Option<u64>>> {
        let mut out: Vec<Vec<Option<u64>>> = vec![Vec::new(); shards];
        for v in list {
            let s = rng.random_range(0..shards);
            if rng.random_bool(null_p) {
                out[s].push(None);
            }
            out[s].push(Some(v));
        }
        out
    };
    let take = |lists: &mut Vec<Vec<u64>>, c: Col| std::mem::take(&mut lists[c as usize]);
    let (mut sm, mut sa) = (Vec::new(), Vec::new());
    for v in take(&mut lists, Col::SentMessage) {
        if rng.random_bool(0.002) {
            sm.push(None);
        }
        sm.push(Some(v));
    }
    for v in take(&mut lists, Col::SentAttachment) {
        if rng.random_bool(0.002) {
            sa.push(None);
        }
        sa.push(Some(v));
    }
    data.sent_message = sm;
    data.sent_attachment = sa;
    for (s, rows) in spread(&mut rng, take(&mut lists, Col::Attachment), 0.001)
        .into_iter()
        .enumerate()
    {
        data.shards[s].attachment = rows;
    }
    for (s, rows) in spread(&mut rng, take(&mut lists, Col::OutsideAttachment), 0.001)
        .into_iter()
        .enumerate()
    {
        data.shards[s].outside = rows;
    }
    for (s, rows) in spread(&mut rng, take(&mut lists, Col::ContactData), 0.001)
        .into_iter()
        .enumerate()
    {
        data.shards[s].contact = rows;
    }
    let mut heavy_counts: Vec<u64> = heavy.iter().map(|&i| count[i]).collect();
    heavy_counts.sort_unstable();
    data.heavy = heavy_counts;
    data
}

// ---------------------------------------------------------------------------
// Ground truth, by brute force from the generated rows

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    blob_id: u64,
    kind: String,
    stored: Option<u64>,
    actual: u64,
    references: Vec<(String, u64)>,
}

fn classify(stored: Option<u64>, actual: u64) -> Option<&'static str> {
    match stored {
        None if actual > 0 => Some("missing_blob"),
        None => None,
        Some(s) if actual == 0 && s > 0 => Some("orphan_blob"),
        Some(s) if actual > 0 && s != actual => Some("count_mismatch"),
        Some(_) => None,
    }
}

fn ground_truth(data: &Data, labels: &[String]) -> Vec<Expect> {
    let mut refs: Vec<u64> = Vec::new();
    data.for_each_ref(|_, id| refs.push(id));
    refs.sort_unstable();
    let mut out = Vec::new();
    let (mut bi, mut ri) = (0usize, 0usize);
    let blobs = &data.blobs;
    while bi < blobs.len() || ri < refs.len() {
        let next_blob = blobs.get(bi).map(|b| b.0).unwrap_or(u64::MAX);
        let next_ref = refs.get(ri).copied().unwrap_or(u64::MAX);
        let id = if bi < blobs.len() && ri < refs.len() {
            next_blob.min(next_ref)
        } else if bi < blobs.len() {
            next_blob
        } else {
            next_ref
        };
        let stored = if bi < blobs.len() && blobs[bi].0 == id {
            bi += 1;
            Some(blobs[bi - 1].1)
        } else {
            None
        };
        let mut actual = 0u64;
        while ri < refs.len() && refs[ri] == id {
            actual += 1;
            ri += 1;
        }
        if let Some(kind) = classify(stored, actual) {
            out.push(Expect {
                blob_id: id,
                kind: kind.to_string(),
                stored,
                actual,
                references: Vec::new(),
            });
        }
    }
    drop(refs);
    // Per-column counts of the findings.
    let index: HashMap<u64, usize> = out
        .iter()
        .enumerate()
        .map(|(i, e)| (e.blob_id, i))
        .collect();
    let mut per: Vec<BTreeMap<usize, u64>> = vec![BTreeMap::new(); out.len()];
    data.for_each_ref(|label, id| {
        if let Some(&i) = index.get(&id) {
            *per[i].entry(label).or_default() += 1;
        }
    });
    for (e, p) in out.iter_mut().zip(per) {
        e.references = p.into_iter().map(|(l, n)| (labels[l].clone(), n)).collect();
        e.references.sort();
    }
    out
}

fn parse_findings(text: &str) -> Result<Vec<Expect>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let bad = |what: &str| format!("line {}: bad or missing `{what}`: {line}", n + 1);
        let mut references: Vec<(String, u64)> = match v.get("references") {
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, n)| Ok((k.clone(), n.as_u64().ok_or_else(|| bad("references"))?)))
                .collect::<Result<_, String>>()?,
            _ => return Err(bad("references")),
        };
        references.sort();
        out.push(Expect {
            kind: v["kind"].as_str().ok_or_else(|| bad("kind"))?.to_string(),
            blob_id: v["blob_id"].as_u64().ok_or_else(|| bad("blob_id"))?,
            stored: match &v["stored"] {
                serde_json::Value::Null => None,
                s => Some(s.as_u64().ok_or_else(|| bad("stored"))?),
            },
            actual: v["actual"].as_u64().ok_or_else(|| bad("actual"))?,
            references,
        });
    }
    Ok(out)
}

/// Compares findings with the truth; returns a description of the differences.
fn compare(got: &[Expect], truth: &[Expect], with_references: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if got.windows(2).any(|w| w[0].blob_id >= w[1].blob_id) {
        problems.push("findings are not in strictly ascending blob_id order".to_string());
    }
    let strip = |e: &Expect| {
        let mut e = e.clone();
        if !with_references {
            e.references.clear();
        }
        e
    };
    let g: BTreeMap<u64, Expect> = got.iter().map(|e| (e.blob_id, strip(e))).collect();
    let t: BTreeMap<u64, Expect> = truth.iter().map(|e| (e.blob_id, strip(e))).collect();
    for (id, e) in &t {
        match g.get(id) {
            None => problems.push(format!("missed:     {e:?}")),
            Some(x) if x != e => problems.push(format!("wrong:      {x:?}\n  expected: {e:?}")),
            _ => {}
        }
    }
    for (id, x) in &g {
        if !t.contains_key(id) {
            problems.push(format!("spurious:   {x:?}"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// TSV files and loading

const GLOBAL_SCHEMA: &str = r#"
CREATE TABLE `BlobStorage` (
  `BlobStorageID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `Type` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `NumReferences` bigint(20) unsigned NOT NULL DEFAULT '1',
  `Hash` binary(16) NOT NULL,
  `Size` int(10) unsigned NOT NULL DEFAULT '0',
  `CephID` varchar(191) CHARACTER SET utf8mb4 DEFAULT NULL,
  `ShardID` int(10) unsigned DEFAULT NULL,
  PRIMARY KEY (`BlobStorageID`),
  KEY `Hash` (`Hash`,`Size`),
  KEY `CephID` (`CephID`),
  KEY `NumReferences` (`NumReferences`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `SentMessage` (
  `SentMessageID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `UserID` int(10) unsigned DEFAULT NULL,
  `MessageID` bigint(20) unsigned NOT NULL,
  `State` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `Metadata` longtext COLLATE utf8mb4_unicode_ci NOT NULL,
  `BlobStorageID` bigint(20) unsigned DEFAULT NULL,
  PRIMARY KEY (`SentMessageID`),
  KEY `UserID` (`UserID`,`MessageID`),
  KEY `BlobStorageID` (`BlobStorageID`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `SentAttachment` (
  `SentAttachmentID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `UserID` int(10) unsigned NOT NULL,
  `MessageID` bigint(20) unsigned NOT NULL,
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `Metadata` longtext COLLATE utf8mb4_unicode_ci NOT NULL,
  `BlobStorageID` bigint(20) unsigned DEFAULT NULL,
  PRIMARY KEY (`SentAttachmentID`),
  KEY `UserID` (`UserID`,`MessageID`),
  KEY `BlobStorageID` (`BlobStorageID`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
"#;

const SHARD_SCHEMA: &str = r#"
CREATE TABLE `Attachment` (
  `AttachmentID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `MessageID` bigint(20) unsigned NOT NULL DEFAULT '0',
  `UserID` int(10) unsigned NOT NULL,
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `FileName` varchar(255) COLLATE utf8mb4_unicode_ci NOT NULL,
  `MIMEType` varchar(255) COLLATE utf8mb4_unicode_ci NOT NULL,
  `FileSize` int(10) unsigned NOT NULL,
  `BlobStorageID` bigint(20) unsigned DEFAULT NULL,
  `KeyPackets` blob,
  `Signature` blob,
  `Header` text COLLATE utf8mb4_unicode_ci,
  PRIMARY KEY (`AttachmentID`),
  KEY `BlobStorageID` (`BlobStorageID`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `OutsideAttachment` (
  `AttachmentID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `MessageID` bigint(20) unsigned NOT NULL DEFAULT '0',
  `UserID` int(10) unsigned NOT NULL,
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `FileName` varchar(255) COLLATE utf8mb4_unicode_ci NOT NULL,
  `MIMEType` varchar(255) COLLATE utf8mb4_unicode_ci NOT NULL,
  `FileSize` int(10) unsigned NOT NULL,
  `BlobStorageID` bigint(20) unsigned DEFAULT NULL,
  `KeyPackets` blob,
  `Signature` blob,
  `Header` text COLLATE utf8mb4_unicode_ci,
  PRIMARY KEY (`AttachmentID`),
  KEY `BlobStorageID` (`BlobStorageID`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `ContactData` (
  `ContactDataID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `UserID` int(10) unsigned NOT NULL,
  `ContactID` bigint(20) unsigned NOT NULL,
  `BlobStorageID` bigint(20) unsigned DEFAULT NULL,
  `KeyPackets` blob,
  `Type` tinyint(3) unsigned NOT NULL DEFAULT '1',
  PRIMARY KEY (`ContactDataID`),
  KEY `BlobStorageID` (`BlobStorageID`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `MessageData` (
  `MessageID` bigint(20) unsigned NOT NULL,
  `UserID` int(10) unsigned NOT NULL,
  `Version` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `ContentType` tinyint(3) unsigned NOT NULL DEFAULT '1',
  `Body` bigint(20) unsigned NOT NULL,
  `KeyPackets` blob,
  `Header` bigint(20) unsigned NOT NULL,
  PRIMARY KEY (`MessageID`),
  KEY `Body` (`Body`),
  KEY `Header` (`Header`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
"#;

struct Tsv {
    w: BufWriter<File>,
    line: String,
}

impl Tsv {
    fn create(path: &Path) -> std::io::Result<Tsv> {
        Ok(Tsv {
            w: BufWriter::with_capacity(1 << 20, File::create(path)?),
            line: String::with_capacity(256),
        })
    }
    fn row(&mut self, f: impl FnOnce(&mut String)) -> std::io::Result<()> {
        self.line.clear();
        f(&mut self.line);
        self.line.push('\n');
        self.w.write_all(self.line.as_bytes())
    }
    fn finish(mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn opt_id(v: Option<u64>) -> String {
    v.map_or_else(|| "\\N".to_string(), |v| v.to_string())
}

fn write_global(dir: &Path, data: &Data) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut t = Tsv::create(&dir.join("BlobStorage.tsv"))?;
    for &(id, stored) in &data.blobs {
        let (a, b, c) = (mix(id), mix(id ^ 0x5555), mix(id ^ 0xAAAA));
        t.row(|l| {
            let _ = write!(
                l,
                "{id}\t1\t{}\t{stored}\t{a:016x}{b:016x}\t{}\t{c:016x}{:016x}\t3",
                1 + (a & 1),
                1024 + (b % 4_000_000),
                mix(c)
            );
        })?;
    }
    t.finish()?;
    for (name, rows, sent) in [
        ("SentMessage", &data.sent_message, true),
        ("SentAttachment", &data.sent_attachment, false),
    ] {
        let mut t = Tsv::create(&dir.join(format!("{name}.tsv")))?;
        for (i, v) in rows.iter().enumerate() {
            let i = i as u64 + 1;
            let user = 1 + mix(i) % 100_000;
            let msg = 100_000 + mix(i ^ 7) % 1_000_000_000;
            t.row(|l| {
                if sent {
                    let _ = write!(l, "{i}\t{user}\t{msg}\t1\t1\t{{}}\t{}", opt_id(*v));
                } else {
                    let _ = write!(l, "{i}\t{user}\t{msg}\t1\t{{}}\t{}", opt_id(*v));
                }
            })?;
        }
        t.finish()?;
    }
    Ok(())
}

fn write_shard(dir: &Path, rows: &ShardRows) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, list) in [
        ("Attachment", &rows.attachment),
        ("OutsideAttachment", &rows.outside),
    ] {
        let mut t = Tsv::create(&dir.join(format!("{name}.tsv")))?;
        for (i, v) in list.iter().enumerate() {
            let i = i as u64 + 1;
            let m = mix(i);
            t.row(|l| {
                let _ = write!(
                    l,
                    "{i}\t{}\t{}\t1\tattachment-{i}.pdf\tapplication/pdf\t{}\t{}\t\\N\t\\N\t\\N",
                    100_000 + m % 1_000_000_000,
                    1 + m % 100_000,
                    1024 + m % 10_000_000,
                    opt_id(*v)
                );
            })?;
        }
        t.finish()?;
    }
    let mut t = Tsv::create(&dir.join("ContactData.tsv"))?;
    for (i, v) in rows.contact.iter().enumerate() {
        let i = i as u64 + 1;
        let m = mix(i);
        t.row(|l| {
            let _ = write!(
                l,
                "{i}\t{}\t{}\t{}\t\\N\t1",
                1 + m % 100_000,
                m % 10_000_000,
                opt_id(*v)
            );
        })?;
    }
    t.finish()?;
    let mut t = Tsv::create(&dir.join("MessageData.tsv"))?;
    for &(mid, body, header) in &rows.messages {
        let m = mix(mid);
        t.row(|l| {
            let _ = write!(
                l,
                "{mid}\t{}\t1\t1\t{body}\t{m:016x}{:016x}\t{header}",
                1 + m % 100_000,
                mix(m)
            );
        })?;
    }
    t.finish()
}

fn load_data_sql(dir: &Path, table: &str, columns: &str, set: &str) -> String {
    let path = dir.join(format!("{table}.tsv"));
    let path = path.to_str().expect("utf-8 path");
    assert!(
        !path.contains('\'') && !path.contains('\\'),
        "odd path {path}"
    );
    format!(
        "LOAD DATA INFILE '{path}' INTO TABLE `{table}` CHARACTER SET utf8mb4 ({columns}){set};\n"
    )
}

fn global_load_sql(dir: &Path, database: &str) -> String {
    let mut s = format!(
        "SET SESSION unique_checks=0; SET SESSION foreign_key_checks=0;\n\
         CREATE DATABASE `{database}` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n\
         USE `{database}`;\n{GLOBAL_SCHEMA}\n"
    );
    s += &load_data_sql(
        dir,
        "BlobStorage",
        "BlobStorageID, Version, Type, NumReferences, @hash, Size, CephID, ShardID",
        " SET Hash = UNHEX(@hash)",
    );
    s += &load_data_sql(
        dir,
        "SentMessage",
        "SentMessageID, UserID, MessageID, State, Version, Metadata, BlobStorageID",
        "",
    );
    s += &load_data_sql(
        dir,
        "SentAttachment",
        "SentAttachmentID, UserID, MessageID, Version, Metadata, BlobStorageID",
        "",
    );
    s += "ANALYZE TABLE BlobStorage, SentMessage, SentAttachment;\n";
    s
}

fn shard_load_sql(dir: &Path, database: &str) -> String {
    let mut s = format!(
        "SET SESSION unique_checks=0; SET SESSION foreign_key_checks=0;\n\
         CREATE DATABASE `{database}` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n\
         USE `{database}`;\n{SHARD_SCHEMA}\n"
    );
    let att = "AttachmentID, MessageID, UserID, Version, FileName, MIMEType, FileSize, BlobStorageID, KeyPackets, Signature, Header";
    s += &load_data_sql(dir, "Attachment", att, "");
    s += &load_data_sql(dir, "OutsideAttachment", att, "");
    s += &load_data_sql(
        dir,
        "ContactData",
        "ContactDataID, UserID, ContactID, BlobStorageID, KeyPackets, Type",
        "",
    );
    s += &load_data_sql(
        dir,
        "MessageData",
        "MessageID, UserID, Version, ContentType, Body, KeyPackets, Header",
        "",
    );
    s += "ANALYZE TABLE Attachment, OutsideAttachment, ContactData, MessageData;\n";
    s
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A buffer pool that holds `tsv_bytes` of data with its indexes, warm.
fn buffer_pool_for(tsv_bytes: u64) -> String {
    let mb = (tsv_bytes * 3 / (1 << 20) + 256).div_ceil(128) * 128;
    format!("{}M", mb.min(12 * 1024))
}

fn start_server(name: &str, pool: &str, file_dir: &Path) -> Result<Sandbox, String> {
    Sandbox::start(
        SandboxOptions::new(name)
            .arg(format!("--innodb-buffer-pool-size={pool}"))
            .arg("--innodb-log-file-size=1G")
            // Write back the loaded pages quickly (the default, 200 pages/s,
            // takes minutes after a big LOAD DATA).
            .arg("--innodb-io-capacity=20000")
            .arg("--innodb-io-capacity-max=40000")
            .arg("--innodb-buffer-pool-dump-at-shutdown=0")
            .arg("--innodb-buffer-pool-load-at-startup=0")
            .arg(format!("--secure-file-priv={}", file_dir.display())),
    )
    .map_err(|e| format!("starting server {name}: {e}"))
}

/// Waits until the server has written back most dirty pages, so that
/// background flushing after the load does not disturb the timings.
fn settle(sb: &Sandbox) -> Result<(), String> {
    let q = |sql: &str| sb.query(sql).map_err(|e| e.to_string());
    q("SET GLOBAL innodb_max_dirty_pages_pct = 0")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = q("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")?;
        let dirty: u64 = rows
            .first()
            .and_then(|r| r.get(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if dirty < 200 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    q("SET GLOBAL innodb_max_dirty_pages_pct = 90")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Measurements

/// CPU time (user + system) of a process so far, from /proc/<pid>/stat.
fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Busy CPU time of the whole machine so far (all cores), from /proc/stat.
fn machine_busy() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return Duration::ZERO;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(busy * 1_000_000 / hz)
}

/// Waits (up to `max_wait`) until the machine is quiet: less than 0.15 cores
/// busy over one second. Other people's builds and tests on a 2-core machine
/// distort every timing. Returns the busy cores seen last.
fn wait_quiet(max_wait: Duration) -> f64 {
    let until = Instant::now() + max_wait;
    loop {
        let (b0, t0) = (machine_busy(), Instant::now());
        std::thread::sleep(Duration::from_millis(1000));
        let cores = machine_busy().saturating_sub(b0).as_secs_f64() / t0.elapsed().as_secs_f64();
        if cores < 0.15 || Instant::now() >= until {
            return cores;
        }
    }
}

fn servers_cpu(servers: &[&Sandbox]) -> Duration {
    servers
        .iter()
        .filter_map(|s| s.pid().and_then(proc_cpu))
        .sum()
}

struct FloorItem {
    server: String,
    what: String,
    sql: String,
    rows: u64,
    secs: f64,
}

/// The floor queries of one server, as (label, SQL, index): the blob table's
/// primary key (when `global_db` is not empty) and every reference column's
/// index, each scanned once.
fn floor_queries(global_db: &str, shard_dbs: &[String]) -> Vec<(String, String, String)> {
    let mut q = Vec::new();
    if !global_db.is_empty() {
        q.push((
            format!("{global_db}.BlobStorage PRIMARY"),
            format!("SELECT COUNT(*) FROM `{global_db}`.`BlobStorage` FORCE INDEX (PRIMARY)"),
            "PRIMARY".to_string(),
        ));
        for c in GLOBAL_COLS {
            q.push((
                format!("{global_db}.{}.{}", c.table(), c.column()),
                format!(
                    "SELECT COUNT(`{col}`) FROM `{global_db}`.`{t}` FORCE INDEX (`{col}`)",
                    col = c.column(),
                    t = c.table()
                ),
                c.column().to_string(),
            ));
        }
    }
    for db in shard_dbs {
        for c in SHARD_COLS {
            q.push((
                format!("{db}.{}.{}", c.table(), c.column()),
                format!(
                    "SELECT COUNT(`{col}`) FROM `{db}`.`{t}` FORCE INDEX (`{col}`)",
                    col = c.column(),
                    t = c.table()
                ),
                c.column().to_string(),
            ));
        }
    }
    q
}

/// Checks with EXPLAIN that each floor query scans the intended index; the
/// blob table's COUNT(*) falls back to a clustered-index-only column if the
/// optimizer picks another index anyway.
fn explain_floor(
    sb: &Sandbox,
    queries: &mut [(String, String, String)],
    strict: bool,
) -> Result<(), String> {
    for (what, sql, index) in queries.iter_mut() {
        let explain = |sql: &str| -> Result<(String, String, String), String> {
            let rows = sb
                .query(&format!("EXPLAIN {sql}"))
                .map_err(|e| e.to_string())?;
            let r = rows.first().ok_or("EXPLAIN returned nothing")?;
            // id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra
            Ok((
                r.get(3).cloned().unwrap_or_default(),
                r.get(5).cloned().unwrap_or_default(),
                r.get(9).cloned().unwrap_or_default(),
            ))
        };
        let (ty, key, extra) = explain(sql)?;
        let mut ok =
            ty == "index" && key == *index && (index == "PRIMARY" || extra.contains("Using index"));
        if !ok && index == "PRIMARY" {
            let alt = sql.replace("COUNT(*)", "SUM(`Size`)");
            let (ty2, key2, _) = explain(&alt)?;
            if ty2 == "index" || (ty2 == "ALL" && key2 == "NULL") {
                eprintln!(
                    "floor: {what}: COUNT(*) used {key}; using SUM(Size) (clustered index only)"
                );
                *sql = alt;
                ok = true;
            }
        }
        if !ok {
            let msg = format!(
                "floor: {what}: EXPLAIN shows type={ty} key={key} extra={extra}, not an index-only scan of `{index}`"
            );
            if strict {
                return Err(msg);
            }
            eprintln!("warning: {msg}");
        }
    }
    Ok(())
}

async fn time_floor(
    url: &str,
    server: &str,
    queries: &[(String, String, String)],
) -> Result<Vec<FloorItem>, String> {
    let opts = mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut out = Vec::new();
    for (what, sql, _) in queries {
        let t = Instant::now();
        let rows: Vec<mysql_async::Row> = conn
            .query(sql.as_str())
            .await
            .map_err(|e| format!("{server}: {sql}: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let n = rows
            .first()
            .and_then(|r| r.get::<mysql_async::Value, _>(0))
            .map(|v| match v {
                mysql_async::Value::Int(i) => i as u64,
                mysql_async::Value::UInt(u) => u,
                mysql_async::Value::Bytes(b) => String::from_utf8_lossy(&b)
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            })
            .unwrap_or(0);
        out.push(FloorItem {
            server: server.to_string(),
            what: what.clone(),
            sql: sql.clone(),
            rows: n,
            secs,
        });
    }
    let _ = conn.disconnect().await;
    Ok(out)
}

struct RunResult {
    wall: f64,
    max_rss_kb: u64,
    cpu_user: f64,
    cpu_sys: f64,
    server_cpu: f64,
    /// The same, per server (in the order of the servers).
    server_cpu_each: Vec<f64>,
    /// CPU seconds used by everything else on the machine during the run.
    other_cpu: f64,
    traffic: Traffic,
    problems: Vec<String>,
    findings: usize,
    /// With several partitions: each process's wall time and the rows it
    /// read (blob rows plus references, from its summary).
    parts: Vec<(f64, u64)>,
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Runs blobcheck on behalf of the bench and reports its resource usage.
///
/// It is a separate small process, started before the data is generated,
/// because `ru_maxrss` of a child counts the memory of the process it was
/// spawned from: exec records the old address space's high-water mark, and
/// `posix_spawn` shares the parent's. Spawned from the bench itself, blobcheck
/// would "peak" at the bench's own RSS (the generated data).
struct Launcher {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct LaunchRequest {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdout: PathBuf,
    stderr: PathBuf,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct LaunchReply {
    error: Option<String>,
    code: i32,
    wall: f64,
    max_rss_kb: u64,
    utime: f64,
    stime: f64,
}

const LAUNCHER_ARG: &str = "--launcher-internal";

impl Launcher {
    fn start() -> Result<Launcher, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(LAUNCHER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the launcher: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Ok(Launcher {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, req: &LaunchRequest) -> Result<LaunchReply, String> {
        use std::io::BufRead;
        let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
        writeln!(self.stdin, "{line}").map_err(|e| format!("launcher: {e}"))?;
        self.stdin.flush().map_err(|e| format!("launcher: {e}"))?;
        let mut reply = String::new();
        self.stdout
            .read_line(&mut reply)
            .map_err(|e| format!("launcher: {e}"))?;
        let reply: LaunchReply =
            serde_json::from_str(&reply).map_err(|e| format!("launcher reply `{reply}`: {e}"))?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The launcher process: one request per line on stdin, one reply per line on stdout.
fn launcher_main() -> ExitCode {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let reply = match serde_json::from_str::<LaunchRequest>(&line) {
            Ok(req) => launch(&req).unwrap_or_else(|e| LaunchReply {
                error: Some(e),
                code: -1,
                wall: 0.0,
                max_rss_kb: 0,
                utime: 0.0,
                stime: 0.0,
            }),
            Err(e) => LaunchReply {
                error: Some(format!("bad request: {e}")),
                code: -1,
                wall: 0.0,
                max_rss_kb: 0,
                utime: 0.0,
                stime: 0.0,
            },
        };
        let text = serde_json::to_string(&reply).unwrap_or_default();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn launch(req: &LaunchRequest) -> Result<LaunchReply, String> {
    let stdout = File::create(&req.stdout).map_err(|e| e.to_string())?;
    let stderr = File::create(&req.stderr).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let child = Command::new(&req.program)
        .args(&req.args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("running {}: {e}", req.program.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers. Reaping it
    // here means `child` must never be waited on again, hence the forget below.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    std::mem::forget(child);
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok(LaunchReply {
        error: None,
        code,
        wall,
        max_rss_kb: usage.ru_maxrss as u64,
        utime: tv(usage.ru_utime),
        stime: tv(usage.ru_stime),
    })
}

/// Queries, rows and bytes the servers sent, summed over the servers.
#[derive(Default, Clone, Copy)]
struct Traffic {
    queries: u64,
    rows: u64,
    bytes: u64,
}

fn traffic(servers: &[&Sandbox]) -> Traffic {
    let mut t = Traffic::default();
    for sb in servers {
        let Ok(rows) = sb.query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_select', 'Rows_sent', 'Bytes_sent')",
        ) else {
            continue;
        };
        for r in rows {
            let v: u64 = r.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match r.first().map(String::as_str) {
                Some("Com_select") => t.queries += v,
                Some("Rows_sent") => t.rows += v,
                Some("Bytes_sent") => t.bytes += v,
                _ => {}
            }
        }
    }
    t
}

/// A setting's leading `partitions=N` and `NAME=VALUE` (environment)
/// tokens, and the blobcheck arguments after them.
type Setting<'a> = (usize, Vec<(String, String)>, &'a [String]);

fn parse_setting(setting: &[String]) -> Result<Setting<'_>, String> {
    let mut parts = 1;
    let mut env = Vec::new();
    let mut rest = setting;
    while let Some((name, value)) = rest.first().and_then(|a| a.split_once('=')) {
        if name.starts_with('-') {
            break;
        }
        if name == "partitions" {
            parts = value
                .parse::<usize>()
                .map_err(|_| format!("bad setting `{}`", setting.join(" ")))?
                .max(1);
        } else {
            env.push((name.to_string(), value.to_string()));
        }
        rest = &rest[1..];
    }
    Ok((parts, env, rest))
}

/// Runs blobcheck once, or as `parts` processes at once (`--partition K/N`,
/// as the Kubernetes Job does), and checks the findings (the partitions'
/// outputs concatenated in K order) against the ground truth.
#[allow(clippy::too_many_arguments)]
fn run_blobcheck(
    launchers: &mut Vec<Launcher>,
    parts: usize,
    env: &[(String, String)],
    bin: &Path,
    config: &Path,
    output: &Path,
    extra: &[String],
    servers: &[&Sandbox],
    truth: &[Expect],
) -> Result<RunResult, String> {
    while launchers.len() < parts {
        launchers.push(Launcher::start()?);
    }
    let mut requests = Vec::new();
    for k in 0..parts {
        let out = if parts == 1 {
            output.to_path_buf()
        } else {
            output.with_extension(format!("{k}.jsonl"))
        };
        let _ = fs::remove_file(&out);
        let mut args: Vec<String> = vec![
            "check".into(),
            "--config".into(),
            config.display().to_string(),
            "--format".into(),
            "json".into(),
            "--output".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        if parts > 1 {
            args.push("--partition".into());
            args.push(format!("{k}/{parts}"));
        }
        requests.push((
            out.clone(),
            LaunchRequest {
                program: bin.to_path_buf(),
                args,
                env: [(
                    "BLOBCHECK_BENCH_PASSWORD".to_string(),
                    CHECKER_PASSWORD.to_string(),
                )]
                .into_iter()
                .chain(env.iter().cloned())
                .collect(),
                stdout: out.with_extension("stdout"),
                stderr: out.with_extension("stderr"),
            },
        ));
    }
    let traffic_before = traffic(servers);
    let each_before: Vec<Duration> = servers.iter().map(|s| servers_cpu(&[s])).collect();
    let busy_before = machine_busy();
    let start = Instant::now();
    let replies: Vec<Result<LaunchReply, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = launchers
            .iter_mut()
            .zip(&requests)
            .map(|(l, (_, req))| scope.spawn(move || l.run(req)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("launcher thread panicked".into()))
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let busy = machine_busy().saturating_sub(busy_before).as_secs_f64();
    let each: Vec<f64> = servers
        .iter()
        .zip(&each_before)
        .map(|(s, b)| servers_cpu(&[s]).saturating_sub(*b).as_secs_f64())
        .collect();
    let server_cpu: f64 = each.iter().sum();
    let traffic_after = traffic(servers);
    let mut got = Vec::new();
    let mut parts = Vec::new();
    let (mut max_rss_kb, mut utime, mut stime, mut any_findings) = (0u64, 0.0, 0.0, false);
    for ((out, req), reply) in requests.iter().zip(replies) {
        let reply = reply?;
        let code = reply.code;
        if code != 0 && code != 1 {
            let stderr = fs::read_to_string(&req.stderr).unwrap_or_default();
            return Err(format!(
                "blobcheck {} exited with {code}: {}",
                req.args[7..].join(" "),
                stderr.trim()
            ));
        }
        let text =
            fs::read_to_string(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
        let mine = parse_findings(&text)?;
        if (code == 1) == mine.is_empty() {
            got.push(Expect {
                blob_id: 0,
                kind: format!("exit status {code} with {} findings", mine.len()),
                stored: None,
                actual: 0,
                references: Vec::new(),
            });
        }
        any_findings |= code == 1;
        got.extend(mine);
        let stderr = fs::read_to_string(&req.stderr).unwrap_or_default();
        parts.push((reply.wall, summary_rows(&stderr)));
        max_rss_kb = max_rss_kb.max(reply.max_rss_kb);
        utime += reply.utime;
        stime += reply.stime;
    }
    // Each partition's findings come in id order, but its blocks are spread
    // over the id space: their union is compared in order.
    if parts.len() > 1 {
        got.sort_by_key(|f| f.blob_id);
    }
    let mut problems = compare(&got, truth, true);
    if any_findings == truth.is_empty() {
        problems.push(format!(
            "exit status says {}findings, the ground truth has {}",
            if any_findings { "" } else { "no " },
            truth.len()
        ));
    }
    // The status queries themselves count too: one query and a few rows each.
    let n = servers.len() as u64;
    Ok(RunResult {
        wall,
        max_rss_kb,
        cpu_user: utime,
        cpu_sys: stime,
        server_cpu,
        server_cpu_each: each,
        other_cpu: (busy - server_cpu - utime - stime).max(0.0),
        traffic: Traffic {
            queries: (traffic_after.queries - traffic_before.queries).saturating_sub(n),
            rows: (traffic_after.rows - traffic_before.rows).saturating_sub(3 * n),
            bytes: traffic_after.bytes - traffic_before.bytes,
        },
        problems,
        findings: got.len(),
        parts: if parts.len() > 1 { parts } else { Vec::new() },
    })
}

/// Blob rows plus references, from the summary a check writes to stderr
/// (`  blob rows    1,234 in …`, `  references   5,678 in 7 columns`).
fn summary_rows(summary: &str) -> u64 {
    let number = |prefix: &str| -> u64 {
        summary
            .lines()
            .find_map(|line| line.trim_start().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|n| n.replace(',', ""))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    number("blob rows") + number("references")
}

/// The obvious single query, on one server that holds every database.
fn single_query_sql(global_db: &str, shard_dbs: &[String], timeout: u64) -> String {
    let mut parts = Vec::new();
    for c in GLOBAL_COLS {
        parts.push(format!(
            "SELECT `{col}` AS id FROM `{global_db}`.`{t}` WHERE `{col}` IS NOT NULL",
            col = c.column(),
            t = c.table()
        ));
    }
    for db in shard_dbs {
        for c in SHARD_COLS {
            parts.push(format!(
                "SELECT `{col}` FROM `{db}`.`{t}` WHERE `{col}` IS NOT NULL",
                col = c.column(),
                t = c.table()
            ));
        }
    }
    let refs = format!(
        "(SELECT id, COUNT(*) AS n FROM ({}) u GROUP BY id)",
        parts.join(" UNION ALL ")
    );
    format!(
        "SET STATEMENT max_statement_time={timeout} FOR \
         SELECT b.BlobStorageID, b.NumReferences, COALESCE(r.n, 0) \
         FROM `{global_db}`.`BlobStorage` b LEFT JOIN {refs} r ON r.id = b.BlobStorageID \
         WHERE b.NumReferences <> COALESCE(r.n, 0) \
         UNION ALL \
         SELECT r.id, NULL, r.n FROM {refs} r \
         LEFT JOIN `{global_db}`.`BlobStorage` b ON b.BlobStorageID = r.id \
         WHERE b.BlobStorageID IS NULL"
    )
}

async fn time_single_query(url: &str, sql: &str) -> Result<(f64, Vec<Expect>), String> {
    let opts = mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let rows: Vec<(u64, Option<u64>, u64)> = conn.query(sql).await.map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let _ = conn.disconnect().await;
    let mut out: Vec<Expect> = rows
        .into_iter()
        .filter_map(|(id, stored, actual)| {
            classify(stored, actual).map(|k| Expect {
                blob_id: id,
                kind: k.to_string(),
                stored,
                actual,
                references: Vec::new(),
            })
        })
        .collect();
    out.sort();
    Ok((secs, out))
}

// ---------------------------------------------------------------------------
// Machine

fn machine() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1u64 << 20) as f64))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    vec![
        ("CPU".into(), format!("{model} ({mhz} MHz)")),
        ("cores (nproc)".into(), cores),
        ("RAM".into(), mem),
        ("kernel".into(), kernel),
    ]
}

// ---------------------------------------------------------------------------
// Main

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn human(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn blobcheck_binary(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.blobcheck {
        return Ok(p.clone());
    }
    // This bench runs from <target>/release/deps/scale-*; the CLI is <target>/release/blobcheck.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("blobcheck"))
        .ok_or("cannot locate the target directory")?;
    let built = fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let Some(built) = built else {
        return Err(format!(
            "{} does not exist: run `cargo build --release` first (or pass --blobcheck PATH)",
            bin.display()
        ));
    };
    // Warn when a source file is newer than the binary.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newer: Vec<String> = fs::read_dir(&src)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t > built)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !newer.is_empty() {
        eprintln!(
            "warning: {} is older than src/{{{}}}: run `cargo build --release` to time the current code",
            bin.display(),
            newer.join(",")
        );
    }
    Ok(bin)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(LAUNCHER_ARG) {
        return launcher_main();
    }
    // `cargo test --benches` (or --all-targets) runs this binary without any
    // argument; `cargo bench` passes `--bench`. Do not start a benchmark
    // from a test run.
    if std::env::args().len() == 1 {
        println!("scale: a benchmark; run it with `cargo bench --bench scale -- [options]`");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("scale: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("scale: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn step(t: &mut Instant, what: &str) -> f64 {
    let s = t.elapsed().as_secs_f64();
    eprintln!("[{s:8.1} s] {what}");
    *t = Instant::now();
    s
}

/// The bench's phases, timed one after the other: each lasts from the end
/// of the one before to its `step`.
struct Phases {
    started: Instant,
    done: Vec<(String, f64)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the phase `name`, saying `what` was done.
    fn step(&mut self, name: &str, what: &str) {
        let secs = step(&mut self.started, what);
        self.done.push((name.into(), secs));
    }
}

fn run(args: Args) -> Result<bool, String> {
    let bin = blobcheck_binary(&args)?;
    let mut launchers = vec![Launcher::start()?];
    let shards = args.shards;
    let labels = labels(shards);
    let total = Instant::now();
    let mut phases = Phases::start();
    let (workdir, mut tmp) = work_directory(&args)?;
    eprintln!(
        "scale: {} blobs, {shards} shard(s), seed {}; files in {}; timing {}",
        human(args.blobs),
        args.seed,
        workdir.display(),
        bin.display()
    );

    // 1. Generate.
    let (data, generated) = generate_data(&args, &labels, &workdir, &mut phases);
    // 2. Files.
    let files = write_files(&workdir, data, shards, &mut phases)?;
    // 3. Servers, loaded in parallel (one loader per server).
    let (mut servers, load_secs) = start_and_load(&args, &files, &workdir, &mut phases)?;
    let version = servers[0]
        .query("SELECT VERSION()")
        .ok()
        .and_then(|r| r.first().and_then(|r| r.first()).cloned())
        .unwrap_or_default();
    let config = write_config(&workdir, &servers, &labels, shards)?;

    // 4. Floor.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let floor = Floor::explained(&args, &servers)?;
    let server_refs: Vec<&Sandbox> = servers.iter().collect();
    floor.measure(&rt, &server_refs)?; // warm-up
    let mut floor_passes = Vec::new();
    for _ in 0..3 {
        floor_passes.push(floor.measure(&rt, &server_refs)?);
    }
    phases.step("floor (warm-up + timed)", "floor measured");
    let stream = stream_floor(&servers, floor.quiet_wait);
    phases.step("stream floor", "stream floor measured");

    // 5. blobcheck runs.
    let server_names: Vec<String> = servers.iter().map(|s| s.name().to_string()).collect();
    let output = workdir.join("findings.jsonl");
    let every_setting = |launchers: &mut Vec<Launcher>| {
        blobcheck_runs(
            &args,
            launchers,
            &bin,
            &config,
            &output,
            &server_refs,
            &generated.truth,
            floor.quiet_wait,
        )
    };
    let (results, all_ok) = every_setting(&mut launchers)?;
    phases.step("blobcheck runs", "blobcheck runs done");
    for _ in 0..2 {
        floor_passes.push(floor.measure(&rt, &server_refs)?);
    }
    hold_servers(&args, &servers, &config, &workdir);

    // 5b. Cold: the same again with buffer pools smaller than the data.
    let cold = match &args.cold_buffer_pool {
        Some(size) => {
            shrink_buffer_pools(&servers, size)?;
            phases.step("shrink buffer pools", "buffer pools shrunk");
            let mut passes = Vec::new();
            for _ in 0..2 {
                passes.push(floor.measure(&rt, &server_refs)?);
            }
            phases.step("cold floor", "cold floor measured");
            let (runs, ok) = every_setting(&mut launchers)?;
            phases.step("cold blobcheck runs", "cold blobcheck runs done");
            passes.push(floor.measure(&rt, &server_refs)?);
            Some(Cold {
                size: size.clone(),
                floor_passes: passes,
                results: runs,
                all_ok: ok,
            })
        }
        None => None,
    };
    let all_ok = all_ok && cold.as_ref().is_none_or(|c| c.all_ok);

    // 6. Single query.
    let single = if args.blobs <= args.single_query_max {
        Some(single_query(
            &args,
            &mut servers,
            &files,
            &workdir,
            &rt,
            &generated.truth,
            &mut phases,
        )?)
    } else {
        None
    };

    // 7. Report.
    let md = report(&Report {
        args: &args,
        bin: &bin,
        version: &version,
        generated: &generated,
        files: &files,
        phases: &phases.done,
        load_secs: &load_secs,
        floor_passes: &floor_passes,
        stream: &stream,
        results: &results,
        server_names: &server_names,
        single: single.as_ref(),
        cold: cold.as_ref(),
        all_ok,
        total,
    });
    println!("{md}");
    let _ = fs::write(workdir.join("results.md"), &md);

    keep_or_clean(&args, &servers, &mut tmp, &workdir);
    drop(servers);
    drop(tmp);
    Ok(all_ok)
}

/// `--workdir`, or a fresh temporary directory (returned too: it is removed
/// when dropped).
fn work_directory(args: &Args) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    Ok(match &args.workdir {
        Some(d) => {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            (d.canonicalize().map_err(|e| e.to_string())?, None)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("bcbench-")
                .tempdir_in("/tmp")
                .map_err(|e| e.to_string())?;
            (dir.path().to_path_buf(), Some(dir))
        }
    })
}

/// What the report says of the generated data, with its ground truth.
struct Generated {
    truth: Vec<Expect>,
    /// Findings of the ground truth per kind.
    kinds: BTreeMap<String, u64>,
    ref_rows: u64,
    /// Blobs with a stored count of 1.
    ones: usize,
    stored_sum: u64,
    max_stored: u64,
    /// The largest blob id below 2^63.
    span: u64,
    rows_per_table: Vec<(String, u64)>,
}

/// Phase 1: the data, its ground truth (also written to `truth.txt`), and
/// the facts about it the report gives.
fn generate_data(
    args: &Args,
    labels: &[String],
    workdir: &Path,
    phases: &mut Phases,
) -> (Data, Generated) {
    let data = generate(args.blobs as usize, args.shards, args.seed);
    let ref_rows = data.reference_rows();
    phases.step("generate", "generated");
    let truth = ground_truth(&data, labels);
    phases.step("ground truth", "ground truth computed");
    let mut truth_file = String::new();
    for e in &truth {
        let _ = writeln!(truth_file, "{e:?}");
    }
    let _ = fs::write(workdir.join("truth.txt"), truth_file);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for e in &truth {
        *kinds.entry(e.kind.clone()).or_default() += 1;
    }
    let ones = data.blobs.iter().filter(|b| b.1 == 1).count();
    let stored_sum: u64 = data.blobs.iter().map(|b| b.1).sum();
    let max_stored = data.blobs.iter().map(|b| b.1).max().unwrap_or(0);
    let span = data
        .blobs
        .iter()
        .filter(|b| b.0 < 1 << 63)
        .map(|b| b.0)
        .max()
        .unwrap_or(0);
    let mut rows_per_table: Vec<(String, u64)> = vec![
        ("global BlobStorage".into(), data.blobs.len() as u64),
        ("global SentMessage".into(), data.sent_message.len() as u64),
        (
            "global SentAttachment".into(),
            data.sent_attachment.len() as u64,
        ),
    ];
    for (s, sh) in data.shards.iter().enumerate() {
        let s = s + 1;
        rows_per_table.push((format!("shard{s} Attachment"), sh.attachment.len() as u64));
        rows_per_table.push((
            format!("shard{s} OutsideAttachment"),
            sh.outside.len() as u64,
        ));
        rows_per_table.push((format!("shard{s} ContactData"), sh.contact.len() as u64));
        rows_per_table.push((format!("shard{s} MessageData"), sh.messages.len() as u64));
    }
    let generated = Generated {
        truth,
        kinds,
        ref_rows,
        ones,
        stored_sum,
        max_stored,
        span,
        rows_per_table,
    };
    (data, generated)
}

/// The TSV files of every server, and what the later phases need of the
/// data once it is dropped.
struct Files {
    gdir: PathBuf,
    sdirs: Vec<PathBuf>,
    gsize: u64,
    ssizes: Vec<u64>,
    blob_count: u64,
    heavy: Vec<u64>,
    injected: BTreeMap<&'static str, u64>,
}

/// Phase 2: the TSV files; the data is dropped before the phase ends.
fn write_files(
    workdir: &Path,
    data: Data,
    shards: usize,
    phases: &mut Phases,
) -> Result<Files, String> {
    let gdir = workdir.join("global");
    write_global(&gdir, &data).map_err(|e| format!("writing {}: {e}", gdir.display()))?;
    let sdirs: Vec<PathBuf> = (1..=shards)
        .map(|s| workdir.join(format!("shard{s}")))
        .collect();
    for (s, d) in sdirs.iter().enumerate() {
        write_shard(d, &data.shards[s]).map_err(|e| format!("writing {}: {e}", d.display()))?;
    }
    let gsize = dir_size(&gdir);
    let ssizes: Vec<u64> = sdirs.iter().map(|d| dir_size(d)).collect();
    let blob_count = data.blobs.len() as u64;
    let heavy = data.heavy.clone();
    let injected = data.injected.clone();
    drop(data);
    phases.step("write TSV", "TSV files written");
    Ok(Files {
        gdir,
        sdirs,
        gsize,
        ssizes,
        blob_count,
        heavy,
        injected,
    })
}

/// The buffer pool of the global server (`global`) or a shard loaded with
/// `bytes` of TSV files.
fn buffer_pool(args: &Args, bytes: u64, global: bool) -> String {
    match &args.buffer_pool {
        Some((g, _)) if global => g.clone(),
        Some((_, s)) => s.clone(),
        None => buffer_pool_for(bytes),
    }
}

/// `512M`, `2G`, or plain bytes, as bytes.
fn pool_bytes(size: &str) -> Option<u64> {
    let (digits, unit) = match size.char_indices().last()? {
        (i, 'K' | 'k') => (&size[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&size[..i], 1 << 20),
        (i, 'G' | 'g') => (&size[..i], 1 << 30),
        _ => (size, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// `--cold-buffer-pool`: shrinks each server's buffer pool online to
/// `size` and waits until the resize has finished, so that every later
/// pass over data larger than the pool reads from disk (InnoDB opens its
/// files with O_DIRECT by default: the page cache does not hold them).
fn shrink_buffer_pools(servers: &[Sandbox], size: &str) -> Result<(), String> {
    let bytes = pool_bytes(size).ok_or_else(|| format!("bad buffer pool size `{size}`"))?;
    for sb in servers {
        let q = |sql: &str| sb.query(sql).map_err(|e| format!("{}: {e}", sb.name()));
        q(&format!("SET GLOBAL innodb_buffer_pool_size = {bytes}"))?;
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let now: u64 = q("SELECT @@innodb_buffer_pool_size")?
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let status = q("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_resize_status'")?
                .first()
                .and_then(|r| r.get(1).cloned())
                .unwrap_or_default();
            let busy = status.contains("Resizing") || status.contains("Withdraw");
            if now <= bytes.next_multiple_of(128 << 20) && !busy {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: the buffer pool did not shrink to {size} in 15 minutes ({status})",
                    sb.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let flush = q("SELECT @@innodb_flush_method")?
            .first()
            .and_then(|r| r.first().cloned())
            .unwrap_or_default();
        eprintln!(
            "scale: {}: buffer pool {size}, innodb_flush_method {flush}",
            sb.name()
        );
    }
    Ok(())
}

/// The servers, with the seconds each one's LOAD DATA took.
type Loaded = (Vec<Sandbox>, Vec<(String, f64)>);

/// Phase 3: the global server and one per shard, started and loaded in
/// parallel (one loader per server), their dirty pages flushed. Returns
/// them with the seconds each LOAD DATA took.
fn start_and_load(
    args: &Args,
    files: &Files,
    workdir: &Path,
    phases: &mut Phases,
) -> Result<Loaded, String> {
    let mut loaders = Vec::new();
    {
        let (g, p, w) = (
            files.gdir.clone(),
            buffer_pool(args, files.gsize, true),
            workdir.to_path_buf(),
        );
        loaders.push(std::thread::spawn(
            move || -> Result<(Sandbox, f64), String> {
                let sb = start_server("global", &p, &w)?;
                let t = Instant::now();
                sb.run_sql(&global_load_sql(&g, "ProtonMailGlobal"))
                    .map_err(|e| format!("loading global: {e}"))?;
                sb.run_sql(&create_checker_sql(&["ProtonMailGlobal"]))
                    .map_err(|e| e.to_string())?;
                Ok((sb, t.elapsed().as_secs_f64()))
            },
        ));
    }
    for (s, d) in files.sdirs.iter().enumerate() {
        let (d, p, w) = (
            d.clone(),
            buffer_pool(args, files.ssizes[s], false),
            workdir.to_path_buf(),
        );
        let name = format!("shard{}", s + 1);
        loaders.push(std::thread::spawn(
            move || -> Result<(Sandbox, f64), String> {
                let sb = start_server(&name, &p, &w)?;
                let t = Instant::now();
                sb.run_sql(&shard_load_sql(&d, "ProtonMailShard"))
                    .map_err(|e| format!("loading {name}: {e}"))?;
                sb.run_sql(&create_checker_sql(&["ProtonMailShard"]))
                    .map_err(|e| e.to_string())?;
                Ok((sb, t.elapsed().as_secs_f64()))
            },
        ));
    }
    let mut servers = Vec::new();
    let mut load_secs = Vec::new();
    let mut failure = None;
    for l in loaders {
        match l
            .join()
            .map_err(|_| "loader panicked".to_string())
            .and_then(|r| r)
        {
            Ok((sb, secs)) => {
                load_secs.push((sb.name().to_string(), secs));
                servers.push(sb);
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    phases.step("start + LOAD DATA", "servers started and loaded");
    for sb in &servers {
        settle(sb)?;
    }
    phases.step("flush dirty pages", "dirty pages flushed");
    Ok((servers, load_secs))
}

/// blobcheck's configuration for `servers`, written to
/// `workdir/blobcheck.toml`.
fn write_config(
    workdir: &Path,
    servers: &[Sandbox],
    labels: &[String],
    shards: usize,
) -> Result<PathBuf, String> {
    let mut toml = String::new();
    for sb in servers {
        let _ = writeln!(
            toml,
            "[servers.{}]\nurl = \"{}\"\npassword_env = \"BLOBCHECK_BENCH_PASSWORD\"\n",
            sb.name(),
            sb.url_for(CHECKER_USER, "")
        );
    }
    toml += "[blobs]\nserver = \"global\"\ntable = \"ProtonMailGlobal.BlobStorage\"\nid = \"BlobStorageID\"\ncount = \"NumReferences\"\n\n";
    let mut li = 0;
    for c in GLOBAL_COLS {
        let _ = writeln!(
            toml,
            "[[references]]\nserver = \"global\"\ntable = \"ProtonMailGlobal.{}\"\ncolumn = \"{}\"\nname = \"{}\"\n",
            c.table(),
            c.column(),
            labels[li]
        );
        li += 1;
    }
    for s in 1..=shards {
        for c in SHARD_COLS {
            let _ = writeln!(
                toml,
                "[[references]]\nserver = \"shard{s}\"\ntable = \"ProtonMailShard.{}\"\ncolumn = \"{}\"\nname = \"{}\"\n",
                c.table(),
                c.column(),
                labels[li]
            );
            li += 1;
        }
    }
    let config = workdir.join("blobcheck.toml");
    fs::write(&config, &toml).map_err(|e| e.to_string())?;
    Ok(config)
}

/// (label, SQL, index) of each floor query of a server.
type FloorQueries = Vec<(String, String, String)>;

/// Phase 4: the floor queries of every server, checked with EXPLAIN to use
/// their index.
struct Floor {
    /// (root URL, server name, queries as `floor_queries` gives them) per
    /// server.
    sets: Vec<(String, String, FloorQueries)>,
    /// `--quiet-wait`: how long to wait for a quiet machine before a
    /// measurement (0: do not wait).
    quiet_wait: Duration,
}

impl Floor {
    fn explained(args: &Args, servers: &[Sandbox]) -> Result<Floor, String> {
        let mut sets = Vec::new();
        for sb in servers {
            let mut q = if sb.name() == "global" {
                floor_queries("ProtonMailGlobal", &[])
            } else {
                floor_queries("", &["ProtonMailShard".to_string()])
            };
            explain_floor(sb, &mut q, args.floor_check)?;
            sets.push((sb.root_url(), sb.name().to_string(), q));
        }
        Ok(Floor {
            sets,
            quiet_wait: Duration::from_secs(args.quiet_wait),
        })
    }

    /// One pass over every floor query; also returns the CPU seconds the
    /// rest of the machine used meanwhile.
    fn measure(
        &self,
        rt: &tokio::runtime::Runtime,
        servers: &[&Sandbox],
    ) -> Result<(Vec<FloorItem>, f64), String> {
        if !self.quiet_wait.is_zero() {
            wait_quiet(self.quiet_wait);
        }
        let (b0, s0) = (machine_busy(), servers_cpu(servers));
        let mut items = Vec::new();
        for (url, name, q) in &self.sets {
            items.extend(rt.block_on(time_floor(url, name, q))?);
        }
        let busy = machine_busy().saturating_sub(b0).as_secs_f64();
        let server = servers_cpu(servers).saturating_sub(s0).as_secs_f64();
        Ok((items, (busy - server).max(0.0)))
    }
}

/// The cost of streaming every row blobcheck needs to a lean C client:
/// the blob table's (id, count) and each column's (id, COUNT(*)) grouped,
/// whole tables at once, read by `mariadb --quick` into /dev/null. The
/// best of 2 per query, as (server and what, seconds).
fn stream_floor(servers: &[Sandbox], quiet_wait: Duration) -> Vec<(String, f64)> {
    let mut stream: Vec<(String, f64)> = Vec::new();
    for sb in servers {
        let sqls: Vec<(String, String)> = if sb.name() == "global" {
            let mut v = vec![(
                "BlobStorage (id, count)".to_string(),
                "SELECT BlobStorageID, NumReferences FROM ProtonMailGlobal.BlobStorage FORCE INDEX (PRIMARY) ORDER BY BlobStorageID".to_string(),
            )];
            for c in GLOBAL_COLS {
                v.push((format!("{}.{}", c.table(), c.column()), format!(
                    "SELECT `{col}`, COUNT(*) FROM ProtonMailGlobal.`{t}` FORCE INDEX (`{col}`) WHERE `{col}` IS NOT NULL GROUP BY `{col}` ORDER BY `{col}`",
                    col = c.column(), t = c.table())));
            }
            v
        } else {
            SHARD_COLS
                .iter()
                .map(|c| (format!("{}.{}", c.table(), c.column()), format!(
                    "SELECT `{col}`, COUNT(*) FROM ProtonMailShard.`{t}` FORCE INDEX (`{col}`) WHERE `{col}` IS NOT NULL GROUP BY `{col}` ORDER BY `{col}`",
                    col = c.column(), t = c.table())))
                .collect()
        };
        for (what, sql) in sqls {
            let mut best = f64::MAX;
            for _ in 0..2 {
                if !quiet_wait.is_zero() {
                    wait_quiet(quiet_wait);
                }
                let t0 = Instant::now();
                let ok = Command::new("mariadb")
                    .args([
                        "--no-defaults",
                        "-h127.0.0.1",
                        "-uroot",
                        "-N",
                        "--quick",
                        "--batch",
                    ])
                    .arg(format!("-P{}", sb.port()))
                    .args(["-e", &sql])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    best = f64::NAN;
                    break;
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            stream.push((format!("{} {what}", sb.name()), best));
        }
    }
    stream
}

/// The runs of one setting, named by its arguments.
type SettingRuns = (String, Vec<RunResult>);

/// Phase 5: every setting, `--runs` times, each run's line printed as it
/// ends. Returns the runs, and whether every run's findings equal the
/// ground truth.
#[allow(clippy::too_many_arguments)]
fn blobcheck_runs(
    args: &Args,
    launchers: &mut Vec<Launcher>,
    bin: &Path,
    config: &Path,
    output: &Path,
    servers: &[&Sandbox],
    truth: &[Expect],
    quiet_wait: Duration,
) -> Result<(Vec<SettingRuns>, bool), String> {
    let mut results: Vec<SettingRuns> = Vec::new();
    let mut all_ok = true;
    for setting in &args.settings {
        let mut rs = Vec::new();
        for r in 0..args.runs {
            if !quiet_wait.is_zero() {
                wait_quiet(quiet_wait);
            }
            let (parts, env, blobcheck_args) = parse_setting(setting)?;
            let res = run_blobcheck(
                launchers,
                parts,
                &env,
                bin,
                config,
                output,
                blobcheck_args,
                servers,
                truth,
            )?;
            eprintln!(
                "  blobcheck {:<32} run {}: {:7.3} s, RSS {:6} MB, client CPU {:6.2} s, server CPU {:6.2} s, other CPU {:5.2} s, {} findings{}",
                setting.join(" "),
                r + 1,
                res.wall,
                mb(res.max_rss_kb),
                res.cpu_user + res.cpu_sys,
                res.server_cpu,
                res.other_cpu,
                res.findings,
                if res.problems.is_empty() {
                    ", exact".to_string()
                } else {
                    format!(", {} PROBLEMS", res.problems.len())
                }
            );
            if !res.problems.is_empty() {
                all_ok = false;
                for p in res.problems.iter().take(20) {
                    eprintln!("    {p}");
                }
            }
            rs.push(res);
        }
        results.push((setting.join(" "), rs));
    }
    Ok((results, all_ok))
}

/// `--hold`: keeps the servers up for that long (or until `workdir/stop`
/// exists), for a person to look at them.
fn hold_servers(args: &Args, servers: &[Sandbox], config: &Path, workdir: &Path) {
    if args.hold == 0 {
        return;
    }
    eprintln!(
        "scale: holding the servers for {} s (config {}):",
        args.hold,
        config.display()
    );
    for sb in servers {
        eprintln!(
            "  {} at {} (socket {}, pid {:?})",
            sb.name(),
            sb.root_url(),
            sb.socket().display(),
            sb.pid()
        );
    }
    let stop = workdir.join("stop");
    eprintln!("  (touch {} to stop holding)", stop.display());
    let until = Instant::now() + Duration::from_secs(args.hold);
    while Instant::now() < until && !stop.exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (seconds, rows, differences from the ground truth), or why it failed.
type SingleResult = Result<(f64, usize, Vec<String>), String>;

/// Phase 6's outcome: the single query's, and the floor measured on its
/// server.
struct Single {
    result: SingleResult,
    combined_floor: f64,
}

/// Phase 6: every database on one server (the split servers are stopped
/// first: their memory and CPU are not needed any more), its floor, and the
/// single query, compared with the ground truth.
fn single_query(
    args: &Args,
    servers: &mut Vec<Sandbox>,
    files: &Files,
    workdir: &Path,
    rt: &tokio::runtime::Runtime,
    truth: &[Expect],
    phases: &mut Phases,
) -> Result<Single, String> {
    let shards = args.shards;
    let quiet_wait = Duration::from_secs(args.quiet_wait);
    servers.clear();
    let total_bytes = files.gsize + files.ssizes.iter().sum::<u64>();
    let sb = start_server("combined", &buffer_pool(args, total_bytes, true), workdir)?;
    sb.run_sql(&global_load_sql(&files.gdir, "ProtonMailGlobal"))
        .map_err(|e| format!("loading combined: {e}"))?;
    let shard_dbs: Vec<String> = (1..=shards)
        .map(|s| {
            if shards == 1 {
                "ProtonMailShard".to_string()
            } else {
                format!("ProtonMailShard{s}")
            }
        })
        .collect();
    for (s, d) in files.sdirs.iter().enumerate() {
        sb.run_sql(&shard_load_sql(d, &shard_dbs[s]))
            .map_err(|e| format!("loading combined: {e}"))?;
    }
    settle(&sb)?;
    phases.step("single-query server load", "combined server loaded");
    let mut q = floor_queries("ProtonMailGlobal", &shard_dbs);
    explain_floor(&sb, &mut q, args.floor_check)?;
    let url = sb.root_url();
    rt.block_on(time_floor(&url, "combined", &q))?;
    let mut cf = f64::MAX;
    for _ in 0..3 {
        if !quiet_wait.is_zero() {
            wait_quiet(quiet_wait);
        }
        let pass = rt.block_on(time_floor(&url, "combined", &q))?;
        cf = cf.min(pass.iter().map(|f| f.secs).sum::<f64>());
    }
    let sql = single_query_sql("ProtonMailGlobal", &shard_dbs, args.single_query_timeout);
    let _ = fs::write(workdir.join("single-query.sql"), &sql);
    if !quiet_wait.is_zero() {
        wait_quiet(quiet_wait);
    }
    let before = servers_cpu(&[&sb]);
    let busy0 = machine_busy();
    let r = rt.block_on(time_single_query(&url, &sql));
    let cpu = servers_cpu(&[&sb]).saturating_sub(before).as_secs_f64();
    let other = (machine_busy().saturating_sub(busy0).as_secs_f64() - cpu).max(0.0);
    let single = r.map(|(secs, got)| {
        let mut t2 = truth.to_vec();
        for e in &mut t2 {
            e.references.clear();
        }
        let problems = compare(&got, &t2, false);
        eprintln!(
            "  single query: {secs:.3} s (server CPU {cpu:.2} s, other processes {other:.2} CPU s), {} rows",
            got.len()
        );
        (secs, got.len(), problems)
    });
    if let Ok((_, _, p)) = &single
        && !p.is_empty()
    {
        eprintln!("  single query result differs from the ground truth:");
        for x in p.iter().take(10) {
            eprintln!("    {x}");
        }
    }
    phases.step("single query", "single query timed");
    drop(sb);
    Ok(Single {
        result: single,
        combined_floor: cf,
    })
}

/// Everything the report gives.
struct Report<'a> {
    args: &'a Args,
    bin: &'a Path,
    version: &'a str,
    generated: &'a Generated,
    files: &'a Files,
    phases: &'a [(String, f64)],
    load_secs: &'a [(String, f64)],
    /// Every timed floor pass, with the CPU seconds the rest of the machine
    /// used meanwhile.
    floor_passes: &'a [(Vec<FloorItem>, f64)],
    stream: &'a [(String, f64)],
    results: &'a [SettingRuns],
    server_names: &'a [String],
    /// `None` when skipped.
    single: Option<&'a Single>,
    /// `--cold-buffer-pool`: the floor and the runs with small pools.
    cold: Option<&'a Cold>,
    all_ok: bool,
    /// When the bench started.
    total: Instant,
}

impl Report<'_> {
    /// Each floor pass's total seconds.
    fn pass_sums(&self) -> Vec<f64> {
        self.floor_passes
            .iter()
            .map(|p| p.0.iter().map(|f| f.secs).sum())
            .collect()
    }

    /// The fastest floor pass: its index and total seconds, the floor.
    fn fastest_pass(&self) -> (usize, f64) {
        let pass_sums = self.pass_sums();
        let best_pass = (0..pass_sums.len())
            .min_by(|&a, &b| pass_sums[a].total_cmp(&pass_sums[b]))
            .unwrap();
        (best_pass, pass_sums[best_pass])
    }
}

/// `--cold-buffer-pool`: what was measured after the pools were shrunk.
struct Cold {
    size: String,
    /// Two passes before the runs, one after.
    floor_passes: Vec<(Vec<FloorItem>, f64)>,
    results: Vec<SettingRuns>,
    all_ok: bool,
}

/// Phase 7: the results as Markdown, as BENCHMARKS.md keeps them.
fn report(r: &Report) -> String {
    let mut md = String::new();
    report_data(&mut md, r);
    report_floor(&mut md, r, "warm; 3 before, 2 after the blobcheck runs");
    let (best, peak) = report_runs(&mut md, r);
    report_single(&mut md, r);
    report_targets(&mut md, r, best, peak);
    if let Some(cold) = r.cold {
        let _ = writeln!(
            md,
            "\n### Cold: every server's buffer pool shrunk to {} (smaller than the data), the same settings\n",
            cold.size
        );
        let cold_report = Report {
            floor_passes: &cold.floor_passes,
            results: &cold.results,
            stream: &[],
            cold: None,
            all_ok: cold.all_ok,
            ..*r
        };
        report_floor(
            &mut md,
            &cold_report,
            "cold; 2 before, 1 after the blobcheck runs",
        );
        report_runs(&mut md, &cold_report);
    }
    md
}

/// The machine, the data, the injected faults, the ground truth and the
/// phases' times.
fn report_data(md: &mut String, r: &Report) {
    let (args, g, files) = (r.args, r.generated, r.files);
    let _ = writeln!(
        md,
        "\n## Results: {} blobs, {} shard(s), seed {}\n",
        human(args.blobs),
        args.shards,
        args.seed
    );
    let _ = writeln!(md, "| machine | |\n| --- | --- |");
    for (k, v) in machine() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "| MariaDB | {} |", r.version);
    let _ = writeln!(md, "| blobcheck | `{}` |", r.bin.display());
    let _ = writeln!(
        md,
        "\nData: {} blob rows ({} with NumReferences = 1, {:.2}%; max {}; sum {}), {} reference rows ({:.2} per blob), ids up to {} plus {} above 2^63; heavy blobs (intended counts): {:?}.",
        human(files.blob_count),
        human(g.ones as u64),
        100.0 * g.ones as f64 / files.blob_count as f64,
        human(g.max_stored),
        human(g.stored_sum),
        human(g.ref_rows),
        g.ref_rows as f64 / files.blob_count as f64,
        human(g.span),
        (args.blobs / 100_000).clamp(3, args.blobs / 2),
        files.heavy
    );
    let _ = writeln!(md, "\n| table | rows |\n| --- | ---: |");
    for (k, v) in &g.rows_per_table {
        let _ = writeln!(md, "| {k} | {} |", human(*v));
    }
    let _ = writeln!(
        md,
        "\nInjected faults: {}.",
        files
            .injected
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "Ground truth (brute force over the generated rows): {} findings ({}).",
        g.truth.len(),
        g.kinds
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(md, "\n| phase | seconds |\n| --- | ---: |");
    for (k, v) in r.phases {
        let _ = writeln!(md, "| {k} | {v:.1} |");
    }
    for (name, secs) in r.load_secs {
        let _ = writeln!(md, "| LOAD DATA {name} | {secs:.1} |");
    }
}

/// The fastest floor pass, query by query, and the streaming floor.
/// `passes` says which passes these were.
fn report_floor(md: &mut String, r: &Report, passes: &str) {
    let pass_sums = r.pass_sums();
    let (best_pass, floor) = r.fastest_pass();
    let floor_best = &r.floor_passes[best_pass].0;
    let _ = writeln!(
        md,
        "\nFloor (index-only scans, one after the other): the fastest of {} passes ({passes}; their sums: {}):\n",
        pass_sums.len(),
        pass_sums
            .iter()
            .zip(r.floor_passes)
            .map(|(s, p)| format!("{s:.3} s (other processes {:.2} CPU s)", p.1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "| server | index | rows | seconds |\n| --- | --- | ---: | ---: |"
    );
    for b in floor_best {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} |",
            b.server,
            b.what,
            human(b.rows),
            b.secs
        );
    }
    let _ = writeln!(md, "| **floor** | | | **{floor:.3}** |");
    let _ = writeln!(
        md,
        "\nFloor queries: `` {} ``, and `SELECT COUNT(col) FROM t FORCE INDEX (col)` for each reference column.",
        floor_best.first().map(|f| f.sql.as_str()).unwrap_or("")
    );
    if r.stream.is_empty() {
        return;
    }
    let stream_total: f64 = r.stream.iter().map(|s| s.1).sum();
    let _ = writeln!(
        md,
        "\nStreaming floor: every row the check needs, whole tables at once (`SELECT id, count … ORDER BY id`, `SELECT col, COUNT(*) … GROUP BY col`), read over TCP by `mariadb --quick` into /dev/null, one after the other, best of 2: **{stream_total:.3} s** = {:.2}× the floor ({}).",
        stream_total / floor,
        r.stream
            .iter()
            .map(|(w, s)| format!("{w} {s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A table row per setting, and the server CPU per server. Returns the
/// best wall time and the peak RSS of all runs.
fn report_runs(md: &mut String, r: &Report) -> (f64, u64) {
    let (_, floor) = r.fastest_pass();
    let _ = writeln!(
        md,
        "\nblobcheck ({} runs per setting; CPU seconds, queries, rows and MB the servers sent are medians per run; peak RSS is the largest of the runs):\n",
        r.args.runs
    );
    let _ = writeln!(
        md,
        "| setting | min s | median s | min / floor | median / floor | peak RSS MB | client CPU s | server CPU s | other CPU s | queries | rows sent | MB sent | findings exact |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    let mut best = f64::MAX;
    let mut peak = 0u64;
    for (name, rs) in r.results {
        let mut walls: Vec<f64> = rs.iter().map(|r| r.wall).collect();
        let min = walls.iter().cloned().fold(f64::MAX, f64::min);
        let med = median(&mut walls);
        let rss = rs.iter().map(|r| r.max_rss_kb).max().unwrap_or(0);
        let mut cc: Vec<f64> = rs.iter().map(|r| r.cpu_user + r.cpu_sys).collect();
        let mut sc: Vec<f64> = rs.iter().map(|r| r.server_cpu).collect();
        let exact = rs.iter().all(|r| r.problems.is_empty());
        let mut oc: Vec<f64> = rs.iter().map(|r| r.other_cpu).collect();
        let mut q: Vec<f64> = rs.iter().map(|r| r.traffic.queries as f64).collect();
        let mut rows: Vec<f64> = rs.iter().map(|r| r.traffic.rows as f64).collect();
        let mut bytes: Vec<f64> = rs.iter().map(|r| r.traffic.bytes as f64).collect();
        best = best.min(min);
        peak = peak.max(rss);
        let _ = writeln!(
            md,
            "| `{name}` | {min:.3} | {med:.3} | {:.2}× | {:.2}× | {} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {} |",
            min / floor,
            med / floor,
            mb(rss),
            median(&mut cc),
            median(&mut sc),
            median(&mut oc),
            human(median(&mut q) as u64),
            human(median(&mut rows) as u64),
            median(&mut bytes) / 1e6,
            if exact { "yes" } else { "**NO**" }
        );
    }
    let _ = writeln!(
        md,
        "\nServer CPU seconds per server (median per run):\n\n| setting | {} |\n| --- |{}",
        r.server_names.join(" | "),
        " ---: |".repeat(r.server_names.len())
    );
    for (name, rs) in r.results {
        let cells: Vec<String> = (0..r.server_names.len())
            .map(|i| {
                let mut v: Vec<f64> = rs
                    .iter()
                    .map(|r| r.server_cpu_each.get(i).copied().unwrap_or(0.0))
                    .collect();
                format!("{:.2}", median(&mut v))
            })
            .collect();
        let _ = writeln!(md, "| `{name}` | {} |", cells.join(" | "));
    }
    let partitioned: Vec<_> = r
        .results
        .iter()
        .filter(|(_, rs)| rs.iter().any(|r| !r.parts.is_empty()))
        .collect();
    if !partitioned.is_empty() {
        let _ = writeln!(
            md,
            "\nPartition balance (each run: the largest partition against the mean, in rows read and in wall time; rows per partition):\n\n| setting | run | rows largest / mean | time largest / mean | rows per partition | seconds per partition |\n| --- | ---: | ---: | ---: | --- | --- |"
        );
        for (name, rs) in partitioned {
            for (i, run) in rs.iter().enumerate() {
                let rows: Vec<f64> = run.parts.iter().map(|p| p.1 as f64).collect();
                let secs: Vec<f64> = run.parts.iter().map(|p| p.0).collect();
                let ratio = |v: &[f64]| {
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    v.iter().cloned().fold(0.0, f64::max) / mean
                };
                let _ = writeln!(
                    md,
                    "| `{name}` | {} | {:.3} | {:.3} | {} | {} |",
                    i + 1,
                    ratio(&rows),
                    ratio(&secs),
                    run.parts
                        .iter()
                        .map(|p| p.1.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    secs.iter()
                        .map(|s| format!("{s:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    (best, peak)
}

/// The single query against the floor, or why there is none.
fn report_single(md: &mut String, r: &Report) {
    let (_, floor) = r.fastest_pass();
    let args = r.args;
    match r.single {
        Some(Single {
            result: Ok((secs, rows, problems)),
            combined_floor,
        }) => {
            let _ = writeln!(
                md,
                "\nSingle query (all databases on one server, default tmp_table_size): {secs:.3} s = {:.1}× the floor ({:.1}× the floor measured on that server, {:.3} s); {rows} rows, {}.",
                secs / floor,
                secs / combined_floor,
                combined_floor,
                if problems.is_empty() {
                    "equal to the ground truth".to_string()
                } else {
                    format!("{} differences from the ground truth", problems.len())
                }
            );
        }
        Some(Single { result: Err(e), .. }) => {
            let _ = writeln!(
                md,
                "\nSingle query: failed or timed out after {} s: {e}",
                args.single_query_timeout
            );
        }
        None => {
            let _ = writeln!(
                md,
                "\nSingle query: skipped ({} blobs > --single-query-max {}).",
                human(args.blobs),
                human(args.single_query_max)
            );
        }
    }
}

/// The targets against the best wall time and the peak RSS, and the total
/// time of the bench.
fn report_targets(md: &mut String, r: &Report, best: f64, peak: u64) {
    let (_, floor) = r.fastest_pass();
    let _ = writeln!(
        md,
        "\nTargets: best wall time {best:.3} s = {:.2}× the floor (target ≤ 2×: {}); peak RSS {} MB (target ≤ 64 MB: {}); findings {}.",
        best / floor,
        if best <= 2.0 * floor {
            "met"
        } else {
            "NOT met"
        },
        mb(peak),
        if peak <= 64 * 1024 { "met" } else { "NOT met" },
        if r.all_ok {
            "exactly equal to the ground truth in every run"
        } else {
            "NOT equal to the ground truth (see above)"
        }
    );
    let _ = writeln!(
        md,
        "\nTotal bench time: {:.0} s.",
        r.total.elapsed().as_secs_f64()
    );
}

/// `--keep`: the work directory stays, and on a terminal the servers too
/// until Enter; `--workdir`: the generated files stay.
fn keep_or_clean(
    args: &Args,
    servers: &[Sandbox],
    tmp: &mut Option<tempfile::TempDir>,
    workdir: &Path,
) {
    if args.keep {
        eprintln!("scale: kept {}", workdir.display());
        if !servers.is_empty() && std::io::stdin().is_terminal() {
            for sb in servers {
                eprintln!(
                    "  {} at {} (socket {})",
                    sb.name(),
                    sb.root_url(),
                    sb.socket().display()
                );
            }
            eprintln!("press Enter to stop the servers");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        if let Some(dir) = tmp.take() {
            let _ = dir.keep();
        }
    } else if args.workdir.is_some() {
        eprintln!(
            "scale: generated files left in {} (--workdir)",
            workdir.display()
        );
    }
}
