//! `cairn_disk::vmdk::write` checked against qemu's own tools (Debian's
//! `qemu-utils`, required): `qemu-img info` (a vmdk of create type
//! streamOptimized, the virtual size), `qemu-img check` and `qemu-img
//! compare` (the guest contents equal the raw image; qemu inflates every
//! grain with C zlib); plus a reader here that walks the file front to
//! back as a streaming consumer (an OVA import) does: header, descriptor,
//! grains in guest order, each grain table after its grains, directory,
//! footer, end-of-stream marker, nothing else.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use cairn_disk::vmdk::{self, VmdkError, GRAIN_SIZE};
use cairn_disk::{write_disk, DiskSpec, EspSource, Layout};
use flate2::{Decompress, FlushDecompress};

mod common;
use common::{noise, qemu_img_ok, scattered_raw, text, C, MIB, SCATTERED_SIZE};

/// `qemu-img check` finds no error, `qemu-img compare` finds the guest
/// contents identical to `raw`, `qemu-img info` a streamOptimized vmdk of
/// the raw image's size.
fn assert_qemu_agrees(raw: &Path, out: &Path) {
    let (raw_s, out_s) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let check = qemu_img_ok(&["check", "-f", "vmdk", out_s]);
    assert!(
        check.contains("No errors were found on the image."),
        "{check}"
    );
    let cmp = qemu_img_ok(&["compare", "-f", "raw", "-F", "vmdk", raw_s, out_s]);
    assert!(cmp.contains("Images are identical."), "{cmp}");
    let info: serde_json::Value = serde_json::from_str(&qemu_img_ok(&[
        "info",
        "--output=json",
        "-f",
        "vmdk",
        out_s,
    ]))
    .unwrap();
    assert_eq!(info["format"], "vmdk");
    assert_eq!(info["virtual-size"], fs::metadata(raw).unwrap().len());
    assert_eq!(info["cluster-size"], 65536);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["create-type"], vmdk::CREATE_TYPE, "{info}");
    assert_eq!(data["extents"][0]["compressed"], true, "{info}");
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn inflate(zlib: &[u8], len: usize) -> Vec<u8> {
    let mut d = Decompress::new(true);
    let mut out = Vec::with_capacity(GRAIN_SIZE as usize);
    let status = d
        .decompress_vec(zlib, &mut out, FlushDecompress::Finish)
        .unwrap();
    assert_eq!(status, flate2::Status::StreamEnd);
    assert_eq!(
        d.total_in() as usize,
        zlib.len(),
        "the marker's size is exact"
    );
    assert_eq!(out.len(), len);
    out
}

/// What [`walk`] found.
#[derive(Debug)]
struct Walked {
    grains: usize,
    tables: usize,
    descriptor: String,
}

