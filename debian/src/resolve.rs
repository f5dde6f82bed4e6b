//! Dependency resolution: from the packages an image asks for (plus the
//! Essential set) to the exact set of binary packages to unpack, each with
//! the chain of reasons that pulled it in.
//!
//! Owns the choice of packages and versions over a [`PackageIndex`]; it
//! knows nothing about mirrors, downloads or lock files (the builder's job).
//!
//! # Semantics
//!
//! * Only packages whose `Architecture` is in
//!   [`ResolveOptions::architectures`] are candidates (`amd64` and `all` by
//!   default). `[arch]` restrictions in relations are evaluated against the
//!   first listed architecture other than `all`.
//! * One version per package name. For each name the newest version that
//!   satisfies the relation being processed is tried first, so a newer
//!   version from a security or updates suite wins over the release suite.
//! * Roots come first, in order: the requests, then (with
//!   [`ResolveOptions::include_essential`]) every package whose newest
//!   version is `Essential: yes`, requested as "Essential set".
//! * For every chosen package, its `Pre-Depends` then `Depends` groups are
//!   processed in file order (and `Recommends` when
//!   [`ResolveOptions::include_recommends`]; those are skipped when they
//!   cannot be satisfied). Groups with a single relation are processed
//!   before groups with alternatives, so that an alternative already pulled
//!   in by someone else is used rather than a new one.
//! * A group is satisfied when any alternative matches a chosen package,
//!   by its real name and version or through `Provides` (an unversioned
//!   provide satisfies only unversioned relations; a versioned one,
//!   `Provides: foo (= 1)`, satisfies relations its version meets).
//! * Otherwise the alternatives are tried in order; for each, the real
//!   package first (newest version first), then the providers of the name,
//!   by `Priority` (required first), then name, then newest version. A
//!   request that names a virtual package with more than one provider is an
//!   error (like apt, the image must say which one).
//! * `Conflicts` and `Breaks` both forbid co-installation (nothing is ever
//!   upgraded in place, so `Breaks` has no weaker meaning here), in both
//!   directions, against real names and provided names. A package never
//!   conflicts with itself, even through its own `Provides`.
//! * `:any` / `:native` qualifiers are ignored (one architecture family).
//!   Dependency cycles are normal and need nothing special.
//! * When a choice leads to a dead end (a dependency that cannot be
//!   satisfied, or a conflict with what is already chosen), the resolver
//!   goes back on a choice: not simply the latest one, but the latest one
//!   the dead end depends on (the choices that brought in the unsatisfied
//!   package and the packages it clashes with; conflict-directed
//!   backjumping), so unrelated choices made in between are kept. The
//!   search is bounded ([`MAX_BACKTRACKS`]); the error reported is the first
//!   dead end met, which is the one the preferred choices lead to.
//! * The result is not always what apt would pick. apt keeps packages it
//!   marked on a path it later abandoned, and looks at alternative groups in
//!   a different order; here a group whose later alternative ends up chosen
//!   anyway adds nothing more.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

pub use crate::index::PackageId;
use crate::index::{BinaryPackage, PackageIndex};
use crate::relation::{self, display_group, AltGroup, Relation, RelationError, VersionOp};
use crate::version::Version;

/// How many times the resolver may go back on a choice before giving up.
pub const MAX_BACKTRACKS: usize = 5000;

/// Options of a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Architectures whose packages may be chosen, e.g. `["amd64", "all"]`.
    pub architectures: Vec<String>,
    /// Add every `Essential: yes` package as a root.
    pub include_essential: bool,
    /// Follow `Recommends` too (as soft dependencies).
    pub include_recommends: bool,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            architectures: vec!["amd64".into(), "all".into()],
            include_essential: true,
            include_recommends: false,
        }
    }
}

/// One package asked for by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub constraint: Option<(VersionOp, Version)>,
    /// Who asks, for messages, e.g. `images/default.yaml: packages`.
    pub wanted_by: String,
}

impl Request {
    /// A request for any version of `name`.
    pub fn new(name: impl Into<String>, wanted_by: impl Into<String>) -> Self {
        Request {
            name: name.into(),
            constraint: None,
            wanted_by: wanted_by.into(),
        }
    }

