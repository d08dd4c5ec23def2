//! The ids a watch has seen touched and not yet judged, in a bounded amount
//! of memory. Pure: the caller says what time it is.
//!
//! Each id waits until its due time (touched again, it starts its wait
//! again) and keeps the change that touched it last, which a finding
//! names. Past `max_ids` ids, new ones are folded into at most
//! `max_ranges` id ranges (the two closest ranges merge when one more is
//! needed), to be checked with the scan's chunked reads: a bulk delete of
//! a million references costs a range scan, not a million entries. A range
//! covers every id folded into it, so nothing touched is ever lost.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::IdRange;

/// A touched id's wait and its origin (`O`: what the caller keeps of the
/// change).
#[derive(Debug, Clone)]
struct Entry<T, O> {
    due: T,
    /// The latest it may wait, however often it is touched again.
    deadline: T,
    origin: O,
}

/// Ids waiting to be judged, and ranges of ids past the bound.
#[derive(Debug)]
pub struct Pending<T: Ord + Copy, O> {
    max_ids: usize,
    max_ranges: usize,
    ids: BTreeMap<u64, Entry<T, O>>,
    queue: BTreeSet<(T, u64)>,
    /// Range start → its end and wait: disjoint, not adjacent.
    ranges: BTreeMap<u64, Span<T>>,
}

/// A range's end, when it is due (the latest of its ids' due times, but
/// never past its deadline), and its deadline (the earliest of its ids').
#[derive(Debug, Clone, Copy)]
struct Span<T> {
    end: u64,
    due: T,
    deadline: T,
}

impl<T: Ord + Copy, O: Clone> Pending<T, O> {
    pub fn new(max_ids: usize, max_ranges: usize) -> Pending<T, O> {
        Pending {
            max_ids: max_ids.max(1),
            max_ranges: max_ranges.max(1),
            ids: BTreeMap::new(),
            queue: BTreeSet::new(),
            ranges: BTreeMap::new(),
        }
    }

