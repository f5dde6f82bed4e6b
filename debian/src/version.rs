//! Debian version numbers (`[epoch:]upstream_version[-debian_revision]`,
//! Debian Policy 5.6.12): parsing with validation, printing, and the ordering
//! dpkg uses to decide which of two versions is newer.
//!
//! Owns only the version syntax and its comparison; which version a resolver
//! picks belongs to [`crate::resolve`].
//!
//! Equality follows the ordering, as in dpkg: `1.0`, `1.00`, `0:1.0` and
//! `1.0-0` are all equal, so [`Version`]'s `Eq` and `Hash` agree with `Ord`
//! rather than with the spelling. `Display` prints the version as written,
//! except that an explicit `0:` epoch is not kept (it is the default).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// A parsed Debian version.
///
/// Build one with [`str::parse`]; the fields are public for reading. A value
/// built by hand is not validated, but compares and prints the same way.
#[derive(Debug, Clone, Default)]
pub struct Version {
    /// The epoch, `0` when absent.
    pub epoch: u32,
    /// Upstream version: everything between the epoch and the last hyphen.
    pub upstream: String,
    /// Debian revision after the last hyphen, empty when there is none.
    pub revision: String,
}

/// Why a string is not a valid Debian version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("empty version")]
    Empty,
    #[error("version {version:?}: epoch {epoch:?} is not a number")]
    BadEpoch { version: String, epoch: String },
    #[error("version {version:?}: upstream version is empty")]
    EmptyUpstream { version: String },
    #[error("version {version:?}: upstream version must start with a digit")]
    UpstreamStart { version: String },
    #[error("version {version:?}: character {ch:?} is not allowed in the upstream version")]
    UpstreamChar { version: String, ch: char },
    #[error("version {version:?}: revision after the last '-' is empty")]
    EmptyRevision { version: String },
    #[error("version {version:?}: character {ch:?} is not allowed in the revision")]
    RevisionChar { version: String, ch: char },
}

impl Version {
    /// A version from its parts, without validation (for tests and callers
    /// that already hold validated parts).
    pub fn new(epoch: u32, upstream: impl Into<String>, revision: impl Into<String>) -> Self {
        Version {
            epoch,
            upstream: upstream.into(),
            revision: revision.into(),
        }
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let version = s.trim();
        if version.is_empty() {
            return Err(VersionError::Empty);
        }
        let err_version = || version.to_string();
        let (epoch, rest) = match version.split_once(':') {
            Some((e, rest)) => {
                if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(VersionError::BadEpoch {
                        version: err_version(),
                        epoch: e.to_string(),
                    });
                }
                let epoch = e.parse::<u32>().map_err(|_| VersionError::BadEpoch {
                    version: err_version(),
                    epoch: e.to_string(),
                })?;
                (epoch, rest)
            }
            None => (0, version),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => {
                if r.is_empty() {
                    return Err(VersionError::EmptyRevision {
                        version: err_version(),
                    });
                }
                (u, r)
            }
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(VersionError::EmptyUpstream {
                version: err_version(),
            });
        }
        if !upstream.as_bytes()[0].is_ascii_digit() {
            return Err(VersionError::UpstreamStart {
                version: err_version(),
            });
        }
        // Hyphens in the upstream part are fine: only the last one splits,
        // and only if there is a revision at all (checked by rsplit above).
        if let Some(ch) = upstream
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '~')))
        {
            return Err(VersionError::UpstreamChar {
                version: err_version(),
                ch,
            });
        }
        if let Some(ch) = revision
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~')))
        {
            return Err(VersionError::RevisionChar {
                version: err_version(),
                ch,
            });
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if !self.revision.is_empty() {
            write!(f, "-{}", self.revision)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.epoch.hash(state);
        hash_part(&self.upstream, state);
        hash_part(&self.revision, state);
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// dpkg's weight of a byte in a non-digit run: `~` sorts before the end of
/// the run (and before digits), letters before everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// Splits a version part into alternating runs: a non-digit run, then a digit
/// run (with leading zeros removed), repeated. Both may be empty.
struct Pieces<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pieces<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let nd = self
            .rest
            .iter()
            .position(u8::is_ascii_digit)
            .unwrap_or(self.rest.len());
        let (text, rest) = self.rest.split_at(nd);
        let d = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, rest) = rest.split_at(d);
        self.rest = rest;
        let zeros = digits.iter().take_while(|&&b| b == b'0').count();
        Some((text, &digits[zeros..]))
    }
}