    /// A request written as one relation, e.g. `docker.io (>= 20.10)`.
    pub fn parse(text: &str, wanted_by: impl Into<String>) -> Result<Self, RelationError> {
        let mut groups = relation::parse_single_relations(text)?;
        if groups.len() != 1 {
            return Err(RelationError::Unexpected {
                text: text.trim().to_string(),
                relation: text.trim().to_string(),
            });
        }
        let rel = groups.remove(0).remove(0);
        Ok(Request {
            name: rel.name,
            constraint: rel.constraint,
            wanted_by: wanted_by.into(),
        })
    }
}

/// The result: every package to install, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    pub packages: Vec<Resolved>,
}

impl Resolution {
    /// The chosen package called `name`.
    pub fn get(&self, name: &str) -> Option<&Resolved> {
        self.packages
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.packages[i])
    }
}

/// One chosen package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub id: PackageId,
    pub name: String,
    pub version: Version,
    /// Why it is there: who asked first, then each package whose dependency
    /// pulled in the next, ending with this package, e.g.
    /// `["images/default.yaml: packages", "docker.io", "containerd"]`.
    pub reason: Vec<String>,
}

/// Why no installable set exists. Chains read like [`Resolved::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No package or provider of this name exists at all.
    #[error("package {name:?} does not exist (wanted by {}){}", arrows(.chain), did_you_mean(.suggestions))]
    Missing {
        name: String,
        /// Who wanted it (not including `name`).
        chain: Vec<String>,
        /// Close names and, for a virtual name, its providers.
        suggestions: Vec<String>,
    },
    /// The name exists, but no version fits the constraint or the
    /// architectures.
    #[error("no installable version satisfies {relation} (available: {}; wanted by {})", list_or_none(.available), arrows(.chain))]
    NoVersion {
        relation: String,
        /// `version [architecture]` of each existing version, plus providers.
        available: Vec<String>,
        chain: Vec<String>,
    },
    /// The package is already chosen at a version that does not fit.
    #[error("{relation} (wanted by {}) cannot be satisfied: {chosen} is already chosen (for {})", arrows(.chain), arrows(.chosen_chain))]
    VersionClash {
        relation: String,
        chain: Vec<String>,
        /// `name version` of the chosen package.
        chosen: String,
        chosen_chain: Vec<String>,
    },
    /// Two packages that are both needed forbid each other.
    #[error("{a} ({}) and {b} ({}) cannot be installed together: {relation}", arrows(.chain_a), arrows(.chain_b))]
    Conflict {
        /// `name version` of the package that could not be added.
        a: String,
        /// `name version` of the package already chosen.
        b: String,
        /// The relation, with who declares it, e.g. `foo Breaks: bar (<< 2)`.
        relation: String,
        chain_a: Vec<String>,
        chain_b: Vec<String>,
    },
    /// A request names a virtual package with several providers.
    #[error("{name:?} is a virtual package provided by {}; ask for one of them (wanted by {})", .providers.join(", "), arrows(.chain))]
    Virtual {
        name: String,
        providers: Vec<String>,
        chain: Vec<String>,
    },
    /// No alternative of a group can be installed; one reason per alternative.
    #[error("no alternative of {group} can be installed (wanted by {}): {}", arrows(.chain), .reasons.join("; "))]
    Alternatives {
        group: String,
        chain: Vec<String>,
        reasons: Vec<String>,
    },
    /// The search went back on its choices too often.
    #[error("{first} (gave up looking for another combination after {steps} attempts)")]
    GaveUp {
        steps: usize,
        first: Box<ResolveError>,
    },
}

