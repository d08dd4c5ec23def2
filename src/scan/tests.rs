//! The scan against brute force, on the in-memory model.

use super::*;
use crate::finding::Kind;
use crate::read::memory::MemorySource;
use proptest::prelude::*;
use std::sync::atomic::Ordering;

fn run(
    source: MemorySource,
    range: IdRange,
    chunk_size: u64,
    jobs: usize,
) -> (Vec<Finding>, Vec<IdRange>, u64, Vec<u64>) {
    run_with(source, range, ScanOptions::fixed(chunk_size, jobs))
}

fn run_with(
    source: MemorySource,
    range: IdRange,
    options: ScanOptions,
) -> (Vec<Finding>, Vec<IdRange>, u64, Vec<u64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut findings = Vec::new();
    let mut ranges = Vec::new();
    let mut blobs = 0;
    let mut references = vec![0; source.columns.len()];
    for outcome in collect(&runtime, Arc::new(source), range, Partition::WHOLE, options) {
        findings.extend(outcome.findings);
        ranges.push(outcome.range);
        blobs += outcome.blobs;
        for (total, n) in references.iter_mut().zip(outcome.references) {
            *total += n;
        }
    }
    (findings, ranges, blobs, references)
}

/// A scan of the whole id space by one process, to its end.
fn collect_whole(
    runtime: &tokio::runtime::Runtime,
    source: Arc<MemorySource>,
    options: ScanOptions,
) -> Vec<ChunkOutcome> {
    collect(runtime, source, IdRange::ALL, Partition::WHOLE, options)
}

/// Runs a scan to its end and returns its outcomes in order.
fn collect(
    runtime: &tokio::runtime::Runtime,
    source: Arc<MemorySource>,
    range: IdRange,
    partition: Partition,
    options: ScanOptions,
) -> Vec<ChunkOutcome> {
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::channel(2);
        let scanning = tokio::spawn(scan(source, range, partition, options, tx));
        let mut outcomes = Vec::new();
        while let Some(outcome) = rx.recv().await {
            outcomes.push(outcome);
        }
        scanning.await.unwrap().unwrap();
        outcomes
    })
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..200,
        1 => Just(u64::MAX),
        1 => u64::MAX - 5..=u64::MAX,
        1 => (1u64 << 63) - 3..(1u64 << 63) + 3,
        1 => any::<u64>(),
    ]
}

fn model() -> impl Strategy<Value = (BTreeMap<u64, u64>, Vec<BTreeMap<u64, u64>>)> {
    (
        proptest::collection::btree_map(
            id(),
            prop_oneof![Just(0u64), Just(1), Just(2), 0u64..6],
            0..60,
        ),
        proptest::collection::vec(proptest::collection::btree_map(id(), 1u64..5, 0..60), 0..5),
    )
}

fn source(blobs: &BTreeMap<u64, u64>, columns: &[BTreeMap<u64, u64>]) -> MemorySource {
    MemorySource::new(blobs.clone(), columns.to_vec())
}

