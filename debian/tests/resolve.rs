//! Resolver scenarios over the hand-written `fixtures/Packages.small`
//! (origin 0, the release suite) and `fixtures/Packages.small-security`
//! (origin 1, newer versions of a few packages).

use cairn_debian::index::PackageIndex;
use cairn_debian::relation::VersionOp;
use cairn_debian::resolve::{resolve, Request, Resolution, ResolveError, ResolveOptions};
use cairn_debian::version::Version;

const MAIN: &str = include_str!("fixtures/Packages.small");
const SECURITY: &str = include_str!("fixtures/Packages.small-security");
const WANTED: &str = "images/test.yaml: packages";

fn index() -> PackageIndex {
    let mut idx = PackageIndex::new();
    idx.add_packages_file(MAIN, 0, "fixtures/Packages.small")
        .unwrap();
    idx.add_packages_file(SECURITY, 1, "fixtures/Packages.small-security")
        .unwrap();
    idx
}

fn no_essential() -> ResolveOptions {
    ResolveOptions {
        include_essential: false,
        ..ResolveOptions::default()
    }
}

fn req(name: &str) -> Request {
    Request::new(name, WANTED)
}

fn run(names: &[&str], opts: &ResolveOptions) -> Result<Resolution, ResolveError> {
    let roots: Vec<Request> = names.iter().map(|n| req(n)).collect();
    resolve(&index(), &roots, opts)
}

fn ok(names: &[&str]) -> Resolution {
    run(names, &no_essential()).unwrap_or_else(|e| panic!("{names:?}: {e}"))
}

fn names(r: &Resolution) -> Vec<&str> {
    r.packages.iter().map(|p| p.name.as_str()).collect()
}