    /// Ids waiting (ranges not counted).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.ranges.is_empty()
    }

    /// Ranges waiting.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The origin `id` waits with, if it waits on its own.
    pub fn origin(&self, id: u64) -> Option<&O> {
        self.ids.get(&id).map(|entry| &entry.origin)
    }

    /// `id` was touched by `origin`; it is judged at `due` at the earliest,
    /// and no later than `deadline` as first given (a blob touched without
    /// pause would otherwise never be judged).
    pub fn touch(&mut self, id: u64, due: T, deadline: T, origin: O) {
        if let Some(entry) = self.ids.get_mut(&id) {
            self.queue.remove(&(entry.due, id));
            let due = due.min(entry.deadline);
            entry.due = due;
            entry.origin = origin;
            self.queue.insert((due, id));
            return;
        }
        if let Some((_, span)) = self.ranges.range_mut(..=id).next_back()
            && id <= span.end
        {
            // A range waits for the latest of its ids, up to its deadline.
            span.due = span.due.max(due).min(span.deadline);
            return;
        }
        if self.ids.len() < self.max_ids {
            let due = due.min(deadline);
            self.ids.insert(
                id,
                Entry {
                    due,
                    deadline,
                    origin,
                },
            );
            self.queue.insert((due, id));
        } else {
            self.add_range(IdRange::new(id, id), due, deadline);
        }
    }

    fn add_range(&mut self, range: IdRange, due: T, deadline: T) {
        let mut span = Span {
            end: range.end,
            due: due.min(deadline),
            deadline,
        };
        let mut start = range.start;
        // Absorb every range it overlaps or touches.
        loop {
            let neighbour = self
                .ranges
                .range(..=span.end.saturating_add(1))
                .next_back()
                .map(|(&s, &other)| (s, other))
                .filter(|&(_, other)| other.end.saturating_add(1) >= start);
            let Some((s, other)) = neighbour else { break };
            self.ranges.remove(&s);
            start = start.min(s);
            span = joined(span, other);
        }
        self.absorb_ids(start, &mut span);
        self.ranges.insert(start, span);
        while self.ranges.len() > self.max_ranges {
            self.merge_closest();
        }
    }

    /// Ids the range `start..=span.end` covers go with it.
    fn absorb_ids(&mut self, start: u64, span: &mut Span<T>) {
        let covered: Vec<u64> = self
            .ids
            .range(start..=span.end)
            .map(|(&id, _)| id)
            .collect();
        for id in covered {
            if let Some(entry) = self.remove(id) {
                *span = joined(
                    *span,
                    Span {
                        end: span.end,
                        due: entry.due,
                        deadline: entry.deadline,
                    },
                );
            }
        }
    }

    /// Merges the two neighbouring ranges with the smallest gap.
    fn merge_closest(&mut self) {
        let spans: Vec<(u64, Span<T>)> = self.ranges.iter().map(|(&s, &span)| (s, span)).collect();
        let Some(i) = (0..spans.len() - 1).min_by_key(|&i| spans[i + 1].0 - spans[i].1.end) else {
            return;
        };
        let (s, first) = spans[i];
        let (s2, second) = spans[i + 1];
        let mut span = joined(first, second);
        self.ranges.remove(&s2);
        self.absorb_ids(s, &mut span);
        self.ranges.insert(s, span);
    }

    fn remove(&mut self, id: u64) -> Option<Entry<T, O>> {
        let entry = self.ids.remove(&id)?;
        self.queue.remove(&(entry.due, id));
        Some(entry)
    }

    /// Up to `limit` ids due at `now` whose origin is `ready` (or whose
    /// deadline has come), earliest first, taken out. A due id not ready
    /// waits on until `retry` (never past its deadline).
    pub fn take_ready(
        &mut self,
        now: T,
        limit: usize,
        retry: T,
        ready: impl Fn(&O) -> bool,
    ) -> Vec<(u64, O)> {
        let mut due = Vec::new();
        while due.len() < limit {
            let Some(&(when, id)) = self.queue.first() else {
                break;
            };
            if when > now {
                break;
            }
            let entry = self.remove(id).expect("queued ids are kept");
            if entry.deadline > now && !ready(&entry.origin) {
                let later = retry.min(entry.deadline);
                self.queue.insert((later, id));
                self.ids.insert(
                    id,
                    Entry {
                        due: later,
                        ..entry
                    },
                );
                continue;
            }
            due.push((id, entry.origin));
        }
        due
    }

    /// Up to `limit` ids due at `now`, earliest first, taken out.
    #[cfg(test)]
    pub fn take_due(&mut self, now: T, limit: usize) -> Vec<(u64, O)> {
        self.take_ready(now, limit, now, |_| true)
    }

    /// Every range due at `now`, taken out.
    pub fn take_due_ranges(&mut self, now: T) -> Vec<IdRange> {
        let due: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|(_, span)| span.due <= now)
            .map(|(&s, span)| (s, span.end))
            .collect();
        for &(s, _) in &due {
            self.ranges.remove(&s);
        }
        due.into_iter().map(|(s, e)| IdRange::new(s, e)).collect()
    }

    /// Every id waiting with its origin, and every range: what a state
    /// file keeps.
    pub fn snapshot(&self) -> (Vec<(u64, O)>, Vec<IdRange>) {
        let ids: Vec<(u64, O)> = self
            .ids
            .iter()
            .map(|(&id, e)| (id, e.origin.clone()))
            .collect();
        let ranges = self
            .ranges
            .iter()
            .map(|(&s, span)| IdRange::new(s, span.end))
            .collect();
        (ids, ranges)
    }

    /// Adds a whole range (from a state file, or a gap to close).
    pub fn touch_range(&mut self, range: IdRange, due: T, deadline: T) {
        self.add_range(range, due, deadline);
    }
}

