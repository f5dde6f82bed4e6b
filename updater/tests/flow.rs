//! The real update flow against a loopback HTTP server, with slots as
//! plain files and the ESP as a folder: v1 → v2 → v3, resume after a cut
//! connection, refusals (tampered part, bad signature, wrong key, expired,
//! older, other name, too small a slot), rollback detection, and power cuts
//! (the agent process aborted at many points of its writes).

mod common;

use std::fs;
use std::process::Command;

use cairn_formats::channel::keys::{SecretKey, TrustedKeys};
use cairn_formats::channel::manifest::{sign, Manifest};
use cairn_updater::agent::Outcome;
use cairn_updater::state::{Event, Phase, State};
use cairn_updater::Slot;
use common::*;

const ROOTFS: usize = 3 * (1 << 20) + 12_345;

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

struct World {
    _t: tempfile::TempDir,
    server: Server,
    m: Machine,
    bundles: std::path::PathBuf,
}

fn world() -> World {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = Machine::new(
        &t.path().join("machine"),
        &server,
        &key(),
        "1",
        &bytes(1, 2 << 20),
    );
    let bundles = t.path().join("bundles");
    World {
        server,
        m,
        bundles,
        _t: t,
    }
}

/// An old entry for slot b (version 0.9) with its ESP folder, as a
/// previous update would have left it.
fn old_b_entry(m: &Machine) {
    let esp = &m.paths.esp;
    fs::create_dir_all(esp.join("cairn/0.9")).unwrap();
    fs::write(esp.join("cairn/0.9/vmlinuz"), b"old").unwrap();
    fs::write(
        esp.join("loader/entries/cairn-0.9+0-3.conf"),
        "title default 0.9 (slot b)\nversion 0.9\nlinux /cairn/0.9/vmlinuz\noptions cairn.slot=b console=ttyS0\n",
    )
    .unwrap();
}

fn check_staged(m: &Machine, b: &Built, slot: &str, version: &str) {
    let n = b.rootfs.len();
    assert_eq!(
        sha_prefix(&m.slot(slot), n),
        sha(&b.rootfs),
        "slot {slot} holds {version}"
    );
    let kdir = m.paths.esp.join("cairn").join(version);
    assert_eq!(read(&kdir.join("vmlinuz")), b.kernel);
    assert_eq!(read(&kdir.join("initrd.img")), b.initrd);
}

