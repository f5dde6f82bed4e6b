//! Version ordering exactly as systemd-boot orders entry versions
//! (systemd's `strverscmp_improved`), re-implemented from its documented
//! rules: the update agent installs only versions that this order calls
//! strictly newer, so that what it installs is also what the boot loader
//! prefers.
//!
//! The rules: characters other than ASCII letters, digits and `~ - ^ .`
//! are separators and otherwise ignored. The strings are walked segment by
//! segment; at each step
//! 1. a `~` prefix (pre-release) makes its side older than anything else,
//!    including the end of the other string;
//! 2. otherwise the string that ended first is older;
//! 3. a `-` prefix (version/release separator) is older than no prefix;
//! 4. a `^` prefix (patch release) is older than no prefix (but, being
//!    checked after `-`, newer than a `-`);
//! 5. a `.` prefix (point release) is older than no prefix;
//! 6. a digit run beats a letter run (or no run); digit runs compare as
//!    numbers (leading zeros ignored); letter runs compare bytewise, a run
//!    that is a prefix of the other being older.

use std::cmp::Ordering;

fn valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Compares two versions as systemd-boot does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        // '~': the side that has it is older; both: skip and go on.
        let (ta, tb) = (at(a, i) == b'~', at(b, j) == b'~');
        if ta || tb {
            if ta != tb {
                return if ta {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
            }
            i += 1;
            j += 1;
        }
        // One side ended: the longer one is newer (after the '~' check, so
        // "1~rc" < "1").
        if i >= a.len() || j >= b.len() {
            return (i < a.len()).cmp(&(j < b.len()));
        }
        for sep in [b'-', b'^', b'.'] {
            let (sa, sb) = (at(a, i) == sep, at(b, j) == sep);
            if sa || sb {
                if sa != sb {
                    // the side carrying the separator is older
                    return if sa {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    };
                }
                i += 1;
                j += 1;
            }
        }
        let run = |s: &[u8], k: usize, f: fn(&u8) -> bool| {
            k + s[k.min(s.len())..].iter().take_while(|c| f(c)).count()
        };
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let (ea, eb) = (run(a, i, u8::is_ascii_digit), run(b, j, u8::is_ascii_digit));
            // a number is newer than no number (a letter run or nothing)
            match (ea > i).cmp(&(eb > j)) {
                Ordering::Equal => {}
                o => return o,
            }
            while i < ea && a[i] == b'0' {
                i += 1;
            }
            while j < eb && b[j] == b'0' {
                j += 1;
            }
            match (ea - i)
                .cmp(&(eb - j))
                .then_with(|| a[i..ea].cmp(&b[j..eb]))
            {
                Ordering::Equal => {}
                o => return o,
            }
            i = ea;
            j = eb;
        } else {
            let (ea, eb) = (
                run(a, i, u8::is_ascii_alphabetic),
                run(b, j, u8::is_ascii_alphabetic),
            );
            let common = (ea - i).min(eb - j);
            match a[i..i + common]
                .cmp(&b[j..j + common])
                .then_with(|| (ea - i).cmp(&(eb - j)))
            {
                Ordering::Equal => {}
                o => return o,
            }
            i = ea;
            j = eb;
        }
    }
}

