//! A rollout end to end, with the real agent against the real server (no
//! VM): `cairn serve` in-process offers 1.0 and 2.0 on channel `stable`
//! (signed bundles the machines trust) and rolls 2.0 out to the `canary`
//! group first, then to everyone after a soak. Four file-based machines
//! (own machine id, the installer's hand-off naming the server and their
//! MAC) netboot once, then run `cairn-update`: the canary stages 2.0, its
//! health gate fails in slot b (no systemd here), it falls back to slot a
//! and reports the rollback; the rollout pauses, says why, and the other
//! three never receive any part of 2.0, even after the soak has passed
//! (their slots and ESPs, and the server's answers as a recording relay
//! in front of it saw them).
//! The control run allows one failure: then the soak opens the second wave
//! and the same three stage 2.0 (so the test's "never" can fail).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_formats::channel::keys::SecretKey;
use cairn_formats::channel::manifest::Manifest;
use cairn_pxe::{Server, ServerConfig};
use cairn_updater::agent::Outcome;
use cairn_updater::state::Phase;
use cairn_updater::Slot;
use common::*;

const MACS: [&str; 4] = [
    "52:54:00:00:0c:01",
    "52:54:00:00:0c:02",
    "52:54:00:00:0c:03",
    "52:54:00:00:0c:04",
];

const ROOTFS: usize = 1 << 20;

/// How long the canary wave soaks (the inventory's `soak: 1h`).
const SOAK_SECS: i64 = 3600;

fn key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

fn inventory(max_failures: u32) -> String {
    format!(
        r#"profiles:
  - name: p
    image: "1.0"
groups:
  - name: canary
    profile: p
    selector:
      mac: {canary}
  - name: rest
    profile: p
updates:
  - "2.0"
rollouts:
  - channel: stable
    version: "2.0"
    max_failures: {max_failures}
    waves:
      - name: canary
        groups: [canary]
        soak: 1h
      - name: everyone
        percent: 100
"#,
        canary = MACS[0]
    )
}

