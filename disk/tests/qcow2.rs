//! `cairn_disk::qcow2::write` checked against qemu's own tools (Debian's
//! `qemu-utils`, required: a missing `qemu-img` fails the test naming the
//! package): `qemu-img check` (structure, refcounts, leaks), `qemu-img
//! compare` (guest contents equal the raw image) and `qemu-img info`;
//! plus a reader here that walks the tables and has C zlib (python3's
//! `zlib` module, Debian's `python3`) inflate each compressed cluster in
//! 512-byte steps with the 4 KiB window qemu declares, which qemu's
//! one-shot inflate would not catch.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_disk::qcow2::{self, Options, Qcow2Error, CLUSTER_SIZE};
use cairn_disk::{write_disk, DiskSpec, EspSource, Layout};
use flate2::{Decompress, FlushDecompress};

mod common;
use common::{noise, qemu_img_ok, scattered_raw, text, C, MIB, SCATTERED_SIZE};

/// `qemu-img check` finds no error and no leak, and `qemu-img compare`
/// finds the guest contents identical to `raw`.
fn assert_qemu_agrees(raw: &Path, out: &Path) {
    let (raw, out) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let check = qemu_img_ok(&["check", "-f", "qcow2", out]);
    assert!(
        check.contains("No errors were found on the image."),
        "{check}"
    );
    assert!(!check.contains("leaked"), "{check}");
    let cmp = qemu_img_ok(&["compare", "-f", "raw", "-F", "qcow2", raw, out]);
    assert!(cmp.contains("Images are identical."), "{cmp}");
}

fn info(out: &Path) -> serde_json::Value {
    let s = qemu_img_ok(&[
        "info",
        "--output=json",
        "-f",
        "qcow2",
        out.to_str().unwrap(),
    ]);
    serde_json::from_str(&s).unwrap()
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// Inflates a compressed cluster (raw deflate; qemu's reader stops once it
/// has a cluster, whatever follows in the last sector).
fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = vec![0u8; C as usize];
    d.decompress(compressed, &mut out, FlushDecompress::Finish)
        .unwrap();
    assert_eq!(
        d.total_out(),
        C,
        "a compressed cluster inflates to a cluster"
    );
    out
}

