//! Confirmation: on live databases the scan only yields candidates. The
//! application adds a reference on a shard and bumps the count on the global
//! server in two steps, on two servers, so any single read can catch a blob
//! between the steps. A real corruption keeps its difference
//! `stored − actual` from read to read; a change in flight does not.
//!
//! Each candidate is therefore read again by id, after a settle delay and
//! then once per settle delay, with the stored count read before and after
//! the references are recounted (a read during which the count moved is not
//! trusted), and with a fingerprint of which rows reference it. A candidate
//! is reported only when its last `confirmations + 1` re-reads (at least
//! three), spanning at least `confirmations` settle delays, saw the same
//! stored count, the same number of references and the same referencing
//! rows, with a nonzero difference. Agreeing on the difference alone is not
//! enough: a blob that changes often can be caught by each read in a
//! different change in flight (`5 − 4`, then `6 − 5`), which looks like a
//! steady difference of 1; nor on the counts alone: a blob whose reference
//! is replaced by another (a draft saved again) reads the same counts in
//! flight every time, over other rows. See `verdict` for the rules, and
//! README ("What confirmation cannot tell") for the one workload no read
//! tells from a fault.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time;

use crate::error::Result;
use crate::finding::{Finding, difference};
use crate::read::{PointRead, PointReads, read_points};

/// How candidates are confirmed.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmOptions {
    /// Pause between reads of a candidate. Should exceed the longest time
    /// the application takes between its two steps, plus the replication lag
    /// between the replicas read (see the README).
    pub settle_delay: Duration,
    /// Re-reads that must agree with the scan's read. 0 reports what the
    /// scan saw, unconfirmed (for databases nothing writes to).
    pub confirmations: u32,
    /// Ids per point-read query.
    pub batch_size: usize,
    /// Blobs with at least this many references (stored or counted) are
    /// busy: they are re-read even when the scan saw them consistent, since
    /// a single read can catch changes in flight that hide a fault, and they
    /// need twice the agreeing reads.
    pub hot_threshold: u64,
}

impl ConfirmOptions {
    pub fn disabled() -> ConfirmOptions {
        ConfirmOptions {
            settle_delay: Duration::ZERO,
            confirmations: 0,
            batch_size: 500,
            hot_threshold: u64::MAX,
        }
    }

    pub fn enabled(&self) -> bool {
        self.confirmations > 0
    }
}

/// What one stable read saw of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `None`: no blob row.
    pub stored: Option<u64>,
    pub actual: u64,
    /// Which rows referenced the blob (`PointReads::reference_points`); `None`
    /// for the scan's read, which does not say.
    pub fingerprint: Option<u64>,
}

impl Seen {
    fn of(finding: &Finding, fingerprint: Option<u64>) -> Seen {
        Seen {
            stored: finding.stored,
            actual: finding.actual,
            fingerprint,
        }
    }

    /// The same counts, and the same referencing rows as far as both reads
    /// say. Two reads that agree saw the blob hold still in between (or
    /// change and change back exactly, which a fingerprint of row
    /// identities practically rules out).
    pub fn agrees(&self, other: &Seen) -> bool {
        self.stored == other.stored
            && self.actual == other.actual
            && match (self.fingerprint, other.fingerprint) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    pub fn difference(&self) -> i128 {
        difference(self.stored, self.actual)
    }
}

/// What one read saw of a candidate. `None`: the stored count changed during
/// the read.
pub type Reading = Option<Seen>;

/// A candidate and what every read so far saw of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The scan's read, as a finding (its kind means nothing while the
    /// difference is 0).
    pub finding: Finding,
    pub readings: Vec<Reading>,
    /// What each stable reading saw, in order.
    pub seen: Vec<Finding>,
    /// Busy: judged on more reads (see `ConfirmOptions::hot_threshold`).
    pub hot: bool,
}

impl Candidate {
    pub fn new(finding: Finding, hot_threshold: u64) -> Candidate {
        let reading = Some(Seen::of(&finding, None));
        let hot = finding.stored.unwrap_or(0).max(finding.actual) >= hot_threshold;
        Candidate {
            seen: vec![finding.clone()],
            finding,
            readings: vec![reading],
            hot,
        }
    }

    fn id(&self) -> u64 {
        self.finding.blob_id
    }

    /// The latest stable read that saw `value`.
    fn latest_with(&self, value: Seen) -> Option<&Finding> {
        self.seen
            .iter()
            .rev()
            .find(|f| f.stored == value.stored && f.actual == value.actual)
    }

    /// Watched because it is busy, not because the scan saw it wrong.
    pub fn watched(&self) -> bool {
        self.readings
            .first()
            .is_some_and(|r| difference_of(r) == Some(0))
    }
}

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It held still with a nonzero difference: a real inconsistency, as
    /// this reading shows it.
    Confirmed(Seen),
    /// It is consistent: a change that was in flight (or, for a watched busy
    /// blob, nothing wrong).
    Transient,
    /// It kept changing through every read allowed: not reported, counted.
    Unsettled,
    /// More reads needed.
    Pending,
}

/// Reads a candidate may take before it is given up as unsettled. An
/// ordinary candidate whose reads keep showing one nonzero difference while
/// its counts drift may take twice as many (see `verdict`).
pub fn max_reads(confirmations: u32, hot: bool) -> usize {
    let run = confirmations as usize + 1;
    if hot {
        4 * run
    } else {
        2 * agreeing(confirmations)
    }
}

