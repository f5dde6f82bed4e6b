//! The side-effecting steps of `/init`, each a small function the binary
//! calls in order: mounting the API file systems, loading kernel modules,
//! attaching a loop device, telling the kernel about a resized partition,
//! formatting and seeding the state, and `switch_root`. It owns the Linux
//! system-call details (ioctls, mount flags); the decisions live in
//! `src/bin/init.rs` and in the pure modules. Everything returns a
//! [`Failure`] whose text is the one line `/init` prints before rebooting.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{
    chown, lchown, symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::mount::{mount, mount_bind, mount_move, MountFlags};

use crate::modules::{module_name, Hotplug};

/// One line saying what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// An error's text without the " (os error N)" that std appends.
pub fn describe(err: impl fmt::Display) -> String {
    let s = err.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// `Err(Failure("<what>: <error>"))`.
pub fn fail<T>(what: impl fmt::Display, err: impl fmt::Display) -> Result<T, Failure> {
    Err(Failure(format!("{what}: {}", describe(err))))
}

/// Adds "what" context to an error.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{}: {}", what(), describe(e))))
    }
}

fn mkdir_p(path: &str, mode: u32) -> Result<(), Failure> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .ctx(|| format!("creating {path}"))
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Failure> {
    let data = CString::new(data).map_err(|e| Failure(e.to_string()))?;
    mount(src, target, fstype, flags, Some(data.as_c_str()))
        .ctx(|| format!("mounting {src} ({fstype}) on {target}"))
}

