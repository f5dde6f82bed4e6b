//! QEMU test (TCG) of the Podman image, `images/podman.yaml`: built
//! through the cache of built test images and booted once from its disk
//! under OVMF, offline (QEMU's user network with `restrict=on`: the guest
//! reaches nothing outside), with a `config-2` config drive whose
//! cloud-config starts the seed's MyApp unit rewritten for Podman (the one
//! `docs/usage.md` shows). In that one boot:
//!
//! 1. no Docker on the machine: no `docker`, `dockerd` or `containerd`
//!    program, no docker or containerd unit;
//! 2. `cairn-preload-images.service` loaded the preloaded busybox into
//!    Podman's storage, and `podman run --rm busybox echo ...` runs it
//!    (on podman's default bridge network: netavark, iptables) with no
//!    registry;
//! 3. the MyApp unit runs and its journal shows `Hello World`.
//!
//! And (no VM) the Podman image's overlay holds the default overlay's
//! files unchanged, but for its own `cairn-preload-images.service`.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};

mod common;
use common::{guest_sh, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(420);
const CMD: Duration = Duration::from_secs(180);

/// The MyApp unit of `docs/usage.md` (Podman), as cloud-config.
const USER_DATA: &str = r#"#cloud-config
coreos:
  units:
    - name: myapp.service
      command: start
      content: |
        [Unit]
        Description=MyApp
        After=cairn-preload-images.service
        Wants=cairn-preload-images.service

        [Service]
        TimeoutStartSec=0
        ExecStartPre=-/usr/bin/podman rm -f myapp
        ExecStart=/usr/bin/podman run --rm --name myapp busybox /bin/sh -c "while true; do echo Hello World; sleep 1; done"
        ExecStop=/usr/bin/podman stop -t 5 myapp

        [Install]
        WantedBy=multi-user.target
"#;

#[test]
fn podman_runs_busybox_offline_and_myapp_says_hello_without_docker() {
    let t0 = Instant::now();
    let out = common::image("podman");
    let built = t0.elapsed();
    let work = tempfile::tempdir().unwrap();
    let drive = work.path().join("config-2.img");
    cairn_disk::config_drive::write(
        &drive,
        &[(cairn_disk::config_drive::USER_DATA, USER_DATA.as_bytes())],
    )
    .expect("writing the config drive");

    let t = Instant::now();
    // the harness puts a qcow2 overlay over disk.raw: the image stays untouched
    let mut vm = Vm::start(
        VmConfig::new("podman-boot")
            .uefi()
            .disk(out.join("disk.raw"))
            .disk(&drive)
            .memory_mib(2048)
            .cpus(2)
            .user_net(),
    )
    .expect("starting QEMU");
    vm.wait_for("cairn-init: root cairn-a", BOOT)
        .expect("/init mounted slot A");
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    wait_cloudinit(&mut vm, 240);
    let booted = t.elapsed();

    // 1. no Docker
    let docker = guest_sh(
        &mut vm,
        "for p in docker dockerd containerd; do command -v $p; done; \
         systemctl list-unit-files --no-legend --plain 'docker*' 'containerd*'; \
         command -v podman",
        CMD,
    );
    assert_eq!(docker.trim(), "/usr/bin/podman", "Docker is on the machine");

    // 2. busybox from the image, no registry
    // (cloud-config from a config drive is applied without waiting for the
    // network, so the preload may still be running when it is done)
    let preload = guest_sh(
        &mut vm,
        "for i in $(seq 150); do systemctl -q is-active cairn-preload-images.service && break; \
         [ \"$(systemctl is-active cairn-preload-images.service)\" = activating ] || break; sleep 1; done; \
         systemctl is-active cairn-preload-images.service; \
         podman images --format '{{.Repository}}:{{.Tag}}' 2>&1; \
         journalctl -b -u cairn-preload-images.service --no-pager -o cat",
        CMD,
    );
    assert!(
        preload.starts_with("active\n") && preload.contains("busybox:latest"),
        "{preload}"
    );
    let run = guest_sh(
        &mut vm,
        "podman run --rm busybox echo hello from podman busybox 2>&1",
        CMD,
    );
    assert!(run.contains("hello from podman busybox"), "{run}");

    // 3. MyApp says Hello World in its journal
    let hello = guest_sh(
        &mut vm,
        "for i in $(seq 120); do journalctl -u myapp.service --no-pager -o cat | grep -m1 'Hello World' && exit 0; sleep 1; done; \
         systemctl status myapp.service --no-pager; journalctl -b -u cairn-cloudinit --no-pager -o cat; exit 1",
        CMD,
    );
    assert!(hello.contains("Hello World"), "{hello}");
    let ps = guest_sh(&mut vm, "podman ps --format '{{.Names}} {{.Image}}'", CMD);
    assert!(ps.contains("myapp") && ps.contains("busybox"), "{ps}");
    eprintln!(
        "podman image ready in {built:.0?}; booted to the agent in {booted:.0?}; all checks done {:.0?} after QEMU started",
        t.elapsed()
    );
    vm.kill().ok();
}

/// Every file of `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn the_podman_overlay_is_the_default_one_but_for_the_preload_unit() {
    let images = common::repo_root().join("images");
    let (default, podman) = (
        images.join("default.overlay"),
        images.join("podman.overlay"),
    );
    assert_eq!(files(&default), files(&podman));
    let preload = "usr/lib/systemd/system/cairn-preload-images.service";
    for f in files(&default) {
        let (a, b) = (
            std::fs::read(default.join(&f)).unwrap(),
            std::fs::read(podman.join(&f)).unwrap(),
        );
        if f == preload {
            let b = String::from_utf8(b).unwrap();
            assert!(
                b.contains("/usr/bin/podman load") && !b.contains("/usr/bin/docker"),
                "{b}"
            );
        } else {
            assert_eq!(
                a, b,
                "{f} differs between default.overlay and podman.overlay"
            );
        }
    }
}
