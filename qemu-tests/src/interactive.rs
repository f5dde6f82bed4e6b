//! `cairn vm`: boot a built image with its serial console on the terminal.
//! [`run_interactive`] resolves `DIR` to `DIR/disk.raw`, runs QEMU in the
//! foreground with the serial port and the monitor multiplexed on stdio
//! (`Ctrl-a x` quits, `Ctrl-a c` toggles the monitor, `Ctrl-c` goes to the
//! guest), on a throwaway overlay unless `persist`, with user networking and
//! SSH forwarded from 127.0.0.1. It logs the QEMU command line at info level
//! and returns QEMU's exit status. The console is also logged to
//! `serial.log` in the VM directory, kept when `CAIRN_KEEP_VM=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::accel::Accel;
use crate::config::{self, Console, Firmware, PortForward, UserNet, VmConfig};
use crate::vm::{self, files, KEEP_ENV};
use crate::VmError;

/// The image file looked for inside a directory argument.
pub const DISK_FILE: &str = "disk.raw";

/// Options of `cairn vm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractiveOptions {
    /// An image directory (holding `disk.raw`) or a disk image (raw or qcow2).
    pub target: PathBuf,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    /// User networking (`--net user`) with SSH forwarded; `false`: no NIC.
    pub net: bool,
    /// Host port for SSH on 127.0.0.1; `None`: a free one is picked.
    pub ssh_port: Option<u16>,
    /// Boot the image itself, keeping changes.
    pub persist: bool,
    pub accel: Accel,
    /// Appended to QEMU's arguments.
    pub extra_args: Vec<String>,
}

impl InteractiveOptions {
    /// UEFI, 2048 MiB, 2 vCPUs, user networking, overlay, accelerator from
    /// the environment.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        InteractiveOptions {
            target: target.into(),
            firmware: Firmware::Uefi,
            memory_mib: 2048,
            cpus: 2,
            net: true,
            ssh_port: None,
            persist: false,
            accel: Accel::from_env(),
            extra_args: Vec::new(),
        }
    }

    /// The VM configuration these options stand for (disk resolved).
    pub fn to_config(&self) -> Result<VmConfig, VmError> {
        let disk = resolve_disk(&self.target)?;
        let name = self
            .target
            .file_stem()
            .map_or_else(|| "vm".to_owned(), |s| s.to_string_lossy().into_owned());
        let mut c = VmConfig::new(name).disk(disk).persist(self.persist);
        c.firmware = self.firmware;
        c.memory_mib = self.memory_mib;
        c.cpus = self.cpus;
        c.accel = self.accel;
        c.guest_agent = false;
        c.echo_serial = false;
        c.net = self.net.then(|| UserNet {
            forwards: vec![PortForward {
                guest_port: 22,
                host_port: self.ssh_port,
            }],
            ..UserNet::default()
        });
        c.extra_args = self.extra_args.clone();
        Ok(c)
    }
}

/// `DIR` → `DIR/disk.raw`; a file is taken as it is.
pub fn resolve_disk(target: &Path) -> Result<PathBuf, VmError> {
    if target.is_dir() {
        let disk = target.join(DISK_FILE);
        if disk.is_file() {
            Ok(disk)
        } else {
            Err(VmError::Missing {
                what: "disk image",
                path: disk,
                hint: " (build the image first: cairn build)",
            })
        }
    } else if target.is_file() {
        Ok(target.to_owned())
    } else {
        Err(VmError::Missing {
            what: "image directory or disk image",
            path: target.to_owned(),
            hint: "",
        })
    }
}

