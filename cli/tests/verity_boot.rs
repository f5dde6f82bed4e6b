//! QEMU tests (TCG) of the verified root at boot: `/init` opens the slot
//! (or the root image in RAM) through dm-verity with the parameters of
//! `cairn.verity=`, and a corrupt block never boots.
//!
//! The slots are made here from the small image's `rootfs.squashfs` with
//! Debian's `veritysetup format` (package `cryptsetup-bin`), the
//! independent writer of the tree, with the salt of the image's manifest
//! when it records one (then the root hash must be the manifest's too),
//! and written with `qemu-io` into a qcow2 overlay over the image's
//! `disk.raw` together with the ESP's entries (mtools): slot A as version
//! 0.1.0 and slot B as 0.0.9, both with `cairn.verity=` and
//! `cairn.tries=1`.
//!
//! 1. one flipped byte in the first data block of systemd's
//!    `libsystemd-shared-*.so` in slot A (found with backhand): `/init`
//!    opens slot A through dm-verity with the root hash, the kernel
//!    catches the block when PID 1 is executed and restarts; on the next
//!    boot `/init` finds one unfinished boot, marks A's entry bad (`+0-1`)
//!    and reboots, and the machine runs from slot B by itself (on q35, whose
//!    AHCI controller `/init` leaves to udev: the boot disk is virtio);
//!    Debian's
//!    own `dmsetup table`, run on the machine, shows the `verity` target
//!    over slot B with the root hash, `/` is the dm device, and the count
//!    of unfinished boots is gone once `boot-complete.target` is reached;
//! 2. the network-boot initramfs (the root image inside, `cairn.root=ram`)
//!    with one byte of the image's first block flipped is refused by
//!    `/init` with a FATAL line naming the root hash.
//!
//! Proven by other tests' boots, not booted again here: a clean slot
//! through dm-verity from the built disk and from an update
//! (`update_boot`: `dmsetup table` against the manifests, and a slot
//! tampered after the agent's read-back rolled back by systemd-boot's
//! tries), and the intact network-boot initramfs through dm-verity on its
//! loop device (`netboot`).
//!
//! One test function: the phases share the prepared slots and must not
//! run VMs in parallel on a 2-core machine.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_formats::verity::Verity;
use cairn_qemu::{DiskFormat, Vm, VmConfig};

mod common;
use common::verity::{check_verity_root, libsystemd_block};
use common::{guest_sh, test_image};

const BOOT: Duration = Duration::from_secs(400);
const CMD: Duration = Duration::from_secs(60);
const BLOCK: u64 = 4096;
/// The salt when the image's manifest has none.
const SALT: &str = "5a17ca1a5a17ca1a5a17ca1a5a17ca1a5a17ca1a5a17ca1a5a17ca1a5a17ca1a";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The verity record (`root_hash`, `salt`) anywhere in the image's
/// manifest, if the build wrote one.
fn manifest_verity(manifest: &serde_json::Value) -> Option<(String, String)> {
    match manifest {
        serde_json::Value::Object(m) => {
            if let (Some(r), Some(s)) = (
                m.get("root_hash").and_then(|v| v.as_str()),
                m.get("salt").and_then(|v| v.as_str()),
            ) {
                return Some((r.to_owned(), s.to_owned()));
            }
            m.values().find_map(manifest_verity)
        }
        serde_json::Value::Array(a) => a.iter().find_map(manifest_verity),
        _ => None,
    }
}

/// A slot made by veritysetup: the squashfs padded to 4096, its superblock
/// and tree after it.
struct Slot {
    path: PathBuf,
    len: u64,
    data_blocks: u64,
    root_hash: String,
    salt: String,
    /// Offset in the slot of a byte in the first data block of
    /// `libsystemd-shared-*.so`.
    systemd_byte: u64,
}

impl Slot {
    fn cmdline_value(&self) -> String {
        format!("{}:{}:{}", self.root_hash, self.salt, self.data_blocks)
    }

    fn verity(&self) -> Verity {
        Verity::parse(&self.cmdline_value()).unwrap()
    }
}

