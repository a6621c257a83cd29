//! Keyed placement: a weighted hash ring compiled into a lookup table.
//!
//! Each member gets points on a ring in proportion to its weight, at the
//! top 32 bits of `stable_hash(seed, name ‖ 0 ‖ point_index)`. A key belongs to
//! the first point at or after the middle of its bucket (the top bits of the
//! key's hash), and the answer for every bucket is precomputed, so a lookup
//! is one hash and one table read whatever the number of members.
//!
//! Why a ring rather than Maglev: adding a member only takes buckets *to*
//! the new member, and removing one only gives its buckets away, so exactly
//! the keys that must move do (Maglev's table refill also moves some keys
//! between unchanged members). The failover order of a key is the ring walk
//! from its bucket, the same order removal would produce.

use crate::hash::stable_hash_indexed;

/// Points per unit of weight, while the total allows: a member of weight
/// `w` then strays from its weight's share by about `1/sqrt(4096 w)`
/// (1.6% for weight 1, 0.2% for weight 100). A member's points depend on
/// its own weight only, so a change to one member moves keys only to or
/// from it: up to a total weight of 512.
const POINTS_PER_WEIGHT: f64 = 4096.0;
/// Total points; past this, members get proportionally fewer, and a change
/// that alters the total weight also moves a few keys between unchanged
/// members (about the total's relative change).
const MAX_POINTS: f64 = (1 << 21) as f64;
/// Bucket resolutions a pool may choose (see `PoolConfig::keyed_table_bits`).
pub(crate) const TABLE_BITS: std::ops::RangeInclusive<u8> = 10..=24;

/// A stored point's position on the 64-bit ring.
fn position(top: u32) -> u64 {
    u64::from(top) << 32
}

/// A member to place on the ring.
pub(crate) struct RingMember<'a> {
    pub(crate) index: u32,
    pub(crate) name: &'a str,
    pub(crate) weight: u32,
}

/// Owner of each bucket's middle, in the narrowest type that fits: the
/// table is read once per keyed request, and a small one stays in cache.
#[derive(Debug)]
enum Table {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Default for Table {
    fn default() -> Self {
        Table::Narrow(Box::default())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// (position, member), sorted. A position is the top half of a point's
    /// 64-bit hash: bucket middles have nothing in the lower half (at most
    /// 24 table bits), so comparing them with the top halves loses nothing,
    /// and a point takes 8 bytes.
    points: Box<[(u32, u32)]>,
    table: Table,
    shift: u32,
    members: usize,
    /// One more than the largest member index (sizes the walk's bitset).
    index_bound: usize,
}

impl Ring {
    /// Places `members`; keys are bucketed by the top `table_bits` bits of
    /// their hash. The resolution must stay the same for the life of a
    /// pool: changing it moves keys between members that did not change.
    pub(crate) fn build(members: &[RingMember<'_>], seed: u64, table_bits: u8) -> Ring {
        let members: Vec<&RingMember<'_>> = members.iter().filter(|m| m.weight > 0).collect();
        if members.is_empty() {
            return Ring::default();
        }
        let sum_w: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
        let per_weight = POINTS_PER_WEIGHT.min(MAX_POINTS / sum_w as f64);
        let mut points = Vec::new();
        for m in &members {
            let n = ((f64::from(m.weight) * per_weight).round() as u32).max(1);
            points.extend(
                (0..n).map(|j| ((stable_hash_indexed(seed, m.name, j) >> 32) as u32, m.index)),
            );
        }
        points.sort_unstable();

        let bits = u32::from(table_bits);
        let shift = 64 - bits;
        let mut p = 0;
        let owners = (0..(1u64 << bits)).map(|bucket| {
            let middle = (bucket << shift) | (1 << (shift - 1));
            while p < points.len() && position(points[p].0) < middle {
                p += 1;
            }
            points[p % points.len()].1
        });
        let widest = members.iter().map(|m| m.index).max().unwrap_or(0);
        let table = match u16::try_from(widest) {
            Ok(_) => Table::Narrow(owners.map(|m| m as u16).collect()),
            Err(_) => Table::Wide(owners.collect()),
        };
        Ring {
            points: points.into(),
            table,
            shift,
            members: members.len(),
            index_bound: members
                .iter()
                .map(|m| m.index as usize + 1)
                .max()
                .unwrap_or(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The member that owns `hash`.
    #[inline]
    pub(crate) fn first(&self, hash: u64) -> u32 {
        let bucket = (hash >> self.shift) as usize;
        match &self.table {
            Table::Narrow(t) => u32::from(t[bucket]),
            Table::Wide(t) => t[bucket],
        }
    }

    /// Every member, in the failover order of `hash` (the first is
    /// [`first`](Self::first)).
    pub(crate) fn candidates(&self, hash: u64) -> Candidates<'_> {
        let middle = ((hash >> self.shift) << self.shift) | (1 << (self.shift - 1));
        let start = self.points.partition_point(|p| position(p.0) < middle);
        Candidates {
            ring: self,
            next: start,
            walked: 0,
            seen: vec![0; self.index_bound.div_ceil(64)],
            found: 0,
        }
    }
}

/// Distinct members along the ring from a key's bucket.
pub(crate) struct Candidates<'a> {
    ring: &'a Ring,
    next: usize,
    walked: usize,
    /// Bitset of members already yielded.
    seen: Vec<u64>,
    found: usize,
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let ring = self.ring;
        while self.found < ring.members && self.walked < ring.points.len() {
            let member = ring.points[self.next % ring.points.len()].1;
            self.next += 1;
            self.walked += 1;
            let (word, bit) = (member as usize / 64, 1u64 << (member % 64));
            if self.seen[word] & bit == 0 {
                self.seen[word] |= bit;
                self.found += 1;
                return Some(member);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::stable_hash;

    fn ring(names: &[&str]) -> Ring {
        let members: Vec<RingMember<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| RingMember {
                index: i as u32,
                name: n,
                weight: 1,
            })
            .collect();
        Ring::build(&members, 0, 18)
    }

    #[test]
    fn candidates_start_with_the_owner_and_cover_everyone() {
        let r = ring(&["a", "b", "c", "d"]);
        for k in 0..1000u32 {
            let h = stable_hash(0, &k.to_le_bytes());
            let all: Vec<u32> = r.candidates(h).collect();
            assert_eq!(all[0], r.first(h));
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn zero_weights_are_left_out() {
        let members = [
            RingMember {
                index: 0,
                name: "a",
                weight: 0,
            },
            RingMember {
                index: 1,
                name: "b",
                weight: 2,
            },
        ];
        let r = Ring::build(&members, 0, 18);
        assert!((0..100u64).all(|k| r.first(stable_hash(1, &k.to_le_bytes())) == 1));
    }
}
