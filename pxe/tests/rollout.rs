//! Rollout waves through the real server: channel `lab` offers 1.0 and 2.0
//! (signed bundles); the inventory's `rollouts:` sends 2.0 to the `canary`
//! group first and to everyone else an hour later. Four machines netboot
//! (so the server knows them) and ask for the manifest with their MAC: the
//! canary gets 2.0's manifest and parts, the others 1.0's. The canary
//! reports that 2.0 rolled back: the rollout pauses by itself, says why in
//! `/lifecycle`, and the other machines are still held after the soak time
//! has passed on paper; an operator's resume is recorded. A restart keeps
//! all of it. Bad `rollouts:` sections are refused naming the line and key.

use std::net::SocketAddr;
use std::path::Path;

use cairn_formats::channel::rollout::MACHINE_HEADER;
use cairn_formats::channel::{keygen, Manifest, SecretKey};
use cairn_formats::lifecycle::{Event, Report};
use cairn_pxe::{Server, ServerConfig};

mod common;
use common::get;

const MACS: [&str; 4] = [
    "52:54:00:00:0b:01",
    "52:54:00:00:0b:02",
    "52:54:00:00:0b:03",
    "52:54:00:00:0b:04",
];

struct Serve {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Serve {
    fn try_start(config: &Path, state: &Path) -> anyhow::Result<Serve> {
        Serve::try_start_with(config, state, None)
    }

    /// With `--store` (`store`).
    fn try_start_with(config: &Path, state: &Path, store: Option<&str>) -> anyhow::Result<Serve> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::start(ServerConfig {
            config: config.to_path_buf(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            tftp_addr: None,
            ipxe_dir: state.to_path_buf(),
            public_url: None,
            reload_on_sighup: false,
            state_dir: state.to_path_buf(),
            proxy_dhcp: None,
            store: store.map(str::to_owned),
            admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        }))?;
        let a = server.local_addrs();
        Ok(Serve {
            rt,
            server: Some(server),
            http: a.http,
            admin: a.admin.unwrap(),
        })
    }

    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.http)
    }

    fn netboot(&self, mac: &str) {
        let r = get(
            &self.url(&format!("/ipxe?mac={}&platform=efi", mac.replace(':', "-"))),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// The version of the manifest the channel gives `mac`, or the 404's text.
    fn manifest_for(&self, mac: &str) -> Result<String, String> {
        let r = get(
            &self.url("/update/v1/lab/manifest"),
            &[(MACHINE_HEADER, mac)],
        );
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.text()));
        }
        Ok(Manifest::parse(&r.body).unwrap().version)
    }

    fn report(&self, mac: &str, id: &str, event: Event) -> (u16, String) {
        let body = Report {
            mac: mac.into(),
            machine_id: Some(id.into()),
            event,
        }
        .to_json();
        curl(
            &["-X", "POST", "--data-binary", &body],
            &self.url("/lifecycle/v1/report"),
        )
    }

    fn lifecycle(&self) -> serde_json::Value {
        let r = get(&format!("http://{}/lifecycle", self.admin), &[]);
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }
}

fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

const INVENTORY: &str = "profiles:
  - name: p
    image: v1
groups:
  - name: canary
    profile: p
    selector:
      mac: 52:54:00:00:0b:01
  - name: rest
    profile: p
updates:
  - v2
rollouts:
  - channel: lab
    version: 2.0.0
    max_failures: 0
    waves:
      - name: canary
        groups: [canary]
        soak: 1h
      - name: everyone
        percent: 100
";

/// Signed images 1.0.0 (`v1`) and 2.0.0 (`v2`) and [`INVENTORY`] in `dir`:
/// the inventory's path.
fn lab(dir: &Path) -> std::path::PathBuf {
    let keys = keygen(&dir.join("keys")).unwrap();
    let key = SecretKey::load(&keys.secret).unwrap();
    common::signed_image(dir, "v1", "1.0.0", &key);
    common::signed_image(dir, "v2", "2.0.0", &key);
    let config = dir.join("inv.yaml");
    std::fs::write(&config, INVENTORY).unwrap();
    config
}

