//! The labels `cairn_cloudinit::label` reads from file systems made by the
//! real tools a config drive is made with (dosfstools' mkfs.fat and
//! fatlabel, genisoimage as OpenStack's nova runs it, e2fsprogs, and the
//! FAT writer `cairn vm` uses), each checked against what `blkid` (util-linux)
//! reports for the same image.

use std::path::Path;
use std::process::Command;

use cairn_cloudinit::label::{self, Probed};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (installed by .ci/run)"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// blkid's (TYPE, LABEL) of an image file.
fn blkid(path: &Path) -> (String, String) {
    let value = |tag: &str| {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", tag])
            .arg(path)
            .output()
            .expect("blkid (util-linux)");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    (value("TYPE"), value("LABEL"))
}

/// Probes `path`, checks it against blkid and returns it.
fn probe(path: &Path) -> Probed {
    let p = label::probe_path(path)
        .unwrap()
        .unwrap_or_else(|| panic!("{} not recognised", path.display()));
    let (kind, blkid_label) = blkid(path);
    let kind = if kind.starts_with("ext") {
        "ext4"
    } else {
        &kind
    };
    assert_eq!(p.fstype, kind, "{}", path.display());
    assert!(
        p.labels.contains(&blkid_label),
        "{}: blkid says {blkid_label:?}, we read {:?}",
        path.display(),
        p.labels
    );
    p
}

fn blank(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

#[test]
fn fat_made_by_mkfs_fat_fatlabel_and_cairn_vm() {
    let t = tempfile::tempdir().unwrap();
    for (fat, mib) in [("12", 2), ("16", 32), ("32", 64)] {
        let img = t.path().join(format!("fat{fat}.img"));
        blank(&img, mib);
        run(Command::new("mkfs.fat")
            .args(["-F", fat, "-n", "config-2"])
            .arg(&img));
        assert_eq!(probe(&img).labels, ["config-2"], "FAT{fat}");
    }
    // fatlabel rewrites both copies; the root directory entry is the one
    // blkid and this module prefer
    let img = t.path().join("fat16.img");
    run(Command::new("fatlabel").arg(&img).arg("CONFIG-2"));
    assert_eq!(probe(&img).labels, ["CONFIG-2"]);
    // no label at all
    let img = t.path().join("nolabel.img");
    blank(&img, 32);
    run(Command::new("mkfs.fat").args(["-F", "16"]).arg(&img));
    let p = label::probe_path(&img).unwrap().unwrap();
    assert_eq!((p.fstype, p.labels.len()), ("vfat", 0));
    // what `cairn vm` hands a guest
    let img = t.path().join("vm.img");
    cairn_disk::config_drive::write(&img, &[("openstack/latest/user_data", b"#cloud-config\n")])
        .unwrap();
    assert_eq!(probe(&img).labels, ["config-2"]);
}

#[test]
fn iso9660_made_as_nova_makes_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d/openstack/latest");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user_data"), "#cloud-config\n").unwrap();
    // Rock Ridge and Joliet, lower-case names: nova's genisoimage flags
    let img = t.path().join("cd.iso");
    run(Command::new("genisoimage")
        .args(["-o"])
        .arg(&img)
        .args(["-ldots", "-allow-lowercase", "-allow-multidot", "-l"])
        .args(["-quiet", "-J", "-r", "-V", "config-2"])
        .arg(t.path().join("d")));
    assert!(probe(&img).labels.contains(&"config-2".to_string()));
    // no Joliet: the primary descriptor's label only
    let img = t.path().join("plain.iso");
    run(Command::new("genisoimage")
        .args(["-o"])
        .arg(&img)
        .args(["-quiet", "-V", "config-2"])
        .arg(t.path().join("d")));
    assert_eq!(probe(&img).labels, ["config-2"]);
}

#[test]
fn ext2_and_ext4_made_by_mke2fs() {
    let t = tempfile::tempdir().unwrap();
    for kind in ["ext2", "ext4"] {
        let img = t.path().join(format!("{kind}.img"));
        blank(&img, 8);
        run(Command::new(format!("mkfs.{kind}"))
            .args(["-q", "-F", "-L", "config-2"])
            .arg(&img));
        assert_eq!(probe(&img).labels, ["config-2"], "{kind}");
    }
}

#[test]
fn other_file_systems_are_not_taken_for_one() {
    let t = tempfile::tempdir().unwrap();
    // an empty GPT disk and a squashfs-like blob of noise: nothing
    let img = t.path().join("gpt.img");
    blank(&img, 8);
    run(Command::new("sgdisk").args(["-o"]).arg(&img));
    assert_eq!(label::probe_path(&img).unwrap(), None);
    let noise: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let img = t.path().join("noise.img");
    std::fs::write(&img, noise).unwrap();
    assert_eq!(label::probe_path(&img).unwrap(), None);
}
