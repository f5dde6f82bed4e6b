//! [`Vm`]: one running QEMU process and everything around it, in a private
//! directory: the disk overlays, the OVMF variable store copy, the QMP and
//! guest-agent sockets, the serial log and QEMU's stderr. It starts QEMU,
//! waits on the serial console, drives QMP (power, reset, quit, status,
//! events), the guest agent (exec, file read), and cleans up: dropping a
//! `Vm` SIGKILLs QEMU; its directory is deleted unless the test failed
//! (panicking thread, or an error from this `Vm`), `CAIRN_KEEP_VM=1` is set
//! or [`Vm::keep_dir`] said so, in which case its path is printed.
//!
//! QEMU is started with `PR_SET_PDEATHSIG=SIGKILL`: if the test process
//! dies, QEMU dies too. Linux ties that signal to the *thread* that spawned
//! QEMU, so keep a `Vm` on the thread that started it (tests do).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::agent::{ExecOutput, GuestAgent};
use crate::config::{self, Boot, Console, DiskFormat, Firmware, Layout, VmConfig};
use crate::power::{self, Launcher, Proc, ResetWatchdog};
use crate::qmp::{Event, Qmp, QmpError};
use crate::serial::{LogWatcher, WaitError};
use crate::VmError;

/// Set to `1` to keep every VM directory.
pub const KEEP_ENV: &str = "CAIRN_KEEP_VM";
/// Parent directory for VM directories (default: the system temp dir).
pub const VM_DIR_ENV: &str = "CAIRN_VM_DIR";

/// How long QEMU may take to open its QMP socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one QMP command.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one guest-agent call inside file reads.
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// File names inside a VM directory.
pub mod files {
    pub const SERIAL_LOG: &str = "serial.log";
    pub const QMP_SOCKET: &str = "qmp.sock";
    pub const QGA_SOCKET: &str = "qga.sock";
    pub const OVMF_VARS: &str = "OVMF_VARS.fd";
    pub const SERCON: &str = "sercon-port.bin";
    pub const FIRMWARE_DEBUG_LOG: &str = "firmware-debug.log";
    pub const QEMU_STDERR: &str = "qemu.stderr";
    pub const COMMAND: &str = "qemu.cmdline";
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// QEMU's run state: `running`, `paused`, `shutdown`, `prelaunch`,
    /// `guest-panicked`, `watchdog`, ...
    pub status: String,
    pub running: bool,
}

/// A running (or finished) QEMU.
pub struct Vm {
    name: String,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    /// QEMU, shared with the reset watchdog (which may replace it).
    proc: power::Shared,
    /// The [`power::Proc::generation`] `qmp` is connected to.
    qmp_generation: u64,
    qmp_path: PathBuf,
    qmp: Option<Qmp>,
    agent: Option<GuestAgent>,
    serial: LogWatcher,
    /// `(guest_port, host_port)`.
    forwards: Vec<(u16, u16)>,
    program: String,
    args: Vec<String>,
    keep: Option<bool>,
    failed: bool,
    echo: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    watchdog: Option<power::ResetWatchdog>,
    /// This VM's place in the machine-wide VM limit, given back on drop
    /// (after QEMU has exited).
    slot: Option<crate::slots::Held>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("dir", &self.dir_path)
            .field("exit", &power::lock(&self.proc).exit)
            .finish_non_exhaustive()
    }
}

/// Creates the VM directory under `$CAIRN_VM_DIR` or the temp dir. Kept
/// short: unix socket paths are limited to 107 bytes.
pub(crate) fn make_dir(name: &str) -> Result<TempDir, VmError> {
    let parent = std::env::var_os(VM_DIR_ENV).map_or_else(std::env::temp_dir, PathBuf::from);
    fs::create_dir_all(&parent).map_err(VmError::io(&parent))?;
    let short: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    tempfile::Builder::new()
        .prefix(&format!("cairn-vm-{short}-"))
        .tempdir_in(&parent)
        .map_err(VmError::io(&parent))
}