#[test]
fn the_canary_fails_and_the_second_wave_never_gets_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab(dir.path());
    let v2 = dir.path().join("v2");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let s = Serve::try_start(&config, &state).unwrap();
    for mac in MACS {
        s.netboot(mac);
    }
    // the canary is offered 2.0.0, whole; the others are held on 1.0.0
    assert_eq!(s.manifest_for(MACS[0]).unwrap(), "2.0.0");
    let part = get(
        &s.url("/update/v1/lab/rootfs.squashfs"),
        &[(MACHINE_HEADER, MACS[0])],
    );
    assert_eq!(part.status, 200);
    assert_eq!(
        part.body,
        std::fs::read(v2.join("update/rootfs.squashfs")).unwrap()
    );
    for mac in &MACS[1..] {
        assert_eq!(s.manifest_for(mac).unwrap(), "1.0.0", "{mac}");
    }
    // a request that does not say who asks (and whose address netbooted no MAC) is held too
    assert_eq!(
        Manifest::parse(&get(&s.url("/update/v1/lab/manifest"), &[]).body)
            .unwrap()
            .version,
        "1.0.0"
    );
    // hostile claims: a malformed MAC, an oversized one, a seed out of range are no machine,
    // held like a request that names none, and recorded as nobody
    let long = "a".repeat(16 << 10);
    for (mac, seed) in [
        ("not-a-mac", "1"),
        (long.as_str(), "99999999999"),
        ("52:54:00:00:0b:01:ff", "-1"),
    ] {
        let (code, body) = curl(
            &[
                "-H",
                &format!("{MACHINE_HEADER}: {mac}"),
                "-H",
                &format!("{}: {seed}", cairn_formats::channel::rollout::SEED_HEADER),
            ],
            &s.url("/update/v1/lab/manifest"),
        );
        assert_eq!(code, 200, "{mac:.20}: {body}");
        assert_eq!(
            Manifest::parse(body.as_bytes()).unwrap().version,
            "1.0.0",
            "{mac:.20}"
        );
    }
    let snap = s.lifecycle();
    let waves = &snap["rollouts"][0]["waves"];
    assert_eq!(waves[0]["offered"], 1, "{snap:#}");
    assert_eq!(waves[1]["open"], false, "{snap:#}");
    // the canary's membership is in its own record; the rollout's only counts
    assert!(
        snap["rollouts"][0]["rollout"].get("members").is_none(),
        "{snap:#}"
    );
    let canary = snap["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == MACS[0])
        .unwrap();
    assert_eq!(canary["rollouts"]["lab"]["wave"], 0, "{snap:#}");
    assert_eq!(canary["rollouts"]["lab"]["outcome"]["outcome"], "offered");

    // the canary rolls back: the rollout pauses and says why
    let id = "0123456789abcdef0123456789abcdef";
    let (code, text) = s.report(
        MACS[0],
        id,
        Event::RolledBack {
            version: "2.0.0".into(),
            to_version: "1.0.0".into(),
            reason: "cairn-app.service failed".into(),
        },
    );
    assert_eq!(code, 200, "{text}");
    let snap = s.lifecycle();
    let paused = snap["rollouts"][0]["rollout"]["paused"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        paused.contains("wave canary failed 2.0.0") && paused.contains(MACS[0]),
        "{snap:#}"
    );
    // the canary itself is not offered 2.0.0 again; nobody else gets it
    for mac in MACS {
        assert_eq!(s.manifest_for(mac).unwrap(), "1.0.0", "{mac}");
    }
    // a report from a MAC that never netbooted is refused and changes nothing
    let (code, _) = s.report(
        "52:54:00:00:0b:99",
        id,
        Event::Healthy {
            version: "2.0.0".into(),
        },
    );
    assert_eq!(code, 404);

    // the records survive a restart: still paused, still held
    drop(s);
    let s = Serve::try_start(&config, &state).unwrap();
    assert_eq!(s.manifest_for(MACS[2]).unwrap(), "1.0.0");
    assert!(s.lifecycle()["rollouts"][0]["rollout"]["paused"].is_object());
    // an operator resumes: recorded, and the next wave still waits its soak from now
    let (code, text) = curl(
        &["-X", "POST"],
        &format!("http://{}/lifecycle/rollout/resume?channel=lab", s.admin),
    );
    assert_eq!(code, 200, "{text}");
    let snap = s.lifecycle();
    assert!(
        snap["rollouts"][0]["rollout"]["paused"].is_null(),
        "{snap:#}"
    );
    let held = s.manifest_for(MACS[3]).unwrap();
    assert_eq!(held, "1.0.0");
    let (code, _) = curl(
        &["-X", "POST"],
        &format!("http://{}/lifecycle/rollout/resume?channel=beta", s.admin),
    );
    assert_eq!(code, 400);
}

