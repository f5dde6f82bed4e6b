//! `cairn build --format qcow2,vmdk,ova,vagrant-libvirt` on the small test
//! image (from the cache of built test images): the folder is current, so
//! only the disk formats are made, from its `disk.raw`; then
//!
//! 1. `manifest.json` lists `disk.qcow2`, `disk.vmdk`, `disk.ova` and
//!    `disk.box` right after `disk.raw`, each with its file's size and
//!    SHA-256;
//! 2. qemu-img finds the raw disk's contents in the qcow2 and in the VMDK
//!    (`compare`; `check` clean; the VMDK is a streamOptimized `vmdk`):
//!    identical contents boot identically, so the VMDK needs no boot here;
//! 3. the OVA lists the OVF descriptor first, then its manifest and the
//!    VMDK; its manifest gives `disk.vmdk`'s SHA-256; the Vagrant box holds
//!    `metadata.json` (libvirt, qcow2, the size in GiB), the `Vagrantfile`
//!    and `box.img`, which is `disk.qcow2` byte for byte; with Debian's
//!    `vagrant` and `vagrant-libvirt` installed (skipped, saying so,
//!    without them), `vagrant box add --provider libvirt` accepts the box
//!    (a private `VAGRANT_HOME`; no libvirt needed) and `vagrant validate`
//!    of a project using it passes with the box's Vagrantfile merged in
//!    (its UEFI loader satisfies vagrant-libvirt's check that an `nvram`
//!    needs a loader, which fails without the box);
//! 4. reproducible: made again from the same `disk.raw`, the files have the
//!    same SHA-256; a second run with the same formats makes nothing;
//! 5. `--format qcow2` afterwards removes the VMDK, the OVA and the box,
//!    from the folder and the manifest; `--format vagrant-libvirt` alone
//!    makes the same box again (from a qcow2 of its own, not left behind);
//! 6. `box.img`, taken out of the box, boots with OVMF as a ROM (`-bios`,
//!    what the box's `libvirt.loader` gives libvirt; one TCG boot):
//!    `/init` mounts slot A and the guest agent answers; it is
//!    `disk.qcow2`'s bytes, so this boots the qcow2 too;
//! 7. (no VM) `--format qcow2,vdi` is refused, naming the valid formats.
//!
//! The folder is a scratch copy of the cached image (hard links; the
//! build only adds files and replaces the manifest by renaming), so the
//! cache's own folder is never changed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_builder::disk_formats::Formats;
use cairn_builder::pipeline::{build_with, Manifest};
use cairn_qemu::{Vm, VmConfig};

mod common;

const BOOT: Duration = Duration::from_secs(420);

/// `src`'s files linked (or, across file systems, copied) into `dst`;
/// the manifest always copied.
fn scratch_copy(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir(&to).unwrap();
            scratch_copy(&from, &to);
        } else if e.file_name() == "manifest.json" || std::fs::hard_link(&from, &to).is_err() {
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(&from)
                .arg(&to)
                .status()
                .unwrap();
            assert!(st.success(), "copying {}", from.display());
        }
    }
}

