//! End-to-end checks of `write_disk` and `inspect` against independent
//! readers: the `gpt` crate, `sfdisk` and `sgdisk` (util-linux, gdisk),
//! `fsck.fat` (dosfstools) and `mdir`/`mtype` (mtools). Those tools are
//! required: a missing one fails the test with the Debian package to
//! install.

use std::borrow::Cow;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cairn_disk::{
    bls_entry, derive_guid, entry_file_name, inspect, loader_conf, write_disk, BootEntry,
    DiskError, DiskSpec, EspSource, Layout, Uuid,
};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const IDENTITY: &str = "cairn-default 1.0.0 5d41402abc4b2a76b9719d911017c592";
/// 2023-11-14T22:13:20Z
const MTIME: u64 = 1_700_000_000;

/// Runs a host tool; panics naming the Debian package when it is missing.
fn run(tool: &str, package: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("MTOOLS_SKIP_CHECK", "1");
    match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{tool} not found: install the Debian package `{package}`")
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

/// Like `run`, but the command must succeed; returns stdout.
fn run_ok(tool: &str, package: &str, args: &[&str]) -> Vec<u8> {
    let o = run(tool, package, args);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough
/// that no 4 KiB block is zero by accident.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

fn read_range(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Host inputs of a typical small disk: a fake systemd-boot binary and a
/// 1 MiB slot image with a zero hole in the middle.
struct Inputs {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    bootx64: PathBuf,
    slot_a: PathBuf,
    kernel: Vec<u8>,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let bootx64 = path.join("systemd-bootx64.efi");
    fs::write(&bootx64, noise(1, 120_000)).unwrap();
    let mut slot = noise(2, MIB as usize);
    // A zero hole: the writer skips it; it must still read back as zeros.
    slot[256 * 1024..512 * 1024].fill(0);
    let slot_a = path.join("root-a.squashfs");
    fs::write(&slot_a, &slot).unwrap();
    Inputs {
        _dir: dir,
        dir: path,
        bootx64,
        slot_a,
        kernel: noise(3, 700_001),
    }
}

fn entry(slot: &str, version: &str) -> BootEntry {
    BootEntry {
        title: format!("cairn {version} ({slot})"),
        version: version.into(),
        machine_id: None,
        linux: format!("/cairn/{version}/vmlinuz"),
        initrd: format!("/cairn/{version}/initrd"),
        options: format!("cairn.slot={slot} console=ttyS0"),
        sort_key: Some("cairn".into()),
    }
}

/// ESP files: systemd-boot from a host file, generated text, a kernel
/// from memory, and a lowercase long name (needs VFAT long file names).
fn spec<'a>(inp: &'a Inputs, layout: Layout) -> DiskSpec<'a> {
    let e = entry("cairn-a", "1.0.0");
    DiskSpec {
        layout,
        identity: IDENTITY,
        esp_files: vec![
            (
                "EFI/BOOT/BOOTX64.EFI".into(),
                EspSource::from(inp.bootx64.as_path()),
            ),
            (
                "EFI/systemd/systemd-bootx64.efi".into(),
                EspSource::from(inp.bootx64.as_path()),
            ),
            (
                "loader/loader.conf".into(),
                loader_conf(cairn_disk::DEFAULT_MENU_TIMEOUT).into(),
            ),
            (
                format!("loader/entries/{}", entry_file_name("1.0.0", Some(3))),
                bls_entry(&e).into(),
            ),
            (
                "cairn/1.0.0/vmlinuz".into(),
                EspSource::Bytes(Cow::Borrowed(&inp.kernel)),
            ),
            (
                "cairn/1.0.0/initrd".into(),
                EspSource::from(vec![7u8; 4097]),
            ),
            ("empty-file.txt".into(), EspSource::from("")),
        ],
        slot_a: Some(&inp.slot_a),
        slot_b: None,
        mtime: MTIME,
    }
}

/// The smallest sensible layout, for tests that write many images.
fn tiny_layout() -> Layout {
    Layout {
        disk_size: 192 * MIB,
        esp_size: cairn_disk::MIN_ESP_SIZE,
        slot_size: 64 * MIB,
        state_size: 8 * MIB,
    }
}

fn small_layout() -> Layout {
    Layout {
        disk_size: 512 * MIB,
        esp_size: 64 * MIB,
        slot_size: 128 * MIB,
        state_size: 16 * MIB,
    }
}

struct Expected {
    name: &'static str,
    type_guid: &'static str,
    first_lba: u64,
    sectors: u64,
}

fn expected(l: &Layout) -> [Expected; 4] {
    let esp = l.esp_size / 512;
    let slot = l.slot_size / 512;
    [
        Expected {
            name: "ESP",
            type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            first_lba: 2048,
            sectors: esp,
        },
        Expected {
            name: "cairn-a",
            type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            first_lba: 2048 + esp,
            sectors: slot,
        },
        Expected {
            name: "cairn-b",
            type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            first_lba: 2048 + esp + slot,
            sectors: slot,
        },
        Expected {
            name: "cairn-state",
            type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            first_lba: 2048 + esp + 2 * slot,
            sectors: l.state_size / 512,
        },
    ]
}

#[test]
fn gpt_reads_back_with_gpt_crate_sfdisk_and_sgdisk() {
    let inp = inputs();
    let layout = small_layout();
    let disk = inp.dir.join("disk.raw");
    let report = write_disk(&disk, &spec(&inp, layout)).unwrap();
    assert_eq!(report.size, 512 * MIB);
    assert_eq!(fs::metadata(&disk).unwrap().len(), 512 * MIB);
    let want = expected(&layout);

    // The gpt crate, insisting on both headers.
    let g = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(true)
        .open(&disk)
        .unwrap();
    assert_eq!(*g.guid(), derive_guid(IDENTITY, "disk"));
    let primary = g.primary_header().unwrap();
    let backup = g.backup_header().unwrap();
    assert_eq!(primary.current_lba, 1);
    assert_eq!(primary.backup_lba, 512 * MIB / 512 - 1);
    assert_eq!(backup.current_lba, 512 * MIB / 512 - 1);
    assert_eq!(primary.num_parts, 128);
    assert_eq!(primary.part_size, 128);
    let parts: Vec<_> = g.partitions().iter().filter(|(_, p)| p.is_used()).collect();
    assert_eq!(parts.len(), 4);
    for ((&n, p), w) in parts.iter().zip(&want) {
        assert_eq!(p.name, w.name);
        assert_eq!(
            p.part_type_guid.guid.to_string().to_uppercase(),
            w.type_guid
        );
        assert_eq!(p.part_guid, derive_guid(IDENTITY, w.name), "{}", w.name);
        assert_eq!(p.first_lba, w.first_lba, "{}", w.name);
        assert_eq!(p.last_lba, w.first_lba + w.sectors - 1, "{}", w.name);
        assert_eq!(p.first_lba % 2048, 0, "{} is not 1 MiB aligned", w.name);
        let r = &report.partitions[n as usize - 1];
        assert_eq!((r.number, r.name.as_str()), (n, w.name));
        assert_eq!(r.unique_guid, p.part_guid);
    }
    // Protective MBR: one 0xEE partition from LBA 1 over the whole disk.
    let mbr = read_range(&disk, 0, 512);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    assert_eq!(mbr[446 + 4], 0xEE);
    assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_le_bytes(mbr[458..462].try_into().unwrap()) as u64,
        512 * MIB / 512 - 1
    );

    // sfdisk (util-linux).
    let out = run_ok("sfdisk", "fdisk", &["--json", disk.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["sectorsize"], 512);
    assert_eq!(
        t["id"].as_str().unwrap().to_lowercase(),
        derive_guid(IDENTITY, "disk").to_string()
    );
    assert_eq!(t["firstlba"], 34);
    assert_eq!(t["lastlba"], 512 * MIB / 512 - 34);
    let sp = t["partitions"].as_array().unwrap();
    assert_eq!(sp.len(), 4);
    for (i, (p, w)) in sp.iter().zip(&want).enumerate() {
        assert_eq!(p["node"], format!("{}{}", disk.display(), i + 1));
        assert_eq!(p["name"], w.name);
        assert_eq!(p["type"], w.type_guid);
        assert_eq!(p["start"], w.first_lba);
        assert_eq!(p["size"], w.sectors);
        assert_eq!(
            p["uuid"].as_str().unwrap().to_lowercase(),
            derive_guid(IDENTITY, w.name).to_string()
        );
    }

    // sgdisk -v (gdisk) checks CRCs, the backup header and overlaps.
    let out = run_ok("sgdisk", "gdisk", &["-v", disk.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
}

/// Copies the ESP out with dd, as the task asks, and fscks it.
#[test]
fn esp_is_clean_fat32_and_files_read_back_with_mtools() {
    let inp = inputs();
    let layout = small_layout();
    let disk = inp.dir.join("disk.raw");
    let s = spec(&inp, layout);
    write_disk(&disk, &s).unwrap();

    let esp = inp.dir.join("esp.img");
    run_ok(
        "dd",
        "coreutils",
        &[
            &format!("if={}", disk.display()),
            &format!("of={}", esp.display()),
            "bs=1M",
            "skip=1",
            &format!("count={}", layout.esp_size / MIB),
            "status=none",
        ],
    );
    let o = run(
        "fsck.fat",
        "dosfstools",
        &["-n", "-v", esp.to_str().unwrap()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "fsck.fat -n:\n{text}");
    assert!(text.contains("32 bit entries"), "{text}");
    for bad in [
        "differences",
        "Free cluster summary",
        "Dirty bit",
        "Fix?",
        "Perform changes",
    ] {
        assert!(
            !text.contains(bad),
            "fsck.fat -n complains ({bad}):\n{text}"
        );
    }
    // Label and serial number as blkid would show them.
    let bs = read_range(&esp, 0, 512);
    assert_eq!(&bs[0x47..0x52], b"ESP        ");
    assert_eq!(&bs[0x52..0x5a], b"FAT32   ");
    assert_eq!(u32::from_le_bytes(bs[0x1c..0x20].try_into().unwrap()), 2048);

    // mtools straight on the disk image at the ESP's byte offset.
    let img = format!("{}@@{}", disk.display(), MIB);
    for (path, source) in &s.esp_files {
        let want = match source {
            EspSource::Bytes(b) => b.to_vec(),
            EspSource::File(p) => fs::read(p).unwrap(),
        };
        let got = run_ok("mtype", "mtools", &["-i", &img, &format!("::/{path}")]);
        assert_eq!(got.len(), want.len(), "{path}");
        assert!(got == want, "{path} differs");
    }
    // Long names keep their case; timestamps are SOURCE_DATE_EPOCH.
    let listing = run_ok("mdir", "mtools", &["-i", &img, "::/EFI/systemd"]);
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("systemd-bootx64.efi"), "{listing}");
    assert!(listing.contains("2023-11-14"), "{listing}");
    assert!(listing.contains("22:13"), "{listing}");
    let listing = run_ok("mdir", "mtools", &["-i", &img, "::/"]);
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
}

#[test]
fn slot_image_lands_raw_at_the_partition_offset() {
    let inp = inputs();
    let layout = small_layout();
    let disk = inp.dir.join("disk.raw");
    let report = write_disk(&disk, &spec(&inp, layout)).unwrap();
    let a = &report.partitions[1];
    assert_eq!(a.name, "cairn-a");
    let want = fs::read(&inp.slot_a).unwrap();
    let got = read_range(&disk, a.offset(), want.len() + 4096);
    assert!(got[..want.len()] == want[..], "slot A bytes differ");
    assert!(got[want.len()..].iter().all(|&b| b == 0));
    // Slot B is left empty (a hole); the state partition holds only the
    // "never formatted" mark that lets /init format it.
    let b = &report.partitions[2];
    assert!(read_range(&disk, b.offset(), 1 << 16)
        .iter()
        .all(|&b| b == 0));
    let st = &report.partitions[3];
    assert_eq!(st.name, "cairn-state");
    let got = read_range(&disk, st.offset(), 1 << 16);
    let mark = cairn_disk::STATE_NEW_MARK;
    assert_eq!(&got[..mark.len()], mark);
    assert!(got[mark.len()..].iter().all(|&b| b == 0));
}

#[test]
fn same_spec_gives_identical_bytes() {
    let inp = inputs();
    let one = inp.dir.join("one.raw");
    let two = inp.dir.join("two.raw");
    write_disk(&one, &spec(&inp, tiny_layout())).unwrap();
    // A different file order must not matter either.
    let mut s = spec(&inp, tiny_layout());
    s.esp_files.reverse();
    write_disk(&two, &s).unwrap();
    let h1 = sha256_file(&one);
    assert_eq!(h1, sha256_file(&two));
    // Writing over an existing image gives the same bytes again.
    write_disk(&two, &spec(&inp, tiny_layout())).unwrap();
    assert_eq!(h1, sha256_file(&two));

    // Identity and time are inputs: changing them changes the image.
    let mut s = spec(&inp, tiny_layout());
    s.identity = "cairn-default 1.0.1 other";
    write_disk(&two, &s).unwrap();
    assert_ne!(h1, sha256_file(&two));
    let mut s = spec(&inp, tiny_layout());
    s.mtime += 2;
    write_disk(&two, &s).unwrap();
    assert_ne!(h1, sha256_file(&two));
}

#[test]
fn inspect_reports_table_files_and_loader_text() {
    let inp = inputs();
    let layout = small_layout();
    let disk = inp.dir.join("disk.raw");
    let report = write_disk(&disk, &spec(&inp, layout)).unwrap();
    let info = inspect(&disk).unwrap();
    assert_eq!(info.size, 512 * MIB);
    assert_eq!(info.sector_size, 512);
    assert!(info.protective_mbr && info.primary_gpt_ok && info.backup_gpt_ok);
    assert_eq!(info.disk_guid, derive_guid(IDENTITY, "disk"));
    assert_eq!(info.partitions, report.partitions);
    let names: Vec<_> = info
        .partitions
        .iter()
        .map(|p| (p.number, p.name.as_str(), p.type_name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (1, "ESP", "EFI System"),
            (2, "cairn-a", "Linux root (x86-64)"),
            (3, "cairn-b", "Linux root (x86-64)"),
            (4, "cairn-state", "Linux filesystem"),
        ]
    );

    let esp = info.esp.as_ref().expect("ESP found");
    assert_eq!(esp.partition, 1);
    assert_eq!(esp.fat_type, "FAT32");
    assert_eq!(esp.volume_label.trim_end(), "ESP");
    assert!(esp.clusters >= 65525, "{}", esp.clusters);
    let files: Vec<(&str, u64)> = esp
        .entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e.path.as_str(), e.size))
        .collect();
    assert_eq!(
        files,
        [
            ("EFI/BOOT/BOOTX64.EFI", 120_000),
            ("EFI/systemd/systemd-bootx64.efi", 120_000),
            ("cairn/1.0.0/initrd", 4097),
            ("cairn/1.0.0/vmlinuz", 700_001),
            ("empty-file.txt", 0),
            (
                "loader/entries/cairn-1.0.0+3.conf",
                bls_entry(&entry("cairn-a", "1.0.0")).len() as u64
            ),
            (
                "loader/loader.conf",
                loader_conf(cairn_disk::DEFAULT_MENU_TIMEOUT).len() as u64
            ),
        ]
    );
    let dirs: Vec<&str> = esp
        .entries
        .iter()
        .filter(|e| e.is_dir)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        dirs,
        [
            "EFI",
            "EFI/BOOT",
            "EFI/systemd",
            "cairn",
            "cairn/1.0.0",
            "loader",
            "loader/entries"
        ]
    );
    assert_eq!(
        esp.loader_conf.as_deref(),
        Some(loader_conf(cairn_disk::DEFAULT_MENU_TIMEOUT).as_str())
    );
    assert_eq!(
        esp.boot_entries,
        [(
            "cairn-1.0.0+3.conf".to_string(),
            bls_entry(&entry("cairn-a", "1.0.0"))
        )]
    );

    let text = info.to_string();
    for needle in [
        "512 MiB",
        &derive_guid(IDENTITY, "disk").to_string(),
        &derive_guid(IDENTITY, "cairn-b").to_string(),
        "cairn-state",
        "Linux root (x86-64)",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "FAT32, label \"ESP\"",
        "EFI/BOOT/BOOTX64.EFI",
        "loader/entries/cairn-1.0.0+3.conf:",
        "  | linux /cairn/1.0.0/vmlinuz",
        "  | timeout 3",
        "primary GPT ok; backup GPT ok",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // A damaged backup header is reported, not fatal.
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(512 * MIB - 512 + 16)).unwrap();
        f.write_all(&[0xff; 4]).unwrap();
    }
    let info = inspect(&disk).unwrap();
    assert!(info.primary_gpt_ok && !info.backup_gpt_ok);
    assert!(info.to_string().contains("backup GPT INVALID"));
    assert_eq!(info.partitions.len(), 4);
}