/// Checks the inputs exist, then creates the per-VM files in `dir`:
/// overlays (unless `persist`), the OVMF vars copy, the SeaBIOS sercon
/// file. Ports are left for [`resolve_ports`].
pub(crate) fn prepare(
    config: &VmConfig,
    dir: &Path,
    console: Console,
    control: bool,
) -> Result<Layout, VmError> {
    if config.cpus == 0 || config.memory_mib < 16 {
        return Err(VmError::Config(format!(
            "{} vCPUs and {} MiB cannot boot",
            config.cpus, config.memory_mib
        )));
    }
    if config.boot == Boot::Disk && config.disks.is_empty() {
        return Err(VmError::Config(
            "boot from disk, but no disk attached".into(),
        ));
    }
    match &config.boot {
        Boot::Kernel(k) => {
            require(&k.kernel, "kernel", "")?;
            if let Some(i) = &k.initrd {
                require(i, "initrd", "")?;
            }
        }
        Boot::Network(n) if !n.tftp_root.is_dir() => {
            return Err(VmError::Missing {
                what: "TFTP root directory",
                path: n.tftp_root.clone(),
                hint: "",
            })
        }
        _ => {}
    }

    let mut drives = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        require(&disk.path, "disk image", "")?;
        let format = match disk.format {
            Some(f) => f,
            None => DiskFormat::detect(&disk.path).map_err(VmError::io(&disk.path))?,
        };
        if config.persist {
            drives.push((disk.path.clone(), format));
        } else {
            let overlay = dir.join(format!("disk{i}.qcow2"));
            create_overlay(&disk.path, format, &overlay)?;
            drives.push((overlay, DiskFormat::Qcow2));
        }
    }

    let ovmf_vars = match config.firmware {
        Firmware::Uefi => {
            const HINT: &str = " (install the Debian package `ovmf`)";
            require(&config.ovmf.code, "OVMF firmware code", HINT)?;
            require(&config.ovmf.vars, "OVMF variable store template", HINT)?;
            let vars = dir.join(files::OVMF_VARS);
            fs::copy(&config.ovmf.vars, &vars).map_err(VmError::io(&vars))?;
            // The template is installed read-only; the copy must be writable.
            let mut perm = fs::metadata(&vars)
                .map_err(VmError::io(&vars))?
                .permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            fs::set_permissions(&vars, perm).map_err(VmError::io(&vars))?;
            Some(vars)
        }
        Firmware::Bios => None,
    };
    let sercon_file = if config.firmware == Firmware::Bios && config.bios_serial_console {
        let p = dir.join(files::SERCON);
        // SeaBIOS reads the file as a little-endian integer: COM1 = 0x3f8.
        fs::write(&p, 0x3f8u16.to_le_bytes()).map_err(VmError::io(&p))?;
        Some(p)
    } else {
        None
    };

    Ok(Layout {
        drives,
        ovmf_vars,
        sercon_file,
        console,
        qmp_socket: control.then(|| dir.join(files::QMP_SOCKET)),
        qga_socket: (control && config.guest_agent).then(|| dir.join(files::QGA_SOCKET)),
        firmware_debug_log: config
            .firmware_debug_log
            .then(|| dir.join(files::FIRMWARE_DEBUG_LOG)),
        forwards: Vec::new(),
    })
}

fn require(path: &Path, what: &'static str, hint: &'static str) -> Result<(), VmError> {
    if path.exists() {
        Ok(())
    } else {
        Err(VmError::Missing {
            what,
            path: path.to_owned(),
            hint,
        })
    }
}

