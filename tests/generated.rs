//! Generated data with injected faults, spread over the two servers: the
//! findings must equal a brute-force count of the rows actually loaded.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use blobcheck::config::Config;
use blobcheck::plan::IdRange;
use common::{Exact, check_json, servers};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The rows of one generated data set.
struct Dataset {
    name: String,
    /// BlobStorageID → NumReferences.
    blobs: BTreeMap<u64, u64>,
    /// Global `Sent(ID, BlobStorageID NULL)`.
    sent: Vec<Option<u64>>,
    /// Shard `Message(MessageID, Body, Header)`.
    messages: Vec<(u64, u64)>,
    /// Shard `Attachment(ID, BlobStorageID NULL)`.
    attachments: Vec<Option<u64>>,
}

const LABELS: [&str; 4] = ["sent", "body", "header", "attachment"];

impl Dataset {
    fn generate(name: &str, seed: u64, blob_count: usize) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Dataset {
            name: name.into(),
            blobs: BTreeMap::new(),
            sent: Vec::new(),
            messages: Vec::new(),
            attachments: Vec::new(),
        };
        // Sparse ids in two clusters: low AUTO_INCREMENT-like ids and ids
        // above 2^63, the last of them right below 2^64.
        let mut id = rng.random_range(10..1000u64);
        let mut ids = Vec::new();
        for i in 0..blob_count {
            if i == blob_count * 9 / 10 {
                id = (1 << 63) - 5;
            }
            id += rng.random_range(1..4);
            ids.push(id);
        }
        ids.push(u64::MAX - 1);
        let mut pending_bodies: Vec<u64> = Vec::new();
        for (n, &id) in ids.iter().enumerate() {
            let references = match rng.random_range(0..1000) {
                0 => 0,
                1..=5 => rng.random_range(2..20),
                _ if n == ids.len() / 2 => 3000,
                _ => 1,
            };
            for _ in 0..references {
                match rng.random_range(0..10) {
                    0..=1 => data.sent.push(Some(id)),
                    2..=3 => data.attachments.push(Some(id)),
                    _ => pending_bodies.push(id),
                }
            }
            data.blobs.insert(id, references);
        }
        // Messages pair up body and header references.
        pending_bodies.reverse();
        while let Some(body) = pending_bodies.pop() {
            let header = pending_bodies.pop().unwrap_or(body);
            if header == body && pending_bodies.is_empty() && rng.random_bool(0.5) {
                // One message with Body = Header counts twice; fix the count.
                *data.blobs.get_mut(&body).unwrap() += 1;
            } else if header == body {
                // Odd one out: give it a fresh blob as its header.
                let fresh = ids[0] - 1;
                data.blobs.entry(fresh).and_modify(|c| *c += 1).or_insert(1);
                data.messages.push((body, fresh));
                continue;
            }
            data.messages.push((body, header));
        }
        data.inject_faults(&mut rng, &ids);
        data
    }

    fn inject_faults(&mut self, rng: &mut StdRng, ids: &[u64]) {
        let pick = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
        // Every kind of fault, in turn, so that even a small set has each.
        for fault in 0..(ids.len() / 50).max(16) {
            match fault % 8 {
                // Count too high or too low.
                0 => {
                    if let Some(c) = self.blobs.get_mut(&pick(rng)) {
                        *c += rng.random_range(1..3);
                    }
                }
                1 => {
                    if let Some(c) = self.blobs.get_mut(&pick(rng)) {
                        *c = c.saturating_sub(1);
                    }
                }
                // Count 0 on a referenced blob.
                2 => {
                    if let Some(c) = self.blobs.get_mut(&pick(rng)) {
                        *c = 0;
                    }
                }
                // Blob row deleted while referenced.
                3 => {
                    self.blobs.remove(&pick(rng));
                }
                // Orphan: a blob nobody references, count > 0; or a fine 0.
                4 => {
                    let id = pick(rng).wrapping_add(rng.random_range(1..3));
                    if !self.references().contains_key(&id) {
                        self.blobs.insert(id, rng.random_range(1..3));
                    }
                    let id = pick(rng).wrapping_sub(1);
                    if !self.references().contains_key(&id) {
                        self.blobs.insert(id, 0);
                    }
                }
                // References to ids below, inside and above the blob range.
                5 => self.sent.push(Some(rng.random_range(1..ids[0]))),
                6 => self
                    .attachments
                    .push(Some(rng.random_range(u64::MAX - 10..=u64::MAX))),
                // NULL references: never counted.
                _ => {
                    self.sent.push(None);
                    self.attachments.push(None);
                }
            }
        }
    }

    /// id → per-column counts, straight from the rows.
    fn references(&self) -> BTreeMap<u64, [u64; 4]> {
        let mut counts: BTreeMap<u64, [u64; 4]> = BTreeMap::new();
        for id in self.sent.iter().flatten() {
            counts.entry(*id).or_default()[0] += 1;
        }
        for (body, header) in &self.messages {
            counts.entry(*body).or_default()[1] += 1;
            counts.entry(*header).or_default()[2] += 1;
        }
        for id in self.attachments.iter().flatten() {
            counts.entry(*id).or_default()[3] += 1;
        }
        counts
    }

    /// The brute-force answer.
    fn expected(&self) -> Vec<Exact> {
        let references = self.references();
        let mut ids: Vec<u64> = self
            .blobs
            .keys()
            .chain(references.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut findings = Vec::new();
        for id in ids {
            let per_column = references.get(&id).copied().unwrap_or_default();
            let actual: u64 = per_column.iter().sum();
            let stored = self.blobs.get(&id).copied();
            let kind = match stored {
                None => "missing_blob",
                Some(s) if actual == 0 && s > 0 => "orphan_blob",
                Some(s) if actual > 0 && s != actual => "count_mismatch",
                _ => continue,
            };
            let mut labelled: Vec<(String, u64)> = per_column
                .iter()
                .zip(LABELS)
                .filter(|(n, _)| **n > 0)
                .map(|(n, label)| (label.to_owned(), *n))
                .collect();
            labelled.sort();
            findings.push(Exact {
                kind: kind.into(),
                blob_id: id,
                stored,
                actual,
                references: labelled,
            });
        }
        findings.sort();
        findings
    }

    fn global_sql(&self) -> String {
        let db = format!("{}_global", self.name);
        let mut sql = format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; USE `{db}`;\n\
             CREATE TABLE Blob_ (ID bigint unsigned NOT NULL PRIMARY KEY, Refs bigint unsigned NOT NULL, KEY Refs (Refs));\n\
             CREATE TABLE Sent (ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, BlobID bigint unsigned NULL, KEY BlobID (BlobID));\n"
        );
        insert(
            &mut sql,
            "Blob_ (ID, Refs)",
            self.blobs.iter().map(|(id, n)| format!("({id},{n})")),
        );
        insert(
            &mut sql,
            "Sent (BlobID)",
            self.sent.iter().map(|r| format!("({})", opt(*r))),
        );
        sql.push_str(&format!("GRANT SELECT ON `{db}`.* TO 'blobcheck'@'%';\n"));
        sql
    }

    fn shard_sql(&self) -> String {
        let db = format!("{}_shard", self.name);
        let mut sql = format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; USE `{db}`;\n\
             CREATE TABLE Message (ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, Body bigint unsigned NOT NULL, Header bigint unsigned NOT NULL, KEY Body (Body), KEY Header (Header));\n\
             CREATE TABLE Attachment (ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, BlobID bigint unsigned NULL, KEY BlobIDFirst (BlobID, ID));\n"
        );
        insert(
            &mut sql,
            "Message (Body, Header)",
            self.messages.iter().map(|(b, h)| format!("({b},{h})")),
        );
        insert(
            &mut sql,
            "Attachment (BlobID)",
            self.attachments.iter().map(|r| format!("({})", opt(*r))),
        );
        sql.push_str(&format!("GRANT SELECT ON `{db}`.* TO 'blobcheck'@'%';\n"));
        sql
    }

    fn config(&self) -> Config {
        let servers = servers();
        let text = format!(
            r#"
[servers.global]
url = "{global}"
[servers.shard]
url = "{shard}"
[blobs]
server = "global"
table = "{n}_global.Blob_"
id = "ID"
count = "Refs"
[[references]]
server = "global"
table = "{n}_global.Sent"
column = "BlobID"
name = "sent"
[[references]]
server = "shard"
table = "{n}_shard.Message"
column = "Body"
name = "body"
[[references]]
server = "shard"
table = "{n}_shard.Message"
column = "Header"
name = "header"
[[references]]
server = "shard"
table = "{n}_shard.Attachment"
column = "BlobID"
name = "attachment"
"#,
            global = servers
                .global
                .url_for("blobcheck", blobcheck::demo::CHECKER_PASSWORD),
            shard = servers
                .shard
                .url_for("blobcheck", blobcheck::demo::CHECKER_PASSWORD),
            n = self.name,
        );
        Config::parse(&text, std::path::Path::new("generated.toml")).unwrap()
    }

    /// `load` on a blocking thread, handing the data set back.
    async fn loaded(self) -> Dataset {
        tokio::task::spawn_blocking(move || {
            self.load();
            self
        })
        .await
        .unwrap()
    }

    fn load(&self) {
        let servers = servers();
        servers.global.run_sql(&self.global_sql()).unwrap();
        servers.shard.run_sql(&self.shard_sql()).unwrap();
    }
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "NULL".into(), |v| v.to_string())
}

