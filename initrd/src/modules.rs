//! Kernel module selection for the initramfs: the dependency closure of a
//! list of module names computed from the kernel's `modules.dep` (as
//! written by `depmod`), skipping modules that are built into the kernel
//! (`modules.builtin`), in load order. It owns the names (`DEFAULT_MODULES`,
//! `MODULES_ORDER_FILE`) shared by the builder, which writes the order file,
//! and `/init`, which reads it, and the [`Hotplug`] planner with which
//! `/init` loads only the drivers of devices that are present when the
//! builder also carries (filtered) `modules.dep` and `modules.alias`. It
//! does not read files or load modules.

use std::collections::{HashMap, HashSet};

/// File, next to `modules.dep` in `/lib/modules/<release>/`, that the builder
/// writes into the initramfs: one module path per line (relative to that
/// directory, as in `modules.dep`), dependencies first. `/init` loads
/// exactly these, in this order.
pub const MODULES_ORDER_FILE: &str = "modules.order-cairn";

/// What a generic amd64 machine or a QEMU VM needs to find and mount its
/// root and state, checked against Debian bookworm's 6.1 kernel, where all
/// of these are modules (`closure` adds their dependencies: virtio, virtio_ring,
/// scsi_mod, libata, libahci, nvme-core, t10-pi, crc64-rocksoft, jbd2,
/// mbcache, crc16, fat, usbcore, ...). On kernels that build some of them
/// in, `closure_with_builtin` skips those.
///
/// * disk controllers: virtio (PCI, block, SCSI), SCSI disks, AHCI/SATA,
///   NVMe, USB sticks (xHCI, EHCI, usb-storage, UAS), SD/eMMC, and the
///   PIIX IDE controller (`ata_piix`: a plain `qemu-system-x86_64 -drive
///   file=disk.raw` on the default `pc` machine attaches the disk there).
///   Drivers are loaded per device present, so a controller the machine
///   does not have costs nothing;
/// * file systems: squashfs (the root image), overlay (`/etc`), ext4 (the
///   state partition), vfat + its code pages (the ESP), loop (network boot
///   with the root image in RAM), efivarfs (to read which disk
///   systemd-boot came from, see `bootdisk`);
/// * `dm_verity` (with `dm_mod`, `dm_bufio`, `reed_solomon`): the root
///   through dm-verity with `cairn.verity=` (`sha256` is built into
///   Debian's kernel); loaded on demand, see [`is_on_demand`];
/// * network cards: virtio-net, Intel e1000 (QEMU's `pc` default), e1000e
///   (q35's default), igb (common server NICs) and VMware's vmxnet3. The
///   initramfs does not use the network, but a NIC whose driver loads here
///   is up when the booted system's udev starts; left to udev, its driver
///   loaded seconds later and `network-online.target` waited for it
///   (`bench/boot-vs-debian.sh`: the NIC appeared at 13.4 s against
///   Debian's 4.7 s, whose initramfs-tools loads NIC drivers too);
/// * `virtio_rng`: a VM with a virtio RNG gets a seeded random pool at once;
/// * `crc32c_generic`: ext4 and jbd2 need the "crc32c" crypto algorithm and
///   ask for it through `request_module`, which has no modprobe to call in
///   the initramfs; `modules.dep` only records that as a soft dependency.
///
/// CD-ROM (`sr_mod`) is left out too: cairn never boots its root from one.
pub const DEFAULT_MODULES: &[&str] = &[
    // buses and disk controllers
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "ata_piix",
    "nvme",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "sdhci_pci",
    "mmc_block",
    // network cards, after the disk drivers (the order file loads the boot
    // disk's chain first when both kinds of device are present)
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "vmxnet3",
    // entropy from the hypervisor, so the random pool is ready early
    "virtio_rng",
    // file systems
    "squashfs",
    "overlay",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "loop",
    // systemd-boot's variables (which disk the machine booted from); see
    // is_on_demand
    "efivarfs",
    // the verified root (cairn.verity=); see is_on_demand
    "dm_verity",
];

/// What `/init` loads just before it uses a file system type (`ext4`,
/// `vfat`, `squashfs`, `overlay`, `efivarfs`), `loop` or `dm_verity`, in
/// this order: the one table behind [`for_mount`] and [`is_on_demand`].
/// ext4 asks the kernel for the "crc32c" algorithm through
/// `request_module`, which has no modprobe to run in the initramfs, so
/// `crc32c_generic` goes first; vfat mounts with code page 437 and the
/// ascii character set.
const MOUNT_NEEDS: &[(&str, &[&str])] = &[
    ("efivarfs", &["efivarfs"]),
    ("dm_verity", &["dm_verity"]),
    ("squashfs", &["squashfs"]),
    ("overlay", &["overlay"]),
    ("ext4", &["crc32c_generic", "ext4"]),
    ("vfat", &["vfat", "nls_cp437", "nls_ascii"]),
    ("loop", &["loop"]),
];

