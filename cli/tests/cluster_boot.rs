//! Cluster formation: three QEMU machines netbooted at once from one
//! `cairn serve` on a LAN in network namespaces (site dnsmasq for the
//! addresses, cairn's ProxyDHCP, guest-to-guest traffic over the bridge).
//! Their group says `etcd_cluster: {size: 3}`, so the server makes one
//! discovery token and renders it into every member's cloud-config; each
//! machine's etcd names itself and advertises its own address
//! (`$private_ipv4`), registers with cairn's discovery service and the
//! three form one cluster: `etcdctl member list` on one shows three
//! started members, and a key written on one is read on another.

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
  units:
    - name: etcd.service
      command: start
"#;

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
    for vm in &mut vms {
        vm.kill().unwrap();
    }
    lan.check_alive();
}
