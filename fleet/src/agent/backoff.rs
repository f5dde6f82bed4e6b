//! Bounded exponential back-off with jitter, so that a thousand agents
//! that lost etcd together do not come back in step.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// From `min`, doubling up to `max`; `seed` (the machine ID) spreads
    /// the jitter.
    pub(crate) fn new(min: Duration, max: Duration, seed: &str) -> Backoff {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        std::time::SystemTime::now().hash(&mut h);
        Backoff {
            min,
            max: max.max(min),
            next: min,
            rng: h.finish() | 1,
        }
    }

    /// The next wait: between half and all of the current step, which then
    /// doubles (up to the maximum).
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let nanos = half.as_nanos() as u64;
        let extra = if nanos == 0 {
            0
        } else {
            self.rng % (nanos + 1)
        };
        half + Duration::from_nanos(extra)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_jittered() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000), "m1");
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (w, s) in waits.iter().zip(steps) {
            assert!(*w >= ms(s) / 2 && *w <= ms(s), "{w:?} for a step of {s} ms");
        }
        b.reset();
        assert!(b.next() <= ms(100));
    }
}