fn arrows(chain: &[String]) -> String {
    chain.join(" -> ")
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean: {}?", suggestions.join(", "))
    }
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// Resolves `roots` (and the Essential set, if asked) against `index`.
pub fn resolve(
    index: &PackageIndex,
    roots: &[Request],
    opts: &ResolveOptions,
) -> Result<Resolution, ResolveError> {
    let mut root_groups: Vec<Root> = roots
        .iter()
        .map(|r| Root {
            group: vec![Relation {
                name: r.name.clone(),
                arch_qualifier: None,
                constraint: r.constraint.clone(),
                arch_restriction: Vec::new(),
            }],
            wanted_by: r.wanted_by.clone(),
        })
        .collect();
    if opts.include_essential {
        for name in essential_names(index, opts) {
            root_groups.push(Root {
                group: vec![Relation::new(name)],
                wanted_by: "Essential set".into(),
            });
        }
    }
    let native = opts
        .architectures
        .iter()
        .find(|a| a.as_str() != "all")
        .map_or("", String::as_str);
    let mut solver = Solver {
        index,
        opts,
        native,
        roots: &root_groups,
        picks: Vec::new(),
        chosen: HashMap::new(),
        provided: HashMap::new(),
        conflicts_on: HashMap::new(),
        queues: [Vec::new(), Vec::new()],
        next: [0, 0],
        choices: Vec::new(),
        backtracks: 0,
        first_error: None,
    };
    for (i, root) in root_groups.iter().enumerate() {
        solver.queues[0].push(Obligation {
            group: &root.group,
            via: Via::Root(i),
            soft: false,
        });
    }
    solver.run()?;
    tracing::debug!(
        packages = solver.picks.len(),
        backtracks = solver.backtracks,
        "resolved"
    );
    let mut packages: Vec<Resolved> = (0..solver.picks.len())
        .map(|pi| {
            let id = solver.picks[pi].id;
            let pkg = index.get(id);
            Resolved {
                id,
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                reason: solver.reason(pi),
            }
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Resolution { packages })
}

/// Names whose newest installable version is `Essential: yes`, in index
/// order.
fn essential_names<'a>(index: &'a PackageIndex, opts: &ResolveOptions) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for (_, pkg) in index.iter() {
        if !pkg.essential || out.contains(&pkg.name.as_str()) {
            continue;
        }
        let newest = index
            .versions(&pkg.name)
            .iter()
            .map(|&id| index.get(id))
            .find(|p| opts.architectures.contains(&p.architecture));
        if newest.is_some_and(|p| p.essential) {
            out.push(&pkg.name);
        }
    }
    out
}

struct Root {
    group: AltGroup,
    wanted_by: String,
}

/// Who brought an obligation: a root request or a chosen package (index
/// into `Solver::picks`).
#[derive(Debug, Clone, Copy)]
enum Via {
    Root(usize),
    Pick(usize),
}

#[derive(Debug, Clone, Copy)]
struct Obligation<'a> {
    group: &'a [Relation],
    via: Via,
    /// Recommends: may be left unsatisfied.
    soft: bool,
}

#[derive(Debug, Clone)]
struct Pick {
    id: PackageId,
    via: Via,
    /// The choice point this pick was one option of, if there was a choice.
    choice: Option<usize>,
    /// Chosen packages that ruled out the other candidates when this pick
    /// was the only one left (the pick depends on them being there).
    narrowed_by: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    picks: usize,
    lens: [usize; 2],
    next: [usize; 2],
}

struct ChoicePoint {
    queue: usize,
    pos: usize,
    /// `None` is "leave this (soft) obligation unsatisfied".
    options: Vec<Option<PackageId>>,
    tried: usize,
    saved: Snapshot,
    /// Picks that ruled out further candidates of this obligation.
    narrowed_by: Vec<usize>,
    /// Earlier choice points blamed by the dead ends met under this one.
    blamed: BTreeSet<usize>,
}

/// Why one relation has no usable candidate.
enum Why<'a> {
    /// Nothing of that name, real or virtual, in any architecture.
    Missing,
    /// Versions exist but none fits (constraint or architecture).
    NoVersion,
    /// The name is chosen at another version.
    Clash { pick: usize },
    /// Every candidate conflicts with a chosen package.
    Conflict(ConflictInfo<'a>),
    /// A request for a virtual name with several providers.
    Virtual { providers: Vec<PackageId> },
}

