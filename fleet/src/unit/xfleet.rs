//! The `[X-Fleet]` section: the options fleet knew (and their deprecated
//! spellings), their values read with fleet's semantics and specifiers
//! expanded for the unit's name, the combinations fleet refused, and the
//! glob syntax of `Conflicts` and `Replaces`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use super::file::UnitFile;
use super::glob::{Glob, GlobError};
use super::name::{NameError, SpecifierError, UnitName};

/// The section fleet reads.
pub const SECTION: &str = "X-Fleet";

/// One of fleet's scheduling options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FleetKey {
    MachineId,
    MachineOf,
    MachineMetadata,
    Conflicts,
    Global,
    Replaces,
}

impl FleetKey {
    /// The current spelling.
    pub fn name(self) -> &'static str {
        match self {
            FleetKey::MachineId => "MachineID",
            FleetKey::MachineOf => "MachineOf",
            FleetKey::MachineMetadata => "MachineMetadata",
            FleetKey::Conflicts => "Conflicts",
            FleetKey::Global => "Global",
            FleetKey::Replaces => "Replaces",
        }
    }

    /// The key an option name stands for: the current names and the
    /// deprecated ones fleet still accepted (`job.validRequirements`).
    pub fn from_option(name: &str) -> Option<FleetKey> {
        ACCEPTED.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }
}

impl fmt::Display for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every option name accepted in `[X-Fleet]`, deprecated ones included
/// (fleet <= 0.8 spelled them with `X-Condition` or `X-`;
/// `X-ConditionMachineBootID` was read as a machine ID).
pub const ACCEPTED: &[(&str, FleetKey)] = &[
    ("MachineID", FleetKey::MachineId),
    ("X-ConditionMachineID", FleetKey::MachineId),
    ("X-ConditionMachineBootID", FleetKey::MachineId),
    ("MachineOf", FleetKey::MachineOf),
    ("X-ConditionMachineOf", FleetKey::MachineOf),
    ("MachineMetadata", FleetKey::MachineMetadata),
    ("X-ConditionMachineMetadata", FleetKey::MachineMetadata),
    ("Conflicts", FleetKey::Conflicts),
    ("X-Conflicts", FleetKey::Conflicts),
    ("Global", FleetKey::Global),
    ("Replaces", FleetKey::Replaces),
];

/// A refused `[X-Fleet]` option: the line, the option as written, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: [X-Fleet] {option}: {problem}")]
pub struct XFleetError {
    pub line: usize,
    pub option: String,
    pub problem: Box<Problem>,
}

/// What is wrong with an `[X-Fleet]` option.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("unknown option{}", suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown { suggestion: Option<&'static str> },
    #[error("empty value")]
    Empty,
    #[error("unbalanced double quote in {0:?}")]
    UnbalancedQuote(String),
    #[error("{0}")]
    Specifier(SpecifierError),
    #[error("{0:?} is not key=value (a key and a value, neither empty, one \"=\")")]
    NotKeyValue(String),
    #[error("{0:?} is not a boolean (true, yes, 1, on, t / false, no, 0, off, f)")]
    NotBool(String),
    #[error("bad glob {pattern:?}: {reason}")]
    BadGlob { pattern: String, reason: GlobError },
    #[error("{value:?} is no unit name: {error}")]
    BadUnitName { value: String, error: NameError },
    #[error("takes one machine ID, not {0:?}")]
    MachineIdWords(String),
    #[error("names machine {second:?}, but line {first_line} already names {first:?}")]
    MachineIdTwice {
        first: String,
        first_line: usize,
        second: String,
    },
    #[error("cannot be used with {other} (line {other_line})")]
    Combination { other: String, other_line: usize },
    #[error("{peer_option}={peer} (line {peer_line}) matches {option}={pattern} (line {line}): the unit could never be scheduled")]
    PeerExcluded {
        peer: String,
        peer_option: String,
        peer_line: usize,
        option: String,
        pattern: String,
        line: usize,
    },
    #[error("a unit cannot follow itself")]
    FollowsItself,
}