/// Inflates each stream with C zlib (python3's `zlib`, the library qemu
/// links) the way a streaming reader would: with the 4 KiB window qemu
/// declares (`wbits` -12) and the output in 512-byte steps, so a match
/// reaching further back than 4 KiB fails ("invalid distance too far
/// back"). zlib-rs keeps a 32 KiB window whatever it is told, and qemu
/// inflates a cluster in one call: neither would notice. Returns the
/// clusters, concatenated.
fn zlib_4k_window(streams: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    const SCRIPT: &str = r#"
import struct, sys, zlib
data, pos, n = sys.stdin.buffer.read(), 0, 0
while pos < len(data):
    (size,) = struct.unpack_from(">I", data, pos)
    buf, pos = data[pos + 4:pos + 4 + size], pos + 4 + size
    d, got = zlib.decompressobj(-12), b""
    while len(got) < 65536:
        part = d.decompress(buf, 512)
        if not part:
            sys.exit("stream %d: %d bytes" % (n, len(got)))
        got, buf = got + part, d.unconsumed_tail
    sys.stdout.buffer.write(got[:65536])
    n += 1
"#;
    let mut input = Vec::new();
    for s in streams {
        input.extend_from_slice(&(s.len() as u32).to_be_bytes());
        input.extend_from_slice(s);
    }
    let mut child = match Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 not found: install the Debian package `python3`")
        }
        Err(e) => panic!("running python3: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Reads the image's guest contents with the L1/L2 tables and compares
/// them with `raw`; the compressed clusters also go through
/// [`zlib_4k_window`]. Returns the number of compressed clusters.
fn read_back_and_compare(raw: &Path, out: &Path) -> usize {
    let q = fs::read(out).unwrap();
    let raw_bytes = fs::read(raw).unwrap();
    assert_eq!(&q[..4], b"QFI\xfb");
    assert_eq!(u32_at(&q, 4), 3);
    assert_eq!(u32_at(&q, 20), 16);
    let size = u64_at(&q, 24);
    assert_eq!(size, raw_bytes.len() as u64);
    let l1_size = u32_at(&q, 36) as usize;
    let l1_offset = u64_at(&q, 40) as usize;
    assert_eq!(q.len() as u64 % C, 0, "the file ends on a cluster boundary");
    let mut streams = Vec::new();
    let mut inflated = Vec::new();
    for g in 0..size.div_ceil(C) {
        let (l1i, l2i) = ((g / 8192) as usize, (g % 8192) as usize);
        assert!(l1i < l1_size);
        let l1e = u64_at(&q, l1_offset + 8 * l1i);
        let want = &raw_bytes[(g * C) as usize..((g + 1) * C).min(size) as usize];
        let l2_offset = (l1e & 0x00ff_ffff_ffff_fe00) as usize;
        let l2e = if l2_offset == 0 {
            0
        } else {
            assert_eq!(l1e >> 63, 1, "L1 entry COPIED");
            u64_at(&q, l2_offset + 8 * l2i)
        };
        let got = if l2e == 0 {
            vec![0; C as usize]
        } else if l2e & 1 << 62 != 0 {
            assert_eq!(l2e >> 63, 0, "compressed entries are not COPIED");
            let offset = (l2e & ((1 << 54) - 1)) as usize;
            let sectors = ((l2e >> 54) & 0xff) as usize + 1;
            let end = (offset & !511) + sectors * 512;
            streams.push(q[offset..end].to_vec());
            let got = inflate(&q[offset..end]);
            inflated.extend_from_slice(&got);
            got
        } else {
            assert_eq!(l2e >> 63, 1, "plain entries are COPIED");
            let offset = (l2e & 0x00ff_ffff_ffff_fe00) as usize;
            assert_eq!(offset as u64 % C, 0);
            q[offset..offset + C as usize].to_vec()
        };
        assert!(got[..want.len()] == *want, "guest cluster {g} differs");
        assert!(got[want.len()..].iter().all(|&b| b == 0));
    }
    let zlib = zlib_4k_window(&streams).unwrap();
    assert!(zlib == inflated, "C zlib inflates the clusters differently");
    streams.len()
}

#[test]
fn scattered_raw_converts_and_qemu_img_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let out = dir.path().join("disk.qcow2");
    scattered_raw(&raw);
    let report = qcow2::write(&raw, &out, &Options::default()).unwrap();
    assert_eq!(CLUSTER_SIZE, C);

    assert_qemu_agrees(&raw, &out);
    let i = info(&out);
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["virtual-size"], SCATTERED_SIZE);
    assert_eq!(i["cluster-size"], 65536);
    let spec = &i["format-specific"]["data"];
    assert_eq!(spec["compat"], "1.1");
    assert_eq!(spec["refcount-bits"], 16);
    assert_eq!(spec["compression-type"], "zlib");
    assert_eq!(spec["corrupt"], false);

    // 1 + 16 + 33 (the 2 MiB text, unaligned) + 1 + 2 + 3 + 1 + 1 + 1
    // clusters hold data; the written zeros and the holes are not stored.
    assert_eq!(report.data_clusters, 59);
    assert_eq!(report.virtual_size, SCATTERED_SIZE);
    assert_eq!(
        report.zero_clusters,
        SCATTERED_SIZE.div_ceil(C) - report.data_clusters
    );
    assert_eq!(report.file_size, fs::metadata(&out).unwrap().len());
    // The noise (16 + 3 + 1 + 1 + 1 clusters, all but the half-zero one
    // stored plain) dominates; text shrinks to a fraction.
    assert!(report.file_size < 3 * MIB, "{report:?}");
    let compressed = read_back_and_compare(&raw, &out);
    assert_eq!(compressed as u64, report.compressed_clusters);
    // text 1 + 33 + 2, the lone byte, the half-zero cluster, the last one
    // (512 bytes of noise and zeros)
    assert_eq!(report.compressed_clusters, 39, "{report:?}");
}

#[test]
fn uncompressed_option_stores_plain_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let out = dir.path().join("disk.qcow2");
    scattered_raw(&raw);
    let report = qcow2::write(&raw, &out, &Options { compress: false }).unwrap();
    assert_qemu_agrees(&raw, &out);
    assert_eq!(report.data_clusters, 59);
    assert_eq!(report.compressed_clusters, 0);
    assert_eq!(read_back_and_compare(&raw, &out), 0);
    // header, data, 2 L2 tables, L1, refcount table and block
    assert_eq!(report.file_size, (1 + 59 + 2 + 1 + 2) * C);
}

#[test]
fn same_raw_gives_identical_bytes_whatever_the_threads_or_holes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    scattered_raw(&raw);
    let one = dir.path().join("one.qcow2");
    let two = dir.path().join("two.qcow2");
    qcow2::write(&raw, &one, &Options::default()).unwrap();
    qcow2::write(&raw, &two, &Options::default()).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());

    // One thread instead of all of them.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| qcow2::write(&raw, &two, &Options::default()))
        .unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());

    // The same contents without holes: every byte written.
    let dense = dir.path().join("dense.raw");
    // (Read and written by hand: io::copy might reflink the holes.)
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
    let blocks = fs::metadata(&dense).unwrap().blocks() * 512;
    assert!(blocks >= SCATTERED_SIZE, "{blocks} bytes allocated");
    qcow2::write(&dense, &two, &Options::default()).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());
}

