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
    /// Range start → (end, due): disjoint, not adjacent.
    ranges: BTreeMap<u64, (u64, T)>,
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
        if let Some((&start, &(end, waiting))) = self.ranges.range(..=id).next_back()
            && id <= end
        {
            // A range waits for the latest of its ids.
            self.ranges.insert(start, (end, waiting.max(due)));
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
            self.add_range(IdRange::new(id, id), due);
        }
    }

    fn add_range(&mut self, range: IdRange, due: T) {
        let mut start = range.start;
        let mut end = range.end;
        let mut due = due;
        // Absorb every range it overlaps or touches.
        loop {
            let neighbour = self
                .ranges
                .range(..=end.saturating_add(1))
                .next_back()
                .map(|(&s, &(e, d))| (s, e, d))
                .filter(|&(_, e, _)| e.saturating_add(1) >= start);
            let Some((s, e, d)) = neighbour else { break };
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
            due = due.max(d);
        }
        // Ids the range now covers go with it, and it waits for the latest.
        let covered: Vec<u64> = self.ids.range(start..=end).map(|(&id, _)| id).collect();
        for id in covered {
            if let Some(entry) = self.remove(id) {
                due = due.max(entry.due);
            }
        }
        self.ranges.insert(start, (end, due));
        while self.ranges.len() > self.max_ranges {
            self.merge_closest();
        }
    }

    /// Merges the two neighbouring ranges with the smallest gap.
    fn merge_closest(&mut self) {
        let starts: Vec<(u64, u64, T)> =
            self.ranges.iter().map(|(&s, &(e, d))| (s, e, d)).collect();
        let Some(i) = (0..starts.len() - 1).min_by_key(|&i| starts[i + 1].0 - starts[i].1) else {
            return;
        };
        let (s, _, d1) = starts[i];
        let (s2, e2, d2) = starts[i + 1];
        let mut due = d1.max(d2);
        let covered: Vec<u64> = self.ids.range(s..=e2).map(|(&id, _)| id).collect();
        for id in covered {
            if let Some(entry) = self.remove(id) {
                due = due.max(entry.due);
            }
        }
        self.ranges.remove(&s2);
        self.ranges.insert(s, (e2, due));
    }

    fn remove(&mut self, id: u64) -> Option<Entry<T, O>> {
        let entry = self.ids.remove(&id)?;
        self.queue.remove(&(entry.due, id));
        Some(entry)
    }

    /// Up to `limit` ids due at `now`, earliest first, taken out.
    pub fn take_due(&mut self, now: T, limit: usize) -> Vec<(u64, O)> {
        let mut due = Vec::new();
        while due.len() < limit {
            let Some(&(when, id)) = self.queue.first() else {
                break;
            };
            if when > now {
                break;
            }
            let entry = self.remove(id).expect("queued ids are kept");
            due.push((id, entry.origin));
        }
        due
    }

    /// Every range due at `now`, taken out.
    pub fn take_due_ranges(&mut self, now: T) -> Vec<IdRange> {
        let due: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|&(_, &(_, d))| d <= now)
            .map(|(&s, &(e, _))| (s, e))
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
            .map(|(&s, &(e, _))| IdRange::new(s, e))
            .collect();
        (ids, ranges)
    }

    /// Adds a whole range (from a state file, or a gap to close).
    pub fn touch_range(&mut self, range: IdRange, due: T) {
        self.add_range(range, due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

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
        /// Against a model that keeps everything: every id touched is
        /// handed out, as an id or inside a range, no earlier than its
        /// last touch's due time, and memory stays within the bounds.
        #[test]
        fn nothing_touched_is_lost(
            touches in proptest::collection::vec((0u64..200, 0u32..50), 0..300),
            cap in 0u32..60,
            max_ids in 1usize..20,
            max_ranges in 1usize..5,
            limit in 1usize..10,
        ) {
            let mut p: Pending<u32, u32> = Pending::new(max_ids, max_ranges);
            let mut last_due: BTreeMap<u64, u32> = BTreeMap::new();
            let mut deadline: BTreeMap<u64, u32> = BTreeMap::new();
            for &(id, due) in &touches {
                // The model: the deadline is set by the touch that starts a
                // wait, and caps every later touch's due time.
                let limit = *deadline.entry(id).or_insert(due.saturating_add(cap));
                p.touch(id, due, due.saturating_add(cap), due.min(limit));
                last_due.insert(id, due.min(limit));
                prop_assert!(p.len() <= max_ids);
                prop_assert!(p.range_count() <= max_ranges);
            }
            let mut seen: BTreeSet<u64> = BTreeSet::new();
            for now in 0..=50u32 {
                loop {
                    let due = p.take_due(now, limit);
                    if due.is_empty() { break; }
                    for (id, origin) in due {
                        prop_assert!(last_due[&id] <= now);
                        prop_assert_eq!(origin, last_due[&id]);
                        seen.insert(id);
                    }
                }
                for range in p.take_due_ranges(now) {
                    for (&id, &due) in last_due.range(range.start..=range.end) {
                        // A range is due when its latest touch is.
                        prop_assert!(due <= now);
                        seen.insert(id);
                    }
                }
            }
            prop_assert!(p.is_empty());
            for id in last_due.keys() {
                prop_assert!(seen.contains(id), "id {} lost", id);
            }
        }
    }
}