/// What a unit's `[X-Fleet]` section asks of the scheduler, with
/// specifiers expanded for the unit's name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements {
    /// `MachineID`: the machine (its full ID, or the 8-character short ID
    /// fleetctl shows) the unit must run on.
    pub machine_id: Option<String>,
    /// `MachineOf`: units (exact names) that must already be on the
    /// machine; all of them.
    pub machine_of: Vec<String>,
    /// `MachineMetadata`: for each key, the values accepted; a machine
    /// passes when, for every key, its value is one of them (same key
    /// repeated = OR, different keys = AND).
    pub metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts`: globs of unit names that must not share the machine
    /// (applied in both directions by the scheduler).
    pub conflicts: Vec<String>,
    /// `Global`: run on every machine that passes `MachineMetadata` and
    /// `Conflicts`; never scheduled to one machine.
    pub global: bool,
    /// `Replaces`: globs of units this unit pushes off its machine.
    pub replaces: Vec<String>,
}

impl Requirements {
    /// Whether a machine with `metadata` passes `MachineMetadata`.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.metadata
            .iter()
            .all(|(k, values)| metadata.get(k).is_some_and(|v| values.contains(v)))
    }

    /// Whether the unit asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Requirements::default()
    }

    /// Reads the `[X-Fleet]` section of `file` for the unit `name`:
    /// unknown options and bad values are refused with their line. For a
    /// template (`foo@.service`) values that hold a specifier are checked
    /// only for their specifiers; each instance is checked in full.
    pub fn from_file(name: &UnitName, file: &UnitFile) -> Result<Requirements, XFleetError> {
        let template = name.is_template();
        let mut req = Requirements::default();
        // (line, option as written) of the first use of each key, and of
        // the Global that decided its value.
        let mut first: BTreeMap<FleetKey, (usize, String)> = BTreeMap::new();
        let mut global_at: Option<(usize, String)> = None;
        let mut machine_id_at: Option<usize> = None;
        // Where each pattern came from, for the combination messages.
        let mut conflict_lines: Vec<(usize, String)> = Vec::new();
        let mut replace_lines: Vec<(usize, String)> = Vec::new();
        let mut peer_lines: Vec<(usize, String)> = Vec::new();

        for opt in file.section(SECTION) {
            let err = |problem| XFleetError {
                line: opt.line,
                option: opt.name.clone(),
                problem: Box::new(problem),
            };
            let Some(key) = FleetKey::from_option(&opt.name) else {
                return Err(err(Problem::Unknown {
                    suggestion: suggest(&opt.name),
                }));
            };
            first
                .entry(key)
                .or_insert_with(|| (opt.line, opt.name.clone()));
            let raw = opt.value();
            let words = split_values(&raw).map_err(err)?;
            if words.is_empty() {
                return Err(err(Problem::Empty));
            }
            let mut values = Vec::with_capacity(words.len());
            for w in &words {
                let v = name.expand(w).map_err(|e| err(Problem::Specifier(e)))?;
                // A template's value with a specifier is only meaningful
                // for an instance: checked there.
                let check = !(template && w.contains('%'));
                values.push((v, check));
            }
            match key {
                FleetKey::MachineId => {
                    if values.len() != 1 {
                        return Err(err(Problem::MachineIdWords(raw)));
                    }
                    let id = values.remove(0).0;
                    match (&req.machine_id, machine_id_at) {
                        (Some(prev), Some(prev_line)) if *prev != id => {
                            return Err(err(Problem::MachineIdTwice {
                                first: prev.clone(),
                                first_line: prev_line,
                                second: id,
                            }));
                        }
                        (Some(_), _) => {}
                        (None, _) => {
                            req.machine_id = Some(id);
                            machine_id_at = Some(opt.line);
                        }
                    }
                }
                FleetKey::MachineOf => {
                    for (v, check) in values {
                        if check {
                            UnitName::parse(&v).map_err(|error| {
                                err(Problem::BadUnitName {
                                    value: v.clone(),
                                    error,
                                })
                            })?;
                            if v == name.as_str() {
                                return Err(err(Problem::FollowsItself));
                            }
                        }
                        if !req.machine_of.contains(&v) {
                            req.machine_of.push(v);
                            peer_lines.push((opt.line, opt.name.clone()));
                        }
                    }
                }
                FleetKey::MachineMetadata => {
                    for (v, check) in values {
                        let pair = v.split_once('=').filter(|(k, val)| {
                            !k.is_empty() && !val.is_empty() && !val.contains('=')
                        });
                        let (k, val) = match pair {
                            Some(p) => p,
                            None if !check => continue,
                            None => return Err(err(Problem::NotKeyValue(v))),
                        };
                        req.metadata
                            .entry(k.to_string())
                            .or_default()
                            .insert(val.to_string());
                    }
                }
                FleetKey::Conflicts | FleetKey::Replaces => {
                    for (v, _) in values {
                        glob(&v).map_err(|reason| {
                            err(Problem::BadGlob {
                                pattern: v.clone(),
                                reason,
                            })
                        })?;
                        let (list, lines) = if key == FleetKey::Conflicts {
                            (&mut req.conflicts, &mut conflict_lines)
                        } else {
                            (&mut req.replaces, &mut replace_lines)
                        };
                        if !list.contains(&v) {
                            list.push(v);
                            lines.push((opt.line, opt.name.clone()));
                        }
                    }
                }
                FleetKey::Global => {
                    if values.len() != 1 {
                        return Err(err(Problem::NotBool(raw)));
                    }
                    // The last Global wins, as in fleet.
                    req.global =
                        parse_bool(&values[0].0).ok_or_else(|| err(Problem::NotBool(raw)))?;
                    global_at = Some((opt.line, opt.name.clone()));
                }
            }
        }

        // The combinations fleet's API refused (api.ValidateOptions), in
        // its order; reported at the later of the two lines.
        let at = |k: FleetKey| -> Option<(usize, String)> {
            if k == FleetKey::Global {
                return if req.global { global_at.clone() } else { None };
            }
            first.get(&k).cloned()
        };
        use FleetKey::*;
        for (a, b) in [
            (MachineId, MachineOf),
            (MachineId, Conflicts),
            (MachineId, Global),
            (MachineId, Replaces),
            (Global, MachineOf),
            (Global, Replaces),
            (Conflicts, Replaces),
        ] {
            if let (Some(x), Some(y)) = (at(a), at(b)) {
                let (late, early) = if x.0 >= y.0 { (x, y) } else { (y, x) };
                return Err(XFleetError {
                    line: late.0,
                    option: late.1,
                    problem: Box::new(Problem::Combination {
                        other: early.1,
                        other_line: early.0,
                    }),
                });
            }
        }
        // A unit whose MachineOf peer it conflicts with or replaces could
        // never be scheduled.
        for (peer, (peer_line, peer_option)) in req.machine_of.iter().zip(&peer_lines) {
            let patterns = req
                .conflicts
                .iter()
                .zip(&conflict_lines)
                .chain(req.replaces.iter().zip(&replace_lines));
            for (pattern, (line, option)) in patterns {
                if !glob(pattern).is_ok_and(|g| g.is_match(peer)) {
                    continue;
                }
                let (at, at_option) = if line >= peer_line {
                    (*line, option.clone())
                } else {
                    (*peer_line, peer_option.clone())
                };
                return Err(XFleetError {
                    line: at,
                    option: at_option,
                    problem: Box::new(Problem::PeerExcluded {
                        peer: peer.clone(),
                        peer_option: peer_option.clone(),
                        peer_line: *peer_line,
                        option: option.clone(),
                        pattern: pattern.clone(),
                        line: *line,
                    }),
                });
            }
        }
        Ok(req)
    }
}

/// fleet's truth values (`isTruthyValue`), and their opposites; anything
/// else is refused rather than read as false.
fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" | "t" => Some(true),
        "false" | "no" | "0" | "off" | "f" => Some(false),
        _ => None,
    }
}

/// Splits an `[X-Fleet]` value into its words: whitespace separates them,
/// double quotes group (`"region=us east" "disk=ssd"`, as fleet's
/// `parseMultivalueLine` read them) and are removed.
fn split_values(value: &str) -> Result<Vec<String>, Problem> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(Problem::UnbalancedQuote(value.to_string()));
    }
    if any {
        out.push(cur);
    }
    out.retain(|w| !w.is_empty());
    Ok(out)
}

/// The closest accepted option name, for "did you mean".
fn suggest(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    ACCEPTED
        .iter()
        .map(|(n, _)| (*n, strsim::levenshtein(&lower, &n.to_ascii_lowercase())))
        .filter(|(n, d)| *d <= 3.max(n.len() / 4))
        .min_by_key(|(_, d)| *d)
        .map(|(n, _)| n)
}

/// A glob in the syntax of `Conflicts` and `Replaces` (see [`Glob`]).
/// Refused when malformed, where fleet silently matched nothing.
pub fn glob(pattern: &str) -> Result<Glob, GlobError> {
    Glob::new(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, xfleet: &str) -> Result<Requirements, XFleetError> {
        let file = UnitFile::parse(format!(
            "[Unit]\nDescription=t\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}"
        ))
        .unwrap();
        Requirements::from_file(&UnitName::parse(name).unwrap(), &file)
    }

    fn ok(name: &str, xfleet: &str) -> Requirements {
        req(name, xfleet).unwrap_or_else(|e| panic!("{xfleet:?}: {e}"))
    }

    fn md(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_option() {
        let r = ok("a.service", "MachineID=0123456789abcdef\n");
        assert_eq!(r.machine_id.as_deref(), Some("0123456789abcdef"));
        let r = ok("a.service", "MachineOf=b.service\nMachineOf=c.socket\n");
        assert_eq!(r.machine_of, strings(&["b.service", "c.socket"]));
        let r = ok("a.service", "MachineMetadata=region=eu\n");
        assert_eq!(r.metadata, md(&[("region", &["eu"])]));
        let r = ok(
            "a.service",
            "Conflicts=b*.service\nConflicts=c.service d?.service\n",
        );
        assert_eq!(
            r.conflicts,
            strings(&["b*.service", "c.service", "d?.service"])
        );
        let r = ok("a.service", "Global=true\n");
        assert!(r.global);
        let r = ok("a.service", "Replaces=b.service\n");
        assert_eq!(r.replaces, strings(&["b.service"]));
        assert!(ok("a.service", "").is_empty());
    }

    #[test]
    fn deprecated_names() {
        type Check = fn(&Requirements) -> bool;
        let table: &[(&str, Check)] = &[
            ("X-ConditionMachineID=m1", |r| {
                r.machine_id.as_deref() == Some("m1")
            }),
            ("X-ConditionMachineBootID=m1", |r| {
                r.machine_id.as_deref() == Some("m1")
            }),
            ("X-ConditionMachineOf=b.service", |r| {
                r.machine_of == ["b.service"]
            }),
            ("X-ConditionMachineMetadata=a=b", |r| {
                r.metadata.contains_key("a")
            }),
            ("X-Conflicts=b.service", |r| r.conflicts == ["b.service"]),
        ];
        for (line, check) in table {
            let r = ok("a.service", &format!("{line}\n"));
            assert!(check(&r), "{line}: {r:?}");
        }
        // Old and new spellings add up.
        let r = ok("a.service", "X-Conflicts=b.service\nConflicts=c.service\n");
        assert_eq!(r.conflicts, strings(&["b.service", "c.service"]));
    }

    #[test]
    fn metadata_as_documented() {
        // The examples of fleet's unit-files-and-scheduling.md.
        type Pairs<'a> = &'a [(&'a str, &'a [&'a str])];
        let table: &[(&str, Pairs<'_>)] = &[
            (
                "MachineMetadata=\"region=us-east-1\" \"diskType=SSD\"\n",
                &[("diskType", &["SSD"]), ("region", &["us-east-1"])],
            ),
            (
                "MachineMetadata=region=us-east-1\nMachineMetadata=region=us-west-1\n",
                &[("region", &["us-east-1", "us-west-1"])],
            ),
            (
                "MachineMetadata=\"region=us-east-1\" \"diskType=SSD\"\nMachineMetadata=region=us-west-1\n",
                &[("diskType", &["SSD"]), ("region", &["us-east-1", "us-west-1"])],
            ),
            (
                "MachineMetadata=\"region=us-east-1\" \"job=foo\"\nMachineMetadata=\"region=us-west-1\" \"job=bar\"\n",
                &[("job", &["bar", "foo"]), ("region", &["us-east-1", "us-west-1"])],
            ),
            // Unquoted words on one line, and a quoted value with a space.
            (
                "MachineMetadata=role=web region=eu\n",
                &[("region", &["eu"]), ("role", &["web"])],
            ),
            (
                "MachineMetadata=\"name=two words\"\n",
                &[("name", &["two words"])],
            ),
        ];
        for (text, want) in table {
            assert_eq!(ok("a.service", text).metadata, md(want), "{text}");
        }
        // The logic: region in (us-east-1, us-west-1) AND diskType = SSD.
        let r = ok(
            "a.service",
            "MachineMetadata=\"region=us-east-1\" \"diskType=SSD\"\nMachineMetadata=region=us-west-1\n",
        );
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(r.metadata_matches(&m(&[("diskType", "SSD"), ("region", "us-east-1")])));
        assert!(!r.metadata_matches(&m(&[("region", "us-east-1")])));
        assert!(r.metadata_matches(&m(&[
            ("diskType", "SSD"),
            ("region", "us-west-1"),
            ("x", "y")
        ])));
        assert!(!r.metadata_matches(&m(&[("diskType", "HDD"), ("region", "us-west-1")])));
        assert!(!r.metadata_matches(&m(&[])));
        assert!(ok("a.service", "").metadata_matches(&m(&[])));
    }

    #[test]
    fn global_values() {
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            ("yes", true),
            ("1", true),
            ("on", true),
            ("t", true),
            ("\"true\"", true),
            ("false", false),
            ("no", false),
            ("0", false),
            ("off", false),
            ("f", false),
        ] {
            assert_eq!(
                ok("a.service", &format!("Global={v}\n")).global,
                want,
                "{v}"
            );
        }
        // The last one wins.
        assert!(!ok("a.service", "Global=true\nGlobal=false\n").global);
        assert!(ok("a.service", "Global=false\nGlobal=true\n").global);
        // Global=false does not count against other options.
        ok("a.service", "Global=false\nMachineOf=b.service\n");
    }

    #[test]
    fn specifiers_in_values() {
        let r = ok(
            "web@3.service",
            "Conflicts=%p@*.service\nMachineOf=db@%i.service\nMachineMetadata=shard=%i\n",
        );
        assert_eq!(r.conflicts, strings(&["web@*.service"]));
        assert_eq!(r.machine_of, strings(&["db@3.service"]));
        assert_eq!(r.metadata, md(&[("shard", &["3"])]));
        // The documented example: MachineOf=%p.socket.
        assert_eq!(
            ok("foo.service", "MachineOf=%p.socket\n").machine_of,
            ["foo.socket"]
        );
        assert_eq!(
            ok("bar.service", "MachineOf=%p.socket\n").machine_of,
            ["bar.socket"]
        );
        assert_eq!(
            ok("x@y.service", "Replaces=%N-old.service\n").replaces,
            ["x@y-old.service"]
        );
        assert_eq!(
            ok("x@y.service", "Replaces=%n.old\n").replaces,
            ["x@y.service.old"]
        );
        // A template with specifiers is accepted as it stands; its
        // instances are checked in full.
        ok(
            "web@.service",
            "MachineMetadata=shard=%i\nMachineOf=db@%i.service\n",
        );
        let e = req(
            "web@.service",
            "MachineOf=%i.service\nMachineMetadata=x=%H\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "line 9: [X-Fleet] MachineMetadata: unsupported specifier %H (fleet expands %n, %N, %p, %i and %%)");
        let e = req("web@.service", "MachineOf=%i.service\n").map(|_| ());
        assert!(e.is_ok());
        let e = req("web@1.service", "MachineOf=%p.service%\n").unwrap_err();
        assert!(e.to_string().contains("a lone %"), "{e}");
    }

    #[test]
    fn refusals_name_line_and_option() {
        // The [X-Fleet] section starts on line 7, its first option is line 8.
        let table: &[(&str, &str)] = &[
            ("MachineIDs=x\n", "line 8: [X-Fleet] MachineIDs: unknown option (did you mean MachineID?)"),
            ("machineof=a.service\n", "line 8: [X-Fleet] machineof: unknown option (did you mean MachineOf?)"),
            ("Frobnicate=1\n", "line 8: [X-Fleet] Frobnicate: unknown option"),
            ("Conflicts=\n", "line 8: [X-Fleet] Conflicts: empty value"),
            ("MachineMetadata=region\n", "line 8: [X-Fleet] MachineMetadata: \"region\" is not key=value"),
            ("MachineMetadata==eu\n", "line 8: [X-Fleet] MachineMetadata: \"=eu\" is not key=value"),
            ("MachineMetadata=a=\n", "line 8: [X-Fleet] MachineMetadata: \"a=\" is not key=value"),
            ("MachineMetadata=a=b=c\n", "line 8: [X-Fleet] MachineMetadata: \"a=b=c\" is not key=value"),
            ("MachineMetadata=\"a=b\n", "line 8: [X-Fleet] MachineMetadata: unbalanced double quote in \"\\\"a=b\""),
            ("Global=maybe\n", "line 8: [X-Fleet] Global: \"maybe\" is not a boolean"),
            ("Global=true false\n", "line 8: [X-Fleet] Global: \"true false\" is not a boolean"),
            ("Conflicts=web[.service\n", "line 8: [X-Fleet] Conflicts: bad glob \"web[.service\": unclosed character class"),
            ("Replaces=a.service\nReplaces=b[.service\n", "line 9: [X-Fleet] Replaces: bad glob"),
            ("MachineOf=b\n", "line 8: [X-Fleet] MachineOf: \"b\" is no unit name: unit name \"b\" must contain"),
            ("MachineOf=a.service\n", "line 8: [X-Fleet] MachineOf: a unit cannot follow itself"),
            ("MachineID=a b\n", "line 8: [X-Fleet] MachineID: takes one machine ID, not \"a b\""),
            ("MachineID=m1\nMachineID=m2\n", "line 9: [X-Fleet] MachineID: names machine \"m2\", but line 8 already names \"m1\""),
            // Combinations fleet refused.
            ("MachineID=m1\nMachineOf=b.service\n", "line 9: [X-Fleet] MachineOf: cannot be used with MachineID (line 8)"),
            ("Conflicts=b.service\nMachineID=m1\n", "line 9: [X-Fleet] MachineID: cannot be used with Conflicts (line 8)"),
            ("MachineID=m1\nGlobal=true\n", "line 9: [X-Fleet] Global: cannot be used with MachineID (line 8)"),
            ("MachineID=m1\nReplaces=b.service\n", "line 9: [X-Fleet] Replaces: cannot be used with MachineID (line 8)"),
            ("Global=yes\nMachineOf=b.service\n", "line 9: [X-Fleet] MachineOf: cannot be used with Global (line 8)"),
            ("Replaces=b.service\nGlobal=1\n", "line 9: [X-Fleet] Global: cannot be used with Replaces (line 8)"),
            ("Conflicts=b.service\nReplaces=c.service\n", "line 9: [X-Fleet] Replaces: cannot be used with Conflicts (line 8)"),
            ("X-ConditionMachineID=m1\nX-ConditionMachineOf=b.service\n", "line 9: [X-Fleet] X-ConditionMachineOf: cannot be used with X-ConditionMachineID (line 8)"),
            // A peer the unit conflicts with.
            ("MachineOf=db.service\nConflicts=d*.service\n", "line 9: [X-Fleet] Conflicts: MachineOf=db.service (line 8) matches Conflicts=d*.service (line 9): the unit could never be scheduled"),
        ];
        for (text, want) in table {
            let e = req("a.service", text).expect_err(text).to_string();
            assert!(e.starts_with(want), "{text:?}:\n got  {e}\n want {want}");
        }
    }

    #[test]
    fn peer_replaced_is_refused() {
        let e = req(
            "a.service",
            "MachineOf=db.service\nMachineOf=x.service\nReplaces=x*.service\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 10);
        assert!(
            matches!(*e.problem, Problem::PeerExcluded { ref peer, .. } if peer == "x.service"),
            "{e}"
        );
    }

    #[test]
    fn globs_follow_path_match() {
        let table: &[(&str, &str, bool)] = &[
            ("web@*.service", "web@1.service", true),
            ("web@*.service", "web@.service", true),
            ("web@*.service", "web.service", false),
            ("web?.service", "web1.service", true),
            ("web?.service", "web12.service", false),
            ("web[0-9].service", "web5.service", true),
            ("web[^0-9].service", "web5.service", false),
            ("web[!0-9].service", "webx.service", true),
            ("web\\*.service", "web*.service", true),
            ("web\\*.service", "web1.service", false),
            ("*", "anything.service", true),
            ("monitor*", "monitor.service", true),
            ("a.service", "a.service", true),
            ("a.service", "b.service", false),
            ("web@{1,2}.service", "web@2.service", false),
        ];
        for &(p, name, want) in table {
            assert_eq!(glob(p).unwrap().is_match(name), want, "{p} {name}");
        }
    }

    #[test]
    fn value_splitting() {
        for (v, want) in [
            ("a b", vec!["a", "b"]),
            ("  a\tb  ", vec!["a", "b"]),
            ("\"a b\" c", vec!["a b", "c"]),
            ("\"a=b\" \"c=d\"", vec!["a=b", "c=d"]),
            ("\"\"", vec![]),
            ("", vec![]),
        ] {
            assert_eq!(split_values(v).unwrap(), want, "{v:?}");
        }
    }
}