fn make_slot(out: &Path, work: &Path, salt: &str) -> Slot {
    let root = out.join("rootfs.squashfs");
    let mut head = [0u8; 96];
    fs::File::open(&root)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head[..4], b"hsqs", "a squashfs");
    let bytes_used = u64::from_le_bytes(head[40..48].try_into().unwrap());
    let data_len = bytes_used.next_multiple_of(BLOCK);
    let path = work.join("slot.img");
    let mut data = fs::read(&root).unwrap();
    data.truncate(bytes_used as usize);
    data.resize(data_len as usize, 0);
    fs::write(&path, &data).unwrap();
    drop(data);
    let t = Instant::now();
    let text = run(Command::new("veritysetup")
        .arg("format")
        .arg(&path)
        .arg(&path)
        .arg(format!("--hash-offset={data_len}"))
        .arg(format!("--salt={salt}")));
    eprintln!("veritysetup format: {:.1?}", t.elapsed());
    let root_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("veritysetup prints the root hash")
        .trim()
        .to_owned();

    let start = libsystemd_block(&path);
    Slot {
        len: fs::metadata(&path).unwrap().len(),
        path,
        data_blocks: data_len / BLOCK,
        root_hash,
        salt: salt.to_owned(),
        systemd_byte: start + 1000,
    }
}

fn qemu_io(disk: &Path, cmd: &str) {
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(disk));
}

/// Writes `file` into the overlay at `offset`.
fn write_file(disk: &Path, file: &Path, offset: u64) {
    let len = fs::metadata(file).unwrap().len();
    qemu_io(
        disk,
        &format!("write -q -s {} {offset} {len}", file.display()),
    );
}

