//! Install to disk from PXE, once, on the namespace LAN of
//! `netboot_baremetal` (the site's dnsmasq for addresses, the real
//! `cairn serve` with ProxyDHCP) with one profile, `boot: install`
//! (`install.disk: first-empty`, no overwrite). Two UEFI machines boot at
//! the same time, each with QEMU's iPXE on its NIC, boot order: its virtio
//! disk, then the network. (Network first does not work under OVMF yet:
//! the UEFI local-disk answer `exit` returns success from the `ipxe.efi`
//! OVMF's own PXE loads through ProxyDHCP, and on success the firmware stops
//! at its boot menu instead of trying the disk; it needs `exit 1`.)
//!
//! * machine 1 has a blank disk, which the firmware cannot boot: it
//!   netboots the installer (`cairn-install.service`), which writes the
//!   image's `disk.raw` to the disk, reads it back, leaves the server's
//!   address on the ESP and reboots into the disk: slot A is running
//!   (`cairn.slot=a`, not `cairn.root=ram`), the health gate reports
//!   booted and healthy, and the server's `/lifecycle` shows it installed,
//!   then running from slot a, installed once; a netboot of it now gets
//!   "boot from the local disk", not the installer;
//! * machine 2's disk holds an ext4 filesystem: its installer refuses,
//!   says why on the console (the disk and what it holds), the server
//!   records `install-refused`, and the disk is byte for byte as it was.
//!
//! Needs root, iproute2, dnsmasq, curl and mkfs.ext4 (e2fsprogs).

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};
use sha2::{Digest, Sha256};

mod common;
use common::lan::{read, require, run, Lan};
use common::{guest_sh, test_image};

const BOOT: Duration = Duration::from_secs(1200);
const CMD: Duration = Duration::from_secs(60);
const MAC1: &str = "52:54:00:00:0d:01";
const MAC2: &str = "52:54:00:00:0d:02";

/// The server's machine records (`/lifecycle` on the operators' listener).
fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// A UEFI machine on `tap`: `disk` (raw, written in place) first, then the NIC (iPXE).
fn machine_config(lan: &Lan, name: &str, tap: &str, mac: &str, disk: &Path) -> VmConfig {
    VmConfig::new(name)
        .netns(lan.ns("lan"))
        .tap(tap)
        .pxe()
        .mac(mac)
        .memory_mib(3072)
        .cpus(2)
        .uefi()
        .args([
            "-drive".to_string(),
            format!(
                "file={},format=raw,if=none,id=target,cache=unsafe",
                disk.display()
            ),
            "-device".to_string(),
            "virtio-blk-pci,drive=target,bootindex=0,serial=target".to_string(),
        ])
}

