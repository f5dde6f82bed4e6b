//! The retry policy: how many tries and how long between them ([`Retry`]),
//! and which failures may pass by themselves ([`Transient`],
//! [`transient_status`]).

use std::time::{Duration, Instant};

/// An error a [`Retry`] loop can judge and wrap.
pub trait Transient: Sized + std::fmt::Display {
    /// A failure that may pass by itself (DNS, refused or reset
    /// connections, timeouts, HTTP 5xx, 408, 429).
    fn is_transient(&self) -> bool;
    /// The error to report after the last of `tries` tries, `secs` seconds
    /// after the first: it must say how many tries were made.
    fn gave_up(self, tries: u32, secs: u64) -> Self;
}

/// An HTTP status that may pass by itself: a server's 5xx, 408 (Request
/// Timeout), 429 (Too Many Requests). Any other is final.
pub fn transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// How transient failures are retried: `tries` attempts in all, waiting
/// `first_delay` after the first failure and twice as long after each
/// following one, at most `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub tries: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 5 tries over about 15 s (1, 2, 4, 8 s between them): the agent's
    /// and `cairn build`'s.
    fn default() -> Self {
        Retry {
            tries: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
        }
    }
}

impl Retry {
    /// `retries` more tries after the first one (`cairn build --retries`).
    pub fn with_retries(retries: u32) -> Retry {
        Retry {
            tries: retries.saturating_add(1),
            ..Retry::default()
        }
    }

    /// The wait after failed try number `n` (1-based): `first_delay`
    /// doubled `n - 1` times, at most `max_delay`.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Runs `attempt` until it succeeds, fails for good
    /// ([`Transient::is_transient`] is false), or the tries are spent; the
    /// last error then says how many tries were made
    /// ([`Transient::gave_up`]). Each retry is logged (warning) with the
    /// error, the try that comes and the wait before it.
    pub fn run<T, E: Transient>(
        &self,
        mut attempt: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let start = Instant::now();
        let tries = self.tries.max(1);
        let mut n = 1;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && n < tries => {
                    let delay = self.delay(n);
                    tracing::warn!("{e}; try {} of {tries} in {delay:.0?}", n + 1);
                    std::thread::sleep(delay);
                    n += 1;
                }
                Err(e) if e.is_transient() && tries > 1 => {
                    return Err(e.gave_up(n, start.elapsed().as_secs()))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::cell::Cell;

    type Result<T> = std::result::Result<T, Error>;

    fn quick(tries: u32) -> Retry {
        Retry {
            tries,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn status(status: u16) -> Error {
        Error::Status {
            url: "http://x/p".into(),
            status,
        }
    }

    #[test]
    fn what_is_transient() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).is_transient(), "{s}");
            assert!(transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 416] {
            assert!(!status(s).is_transient(), "{s}");
            assert!(!transient_status(s), "{s}");
        }
        assert!(Error::Network {
            url: "u".into(),
            message: "connection reset".into()
        }
        .is_transient());
        for e in [
            Error::Request {
                url: "u".into(),
                message: "bad uri".into(),
            },
            Error::TooLarge {
                url: "u".into(),
                limit: 1,
            },
            Error::HashMismatch {
                url: "u".into(),
                expected: "a".into(),
                actual: "b".into(),
            },
            Error::SizeMismatch {
                url: "u".into(),
                expected: 1,
                got: 2,
            },
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn retry_counts_its_tries() {
        // succeeds at the third try
        let n = Cell::new(0);
        let r = quick(5).run(|| {
            n.set(n.get() + 1);
            if n.get() < 3 {
                Err(status(503))
            } else {
                Ok(n.get())
            }
        });
        assert_eq!(r.unwrap(), 3);
        // spent: the error says how many
        let n = Cell::new(0);
        let e = quick(4)
            .run(|| -> Result<()> {
                n.set(n.get() + 1);
                Err(status(503))
            })
            .unwrap_err();
        assert_eq!(n.get(), 4);
        assert!(
            e.to_string()
                .starts_with("http://x/p: HTTP 503 (gave up after 4 tries in "),
            "{e}"
        );
        // final errors are not retried
        let n = Cell::new(0);
        let e = quick(4)
            .run(|| -> Result<()> {
                n.set(n.get() + 1);
                Err(status(404))
            })
            .unwrap_err();
        assert_eq!(n.get(), 1);
        assert_eq!(e.to_string(), "http://x/p: HTTP 404");
        // one try: no "gave up"
        let e = quick(1).run(|| -> Result<()> { Err(status(503)) });
        assert_eq!(e.unwrap_err().to_string(), "http://x/p: HTTP 503");
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let r = Retry::default();
        let got: Vec<u64> = (1..=7).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(r.delay(100), Duration::from_secs(16));
        assert_eq!(Retry::with_retries(4), r);
        assert_eq!(Retry::with_retries(0).tries, 1);
    }
}