/// Reads `out` front to back as a stream and checks every structure
/// against `raw`.
fn walk(raw: &Path, out: &Path) -> Walked {
    let v = fs::read(out).unwrap();
    let raw = fs::read(raw).unwrap();
    let size = raw.len() as u64;
    assert_eq!(v.len() % 512, 0, "whole sectors");
    // the header
    let h = &v[..512];
    assert_eq!(&h[..4], b"KDMV");
    assert_eq!(u32_at(h, 4), 3, "version");
    assert_eq!(u32_at(h, 8), 1 | 1 << 16 | 1 << 17, "flags");
    let capacity = u64_at(h, 12);
    assert_eq!(capacity * 512, size);
    assert_eq!(u64_at(h, 20), 128, "grain size");
    let (desc_offset, desc_size) = (u64_at(h, 28) as usize, u64_at(h, 36) as usize);
    assert_eq!(u32_at(h, 44), 512, "entries per grain table");
    assert_eq!(u64_at(h, 56), u64::MAX, "the directory is at the end");
    let overhead = u64_at(h, 64) as usize;
    assert_eq!(u16::from_le_bytes([h[77], h[78]]), 1, "deflate");
    // the descriptor
    let d = &v[desc_offset * 512..(desc_offset + desc_size) * 512];
    let end = d.iter().position(|&b| b == 0).unwrap();
    assert!(d[end..].iter().all(|&b| b == 0));
    let descriptor = String::from_utf8(d[..end].to_vec()).unwrap();
    assert!(
        descriptor.contains("createType=\"streamOptimized\""),
        "{descriptor}"
    );
    assert!(
        descriptor.contains(&format!("\nRW {capacity} SPARSE \"")),
        "{descriptor}"
    );
    assert!(v[(desc_offset + desc_size) * 512..overhead * 512]
        .iter()
        .all(|&b| b == 0));

    // the stream
    let gt_span = 512 * C;
    let gt_count = size.div_ceil(gt_span) as usize;
    let mut pos = overhead * 512;
    let mut grains_at: Vec<(u64, u32)> = Vec::new(); // (guest grain, sector)
    let mut last_lba = None;
    let mut tables: Vec<(usize, u32)> = Vec::new(); // (table index, sector)
    let mut directory = None;
    loop {
        let val = u64_at(&v, pos);
        let len = u32_at(&v, pos + 8) as usize;
        if len != 0 {
            // a grain: guest order, whole grains, not all zero
            assert_eq!(val % 128, 0, "a grain starts on a grain");
            assert!(last_lba.is_none_or(|l| val > l), "grains in guest order");
            assert!(
                tables
                    .last()
                    .is_none_or(|&(t, _)| (val * 512 / gt_span) as usize > t),
                "a grain after its table"
            );
            last_lba = Some(val);
            let offset = val * 512;
            let want = &raw[offset as usize..(offset + C).min(size) as usize];
            let got = inflate(&v[pos + 12..pos + 12 + len], want.len());
            assert!(got == want, "grain at sector {val} differs");
            assert!(want.iter().any(|&b| b != 0), "a zero grain was stored");
            grains_at.push((offset / C, (pos / 512) as u32));
            pos = (pos + 12 + len).next_multiple_of(512);
            continue;
        }
        let kind = u32_at(&v, pos + 12);
        assert!(
            v[pos + 16..pos + 512].iter().all(|&b| b == 0),
            "marker padding"
        );
        pos += 512;
        match kind {
            1 => {
                assert_eq!(val, 4, "a grain table is 4 sectors");
                // the table of the grains just written
                let index = (last_lba.unwrap() * 512 / gt_span) as usize;
                assert!(tables.last().is_none_or(|&(t, _)| index > t));
                for e in 0..512usize {
                    let grain = (index * 512 + e) as u64;
                    let want = grains_at
                        .iter()
                        .find(|(g, _)| *g == grain)
                        .map_or(0, |&(_, s)| s);
                    assert_eq!(u32_at(&v, pos + 4 * e), want, "table {index} entry {e}");
                }
                tables.push((index, (pos / 512) as u32));
                pos += 2048;
            }
            2 => {
                assert!(directory.is_none());
                assert_eq!(val, (gt_count as u64 * 4).div_ceil(512));
                directory = Some(pos);
                for i in 0..gt_count {
                    let want = tables.iter().find(|(t, _)| *t == i).map_or(0, |&(_, s)| s);
                    assert_eq!(u32_at(&v, pos + 4 * i), want, "directory entry {i}");
                }
                pos += val as usize * 512;
            }
            3 => {
                assert_eq!(val, 1);
                let footer = &v[pos..pos + 512];
                let gd = directory.expect("the directory before the footer");
                assert_eq!(u64_at(footer, 56), (gd / 512) as u64, "footer's directory");
                // otherwise the header again
                assert_eq!(&footer[..56], &v[..56]);
                assert_eq!(&footer[64..], &v[64..512]);
                pos += 512;
            }
            0 => {
                assert_eq!(val, 0);
                assert_eq!(pos, v.len(), "the end-of-stream marker is the last sector");
                break;
            }
            k => panic!("unknown marker type {k} at byte {}", pos - 512),
        }
    }
    // every grain that is not all zero is there
    let nonzero = raw.chunks(C as usize).filter(|g| g.iter().any(|&b| b != 0));
    assert_eq!(nonzero.count(), grains_at.len());
    Walked {
        grains: grains_at.len(),
        tables: tables.len(),
        descriptor,
    }
}

#[test]
fn scattered_raw_converts_and_qemu_img_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let out = dir.path().join("disk.vmdk");
    scattered_raw(&raw);
    let report = vmdk::write(&raw, &out).unwrap();
    assert_eq!(GRAIN_SIZE, C);

    assert_qemu_agrees(&raw, &out);
    let w = walk(&raw, &out);
    // 1 + 16 + 33 + 1 + 2 + 3 + 1 + 1 + 1 grains hold data (the written
    // zeros and the holes are not stored), in the tables of 32 MiB spans
    // 0 (0-20 MiB), 15 and 16 (around 512 MiB), 18 (600 MiB) and 20 (the
    // last sectors).
    assert_eq!(report.data_grains, 59);
    assert_eq!(w.grains, 59);
    assert_eq!(report.grain_tables, 5);
    assert_eq!(w.tables, 5);
    assert_eq!(
        report.zero_grains,
        SCATTERED_SIZE.div_ceil(C) - report.data_grains
    );
    assert_eq!(report.virtual_size, SCATTERED_SIZE);
    assert_eq!(report.file_size, fs::metadata(&out).unwrap().len());
    assert!(
        w.descriptor.contains("SPARSE \"disk.vmdk\""),
        "{}",
        w.descriptor
    );
    assert!(
        w.descriptor.contains(&format!("CID={:08x}\n", report.cid)),
        "{}",
        w.descriptor
    );
    // the noise (22 grains) dominates, the text shrinks
    assert!(report.file_size < 2 * MIB, "{report:?}");
    assert_eq!(vmdk::capacity(&out).unwrap(), SCATTERED_SIZE);
}