#[test]
fn v1_to_v2_to_v3() {
    let w = world();
    let m = &w.m;
    old_b_entry(m);
    let running_entry = m.entry_text("cairn-1.conf");
    let slot_a_before = read(&m.slot("a"));
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    // a machine cairn serve installed: the installer's hand-off names its MAC
    let handoff = m.paths.esp.join("cairn/install.json");
    fs::write(
        &handoff,
        br#"{"server": "http://192.0.2.1:8080", "mac": "52-54-00-00-0E-01"}"#,
    )
    .unwrap();

    let out = m.agent().apply().unwrap();
    assert_eq!(
        out,
        Outcome::Staged {
            version: "2".into(),
            slot: Slot::B,
            entry: "cairn-2+3.conf".into()
        }
    );
    check_staged(m, &v2, "b", "2");
    // the old b entry and its kernel folder are gone; the running entry,
    // its kernel and slot a are untouched
    assert_eq!(m.entries(), ["cairn-1.conf", "cairn-2+3.conf"]);
    assert!(!m.paths.esp.join("cairn/0.9").exists());
    assert_eq!(m.entry_text("cairn-1.conf"), running_entry);
    assert_eq!(read(&m.paths.esp.join("cairn/1/vmlinuz")), b"v1 kernel");
    assert_eq!(read(&m.slot("a")), slot_a_before);
    assert_eq!(
        m.entry_text("cairn-2+3.conf"),
        "title default 2 (slot b)\nversion 2\nsort-key default\nlinux /cairn/2/vmlinuz\ninitrd /cairn/2/initrd.img\noptions cairn.slot=b console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0\n"
    );
    let st = m.agent().state().unwrap();
    assert!(matches!(&st.phase, Phase::Staged { version, slot: Slot::B, .. } if version == "2"));
    // every channel request (manifest, signature, parts) carried the machine's rollout seed and
    // the MAC the server knows it by, so a rollout places both the same way
    let seed = cairn_formats::channel::rollout::machine_seed("0123456789abcdef0123456789abcdef")
        .to_string();
    let log = w.server.log();
    assert!(
        log.iter().any(|s| s.path.ends_with("/rootfs.squashfs")),
        "{log:?}"
    );
    for s in &log {
        assert_eq!(s.seed.as_deref(), Some(seed.as_str()), "{s:?}");
        assert_eq!(s.machine.as_deref(), Some("52:54:00:00:0e:01"), "{s:?}");
    }
    // the hand-off is not one of the ESP's kernel folders: the agent leaves it
    assert!(handoff.is_file());
    // no leftovers: downloads removed, no temp files on the ESP
    assert!(!m.paths.download_dir().exists());
    // a second apply in the same boot: already staged, nothing rewritten
    assert_eq!(
        m.agent().apply().unwrap(),
        Outcome::AlreadyStaged {
            version: "2".into(),
            slot: Slot::B
        }
    );

    // reboot into b: trial, then the health gate commits
    m.reboot_into("b", "2", "boot-2");
    let (_, st) = m.agent().observe_boot().unwrap();
    assert!(matches!(&st.phase, Phase::Trial { version, slot: Slot::B, .. } if version == "2"));
    // no update while on trial (slot a is the fallback)
    let v3 = build(&w.bundles, "default", "3", &key(), ROOTFS - 1000);
    w.server.serve(&v3.root);
    assert_eq!(
        m.agent().apply().unwrap(),
        Outcome::TrialInProgress {
            version: "2".into(),
            slot: Slot::B
        }
    );
    assert_eq!(read(&m.slot("a")), slot_a_before);
    cairn_updater::state::transition(
        &m.paths.state_file(),
        Event::HealthPassed { running: Slot::B },
    )
    .unwrap();
    // systemd-bless-boot renames the entry
    fs::rename(
        m.paths.esp.join("loader/entries/cairn-2+3.conf"),
        m.paths.esp.join("loader/entries/cairn-2.conf"),
    )
    .unwrap();
    let b_entry = m.entry_text("cairn-2.conf");

    // v2 -> v3 goes back into slot a
    let out = m.agent().apply().unwrap();
    assert_eq!(
        out,
        Outcome::Staged {
            version: "3".into(),
            slot: Slot::A,
            entry: "cairn-3+3.conf".into()
        }
    );
    check_staged(m, &v3, "a", "3");
    assert_eq!(m.entries(), ["cairn-2.conf", "cairn-3+3.conf"]);
    assert_eq!(m.entry_text("cairn-2.conf"), b_entry);
    assert!(m
        .entry_text("cairn-3+3.conf")
        .contains("options cairn.slot=a console=tty0"));
    assert!(
        !m.paths.esp.join("cairn/1").exists(),
        "v1's kernel went with its entry"
    );
    check_staged(m, &v2, "b", "2");

    // status, through the binary
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("running:  default 2 from slot b"), "{text}");
    assert!(text.contains("update:   3 staged in slot a"), "{text}");
    assert!(text.contains("entry:    cairn-3+3.conf (slot a)"), "{text}");
}

#[test]
fn a_cut_connection_is_resumed_with_range() {
    let w = world();
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    // the first two rootfs responses stop early
    w.server.cut("rootfs.squashfs", 2, 1_000_000);
    m_apply_ok(&w.m);
    check_staged(&w.m, &v2, "b", "2");
    let ranges: Vec<Option<String>> = w
        .server
        .log()
        .into_iter()
        .filter(|s| s.path.ends_with("/rootfs.squashfs"))
        .map(|s| s.range)
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=1000000-".into()),
            Some("bytes=2000000-".into())
        ]
    );
}

