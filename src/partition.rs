//! `--partition K/N`: which ids each of N processes checks, so that they
//! share a check without talking to each other.
//!
//! The id space is cut into fixed blocks of [`BLOCK_IDS`] ids, and the
//! blocks into rounds of N consecutive blocks. Every round gives exactly one
//! of its blocks to each partition, the one at position
//! `(K + rotation(round)) mod N`, where the rotation is a fixed hash of the
//! round's number. So:
//!
//! - every id belongs to exactly one partition, whatever the data;
//! - the N processes agree without a plan, a scan or a shared clock: the
//!   blocks depend on nothing but N, not on the table's span at start, so
//!   rows inserted while they run move nothing;
//! - a stretch of ids dense with rows gives every partition the same number
//!   of blocks, give or take one (sparse ids far above the bulk, such as a
//!   few ids above 2⁶³, do not leave one slice with everything, as cutting
//!   the span into N slices did);
//! - the rotation keeps a pattern that repeats every N blocks (ids written
//!   with a stride) from landing on one partition.
//!
//! Long stretches with no rows (the space up to 2⁶⁴ − 1) are jumped over
//! by the scan, which asks each table's index for the next row before it
//! starts a block (`scan`); this module is pure arithmetic.

use crate::plan::IdRange;

/// Ids per block: 2¹⁶. Small enough that one block more or less is a few
/// percent of a partition's share from about 10⁶ rows per partition up,
/// large enough that a block holds several chunks and sketches, so that
/// cutting at block ends adds few queries.
pub const BLOCK_BITS: u32 = 16;
pub const BLOCK_IDS: u64 = 1 << BLOCK_BITS;
/// Blocks in the id space (2⁴⁸).
const BLOCKS: u64 = 1 << (64 - BLOCK_BITS);

/// `--partition K/N`: the K-th (0-based) of N partitions of the id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub k: u64,
    pub n: u64,
}

impl std::str::FromStr for Partition {
    type Err = String;