/// Re-reads that must agree (`Seen::agrees`) to confirm an ordinary
/// candidate: `confirmations + 1`, and never fewer than three. Two re-reads
/// can agree on a consistent blob that is written both ways: a reference
/// added with its count still to follow at the first, a count lowered with
/// its reference still to go at the second, and between them only count
/// steps, which change neither the counts nor the rows seen. For a third
/// agreeing re-read, whatever is in flight at the second read has its
/// reference step between the second and the third, which changes the rows
/// seen, unless another row comes and goes in the same interval: the safe
/// order of README "What confirmation cannot tell", pinned by
/// `a_blob_written_both_ways_in_the_safe_order_looks_like_a_fault`.
pub fn agreeing(confirmations: u32) -> usize {
    (confirmations as usize + 1).max(3)
}

/// The rule, on the readings alone (the first is the scan's).
///
/// An ordinary candidate is confirmed when its last `agreeing` re-reads
/// (`confirmations + 1`, at least three, never the scan's read) are stable,
/// agree (stored count, references, and the rows that reference it, see
/// `Seen::agrees`) and show a nonzero difference, and is transient once its
/// last `confirmations` readings are stable, agree and show a difference of
/// 0.
///
/// A busy blob (see `ConfirmOptions::hot_threshold`) gets no benefit of the
/// doubt: changes in flight can bias its readings either way, so it is
/// confirmed only when its first `2 × (confirmations + 1)` re-reads are all
/// stable and agree, and consistent once `confirmations + 1` (at least
/// three) consecutive re-reads agree on a difference of 0. One that changes
/// under every read is unsettled: not reported, but listed, so that it is
/// checked again rather than trusted.
///
/// A blob the application keeps changing may never read the same twice in a
/// row, yet a fault on it keeps its difference. So an ordinary candidate
/// whose reads (the scan's included) are all stable and show one and the
/// same nonzero difference is read on, up to `2 × max_reads`, and confirmed
/// as its last read saw it if that holds to the end *and* no stream of
/// changes in one direction can explain the reads (`outside_every_bracket`).
/// The same difference on every read is not enough on its own: a blob that
/// receives references back to back (one attachment delivered to thousands
/// of mailboxes) is caught by every read with one change in flight, always
/// in the same direction.
///
/// Anything else ends unsettled after `max_reads`.
pub fn verdict(readings: &[Reading], confirmations: u32, hot: bool) -> Verdict {
    let run = confirmations as usize + 1;
    let decided = |value: Seen| {
        if value.difference() != 0 {
            Verdict::Confirmed(value)
        } else {
            Verdict::Transient
        }
    };
    if hot {
        let rereads = &readings[1.min(readings.len())..];
        // Consistent once as many consecutive re-reads as confirm an
        // ordinary candidate agree on a difference of 0: the same counts
        // over the same rows through at least two settle delays mean that
        // no single change was in flight through all of them (its other
        // step would have changed the rows or the count by the next), so
        // the 0 is what the blob holds, unless a change is undone as fast
        // as it is made (README, "What confirmation cannot tell"). This
        // keeps a busy blob the scan saw consistent from costing twice the
        // confirmation of a fault. Zeros that do not agree prove nothing: a
        // fault on a blob that receives references back to back reads 0
        // whenever one is in flight, over other rows each time.
        let clear = agreeing(confirmations);
        if rereads
            .windows(clear)
            .any(|window| all_agree(window).is_some_and(|value| value.difference() == 0))
        {
            return Verdict::Transient;
        }
        let quiet = 2 * run;
        if rereads.len() >= quiet
            && let Some(first) = all_agree(&rereads[..quiet])
        {
            return decided(first);
        }
        return if readings.len() < max_reads(confirmations, hot) {
            Verdict::Pending
        } else {
            Verdict::Unsettled
        };
    }
    // The scan's read does not say which rows it saw: the agreeing run is
    // of re-reads only.
    let agreeing = agreeing(confirmations);
    if readings.len() > agreeing {
        let last = &readings[readings.len() - agreeing..];
        if let Some(value) = all_agree(last)
            && value.difference() != 0
        {
            return decided(value);
        }
    }
    // Consistent, too, is a promise: a fault on a blob that keeps changing
    // reads 0 now and then (a change in flight offsets it), but hardly ever
    // as the very same counts twice in a row.
    let settled = confirmations.max(1) as usize;
    if readings.len() > settled {
        let last = &readings[readings.len() - settled..];
        if all_agree(last).is_some_and(|value| value.difference() == 0) {
            return Verdict::Transient;
        }
    }
    let drifting = steady_difference(readings).is_some() && outside_every_bracket(readings);
    let allowed = max_reads(confirmations, hot) * if drifting { 2 } else { 1 };
    if readings.len() < allowed {
        Verdict::Pending
    } else if drifting {
        Verdict::Confirmed(readings[readings.len() - 1].expect("all stable"))
    } else {
        Verdict::Unsettled
    }
}

/// The value every reading saw, when all are stable and agree with each
/// other (`Seen::agrees`); the first that says which rows it saw.
fn all_agree(readings: &[Reading]) -> Option<Seen> {
    let seen: Vec<Seen> = readings.iter().copied().collect::<Option<_>>()?;
    let agree = seen
        .iter()
        .enumerate()
        .all(|(i, a)| seen[i + 1..].iter().all(|b| a.agrees(b)));
    let first = *seen.first()?;
    agree.then(|| {
        seen.iter()
            .copied()
            .find(|s| s.fingerprint.is_some())
            .unwrap_or(first)
    })
}