/// Two waits as one: the later due time, the earlier deadline, the due
/// time never past the deadline.
fn joined<T: Ord + Copy>(a: Span<T>, b: Span<T>) -> Span<T> {
    let deadline = a.deadline.min(b.deadline);
    Span {
        end: a.end.max(b.end),
        due: a.due.max(b.due).min(deadline),
        deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn touching_again_restarts_the_wait() {
        let mut p: Pending<u32, &str> = Pending::new(10, 4);
        p.touch(5, 10, 100, "first");
        p.touch(5, 20, 100, "second");
        assert!(p.take_due(15, 10).is_empty());
        assert_eq!(p.take_due(20, 10), vec![(5, "second")]);
        assert!(p.is_empty());
        // Touched again and again, it is still judged by its deadline.
        p.touch(6, 10, 25, "a");
        p.touch(6, 20, 35, "b");
        p.touch(6, 30, 45, "c");
        assert_eq!(p.take_due(25, 10), vec![(6, "c")]);
    }

    #[test]
    fn an_id_not_ready_waits_until_it_is_or_its_deadline() {
        let mut p: Pending<u32, bool> = Pending::new(10, 4);
        p.touch(1, 10, 30, false);
        p.touch(2, 10, 30, true);
        // Not ready: pushed to the retry time.
        assert_eq!(p.take_ready(10, 10, 12, |&ready| ready), vec![(2, true)]);
        assert!(p.take_ready(11, 10, 13, |&ready| ready).is_empty());
        assert!(p.take_ready(12, 10, 14, |&ready| ready).is_empty());
        // Its deadline: taken, ready or not.
        assert_eq!(p.take_ready(30, 10, 32, |&ready| ready), vec![(1, false)]);
        assert!(p.is_empty());
    }

    #[test]
    fn past_the_bound_ids_become_ranges() {
        let mut p: Pending<u32, ()> = Pending::new(2, 2);
        for id in [10, 20, 30, 31, 1000, u64::MAX] {
            p.touch(id, 1, 1, ());
        }
        assert!(p.len() <= 2);
        assert!(p.range_count() <= 2);
        let mut covered: Vec<u64> = p.take_due(1, 10).into_iter().map(|(id, _)| id).collect();
        let ranges = p.take_due_ranges(1);
        for id in [10, 20, 30, 31, 1000, u64::MAX] {
            assert!(
                covered.contains(&id) || ranges.iter().any(|r| r.contains(id)),
                "{id} lost"
            );
        }
        covered.sort();
        assert!(p.is_empty());
    }

    proptest! {
        /// Against a model that keeps everything, with touches and takes
        /// interleaved: every id touched is handed out, as an id or inside
        /// a range; an id is never handed out before its due time (capped
        /// by the deadline its wait started with), and nothing waits past
        /// the latest deadline of its touches; memory stays within bounds.
        #[test]
        fn nothing_touched_is_lost(
            touches in proptest::collection::vec((0u64..200, 0u32..40), 0..300),
            max_ids in 1usize..20,
            max_ranges in 1usize..5,
            limit in 1usize..10,
            cap in 0u32..20,
        ) {
            let mut p: Pending<u32, u32> = Pending::new(max_ids, max_ranges);
            // Ids touched since last handed out, with the latest deadline
            // of their touches.
            let mut waiting: BTreeMap<u64, u32> = BTreeMap::new();
            // The deadline each wait started with.
            let mut first: BTreeMap<u64, u32> = BTreeMap::new();
            let mut touches = touches;
            // Touches come in time order: `when` is the time of the touch.
            touches.sort_by_key(|&(_, when)| when);
            let mut next = 0;
            for now in 0..=100u32 {
                while next < touches.len() && touches[next].1 == now {
                    let id = touches[next].0;
                    let due = now + 2;
                    let deadline = now + 2 + cap;
                    p.touch(id, due, deadline, now);
                    first.entry(id).or_insert(deadline);
                    let latest = waiting.entry(id).or_insert(deadline);
                    *latest = (*latest).max(deadline);
                    next += 1;
                    prop_assert!(p.len() <= max_ids);
                    prop_assert!(p.range_count() <= max_ranges);
                }
                loop {
                    let due = p.take_due(now, limit);
                    if due.is_empty() { break; }
                    for (id, touched) in due {
                        prop_assert!(now >= (touched + 2).min(first[&id]));
                        waiting.remove(&id);
                        first.remove(&id);
                    }
                }
                for range in p.take_due_ranges(now) {
                    let inside: Vec<u64> = waiting.range(range.start..=range.end).map(|(&id, _)| id).collect();
                    for id in inside {
                        waiting.remove(&id);
                        first.remove(&id);
                    }
                }
                // Nothing waits past its latest deadline.
                for (&id, &deadline) in &waiting {
                    prop_assert!(deadline > now, "id {} waits past its deadline {} at {}", id, deadline, now);
                }
            }
            prop_assert!(p.is_empty());
            prop_assert!(waiting.is_empty(), "ids lost: {:?}", waiting);
        }
    }
}
