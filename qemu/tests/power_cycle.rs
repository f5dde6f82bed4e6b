//! The reset watchdog ([`cairn_qemu::power`]) on a real QEMU and OVMF: a
//! machine whose console went silent after the kernel's reboot line is
//! power-cycled (a new QEMU on the same files, QMP and the serial log
//! followed); a silent machine without that line is left alone.
//!
//! The hang is made by pausing the CPU (`stop`) at OVMF's shell prompt and
//! writing the kernel's last line to the log, as a guest whose firmware
//! hung on its warm reset leaves it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};
use common::{pid_alive, SECS};

/// Longer than OVMF takes to print its first line after a cold start
/// under TCG (3 s was not: the new QEMU was power-cycled again before it
/// spoke).
const STALL: Duration = Duration::from_secs(20);

fn wait_cycles(vm: &Vm, n: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if vm.power_cycles() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_silent_machine_after_a_reboot_line_is_power_cycled_and_others_are_not() -> anyhow::Result<()> {
    let mut vm = Vm::start(
        VmConfig::new("power-cycle")
            .uefi()
            .memory_mib(256)
            .reset_stall(Some(STALL)),
    )?;
    vm.wait_for("Shell>", SECS(90))?;
    let first_pid = vm.pid();
    let vars = vm.dir().join("OVMF_VARS.fd");
    let vars_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&vars)?);

    // Silent, but the last line is the shell's prompt: no power cycle.
    vm.qmp("stop", None)?;
    assert!(
        !wait_cycles(&vm, 1, STALL * 2),
        "power-cycled a paused shell"
    );
    assert_eq!(vm.pid(), first_pid);

    // The kernel's last words before a reset, then silence: a power cycle.
    let log = vm.serial_log_path().to_owned();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)?
        .write_all(b"\r\n[  167.356413] reboot: machine restart\r\n")?;
    assert!(
        wait_cycles(&vm, 1, STALL * 4),
        "no power cycle; log:\n{}",
        vm.serial_log()
    );
    assert_ne!(vm.pid(), first_pid, "the same QEMU");
    assert!(
        !pid_alive(first_pid),
        "the hung QEMU {first_pid} is still there"
    );

    // The new QEMU boots cold into the same log (appended, not truncated),
    // on the same variable store, and answers on QMP.
    let line = vm.wait_for("BdsDxe: starting Boot", SECS(90))?;
    assert!(line.contains("EFI Internal Shell"), "{line}");
    vm.wait_for("Shell>", SECS(90))?;
    let log_text = vm.serial_log();
    let restart = log_text.find("reboot: machine restart").expect("our line");
    assert!(log_text[..restart].contains("Shell>"), "log truncated");
    assert!(
        log_text[restart..].contains("BdsDxe"),
        "no boot after the cycle"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&vars)?),
        vars_inode
    );
    let status = vm.query_status()?;
    assert!(status.running, "{status:?}");
    assert_eq!(vm.power_cycles(), 1);

    vm.quit()?;
    assert!(vm.wait_exit(SECS(10))?.success());
    Ok(())
}
