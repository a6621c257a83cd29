//! The new-session schedule: an exact, smooth interleaving of weights.
//!
//! Each entry `j` (of `w`) of a member with weight `w` is placed at virtual
//! time `(j + φ) / w` in `[0, 1)`. The phases `φ` of the `n` members of
//! one weight are `(k + ½) / n`, `k` being a member's rank among them by a
//! stable hash of its name: evenly spaced, so light members spread over
//! the period instead of piling up at one instant, and a heavy member's
//! runs between them stay short (weights 256 and 8 × 1: runs of 32, where
//! smooth weighted round robin gives 58). All entries sorted by time form one period of length
//! `W = Σ w`. The period is walked by one shared atomic counter, so any `W`
//! consecutive picks hold exactly one period: every member gets exactly its
//! weight, and its own picks are evenly spaced.

/// One member's share of a schedule.
pub(crate) struct Share {
    /// Index the schedule hands back.
    pub(crate) index: u32,
    /// Weight (> 0).
    pub(crate) weight: u32,
    /// Stable tie-break (a hash of the member's name).
    pub(crate) tiebreak: u64,
}

/// One period of the schedule.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    slots: Box<[u32]>,
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Schedule {
    pub(crate) fn build(shares: &[Share]) -> Schedule {
        let g = shares.iter().fold(0, |g, s| gcd(g, s.weight));
        if g == 0 {
            return Schedule::default();
        }
        // (numerator, denominator, tiebreak, index): time = num / den, with
        // the phase in 24 bits of fraction.
        const ONE: u128 = 1 << 24;
        // Members of one weight, ranked by name hash, get evenly spaced
        // phases: their entries then interleave evenly.
        let mut ranked: Vec<&Share> = shares.iter().collect();
        ranked.sort_unstable_by_key(|s| (s.weight, s.tiebreak, s.index));
        let mut entries: Vec<(u128, u128, u64, u32)> = Vec::new();
        for same in ranked.chunk_by(|a, b| a.weight == b.weight) {
            let n = same.len() as u128;
            for (k, s) in same.iter().enumerate() {
                let w = u128::from(s.weight / g);
                let phase = (2 * k as u128 + 1) * ONE / (2 * n);
                entries.extend((0..w).map(|j| (j * ONE + phase, w * ONE, s.tiebreak, s.index)));
            }
        }
        entries.sort_unstable_by(|a, b| {
            (a.0 * b.1)
                .cmp(&(b.0 * a.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        Schedule {
            slots: entries.into_iter().map(|e| e.3).collect(),
        }
    }

    /// Period length (0 when nothing takes new sessions).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The member at position `n` of the endless schedule.
    #[inline]
    pub(crate) fn at(&self, n: u64) -> u32 {
        self.slots[(n % self.slots.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32]) -> Vec<Share> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Share {
                index: i as u32,
                weight: w,
                tiebreak: i as u64,
            })
            .collect()
    }

    fn shares_named(weights: &[u32]) -> Vec<Share> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Share {
                index: i as u32,
                weight: w,
                tiebreak: crate::hash::stable_hash(0, format!("b{i}").as_bytes()),
            })
            .collect()
    }

    #[test]
    fn heavy_members_are_interleaved_not_bunched() {
        // Plain weighted round robin sends 5:1:1 as a a a a a b c; over two
        // periods that is a run of 5. The schedule keeps runs short.
        let s = Schedule::build(&shares_named(&[5, 1, 1]));
        let seq: Vec<u32> = (0..14).map(|n| s.at(n)).collect();
        let longest_run = seq
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest_run <= 3, "{seq:?}");
        assert_eq!(seq[..7].iter().filter(|&&m| m == 0).count(), 5);
    }

    #[test]
    fn light_members_spread_over_the_period() {
        // Eight weight-1 members beside one of weight 8: the heavy one must
        // not wait for all eight light ones in a row.
        let s = Schedule::build(&shares_named(&[8, 1, 1, 1, 1, 1, 1, 1, 1]));
        let seq: Vec<u32> = (0..32).map(|n| s.at(n)).collect();
        let mut gap = 0;
        let mut worst = 0;
        for &m in &seq {
            gap = if m == 0 { 0 } else { gap + 1 };
            worst = worst.max(gap);
        }
        assert!(worst <= 4, "{seq:?}");
    }

    /// The longest run of member 0 over two periods.
    fn longest_run_of_the_first(weights: &[u32]) -> usize {
        let s = Schedule::build(&shares_named(weights));
        let seq: Vec<u32> = (0..2 * s.len() as u64).map(|n| s.at(n)).collect();
        seq.chunk_by(|a, b| a == b)
            .filter(|run| run[0] == 0)
            .map(|run| run.len())
            .max()
            .unwrap()
    }

    #[test]
    fn a_heavy_members_runs_are_as_short_as_the_light_ones_allow() {
        // Between n light members' single picks, a member of weight w runs
        // about w / n times in a row.
        assert_eq!(longest_run_of_the_first(&[256, 1, 1, 1, 1, 1, 1, 1, 1]), 32);
        assert!(longest_run_of_the_first(&[100, 1, 1, 1, 1]) <= 26);
        assert!(
            longest_run_of_the_first(&[64; 1].iter().chain(&[1; 16]).copied().collect::<Vec<_>>())
                <= 4
        );
    }

    #[test]
    fn common_factors_shorten_the_period() {
        assert_eq!(Schedule::build(&shares(&[100, 200, 300])).len(), 6);
    }
}