#[test]
fn a_blank_machine_installs_once_and_boots_its_disk_and_a_disk_with_data_is_refused() {
    require("mkfs.ext4", "e2fsprogs");
    let out = test_image();
    let image_size = std::fs::metadata(out.join("disk.raw")).unwrap().len();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let inventory = format!(
        "profiles:\n  - name: install\n    image: {}\n    boot: install\n    install:\n      disk: first-empty\n    kernel_args: console=ttyS0,115200 panic=10\ngroups:\n  - name: fleet\n    profile: install\n",
        out.display()
    );
    let inv_path = dir.join("lab.yaml");
    std::fs::write(&inv_path, inventory).unwrap();

    // machine 1: a blank disk, larger than the image; machine 2: ext4 on its disk
    let disk1 = dir.join("m1.raw");
    std::fs::File::create(&disk1)
        .unwrap()
        .set_len(image_size + (1 << 30))
        .unwrap();
    let disk2 = dir.join("m2.raw");
    std::fs::File::create(&disk2)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    run(
        "mkfs.ext4",
        &["-q", "-F", "-L", "keepme", disk2.to_str().unwrap()],
    );
    let disk2_before = sha256_file(&disk2);

    let mut lan = Lan::new("ib", &["tap0", "tap1"], dir);
    lan.start_dhcp(dir);
    let base = lan.start_serve(&inv_path, &out.join("ipxe"), dir);

    let t = Instant::now();
    let mut vm1 = Vm::start(machine_config(&lan, "install-blank", "tap0", MAC1, &disk1))
        .expect("starting QEMU");
    let mut vm2 = Vm::start(machine_config(&lan, "install-data", "tap1", MAC2, &disk2))
        .expect("starting QEMU");

    // machine 2: refused, on its console and at the server; its disk untouched
    let line = vm2
        .wait_for("cairn-install: not installing", BOOT)
        .unwrap_or_else(|e| {
            panic!(
                "machine 2 never refused: {e}\nserve log:\n{}",
                read(&lan.serve_log)
            )
        });
    eprintln!("machine 2 refused after {:?}: {line}", t.elapsed());
    assert!(
        line.contains("vda") && line.contains("ext2/3/4 filesystem"),
        "the refusal names the disk and what it holds: {line}"
    );
    let m2 = lan.wait_record(MAC2, "install-refused", CMD, |m| {
        m["phase"]["phase"] == "install-refused"
    });
    let reason = m2["phase"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("vda") && reason.contains("ext2/3/4 filesystem"),
        "{m2:#}"
    );
    vm2.kill().unwrap();
    drop(vm2);
    assert_eq!(
        sha256_file(&disk2),
        disk2_before,
        "machine 2's disk was changed"
    );

    // machine 1: installed, then the same netboot gets its local disk
    let line = vm1
        .wait_for("cairn-install: installed", BOOT)
        .unwrap_or_else(|e| {
            panic!(
                "machine 1 never installed: {e}\nserve log:\n{}",
                read(&lan.serve_log)
            )
        });
    eprintln!("machine 1 installed after {:?}: {line}", t.elapsed());
    let m1 = lan.wait_record(MAC1, "installed", CMD, |m| {
        ["installed", "running"].contains(&m["phase"]["phase"].as_str().unwrap_or_default())
    });
    eprintln!("server: {}", m1["phase"]);
    vm1.wait_for("cairn-init:", BOOT)
        .unwrap_or_else(|e| panic!("machine 1 never booted its disk: {e}"));
    vm1.wait_guest_agent(BOOT).expect("the guest agent answers");
    let cmdline = guest_sh(&mut vm1, "cat /proc/cmdline", CMD);
    assert!(
        cmdline.contains("cairn.slot=a") && !cmdline.contains("cairn.root=ram"),
        "{cmdline}"
    );
    assert!(!cmdline.contains("cairn.install"), "{cmdline}");
    let root = guest_sh(&mut vm1, "lsblk -no PARTLABEL,MOUNTPOINTS /dev/vda", CMD);
    assert!(root.contains("cairn-state"), "{root}");
    eprintln!("machine 1 running from its disk after {:?}", t.elapsed());

    // the server: running slot a, healthy, installed exactly once
    let m1 = lan.wait_record(MAC1, "running and healthy", BOOT, |m| {
        m["phase"]["phase"] == "running" && m["health"]["healthy"] == true
    });
    assert_eq!(m1["phase"]["source"], "a", "{m1:#}");
    let history: Vec<&str> = m1["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["what"].as_str())
        .collect();
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("installing (attempt 1"))
            && !history.iter().any(|h| h.contains("attempt 2")),
        "installed once: {history:?}"
    );
    assert!(
        history.iter().any(|h| h.starts_with("installed ")),
        "{history:?}"
    );
    let gate = guest_sh(
        &mut vm1,
        "journalctl -b -u cairn-health --no-pager -o cat",
        CMD,
    );
    assert!(
        gate.contains("reported to the install server: healthy"),
        "{gate}"
    );
    eprintln!(
        "machine 1 reported running and healthy after {:?}: {}",
        t.elapsed(),
        m1["phase"]
    );
    vm1.kill().unwrap();
    drop(vm1);

    // a netboot of either machine now: the local disk, and the refusal
    let ipxe = |mac: &str| {
        let out = lan.exec(
            "dhcp",
            &[
                "curl",
                "-fsS",
                "--max-time",
                "10",
                &format!("{base}/ipxe?mac={}&platform=efi", mac.replace(':', "-")),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let s = ipxe(MAC1);
    assert!(
        s.contains("booting from the local disk") && !s.contains("cairn.install"),
        "{s}"
    );
    let s = ipxe(MAC2);
    assert!(
        s.contains("install refused")
            && s.contains("ext2/3/4 filesystem")
            && !s.contains("cairn.install"),
        "{s}"
    );
    lan.check_alive();
}