#[derive(Clone, Copy)]
struct ConflictInfo<'a> {
    candidate: PackageId,
    other: usize,
    /// Whether the candidate declares the relation (else the chosen one does).
    declared_by_candidate: bool,
    field: &'static str,
    relation: &'a Relation,
}

enum Eval<'a> {
    Satisfied,
    /// Candidates in preference order, and the picks that ruled out others.
    Options(Vec<Option<PackageId>>, Vec<usize>),
    /// Why each alternative failed, and the picks that ruled candidates out.
    Fail(Vec<(&'a Relation, Why<'a>)>, Vec<usize>),
}

struct Solver<'a> {
    index: &'a PackageIndex,
    opts: &'a ResolveOptions,
    native: &'a str,
    roots: &'a [Root],
    picks: Vec<Pick>,
    /// Package name -> index into `picks`.
    chosen: HashMap<&'a str, usize>,
    /// Provided name -> picks providing it (in pick order).
    provided: HashMap<&'a str, Vec<usize>>,
    /// Name named by a Conflicts/Breaks of a chosen package -> (pick, relation, field).
    conflicts_on: HashMap<&'a str, Vec<(usize, &'a Relation, &'static str)>>,
    /// 0: groups with one relation; 1: groups with alternatives and soft ones.
    queues: [Vec<Obligation<'a>>; 2],
    next: [usize; 2],
    choices: Vec<ChoicePoint>,
    backtracks: usize,
    first_error: Option<ResolveError>,
}