fn m_apply_ok(m: &Machine) {
    match m.agent().apply() {
        Ok(Outcome::Staged { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// Everything a refused update must leave as it was.
struct Snapshot {
    slot_a: String,
    slot_b: String,
    entries: Vec<String>,
    texts: Vec<String>,
}

fn snapshot(m: &Machine) -> Snapshot {
    let entries = m.entries();
    Snapshot {
        slot_a: sha(&read(&m.slot("a"))),
        slot_b: sha(&read(&m.slot("b"))),
        texts: entries.iter().map(|e| m.entry_text(e)).collect(),
        entries,
    }
}

fn assert_untouched(m: &Machine, s: &Snapshot, what: &str) {
    assert_eq!(sha(&read(&m.slot("a"))), s.slot_a, "{what}: slot a");
    assert_eq!(sha(&read(&m.slot("b"))), s.slot_b, "{what}: slot b");
    assert_eq!(m.entries(), s.entries, "{what}: entries");
    let texts: Vec<String> = s.entries.iter().map(|e| m.entry_text(e)).collect();
    assert_eq!(texts, s.texts, "{what}: entry texts");
}

#[test]
fn refusals_leave_both_slots_and_entries_untouched() {
    let w = world();
    let m = &w.m;
    old_b_entry(m);
    let before = snapshot(m);
    let other_key = SecretKey::from_seed([43; 32]);

    type Case = (
        &'static str,
        Box<dyn Fn(&World) -> std::path::PathBuf>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "tampered part",
            Box::new(|w: &World| {
                let b = build(&w.bundles, "default", "2", &key(), ROOTFS);
                let p = b.root.join("rootfs.squashfs");
                let mut d = read(&p);
                d[ROOTFS / 2] ^= 1;
                fs::remove_file(&p).unwrap(); // it is a hard link to the build's file
                fs::write(&p, d).unwrap();
                b.root
            }),
            "SHA-256",
        ),
        (
            "tampered manifest",
            Box::new(|w: &World| {
                let b = build(&w.bundles, "default", "2", &key(), ROOTFS);
                let p = b.root.join("manifest.json");
                let t = fs::read_to_string(&p)
                    .unwrap()
                    .replace("\"stable\"", "\"stable\" ");
                fs::write(&p, t).unwrap();
                b.root
            }),
            "does not verify",
        ),
        (
            "wrong key",
            Box::new(move |w: &World| build(&w.bundles, "default", "2", &other_key, ROOTFS).root),
            "not among the trusted keys",
        ),
        (
            "expired",
            Box::new(|w: &World| {
                let b = build(&w.bundles, "default", "2", &key(), ROOTFS);
                let p = b.root.join("manifest.json");
                let mut man = Manifest::parse(&read(&p)).unwrap();
                man.created = "2020-01-01T00:00:00Z".into();
                man.expires = "2020-02-01T00:00:00Z".into();
                let bytes = man.to_bytes();
                fs::write(&p, &bytes).unwrap();
                fs::write(b.root.join("manifest.sig"), sign(&bytes, &key())).unwrap();
                b.root
            }),
            "expired",
        ),
        (
            "older version",
            Box::new(|w: &World| build(&w.bundles, "default", "0.9", &key(), ROOTFS).root),
            "not newer",
        ),
        (
            "equal version",
            Box::new(|w: &World| build(&w.bundles, "default", "1", &key(), ROOTFS).root),
            "not newer",
        ),
        (
            "other image",
            Box::new(|w: &World| build(&w.bundles, "other", "2", &key(), ROOTFS).root),
            "image \"other\"",
        ),
        (
            "slot too small",
            Box::new(|w: &World| build(&w.bundles, "default", "2", &key(), (6 << 20) + 1).root),
            "not enough space on slot b",
        ),
    ];
    for (what, make, want) in cases {
        let _ = fs::remove_dir_all(&w.bundles);
        let root = make(&w);
        w.server.serve(&root);
        let r = m.agent().apply();
        let e = match r {
            Ok(Outcome::UpToDate { .. }) if want == "not newer" => {
                // an old or equal version is not an error, just nothing to do
                assert_untouched(m, &before, what);
                continue;
            }
            Ok(o) => panic!("{what}: accepted: {o:?}"),
            Err(e) => e,
        };
        assert!(e.to_string().contains(want), "{what}: {e}");
        assert_untouched(m, &before, what);
        let st = m.agent().state().unwrap();
        let f = st.last_failure.expect(what);
        assert!(f.reason.contains(want), "{what}: state says {}", f.reason);
        assert!(matches!(st.phase, Phase::Idle), "{what}: {:?}", st.phase);
        assert!(
            !m.paths.esp.join("cairn/2").exists(),
            "{what}: nothing written to the ESP"
        );
    }
    // and then a good bundle goes through
    let _ = fs::remove_dir_all(&w.bundles);
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    m_apply_ok(m);
    check_staged(m, &v2, "b", "2");
    assert_eq!(m.agent().state().unwrap().last_failure, None);
}

#[test]
fn power_cuts_during_the_writes_never_leave_a_bootable_half_slot() {
    let w = world();
    let m = &w.m;
    old_b_entry(m);
    let running_entry = m.entry_text("cairn-1.conf");
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    let total = (v2.rootfs.len() + v2.kernel.len() + v2.initrd.len()) as u64;
    let r = v2.rootfs.len() as u64;
    let k = v2.kernel.len() as u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("power-cut seed {seed}");
    let random = bytes(seed, 8);
    let mut points = vec![1, r / 3, r - 1, r + k / 2, r + k + 10, total - 1];
    // and two random points anywhere in the writes
    points.push(1 + u64::from(random[0]) * (total - 2) / 255);
    points.push(1 + u64::from(random[1]) * u64::from(random[2]) * (total - 2) / (255 * 255));
    for (i, at) in points.iter().enumerate() {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
            .args(m.cli_args())
            .args(["apply", "--no-reboot"])
            .env("CAIRN_UPDATE_TEST_ABORT_AFTER", at.to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "cut {i} at {at}: the agent finished: {err}"
        );
        assert!(
            err.contains("test hook: aborting"),
            "cut {i} at {at}: {err}"
        );
        // the running entry is intact, slot b has no entry at all
        assert_eq!(m.entry_text("cairn-1.conf"), running_entry, "cut {i}");
        assert_eq!(m.entries(), ["cairn-1.conf"], "cut {i} at {at}");
        let st = m.agent().state().unwrap();
        assert!(
            matches!(&st.phase, Phase::Downloading { version, slot: Slot::B } if version == "2"),
            "cut {i}: {:?}",
            st.phase
        );
        // status says what is going on
        let s = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
            .args(m.cli_args())
            .arg("status")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&s.stdout);
        assert!(text.contains("downloading 2 into slot b"), "{text}");
    }
    // the next apply resumes and completes
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .args(["apply", "--no-reboot"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("staged 2 in slot b"));
    check_staged(m, &v2, "b", "2");
    assert_eq!(m.entries(), ["cairn-1.conf", "cairn-2+3.conf"]);
    assert_eq!(m.entry_text("cairn-1.conf"), running_entry);
    // the parts were downloaded once: the cut runs reused the verified files
    let gets = w
        .server
        .log()
        .iter()
        .filter(|s| s.path.ends_with("/rootfs.squashfs"))
        .count();
    assert_eq!(gets, 1, "rootfs downloaded once");
}

/// v2 is staged in slot b; the machine reboots, but systemd-boot falls
/// back to slot a (v2's tries ran out): same slot, new boot id.
fn fell_back_from_v2(w: &World) {
    let m = &w.m;
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    m_apply_ok(m);
    fs::rename(
        m.paths.esp.join("loader/entries/cairn-2+3.conf"),
        m.paths.esp.join("loader/entries/cairn-2+0-3.conf"),
    )
    .unwrap();
    m.reboot_into("a", "1", "boot-2");
}

/// `cairn-update health` through the binary, the checks not retried and
/// no entry marked bad.
fn health(m: &Machine) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .args(["health", "--timeout-secs", "0", "--no-bless"])
        .output()
        .unwrap()
}

#[test]
fn rollbacks_are_detected_and_reported() {
    let w = world();
    let m = &w.m;
    fell_back_from_v2(&w);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("update:   rolled back from 2 (slot b)")
            && text.contains("slot a runs instead of slot b")
            && text.contains("entry cairn-2+0-3.conf: no tries left after 3 failed boots"),
        "{text}"
    );
    // the same version is not tried again
    let e = m.agent().apply().unwrap_err();
    assert!(e.to_string().contains("rolled back on this machine"), "{e}");

    // a trial whose health gate failed, then the fallback
    let st = State {
        phase: Phase::Trial {
            version: "2".into(),
            slot: Slot::B,
            health: None,
        },
        ..State::default()
    };
    st.save(&m.paths.state_file()).unwrap();
    m.reboot_into("b", "2", "boot-3");
    let agent = m.agent();
    agent.observe_boot().unwrap();
    cairn_updater::state::transition(
        &m.paths.state_file(),
        Event::HealthFailed {
            running: Slot::B,
            reason: "failed units: etcd.service".into(),
        },
    )
    .unwrap();
    m.reboot_into("a", "1", "boot-4");
    let r = m.agent().status().unwrap();
    let text = r.to_string();
    assert!(
        text.contains("rolled back from 2 (slot b)")
            && text.contains("health gate failed on slot b: failed units: etcd.service"),
        "{text}"
    );
}

/// An install server on 127.0.0.1 that takes every report (HTTP 204)
/// and keeps their bodies.
fn report_sink() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            keep.lock().unwrap().push(String::from_utf8(body).unwrap());
            let _ = conn.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, got)
}

