//! A real Linux guest with a real `qemu-ga`: direct kernel boot with an
//! initramfs made here, then the guest agent (exec, file read) and a guest
//! power-off, checked from the host.
//!
//! Needs a Debian kernel tree, as `dpkg-deb -x linux-image-…-cloud-amd64.deb
//! DIR` leaves it (`DIR/boot/vmlinuz-*`, `DIR/lib/modules/*/`), named by
//! `CAIRN_TEST_KERNEL_TREE`; and from the host, the Debian packages
//! `busybox-static` and `qemu-guest-agent` (copied into the initramfs with
//! their libraries). Without the variable the test is ignored: run with
//! `cargo test -p cairn-qemu --test linux_guest -- --ignored`. The boot
//! tests of cairn's own images replace this once the builder makes them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use cairn_qemu::{ExecStatus, Vm, VmConfig};
use common::{package_file, timed, Cpio, SECS};

const TREE_ENV: &str = "CAIRN_TEST_KERNEL_TREE";

/// Modules for virtio-serial (the agent's channel); their dependencies
/// are read from each module's `.modinfo` (the deb has no modules.dep).
const MODULES: &[&str] = &["virtio_pci", "virtio_console"];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /var && ln -s /run /var/run
for m in MODULES; do insmod /lib/modules/$m || echo "cairn-test-init: insmod $m failed"; done
echo cairn-guest-file-content > /etc/cairn-test
port=
for i in $(seq 100); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  sleep 0.1
done
echo "cairn-test-init: agent port $port"
qemu-ga -m virtio-serial -p $port -t /run &
echo cairn-test-init: ready
while true; do sleep 1000; done
"#;

fn kernel_tree() -> anyhow::Result<(PathBuf, PathBuf)> {
    let tree =
        PathBuf::from(std::env::var_os(TREE_ENV).context("CAIRN_TEST_KERNEL_TREE is not set")?);
    let find = |dir: &Path, prefix: &str| -> anyhow::Result<PathBuf> {
        for e in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            {
                return Ok(p);
            }
        }
        bail!("no {prefix}* in {}", dir.display())
    };
    Ok((
        find(&tree.join("boot"), "vmlinuz-")?,
        find(&tree.join("lib/modules"), "")?,
    ))
}

/// The shared libraries `ldd` lists for `bin`, with the dynamic loader.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Every `*.ko` under `dir`, by module name (`-` read as `_`).
fn index_modules(
    dir: &Path,
    out: &mut std::collections::BTreeMap<String, PathBuf>,
) -> anyhow::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, out)?;
        } else if let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(name.replace('-', "_"), p.clone());
        }
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// `roots` and their dependencies, dependencies first.
fn module_closure(modules_dir: &Path, roots: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut index = std::collections::BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut index)?;
    fn visit(
        name: &str,
        index: &std::collections::BTreeMap<String, PathBuf>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        if out.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let path = index
            .get(name)
            .with_context(|| format!("module {name} not found"))?;
        let data = fs::read(path)?;
        for dep in module_depends(&data) {
            visit(&dep, index, out)?;
        }
        out.push((name.to_owned(), data));
        Ok(())
    }
    let mut out = Vec::new();
    for r in roots {
        visit(r, &index, &mut out)?;
    }
    Ok(out)
}

fn build_initramfs(modules_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let busybox = package_file("/bin/busybox", "busybox-static");
    let qga = package_file("/usr/sbin/qemu-ga", "qemu-guest-agent");
    let mut c = Cpio::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "etc",
        "tmp",
        "lib",
        "lib/modules",
        "usr",
        "usr/lib",
        "lib64",
    ] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, &fs::read(busybox)?);
    c.file("bin/qemu-ga", 0o755, &fs::read(qga)?);
    let mut dirs_done = std::collections::BTreeSet::new();
    for lib in libraries(Path::new("/usr/sbin/qemu-ga"))? {
        let real = fs::canonicalize(&lib)?;
        let mut parent = PathBuf::new();
        for comp in lib.parent().unwrap().components().skip(1) {
            parent.push(comp);
            if dirs_done.insert(parent.clone()) {
                c.dir(&parent.to_string_lossy());
            }
        }
        c.file(&lib.to_string_lossy(), 0o755, &fs::read(real)?);
    }
    let mut names = Vec::new();
    for (name, data) in module_closure(modules_dir, MODULES)? {
        let file = format!("{name}.ko");
        c.file(&format!("lib/modules/{file}"), 0o644, &data);
        names.push(file);
    }
    c.file(
        "init",
        0o755,
        INIT.replace("MODULES", &names.join(" ")).as_bytes(),
    );
    fs::write(out, c.finish())?;
    Ok(())
}