/// `cairn serve` in-process on 127.0.0.1 (HTTP and admin listeners).
struct Serve {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Serve {
    fn start(config: &Path, state: &Path) -> Serve {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(Server::start(ServerConfig {
                config: config.to_path_buf(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                tftp_addr: None,
                ipxe_dir: state.to_path_buf(),
                public_url: None,
                reload_on_sighup: false,
                state_dir: state.to_path_buf(),
                proxy_dhcp: None,
                store: None,
                admin_addr: Some("127.0.0.1:0".parse().unwrap()),
            }))
            .unwrap();
        let a = server.local_addrs();
        Serve {
            rt,
            server: Some(server),
            http: a.http,
            admin: a.admin.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn get(&self, url: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    }

    /// The machine's netboot (its iPXE script): the server knows it from now on.
    fn netboot(&self, mac: &str) {
        let (code, text) = self.get(&format!(
            "{}/ipxe?mac={}&platform=efi",
            self.url(),
            mac.replace(':', "-")
        ));
        assert_eq!(code, 200, "{text}");
    }

    /// The admin listener's `/lifecycle`: every machine record and rollout.
    fn lifecycle(&self) -> serde_json::Value {
        let (code, text) = self.get(&format!("http://{}/lifecycle", self.admin));
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }
}

/// An image folder `dir/<v>` for `cairn serve` (netboot files and
/// `manifest.json`) with its signed update bundle on channel `stable`.
fn image_folder(dir: &Path, v: &str) -> Built {
    let b = build(dir, "default", v, &key(), ROOTFS);
    let d = dir.join(v);
    fs::write(
        d.join("manifest.json"),
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named("default", v)).unwrap(),
    )
    .unwrap();
    fs::copy(d.join("initrd.img"), d.join("pxe-initrd.img")).unwrap();
    b
}

/// One machine's server record in `/lifecycle`.
fn record(snap: &serde_json::Value, mac: &str) -> serde_json::Value {
    snap["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .unwrap_or_else(|| panic!("no record of {mac}: {snap:#}"))
        .clone()
}

fn history(rec: &serde_json::Value) -> Vec<String> {
    rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["what"].as_str().unwrap().to_owned())
        .collect()
}

/// What a machine holds that an update could have written: both slots,
/// the ESP's kernel folders and entries, the agent's download folder.
#[derive(Debug, PartialEq, Eq)]
struct Disk {
    slot_a: String,
    slot_b: String,
    esp_cairn: Vec<String>,
    entries: Vec<String>,
    downloads: bool,
}

fn disk(m: &Machine) -> Disk {
    let mut esp_cairn: Vec<String> = fs::read_dir(m.paths.esp.join("cairn"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    esp_cairn.sort();
    Disk {
        slot_a: sha(&read(&m.slot("a"))),
        slot_b: sha(&read(&m.slot("b"))),
        esp_cairn,
        entries: m.entries(),
        downloads: m.paths.download_dir().exists(),
    }
}

/// Moves the rollout of `stable` back in time by `secs` (as if it had
/// started and its waves had opened that much earlier), in the server's
/// own record, while the server is stopped.
fn backdate_rollout(state: &Path, secs: i64) {
    let p = state.join("lifecycle/rollouts/stable.json");
    let mut r: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    let back = |v: &mut serde_json::Value| *v = (v.as_i64().unwrap() - secs).into();
    back(&mut r["started"]);
    for o in r["opened"].as_array_mut().unwrap() {
        back(o);
    }
    fs::write(&p, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
}

struct World {
    _t: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    v2: Built,
    machines: Vec<Machine>,
}

fn world(max_failures: u32) -> World {
    let t = tempfile::tempdir().unwrap();
    let v1 = image_folder(t.path(), "1.0");
    let v2 = image_folder(t.path(), "2.0");
    let config = t.path().join("inv.yaml");
    fs::write(&config, inventory(max_failures)).unwrap();
    let state = t.path().join("state");
    fs::create_dir_all(&state).unwrap();
    // Machine::new wants an update server; each machine is pointed at
    // `cairn serve` once it runs
    let unused = common::Server::start();
    let machines = MACS
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let m = Machine::new(
                &t.path().join(format!("m{i}")),
                &unused,
                &key(),
                "1.0",
                &v1.rootfs,
            );
            m.set_machine_id(&format!("{:032x}", 0xc0ffee_u128 * (i as u128 + 1)));
            m
        })
        .collect();
    World {
        _t: t,
        config,
        state,
        v2,
        machines,
    }
}

/// The rollout of 2.0 with `max_failures` allowed in a wave; the canary
/// fails. Returns the three other machines' outcomes after the soak.
fn scenario(max_failures: u32) -> (World, Recorder, Vec<Outcome>) {
    let w = world(max_failures);
    let s = Serve::start(&w.config, &w.state);
    // the machines reach the server through a relay that keeps its request log
    let relay = Recorder::start(s.http);
    for (m, mac) in w.machines.iter().zip(MACS) {
        m.point_at(&relay.url, "stable");
        m.handoff(&relay.url, mac);
        s.netboot(mac);
    }
    let (canary, rest) = w.machines.split_first().unwrap();
    let before: Vec<Disk> = rest.iter().map(disk).collect();

    // 1. the canary stages 2.0 in slot b; the others are offered 1.0: nothing newer
    assert_eq!(
        canary.agent().apply().unwrap(),
        Outcome::Staged {
            version: "2.0".into(),
            slot: Slot::B,
            entry: "cairn-2.0+3.conf".into()
        }
    );
    assert_eq!(
        sha_prefix(&canary.slot("b"), w.v2.rootfs.len()),
        sha(&w.v2.rootfs)
    );
    assert_eq!(
        read(&canary.paths.esp.join("cairn/2.0/vmlinuz")),
        w.v2.kernel
    );
    let up_to_date = Outcome::UpToDate {
        running: "1.0".into(),
        offered: "1.0".into(),
    };
    for m in rest {
        assert_eq!(
            m.agent().apply().unwrap(),
            up_to_date,
            "{}",
            m.dir.display()
        );
    }
    let snap = s.lifecycle();
    let waves = &snap["rollouts"][0]["waves"];
    assert_eq!(waves[0]["offered"], 1, "{snap:#}");
    assert_eq!(waves[1]["open"], false, "{snap:#}");

    // 2. the canary boots 2.0 from slot b: its health gate fails (this host
    // runs no systemd) and says so to the server
    canary.reboot_into("b", "2.0", "boot-2");
    let (code, out, err) = canary.run(&["health", "--timeout-secs", "0", "--no-bless"]);
    assert_eq!(code, Some(1), "a failed gate on a trial: {out} {err}");
    assert!(
        out.contains("reported to the install server: booted default 2.0 from slot b")
            && out.contains("reported to the install server: unhealthy"),
        "{out} {err}"
    );
    let rec = record(&s.lifecycle(), MACS[0]);
    assert_eq!(rec["health"]["version"], "2.0", "{rec:#}");
    assert_eq!(rec["health"]["healthy"], false, "{rec:#}");
    assert!(
        history(&rec)
            .iter()
            .any(|h| h.starts_with("2.0: health gate failed") && h.contains("systemctl")),
        "{rec:#}"
    );
    // systemd-bless-boot marks the entry bad (--no-bless: the test does
    // it) and systemd-boot falls back to slot a, 1.0
    fs::rename(
        canary.paths.esp.join("loader/entries/cairn-2.0+3.conf"),
        canary.paths.esp.join("loader/entries/cairn-2.0+0-1.conf"),
    )
    .unwrap();
    canary.reboot_into("a", "1.0", "boot-3");
    let (code, out, err) = canary.run(&["health", "--timeout-secs", "0", "--no-bless"]);
    assert_eq!(code, Some(0), "no trial on slot a: {out} {err}");
    assert!(
        out.contains("reported to the install server: 2.0 rolled back"),
        "{out} {err}"
    );
    let st = canary.agent().state().unwrap();
    assert!(
        matches!(&st.phase, Phase::RolledBack { version, .. } if version == "2.0"),
        "{st:?}"
    );
    assert_eq!(st.rollback_reported.as_deref(), Some("2.0"));
    let rec = record(&s.lifecycle(), MACS[0]);
    assert!(
        history(&rec)
            .iter()
            .any(|h| h.starts_with("2.0: rolled back to 1.0: ")
                && h.contains("health gate failed on slot b")),
        "{rec:#}"
    );
    assert_eq!(rec["phase"]["version"], "1.0", "running 1.0 again: {rec:#}");

    // 3. the rollout says whether it paused, and why
    let snap = s.lifecycle();
    let rollout = &snap["rollouts"][0]["rollout"];
    if max_failures == 0 {
        let reason = rollout["paused"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("wave canary failed 2.0") && reason.contains(MACS[0]),
            "{snap:#}"
        );
    } else {
        assert!(rollout["paused"].is_null(), "{snap:#}");
    }
    // the others ask again before the soak: 1.0, nothing newer; nothing written
    for (m, d) in rest.iter().zip(&before) {
        assert_eq!(m.agent().apply().unwrap(), up_to_date);
        assert_eq!(&disk(m), d, "{}", m.dir.display());
    }
    // the soak passes (the server's record of the rollout, moved back
    // beyond it while the server is stopped; the restart keeps the record)
    drop(s);
    backdate_rollout(&w.state, SOAK_SECS + 60);
    let s = Serve::start(&w.config, &w.state);
    relay.set_upstream(s.http);
    let outcomes: Vec<Outcome> = rest.iter().map(|m| m.agent().apply().unwrap()).collect();
    let snap = s.lifecycle();
    let waves = &snap["rollouts"][0]["waves"];
    if max_failures == 0 {
        assert!(
            snap["rollouts"][0]["rollout"]["paused"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(MACS[0])),
            "{snap:#}"
        );
        assert_eq!(waves[1]["open"], false, "{snap:#}");
        assert_eq!(waves[1]["offered"], 0, "{snap:#}");
        // no part of 2.0 reached them: slots, ESP and downloads as before,
        // and the server answered them 1.0's manifest and nothing else
        for (m, d) in rest.iter().zip(&before) {
            assert_eq!(&disk(m), d, "{}", m.dir.display());
        }
        for mac in &MACS[1..] {
            let got = channel_requests(&relay, mac);
            assert!(
                got.iter().filter(|g| g.0 == "manifest").count() >= 3,
                "{mac} asked at each apply: {got:?}"
            );
            for g in &got {
                assert!(
                    g.1 == 200
                        && (g.0 == "manifest.sig"
                            || (g.0 == "manifest" && g.2.as_deref() == Some("1.0"))),
                    "{mac}: {got:?}"
                );
            }
        }
    } else {
        assert_eq!(waves[1]["open"], true, "{snap:#}");
    }
    drop(s);
    // the log sees what a machine gets: the canary's 2.0 parts
    let canary_got = channel_requests(&relay, MACS[0]);
    assert!(
        canary_got
            .iter()
            .any(|g| g.0 == "manifest" && g.2.as_deref() == Some("2.0")),
        "{canary_got:?}"
    );
    assert!(
        relay
            .log()
            .iter()
            .any(|r| r.machine.as_deref() == Some(MACS[0])
                && r.path.ends_with("/rootfs.squashfs")
                && r.status == 200
                && r.body == w.v2.rootfs),
        "{canary_got:?}"
    );
    (w, relay, outcomes)
}

/// The update channel requests `mac` made through the relay: the file
/// asked for (`manifest` for `manifest.json` too), the answer's status,
/// and the version of the manifest it got.
fn channel_requests(relay: &Recorder, mac: &str) -> Vec<(String, u16, Option<String>)> {
    relay
        .log()
        .into_iter()
        .filter(|r| r.machine.as_deref() == Some(mac))
        .filter_map(|r| {
            let file = r.path.strip_prefix("/update/v1/stable/")?;
            let file = if file == "manifest.json" {
                "manifest"
            } else {
                file
            };
            let version = (file == "manifest")
                .then(|| Manifest::parse(&r.body).ok().map(|m| m.version))
                .flatten();
            Some((file.to_string(), r.status, version))
        })
        .collect()
}

#[test]
fn a_failed_canary_pauses_the_rollout_and_the_second_wave_never_gets_2_0() {
    let (_w, _, outcomes) = scenario(0);
    for o in outcomes {
        assert_eq!(
            o,
            Outcome::UpToDate {
                running: "1.0".into(),
                offered: "1.0".into()
            }
        );
    }
}

/// The control: one failure allowed, the rollout goes on, and the same
/// steps (the soak passed the same way) give the second wave 2.0.
#[test]
fn with_one_failure_allowed_the_second_wave_stages_2_0_after_the_soak() {
    let (w, relay, outcomes) = scenario(1);
    for ((m, mac), o) in w.machines[1..].iter().zip(&MACS[1..]).zip(outcomes) {
        assert_eq!(
            o,
            Outcome::Staged {
                version: "2.0".into(),
                slot: Slot::B,
                entry: "cairn-2.0+3.conf".into()
            }
        );
        assert_eq!(
            sha_prefix(&m.slot("b"), w.v2.rootfs.len()),
            sha(&w.v2.rootfs)
        );
        let got = channel_requests(&relay, mac);
        assert!(
            got.iter()
                .any(|g| g.0 == "manifest" && g.2.as_deref() == Some("2.0"))
                && got.iter().any(|g| g.0 == "rootfs.squashfs" && g.1 == 200),
            "{mac}: {got:?}"
        );
    }
}