fn pieces(s: &str) -> Pieces<'_> {
    Pieces { rest: s.as_bytes() }
}

fn compare_text(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let o = order(a.get(i).copied()).cmp(&order(b.get(i).copied()));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Numeric comparison of digit runs without leading zeros, of any length.
fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// dpkg's `verrevcmp`: alternate non-digit runs (compared by [`order`]) and
/// digit runs (compared numerically); a missing run is empty / zero.
fn compare_part(a: &str, b: &str) -> Ordering {
    let mut pa = pieces(a);
    let mut pb = pieces(b);
    loop {
        let (x, y) = match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (x, y) => (x.unwrap_or((b"", b"")), y.unwrap_or((b"", b""))),
        };
        let o = compare_text(x.0, y.0).then_with(|| compare_digits(x.1, y.1));
        if o != Ordering::Equal {
            return o;
        }
    }
}

/// Hashes the canonical form of a part: its pieces with trailing
/// (empty, zero) pieces dropped, which is exactly what [`compare_part`] treats
/// as equal.
fn hash_part<H: Hasher>(s: &str, state: &mut H) {
    let all: Vec<_> = pieces(s).collect();
    let keep = all
        .iter()
        .rposition(|(t, d)| !t.is_empty() || !d.is_empty())
        .map_or(0, |i| i + 1);
    keep.hash(state);
    for (t, d) in &all[..keep] {
        t.hash(state);
        d.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn v(s: &str) -> Version {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn cmp(a: &str, b: &str) -> Ordering {
        v(a).cmp(&v(b))
    }

    fn hash(v: &Version) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn parses_parts() {
        assert_eq!(
            (
                v("1:2.30-1+deb12u1").epoch,
                v("1:2.30-1+deb12u1").upstream.as_str(),
                v("1:2.30-1+deb12u1").revision.as_str()
            ),
            (1, "2.30", "1+deb12u1")
        );
        let x = v("2.0.12-1-2");
        assert_eq!(
            (x.epoch, x.upstream.as_str(), x.revision.as_str()),
            (0, "2.0.12-1", "2")
        );
        let x = v("7.4.052");
        assert_eq!((x.upstream.as_str(), x.revision.as_str()), ("7.4.052", ""));
        let x = v("10:1.0~rc1+dfsg");
        assert_eq!((x.epoch, x.upstream.as_str()), (10, "1.0~rc1+dfsg"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "1.0",
            "1:0.1",
            "1.0-1",
            "2.30-1+deb12u1",
            "1.2.3~bpo12+1",
            "2:1.2-3-4",
            "252.39-1~deb12u2",
            "1.0-0",
            "1.00",
        ] {
            assert_eq!(v(s).to_string(), s);
        }
        // An explicit zero epoch is the default and is not printed.
        assert_eq!(v("0:1.0").to_string(), "1.0");
    }

    #[test]
    fn rejects_invalid_versions() {
        assert_eq!("".parse::<Version>(), Err(VersionError::Empty));
        assert!(matches!(
            "a:1.0".parse::<Version>(),
            Err(VersionError::BadEpoch { .. })
        ));
        assert!(matches!(
            ":1.0".parse::<Version>(),
            Err(VersionError::BadEpoch { .. })
        ));
        assert!(matches!(
            "99999999999:1.0".parse::<Version>(),
            Err(VersionError::BadEpoch { .. })
        ));
        assert!(matches!(
            "1:".parse::<Version>(),
            Err(VersionError::EmptyUpstream { .. })
        ));
        assert!(matches!(
            "-1".parse::<Version>(),
            Err(VersionError::EmptyUpstream { .. })
        ));
        assert!(matches!(
            "1.0-".parse::<Version>(),
            Err(VersionError::EmptyRevision { .. })
        ));
        assert!(matches!(
            "abc".parse::<Version>(),
            Err(VersionError::UpstreamStart { .. })
        ));
        assert_eq!(
            "1.0_2".parse::<Version>(),
            Err(VersionError::UpstreamChar {
                version: "1.0_2".into(),
                ch: '_'
            })
        );
        assert!(matches!(
            "1:1.0:2".parse::<Version>(),
            Err(VersionError::UpstreamChar { ch: ':', .. })
        ));
        assert!(matches!(
            "1.0 beta".parse::<Version>(),
            Err(VersionError::UpstreamChar { ch: ' ', .. })
        ));
        assert!(matches!(
            "1.0-1_2".parse::<Version>(),
            Err(VersionError::RevisionChar { ch: '_', .. })
        ));
        let e = "1.0-".parse::<Version>().unwrap_err().to_string();
        assert!(e.contains("\"1.0-\""), "{e}");
    }

    #[test]
    fn policy_and_dpkg_ordering() {
        use Ordering::*;
        let cases = [
            ("1.0~rc1", "1.0", Less),
            ("1:0.1", "2.0", Greater),
            ("1.0-1", "1.0-1+b1", Less),
            ("2.30-1+deb12u1", "2.30-1", Greater),
            ("1.2.3~bpo12+1", "1.2.3", Less),
            ("252.39-1~deb12u2", "252.38-1~deb12u1", Greater),
            ("1.0", "1.0-0", Equal),
            ("1.0", "1.00", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.0", "1.0.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less), // letters before non-letters
            ("1.0+", "1.0.", Less), // '+' (43) before '.' (46)
            ("1.0~", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~a", "1.0~", Greater),
            ("1.10", "1.9", Greater), // numeric, not lexical
            ("1.010", "1.9", Greater),
            ("2.0-10", "2.0-9", Greater),
            ("1:1.0", "0:99", Greater),
            ("1.0-1", "1.0-1~", Greater),
            (
                "20250520000000000000000001",
                "20250520000000000000000000",
                Greater,
            ), // no overflow
            ("7.6p2-4", "7.6-0", Greater),
            ("1.0.4-2", "1.0pre7-2", Greater), // dpkg test suite
            ("0.9~rc1-1", "0.9~beta1-1", Greater),
            ("1:1.2-3", "1:1.2-3", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn policy_tilde_examples() {
        // Policy 5.6.12: "~~" < "~~a" < "~" < "" < "a".
        assert_eq!(compare_part("~~", "~~a"), Ordering::Less);
        assert_eq!(compare_part("~~a", "~"), Ordering::Less);
        assert_eq!(compare_part("~", ""), Ordering::Less);
        assert_eq!(compare_part("", "a"), Ordering::Less);
        assert_eq!(compare_part("", "0"), Ordering::Equal);
        assert_eq!(compare_part("a", "a0"), Ordering::Equal);
    }

    #[test]
    fn sorting_a_list() {
        let mut list: Vec<Version> = [
            "1.0", "1.0~rc1", "1:0.1", "0.9", "1.0-1", "1.0-1+b1", "1.0~~",
        ]
        .iter()
        .map(|s| v(s))
        .collect();
        list.sort();
        let got: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["0.9", "1.0~~", "1.0~rc1", "1.0", "1.0-1", "1.0-1+b1", "1:0.1"]
        );
    }

    #[test]
    fn eq_and_hash_follow_ordering() {
        let groups: [&[&str]; 3] = [
            &["1.0", "1.0-0", "0:1.00", "1.0-00"],
            &["1.0a", "1.0a0", "1.00a-0"],
            &["2:3-4", "2:03-04"],
        ];
        for g in groups {
            for a in g {
                for b in g {
                    assert_eq!(v(a), v(b), "{a} vs {b}");
                    assert_eq!(hash(&v(a)), hash(&v(b)), "{a} vs {b}");
                }
            }
        }
        assert_ne!(v("2:3-4"), v("2:3.-4"));
        assert_ne!(v("1.0"), v("1.0.0"));
        assert_ne!(v("1.0"), v("1.0-1"));
        assert_ne!(hash(&v("1.0")), hash(&v("1.0-1")));
    }

    #[test]
    fn deserializes_from_a_string() {
        use serde::de::{value::Error, IntoDeserializer};
        use serde::Deserialize;
        let x =
            Version::deserialize(IntoDeserializer::<Error>::into_deserializer("1:2.0-3")).unwrap();
        assert_eq!(
            (x.epoch, x.upstream.as_str(), x.revision.as_str()),
            (1, "2.0", "3")
        );
        let e = Version::deserialize(IntoDeserializer::<Error>::into_deserializer("x1"));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("must start with a digit"));
    }
}
