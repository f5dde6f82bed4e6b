//! Cluster formation: three QEMU machines netbooted at once from one
//! `cairn serve` on a LAN in network namespaces (site dnsmasq for the
//! addresses, cairn's ProxyDHCP, guest-to-guest traffic over the bridge).
//! Their group says `etcd_cluster: {size: 3}`, so the server makes one
//! discovery token and renders it into every member's cloud-config; each
//! machine's etcd names itself and advertises its own address
//! (`$private_ipv4`), registers with cairn's discovery service and the
//! three form one cluster: `etcdctl member list` on one shows three
//! started members, and a key written on one is read on another.
//!
//! The same boot proves fleet on real machines: `fleet.service` (cairn's
//! `fleetd`, agent on systemd over D-Bus) is started from cloud-config with
//! `coreos.fleet` settings; `fleetctl list-machines` on one machine shows
//! the three with their metadata; `fleetctl start myapp.service` (the
//! seed's MyApp, as a shell loop: the test image has no Docker) runs it on
//! one machine, from fleet's unit directory, and its journal says `Hello
//! World`; `web@{1..3}` with `Conflicts=web@*.service` land on three
//! different machines; the machine that runs MyApp is powered off and
//! MyApp runs on another within 120 s (agent_ttl 10 s, plus a new engine
//! election when the leader died: its lease is 10 s).

use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};

