//! Globs of `Conflicts` and `Replaces`: Go's `path.Match` syntax, which
//! fleet matched unit names with, parsed once and matched without
//! compiling a regular expression; and an index that finds, for a unit
//! name, the globs among many thousands that match it without trying
//! them all.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use thiserror::Error;

/// A malformed glob (fleet silently matched nothing with one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GlobError {
    #[error("unclosed character class (\"[\" without \"]\")")]
    UnclosedClass,
    #[error("empty character class \"[]\"")]
    EmptyClass,
    #[error("{0:?} must be escaped with \\ inside a character class")]
    Unescaped(char),
    #[error("trailing backslash")]
    TrailingBackslash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character, not `/`.
    One,
    /// `*`: any run of characters without `/`.
    Star,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::One => c != '/',
            Tok::Star => true,
            Tok::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A parsed glob: `*` (any run of characters but `/`), `?` (one such
/// character), `[a-z0-9]` classes (negated with `^` as in Go, or with `!`
/// as in shells: Go took `!` literally, and no unit name holds one), `\`
/// escaping the next character; anything else matches itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    toks: Vec<Tok>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::One),
                '\\' => toks.push(Tok::Lit(chars.next().ok_or(GlobError::TrailingBackslash)?)),
                '[' => {
                    let negated = matches!(chars.peek(), Some('^') | Some('!'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let class_char =
                        |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| match chars.next() {
                            None => Err(GlobError::UnclosedClass),
                            Some('\\') => chars.next().ok_or(GlobError::TrailingBackslash),
                            Some('-') => Err(GlobError::Unescaped('-')),
                            Some(c) => Ok(c),
                        };
                    loop {
                        match chars.peek() {
                            None => return Err(GlobError::UnclosedClass),
                            Some(']') if ranges.is_empty() => return Err(GlobError::EmptyClass),
                            Some(']') => {
                                chars.next();
                                break;
                            }
                            Some(_) => {}
                        }
                        let lo = class_char(&mut chars)?;
                        let hi = if chars.peek() == Some(&'-') {
                            chars.next();
                            if chars.peek() == Some(&']') {
                                return Err(GlobError::Unescaped('-'));
                            }
                            class_char(&mut chars)?
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    toks.push(Tok::Class { negated, ranges });
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            toks,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` matches the whole glob.
    pub fn is_match(&self, name: &str) -> bool {
        let toks = &self.toks;
        if self.is_literal() {
            let mut chars = name.chars();
            return toks
                .iter()
                .all(|t| chars.next().is_some_and(|c| t.matches(c)))
                && chars.next().is_none();
        }
        let s: Vec<char> = name.chars().collect();
        let (mut t, mut i) = (0usize, 0usize);
        // The token after the last star, and where in `s` it was tried.
        let mut star: Option<(usize, usize)> = None;
        loop {
            if t < toks.len() {
                if toks[t] == Tok::Star {
                    star = Some((t + 1, i));
                    t += 1;
                    continue;
                }
                if i < s.len() && toks[t].matches(s[i]) {
                    t += 1;
                    i += 1;
                    continue;
                }
            } else if i == s.len() {
                return true;
            }
            // Let the last star take one more character and try again;
            // a star never takes a '/', nor can an earlier one.
            match star {
                Some((st, si)) if si < s.len() && s[si] != '/' => {
                    star = Some((st, si + 1));
                    t = st;
                    i = si + 1;
                }
                _ => return false,
            }
        }
    }

    /// The literal text every match starts with.
    fn literal_prefix(&self) -> String {
        self.toks
            .iter()
            .map_while(|t| match t {
                Tok::Lit(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// The literal text every match ends with.
    fn literal_suffix(&self) -> String {
        let mut v: Vec<char> = self
            .toks
            .iter()
            .rev()
            .map_while(|t| match t {
                Tok::Lit(c) => Some(*c),
                _ => None,
            })
            .collect();
        v.reverse();
        v.into_iter().collect()
    }

    fn is_literal(&self) -> bool {
        self.toks.iter().all(|t| matches!(t, Tok::Lit(_)))
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Many globs, indexed by their literal ends: a name is tried only
/// against the globs that are that exact name, or whose literal prefix
/// starts it and whose literal suffix ends it (`web@*.service` is filed
/// under `web@` and `.service`); globs without any literal end (`*`,
/// `*web*`) are tried against every name.
#[derive(Debug, Default)]
pub struct GlobIndex {
    globs: Vec<Glob>,
    exact: HashMap<String, Vec<u32>>,
    /// Key: prefix, NUL, suffix.
    by_ends: HashMap<String, Vec<u32>>,
    /// The (prefix, suffix) byte lengths filed under `by_ends`.
    end_lens: BTreeSet<(usize, usize)>,
    always: Vec<u32>,
}

impl GlobIndex {
    pub fn new() -> GlobIndex {
        GlobIndex::default()
    }

    /// Adds a glob; returns its number (the order of addition).
    pub fn push(&mut self, glob: Glob) -> u32 {
        let id = self.globs.len() as u32;
        if glob.is_literal() {
            self.exact
                .entry(glob.as_str().to_string())
                .or_default()
                .push(id);
        } else {
            let (p, s) = (glob.literal_prefix(), glob.literal_suffix());
            if p.is_empty() && s.is_empty() {
                self.always.push(id);
            } else {
                self.end_lens.insert((p.len(), s.len()));
                self.by_ends
                    .entry(format!("{p}\0{s}"))
                    .or_default()
                    .push(id);
            }
        }
        self.globs.push(glob);
        id
    }

    pub fn len(&self) -> usize {
        self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    pub fn get(&self, id: u32) -> &Glob {
        &self.globs[id as usize]
    }

    /// The numbers of the globs `name` matches, ascending.
    pub fn matches(&self, name: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(ids) = self.exact.get(name) {
            out.extend_from_slice(ids);
        }
        let mut key = String::new();
        for &(pl, sl) in &self.end_lens {
            // The literal ends of a glob with a wildcard never overlap.
            if pl + sl > name.len() {
                continue;
            }
            let (Some(p), Some(s)) = (name.get(..pl), name.get(name.len() - sl..)) else {
                continue;
            };
            key.clear();
            key.push_str(p);
            key.push('\0');
            key.push_str(s);
            if let Some(ids) = self.by_ends.get(&key) {
                out.extend(
                    ids.iter()
                        .filter(|&&id| self.globs[id as usize].is_match(name)),
                );
            }
        }
        out.extend(
            self.always
                .iter()
                .filter(|&&id| self.globs[id as usize].is_match(name)),
        );
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_as_path_match() {
        let table: &[(&str, &str, bool)] = &[
            ("web@*.service", "web@1.service", true),
            ("web@*.service", "web@.service", true),
            ("web@*.service", "web.service", false),
            ("web?.service", "web1.service", true),
            ("web?.service", "web12.service", false),
            ("web[0-9].service", "web5.service", true),
            ("web[0-9].service", "webx.service", false),
            ("web[^0-9].service", "web5.service", false),
            ("web[^0-9].service", "webx.service", true),
            ("web[!0-9].service", "webx.service", true),
            ("web[a-c1].service", "web1.service", true),
            ("web\\*.service", "web*.service", true),
            ("web\\*.service", "web1.service", false),
            ("[\\]].service", "].service", true),
            ("web[[]", "web[", true),
            ("*", "anything.service", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("monitor*", "monitor.service", true),
            ("monitor*", "monitorx", true),
            ("monitor*", "amonitor", false),
            ("*web*", "a-web-b.service", true),
            ("*web*", "a-wb-b.service", false),
            ("*.service", "a.socket", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*b*c", "acb", false),
            ("a**c", "abc", true),
            ("*/x", "a/x", true),
            ("*x", "a/x", false),
            ("a?c", "a/c", false),
            ("a.service", "a.service", true),
            ("a.service", "b.service", false),
            // Braces are literal, as in Go.
            ("web@{1,2}.service", "web@1.service", false),
            ("web@{1,2}.service", "web@{1,2}.service", true),
            ("é*", "été", true),
        ];
        for &(p, name, want) in table {
            assert_eq!(Glob::new(p).unwrap().is_match(name), want, "{p} {name}");
        }
    }

    #[test]
    fn malformed() {
        for (p, want) in [
            ("web[.service", GlobError::UnclosedClass),
            ("web[0-9", GlobError::UnclosedClass),
            ("web[]", GlobError::EmptyClass),
            ("web[^]", GlobError::EmptyClass),
            ("web\\", GlobError::TrailingBackslash),
            ("web[a-]", GlobError::Unescaped('-')),
            ("web[-a]", GlobError::Unescaped('-')),
        ] {
            assert_eq!(Glob::new(p), Err(want.clone()), "{p}");
        }
        assert_eq!(
            GlobError::UnclosedClass.to_string(),
            "unclosed character class (\"[\" without \"]\")"
        );
    }

    #[test]
    fn index_finds_what_trying_all_finds() {
        let patterns = [
            "web@*.service",
            "web@1.service",
            "*",
            "*.socket",
            "*-sidekick.service",
            "u1*.service",
            "u1?.service",
            "u[0-9]*",
            "*web*",
            "cache-3@*.service",
            "exact.service",
            "exact.service",
            "a*a",
            "u1*5.service",
        ];
        let mut ix = GlobIndex::new();
        let globs: Vec<Glob> = patterns.iter().map(|p| Glob::new(p).unwrap()).collect();
        for g in &globs {
            ix.push(g.clone());
        }
        assert_eq!(ix.len(), patterns.len());
        let names = [
            "web@1.service",
            "web@22.service",
            "app-1-sidekick.service",
            "u1.service",
            "u12.service",
            "u123.service",
            "cache-3@0.service",
            "cache-30@0.service",
            "exact.service",
            "x.socket",
            "",
            "w",
            "a",
            "aa",
            "u15.service",
        ];
        for name in names {
            let want: Vec<u32> = globs
                .iter()
                .enumerate()
                .filter(|(_, g)| g.is_match(name))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(ix.matches(name), want, "{name}");
        }
    }
}
