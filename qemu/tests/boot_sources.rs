//! Each boot source on real firmware, with iPXE (Debian package `ipxe`,
//! plus the NIC ROMs of `ipxe-qemu`) standing in for cairn's artifacts:
//! a disk image (the hybrid `ipxe.iso`) under SeaBIOS and OVMF, a kernel +
//! initrd + command line (`ipxe.lkrn`, which runs its command line and an
//! initrd script), and network boot from slirp's TFTP server. The guest
//! ends each run itself (`reboot` with `-no-reboot` makes QEMU exit).

mod common;

use std::fs;

use cairn_qemu::{Vm, VmConfig};
use common::{ipxe_iso, ipxe_lkrn, timed, SECS};

#[test]
fn disk_boot_under_bios_leaves_image_unchanged() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    fs::copy(ipxe_iso(), &disk)?;
    let before = fs::read(&disk)?;

    let mut vm = Vm::start(
        VmConfig::new("disk-bios")
            .bios()
            .disk(&disk)
            .memory_mib(256),
    )?;
    // The overlay is what QEMU writes to.
    assert!(
        vm.args().iter().any(|a| a.starts_with(&format!(
            "file={}/disk0.qcow2,format=qcow2",
            vm.dir().display()
        ))),
        "{:?}",
        vm.args()
    );
    timed("disk/bios: SeaBIOS boots the disk", || {
        vm.wait_for("Booting from Hard Disk", SECS(30))
    })?;
    timed("disk/bios: isolinux", || vm.wait_for("ISOLINUX", SECS(30)))?;
    timed("disk/bios: iPXE from the disk", || {
        vm.wait_for("iPXE initialising devices", SECS(30))
    })?;
    vm.quit()?;
    vm.wait_exit(SECS(10))?;
    assert!(fs::read(&disk)? == before, "base image changed");
    Ok(())
}

#[test]
fn disk_boot_under_uefi() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    fs::copy(ipxe_iso(), &disk)?;
    let mut vm = Vm::start(
        VmConfig::new("disk-uefi")
            .uefi()
            .disk(&disk)
            .memory_mib(256),
    )?;
    let line = timed("disk/uefi: OVMF starts the disk", || {
        vm.wait_for("BdsDxe: starting Boot", SECS(60))
    })?;
    // A virtio disk shows up in OVMF's boot manager as "UEFI Misc Device".
    assert!(line.contains("UEFI Misc Device"), "{line}");
    timed("disk/uefi: iPXE.efi from the ESP", || {
        vm.wait_for("iPXE initialising devices", SECS(30))
    })?;
    vm.quit()?;
    vm.wait_exit(SECS(10))?;
    Ok(())
}

#[test]
fn kernel_initrd_and_cmdline_boot() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let initrd = tmp.path().join("initrd.ipxe");
    fs::write(
        &initrd,
        "#!ipxe\necho cairn-initrd-script-ran\necho end of script\nsleep 1 || echo\nreboot\n",
    )?;
    // iPXE runs its command line as a script; the initrd is image <INITRD>.
    let cmdline = "echo cairn-cmdline-ran && imgstat && imgexec <INITRD>";
    let mut vm = Vm::start(
        VmConfig::new("kernel")
            .bios()
            .kernel(ipxe_lkrn(), Some(initrd), cmdline)
            .memory_mib(256)
            .no_reboot(true),
    )?;
    timed("kernel: command line ran", || {
        vm.wait_for("cairn-cmdline-ran", SECS(30))
    })?;
    let img = vm.wait_for("<INITRD>", SECS(10))?;
    assert!(img.contains("[script]"), "{img}");
    vm.wait_for("cairn-initrd-script-ran", SECS(10))?;
    // The guest reboots; -no-reboot turns that into QEMU exiting cleanly.
    let exit = timed("kernel: guest reboot ends QEMU", || vm.wait_exit(SECS(20)))?;
    assert!(exit.success(), "{exit}");
    Ok(())
}

fn netboot(name: &str, uefi: bool) -> anyhow::Result<()> {
    let tftp = tempfile::tempdir()?;
    fs::write(
        tftp.path().join("boot.ipxe"),
        format!(
            "#!ipxe\necho cairn-netboot-{name}-ran\necho end of script\nsleep 1 || echo\nreboot\n"
        ),
    )?;
    let mut config = VmConfig::new(name)
        .netboot(tftp.path(), "boot.ipxe")
        .mac("52:54:00:ca:14:01")
        .memory_mib(256)
        .no_reboot(true);
    config = if uefi { config.uefi() } else { config.bios() };
    let mut vm = Vm::start(config)?;
    let line = timed(&format!("{name}: DHCP lease"), || {
        vm.wait_for("Filename: boot.ipxe", SECS(60))
    })?;
    assert_eq!(line.trim(), "Filename: boot.ipxe");
    timed(&format!("{name}: TFTP script ran"), || {
        vm.wait_for(&format!("cairn-netboot-{name}-ran"), SECS(30))
    })?;
    let log = vm.serial_log();
    assert!(
        log.contains("52:54:00:ca:14:01"),
        "the configured MAC is used"
    );
    let exit = vm.wait_exit(SECS(30))?;
    assert!(exit.success(), "{exit}");
    Ok(())
}

#[test]
fn network_boot_under_bios() -> anyhow::Result<()> {
    netboot("pxe-bios", false)
}

#[test]
fn network_boot_under_uefi() -> anyhow::Result<()> {
    netboot("pxe-uefi", true)
}
