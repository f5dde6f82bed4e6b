//! dm-verity checks the VM tests share: the live table of the root's
//! device-mapper target read with Debian's own `dmsetup` on the machine,
//! the verity parameters an image folder or a signed update manifest
//! records, and the place of a block the boot must read (systemd's shared
//! library) in a root image, where a flipped byte is sure to be caught.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};
use cairn_formats::verity::Verity;
use cairn_qemu::Vm;

use super::guest_sh;

const CMD: Duration = Duration::from_secs(60);

/// The verity parameters of an image folder's root (`OUT/manifest.json`).
pub fn image_verity(out: &Path) -> Verity {
    let path = out.join("manifest.json");
    let m: cairn_formats::image_dir::Manifest =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    m.verity
        .unwrap_or_else(|| {
            panic!(
                "{}: no verity record (verity is on by default)",
                path.display()
            )
        })
        .to_verity()
        .unwrap()
}

/// The verity parameters of the signed update manifest in an image
/// folder's bundle (`OUT/update/manifest.json`).
pub fn bundle_verity(out: &Path) -> Verity {
    let path = out.join("update").join("manifest.json");
    let m = cairn_formats::channel::manifest::Manifest::parse(&fs::read(&path).unwrap()).unwrap();
    m.verity()
        .unwrap_or_else(|| panic!("{}: no verity record", path.display()))
}

/// The `cairn.verity=` value of a boot entry's text (`options` line).
pub fn entry_verity(entry: &str) -> Option<Verity> {
    let options = entry.lines().find_map(|l| l.strip_prefix("options "))?;
    options
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.verity="))
        .map(|v| Verity::parse(v).unwrap_or_else(|e| panic!("cairn.verity={v}: {e:?}")))
}

/// Copies Debian's `dmsetup` and its library from this machine into the
/// guest and prints the live table of `name` (the guest is Debian
/// bookworm like the test machines; its own image has no dmsetup).
pub fn dmsetup_table(vm: &mut Vm, name: &str) -> String {
    let lib = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .map(|d| Path::new(d).join("libdevmapper.so.1.02.1"))
        .find(|p| p.exists())
        .expect("libdevmapper1.02.1 (Debian package dmsetup)");
    guest_sh(vm, "mkdir -p /run/dmsetup", CMD);
    vm.guest_file_write(
        "/run/dmsetup/dmsetup",
        &fs::read("/usr/sbin/dmsetup").expect("/usr/sbin/dmsetup (Debian package dmsetup)"),
    )
    .unwrap();
    vm.guest_file_write(
        "/run/dmsetup/libdevmapper.so.1.02.1",
        &fs::read(lib).unwrap(),
    )
    .unwrap();
    guest_sh(
        vm,
        &format!("chmod 755 /run/dmsetup/dmsetup; LD_LIBRARY_PATH=/run/dmsetup /run/dmsetup/dmsetup table {name}"),
        CMD,
    )
}

/// `/` is the squashfs on `cairn-root`, the verity target over partition
/// `vda{partn}` with exactly `v`'s parameters (Debian's `dmsetup table`
/// on the machine), restarting the machine on a corrupt block.
pub fn check_verity_root(vm: &mut Vm, v: &Verity, partn: u32) {
    let name = guest_sh(vm, "cat /sys/block/dm-0/dm/name", CMD);
    assert_eq!(name.trim(), "cairn-root");
    let src = guest_sh(vm, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /", CMD);
    assert!(
        (src.starts_with("/dev/dm-0") || src.starts_with("/dev/mapper/cairn-root"))
            && src.contains("squashfs")
            && src.contains("ro"),
        "/ is {src}"
    );
    let slaves = guest_sh(vm, "ls /sys/block/dm-0/slaves", CMD);
    assert_eq!(slaves.trim(), format!("vda{partn}"));
    let dev = guest_sh(vm, &format!("cat /sys/class/block/vda{partn}/dev"), CMD);
    let dev = dev.trim();
    let table = dmsetup_table(vm, "cairn-root");
    let want = format!(
        "0 {} verity 1 {dev} {dev} 4096 4096 {} {} sha256 {} {} 1 restart_on_corruption",
        v.data_sectors(),
        v.data_blocks,
        v.hash_start_block(),
        v.root_hash_hex(),
        v.salt_hex()
    );
    assert_eq!(table.trim(), want, "dmsetup table");
}

/// The byte offset in `squashfs` (a root image, tree appended or not) of
/// the first data block of systemd's `libsystemd-shared-*.so`, which the
/// dynamic loader reads when PID 1 is executed (the systemd binary itself
/// is smaller than a squashfs block: it sits in a fragment block shared
/// with other files).
pub fn libsystemd_block(squashfs: &Path) -> u64 {
    let file = fs::File::open(squashfs).unwrap();
    let fs = FilesystemReader::from_reader(BufReader::new(file)).unwrap();
    let start = fs
        .files()
        .filter(|n| {
            n.fullpath.starts_with("/usr/lib/x86_64-linux-gnu/systemd")
                && n.fullpath
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with("libsystemd-shared-"))
        })
        .find_map(|n| match &n.inner {
            InnerNode::File(SquashfsFileReader::Basic(b)) => Some(u64::from(b.blocks_start)),
            InnerNode::File(SquashfsFileReader::Extended(e)) => Some(e.blocks_start),
            _ => None,
        })
        .filter(|&s| s > 0)
        .expect("libsystemd-shared in the image, with data blocks");
    start
}
