//! A backend's response times, as a Prometheus histogram
//! (`sticky_backend_response_seconds`): from the moment the whole request
//! is handed to the backend to its response head. Requests with no
//! response head (a 502 or 504 the gateway answers for the backend) and
//! WebSocket upgrades are not counted.
//!
//! Each worker thread counts into its own shard, on cache lines of its
//! own, so recording costs a request a few uncontended atomic additions;
//! reading adds the shards up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds, in seconds; a last bucket, `+Inf`, takes the
/// rest.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BOUNDS`] in nanoseconds.
const BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// One thread's counts: per bucket (not cumulative), and the sum in
/// microseconds, which would take half a million years of waiting to
/// wrap (in nanoseconds it would be months, for a backend holding
/// thousands of long polls).
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    micros: AtomicU64,
}

/// Response times, one shard per thread that records.
pub struct ResponseTimes {
    shards: Box<[Shard]>,
}

/// The histogram as read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket of [`BOUNDS`], then `+Inf`: how many responses took at
    /// most its bound and more than the one before (not cumulative).
    pub buckets: [u64; BOUNDS.len() + 1],
    /// The sum of all the times, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// How many responses were timed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl ResponseTimes {
    /// Room for `shards` threads to record without sharing a cache line.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
        }
    }

    /// Counts one response that took `time`, in `shard` (the caller's
    /// thread; any number is taken modulo the shards).
    pub fn record(&self, shard: usize, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least the time: Prometheus's
        // `le` is "less than or equal".
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        let shard = &self.shards[shard % self.shards.len()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Rounded, so that the sum is not biased low.
        shard
            .micros
            .fetch_add(nanos.saturating_add(500) / 1000, Ordering::Relaxed);
    }

    /// The counts so far, all shards added up.
    pub fn read(&self) -> Histogram {
        let mut histogram = Histogram::default();
        let mut micros = 0u128;
        for shard in self.shards.iter() {
            for (sum, count) in histogram.buckets.iter_mut().zip(&shard.buckets) {
                *sum += count.load(Ordering::Relaxed);
            }
            micros += u128::from(shard.micros.load(Ordering::Relaxed));
        }
        histogram.sum = micros as f64 / 1e6;
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_nanoseconds_are_the_bounds_in_seconds() {
        for (seconds, nanos) in BOUNDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn each_bound_holds_its_time_and_not_a_nanosecond_more() {
        for (i, &bound) in BOUNDS_NANOS.iter().enumerate() {
            let times = ResponseTimes::new(1);
            times.record(0, Duration::from_nanos(bound));
            times.record(0, Duration::from_nanos(bound + 1));
            let buckets = times.read().buckets;
            assert_eq!((buckets[i], buckets[i + 1]), (1, 1), "bound {}", BOUNDS[i]);
            assert_eq!(buckets.iter().sum::<u64>(), 2);
        }
    }

    #[test]
    fn each_time_lands_in_the_first_bucket_that_holds_it() {
        let times = ResponseTimes::new(3);
        let ms = Duration::from_millis;
        // At a bound: that bucket. Just past it: the next.
        times.record(0, ms(1));
        times.record(1, ms(1) + Duration::from_nanos(1));
        times.record(2, Duration::ZERO);
        times.record(7, ms(60_000));
        times.record(1, Duration::MAX);
        let read = times.read();
        let mut wanted = [0; BOUNDS.len() + 1];
        wanted[0] = 1; // 0
        wanted[1] = 1; // 1 ms
        wanted[2] = 1; // 1 ms and 1 ns
        wanted[BOUNDS.len()] = 2; // a minute, and more than a lifetime
        assert_eq!(read.buckets, wanted);
        assert_eq!(read.count(), 5);
        let without_max = ResponseTimes::new(1);
        for time in [ms(1), ms(1) + Duration::from_nanos(1), ms(60_000)] {
            without_max.record(0, time);
        }
        assert!((without_max.read().sum - 60.002).abs() < 1e-9);
    }
}