#[test]
fn bad_rollout_sections_name_the_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("keys")).unwrap();
    let key = SecretKey::load(&keys.secret).unwrap();
    common::signed_image(dir.path(), "v1", "1.0.0", &key);
    common::signed_image(dir.path(), "v2", "2.0.0", &key);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cases = [
        (
            "channel: lab",
            "channel: beta",
            "rollouts[0].channel",
            "no image folder",
        ),
        (
            "version: 2.0.0",
            "version: 3.0.0",
            "rollouts[0].version",
            "offered: 2.0.0, 1.0.0",
        ),
        (
            "groups: [canary]",
            "groups: [canary, web]",
            "rollouts[0].waves[0].groups",
            "\"web\": no such group",
        ),
        (
            "groups: [canary]",
            "groups: [canary]\n        percent: 10",
            "rollouts[0].waves[0]",
            "exactly one of percent",
        ),
        (
            "soak: 1h",
            "soak: soon",
            "rollouts[0].waves[0].soak",
            "like 90s",
        ),
        (
            "percent: 100",
            "percent: 101",
            "rollouts[0].waves[1]",
            "over 100",
        ),
        (
            "max_failures: 0",
            "max_failure: 0",
            "max_failure",
            "unknown field",
        ),
    ];
    for (from, to, key, message) in cases {
        let text = INVENTORY.replacen(from, to, 1);
        assert_ne!(text, INVENTORY, "{from}");
        let config = dir.path().join("inv.yaml");
        std::fs::write(&config, &text).unwrap();
        let err = format!(
            "{:#}",
            Serve::try_start(&config, &state).err().expect("refused")
        );
        assert!(
            err.contains("inv.yaml:") && err.contains(key) && err.contains(message),
            "{to}: {err}"
        );
    }
}

/// The image folder key the machine's netboot script boots.
fn script_image(s: &Serve, mac: &str) -> String {
    let kernel = script_kernel(s, mac);
    kernel
        .split("/assets/")
        .nth(1)
        .and_then(|t| t.split('/').next())
        .unwrap_or_else(|| panic!("{kernel}"))
        .to_string()
}

