//! The bare-metal netboot path, in network namespaces this test makes: a
//! LAN (a bridge) with three hosts on it, as a site would have them:
//!
//! * `dhcp` (192.0.2.2): Debian's dnsmasq as the site's plain DHCP server,
//!   with no PXE options at all;
//! * `cairn` (192.0.2.1): the real `cairn serve` binary with
//!   `--proxy-dhcp`, TFTP on the standard port 69 and HTTP on 8080;
//! * two QEMU machines on tap devices, one BIOS (SeaBIOS) and one UEFI
//!   (OVMF), each with QEMU's iPXE ROM, booted one after the other.
//!
//! Each machine gets its address from dnsmasq and its boot file from cairn's
//! ProxyDHCP answer (iPXE is sent straight to `/boot.ipxe`); its profile
//! says `transport: tftp`, so iPXE fetches the kernel and `pxe-initrd.img`
//! (hundreds of MB) from cairn's TFTP with option negotiation. Each boots
//! diskless to a running system configured by its own group's cloud-config,
//! which the groups give only to the address that netbooted the machine
//! (`cloud_config_access: booted-ip`): the image's networkd asks dnsmasq by
//! MAC (`ClientIdentifier=mac`), so the system keeps iPXE's address.
//! Each machine's health gate reports to the server (`cairn.report=`):
//! running from RAM, healthy. Then the UEFI machine's group moves to an
//! image whose health gate fails (5.0.0, a failing unit, over HTTP): the
//! machine reboots into it as a trial, the gate fails and reboots it, and
//! it comes back on its last good image by itself; the server's record
//! says why 5.0.0 is bad.
//! On the side, a TFTP client on the `dhcp` host fetches `undionly.kpxe`
//! byte-exact from port 69 and is refused a path outside the root.
//!
//! Needs root, iproute2, dnsmasq and atftp (`.ci/run` installs them).

use std::time::{Duration, Instant};

use cairn_qemu::{Firmware, Vm, VmConfig};