/// The one nonzero difference every reading shows, when all are stable and
/// agree on whether the blob row exists.
fn steady_difference(readings: &[Reading]) -> Option<i128> {
    let first = (*readings.first()?)?;
    let d = first.difference();
    let same = |r: &Reading| {
        r.is_some_and(|seen| {
            seen.difference() == d && seen.stored.is_some() == first.stored.is_some()
        })
    };
    (d != 0 && readings.iter().all(same)).then_some(d)
}

/// Whether drifting readings show a fault that no stream of changes in one
/// direction can fake.
///
/// Reads are at least a settle delay apart, and the settle delay exceeds
/// the application's gap between its two steps. So for a consistent blob
/// whose changes all go one way (only references added, or only removed,
/// in either order of the two steps), the references counted by a read lie
/// between the stored counts read a settle delay before and after it: every
/// change in flight at the read has its stored side done by the next read,
/// and none was done before the previous read without its reference side
/// done by this one. A real fault shifts the stored counts and so can put
/// the reference count outside that bracket. A blob read this way is
/// confirmed by drift only when its stored counts move one way and every
/// reading between two others lies outside its bracket, on the side of the
/// fault; one whose changes go both ways has no such bracket and ends
/// unsettled.
fn outside_every_bracket(readings: &[Reading]) -> bool {
    let stored = |r: &Reading| r.map_or(0, |seen| seen.stored.unwrap_or(0));
    let counts: Vec<u64> = readings.iter().map(stored).collect();
    let rising = counts.windows(2).all(|w| w[0] <= w[1]);
    let falling = counts.windows(2).all(|w| w[0] >= w[1]);
    if !(rising || falling) || readings.len() < 3 {
        return false;
    }
    // Other rows referencing the blob, in the same number: references
    // were added and removed between the two reads.
    let both_ways = readings.windows(2).any(|w| match (w[0], w[1]) {
        (Some(a), Some(b)) => {
            a.actual == b.actual
                && matches!((a.fingerprint, b.fingerprint), (Some(x), Some(y)) if x != y)
        }
        _ => false,
    });
    if both_ways {
        return false;
    }
    readings.windows(3).all(|w| {
        let (before, after) = (stored(&w[0]), stored(&w[2]));
        let Some(seen) = w[1] else { return false };
        let (low, high) = (before.min(after), before.max(after));
        if seen.difference() > 0 {
            seen.actual < low
        } else {
            seen.actual > high
        }
    })
}

/// A stable reading's difference; `None` for a read the count moved under.
fn difference_of(reading: &Reading) -> Option<i128> {
    reading.map(|seen| seen.difference())
}

/// What a wave of candidates came to.
#[derive(Debug, Default)]
pub struct WaveOutcome {
    /// In ascending id order.
    pub confirmed: Vec<Finding>,
    pub transient: u64,
    /// Busy blobs re-read although the scan saw them consistent, and
    /// consistent they were.
    pub watched: u64,
    /// Ids that never settled.
    pub unsettled: Vec<u64>,
}

/// Confirms a wave of candidates (sorted by id), first reading them at
/// `first_read` and then once per settle delay, until each has a verdict.
///
/// `first_read` should be a settle delay after the newest candidate's first
/// read (the scan's, or the watch's), so that an ordinary candidate's reads
/// are all a settle delay apart: `verdict` judges a drifting one on every
/// read, the first included. A busy blob is judged on its re-reads alone,
/// so its first re-read comes at once: a fault on a busy blob, which needs
/// twice the re-reads of an ordinary one, is confirmed a settle delay
/// sooner than if it waited with the others. The outcome comes when every
/// candidate of the wave has its verdict.
pub async fn confirm_wave<S: PointReads>(
    source: Arc<S>,
    candidates: Vec<Candidate>,
    options: ConfirmOptions,
    first_read: Instant,
) -> Result<WaveOutcome> {
    let (busy, ordinary): (Vec<Candidate>, Vec<Candidate>) =
        candidates.into_iter().partition(|c| c.hot);
    let (busy, ordinary) = tokio::try_join!(
        confirm_rounds(Arc::clone(&source), busy, options, time::Instant::now()),
        confirm_rounds(source, ordinary, options, first_read.into()),
    )?;
    let mut outcome = WaveOutcome {
        confirmed: busy.confirmed,
        transient: busy.transient + ordinary.transient,
        watched: busy.watched + ordinary.watched,
        unsettled: busy.unsettled,
    };
    outcome.confirmed.extend(ordinary.confirmed);
    outcome.confirmed.sort_by_key(|f| f.blob_id);
    outcome.unsettled.extend(ordinary.unsettled);
    outcome.unsettled.sort_unstable();
    Ok(outcome)
}

