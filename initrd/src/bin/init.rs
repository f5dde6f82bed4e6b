//! `/init`: PID 1 of the cairn initramfs. In order: mount /dev (console on
//! stdio), /proc, /sys and /run; read the kernel command line; load the
//! modules listed in `/lib/modules/<release>/modules.order-cairn`; find
//! the slot partition by GPT label (or attach `/rootfs.squashfs` to a loop
//! device for `cairn.root=ram`) and mount its squashfs read-only on
//! /sysroot; set up the writable state (the `cairn-state` partition, grown
//! to the end of the disk and formatted on first boot, or a tmpfs) on
//! /run/cairn/state with `var`, `home`, `root` bound into the image and an
//! overlay on `/etc` (lower layer: the image's /etc, visible afterwards at
//! /run/cairn/image-etc); mount the ESP on /sysroot/efi; switch_root into
//! `/sbin/init`.
//!
//! Any failure prints one `cairn-init: FATAL: ...` line, waits 10 s and
//! reboots (so boot counting falls back to the other slot); so does a
//! panic. One failure stops instead: a state partition that is neither ext4
//! nor marked new by the disk image is never formatted, and `/init` starts
//! the image's shell on the console (rebooting would not help, and an older
//! slot's `/init` might format it). PID 1 never exits. The options are described
//! in `cairn_initrd::cmdline`.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_formats::verity::Verity;
use cairn_initrd::blockdev::{self, BlockDev, Want};
use cairn_initrd::boot::{self, fail, Context, Failure};
use cairn_initrd::bootdisk;
use cairn_initrd::cmdline::{self, Cmdline, RootSource, StateSource, STATE_LABEL};
use cairn_initrd::dm::{self, OnCorruption};
use cairn_initrd::ext4;
use cairn_initrd::partition_table::{self as pt, Gpt};
use cairn_initrd::verity::{self, Count, Plan};
use std::os::unix::fs::MetadataExt;

const SYSROOT: &str = "/sysroot";
const STATE: &str = "/run/cairn/state";
/// The image's own /etc, the overlay's lower layer.
const IMAGE_ETC: &str = "/run/cairn/image-etc";
const CLASS_BLOCK: &str = "/sys/class/block";
const DEV: &str = "/dev";
const FATAL_DELAY: Duration = Duration::from_secs(10);
/// The device-mapper name of the verified root.
const VERITY_NAME: &str = "cairn-root";
/// Where /init mounts the ESP for a moment to look at or mark entries.
const ESP_PEEK: &str = "/run/cairn/esp";
/// How long SATA/IDE drivers stay held back while another disk controller
/// may still bring up the boot disk (see `cairn_initrd::modules::DEFERRED`):
/// NVMe probes asynchronously and is normally done well within this.
const DEFERRED_GRACE: Duration = Duration::from_millis(500);

/// Writes one `cairn-init: ` line to the console, ignoring errors (a PID 1
/// without a console must not panic on `println!`).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "cairn-init: {line}");
}