#[test]
#[ignore = "needs CAIRN_TEST_KERNEL_TREE (an extracted Debian linux-image deb); run with --ignored"]
fn linux_guest_under_bios() -> anyhow::Result<()> {
    linux_guest(false)
}

#[test]
#[ignore = "needs CAIRN_TEST_KERNEL_TREE (an extracted Debian linux-image deb); run with --ignored"]
fn linux_guest_under_uefi() -> anyhow::Result<()> {
    linux_guest(true)
}

/// Boots the kernel, then checks the guest agent (exec with status,
/// output, signals; file read and write) and a guest power-off.
fn linux_guest(uefi: bool) -> anyhow::Result<()> {
    let (vmlinuz, modules) = kernel_tree()?;
    let tmp = tempfile::tempdir()?;
    let initrd = tmp.path().join("initrd.cpio");
    build_initramfs(&modules, &initrd)?;

    let cmdline = "console=ttyS0 panic=-1 cairn.test=marker";
    let config = VmConfig::new(if uefi { "linux-uefi" } else { "linux-bios" });
    let config = if uefi { config.uefi() } else { config.bios() };
    let mut vm = Vm::start(
        config
            .kernel(&vmlinuz, Some(initrd), cmdline)
            .memory_mib(512)
            .no_reboot(true),
    )?;
    let version = timed("linux: kernel banner", || {
        vm.wait_for("Linux version", SECS(60))
    })?;
    // Under SeaBIOS' serial console this line also carries the "Probing EDD"
    // text before it: take the word after "Linux version".
    let release = version
        .split("Linux version ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    timed("linux: init ready", || {
        vm.wait_for("cairn-test-init: ready", SECS(60))
    })?;
    timed("linux: guest agent answers", || {
        vm.wait_guest_agent(SECS(30))
    })?;

    let out = timed("linux: guest_exec uname", || {
        vm.guest_exec(&["/bin/uname", "-r"], SECS(30))
    })?;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_str().trim(), release);

    let out = vm.guest_exec(
        &[
            "/bin/sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 7",
        ],
        SECS(30),
    )?;
    assert_eq!(out.status, ExecStatus::Exited(7));
    assert_eq!(out.stdout_str(), "to-stdout\n");
    assert_eq!(out.stderr_str(), "to-stderr\n");

    let out = vm.guest_exec(&["/bin/sh", "-c", "kill -9 $$"], SECS(30))?;
    assert_eq!(out.status, ExecStatus::Signaled(9));

    let cmd = vm.guest_file_read("/proc/cmdline")?;
    assert!(String::from_utf8(cmd)?.contains("cairn.test=marker"));
    assert_eq!(
        vm.guest_file_read("/etc/cairn-test")?,
        b"cairn-guest-file-content\n"
    );
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    vm.guest_file_write("/tmp/big", &big)?;
    assert!(
        vm.guest_file_read("/tmp/big")? == big,
        "3 MB round trip through the agent"
    );

    // The guest powers off: QEMU reports SHUTDOWN from the guest and exits.
    vm.guest_exec(
        &["/bin/sh", "-c", "(sleep 1; poweroff -f) >/dev/null 2>&1 &"],
        SECS(30),
    )?;
    let ev = vm.wait_event("SHUTDOWN", SECS(30))?;
    assert_eq!(ev.data["guest"], true, "{ev:?}");
    let exit = vm.wait_exit(SECS(30))?;
    assert!(exit.success(), "{exit}");
    Ok(())
}
