//! Staged rollouts (Bottlerocket-style waves), as data for `cairn serve`:
//! every machine has a stable seed in `0..SEEDS` derived from its machine
//! id, which the agent sends with each manifest request (header
//! [`SEED_HEADER`]); a rollout is a start time plus waves, each opening the
//! update to a larger share of seeds after some delay. The server offers
//! the new manifest to a machine only when its seed is inside the share
//! open at that moment, and the previous one otherwise.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Number of seeds (as Bottlerocket: 2048).
pub const SEEDS: u32 = 2048;
/// The request header carrying the seed.
pub const SEED_HEADER: &str = "X-Cairn-Rollout-Seed";
/// The request header carrying the asking machine's MAC address (the one
/// it netboots and reports with), so that the server can place it in a
/// rollout's waves and count its health verdict.
pub const MACHINE_HEADER: &str = "X-Cairn-Machine";

/// The seed of a machine: stable for a machine id, uniform over `0..SEEDS`.
pub fn machine_seed(machine_id: &str) -> u32 {
    let h = Sha256::digest(format!("cairn-rollout {}", machine_id.trim()).as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % SEEDS
}

/// One wave: `after_secs` after the rollout's start, `percent` of the
/// machines may update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub after_secs: i64,
    pub percent: u8,
}

/// A rollout of one version on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Seconds since the epoch.
    pub start: i64,
    /// Ordered by `after_secs`, `percent` not decreasing, at most 100.
    pub waves: Vec<Wave>,
}

impl Rollout {
    /// Everything at once.
    pub fn immediate(start: i64) -> Rollout {
        Rollout {
            start,
            waves: vec![Wave {
                after_secs: 0,
                percent: 100,
            }],
        }
    }

    /// The waves' rules, with the index of the wave that breaks them.
    pub fn check(&self) -> Result<(), String> {
        let mut last = (i64::MIN, 0u8);
        for (i, w) in self.waves.iter().enumerate() {
            if w.percent > 100 {
                return Err(format!("waves[{i}].percent: {} is over 100", w.percent));
            }
            if w.after_secs < 0 {
                return Err(format!("waves[{i}].after_secs: negative"));
            }
            if w.after_secs <= last.0 {
                return Err(format!(
                    "waves[{i}].after_secs: {} is not after the previous wave",
                    w.after_secs
                ));
            }
            if w.percent < last.1 {
                return Err(format!(
                    "waves[{i}].percent: {} is less than the previous wave's {}",
                    w.percent, last.1
                ));
            }
            last = (w.after_secs, w.percent);
        }
        Ok(())
    }

    /// The share of seeds open at `now` (0..=SEEDS).
    pub fn open_seeds(&self, now: i64) -> u32 {
        self.waves
            .iter()
            .filter(|w| self.start.saturating_add(w.after_secs) <= now)
            .map(|w| u32::from(w.percent.min(100)) * SEEDS / 100)
            .max()
            .unwrap_or(0)
    }

    /// Whether a machine with `seed` may get the update at `now`.
    pub fn offers(&self, seed: u32, now: i64) -> bool {
        seed < self.open_seeds(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_stable_and_spread() {
        assert_eq!(machine_seed("abc"), machine_seed("abc\n"));
        assert_ne!(machine_seed("abc"), machine_seed("abd"));
        let mut buckets = [0u32; 8];
        for i in 0..8000 {
            let s = machine_seed(&format!("{i:032x}"));
            assert!(s < SEEDS);
            buckets[(s * 8 / SEEDS) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn waves_open_over_time() {
        let r = Rollout {
            start: 1000,
            waves: vec![
                Wave {
                    after_secs: 0,
                    percent: 1,
                },
                Wave {
                    after_secs: 3600,
                    percent: 10,
                },
                Wave {
                    after_secs: 86400,
                    percent: 100,
                },
            ],
        };
        r.check().unwrap();
        assert_eq!(r.open_seeds(999), 0);
        assert_eq!(r.open_seeds(1000), 20);
        assert_eq!(r.open_seeds(1000 + 3600), 204);
        assert_eq!(r.open_seeds(1000 + 86400), SEEDS);
        assert!(r.offers(0, 1000));
        assert!(!r.offers(20, 1000));
        assert!(r.offers(20, 4600));
        assert!(r.offers(SEEDS - 1, 1000 + 86400));
        // of 10000 machines, about 10% can update in the second wave
        let n = (0..10000)
            .filter(|i| r.offers(machine_seed(&format!("m{i}")), 5000))
            .count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(Rollout::immediate(5).offers(SEEDS - 1, 5));
    }

    #[test]
    fn bad_waves_are_named() {
        let w = |after_secs, percent| Wave {
            after_secs,
            percent,
        };
        for (waves, want) in [
            (vec![w(0, 101)], "waves[0].percent: 101"),
            (vec![w(0, 10), w(0, 20)], "waves[1].after_secs"),
            (vec![w(0, 20), w(10, 10)], "waves[1].percent: 10 is less"),
            (vec![w(-1, 10)], "waves[0].after_secs: negative"),
        ] {
            let e = Rollout { start: 0, waves }.check().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