#[test]
fn gpt_disk_from_write_disk_converts_and_compares_identical() {
    let dir = tempfile::tempdir().unwrap();
    let slot = dir.path().join("root.squashfs");
    let mut image = text(3 * MIB as usize);
    image.extend(noise(9, 2 * MIB as usize));
    image.extend(vec![0; MIB as usize]);
    image.extend(text(100_000));
    fs::write(&slot, &image).unwrap();
    let spec = DiskSpec {
        layout: Layout {
            disk_size: 192 * MIB,
            esp_size: cairn_disk::MIN_ESP_SIZE,
            slot_size: 64 * MIB,
            state_size: 8 * MIB,
        },
        esp_files: vec![
            (
                "EFI/BOOT/BOOTX64.EFI".into(),
                EspSource::from(noise(1, 120_000)),
            ),
            (
                "loader/loader.conf".into(),
                cairn_disk::loader_conf(cairn_disk::DEFAULT_MENU_TIMEOUT).into(),
            ),
        ],
        slot_a: Some(&slot),
        mtime: 1_700_000_000,
        ..DiskSpec::new("cairn-test 1.0.0 qcow2")
    };
    let raw = dir.path().join("disk.raw");
    write_disk(&raw, &spec).unwrap();
    let out = dir.path().join("disk.qcow2");
    let report = qcow2::write(&raw, &out, &Options::default()).unwrap();
    assert_qemu_agrees(&raw, &out);
    assert_eq!(info(&out)["virtual-size"], 192 * MIB);
    read_back_and_compare(&raw, &out);
    assert!(report.file_size < 4 * MIB, "{report:?}");
    // qemu-img reads the partition table back through the qcow2 image.
    let raw_again = dir.path().join("back.raw");
    qemu_img_ok(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        out.to_str().unwrap(),
        raw_again.to_str().unwrap(),
    ]);
    let info = cairn_disk::inspect(&raw_again).unwrap();
    assert_eq!(info.partitions.len(), 4);
}

#[test]
fn empty_raw_gives_an_empty_disk() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("empty.raw");
    fs::write(&raw, b"").unwrap();
    let out = dir.path().join("empty.qcow2");
    let report = qcow2::write(&raw, &out, &Options::default()).unwrap();
    assert_eq!(report.data_clusters, 0);
    assert_qemu_agrees(&raw, &out);
    assert_eq!(info(&out)["virtual-size"], 0);
}

#[test]
fn refuses_partial_sectors_and_overwriting_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.raw");
    fs::write(&raw, vec![1u8; 1000]).unwrap();
    let out = dir.path().join("odd.qcow2");
    let err = qcow2::write(&raw, &out, &Options::default()).unwrap_err();
    assert!(
        matches!(err, Qcow2Error::Unaligned { size: 1000, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(raw.to_str().unwrap()) && msg.contains("multiple of 512"));
    assert!(!out.exists());

    fs::write(&raw, vec![1u8; 1024]).unwrap();
    let err = qcow2::write(&raw, &raw, &Options::default()).unwrap_err();
    assert!(matches!(err, Qcow2Error::InputIsOutput { .. }), "{err:?}");
    assert_eq!(fs::read(&raw).unwrap(), vec![1u8; 1024]);

    let err = qcow2::write(dir.path(), &out, &Options::default()).unwrap_err();
    assert!(matches!(err, Qcow2Error::NotAFile { .. }), "{err:?}");
    let missing = dir.path().join("missing.raw");
    let msg = qcow2::write(&missing, &out, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("opening raw image") && msg.contains("missing.raw"),
        "{msg}"
    );
}

/// The window check above has teeth: a stream deflated with the usual
/// 32 KiB window, whose matches reach back past 4 KiB, fails it; the
/// same cluster deflated as `write` does passes.
#[test]
fn window_check_rejects_a_32k_window_stream() {
    let mut cluster = text(4096);
    cluster.extend(noise(7, 8192));
    cluster.extend(text(4096));
    cluster.resize(C as usize, b'.');
    let deflate = |bits| {
        let level = flate2::Compression::new(qcow2::DEFLATE_LEVEL);
        let mut z = flate2::Compress::new_with_window_bits(level, false, bits);
        let mut out = Vec::with_capacity(2 * C as usize);
        z.compress_vec(&cluster, &mut out, flate2::FlushCompress::Finish)
            .unwrap();
        out
    };
    let err = zlib_4k_window(&[deflate(15)]).unwrap_err();
    assert!(err.contains("invalid distance too far back"), "{err}");
    assert_eq!(zlib_4k_window(&[deflate(12)]).unwrap(), cluster);
}