impl<'a> Solver<'a> {
    fn pkg(&self, id: PackageId) -> &'a BinaryPackage {
        self.index.get(id)
    }

    fn arch_ok(&self, pkg: &BinaryPackage) -> bool {
        self.opts.architectures.contains(&pkg.architecture)
    }

    fn applies(&self, rel: &Relation) -> bool {
        rel.applies_to_arch(self.native)
    }

    fn run(&mut self) -> Result<(), ResolveError> {
        loop {
            let q = if self.next[0] < self.queues[0].len() {
                0
            } else if self.next[1] < self.queues[1].len() {
                1
            } else {
                return Ok(());
            };
            let pos = self.next[q];
            let ob = self.queues[q][pos];
            match self.evaluate(&ob) {
                Eval::Satisfied => self.next[q] += 1,
                Eval::Options(options, narrowed_by) => {
                    let first = options[0];
                    if options.len() > 1 {
                        let saved = self.snapshot();
                        self.choices.push(ChoicePoint {
                            queue: q,
                            pos,
                            options,
                            tried: 1,
                            saved,
                            narrowed_by,
                            blamed: BTreeSet::new(),
                        });
                        self.take(q, first, ob.via, Some(self.choices.len() - 1), Vec::new());
                    } else {
                        self.take(q, first, ob.via, None, narrowed_by);
                    }
                }
                Eval::Fail(whys, mut culprits) => {
                    // The choices that can make a difference: those that
                    // brought the obligation in, and those that brought in
                    // the packages its candidates clash or conflict with.
                    if let Via::Pick(pi) = ob.via {
                        culprits.push(pi);
                    }
                    let blamed = self.blame(&culprits);
                    if self.first_error.is_none() {
                        self.first_error = Some(self.error(&ob, whys));
                    }
                    self.backjump(blamed)?;
                }
            }
        }
    }

    /// The choice points that `picks` depend on: where each was chosen, and
    /// recursively what brought it in and what narrowed its candidates.
    fn blame(&self, picks: &[usize]) -> BTreeSet<usize> {
        let mut seen = vec![false; self.picks.len()];
        let mut stack: Vec<usize> = picks.to_vec();
        let mut out = BTreeSet::new();
        while let Some(pi) = stack.pop() {
            if std::mem::replace(&mut seen[pi], true) {
                continue;
            }
            let pick = &self.picks[pi];
            if let Some(c) = pick.choice {
                out.insert(c);
            }
            if let Via::Pick(parent) = pick.via {
                stack.push(parent);
            }
            stack.extend(pick.narrowed_by.iter().copied());
        }
        out
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            picks: self.picks.len(),
            lens: [self.queues[0].len(), self.queues[1].len()],
            next: self.next,
        }
    }

    fn restore(&mut self, s: Snapshot) {
        while self.picks.len() > s.picks {
            self.pop_pick();
        }
        self.queues[0].truncate(s.lens[0]);
        self.queues[1].truncate(s.lens[1]);
        self.next = s.next;
    }

    /// Conflict-directed backjumping: goes back to the latest choice point
    /// in `blamed` (skipping later ones, which cannot help) and takes its
    /// next option. A choice point out of options passes the blame it
    /// collected, plus its own causes, further back.
    fn backjump(&mut self, mut blamed: BTreeSet<usize>) -> Result<(), ResolveError> {
        loop {
            let Some(target) = blamed.pop_last() else {
                // No choice made so far has anything to do with the dead end.
                return Err(self.first_error.take().expect("error recorded"));
            };
            self.choices.truncate(target + 1);
            let cp = &mut self.choices[target];
            cp.blamed.extend(blamed.iter().copied());
            if cp.tried < cp.options.len() {
                let option = cp.options[cp.tried];
                cp.tried += 1;
                let (saved, q, pos) = (cp.saved, cp.queue, cp.pos);
                self.backtracks += 1;
                if self.backtracks > MAX_BACKTRACKS {
                    let first = self.first_error.take().expect("error recorded");
                    return Err(ResolveError::GaveUp {
                        steps: MAX_BACKTRACKS,
                        first: Box::new(first),
                    });
                }
                self.restore(saved);
                debug_assert_eq!(self.next[q], pos);
                let via = self.queues[q][pos].via;
                self.take(q, option, via, Some(target), Vec::new());
                return Ok(());
            }
            let cp = self.choices.pop().expect("target choice point");
            let mut causes = cp.narrowed_by;
            if let Via::Pick(pi) = self.queues[cp.queue][cp.pos].via {
                causes.push(pi);
            }
            blamed = cp.blamed;
            blamed.extend(self.blame(&causes));
        }
    }

    fn take(
        &mut self,
        q: usize,
        option: Option<PackageId>,
        via: Via,
        choice: Option<usize>,
        narrowed_by: Vec<usize>,
    ) {
        self.next[q] += 1;
        if let Some(id) = option {
            self.push_pick(Pick {
                id,
                via,
                choice,
                narrowed_by,
            });
        }
    }

    fn push_pick(&mut self, pick: Pick) {
        let id = pick.id;
        let pkg = self.pkg(id);
        let pi = self.picks.len();
        self.picks.push(pick);
        self.chosen.insert(&pkg.name, pi);
        for (name, _) in &pkg.provides {
            self.provided.entry(name).or_default().push(pi);
        }
        for (field, groups) in [("Conflicts", &pkg.conflicts), ("Breaks", &pkg.breaks)] {
            for rel in groups.iter().flatten() {
                self.conflicts_on
                    .entry(&rel.name)
                    .or_default()
                    .push((pi, rel, field));
            }
        }
        let via = Via::Pick(pi);
        for group in pkg.pre_depends.iter().chain(&pkg.depends) {
            let q = usize::from(group.len() > 1);
            self.queues[q].push(Obligation {
                group,
                via,
                soft: false,
            });
        }
        if self.opts.include_recommends {
            for group in &pkg.recommends {
                self.queues[1].push(Obligation {
                    group,
                    via,
                    soft: true,
                });
            }
        }
    }

    /// Undoes the latest `push_pick` (the maps are stacks per key).
    fn pop_pick(&mut self) {
        let pick = self.picks.pop().expect("a pick to undo");
        let pkg = self.pkg(pick.id);
        self.chosen.remove(pkg.name.as_str());
        for (name, _) in &pkg.provides {
            if let Some(list) = self.provided.get_mut(name.as_str()) {
                list.pop();
            }
        }
        for rel in pkg.conflicts.iter().chain(&pkg.breaks).flatten() {
            if let Some(list) = self.conflicts_on.get_mut(rel.name.as_str()) {
                list.pop();
            }
        }
    }

    /// Whether `pkg` provides `rel.name` in a way that meets `rel`'s version.
    fn provides_match(pkg: &BinaryPackage, rel: &Relation) -> bool {
        pkg.provides.iter().any(|(name, version)| {
            name == &rel.name
                && match (&rel.constraint, version) {
                    (None, _) => true,
                    (Some(_), Some(v)) => rel.satisfied_by(v),
                    (Some(_), None) => false,
                }
        })
    }

    fn satisfied(&self, rel: &Relation) -> bool {
        if let Some(&pi) = self.chosen.get(rel.name.as_str()) {
            if rel.satisfied_by(&self.pkg(self.picks[pi].id).version) {
                return true;
            }
        }
        self.provided.get(rel.name.as_str()).is_some_and(|list| {
            list.iter()
                .any(|&pi| Self::provides_match(self.pkg(self.picks[pi].id), rel))
        })
    }

    fn evaluate(&self, ob: &Obligation<'a>) -> Eval<'a> {
        let rels: Vec<&'a Relation> = ob.group.iter().filter(|r| self.applies(r)).collect();
        if rels.is_empty() || rels.iter().any(|r| self.satisfied(r)) {
            return Eval::Satisfied;
        }
        let mut options: Vec<Option<PackageId>> = Vec::new();
        let mut whys = Vec::new();
        let mut narrowed_by = Vec::new();
        for rel in rels {
            let (candidates, why) = self.candidates(rel, ob, &mut narrowed_by);
            for id in candidates {
                if !options.contains(&Some(id)) {
                    options.push(Some(id));
                }
            }
            if let Some(why) = why {
                whys.push((rel, why));
            }
        }
        narrowed_by.sort_unstable();
        narrowed_by.dedup();
        if options.is_empty() && !ob.soft {
            return Eval::Fail(whys, narrowed_by);
        }
        if ob.soft {
            options.push(None);
        }
        Eval::Options(options, narrowed_by)
    }

    /// The installable candidates for `rel` in preference order, or why
    /// there are none. Picks that ruled candidates out are added to
    /// `narrowed_by`.
    fn candidates(
        &self,
        rel: &'a Relation,
        ob: &Obligation<'a>,
        narrowed_by: &mut Vec<usize>,
    ) -> (Vec<PackageId>, Option<Why<'a>>) {
        let name = rel.name.as_str();
        let mut raw: Vec<PackageId> = Vec::new();
        let mut clash = None;
        if let Some(&pi) = self.chosen.get(name) {
            // Chosen at a version that does not fit (else it is satisfied).
            clash = Some(pi);
            narrowed_by.push(pi);
        } else {
            raw.extend(self.index.versions(name).iter().copied().filter(|&id| {
                let p = self.pkg(id);
                self.arch_ok(p) && rel.satisfied_by(&p.version)
            }));
        }
        let mut providers: Vec<PackageId> = self
            .index
            .providers(name)
            .iter()
            .copied()
            .filter(|&id| {
                let p = self.pkg(id);
                if !self.arch_ok(p) || !Self::provides_match(p, rel) {
                    return false;
                }
                match self.chosen.get(p.name.as_str()) {
                    // Another version of the provider is chosen.
                    Some(&pi) => {
                        narrowed_by.push(pi);
                        false
                    }
                    None => true,
                }
            })
            .collect();
        providers.sort_by(|&a, &b| {
            let (pa, pb) = (self.pkg(a), self.pkg(b));
            pb.priority
                .cmp(&pa.priority)
                .then_with(|| pa.name.cmp(&pb.name))
                .then_with(|| pb.version.cmp(&pa.version))
                .then(a.cmp(&b))
        });
        if matches!(ob.via, Via::Root(_)) && raw.is_empty() && clash.is_none() {
            let mut names: Vec<&str> = providers
                .iter()
                .map(|&id| self.pkg(id).name.as_str())
                .collect();
            names.dedup();
            if names.len() > 1 {
                return (Vec::new(), Some(Why::Virtual { providers }));
            }
        }
        raw.extend(providers);

        let mut first_conflict = None;
        let viable: Vec<PackageId> = raw
            .into_iter()
            .filter(|&id| match self.conflict(id) {
                None => true,
                Some(info) => {
                    narrowed_by.push(info.other);
                    first_conflict.get_or_insert(info);
                    false
                }
            })
            .collect();
        if !viable.is_empty() {
            return (viable, None);
        }
        let why = if let Some(info) = first_conflict {
            Why::Conflict(info)
        } else if let Some(pi) = clash {
            Why::Clash { pick: pi }
        } else if self.index.versions(name).is_empty() && self.index.providers(name).is_empty() {
            Why::Missing
        } else {
            Why::NoVersion
        };
        (Vec::new(), Some(why))
    }

    /// The first conflict between package `id` and the chosen set, if any.
    fn conflict(&self, id: PackageId) -> Option<ConflictInfo<'a>> {
        let p = self.pkg(id);
        // What the candidate forbids.
        for (field, groups) in [("Conflicts", &p.conflicts), ("Breaks", &p.breaks)] {
            for rel in groups.iter().flatten() {
                if rel.name == p.name || !self.applies(rel) {
                    continue;
                }
                if let Some(&pi) = self.chosen.get(rel.name.as_str()) {
                    if rel.satisfied_by(&self.pkg(self.picks[pi].id).version) {
                        return Some(ConflictInfo {
                            candidate: id,
                            other: pi,
                            declared_by_candidate: true,
                            field,
                            relation: rel,
                        });
                    }
                }
                for &pi in self.provided.get(rel.name.as_str()).into_iter().flatten() {
                    let other = self.pkg(self.picks[pi].id);
                    if other.name != p.name && Self::provides_match(other, rel) {
                        return Some(ConflictInfo {
                            candidate: id,
                            other: pi,
                            declared_by_candidate: true,
                            field,
                            relation: rel,
                        });
                    }
                }
            }
        }
        // What the chosen packages forbid, by the candidate's name...
        for &(pi, rel, field) in self.conflicts_on.get(p.name.as_str()).into_iter().flatten() {
            if self.applies(rel) && rel.satisfied_by(&p.version) {
                return Some(ConflictInfo {
                    candidate: id,
                    other: pi,
                    declared_by_candidate: false,
                    field,
                    relation: rel,
                });
            }
        }
        // ...and by the names it provides.
        for (provided, _) in &p.provides {
            if provided == &p.name {
                continue;
            }
            for &(pi, rel, field) in self
                .conflicts_on
                .get(provided.as_str())
                .into_iter()
                .flatten()
            {
                let other = self.pkg(self.picks[pi].id);
                if other.name != p.name && self.applies(rel) && Self::provides_match(p, rel) {
                    return Some(ConflictInfo {
                        candidate: id,
                        other: pi,
                        declared_by_candidate: false,
                        field,
                        relation: rel,
                    });
                }
            }
        }
        None
    }

    fn chain(&self, via: Via) -> Vec<String> {
        match via {
            Via::Root(r) => vec![self.roots[r].wanted_by.clone()],
            Via::Pick(pi) => self.reason(pi),
        }
    }

    fn reason(&self, pi: usize) -> Vec<String> {
        let mut chain = self.chain(self.picks[pi].via);
        chain.push(self.pkg(self.picks[pi].id).name.clone());
        chain
    }

    fn error(&self, ob: &Obligation<'a>, whys: Vec<(&'a Relation, Why<'a>)>) -> ResolveError {
        let chain = self.chain(ob.via);
        if whys.len() == 1 {
            let (rel, why) = whys.into_iter().next().expect("one reason");
            return self.error_for(rel, why, chain);
        }
        let reasons = whys
            .into_iter()
            .map(|(rel, why)| self.short_reason(rel, why))
            .collect();
        ResolveError::Alternatives {
            group: display_group(ob.group),
            chain,
            reasons,
        }
    }

    fn error_for(&self, rel: &Relation, why: Why<'a>, chain: Vec<String>) -> ResolveError {
        match why {
            Why::Missing => ResolveError::Missing {
                name: rel.name.clone(),
                chain,
                suggestions: suggestions(self.index, &rel.name),
            },
            Why::NoVersion => ResolveError::NoVersion {
                relation: rel.to_string(),
                available: self.available(&rel.name),
                chain,
            },
            Why::Clash { pick } => ResolveError::VersionClash {
                relation: rel.to_string(),
                chain,
                chosen: self.pkg(self.picks[pick].id).name_version(),
                chosen_chain: self.reason(pick),
            },
            Why::Conflict(info) => {
                let cand = self.pkg(info.candidate);
                let other = self.pkg(self.picks[info.other].id);
                let declarer = if info.declared_by_candidate {
                    cand
                } else {
                    other
                };
                let mut chain_a = chain;
                chain_a.push(cand.name.clone());
                ResolveError::Conflict {
                    a: cand.name_version(),
                    b: other.name_version(),
                    relation: format!("{} {}: {}", declarer.name, info.field, info.relation),
                    chain_a,
                    chain_b: self.reason(info.other),
                }
            }
            Why::Virtual { providers } => {
                let mut names: Vec<String> = providers
                    .iter()
                    .map(|&id| self.pkg(id).name.clone())
                    .collect();
                names.dedup();
                ResolveError::Virtual {
                    name: rel.name.clone(),
                    providers: names,
                    chain,
                }
            }
        }
    }

    /// One alternative's reason, without the chain (given once for the group).
    fn short_reason(&self, rel: &Relation, why: Why<'a>) -> String {
        match why {
            Why::Missing => format!("{} does not exist", rel.name),
            Why::NoVersion => format!(
                "{rel}: no installable version (available: {})",
                list_or_none(&self.available(&rel.name))
            ),
            Why::Clash { pick } => format!(
                "{rel}: {} is already chosen",
                self.pkg(self.picks[pick].id).name_version()
            ),
            Why::Conflict(info) => {
                let cand = self.pkg(info.candidate);
                let other = self.pkg(self.picks[info.other].id);
                let declarer = if info.declared_by_candidate {
                    cand
                } else {
                    other
                };
                format!(
                    "{} conflicts with {} ({} {}: {})",
                    cand.name_version(),
                    other.name_version(),
                    declarer.name,
                    info.field,
                    info.relation
                )
            }
            Why::Virtual { .. } => format!("{} is a virtual package", rel.name),
        }
    }

    /// Every version of `name` with its architecture, then its providers.
    fn available(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .index
            .versions(name)
            .iter()
            .map(|&id| {
                let p = self.pkg(id);
                format!("{} [{}]", p.version, p.architecture)
            })
            .collect();
        for &id in self.index.providers(name) {
            let p = self.pkg(id);
            for (provided, version) in &p.provides {
                if provided == name {
                    out.push(match version {
                        Some(v) => format!("{} provides {name} (= {v})", p.name_version()),
                        None => format!("{} provides {name}", p.name_version()),
                    });
                }
            }
        }
        out.dedup();
        out
    }
}

/// Up to three names close to `name` (edit distance, then prefix matches),
/// followed by the providers of `name` if it is a virtual package.
fn suggestions(index: &PackageIndex, name: &str) -> Vec<String> {
    let len = name.len();
    let limit = (len / 4).clamp(1, 3);
    let mut scored: Vec<(usize, &str)> = index
        .names()
        .chain(index.virtual_names())
        .filter(|&n| n != name && n.len().abs_diff(len) <= limit)
        .filter_map(|n| {
            let d = strsim::osa_distance(name, n);
            (d <= limit).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.dedup();
    let mut out: Vec<String> = scored.iter().take(3).map(|(_, n)| n.to_string()).collect();
    if out.len() < 3 && name.len() >= 3 {
        let mut prefixed: Vec<&str> = index
            .names()
            .filter(|n| n.len() > name.len() && n.starts_with(name))
            .collect();
        prefixed.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
        for n in prefixed {
            if out.len() == 3 {
                break;
            }
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    let mut providers: Vec<String> = index
        .providers(name)
        .iter()
        .map(|&id| index.get(id).name.clone())
        .collect();
    providers.sort();
    providers.dedup();
    for p in providers {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.name,
            self.version,
            arrows(&self.reason)
        )
    }
}