fn insert(sql: &mut String, into: &str, rows: impl Iterator<Item = String>) {
    let rows: Vec<String> = rows.collect();
    for batch in rows.chunks(1000) {
        let _ = writeln!(sql, "INSERT INTO {into} VALUES {};", batch.join(","));
    }
}

async fn load_and_check(data: Dataset, runs: &[(u64, usize)], every_kind: bool) {
    load_and_check_with_sketches(data, runs, &[], every_kind).await;
}

/// Checks `data` with `--method exact` at each `(chunk size, jobs)` of
/// `runs` and with `--method sketch` at each `(sketch rows, jobs)` of
/// `sketches`.
async fn load_and_check_with_sketches(
    data: Dataset,
    runs: &[(u64, usize)],
    sketches: &[(u64, usize)],
    every_kind: bool,
) {
    let data = data.loaded().await;
    let expected = data.expected();
    let config = data.config();
    let kinds = |kind: &str| expected.iter().filter(|f| f.kind == kind).count();
    assert!(
        !every_kind
            || (kinds("count_mismatch") > 0
                && kinds("missing_blob") > 0
                && kinds("orphan_blob") > 0),
        "the generator must inject every kind"
    );
    for &(chunk_size, jobs) in runs {
        let (findings, summary) = check_json(&config, IdRange::ALL, chunk_size, jobs).await;
        assert_eq!(
            findings, expected,
            "{} chunk size {chunk_size} jobs {jobs}",
            data.name
        );
        assert_eq!(summary.blob_rows, data.blobs.len() as u64);
        let nulls = data.sent.iter().filter(|r| r.is_none()).count() as u64;
        assert_eq!(summary.columns[0].nulls, nulls);
    }
    for &(target_rows, jobs) in sketches {
        let (findings, summary) = common::check_sketch(&config, target_rows, 500, jobs).await;
        assert_eq!(
            findings, expected,
            "{} sketch rows {target_rows} jobs {jobs}",
            data.name
        );
        assert_eq!(summary.blob_rows, data.blobs.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_small_data_sets_at_tiny_chunks() {
    for seed in 1..=3 {
        let data = Dataset::generate(&format!("gen_small{seed}"), seed, 300);
        load_and_check(data, &[(1, 2), (2, 1), (3, 4), (17, 3)], true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_larger_data_set() {
    let data = Dataset::generate("gen_large", 42, 20_000);
    // One fault per 50 blobs: sketches of 16 rows are mostly clean or hold
    // one fault, of 64 rows often several, of 4096 rows always several.
    load_and_check_with_sketches(
        data,
        &[(500, 1), (997, 4), (10_000, 2)],
        &[(16, 2), (64, 4), (4096, 3)],
        true,
    )
    .await;
}

/// Counts near 2⁶⁴ make a sketch's sums far too large to trust
/// (`sketch::EXACT_LIMIT`): those chunks are read exactly, and the findings
/// stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_with_counts_too_large_to_sum() {
    let mut data = Dataset::generate("gen_huge_counts", 7, 2_000);
    let ids: Vec<u64> = data.blobs.keys().copied().collect();
    for &id in ids.iter().skip(100).step_by(400) {
        data.blobs.insert(id, u64::MAX - id % 3);
    }
    load_and_check_with_sketches(data, &[(500, 2)], &[(16, 2), (300, 3)], true).await;
}

/// The servers sum sketches in DOUBLE. At the edge of what is trusted, over
/// both protocols: a chunk whose largest sum is just below
/// `sketch::EXACT_LIMIT` returns exactly the sums of the rows loaded, and a
/// chunk with a sum just above it is not trusted (`None`), for the blob
/// table (its random sum `Σ count·L·H`, unreduced) and for a reference
/// column (its random sum `Σ L·H`, from 58,000 rows or so of the id with
/// the largest weight) alike. A whole check of the same rows
/// still finds exactly the brute-force answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_sums_are_exact_up_to_the_limit() {
    use blobcheck::db::{Databases, DbSource, Protocol, inspect};
    use blobcheck::read::ScanReads;
    use blobcheck::sketch::{EXACT_LIMIT, MAX_SPAN, Moments, Weights};

    let weights = Weights::from_seed(5);
    let trusted = IdRange::new(u64::MAX - (MAX_SPAN - 1), u64::MAX);
    let untrusted = IdRange::new(1 << 63, (1 << 63) + MAX_SPAN - 1);
    let mut data = Dataset {
        name: "gen_sum_limit".into(),
        blobs: BTreeMap::new(),
        sent: Vec::new(),
        messages: Vec::new(),
        attachments: Vec::new(),
    };
    let limit = EXACT_LIMIT as u64;
    for (range, over) in [(trusted, 0), (untrusted, 1)] {
        for k in 0..50u64 {
            let id = range.start + k * 3;
            data.blobs.insert(id, k % 7 + 1);
            for _ in 0..k % 7 + 1 {
                if k % 2 == 0 {
                    data.sent.push(Some(id));
                } else {
                    data.attachments.push(Some(id));
                }
            }
        }
        // The trusted range's one fault, before its sums are aimed.
        if range == trusted {
            *data.blobs.get_mut(&(trusted.start + 3)).unwrap() += 1;
        }
        // Messages with their Body at the range's id of the largest weight
        // and their Header at its id of the smallest nonzero weight. The
        // blob table's random sum `Σ count·L·H` is the largest sum: in the
        // trusted range it lands just below the limit (with what the other
        // ids add), so the Body's is just below it too; in the other the
        // Body's alone is just above it.
        let candidates = range.start + 200..range.end;
        let hot = candidates.clone().max_by_key(|&id| weights.of(id)).unwrap();
        let cold = candidates
            .filter(|&id| weights.of(id) > 0)
            .min_by_key(|&id| weights.of(id))
            .unwrap();
        let rest = Moments::of_blobs(
            range.start,
            &weights,
            data.blobs
                .range(range.start..=range.end)
                .map(|(&id, &n)| (id, n)),
        )
        .unwrap()
        .random as u64;
        let rows = if over == 0 {
            (limit - 1 - rest) / (weights.of(hot) + weights.of(cold))
        } else {
            (limit - 1) / weights.of(hot) + 1
        };
        data.blobs.insert(hot, rows);
        data.blobs.insert(cold, rows);
        data.messages
            .extend(std::iter::repeat_n((hot, cold), rows as usize));
    }
    // The untrusted range's fault: a reference to an id without a blob.
    data.sent.push(Some(untrusted.start + 1));
    let data = data.loaded().await;
    let config = data.config();
    let references = data.references();

    let largest = |m: &Moments| m.sums.iter().copied().chain([m.random]).max().unwrap();
    for protocol in [Protocol::Binary, Protocol::Text] {
        let databases = Databases::connect(&config, 4).await.unwrap();
        let schema = inspect(&config, &databases).await.unwrap();
        let mut source = DbSource::new(databases, schema).with_weights(weights.clone());
        source.protocol = protocol;
        let blobs_in = |range: IdRange| {
            data.blobs
                .range(range.start..=range.end)
                .map(|(&id, &n)| (id, n))
        };
        let column_in = |range: IdRange, column: usize| {
            references
                .range(range.start..=range.end)
                .map(move |(&id, per_column)| (id, per_column[column]))
                .filter(|&(_, n)| n > 0)
        };

        let expected = Moments::of_blobs(trusted.start, &weights, blobs_in(trusted)).unwrap();
        assert!(largest(&expected) > EXACT_LIMIT * 99 / 100);
        let got = source.blob_sketch(trusted).await.unwrap();
        assert_eq!(got, Some(expected), "{protocol:?}");
        for (column, label) in LABELS.iter().enumerate() {
            let expected =
                Moments::of_references(trusted.start, &weights, column_in(trusted, column))
                    .unwrap();
            if *label == "body" {
                assert!(expected.random > EXACT_LIMIT * 99 / 100);
            }
            let got = source.reference_sketch(column, trusted).await.unwrap();
            assert_eq!(got, Some(expected), "{protocol:?} {label}");
        }

        assert_eq!(
            Moments::of_blobs(untrusted.start, &weights, blobs_in(untrusted)),
            None
        );
        let got = source.blob_sketch(untrusted).await.unwrap();
        assert_eq!(got, None, "{protocol:?}");
        for (column, label) in LABELS.iter().enumerate() {
            let expected =
                Moments::of_references(untrusted.start, &weights, column_in(untrusted, column));
            assert_eq!(expected.is_none(), *label == "body");
            let got = source.reference_sketch(column, untrusted).await.unwrap();
            assert_eq!(got, expected, "{protocol:?} {label}");
        }
        source.databases.disconnect().await;
    }

    // The two faults.
    let expected = data.expected();
    assert_eq!(expected.len(), 2);
    for target_rows in [16, 4096] {
        let (findings, _) = common::check_sketch(&config, target_rows, 500, 2).await;
        assert_eq!(findings, expected, "sketch rows {target_rows}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_references_past_the_last_blob_and_a_hot_blob() {
    // Few blobs, then 50,000 distinct referenced ids above the last one,
    // and one blob with 100,000 references.
    // 50,000 messages with Body = Header = 5: 100,000 references.
    let data = Dataset {
        name: "gen_dense".into(),
        blobs: BTreeMap::from([(5, 100_000), (6, 1), (7, 0)]),
        sent: vec![Some(6)],
        messages: vec![(5, 5); 50_000],
        attachments: (1000..51_000u64).map(Some).collect(),
    };
    let expected = data.expected();
    assert_eq!(expected.len(), 50_000);
    load_and_check(data, &[(1000, 2), (333, 4)], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tables_are_consistent() {
    let data = Dataset {
        name: "gen_empty".into(),
        blobs: BTreeMap::new(),
        sent: vec![],
        messages: vec![],
        attachments: vec![],
    };
    let data = data.loaded().await;
    for chunk_size in [1, 1000] {
        let (findings, summary) = check_json(&data.config(), IdRange::ALL, chunk_size, 2).await;
        assert!(findings.is_empty());
        assert_eq!(summary.blob_rows, 0);
    }
}
