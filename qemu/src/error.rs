//! [`VmError`]: what starting, controlling or looking inside a VM can fail
//! with. Serial-console waits have their own [`crate::WaitError`].

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file the VM needs is absent (firmware, disk, kernel, ...).
    #[error("{what} not found at {}{hint}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        /// e.g. " (install the Debian package `ovmf`)".
        hint: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program}: {source}{hint}")]
    Spawn {
        program: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img could not create an overlay of {}: {stderr}", base.display())]
    Overlay { base: PathBuf, stderr: String },
    /// QEMU stopped before its QMP socket answered. `dir` (the VM
    /// directory, with `qemu.cmdline` and `qemu.stderr`) is kept.
    #[error("QEMU exited during startup ({status}); files kept in {}\ncommand: {command}\nstderr:\n{stderr}", dir.display())]
    EarlyExit {
        status: ExitStatus,
        command: String,
        stderr: String,
        dir: PathBuf,
    },
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),
    #[error("guest agent: {0}")]
    Agent(#[source] QmpError),
    #[error("the guest agent channel is not enabled in this VmConfig")]
    NoAgent,
    #[error("QEMU (pid {pid}) still running after {:.1}s", waited.as_secs_f64())]
    ExitTimeout { pid: u32, waited: Duration },
    #[error("path is not UTF-8, QEMU cannot be given it: {}", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// A shell command run in the guest ([`crate::Vm::sh`]) did not exit 0.
    #[error("{script:?} failed in the guest ({status:?}):\nstdout: {stdout}\nstderr: {stderr}")]
    GuestCommand {
        script: String,
        status: crate::agent::ExecStatus,
        stdout: String,
        stderr: String,
    },
}

impl VmError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VmError {
        let path = path.into();
        move |source| VmError::Io { path, source }
    }
}