/// `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY`: writes go to the
/// overlay, the base stays as it was.
pub fn create_overlay(base: &Path, format: DiskFormat, overlay: &Path) -> Result<(), VmError> {
    let abs = fs::canonicalize(base).map_err(VmError::io(base))?;
    let out = Command::new("qemu-img")
        .arg("create")
        .arg("-q")
        .args(["-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&abs)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::Spawn {
            program: "qemu-img".into(),
            hint: " (install the Debian package `qemu-utils`)",
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Overlay {
            base: abs,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Gives every forward a host port: the configured one, or a port that is
/// free on 127.0.0.1 right now.
pub(crate) fn resolve_ports(config: &VmConfig) -> Result<Vec<(u16, u16)>, VmError> {
    let Some(net) = &config.net else {
        return Ok(Vec::new());
    };
    net.forwards
        .iter()
        .map(|f| {
            let host = match f.host_port {
                Some(p) => p,
                None => free_port()?,
            };
            Ok((host, f.guest_port))
        })
        .collect()
}

/// A TCP port that nothing listens on at 127.0.0.1 at this moment, out of
/// the way of other processes' ports ([`crate::port`]).
pub fn free_port() -> Result<u16, VmError> {
    crate::port::free_port().map_err(VmError::io("127.0.0.1"))
}

/// Makes QEMU die with the thread that started it.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2) and getppid(2), which are async-signal-safe; it touches
    // no memory of the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then we are orphaned.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent exited before QEMU started"));
            }
            Ok(())
        });
    }
}