/// Whether `candidate` is strictly newer than `running`.
pub fn is_newer(candidate: &str, running: &str) -> bool {
    compare(candidate, running) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal as E, Greater as G, Less as L};

    fn newer(older: &str, newer: &str) {
        assert_eq!(compare(older, newer), L, "{older} < {newer}");
        assert_eq!(compare(newer, older), G, "{newer} > {older}");
        assert_eq!(compare(older, older), E, "{older} == itself");
        assert_eq!(compare(newer, newer), E, "{newer} == itself");
    }

    /// systemd's test-string-util.c `test_strverscmp_improved`: every
    /// later element of this list is newer than every earlier one.
    #[test]
    fn systemd_ordered_list() {
        let versions = [
            "~1",
            "",
            "ab",
            "abb",
            "abc",
            "0001",
            "002",
            "12",
            "122",
            "122.9",
            "123~rc1",
            "123",
            "123-a",
            "123-a.1",
            "123-a1",
            "123-a1.1",
            "123-3",
            "123-3.1",
            "123^patch1",
            "123^1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124",
        ];
        for (k, a) in versions.iter().enumerate() {
            for b in &versions[k + 1..] {
                newer(a, b);
            }
        }
    }

    #[test]
    fn systemd_pairs() {
        let pairs = [
            ("123.45-67.88", "123.45-67.89"),
            ("123.45-67.89", "123.45-67.89a"),
            ("123.45-67.ab", "123.45-67.89"),
            ("123.45-67.9", "123.45-67.89"),
            ("123.45-67", "123.45-67.89"),
            ("123.45-66.89", "123.45-67.89"),
            ("123.45-9.99", "123.45-67.89"),
            ("123.42-99.99", "123.45-67.89"),
            ("123-99.99", "123.45-67.89"),
            // '~': pre-releases
            ("123~rc1-99.99", "123.45-67.89"),
            ("123~rc1-99.99", "123-45.67.89"),
            ("123~rc1-99.99", "123~rc2-67.89"),
            ("123~rc1-99.99", "123^aa2-67.89"),
            ("123~rc1-99.99", "123aa2-67.89"),
            // '-': version/release separator
            ("123-99.99", "123.45-67.89"),
            ("123-99.99", "123^aa2-67.89"),
            ("123-99.99", "123aa2-67.89"),
            // '^': patch releases
            ("123^45-67.89", "123.45-67.89"),
            ("123^aa1-99.99", "123^aa2-67.89"),
            ("123^aa2-67.89", "123aa2-67.89"),
            // '.': point releases
            ("123.aa2-67.89", "123aa2-67.89"),
            ("123.aa2-67.89", "123.ab2-67.89"),
        ];
        for (a, b) in pairs {
            newer(a, b);
        }
    }

    #[test]
    fn systemd_corner_cases() {
        let cases = [
            // invalid characters are separators
            ("123_aa2-67.89", "123aa+2-67.89", E),
            ("123.", "123", G),
            ("12_3", "123", L),
            ("12_3", "12", G),
            ("12_3", "12.3", G),
            ("123.0", "123", G),
            ("123_0", "123", G),
            ("123..0", "123.0", L),
            // empty strings and strings of ignored characters only
            ("", "", E),
            ("0_", "0", E),
            ("_0_", "0", E),
            ("_0", "0", E),
            ("0", "0___", E),
            ("", "_", E),
            ("_", "", E),
            ("_", "_", E),
            ("", "~", G),
            ("~", "", L),
            ("~", "~", E),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a:?} vs {b:?}");
        }
    }

    /// The RPM compatibility table of the same systemd test.
    #[test]
    fn systemd_rpm_compatibility() {
        let cases = [
            ("1.0", "1.0", E),
            ("1.0", "2.0", L),
            ("2.0", "1.0", G),
            ("2.0.1", "2.0.1", E),
            ("2.0", "2.0.1", L),
            ("2.0.1", "2.0", G),
            ("2.0.1a", "2.0.1a", E),
            ("2.0.1a", "2.0.1", G),
            ("2.0.1", "2.0.1a", L),
            ("5.5p1", "5.5p1", E),
            ("5.5p1", "5.5p2", L),
            ("5.5p2", "5.5p1", G),
            ("5.5p10", "5.5p10", E),
            ("5.5p1", "5.5p10", L),
            ("5.5p10", "5.5p1", G),
            ("10xyz", "10.1xyz", G),
            ("10.1xyz", "10xyz", L),
            ("xyz10", "xyz10", E),
            ("xyz10", "xyz10.1", L),
            ("xyz10.1", "xyz10", G),
            ("xyz.4", "xyz.4", E),
            ("xyz.4", "8", L),
            ("8", "xyz.4", G),
            ("xyz.4", "2", L),
            ("2", "xyz.4", G),
            ("5.5p2", "5.6p1", L),
            ("5.6p1", "5.5p2", G),
            ("5.6p1", "6.5p1", L),
            ("6.5p1", "5.6p1", G),
            ("6.0.rc1", "6.0", G),
            ("6.0", "6.0.rc1", L),
            ("10b2", "10a1", G),
            ("10a2", "10b2", L),
            ("1.0aa", "1.0aa", E),
            ("1.0a", "1.0aa", L),
            ("1.0aa", "1.0a", G),
            ("10.0001", "10.0001", E),
            ("10.0001", "10.1", E),
            ("10.1", "10.0001", E),
            ("10.0001", "10.0039", L),
            ("10.0039", "10.0001", G),
            ("4.999.9", "5.0", L),
            ("5.0", "4.999.9", G),
            ("20101121", "20101121", E),
            ("20101121", "20101122", L),
            ("20101122", "20101121", G),
            ("2_0", "2_0", E),
            ("2.0", "2_0", L),
            ("2_0", "2.0", G),
            // tilde
            ("1.0~rc1", "1.0~rc1", E),
            ("1.0~rc1", "1.0", L),
            ("1.0", "1.0~rc1", G),
            ("1.0~rc1", "1.0~rc2", L),
            ("1.0~rc2", "1.0~rc1", G),
            ("1.0~rc1~git123", "1.0~rc1~git123", E),
            ("1.0~rc1~git123", "1.0~rc1", L),
            ("1.0~rc1", "1.0~rc1~git123", G),
            // caret
            ("1.0^", "1.0^", E),
            ("1.0^", "1.0", G),
            ("1.0", "1.0^", L),
            ("1.0^git1", "1.0^git1", E),
            ("1.0^git1", "1.0", G),
            ("1.0", "1.0^git1", L),
            ("1.0^git1", "1.0^git2", L),
            ("1.0^git2", "1.0^git1", G),
            ("1.0^git1", "1.01", L),
            ("1.01", "1.0^git1", G),
            ("1.0^20160101", "1.0^20160101", E),
            ("1.0^20160101", "1.0.1", L),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn newer_is_strict() {
        assert!(is_newer("2", "1"));
        assert!(!is_newer("1", "1"));
        assert!(!is_newer("1.0", "1.0.0"));
        assert!(is_newer("1.10", "1.9"));
        assert!(!is_newer("2~rc1", "2"));
    }
}
