//! Relationship fields (Debian Policy 7.1): `Depends`, `Pre-Depends`,
//! `Recommends`, `Conflicts`, `Breaks` and `Provides`, parsed into typed
//! relations that can be checked against a [`Version`].
//!
//! Owns the field syntax (comma-separated groups, `|` alternatives, version
//! constraints, `:any` qualifiers, `[arch]` restrictions; build-profile
//! `<...>` restrictions are accepted and ignored) and the meaning of one
//! version constraint. Which package satisfies a relation is decided by
//! [`crate::resolve`]. Errors describe the text of the field; the caller adds
//! the package, field name and line.

use std::cmp::Ordering;
use std::fmt;

use crate::version::{Version, VersionError};

/// A version comparison operator in a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionOp {
    /// `<<`: strictly earlier.
    Lt,
    /// `<=` (also the obsolete `<`): earlier or equal.
    Le,
    /// `=`: exactly equal.
    Eq,
    /// `>=` (also the obsolete `>`): later or equal.
    Ge,
    /// `>>`: strictly later.
    Gt,
}

impl VersionOp {
    /// Parses an operator as written between the parentheses. The obsolete
    /// forms `<` and `>` mean `<=` and `>=`, as in dpkg.
    pub fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "<<" => VersionOp::Lt,
            "<=" | "<" => VersionOp::Le,
            "=" => VersionOp::Eq,
            ">=" | ">" => VersionOp::Ge,
            ">>" => VersionOp::Gt,
            _ => return None,
        })
    }

    /// The canonical spelling (`<<`, `<=`, `=`, `>=`, `>>`).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionOp::Lt => "<<",
            VersionOp::Le => "<=",
            VersionOp::Eq => "=",
            VersionOp::Ge => ">=",
            VersionOp::Gt => ">>",
        }
    }

    /// Whether `candidate OP wanted` holds, given `candidate.cmp(wanted)`.
    pub fn accepts(self, ordering: Ordering) -> bool {
        match self {
            VersionOp::Lt => ordering == Ordering::Less,
            VersionOp::Le => ordering != Ordering::Greater,
            VersionOp::Eq => ordering == Ordering::Equal,
            VersionOp::Ge => ordering != Ordering::Less,
            VersionOp::Gt => ordering == Ordering::Greater,
        }
    }
}

impl fmt::Display for VersionOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One relation: a package name with an optional version constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    pub name: String,
    /// The multi-arch qualifier after `:` (`any`, `native`, or an
    /// architecture), if any.
    pub arch_qualifier: Option<String>,
    pub constraint: Option<(VersionOp, Version)>,
    /// Architecture restriction tokens as written, e.g. `["amd64", "!i386"]`.
    pub arch_restriction: Vec<String>,
}

/// Alternatives separated by `|`: any one of them satisfies the group.
pub type AltGroup = Vec<Relation>;

/// Why a relationship field could not be parsed. `relation` is the text of
/// the offending relation as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error("empty relation in {field:?}")]
    Empty { field: String },
    #[error("invalid package name {name:?} in {relation:?}")]
    BadName { name: String, relation: String },
    #[error("invalid architecture qualifier {qualifier:?} in {relation:?}")]
    BadQualifier { qualifier: String, relation: String },
    #[error("unknown version operator {op:?} in {relation:?}")]
    BadOperator { op: String, relation: String },
    #[error("invalid version in {relation:?}: {source}")]
    BadVersion {
        relation: String,
        #[source]
        source: VersionError,
    },
    #[error("missing closing {close:?} in {relation:?}")]
    Unclosed { close: char, relation: String },
    #[error("unexpected {text:?} in {relation:?}")]
    Unexpected { text: String, relation: String },
    #[error("Provides allows only \"=\" versions, found {relation:?}")]
    ProvidesOperator { relation: String },
    #[error("alternatives (\"|\") are not allowed here: {group:?}")]
    Alternatives { group: String },
}

impl Relation {
    /// A relation on `name` with no constraint.
    pub fn new(name: impl Into<String>) -> Self {
        Relation {
            name: name.into(),
            arch_qualifier: None,
            constraint: None,
            arch_restriction: Vec::new(),
        }
    }

    /// Whether a package of this relation's name at `version` satisfies the
    /// version constraint (always true when there is none).
    pub fn satisfied_by(&self, version: &Version) -> bool {
        match &self.constraint {
            None => true,
            Some((op, wanted)) => op.accepts(version.cmp(wanted)),
        }
    }