impl Vm {
    /// Waits for a VM slot ([`crate::slots`]), prepares the VM directory
    /// and starts QEMU; returns once QMP answers.
    pub fn start(config: VmConfig) -> Result<Vm, VmError> {
        let slot = crate::slots::for_vm(&config.name)?;
        let dir = make_dir(&config.name)?;
        let dir_path = dir.path().to_owned();
        let serial_log = dir_path.join(files::SERIAL_LOG);
        let result =
            prepare(&config, &dir_path, Console::File(serial_log), true).and_then(|layout| {
                // A picked port can be taken between the check and QEMU's bind:
                // retry with new ports when that is why QEMU failed.
                let auto_ports = config
                    .net
                    .as_ref()
                    .is_some_and(|n| n.forwards.iter().any(|f| f.host_port.is_none()));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut layout = layout.clone();
                    layout.forwards = resolve_ports(&config)?;
                    match Vm::launch(&config, &dir_path, layout) {
                        Err(VmError::EarlyExit { stderr, .. })
                            if auto_ports
                                && attempt < 4
                                && stderr.contains("host forwarding rule") =>
                        {
                            tracing::debug!("host port taken, retrying: {stderr}");
                        }
                        other => return other,
                    }
                }
            });
        match result {
            Ok(mut vm) => {
                vm.dir = Some(dir);
                vm.slot = Some(slot);
                Ok(vm)
            }
            Err(e) => {
                // Keep what explains a failed start (stderr, command line);
                // a config mistake leaves nothing worth keeping.
                if matches!(
                    e,
                    VmError::EarlyExit { .. } | VmError::Qmp(_) | VmError::Overlay { .. }
                ) {
                    let kept = dir.keep();
                    eprintln!(
                        "cairn-qemu: VM {:?} failed to start; its files are kept in {}",
                        config.name,
                        kept.display()
                    );
                }
                Err(e)
            }
        }
    }

    fn launch(config: &VmConfig, dir: &Path, layout: Layout) -> Result<Vm, VmError> {
        let args = config::qemu_args(config, &layout)?;
        let program = config.qemu.to_string_lossy().into_owned();
        let mut line = config::shell_line(&program, &args);
        if let Some(ns) = &config.netns {
            line = format!("ip netns exec {ns} {line}");
        }
        tracing::info!(vm = %config.name, "starting: {line}");
        let cmd_file = dir.join(files::COMMAND);
        fs::write(&cmd_file, format!("{line}\n")).map_err(VmError::io(&cmd_file))?;
        let stderr_path = dir.join(files::QEMU_STDERR);
        let launcher = Launcher {
            program: config.qemu.clone(),
            args: args.clone(),
            netns: config.netns.clone(),
            stderr: stderr_path.clone(),
            sockets: [&layout.qmp_socket, &layout.qga_socket]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        };
        let child = launcher.spawn(false).map_err(|source| VmError::Spawn {
            program: program.clone(),
            hint: " (install the Debian package `qemu-system-x86`)",
            source,
        })?;

        let serial_path = match &layout.console {
            Console::File(p) | Console::Stdio { log: p } => p.clone(),
        };
        let mut vm = Vm {
            name: config.name.clone(),
            dir: None,
            dir_path: dir.to_owned(),
            proc: Arc::new(Mutex::new(Proc {
                child,
                exit: None,
                generation: 0,
            })),
            qmp_generation: 0,
            qmp_path: layout.qmp_socket.clone().expect("test VMs always have QMP"),
            qmp: None,
            agent: layout.qga_socket.clone().map(GuestAgent::new),
            serial: LogWatcher::new(&serial_path),
            forwards: layout.forwards.iter().map(|&(h, g)| (g, h)).collect(),
            program,
            args,
            keep: None,
            failed: false,
            echo: None,
            watchdog: None,
            slot: None,
        };
        if let Err(e) = vm.connect_qmp() {
            if let Some(status) = vm.try_exit_status() {
                return Err(VmError::EarlyExit {
                    status,
                    command: line,
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                    dir: dir.to_owned(),
                });
            }
            return Err(e);
        }
        if let Some(stall) = config.reset_stall {
            vm.watchdog = Some(ResetWatchdog::start(
                config.name.clone(),
                vm.proc.clone(),
                launcher,
                serial_path.clone(),
                stall,
            ));
        }
        if config.echo_serial {
            vm.echo = Some(spawn_echo(serial_path));
        }
        Ok(vm)
    }

    /// (Re)connects QMP to the current QEMU: waits for its socket, up to
    /// [`STARTUP_TIMEOUT`], unless QEMU exits first.
    fn connect_qmp(&mut self) -> Result<(), VmError> {
        self.qmp = None;
        let generation = power::lock(&self.proc).generation;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let sock = loop {
            if let Some(status) = self.try_exit_status() {
                return Err(VmError::Qmp(QmpError::Io(io::Error::other(format!(
                    "QEMU exited ({status}) before its QMP socket {} answered",
                    self.qmp_path.display()
                )))));
            }
            match UnixStream::connect(&self.qmp_path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(VmError::Qmp(QmpError::Io(io::Error::new(
                        e.kind(),
                        format!(
                            "QMP socket {} not ready after {STARTUP_TIMEOUT:?}: {e}",
                            self.qmp_path.display()
                        ),
                    ))))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.qmp = Some(Qmp::from_stream(sock, QMP_TIMEOUT)?);
        self.qmp_generation = generation;
        Ok(())
    }

    /// After a power cycle by the reset watchdog: a new QMP connection and
    /// a new guest-agent client (the old ones talked to the killed QEMU).
    fn follow_power_cycle(&mut self) -> Result<(), VmError> {
        let generation = power::lock(&self.proc).generation;
        if generation == self.qmp_generation {
            return Ok(());
        }
        if let Some(a) = self.agent.as_ref() {
            self.agent = Some(GuestAgent::new(a.path().to_owned()));
        }
        self.connect_qmp()
    }

    /// How many times the reset watchdog power-cycled this VM because its
    /// firmware hung after a guest reboot ([`crate::power`]).
    pub fn power_cycles(&self) -> u32 {
        self.watchdog.as_ref().map_or(0, ResetWatchdog::cycles)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VM's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn serial_log_path(&self) -> &Path {
        self.serial.path()
    }

    /// The whole serial log so far, as lossy UTF-8 with escapes intact.
    pub fn serial_log(&self) -> String {
        fs::read(self.serial.path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        power::lock(&self.proc).child.id()
    }

    /// The QEMU arguments (without the program).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The command line as one shell-quoted string.
    pub fn command_line(&self) -> String {
        config::shell_line(&self.program, &self.args)
    }

    /// The 127.0.0.1 port forwarded to `guest_port`, if any.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|&(_, h)| h)
    }

    /// `host_port(22)`.
    pub fn ssh_port(&self) -> Option<u16> {
        self.host_port(22)
    }

    /// Keep (`true`) or delete (`false`) the directory on drop, whatever
    /// happened; the default decides by failure and `CAIRN_KEEP_VM`.
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep = Some(keep);
    }

    /// Records that the test failed, so the directory is kept.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    fn note<T, E>(&mut self, r: Result<T, E>) -> Result<T, E> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    // ---- serial console ----

    /// Waits for a serial line containing `pattern` (a plain substring, after
    /// ANSI escapes are removed; see [`crate::serial`]), scanning from where
    /// the previous wait stopped. Returns the matched line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, WaitError> {
        self.wait_for_any(&[pattern], timeout).map(|(_, l)| l)
    }

    /// Waits for the first of several patterns; returns its index and line.
    pub fn wait_for_any(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), WaitError> {
        let Vm { serial, proc, .. } = self;
        let r = serial.wait_for_any(patterns, timeout, || power::lock(proc).poll());
        self.note(r)
    }

    /// Ignores serial output written so far (e.g. before a reset).
    pub fn skip_serial_backlog(&mut self) -> Result<(), WaitError> {
        let path = self.serial.path().to_owned();
        self.serial.skip_to_end().map_err(|source| WaitError::Io {
            log_path: path,
            source,
        })
    }

    // ---- process ----

    /// QEMU's exit status if it has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        power::lock(&self.proc).poll()
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits for QEMU to exit on its own (after `quit`, a guest power-off,
    /// or a reboot with `no_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit_status() {
                self.qmp = None;
                return Ok(s);
            }
            if start.elapsed() >= timeout {
                self.failed = true;
                return Err(VmError::ExitTimeout {
                    pid: self.pid(),
                    waited: start.elapsed(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs QEMU (a power cut: nothing is flushed) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, VmError> {
        if let Some(s) = self.try_exit_status() {
            return Ok(s);
        }
        let mut p = power::lock(&self.proc);
        let pid = p.child.id();
        match p.child.kill() {
            Ok(()) => {}
            // Exited between the check and the kill.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(source) => {
                return Err(VmError::Io {
                    path: format!("pid {pid}").into(),
                    source,
                })
            }
        }
        let status = p.child.wait().map_err(VmError::io(format!("pid {pid}")))?;
        p.exit = Some(status);
        drop(p);
        self.qmp = None;
        Ok(status)
    }

    // ---- QMP ----

    /// Runs any QMP command; the escape hatch.
    pub fn qmp(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        self.follow_power_cycle()?;
        let qmp = self.qmp.as_mut().ok_or(VmError::Qmp(QmpError::Closed {
            command: command.to_owned(),
        }))?;
        let r = qmp
            .execute(command, arguments, QMP_TIMEOUT)
            .map_err(VmError::Qmp);
        self.note(r)
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<VmStatus, VmError> {
        let v = self.qmp("query-status", None)?;
        Ok(VmStatus {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            running: v.get("running").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// `system_powerdown`: presses the ACPI power button (the guest decides).
    pub fn powerdown(&mut self) -> Result<(), VmError> {
        self.qmp("system_powerdown", None).map(drop)
    }

    /// `system_reset`: the reset button.
    pub fn reset(&mut self) -> Result<(), VmError> {
        self.qmp("system_reset", None).map(drop)
    }

    /// `quit`: QEMU exits at once (use [`wait_exit`](Self::wait_exit) to
    /// reap it).
    pub fn quit(&mut self) -> Result<(), VmError> {
        let Some(qmp) = self.qmp.as_mut() else {
            return Ok(()); // already gone
        };
        match qmp.execute("quit", None, QMP_TIMEOUT) {
            // QEMU may close the socket before its answer arrives.
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => {
                self.failed = true;
                Err(e.into())
            }
        }
    }

    /// Events QEMU sent so far and not yet returned.
    pub fn events(&mut self) -> Result<Vec<Event>, VmError> {
        self.follow_power_cycle()?;
        let qmp = self.qmp.as_mut().ok_or(VmError::Qmp(QmpError::Closed {
            command: "events".into(),
        }))?;
        Ok(qmp.take_events()?)
    }

    /// Waits for an event by name (`SHUTDOWN`, `RESET`, `WATCHDOG`, ...).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event, VmError> {
        self.follow_power_cycle()?;
        let qmp = self.qmp.as_mut().ok_or(VmError::Qmp(QmpError::Closed {
            command: name.into(),
        }))?;
        let r = qmp.wait_event(name, timeout).map_err(VmError::Qmp);
        self.note(r)
    }

    // ---- guest agent ----

    fn agent(&mut self) -> Result<&mut GuestAgent, VmError> {
        // A power cycle mid-way is survivable: the agent reconnects itself.
        let _ = self.follow_power_cycle();
        self.agent.as_mut().ok_or(VmError::NoAgent)
    }

    /// One `guest-ping`.
    pub fn guest_ping(&mut self, timeout: Duration) -> Result<(), VmError> {
        let r = self.agent()?.ping(timeout).map_err(VmError::Agent);
        self.note(r)
    }

    /// Pings until the agent answers (it starts late in the guest's boot).
    pub fn wait_guest_agent(&mut self, timeout: Duration) -> Result<(), VmError> {
        let r = self.agent()?.wait_ready(timeout).map_err(VmError::Agent);
        self.note(r)
    }

    /// Runs `argv` in the guest (no shell) and returns status and output.
    pub fn guest_exec<S: AsRef<str>>(
        &mut self,
        argv: &[S],
        timeout: Duration,
    ) -> Result<ExecOutput, VmError> {
        let r = self.agent()?.exec(argv, timeout).map_err(VmError::Agent);
        self.note(r)
    }

    /// Runs `script` with `/bin/sh -c` in the guest through the agent and
    /// returns its standard output; an exit status other than 0 is an
    /// error that carries both outputs.
    pub fn sh(&mut self, script: &str, timeout: Duration) -> Result<String, VmError> {
        let out = self.guest_exec(&["/bin/sh", "-c", script], timeout)?;
        if out.success() {
            Ok(out.stdout_str())
        } else {
            Err(VmError::GuestCommand {
                script: script.to_string(),
                status: out.status,
                stdout: out.stdout_str(),
                stderr: out.stderr_str(),
            })
        }
    }

    /// Reads a whole file from the guest.
    pub fn guest_file_read(&mut self, path: &str) -> Result<Vec<u8>, VmError> {
        let r = self
            .agent()?
            .file_read(path, AGENT_CALL_TIMEOUT)
            .map_err(VmError::Agent);
        self.note(r)
    }

    /// Writes (creates or truncates) a file in the guest.
    pub fn guest_file_write(&mut self, path: &str, data: &[u8]) -> Result<(), VmError> {
        let r = self
            .agent()?
            .file_write(path, data, AGENT_CALL_TIMEOUT)
            .map_err(VmError::Agent);
        self.note(r)
    }
}

/// Copies the serial log to stderr as it grows, until stopped.
fn spawn_echo(path: PathBuf) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let mut pos = 0u64;
        let mut buf = Vec::new();
        loop {
            let stopping = flag.load(Ordering::Relaxed);
            if let Ok(mut f) = fs::File::open(&path) {
                if f.seek(SeekFrom::Start(pos)).is_ok() {
                    buf.clear();
                    if let Ok(n) = f.read_to_end(&mut buf) {
                        pos += n as u64;
                        let mut err = io::stderr().lock();
                        let _ = err.write_all(&buf);
                        let _ = err.flush();
                    }
                }
            }
            if stopping {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    (stop, handle)
}

impl Drop for Vm {
    fn drop(&mut self) {
        {
            let mut p = power::lock(&self.proc);
            if p.poll().is_none() {
                let _ = p.child.kill();
                if let Ok(s) = p.child.wait() {
                    p.exit = Some(s);
                }
            }
        }
        // After QEMU is gone: the watchdog thread is the parent of any QEMU
        // it started, which its exit would kill.
        self.watchdog.take();
        if let Some((stop, handle)) = self.echo.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        let keep = self.keep.unwrap_or_else(|| {
            self.failed || thread::panicking() || std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
        });
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!(
                    "cairn-qemu: VM {:?} files kept in {} (serial log: {})",
                    self.name,
                    path.display(),
                    path.join(files::SERIAL_LOG).display()
                );
            }
        }
    }
}