#[test]
fn same_raw_gives_identical_bytes_whatever_the_threads_or_holes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    scattered_raw(&raw);
    // (the descriptor names the file: the same name in two folders)
    fs::create_dir(dir.path().join("a")).unwrap();
    fs::create_dir(dir.path().join("b")).unwrap();
    let one = dir.path().join("a/disk.vmdk");
    let two = dir.path().join("b/disk.vmdk");
    let first = vmdk::write(&raw, &one).unwrap();
    vmdk::write(&raw, &two).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| vmdk::write(&raw, &two)).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());

    // every byte written, no holes
    let dense = dir.path().join("dense.raw");
    let mut src = fs::File::open(&raw).unwrap();
    let mut dst = fs::File::create(&dense).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    drop(dst);
    vmdk::write(&dense, &two).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());

    // other contents, another content id
    let f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 300 * MIB).unwrap();
    drop(f);
    let changed = vmdk::write(&raw, &two).unwrap();
    assert_ne!(changed.cid, first.cid);
}

#[test]
fn gpt_disk_from_write_disk_converts_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let slot = dir.path().join("root.squashfs");
    let mut image = text(3 * MIB as usize);
    image.extend(noise(9, 2 * MIB as usize));
    image.extend(text(100_000));
    fs::write(&slot, &image).unwrap();
    let spec = DiskSpec {
        layout: Layout {
            disk_size: 192 * MIB,
            esp_size: cairn_disk::MIN_ESP_SIZE,
            slot_size: 64 * MIB,
            state_size: 8 * MIB,
        },
        esp_files: vec![(
            "EFI/BOOT/BOOTX64.EFI".into(),
            EspSource::from(noise(1, 120_000)),
        )],
        slot_a: Some(&slot),
        mtime: 1_700_000_000,
        ..DiskSpec::new("cairn-test 1.0.0 vmdk")
    };
    let raw = dir.path().join("disk.raw");
    write_disk(&raw, &spec).unwrap();
    let out = dir.path().join("disk.vmdk");
    vmdk::write(&raw, &out).unwrap();
    assert_qemu_agrees(&raw, &out);
    walk(&raw, &out);
    // qemu-img reads the partition table back through the VMDK
    let back = dir.path().join("back.raw");
    qemu_img_ok(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        out.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert_eq!(cairn_disk::inspect(&back).unwrap().partitions.len(), 4);
}

#[test]
fn a_last_grain_cut_short_holds_only_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("short.raw");
    // one grain and three sectors, the last one written
    let mut bytes = text(C as usize);
    bytes.extend(vec![0; 1024]);
    bytes.extend(noise(3, 512));
    fs::write(&raw, &bytes).unwrap();
    let out = dir.path().join("short.vmdk");
    let report = vmdk::write(&raw, &out).unwrap();
    assert_eq!(report.data_grains, 2);
    assert_qemu_agrees(&raw, &out);
    walk(&raw, &out);
}

#[test]
fn refuses_empty_partial_sectors_and_overwriting_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.raw");
    let out = dir.path().join("odd.vmdk");
    fs::write(&raw, b"").unwrap();
    let err = vmdk::write(&raw, &out).unwrap_err();
    assert!(matches!(err, VmdkError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("odd.raw"), "{err}");
    assert!(!out.exists());

    fs::write(&raw, vec![1u8; 1000]).unwrap();
    let err = vmdk::write(&raw, &out).unwrap_err();
    assert!(
        matches!(err, VmdkError::Unaligned { size: 1000, .. }),
        "{err:?}"
    );
    assert!(!out.exists());

    fs::write(&raw, vec![1u8; 1024]).unwrap();
    let err = vmdk::write(&raw, &raw).unwrap_err();
    assert!(matches!(err, VmdkError::InputIsOutput { .. }), "{err:?}");
    assert!(err.to_string().contains("VMDK image"), "{err}");
    assert_eq!(fs::read(&raw).unwrap(), vec![1u8; 1024]);

    let msg = vmdk::capacity(&raw).unwrap_err().to_string();
    assert!(msg.contains("not a streamOptimized VMDK"), "{msg}");
}