/// Runs QEMU in the foreground on the terminal; see the module doc.
pub fn run_interactive(opts: &InteractiveOptions) -> Result<ExitStatus, VmError> {
    let config = opts.to_config()?;
    let dir = vm::make_dir(&config.name)?;
    let log = dir.path().join(files::SERIAL_LOG);
    let mut layout = vm::prepare(&config, dir.path(), Console::Stdio { log }, false)?;
    layout.forwards = vm::resolve_ports(&config)?;
    let args = config::qemu_args(&config, &layout)?;
    let program = config.qemu.to_string_lossy().into_owned();
    tracing::info!("running: {}", config::shell_line(&program, &args));
    if let Some((host, _)) = layout.forwards.iter().find(|(_, g)| *g == 22) {
        tracing::info!("ssh: ssh -p {host} root@127.0.0.1");
    }
    tracing::info!(
        "serial console on this terminal: Ctrl-a x quits, Ctrl-a c toggles the QEMU monitor"
    );

    let mut cmd = Command::new(&config.qemu);
    cmd.args(&args);
    vm::die_with_parent(&mut cmd);
    let status = cmd.status().map_err(|source| VmError::Spawn {
        program,
        hint: " (install the Debian package `qemu-system-x86`)",
        source,
    })?;
    if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
        let kept = dir.keep();
        tracing::info!("VM files kept in {}", kept.display());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Boot;

    #[test]
    fn directory_resolves_to_disk_raw() {
        let d = tempfile::tempdir().unwrap();
        let err = resolve_disk(d.path()).unwrap_err();
        assert!(err.to_string().contains("disk.raw"), "{err}");
        std::fs::write(d.path().join("disk.raw"), b"").unwrap();
        assert_eq!(resolve_disk(d.path()).unwrap(), d.path().join("disk.raw"));
        let other = d.path().join("x.qcow2");
        std::fs::write(&other, b"").unwrap();
        assert_eq!(resolve_disk(&other).unwrap(), other);
        assert!(resolve_disk(&d.path().join("absent")).is_err());
    }

    #[test]
    fn options_map_to_config() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("base");
        std::fs::create_dir(&img).unwrap();
        std::fs::write(img.join("disk.raw"), b"").unwrap();
        let mut o = InteractiveOptions::new(&img);
        o.firmware = Firmware::Bios;
        o.ssh_port = Some(2222);
        o.memory_mib = 512;
        o.accel = Accel::Tcg;
        let c = o.to_config().unwrap();
        assert_eq!(c.name, "base");
        assert_eq!(c.boot, Boot::Disk);
        assert_eq!(c.disks[0].path, img.join("disk.raw"));
        assert_eq!(c.firmware, Firmware::Bios);
        assert_eq!(c.memory_mib, 512);
        assert!(!c.persist && !c.guest_agent);
        let net = c.net.unwrap();
        assert!(net.restrict);
        assert_eq!(
            net.forwards,
            [PortForward {
                guest_port: 22,
                host_port: Some(2222)
            }]
        );
        o.net = false;
        assert_eq!(o.to_config().unwrap().net, None);
    }

    #[test]
    fn interactive_command_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("disk.raw"), [0u8; 4096]).unwrap();
        let mut o = InteractiveOptions::new(d.path());
        o.ssh_port = Some(2222);
        o.accel = Accel::Tcg;
        o.persist = true; // no qemu-img needed for this unit test
        let mut c = o.to_config().unwrap();
        c.ovmf.vars = d.path().join("vars-template");
        c.ovmf.code = d.path().join("code");
        std::fs::write(&c.ovmf.vars, b"vars").unwrap();
        std::fs::write(&c.ovmf.code, b"code").unwrap();
        let vmdir = tempfile::tempdir().unwrap();
        let log = vmdir.path().join("serial.log");
        let mut layout =
            vm::prepare(&c, vmdir.path(), Console::Stdio { log: log.clone() }, false).unwrap();
        layout.forwards = vm::resolve_ports(&c).unwrap();
        // A fresh, writable copy of the variable store.
        let vars = vmdir.path().join(files::OVMF_VARS);
        assert_eq!(std::fs::read(&vars).unwrap(), b"vars");
        assert!(!std::fs::metadata(&vars).unwrap().permissions().readonly());
        let args = config::qemu_args(&c, &layout).unwrap();
        let joined = args.join(" ");
        assert!(
            joined.contains(&format!(
                "stdio,id=serial0,mux=on,signal=off,logfile={}",
                log.display()
            )),
            "{joined}"
        );
        assert!(
            joined.contains("-mon chardev=serial0,mode=readline"),
            "{joined}"
        );
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:2222-:22"),
            "{joined}"
        );
        assert!(
            joined.contains(&format!(
                "file={},format=raw",
                d.path().join("disk.raw").display()
            )),
            "{joined}"
        );
        assert!(
            !joined.contains("qmp") && !joined.contains("qga"),
            "{joined}"
        );
    }
}
