//! The small test image's `disk.raw` booted the way a user who never heard
//! of `cairn vm` boots it: plain `qemu-system-x86_64 -machine pc` with
//! Debian's OVMF, the disk on QEMU's default interface (IDE on the `pc`
//! machine), a user-mode NIC and the serial console in a file, read as a
//! person reads it. One boot (TCG), several checks:
//!
//! 1. `/init` finds the slot on the IDE disk (`/dev/sda2`): the PIIX IDE
//!    driver is in the initramfs, and `/init` loads it at once although it
//!    holds SATA/IDE drivers back when another disk controller is present;
//! 2. the console ends with cairn's one-line banner: image, version, slot,
//!    the address the NIC got, and how to get in (no SSH key yet);
//! 3. agetty's prompt names the image and the address (`/etc/issue`);
//! 4. no errors about hardware the machine does not use: nothing from the
//!    floppy driver, which QEMU's `pc` machine invites with its controller,
//!    and no I/O error of any block device.
//!
//! The VM holds a slot of the machine-wide pool like every test VM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_qemu::{DiskFormat, Ovmf};

mod common;

/// Power-on to the banner, cold, under TCG on a loaded 2-core machine.
const READY: Duration = Duration::from_secs(420);

/// The console without carriage returns and terminal escapes.
fn plain(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).replace('\r', "");
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // parameters, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn plain_qemu_pc_console_says_ready_and_nothing_about_absent_hardware() {
    let image = common::test_image();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.qcow2");
    cairn_qemu::vm::create_overlay(&image.join("disk.raw"), DiskFormat::Raw, &disk)
        .expect("qcow2 overlay over disk.raw");
    let ovmf = Ovmf::default();
    let vars = work.path().join("OVMF_VARS.fd");
    std::fs::copy(&ovmf.vars, &vars).expect("copying OVMF's variable store (package ovmf)");
    let console = work.path().join("console.log");

    let _slot = cairn_qemu::slots::reserve(1).expect("a VM slot");
    let qemu = std::env::var("CAIRN_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let mut child = Command::new(qemu)
        .args(["-machine", "pc", "-m", "1024", "-display", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            ovmf.code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2", disk.display()))
        .args(["-nic", "user"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64 (package qemu-system-x86)");

    let t0 = Instant::now();
    let text = loop {
        let text = plain(&std::fs::read(&console).unwrap_or_default());
        if text.lines().any(|l| l.contains(" ready: ")) {
            // agetty may still be drawing its prompt (seconds on a busy
            // host): wait for it, at most a minute
            let banner_at = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let text = plain(&std::fs::read(&console).unwrap_or_default());
                if text.contains("login:") || banner_at.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            // and the rest of its line
            std::thread::sleep(Duration::from_millis(500));
            break plain(&std::fs::read(&console).unwrap_or_default());
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("QEMU exited ({st}) before the banner:\n{text}");
        }
        if t0.elapsed() > READY {
            let _ = child.kill();
            panic!("no ready banner after {READY:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("banner after {:.0?}", t0.elapsed());

    // 1. the slot from the IDE disk
    assert!(
        text.contains("cairn-init: root cairn-a (/dev/sda2)"),
        "/init on the IDE disk:\n{text}"
    );
    // ... with the IDE driver, which /init holds back only while another
    // disk controller may bring the boot disk up: here there is none
    assert!(
        !text.contains("not loaded in the initramfs"),
        "/init held back the only disk controller's driver:\n{text}"
    );
    // 2. the banner: slirp gives the NIC 10.0.2.15; the test image sets no key
    let banner = text
        .lines()
        .find(|l| l.contains(" ready: "))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        banner.starts_with("cairn-test 0.1.0 ready: slot a, "),
        "{banner}"
    );
    assert!(banner.contains(" 10.0.2.15"), "{banner}");
    assert!(
        banner.ends_with(
            "; no SSH key is set for any user: give one with cloud-config ssh_authorized_keys"
        ),
        "{banner}"
    );
    // 3. agetty's prompt: /etc/issue with the host name, line and address
    assert!(
        text.lines()
            .any(|l| l.starts_with("cairn 0.1.0 (cairn-test) ") && l.contains("ttyS0")),
        "no issue line from agetty:\n{text}"
    );
    assert!(text.contains("login:"), "no login prompt:\n{text}");
    // 4. nothing about absent hardware, no I/O errors, no /init warning
    for bad in [
        "floppy",
        "fd0",
        "I/O error",
        "blk_update_request",
        "cairn-init: warning",
    ] {
        // as a word: the verity root hash, which the kernel's command line
        // and /init's root line show, is hex and has held "fd0"
        let hits: Vec<&str> = text.lines().filter(|l| has_word(l, bad)).collect();
        assert!(
            hits.is_empty(),
            "{bad:?} on the console:\n{}",
            hits.join("\n")
        );
    }
}

/// `needle` in `line` with no letter or digit right before or after it.
fn has_word(line: &str, needle: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    line.match_indices(needle).any(|(i, _)| {
        !alnum(line[..i].chars().next_back()) && !alnum(line[i + needle.len()..].chars().next())
    })
}

#[test]
fn a_word_is_not_found_inside_a_hex_hash() {
    assert!(has_word("Floppy drive(s): fd0 is 1.44M", "fd0"));
    assert!(has_word(
        "blk_update_request: I/O error, dev fd0,",
        "I/O error"
    ));
    assert!(!has_word(
        "root hash f3e7d13d35afe2858e6d2aaee4c52018358d83fd0d5c4157",
        "fd0"
    ));
    assert!(!has_word("cairn.verity=83fd0:ab", "fd0"));
}