/// The modules `/init` loads, in this order, before it uses `what` (see
/// [`MOUNT_NEEDS`]); empty for anything else.
pub fn for_mount(what: &str) -> &'static [&'static str] {
    MOUNT_NEEDS
        .iter()
        .find(|(w, _)| *w == what)
        .map_or(&[], |(_, m)| *m)
}

/// True for a module carried in the initramfs but loaded only when `/init`
/// asks for it ([`Hotplug::named`] through [`for_mount`]), not at start,
/// so that the boot disk's driver chain is loaded first and a boot loads
/// only what it mounts: efivarfs refuses to load (`ENODEV`) on a machine
/// that did not boot through UEFI; device-mapper and dm-verity cost a boot
/// without `cairn.verity=` nothing; a diskless boot needs neither ext4 nor
/// vfat, a disk boot no `loop`.
pub fn is_on_demand(module: &str) -> bool {
    MOUNT_NEEDS.iter().any(|(_, m)| m.contains(&module))
}

/// Disk controller drivers that `/init` holds back ([`Hotplug::release`])
/// while another disk controller's driver may still bring up the boot disk:
/// SATA (AHCI) and the PIIX IDE controller. QEMU's q35 machine always has
/// an AHCI controller, and many servers have one next to their NVMe disks;
/// probing its ports is the slowest module load of a boot (0.6-0.9 s under
/// TCG). When the boot disk turns up behind another driver they are never
/// loaded in the initramfs (udev loads them in the booted system).
pub const DEFERRED: &[&str] = &["ahci", "ata_piix"];

/// True for the modalias of a disk controller or disk: PCI mass storage
/// (class 01), SD host controllers (class 08 05), virtio block and SCSI.
fn is_storage(modalias: &str) -> bool {
    if let Some(rest) = modalias.strip_prefix("pci:") {
        return match rest.find("bc") {
            Some(i) => {
                let class = &rest[i + 2..];
                class.starts_with("01") || class.starts_with("08sc05")
            }
            None => false,
        };
    }
    modalias.starts_with("virtio:d00000002v") || modalias.starts_with("virtio:d00000008v")
}

/// Why a closure could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModulesError {
    /// A wanted module is neither in `modules.dep` nor built in.
    #[error("kernel module {0:?} is neither in modules.dep nor built into the kernel")]
    Unknown(String),
    /// A `modules.dep` line without the `path:` prefix.
    #[error("modules.dep line {line}: expected `path: deps...`, found {text:?}")]
    Parse { line: usize, text: String },
    /// A dependency named in `modules.dep` without a line of its own.
    #[error("modules.dep: {module} depends on {dep}, which has no entry of its own")]
    MissingDependency { module: String, dep: String },
    /// `modules.dep` contains a dependency cycle.
    #[error("modules.dep: dependency cycle through {0}")]
    Cycle(String),
}

/// The module name of a path as kmod computes it (`modname_normalize`):
/// the file name up to its first `.`, with `-` turned into `_` (modprobe
/// treats them alike). `kernel/a/snd-hda-intel.ko.xz` is `snd_hda_intel`;
/// a file `foo.bar.ko` is module `foo`, as depmod and modprobe see it. The
/// one definition for the builder's depmod and for `/init`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `closure_with_builtin` without any built-in modules.
pub fn closure(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, ModulesError> {
    closure_with_builtin(modules_dep, "", wanted)
}

/// The module files (relative paths as in `modules.dep`, e.g.
/// `kernel/fs/squashfs/squashfs.ko`) needed to load every module in
/// `wanted`, dependencies before the modules that need them, each once, in
/// an order that only depends on the inputs. A wanted module listed in
/// `modules_builtin` (the text of `modules.builtin`) is skipped silently;
/// one that is neither there nor in `modules_dep` is an error naming it.
pub fn closure_with_builtin(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, ModulesError> {
    let index = DepIndex::parse(modules_dep)?;
    let builtin: HashSet<String> = modules_builtin
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect();
    let mut out = Vec::new();
    let mut done = HashSet::new();
    for name in wanted {
        let name = normalize(name.trim());
        match index.by_name.get(&name) {
            Some(path) => index.visit(path, &mut done, &mut HashSet::new(), &mut out)?,
            None if builtin.contains(&name) => {}
            None => return Err(ModulesError::Unknown(name)),
        }
    }
    Ok(out)
}

/// `modules.dep` parsed: path -> dependencies, module name -> path.
#[derive(Debug, Clone, Default)]
struct DepIndex {
    deps: HashMap<String, Vec<String>>,
    by_name: HashMap<String, String>,
}

impl DepIndex {
    fn parse(modules_dep: &str) -> Result<DepIndex, ModulesError> {
        let mut ix = DepIndex::default();
        for (i, line) in modules_dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, rest)) = line.split_once(':') else {
                return Err(ModulesError::Parse {
                    line: i + 1,
                    text: line.to_owned(),
                });
            };
            let path = path.trim();
            ix.deps.insert(
                path.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            );
            ix.by_name
                .entry(module_name(path))
                .or_insert_with(|| path.to_owned());
        }
        Ok(ix)
    }

    /// Appends `path` and (first) its dependencies to `out`, skipping `done`.
    fn visit(
        &self,
        path: &str,
        done: &mut HashSet<String>,
        visiting: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        visit(path, &self.deps, done, visiting, out)
    }
}

