//! Kernel module selection for the initramfs: the dependency closure of a
//! list of module names computed from the kernel's `modules.dep` (as
//! written by `depmod`), skipping modules that are built into the kernel
//! (`modules.builtin`), in load order. It owns the names (`DEFAULT_MODULES`,
//! `MODULES_ORDER_FILE`) shared by the builder, which writes the order file,
//! and `/init`, which reads it. It does not read files or load modules.

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
///   NVMe, USB sticks (xHCI, EHCI, usb-storage, UAS), SD/eMMC. Legacy IDE
///   (`ata_piix`, QEMU's i440fx `if=ide` disks) is left out: probing it
///   costs 0.3 s under TCG on every boot of the default QEMU machine;
///   add it through the image definition's `initrd.modules` if needed;
/// * file systems: squashfs (the root image), overlay (`/etc`), ext4 (the
///   state partition), vfat + its code pages (the ESP), loop (network boot
///   with the root image in RAM);
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
    "nvme",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "sdhci_pci",
    "mmc_block",
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
];

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

/// The module name of a path: its file name without `.ko`/`.ko.xz`/
/// `.ko.zst`/`.ko.gz`, with `-` turned into `_` (modprobe treats them alike).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
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
    // path -> its dependencies, and module name -> path.
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
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
        deps.insert(path, rest.split_whitespace().collect());
        by_name.entry(module_name(path)).or_insert(path);
    }
    let builtin: HashSet<String> = modules_builtin
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect();

    let mut out = Vec::new();
    let mut done: HashSet<&str> = HashSet::new();
    let mut visiting: HashSet<&str> = HashSet::new();
    for name in wanted {
        let name = normalize(name.trim());
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut done, &mut visiting, &mut out)?,
            None if builtin.contains(&name) => {}
            None => return Err(ModulesError::Unknown(name)),
        }
    }
    Ok(out)
}

/// Depth-first post-order: a module comes after everything it needs.
fn visit<'a>(
    path: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    done: &mut HashSet<&'a str>,
    visiting: &mut HashSet<&'a str>,
    out: &mut Vec<String>,
) -> Result<(), ModulesError> {
    if done.contains(path) {
        return Ok(());
    }
    if !visiting.insert(path) {
        return Err(ModulesError::Cycle(path.to_owned()));
    }
    // depmod lists the deepest dependencies last; visiting in reverse gives
    // the order modprobe would use.
    for dep in deps[path].iter().rev() {
        if !deps.contains_key(dep) {
            return Err(ModulesError::MissingDependency {
                module: path.to_owned(),
                dep: (*dep).to_owned(),
            });
        }
        visit(dep, deps, done, visiting, out)?;
    }
    visiting.remove(path);
    done.insert(path);
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
    }
}
