//! The boot artifacts made from an assembled tree: the kernel (`vmlinuz`),
//! the initramfs (`initrd.img`: the static `/init`, the kernel modules it
//! needs and mke2fs), the network-boot initramfs (`pxe-initrd.img`, the same
//! plus the root image), and the GPT disk (`disk.raw`: ESP with
//! systemd-boot and a Boot Loader Specification entry, slot A holding the
//! root image, an empty slot B, and the state partition).
//!
//! Owns which files go into the initramfs and the ESP and the boot entry's
//! command line; the cpio format belongs to `cairn-initrd`, the disk format
//! to `cairn-disk`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cairn_disk::{BootEntry, DiskSpec, EspSource, Layout};
use cairn_formats::verity::Verity;
use cairn_initrd::{layout, modules, CpioWriter};

use crate::definition::Definition;
use crate::tree::{Node, Tree};

/// The static `/init`, built by build.rs.
pub static INIT_BINARY: &[u8] = include_bytes!(env!("CAIRN_INIT_PATH"));

/// Where Debian's systemd-boot-efi package puts the UEFI boot loader.
pub const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The kernel found in the tree: its release (`uname -r`) and image.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    pub image: Vec<u8>,
}

/// Find the one kernel in `boot/vmlinuz-*` and take it out of the tree (it
/// lives on the ESP and in the network-boot files, not in the root image).
pub fn take_kernel(tree: &mut Tree) -> Result<Kernel> {
    let found: Vec<String> = tree
        .children("boot")
        .filter(|(p, _)| p.starts_with("boot/vmlinuz-"))
        .map(|(p, _)| p.clone())
        .collect();
    let path = match found.as_slice() {
        [one] => one.clone(),
        [] => bail!("the tree has no kernel (boot/vmlinuz-*): is the definition's kernel package a linux-image?"),
        many => bail!("the tree has several kernels ({}); install exactly one", many.join(", ")),
    };
    let release = path.trim_start_matches("boot/vmlinuz-").to_string();
    let image = tree
        .read(&path)
        .with_context(|| format!("{path} is not a regular file"))?
        .to_vec();
    tree.remove_all(&path);
    if !tree.contains(&format!("usr/lib/modules/{release}")) {
        bail!("kernel {release} has no module directory usr/lib/modules/{release}");
    }
    Ok(Kernel { release, image })
}

/// iPXE network-boot programs (from Debian's `ipxe` package) and the name
/// each gets in the output folder's `ipxe/`: `undionly.kpxe` for legacy
/// BIOS PXE, `ipxe.efi` (all NIC drivers) and `snponly.efi` (the
/// firmware's own network driver) for UEFI.
pub const IPXE_FILES: &[(&str, &str)] = &[
    ("usr/lib/ipxe/undionly.kpxe", "undionly.kpxe"),
    ("boot/ipxe.efi", "ipxe.efi"),
    ("usr/lib/ipxe/snponly.efi", "snponly.efi"),
];

/// Paths of the `ipxe` package that must not stay in the root image.
const IPXE_LEFTOVERS: &[&str] = &[
    "usr/lib/ipxe",
    "boot/ipxe.efi",
    "boot/ipxe.lkrn",
    "etc/grub.d/20_ipxe",
    "usr/share/doc/ipxe",
];

/// When the definition installs Debian's `ipxe` package, take its
/// network-boot programs out of the tree (like the kernel: they are served
/// to other machines by `cairn serve`, not used by this one) and return
/// them as `(file name, bytes)`. Empty when the package is absent.
pub fn take_ipxe(tree: &mut Tree) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if !IPXE_FILES.iter().any(|(p, _)| tree.contains(p)) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (path, name) in IPXE_FILES {
        let data = tree
            .read(path)
            .with_context(|| {
                format!("the ipxe package is installed but /{path} is missing or not a file")
            })?
            .to_vec();
        out.push((*name, data));
    }
    for p in IPXE_LEFTOVERS {
        tree.remove_all(p);
    }
    Ok(out)
}

/// The directories `/init` mounts on, which the image must provide.
pub const MOUNT_POINTS: &[&str] = &[
    "proc", "sys", "dev", "run", "var", "home", "root", "etc", "efi", "tmp",
];