fn manifest(out: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

fn sha(m: &Manifest, name: &str) -> String {
    m.artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"))
        .sha256
        .clone()
}

fn qemu_img(args: &[&str]) -> String {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (Debian's qemu-utils)");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn formats_are_listed_identical_to_disk_raw_reproducible_and_qcow2_boots() {
    let images = common::images_copy();
    let def = images.path().join("images/test.yaml");
    let cached = common::cached_build(&def, "test", None);
    let root = common::images_root();
    let scratch = tempfile::Builder::new()
        .prefix(".disk-formats-")
        .tempdir_in(&root)
        .unwrap();
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    scratch_copy(&cached, &out);
    let opts = common::opts(&def, &out, false);
    let all = Formats::parse("qcow2,vmdk,ova,vagrant-libvirt").unwrap();

    let t = Instant::now();
    let s =
        build_with(&opts, &all, None).expect("cairn build --format qcow2,vmdk,ova,vagrant-libvirt");
    eprintln!("formats made in {:.0?}", t.elapsed());
    assert!(s.up_to_date, "only the formats were made");
    assert_eq!(
        s.formats_made,
        ["disk.qcow2", "disk.vmdk", "disk.ova", "disk.box"]
    );

    // 1. listed after disk.raw, with the files' hashes
    let m = manifest(&out);
    let names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    let raw_at = names.iter().position(|&n| n == "disk.raw").unwrap();
    assert_eq!(
        names[raw_at..raw_at + 5],
        [
            "disk.raw",
            "disk.qcow2",
            "disk.vmdk",
            "disk.ova",
            "disk.box"
        ]
    );
    assert_eq!(m.artifacts[0].name, "rootfs.squashfs");
    for a in &m.artifacts {
        let p = out.join(&a.name);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), a.size, "{}", a.name);
    }
    for name in ["disk.qcow2", "disk.vmdk", "disk.ova", "disk.box"] {
        assert_eq!(
            cairn_builder::fetch::sha256_file(&out.join(name)).unwrap(),
            sha(&m, name)
        );
    }
    assert!(!out.join(".formats").exists(), "the staging folder is gone");

    // 2. the raw disk's contents, as qemu reads them
    let (raw, qcow2, vmdk) = (
        out.join("disk.raw"),
        out.join("disk.qcow2"),
        out.join("disk.vmdk"),
    );
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    assert!(qemu_img(&["check", "-f", "qcow2", &p(&qcow2)]).contains("No errors"));
    assert!(qemu_img(&["check", "-f", "vmdk", &p(&vmdk)]).contains("No errors"));
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", &p(&vmdk)])).unwrap();
    assert_eq!(info["format"], "vmdk");
    assert_eq!(
        info["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    for (fmt, img) in [("qcow2", &qcow2), ("vmdk", &vmdk)] {
        let cmp = qemu_img(&["compare", "-f", "raw", "-F", fmt, &p(&raw), &p(img)]);
        assert!(cmp.contains("Images are identical."), "{fmt}: {cmp}");
    }

    // 3. the appliance: descriptor first, the VMDK as it is
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(out.join("disk.ova"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "disk.ovf\ndisk.mf\ndisk.vmdk\n"
    );
    let mf = Command::new("tar")
        .arg("-xOf")
        .arg(out.join("disk.ova"))
        .arg("disk.mf")
        .output()
        .unwrap();
    let mf = String::from_utf8_lossy(&mf.stdout);
    assert!(
        mf.contains(&format!("SHA256(disk.vmdk)= {}\n", sha(&m, "disk.vmdk"))),
        "{mf}"
    );

    // ... and the Vagrant box
    let boxfile = out.join("disk.box");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&boxfile)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "metadata.json\nVagrantfile\nbox.img\n"
    );
    let unpacked = scratch.path().join("box");
    std::fs::create_dir(&unpacked).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&boxfile)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(st.success());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("metadata.json")).unwrap()).unwrap();
    let raw_size = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(
        meta,
        serde_json::json!({"provider": "libvirt", "format": "qcow2",
            "virtual_size": raw_size.div_ceil(1 << 30)})
    );
    let box_img = unpacked.join("box.img");
    assert_eq!(
        cairn_builder::fetch::sha256_file(&box_img).unwrap(),
        sha(&m, "disk.qcow2"),
        "box.img is disk.qcow2"
    );
    let vagrantfile = std::fs::read_to_string(unpacked.join("Vagrantfile")).unwrap();
    assert!(
        vagrantfile.contains("config.ssh.username = \"core\"")
            && vagrantfile.contains("libvirt.loader = \"/usr/share/ovmf/OVMF.fd\""),
        "{vagrantfile}"
    );
    vagrant_accepts(&boxfile, scratch.path());

    // 4. the same bytes again; nothing to do the second time
    std::fs::remove_file(&qcow2).unwrap();
    std::fs::remove_file(&vmdk).unwrap();
    std::fs::remove_file(&boxfile).unwrap();
    let again = build_with(&opts, &all, None).unwrap();
    assert_eq!(again.formats_made, ["disk.qcow2", "disk.vmdk", "disk.box"]);
    let m2 = manifest(&out);
    assert_eq!(m2.artifacts, m.artifacts, "same files, same hashes");
    let idle = build_with(&opts, &all, None).unwrap();
    assert!(idle.formats_made.is_empty(), "{:?}", idle.formats_made);

    // 5. what is not asked for goes
    let q = build_with(&opts, &Formats::parse("qcow2").unwrap(), None).unwrap();
    assert!(q.formats_made.is_empty());
    assert!(!vmdk.exists() && !out.join("disk.ova").exists() && !boxfile.exists());
    let m3 = manifest(&out);
    assert!(m3
        .artifacts
        .iter()
        .all(|a| a.name != "disk.vmdk" && a.name != "disk.ova" && a.name != "disk.box"));
    assert_eq!(sha(&m3, "disk.qcow2"), sha(&m, "disk.qcow2"));
    let b = build_with(&opts, &Formats::parse("vagrant-libvirt").unwrap(), None).unwrap();
    assert_eq!(b.formats_made, ["disk.box"]);
    assert!(!qcow2.exists(), "the box's own qcow2 is not left behind");
    let m4 = manifest(&out);
    assert_eq!(sha(&m4, "disk.box"), sha(&m, "disk.box"), "the same box");
    assert!(!out.join(".formats").exists());

    // 6. box.img boots with OVMF as a ROM, as the box's Vagrantfile has
    // libvirt load it (QEMU reads it through a throwaway overlay)
    let t = Instant::now();
    let mut vm = Vm::start(
        VmConfig::new("disk-box")
            .bios()
            .args(["-bios", cairn_disk::vagrant::OVMF_ROM])
            .disk(&box_img)
            .cpus(2),
    )
    .expect("starting QEMU");
    vm.wait_for("cairn-init: root cairn-a", BOOT)
        .expect("/init mounted slot A of box.img");
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    let root_fs = common::guest_sh(&mut vm, "findmnt -n -o FSTYPE /", Duration::from_secs(60));
    assert_eq!(root_fs.trim(), "squashfs");
    eprintln!(
        "box.img (disk.qcow2) booted to the guest agent in {:.0?}",
        t.elapsed()
    );
    vm.kill().ok();
}