/// The ESP of `disk.raw` with both slots' entries, with `cairn.verity=`.
fn make_esp(out: &Path, work: &Path, esp_offset: u64, esp_len: u64, verity: &str) -> PathBuf {
    let esp = work.join("esp.img");
    run(Command::new("dd")
        .arg(format!("if={}", out.join("disk.raw").display()))
        .arg(format!("of={}", esp.display()))
        .args(["bs=1M", "status=none", "conv=sparse"])
        .arg(format!("skip={}", esp_offset >> 20))
        .arg(format!("count={}", esp_len >> 20)));
    let img = esp.display().to_string();
    let entries = run(Command::new("mdir").args(["-i", &img, "-b", "::/loader/entries"]));
    let entry = entries
        .lines()
        .map(|l| l.trim().trim_start_matches("::/loader/entries/").to_owned())
        .find(|l| l.ends_with(".conf"))
        .expect("an entry on the ESP");
    let text = run(Command::new("mtype").args(["-i", &img, &format!("::/loader/entries/{entry}")]));
    // the image's own entry names its root hash already (verity is on by default): the test's word
    // is the one that counts, and the benchmark removes it
    let a_options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .expect("options line")
        .split_whitespace()
        .filter(|w| !w.starts_with("cairn.verity="))
        .collect::<Vec<_>>()
        .join(" ");
    let options = |slot: char| {
        format!(
            "options {} cairn.verity={verity} cairn.tries=1 cairn.debug",
            a_options.replace("cairn.slot=a", &format!("cairn.slot={slot}"))
        )
    };
    let rewrite = |slot: char, version: &str| -> String {
        text.lines()
            .map(|l| {
                if l.starts_with("options ") {
                    options(slot)
                } else if l.starts_with("version ") {
                    format!("version {version}")
                } else if l.starts_with("title ") {
                    format!("title cairn-test {version} (slot {slot}, verity)")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let a = work.join("a.conf");
    let b = work.join("b.conf");
    let loader = work.join("loader.conf");
    fs::write(&a, rewrite('a', "0.1.0")).unwrap();
    fs::write(&b, rewrite('b', "0.0.9")).unwrap();
    fs::write(&loader, "timeout 0\nconsole-mode keep\neditor no\n").unwrap();
    run(Command::new("mdel").args(["-i", &img, &format!("::/loader/entries/{entry}")]));
    for (src, dst) in [
        (&a, "::/loader/entries/cairn-0.1.0.conf"),
        (&b, "::/loader/entries/cairn-0.0.9.conf"),
        (&loader, "::/loader/loader.conf"),
    ] {
        run(Command::new("mcopy")
            .args(["-o", "-i", &img])
            .arg(src)
            .arg(dst));
    }
    esp
}

/// `switching to /sbin/init after X s` of /init's last line.
fn init_secs(line: &str) -> f64 {
    line.rsplit("after ")
        .next()
        .and_then(|s| s.trim().trim_end_matches('s').parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits for boot-complete.target (the health gate ran) and checks that
/// the count of unfinished boots is gone.
fn check_boot_complete(vm: &mut Vm) {
    guest_sh(
        vm,
        "for i in $(seq 300); do systemctl is-active -q cairn-boot-complete.service && exit 0; sleep 1; done; \
         systemctl status --no-pager boot-complete.target cairn-boot-complete.service; exit 1",
        Duration::from_secs(330),
    );
    guest_sh(
        vm,
        "test ! -e /run/cairn/state/cairn-init/unfinished-boots",
        CMD,
    );
}

#[test]
fn verified_root_boots_and_a_corrupt_slot_falls_back() {
    for (tool, package) in [
        ("veritysetup", "cryptsetup-bin"),
        ("mcopy", "mtools"),
        ("qemu-io", "qemu-utils"),
        ("dmsetup", "dmsetup"),
    ] {
        cairn_testkit::require(tool, package);
    }
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let recorded = manifest_verity(&manifest);
    let slot = make_slot(&out, work.path(), recorded.as_ref().map_or(SALT, |r| &r.1));
    if let Some((root_hash, _)) = &recorded {
        assert_eq!(
            &slot.root_hash, root_hash,
            "veritysetup's root hash of the image against its manifest's"
        );
    }
    let verity = slot.cmdline_value();
    eprintln!("slot: {} bytes, cairn.verity={verity}", slot.len);

    let info = cairn_disk::inspect(&out.join("disk.raw")).unwrap();
    let part = |name: &str| {
        info.partitions
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name} on disk.raw"))
    };
    let (a, b, esp) = (part("cairn-a"), part("cairn-b"), part("ESP"));
    assert!(slot.len <= a.size && slot.len <= b.size, "the slot fits");
    let disk = work.path().join("disk.qcow2");
    cairn_qemu::vm::create_overlay(&out.join("disk.raw"), DiskFormat::Raw, &disk).unwrap();
    let esp_img = make_esp(&out, work.path(), esp.offset(), esp.size, &verity);
    write_file(&disk, &esp_img, esp.offset());
    write_file(&disk, &slot.path, a.offset());
    write_file(&disk, &slot.path, b.offset());

    // --- 1. a flipped byte in a block PID 1 needs: caught, and slot B runs
    // with a network, so that network-online.target (which the health gate
    // before boot-complete.target wants) does not wait for its timeout
    let config = VmConfig::new("verity-disk")
        .uefi()
        .disk(&disk)
        .persist(true)
        .memory_mib(1024)
        .cpus(2)
        .user_net();
    let mut byte = [0u8; 1];
    {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::File::open(&slot.path).unwrap();
        f.seek(SeekFrom::Start(slot.systemd_byte)).unwrap();
        f.read_exact(&mut byte).unwrap();
    }
    qemu_io(
        &disk,
        &format!(
            "write -q -P {} {} 1",
            byte[0] ^ 0x5a,
            a.offset() + slot.systemd_byte
        ),
    );
    let t = Instant::now();
    let mut vm = Vm::start(config).expect("starting QEMU");
    let line = vm
        .wait_for("through dm-verity as", BOOT)
        .expect("/init opens slot A through dm-verity");
    assert!(
        line.contains("cairn-a") && line.contains(&slot.root_hash),
        "{line}"
    );
    let switch = vm.wait_for("switching to /sbin/init", BOOT).unwrap();
    eprintln!(
        "verity boot: /init done after {:.3}s; {switch}",
        init_secs(&switch)
    );
    // q35's AHCI controller is present, the boot disk is virtio: /init
    // never loads the SATA driver (the slowest module load of a boot)
    assert!(
        vm.serial_log()
            .contains("not loaded in the initramfs: ahci"),
        "/init loaded ahci for a virtio boot disk:\n{}",
        vm.serial_log()
    );
    let corrupt = vm
        .wait_for("is corrupted", BOOT)
        .expect("the kernel reports the corrupt block");
    eprintln!("boot 1: {corrupt}");
    assert!(
        corrupt.contains(&format!(
            "data block {} is corrupted",
            slot.systemd_byte / BLOCK
        )),
        "the flipped block, not another: {corrupt}"
    );
    let log = vm.serial_log();
    let switched = log
        .find("switching to /sbin/init")
        .expect("/init handed over to systemd before the corrupt read");
    assert!(
        log[switched..].contains("is corrupted"),
        "caught after /init, when systemd ran"
    );
    let marked = vm
        .wait_for("marked boot entry", BOOT)
        .expect("/init marks slot A's entry bad on the next boot");
    assert!(
        marked.contains("cairn-0.1.0.conf") && marked.contains("cairn-0.1.0+0-1.conf"),
        "{marked}"
    );
    let log = vm.serial_log();
    assert!(
        log.contains("1 boot(s) in a row never reached boot-complete.target")
            && log.contains(&slot.root_hash),
        "the reason is on the console:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );
    let line = vm
        .wait_for("cairn-init: root cairn-b", BOOT)
        .expect("the machine comes back on slot B");
    eprintln!("fell back: {line}");
    vm.wait_guest_agent(BOOT).unwrap();
    let cmdline = guest_sh(&mut vm, "cat /proc/cmdline", CMD);
    assert!(cmdline.contains("cairn.slot=b"), "{cmdline}");
    check_verity_root(&mut vm, &slot.verity(), b.number);
    let entries = guest_sh(&mut vm, "ls /efi/loader/entries", CMD);
    assert!(
        entries.contains("cairn-0.1.0+0-1.conf") && entries.contains("cairn-0.0.9.conf"),
        "{entries}"
    );
    check_boot_complete(&mut vm);
    eprintln!(
        "boot 1 (corrupt A, then B) checked after {:.0?}",
        t.elapsed()
    );
    vm.kill().unwrap();
    drop(vm);

    // --- 2. diskless: the network-boot initramfs, its image tampered
    let pxe = work.path().join("pxe-initrd.img");
    let initrd = fs::read(out.join("initrd.img")).unwrap();
    cairn_builder::artifacts::write_pxe_initramfs(&pxe, &initrd, &slot.path, 0).unwrap();
    let cmdline = format!(
        "cairn.root=ram cairn.verity={verity} console=ttyS0,115200 cairn.debug systemd.gpt_auto=0"
    );
    // the image's first block tampered inside pxe-initrd.img: refused
    let mut bytes = fs::read(&pxe).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"hsqs")
        .expect("the root image in the initramfs")
        + 2048;
    bytes[at] ^= 0x5a;
    fs::write(&pxe, bytes).unwrap();
    let mut vm = Vm::start(
        VmConfig::new("verity-ram-tampered")
            .kernel(out.join("vmlinuz"), Some(pxe), &cmdline)
            .memory_mib(2048)
            .no_reboot(true),
    )
    .expect("starting QEMU");
    let fatal = vm
        .wait_for("cairn-init: FATAL:", BOOT)
        .expect("/init refuses the tampered image");
    assert!(
        fatal.contains(&slot.root_hash) && fatal.contains("does not match"),
        "{fatal}"
    );
    vm.wait_exit(Duration::from_secs(60))
        .expect("/init reboots after the FATAL line");
}

/// `systemd-analyze`'s `Startup finished in Xs (kernel) + Ys (userspace)`
/// as (kernel, userspace) seconds; the kernel part includes `/init`.
fn startup_secs(text: &str) -> (f64, f64) {
    let secs = |what: &str| -> f64 {
        let end = text
            .find(&format!(" ({what})"))
            .expect("systemd-analyze line");
        let word = text[..end].rsplit(' ').next().unwrap_or("");
        // "1min 2.345s" never happens before the unit: the word is "2.345s"
        // or "345ms"
        if let Some(ms) = word.strip_suffix("ms") {
            ms.parse::<f64>().unwrap() / 1000.0
        } else {
            let before = &text[..end - word.len()];
            let mins = before
                .trim_end()
                .rsplit(' ')
                .next()
                .and_then(|w| w.strip_suffix("min"))
                .and_then(|m| m.parse::<f64>().ok())
                .unwrap_or(0.0);
            mins * 60.0 + word.trim_end_matches('s').parse::<f64>().unwrap()
        }
    };
    (secs("kernel"), secs("userspace"))
}

/// Boot time with and without dm-verity under the same QEMU settings (not
/// run by CI; `docs/benchmarks.md` has the figures): the same disk image
/// and slot bytes, one entry with `cairn.verity=` and one without; three
/// boots each, alternating, each measured by `/init`'s own clock and by
/// `systemd-analyze` once the system is running.
///
/// `cargo nextest run -p cairn-cli --test verity_boot --run-ignored only --no-capture`
#[test]
#[ignore = "a benchmark: six TCG boots"]
fn boot_time_with_and_without_verity() {
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let recorded = manifest_verity(&manifest);
    let slot = make_slot(&out, work.path(), recorded.as_ref().map_or(SALT, |r| &r.1));
    let info = cairn_disk::inspect(&out.join("disk.raw")).unwrap();
    let part = |name: &str| info.partitions.iter().find(|p| p.name == name).unwrap();
    let (a, esp) = (part("cairn-a"), part("ESP"));
    let mut results: Vec<(bool, f64, f64, f64)> = Vec::new();
    for (i, verified) in [true, false, true, false, true, false]
        .into_iter()
        .enumerate()
    {
        let disk = work.path().join(format!("disk-{i}.qcow2"));
        cairn_qemu::vm::create_overlay(&out.join("disk.raw"), DiskFormat::Raw, &disk).unwrap();
        let value = slot.cmdline_value();
        let esp_img = make_esp(&out, work.path(), esp.offset(), esp.size, &value);
        if !verified {
            // the same entries without cairn.verity=
            let img = esp_img.display().to_string();
            let text =
                run(Command::new("mtype").args(["-i", &img, "::/loader/entries/cairn-0.1.0.conf"]));
            let plain = work.path().join("plain.conf");
            let without = text.replace(&format!(" cairn.verity={value} cairn.tries=1"), "");
            assert!(
                without != text && !without.contains("cairn.verity="),
                "{text}"
            );
            fs::write(&plain, without).unwrap();
            run(Command::new("mcopy")
                .args(["-o", "-i", &img])
                .arg(&plain)
                .arg("::/loader/entries/cairn-0.1.0.conf"));
        }
        write_file(&disk, &esp_img, esp.offset());
        write_file(&disk, &slot.path, a.offset());
        let mut vm = Vm::start(
            VmConfig::new("verity-bench")
                .uefi()
                .disk(&disk)
                .memory_mib(1024)
                .cpus(2)
                .user_net(),
        )
        .unwrap();
        let switch = vm.wait_for("switching to /sbin/init", BOOT).unwrap();
        vm.wait_guest_agent(BOOT).unwrap();
        guest_sh(&mut vm, "systemctl is-system-running --wait || true", BOOT);
        let analyze = guest_sh(&mut vm, "systemd-analyze", CMD);
        let log = vm.serial_log();
        assert_eq!(log.contains("through dm-verity as"), verified, "mode");
        let (kernel, user) = startup_secs(&analyze);
        eprintln!(
            "verity={verified}: /init {:.3}s, kernel+/init {kernel:.2}s, userspace {user:.2}s",
            init_secs(&switch)
        );
        results.push((verified, init_secs(&switch), kernel, user));
        vm.kill().unwrap();
    }
    for v in [true, false] {
        let runs: Vec<_> = results.iter().filter(|r| r.0 == v).collect();
        let n = runs.len() as f64;
        let mean = |f: fn(&&(bool, f64, f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / n;
        eprintln!(
            "verity={v}: mean /init {:.3}s, kernel+/init {:.2}s, userspace {:.2}s, total {:.2}s",
            mean(|r| r.1),
            mean(|r| r.2),
            mean(|r| r.3),
            mean(|r| r.2 + r.3)
        );
    }
}