mod common;
use common::lan::{read, Lan};
use common::{guest_sh, test_image, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(1200);
const CMD: Duration = Duration::from_secs(120);
const MACS: [&str; 3] = [
    "52:54:00:00:0d:01",
    "52:54:00:00:0d:02",
    "52:54:00:00:0d:03",
];

const TEMPLATE: &str = r#"#cloud-config
hostname: etcd-{{ mac | replace(":", "") }}
coreos:
  etcd2:
    name: etcd-{{ mac | replace(":", "") }}
    discovery: {{ etcd_discovery }}
    advertise-client-urls: http://$private_ipv4:2379
    initial-advertise-peer-urls: http://$private_ipv4:2380
    listen-client-urls: http://0.0.0.0:2379
    listen-peer-urls: http://$private_ipv4:2380
  fleet:
    public-ip: $private_ipv4
    metadata: "role=node,lab=cluster-boot"
    agent_ttl: 10s
    etcd_servers: http://127.0.0.1:2379
  units:
    - name: etcd.service
      command: start
    - name: fleet.service
      command: start
"#;

const MYAPP: &str = "[Unit]\nDescription=MyApp\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n";
const WEB: &str = "[Unit]\nDescription=web %i\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=web@*.service\n";

#[test]
fn three_netbooted_machines_form_an_etcd_cluster_through_discovery() {
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(dir.join("etcd.yaml.j2"), TEMPLATE).unwrap();
    let inventory = format!(
        "profiles:\n  - name: diskless\n    image: {}\n    boot: ram\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: etcd.yaml.j2\ngroups:\n  - name: etcd\n    profile: diskless\n    etcd_cluster: {{size: 3}}\n",
        out.display()
    );
    let inv_path = dir.join("lab.yaml");
    std::fs::write(&inv_path, inventory).unwrap();

    let taps = ["tap0", "tap1", "tap2"];
    let mut lan = Lan::new("cl", &taps, dir);
    lan.start_dhcp(dir);
    let base = lan.start_serve(&inv_path, &out.join("ipxe"), dir);

    // all three at once: etcd waits for the whole cluster to register
    // (with fewer CPUs than machines, the reservation takes the whole
    // machine's VM slots)
    let _slots = cairn_qemu::slots::reserve(MACS.len()).expect("VM slots");
    let t = Instant::now();
    let mut vms: Vec<Vm> = MACS
        .iter()
        .zip(taps)
        .enumerate()
        .map(|(i, (mac, tap))| {
            Vm::start(
                VmConfig::new(format!("etcd-{i}"))
                    .bios()
                    .netns(lan.ns("lan"))
                    .tap(tap)
                    .pxe()
                    .mac(*mac)
                    .memory_mib(2048),
            )
            .expect("starting QEMU")
        })
        .collect();
    for vm in &mut vms {
        vm.wait_guest_agent(BOOT).unwrap_or_else(|e| {
            panic!(
                "a member did not come up: {e}\nserve log:\n{}",
                read(&lan.serve_log)
            )
        });
        wait_cloudinit(vm, 300);
    }
    eprintln!("three machines configured after {:?}", t.elapsed());

    // every member's etcd started (discovery done), within the time etcd's own retries allow
    for (vm, mac) in vms.iter_mut().zip(MACS) {
        let state = guest_sh(
            vm,
            "for i in $(seq 400); do s=$(systemctl show -P ActiveState etcd.service); \
             [ \"$s\" = active ] && { echo active; exit 0; }; sleep 1; done; \
             systemctl status etcd --no-pager; journalctl -u etcd --no-pager -n 40; exit 1",
            Duration::from_secs(460),
        );
        assert_eq!(state.trim(), "active", "etcd on {mac}");
    }
    eprintln!("etcd active on all three after {:?}", t.elapsed());

    let members = guest_sh(&mut vms[0], "ETCDCTL_API=3 etcdctl member list", CMD);
    let started: Vec<&str> = members
        .lines()
        .filter(|l| l.contains(", started,"))
        .collect();
    assert_eq!(started.len(), 3, "member list:\n{members}");
    for mac in MACS {
        let name = format!("etcd-{}", mac.replace(':', ""));
        assert!(members.contains(&name), "{name} missing:\n{members}");
    }
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

    let killed = fleet_checks(&mut vms);

    // the server's side: one token, three registrations
    let cfg = lan.exec(
        "cairn",
        &[
            "curl",
            "-fsS",
            &format!("{base}/cloud-config?mac={}", MACS[0]),
        ],
    );
    let cfg = String::from_utf8_lossy(&cfg.stdout).into_owned();
    let url = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("discovery: "))
        .unwrap_or_else(|| panic!("no discovery URL in:\n{cfg}"))
        .to_string();
    let listing = lan.exec("cairn", &["curl", "-fsS", &url]);
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let nodes = listing["node"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{listing}");
    for (i, vm) in vms.iter_mut().enumerate() {
        if i != killed {
            vm.kill().unwrap();
        }
    }
    lan.check_alive();
}

/// `fleetctl list-units --no-legend --full` as (unit, machine ID, active, sub).
fn units(vm: &mut Vm) -> Vec<(String, String, String, String)> {
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

/// fleet on the three machines; returns the index of the machine powered off.
fn fleet_checks(vms: &mut [Vm]) -> usize {
    let t = Instant::now();
    let ids: Vec<String> = vms
        .iter_mut()
        .map(|vm| guest_sh(vm, "cat /etc/machine-id", CMD).trim().to_string())
        .collect();
    let machines = guest_sh(
        &mut vms[0],
        "for i in $(seq 120); do [ \"$(fleetctl list-machines --no-legend 2>/dev/null | wc -l)\" -ge 3 ] && break; sleep 1; done; \
         fleetctl list-machines --full --no-legend 2>&1; systemctl is-active fleet.service; \
         [ \"$(fleetctl list-machines --no-legend | wc -l)\" -ge 3 ] || journalctl -u fleet.service --no-pager -n 40",
        Duration::from_secs(180),
    );
    for id in &ids {
        assert!(machines.contains(id.as_str()), "{id} missing:\n{machines}");
    }
    assert_eq!(
        machines.matches("lab=cluster-boot,role=node").count(),
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
    let now = units(&mut vms[0]);
    let running = |u: &(String, String, String, String)| u.2 == "active" && u.3 == "running";
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(now.iter().all(running), "{now:?}");
    let webs: std::collections::BTreeSet<&String> = now
        .iter()
        .filter(|u| u.0.starts_with("web@"))
        .map(|u| &u.1)
        .collect();
    assert_eq!(webs.len(), 3, "Conflicts broken: {now:?}");
    let host = now
        .iter()
        .find(|u| u.0 == "myapp.service")
        .unwrap()
        .1
        .clone();
    let h = ids
        .iter()
        .position(|id| *id == host)
        .expect("myapp's machine is one of ours");
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

    // power off MyApp's machine: it runs elsewhere, by itself
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
