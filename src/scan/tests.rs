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
    for outcome in collect(&runtime, Arc::new(source), range, options) {
        findings.extend(outcome.findings);
        ranges.push(outcome.range);
        blobs += outcome.blobs;
        for (total, n) in references.iter_mut().zip(outcome.references) {
            *total += n;
        }
    }
    (findings, ranges, blobs, references)
}

/// Runs a scan to its end and returns its outcomes in order.
fn collect(
    runtime: &tokio::runtime::Runtime,
    source: Arc<MemorySource>,
    range: IdRange,
    options: ScanOptions,
) -> Vec<ChunkOutcome> {
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::channel(2);
        let scanning = tokio::spawn(scan(source, range, options, tx));
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
    ) {
        let expected = crate::merge::tests::brute_force(&blobs, &columns);
        let (exact, _, _, _) =
            run_with(source(&blobs, &columns), IdRange::ALL, ScanOptions::fixed(7, jobs));
        prop_assert_eq!(&exact, &expected);
        let options = ScanOptions {
            method: Method::Sketch { target_rows },
            ..ScanOptions::fixed(7, jobs)
        };
        let (findings, _, _, _) = run_with(source(&blobs, &columns), IdRange::ALL, options);
        for finding in &findings {
            prop_assert!(expected.contains(finding), "{finding:?} is not real");
        }
        if sketch_promises_completeness(&expected) {
            prop_assert_eq!(&findings, &expected);
        }
    }
}

/// Whether the sketch promises to find every one of `faults` (sorted by
/// id). Its blind spot is a piece (a stretch of ids narrower than
/// `sketch::MAX_SPAN`, holding a run of consecutive faults) whose sums
/// are zero, or equal those of one or two of its faults (ids the sums
/// locate and point reads confirm, which settles the piece), while
/// other faults remain. The sums are taken modulo 2¹²⁸, where a true
/// zero stays zero, so `true` is never wrong (at worst a promise is
/// missed). Cost: quadratic in the faults per stretch, cubic in the
/// small ones (pairs).
fn sketch_promises_completeness(faults: &[Finding]) -> bool {
    use std::collections::HashSet;
    type Sums = [u128; 3];
    let sums = |id: u64, d: i128| -> Sums {
        let (id, d) = (u128::from(id), d as u128);
        [d, d.wrapping_mul(id), d.wrapping_mul(id).wrapping_mul(id)]
    };
    let add = |a: Sums, b: Sums| -> Sums {
        [
            a[0].wrapping_add(b[0]),
            a[1].wrapping_add(b[1]),
            a[2].wrapping_add(b[2]),
        ]
    };
    let faults: Vec<(u64, i128, Sums)> = faults
        .iter()
        .map(|f| {
            let d = i128::from(f.stored.unwrap_or(0)) - i128::from(f.actual);
            (f.blob_id, d, sums(f.blob_id, d))
        })
        .collect();
    let small = |d: i128| d.abs() <= sketch::PAIR_DIFFERENCES;
    for (i, &(first, _, _)) in faults.iter().enumerate() {
        let mut run: Sums = [0; 3];
        let mut singles: HashSet<Sums> = HashSet::new();
        let mut pairs: HashSet<Sums> = HashSet::new();
        for j in i..faults.len() {
            let (id, d, m) = faults[j];
            if id - first >= sketch::MAX_SPAN {
                break;
            }
            run = add(run, m);
            if small(d) {
                for &(_, e, n) in &faults[i..j] {
                    if small(e) {
                        pairs.insert(add(m, n));
                    }
                }
            }
            singles.insert(m);
            let len = j - i + 1;
            if run == [0; 3]
                || (len > 1 && singles.contains(&run))
                || (len > 2 && pairs.contains(&run))
            {
                return false;
            }
        }
    }
    true
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
    // +1, −3, +3, −1 on consecutive ids cancel in all three sums.
    let cancelling = [
        fault(4, 4, 3),
        fault(5, 0, 3),
        fault(6, 6, 3),
        fault(7, 2, 3),
    ];
    assert!(!sketch_promises_completeness(&cancelling));
    // Cancelling at every other id, with one fault (or a pair of small
    // ones) between them that the sums locate: no run of faults without
    // the located ones cancels, but the piece is settled by them.
    let spaced = [
        fault(10, 4, 3),
        fault(12, 0, 3),
        fault(14, 6, 3),
        fault(16, 2, 3),
    ];
    let mut one = spaced.to_vec();
    one.insert(2, fault(13, 9, 2));
    assert!(!sketch_promises_completeness(&one));
    let mut two = spaced.to_vec();
    two.insert(1, fault(11, 5, 2));
    two.insert(3, fault(13, 1, 2));
    assert!(!sketch_promises_completeness(&two));
    two[3] = fault(13, 1, 7);
    assert!(
        sketch_promises_completeness(&two),
        "a difference of 6 is not among the pairs tried"
    );
    // Too far apart to share a piece, or not cancelling: promised.
    let apart = [
        fault(4, 4, 3),
        fault(5 + sketch::MAX_SPAN, 0, 3),
        fault(6 + 2 * sketch::MAX_SPAN, 6, 3),
        fault(7 + 3 * sketch::MAX_SPAN, 2, 3),
    ];
    assert!(sketch_promises_completeness(&apart));
    let mut near_miss = cancelling.to_vec();
    near_miss[3] = fault(7, 1, 3);
    assert!(sketch_promises_completeness(&near_miss));
    assert!(sketch_promises_completeness(&[]));
}

/// The sketch clears clean chunks and locates one or two faults without
/// reading a chunk row by row; three faults in one chunk are located by
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
        let outcomes = collect(&runtime, Arc::clone(&source), IdRange::ALL, options);
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
    assert_eq!(exact_two, exact, "two faults are located by the sums");
    assert!(halves.is_empty());

    let mut apart = clean.clone();
    apart.insert(2_000, 2);
    apart.insert(5_000, 3);
    apart.remove(&8_000);
    let (findings, exact_apart, halves) = sketch(vec![apart]);
    assert_eq!(findings, vec![2_000, 5_000, 8_000]);
    assert_eq!(exact_apart, exact, "three faults apart: located by halving");
    assert_eq!(halves, vec![(0, 4_999)], "[5000, 9999] is derived");

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
    let outcomes = collect(&runtime, Arc::clone(&source), IdRange::ALL, options);
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
    let largest_outcome = collect(
        &runtime,
        Arc::clone(&source),
        IdRange::ALL,
        ScanOptions::fixed(1000, 4),
    )
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
    let outcomes = collect(&runtime, Arc::clone(&source), IdRange::ALL, options);
    assert_eq!(outcomes.first().map(|o| o.range.start), Some(0));
    assert_eq!(outcomes.last().map(|o| o.range.end), Some(u64::MAX));
    for pair in outcomes.windows(2) {
        assert_eq!(pair[0].range.end + 1, pair[1].range.start, "contiguous");
    }
    let findings: Vec<Finding> = outcomes.into_iter().flat_map(|o| o.findings).collect();
    assert_eq!(findings.len(), 619);
    assert_eq!(findings, expected);
}