/// Create the mount points `/init` and systemd need (root-owned; `/root`
/// 0700, `/tmp` 1777).
pub fn ensure_mount_points(tree: &mut Tree) -> Result<()> {
    let origin: std::sync::Arc<str> = std::sync::Arc::from("cairn:mount-points");
    for d in MOUNT_POINTS {
        if !tree.contains(d) {
            let mode = match *d {
                "root" => 0o700,
                "tmp" => 0o1777,
                _ => 0o755,
            };
            tree.insert(d, crate::tree::Entry::dir(mode, &origin))?;
        }
    }
    Ok(())
}

fn file_of<'a>(tree: &'a Tree, path: &str) -> Result<std::borrow::Cow<'a, [u8]>> {
    tree.read(path).with_context(|| {
        format!("/{path} is missing from the image tree (needed in the initramfs)")
    })
}

/// The initramfs as a plain (uncompressed) cpio archive.
pub fn initramfs_cpio(
    tree: &Tree,
    kernel: &Kernel,
    def: &Definition,
    mtime: u32,
) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new(), mtime);
    layout::add_skeleton(&mut w, INIT_BINARY).context("writing the initramfs skeleton")?;
    let kdir = format!("usr/lib/modules/{}", kernel.release);
    let dep = tree
        .read_text(&format!("{kdir}/modules.dep"))
        .with_context(|| {
            format!("/{kdir}/modules.dep is missing (made by the kernel-modules fixup)")
        })?;
    let builtin = tree
        .read_text(&format!("{kdir}/modules.builtin"))
        .unwrap_or_default();
    let wanted: Vec<&str> = modules::DEFAULT_MODULES
        .iter()
        .copied()
        .chain(def.initrd.modules.iter().map(String::as_str))
        .collect();
    let closure = modules::closure_with_builtin(&dep, &builtin, &wanted).with_context(|| {
        format!(
            "computing the initramfs module closure of kernel {}",
            kernel.release
        )
    })?;
    let idir = layout::modules_dir(&kernel.release);
    for m in &closure {
        let data = file_of(tree, &format!("{kdir}/{m}"))?;
        w.add_file(&format!("{idir}/{m}"), 0o644, 0, 0, &data)?;
    }
    w.add_file(
        &format!("{idir}/{}", modules::MODULES_ORDER_FILE),
        0o644,
        0,
        0,
        modules::order_file(&closure).as_bytes(),
    )?;
    w.add_file(
        &format!("{idir}/modules.dep"),
        0o644,
        0,
        0,
        modules::filter_dep(&dep, &closure).as_bytes(),
    )?;
    if let Some(alias) = tree.read_text(&format!("{kdir}/modules.alias")) {
        w.add_file(
            &format!("{idir}/modules.alias"),
            0o644,
            0,
            0,
            modules::filter_alias(&alias, &closure).as_bytes(),
        )?;
    }
    for f in layout::MKE2FS_FILES {
        let data = file_of(tree, f.path).with_context(|| format!("from package {}", f.package))?;
        // keep the packaged mode: the dynamic loader must stay executable
        let mode = tree
            .resolve(f.path)
            .and_then(|p| tree.get(&p))
            .map_or(0o755, |e| e.mode);
        w.add_file(f.path, mode, 0, 0, &data)?;
    }
    if let Some(conf) = tree.read("etc/mke2fs.conf") {
        w.add_file("etc/mke2fs.conf", 0o644, 0, 0, &conf)?;
    }
    Ok(w.finish()?)
}

/// zstd level of the initramfs. With [`INITRD_WINDOW_LOG`] and long
/// matching, level 12 makes the default image's 16 MiB cpio 4.39 MB in
/// 0.65 s; level 19 made it 4.18 MB in 6.2 s: a tenth of a clean build's
/// time for 5% of a file the kernel unpacks in milliseconds.
pub const INITRD_ZSTD_LEVEL: i32 = 12;

/// zstd window of the initramfs: 16 MiB, so that a match can reach back
/// across the whole archive (the modules repeat much of each other). The
/// kernel's unpacker takes windows up to 128 MiB.
pub const INITRD_WINDOW_LOG: u32 = 24;

/// zstd-compress an initramfs (Debian's kernels have CONFIG_RD_ZSTD).
pub fn compress(cpio: &[u8]) -> Result<Vec<u8>> {
    let mut enc =
        zstd::stream::Encoder::new(Vec::new(), INITRD_ZSTD_LEVEL).context("starting zstd")?;
    enc.window_log(INITRD_WINDOW_LOG)
        .and_then(|()| enc.long_distance_matching(true))
        .context("setting the zstd window")?;
    enc.write_all(cpio)?;
    Ok(enc.finish()?)
}

