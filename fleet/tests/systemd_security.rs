//! The agent writes files that systemd runs as root: the units directory
//! and the unit names are checked before anything is written. Planted
//! symlinks (on the path, as the directory, inside it), directories others
//! can write to or own, and hostile unit names are refused or defused.
//! Runs anywhere; the ownership cases need root and say so when skipped.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_fleet::systemd::{
    DbusOptions, DbusUnitManager, SimOptions, SimUnitManager, SystemdError, UnitManager, UnitsDir,
};

const UNIT: &str = "[Service]\nExecStart=/bin/sleep 30\n";

const HOSTILE: &[&str] = &[
    "",
    ".",
    "..",
    "../escape.service",
    "../../etc/systemd/system/evil.service",
    "a/b.service",
    "/etc/systemd/system/evil.service",
    "evil.service/",
    ".hidden.service",
    "..service",
    "nul\0.service",
    "new\nline.service",
    "space .service",
    "noext",
    "evil.conf",
];

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn unsafe_dir(e: SystemdError) -> String {
    match e {
        SystemdError::UnsafeDir { .. } => e.to_string(),
        other => panic!("expected UnsafeDir, got {other:?}"),
    }
}

/// Every file under `root` (symlinks not followed).
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn creates_missing_directories_with_safe_modes() {
    let t = tmp();
    let path = t.path().join("run/fleet/units");
    let dir = UnitsDir::open(&path).unwrap();
    assert_eq!(dir.path(), path);
    for p in [
        t.path().join("run"),
        t.path().join("run/fleet"),
        path.clone(),
    ] {
        let md = fs::symlink_metadata(&p).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.mode() & 0o022, 0, "{}: {:o}", p.display(), md.mode());
        assert_eq!(md.uid(), rustix::process::geteuid().as_raw());
    }
    dir.write("a.service", UNIT.as_bytes()).unwrap();
    let md = fs::symlink_metadata(path.join("a.service")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o777, 0o644);
    assert_eq!(fs::read_to_string(path.join("a.service")).unwrap(), UNIT);
    // Only the unit: no temporary file left behind.
    assert_eq!(tree(&path), [path.join("a.service")]);
    assert_eq!(dir.list().unwrap(), ["a.service"]);
}