    /// Whether the relation applies on `arch` according to its `[...]`
    /// restriction (always true when there is none).
    pub fn applies_to_arch(&self, arch: &str) -> bool {
        if self.arch_restriction.is_empty() {
            return true;
        }
        let mut any_positive = false;
        for token in &self.arch_restriction {
            match token.strip_prefix('!') {
                Some(neg) if neg == arch => return false,
                Some(_) => {}
                None => {
                    any_positive = true;
                    if token == arch {
                        return true;
                    }
                }
            }
        }
        !any_positive
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(q) = &self.arch_qualifier {
            write!(f, ":{q}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        if !self.arch_restriction.is_empty() {
            write!(f, " [{}]", self.arch_restriction.join(" "))?;
        }
        Ok(())
    }
}

/// Writes a group as `a | b (>= 1)`.
pub fn display_group(group: &[Relation]) -> String {
    group
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Whether `name` is a valid package name (Policy 5.6.1): lowercase letters,
/// digits, `+`, `-` and `.`, starting with a letter or digit. Like dpkg, a
/// one-character name is accepted although Policy asks for two.
pub fn valid_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        })
}

/// Parses a `Depends`-style field into groups of alternatives. Whitespace and
/// newlines may appear anywhere between tokens; a trailing comma and an
/// all-blank field are accepted.
pub fn parse_relations(field: &str) -> Result<Vec<AltGroup>, RelationError> {
    let empty = || RelationError::Empty {
        field: field.trim().to_string(),
    };
    // Sized exactly: an index holds hundreds of thousands of these.
    let groups = field.bytes().filter(|&b| b == b',').count() + 1;
    let mut out = Vec::with_capacity(groups);
    for (i, part) in field.split(',').enumerate() {
        if part.trim().is_empty() {
            // "" (empty field) and "a, b," are fine; "a,,b" and ", a" are not.
            if i + 1 == groups && (i > 0 || out.is_empty()) {
                continue;
            }
            return Err(empty());
        }
        let alternatives = part.bytes().filter(|&b| b == b'|').count() + 1;
        let mut group = Vec::with_capacity(alternatives);
        for alt in part.split('|') {
            if alt.trim().is_empty() {
                return Err(empty());
            }
            group.push(parse_relation(alt)?);
        }
        out.push(group);
    }
    Ok(out)
}

/// Parses a `Provides` field: a list of names, each optionally with an exact
/// `(= version)`. No alternatives, no other operators.
pub fn parse_provides(field: &str) -> Result<Vec<(String, Option<Version>)>, RelationError> {
    parse_relations(field)?
        .into_iter()
        .map(|group| {
            if group.len() != 1 {
                return Err(RelationError::Alternatives {
                    group: display_group(&group),
                });
            }
            let rel = group.into_iter().next().expect("one relation");
            match rel.constraint {
                None => Ok((rel.name, None)),
                Some((VersionOp::Eq, v)) => Ok((rel.name, Some(v))),
                Some(_) => Err(RelationError::ProvidesOperator {
                    relation: rel.to_string(),
                }),
            }
        })
        .collect()
}

/// Parses a field whose groups may not have alternatives (`Conflicts`,
/// `Breaks`); returns one relation per group, as groups of one.
pub fn parse_single_relations(field: &str) -> Result<Vec<AltGroup>, RelationError> {
    let groups = parse_relations(field)?;
    if let Some(g) = groups.iter().find(|g| g.len() != 1) {
        return Err(RelationError::Alternatives {
            group: display_group(g),
        });
    }
    Ok(groups)
}