/// A machine `cairn serve` installed tells the server once that an update
/// rolled back, on the first `cairn-update health` that can: the server
/// down then, on the next one.
#[test]
fn a_rollback_is_reported_to_the_install_server_once() {
    let w = world();
    let m = &w.m;
    fell_back_from_v2(&w);
    let handoff = |server: &str| {
        fs::write(
            m.paths.esp.join("cairn/install.json"),
            format!(r#"{{"server": "{server}", "mac": "52-54-00-00-0E-01"}}"#),
        )
        .unwrap()
    };
    let health = || String::from_utf8_lossy(&health(m).stdout).into_owned();
    // the server is down on the boot that finds the rollback: not marked told
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}", down.local_addr().unwrap());
    drop(down);
    handoff(&down_url);
    let out = health();
    assert!(!out.contains("rolled back"), "{out}");
    let st = m.agent().state().unwrap();
    assert!(matches!(&st.phase, Phase::RolledBack { version, .. } if version == "2"));
    assert_eq!(st.rollback_reported, None);
    // up on the next run: told, with the version it went back to and why
    let (url, got) = report_sink();
    handoff(&url);
    let out = health();
    assert!(
        out.contains("reported to the install server: 2 rolled back"),
        "{out}"
    );
    let rolled: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "rolled-back")
        .collect();
    assert_eq!(rolled.len(), 1, "{:?}", got.lock().unwrap());
    let r = &rolled[0];
    assert_eq!(r["mac"], "52:54:00:00:0e:01");
    assert_eq!(r["version"], "2");
    assert_eq!(r["to_version"], "1");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("slot a runs instead of slot b"), "{reason}");
    assert_eq!(
        m.agent().state().unwrap().rollback_reported.as_deref(),
        Some("2")
    );
    // and not again
    let before = got.lock().unwrap().len();
    let out = health();
    assert!(!out.contains("rolled back"), "{out}");
    let again = got.lock().unwrap()[before..]
        .iter()
        .filter(|b| b.contains("rolled-back"))
        .count();
    assert_eq!(again, 0);
}

