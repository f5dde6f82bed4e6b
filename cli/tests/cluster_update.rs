//! The cluster, on three QEMU machines that boot image 1.0.0 from their
//! own disks on a LAN in network namespaces (site dnsmasq, the real
//! `cairn serve`). Each reads its cloud-config from an OpenStack config
//! drive (`config-2`; FAT on a virtio disk for two machines, an ISO 9660
//! image on a SATA CD-ROM for the third, at every boot): etcd joins the
//! others through a discovery token
//! from `cairn serve` (`/discovery/new?size=3`; each member advertises its
//! own `$private_ipv4`), fleet (`fleet.service`: cairn's `fleetd`, agent
//! on systemd over D-Bus) runs with `coreos.fleet` settings, and
//! `coreos.update` says channel `lab` on that server with
//! `reboot-strategy: etcd-lock`.
//!
//! 1. Formation: `etcdctl member list` shows three started members; a key
//!    written on one is read on another.
//! 2. fleet: `fleetctl list-machines` shows the three with their metadata;
//!    `fleetctl start myapp.service` (the seed's MyApp, as a shell loop:
//!    the test image has no Docker) runs it on one machine from fleet's
//!    unit directory and its journal says `Hello World`; `web@{1..3}` with
//!    `Conflicts=web@*.service` land on three different machines.
//! 3. Coordinated reboots: the server offers signed 2.0.0 and all three
//!    start `cairn-update.service` at the same moment. The reboot lock
//!    (locksmith's semaphore in etcd, one slot) lets one machine reboot at
//!    a time: the test samples the lock's holders every second from the
//!    server's host and watches each machine's console; no two machines
//!    ever hold the lock together, every machine rebooted into slot b
//!    while it held the lock, and all three end on 2.0.0 with the lock
//!    free and the cluster healthy. Each machine's agent waited for
//!    fleet's drain before its reboot (its journal: "fleet drained"), and
//!    after the last reboot fleet runs all four units again, `web@` still
//!    on three machines.
//! 4. Failover: the machine that runs MyApp is powered off and MyApp runs
//!    on another within 120 s (agent_ttl 10 s, plus a new engine election
//!    when the leader died: its lease is 10 s).
//!
//! One test with three VMs (it takes both test threads): formation, fleet
//! and updates share the boots.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_qemu::{DiskFormat, Vm, VmConfig};
use cairn_updater::lock::{Semaphore, LOCK_KEY};