/// Parses one relation: `name[:qual] [(op version)] [[arch ...]] [<profile ...>]*`.
fn parse_relation(text: &str) -> Result<Relation, RelationError> {
    let relation = || normalize_ws(text);
    let s = text.trim();
    let name_end = s
        .find(|c: char| c.is_whitespace() || matches!(c, '(' | '[' | '<' | ':'))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if !valid_package_name(name) {
        return Err(RelationError::BadName {
            name: name.to_string(),
            relation: relation(),
        });
    }
    let mut rest = &s[name_end..];

    let mut arch_qualifier = None;
    if let Some(q) = rest.strip_prefix(':') {
        let end = q
            .find(|c: char| c.is_whitespace() || matches!(c, '(' | '[' | '<'))
            .unwrap_or(q.len());
        let qual = &q[..end];
        if qual.is_empty()
            || !qual
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(RelationError::BadQualifier {
                qualifier: qual.to_string(),
                relation: relation(),
            });
        }
        arch_qualifier = Some(qual.to_string());
        rest = &q[end..];
    }

    rest = rest.trim_start();
    let mut constraint = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let Some(close) = inner.find(')') else {
            return Err(RelationError::Unclosed {
                close: ')',
                relation: relation(),
            });
        };
        let body = inner[..close].trim();
        let op_end = body
            .find(|c: char| !matches!(c, '<' | '>' | '='))
            .unwrap_or(body.len());
        let op_text = &body[..op_end];
        let Some(op) = VersionOp::parse(op_text) else {
            return Err(RelationError::BadOperator {
                op: op_text.to_string(),
                relation: relation(),
            });
        };
        let version = body[op_end..].trim().parse::<Version>().map_err(|source| {
            RelationError::BadVersion {
                relation: relation(),
                source,
            }
        })?;
        constraint = Some((op, version));
        rest = inner[close + 1..].trim_start();
    }

    let mut arch_restriction = Vec::new();
    if let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err(RelationError::Unclosed {
                close: ']',
                relation: relation(),
            });
        };
        arch_restriction = inner[..close]
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if arch_restriction.is_empty() {
            return Err(RelationError::Unexpected {
                text: "[]".into(),
                relation: relation(),
            });
        }
        rest = inner[close + 1..].trim_start();
    }

    // Build profiles (`<!nocheck> <cross>`) only matter when building from
    // source: accept and ignore them.
    while let Some(inner) = rest.strip_prefix('<') {
        let Some(close) = inner.find('>') else {
            return Err(RelationError::Unclosed {
                close: '>',
                relation: relation(),
            });
        };
        rest = inner[close + 1..].trim_start();
    }

    if !rest.is_empty() {
        return Err(RelationError::Unexpected {
            text: rest.to_string(),
            relation: relation(),
        });
    }
    Ok(Relation {
        name: name.to_string(),
        arch_qualifier,
        constraint,
        arch_restriction,
    })
}