fn version(r: &Resolution, name: &str) -> String {
    r.get(name)
        .unwrap_or_else(|| panic!("{name} not resolved in {:?}", names(r)))
        .version
        .to_string()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

#[test]
fn fixture_parses() {
    let idx = index();
    assert_eq!(idx.len(), 51 + 2);
    assert_eq!(idx.versions("libssl3").len(), 2);
}

#[test]
fn dependencies_are_followed_sorted_with_reasons() {
    let r = ok(&["docker.io"]);
    assert_eq!(
        names(&r),
        [
            "containerd",
            "docker.io",
            "gcc-12-base",
            "iptables",
            "libc6",
            "libgcc-s1",
            "runc"
        ]
    );
    assert_eq!(r.get("docker.io").unwrap().reason, [WANTED, "docker.io"]);
    // Groups are processed breadth-first in file order: runc is pulled in by
    // docker.io itself before containerd's dependencies are looked at.
    assert_eq!(
        r.get("containerd").unwrap().reason,
        [WANTED, "docker.io", "containerd"]
    );
    assert_eq!(r.get("runc").unwrap().reason, [WANTED, "docker.io", "runc"]);
    assert_eq!(
        r.get("gcc-12-base").unwrap().reason,
        [
            WANTED,
            "docker.io",
            "runc",
            "libc6",
            "libgcc-s1",
            "gcc-12-base"
        ]
    );
    // Recommends are not followed by default.
    assert!(r.get("apparmor").is_none());
    // Ids point at the right index entries.
    let idx = index();
    for p in &r.packages {
        assert_eq!(idx.get(p.id).name, p.name);
        assert_eq!(idx.get(p.id).version, p.version);
    }
}

#[test]
fn first_available_alternative_wins() {
    let r = ok(&["needs-gawk-or-mawk"]);
    assert_eq!(names(&r), ["gawk", "needs-gawk-or-mawk"]);
    let r = ok(&["webapp"]);
    assert_eq!(names(&r), ["httpd-a", "libnew", "webapp"]);
}

#[test]
fn already_chosen_alternative_wins() {
    // mawk is requested; the group "gawk | mawk" is then already satisfied.
    let r = ok(&["needs-gawk-or-mawk", "mawk"]);
    assert_eq!(names(&r), ["mawk", "needs-gawk-or-mawk"]);
    // Also when the provider of the second alternative is pulled in by a
    // plain dependency: groups with alternatives wait until those are done.
    let r = ok(&["tzdata", "needs-cdebconf"]);
    assert_eq!(names(&r), ["cdebconf", "needs-cdebconf", "tzdata"]);
}

#[test]
fn virtual_package_single_and_multiple_providers() {
    // Several providers: Priority decides (mawk is required, gawk optional).
    let r = ok(&["needs-awk"]);
    assert_eq!(names(&r), ["mawk", "needs-awk"]);
    assert_eq!(r.get("mawk").unwrap().reason, [WANTED, "needs-awk", "mawk"]);
    // An already chosen provider satisfies the virtual name.
    let r = ok(&["gawk", "needs-awk"]);
    assert_eq!(names(&r), ["gawk", "needs-awk"]);
    // tzdata: "debconf (>= 0.5) | debconf-2.0" takes the real package.
    let r = ok(&["tzdata"]);
    assert_eq!(names(&r), ["debconf", "tzdata"]);
    // A request for a virtual name with one provider takes it...
    let r = ok(&["c-shell"]);
    assert_eq!(names(&r), ["tcsh"]);
    assert_eq!(r.get("tcsh").unwrap().reason, [WANTED, "tcsh"]);
    // ...with several, the image must choose.
    let e = run(&["awk"], &no_essential()).unwrap_err();
    assert_eq!(
        e,
        ResolveError::Virtual {
            name: "awk".into(),
            providers: vec!["mawk".into(), "gawk".into()],
            chain: vec![WANTED.into()],
        }
    );
    assert_eq!(
        e.to_string(),
        "\"awk\" is a virtual package provided by mawk, gawk; ask for one of them (wanted by images/test.yaml: packages)"
    );
}

#[test]
fn versioned_provides() {
    // foo-abi (>= 2): only libfoo2 provides a version that fits; libfoo1
    // provides 1 and libfoo-any an unversioned foo-abi, which never satisfies
    // a versioned relation.
    let r = ok(&["foo-plugin"]);
    assert_eq!(names(&r), ["foo-plugin", "libfoo2"]);
    // Unversioned: any provider; by name (same priority).
    let r = ok(&["foo-user"]);
    assert_eq!(names(&r), ["foo-user", "libfoo-any"]);
    // A versioned conflict on a virtual name hits only matching provides.
    let r = ok(&["strict-thing", "libfoo-any", "libfoo2"]);
    assert_eq!(names(&r), ["libfoo-any", "libfoo2", "strict-thing"]);
    let e = run(&["strict-thing", "libfoo1"], &no_essential()).unwrap_err();
    assert!(
        matches!(&e, ResolveError::Conflict { a, b, relation, .. }
            if a == "libfoo1 1.0-1" && b == "strict-thing 1.0" && relation == "strict-thing Conflicts: foo-abi (<< 2)"),
        "{e}"
    );
}

#[test]
fn newest_version_across_origins() {
    let r = ok(&["curl"]);
    assert_eq!(version(&r, "libssl3"), "3.0.15-1~deb12u1");
    let idx = index();
    assert_eq!(idx.get(r.get("libssl3").unwrap().id).origin, 1);
    // The same version in two origins: the first origin's copy is used.
    assert_eq!(idx.get(r.get("libc6").unwrap().id).origin, 0);
}

#[test]
fn constraints_choose_older_versions() {
    let r = ok(&["legacy-app"]);
    assert_eq!(version(&r, "libssl3"), "3.0.11-1~deb12u2");
    let r = ok(&["openssl"]);
    assert_eq!(version(&r, "libssl3"), "3.0.11-1~deb12u2");
    // A request with a constraint.
    let roots = [Request {
        name: "libssl3".into(),
        constraint: Some((VersionOp::Lt, v("3.0.15"))),
        wanted_by: WANTED.into(),
    }];
    let r = resolve(&index(), &roots, &no_essential()).unwrap();
    assert_eq!(version(&r, "libssl3"), "3.0.11-1~deb12u2");
    let roots = [Request::parse("libssl3 (>= 3.0.12)", WANTED).unwrap()];
    let r = resolve(&index(), &roots, &no_essential()).unwrap();
    assert_eq!(version(&r, "libssl3"), "3.0.15-1~deb12u1");
}

#[test]
fn backtracks_to_an_older_version() {
    // libssl3 is requested first and gets the newest version; openssl then
    // needs exactly the older one, so the resolver goes back on that choice.
    let r = ok(&["libssl3", "openssl"]);
    assert_eq!(version(&r, "libssl3"), "3.0.11-1~deb12u2");
    assert_eq!(r.get("libssl3").unwrap().reason, [WANTED, "libssl3"]);
}

#[test]
fn backtracks_out_of_an_alternative_that_conflicts() {
    // webapp: "httpd-a | httpd-b"; httpd-a needs libnew, which conflicts
    // with the requested libold: the resolver falls back to httpd-b.
    let r = ok(&["libold", "webapp"]);
    assert_eq!(names(&r), ["httpd-b", "libold", "webapp"]);
    // Without libold the first alternative is taken.
    let r = ok(&["webapp"]);
    assert_eq!(names(&r), ["httpd-a", "libnew", "webapp"]);
}

#[test]
fn missing_package_with_suggestion() {
    let e = run(&["dockr.io"], &no_essential()).unwrap_err();
    assert_eq!(
        e,
        ResolveError::Missing {
            name: "dockr.io".into(),
            chain: vec![WANTED.into()],
            suggestions: vec!["docker.io".into()],
        }
    );
    assert_eq!(
        e.to_string(),
        "package \"dockr.io\" does not exist (wanted by images/test.yaml: packages); did you mean: docker.io?"
    );
    // Prefix matches when nothing is close: "libfoo" -> libfoo1, libfoo2, ...
    let e = run(&["libfoo"], &no_essential()).unwrap_err();
    match e {
        ResolveError::Missing { suggestions, .. } => {
            assert_eq!(suggestions, ["libfoo1", "libfoo2", "libfoo-any"]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_dependency_names_the_chain() {
    let e = run(&["broken-app"], &no_essential()).unwrap_err();
    match &e {
        ResolveError::Missing { name, chain, .. } => {
            assert_eq!(name, "libmissing1");
            assert_eq!(chain, &[WANTED, "broken-app", "helper-tool"]);
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string().starts_with(
            "package \"libmissing1\" does not exist (wanted by images/test.yaml: packages -> broken-app -> helper-tool)"
        ),
        "{e}"
    );
}

#[test]
fn no_alternative_lists_every_reason() {
    let e = run(&["ghostly"], &no_essential()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no alternative of ghost-a | ghost-b can be installed (wanted by images/test.yaml: packages -> ghostly): ghost-a does not exist; ghost-b does not exist"
    );
}

#[test]
fn no_version_lists_what_exists() {
    let roots = [Request::parse("libssl3 (>= 4)", WANTED).unwrap()];
    let e = resolve(&index(), &roots, &no_essential()).unwrap_err();
    assert_eq!(
        e,
        ResolveError::NoVersion {
            relation: "libssl3 (>= 4)".into(),
            available: vec![
                "3.0.15-1~deb12u1 [amd64]".into(),
                "3.0.11-1~deb12u2 [amd64]".into()
            ],
            chain: vec![WANTED.into()],
        }
    );
    assert_eq!(
        e.to_string(),
        "no installable version satisfies libssl3 (>= 4) (available: 3.0.15-1~deb12u1 [amd64], 3.0.11-1~deb12u2 [amd64]; wanted by images/test.yaml: packages)"
    );
}

#[test]
fn version_clash_with_a_fixed_request() {
    let roots = [
        Request::parse("libssl3 (= 3.0.15-1~deb12u1)", WANTED).unwrap(),
        req("openssl"),
    ];
    let e = resolve(&index(), &roots, &no_essential()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "libssl3 (= 3.0.11-1~deb12u2) (wanted by images/test.yaml: packages -> openssl) cannot be satisfied: libssl3 3.0.15-1~deb12u1 is already chosen (for images/test.yaml: packages -> libssl3)"
    );
}

#[test]
fn unsatisfiable_conflict_names_both_chains() {
    let e = run(&["app-a", "app-b"], &no_essential()).unwrap_err();
    assert_eq!(
        e,
        ResolveError::Conflict {
            a: "oldtool 1.0".into(),
            b: "newtool 1.0".into(),
            relation: "newtool Breaks: oldtool (<< 2.0)".into(),
            chain_a: vec![WANTED.into(), "app-b".into(), "oldtool".into()],
            chain_b: vec![WANTED.into(), "app-a".into(), "newtool".into()],
        }
    );
    assert_eq!(
        e.to_string(),
        "oldtool 1.0 (images/test.yaml: packages -> app-b -> oldtool) and newtool 1.0 (images/test.yaml: packages -> app-a -> newtool) cannot be installed together: newtool Breaks: oldtool (<< 2.0)"
    );
    // Declared by the package being added, against a provided name.
    let e = run(&["exim4-daemon-light", "postfix"], &no_essential()).unwrap_err();
    assert!(
        matches!(&e, ResolveError::Conflict { a, b, relation, .. }
            if a == "postfix 3.7.11-0+deb12u1"
                && b == "exim4-daemon-light 4.96-15+deb12u4"
                && relation == "postfix Conflicts: mail-transport-agent"),
        "{e}"
    );
}

#[test]
fn a_package_does_not_conflict_with_its_own_provides() {
    let r = ok(&["exim4-daemon-light"]);
    assert_eq!(names(&r), ["exim4-daemon-light"]);
    // And Breaks on an old version of a package not chosen is harmless.
    let r = ok(&["newtool", "app-a"]);
    assert_eq!(names(&r), ["app-a", "newtool"]);
}

#[test]
fn dependency_cycles_resolve() {
    let r = ok(&["cyc-b"]);
    assert_eq!(names(&r), ["cyc-a", "cyc-b"]);
    assert_eq!(r.get("cyc-a").unwrap().reason, [WANTED, "cyc-b", "cyc-a"]);
    // libc6 <-> libgcc-s1
    let r = ok(&["libgcc-s1"]);
    assert_eq!(names(&r), ["gcc-12-base", "libc6", "libgcc-s1"]);
}

#[test]
fn essential_set_is_included() {
    let r = run(&["cyc-a"], &ResolveOptions::default()).unwrap();
    assert_eq!(
        names(&r),
        [
            "base-files",
            "bash",
            "cyc-a",
            "cyc-b",
            "debianutils",
            "gcc-12-base",
            "libc6",
            "libgcc-s1"
        ]
    );
    assert_eq!(r.get("bash").unwrap().reason, ["Essential set", "bash"]);
    assert_eq!(
        r.get("libc6").unwrap().reason,
        ["Essential set", "bash", "libc6"]
    );
    // A package both requested and Essential keeps the request as its reason.
    let r = run(&["debianutils"], &ResolveOptions::default()).unwrap();
    assert_eq!(
        r.get("debianutils").unwrap().reason,
        [WANTED, "debianutils"]
    );
    // Nothing requested: just the Essential closure.
    let r = resolve(&index(), &[], &ResolveOptions::default()).unwrap();
    assert_eq!(r.packages.len(), 6);
}

#[test]
fn architectures_filter_candidates() {
    // i386 packages are ignored by default, `all` ones are kept.
    let e = run(&["i386only"], &no_essential()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no installable version satisfies i386only (available: 1.0-1 [i386]; wanted by images/test.yaml: packages)"
    );
    let r = ok(&["libz1", "tzdata"]);
    assert_eq!(version(&r, "libz1"), "1:1.2.13-1");
    assert_eq!(version(&r, "tzdata"), "2024a-0+deb12u1");
    let idx = index();
    assert_eq!(idx.get(r.get("libz1").unwrap().id).architecture, "amd64");
    assert_eq!(idx.get(r.get("tzdata").unwrap().id).architecture, "all");
    // Configurable: an i386 resolution takes the i386 versions.
    let opts = ResolveOptions {
        architectures: vec!["i386".into(), "all".into()],
        include_essential: false,
        include_recommends: false,
    };
    let r = run(&["libz1", "i386only", "tzdata", "debconf"], &opts).unwrap();
    assert_eq!(version(&r, "libz1"), "1:1.3-1");
    assert_eq!(idx.get(r.get("libz1").unwrap().id).architecture, "i386");
    assert_eq!(names(&r), ["debconf", "i386only", "libz1", "tzdata"]);
    // ...and then amd64-only packages are not installable.
    let e = run(&["libc6"], &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no installable version satisfies libgcc-s1 (available: 12.2.0-14 [amd64]; wanted by images/test.yaml: packages -> libc6)"
    );
}

#[test]
fn recommends_when_asked_are_soft() {
    let opts = ResolveOptions {
        include_recommends: true,
        ..no_essential()
    };
    // apparmor exists and is taken; nothing-like-this does not and is skipped;
    // "postfix | exim4-daemon-light" takes postfix.
    let r = run(&["with-recs"], &opts).unwrap();
    assert_eq!(
        names(&r),
        ["apparmor", "cyc-a", "cyc-b", "postfix", "with-recs"]
    );
    assert_eq!(
        r.get("apparmor").unwrap().reason,
        [WANTED, "with-recs", "apparmor"]
    );
    // A recommended package that conflicts is left out instead of failing.
    let r = run(&["with-recs", "exim4-daemon-light"], &opts).unwrap();
    assert!(r.get("postfix").is_none());
    assert!(r.get("exim4-daemon-light").is_some());
}

#[test]
fn deterministic() {
    let a = run(
        &["docker.io", "tzdata", "needs-awk", "webapp"],
        &ResolveOptions::default(),
    )
    .unwrap();
    for _ in 0..5 {
        let b = run(
            &["docker.io", "tzdata", "needs-awk", "webapp"],
            &ResolveOptions::default(),
        )
        .unwrap();
        assert_eq!(a, b);
    }
}

/// The pigeonhole problem as packages: `pigeons` requests, each needing one
/// of `holes` packages, where two packages for the same hole conflict
/// (through a provided name). Unsatisfiable when pigeons > holes, and every
/// dead end depends on every earlier choice.
fn pigeonhole(pigeons: usize, holes: usize) -> (PackageIndex, Vec<Request>) {
    let sha = "ab".repeat(32);
    let mut text = String::new();
    let mut roots = Vec::new();
    for p in 0..pigeons {
        let alts: Vec<String> = (0..holes).map(|h| format!("p{p}-in-h{h}")).collect();
        text += &format!(
            "Package: pigeon{p}\nVersion: 1.0\nArchitecture: all\nDepends: {}\nFilename: pool/pigeon{p}.deb\nSize: 1\nSHA256: {sha}\n\n",
            alts.join(" | ")
        );
        for h in 0..holes {
            text += &format!(
                "Package: p{p}-in-h{h}\nVersion: 1.0\nArchitecture: all\nConflicts: hole{h}\nProvides: hole{h}\nFilename: pool/p{p}h{h}.deb\nSize: 1\nSHA256: {sha}\n\n"
            );
        }
        roots.push(req(&format!("pigeon{p}")));
    }
    let mut idx = PackageIndex::new();
    idx.add_packages_file(&text, 0, "generated").unwrap();
    (idx, roots)
}

#[test]
fn search_is_bounded() {
    // 9 pigeons, 8 holes: 8! arrangements to rule out, more than the bound.
    let (idx, roots) = pigeonhole(9, 8);
    let started = std::time::Instant::now();
    let e = resolve(&idx, &roots, &no_essential()).unwrap_err();
    assert!(started.elapsed().as_secs() < 10);
    match &e {
        ResolveError::GaveUp { steps, first } => {
            assert_eq!(*steps, cairn_debian::resolve::MAX_BACKTRACKS);
            assert!(
                matches!(**first, ResolveError::Alternatives { .. }),
                "{first}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .ends_with("(gave up looking for another combination after 5000 attempts)"),
        "{e}"
    );
    // Small enough to search exhaustively: the first dead end is reported.
    let (idx, roots) = pigeonhole(4, 3);
    let e = resolve(&idx, &roots, &no_essential()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no alternative of p3-in-h0 | p3-in-h1 | p3-in-h2 can be installed (wanted by images/test.yaml: packages -> pigeon3): \
         p3-in-h0 1.0 conflicts with p0-in-h0 1.0 (p3-in-h0 Conflicts: hole0); \
         p3-in-h1 1.0 conflicts with p1-in-h1 1.0 (p3-in-h1 Conflicts: hole1); \
         p3-in-h2 1.0 conflicts with p2-in-h2 1.0 (p3-in-h2 Conflicts: hole2)"
    );
    // Solvable: as many pigeons as holes.
    let (idx, roots) = pigeonhole(5, 5);
    let r = resolve(&idx, &roots, &no_essential()).unwrap();
    assert_eq!(r.packages.len(), 10);
}

#[test]
fn backjumps_over_unrelated_choices() {
    // Many unrelated choices (two versions each) made before a dead end that
    // only one early choice can fix: chronological backtracking would try
    // 2^14 combinations of the unrelated ones first.
    let sha = "ab".repeat(32);
    let para = |name: &str, version: &str, extra: &str| {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/{name}_{version}.deb\nSize: 1\nSHA256: {sha}\n\n"
        )
    };
    let mut text = String::new();
    // tool 2.0 (preferred) needs late-lib, which conflicts with blocker.
    text += &para("tool", "2.0", "Depends: late-lib\n");
    text += &para("tool", "1.0", "");
    text += &para("late-lib", "1.0", "Conflicts: blocker\n");
    text += &para("blocker", "1.0", "");
    let mut roots = vec![req("tool")];
    for i in 0..14 {
        text += &para(&format!("p{i}"), "1.0", "");
        text += &para(&format!("p{i}"), "2.0", "");
        roots.push(req(&format!("p{i}")));
    }
    roots.push(req("blocker"));
    let mut idx = PackageIndex::new();
    idx.add_packages_file(&text, 0, "generated").unwrap();
    let r = resolve(&idx, &roots, &no_essential()).unwrap();
    assert_eq!(r.get("tool").unwrap().version.to_string(), "1.0");
    assert!(r.get("late-lib").is_none());
    // The unrelated choices keep their preferred (newest) versions.
    assert!(r
        .packages
        .iter()
        .filter(|p| p.name.starts_with('p'))
        .all(|p| p.version.to_string() == "2.0"));
}
