//! What a VM is made of ([`VmConfig`] and its parts) and the pure
//! translation of a config plus the VM's resolved files ([`Layout`]) into a
//! QEMU command line. Nothing here touches the file system or starts a
//! process, so every flag QEMU gets is checked by unit tests.
//!
//! Fixed choices: `-nodefaults -no-user-config` (no implicit NIC, CD-ROM,
//! VGA or monitor, so boot order and output are deterministic), machine
//! `q35`, `-display none`, virtio disks/NIC/RNG. Firmware: UEFI is OVMF as two
//! pflash drives (read-only code + a per-VM copy of the variable store);
//! BIOS is QEMU's default SeaBIOS, told through fw_cfg `etc/sercon-port` to
//! mirror its text console (and so option ROMs such as iPXE, and
//! boot loaders using int 10h) onto the serial port, because without VGA
//! SeaBIOS prints nothing on serial. User networking is `restrict=on` by
//! default: the guest reaches no real network, only the slirp DHCP/TFTP
//! services, port forwards from 127.0.0.1 and explicit guest forwards.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accel::Accel;
use crate::VmError;

/// Where OVMF lives in Debian's `ovmf` package (bookworm).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The pristine variable store that each UEFI VM gets a fresh copy of.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Default MAC of the first NIC (QEMU's own default).
pub const DEFAULT_MAC: &str = "52:54:00:12:34:56";
/// Address inside the slirp network where guest forwards appear.
pub const GUEST_FORWARD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// Firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// OVMF (EDK II) via pflash.
    #[default]
    Uefi,
    /// SeaBIOS, QEMU's default firmware.
    Bios,
}

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// qcow2 files start with `QFI\xfb`; anything else is raw.
    pub fn detect(path: &Path) -> std::io::Result<DiskFormat> {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path)?;
        let n = f.read(&mut magic)?;
        Ok(if n == 4 && &magic == b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }
}

/// A disk attached as virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// `None`: detected from the file's magic.
    pub format: Option<DiskFormat>,
}

/// Direct kernel boot (`-kernel`, `-initrd`, `-append`), under either
/// firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// Network boot through the NIC's option ROM (iPXE in Debian's QEMU) from
/// slirp's built-in DHCP and TFTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetBoot {
    /// Directory served by slirp's TFTP server.
    pub tftp_root: PathBuf,
    /// DHCP boot file name (relative to `tftp_root`), e.g. `boot.ipxe`.
    pub bootfile: String,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Boot {
    /// Leave it to the firmware (e.g. no disk: OVMF ends in its shell).
    #[default]
    Default,
    /// The first disk (`bootindex=1`).
    Disk,
    Kernel(KernelBoot),
    Network(NetBoot),
    /// The NIC first, with whatever DHCP and TFTP the attached network has
    /// (a tap device: [`VmConfig::tap`]); slirp's own server is not used.
    Pxe,
}

/// A TCP forward from `127.0.0.1:host_port` to the guest's `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub guest_port: u16,
    /// `None`: a free port is picked at start ([`crate::Vm::host_port`]).
    pub host_port: Option<u16>,
}

/// A TCP forward the other way: the guest connects to
/// `10.0.2.100:guest_port` ([`GUEST_FORWARD_ADDR`]) and reaches
/// `127.0.0.1:host_port` (e.g. a `cairn serve` HTTP server in a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestForward {
    pub guest_port: u16,
    pub host_port: u16,
}

/// QEMU user networking (slirp) with one virtio NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub forwards: Vec<PortForward>,
    pub guest_forwards: Vec<GuestForward>,
    /// `restrict=on`: no traffic leaves the virtual network (default true).
    pub restrict: bool,
    /// NIC MAC address; `None` gives [`DEFAULT_MAC`].
    pub mac: Option<String>,
}

impl Default for UserNet {
    fn default() -> Self {
        UserNet {
            forwards: Vec::new(),
            guest_forwards: Vec::new(),
            restrict: true,
            mac: None,
        }
    }
}

/// OVMF files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    /// Template, copied into each VM's directory.
    pub vars: PathBuf,
}

impl Default for Ovmf {
    /// Debian's paths, overridable with `CAIRN_OVMF_CODE` / `CAIRN_OVMF_VARS`.
    fn default() -> Self {
        let env =
            |k: &str, d: &str| std::env::var_os(k).map_or_else(|| PathBuf::from(d), PathBuf::from);
        Ovmf {
            code: env("CAIRN_OVMF_CODE", OVMF_CODE),
            vars: env("CAIRN_OVMF_VARS", OVMF_VARS),
        }
    }
}