/// The relation text with runs of whitespace (including newlines) collapsed,
/// for error messages.
fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn names(groups: &[AltGroup]) -> Vec<Vec<&str>> {
        groups
            .iter()
            .map(|g| g.iter().map(|r| r.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn groups_and_alternatives() {
        let g = parse_relations(
            "libc6 (>= 2.34), libsystemd0 (= 252.39-1~deb12u2), default-mta | mail-transport-agent,\n perl:any",
        )
        .unwrap();
        assert_eq!(
            names(&g),
            vec![
                vec!["libc6"],
                vec!["libsystemd0"],
                vec!["default-mta", "mail-transport-agent"],
                vec!["perl"]
            ]
        );
        assert_eq!(g[0][0].constraint, Some((VersionOp::Ge, v("2.34"))));
        assert_eq!(
            g[1][0].constraint,
            Some((VersionOp::Eq, v("252.39-1~deb12u2")))
        );
        assert_eq!(g[3][0].arch_qualifier.as_deref(), Some("any"));
        assert_eq!(g[3][0].constraint, None);
    }

    #[test]
    fn whitespace_anywhere() {
        let g = parse_relations("  a(>=1.0)|b\n   ( << 2:3 ) ,c [ amd64  !i386 ]  ,\n").unwrap();
        assert_eq!(names(&g), vec![vec!["a", "b"], vec!["c"]]);
        assert_eq!(g[0][0].constraint, Some((VersionOp::Ge, v("1.0"))));
        assert_eq!(g[0][1].constraint, Some((VersionOp::Lt, v("2:3"))));
        assert_eq!(g[1][0].arch_restriction, vec!["amd64", "!i386"]);
        assert!(parse_relations("").unwrap().is_empty());
        assert!(parse_relations(" \n ").unwrap().is_empty());
    }

    #[test]
    fn operators_including_obsolete_ones() {
        for (text, op) in [
            ("<<", VersionOp::Lt),
            ("<=", VersionOp::Le),
            ("<", VersionOp::Le),
            ("=", VersionOp::Eq),
            (">=", VersionOp::Ge),
            (">", VersionOp::Ge),
            (">>", VersionOp::Gt),
        ] {
            let g = parse_relations(&format!("foo ({text} 1.0)")).unwrap();
            assert_eq!(g[0][0].constraint, Some((op, v("1.0"))), "{text}");
        }
        let e = parse_relations("foo (=> 1.0)").unwrap_err();
        assert_eq!(
            e,
            RelationError::BadOperator {
                op: "=>".into(),
                relation: "foo (=> 1.0)".into()
            }
        );
        assert!(matches!(
            parse_relations("foo (1.0)").unwrap_err(),
            RelationError::BadOperator { .. }
        ));
    }

    #[test]
    fn build_profiles_are_ignored() {
        let g = parse_relations(
            "debhelper-compat (= 13), python3 <!nocheck> <!cross>, gcc [amd64] <!stage1>",
        )
        .unwrap();
        assert_eq!(
            names(&g),
            vec![vec!["debhelper-compat"], vec!["python3"], vec!["gcc"]]
        );
        assert_eq!(g[2][0].arch_restriction, vec!["amd64"]);
    }

    #[test]
    fn satisfied_by_each_operator() {
        let rel = |op: &str, ver: &str| {
            parse_relations(&format!("x ({op} {ver})")).unwrap()[0][0].clone()
        };
        assert!(rel(">=", "1.0").satisfied_by(&v("1.0")));
        assert!(rel(">=", "1.0").satisfied_by(&v("1.0-1")));
        assert!(!rel(">=", "1.0").satisfied_by(&v("1.0~rc1")));
        assert!(rel("<<", "1.0").satisfied_by(&v("1.0~rc1")));
        assert!(!rel("<<", "1.0").satisfied_by(&v("1.0")));
        assert!(rel("<=", "1.0").satisfied_by(&v("1.0")));
        assert!(!rel("<=", "1.0").satisfied_by(&v("1.0+b1")));
        assert!(rel("=", "1.0").satisfied_by(&v("1.0-0")));
        assert!(!rel("=", "1.0").satisfied_by(&v("1.0-1")));
        assert!(rel(">>", "1.0").satisfied_by(&v("1:0.1")));
        assert!(!rel(">>", "1.0").satisfied_by(&v("1.0")));
        assert!(Relation::new("x").satisfied_by(&v("0.1")));
    }

    #[test]
    fn arch_restrictions() {
        let g = parse_relations("a [amd64 arm64], b [!i386], c").unwrap();
        assert!(g[0][0].applies_to_arch("amd64"));
        assert!(!g[0][0].applies_to_arch("i386"));
        assert!(g[1][0].applies_to_arch("amd64"));
        assert!(!g[1][0].applies_to_arch("i386"));
        assert!(g[2][0].applies_to_arch("i386"));
    }

    #[test]
    fn display_is_canonical() {
        let g = parse_relations("a:any(>1.0)[ amd64 !i386 ] | b").unwrap();
        assert_eq!(g[0][0].to_string(), "a:any (>= 1.0) [amd64 !i386]");
        assert_eq!(display_group(&g[0]), "a:any (>= 1.0) [amd64 !i386] | b");
        // Display output parses back to the same relation.
        assert_eq!(
            parse_relations(&g[0][0].to_string()).unwrap()[0][0],
            g[0][0]
        );
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(
            parse_relations("a,,b").unwrap_err(),
            RelationError::Empty { .. }
        ));
        assert!(matches!(
            parse_relations(", a").unwrap_err(),
            RelationError::Empty { .. }
        ));
        assert!(matches!(
            parse_relations("a | | b").unwrap_err(),
            RelationError::Empty { .. }
        ));
        assert_eq!(
            parse_relations("a, Foo_Bar").unwrap_err(),
            RelationError::BadName {
                name: "Foo_Bar".into(),
                relation: "Foo_Bar".into()
            }
        );
        assert!(matches!(
            parse_relations("a (>= 1.0").unwrap_err(),
            RelationError::Unclosed { close: ')', .. }
        ));
        assert!(matches!(
            parse_relations("a [amd64").unwrap_err(),
            RelationError::Unclosed { close: ']', .. }
        ));
        assert!(matches!(
            parse_relations("a <!nocheck").unwrap_err(),
            RelationError::Unclosed { close: '>', .. }
        ));
        assert!(matches!(
            parse_relations("a b").unwrap_err(),
            RelationError::Unexpected { .. }
        ));
        assert!(matches!(
            parse_relations("a:").unwrap_err(),
            RelationError::BadQualifier { .. }
        ));
        let e = parse_relations("libfoo (>= 1.0_1)").unwrap_err();
        assert!(matches!(e, RelationError::BadVersion { .. }));
        assert!(e.to_string().contains("libfoo (>= 1.0_1)"), "{e}");
    }

    #[test]
    fn provides() {
        let p = parse_provides("mail-transport-agent, libfoo-abi (= 2.1-1), perl-x:any").unwrap();
        assert_eq!(
            p,
            vec![
                ("mail-transport-agent".to_string(), None),
                ("libfoo-abi".to_string(), Some(v("2.1-1"))),
                ("perl-x".to_string(), None),
            ]
        );
        assert_eq!(
            parse_provides("foo (>= 1.0)").unwrap_err(),
            RelationError::ProvidesOperator {
                relation: "foo (>= 1.0)".into()
            }
        );
        assert!(matches!(
            parse_provides("a | b").unwrap_err(),
            RelationError::Alternatives { .. }
        ));
    }

    #[test]
    fn single_relations_reject_alternatives() {
        assert_eq!(
            names(&parse_single_relations("a (<< 1), b").unwrap()),
            vec![vec!["a"], vec!["b"]]
        );
        assert!(matches!(
            parse_single_relations("a | b").unwrap_err(),
            RelationError::Alternatives { .. }
        ));
    }
}