/// Reads candidates at `first_read` and then once per settle delay until
/// each has a verdict.
async fn confirm_rounds<S: PointReads>(
    source: Arc<S>,
    mut candidates: Vec<Candidate>,
    options: ConfirmOptions,
    first_read: time::Instant,
) -> Result<WaveOutcome> {
    let mut outcome = WaveOutcome::default();
    let mut next_read = first_read;
    while !candidates.is_empty() {
        time::sleep_until(next_read).await;
        let ids: Vec<u64> = candidates.iter().map(Candidate::id).collect();
        let mut reads = Vec::with_capacity(ids.len());
        for batch in ids.chunks(options.batch_size.max(1)) {
            reads.extend(read_points(&*source, batch).await?);
        }
        // The next read comes a full settle delay after this one ended (by
        // tokio's clock, which tests can pause and advance).
        next_read = time::Instant::now() + options.settle_delay;

        let mut reads = reads.into_iter();
        candidates.retain_mut(|candidate| {
            let PointRead {
                finding,
                stable,
                fingerprint,
            } = reads.next().expect("one read per candidate");
            let reading = stable.then(|| Seen::of(&finding, Some(fingerprint)));
            // A blob that grows busy while it is confirmed is judged as busy.
            candidate.hot |=
                finding.stored.unwrap_or(0).max(finding.actual) >= options.hot_threshold;
            candidate.readings.push(reading);
            if stable {
                candidate.seen.push(finding);
            }
            match verdict(&candidate.readings, options.confirmations, candidate.hot) {
                Verdict::Confirmed(value) => {
                    let finding = candidate
                        .latest_with(value)
                        .expect("a confirmed value was seen")
                        .clone();
                    outcome.confirmed.push(finding);
                    false
                }
                Verdict::Transient if candidate.watched() => {
                    outcome.watched += 1;
                    false
                }
                Verdict::Transient => {
                    outcome.transient += 1;
                    false
                }
                Verdict::Unsettled => {
                    outcome.unsettled.push(candidate.id());
                    false
                }
                Verdict::Pending => true,
            }
        });
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Kind, classify};
    use crate::read::memory::{MemorySource, points};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    /// A stable reading of a blob with 10 references and a difference `d`.
    fn r(d: i128) -> Reading {
        Some(seen(Some((10 + d) as u64), 10))
    }

    fn seen(stored: Option<u64>, actual: u64) -> Seen {
        Seen {
            stored,
            actual,
            fingerprint: Some(0),
        }
    }

    #[test]
    fn verdict_rules() {
        let confirmed = |d: i128| Verdict::Confirmed(seen(Some((10 + d) as u64), 10));
        // Two confirmations: three equal nonzero re-reads after the scan's.
        assert_eq!(verdict(&[r(-1)], 2, false), Verdict::Pending);
        assert_eq!(verdict(&[r(-1), r(-1)], 2, false), Verdict::Pending);
        assert_eq!(verdict(&[r(-1), r(-1), r(-1)], 2, false), Verdict::Pending);
        assert_eq!(
            verdict(&[r(-1), r(-1), r(-1), r(-1)], 2, false),
            confirmed(-1)
        );
        // In flight at the scan, settled since.
        assert_eq!(verdict(&[r(-1), r(0)], 2, false), Verdict::Pending);
        assert_eq!(verdict(&[r(-1), r(0), r(0)], 2, false), Verdict::Transient);
        // A persistent fault with one odd reading, then a run.
        assert_eq!(
            verdict(&[r(1), r(0), r(1), r(1)], 2, false),
            Verdict::Pending
        );
        assert_eq!(
            verdict(&[r(1), r(0), r(1), r(1), r(1)], 2, false),
            confirmed(1)
        );
        // A different difference is not the same inconsistency.
        assert_eq!(verdict(&[r(1), r(2), r(1)], 2, false), Verdict::Pending);
        // The row appearing with the same difference is not either.
        assert_eq!(
            verdict(&[Some(seen(None, 11)), r(-1), r(-1)], 2, false),
            Verdict::Pending
        );
        // Nor is the same difference over different counts: each read may
        // have caught another change in flight (on replicas that lag
        // independently, a reference added is in flight for a second or
        // more, and a blob that gets one every few seconds is caught so).
        let drifting = [
            Some(seen(Some(5), 4)),
            Some(seen(Some(6), 5)),
            Some(seen(Some(5), 4)),
        ];
        assert_eq!(verdict(&drifting, 2, false), Verdict::Pending);
        let steady = [
            Some(seen(Some(5), 4)),
            Some(seen(Some(6), 5)),
            Some(seen(Some(5), 4)),
            Some(seen(Some(5), 4)),
            Some(seen(Some(5), 4)),
        ];
        assert_eq!(verdict(&steady[..4], 2, false), Verdict::Pending);
        assert_eq!(
            verdict(&steady[..5], 2, false),
            Verdict::Confirmed(seen(Some(5), 4))
        );
        // Drifting counts, the same difference on every read allowed, and
        // every reference count below the stored counts read before and
        // after it: a fault of +3 on a blob that gains a reference between
        // reads.
        let churned: Vec<Reading> = (0..12).map(|i| Some(seen(Some(5 + i), 2 + i))).collect();
        assert_eq!(verdict(&churned[..6], 2, false), Verdict::Pending);
        assert_eq!(verdict(&churned[..11], 2, false), Verdict::Pending);
        assert_eq!(
            verdict(&churned, 2, false),
            Verdict::Confirmed(seen(Some(16), 13))
        );
        // Consistent blobs under a stream of changes in one direction, each
        // read catching one change in flight, in either order of the two
        // steps: the same difference on every read, never confirmed.
        type Stream = (&'static str, fn(u64) -> (u64, u64));
        let streams: [Stream; 4] = [
            ("adds, reference first", |i| (5 + i, 6 + i)),
            ("adds, count first", |i| (5 + i, 4 + i)),
            ("removes, reference first", |i| (50 - i, 49 - i)),
            ("removes, count first", |i| (50 - i, 51 - i)),
        ];
        for (name, at) in streams {
            let readings: Vec<Reading> = (0..12)
                .map(|i| {
                    let (stored, actual) = at(i);
                    Some(seen(Some(stored), actual))
                })
                .collect();
            for n in 1..=readings.len() {
                assert!(
                    !matches!(verdict(&readings[..n], 2, false), Verdict::Confirmed(_)),
                    "{name}: {n} reads"
                );
            }
            assert_eq!(
                verdict(&readings[..6], 2, false),
                Verdict::Unsettled,
                "{name}"
            );
        }
        // A fault on a blob whose counts go both ways: no bracket holds.
        let both_ways: Vec<Reading> = (0..12)
            .map(|i| Some(seen(Some(5 + i % 2), 2 + i % 2)))
            .collect();
        assert_eq!(verdict(&both_ways[..6], 2, false), Verdict::Unsettled);
        let mut broken = churned.clone();
        broken[3] = None;
        assert_eq!(verdict(&broken, 2, false), Verdict::Unsettled);
        broken[3] = Some(seen(Some(8), 8));
        assert_eq!(verdict(&broken, 2, false), Verdict::Unsettled);
        broken[3] = Some(seen(Some(9), 7));
        assert_eq!(verdict(&broken, 2, false), Verdict::Unsettled);
        // Broken after the usual number of reads: given up at once.
        let mut late = churned[..8].to_vec();
        assert_eq!(verdict(&late, 2, false), Verdict::Pending);
        late[7] = Some(seen(Some(12), 12));
        assert_eq!(verdict(&late, 2, false), Verdict::Unsettled);
        // A read during which the count moved breaks a run.
        assert_eq!(verdict(&[r(1), None, r(1)], 2, false), Verdict::Pending);
        // Never settling: unsettled after the allowed reads, even when one
        // value is the most frequent.
        assert_eq!(
            verdict(&[r(1), r(0), r(1), None, r(1), r(2)], 2, false),
            Verdict::Unsettled
        );
        // Zeros over drifting counts: a fault offset by changes in flight,
        // or no fault; undecided either way.
        assert_eq!(
            verdict(
                &[r(1), Some(seen(Some(7), 7)), Some(seen(Some(8), 8))],
                2,
                false
            ),
            Verdict::Pending
        );
        assert_eq!(
            verdict(
                &[r(1), Some(seen(Some(7), 7)), Some(seen(Some(7), 7))],
                2,
                false
            ),
            Verdict::Transient
        );
        // One confirmation: still three agreeing re-reads (two can agree on
        // a blob written both ways, see `agreeing`); one zero is transient.
        assert_eq!(verdict(&[r(3), r(3), r(3)], 1, false), Verdict::Pending);
        assert_eq!(verdict(&[r(3), r(3), r(3), r(3)], 1, false), confirmed(3));
        assert_eq!(verdict(&[r(3), r(0)], 1, false), Verdict::Transient);
    }

    /// A consistent blob under a workload, as the application makes it:
    /// each change `(start, gap, reference_first, add)` is two steps
    /// (reference row, stored count) in either order, at most `gap` apart,
    /// and adds a new referencing row or removes an existing one; reads come
    /// at least a settle delay (1000 ms, above every gap) apart, the first
    /// being the scan's (which does not fingerprint the rows). Returns the
    /// stable readings.
    fn workload_readings(
        base: u64,
        changes: &[(u64, u64, bool, bool)],
        read_gaps: &[u64],
    ) -> Vec<Reading> {
        let row_hash = |row: u64| {
            let mut x = row.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^ (x >> 31)
        };
        let settle = 1000;
        let mut t = 0;
        read_gaps
            .iter()
            .enumerate()
            .map(|(read, extra)| {
                t += settle + extra;
                let mut present: std::collections::BTreeSet<u64> = (0..base).collect();
                let mut count = base;
                let (mut added, mut removed) = (0u64, 0u64);
                for &(start, gap, reference_first, add) in changes {
                    let (r, c) = if reference_first {
                        (start, start + gap)
                    } else {
                        (start + gap, start)
                    };
                    let row = if add {
                        added += 1;
                        1_000_000 + added
                    } else {
                        removed += 1;
                        removed - 1
                    };
                    if r <= t {
                        if add {
                            present.insert(row);
                        } else {
                            present.remove(&row);
                        }
                    }
                    if c <= t {
                        count = if add { count + 1 } else { count - 1 };
                    }
                }
                let fingerprint = present.iter().fold(0, |f, &row| f ^ row_hash(row));
                Some(Seen {
                    stored: Some(count),
                    actual: present.len() as u64,
                    fingerprint: (read > 0).then_some(fingerprint),
                })
            })
            .collect()
    }

    /// `workload_readings` for changes that all go one way.
    fn stream_readings(
        base: u64,
        adds: bool,
        changes: &[(u64, u64, bool)],
        read_gaps: &[u64],
    ) -> Vec<Reading> {
        let changes: Vec<_> = changes
            .iter()
            .map(|&(start, gap, reference_first)| (start, gap, reference_first, adds))
            .collect();
        workload_readings(base, &changes, read_gaps)
    }

    proptest::proptest! {
        /// No stream of changes in one direction on a consistent blob, at
        /// any rate and with any mix of step orders, is ever confirmed:
        /// every prefix of its readings is pending, transient or unsettled.
        #[test]
        fn a_stream_in_one_direction_is_never_confirmed(
            adds in proptest::bool::ANY,
            writers in proptest::collection::vec(
                (
                    proptest::option::of(proptest::bool::ANY),
                    proptest::prop_oneof![
                        proptest::collection::vec((0u64..400, 0u64..1000, proptest::bool::ANY), 0..100),
                        // Back to back and long in flight: the hard case.
                        proptest::collection::vec((0u64..20, 900u64..1000, proptest::bool::ANY), 0..100),
                    ],
                ),
                1..3,
            ),
            read_gaps in proptest::collection::vec(0u64..600, 12),
            confirmations in 1u32..4,
        ) {
            // Each writer makes its changes back to back: a pause, then the
            // two steps `gap` apart, in one order (one code path) or in
            // either.
            let mut changes = Vec::new();
            for (one_order, writer) in &writers {
                let mut t = 0;
                for &(pause, gap, reference_first) in writer {
                    t += pause;
                    changes.push((t, gap, one_order.unwrap_or(reference_first)));
                    t += gap;
                }
            }
            let readings = stream_readings(300, adds, &changes, &read_gaps);
            for n in 1..=readings.len() {
                let v = verdict(&readings[..n], confirmations, false);
                proptest::prop_assert!(!matches!(v, Verdict::Confirmed(_)), "{n} reads: {v:?} {:?}", &readings[..n]);
            }
        }
    }

    proptest::proptest! {
        /// Adds and removes mixed on one consistent blob (a draft saved
        /// again and again: a new row references the blob, the old one is
        /// deleted), at any rate and in any order of the steps: never
        /// confirmed. Every read may catch a change in flight with the same
        /// counts, but the rows referencing the blob differ from read to
        /// read.
        #[test]
        fn a_mixed_workload_on_a_consistent_blob_is_never_confirmed(
            writers in proptest::collection::vec(
                (
                    proptest::option::of(proptest::bool::ANY),
                    proptest::prop_oneof![
                        proptest::collection::vec(
                            (0u64..400, 0u64..1000, proptest::bool::ANY, proptest::bool::ANY), 0..100),
                        // Back to back and long in flight, adds and removes
                        // alternating: the hard case.
                        proptest::strategy::Strategy::prop_map(
                            proptest::collection::vec(
                                (0u64..40, 800u64..1000, proptest::bool::ANY, proptest::bool::ANY), 0..100),
                            |v: Vec<(u64, u64, bool, bool)>| -> Vec<(u64, u64, bool, bool)> {
                                v.into_iter()
                                    .enumerate()
                                    .map(|(i, (p, g, o, _))| (p, g, o, i % 2 == 0))
                                    .collect()
                            },
                        ),
                    ],
                ),
                1..3,
            ),
            read_gaps in proptest::collection::vec(0u64..600, 12),
            confirmations in 1u32..4,
            hot in proptest::bool::ANY,
        ) {
            let mut changes = Vec::new();
            for (one_order, writer) in &writers {
                let mut t = 0;
                for &(pause, gap, reference_first, add) in writer {
                    t += pause;
                    changes.push((t, gap, one_order.unwrap_or(reference_first), add));
                    t += gap;
                }
            }
            let readings = workload_readings(300, &changes, &read_gaps);
            for n in 1..=readings.len() {
                let v = verdict(&readings[..n], confirmations, hot);
                proptest::prop_assert!(!matches!(v, Verdict::Confirmed(_)), "{n} reads: {v:?} {:?}", &readings[..n]);
            }
        }
    }

    #[test]
    fn the_same_counts_over_other_rows_are_not_the_same_reading() {
        // A draft saved again and again, count raised before the new row,
        // old row removed before the count is lowered: every read in
        // flight sees stored 11, actual 10, but other rows each time.
        let saved = |fingerprint: u64| {
            Some(Seen {
                stored: Some(11),
                actual: 10,
                fingerprint: Some(fingerprint),
            })
        };
        let scan = Some(Seen {
            stored: Some(11),
            actual: 10,
            fingerprint: None,
        });
        assert_eq!(
            verdict(&[scan, saved(1), saved(2)], 2, false),
            Verdict::Pending
        );
        let readings: Vec<Reading> = std::iter::once(scan).chain((1..12).map(saved)).collect();
        for n in 1..=readings.len() {
            assert!(
                !matches!(verdict(&readings[..n], 2, false), Verdict::Confirmed(_)),
                "{n}"
            );
            assert!(
                !matches!(verdict(&readings[..n], 2, true), Verdict::Confirmed(_)),
                "busy, {n}"
            );
        }
        assert_eq!(verdict(&readings, 2, false), Verdict::Unsettled);
        // The same rows each time: a fault that holds still.
        let held = [scan, saved(7), saved(7), saved(7)];
        assert_eq!(
            verdict(&held, 2, false),
            Verdict::Confirmed(held[1].unwrap())
        );
    }

    /// The limit, pinned: a consistent blob written both ways back to back
    /// in the safe order (the count raised before a row references the
    /// blob, the row deleted before the count is lowered) shows the same
    /// counts too high by one over the same rows at every read, since the
    /// rows that change are never there when a read comes. No read of the
    /// counts and rows tells it from a fault.
    #[test]
    fn a_blob_written_both_ways_in_the_safe_order_looks_like_a_fault() {
        let in_flight = Some(Seen {
            stored: Some(11),
            actual: 10,
            fingerprint: Some(42),
        });
        assert!(matches!(
            verdict(&[in_flight, in_flight, in_flight, in_flight], 2, false),
            Verdict::Confirmed(_)
        ));
    }

    #[test]
    fn the_stream_model_can_show_a_steady_difference() {
        // The case the bracket exists for: references added back to back,
        // each read catching one in flight, the same difference every time.
        let changes: Vec<(u64, u64, bool)> = (0..200).map(|i| (i * 100, 90, true)).collect();
        let readings = stream_readings(300, true, &changes, &[0; 12]);
        assert!(readings.iter().all(|r| difference_of(r) == Some(-1)));
        assert_eq!(steady_difference(&readings), Some(-1));
        assert!(!outside_every_bracket(&readings));
        assert_eq!(verdict(&readings, 2, false), Verdict::Unsettled);
    }

    #[test]
    fn busy_blobs_are_confirmed_only_when_quiet() {
        let confirmed = |d: i128| Verdict::Confirmed(seen(Some((10 + d) as u64), 10));
        // The scan's reading does not count: it may have been caught mid-way.
        assert_eq!(
            verdict(&[r(0), r(1), r(1), r(1), r(1), r(1)], 2, true),
            Verdict::Pending
        );
        assert_eq!(
            verdict(&[r(0), r(1), r(1), r(1), r(1), r(1), r(1)], 2, true),
            confirmed(1)
        );
        assert_eq!(verdict(&[r(2); 7], 2, true), confirmed(2));
        assert_eq!(verdict(&[r(0); 7], 2, true), Verdict::Transient);
        // Consistent after as many identical re-reads as confirm an
        // ordinary candidate, over the same rows; not before, and not when
        // the rows changed between them.
        assert_eq!(verdict(&[r(0); 4], 2, true), Verdict::Transient);
        assert_eq!(
            verdict(&[r(1), r(0), r(0), r(0)], 2, true),
            Verdict::Transient
        );
        assert_eq!(verdict(&[r(0); 3], 2, true), Verdict::Pending);
        assert_eq!(verdict(&[r(0); 4], 4, true), Verdict::Pending);
        let moved = |fingerprint| {
            Some(Seen {
                fingerprint: Some(fingerprint),
                ..seen(Some(10), 10)
            })
        };
        assert_eq!(
            verdict(&[r(0), moved(1), moved(2), moved(1)], 2, true),
            Verdict::Pending
        );
        // A single odd re-read, and it is never confirmed.
        let noisy = [
            r(0),
            r(1),
            r(1),
            r(2),
            r(1),
            r(1),
            r(1),
            r(1),
            r(1),
            r(1),
            r(1),
            r(1),
        ];
        assert_eq!(verdict(&noisy[..11], 2, true), Verdict::Pending);
        assert_eq!(verdict(&noisy, 2, true), Verdict::Unsettled);
        // Noise around 0, then three identical re-reads at 0: consistent.
        let calm = [
            r(0),
            r(-1),
            r(0),
            r(0),
            None,
            r(0),
            r(1),
            r(0),
            r(0),
            r(0),
            r(-1),
            r(0),
        ];
        assert_eq!(verdict(&calm, 2, true), Verdict::Transient);
        assert_eq!(verdict(&calm[..9], 2, true), Verdict::Pending);
        // A fault of -1 on a blob that receives references back to back,
        // its count raised first: every read that catches an add in flight
        // shows 0, over other rows each time. Zeros in the majority that do
        // not agree are no proof: unsettled, not consistent.
        let mut fingerprint = 0;
        let mut stream = |d: i128| {
            fingerprint += 1;
            Some(Seen {
                fingerprint: Some(fingerprint),
                ..seen(Some((10 + d) as u64), 10)
            })
        };
        let masked: Vec<Reading> = [-1, 0, 0, -1, 0, 0, 0, -1, 0, 0, -1, 0]
            .into_iter()
            .map(&mut stream)
            .collect();
        assert_eq!(verdict(&masked[..11], 2, true), Verdict::Pending);
        assert_eq!(verdict(&masked, 2, true), Verdict::Unsettled);
        // Biased noise around 0 that shows +1 most often: never confirmed.
        let biased = [
            r(1),
            r(1),
            r(0),
            r(1),
            r(1),
            r(0),
            r(1),
            r(1),
            r(0),
            r(1),
            r(1),
            r(0),
        ];
        assert_eq!(verdict(&biased, 2, true), Verdict::Unsettled);
    }

    /// Changes the data before the n-th stored-count read.
    type Change = Box<dyn Fn(u64, &mut MemorySource) + Send + Sync>;

    /// A memory source whose data the test changes between reads.
    struct Changing {
        inner: Mutex<MemorySource>,
        reads: AtomicU64,
        /// Called with the number of stored-count reads so far, before each.
        change: Change,
    }

    impl crate::read::ReferenceColumns for Changing {
        fn column_count(&self) -> usize {
            self.inner.lock().unwrap().columns.len()
        }
    }

    impl PointReads for Changing {
        async fn stored_counts(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
            let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut inner = self.inner.lock().unwrap();
            (self.change)(n, &mut inner);
            Ok(points(&inner.blobs, ids))
        }
        async fn reference_points(
            &self,
            column: usize,
            ids: &[u64],
        ) -> Result<Vec<(u64, u64, u64)>> {
            let inner = self.inner.lock().unwrap();
            Ok(points(&inner.columns[column], ids)
                .into_iter()
                .map(|(id, n)| (id, n, 0))
                .collect())
        }
    }

    fn finding(id: u64, stored: Option<u64>, actual: u64) -> Finding {
        Finding {
            kind: classify(stored, actual).unwrap(),
            blob_id: id,
            stored,
            actual,
            references: vec![(0, actual)],
        }
    }

    #[test]
    fn persistent_faults_are_confirmed_and_changes_in_flight_are_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // Blob 1: too high by one, for good. Blob 2: the scan saw a reference
        // whose count bump was still in flight; it landed right after.
        // Blob 3: missing, for good.
        let source = Changing {
            inner: Mutex::new(MemorySource::new(
                BTreeMap::from([(1, 3), (2, 1)]),
                vec![BTreeMap::from([(1, 2), (2, 2), (3, 1)])],
            )),
            reads: AtomicU64::new(0),
            change: Box::new(|n, data| {
                if n == 0 {
                    data.blobs.insert(2, 2);
                }
            }),
        };
        let candidates = vec![
            Candidate::new(finding(1, Some(3), 2), u64::MAX),
            Candidate::new(finding(2, Some(1), 2), u64::MAX),
            Candidate::new(finding(3, None, 1), u64::MAX),
        ];
        let options = ConfirmOptions {
            settle_delay: Duration::from_secs(2),
            confirmations: 2,
            batch_size: 2,
            hot_threshold: u64::MAX,
        };
        let outcome = runtime
            .block_on(confirm_wave(
                Arc::new(source),
                candidates,
                options,
                Instant::now(),
            ))
            .unwrap();
        let confirmed: Vec<(u64, Kind)> = outcome
            .confirmed
            .iter()
            .map(|f| (f.blob_id, f.kind))
            .collect();
        assert_eq!(
            confirmed,
            vec![(1, Kind::CountMismatch), (3, Kind::MissingBlob)]
        );
        assert_eq!(outcome.transient, 1);
        assert!(outcome.unsettled.is_empty());
    }

    #[test]
    fn a_count_that_moves_during_the_read_is_not_trusted() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // The stored count flips on every read: before and after never agree.
        let source = Changing {
            inner: Mutex::new(MemorySource::new(
                BTreeMap::from([(7, 5)]),
                vec![BTreeMap::from([(7, 1)])],
            )),
            reads: AtomicU64::new(0),
            change: Box::new(|n, data| {
                data.blobs.insert(7, if n % 2 == 0 { 5 } else { 6 });
            }),
        };
        let options = ConfirmOptions {
            settle_delay: Duration::from_secs(1),
            confirmations: 2,
            batch_size: 10,
            hot_threshold: u64::MAX,
        };
        let outcome = runtime
            .block_on(confirm_wave(
                Arc::new(source),
                vec![Candidate::new(finding(7, Some(5), 1), u64::MAX)],
                options,
                Instant::now(),
            ))
            .unwrap();
        assert!(outcome.confirmed.is_empty());
        assert_eq!(outcome.unsettled, vec![7]);
    }

    /// A memory source that notes when each point read read the
    /// references (once per read: the test's data has one column), and of
    /// which ids.
    struct Recording {
        inner: MemorySource,
        started: tokio::time::Instant,
        reads: Mutex<Vec<(Duration, Vec<u64>)>>,
    }

    impl crate::read::ReferenceColumns for Recording {
        fn column_count(&self) -> usize {
            self.inner.columns.len()
        }
    }

    impl PointReads for Recording {
        async fn stored_counts(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
            self.inner.stored_counts(ids).await
        }
        async fn reference_points(
            &self,
            column: usize,
            ids: &[u64],
        ) -> Result<Vec<(u64, u64, u64)>> {
            self.reads
                .lock()
                .unwrap()
                .push((self.started.elapsed(), ids.to_vec()));
            self.inner.reference_points(column, ids).await
        }
    }

    #[test]
    fn a_busy_blob_is_re_read_at_once_and_an_ordinary_one_a_settle_delay_after_its_scan() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // Blob 3: too high by one, ordinary. Blob 5: too high by one, busy
        // (11 references, the threshold 10). Blob 4: busy and consistent.
        let source = Arc::new(Recording {
            inner: MemorySource::new(
                BTreeMap::from([(3, 3), (4, 10), (5, 12)]),
                vec![BTreeMap::from([(3, 2), (4, 10), (5, 11)])],
            ),
            started: runtime.block_on(async { tokio::time::Instant::now() }),
            reads: Mutex::new(Vec::new()),
        });
        let options = ConfirmOptions {
            settle_delay: Duration::from_secs(3),
            confirmations: 2,
            batch_size: 10,
            hot_threshold: 10,
        };
        let candidates = vec![
            Candidate::new(finding(3, Some(3), 2), options.hot_threshold),
            // Watched: the scan saw it consistent (its kind means nothing).
            Candidate::new(
                Finding {
                    stored: Some(10),
                    ..finding(4, Some(11), 10)
                },
                options.hot_threshold,
            ),
            Candidate::new(finding(5, Some(12), 11), options.hot_threshold),
        ];
        let first_read = Instant::now() + options.settle_delay;
        let outcome = runtime
            .block_on(confirm_wave(
                Arc::clone(&source),
                candidates,
                options,
                first_read,
            ))
            .unwrap();
        // In id order, although the busy fault is confirmed last.
        let confirmed: Vec<u64> = outcome.confirmed.iter().map(|f| f.blob_id).collect();
        assert_eq!(confirmed, vec![3, 5]);
        assert_eq!(outcome.watched, 1);
        let reads = source.reads.lock().unwrap().clone();
        let times_of = |id: u64| -> Vec<Duration> {
            reads
                .iter()
                .filter(|(_, ids)| ids.contains(&id))
                .map(|&(at, _)| at)
                .collect()
        };
        let (ordinary, busy, watched) = (times_of(3), times_of(5), times_of(4));
        // The ordinary fault: three re-reads, the first a settle delay on.
        assert_eq!(ordinary.len(), 3, "{reads:?}");
        assert!(ordinary[0] >= options.settle_delay, "{reads:?}");
        assert!(
            ordinary[0] < options.settle_delay + Duration::from_secs(1),
            "{reads:?}"
        );
        // The busy ones: at once, then a settle delay apart; the fault on
        // six agreeing re-reads, the consistent one on three.
        assert_eq!(busy.len(), 6, "{reads:?}");
        assert!(busy[0] < Duration::from_millis(100), "{reads:?}");
        assert_eq!(watched.len(), 3, "{reads:?}");
        for times in [&ordinary, &busy] {
            assert!(
                times
                    .windows(2)
                    .all(|w| w[1] - w[0] >= options.settle_delay),
                "{reads:?}"
            );
        }
    }
}