/// The network-boot initramfs: an uncompressed cpio holding the (already
/// compressed) root image, padded to 512 bytes, followed by the compressed
/// initramfs. The kernel unpacks concatenated archives in order, but only
/// the last one may be compressed: after a zstd frame, Linux 6.1 does not
/// find the next archive ("invalid magic at start of compressed archive"),
/// so the uncompressed part comes first, as early microcode does.
///
/// The root image is copied from `rootfs` while the archive is written, so
/// the build never holds it in memory ([`CpioWriter::add_file_from`]).
pub fn pxe_initramfs<W: Write>(out: W, initrd: &[u8], rootfs: &Path, mtime: u32) -> Result<W> {
    let mut w = CpioWriter::new(out, mtime);
    w.add_file_from(cairn_initrd::RAM_ROOT_IMAGE, 0o444, 0, 0, rootfs)?;
    // finish() pads the archive to 512 bytes: the compressed one that
    // follows starts aligned
    let mut out = w
        .finish()
        .with_context(|| format!("writing the root image {} into a cpio", rootfs.display()))?;
    out.write_all(initrd)?;
    Ok(out)
}

/// [`pxe_initramfs`] into the file `path`, written beside it under a
/// temporary name and then renamed, as the other artifacts are.
pub fn write_pxe_initramfs(path: &Path, initrd: &[u8], rootfs: &Path, mtime: u32) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let write = || -> Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let f = pxe_initramfs(std::io::BufWriter::new(f), initrd, rootfs, mtime)?;
        f.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.context(format!("writing {}", path.display()))
    })
}

/// The kernel command line of a slot's boot entry. The serial console is
/// named last so that it is `/dev/console`: systemd's status output and
/// the `/init` messages reach the serial log the tests read. With a hash
/// tree, `cairn.verity=` follows `cairn.slot=`: the entry is what tells
/// `/init` which root hash the slot must match.
pub fn cmdline(def: &Definition, slot: char, verity: Option<&Verity>) -> String {
    // systemd.gpt_auto=0: /init mounts the ESP and the state itself; the
    // generator's automounts would only collide with those mounts.
    let mut c = format!("{}={slot}", cairn_formats::cmdline::SLOT);
    if let Some(v) = verity {
        c.push(' ');
        c.push_str(&v.to_cmdline_word());
    }
    c.push_str(" console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0");
    if let Some(extra) = def.cmdline.as_deref().filter(|s| !s.trim().is_empty()) {
        c.push(' ');
        c.push_str(extra.trim());
    }
    c
}