#[test]
fn the_directory_itself_as_a_planted_symlink_is_refused() {
    let t = tmp();
    let target = t.path().join("etc-systemd-system");
    fs::create_dir(&target).unwrap();
    fs::create_dir(t.path().join("fleet")).unwrap();
    let units = t.path().join("fleet/units");
    symlink(&target, &units).unwrap();
    let e = unsafe_dir(UnitsDir::open(&units).unwrap_err());
    assert!(e.contains("is a symlink"), "{e}");
    assert!(e.contains(&units.display().to_string()), "{e}");
    // Refused, not replaced, and nothing written through it.
    assert!(fs::symlink_metadata(&units)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(tree(&target).is_empty());
}

#[test]
fn a_symlink_anywhere_on_the_path_is_refused() {
    let t = tmp();
    let real = t.path().join("real");
    fs::create_dir_all(real.join("units")).unwrap();
    symlink(&real, t.path().join("link")).unwrap();
    let e = unsafe_dir(UnitsDir::open(t.path().join("link/units")).unwrap_err());
    assert!(e.contains("link is a symlink"), "{e}");
    // A dangling one too (it would otherwise be created through).
    symlink(t.path().join("nowhere"), t.path().join("dangling")).unwrap();
    let e = unsafe_dir(UnitsDir::open(t.path().join("dangling/units")).unwrap_err());
    assert!(e.contains("dangling is a symlink"), "{e}");
    assert!(!t.path().join("nowhere").exists());
    // And a file where a directory should be.
    fs::write(t.path().join("file"), "").unwrap();
    let e = unsafe_dir(UnitsDir::open(t.path().join("file/units")).unwrap_err());
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn relative_dot_dot_and_non_utf8_paths_are_refused() {
    let e = unsafe_dir(UnitsDir::open("run/fleet/units").unwrap_err());
    assert!(e.contains("absolute"), "{e}");
    let t = tmp();
    let e = unsafe_dir(UnitsDir::open(t.path().join("a/../units")).unwrap_err());
    assert!(e.contains("'..'"), "{e}");
    let latin1 = t.path().join(OsStr::from_bytes(b"caf\xe9"));
    let e = unsafe_dir(UnitsDir::open(&latin1).unwrap_err());
    assert!(e.contains("UTF-8"), "{e}");
    assert!(!latin1.exists());
}

#[test]
fn directories_others_can_write_are_refused() {
    let t = tmp();
    let units = t.path().join("units");
    fs::create_dir(&units).unwrap();
    for mode in [0o777, 0o775, 0o757, 0o1777] {
        fs::set_permissions(&units, fs::Permissions::from_mode(mode)).unwrap();
        let e = unsafe_dir(UnitsDir::open(&units).unwrap_err());
        assert!(e.contains("writable by group or others"), "{mode:o}: {e}");
    }
    // A parent others can write to, and not sticky: they could swap the
    // units directory under us.
    let parent = t.path().join("open");
    fs::create_dir_all(parent.join("units")).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    let e = unsafe_dir(UnitsDir::open(parent.join("units")).unwrap_err());
    assert!(e.contains("not sticky"), "{e}");
    // Sticky (like /tmp): allowed, since only owners may rename in it.
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
    UnitsDir::open(parent.join("units")).unwrap();
}

#[test]
fn directories_owned_by_someone_else_are_refused() {
    if !is_root() {
        eprintln!("SKIP directories_owned_by_someone_else_are_refused: needs root to chown");
        return;
    }
    let t = tmp();
    let nobody = rustix::fs::Uid::from_raw(65534);
    let units = t.path().join("units");
    fs::create_dir(&units).unwrap();
    fs::set_permissions(&units, fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::chown(&units, Some(nobody), None).unwrap();
    let e = unsafe_dir(UnitsDir::open(&units).unwrap_err());
    assert!(e.contains("belongs to uid 65534"), "{e}");

    let parent = t.path().join("theirs");
    fs::create_dir_all(parent.join("units")).unwrap();
    rustix::fs::chown(&parent, Some(nobody), None).unwrap();
    let e = unsafe_dir(UnitsDir::open(parent.join("units")).unwrap_err());
    assert!(e.contains("could replace what lies below it"), "{e}");
}

#[test]
fn a_planted_symlink_inside_is_replaced_not_written_through() {
    let t = tmp();
    let victim = t.path().join("shadow");
    fs::write(&victim, "root:secret\n").unwrap();
    let units = t.path().join("units");
    let dir = UnitsDir::open(&units).unwrap();
    symlink(&victim, units.join("a.service")).unwrap();
    // Listed? No: only regular files are units.
    assert!(dir.list().unwrap().is_empty());
    // Read? Refused, not followed.
    assert!(dir.read("a.service").is_err());

    dir.write("a.service", UNIT.as_bytes()).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root:secret\n");
    let md = fs::symlink_metadata(units.join("a.service")).unwrap();
    assert!(md.is_file(), "the symlink was replaced by the unit file");
    assert_eq!(dir.read("a.service").unwrap().unwrap(), UNIT.as_bytes());

    // Removing a planted symlink removes the link, not its target.
    symlink(&victim, units.join("b.service")).unwrap();
    assert!(dir.remove("b.service").unwrap());
    assert!(victim.exists());
    assert!(!dir.remove("b.service").unwrap());
}

#[test]
fn leftover_temporary_files_are_cleaned_and_strays_ignored() {
    let t = tmp();
    let units = t.path().join("units");
    let dir = UnitsDir::open(&units).unwrap();
    fs::write(units.join(".a.service.123.0.tmp"), "half").unwrap();
    fs::write(units.join("README"), "not a unit").unwrap();
    fs::create_dir(units.join("d.service")).unwrap();
    dir.write("b.service", b"").unwrap();
    assert_eq!(dir.list().unwrap(), ["b.service"]);
    assert!(!units.join(".a.service.123.0.tmp").exists());
    assert!(units.join("README").exists());
}

#[test]
fn oversized_unit_files_are_refused() {
    let t = tmp();
    let dir = UnitsDir::open(t.path().join("units")).unwrap();
    let big = vec![b'#'; cairn_fleet::systemd::MAX_UNIT_FILE + 1];
    let e = dir.write("big.service", &big).unwrap_err();
    assert!(e.to_string().contains("big.service"), "{e}");
    assert!(dir.list().unwrap().is_empty());
    assert!(tree(&t.path().join("units")).is_empty());
}

#[test]
fn hostile_unit_names_touch_nothing() {
    let t = tmp();
    let units = t.path().join("a/units");
    let dir = UnitsDir::open(&units).unwrap();
    let before = tree(t.path());
    for name in HOSTILE {
        for e in [
            dir.write(name, UNIT.as_bytes()).unwrap_err(),
            dir.remove(name).unwrap_err(),
            dir.read(name).unwrap_err(),
        ] {
            assert!(matches!(e, SystemdError::BadName { .. }), "{name:?}: {e:?}");
        }
    }
    assert_eq!(tree(t.path()), before);
}

#[tokio::test]
async fn hostile_unit_names_are_refused_by_the_managers() {
    let sim = SimUnitManager::new(SimOptions::default());
    for name in HOSTILE {
        let e = sim.load(name, UNIT).await.unwrap_err();
        assert!(matches!(e, SystemdError::BadName { .. }), "{name:?}: {e}");
    }
    assert!(sim.states().is_empty());
}

/// The D-Bus backend checks its directory before it connects: a planted
/// symlink is refused even where no systemd (no bus) exists.
#[tokio::test]
async fn the_dbus_backend_refuses_a_planted_units_directory() {
    let t = tmp();
    let target = t.path().join("target");
    fs::create_dir(&target).unwrap();
    let units = t.path().join("units");
    symlink(&target, &units).unwrap();
    let options = DbusOptions {
        units_dir: units.clone(),
        address: Some(format!("unix:path={}", t.path().join("no-bus").display())),
        ..DbusOptions::default()
    };
    let e = match DbusUnitManager::connect(options).await {
        Ok(_) => panic!("connected through a planted symlink"),
        Err(e) => e,
    };
    let e = unsafe_dir(e);
    assert!(e.contains("is a symlink"), "{e}");

    // With a sound directory, the failure is the missing bus, named.
    let options = DbusOptions {
        units_dir: t.path().join("sound"),
        address: Some(format!("unix:path={}", t.path().join("no-bus").display())),
        ..DbusOptions::default()
    };
    let e = match DbusUnitManager::connect(options).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(
        matches!(
            e,
            SystemdError::Bus {
                call: "connect",
                ..
            }
        ),
        "{e:?}"
    );
}