/// Everything about one VM. Build with [`VmConfig::new`] and the chained
/// setters, or fill the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Short name: QEMU's `-name` and the VM directory's prefix.
    pub name: String,
    pub firmware: Firmware,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    /// Which of `disks` the firmware boots first (`bootindex=1`) when
    /// booting from disk; default 0. The guest still names the disks in
    /// the order of `disks` (vda, vdb, ...).
    pub boot_disk: usize,
    /// Write to the disks themselves instead of throwaway qcow2 overlays.
    pub persist: bool,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// `-cpu`; `None`: QEMU's default under TCG, `host` under KVM.
    pub cpu_model: Option<String>,
    /// `None`: no NIC at all (unless [`Boot::Network`], which implies one).
    pub net: Option<UserNet>,
    /// Attach the NIC to this existing tap device instead of slirp (the
    /// MAC of `net` still applies; forwards are refused).
    pub tap: Option<String>,
    /// Run QEMU inside this network namespace (`ip netns exec NAME`), e.g.
    /// where the test made the tap device and a bridge.
    pub netns: Option<String>,
    /// i6300esb watchdog; on expiry QEMU resets the machine.
    pub watchdog: bool,
    /// virtio-serial port for qemu-ga (default true).
    pub guest_agent: bool,
    /// virtio-rng, so a guest does not wait for entropy under TCG (default true).
    pub rng: bool,
    /// SeaBIOS mirrors its console on serial (default true; BIOS only).
    pub bios_serial_console: bool,
    /// Capture the firmware's debug port 0x402 in `firmware-debug.log`
    /// (slow with OVMF, which logs a lot).
    pub firmware_debug_log: bool,
    /// `-no-reboot`: a guest reboot makes QEMU exit.
    pub no_reboot: bool,
    /// Power-cycle QEMU when the console stays silent this long after the
    /// guest kernel's reboot line ([`crate::power`]); `None`: never.
    /// Default 90 s: a firmware that works speaks within seconds even
    /// under TCG on a loaded machine (the hang cost CI 180 s a time while
    /// the default was 180 s).
    pub reset_stall: Option<Duration>,
    /// SMBIOS system UUID (`-uuid`).
    pub uuid: Option<String>,
    /// Copy serial output to stderr live (default: `CAIRN_VM_ECHO=1`).
    pub echo_serial: bool,
    /// QEMU binary (default `qemu-system-x86_64`, or `CAIRN_QEMU`).
    pub qemu: PathBuf,
    pub ovmf: Ovmf,
    /// Appended verbatim after everything else: the escape hatch.
    pub extra_args: Vec<String>,
}