/// Write `disk.raw` with slot A holding `rootfs` (squashfs and, with
/// `verity`, its hash tree; slot A's entry then names the root hash).
#[allow(clippy::too_many_arguments)]
pub fn write_disk(
    out: &Path,
    tree: &Tree,
    def: &Definition,
    kernel: &[u8],
    initrd: &[u8],
    rootfs: &Path,
    rootfs_sha256: &str,
    verity: Option<&Verity>,
    mtime: u64,
) -> Result<cairn_disk::DiskReport> {
    let boot = match tree.resolve(SYSTEMD_BOOT_EFI).and_then(|p| tree.get(&p)) {
        Some(e) => match &e.node {
            Node::File(d) => d.bytes().into_owned(),
            _ => bail!("/{SYSTEMD_BOOT_EFI} is not a file"),
        },
        None => {
            bail!("/{SYSTEMD_BOOT_EFI} is missing: add the systemd-boot package to the definition")
        }
    };
    let v = &def.version;
    let entry = BootEntry {
        title: format!("{} {v} (slot a)", def.name),
        version: v.clone(),
        machine_id: None,
        linux: format!("/cairn/{v}/vmlinuz"),
        initrd: format!("/cairn/{v}/initrd.img"),
        options: cmdline(def, 'a', verity),
        sort_key: Some(def.name.clone()),
    };
    let identity = format!("{} {} {}", def.name, v, rootfs_sha256);
    let mut spec = DiskSpec::new(&identity);
    spec.layout = Layout {
        disk_size: def.disk.size.0,
        esp_size: def.disk.esp.0,
        slot_size: def.disk.slot.0,
        state_size: def.disk.state.0,
    };
    spec.mtime = mtime;
    spec.slot_a = Some(rootfs);
    spec.esp_files = vec![
        (
            "EFI/BOOT/BOOTX64.EFI".into(),
            EspSource::from(boot.as_slice()),
        ),
        (
            "EFI/systemd/systemd-bootx64.efi".into(),
            EspSource::from(boot.as_slice()),
        ),
        (
            "loader/loader.conf".into(),
            EspSource::from(cairn_disk::loader_conf(def.disk.menu_timeout)),
        ),
        (
            format!("loader/entries/{}", cairn_disk::entry_file_name(v, None)),
            EspSource::from(cairn_disk::bls_entry(&entry)),
        ),
        (format!("cairn/{v}/vmlinuz"), EspSource::from(kernel)),
        (format!("cairn/{v}/initrd.img"), EspSource::from(initrd)),
    ];
    cairn_disk::write_disk(out, &spec).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Entry;

    fn tree_with(paths: &[&str]) -> Tree {
        let o: std::sync::Arc<str> = std::sync::Arc::from("t");
        let mut t = Tree::new_merged_usr();
        for p in paths {
            t.insert(p, Entry::file(p.as_bytes().to_vec(), 0o644, &o))
                .unwrap();
        }
        t
    }

    #[test]
    fn pxe_initramfs_puts_the_uncompressed_root_first_and_the_compressed_initrd_last() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs.squashfs");
        std::fs::write(&root, b"hsqs root image").unwrap();
        let initrd = compress(b"070701 not really a cpio").unwrap();
        let pxe = pxe_initramfs(Vec::new(), &initrd, &root, 0).unwrap();
        assert!(
            pxe.starts_with(b"070701"),
            "an uncompressed newc archive first"
        );
        let split = pxe.len() - initrd.len();
        assert_eq!(split % 512, 0, "the compressed archive starts 512-aligned");
        assert_eq!(&pxe[split..], &initrd[..]);
        assert_eq!(&pxe[split..split + 4], b"\x28\xb5\x2f\xfd", "zstd magic");
        let cpio = &pxe[..split];
        let trailer = cpio.windows(10).rposition(|w| w == b"TRAILER!!!").unwrap();
        assert!(
            cpio[trailer + 10..].iter().all(|&b| b == 0),
            "only padding after the trailer"
        );
        assert!(cpio.windows(15).any(|w| w == b"hsqs root image"));
    }

    #[test]
    fn the_entrys_command_line_names_the_root_hash_after_the_slot() {
        let def = crate::fixups::testutil::def("cmdline: quiet\n");
        let v = Verity {
            root_hash: [0xab; 32],
            salt: [1; 32],
            data_blocks: 42,
        };
        assert_eq!(
            cmdline(&def, 'a', Some(&v)),
            format!(
                "cairn.slot=a cairn.verity={}:{}:42 console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0 quiet",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        assert_eq!(
            cmdline(&def, 'b', None),
            "cairn.slot=b console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0 quiet"
        );
    }

    #[test]
    fn ipxe_programs_leave_the_tree() {
        let mut t = tree_with(&[
            "usr/lib/ipxe/undionly.kpxe",
            "usr/lib/ipxe/snponly.efi",
            "usr/lib/ipxe/ipxe.iso",
            "boot/ipxe.efi",
            "boot/ipxe.lkrn",
            "etc/grub.d/20_ipxe",
            "usr/bin/keep",
        ]);
        let got = take_ipxe(&mut t).unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["undionly.kpxe", "ipxe.efi", "snponly.efi"]);
        assert_eq!(got[1].1, b"boot/ipxe.efi");
        for gone in [
            "usr/lib/ipxe",
            "boot/ipxe.efi",
            "boot/ipxe.lkrn",
            "etc/grub.d/20_ipxe",
        ] {
            assert!(!t.contains(gone), "{gone} is still in the tree");
        }
        assert!(t.contains("usr/bin/keep"));
    }

    #[test]
    fn no_ipxe_package_means_nothing_and_a_partial_one_is_an_error() {
        let mut t = tree_with(&["usr/bin/keep"]);
        assert!(take_ipxe(&mut t).unwrap().is_empty());
        let mut t = tree_with(&["usr/lib/ipxe/undionly.kpxe"]);
        let e = format!("{:#}", take_ipxe(&mut t).unwrap_err());
        assert!(e.contains("/boot/ipxe.efi is missing"), "{e}");
    }
}