/// Depth-first post-order: a module comes after everything it needs.
fn visit(
    path: &str,
    deps: &HashMap<String, Vec<String>>,
    done: &mut HashSet<String>,
    visiting: &mut HashSet<String>,
    out: &mut Vec<String>,
) -> Result<(), ModulesError> {
    if done.contains(path) {
        return Ok(());
    }
    if !visiting.insert(path.to_owned()) {
        return Err(ModulesError::Cycle(path.to_owned()));
    }
    // depmod lists the deepest dependencies last; visiting in reverse gives
    // the order modprobe would use.
    for dep in deps[path].iter().rev() {
        if !deps.contains_key(dep) {
            return Err(ModulesError::MissingDependency {
                module: path.to_owned(),
                dep: dep.clone(),
            });
        }
        visit(dep, deps, done, visiting, out)?;
    }
    visiting.remove(path);
    done.insert(path.to_owned());
    out.push(path.to_owned());
    Ok(())
}

/// The text of [`MODULES_ORDER_FILE`] for a closure.
pub fn order_file(paths: &[String]) -> String {
    let mut s = String::new();
    for p in paths {
        s.push_str(p);
        s.push('\n');
    }
    s
}

/// Parses [`MODULES_ORDER_FILE`]: one relative path per line; blank lines
/// and `#` comments are ignored.
pub fn parse_order_file(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `modules.dep` restricted to the `carried` paths, for the initramfs.
pub fn filter_dep(modules_dep: &str, carried: &[String]) -> String {
    let keep: HashSet<&str> = carried.iter().map(String::as_str).collect();
    let mut out = String::new();
    for line in modules_dep.lines() {
        if let Some((path, _)) = line.split_once(':') {
            if keep.contains(path.trim()) {
                out.push_str(line.trim());
                out.push('\n');
            }
        }
    }
    out
}

/// `modules.alias` restricted to the modules among the `carried` paths.
pub fn filter_alias(modules_alias: &str, carried: &[String]) -> String {
    let keep: HashSet<String> = carried.iter().map(|p| module_name(p)).collect();
    let mut out = String::new();
    for line in modules_alias.lines() {
        let mut w = line.split_whitespace();
        if let (Some("alias"), Some(_), Some(m)) = (w.next(), w.next(), w.next()) {
            if keep.contains(&normalize(m)) {
                out.push_str(line.trim());
                out.push('\n');
            }
        }
    }
    out
}

/// `fnmatch(3)` without flags, as modprobe matches a device's modalias
/// against alias patterns: `*`, `?`, `[...]` (ranges, `!`/`^` negation),
/// `\` escapes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class_match(&p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unclosed `[` is an ordinary character.
                None => (t[ti] == '[').then_some(pi + 1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket expression at `p[start]`; returns
/// whether it matched and the index after the `]`, or `None` if unclosed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// Decides which carried modules `/init` loads: modules that drive no
/// device (file systems, `loop`, crypto; any module with no `bus:` alias
/// that no other carried module depends on) at once, and each device
/// driver with its dependencies only when a device whose `modalias`
/// matches one of its aliases shows up in sysfs, as udev would. The
/// result keeps the dependency order of the order file, and every module
/// is returned once.
#[derive(Debug, Clone)]
pub struct Hotplug {
    order: Vec<String>,
    index: DepIndex,
    /// (pattern, module path) for device aliases.
    aliases: Vec<(String, String)>,
    done: HashSet<String>,
    /// [`DEFERRED`] drivers are held back until [`Hotplug::release`].
    hold: bool,
    /// Held-back drivers wanted by devices that are present.
    held: Vec<String>,
    /// A disk controller or disk with a driver that is not held back was
    /// seen (see [`Hotplug::other_storage`]).
    other_storage: bool,
}

impl Hotplug {
    /// `order` is the order file's list; `modules_dep` and `modules_alias`
    /// the (filtered) files the builder carried next to it.
    pub fn new(
        order: &[&str],
        modules_dep: &str,
        modules_alias: &str,
    ) -> Result<Hotplug, ModulesError> {
        let index = DepIndex::parse(modules_dep)?;
        let mut aliases = Vec::new();
        for line in modules_alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(m)) = (w.next(), w.next(), w.next()) {
                // Bus aliases look like `pci:...`, `virtio:...`; `devname:`
                // names a /dev node, not a device.
                if pattern.contains(':') && !pattern.starts_with("devname:") {
                    if let Some(path) = index.by_name.get(&normalize(m)) {
                        aliases.push((pattern.to_owned(), path.clone()));
                    }
                }
            }
        }
        for p in order {
            if !index.deps.contains_key(*p) {
                return Err(ModulesError::Unknown(module_name(p)));
            }
        }
        Ok(Hotplug {
            order: order.iter().map(|s| (*s).to_owned()).collect(),
            index,
            aliases,
            done: HashSet::new(),
            hold: true,
            held: Vec::new(),
            other_storage: false,
        })
    }

    /// The bus names (`pci`, `virtio`, ...) whose devices can need a driver.
    pub fn buses(&self) -> Vec<String> {
        let mut b: Vec<String> = self
            .aliases
            .iter()
            .filter_map(|(p, _)| p.split_once(':').map(|(bus, _)| bus.to_owned()))
            .collect();
        b.sort();
        b.dedup();
        b
    }

    /// Modules to load at once: those without device aliases that nothing
    /// else carried depends on, with their dependencies.
    pub fn initial(&mut self) -> Vec<String> {
        let is_dep: HashSet<&String> = self.index.deps.values().flatten().collect();
        let drivers: HashSet<&String> = self.aliases.iter().map(|(_, m)| m).collect();
        let roots: Vec<String> = self
            .order
            .iter()
            .filter(|p| !is_dep.contains(p) && !drivers.contains(p))
            .filter(|p| !is_on_demand(&module_name(p)))
            .cloned()
            .collect();
        self.take(&roots)
    }

    /// The module called `name` (see [`is_on_demand`]) with what it needs,
    /// minus what was already returned; empty when it is not carried.
    pub fn named(&mut self, name: &str) -> Vec<String> {
        let roots: Vec<String> = self
            .order
            .iter()
            .filter(|p| module_name(p) == name)
            .cloned()
            .collect();
        self.take(&roots)
    }

    /// The modules of `of` (a list this plan returned that another thread
    /// is loading) that module `rel` is or needs, loaded or not: `rel` must
    /// wait for those. A module the index does not know needs nothing; all
    /// of `of` when the index is broken (the builder checks it), so that a
    /// caller waits for everything.
    pub fn needed_from(&self, rel: &str, of: &[String]) -> Vec<String> {
        let mut closure = Vec::new();
        if self.index.deps.contains_key(rel) {
            if self
                .index
                .visit(rel, &mut HashSet::new(), &mut HashSet::new(), &mut closure)
                .is_err()
            {
                return of.to_vec();
            }
        } else {
            closure.push(rel.to_owned());
        }
        of.iter().filter(|m| closure.contains(m)).cloned().collect()
    }

    /// Modules newly needed for devices with these modaliases; drivers in
    /// [`DEFERRED`] are held back until [`Hotplug::release`].
    pub fn for_modaliases(&mut self, modaliases: &[String]) -> Vec<String> {
        let deferred = |m: &String| DEFERRED.contains(&module_name(m).as_str());
        // Whether a driver that is not held back drives a disk controller,
        // loaded already or not (one driver, such as virtio_pci, serves
        // NICs and disks alike).
        self.other_storage |= modaliases.iter().filter(|a| is_storage(a)).any(|a| {
            self.aliases
                .iter()
                .any(|(pat, m)| !deferred(m) && glob_match(pat, a))
        });
        let mut wanted = Vec::new();
        for (pat, m) in &self.aliases {
            if self.done.contains(m) || wanted.contains(m) || self.held.contains(m) {
                continue;
            }
            if !modaliases.iter().any(|a| glob_match(pat, a)) {
                continue;
            }
            if self.hold && deferred(m) {
                self.held.push(m.clone());
            } else {
                wanted.push(m.clone());
            }
        }
        self.take(&wanted)
    }

    /// Stops holding back [`DEFERRED`] drivers: returns those that present
    /// devices wanted, with their dependencies.
    pub fn release(&mut self) -> Vec<String> {
        self.hold = false;
        let held = std::mem::take(&mut self.held);
        self.take(&held)
    }

    /// Drivers are being held back for devices that are present.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The module names of the drivers held back for present devices.
    pub fn held(&self) -> Vec<String> {
        self.held.iter().map(|p| module_name(p)).collect()
    }

    /// A disk controller (or virtio disk) whose driver is not held back is
    /// present: the boot disk may come up without the held-back drivers.
    pub fn other_storage(&self) -> bool {
        self.other_storage
    }

    /// Closes `roots` over dependencies, drops what was already returned,
    /// and sorts by the order file.
    fn take(&mut self, roots: &[String]) -> Vec<String> {
        let mut need = Vec::new();
        let mut seen = self.done.clone();
        for r in roots {
            // The index was checked for cycles and missing entries when the
            // builder computed the closure; a broken one loads what it can.
            let _ = self
                .index
                .visit(r, &mut seen, &mut HashSet::new(), &mut need);
        }
        let rank: HashMap<&String, usize> =
            self.order.iter().enumerate().map(|(i, p)| (p, i)).collect();
        need.sort_by_key(|p| rank.get(p).copied().unwrap_or(usize::MAX));
        self.done.extend(need.iter().cloned());
        need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An excerpt of Debian bookworm's 6.1.0-56-amd64 modules.dep (as
    /// generated by `depmod`), plus one compressed module.
    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/fs/squashfs/squashfs.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/nvme/host/nvme-core.ko.xz:
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz
";

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko.xz"),
            "nvme_core"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.zst"), "ext4");
        assert_eq!(module_name("squashfs.ko"), "squashfs");
        // a dot in the file name: kmod's name ends at the first dot
        assert_eq!(module_name("kernel/drivers/x/foo.bar-baz.ko.zst"), "foo");
    }

    #[test]
    fn dependencies_first_each_once() {
        let c = closure(
            DEP,
            &["virtio_blk", "virtio_pci", "virtio-scsi", "squashfs"],
        )
        .unwrap();
        assert_eq!(
            c,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/scsi/scsi_common.ko",
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/scsi/virtio_scsi.ko",
                "kernel/fs/squashfs/squashfs.ko",
            ]
        );
    }

    #[test]
    fn dash_underscore_and_compressed() {
        let c = closure(DEP, &["crc32c_intel", "nvme", "nvme_core"]).unwrap();
        assert_eq!(
            c,
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "kernel/drivers/nvme/host/nvme-core.ko.xz",
                "kernel/drivers/nvme/host/nvme.ko.xz",
            ]
        );
    }

    #[test]
    fn load_order_is_valid_for_every_module() {
        // Whatever is wanted, each module appears after all its dependencies.
        let all: Vec<String> = DEP
            .lines()
            .map(|l| module_name(l.split(':').next().unwrap()))
            .collect();
        let wanted: Vec<&str> = all.iter().map(String::as_str).collect();
        let c = closure(DEP, &wanted).unwrap();
        assert_eq!(c.len(), all.len());
        for line in DEP.lines() {
            let (path, deps) = line.split_once(':').unwrap();
            let pos = c.iter().position(|p| p == path).unwrap();
            for d in deps.split_whitespace() {
                assert!(
                    c.iter().position(|p| p == d).unwrap() < pos,
                    "{d} after {path}"
                );
            }
        }
    }

    #[test]
    fn builtin_skipped_unknown_named() {
        let builtin = "kernel/fs/overlayfs/overlay.ko\nkernel/drivers/block/loop.ko\n";
        let c = closure_with_builtin(DEP, builtin, &["overlay", "ext4", "loop"]).unwrap();
        assert_eq!(
            c,
            [
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko"
            ]
        );
        assert_eq!(
            closure_with_builtin(DEP, builtin, &["ext4", "no-such-thing"]),
            Err(ModulesError::Unknown("no_such_thing".into()))
        );
        let e = closure(DEP, &["overlay"]).unwrap_err();
        assert!(e.to_string().contains("\"overlay\""), "{e}");
    }

    #[test]
    fn malformed_inputs() {
        assert!(matches!(
            closure("garbage line\n", &[]),
            Err(ModulesError::Parse { line: 1, .. })
        ));
        assert!(matches!(
            closure("a.ko: b.ko\n", &["a"]),
            Err(ModulesError::MissingDependency { .. })
        ));
        assert_eq!(
            closure("a.ko: b.ko\nb.ko: a.ko\n", &["a"]),
            Err(ModulesError::Cycle("a.ko".into()))
        );
    }

    #[test]
    fn order_file_round_trip() {
        let c = closure(DEP, &["ext4"]).unwrap();
        let text = order_file(&c);
        assert_eq!(text.lines().count(), 4);
        assert_eq!(parse_order_file(&format!("# made by cairn\n\n{text}")), c);
    }

    #[test]
    fn globs_like_fnmatch() {
        assert!(glob_match(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00"
        ));
        assert!(!glob_match(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00008086d00000D57sv00000000sd00000000bc06sc00i00"
        ));
        assert!(glob_match(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(glob_match(
            "virtio:d00000002v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000012v00001AF4"
        ));
        assert!(glob_match("scsi:t-0x00*", "scsi:t-0x00"));
        assert!(glob_match("mmc:block", "mmc:block"));
        assert!(!glob_match("mmc:block", "mmc:blockx"));
        // Brackets, as in usb-storage's quirk aliases.
        let usb = "usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in*";
        assert!(glob_match(
            usb,
            "usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(!glob_match(
            usb,
            "usb:v13FDp3940d0300dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(glob_match("a[!b]c", "axc"));
        assert!(!glob_match("a[!b]c", "abc"));
        assert!(glob_match("a[]]c", "a]c"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("a\\*", "a*"));
        assert!(!glob_match("a\\*", "ab"));
        assert!(glob_match("a[b", "a[b"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
        assert!(glob_match("*a*a*a", "aaaa"));
    }

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000008v* virtio_scsi
alias fs-squashfs squashfs
alias fs-ext4 ext4
alias crypto-crc32c crc32c_intel
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias devname:nvme-fabrics nvme_core
";

    #[test]
    fn on_demand_modules_wait_until_asked() {
        let order = [
            "kernel/fs/efivarfs/efivarfs.ko",
            "kernel/fs/squashfs/squashfs.ko",
        ];
        let dep = "kernel/fs/efivarfs/efivarfs.ko:\nkernel/fs/squashfs/squashfs.ko:\n";
        let mut h = Hotplug::new(&order, dep, "alias fs-efivarfs efivarfs\n").unwrap();
        assert!(h.initial().is_empty(), "file systems wait until mounted");
        assert_eq!(h.named("efivarfs"), ["kernel/fs/efivarfs/efivarfs.ko"]);
        assert_eq!(h.named("squashfs"), ["kernel/fs/squashfs/squashfs.ko"]);
        assert!(h.named("efivarfs").is_empty(), "loaded once");
        assert!(h.named("nonesuch").is_empty());
    }

    #[test]
    fn hotplug_loads_drivers_for_present_devices_only() {
        let all = closure(
            DEP,
            &[
                "virtio_pci",
                "virtio_blk",
                "virtio_scsi",
                "squashfs",
                "ext4",
                "nvme",
                "crc32c_intel",
            ],
        )
        .unwrap();
        let order: Vec<&str> = all.iter().map(String::as_str).collect();
        let dep = filter_dep(DEP, &all);
        let alias = filter_alias(ALIAS, &all);
        let mut h = Hotplug::new(&order, &dep, &alias).unwrap();
        assert_eq!(h.buses(), ["pci", "virtio"]);
        // No device aliases, nothing depends on them, not a file system
        // loaded when mounted: crc32c-intel.
        assert_eq!(h.initial(), ["kernel/arch/x86/crypto/crc32c-intel.ko"]);
        // ext4 with its dependencies, when the state is mounted.
        assert_eq!(
            h.named("ext4"),
            [
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        // A virtio-pci device: virtio_pci and its dependencies.
        let pci = ["pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00".to_owned()];
        assert_eq!(
            h.for_modaliases(&pci),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
            ]
        );
        // Seen again: nothing new.
        assert!(h.for_modaliases(&pci).is_empty());
        // Then the virtio block device appears: only virtio_blk is new.
        let blk = ["virtio:d00000002v00001AF4".to_owned(), pci[0].clone()];
        assert_eq!(
            h.for_modaliases(&blk),
            ["kernel/drivers/block/virtio_blk.ko"]
        );
        // Never loaded: virtio_scsi, nvme, scsi_mod, nvme-core.
        assert!(h.for_modaliases(&["usb:v1234p5678".to_owned()]).is_empty());
    }

    #[test]
    fn sata_drivers_wait_while_another_disk_controller_may_bring_the_disk() {
        let dep = format!(
            "{DEP}kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
"
        );
        let alias = format!("{ALIAS}alias pci:v*d*sv*sd*bc01sc06i01* ahci\n");
        let all = closure(&dep, &["virtio_pci", "virtio_blk", "ahci"]).unwrap();
        let order: Vec<&str> = all.iter().map(String::as_str).collect();
        // q35's AHCI controller, a virtio-blk disk on PCI (class 01 00), a
        // virtio NIC (class 02 00).
        let sata = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01".to_owned();
        let blk_pci = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00".to_owned();
        let nic_pci = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00".to_owned();

        let mut h = Hotplug::new(&order, &dep, &alias).unwrap();
        let first = h.for_modaliases(&[sata.clone(), nic_pci.clone()]);
        assert!(first.iter().all(|p| !p.contains("/ata/")), "{first:?}");
        assert!(h.holding());
        assert_eq!(h.held(), ["ahci"]);
        assert!(!h.other_storage(), "a NIC is no disk controller");
        assert!(h.for_modaliases(std::slice::from_ref(&blk_pci)).is_empty());
        assert!(h.other_storage(), "virtio-blk's PCI function is");
        assert!(h.holding());
        let blk = h.for_modaliases(&["virtio:d00000002v00001AF4".to_owned()]);
        assert_eq!(blk, ["kernel/drivers/block/virtio_blk.ko"]);
        // Released: ahci with what it needs, dependencies first, once.
        assert_eq!(
            h.release(),
            [
                "kernel/drivers/scsi/scsi_common.ko",
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/ata/libata.ko",
                "kernel/drivers/ata/libahci.ko",
                "kernel/drivers/ata/ahci.ko",
            ]
            .map(|s| s.to_owned())
            .into_iter()
            .filter(|p| all.contains(p))
            .collect::<Vec<_>>()
        );
        assert!(!h.holding());
        assert!(h.release().is_empty());

        // Once released, a SATA controller seen later is driven at once.
        let mut h = Hotplug::new(&order, &dep, &alias).unwrap();
        assert!(h.release().is_empty(), "nothing held yet");
        assert!(h
            .for_modaliases(std::slice::from_ref(&sata))
            .contains(&"kernel/drivers/ata/ahci.ko".to_owned()));
    }

    #[test]
    fn a_module_waits_for_the_preload_only_when_it_needs_one_of_its_modules() {
        // A made-up driver that needs crc16, which ext4 brings too.
        let dep = format!(
            "{DEP}kernel/drivers/block/crcdisk.ko: kernel/lib/crc16.ko
kernel/lib/crc32c_generic.ko:
"
        );
        let all = closure(
            &dep,
            &[
                "virtio_blk",
                "crcdisk",
                "crc32c_generic",
                "ext4",
                "squashfs",
            ],
        )
        .unwrap();
        let order: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut h = Hotplug::new(&order, &dep, "").unwrap();
        // what ModuleLoader::preload takes for ext4 and squashfs
        let pre: Vec<String> = ["crc32c_generic", "ext4", "squashfs"]
            .iter()
            .flat_map(|n| h.named(n))
            .collect();
        assert_eq!(
            pre,
            [
                "kernel/lib/crc32c_generic.ko",
                // crcdisk put crc16 earlier in the order file
                "kernel/lib/crc16.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/squashfs/squashfs.ko",
            ]
        );
        // crc16 was taken by the preload, so crcdisk's own list lacks it:
        // it must wait for the preload, virtio_blk need not
        assert_eq!(h.named("crcdisk"), ["kernel/drivers/block/crcdisk.ko"]);
        assert!(!h
            .needed_from("kernel/drivers/block/crcdisk.ko", &pre)
            .is_empty());
        assert!(h
            .needed_from("kernel/drivers/block/virtio_blk.ko", &pre)
            .is_empty());
        assert!(!h.needed_from("kernel/fs/ext4/ext4.ko", &pre).is_empty());
        assert!(h.needed_from("kernel/not/carried.ko", &pre).is_empty());
        // taken once: not again by name
        assert!(h.named("ext4").is_empty());
    }

    #[test]
    fn storage_modaliases() {
        assert!(is_storage(
            "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"
        ));
        assert!(is_storage(
            "pci:v00001B36d00000007sv00001AF4sd00001100bc08sc05i01"
        ));
        assert!(is_storage("virtio:d00000008v00001AF4"));
        assert!(!is_storage("virtio:d00000001v00001AF4"));
        assert!(!is_storage(
            "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(!is_storage(
            "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"
        ));
        assert!(!is_storage(
            "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
    }

    #[test]
    fn on_demand_modules_are_carried_and_loaded_only_for_a_mount() {
        for (what, mods) in MOUNT_NEEDS {
            assert_eq!(for_mount(what), *mods);
            for m in *mods {
                assert!(is_on_demand(m), "{m}");
                assert!(DEFAULT_MODULES.contains(m), "{m} is not carried");
            }
        }
        assert!(for_mount("btrfs").is_empty());
        assert!(!is_on_demand("virtio_blk") && !is_on_demand("ahci"));
    }

    #[test]
    fn hotplug_rejects_order_entries_without_dep_lines() {
        assert_eq!(
            Hotplug::new(&["kernel/x/missing.ko"], DEP, ALIAS).unwrap_err(),
            ModulesError::Unknown("missing".into())
        );
    }

    #[test]
    fn filters_keep_only_carried() {
        let carried = closure(DEP, &["virtio_blk"]).unwrap();
        let dep = filter_dep(DEP, &carried);
        assert_eq!(dep.lines().count(), 3);
        assert!(dep.contains("kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko"));
        assert_eq!(
            filter_alias(ALIAS, &carried),
            "alias virtio:d00000002v* virtio_blk\n"
        );
    }

    /// DEFAULT_MODULES resolve against a real Debian kernel when one is
    /// unpacked (with `depmod` run) at CAIRN_TEST_KERNEL_MODULES, e.g.
    /// `/tmp/k/root/lib/modules/6.1.0-56-amd64`.
    #[test]
    fn defaults_resolve_against_real_kernel_if_available() {
        let Ok(dir) = std::env::var("CAIRN_TEST_KERNEL_MODULES") else {
            return;
        };
        let dep = std::fs::read_to_string(format!("{dir}/modules.dep")).unwrap();
        let builtin = std::fs::read_to_string(format!("{dir}/modules.builtin")).unwrap();
        let c = closure_with_builtin(&dep, &builtin, DEFAULT_MODULES).unwrap();
        assert!(c.iter().any(|p| p.ends_with("/squashfs.ko")));
        assert!(c.iter().any(|p| p.ends_with("/crc32c_generic.ko")));
        let alias = std::fs::read_to_string(format!("{dir}/modules.alias")).unwrap();
        let order: Vec<&str> = c.iter().map(String::as_str).collect();
        let mut h = Hotplug::new(&order, &filter_dep(&dep, &c), &filter_alias(&alias, &c)).unwrap();
        let first: Vec<String> = h.initial().iter().map(|p| module_name(p)).collect();
        for (what, mods) in MOUNT_NEEDS {
            for m in *mods {
                assert!(
                    !first.iter().any(|f| f == m),
                    "{m} loaded at once, not before {what}: {first:?}"
                );
            }
            let named: Vec<String> = mods
                .iter()
                .flat_map(|m| h.named(m))
                .map(|p| module_name(&p))
                .collect();
            for m in *mods {
                assert!(
                    named.iter().any(|n| n == m) || builtin.contains(&format!("/{m}.ko")),
                    "{what}: {m} not loaded: {named:?}"
                );
            }
        }
        assert!(
            !first
                .iter()
                .any(|f| f == "ahci" || f == "libata" || f == "virtio_blk"),
            "{first:?}"
        );
        // QEMU's virtio disk behind virtio-pci.
        let m = h.for_modaliases(&["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00".into()]);
        assert_eq!(
            m.last().map(|p| module_name(p)).as_deref(),
            Some("virtio_pci")
        );
        let m = h.for_modaliases(&["virtio:d00000002v00001AF4".into()]);
        assert_eq!(
            m.iter().map(|p| module_name(p)).collect::<Vec<_>>(),
            ["virtio_blk"]
        );
        // NICs: virtio-net, then q35's e1000e and pc's e1000 (as QEMU
        // shows them), VMware's vmxnet3
        let m = h.for_modaliases(&["virtio:d00000001v00001AF4".into()]);
        assert_eq!(
            m.last().map(|p| module_name(p)).as_deref(),
            Some("virtio_net"),
            "{m:?}"
        );
        for (alias, driver) in [
            (
                "pci:v00008086d000010D3sv00001AF4sd00001100bc02sc00i00",
                "e1000e",
            ),
            (
                "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
                "e1000",
            ),
            (
                "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00",
                "vmxnet3",
            ),
        ] {
            let m = h.for_modaliases(&[alias.into()]);
            assert_eq!(
                m.last().map(|p| module_name(p)).as_deref(),
                Some(driver),
                "{alias}: {m:?}"
            );
        }
    }
}