impl VmConfig {
    /// UEFI, no disk, 1024 MiB, 1 vCPU, accelerator from the environment,
    /// guest agent and RNG on, no network.
    pub fn new(name: impl Into<String>) -> Self {
        VmConfig {
            name: name.into(),
            firmware: Firmware::Uefi,
            boot: Boot::Default,
            disks: Vec::new(),
            boot_disk: 0,
            persist: false,
            memory_mib: 1024,
            cpus: 1,
            accel: Accel::from_env(),
            cpu_model: None,
            net: None,
            tap: None,
            netns: None,
            watchdog: false,
            guest_agent: true,
            rng: true,
            bios_serial_console: true,
            firmware_debug_log: false,
            no_reboot: false,
            reset_stall: Some(Duration::from_secs(90)),
            uuid: None,
            echo_serial: std::env::var("CAIRN_VM_ECHO").is_ok_and(|v| v == "1"),
            qemu: std::env::var_os("CAIRN_QEMU")
                .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from),
            ovmf: Ovmf::default(),
            extra_args: Vec::new(),
        }
    }

    pub fn uefi(mut self) -> Self {
        self.firmware = Firmware::Uefi;
        self
    }

    pub fn bios(mut self) -> Self {
        self.firmware = Firmware::Bios;
        self
    }

    /// UEFI or BIOS, for callers that loop over both.
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Attaches a disk (format detected); the first disk becomes the boot
    /// disk unless a kernel or network boot is chosen.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(Disk {
            path: path.into(),
            format: None,
        });
        if self.boot == Boot::Default {
            self.boot = Boot::Disk;
        }
        self
    }

    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        cmdline: impl Into<String>,
    ) -> Self {
        self.boot = Boot::Kernel(KernelBoot {
            kernel: kernel.into(),
            initrd,
            cmdline: cmdline.into(),
        });
        self
    }

    pub fn netboot(mut self, tftp_root: impl Into<PathBuf>, bootfile: impl Into<String>) -> Self {
        self.boot = Boot::Network(NetBoot {
            tftp_root: tftp_root.into(),
            bootfile: bootfile.into(),
        });
        self.net.get_or_insert_with(UserNet::default);
        self
    }

    /// Boot from `disks[index]` (counted in the order of [`Self::disk`]).
    pub fn boot_disk(mut self, index: usize) -> Self {
        self.boot_disk = index;
        self
    }

    pub fn persist(mut self, persist: bool) -> Self {
        self.persist = persist;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Enables user networking (if not yet) and forwards a free host port
    /// on 127.0.0.1 to `guest_port`.
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.net
            .get_or_insert_with(UserNet::default)
            .forwards
            .push(PortForward {
                guest_port,
                host_port: None,
            });
        self
    }

    /// `forward(22)`.
    pub fn forward_ssh(self) -> Self {
        self.forward(22)
    }

    /// Enables user networking (if not yet) and lets the guest reach
    /// `127.0.0.1:host_port` as `10.0.2.100:guest_port`
    /// ([`GUEST_FORWARD_ADDR`]; TCP only). Works with `restrict=on`.
    pub fn guest_forward(mut self, guest_port: u16, host_port: u16) -> Self {
        self.net
            .get_or_insert_with(UserNet::default)
            .guest_forwards
            .push(GuestForward {
                guest_port,
                host_port,
            });
        self
    }

    /// Enables user networking (if not yet) without `restrict=on`: the
    /// guest may then open connections out of the virtual network, and
    /// slirp maps `10.0.2.2` to the host's loopback for TCP and UDP alike
    /// (how a guest reaches a host UDP service such as a TFTP server on a
    /// non-standard port; slirp answers port 69 itself).
    pub fn unrestricted_net(mut self) -> Self {
        self.net.get_or_insert_with(UserNet::default).restrict = false;
        self
    }

    /// The NIC on tap device `ifname` (made beforehand, e.g. on a bridge in
    /// a network namespace: see [`VmConfig::netns`]) instead of slirp.
    pub fn tap(mut self, ifname: impl Into<String>) -> Self {
        self.tap = Some(ifname.into());
        self.net.get_or_insert_with(UserNet::default);
        self
    }

    /// Run QEMU under `ip netns exec NAME`.
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Boot from the NIC with the attached network's DHCP ([`Boot::Pxe`]).
    pub fn pxe(mut self) -> Self {
        self.boot = Boot::Pxe;
        self.net.get_or_insert_with(UserNet::default);
        self
    }

    /// Enables user networking with a NIC and no forwards.
    pub fn user_net(mut self) -> Self {
        self.net.get_or_insert_with(UserNet::default);
        self
    }

    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.net.get_or_insert_with(UserNet::default).mac = Some(mac.into());
        self
    }

    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    pub fn guest_agent(mut self, on: bool) -> Self {
        self.guest_agent = on;
        self
    }

    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }

    /// See [`VmConfig::reset_stall`].
    pub fn reset_stall(mut self, stall: Option<Duration>) -> Self {
        self.reset_stall = stall;
        self
    }

    pub fn echo_serial(mut self, on: bool) -> Self {
        self.echo_serial = on;
        self
    }

    pub fn uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// How the serial console is wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Serial output goes to this file only.
    File(PathBuf),
    /// Serial on the terminal multiplexed with the monitor (`Ctrl-a x`
    /// quits, `Ctrl-a c` switches to the monitor) and logged to `log`.
    Stdio { log: PathBuf },
}

/// The VM's resolved files and ports: what [`qemu_args`] needs beyond the
/// config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Drives as QEMU opens them (overlays unless persistent), in order.
    pub drives: Vec<(PathBuf, DiskFormat)>,
    /// The VM's own copy of the OVMF variable store (UEFI only).
    pub ovmf_vars: Option<PathBuf>,
    /// Two-byte little-endian `0x3f8` for fw_cfg `etc/sercon-port` (BIOS).
    pub sercon_file: Option<PathBuf>,
    pub console: Console,
    pub qmp_socket: Option<PathBuf>,
    pub qga_socket: Option<PathBuf>,
    pub firmware_debug_log: Option<PathBuf>,
    /// Resolved `(host_port, guest_port)` pairs, in config order.
    pub forwards: Vec<(u16, u16)>,
}