/// Prints the FATAL line, waits, reboots. Never returns.
fn die(msg: &str) -> ! {
    say(&format!("FATAL: {msg}"));
    rustix::fs::sync();
    std::thread::sleep(FATAL_DELAY);
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Time since `/init` started, for `cairn.debug`.
struct Clock {
    start: Instant,
    debug: bool,
    /// Modules tried when progress was last printed.
    modules_reported: std::cell::Cell<usize>,
}

impl Clock {
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn step(&self, what: &str) {
        if self.debug {
            say(&format!("{:.3}s {what}", self.secs()));
        }
    }
}

fn main() {
    let start = Instant::now();
    if std::process::id() != 1 {
        eprintln!("cairn-init: this is the initramfs /init and must run as PID 1; not touching this system");
        std::process::exit(1);
    }
    std::panic::set_hook(Box::new(|info| die(&format!("panic: {info}"))));
    match boot_sequence(start) {
        Ok(never) => match never {},
        Err(f) => die(&f.0),
    }
}

fn boot_sequence(start: Instant) -> Result<Infallible, Failure> {
    boot::mount_dev_and_console()?;
    boot::mount_api_filesystems()?;
    let text = fs::read_to_string("/proc/cmdline").ctx(|| "reading /proc/cmdline".into())?;
    let cmd = cmdline::parse(&text).map_err(|e| Failure(e.to_string()))?;
    let clock = Clock {
        start,
        debug: cmd.debug,
        modules_reported: std::cell::Cell::new(usize::MAX),
    };
    if cmd.debug {
        let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
        let uptime = uptime.split_whitespace().next().unwrap_or("?");
        clock.step(&format!(
            "started (kernel uptime {uptime}s); mounted /dev /proc /sys /run"
        ));
    }
    for u in &cmd.unknown {
        say(&format!("warning: unknown parameter {u} ignored"));
    }

    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut modules = boot::ModuleLoader::start(Path::new(&format!("/lib/modules/{release}")));
    if let Some(e) = &modules.plan_error {
        say(&format!(
            "warning: modules.dep/modules.alias unusable ({e}); loading every module"
        ));
    }
    modules.tick();
    report_modules(&mut modules, &clock, "for the devices present");
    // The file systems this boot will mount, loaded on a second thread
    // while this one finds the disks and prepares the state.
    let disk_boot = cmd.root == RootSource::Disk;
    let mut whats = Vec::new();
    if matches!(cmd.state, StateSource::Label(_)) || (disk_boot && cmd.state == StateSource::Auto) {
        whats.push("ext4");
    }
    whats.extend(["squashfs", "overlay"]);
    if disk_boot {
        whats.push("vfat");
    }
    if cmd.verity.is_some() {
        whats.push("dm_verity");
    }
    modules.preload(&whats);

    // The root device (not mounted yet): the slot partition, or the image
    // in the initramfs on a loop device.
    let (slot, root_dev, root_node, root_desc, loop_fd) = match cmd.root {
        RootSource::Disk => {
            let label = cmd.slot.map(|s| s.label()).unwrap_or("cairn-a");
            let boot_disk = boot_disk(&cmd, &mut modules, &clock)?;
            let want = match &boot_disk {
                Some(disk) => Want::LabelOnDisk(label, disk),
                None => Want::Label(label),
            };
            let part = wait_partition(&want, label, &cmd, &mut modules)?;
            if boot_disk.is_none() {
                // No loader told us the disk: refuse to choose between two.
                let disks = bootdisk::disks_with_label(Path::new(CLASS_BLOCK), label);
                if disks.len() > 1 {
                    return fail(
                        label,
                        format!(
                            "partitions labelled {label} on {}; the boot loader did not say which disk it came from (no {}), so none is taken: remove the other disks or boot through systemd-boot",
                            disks.join(" and "),
                            bootdisk::LOADER_DEVICE_PART_UUID
                        ),
                    );
                }
            }
            report_modules(&mut modules, &clock, &format!("while waiting for {label}"));
            let node = part.node(Path::new(DEV));
            clock.step(&format!("found {label} at {}", node.display()));
            let dev = match (part.uevent.major, part.uevent.minor) {
                (Some(ma), Some(mi)) => format!("{ma}:{mi}"),
                _ => node.display().to_string(),
            };
            let desc = format!("{label} ({})", node.display());
            (Some(part), dev, node, desc, None)
        }
        RootSource::Ram => {
            let img = PathBuf::from(format!("/{}", cairn_initrd::RAM_ROOT_IMAGE));
            if !img.exists() {
                return fail(
                    "cairn.root=ram",
                    format!("no {} in the initramfs", img.display()),
                );
            }
            modules.load_for("loop");
            let (dev, fd) = boot::attach_loop(&img, cmd.timeout)?;
            let rdev = fs::metadata(&dev)
                .ctx(|| format!("stat {}", dev.display()))?
                .rdev();
            let majmin = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
            let desc = format!("{} on {}", img.display(), dev.display());
            (None, majmin, dev, desc, Some(fd))
        }
    };

    // The slot's disk and its partition table (disk boots only).
    let disk = match &slot {
        Some(part) => {
            let name = part.disk.clone().ok_or_else(|| {
                Failure(format!("cannot tell which disk {} belongs to", part.name))
            })?;
            let node = disk_node(&name);
            let sector = boot::sector_size(&name)?;
            let mut f = File::open(&node).ctx(|| format!("opening {}", node.display()))?;
            let gpt = Gpt::read(&mut f, sector)
                .ctx(|| format!("reading the GPT of {}", node.display()))?;
            Some((name, node, gpt))
        }
        None => None,
    };

    // The writable state, mounted before the root: a verified root's count
    // of unfinished boots lives there (cairn_initrd::verity).
    let state_part = match (&cmd.state, &disk) {
        (StateSource::Tmpfs, _) | (StateSource::Auto, None) => None,
        (StateSource::Auto, Some((name, node, gpt))) => {
            let Some(entry) = gpt.find_by_name(STATE_LABEL) else {
                return fail(
                    "state",
                    format!(
                        "no partition labelled {STATE_LABEL} on {} (boot with cairn.state=tmpfs to run without one)",
                        node.display()
                    ),
                );
            };
            Some(wait_partition(
                &Want::Number(name, entry.number),
                STATE_LABEL,
                &cmd,
                &mut modules,
            )?)
        }
        (StateSource::Label(label), _) => Some(wait_partition(
            &Want::Label(label),
            label,
            &cmd,
            &mut modules,
        )?),
    };
    // A state partition that is not ours stops the boot with the image's
    // shell, which needs the root: remembered until the root is mounted.
    let mut not_ours = None;
    let state_desc = match &state_part {
        None => {
            boot::mount_tmpfs(STATE)?;
            "tmpfs".to_owned()
        }
        Some(part) => {
            match prepare_state(part, &clock, &mut modules) {
                Ok(()) => {}
                Err(StateError::Failure(f)) => return Err(f),
                Err(StateError::NotOurs(msg)) => not_ours = Some(msg),
            }
            format!("{} (ext4)", part.node(Path::new(DEV)).display())
        }
    };

    // The root, through dm-verity when the command line carries its hash.
    modules.load_for("squashfs");
    let mut counted = false;
    match &cmd.verity {
        None => {
            boot::mount_squashfs(&root_node, &root_desc, SYSROOT)?;
        }
        Some(v) => {
            let esp = disk.as_ref().and_then(|(name, _, gpt)| {
                gpt.partitions()
                    .into_iter()
                    .find(|p| p.name == "ESP" || p.is_esp())
                    .map(|p| (name.clone(), p.number))
            });
            let guard = match (&slot, state_part.is_some() && not_ours.is_none()) {
                (Some(part), true) => Some(Guard::new(
                    part.uevent.partname.as_deref().unwrap_or("cairn-a"),
                    esp,
                    &cmd,
                    &mut modules,
                )),
                _ => None,
            };
            let mode = match &guard {
                None => verity::plan(0, cmd.tries, false, false),
                Some(g) => verity::plan(g.earlier, cmd.tries, true, g.can_fall_back()),
            };
            let mode = match (mode, &guard) {
                (Plan::Open(mode), _) => mode,
                (Plan::MarkBad, Some(g)) => g.give_up(
                    &format!(
                        "{root_desc} (verity root hash {}): {} boot(s) in a row never reached boot-complete.target",
                        v.root_hash_hex(),
                        g.earlier
                    ),
                    g.earlier,
                ),
                (Plan::MarkBad, None) => OnCorruption::Eio,
            };
            if let Some(g) = &guard {
                g.count()?;
                counted = true;
            }
            if mode == OnCorruption::Eio && slot.is_some() {
                say(&format!(
                    "warning: {root_desc}: a corrupt block fails its read (EIO) instead of restarting the machine ({})",
                    if guard.is_some() { "no other boot entry to fall back to" } else { "no state partition or loader entry to count restarts with" }
                ));
            }
            modules.load_for("dm_verity");
            report_modules(&mut modules, &clock, "for dm-verity");
            let opened = open_verity(v, &root_dev, &root_desc, mode, &cmd);
            if let Err(f) = opened {
                match &guard {
                    Some(g) if g.can_fall_back() => {
                        g.give_up(&f.0, g.earlier + 1);
                    }
                    _ => return Err(f),
                }
            }
        }
    }
    drop(loop_fd);
    clock.step(&format!("mounted root {root_desc} on {SYSROOT}"));
    if let Some(msg) = not_ours {
        emergency(&msg);
    }
    for dir in ["var", "home", "root"] {
        boot::bind_state_dir(STATE, SYSROOT, dir)?;
    }
    modules.load_for("overlay");
    boot::overlay_etc(STATE, SYSROOT, IMAGE_ETC)?;
    clock.step(&format!(
        "state {state_desc} on {STATE}: /var /home /root bound, /etc overlaid"
    ));

    // The ESP, when booting from a disk that has one. Not fatal: the system
    // runs without it, only updates need it.
    if let Some((name, node, gpt)) = &disk {
        let esp = gpt
            .partitions()
            .into_iter()
            .find(|p| p.name == "ESP" || p.is_esp());
        let target = format!("{SYSROOT}/efi");
        match esp {
            None => say(&format!("warning: no ESP on {}", node.display())),
            Some(_) if !Path::new(&target).is_dir() => {
                say("warning: the image has no /efi directory; ESP not mounted")
            }
            Some(esp) => {
                modules.load_for("vfat");
                match wait_partition(&Want::Number(name, esp.number), "ESP", &cmd, &mut modules)
                    .and_then(|p| boot::mount_esp(&p.node(Path::new(DEV)), &target))
                {
                    Ok(()) => clock.step(&format!("mounted the ESP on {target}")),
                    Err(e) => say(&format!("warning: {e}")),
                }
            }
        }
    }

    if counted {
        match verity::install_clear_unit(Path::new("/run"), STATE) {
            Ok(unit) => clock.step(&format!(
                "{} clears the count of unfinished boots at boot-complete.target",
                unit.display()
            )),
            Err(e) => say(&format!("warning: writing {}: {e}", verity::CLEAR_UNIT)),
        }
    }
    modules.finish_preload();
    report_modules(&mut modules, &clock, "in all");
    let held = modules.held();
    if !held.is_empty() {
        say(&format!(
            "not loaded in the initramfs: {} (SATA/IDE; the boot disk came up without it, the system's udev loads it)",
            held.join(", ")
        ));
    }
    let record = boot::modules_record(&modules.report, &held);
    if let Err(e) =
        fs::create_dir_all("/run/cairn").and_then(|()| fs::write(boot::MODULES_RECORD, record))
    {
        say(&format!("warning: writing {}: {e}", boot::MODULES_RECORD));
    }
    say(&format!(
        "root {root_desc}, state {state_desc}; switching to {} after {:.3}s",
        cmd.init,
        clock.secs()
    ));
    Err(boot::switch_root(SYSROOT, &cmd.init))
}

/// Opens the root `dev` (`MAJOR:MINOR`) through dm-verity and mounts the
/// squashfs on the verity device at SYSROOT.
fn open_verity(
    v: &Verity,
    dev: &str,
    desc: &str,
    mode: OnCorruption,
    cmd: &Cmdline,
) -> Result<(), Failure> {
    let hash = v.root_hash_hex();
    let table = dm::verity_table(v, dev, mode);
    let mapped = dm::create_read_only(VERITY_NAME, &table, cmd.timeout).map_err(|e| {
        Failure(format!(
            "opening {desc} through dm-verity (root hash {hash}, {} data blocks): {e} (the kernel's device-mapper line above says why)",
            v.data_blocks
        ))
    })?;
    let how = match mode {
        OnCorruption::Restart => "restart_on_corruption",
        OnCorruption::Eio => "EIO on corruption",
    };
    say(&format!(
        "root {desc} through dm-verity as {} ({VERITY_NAME}, {}:{}): root hash {hash}, {} data blocks, {how}",
        mapped.node.display(),
        mapped.major,
        mapped.minor,
        v.data_blocks
    ));
    if let Err(f) = boot::mount_squashfs(&mapped.node, desc, SYSROOT) {
        let _ = dm::remove_device(VERITY_NAME);
        return Err(Failure(format!(
            "{f}: {desc} does not match the verity root hash {hash} on the command line (a read failed verification) or holds no squashfs"
        )));
    }
    Ok(())
}

/// The bookkeeping of a verified root on a disk with a state partition:
/// this slot's entry, its unfinished boots so far, and the ESP's entries.
struct Guard {
    slot: String,
    /// The loader's entry id, `-` when there is none.
    entry: String,
    earlier: u32,
    /// The ESP's node, when the disk has one.
    esp: Option<PathBuf>,
    /// The booted entry's file and whether another entry is not bad.
    booted: Option<String>,
    other: bool,
}

impl Guard {
    fn new(
        slot: &str,
        esp: Option<(String, u32)>,
        cmd: &Cmdline,
        modules: &mut boot::ModuleLoader,
    ) -> Guard {
        let entry = match boot::read_efi_variable(verity::LOADER_ENTRY_SELECTED) {
            Ok(raw) => raw.and_then(|r| verity::parse_efi_string(&r)),
            Err(e) => {
                say(&format!("warning: {e}"));
                None
            }
        };
        if esp.is_some() {
            modules.load_for("vfat");
        }
        let esp = esp.and_then(|(disk, n)| {
            wait_partition(&Want::Number(&disk, n), "ESP", cmd, modules)
                .map(|p| p.node(Path::new(DEV)))
                .map_err(|e| say(&format!("warning: {e}")))
                .ok()
        });
        let mut g = Guard {
            slot: slot.to_owned(),
            entry: entry.clone().unwrap_or_else(|| "-".to_owned()),
            earlier: Count::earlier(
                verity::read_count(Path::new(STATE)).as_ref(),
                slot,
                entry.as_deref().unwrap_or("-"),
            ),
            esp,
            booted: None,
            other: false,
        };
        if let (Some(id), Some(node)) = (&entry, &g.esp) {
            match with_esp(node, verity::entry_files) {
                Ok(files) => (g.booted, g.other) = verity::find_booted(&files, id),
                Err(e) => say(&format!("warning: reading the boot entries: {e}")),
            }
        }
        g
    }

    fn can_fall_back(&self) -> bool {
        self.booted.is_some() && self.other
    }

    /// Adds this boot to the count, durably, before the root is opened.
    fn count(&self) -> Result<(), Failure> {
        let c = Count {
            slot: self.slot.clone(),
            entry: self.entry.clone(),
            boots: self.earlier + 1,
        };
        verity::write_count(Path::new(STATE), &c).ctx(|| {
            format!(
                "writing {STATE}/{} (the count of unfinished boots)",
                verity::COUNT_FILE
            )
        })
    }

    /// Marks the booted entry bad, as boot counting does, and reboots so
    /// that the loader starts the other slot. Never returns.
    fn give_up(&self, why: &str, boots: u32) -> ! {
        let (Some(file), Some(node)) = (&self.booted, &self.esp) else {
            die(why)
        };
        say(&format!("FATAL: {why}"));
        match with_esp(node, |esp| verity::mark_bad(esp, file, boots.max(1))) {
            Ok(new) => say(&format!(
                "marked boot entry {file} of {} bad ({new}); rebooting into the other slot",
                self.slot
            )),
            Err(e) => die(&format!("marking boot entry {file} bad: {e}")),
        }
        let _ = fs::remove_file(Path::new(STATE).join(verity::COUNT_FILE));
        rustix::fs::sync();
        std::thread::sleep(Duration::from_secs(1));
        let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Runs `f` on the ESP mounted for a moment at ESP_PEEK.
fn with_esp<T>(node: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> Result<T, String> {
    fs::create_dir_all(ESP_PEEK).map_err(|e| format!("creating {ESP_PEEK}: {e}"))?;
    boot::mount_esp(node, ESP_PEEK).map_err(|e| e.0)?;
    let out = f(Path::new(ESP_PEEK)).map_err(|e| format!("{}: {e}", node.display()));
    if let Err(e) = rustix::mount::unmount(ESP_PEEK, rustix::mount::UnmountFlags::empty()) {
        say(&format!("warning: unmounting {ESP_PEEK}: {e}"));
    }
    out
}

/// Prints module load failures (always) and, with `cairn.debug`, a
/// progress line with the three slowest modules when more were loaded.
fn report_modules(m: &mut boot::ModuleLoader, clock: &Clock, when: &str) {
    for (path, err) in m.report.failed.drain(..) {
        say(&format!("warning: loading module {path}: {err}"));
    }
    let tried = m.report.timings.len();
    if clock.debug && tried != clock.modules_reported.replace(tried) {
        let r = &m.report;
        let slow: Vec<String> = r
            .slowest(3)
            .iter()
            .map(|(p, t)| {
                format!(
                    "{} {:.3}s",
                    p.rsplit('/').next().unwrap_or(p),
                    t.as_secs_f64()
                )
            })
            .collect();
        let mode = if m.device_driven() {
            "per device"
        } else {
            "all listed"
        };
        clock.step(&format!(
            "modules ({mode}) {when}: {} loaded, {} already present; slowest: {}",
            r.loaded,
            r.already,
            slow.join(", ")
        ));
    }
}

/// Waits for a partition (loading drivers for devices as they appear),
/// failing with one line naming what did not appear.
fn wait_partition(
    want: &Want<'_>,
    what: &str,
    cmd: &Cmdline,
    modules: &mut boot::ModuleLoader,
) -> Result<BlockDev, Failure> {
    if let Want::Label(_) = want {
        // Any disk may hold the label (and two must be refused): every
        // disk controller's driver, held back or not.
        modules.release_deferred();
    }
    blockdev::wait_for(
        Path::new(CLASS_BLOCK),
        Path::new(DEV),
        want,
        cmd.timeout,
        &mut || modules.tick(),
    )
    .ok_or_else(|| {
        let secs = cmd.timeout.as_secs_f64();
        let where_ = match want {
            Want::Label(_) => String::new(),
            Want::LabelOnDisk(_, d) | Want::Number(d, _) => format!(" on {d}"),
        };
        let seen: Vec<String> = blockdev::scan(Path::new(CLASS_BLOCK))
            .into_iter()
            .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
            .map(|d| match &d.uevent.partname {
                Some(l) if d.is_partition() => format!("{} ({l})", d.name),
                _ => d.name,
            })
            .collect();
        let seen = if seen.is_empty() {
            "no disk at all: is its controller's driver in the initramfs? (initrd.modules in the image definition)".to_owned()
        } else {
            format!("block devices: {}", seen.join(", "))
        };
        Failure(format!(
            "no partition labelled {what}{where_} appeared within {secs}s; {seen}"
        ))
    })
}

/// The disk systemd-boot was started from, by the ESP partition GUID it
/// left in `LoaderDevicePartUUID`; waits for that disk to appear. `None`
/// when the machine did not boot through a loader that sets the variable
/// (direct kernel boot, BIOS).
fn boot_disk(
    cmd: &Cmdline,
    modules: &mut boot::ModuleLoader,
    clock: &Clock,
) -> Result<Option<String>, Failure> {
    if !Path::new(bootdisk::EFIVARS).is_dir() {
        return Ok(None); // not a UEFI boot
    }
    modules.load_for("efivarfs");
    report_modules(modules, clock, "for efivarfs");
    let raw = match boot::read_efi_variable(bootdisk::LOADER_DEVICE_PART_UUID) {
        Ok(Some(raw)) => raw,
        Ok(None) => return Ok(None),
        Err(e) => {
            // the slot is then taken by label, one disk only (as without a loader)
            say(&format!("warning: {e}; cannot tell the boot disk"));
            return Ok(None);
        }
    };
    let Some(guid) = bootdisk::parse_loader_device_part_uuid(&raw) else {
        return fail(
            bootdisk::LOADER_DEVICE_PART_UUID,
            format!(
                "not a partition GUID: {:?}",
                String::from_utf8_lossy(&raw[raw.len().min(4)..])
            ),
        );
    };
    let text = bootdisk::format_gpt_guid(&guid);
    let start = Instant::now();
    let mut checked = std::collections::BTreeSet::new();
    let sector = |d: &str| boot::sector_size(d).ok();
    loop {
        modules.tick();
        // SATA/IDE drivers wait while another disk controller may bring the
        // boot disk up; at once when there is none, else after a grace.
        if modules.holding() && (!modules.other_storage() || start.elapsed() >= DEFERRED_GRACE) {
            modules.release_deferred();
            report_modules(modules, clock, "for SATA/IDE controllers");
        }
        let found = bootdisk::disks_with_partition(
            Path::new(CLASS_BLOCK),
            Path::new(DEV),
            &guid,
            &sector,
            &mut checked,
        );
        match found.as_slice() {
            [disk] => {
                clock.step(&format!("boot disk {disk} (loader partition {text})"));
                return Ok(Some(disk.clone()));
            }
            [] if start.elapsed() < cmd.timeout => std::thread::sleep(blockdev::POLL_INTERVAL),
            [] => {
                return fail(
                    "the boot disk",
                    format!(
                        "no disk with the partition {text} that the boot loader came from appeared within {}s",
                        cmd.timeout.as_secs_f64()
                    ),
                )
            }
            several => {
                return fail(
                    "the boot disk",
                    format!(
                        "the boot loader's partition {text} is on {}: disks with copied partition tables; remove the copy",
                        several.join(" and ")
                    ),
                )
            }
        }
    }
}

/// `/dev/<DEVNAME>` of a disk given its sysfs name.
fn disk_node(disk: &str) -> PathBuf {
    let devname = fs::read_to_string(format!("{CLASS_BLOCK}/{disk}/uevent"))
        .ok()
        .and_then(|t| blockdev::parse_uevent(&t).devname)
        .unwrap_or_else(|| disk.to_owned());
    Path::new(DEV).join(devname)
}

/// Why the state could not be set up: most failures reboot (boot counting
/// then falls back to the other slot); a state partition that is neither
/// ext4 nor marked new stops the boot with a shell instead (rebooting does
/// not help, and an older slot's /init might format it).
enum StateError {
    Failure(Failure),
    NotOurs(String),
}

impl From<Failure> for StateError {
    fn from(f: Failure) -> Self {
        StateError::Failure(f)
    }
}

/// Mounts the state partition on STATE; on first boot (the disk image's
/// "never formatted" mark, no ext4 yet) grows it to the end of its disk,
/// formats it and erases the mark. A partition with neither is refused.
fn prepare_state(
    part: &BlockDev,
    clock: &Clock,
    modules: &mut boot::ModuleLoader,
) -> Result<(), StateError> {
    let node = part.node(Path::new(DEV));
    let content = File::open(&node)
        .and_then(|mut f| ext4::state_content(&mut f))
        .ctx(|| format!("reading {}", node.display()))?;
    if content == ext4::StateContent::Unknown {
        return Err(StateError::NotOurs(format!(
            "the state partition {} ({STATE_LABEL}) holds no ext4 file system and is not \
             marked new by the disk image: not formatting it, it may hold this machine's data \
             (check it with e2fsck -n {}; to start afresh, wipe it and write the mark: \
             docs/security.md, \"At boot\")",
            node.display(),
            node.display()
        )));
    }
    if content == ext4::StateContent::New {
        match (&part.disk, part.uevent.partn) {
            (Some(disk), Some(n)) => match grow(disk, n) {
                Ok(Some(g)) => clock.step(&format!(
                    "grew partition {n} of {disk} from {} to {} sectors",
                    g.old_last_lba - g.first_lba + 1,
                    g.new_last_lba - g.first_lba + 1
                )),
                Ok(None) => {}
                Err(e) => say(&format!("warning: not growing {}: {e}", node.display())),
            },
            _ => say(&format!(
                "warning: not growing {}: unknown disk",
                node.display()
            )),
        }
        let label = part.uevent.partname.as_deref().unwrap_or(STATE_LABEL);
        boot::mke2fs(&node, label)?;
        boot::erase_state_mark(&node)?;
        clock.step(&format!("formatted {} as ext4", node.display()));
    }
    // growing and formatting need no module: ext4 may still be loading
    modules.load_for("ext4");
    Ok(boot::mount_ext4(&node, STATE)?)
}

/// Stops the boot with `msg` and the image's shell on the console (its
/// root is mounted on SYSROOT); reboots when the shell exits. Never
/// returns.
fn emergency(msg: &str) -> ! {
    say(&format!("FATAL: {msg}"));
    rustix::fs::sync();
    match boot::emergency_shell(SYSROOT) {
        Ok(status) => say(&format!("emergency shell exited ({status}); rebooting")),
        Err(e) => {
            say(&format!(
                "no emergency shell: {e}; power the machine off to retry"
            ));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Grows partition `n` of `disk` to the end of the disk (GPT rewrite, then
/// BLKPG so the kernel sees the new size).
fn grow(disk: &str, n: u32) -> Result<Option<pt::Grown>, Failure> {
    let node = disk_node(disk);
    let sector = boot::sector_size(disk)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .ctx(|| format!("opening {}", node.display()))?;
    let size = boot::device_size(&mut f).ctx(|| format!("sizing {}", node.display()))?;
    let grown = pt::grow_last_partition(&mut f, sector, size, n)
        .ctx(|| format!("growing the GPT of {}", node.display()))?;
    if let Some(g) = grown {
        f.sync_all().ctx(|| format!("syncing {}", node.display()))?;
        let start = g.first_lba * sector;
        let len = (g.new_last_lba - g.first_lba + 1) * sector;
        boot::kernel_resize_partition(&f, n, start, len).ctx(|| {
            format!(
                "telling the kernel about the new size of partition {n} of {}",
                node.display()
            )
        })?;
    }
    Ok(grown)
}