/// `vagrant box add` takes the box and `vagrant validate` a project using
/// it, with a private VAGRANT_HOME; skipped, saying so, without Debian's
/// `vagrant` and `vagrant-libvirt`.
fn vagrant_accepts(boxfile: &Path, scratch: &Path) {
    let plugin = Command::new("vagrant")
        .args(["plugin", "list"])
        .env("VAGRANT_HOME", scratch.join("vagrant-home"))
        .output();
    match plugin {
        Ok(o)
            if o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("vagrant-libvirt") => {}
        _ => {
            eprintln!(
                "SKIPPED the vagrant checks: no `vagrant` with the vagrant-libvirt plugin \
                 (apt-get install vagrant vagrant-libvirt)"
            );
            return;
        }
    }
    let t = Instant::now();
    let home = scratch.join("vagrant-home");
    let vagrant = |dir: &Path, args: &[&str]| {
        let o = Command::new("vagrant")
            .args(args)
            .current_dir(dir)
            .env("VAGRANT_HOME", &home)
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, text) = vagrant(
        scratch,
        &[
            "box",
            "add",
            "--name",
            "cairn-test",
            "--provider",
            "libvirt",
            boxfile.to_str().unwrap(),
        ],
    );
    assert!(ok, "vagrant box add: {text}");
    let (ok, list) = vagrant(scratch, &["box", "list"]);
    assert!(ok && list.contains("cairn-test (libvirt, 0)"), "{list}");
    // a project whose own settings are invalid without the box's loader
    let project = scratch.join("vagrant-project");
    std::fs::create_dir(&project).unwrap();
    let vagrantfile = |boxname: &str| {
        format!(
            "Vagrant.configure(\"2\") do |c|\n  c.vm.box = \"{boxname}\"\n  \
             c.vm.provider :libvirt do |l|\n    l.nvram = \"/var/lib/libvirt/qemu/nvram/cairn_VARS.fd\"\n  end\nend\n"
        )
    };
    std::fs::write(project.join("Vagrantfile"), vagrantfile("cairn-test")).unwrap();
    let (ok, text) = vagrant(&project, &["validate"]);
    assert!(ok, "vagrant validate with the box: {text}");
    std::fs::write(project.join("Vagrantfile"), vagrantfile("no-such-box")).unwrap();
    let (ok, text) = vagrant(&project, &["validate"]);
    assert!(
        !ok && text.contains("requires a 'loader'"),
        "vagrant validate without the box: {text}"
    );
    eprintln!("vagrant box add and validate in {:.1?}", t.elapsed());
}

#[test]
fn an_unknown_format_is_refused_naming_the_valid_ones() {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["build", "images/test.yaml", "-o", "/nonexistent/out"])
        .args(["--format", "qcow2,vdi"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "unknown disk format \"vdi\": expected raw, qcow2, vmdk, ova or vagrant-libvirt"
        ),
        "{err}"
    );
    assert!(err.contains("--format <LIST>"), "{err}");
}
