//! `cairn vm`: boot a built image with its serial console on the terminal.
//! [`run_interactive`] resolves `DIR` to `DIR/disk.raw`, runs QEMU in the
//! foreground with the serial port and the monitor multiplexed on stdio
//! (`Ctrl-a x` quits, `Ctrl-a c` toggles the monitor, `Ctrl-c` goes to the
//! guest), on a throwaway overlay unless `persist`, with user networking and
//! SSH forwarded from 127.0.0.1, and the caller's config drive (if any) as
//! a second disk. Once the forwarded port answers with an SSH banner it
//! prints `ready: ssh -p PORT USER@127.0.0.1` to stderr, once. It holds a
//! [`crate::slots`] slot while QEMU runs, logs the QEMU command line at info
//! level and returns QEMU's exit status. The console is also logged to
//! `serial.log` in the VM directory, kept when `CAIRN_KEEP_VM=1`. Standard
//! input need not be a terminal (a pipe works: bytes go to the console,
//! `Ctrl-a x` still quits).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::accel::Accel;
use crate::config::{self, Console, Disk, DiskFormat, Firmware, PortForward, UserNet, VmConfig};
use crate::vm::{self, files, KEEP_ENV};
use crate::VmError;

/// The image file looked for inside a directory argument.
pub const DISK_FILE: &str = cairn_formats::image_dir::DISK;

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
    /// A config drive image (raw, e.g. from `cairn_disk::config_drive`)
    /// attached as a second virtio disk; an overlay protects it unless
    /// `persist`.
    pub config_drive: Option<PathBuf>,
    /// The user in the `ready: ssh` line.
    pub ssh_user: String,
    /// A private key named with `-i` in the `ready: ssh` line (one ssh
    /// would not try by itself).
    pub ssh_identity: Option<PathBuf>,
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
            config_drive: None,
            ssh_user: "core".to_owned(),
            ssh_identity: None,
            extra_args: Vec::new(),
        }
    }

    /// The line printed once SSH answers on `port`.
    pub fn ready_line(&self, port: u16) -> String {
        let mut line = format!("ready: ssh -p {port} {}@127.0.0.1", self.ssh_user);
        if let Some(key) = &self.ssh_identity {
            line.push_str(&format!(" -i {}", key.display()));
        }
        line
    }

    /// The VM configuration these options stand for (disk resolved).
    pub fn to_config(&self) -> Result<VmConfig, VmError> {
        let disk = resolve_disk(&self.target)?;
        let name = self
            .target
            .file_stem()
            .map_or_else(|| "vm".to_owned(), |s| s.to_string_lossy().into_owned());
        let mut c = VmConfig::new(name).disk(disk).persist(self.persist);
        if let Some(drive) = &self.config_drive {
            c.disks.push(Disk {
                path: drive.clone(),
                format: Some(DiskFormat::Raw),
            });
        }
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

/// Whether `127.0.0.1:port` answers with an SSH-2 banner within the
/// timeouts. A slirp forward accepts a connection even when nothing listens
/// in the guest (and then closes it), so a connection alone proves nothing.
pub fn ssh_answers(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    if s.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 8 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let answers = got.starts_with(b"SSH-2.0-");
    if answers {
        // say who we are before leaving, so sshd logs a plain closed
        // connection rather than a failed identification exchange
        let _ = std::io::Write::write_all(&mut s, b"SSH-2.0-cairn-vm-probe\r\n");
    }
    answers
}

/// Polls the forwarded SSH port until it answers (then prints `line` to
/// stderr, once) or `stop` is set; every round is bounded, so the thread
/// ends soon after QEMU does.
fn watch_ssh(port: u16, line: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if ssh_answers(port, Duration::from_secs(3)) {
                if !stop.load(Ordering::Relaxed) {
                    // on a terminal the console may be mid-line (a login
                    // prompt): start a fresh one
                    let fresh = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        "\r\n"
                    } else {
                        ""
                    };
                    eprintln!("{fresh}{line}");
                }
                return;
            }
            for _ in 0..10 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
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
    let ssh_port = layout
        .forwards
        .iter()
        .find(|(_, g)| *g == 22)
        .map(|(h, _)| *h);
    if let Some(port) = ssh_port {
        tracing::info!(
            "SSH: 127.0.0.1:{port} forwarded to the guest's port 22; the ssh command follows once sshd answers"
        );
    }
    tracing::info!(
        "serial console on this terminal: Ctrl-a x quits, Ctrl-a c toggles the QEMU monitor"
    );

    // one VM slot, as every harness VM holds (CAIRN_VM_JOBS)
    let _slot = crate::slots::for_vm(&config.name)?;
    let mut cmd = Command::new(&config.qemu);
    cmd.args(&args);
    vm::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
        program,
        hint: " (install the Debian package `qemu-system-x86`)",
        source,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = ssh_port.map(|port| watch_ssh(port, opts.ready_line(port), stop.clone()));
    let status = child.wait().map_err(VmError::io(&config.qemu));
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let status = status?;
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
    fn config_drive_is_a_second_raw_disk_and_the_ready_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("disk.raw"), b"").unwrap();
        let mut o = InteractiveOptions::new(d.path());
        assert_eq!(o.ready_line(2222), "ready: ssh -p 2222 core@127.0.0.1");
        o.config_drive = Some(d.path().join("config.img"));
        o.ssh_identity = Some(PathBuf::from("/k/id_test"));
        let c = o.to_config().unwrap();
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.disks[0].path, d.path().join("disk.raw"));
        assert_eq!(
            c.disks[1],
            Disk {
                path: d.path().join("config.img"),
                format: Some(DiskFormat::Raw)
            }
        );
        assert_eq!(
            o.ready_line(2222),
            "ready: ssh -p 2222 core@127.0.0.1 -i /k/id_test"
        );
    }

    #[test]
    fn only_an_ssh_banner_counts_as_ready() {
        use std::io::Write;
        use std::net::TcpListener;
        let serve = |reply: &'static [u8]| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                if let Ok((mut c, _)) = l.accept() {
                    let _ = c.write_all(reply);
                }
            });
            port
        };
        let t = Duration::from_secs(5);
        assert!(ssh_answers(serve(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"), t));
        // what slirp does with nothing listening in the guest: accept, close
        assert!(!ssh_answers(serve(b""), t));
        assert!(!ssh_answers(serve(b"HTTP/1.1 400 Bad Request\r\n"), t));
        // nothing listening at all
        let port = crate::vm::free_port().unwrap();
        assert!(!ssh_answers(port, t));
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
