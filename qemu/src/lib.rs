//! cairn-qemu: the QEMU harness that boots cairn artifacts and looks
//! inside them. It owns starting and stopping QEMU (`qemu-system-x86_64`),
//! its command line, the per-VM files (qcow2 overlays so images stay
//! untouched, a fresh OVMF variable store, sockets, logs), the serial
//! console, QMP and the guest-agent client; the boot tests under `tests/`
//! and `cairn vm` ([`run_interactive`]) are built on it. It must not build
//! images or know their layout: callers hand it paths.
//!
//! # Accelerator
//!
//! The default is TCG (software emulation) everywhere. KVM is used only when
//! `CAIRN_ACCEL=kvm` is set ([`Accel::from_env`]): on the project's machines
//! `/dev/kvm` exists but opening it hangs, so the harness never probes it.
//!
//! # Environment
//!
//! * `CAIRN_ACCEL=kvm|tcg` — accelerator (default tcg).
//! * `CAIRN_KEEP_VM=1` — keep every VM directory (always kept for a failed
//!   test; the path is printed).
//! * `CAIRN_VM_ECHO=1` — copy each VM's serial console to stderr live.
//! * `CAIRN_VM_DIR` — parent of the VM directories (default: temp dir).
//! * `CAIRN_VM_JOBS` — how many VMs run at once on this machine, across
//!   processes (default: the number of CPUs; see [`slots`]).
//! * `CAIRN_QEMU`, `CAIRN_OVMF_CODE`, `CAIRN_OVMF_VARS` — other binaries or
//!   firmware than Debian's.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use cairn_qemu::{Vm, VmConfig};
//!
//! let mut vm = Vm::start(VmConfig::new("smoke").uefi().disk("out/disk.raw").forward_ssh())?;
//! vm.wait_for("Reached target multi-user.target", Duration::from_secs(120))?;
//! vm.wait_guest_agent(Duration::from_secs(60))?;
//! let out = vm.guest_exec(&["systemctl", "is-system-running"], Duration::from_secs(30))?;
//! assert_eq!(out.stdout_str().trim(), "running");
//! vm.powerdown()?;
//! vm.wait_exit(Duration::from_secs(60))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod accel;
pub mod agent;
pub mod config;
mod error;
pub mod interactive;
pub mod port;
pub mod power;
pub mod qmp;
pub mod serial;
pub mod slots;
pub mod vm;

pub use accel::Accel;
pub use agent::{ExecOutput, ExecStatus};
pub use config::{
    Boot, Disk, DiskFormat, Firmware, GuestForward, KernelBoot, NetBoot, Ovmf, PortForward,
    UserNet, VmConfig,
};
pub use error::VmError;
pub use interactive::{run_interactive, InteractiveOptions};
pub use qmp::{Event, QmpError};
pub use serial::WaitError;
pub use vm::{Vm, VmStatus};