mod common;
use common::lan::{read, require, Lan, CAIRN_IP};
use common::{assert_running, guest_sh, test_image, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(900);
const CMD: Duration = Duration::from_secs(60);
/// Firmware, MAC, the group (and hostname) the inventory gives it, tap device.
const MACHINES: [(Firmware, &str, &str, &str); 2] = [
    (Firmware::Bios, "52:54:00:00:0c:01", "rack1-node1", "tap0"),
    (Firmware::Uefi, "52:54:00:00:0c:02", "rack1-node2", "tap1"),
];

#[test]
fn bare_metal_netboot_with_site_dhcp_and_proxy_dhcp() {
    require("atftp", "atftp");
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(
        dir.join("node.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.hostname }}\nwrite_files:\n  - path: /etc/cairn/where\n    content: |\n      group={{ group }} mac={{ mac }} ip={{ ip }}\n",
    )
    .unwrap();
    let inventory = format!(
        "profiles:\n  - name: tftp-diskless\n    image: {}\n    boot: ram\n    transport: tftp\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: node.yaml.j2\ngroups:\n  - name: rack1-node1\n    profile: tftp-diskless\n    selector:\n      mac: {}\n    cloud_config_access: booted-ip\n    metadata:\n      hostname: rack1-node1\n  - name: rack1-node2\n    profile: tftp-diskless\n    selector:\n      mac: {}\n    cloud_config_access: booted-ip\n    metadata:\n      hostname: rack1-node2\n",
        out.display(),
        MACHINES[0].1,
        MACHINES[1].1,
    );
    let inv_path = dir.join("lab.yaml");
    std::fs::write(&inv_path, &inventory).unwrap();

    let taps: Vec<&str> = MACHINES.iter().map(|m| m.3).collect();
    let mut lan = Lan::new("bm", &taps, dir);
    lan.start_dhcp(dir);
    // cairn serve through its command line, as a user runs it
    let ipxe_dir = out.join("ipxe");
    let base = lan.start_serve(&inv_path, &ipxe_dir, dir);
    let (leases, serve_log) = (lan.leases.clone(), lan.serve_log.clone());

    // a TFTP client elsewhere on the LAN: port 69, byte-exact, no way out
    let got = dir.join("undionly.kpxe");
    let fetch = lan.exec(
        "dhcp",
        &[
            "atftp",
            "--option",
            "blksize 1428",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            got.to_str().unwrap(),
            &CAIRN_IP.to_string(),
            "69",
        ],
    );
    assert!(fetch.status.success(), "atftp: {fetch:?}");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(ipxe_dir.join("undionly.kpxe")).unwrap(),
        "undionly.kpxe over TFTP port 69"
    );
    let escape = lan.exec(
        "dhcp",
        &[
            "atftp",
            "-g",
            "-r",
            "../../../../etc/passwd",
            "-l",
            dir.join("passwd").to_str().unwrap(),
            &CAIRN_IP.to_string(),
            "69",
        ],
    );
    assert!(
        !escape.status.success()
            && std::fs::metadata(dir.join("passwd")).map_or(0, |m| m.len()) == 0,
        "a path outside the root was served: {escape:?}"
    );

    // the machines, NIC first, on the LAN: one BIOS, one UEFI, one after the other
    for (firmware, mac, host, tap) in MACHINES {
        let t = Instant::now();
        let config = VmConfig::new(format!("baremetal-{firmware:?}"))
            .netns(lan.ns("lan"))
            .tap(tap)
            .pxe()
            .mac(mac)
            .memory_mib(3072)
            .cpus(2)
            .firmware(firmware);
        let mut vm = Vm::start(config).expect("starting QEMU");
        let line = vm.wait_for("cairn-init:", BOOT).unwrap_or_else(|e| {
            panic!(
                "{firmware:?}: no kernel came over TFTP: {e}\nserve log:\n{}",
                read(&serve_log)
            )
        });
        eprintln!(
            "{firmware:?}: kernel + pxe-initrd.img over TFTP, /init running after {:?}: {line}",
            t.elapsed()
        );
        vm.wait_guest_agent(BOOT).expect("the guest agent answers");
        // /init had nothing to warn about (no module it could not load:
        // efivarfs is loaded only on a UEFI boot)
        let warnings: Vec<String> = vm
            .serial_log()
            .lines()
            .filter(|l| l.contains("cairn-init: warning"))
            .map(str::to_owned)
            .collect();
        assert!(warnings.is_empty(), "{firmware:?}: {warnings:?}");
        let sh = |vm: &mut Vm, s: &str| guest_sh(vm, s, CMD);
        wait_cloudinit(&mut vm, 120);
        let journal = sh(
            &mut vm,
            "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        );
        assert_eq!(sh(&mut vm, "hostname").trim(), host, "{journal}");
        // the address came from the site's dnsmasq (192.0.2.100-199), the config from cairn
        let addr = sh(&mut vm, "ip -4 -o addr show scope global");
        let ip = addr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("192.0.2.")?.strip_suffix("/24"))
            .and_then(|n| n.parse::<u8>().ok())
            .unwrap_or_else(|| panic!("{firmware:?}: no address on the LAN: {addr}"));
        assert!((100..=199).contains(&ip), "{addr}");
        assert_eq!(
            sh(&mut vm, "cat /etc/cairn/where"),
            format!("group={host} mac={mac} ip=192.0.2.{ip}\n")
        );
        assert!(
            read(&leases).contains(mac),
            "dnsmasq leased no address to {mac}"
        );
        let cmdline = sh(&mut vm, "cat /proc/cmdline");
        assert!(cmdline.contains("cairn.root=ram"), "{cmdline}");
        assert_running(&mut vm, BOOT);
        // the health gate told the server that netbooted it (cairn.report=):
        // running from RAM, healthy, the version it booted
        let rec = lan.wait_record(mac, "reported healthy", BOOT, |m| {
            m["health"]["healthy"] == true
        });
        assert_eq!(rec["phase"]["phase"], "running", "{rec:#}");
        assert_eq!(rec["phase"]["source"], "ram", "{rec:#}");
        assert_eq!(rec["health"]["version"], rec["phase"]["version"], "{rec:#}");
        assert_eq!(rec["diskless"]["good"], rec["phase"]["version"], "{rec:#}");
        eprintln!("{firmware:?}: running after {:?}", t.elapsed());
        if firmware == Firmware::Uefi {
            bad_image_falls_back(&mut vm, &mut lan, &inv_path, &inventory, mac);
        }
        vm.kill().unwrap();
        drop(vm);
    }

    // what the server saw: ProxyDHCP answers, the kernels and initrds over TFTP
    let log = read(&serve_log);
    for needle in [
        "ProxyDHCP offer sent",
        "undionly.kpxe",
        "vmlinuz",
        "pxe-initrd.img",
        "boot.ipxe",
    ] {
        assert!(log.contains(needle), "serve log lacks {needle:?}:\n{log}");
    }
    let machines = lan.machines(&base);
    for (_, mac, host, _) in MACHINES {
        assert!(log.contains(mac), "serve log lacks {mac}");
        let m = machines
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mac"].as_str() == Some(mac)))
            .unwrap_or_else(|| panic!("the server never saw {mac}: {machines}"));
        assert_eq!(m["group"], host, "{m}");
        assert_eq!(m["stage"], "cloud-config", "{m}");
    }
    lan.check_alive();
}

/// The diskless A/B on a real machine: its group's profile moves to an
/// image whose health gate fails (5.0.0: a unit that fails); the machine
/// reboots into it as a trial, its gate fails and reboots it, and without
/// any operator it netboots its last good image again, which reports
/// healthy; the server's record says why 5.0.0 is bad.
fn bad_image_falls_back(
    vm: &mut Vm,
    lan: &mut Lan,
    inv_path: &std::path::Path,
    inventory: &str,
    mac: &str,
) {
    let good = lan.lifecycle()["machines"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["mac"] == mac))
        .map(|m| {
            m["diskless"]["good"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    assert!(!good.is_empty(), "{mac} has no good image yet");
    let broken = common::updates::update_images().build("5.0.0");
    // a second profile with the broken image (over HTTP: the TFTP path is
    // proven above), for this machine's group only
    let moved = inventory
        .replacen(
            "groups:\n",
            &format!(
                "  - name: http-diskless-next\n    image: {}\n    boot: ram\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: node.yaml.j2\ngroups:\n",
                broken.display()
            ),
            1,
        )
        .replacen(
            "  - name: rack1-node2\n    profile: tftp-diskless\n",
            "  - name: rack1-node2\n    profile: http-diskless-next\n",
            1,
        );
    assert_ne!(moved, inventory);
    lan.reload_serve(inv_path, &moved);
    let t = Instant::now();
    // the server's clock: a healthy report after this is the fallback's
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    guest_sh(
        vm,
        "systemd-run --quiet --on-active=2 --unit=cairn-test-reboot systemctl reboot",
        CMD,
    );
    let rec = lan.wait_record(
        mac,
        "back on its good image after 5.0.0 failed",
        BOOT,
        |m| {
            m["diskless"]["bad"]["5.0.0"].is_object()
                && m["health"]["healthy"] == true
                && m["health"]["version"] == good.as_str()
                && m["health"]["at"].as_i64().is_some_and(|at| at >= since)
        },
    );
    let why = rec["diskless"]["bad"]["5.0.0"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("cairn-broken.service"), "{rec:#}");
    assert_eq!(rec["diskless"]["good"], good.as_str(), "{rec:#}");
    assert_eq!(rec["phase"]["version"], good.as_str(), "{rec:#}");
    eprintln!(
        "diskless 5.0.0 failed its gate; back on {good} by itself after {:?}",
        t.elapsed()
    );
}
