//! QEMU test (TCG) of the state partition's guard in `/init`: the small
//! test image's kernel and initramfs booted directly on a qcow2 overlay of
//! its disk.
//!
//! 1. First boot: the disk image marked `cairn-state` as never formatted;
//!    `/init` formats it and erases the mark. A file is written under /var.
//! 2. The ext4 superblock's magic is zeroed (a bad sector, a damaged
//!    superblock): `/init` refuses to format the partition, says why on the
//!    console and starts the image's shell there instead of rebooting.
//!    Nothing on the partition is changed.
//! 3. The magic is put back: the system boots and the file from step 1 is
//!    still there.
//!
//! One test function: the steps build on one disk.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_qemu::{DiskFormat, Vm, VmConfig};

mod common;
use common::{guest_sh, test_image};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const CMDLINE: &str = "cairn.slot=a console=ttyS0,115200";

fn qemu_io(disk: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c
        .arg(disk)
        .output()
        .expect("running qemu-io (Debian package qemu-utils)");
    assert!(out.status.success(), "qemu-io {cmds:?}: {out:?}");
}

/// The state partition's first 4 KiB, from `qemu-io`'s hex dump
/// (`ADDRESS:  16 hex bytes  text` per line).
fn state_head(disk: &Path, offset: u64) -> Vec<u8> {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-r", "-c"])
        .arg(format!("read -v {offset} 4096"))
        .arg(disk)
        .output()
        .expect("running qemu-io");
    assert!(out.status.success(), "qemu-io read: {out:?}");
    let mut head = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        if !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        head.extend(
            rest.split(' ')
                .take(16)
                .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{line}"))),
        );
    }
    assert_eq!(
        head.len(),
        4096,
        "qemu-io said:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    head
}

fn boot(name: &str, out: &Path, disk: &Path) -> Vm {
    Vm::start(
        VmConfig::new(name)
            .kernel(out.join("vmlinuz"), Some(out.join("initrd.img")), CMDLINE)
            .disk(disk)
            .persist(true)
            .memory_mib(1024)
            .no_reboot(true),
    )
    .expect("starting QEMU")
}

#[test]
fn a_damaged_state_partition_is_never_formatted() {
    common::lan::require("qemu-io", "qemu-utils");
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let info = cairn_disk::inspect(&out.join("disk.raw")).unwrap();
    let state = info
        .partitions
        .iter()
        .find(|p| p.name == "cairn-state")
        .expect("a cairn-state partition")
        .offset();
    let disk = work.path().join("disk.qcow2");
    cairn_qemu::vm::create_overlay(&out.join("disk.raw"), DiskFormat::Raw, &disk)
        .expect("qcow2 overlay over disk.raw");
    assert_eq!(
        &state_head(&disk, state)[..32],
        cairn_disk::STATE_NEW_MARK,
        "the disk image marks its state partition as new"
    );

    // --- 1. first boot formats the state and erases the mark
    let mut vm = boot("state-first", &out, &disk);
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    let fs = guest_sh(&mut vm, "findmnt -n -o FSTYPE,SOURCE /var", CMD);
    assert!(fs.starts_with("ext4"), "/var: {fs}");
    let mark = guest_sh(
        &mut vm,
        "cmp -s -n 32 /dev/disk/by-partlabel/cairn-state /dev/zero && echo erased || echo present",
        CMD,
    );
    assert_eq!(mark.trim(), "erased", "the mark after formatting");
    guest_sh(
        &mut vm,
        "echo 'kept across a refused boot' > /var/lib/cairn-keep && sync",
        CMD,
    );
    vm.kill().unwrap();
    drop(vm);

    // --- 2. the superblock's magic is gone: refused, a shell, no change
    let magic = state + 1024 + 56;
    qemu_io(&disk, &[format!("write -P 0 {magic} 2")]);
    let before = state_head(&disk, state);
    let mut vm = boot("state-damaged", &out, &disk);
    let fatal = vm
        .wait_for("cairn-init: FATAL:", BOOT)
        .expect("/init reports the damaged state partition");
    assert!(
        fatal.contains("holds no ext4 file system") && fatal.contains("not formatting it"),
        "{fatal}"
    );
    vm.wait_for("cairn-init: emergency shell", CMD)
        .expect("/init starts the emergency shell");
    vm.wait_for("(cairn emergency) #", CMD)
        .expect("the shell's prompt on the console");
    // it stays there: no reboot (QEMU runs with -no-reboot and would exit)
    assert!(
        vm.wait_exit(Duration::from_secs(15)).is_err(),
        "/init rebooted instead of stopping"
    );
    vm.kill().unwrap();
    drop(vm);
    assert_eq!(
        state_head(&disk, state),
        before,
        "the refused partition changed"
    );

    // --- 3. repaired: the data from step 1 is there
    qemu_io(
        &disk,
        &[
            format!("write -P 0x53 {magic} 1"),
            format!("write -P 0xef {} 1", magic + 1),
        ],
    );
    let mut vm = boot("state-repaired", &out, &disk);
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    let kept = guest_sh(&mut vm, "cat /var/lib/cairn-keep", CMD);
    assert_eq!(kept.trim(), "kept across a refused boot");
    vm.quit().ok();
}