/// Mounts devtmpfs on /dev and makes /dev/console stdin, stdout and stderr
/// (the kernel only opens it for us when the initramfs has the node).
/// Done first so that every later message reaches the console.
pub fn mount_dev_and_console() -> Result<(), Failure> {
    mkdir_p("/dev", 0o755)?;
    let nosuid = MountFlags::NOSUID;
    if let Err(e) = mount_fs("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755") {
        // Already mounted (CONFIG_DEVTMPFS_MOUNT) is fine.
        if !Path::new("/dev/null").exists() {
            return Err(e);
        }
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
        .ctx(|| "opening /dev/console".into())?;
    for fd in 0..3 {
        // SAFETY: dup2 on a valid open descriptor onto 0..2; both are plain
        // integers and the kernel validates them.
        if unsafe { libc::dup2(console.as_raw_fd(), fd) } < 0 {
            return fail("dup2 /dev/console", io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Mounts /proc, /sys and a tmpfs on /run.
pub fn mount_api_filesystems() -> Result<(), Failure> {
    let f = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mkdir_p("/proc", 0o555)?;
    mount_fs("proc", "/proc", "proc", f, "")?;
    mkdir_p("/sys", 0o555)?;
    mount_fs("sysfs", "/sys", "sysfs", f, "")?;
    mkdir_p("/run", 0o755)?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755",
    )?;
    Ok(())
}

/// `finit_module` flag: the file is compressed and the kernel should
/// decompress it (Linux 5.17+, needs CONFIG_MODULE_DECOMPRESS).
pub const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// Outcome of loading modules so far.
#[derive(Debug, Default)]
pub struct ModuleReport {
    pub loaded: usize,
    pub already: usize,
    /// `(path, error)` for each module that failed; not fatal by itself.
    pub failed: Vec<(String, String)>,
    /// `(path, time)` for every module tried, in load order.
    pub timings: Vec<(String, Duration)>,
    /// One line per module tried, in the order each thread loaded them: name, the kernel's
    /// monotonic clock when the load ended (seconds since boot, as in
    /// `dmesg`), how long it took, outcome (see [`MODULES_RECORD`]).
    pub record: Vec<String>,
}

/// Seconds on CLOCK_MONOTONIC: since boot, the clock of the kernel log.
fn since_boot() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The text of [`MODULES_RECORD`]: a comment line, the modules tried in
/// the order their loads ended (two threads load at times, see
/// [`ModuleLoader::preload`]), then each driver held back and
/// never loaded (`held`).
pub fn modules_record(report: &ModuleReport, held: &[String]) -> String {
    let mut t = String::from(
        "# module, loaded at (s since boot), load time (s), outcome: what cairn's /init loaded\n",
    );
    let ended = |l: &String| {
        l.split_whitespace()
            .nth(1)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::MAX)
    };
    let mut lines: Vec<&String> = report.record.iter().collect();
    lines.sort_by(|a, b| ended(a).total_cmp(&ended(b)));
    for l in lines {
        t.push_str(l);
        t.push('\n');
    }
    for h in held {
        t.push_str(&format!(
            "{h} - - held back (the boot disk came up without it)\n"
        ));
    }
    t
}

/// Where `/init` leaves, for the booted system, the record of the modules
/// it loaded ([`ModuleReport::record`]): `/run` is carried over by the
/// switch to the real root, so `cat /run/cairn/initrd-modules` shows on a
/// running machine what the initramfs loaded, when, and what it held back.
pub const MODULES_RECORD: &str = "/run/cairn/initrd-modules";

impl ModuleReport {
    /// The `n` modules that took longest to load, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<(String, Duration)> {
        let mut t = self.timings.clone();
        t.sort_by_key(|b| std::cmp::Reverse(b.1));
        t.truncate(n);
        t
    }
}

/// Loads the kernel modules carried in `/lib/modules/<release>`.
///
/// The list is `modules.order-cairn` (relative paths, dependencies first).
/// Without `modules.dep` and `modules.alias` next to it, every listed
/// module is loaded at start, in order. With them, [`Hotplug`] decides:
/// modules that drive no device (file systems, loop, crc32c) at start,
/// device drivers only once a device needing them shows up under
/// `/sys/bus/<bus>/devices/*/modalias`; [`ModuleLoader::tick`] looks for
/// new devices and is called while waiting for partitions, because devices
/// behind a freshly loaded driver (USB disks, SCSI disks behind AHCI)
/// appear asynchronously. File systems, `loop` and dm-verity are loaded
/// when `/init` is about to use them ([`ModuleLoader::load_for`]); SATA and
/// IDE drivers are held back while the boot disk may appear behind another
/// controller ([`ModuleLoader::release_deferred`]).
///
/// `EEXIST` (already loaded or built in) counts as success. Compressed
/// modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel with
/// MODULE_INIT_COMPRESSED_FILE, which fails on kernels without in-kernel
/// module decompression (CONFIG_MODULE_DECOMPRESS): the builder must then
/// carry uncompressed modules (Debian bookworm's are uncompressed anyway).
///
/// [`Hotplug`]: crate::modules::Hotplug
pub struct ModuleLoader {
    dir: PathBuf,
    plan: Option<Hotplug>,
    buses: Vec<String>,
    seen: HashSet<String>,
    pub report: ModuleReport,
    /// Why the device-driven mode is off, when the files exist but are bad.
    pub plan_error: Option<String>,
    /// Carried modules that are [`crate::modules::is_on_demand`] when every module
    /// is loaded at start (no device-driven plan).
    on_demand: Vec<String>,
    /// The file systems loading on a second thread (see
    /// [`ModuleLoader::preload`]).
    preloading: Option<Preload>,
}

/// Modules loading on a second thread: their paths in load order, those
/// whose load has been reported, and the thread's reports, one per module
/// as each load ends.
struct Preload {
    list: Vec<String>,
    done: HashSet<String>,
    reports: std::sync::mpsc::Receiver<Tried>,
}

impl ModuleLoader {
    /// Reads the lists in `dir` and loads the modules needed at once.
    pub fn start(dir: &Path) -> ModuleLoader {
        let mut l = ModuleLoader {
            dir: dir.to_owned(),
            plan: None,
            buses: Vec::new(),
            seen: HashSet::new(),
            report: ModuleReport::default(),
            plan_error: None,
            on_demand: Vec::new(),
            preloading: None,
        };
        let Ok(list) = fs::read_to_string(dir.join(crate::modules::MODULES_ORDER_FILE)) else {
            return l;
        };
        let order = crate::modules::parse_order_file(&list);
        let dep = fs::read_to_string(dir.join("modules.dep"));
        let alias = fs::read_to_string(dir.join("modules.alias"));
        let first: Vec<String> = match (dep, alias) {
            (Ok(dep), Ok(alias)) => match Hotplug::new(&order, &dep, &alias) {
                Ok(mut plan) => {
                    let first = plan.initial();
                    l.buses = plan.buses();
                    l.plan = Some(plan);
                    first
                }
                Err(e) => {
                    l.plan_error = Some(e.to_string());
                    order.iter().map(|s| (*s).to_owned()).collect()
                }
            },
            _ => order.iter().map(|s| (*s).to_owned()).collect(),
        };
        let first: Vec<String> = first
            .into_iter()
            .filter(|p| {
                let on_demand = crate::modules::is_on_demand(&module_name(p));
                if on_demand {
                    l.on_demand.push(p.clone());
                }
                !on_demand
            })
            .collect();
        for rel in &first {
            l.load(rel);
        }
        l
    }

    /// Loads module `name` (see [`crate::modules::is_on_demand`]) and what
    /// it needs, if the initramfs carries it and it is not loaded yet.
    pub fn load_named(&mut self, name: &str) {
        let preloaded = self
            .preloading
            .as_ref()
            .and_then(|p| p.list.iter().rfind(|m| module_name(m) == name).cloned());
        if let Some(rel) = preloaded {
            // taken by the preload: wait until it and what it needs are
            // loaded there, not for the rest of its list
            self.wait_for_needs(&rel);
            return;
        }
        let paths = match self.plan.as_mut() {
            Some(plan) => plan.named(name),
            None => {
                let (want, keep) = std::mem::take(&mut self.on_demand)
                    .into_iter()
                    .partition(|p| module_name(p) == name);
                self.on_demand = keep;
                want
            }
        };
        for rel in &paths {
            self.load(rel);
        }
    }

    /// Loads what `/init` needs before it uses `what` (see
    /// [`crate::modules::for_mount`]): `ext4`, `vfat`, `squashfs`, ...
    pub fn load_for(&mut self, what: &str) {
        for name in crate::modules::for_mount(what) {
            self.load_named(name);
        }
    }

    /// Starts loading the modules `/init` will need for `whats` (names of
    /// [`crate::modules::for_mount`]: `ext4`, `squashfs`, `overlay`, ...),
    /// in that order, on a second thread, and returns. Called once the
    /// drivers of the devices present are loaded, it overlaps the file
    /// systems' loads (CPU work: `ext4` takes 0.15 s under TCG) with what
    /// the first thread does meanwhile: waiting for the boot disk, the
    /// SATA/IDE drivers' port probes (libata's resets and debounces: ~0.45 s
    /// for q35's six ports, the CPU idle), growing and formatting the
    /// state. Loading every module on two threads was slower: CPU-bound
    /// driver loads then only compete. [`ModuleLoader::load_for`] waits
    /// until the modules of `what` are loaded there, and a module the first
    /// thread loads meanwhile waits for those it needs. Without a
    /// device-driven plan this does nothing (the file systems are loaded
    /// when mounted, as always).
    pub fn preload(&mut self, whats: &[&str]) {
        self.finish_preload();
        let Some(plan) = self.plan.as_mut() else {
            return;
        };
        let list: Vec<String> = whats
            .iter()
            .flat_map(|w| crate::modules::for_mount(w))
            .flat_map(|n| plan.named(n))
            .collect();
        if list.is_empty() {
            return;
        }
        let (tx, reports) = std::sync::mpsc::channel();
        let (dir, todo) = (self.dir.clone(), list.clone());
        let spawned = std::thread::Builder::new()
            .name("modules".into())
            .spawn(move || {
                for rel in &todo {
                    if tx.send(try_load(&dir, rel)).is_err() {
                        return;
                    }
                }
            });
        self.preloading = Some(Preload {
            list,
            done: HashSet::new(),
            reports,
        });
        if spawned.is_err() {
            // no second thread: its channel is closed, so waiting for it
            // loads them here, now
            self.finish_preload();
        }
    }

    /// Waits until every preloaded module `wanted` picks is loaded,
    /// adding each load to the report as it ends; loads them on this thread
    /// if the second one is gone.
    fn wait_preloaded(&mut self, wanted: &dyn Fn(&str) -> bool) {
        loop {
            let report = {
                let Some(p) = self.preloading.as_mut() else {
                    return;
                };
                if p.done.len() == p.list.len() {
                    self.preloading = None;
                    return;
                }
                if p.list
                    .iter()
                    .filter(|m| wanted(m))
                    .all(|m| p.done.contains(m))
                {
                    return;
                }
                p.reports.recv()
            };
            match report {
                Ok(tried) => {
                    if let Some(p) = self.preloading.as_mut() {
                        p.done.insert(tried.rel.clone());
                    }
                    self.note(tried);
                }
                // the thread is gone (or never started): the rest here
                Err(_) => {
                    let Some(p) = self.preloading.take() else {
                        return;
                    };
                    for rel in p.list.iter().filter(|m| !p.done.contains(*m)) {
                        self.load(rel);
                    }
                    return;
                }
            }
        }
    }

    /// Waits for every module [`ModuleLoader::preload`] started, and adds
    /// their loads to the report.
    pub fn finish_preload(&mut self) {
        self.wait_preloaded(&|_| true);
    }

    /// Loads the held-back disk controller drivers
    /// ([`crate::modules::DEFERRED`]) that present devices want, then the
    /// drivers of the devices that appear behind them.
    pub fn release_deferred(&mut self) {
        let Some(plan) = self.plan.as_mut() else {
            return;
        };
        for rel in plan.release() {
            self.load(&rel);
        }
        self.tick();
    }

    /// Disk controller drivers are held back for devices that are present.
    pub fn holding(&self) -> bool {
        self.plan.as_ref().is_some_and(Hotplug::holding)
    }

    /// The names of the drivers still held back for present devices.
    pub fn held(&self) -> Vec<String> {
        self.plan.as_ref().map(Hotplug::held).unwrap_or_default()
    }

    /// A disk controller whose driver is not held back is present (see
    /// [`Hotplug::other_storage`]).
    pub fn other_storage(&self) -> bool {
        self.plan.as_ref().is_some_and(Hotplug::other_storage)
    }

    /// True when drivers are loaded per device (see the type's doc).
    pub fn device_driven(&self) -> bool {
        self.plan.is_some()
    }

    /// Loads the drivers of devices that appeared since the last call,
    /// repeating while that makes new devices appear.
    pub fn tick(&mut self) {
        let Some(mut plan) = self.plan.take() else {
            return;
        };
        loop {
            let mut fresh = Vec::new();
            for bus in &self.buses {
                let Ok(rd) = fs::read_dir(format!("/sys/bus/{bus}/devices")) else {
                    continue;
                };
                for e in rd.flatten() {
                    if let Ok(a) = fs::read_to_string(e.path().join("modalias")) {
                        let a = a.trim().to_owned();
                        if self.seen.insert(a.clone()) {
                            fresh.push(a);
                        }
                    }
                }
            }
            if fresh.is_empty() {
                break;
            }
            let mods = plan.for_modaliases(&fresh);
            if mods.is_empty() {
                break;
            }
            for rel in &mods {
                self.load(rel);
            }
        }
        self.plan = Some(plan);
    }

    fn load(&mut self, rel: &str) {
        // a module it needs may still be loading on the preload's thread
        self.wait_for_needs(rel);
        let tried = try_load(&self.dir, rel);
        self.note(tried);
    }

    /// Waits for the preloaded modules that `rel` is or needs, if any.
    fn wait_for_needs(&mut self, rel: &str) {
        if let (Some(p), Some(plan)) = (&self.preloading, &self.plan) {
            let needs = plan.needed_from(rel, &p.list);
            if !needs.is_empty() {
                self.wait_preloaded(&|m| needs.iter().any(|n| n == m));
            }
        }
    }

    /// Adds one module's load to the report.
    fn note(&mut self, tried: Tried) {
        let Tried {
            rel,
            took,
            res,
            ended,
        } = tried;
        self.report.timings.push((rel.clone(), took));
        let outcome = match res {
            Ok(()) => {
                self.report.loaded += 1;
                "loaded".to_owned()
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.report.already += 1;
                "present".to_owned()
            }
            Err(e) => {
                let e = describe(e);
                self.report.failed.push((rel.to_owned(), e.clone()));
                format!("failed: {e}")
            }
        };
        self.report.record.push(format!(
            "{} {:.3} {:.3} {outcome}",
            module_name(&rel),
            ended,
            took.as_secs_f64()
        ));
    }
}

/// One module load: its path under the modules directory, how long
/// `finit_module` took, its result, and when it ended (seconds since boot).
struct Tried {
    rel: String,
    took: Duration,
    res: io::Result<()>,
    ended: f64,
}

/// Hands module `rel` (relative to `dir`) to the kernel.
fn try_load(dir: &Path, rel: &str) -> Tried {
    let compressed = [".xz", ".zst", ".gz"].iter().any(|e| rel.ends_with(e));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let t0 = Instant::now();
    let res = File::open(dir.join(rel))
        .and_then(|f| rustix::system::finit_module(&f, c"", flags).map_err(io::Error::from));
    Tried {
        rel: rel.to_owned(),
        took: t0.elapsed(),
        res,
        ended: since_boot(),
    }
}

/// Mounts a squashfs read-only; `what` names it in errors
/// ("mounting /dev/vda2 (cairn-a) as squashfs: Invalid argument").
pub fn mount_squashfs(dev: &Path, what: &str, target: &str) -> Result<(), Failure> {
    mkdir_p(target, 0o755)?;
    mount(dev, target, "squashfs", MountFlags::RDONLY, None)
        .ctx(|| format!("mounting {} ({what}) as squashfs", dev.display()))
}

// Loop device ioctls and structures (linux/loop.h).
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` read-only to a free loop device (auto-clearing when its
/// last user goes away) and returns the device path together with an open
/// descriptor that must be kept until the device is mounted.
pub fn attach_loop(file: &Path, timeout: Duration) -> Result<(PathBuf, File), Failure> {
    let ctl = wait_open("/dev/loop-control", true, timeout)?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
    if n < 0 {
        return fail("finding a free loop device", io::Error::last_os_error());
    }
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let loopdev = wait_open(&dev.to_string_lossy(), false, timeout)?;
    let backing = File::open(file).ctx(|| format!("opening {}", file.display()))?;
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let name = file.as_os_str().as_encoded_bytes();
    let len = name.len().min(63);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which LoopConfig
    // mirrors (repr(C), same field types); it outlives the call.
    let rc = unsafe {
        libc::ioctl(
            loopdev.as_raw_fd(),
            LOOP_CONFIGURE,
            &config as *const LoopConfig,
        )
    };
    if rc < 0 {
        // Kernels before 5.8: LOOP_SET_FD then LOOP_SET_STATUS64.
        // SAFETY: LOOP_SET_FD takes the backing descriptor as an integer.
        if unsafe { libc::ioctl(loopdev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) } < 0 {
            return fail(
                format!("attaching {} to {}", file.display(), dev.display()),
                io::Error::last_os_error(),
            );
        }
        // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, mirrored
        // by LoopInfo64; it outlives the call.
        if unsafe {
            libc::ioctl(
                loopdev.as_raw_fd(),
                LOOP_SET_STATUS64,
                &config.info as *const LoopInfo64,
            )
        } < 0
        {
            return fail(
                format!("configuring {}", dev.display()),
                io::Error::last_os_error(),
            );
        }
    }
    Ok((dev, loopdev))
}

/// Opens a device node, waiting for devtmpfs to create it.
fn wait_open(path: &str, write: bool, timeout: Duration) -> Result<File, Failure> {
    let start = Instant::now();
    loop {
        match OpenOptions::new().read(true).write(write).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < timeout => {
                std::thread::sleep(crate::blockdev::POLL_INTERVAL)
            }
            Err(e) => return fail(format!("opening {path}"), e),
        }
    }
}

/// Reads one EFI variable (file name `NAME-VENDORGUID` under efivarfs),
/// attributes included. `Ok(None)` when the machine did not boot through
/// UEFI or the variable does not exist. efivarfs is mounted read-only for
/// the read and unmounted again, so systemd finds things as the kernel left
/// them.
pub fn read_efi_variable(name: &str) -> Result<Option<Vec<u8>>, Failure> {
    let dir = crate::bootdisk::EFIVARS;
    if !Path::new(dir).is_dir() {
        return Ok(None);
    }
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("efivarfs", dir, "efivarfs", flags, "")?;
    let path = format!("{dir}/{name}");
    let read = match fs::read(&path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => fail(format!("reading {path}"), e),
    };
    if let Err(e) = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::empty()) {
        return fail(format!("unmounting {dir}"), e);
    }
    read
}

/// Logical sector size of a disk, from `/sys/class/block/<disk>/queue`.
pub fn sector_size(disk: &str) -> Result<u64, Failure> {
    let p = format!("/sys/class/block/{disk}/queue/logical_block_size");
    let s = fs::read_to_string(&p).ctx(|| format!("reading {p}"))?;
    s.trim().parse().ctx(|| format!("parsing {p}"))
}

/// Size in bytes of an open block device or file.
pub fn device_size(f: &mut File) -> io::Result<u64> {
    f.seek(SeekFrom::End(0))
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// Tells the kernel that partition `number` of the open disk now spans
/// `length` bytes from `start` (BLKPG_RESIZE_PARTITION). Unlike BLKRRPART
/// this works while other partitions of the disk are mounted.
pub fn kernel_resize_partition(
    disk: &File,
    number: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` whose data points to a
    // `struct blkpg_partition`; both are mirrored by repr(C) structs that
    // live on this stack frame for the duration of the call.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &arg as *const BlkpgIoctlArg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where `/init` looks for mke2fs in the initramfs.
pub const MKE2FS_PATHS: &[&str] = &["/sbin/mke2fs", "/usr/sbin/mke2fs"];

/// Fills `buf` without ever waiting for the kernel's random pool: fully
/// seeded bytes when the pool is ready, otherwise GRND_INSECURE bytes (the
/// same generator, seeded with what the kernel has so far: device and
/// interrupt timing). Waiting instead (blocking getrandom or /dev/urandom,
/// which both run the kernel's jitter entropy collector) costs about 2 s
/// under QEMU TCG without RDRAND or virtio-rng.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    let mut flags = libc::GRND_NONBLOCK;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable tail of `buf`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        if n >= 0 {
            filled += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if flags == libc::GRND_NONBLOCK => flags = libc::GRND_INSECURE,
            _ => return Err(err),
        }
    }
    Ok(())
}

