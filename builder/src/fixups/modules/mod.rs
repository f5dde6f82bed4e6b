//! The `kernel-modules` fixup: `depmod` in Rust, for each
//! `usr/lib/modules/<kver>/` of the tree (the kernel package's postinst runs
//! `depmod <kver>`).
//!
//! Reads every `*.ko` (and `.ko.xz`, `.ko.zst`, `.ko.gz`) as ELF64: the
//! `.modinfo` strings (`alias=`, `softdep=`) and the `.symtab` (exported
//! `__ksymtab_*` symbols, undefined symbols). Dependencies come from symbol
//! resolution, as kmod's depmod computes them, and are ordered the same way
//! (modules in `modules.order` order, each dependency list topologically
//! sorted so that modprobe loads from the end). Writes what depmod writes:
//! `modules.dep`, `modules.alias`, `modules.softdep`, `modules.symbols`,
//! `modules.devname` and the binary tries libkmod reads (`modules.dep.bin`,
//! `modules.alias.bin`, `modules.symbols.bin`, `modules.builtin.bin`,
//! `modules.builtin.alias.bin`; udev's module autoloading and modprobe use
//! only these). `modules.builtin`, `modules.builtin.modinfo` and
//! `modules.order` are kept as the package ships them.
//!
//! Also writes [`BLACKLIST_FILE`]: drivers udev must not load on a cairn
//! machine (the floppy driver, whose probe of the controller QEMU's default
//! `pc` machine always has fills the console with I/O errors).

mod depmod;
mod elf;
mod kmod_index;

pub use depmod::{depmod, DepmodOutput};
use elf::is_module;
pub use elf::{alias_normalize, parse_module, ModInfo};
pub use kmod_index::{index_lookup, Index};

use super::{put_file, Context, FixupError, Report};
use crate::tree::{Blob, Node, Tree};

const NAME: &str = "kernel-modules";
const MODULES_DIR: &str = "usr/lib/modules";

/// modprobe.d file of modules never loaded automatically.
pub const BLACKLIST_FILE: &str = "usr/lib/modprobe.d/cairn.conf";

const BLACKLIST: &str = "\
# Written by cairn build. Drivers that udev does not load on a cairn machine
# (`modprobe NAME` by hand still does).
# floppy: QEMU's default `pc` machine always has a floppy controller, usually
# with no drive; probing it fills the console with I/O errors.
blacklist floppy
";

/// Run depmod for kernel version directory `kdir` (e.g. `usr/lib/modules/6.1.0-1-amd64`).
pub fn depmod_tree(tree: &mut Tree, kdir: &str) -> Result<DepmodOutput, FixupError> {
    let prefix = format!("{kdir}/");
    let mut files: Vec<(String, Blob)> = Vec::new();
    for (k, e) in tree.iter() {
        let Some(rel) = k.strip_prefix(&prefix) else {
            continue;
        };
        if rel.starts_with("build/") || rel.starts_with("source/") || !is_module(rel) {
            continue;
        }
        if let Node::File(d) = &e.node {
            files.push((rel.to_string(), d.clone()));
        }
    }
    let order = tree.read_text(&format!("{kdir}/modules.order"));
    let builtin = tree.read_text(&format!("{kdir}/modules.builtin"));
    let bmi = tree
        .read(&format!("{kdir}/modules.builtin.modinfo"))
        .map(std::borrow::Cow::into_owned);
    let out = depmod(&files, order.as_deref(), builtin.as_deref(), bmi.as_deref())
        .map_err(|(rel, e)| FixupError::invalid(NAME, format!("{kdir}/{rel}"), e))?;
    for (name, data) in &out.files {
        put_file(
            tree,
            NAME,
            &format!("{kdir}/{name}"),
            data.clone(),
            0o644,
            (0, 0),
        )?;
    }
    Ok(out)
}