    fn from_str(text: &str) -> Result<Partition, String> {
        let bad = || {
            format!("partition `{text}` must be K/N with 0 <= K < N <= {MAX_PARTITIONS}, e.g. 0/4")
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k >= n || n > MAX_PARTITIONS {
            return Err(bad());
        }
        Ok(Partition { k, n })
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// The most partitions a check can be split into. Far more than any
/// deployment runs; it keeps `round · N + position` (rounds are below
/// 2⁴⁸) from overflowing.
pub const MAX_PARTITIONS: u64 = 1 << 16;

/// The block an id is in.
pub fn block_of(id: u64) -> u64 {
    id >> BLOCK_BITS
}

/// The ids of a block.
pub fn block_range(block: u64) -> IdRange {
    let start = block << BLOCK_BITS;
    IdRange::new(start, start | (BLOCK_IDS - 1))
}

/// SplitMix64's finaliser: a fixed, well-mixed hash of a round's number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Partition {
    /// The whole space, for one process.
    pub const WHOLE: Partition = Partition { k: 0, n: 1 };

    /// How far round `round`'s blocks are rotated.
    fn rotation(&self, round: u64) -> u64 {
        mix(round) % self.n
    }

    /// The partition that checks `block`.
    pub fn owner(n: u64, block: u64) -> u64 {
        let p = Partition { k: 0, n };
        (block % n + p.rotation(block / n)) % n
    }

    pub fn owns_block(&self, block: u64) -> bool {
        Partition::owner(self.n, block) == self.k
    }

    pub fn owns(&self, id: u64) -> bool {
        self.owns_block(block_of(id))
    }

    /// This partition's block in round `round`.
    fn block_in_round(&self, round: u64) -> u64 {
        // position + rotation ≡ k (mod n)
        let position = (self.k + self.n - self.rotation(round)) % self.n;
        round * self.n + position
    }

    /// The first block at or after `block` that this partition checks;
    /// `None` past the end of the id space.
    pub fn next_owned_block(&self, block: u64) -> Option<u64> {
        let round = block / self.n;
        let here = self.block_in_round(round);
        let next = if here >= block {
            here
        } else {
            self.block_in_round(round.checked_add(1)?)
        };
        (next < BLOCKS).then_some(next)
    }

    /// The ids from `start` on that this partition leaves to others: up to
    /// the start of its next block (or the end of the space). `None` when
    /// `start` is in one of its own blocks.
    pub fn foreign_from(&self, start: u64) -> Option<IdRange> {
        let block = block_of(start);
        if self.owns_block(block) {
            return None;
        }
        let end = match self.next_owned_block(block) {
            Some(next) => block_range(next).start - 1,
            None => u64::MAX,
        };
        Some(IdRange::new(start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partitions_parse() {
        assert_eq!("2/8".parse::<Partition>(), Ok(Partition { k: 2, n: 8 }));
        assert_eq!(" 0 / 1 ".parse::<Partition>(), Ok(Partition::WHOLE));
        assert!("65535/65536".parse::<Partition>().is_ok());
        for bad in [
            "8/8",
            "1",
            "a/2",
            "0/0",
            "-1/3",
            "",
            "1/18446744073709551616",
            "1/18446744073709551615",
            "0/65537",
        ] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn one_partition_owns_everything() {
        for id in [0, 1, BLOCK_IDS, 1 << 63, u64::MAX] {
            assert!(Partition::WHOLE.owns(id));
        }
        assert_eq!(Partition::WHOLE.foreign_from(12345), None);
        assert_eq!(
            Partition::WHOLE.next_owned_block(BLOCKS - 1),
            Some(BLOCKS - 1)
        );
    }

    #[test]
    fn blocks_tile_the_id_space() {
        assert_eq!(block_range(0), IdRange::new(0, BLOCK_IDS - 1));
        assert_eq!(block_range(BLOCKS - 1).end, u64::MAX);
        assert_eq!(block_of(u64::MAX), BLOCKS - 1);
        assert_eq!(block_of(BLOCK_IDS), 1);
    }

    /// The rotation is not the identity: a stride of N blocks does not
    /// land on one partition.
    #[test]
    fn a_stride_of_n_blocks_spreads_over_the_partitions() {
        for n in [2u64, 4, 16] {
            let owners: std::collections::BTreeSet<u64> = (0..64)
                .map(|round| Partition::owner(n, round * n))
                .collect();
            assert_eq!(owners.len() as u64, n, "n = {n}");
        }
    }

    proptest! {
        /// Every block has exactly one owner, and `owns_block` agrees.
        #[test]
        fn every_block_belongs_to_exactly_one_partition(block in prop_oneof![0u64..10_000, (BLOCKS - 10_000)..BLOCKS, 0..BLOCKS], n in 1u64..40) {
            let owner = Partition::owner(n, block);
            prop_assert!(owner < n);
            let owning = (0..n).filter(|&k| Partition { k, n }.owns_block(block)).count();
            prop_assert_eq!(owning, 1);
        }

        /// Each round of N blocks gives one block to each partition.
        #[test]
        fn each_round_gives_every_partition_one_block(round in prop_oneof![0u64..1000, any::<u64>()], n in 1u64..40) {
            let round = round % (BLOCKS / n);
            let mut owners: Vec<u64> = (0..n).map(|i| Partition::owner(n, round * n + i)).collect();
            owners.sort_unstable();
            prop_assert_eq!(owners, (0..n).collect::<Vec<_>>());
        }

        /// `next_owned_block` against a walk block by block.
        #[test]
        fn the_next_owned_block_is_the_first_at_or_after(block in prop_oneof![0u64..10_000, (BLOCKS - 100)..BLOCKS, 0..BLOCKS], k in 0u64..40, n in 1u64..40) {
            let partition = Partition { k: k % n, n };
            let walked = (block..BLOCKS.min(block + 2 * n + 1)).find(|&b| partition.owns_block(b));
            prop_assert_eq!(partition.next_owned_block(block), walked);
            if let Some(range) = partition.foreign_from(block_range(block).start) {
                prop_assert!(!partition.owns(range.start) && !partition.owns(range.end));
                match range.end.checked_add(1) {
                    Some(next) => prop_assert!(partition.owns(next)),
                    None => prop_assert_eq!(walked, None),
                }
            }
        }

        /// Any stretch of consecutive blocks gives every partition the same
        /// number, give or take one round's part at each end.
        #[test]
        fn consecutive_blocks_are_shared_evenly(first in 0u64..1_000_000, len in 0u64..5_000, n in 1u64..40) {
            let mut counts = vec![0u64; n as usize];
            for block in first..first + len {
                counts[Partition::owner(n, block) as usize] += 1;
            }
            let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(most - least <= 2, "{:?}", counts);
        }
    }
}
