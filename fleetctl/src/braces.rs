//! Brace expansion of unit arguments, as a shell would have done it had
//! the argument not been quoted: `'web@{1..3}.service'` is
//! `web@1.service web@2.service web@3.service` and `'{a,b}.service'` is
//! `a.service b.service` (numeric ranges with an optional step and zero
//! padding, letter ranges, lists, nested). A brace that makes no list or
//! range stays as it is.

use anyhow::{bail, Result};

/// The most names one argument may expand to.
pub const MAX_EXPANSION: usize = 10_000;

/// Expands every brace in `arg`, in order.
pub fn expand(arg: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    expand_into(arg, &mut out, arg)?;
    Ok(out)
}

fn expand_into(s: &str, out: &mut Vec<String>, arg: &str) -> Result<()> {
    let Some((open, close, alts)) = first_brace(s)? else {
        if out.len() >= MAX_EXPANSION {
            bail!("{arg:?} expands to more than {MAX_EXPANSION} names");
        }
        out.push(s.to_string());
        return Ok(());
    };
    let (pre, post) = (&s[..open], &s[close + 1..]);
    for alt in alts {
        expand_into(&format!("{pre}{alt}{post}"), out, arg)?;
    }
    Ok(())
}

/// The first `{...}` of `s` that is a list or a range: its byte
/// positions and its alternatives.
fn first_brace(s: &str) -> Result<Option<(usize, usize, Vec<String>)>> {
    let b = s.as_bytes();
    for open in (0..b.len()).filter(|&i| b[i] == b'{') {
        let mut depth = 0usize;
        let mut commas = Vec::new();
        let mut close = None;
        for (i, &c) in b.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                b',' if depth == 1 => commas.push(i),
                _ => {}
            }
        }
        let Some(close) = close else {
            continue;
        };
        let inner = &s[open + 1..close];
        if !commas.is_empty() {
            let mut alts = Vec::new();
            let mut from = open + 1;
            for c in commas {
                alts.push(s[from..c].to_string());
                from = c + 1;
            }
            alts.push(s[from..close].to_string());
            return Ok(Some((open, close, alts)));
        }
        if let Some(alts) = range(inner)? {
            return Ok(Some((open, close, alts)));
        }
    }
    Ok(None)
}

/// `a..b` or `a..b..step`, of integers or of single letters.
fn range(inner: &str) -> Result<Option<Vec<String>>> {
    let parts: Vec<&str> = inner.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return Ok(None);
    }
    let step: i64 = match parts.get(2) {
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n != 0 => n.abs(),
            _ => return Ok(None),
        },
        None => 1,
    };
    let count = |a: i64, b: i64| -> Result<usize> {
        let n = (a - b).unsigned_abs() / step as u64 + 1;
        if n > MAX_EXPANSION as u64 {
            bail!("{{{inner}}} expands to more than {MAX_EXPANSION} names");
        }
        Ok(n as usize)
    };
    let (x, y) = (parts[0], parts[1]);
    if let (Ok(a), Ok(b)) = (x.parse::<i64>(), y.parse::<i64>()) {
        let n = count(a, b)?;
        let padded = |t: &str| {
            let d = t.trim_start_matches('-');
            d.len() > 1 && d.starts_with('0')
        };
        let width = if padded(x) || padded(y) {
            x.len().max(y.len())
        } else {
            0
        };
        let dir = if b >= a { 1 } else { -1 };
        let v = (0..n as i64)
            .map(|i| {
                let k = a + dir * i * step;
                if k < 0 {
                    format!("-{:0w$}", -k, w = width.saturating_sub(1))
                } else {
                    format!("{k:0width$}")
                }
            })
            .collect();
        return Ok(Some(v));
    }
    let letter = |t: &str| {
        let mut c = t.chars();
        match (c.next(), c.next()) {
            (Some(l), None) if l.is_ascii_alphabetic() => Some(l as i64),
            _ => None,
        }
    };
    if let (Some(a), Some(b)) = (letter(x), letter(y)) {
        let n = count(a, b)?;
        let dir = if b >= a { 1 } else { -1 };
        let v = (0..n as i64)
            .map(|i| char::from((a + dir * i * step) as u8).to_string())
            .collect();
        return Ok(Some(v));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(s: &str) -> Vec<String> {
        expand(s).unwrap()
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(
            x("web@{1..3}.service"),
            ["web@1.service", "web@2.service", "web@3.service"]
        );
        assert_eq!(x("{a,b}.service"), ["a.service", "b.service"]);
        assert_eq!(x("{3..1}"), ["3", "2", "1"]);
        assert_eq!(x("{01..03}"), ["01", "02", "03"]);
        assert_eq!(x("{1..7..3}"), ["1", "4", "7"]);
        assert_eq!(x("{-1..1}"), ["-1", "0", "1"]);
        assert_eq!(x("{a..c}"), ["a", "b", "c"]);
        assert_eq!(x("{a,b}{1..2}"), ["a1", "a2", "b1", "b2"]);
        assert_eq!(
            x("{a,b{1,2}}.service"),
            ["a.service", "b1.service", "b2.service"]
        );
        assert_eq!(x("{,x}y"), ["y", "xy"]);
    }

    #[test]
    fn literal_braces_stay() {
        for s in [
            "a.service",
            "{a}.service",
            "{1..}",
            "{a..bc}",
            "{",
            "}{",
            "{1..3..0}",
        ] {
            assert_eq!(x(s), [s], "{s}");
        }
        assert_eq!(x("{x}{1,2}"), ["{x}1", "{x}2"]);
    }

    #[test]
    fn bounded() {
        let e = expand("{1..100000}").unwrap_err().to_string();
        assert!(e.contains("more than 10000"), "{e}");
        let e = expand("{1..100}{1..100}{1..100}").unwrap_err().to_string();
        assert!(e.contains("more than 10000"), "{e}");
    }
}