/// A machine `cairn serve` did not install (its disk written by other
/// means: no hand-off on the ESP) is known to its update server by the MAC
/// address of its default route's interface: channel requests name it, and
/// `cairn-update health` reports to that server.
#[test]
fn a_machine_the_server_did_not_install_names_itself_by_its_default_route() {
    let w = world();
    let m = &w.m;
    let net = &m.paths.sys_class_net;
    fs::create_dir_all(net.join("enp0s2")).unwrap();
    fs::write(net.join("enp0s2/address"), "52:54:00:12:34:56\n").unwrap();
    let route = |text: &str| fs::write(&m.paths.proc_net_route, text).unwrap();
    let header =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
    route(&format!(
        "{header}enp0s2\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
         enp0s2\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    ));
    fell_back_from_v2(&w);
    let log = w.server.log();
    assert!(!log.is_empty());
    for s in &log {
        assert_eq!(s.machine.as_deref(), Some("52:54:00:12:34:56"), "{s:?}");
    }
    // reports go to the update server (here a report sink standing in for cairn serve)
    let (url, got) = report_sink();
    let conf = fs::read_to_string(&m.paths.config).unwrap();
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.starts_with("SERVER=") {
                format!("SERVER={url}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&m.paths.config, conf).unwrap();
    let out = String::from_utf8_lossy(&health(m).stdout).into_owned();
    assert!(
        out.contains("reported to the install server: 2 rolled back"),
        "{out}"
    );
    let bodies = got.lock().unwrap().clone();
    let rolled: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "rolled-back")
        .collect();
    assert_eq!(rolled.len(), 1, "{bodies:?}");
    assert_eq!(rolled[0]["mac"], "52:54:00:12:34:56");

    // hostile or missing routes: no name, no report, no error
    for bad in [
        format!("{header}../../etc\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"),
        format!("{header}enp0s2\t00000000\t0102000A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"),
        header.to_string(),
    ] {
        route(&bad);
        assert_eq!(m.agent().server_identity(), None, "{bad}");
    }
}

/// A diskless machine (`cairn.report=`, no slot) reports its boot and
/// health verdict to the server that netbooted it; a failed gate fails the
/// unit (so it reboots into the server's earlier image) only on a trial
/// with such an image (`cairn.report.trial=1`).
#[test]
fn a_diskless_machine_reports_to_the_server_that_netbooted_it() {
    let w = world();
    let m = &w.m;
    let (url, got) = report_sink();
    let health = |cmdline: &str| {
        fs::write(&m.paths.cmdline, cmdline).unwrap();
        health(m)
    };
    let events = || -> Vec<serde_json::Value> {
        got.lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    };
    let base = format!(
        "console=ttyS0 cairn.verity=x cairn.report={url} cairn.report.mac=52-54-00-00-0D-01"
    );
    // no earlier image to go back to: reported, the unit does not fail
    let out = health(&base);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = events();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[0]["event"], "booted");
    assert_eq!(e[0]["source"], "ram");
    assert_eq!(e[0]["image"], "default");
    assert_eq!(e[0]["version"], "1");
    assert_eq!(e[0]["mac"], "52:54:00:00:0d:01");
    assert_eq!(e[0]["machine_id"], "0123456789abcdef0123456789abcdef");
    // this host runs no systemd: the gate fails, and says why
    assert_eq!(e[1]["event"], "unhealthy");
    assert!(
        e[1]["reason"].as_str().unwrap().contains("systemctl"),
        "{e:?}"
    );
    // the state file of a disk machine is not touched
    assert!(!m.paths.state_file().exists());
    // a trial with an earlier image: the unit fails (FailureAction=reboot)
    let out = health(&format!("{base} cairn.report.trial=1"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(events().len(), 4);
    // cairn.report= without the MAC, or with a bad one: refused, naming
    // the key
    for bad in ["", " cairn.report.mac=nope"] {
        let out = health(&format!("console=ttyS0 cairn.report={url}{bad}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("cairn.report.mac="), "{err}");
    }
    assert_eq!(events().len(), 4);
}

#[test]
fn no_trusted_keys_or_server_means_no_update() {
    let w = world();
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    let before = snapshot(&w.m);
    let e =
        w.m.agent_with_keys(TrustedKeys::default())
            .apply()
            .unwrap_err();
    assert!(e.to_string().contains("no trusted update keys"), "{e}");
    fs::write(&w.m.paths.config, "REBOOT_STRATEGY=off\n").unwrap();
    let e = w.m.agent().apply().unwrap_err();
    assert!(e.to_string().contains("no SERVER="), "{e}");
    assert_untouched(&w.m, &before, "no keys / no server");
}

/// Serves a bundle of `v` whose rootfs has one flipped byte (the download
/// is refused by its hash after the manifest was accepted).
fn tampered(w: &World, v: &str) -> std::path::PathBuf {
    let b = build(&w.bundles, "default", v, &key(), ROOTFS);
    let p = b.root.join("rootfs.squashfs");
    let mut d = read(&p);
    d[ROOTFS / 2] ^= 1;
    fs::remove_file(&p).unwrap(); // a hard link to the build's file
    fs::write(&p, d).unwrap();
    b.root
}

fn status_text(m: &Machine) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_rolled_back_version_is_not_installed_again_after_a_later_failure() {
    let w = world();
    let m = &w.m;
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    m_apply_ok(m);
    // v2 never boots: systemd-boot falls back to slot a
    fs::rename(
        m.paths.esp.join("loader/entries/cairn-2+3.conf"),
        m.paths.esp.join("loader/entries/cairn-2+0-3.conf"),
    )
    .unwrap();
    m.reboot_into("a", "1", "boot-2");
    // a later attempt at 3 fails (its download does not match): the phase
    // is idle again
    w.server.serve(&tampered(&w, "3"));
    let e = m.agent().apply().unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert_eq!(m.agent().state().unwrap().phase, Phase::Idle);
    let before = snapshot(m);
    // the channel offers the known-bad 2 again (replayed, or the server
    // went back): refused, nothing written
    w.server.serve(&v2.root);
    let e = m.agent().apply().unwrap_err();
    assert!(
        e.to_string()
            .contains("version 2 rolled back on this machine"),
        "{e}"
    );
    assert!(
        e.to_string().contains("slot a runs instead of slot b"),
        "{e}"
    );
    assert_untouched(m, &before, "denied 2");
    let st = m.agent().state().unwrap();
    let f = st.last_failure.as_ref().unwrap();
    assert_eq!(f.version.as_deref(), Some("2"));
    assert!(f.reason.contains("not installed again"), "{}", f.reason);
    let text = status_text(m);
    assert!(text.contains("denied:   2 (failed here at"), "{text}");
    assert!(
        text.contains("last failure:") && text.contains("(version 2): version 2 rolled back"),
        "{text}"
    );
    // the deny-list is in the JSON too
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(m.cli_args())
        .args(["status", "--json"])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["denied"][0]["version"], "2", "{j}");
    // a newer version goes through
    let _ = fs::remove_dir_all(w.bundles.join("3"));
    let v3 = build(&w.bundles, "default", "3", &key(), ROOTFS);
    w.server.serve(&v3.root);
    m_apply_ok(m);
    check_staged(m, &v3, "b", "3");
}

#[test]
fn a_manifest_older_than_one_accepted_is_refused_as_a_replay() {
    let w = world();
    let m = &w.m;
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    let v3 = build(&w.bundles, "default", "3", &key(), ROOTFS - 7);
    w.server.serve(&v3.root);
    m_apply_ok(m);
    check_staged(m, &v3, "b", "3");
    let before = snapshot(m);
    // still running 1, 3 staged: the (validly signed, unexpired) manifest
    // of 2 comes back; it is newer than the running 1, but older than 3
    w.server.serve(&v2.root);
    let e = m.agent().apply().unwrap_err();
    assert!(
        e.to_string()
            .contains("version 2 is older than 3, which this machine accepted"),
        "{e}"
    );
    assert_untouched(m, &before, "replayed 2");
    check_staged(m, &v3, "b", "3");
    assert!(
        matches!(&m.agent().state().unwrap().phase, Phase::Staged { version, .. } if version == "3")
    );
    // the same after an interrupted download of 4 (slot b has no entry)
    let v4 = build(&w.bundles, "default", "4", &key(), ROOTFS);
    w.server.serve(&v4.root);
    w.server
        .fail("rootfs.squashfs", &[common::Fail::Status(404)]);
    let e = m.agent().apply().unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    w.server.serve(&v3.root);
    let e = m.agent().apply().unwrap_err();
    assert!(e.to_string().contains("version 3 is older than 4"), "{e}");
    let text = status_text(m);
    assert!(text.contains("accepted: 4 at "), "{text}");
    assert!(
        text.contains("(version 3): version 3 is older than 4"),
        "{text}"
    );
    // 4 itself resumes
    w.server.serve(&v4.root);
    m_apply_ok(m);
    check_staged(m, &v4, "b", "4");
}