/// The kernel line of the machine's netboot script.
fn script_kernel(s: &Serve, mac: &str) -> String {
    let r = get(
        &s.url(&format!("/ipxe?mac={}&platform=efi", mac.replace(':', "-"))),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    text.lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string()
}

#[test]
fn a_diskless_machine_whose_new_image_fails_boots_its_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("keys")).unwrap();
    let key = SecretKey::load(&keys.secret).unwrap();
    common::signed_image(dir.path(), "v1", "1.0.0", &key);
    common::signed_image(dir.path(), "v2", "2.0.0", &key);
    let config = dir.path().join("inv.yaml");
    let inventory = |image: &str, updates: &str| {
        format!("profiles:\n  - name: p\n    image: {image}\ngroups:\n  - name: all\n    profile: p\nupdates:\n  - {updates}\n")
    };
    std::fs::write(&config, inventory("v1", "v2")).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let s = Serve::try_start(&config, &state).unwrap();
    let [a, b, c] = [MACS[0], MACS[1], MACS[2]];
    let healthy = |v: &str| Event::Healthy { version: v.into() };
    // the machine reports to this server under its MAC (cairn-update health);
    // nothing to fall back to yet: no trial word
    let words = |mac: &str| -> Vec<String> {
        script_kernel(&s, mac)
            .split(' ')
            .filter(|w| w.starts_with("cairn.report"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        words(a),
        [
            format!("cairn.report=http://{}", s.http),
            format!("cairn.report.mac={a}")
        ]
    );
    // all three on 1.0.0, healthy
    for mac in [a, b, c] {
        assert_eq!(script_image(&s, mac), "img-1.0.0");
        assert_eq!(
            s.report(mac, "0123456789abcdef0123456789abcdef", healthy("1.0.0"))
                .0,
            200
        );
        assert_eq!(script_image(&s, mac), "img-1.0.0");
    }
    // the operator moves the profile to 2.0.0 (1.0.0 stays on offer in updates:)
    std::fs::write(&config, inventory("v2", "v1")).unwrap();
    s.server.as_ref().unwrap().reload().unwrap();
    for mac in [a, b, c] {
        assert_eq!(script_image(&s, mac), "img-2.0.0", "{mac}");
    }
    // a trial with 1.0.0 to come back to: a failed gate reboots the machine
    assert!(
        words(a).contains(&"cairn.report.trial=1".to_string()),
        "{:?}",
        words(a)
    );
    // a: healthy on 2.0.0, keeps it
    assert_eq!(
        s.report(a, "0123456789abcdef0123456789abcdef", healthy("2.0.0"))
            .0,
        200
    );
    // b: the health gate fails on 2.0.0
    let (code, text) = s.report(
        b,
        "0123456789abcdef0123456789abcdef",
        Event::Unhealthy {
            version: "2.0.0".into(),
            reason: "etcd.service failed".into(),
        },
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(script_image(&s, a), "img-2.0.0");
    assert_eq!(script_image(&s, b), "img-1.0.0");
    // ... and stays on 1.0.0 at its next boots, with the reason on record;
    // the earlier image is no trial
    assert_eq!(script_image(&s, b), "img-1.0.0");
    assert_eq!(words(b).len(), 2, "{:?}", words(b));
    let snap = s.lifecycle();
    let rec = snap["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == b)
        .unwrap()
        .clone();
    assert_eq!(rec["diskless"]["good"], "1.0.0", "{rec:#}");
    assert!(
        rec["diskless"]["bad"]["2.0.0"]["reason"]
            .as_str()
            .unwrap()
            .contains("etcd.service failed"),
        "{rec:#}"
    );
    // the fallback's files are served from the updates: folder
    let k = get(&s.url("/assets/img-1.0.0/vmlinuz"), &[]);
    assert_eq!(k.status, 200);
    // c said nothing and its trial is still young: the same boot asking again gets 2.0.0
    assert_eq!(script_image(&s, c), "img-2.0.0");
}

/// One etcd member (the `etcd` binary) on 127.0.0.1 with free ports, data
/// and log under `dir`; killed when dropped.
struct EtcdMember {
    child: std::process::Child,
    port: u16,
}

impl EtcdMember {
    fn start(dir: &Path) -> EtcdMember {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, peer) = (free(), free());
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian package etcd-server)");
        let e = EtcdMember { child, port };
        let t = std::time::Instant::now();
        while curl(&[], &format!("{client}/health")).0 != 200 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "etcd did not start: {}",
                std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        e
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn with_store_etcd_the_records_survive_a_new_server_and_are_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab(dir.path());
    let etcd = EtcdMember::start(dir.path());
    let store = format!("etcd://127.0.0.1:{}/t", etcd.port);
    let state = |n: &str| {
        let d = dir.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let s = Serve::try_start_with(&config, &state("one"), Some(&store)).unwrap();
    for mac in MACS {
        s.netboot(mac);
    }
    assert_eq!(s.manifest_for(MACS[0]).unwrap(), "2.0.0");
    let (code, text) = s.report(
        MACS[0],
        "0123456789abcdef0123456789abcdef",
        Event::RolledBack {
            version: "2.0.0".into(),
            to_version: "1.0.0".into(),
            reason: "cairn-app.service failed".into(),
        },
    );
    assert_eq!(code, 200, "{text}");
    // a second server on the same etcd is refused while the first runs
    let e = format!(
        "{:#}",
        Serve::try_start_with(&config, &state("two"), Some(&store))
            .err()
            .expect("refused")
    );
    assert!(
        e.contains("/t/lifecycle/lock") && e.contains("state dir") && e.contains("one"),
        "{e}"
    );
    drop(s);
    // nothing in files: a new server with a new state dir finds it all in etcd
    assert!(!state("one").join("lifecycle").exists());
    let s = Serve::try_start_with(&config, &state("three"), Some(&store)).unwrap();
    let snap = s.lifecycle();
    assert_eq!(
        snap["machines"].as_array().unwrap().len(),
        MACS.len(),
        "{snap:#}"
    );
    let paused = snap["rollouts"][0]["rollout"]["paused"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(paused.contains(MACS[0]), "{snap:#}");
    for mac in MACS {
        assert_eq!(s.manifest_for(mac).unwrap(), "1.0.0", "{mac}");
    }
    // a machine the first server saw netboot may report to this one
    let (code, text) = s.report(
        MACS[1],
        "0123456789abcdef0123456789abcde1",
        Event::Healthy {
            version: "1.0.0".into(),
        },
    );
    assert_eq!(code, 200, "{text}");
}

/// A machine that never netbooted from the server (a disk written by other
/// means) but names itself on the channel is placed in its wave and
/// recorded, so that its verdict counts: its rolled-back report pauses the
/// rollout.
#[test]
fn a_machine_that_never_netbooted_is_placed_and_its_report_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let s = Serve::try_start(&config, &state).unwrap();
    // before it asked: unknown, its report refused
    let id = "0123456789abcdef0123456789abcdef";
    let failed = || Event::RolledBack {
        version: "2.0.0".into(),
        to_version: "1.0.0".into(),
        reason: "the health gate failed".into(),
    };
    let (code, text) = s.report(MACS[0], id, failed());
    assert_eq!(code, 404, "{text}");
    // the canary (by its MAC) gets 2.0.0, another machine is held
    assert_eq!(s.manifest_for(MACS[0]).unwrap(), "2.0.0");
    assert_eq!(s.manifest_for(MACS[1]).unwrap(), "1.0.0");
    let snap = s.lifecycle();
    let macs: Vec<&str> = snap["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs, [MACS[0], MACS[1]], "{snap:#}");
    let (code, text) = s.report(MACS[0], id, failed());
    assert_eq!(code, 200, "{text}");
    let snap = s.lifecycle();
    let reason = snap["rollouts"][0]["rollout"]["paused"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("not paused: {snap:#}"));
    assert!(reason.contains(MACS[0]), "{reason}");
    // paused: nobody is offered 2.0.0 any more
    assert_eq!(s.manifest_for(MACS[0]).unwrap(), "1.0.0");
}