#[test]
fn default_4gib_disk_is_sparse() {
    let inp = inputs();
    let disk = inp.dir.join("disk.raw");
    let mut s = spec(&inp, Layout::default());
    // About 1 MiB of ESP files in all.
    s.esp_files.push((
        "cairn/1.0.0/extra".into(),
        EspSource::from(noise(9, 60_000)),
    ));
    let total: usize = s
        .esp_files
        .iter()
        .map(|(_, src)| match src {
            EspSource::Bytes(b) => b.len(),
            EspSource::File(p) => fs::metadata(p).unwrap().len() as usize,
        })
        .sum();
    assert!(
        (MIB as usize * 9 / 10..=MIB as usize * 11 / 10).contains(&total),
        "{total}"
    );
    let report = write_disk(&disk, &s).unwrap();
    assert_eq!(report.size, 4 << 30);
    let du = fs::metadata(&disk).unwrap();
    assert_eq!(
        report.allocated_bytes,
        std::os::unix::fs::MetadataExt::blocks(&du) * 512
    );
    assert!(
        report.allocated_bytes < 40 * MIB,
        "allocated {} bytes",
        report.allocated_bytes
    );
    eprintln!("4 GiB disk: {} bytes allocated", report.allocated_bytes);
    let info = inspect(&disk).unwrap();
    assert_eq!(info.esp.unwrap().cluster_size, 2048);
    // The default 256 MiB ESP is clean FAT32 too.
    let esp = inp.dir.join("esp.img");
    run_ok(
        "dd",
        "coreutils",
        &[
            &format!("if={}", disk.display()),
            &format!("of={}", esp.display()),
            "bs=1M",
            "skip=1",
            "count=256",
            "conv=sparse",
            "status=none",
        ],
    );
    let o = run("fsck.fat", "dosfstools", &["-n", esp.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "fsck.fat -n: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = run_ok("sgdisk", "gdisk", &["-v", disk.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out).contains("No problems found"));
}

#[test]
fn slot_too_large_is_refused_before_writing() {
    let inp = inputs();
    let disk = inp.dir.join("disk.raw");
    let big = inp.dir.join("big.squashfs");
    let f = fs::File::create(&big).unwrap();
    f.set_len(128 * MIB + 1).unwrap();
    let mut s = spec(&inp, small_layout());
    s.slot_b = Some(&big);
    match write_disk(&disk, &s).unwrap_err() {
        DiskError::SlotTooLarge {
            partition, path, ..
        } => {
            assert_eq!(partition, "cairn-b");
            assert_eq!(path, big);
        }
        e => panic!("{e}"),
    }
    let msg = write_disk(&disk, &s).unwrap_err().to_string();
    assert!(
        msg.contains("cairn-b") && msg.contains("big.squashfs"),
        "{msg}"
    );
    assert!(!disk.exists(), "nothing is written for an invalid spec");
    // Exactly the slot size fits.
    f.set_len(128 * MIB).unwrap();
    write_disk(&disk, &s).unwrap();
}

#[test]
fn full_esp_names_the_file_and_leaves_no_image() {
    let inp = inputs();
    let disk = inp.dir.join("disk.raw");
    let mut s = spec(&inp, small_layout());
    s.layout.esp_size = cairn_disk::MIN_ESP_SIZE;
    s.esp_files.push((
        "cairn/huge.bin".into(),
        EspSource::from(vec![1u8; 40 << 20]),
    ));
    let e = write_disk(&disk, &s).unwrap_err();
    assert!(
        matches!(&e, DiskError::EspFull { path, .. } if path == "cairn/huge.bin"),
        "{e}"
    );
    assert!(e.to_string().contains("esp_size"), "{e}");
    assert!(!disk.exists());
}

#[test]
fn missing_inputs_are_named() {
    let inp = inputs();
    let disk = inp.dir.join("disk.raw");
    let missing = inp.dir.join("no-such-slot.squashfs");
    let mut s = spec(&inp, small_layout());
    s.slot_a = Some(&missing);
    let e = write_disk(&disk, &s).unwrap_err().to_string();
    assert!(e.contains("no-such-slot.squashfs"), "{e}");
    let mut s = spec(&inp, small_layout());
    s.layout.disk_size = 256 * MIB;
    let e = write_disk(&disk, &s).unwrap_err().to_string();
    assert!(e.contains("cairn-b"), "{e}");
    assert!(!disk.exists());
    let e = inspect(&inp.slot_a).unwrap_err().to_string();
    assert!(e.contains("root-a.squashfs") && e.contains("GPT"), "{e}");
}

/// A realistic slot image size; prints the figures for the record.
#[test]
fn large_slot_image_is_copied_exactly() {
    let inp = inputs();
    let disk = inp.dir.join("disk.raw");
    let slot = inp.dir.join("root-100m.squashfs");
    // 100 MiB: 1 MiB of noise repeated, each copy marked with its index.
    let block = noise(5, MIB as usize);
    let mut data = Vec::with_capacity(100 * MIB as usize);
    for i in 0..100u8 {
        data.extend_from_slice(&block);
        let n = data.len();
        data[n - 1] = i;
    }
    fs::write(&slot, &data).unwrap();
    let mut s = spec(&inp, Layout::default());
    s.slot_a = Some(&slot);
    s.slot_b = Some(&slot);
    let t = Instant::now();
    let report = write_disk(&disk, &s).unwrap();
    let elapsed = t.elapsed();
    eprintln!(
        "4 GiB disk, 2 x 100 MiB slot images: {:?}, {} bytes allocated",
        elapsed, report.allocated_bytes
    );
    assert!(
        report.allocated_bytes < 240 * MIB,
        "{}",
        report.allocated_bytes
    );
    for p in &report.partitions[1..3] {
        let got = read_range(&disk, p.offset(), data.len());
        assert!(got == data, "{} differs", p.name);
    }
    let _ = Uuid::nil();
}