/// QEMU's option syntax: a comma inside a value is written `,,`.
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_str(p: &Path) -> Result<&str, VmError> {
    p.to_str().ok_or_else(|| VmError::NonUtf8Path(p.to_owned()))
}

fn opt_path(p: &Path) -> Result<String, VmError> {
    Ok(escape_opt(path_str(p)?))
}

/// The QEMU arguments (without the program) for `config` with files and
/// ports resolved in `layout`.
pub fn qemu_args(config: &VmConfig, layout: &Layout) -> Result<Vec<String>, VmError> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));

    push(&["-name", &escape_opt(&config.name)]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-machine", "q35", "-accel", config.accel.as_str()]);
    match (&config.cpu_model, config.accel) {
        (Some(cpu), _) => push(&["-cpu", cpu]),
        (None, Accel::Kvm) => push(&["-cpu", "host"]),
        (None, Accel::Tcg) => {}
    }
    push(&[
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
    ]);
    if let Some(uuid) = &config.uuid {
        push(&["-uuid", uuid]);
    }

    match config.firmware {
        Firmware::Uefi => {
            let vars = layout.ovmf_vars.as_deref().ok_or_else(|| {
                VmError::Config("UEFI needs a per-VM copy of the OVMF variable store".into())
            })?;
            let code = format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt_path(&config.ovmf.code)?
            );
            let vars = format!("if=pflash,format=raw,unit=1,file={}", opt_path(vars)?);
            push(&["-drive", &code, "-drive", &vars]);
        }
        Firmware::Bios => {
            if let Some(sercon) = &layout.sercon_file {
                push(&[
                    "-fw_cfg",
                    &format!("name=etc/sercon-port,file={}", opt_path(sercon)?),
                ]);
            }
        }
    }

    match &layout.console {
        Console::File(log) => {
            push(&[
                "-chardev",
                // append: a power cycle ([`crate::power`]) starts QEMU again
                // on the same log.
                &format!("file,id=serial0,path={},append=on", opt_path(log)?),
            ]);
            push(&["-serial", "chardev:serial0"]);
        }
        Console::Stdio { log } => {
            push(&[
                "-chardev",
                &format!(
                    "stdio,id=serial0,mux=on,signal=off,logfile={}",
                    opt_path(log)?
                ),
            ]);
            push(&[
                "-serial",
                "chardev:serial0",
                "-mon",
                "chardev=serial0,mode=readline",
            ]);
        }
    }
    if let Some(qmp) = &layout.qmp_socket {
        push(&[
            "-chardev",
            &format!("socket,id=qmp0,path={},server=on,wait=off", opt_path(qmp)?),
        ]);
        push(&["-mon", "chardev=qmp0,mode=control"]);
    }
    if let Some(log) = &layout.firmware_debug_log {
        push(&[
            "-chardev",
            &format!("file,id=fwdebug0,path={}", opt_path(log)?),
        ]);
        push(&["-device", "isa-debugcon,iobase=0x402,chardev=fwdebug0"]);
    }

    if config.boot == Boot::Disk && config.boot_disk >= layout.drives.len() {
        return Err(VmError::Config(format!(
            "boot disk {} of {} disks",
            config.boot_disk,
            layout.drives.len()
        )));
    }
    for (i, (path, format)) in layout.drives.iter().enumerate() {
        let drive = format!(
            "file={},format={},if=none,id=disk{i},discard=unmap",
            opt_path(path)?,
            format.as_str()
        );
        let mut dev = format!("virtio-blk-pci,drive=disk{i},serial=cairn-disk{i}");
        if i == config.boot_disk && config.boot == Boot::Disk {
            dev.push_str(",bootindex=1");
        }
        push(&["-drive", &drive, "-device", &dev]);
    }

    match &config.boot {
        Boot::Kernel(k) => {
            push(&["-kernel", path_str(&k.kernel)?]);
            if let Some(initrd) = &k.initrd {
                push(&["-initrd", path_str(initrd)?]);
            }
            if !k.cmdline.is_empty() {
                push(&["-append", &k.cmdline]);
            }
        }
        Boot::Network(_) | Boot::Pxe => push(&["-boot", "n"]),
        Boot::Default | Boot::Disk => {}
    }

    let netboot = match &config.boot {
        Boot::Network(n) => Some(n),
        _ => None,
    };
    let default_net;
    let net = match (&config.net, netboot) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => {
            default_net = UserNet::default();
            Some(&default_net)
        }
        (None, None) => None,
    };
    if let (Some(tap), Some(net)) = (&config.tap, net) {
        if !net.forwards.is_empty() || !net.guest_forwards.is_empty() || netboot.is_some() {
            return Err(VmError::Config(format!(
                "tap device {tap}: port forwards and slirp netboot need user networking"
            )));
        }
        let netdev = format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            escape_opt(tap)
        );
        let mut dev = format!(
            "virtio-net-pci,netdev=net0,mac={}",
            net.mac.as_deref().unwrap_or(DEFAULT_MAC)
        );
        if config.boot == Boot::Pxe {
            dev.push_str(",bootindex=1");
        }
        push(&["-netdev", &netdev, "-device", &dev]);
    } else if let Some(net) = net {
        let mut netdev = String::from("user,id=net0");
        if net.restrict {
            netdev.push_str(",restrict=on");
        }
        for (host, guest) in &layout.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for g in &net.guest_forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{GUEST_FORWARD_ADDR}:{}-tcp:127.0.0.1:{}",
                g.guest_port, g.host_port
            ));
        }
        if let Some(nb) = netboot {
            netdev.push_str(&format!(
                ",tftp={},bootfile={}",
                opt_path(&nb.tftp_root)?,
                escape_opt(&nb.bootfile)
            ));
        }
        let mut dev = format!(
            "virtio-net-pci,netdev=net0,mac={}",
            net.mac.as_deref().unwrap_or(DEFAULT_MAC)
        );
        if netboot.is_some() || config.boot == Boot::Pxe {
            dev.push_str(",bootindex=1");
        }
        push(&["-netdev", &netdev, "-device", &dev]);
    }

    if let Some(qga) = &layout.qga_socket {
        push(&[
            "-chardev",
            &format!("socket,id=qga0,path={},server=on,wait=off", opt_path(qga)?),
        ]);
        push(&["-device", "virtio-serial-pci,id=vser0"]);
        push(&[
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    if config.rng {
        push(&["-device", "virtio-rng-pci"]);
    }
    if config.watchdog {
        push(&["-device", "i6300esb", "-action", "watchdog=reset"]);
    }
    if config.no_reboot {
        push(&["-no-reboot"]);
    }
    a.extend(config.extra_args.iter().cloned());
    Ok(a)
}

/// Renders an argv as a shell-pasteable line (for logs).
pub fn shell_line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(|s| {
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
            {
                s.to_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &str) -> Layout {
        Layout {
            drives: vec![],
            ovmf_vars: Some(PathBuf::from(format!("{dir}/OVMF_VARS.fd"))),
            sercon_file: None,
            console: Console::File(PathBuf::from(format!("{dir}/serial.log"))),
            qmp_socket: Some(PathBuf::from(format!("{dir}/qmp.sock"))),
            qga_socket: None,
            firmware_debug_log: None,
            forwards: vec![],
        }
    }

    fn base(name: &str) -> VmConfig {
        let mut c = VmConfig::new(name).guest_agent(false);
        // Independent of the environment the tests run in.
        c.accel = Accel::Tcg;
        c.echo_serial = false;
        c.rng = false;
        c.ovmf = Ovmf {
            code: PathBuf::from(OVMF_CODE),
            vars: PathBuf::from(OVMF_VARS),
        };
        c
    }

    /// Finds `flag value` in argv.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn uefi_without_disk() {
        let c = base("fw");
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(
            args,
            [
                "-name",
                "fw",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "1",
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "-drive",
                "if=pflash,format=raw,unit=1,file=/v/OVMF_VARS.fd",
                "-chardev",
                "file,id=serial0,path=/v/serial.log,append=on",
                "-serial",
                "chardev:serial0",
                "-chardev",
                "socket,id=qmp0,path=/v/qmp.sock,server=on,wait=off",
                "-mon",
                "chardev=qmp0,mode=control",
            ]
        );
    }

    #[test]
    fn bios_disk_boot_with_overlay_and_forwards() {
        let c = base("disk")
            .bios()
            .disk("/img/disk.raw")
            .memory_mib(2048)
            .cpus(2)
            .forward_ssh()
            .watchdog(true);
        let mut l = layout("/v");
        l.ovmf_vars = None;
        l.sercon_file = Some("/v/sercon-port.bin".into());
        l.drives = vec![("/v/disk0.qcow2".into(), DiskFormat::Qcow2)];
        l.forwards = vec![(40022, 22)];
        let args = qemu_args(&c, &l).unwrap();
        assert!(!args.iter().any(|a| a.contains("pflash")), "{args:?}");
        assert_eq!(
            values(&args, "-fw_cfg"),
            ["name=etc/sercon-port,file=/v/sercon-port.bin"]
        );
        assert_eq!(values(&args, "-m"), ["2048"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(
            values(&args, "-drive"),
            ["file=/v/disk0.qcow2,format=qcow2,if=none,id=disk0,discard=unmap"]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "virtio-blk-pci,drive=disk0,serial=cairn-disk0,bootindex=1",
                "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
                "i6300esb",
            ]
        );
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"]
        );
        assert_eq!(values(&args, "-action"), ["watchdog=reset"]);
        assert!(!args.contains(&"-boot".to_string()));
        assert!(!args.contains(&"-kernel".to_string()));
    }

    #[test]
    fn boot_disk_gets_the_bootindex() {
        let c = base("two")
            .disk("/img/decoy.raw")
            .disk("/img/disk.raw")
            .boot_disk(1);
        let mut l = layout("/v");
        l.drives = vec![
            ("/v/disk0.qcow2".into(), DiskFormat::Qcow2),
            ("/v/disk1.qcow2".into(), DiskFormat::Qcow2),
        ];
        let args = qemu_args(&c, &l).unwrap();
        let devs = values(&args, "-device");
        assert!(
            devs.contains(&"virtio-blk-pci,drive=disk0,serial=cairn-disk0"),
            "{devs:?}"
        );
        assert!(
            devs.contains(&"virtio-blk-pci,drive=disk1,serial=cairn-disk1,bootindex=1"),
            "{devs:?}"
        );
        let c = base("two").disk("/img/disk.raw").boot_disk(1);
        l.drives.truncate(1);
        assert!(qemu_args(&c, &l).is_err());
    }

    #[test]
    fn kernel_boot_under_uefi() {
        let c = base("k").kernel(
            "/a/vmlinuz",
            Some("/a/initrd.img".into()),
            "console=ttyS0 quiet",
        );
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(values(&args, "-kernel"), ["/a/vmlinuz"]);
        assert_eq!(values(&args, "-initrd"), ["/a/initrd.img"]);
        assert_eq!(values(&args, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(values(&args, "-drive").len(), 2, "only the pflash drives");
        assert!(!args.contains(&"-netdev".to_string()));
        // Without initrd or cmdline, neither flag appears.
        let c = base("k").kernel("/a/vmlinuz", None, "");
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert!(!args.contains(&"-initrd".to_string()) && !args.contains(&"-append".to_string()));
    }

    #[test]
    fn network_boot_uses_tftp_and_nic_bootindex() {
        let c = base("pxe")
            .bios()
            .netboot("/srv/tftp", "boot.ipxe")
            .mac("52:54:00:aa:bb:cc");
        let mut l = layout("/v");
        l.ovmf_vars = None;
        let args = qemu_args(&c, &l).unwrap();
        assert_eq!(values(&args, "-boot"), ["n"]);
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on,tftp=/srv/tftp,bootfile=boot.ipxe"]
        );
        assert_eq!(
            values(&args, "-device"),
            ["virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,bootindex=1"]
        );
        // Netboot with no explicit net config still gets a NIC.
        let mut c = base("pxe").netboot("/t", "x.efi");
        c.net = None;
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on,tftp=/t,bootfile=x.efi"]
        );
    }

    #[test]
    fn guest_forward_and_unrestricted_builders() {
        let c = base("fwd").guest_forward(80, 8080);
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080"]
        );
        let c = base("open").unrestricted_net();
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(values(&args, "-netdev"), ["user,id=net0"]);
    }

    #[test]
    fn tap_nic_with_pxe_boot() {
        let c = base("bare").tap("tap0").pxe().mac("52:54:00:00:0c:01");
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(
            values(&args, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
        );
        assert_eq!(
            values(&args, "-device")
                .into_iter()
                .filter(|d| d.starts_with("virtio-net"))
                .collect::<Vec<_>>(),
            ["virtio-net-pci,netdev=net0,mac=52:54:00:00:0c:01,bootindex=1"]
        );
        assert_eq!(values(&args, "-boot"), ["n"]);
        let bad = base("bare").tap("tap0").forward_ssh();
        assert!(matches!(
            qemu_args(&bad, &layout("/v")),
            Err(VmError::Config(m)) if m.contains("tap0")
        ));
    }

    #[test]
    fn guest_agent_rng_debugcon_guestfwd_and_extras() {
        let mut c = base("all")
            .arg("-S")
            .args(["-d", "guest_errors"])
            .no_reboot(true)
            .uuid("3f1e0d8c-0000-4000-8000-000000000001");
        c.rng = true;
        c.cpu_model = Some("max".into());
        c.net = Some(UserNet {
            guest_forwards: vec![GuestForward {
                guest_port: 80,
                host_port: 8080,
            }],
            restrict: false,
            ..UserNet::default()
        });
        let mut l = layout("/v");
        l.qga_socket = Some("/v/qga.sock".into());
        l.firmware_debug_log = Some("/v/firmware-debug.log".into());
        let args = qemu_args(&c, &l).unwrap();
        assert_eq!(values(&args, "-cpu"), ["max"]);
        assert_eq!(
            values(&args, "-uuid"),
            ["3f1e0d8c-0000-4000-8000-000000000001"]
        );
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            [
                "file,id=serial0,path=/v/serial.log,append=on",
                "socket,id=qmp0,path=/v/qmp.sock,server=on,wait=off",
                "file,id=fwdebug0,path=/v/firmware-debug.log",
                "socket,id=qga0,path=/v/qga.sock,server=on,wait=off",
            ]
        );
        let devices = values(&args, "-device");
        assert!(devices.contains(&"isa-debugcon,iobase=0x402,chardev=fwdebug0"));
        assert!(devices.contains(&"virtio-serial-pci,id=vser0"));
        assert!(devices
            .contains(&"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        assert!(devices.contains(&"virtio-rng-pci"));
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(&args[args.len() - 3..], ["-S", "-d", "guest_errors"]);
    }

    #[test]
    fn kvm_only_when_chosen_and_uses_host_cpu() {
        let c = base("k").accel(Accel::Kvm);
        let args = qemu_args(&c, &layout("/v")).unwrap();
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        let args = qemu_args(&base("t"), &layout("/v")).unwrap();
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert!(values(&args, "-cpu").is_empty());
    }

    #[test]
    fn interactive_console_and_comma_escaping() {
        let c = base("a,b");
        let mut l = layout("/tmp/x,y");
        l.console = Console::Stdio {
            log: "/tmp/x,y/serial.log".into(),
        };
        l.qmp_socket = None;
        let args = qemu_args(&c, &l).unwrap();
        assert_eq!(values(&args, "-name"), ["a,,b"]);
        assert_eq!(
            values(&args, "-chardev"),
            ["stdio,id=serial0,mux=on,signal=off,logfile=/tmp/x,,y/serial.log"]
        );
        assert_eq!(values(&args, "-serial"), ["chardev:serial0"]);
        assert_eq!(values(&args, "-mon"), ["chardev=serial0,mode=readline"]);
        assert!(values(&args, "-drive")
            .contains(&"if=pflash,format=raw,unit=1,file=/tmp/x,,y/OVMF_VARS.fd"));
    }

    #[test]
    fn uefi_without_vars_copy_is_an_error() {
        let mut l = layout("/v");
        l.ovmf_vars = None;
        assert!(matches!(qemu_args(&base("x"), &l), Err(VmError::Config(_))));
    }

    #[test]
    fn disk_format_detection() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        let r = dir.path().join("b.img");
        std::fs::write(&r, [0u8; 512]).unwrap();
        assert_eq!(DiskFormat::detect(&r).unwrap(), DiskFormat::Raw);
        let e = dir.path().join("c.img");
        std::fs::write(&e, b"").unwrap();
        assert_eq!(DiskFormat::detect(&e).unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn shell_line_quotes_what_needs_it() {
        let line = shell_line(
            "qemu-system-x86_64",
            &[
                "-append".into(),
                "console=ttyS0 root=LABEL=a".into(),
                "-name".into(),
                "it's".into(),
            ],
        );
        assert_eq!(
            line,
            r"qemu-system-x86_64 -append 'console=ttyS0 root=LABEL=a' -name 'it'\''s'"
        );
    }
}
