//! Real QEMU, real firmware, no disk: OVMF reaches its shell and SeaBIOS
//! reports no bootable device, both on the serial console; QMP status,
//! reset, quit and kill work on them.

mod common;

use cairn_qemu::{Vm, VmConfig};
use common::{pid_alive, processes_mentioning, timed, SECS};

#[test]
fn uefi_reaches_shell_on_serial_resets_and_quits() -> anyhow::Result<()> {
    let mut vm = Vm::start(VmConfig::new("uefi-shell").uefi().memory_mib(256))?;
    let status = vm.query_status()?;
    assert!(status.running, "{status:?}");
    assert_eq!(status.status, "running");

    // With no disk and no NIC, OVMF's boot manager falls through to the
    // built-in shell, and says so on serial.
    let line = timed("uefi: BdsDxe starts the shell", || {
        vm.wait_for("BdsDxe: starting Boot", SECS(60))
    })?;
    assert!(line.contains("EFI Internal Shell"), "{line}");
    timed("uefi: shell banner", || {
        vm.wait_for("UEFI Interactive Shell", SECS(30))
    })?;
    timed("uefi: shell prompt", || vm.wait_for("Shell>", SECS(30)))?;

    // The VM has its own variable store; the template is untouched.
    let vars = vm.dir().join("OVMF_VARS.fd");
    assert_eq!(
        std::fs::metadata(&vars)?.len(),
        std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.fd")?.len()
    );
    assert!(vm
        .args()
        .iter()
        .any(|a| a == &format!("if=pflash,format=raw,unit=1,file={}", vars.display())));

    // Reset: the firmware starts over, seen by a RESET event and new output.
    vm.skip_serial_backlog()?;
    vm.reset()?;
    let ev = vm.wait_event("RESET", SECS(10))?;
    assert_eq!(ev.data["guest"], false, "{ev:?}");
    timed("uefi: BdsDxe after reset", || {
        vm.wait_for("BdsDxe: starting Boot", SECS(60))
    })?;

    // The ACPI power button is pressed (QEMU confirms with POWERDOWN); the
    // firmware ignores it, so the machine keeps running.
    vm.powerdown()?;
    vm.wait_event("POWERDOWN", SECS(10))?;
    assert!(vm.query_status()?.running);

    vm.quit()?;
    let exit = vm.wait_exit(SECS(10))?;
    assert!(exit.success(), "{exit}");
    assert!(!pid_alive(vm.pid()));
    Ok(())
}

#[test]
fn bios_reports_no_bootable_device_on_serial_and_kill_leaves_nothing() -> anyhow::Result<()> {
    let mut vm = Vm::start(VmConfig::new("bios-empty").bios().memory_mib(128))?;
    let dir = vm.dir().to_owned();
    // SeaBIOS prints on serial only through its sercon (fw_cfg
    // etc/sercon-port), which the harness turns on for BIOS VMs.
    let banner = vm.wait_for("SeaBIOS (version", SECS(30))?;
    assert!(banner.starts_with("SeaBIOS (version "), "{banner}");
    timed("bios: no bootable device", || {
        vm.wait_for("No bootable device", SECS(30))
    })?;

    let pid = vm.pid();
    assert!(pid_alive(pid));
    let status = vm.kill()?;
    assert!(!status.success(), "SIGKILL is not a clean exit: {status}");
    assert!(!pid_alive(pid), "QEMU {pid} still exists after kill()");
    assert!(
        processes_mentioning(&dir.display().to_string()).is_empty(),
        "a process still uses {}",
        dir.display()
    );
    // Nothing answers on QMP any more, and status says so.
    assert!(vm.query_status().is_err());
    assert_eq!(vm.wait_exit(SECS(1))?, status);
    vm.keep_dir(false); // the failed QMP call above was expected
    Ok(())
}