pub fn apply(tree: &mut Tree, _ctx: &Context<'_>) -> Result<Report, FixupError> {
    let Some(dir) = tree.resolve(MODULES_DIR) else {
        return Ok(Report::new(NAME, "no kernel modules"));
    };
    let kvers: Vec<String> = tree
        .children(&dir)
        .filter(|(_, e)| e.is_dir())
        .map(|(k, _)| k.clone())
        .collect();
    let mut parts = Vec::new();
    for k in kvers {
        let out = depmod_tree(tree, &k)?;
        let kver = k.rsplit('/').next().unwrap_or(&k).to_string();
        tracing::info!(kver, modules = out.modules, loops = out.loops, "depmod");
        parts.push(format!("{kver}: {} modules", out.modules));
    }
    if parts.is_empty() {
        return Ok(Report::new(NAME, "no kernel modules"));
    }
    put_file(tree, NAME, BLACKLIST_FILE, BLACKLIST, 0o644, (0, 0))?;
    Ok(Report::new(NAME, parts.join("; ")))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A minimal ELF64 relocatable with `.modinfo` and `.symtab`, enough
    //! for depmod: the layout the kernel's modpost leaves.

    pub fn make_ko(modinfo: &[&str], exports: &[&str], undefined: &[&str]) -> Vec<u8> {
        let mut info = Vec::new();
        for s in modinfo {
            info.extend_from_slice(s.as_bytes());
            info.push(0);
        }
        let mut strtab = vec![0u8];
        let mut syms = vec![0u8; 24]; // null symbol
        let mut add_sym = |name: &str, shndx: u16, bind: u8| {
            let off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let mut e = [0u8; 24];
            e[0..4].copy_from_slice(&off.to_le_bytes());
            e[4] = bind << 4;
            e[6..8].copy_from_slice(&shndx.to_le_bytes());
            syms.extend_from_slice(&e);
        };
        for x in exports {
            add_sym(&format!("__ksymtab_{x}"), 1, 0);
            add_sym(x, 1, 1);
        }
        for u in undefined {
            add_sym(u, 0, 1);
        }
        let shstr = b"\0.modinfo\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        let mut out = vec![0u8; 64];
        let place = |data: &[u8], out: &mut Vec<u8>| {
            let off = out.len();
            out.extend_from_slice(data);
            (off, data.len())
        };
        let (info_off, info_len) = place(&info, &mut out);
        let (sym_off, sym_len) = place(&syms, &mut out);
        let (str_off, str_len) = place(&strtab, &mut out);
        let (shs_off, shs_len) = place(&shstr, &mut out);
        let shoff = out.len();
        let sh = |name: u32, kind: u32, off: usize, len: usize, link: u32, out: &mut Vec<u8>| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            out.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0, 0, &mut out);
        sh(1, 1, info_off, info_len, 0, &mut out);
        sh(10, 2, sym_off, sym_len, 3, &mut out);
        sh(18, 3, str_off, str_len, 0, &mut out);
        sh(26, 3, shs_off, shs_len, 0, &mut out);
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&5u16.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&4u16.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::elf::*;
    use super::kmod_index::*;
    use super::testing::make_ko;
    use super::*;
    use crate::fixups::testutil::*;
    use crate::tree::Entry;
    use cairn_initrd::modules::module_name;

    const K: &str = "usr/lib/modules/6.1.0-9-amd64";

    fn ko(t: &mut Tree, rel: &str, data: Vec<u8>) {
        t.insert(
            &format!("{K}/{rel}"),
            Entry::file(data, 0o644, &"linux-image".into()),
        )
        .unwrap();
    }

    fn kernel_tree() -> Tree {
        let mut t = Tree::new_merged_usr();
        // ext4 -> jbd2 -> crc16-ish chain; mbcache leaf; fuse with devname.
        ko(
            &mut t,
            "kernel/lib/crc16.ko",
            make_ko(&["license=GPL", "name=crc16"], &["crc16"], &["printk"]),
        );
        ko(
            &mut t,
            "kernel/fs/mbcache.ko",
            make_ko(&["name=mbcache"], &["mb_cache_create"], &[]),
        );
        ko(
            &mut t,
            "kernel/fs/jbd2/jbd2.ko",
            make_ko(
                &["softdep=pre: crypto-crc32c", "name=jbd2"],
                &["jbd2_start"],
                &["crc16"],
            ),
        );
        ko(
            &mut t,
            "kernel/fs/ext4/ext4.ko",
            make_ko(
                &[
                    "softdep=pre: crypto-crc32c",
                    "alias=fs-ext4",
                    "alias=ext3",
                    "depends=jbd2,mbcache,crc16",
                    "name=ext4",
                ],
                &[],
                &["jbd2_start", "mb_cache_create", "crc16", "printk"],
            ),
        );
        ko(
            &mut t,
            "kernel/fs/fuse/fuse.ko",
            make_ko(
                &[
                    "alias=devname:fuse",
                    "alias=char-major-10-229",
                    "alias=fs-fuse",
                    "name=fuse",
                ],
                &[],
                &[],
            ),
        );
        let xz = {
            use std::io::Write;
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&make_ko(
                &[
                    "alias=pci:v00008086d*sv*sd*bc*sc*i*",
                    "alias=snd-x[a-b]-y",
                    "name=snd_hda_intel",
                ],
                &[],
                &["jbd2_start"],
            ))
            .unwrap();
            e.finish().unwrap()
        };
        ko(&mut t, "kernel/sound/snd-hda-intel.ko.xz", xz);
        file(
            &mut t,
            &format!("{K}/modules.order"),
            "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/lib/crc16.ko\nkernel/fs/fuse/fuse.ko\n",
        );
        file(
            &mut t,
            &format!("{K}/modules.builtin"),
            "kernel/drivers/tty/vt.ko\nkernel/fs/binfmt-misc.ko\n",
        );
        t.insert(
            &format!("{K}/modules.builtin.modinfo"),
            Entry::file(
                b"vt.license=GPL\0binfmt_misc.alias=fs-binfmt_misc\0".to_vec(),
                0o644,
                &"linux-image".into(),
            ),
        )
        .unwrap();
        t
    }

    #[test]
    fn parses_a_generated_module() {
        let m = parse_module(&make_ko(&["alias=a", "depends=b"], &["x"], &["y", "z"])).unwrap();
        assert_eq!(
            m.info,
            [
                ("alias".to_string(), "a".to_string()),
                ("depends".into(), "b".into())
            ]
        );
        assert_eq!(m.exports, ["x"]);
        assert_eq!(m.undefined, ["y", "z"]);
        assert!(parse_module(b"not elf").is_err());
        assert_eq!(
            module_name("kernel/sound/snd-hda-intel.ko.xz"),
            "snd_hda_intel"
        );
        assert_eq!(alias_normalize("snd-x[a-b]-y").unwrap(), "snd_x[a-b]_y");
        assert!(alias_normalize("a]").is_none());
    }

    #[test]
    fn depmod_files_match_the_format() {
        let mut t = kernel_tree();
        let d = def("");
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(r.summary, "6.1.0-9-amd64: 6 modules");
        let blacklist = t.read_text(BLACKLIST_FILE).unwrap();
        assert!(blacklist.contains("\nblacklist floppy\n"), "{blacklist}");
        let dep = t.read_text(&format!("{K}/modules.dep")).unwrap();
        assert_eq!(
            dep,
            "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
             kernel/fs/jbd2/jbd2.ko: kernel/lib/crc16.ko\n\
             kernel/fs/mbcache.ko:\n\
             kernel/lib/crc16.ko:\n\
             kernel/fs/fuse/fuse.ko:\n\
             kernel/sound/snd-hda-intel.ko.xz: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
        );
        // Load order check: every dependency comes before (to the left of) its own dependencies.
        for line in dep.lines() {
            let (_, ds) = line.split_once(':').unwrap();
            let ds: Vec<&str> = ds.split_whitespace().collect();
            for (i, d) in ds.iter().enumerate() {
                let own = dep
                    .lines()
                    .find(|l| l.starts_with(&format!("{d}:")))
                    .unwrap();
                for dd in own.split_once(':').unwrap().1.split_whitespace() {
                    assert!(ds[i + 1..].contains(&dd), "{line}: {dd} must follow {d}");
                }
            }
        }
        let alias = t.read_text(&format!("{K}/modules.alias")).unwrap();
        assert!(alias.starts_with("# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias ext3 ext4\n"), "{alias}");
        assert!(alias.contains("alias pci:v00008086d*sv*sd*bc*sc*i* snd_hda_intel\n"));
        let soft = t.read_text(&format!("{K}/modules.softdep")).unwrap();
        assert_eq!(soft, "# Soft dependencies extracted from modules themselves.\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n");
        let devname = t.read_text(&format!("{K}/modules.devname")).unwrap();
        assert_eq!(
            devname,
            "# Device nodes to trigger on-demand module loading.\nfuse fuse c10:229\n"
        );
        let sym = t.read_text(&format!("{K}/modules.symbols")).unwrap();
        assert!(sym.contains("alias symbol:jbd2_start jbd2\n"));

        // The binary indexes answer the lookups libkmod makes.
        let bin = |n: &str| t.read(&format!("{K}/{n}")).unwrap().to_vec();
        assert_eq!(
            &bin("modules.dep.bin")[..8],
            &[0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1]
        );
        assert_eq!(
            index_lookup(&bin("modules.dep.bin"), "ext4"),
            ["kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko"]
        );
        assert_eq!(
            index_lookup(&bin("modules.dep.bin"), "snd_hda_intel").len(),
            1
        );
        assert!(index_lookup(&bin("modules.dep.bin"), "ext").is_empty());
        assert_eq!(index_lookup(&bin("modules.alias.bin"), "fs_ext4"), ["ext4"]);
        assert_eq!(
            index_lookup(&bin("modules.alias.bin"), "snd_x[a-b]_y"),
            ["snd_hda_intel"]
        );
        assert_eq!(
            index_lookup(&bin("modules.symbols.bin"), "symbol:crc16"),
            ["crc16"]
        );
        assert_eq!(
            index_lookup(&bin("modules.builtin.bin"), "binfmt_misc"),
            [""]
        );
        assert_eq!(
            index_lookup(&bin("modules.builtin.alias.bin"), "fs_binfmt_misc"),
            ["binfmt_misc"]
        );
        // shipped files are kept
        assert!(t
            .read_text(&format!("{K}/modules.order"))
            .unwrap()
            .starts_with("kernel/fs/ext4"));
    }

    #[test]
    fn index_trie_splits_and_orders_values() {
        let mut idx = Index::default();
        for (k, v, p) in [
            ("once", "1", 3),
            ("one", "2", 1),
            ("on", "3", 2),
            ("ask", "4", 0),
            ("ate", "5", 0),
            ("on", "6", 2),
            ("on", "7", 1),
        ] {
            assert!(idx.insert(k, v, p));
        }
        let b = idx.to_bytes();
        assert_eq!(index_lookup(&b, "once"), ["1"]);
        assert_eq!(index_lookup(&b, "one"), ["2"]);
        // priority order; equal priorities newest first
        assert_eq!(index_lookup(&b, "on"), ["7", "6", "3"]);
        assert_eq!(index_lookup(&b, "ask"), ["4"]);
        assert_eq!(index_lookup(&b, "ate"), ["5"]);
        assert!(index_lookup(&b, "o").is_empty());
        assert!(index_lookup(&b, "onc").is_empty());
        assert!(!idx.insert("n\u{e9}", "x", 0));
    }

    #[test]
    fn dependency_cycles_are_left_out() {
        let files = [
            ("a.ko".to_string(), make_ko(&[], &["fa"], &["fb"])),
            ("b.ko".to_string(), make_ko(&[], &["fb"], &["fa"])),
            ("c.ko".to_string(), make_ko(&[], &[], &["fa"])),
        ];
        let refs: Vec<(String, Blob)> = files
            .iter()
            .map(|(n, d)| (n.clone(), Blob::new(d.clone())))
            .collect();
        let out = depmod(&refs, None, None, None).unwrap();
        assert_eq!(out.loops, 2);
        assert_eq!(
            String::from_utf8(out.files["modules.dep"].clone()).unwrap(),
            "c.ko:\n"
        );
    }
}