/// A random (version 4) UUID; see [`random_bytes`].
pub fn random_uuid() -> io::Result<String> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    Ok(format_uuid_v4(b))
}

/// Formats 16 random bytes as a version 4, variant 1 UUID.
pub fn format_uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Creates an ext4 file system labelled `label` on `dev` with the
/// initramfs's mke2fs. Lazy inode-table and journal initialisation keep
/// first boot fast (the kernel finishes the work in the background), and
/// no discard, which can take minutes on large disks. The UUID and the
/// directory hash seed are passed in: early in boot the kernel's random
/// pool is often not initialised yet (no RDRAND under QEMU TCG), and
/// libuuid then retries non-blocking getrandom for seconds per UUID.
pub fn mke2fs(dev: &Path, label: &str) -> Result<(), Failure> {
    let Some(bin) = MKE2FS_PATHS.iter().find(|p| Path::new(p).exists()) else {
        return fail(
            format!("formatting {}", dev.display()),
            "no mke2fs in the initramfs (looked for /sbin/mke2fs and /usr/sbin/mke2fs)",
        );
    };
    let uuid = random_uuid().ctx(|| "getrandom".into())?;
    let seed = random_uuid().ctx(|| "getrandom".into())?;
    let out = Command::new(bin)
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-U", &uuid])
        .args([
            "-E",
            &format!("hash_seed={seed},lazy_itable_init=1,lazy_journal_init=1,nodiscard"),
        ])
        .arg(dev)
        .output()
        .ctx(|| format!("running {bin}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned();
        return fail(
            format!("{bin} on {}", dev.display()),
            format!("{} {last}", out.status),
        );
    }
    Ok(())
}

/// Erases the disk image's "never formatted" mark from a freshly formatted
/// state partition (the mark sits in ext4's unused first 1024 bytes), so a
/// later damaged superblock is never taken for a new partition.
pub fn erase_state_mark(dev: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .ctx(|| format!("opening {}", dev.display()))?;
    f.write_all_at(&[0u8; crate::ext4::STATE_NEW_MARK.len()], 0)
        .and_then(|()| f.sync_all())
        .ctx(|| format!("erasing the never-formatted mark of {}", dev.display()))
}

/// Runs the image's `/bin/sh` chrooted into `root` (with /dev, /proc, /sys
/// and /run bound in) on the console, and waits for it to exit.
pub fn emergency_shell(root: &str) -> Result<std::process::ExitStatus, Failure> {
    use std::os::unix::process::CommandExt;
    let sh = format!("{root}/bin/sh");
    if !Path::new(&sh).exists() {
        return fail("emergency shell", format!("no {sh}"));
    }
    for d in ["dev", "proc", "sys", "run"] {
        let target = format!("{root}/{d}");
        if let Err(e) = mount_bind(format!("/{d}"), &target) {
            eprintln!("cairn-init: warning: binding /{d} on {target}: {e}");
        }
    }
    eprintln!(
        "cairn-init: emergency shell (the image's /bin/sh as root); the system is not started; `exit` reboots"
    );
    let root_c = CString::new(root).map_err(|e| Failure(e.to_string()))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TERM", "linux")
        .env("HOME", "/")
        .env("PS1", "(cairn emergency) # ");
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes the setsid(2), ioctl(2), chroot(2) and chdir(2) system calls,
    // which are async-signal-safe; it allocates nothing (the path was made
    // before).
    unsafe {
        cmd.pre_exec(move || {
            // a session of its own with the console as its terminal, so the
            // shell has job control and Ctrl-C reaches it
            rustix::process::setsid()?;
            let _ = rustix::process::ioctl_tiocsctty(std::io::stdin());
            rustix::process::chroot(root_c.as_c_str())?;
            rustix::process::chdir(c"/")?;
            Ok(())
        });
    }
    cmd.status().ctx(|| format!("starting {sh}"))
}

/// Mounts an ext4 file system read-write.
pub fn mount_ext4(dev: &Path, target: &str) -> Result<(), Failure> {
    mkdir_p(target, 0o755)?;
    mount(dev, target, "ext4", MountFlags::NOATIME, None)
        .ctx(|| format!("mounting {} as ext4 on {target}", dev.display()))
}

/// Mounts a tmpfs (for diskless state).
pub fn mount_tmpfs(target: &str) -> Result<(), Failure> {
    mkdir_p(target, 0o755)?;
    mount_fs("tmpfs", target, "tmpfs", MountFlags::empty(), "mode=0755")
}

/// Mounts the ESP (vfat) read-write, readable by root only like systemd does.
pub fn mount_esp(dev: &Path, target: &str) -> Result<(), Failure> {
    mount(
        dev,
        target,
        "vfat",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOATIME,
        Some(c"umask=0077,shortname=winnt"),
    )
    .ctx(|| format!("mounting {} as vfat on {target}", dev.display()))
}

/// Copies a tree (directories, regular files, symlinks) with owners and
/// permission bits; other file types are skipped. `dst` must not exist.
/// Used to seed the state's `var`, `home` and `root` from the image.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    if ft.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
        lchown(dst, Some(md.uid()), Some(md.gid()))?;
        return Ok(());
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        return Ok(());
    }
    // chown clears set-id bits, so the mode comes after it.
    chown(dst, Some(md.uid()), Some(md.gid()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
}

/// Makes `state/<name>` (seeded from `image/<name>` on first use, via a
/// temporary name and a rename so an interrupted copy is redone) and
/// bind-mounts it on `image/<name>`.
pub fn bind_state_dir(state: &str, image: &str, name: &str) -> Result<(), Failure> {
    let dst = format!("{state}/{name}");
    let target = format!("{image}/{name}");
    if !Path::new(&target).is_dir() {
        return fail(
            format!("binding {dst}"),
            format!("the image has no /{name} directory"),
        );
    }
    if !Path::new(&dst).exists() {
        let tmp = format!("{state}/.{name}.seeding");
        if Path::new(&tmp).exists() {
            fs::remove_dir_all(&tmp).ctx(|| format!("removing {tmp}"))?;
        }
        copy_tree(Path::new(&target), Path::new(&tmp))
            .ctx(|| format!("seeding {dst} from /{name}"))?;
        fs::rename(&tmp, &dst).ctx(|| format!("renaming {tmp}"))?;
    }
    mount_bind(&dst, &target).ctx(|| format!("binding {dst} on {target}"))
}

/// Mounts an overlay on `image/etc`: the image's /etc below, `state/etc/upper`
/// above (work dir `state/etc/work`), creating those on first use. The
/// image's /etc is first bound on `pristine` (under /run), which is the
/// lower layer's name in /proc/mounts, so the path stays valid after
/// switch_root and shows the image's own /etc next to the local changes.
pub fn overlay_etc(state: &str, image: &str, pristine: &str) -> Result<(), Failure> {
    let upper = format!("{state}/etc/upper");
    let work = format!("{state}/etc/work");
    mkdir_p(&upper, 0o755)?;
    mkdir_p(&work, 0o755)?;
    let target = format!("{image}/etc");
    mkdir_p(pristine, 0o755)?;
    mount_bind(&target, pristine).ctx(|| format!("binding {target} on {pristine}"))?;
    mount_fs(
        "overlay",
        &target,
        "overlay",
        MountFlags::empty(),
        &format!("lowerdir={pristine},upperdir={upper},workdir={work}"),
    )
}

/// True when `path` is on a ramfs or tmpfs (the initramfs).
pub fn is_ram_fs(path: &str) -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // f_type is i64 on x86_64 but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path)
        .map(|s| matches!(s.f_type as i64, RAMFS_MAGIC | TMPFS_MAGIC))
        .unwrap_or(false)
}