mod common;
use common::lan::{read, require, Lan};
use common::updates::{inventory, update_images};
use common::{guest_sh, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(1200);
const CMD: Duration = Duration::from_secs(120);
const MACS: [&str; 3] = [
    "52:54:00:00:0e:01",
    "52:54:00:00:0e:02",
    "52:54:00:00:0e:03",
];

const MYAPP: &str = "[Unit]\nDescription=MyApp\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n";
const WEB: &str = "[Unit]\nDescription=web %i\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=web@*.service\n";

/// A FAT config drive labelled `config-2` holding `user_data`.
fn config_drive(path: &Path, user_data: &str) {
    let dir = path.with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let ud = dir.join("user_data");
    std::fs::write(&ud, user_data).unwrap();
    let img = path.to_str().unwrap();
    let run = |prog: &str, args: &[&str]| {
        let out = Command::new(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e}"));
        assert!(out.status.success(), "{prog} {args:?}: {out:?}");
    };
    run("mkfs.vfat", &["-C", "-n", "config-2", img, "4096"]);
    run("mmd", &["-i", img, "::/openstack", "::/openstack/latest"]);
    run(
        "mcopy",
        &[
            "-i",
            img,
            ud.to_str().unwrap(),
            "::/openstack/latest/user_data",
        ],
    );
}

/// The machine whose config drive is an ISO 9660 image on a SATA CD-ROM,
/// as OpenStack (its default `config_drive_format`), VMware and
/// libvirt/Vagrant attach one; the others have a FAT one on a virtio disk.
const CDROM_NODE: usize = 2;

/// An ISO 9660 config drive labelled `config-2` holding `user_data`, made
/// the way OpenStack's nova makes one (genisoimage, Rock Ridge and Joliet,
/// lower-case names).
fn config_drive_iso(path: &Path, user_data: &str) {
    let dir = path.with_extension("d");
    let latest = dir.join("openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    std::fs::write(latest.join("user_data"), user_data).unwrap();
    let out = Command::new("genisoimage")
        .args(["-o", path.to_str().unwrap()])
        .args(["-ldots", "-allow-lowercase", "-allow-multidot", "-l"])
        .args(["-quiet", "-J", "-r", "-V", "config-2"])
        .arg(&dir)
        .output()
        .expect("genisoimage (Debian package genisoimage) must be installed");
    assert!(out.status.success(), "genisoimage: {out:?}");
}

fn user_data(i: usize, discovery: &str) -> String {
    format!(
        r#"#cloud-config
hostname: node-{i}
coreos:
  etcd2:
    name: node-{i}
    discovery: {discovery}
    advertise-client-urls: http://$private_ipv4:2379
    initial-advertise-peer-urls: http://$private_ipv4:2380
    listen-client-urls: http://0.0.0.0:2379
    listen-peer-urls: http://$private_ipv4:2380
  fleet:
    public-ip: $private_ipv4
    metadata: "role=node,lab=cluster"
    agent_ttl: 10s
    etcd_servers: http://127.0.0.1:2379
  update:
    group: lab
    server: http://192.0.2.1:8080
    reboot-strategy: etcd-lock
  units:
    - name: etcd.service
      command: start
    - name: fleet.service
      command: start
"#
    )
}

/// The lock's holders as etcd has them, asked of any member that answers.
fn holders(lan: &Lan, members: &[String]) -> Option<Vec<String>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = format!(r#"{{"key":"{}"}}"#, b64.encode(LOCK_KEY));
    for ip in members {
        let out = lan.exec(
            "cairn",
            &[
                "curl",
                "-fsS",
                "--max-time",
                "2",
                "-X",
                "POST",
                "-d",
                &body,
                &format!("http://{ip}:2379/v3/kv/range"),
            ],
        );
        if !out.status.success() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Some(vec![]);
        };
        let raw = b64.decode(kv["value"].as_str()?).ok()?;
        let sem: Semaphore = serde_json::from_slice(&raw).ok()?;
        return Some(sem.holders);
    }
    None
}

#[test]
fn three_machines_form_a_cluster_run_fleet_and_take_an_update_one_at_a_time() {
    for (tool, package) in [("mkfs.vfat", "dosfstools"), ("mcopy", "mtools")] {
        require(tool, package);
    }
    let imgs = update_images();
    let v1 = imgs.build("1.0.0");
    let v2 = imgs.build("2.0.0");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let inv = dir.join("lab.yaml");
    std::fs::write(&inv, inventory(&v1, &v2)).unwrap();

    let taps = ["tap0", "tap1", "tap2"];
    let mut lan = Lan::new("cu", &taps, dir);
    lan.start_dhcp(dir);
    let base = lan.start_serve(&inv, &v1.join("ipxe"), dir);
    let new = lan.exec(
        "cairn",
        &["curl", "-fsS", &format!("{base}/discovery/new?size=3")],
    );
    assert!(new.status.success(), "{new:?}");
    let discovery = String::from_utf8_lossy(&new.stdout).trim().to_string();

    // three machines at once (the whole machine's VM slots on 2 CPUs)
    let _slots = cairn_qemu::slots::reserve(3).expect("VM slots");
    let t0 = Instant::now();
    let mut vms: Vec<Vm> = (0..3)
        .map(|i| {
            let disk = dir.join(format!("node-{i}.qcow2"));
            cairn_qemu::vm::create_overlay(&v1.join("disk.raw"), DiskFormat::Raw, &disk).unwrap();
            let drive = dir.join(format!("config-{i}.img"));
            let config = VmConfig::new(format!("node-{i}")).uefi().disk(&disk);
            let config = if i == CDROM_NODE {
                config_drive_iso(&drive, &user_data(i, &discovery));
                // on q35's own AHCI controller, whose driver (ahci) and
                // the CD-ROM's (sr_mod) the initramfs does not load on a
                // disk boot: the agent loads them before it looks
                config.args([
                    "-drive".to_string(),
                    format!(
                        "file={},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
                        drive.display()
                    ),
                    "-device".to_string(),
                    "ide-cd,drive=cd0,bus=ide.2".to_string(),
                ])
            } else {
                config_drive(&drive, &user_data(i, &discovery));
                config.disk(&drive)
            };
            Vm::start(
                config
                    .persist(true)
                    .netns(lan.ns("lan"))
                    .tap(taps[i])
                    .mac(MACS[i])
                    .uuid(format!("8f0e2a5c-0000-4000-8000-00000000000{i}"))
                    .memory_mib(1536)
                    .cpus(1),
            )
            .expect("starting QEMU")
        })
        .collect();
    for (i, vm) in vms.iter_mut().enumerate() {
        vm.wait_for("cairn-init: root cairn-a", BOOT)
            .expect("booting slot a");
        vm.wait_guest_agent(BOOT).unwrap_or_else(|e| {
            panic!(
                "a machine did not come up: {e}\nserve log:\n{}",
                read(&lan.serve_log)
            )
        });
        wait_cloudinit(vm, 300);
        if i == CDROM_NODE {
            // the ISO on the CD-ROM (the only config-2 this machine has),
            // whose drivers udev loads only after the agent has looked
            // (sr0 appears ~10 s after it ran): /dev/sr0 from blkid
            let log = guest_sh(vm, "journalctl -b -u cairn-cloudinit -o cat", CMD);
            assert!(
                log.contains("data source: config drive /dev/sr0")
                    || log.contains("data source: config drive /dev/disk/by-label/config-2"),
                "node-{i}:\n{log}"
            );
        }
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        let state = guest_sh(
            vm,
            "for i in $(seq 400); do s=$(systemctl show -P ActiveState etcd.service); \
             [ \"$s\" = active ] && { echo active; exit 0; }; sleep 1; done; \
             journalctl -u etcd --no-pager -n 40; exit 1",
            Duration::from_secs(460),
        );
        assert_eq!(state.trim(), "active", "etcd on node-{i}");
    }
    let members = guest_sh(&mut vms[0], "ETCDCTL_API=3 etcdctl member list", CMD);
    assert_eq!(members.matches(", started,").count(), 3, "{members}");
    // peers advertise their own LAN addresses, from $private_ipv4
    assert!(
        members.matches("http://192.0.2.1").count() >= 6,
        "{members}"
    );
    guest_sh(
        &mut vms[0],
        "ETCDCTL_API=3 etcdctl put cairn-test formed-by-discovery",
        CMD,
    );
    let got = guest_sh(
        &mut vms[2],
        "ETCDCTL_API=3 etcdctl get --print-value-only cairn-test",
        CMD,
    );
    assert_eq!(got.trim(), "formed-by-discovery");
    eprintln!("three-member cluster after {:.0?}", t0.elapsed());

    // who is who: machine ids (the lock's holder names) and addresses
    let mut ids = Vec::new();
    let mut ips = Vec::new();
    for vm in &mut vms {
        ids.push(guest_sh(vm, "cat /etc/machine-id", CMD).trim().to_string());
        // the LAN address (docker0 has one too)
        let ip = guest_sh(
            vm,
            "ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | grep '^192\\.0\\.2\\.'",
            CMD,
        );
        let ip = ip.trim().to_string();
        assert!(!ip.is_empty() && !ip.contains('\n'), "LAN address: {ip:?}");
        ips.push(ip);
        let conf = guest_sh(vm, "cat /etc/cairn/update.conf", CMD);
        assert!(conf.contains("REBOOT_STRATEGY=etcd-lock"), "{conf}");
    }
    assert!(
        ids.iter().all(|i| i.len() == 32)
            && ids[0] != ids[1]
            && ids[1] != ids[2]
            && ids[0] != ids[2],
        "{ids:?}"
    );
    let st = guest_sh(&mut vms[0], "cairn-update lock status", CMD);
    assert!(st.contains("available: 1/1"), "{st}");

    // ---- fleet
    fleet_starts_units(&mut vms, &ids);

    // ---- all three at once
    for vm in &mut vms {
        guest_sh(vm, "systemctl start --no-block cairn-update.service", CMD);
    }
    let t1 = Instant::now();
    // host-side record: lock holders each second, and when each console
    // shows the machine's root mounted from slot b
    let mut samples: Vec<(f64, Vec<String>)> = Vec::new();
    let mut on_b: BTreeMap<usize, f64> = BTreeMap::new();
    while on_b.len() < 3 {
        assert!(
            // ~300 s on CI; a hung machine fails here, not at CI's limit
            t1.elapsed() < Duration::from_secs(1200),
            "not all machines updated: slot b seen on {on_b:?}; holders: {:?}",
            samples.last()
        );
        let now = t1.elapsed().as_secs_f64();
        if let Some(h) = holders(&lan, &ips) {
            if samples.last().map(|(_, l)| l != &h).unwrap_or(true) {
                eprintln!("{now:7.1} s  lock holders: {h:?}");
            }
            samples.push((now, h));
        }
        for (i, vm) in vms.iter().enumerate() {
            if !on_b.contains_key(&i) && vm.serial_log().contains("cairn-init: root cairn-b") {
                eprintln!("{now:7.1} s  node-{i} mounted slot b");
                on_b.insert(i, now);
            }
        }
        lan.check_alive();
        std::thread::sleep(Duration::from_secs(1));
    }
    for vm in &mut vms {
        vm.wait_guest_agent(BOOT)
            .expect("the guest agent answers on 2.0.0");
        let v = guest_sh(
            vm,
            ". /usr/lib/os-release; echo $IMAGE_VERSION; grep -o 'cairn.slot=[ab]' /proc/cmdline",
            CMD,
        );
        assert_eq!(
            v.split_whitespace().collect::<Vec<_>>(),
            ["2.0.0", "cairn.slot=b"]
        );
        guest_sh(
            vm,
            "for i in $(seq 300); do systemctl is-active -q boot-complete.target && exit 0; sleep 1; done; \
             systemctl status --no-pager cairn-health.service; exit 1",
            Duration::from_secs(400),
        );
    }
    // the last holder lets go once its new slot is healthy
    let t = Instant::now();
    loop {
        let h = holders(&lan, &ips);
        if h.as_deref() == Some(&[]) {
            samples.push((t1.elapsed().as_secs_f64(), vec![]));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the lock is still held: {h:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // never two holders; each machine held it while its console showed slot b
    for (t, h) in &samples {
        assert!(h.len() <= 1, "two holders at {t:.1} s: {h:?}");
    }
    for (i, id) in ids.iter().enumerate() {
        let held: Vec<f64> = samples
            .iter()
            .filter(|(_, h)| h.contains(id))
            .map(|(t, _)| *t)
            .collect();
        assert!(!held.is_empty(), "node-{i} ({id}) never held the lock");
        let (first, last) = (held[0], held[held.len() - 1]);
        let b = on_b[&i];
        assert!(
            first <= b && b <= last,
            "node-{i} mounted slot b at {b:.1} s outside its lock hold {first:.1}..{last:.1} s"
        );
        // one continuous hold: nobody else in between
        let between = samples
            .iter()
            .filter(|(t, h)| *t > first && *t < last && !h.contains(id))
            .count();
        assert_eq!(between, 0, "node-{i}'s hold was interrupted");
        eprintln!("node-{i}: held the lock {first:.1}..{last:.1} s, slot b at {b:.1} s");
    }
    let members = guest_sh(&mut vms[2], "ETCDCTL_API=3 etcdctl member list", CMD);
    assert_eq!(members.matches(", started,").count(), 3, "{members}");
    let st = guest_sh(&mut vms[1], "cairn-update lock status", CMD);
    assert!(st.contains("available: 1/1"), "{st}");
    eprintln!("all three on 2.0.0, one at a time, in {:.0?}", t1.elapsed());

    // each agent waited for fleet's drain before its reboot (the journal of
    // the boot before: v1's)
    for (i, vm) in vms.iter_mut().enumerate() {
        let j = guest_sh(
            vm,
            "journalctl -b -1 -u cairn-update.service --no-pager -o cat",
            CMD,
        );
        let drained = j
            .lines()
            .find(|l| l.contains(&format!("fleet drained {}", ids[i])))
            .unwrap_or_else(|| panic!("node-{i} rebooted without fleet's drain:\n{j}"));
        eprintln!("node-{i}: {drained}");
    }
    // fleet runs the four units again, web@ still on three machines
    let after = wait_units_running(&mut vms[0], 4);
    let webs: std::collections::BTreeSet<&String> = after
        .iter()
        .filter(|u| u.0.starts_with("web@"))
        .map(|u| &u.1)
        .collect();
    assert_eq!(
        webs.len(),
        3,
        "Conflicts broken after the update: {after:?}"
    );

    // ---- failover: power off MyApp's machine
    let killed = failover(&mut vms, &ids, &after);
    for (i, vm) in vms.iter_mut().enumerate() {
        if i != killed {
            vm.kill().ok();
        }
    }
    lan.check_alive();
}

/// One unit as `fleetctl list-units --no-legend --full` shows it: (unit,
/// machine ID, active, sub).
type UnitRow = (String, String, String, String);

fn units(vm: &mut Vm) -> Vec<UnitRow> {
    guest_sh(vm, "fleetctl list-units --no-legend --full", CMD)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| {
                let id = f[1].split('/').next().unwrap_or_default();
                (f[0].into(), id.into(), f[2].into(), f[3].into())
            })
        })
        .collect()
}

/// `fleetctl list-units` once `n` units are active and running (at most 180 s).
fn wait_units_running(vm: &mut Vm, n: usize) -> Vec<UnitRow> {
    let t = Instant::now();
    loop {
        let now = units(vm);
        if now.len() == n && now.iter().all(|u| u.2 == "active" && u.3 == "running") {
            return now;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "fleet does not run {n} units: {now:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// fleet on the three machines: list-machines, MyApp and `web@{1..3}`.
fn fleet_starts_units(vms: &mut [Vm], ids: &[String]) {
    let t = Instant::now();
    let machines = guest_sh(
        &mut vms[0],
        "for i in $(seq 120); do [ \"$(fleetctl list-machines --no-legend 2>/dev/null | wc -l)\" -ge 3 ] && break; sleep 1; done; \
         fleetctl list-machines --full --no-legend 2>&1; systemctl is-active fleet.service; \
         [ \"$(fleetctl list-machines --no-legend | wc -l)\" -ge 3 ] || journalctl -u fleet.service --no-pager -n 40",
        Duration::from_secs(180),
    );
    for id in ids {
        assert!(machines.contains(id.as_str()), "{id} missing:\n{machines}");
    }
    assert_eq!(
        machines.matches("lab=cluster,role=node").count(),
        3,
        "{machines}"
    );
    assert!(machines.matches("\t192.0.2.").count() >= 3, "{machines}");
    eprintln!("fleet: three machines after {:?}", t.elapsed());

    let started = guest_sh(
        &mut vms[0],
        &format!(
            "cd /tmp && printf '%s' {} > myapp.service && printf '%s' {} > web@.service && \
             fleetctl start --block-attempts=60 myapp.service 2>&1 && \
             fleetctl start --block-attempts=60 'web@{{1..3}}.service' 2>&1",
            shlex::try_quote(MYAPP).unwrap(),
            shlex::try_quote(WEB).unwrap()
        ),
        Duration::from_secs(300),
    );
    assert!(
        started.contains("Unit myapp.service launched on"),
        "{started}"
    );
    let now = wait_units_running(&mut vms[0], 4);
    let webs: std::collections::BTreeSet<&String> = now
        .iter()
        .filter(|u| u.0.starts_with("web@"))
        .map(|u| &u.1)
        .collect();
    assert_eq!(webs.len(), 3, "Conflicts broken: {now:?}");
    let h = host_of(ids, &now, "myapp.service");
    let hello = guest_sh(
        &mut vms[h],
        "for i in $(seq 60); do journalctl -u myapp.service --no-pager -o cat | grep -m1 'Hello World' && break; sleep 1; done; \
         readlink -f \"$(systemctl show -P FragmentPath myapp.service)\"",
        CMD,
    );
    assert!(hello.starts_with("Hello World\n"), "{hello}");
    assert!(hello.contains("/run/fleet/units/myapp.service"), "{hello}");
    eprintln!(
        "fleet: MyApp and web@{{1..3}} running after {:?}",
        t.elapsed()
    );
}

/// The index of the machine that runs `unit` in `rows`.
fn host_of(ids: &[String], rows: &[UnitRow], unit: &str) -> usize {
    let host = &rows
        .iter()
        .find(|u| u.0 == unit)
        .unwrap_or_else(|| panic!("{unit} not listed: {rows:?}"))
        .1;
    ids.iter()
        .position(|id| id == host)
        .unwrap_or_else(|| panic!("{unit} runs on {host}, not one of ours: {ids:?}"))
}

/// Powers off the machine that runs MyApp and waits until MyApp runs on
/// another one; returns the index of the machine powered off.
fn failover(vms: &mut [Vm], ids: &[String], rows: &[UnitRow]) -> usize {
    let h = host_of(ids, rows, "myapp.service");
    let host = ids[h].clone();
    vms[h].kill().unwrap();
    let off = Instant::now();
    let o = (h + 1) % vms.len();
    let moved = guest_sh(
        &mut vms[o],
        &format!(
            "for i in $(seq 120); do fleetctl list-units --no-legend --full 2>/dev/null | \
             awk '$1 == \"myapp.service\" && $2 !~ /^{host}/ && $3 == \"active\" && $4 == \"running\"' | grep . && exit 0; sleep 1; done; \
             fleetctl list-units --full; fleetctl list-machines; exit 1"
        ),
        Duration::from_secs(180),
    );
    let new_host = moved
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(ids.contains(&new_host) && new_host != host, "{moved}");
    eprintln!(
        "fleet: MyApp moved from {host} to {new_host} in {:?} after power-off",
        off.elapsed()
    );
    let n = ids.iter().position(|id| *id == new_host).unwrap();
    let hello = guest_sh(
        &mut vms[n],
        "for i in $(seq 60); do journalctl -u myapp.service --no-pager -o cat | grep -m1 'Hello World' && break; sleep 1; done",
        CMD,
    );
    assert_eq!(hello.trim(), "Hello World");
    h
}