/// A scan of the whole id space finds exactly what brute force finds,
/// its outcomes tile the space in order, and it counts every row.
fn whole_run_equals_brute_force(
    blobs: &BTreeMap<u64, u64>,
    columns: &[BTreeMap<u64, u64>],
    options: ScanOptions,
) -> std::result::Result<(), TestCaseError> {
    let expected = crate::merge::tests::brute_force(blobs, columns);
    let (findings, ranges, blob_rows, references) =
        run_with(source(blobs, columns), IdRange::ALL, options);
    prop_assert_eq!(&findings, &expected);
    prop_assert_eq!(ranges.first().map(|r| r.start), Some(0));
    prop_assert_eq!(ranges.last().map(|r| r.end), Some(u64::MAX));
    for pair in ranges.windows(2) {
        prop_assert_eq!(pair[0].end.checked_add(1), Some(pair[1].start));
    }
    prop_assert_eq!(blob_rows, blobs.len() as u64);
    let expected_refs: Vec<u64> = columns.iter().map(|c| c.values().sum()).collect();
    prop_assert_eq!(references, expected_refs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn scan_equals_brute_force_at_any_chunk_size_and_jobs(
        (blobs, columns) in model(),
        chunk_size in prop_oneof![Just(1u64), Just(2), 1u64..10, 10u64..100],
        jobs in 1usize..6,
    ) {
        whole_run_equals_brute_force(&blobs, &columns, ScanOptions::fixed(chunk_size, jobs))?;
    }

    #[test]
    fn adaptive_chunk_sizes_change_nothing(
        (blobs, columns) in model(),
        max_chunk_size in 1u64..12,
        jobs in 1usize..4,
    ) {
        let expected = crate::merge::tests::brute_force(&blobs, &columns);
        // A target far below a chunk's real time makes every chunk
        // shrink toward the minimum, so sizes change from chunk to chunk.
        let options = ScanOptions {
            chunk_size: max_chunk_size,
            jobs,
            chunk_time: Some(Duration::from_nanos(1)),
            min_chunk_size: 1,
            max_chunk_size,
            hot_threshold: u64::MAX,
            method: Method::Exact,
        };
        let (findings, _, _, _) = run_with(source(&blobs, &columns), IdRange::ALL, options);
        prop_assert_eq!(findings, expected);
    }

    #[test]
    fn sub_ranges_find_exactly_their_share(
        (blobs, columns) in model(),
        start in id(),
        len in prop_oneof![0u64..50, any::<u64>()],
        chunk_size in 1u64..8,
    ) {
        let range = IdRange::new(start, start.saturating_add(len));
        let expected: Vec<Finding> = crate::merge::tests::brute_force(&blobs, &columns)
            .into_iter()
            .filter(|f| range.contains(f.blob_id))
            .collect();
        let (findings, ranges, _, _) = run(source(&blobs, &columns), range, chunk_size, 3);
        prop_assert_eq!(findings, expected);
        prop_assert_eq!(ranges.first().map(|r| r.start), Some(range.start));
        prop_assert_eq!(ranges.last().map(|r| r.end), Some(range.end));
    }
}

/// A model where each chunk of `sketch_rows` ids has few faults, so the
/// sketches' blind spot (four or more faults cancelling in all three
/// sums) cannot hide one: ids are dense from `base`, counts mostly
/// right, a few changed.
fn sketch_model() -> impl Strategy<Value = (BTreeMap<u64, u64>, Vec<BTreeMap<u64, u64>>)> {
    (
        prop_oneof![Just(0u64), Just(1u64 << 63), Just(u64::MAX - 400)],
        1usize..300,
        proptest::collection::vec((0usize..400, 0u64..4, 0usize..3), 0..6),
        1usize..4,
    )
        .prop_map(|(base, n, faults, column_count)| {
            let mut blobs = BTreeMap::new();
            let mut columns = vec![BTreeMap::new(); column_count];
            for i in 0..n as u64 {
                let Some(id) = base.checked_add(i * 2) else {
                    break;
                };
                let count = i % 3;
                blobs.insert(id, count);
                if count > 0 {
                    columns[(i % column_count as u64) as usize].insert(id, count);
                }
            }
            for (at, value, what) in faults {
                let Some(id) = base.checked_add(at as u64) else {
                    continue;
                };
                match what {
                    0 => {
                        blobs.insert(id, value);
                    }
                    1 => {
                        blobs.remove(&id);
                    }
                    _ => {
                        let column = &mut columns[at % column_count];
                        if value == 0 {
                            column.remove(&id);
                        } else {
                            column.insert(id, value);
                        }
                    }
                }
            }
            (blobs, columns)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// `--method sketch` finds exactly what the brute-force count does
    /// (up to five faults in all: the moments see through up to three
    /// per chunk, and the exact fallback reads the rest), at any sketch
    /// size, exact chunk size and number of jobs, tiling the range.
    #[test]
    fn sketch_scan_equals_brute_force(
        (blobs, columns) in sketch_model(),
        target_rows in prop_oneof![Just(1u64), 1u64..20, 20u64..500],
        chunk_size in 1u64..50,
        jobs in 1usize..5,
    ) {
        let options = ScanOptions {
            method: Method::Sketch { target_rows },
            ..ScanOptions::fixed(chunk_size, jobs)
        };
        whole_run_equals_brute_force(&blobs, &columns, options)?;
    }

    /// The general model (sparse ids anywhere in the 64-bit space, any
    /// number of faults) through `--method sketch`: every finding it
    /// reports is real, and it misses none wherever it promises
    /// completeness (`sketch_promises_completeness`), which is nearly
    /// every case; the exact method misses none, always.
    #[test]
    fn sketch_scan_reports_only_real_faults(
        (blobs, columns) in model(),
        target_rows in 1u64..30,
        jobs in 1usize..4,
        seed in any::<u64>(),
    ) {
        let expected = crate::merge::tests::brute_force(&blobs, &columns);
        let (exact, _, _, _) =
            run_with(source(&blobs, &columns), IdRange::ALL, ScanOptions::fixed(7, jobs));
        prop_assert_eq!(&exact, &expected);
        let options = ScanOptions {
            method: Method::Sketch { target_rows },
            ..ScanOptions::fixed(7, jobs)
        };
        let mut sketched = source(&blobs, &columns);
        sketched.weights = sketch::Weights::from_seed(seed);
        let weights = sketched.weights.clone();
        let (findings, _, _, _) = run_with(sketched, IdRange::ALL, options);
        for finding in &findings {
            prop_assert!(expected.contains(finding), "{finding:?} is not real");
        }
        if sketch_promises_completeness(&expected, &weights) {
            prop_assert_eq!(&findings, &expected);
        }
    }
}

/// Whether the sketch, with `weights`, promises to find every one of
/// `faults` (sorted by id). It can miss a fault only where a piece (a
/// stretch of ids narrower than `sketch::MAX_SPAN`, holding a run of
/// consecutive faults) has sums that are zero, or equal those of one of
/// its faults (an id the sums locate and a point read confirms, which
/// settles the piece), while other faults remain: with random weights, a
/// probability of at most `2/p` per piece. The exact sums are taken modulo
/// 2¹²⁸, where a true zero stays zero, so `true` is never wrong (at worst
/// a promise is missed). Quadratic in the faults per stretch.
fn sketch_promises_completeness(faults: &[Finding], weights: &sketch::Weights) -> bool {
    use std::collections::HashSet;
    type Sums = [u128; 3];
    let prime = u128::from(sketch::PRIME);
    let sums = |id: u64, d: i128| -> Sums {
        let residue = weights.residue(id, d);
        let (id, d) = (u128::from(id), d as u128);
        [d, d.wrapping_mul(id), residue]
    };
    let add = |a: Sums, b: Sums| -> Sums {
        [
            a[0].wrapping_add(b[0]),
            a[1].wrapping_add(b[1]),
            (a[2] + b[2]) % prime,
        ]
    };
    let faults: Vec<(u64, Sums)> = faults
        .iter()
        .map(|f| {
            let d = i128::from(f.stored.unwrap_or(0)) - i128::from(f.actual);
            (f.blob_id, sums(f.blob_id, d))
        })
        .collect();
    for (i, &(first, _)) in faults.iter().enumerate() {
        let mut run: Sums = [0; 3];
        let mut singles: HashSet<Sums> = HashSet::new();
        for &(id, m) in &faults[i..] {
            if id - first >= sketch::MAX_SPAN {
                break;
            }
            run = add(run, m);
            singles.insert(m);
            if run == [0; 3] || (singles.len() > 1 && singles.contains(&run)) {
                return false;
            }
        }
    }
    true
}

/// The pattern `+1, −2, +1` at `x, x + 1, x + 2` cancels `D₀` and `D₁`
/// everywhere; its random sum is zero only where the weights make it so.
/// Weights drawn from seed 0, with the low table's entries at `x`'s low
/// digit and the next two set to 1, 2, 3, so that they cancel it there (a
/// drawn table does so with probability about 1/p).
fn cancelling_weights(x: u64) -> sketch::Weights {
    let drawn = sketch::Weights::from_seed(0);
    let mut low = drawn.low().to_vec();
    let at = (x % sketch::TABLE as u64) as usize;
    assert!(at + 2 < sketch::TABLE);
    low[at..at + 3].copy_from_slice(&[1, 2, 3]);
    sketch::Weights::from_tables(low, drawn.high().to_vec())
}

#[test]
fn the_completeness_promise_excludes_the_blind_spot_only() {
    let fault = |blob_id: u64, stored: u64, actual: u64| Finding {
        kind: Kind::CountMismatch,
        blob_id,
        stored: Some(stored),
        actual,
        references: Vec::new(),
    };
    let x = 300;
    let weights = cancelling_weights(x);
    let pattern = |x: u64| [fault(x, 4, 3), fault(x + 1, 1, 3), fault(x + 2, 4, 3)];
    // +1, −3, +3, −1 cancelled the old three moments in every run; with
    // random weights it is promised.
    let binomial = [
        fault(4, 4, 3),
        fault(5, 0, 3),
        fault(6, 6, 3),
        fault(7, 2, 3),
    ];
    assert!(sketch_promises_completeness(&binomial, &weights));
    assert!(sketch_promises_completeness(&pattern(100), &weights));
    // Where these weights cancel +1, −2, +1, the promise is withdrawn,
    // also with a fault beside it that the sums would locate; another
    // seed keeps it.
    assert!(!sketch_promises_completeness(&pattern(x), &weights));
    let mut with_single = pattern(x).to_vec();
    with_single.push(fault(x + 50, 9, 2));
    assert!(!sketch_promises_completeness(&with_single, &weights));
    let other = (1..)
        .map(sketch::Weights::from_seed)
        .find(|w| sketch_promises_completeness(&pattern(x), w))
        .unwrap();
    assert_ne!(other.seed(), 0);
    // Too far apart to share a piece: promised.
    let apart = [
        fault(x, 4, 3),
        fault(x + 1 + sketch::MAX_SPAN, 1, 3),
        fault(x + 2 + 2 * sketch::MAX_SPAN, 4, 3),
    ];
    assert!(sketch_promises_completeness(&apart, &weights));
    assert!(sketch_promises_completeness(&[], &weights));
}

/// The blind spot is real for one seed and gone for the next: a scan whose
/// weights cancel `+1, −2, +1` misses those three faults, and a scan with
/// other weights finds them. No arrangement of faults escapes every run.
#[test]
fn a_pattern_one_seed_misses_another_finds() {
    let x = 20_000 + 300;
    let weights = cancelling_weights(x);
    let blobs: BTreeMap<u64, u64> = (x - 5_000..x + 5_000).map(|id| (id, 3)).collect();
    let mut column = blobs.clone();
    column.insert(x, 2);
    column.insert(x + 1, 5);
    column.insert(x + 2, 2);
    let columns = vec![column];
    let expected = crate::merge::tests::brute_force(&blobs, &columns);
    assert_eq!(expected.len(), 3);
    let options = ScanOptions {
        method: Method::Sketch { target_rows: 8_192 },
        ..ScanOptions::fixed(500, 2)
    };
    let scan = |seed: u64| {
        let mut source = source(&blobs, &columns);
        source.weights = match seed {
            0 => weights.clone(),
            seed => sketch::Weights::from_seed(seed),
        };
        run_with(source, IdRange::ALL, options).0
    };
    assert!(scan(0).is_empty(), "these weights cancel the pattern");
    let found = (1..20).find(|&seed| scan(seed) == expected);
    assert!(found.is_some(), "no other seed found the faults");
}

/// The sketch clears clean chunks and locates one fault without reading a
/// chunk row by row; two or three faults in one chunk are located by
/// halving it, unless they lie so close together that the piece holding
/// them is small enough to read row by row.
#[test]
fn sketch_reads_exactly_only_what_its_sums_do_not_settle() {
    let blobs: BTreeMap<u64, u64> = (1000u64..11_000).map(|id| (id, 1)).collect();
    let clean: BTreeMap<u64, u64> = blobs.clone();
    // (findings, blob batches read row by row, halves sketched)
    let sketch = |columns: Vec<BTreeMap<u64, u64>>| {
        let source = Arc::new(source(&blobs, &columns));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The first chunk is [0, 9999]; pieces of 2500 rows or fewer
        // (about 1250 ids here) are read row by row.
        let options = ScanOptions {
            method: Method::Sketch {
                target_rows: 10_000,
            },
            ..ScanOptions::fixed(500, 2)
        };
        let outcomes = collect_whole(&runtime, Arc::clone(&source), options);
        let findings: Vec<u64> = outcomes
            .into_iter()
            .flat_map(|o| o.findings)
            .map(|f| f.blob_id)
            .collect();
        let halves: Vec<(u64, u64)> = source
            .blob_sketches
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.end < 10_000 && r.end != 9_999)
            .map(|r| (r.start, r.end))
            .collect();
        (
            findings,
            source.blob_batches.load(Ordering::Relaxed),
            halves,
        )
    };

    let (findings, exact, halves) = sketch(vec![clean.clone()]);
    assert!(findings.is_empty());
    assert!(halves.is_empty());
    // Only the stretch from the last blob to 2⁶⁴ − 1, too long to sketch,
    // is read exactly: the span grows eightfold per empty chunk until
    // the planner reads the rest as one exact chunk.
    assert!(exact <= 2, "{exact} exact reads of a clean table");

    let mut one = clean.clone();
    one.insert(5_000, 3);
    let (findings, exact_one, halves) = sketch(vec![one]);
    assert_eq!(findings, vec![5_000]);
    assert_eq!(exact_one, exact, "a lone fault is located by the sums");
    assert!(halves.is_empty());

    let mut two = clean.clone();
    two.insert(5_000, 3);
    two.remove(&5_002);
    let (findings, exact_two, halves) = sketch(vec![two]);
    assert_eq!(findings, vec![5_000, 5_002]);
    assert!(
        exact_two > exact,
        "two faults close together are read exactly"
    );
    // [5000, 6249] holds 2502 rows, so it is halved once more.
    assert_eq!(
        halves,
        vec![(0, 4_999), (5_000, 7_499), (5_000, 6_249), (5_000, 5_624)]
    );

    let mut two_apart = clean.clone();
    two_apart.insert(2_000, 3);
    two_apart.remove(&8_000);
    let (findings, exact_two, halves) = sketch(vec![two_apart]);
    assert_eq!(findings, vec![2_000, 8_000]);
    assert_eq!(exact_two, exact, "two faults apart: located by halving");
    assert_eq!(halves, vec![(0, 4_999)]);

    let mut apart = clean.clone();
    apart.insert(2_000, 2);
    apart.insert(5_000, 3);
    apart.remove(&8_000);
    let (findings, exact_apart, halves) = sketch(vec![apart]);
    assert_eq!(findings, vec![2_000, 5_000, 8_000]);
    assert_eq!(exact_apart, exact, "three faults apart: located by halving");
    assert_eq!(
        halves,
        vec![(0, 4_999), (5_000, 7_499)],
        "each second half is derived"
    );

    let mut close = clean;
    close.insert(5_000, 3);
    close.remove(&5_002);
    close.insert(5_004, 2);
    let (findings, exact_close, halves) = sketch(vec![close]);
    assert_eq!(findings, vec![5_000, 5_002, 5_004]);
    assert!(
        exact_close > exact,
        "three faults close together are read exactly"
    );
    // [5000, 6249] holds 2501 rows, so it is halved once more.
    assert_eq!(
        halves,
        vec![(0, 4_999), (5_000, 7_499), (5_000, 6_249), (5_000, 5_624)]
    );
}

/// A span that grew eightfold over a long gap in the ids is cut before
/// it is summed where it lands on dense ids: no sketch of more than one
/// id sums more than `sketch::row_bound` rows of any table, and the
/// findings stay exact.
#[test]
fn sketches_after_a_gap_read_at_most_the_row_bound() {
    let mut blobs: BTreeMap<u64, u64> = (1..300u64).map(|id| (id, 1)).collect();
    blobs.extend((200_000..260_000u64).map(|id| (id, 1)));
    let mut references = blobs.clone();
    // Dense references on one id, and faults in the dense region.
    blobs.insert(230_000, 5_000);
    references.insert(230_000, 5_000);
    references.insert(210_001, 2);
    references.remove(&250_003);
    let columns = vec![references];
    let expected = crate::merge::tests::brute_force(&blobs, &columns);
    assert_eq!(expected.len(), 2);
    let target_rows = 256;
    let bound = sketch::row_bound(target_rows);
    let source = Arc::new(source(&blobs, &columns));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let options = ScanOptions {
        method: Method::Sketch { target_rows },
        ..ScanOptions::fixed(500, 3)
    };
    let outcomes = collect_whole(&runtime, Arc::clone(&source), options);
    let findings: Vec<Finding> = outcomes.into_iter().flat_map(|o| o.findings).collect();
    assert_eq!(findings, expected);
    let sketches = source.blob_sketches.lock().unwrap().clone();
    assert!(
        sketches
            .iter()
            .any(|r| r.end >= 200_000 && r.start < 230_000),
        "the dense region is sketched"
    );
    for range in sketches.iter().filter(|r| r.start < r.end) {
        let blob_rows = blobs.range(range.start..=range.end).count() as u64;
        let reference_rows: u64 = columns[0]
            .range(range.start..=range.end)
            .map(|(_, &n)| n)
            .sum();
        assert!(
            blob_rows <= bound && reference_rows <= bound,
            "sketch of {range} summed {blob_rows} blob rows and {reference_rows} references, bound {bound}"
        );
    }
}

#[test]
fn dense_references_past_the_last_blob_stay_within_the_chunk_size() {
    // One blob, then 100,000 distinct ids referenced above it.
    let blobs = BTreeMap::from([(10u64, 1u64)]);
    let column: BTreeMap<u64, u64> = (11u64..100_011).map(|id| (id, 1)).collect();
    let single = BTreeMap::from([(10u64, 1_000_000u64)]);
    let (findings, _, _, _) = {
        let source = source(&blobs, &[column, single]);
        run(source, IdRange::ALL, 1000, 4)
    };
    assert_eq!(findings.len(), 100_001);
    assert_eq!(findings[0].kind, Kind::CountMismatch);
    assert_eq!(findings[0].actual, 1_000_000);
    assert!(findings[1..].iter().all(|f| f.kind == Kind::MissingBlob));

    let source = source(&blobs, &[(11u64..100_011).map(|id| (id, 1)).collect()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let source = Arc::new(source);
    let largest_outcome = collect_whole(&runtime, Arc::clone(&source), ScanOptions::fixed(1000, 4))
        .iter()
        .map(|o| o.findings.len())
        .max()
        .unwrap();
    assert!(source.largest_batch.load(Ordering::Relaxed) <= 1000);
    assert!(
        largest_outcome <= 1001,
        "an outcome held {largest_outcome} findings"
    );
}

#[test]
fn empty_tables_scan_the_whole_range_once() {
    let (findings, ranges, blobs, _) = run(
        source(&BTreeMap::new(), &[BTreeMap::new()]),
        IdRange::ALL,
        5,
        2,
    );
    assert!(findings.is_empty());
    assert_eq!(ranges, vec![IdRange::ALL]);
    assert_eq!(blobs, 0);
}

/// A range cut before the row bound whose sums are then too large to
/// trust is read exactly, and what lies past the cut is still scanned:
/// the outcomes reach the end of the id space and the findings are those
/// of brute force.
#[test]
fn a_cut_range_with_sums_too_large_still_hands_back_the_rest() {
    let mut blobs: BTreeMap<u64, u64> = (1..300u64).map(|id| (id, 1)).collect();
    blobs.extend((200_000..260_000u64).map(|id| (id, 1)));
    let references = blobs.clone();
    // Stored counts whose sums reach `sketch::EXACT_LIMIT` all over the
    // dense region, where the spans grown over the gap are cut.
    for id in (200_000..260_000u64).step_by(97) {
        blobs.insert(id, sketch::EXACT_LIMIT as u64);
    }
    let columns = vec![references];
    let expected = crate::merge::tests::brute_force(&blobs, &columns);
    let source = Arc::new(source(&blobs, &columns));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let options = ScanOptions {
        method: Method::Sketch { target_rows: 256 },
        ..ScanOptions::fixed(500, 3)
    };
    let outcomes = collect_whole(&runtime, Arc::clone(&source), options);
    assert_eq!(outcomes.first().map(|o| o.range.start), Some(0));
    assert_eq!(outcomes.last().map(|o| o.range.end), Some(u64::MAX));
    for pair in outcomes.windows(2) {
        assert_eq!(pair[0].range.end + 1, pair[1].range.start, "contiguous");
    }
    let findings: Vec<Finding> = outcomes.into_iter().flat_map(|o| o.findings).collect();
    assert_eq!(findings.len(), 619);
    assert_eq!(findings, expected);
}

/// Ids around the first blocks' edges, far above them, around 2⁶³ and up
/// to 2⁶⁴ − 1: every partition gets some blocks with rows, some without.
fn spread_id() -> impl Strategy<Value = u64> {
    use crate::partition::BLOCK_IDS;
    prop_oneof![
        2 => 0u64..200,
        3 => (0u64..24, 0u64..6).prop_map(|(block, d)| (block * BLOCK_IDS).saturating_sub(3) + d),
        1 => (1u64 << 63) - 3..(1u64 << 63) + 3,
        1 => u64::MAX - 3..=u64::MAX,
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    /// N partitions, each scanned on its own, read every row once and
    /// together find exactly what brute force finds; each reads only its
    /// own blocks, and its outcomes still tile the id space.
    #[test]
    fn partitions_together_equal_brute_force(
        blobs in proptest::collection::btree_map(spread_id(), 0u64..4, 0..60),
        columns in proptest::collection::vec(proptest::collection::btree_map(spread_id(), 1u64..4, 0..60), 0..4),
        n in 1u64..7,
        sketch in any::<bool>(),
        chunk_size in 1u64..12,
    ) {
        let expected = crate::merge::tests::brute_force(&blobs, &columns);
        let options = ScanOptions {
            method: if sketch { Method::Sketch { target_rows: 16 } } else { Method::Exact },
            ..ScanOptions::fixed(chunk_size, 3)
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut findings = Vec::new();
        let mut blob_rows = 0;
        let mut references = vec![0u64; columns.len()];
        for k in 0..n {
            let partition = Partition { k, n };
            let source = Arc::new(source(&blobs, &columns));
            let outcomes = collect(&runtime, source, IdRange::ALL, partition, options);
            prop_assert_eq!(outcomes.first().map(|o| o.range.start), Some(0));
            prop_assert_eq!(outcomes.last().map(|o| o.range.end), Some(u64::MAX));
            for pair in outcomes.windows(2) {
                prop_assert_eq!(pair[0].range.end.checked_add(1), Some(pair[1].range.start));
            }
            for outcome in outcomes {
                if n > 1 && outcome.checked != Checked::Skipped {
                    let range = outcome.range;
                    prop_assert_eq!(block_of(range.start), block_of(range.end), "{}", range);
                    prop_assert!(partition.owns(range.start), "{} read by {}", range, partition);
                }
                findings.extend(outcome.findings);
                blob_rows += outcome.blobs;
                for (total, n) in references.iter_mut().zip(outcome.references) {
                    *total += n;
                }
            }
        }
        findings.sort_by_key(|f| f.blob_id);
        prop_assert_eq!(findings, expected);
        prop_assert_eq!(blob_rows, blobs.len() as u64);
        let expected_refs: Vec<u64> = columns.iter().map(|c| c.values().sum()).collect();
        prop_assert_eq!(references, expected_refs);
    }
}

/// A partition jumps over the empty space with one look at each index,
/// instead of planning each of its 2⁴⁸ / N empty blocks.
#[test]
fn a_partition_jumps_over_empty_space() {
    let blobs: BTreeMap<u64, u64> = [(5, 1), (1 << 63, 1), (u64::MAX, 0)].into();
    let columns = vec![BTreeMap::from([(5, 1), (1 << 40, 1)])];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut findings = Vec::new();
    for k in 0..4 {
        let source = Arc::new(source(&blobs, &columns));
        let outcomes = collect(
            &runtime,
            source,
            IdRange::ALL,
            Partition { k, n: 4 },
            ScanOptions::fixed(10, 2),
        );
        assert!(
            outcomes.len() < 40,
            "partition {k}: {} outcomes",
            outcomes.len()
        );
        findings.extend(outcomes.into_iter().flat_map(|o| o.findings));
    }
    findings.sort_by_key(|f| f.blob_id);
    let ids: Vec<(u64, Kind)> = findings.iter().map(|f| (f.blob_id, f.kind)).collect();
    assert_eq!(
        ids,
        [(1 << 40, Kind::MissingBlob), (1 << 63, Kind::OrphanBlob)]
    );
}

#[test]
fn sparse_ids_cost_a_partition_its_own_blocks_not_every_row() {
    // One row every 4 blocks: most rows lie in other partitions' blocks.
    let ids: Vec<u64> = (0..2_000u64).map(|i| (i << 18) + 7).collect();
    let blobs: BTreeMap<u64, u64> = ids.iter().map(|&id| (id, 1)).collect();
    let mut references: BTreeMap<u64, u64> = blobs.clone();
    references.insert(ids[3], 2);
    references.remove(&ids[1_500]);
    let columns = vec![references];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let n = 16;
    let mut findings = Vec::new();
    for k in 0..n {
        let source = Arc::new(source(&blobs, &columns));
        let outcomes = collect(
            &runtime,
            source,
            IdRange::ALL,
            Partition { k, n },
            ScanOptions::fixed(10, 2),
        );
        // A look ahead per block of its own the scan enters (about a
        // sixteenth of the 8,000 blocks the rows span) and a read per row
        // of its own; without the jump to its own next block it was two
        // outcomes per row of every partition (4,000).
        let bound = 8 * (ids.len() as u64 / n + 1);
        assert!(
            (outcomes.len() as u64) < bound,
            "partition {k}: {} outcomes, bound {bound}",
            outcomes.len()
        );
        findings.extend(outcomes.into_iter().flat_map(|o| o.findings));
    }
    findings.sort_by_key(|f| f.blob_id);
    let found: Vec<(u64, Kind)> = findings.iter().map(|f| (f.blob_id, f.kind)).collect();
    assert_eq!(
        found,
        [
            (ids[3], Kind::CountMismatch),
            (ids[1_500], Kind::OrphanBlob)
        ]
    );
}