/// Deletes everything under `root` that is on the same file system as
/// `root` itself, without following symlinks or entering mount points
/// (as busybox switch_root does). Errors are ignored: this only frees RAM.
pub fn delete_contents(root: &Path) {
    let Ok(md) = fs::symlink_metadata(root) else {
        return;
    };
    delete_children(root, md.dev());
}

fn delete_children(dir: &Path, dev: u64) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != dev {
            continue;
        }
        if md.is_dir() {
            delete_children(&p, dev);
            let _ = fs::remove_dir(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Moves /proc, /sys, /dev and /run into `new_root`, frees the initramfs,
/// makes `new_root` the root and executes `init` there. Returns only on
/// failure.
pub fn switch_root(new_root: &str, init: &str) -> Failure {
    match switch_root_inner(new_root, init) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn switch_root_inner(new_root: &str, init: &str) -> Result<std::convert::Infallible, Failure> {
    if !is_ram_fs("/") {
        return fail(
            "switch_root",
            "/ is not the initramfs (ramfs/tmpfs); refusing to delete it",
        );
    }
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("{new_root}{m}");
        if !Path::new(&target).is_dir() {
            return fail(
                format!("moving {m}"),
                format!("the image has no {m} directory"),
            );
        }
        mount_move(m, &target).ctx(|| format!("moving {m} to {target}"))?;
    }
    delete_contents(Path::new("/"));
    std::env::set_current_dir(new_root).ctx(|| format!("chdir {new_root}"))?;
    mount_move(".", "/").ctx(|| format!("moving {new_root} to /"))?;
    rustix::process::chroot(".").ctx(|| "chroot".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir /".into())?;
    let c_init = CString::new(init).map_err(|e| Failure(e.to_string()))?;
    let argv = [c_init.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of valid C strings that
    // outlive the call; execv only returns on failure.
    unsafe { libc::execv(c_init.as_ptr(), argv.as_ptr()) };
    fail(format!("executing {init}"), io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modules_record_lists_each_module_tried_then_the_held_ones() {
        let mut r = ModuleReport::default();
        r.record.push("virtio_net 1.204 0.031 loaded".into());
        r.record.push("ahci 1.700 0.450 loaded".into());
        // from the second thread, noted after ahci but ended before it
        r.record
            .push("ext4 1.300 0.080 failed: Exec format error".into());
        let t = modules_record(&r, &["ata_piix".to_owned()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with('#'));
        assert_eq!(lines[1], "virtio_net 1.204 0.031 loaded");
        assert_eq!(lines[2], "ext4 1.300 0.080 failed: Exec format error");
        assert_eq!(lines[3], "ahci 1.700 0.450 loaded");
        assert!(lines[4].starts_with("ata_piix - - held back"), "{t}");
        assert_eq!(lines.len(), 5);
        assert!(since_boot() > 0.0);
    }

    #[test]
    fn describe_strips_os_error() {
        assert_eq!(
            describe(io::Error::from_raw_os_error(22)),
            "Invalid argument"
        );
        assert_eq!(
            describe(rustix::io::Errno::NOENT),
            "No such file or directory"
        );
        assert_eq!(describe("plain (text)"), "plain (text)");
        let r: Result<(), _> = Err(rustix::io::Errno::INVAL);
        assert_eq!(
            r.ctx(|| "mounting /dev/vda2 (cairn-a) as squashfs".into())
                .unwrap_err()
                .0,
            "mounting /dev/vda2 (cairn-a) as squashfs: Invalid argument"
        );
    }

    #[test]
    fn uuid_v4_format() {
        assert_eq!(
            format_uuid_v4([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            format_uuid_v4([0; 16]),
            "00000000-0000-4000-8000-000000000000"
        );
        let a = random_uuid().unwrap();
        assert_eq!(a.len(), 36);
        assert_ne!(a, random_uuid().unwrap());
    }

    #[test]
    fn struct_layouts_match_the_kernel() {
        // sizes from linux/loop.h and linux/blkpg.h on 64-bit Linux.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
    }

    #[test]
    fn copy_tree_keeps_types_modes_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("var");
        fs::create_dir_all(src.join("lib/thing")).unwrap();
        fs::create_dir_all(src.join("tmp")).unwrap();
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(src.join("lib/thing/state"), b"data").unwrap();
        fs::set_permissions(
            src.join("lib/thing/state"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        symlink("../run", src.join("run")).unwrap();
        symlink("/nonexistent/target", src.join("dangling")).unwrap();
        let dst = dir.path().join("state-var");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("lib/thing/state")).unwrap(), b"data");
        let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("lib/thing/state"), 0o640);
        assert_eq!(fs::read_link(dst.join("run")).unwrap(), Path::new("../run"));
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        let uid = fs::metadata(&src).unwrap().uid();
        assert_eq!(fs::metadata(dst.join("lib")).unwrap().uid(), uid);
        // dst must not exist.
        assert!(copy_tree(&src, &dst).is_err());
    }

    #[test]
    fn delete_contents_stays_inside() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("lib/modules/6.1")).unwrap();
        fs::write(r.join("init"), b"elf").unwrap();
        fs::write(r.join("lib/modules/6.1/a.ko"), b"ko").unwrap();
        symlink(outside.path(), r.join("link-to-outside")).unwrap();
        symlink(outside.path().join("keep"), r.join("file-link")).unwrap();
        fs::create_dir(r.join("sysroot")).unwrap();
        // A mount point inside (when we may mount: root, not in a restricted
        // sandbox) must survive with its contents.
        let mounted = mount(
            "tmpfs",
            r.join("sysroot"),
            "tmpfs",
            MountFlags::empty(),
            None,
        )
        .is_ok();
        if mounted {
            fs::write(r.join("sysroot/precious"), b"p").unwrap();
        }
        delete_contents(r);
        let left: Vec<_> = fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if mounted {
            assert_eq!(left, ["sysroot"]);
            assert!(r.join("sysroot/precious").exists());
            rustix::mount::unmount(r.join("sysroot"), rustix::mount::UnmountFlags::empty())
                .unwrap();
        } else {
            assert!(left.is_empty(), "{left:?}");
        }
        assert!(
            outside.path().join("keep").exists(),
            "followed a symlink out"
        );
    }
}
