//! QEMU boot tests (TCG): boot what `cairn build` made of
//! `images/default.yaml` (the image users build) and of `images/test.yaml`
//! (the small one), both from the cache of built test images, and check
//! what runs:
//!
//! 1. the default image's disk.raw under OVMF: systemd reaches a running
//!    system with no failed unit, `/` is the read-only squashfs from slot A,
//!    `/var` is ext4 on `cairn-state` grown to the end of the disk, etcd is
//!    healthy, Docker is socket-activated (dockerd did not start before
//!    `multi-user.target`; the health gate's ping or the first `docker`
//!    command starts it), answers and runs a container from the preloaded
//!    busybox image, sshd listens with host keys made on this boot, `core`
//!    exists;
//! 2. the same disk again, behind a decoy disk with the same partition
//!    labels and another root in its `cairn-a`: `/init` takes the slot and
//!    the state from the disk systemd-boot came from; what was written
//!    under `/var` and `/etc`, and the SSH host keys, are still there, and
//!    Docker did not load the preloaded image again;
//! 3. the small image's vmlinuz + initrd.img booted directly with
//!    `cairn.state=tmpfs`: a running system, diskless;
//! 4. a disk whose slot A is damaged: `/init` says why on the console and
//!    reboots instead of hanging;
//! 5. a machine whose disk has no slot partition at all: `/init` waits
//!    `cairn.timeout`, names the label it waited for, and reboots.
//!
//! One test function: the phases share one build and must not run VMs in
//! parallel on a 2-core machine.

use std::time::{Duration, Instant};

use cairn_qemu::{DiskFormat, Vm, VmConfig};

mod common;
use common::{default_image, guest_sh, test_image};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);

/// Wait until systemd has finished starting up; return `is-system-running`.
fn wait_running(vm: &mut Vm) -> String {
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    let out = vm
        .guest_exec(&["systemctl", "is-system-running", "--wait"], BOOT)
        .expect("systemctl is-system-running");
    out.stdout_str().trim().to_string()
}

fn failed_units(vm: &mut Vm) -> String {
    guest_sh(vm, "systemctl --failed --no-legend --plain", CMD)
}

/// Checks that hold on every boot of an image, disk or diskless; with
/// `payload`, those of the default image's cluster daemons too.
fn check_running_system(vm: &mut Vm, payload: bool) {
    let state = wait_running(vm);
    let failed = failed_units(vm);
    assert_eq!(
        state,
        "running",
        "systemd state; failed units:\n{failed}\njournal:\n{}",
        guest_sh(vm, "journalctl -b -p warning --no-pager | tail -60", CMD)
    );
    assert!(failed.trim().is_empty(), "failed units:\n{failed}");

    let root = guest_sh(vm, "findmnt -n -o FSTYPE,OPTIONS /", CMD);
    assert!(
        root.starts_with("squashfs") && root.contains("ro"),
        "/ is {root}"
    );

    // sshd listens with host keys made on this machine
    let ss = guest_sh(vm, "for i in $(seq 30); do ss -ltnH 'sport = :22' | grep -q . && break; sleep 1; done; ss -ltnH 'sport = :22'", CMD);
    assert!(ss.contains(":22"), "sshd is not listening: {ss}");
    guest_sh(vm, "test -s /etc/ssh/ssh_host_ed25519_key", CMD);
    let core = guest_sh(vm, "id core", CMD);
    assert!(
        core.contains("uid=500(core)") && core.contains("(sudo)"),
        "{core}"
    );
    if !payload {
        return;
    }
    assert!(core.contains("(docker)"), "{core}");
    let os = guest_sh(vm, ". /etc/os-release; echo $ID $VERSION_ID", CMD);
    assert_eq!(os.trim(), "cairn 0.1.0");

    // the cluster daemons
    let health = guest_sh(
        vm,
        "for i in $(seq 60); do etcdctl endpoint health 2>&1 && exit 0; sleep 1; done; exit 1",
        CMD,
    );
    assert!(health.contains("is healthy"), "{health}");
    check_docker_socket_activated(vm);
    // the first use of the socket (if the gate's was not) starts dockerd
    let info = guest_sh(
        vm,
        "docker info --format '{{.ServerVersion}} {{.Driver}}'",
        CMD,
    );
    assert!(!info.trim().is_empty(), "docker info: {info}");
    // a container from the image's preloaded busybox, with no network at
    // all: docker.service's start pulled in cairn-preload-images
    guest_sh(
        vm,
        "for i in $(seq 60); do systemctl is-active -q cairn-preload-images.service && exit 0; sleep 1; done; \
         systemctl status --no-pager cairn-preload-images.service; exit 1",
        CMD,
    );
    let hello = guest_sh(
        vm,
        "docker run --rm --network none busybox:latest /bin/sh -c 'echo hello from busybox'",
        CMD,
    );
    assert_eq!(hello.trim(), "hello from busybox");
}

/// A unit property as a number (`systemctl show -P`; 0 when never set).
fn unit_usec(vm: &mut Vm, unit: &str, prop: &str) -> u64 {
    let v = guest_sh(vm, &format!("systemctl show -P {prop} {unit}"), CMD);
    v.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{unit} {prop}={v:?}: {e}"))
}

/// The words of module `m`'s line in `/init`'s module record
/// (`cairn_initrd::boot::MODULES_RECORD`: name, load end, load time,
/// outcome...).
fn record_fields<'a>(rec: &'a str, m: &str) -> Option<Vec<&'a str>> {
    rec.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&m) && f.len() >= 4)
}

/// The loader on the ESP, which both slots share, is brought up to the
/// image's version by `cairn-loader-update.service` once
/// `boot-complete.target` is reached (the health gate passed; a verity disk
/// boot pulls the target in), never by Debian's
/// `systemd-boot-update.service` before `sysinit.target`. bootctl ran on
/// the ESP and found its own version there (the one the image was written
/// with).
fn check_loader_update(vm: &mut Vm) {
    let enabled = guest_sh(
        vm,
        "systemctl is-enabled systemd-boot-update.service cairn-loader-update.service || true",
        CMD,
    );
    assert_eq!(
        enabled.split_whitespace().collect::<Vec<_>>(),
        ["disabled", "enabled"],
        "systemctl is-enabled systemd-boot-update.service cairn-loader-update.service"
    );
    let state = guest_sh(
        vm,
        "for i in $(seq 300); do s=$(systemctl show -P ActiveState cairn-loader-update.service); \
         case $s in active|failed) break;; esac; sleep 1; done; echo $s",
        Duration::from_secs(330),
    );
    let log = guest_sh(
        vm,
        "journalctl -b -u cairn-loader-update.service --no-pager -o cat",
        CMD,
    );
    assert_eq!(
        state.trim(),
        "active",
        "cairn-loader-update.service:\n{log}"
    );
    let complete = unit_usec(vm, "boot-complete.target", "ActiveEnterTimestampMonotonic");
    let started = unit_usec(
        vm,
        "cairn-loader-update.service",
        "InactiveExitTimestampMonotonic",
    );
    assert!(
        complete > 0 && started >= complete,
        "loader update started at {started} us, boot-complete.target reached at {complete} us"
    );
    assert_eq!(
        unit_usec(
            vm,
            "systemd-boot-update.service",
            "InactiveExitTimestampMonotonic"
        ),
        0,
        "systemd-boot-update.service ran"
    );
    assert!(
        log.contains("same boot loader version in place already"),
        "bootctl update on the ESP:\n{log}"
    );
    eprintln!(
        "loader update {:.1}s after boot-complete.target: {}",
        (started - complete) as f64 / 1e6,
        log.trim().replace('\n', "; ")
    );
}

/// Docker is socket-activated (as on CoreOS): `docker.socket` listens from
/// boot, `docker.service` and `containerd.service` are not enabled, so the
/// boot to `multi-user.target` never waits for dockerd. What may start it
/// during the boot is the health gate: `cairn-health.service` (pulled in by
/// `boot-complete.target` on a verity disk boot, ordered after
/// `multi-user.target`) pings `/run/docker.sock`. So either dockerd never
/// started, or it started after `multi-user.target` was reached and after
/// the gate started; had `multi-user.target` wanted it, it would have
/// started before (the target is ordered after what it wants). Prints the
/// times since the kernel started.
fn check_docker_socket_activated(vm: &mut Vm) {
    let enabled = guest_sh(
        vm,
        "systemctl is-enabled docker.socket docker.service containerd.service || true",
        CMD,
    );
    assert_eq!(
        enabled.split_whitespace().collect::<Vec<_>>(),
        ["enabled", "disabled", "disabled"],
        "systemctl is-enabled docker.socket docker.service containerd.service"
    );
    let socket = guest_sh(vm, "systemctl is-active docker.socket || true", CMD);
    assert_eq!(socket.trim(), "active", "docker.socket");
    let multi_user = unit_usec(vm, "multi-user.target", "ActiveEnterTimestampMonotonic");
    let gate = unit_usec(vm, "cairn-health.service", "InactiveExitTimestampMonotonic");
    let docker = unit_usec(vm, "docker.service", "InactiveExitTimestampMonotonic");
    let docker_up = unit_usec(vm, "docker.service", "ActiveEnterTimestampMonotonic");
    let containerd = unit_usec(vm, "containerd.service", "InactiveExitTimestampMonotonic");
    assert!(multi_user > 0, "multi-user.target was reached");
    let s = |us: u64| us as f64 / 1e6;
    if gate == 0 {
        // nothing used the socket yet: dockerd is not running
        let state = guest_sh(
            vm,
            "systemctl is-active docker.service containerd.service || true",
            CMD,
        );
        assert_eq!(
            state.split_whitespace().collect::<Vec<_>>(),
            ["inactive", "inactive"],
            "docker.service, containerd.service with no health gate on this boot"
        );
        assert_eq!(docker, 0, "docker.service started on this boot");
        eprintln!(
            "multi-user.target at {:.1}s; docker.service not started (no health gate on this boot)",
            s(multi_user)
        );
    } else {
        assert!(
            docker > multi_user && docker >= gate && containerd > multi_user,
            "docker.service started at {:.1}s, containerd at {:.1}s, the health gate at {:.1}s: \
             dockerd must start only once the gate uses the socket, after multi-user.target ({:.1}s)",
            s(docker),
            s(containerd),
            s(gate),
            s(multi_user)
        );
        let triggered = guest_sh(vm, "systemctl show -P TriggeredBy docker.service", CMD);
        assert!(triggered.contains("docker.socket"), "{triggered}");
        // and the gate found Docker answering once its ping had started it
        let verdict = guest_sh(
            vm,
            "journalctl -b -u cairn-health.service --no-pager -o cat",
            CMD,
        );
        assert!(
            verdict.lines().any(|l| l.starts_with("healthy: slot ")),
            "the health gate with a socket-activated Docker:\n{verdict}"
        );
        eprintln!(
            "multi-user.target at {:.1}s; the health gate started at {:.1}s, \
             socket-activated docker.service at {:.1}s, active at {:.1}s",
            s(multi_user),
            s(gate),
            s(docker),
            s(docker_up)
        );
    }
}

#[test]
fn images_boot_from_disk_and_diskless() {
    let work = tempfile::tempdir().unwrap();
    let full = default_image();
    // boots 1 and 2 share this disk: a qcow2 file over the default image
    // (a copy of the 4 GiB raw image would not stay sparse)
    let disk = work.path().join("disk.qcow2");
    cairn_qemu::vm::create_overlay(&full.join("disk.raw"), DiskFormat::Raw, &disk)
        .expect("qcow2 overlay over disk.raw");

    // --- 1. first boot from disk.raw under UEFI (persisted, so boot 2 sees it)
    let t = Instant::now();
    let mut vm = Vm::start(
        VmConfig::new("disk-boot")
            .uefi()
            .disk(&disk)
            .persist(true)
            .memory_mib(2048)
            .cpus(2)
            .forward_ssh(),
    )
    .expect("starting QEMU");
    vm.wait_for("cairn-init: root cairn-a", BOOT)
        .expect("/init found slot A");
    check_running_system(&mut vm, true);
    eprintln!("disk boot 1: running after {:.0?}", t.elapsed());
    check_loader_update(&mut vm);
    // /init's record of its module loads, carried over in /run: the NIC's
    // driver was loaded in the initramfs (so the booted system's udev finds
    // the card ready), each file system before its mount, nothing failed
    let rec = guest_sh(
        &mut vm,
        &format!("cat {}", cairn_initrd::boot::MODULES_RECORD),
        CMD,
    );
    let outcome = |m: &str| record_fields(&rec, m).map(|f| f[3..].join(" "));
    for m in [
        "virtio_net",
        "virtio_blk",
        "squashfs",
        "ext4",
        "vfat",
        "overlay",
    ] {
        assert_eq!(outcome(m).as_deref(), Some("loaded"), "{m} in:\n{rec}");
    }
    assert_eq!(outcome("loop"), None, "a disk boot loads no loop:\n{rec}");
    assert!(!rec.contains("failed"), "{rec}");
    // no user-data anywhere, and QEMU's SMBIOS names no cloud: the agent
    // asks no metadata service, so it never waits for the network (and
    // etcd, ordered after it, starts without waiting either)
    let ci = guest_sh(
        &mut vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        CMD,
    );
    assert!(
        ci.contains("platform QEMU") && ci.contains("no metadata service asked"),
        "{ci}"
    );
    assert!(!ci.contains("waiting for network-online"), "{ci}");
    // the agent runs beside sysinit.target, not after basic.target, so
    // that etcd (ordered after it) starts as soon as basic.target is
    // reached; and that ordering made no cycle systemd had to break
    let ci_after = guest_sh(
        &mut vm,
        "systemctl show -P After cairn-cloudinit.service",
        CMD,
    );
    assert!(
        !ci_after.contains("basic.target")
            && !ci_after.contains("sysinit.target")
            && ci_after.contains("systemd-sysusers.service")
            && ci_after.contains("local-fs.target"),
        "{ci_after}"
    );
    let etcd_after = guest_sh(&mut vm, "systemctl show -P After etcd.service", CMD);
    assert!(
        etcd_after.contains("cairn-cloudinit.service"),
        "{etcd_after}"
    );
    let cycles = guest_sh(
        &mut vm,
        // PID 1's own messages: the guest agent logs this very command
        "journalctl -b _PID=1 --no-pager -o cat | grep -i -A4 'ordering cycle' || true",
        CMD,
    );
    assert!(
        cycles.trim().is_empty(),
        "systemd broke an ordering cycle at boot:\n{cycles}"
    );
    // multi-user.target is not ordered after the netboot-only agents: a
    // start job waits for its After= units before its condition is checked,
    // so the installer, skipped here, held the boot until the network was
    // online when multi-user.target waited for it
    let after = guest_sh(&mut vm, "systemctl show -P After multi-user.target", CMD);
    assert!(
        after.contains("basic.target")
            && !after.contains("cairn-install.service")
            && !after.contains("cairn-report.service"),
        "{after}"
    );
    let var = guest_sh(&mut vm, "findmnt -n -o FSTYPE,SOURCE /var", CMD);
    assert!(var.starts_with("ext4"), "/var is {var}");
    // a bind mount of the state's var directory: SOURCE is `/dev/vda4[/var]`
    let dev = var
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('[')
        .next()
        .unwrap()
        .to_string();
    let label = guest_sh(&mut vm, &format!("lsblk -n -o PARTLABEL {dev}"), CMD);
    assert_eq!(label.trim(), "cairn-state");
    // grown to the end of the 4 GiB disk: it ends within 1 MiB of the
    // disk's end (the backup GPT and alignment take the rest)
    let part = dev.trim_start_matches("/dev/");
    let geo = guest_sh(&mut vm, &format!("cat /sys/class/block/vda/size /sys/class/block/{part}/start /sys/class/block/{part}/size"), CMD);
    let g: Vec<u64> = geo.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (disk_sectors, start, len) = (g[0], g[1], g[2]);
    assert!(
        start + len >= disk_sectors - 2048 && start + len <= disk_sectors - 33,
        "cairn-state was not grown to the disk's end: {geo}"
    );
    let fs_size = guest_sh(&mut vm, "df -B1 --output=size /var | tail -1", CMD);
    assert!(
        fs_size.trim().parse::<u64>().unwrap() > 1 << 30,
        "the ext4 on cairn-state is {fs_size} bytes"
    );
    let efi = guest_sh(&mut vm, "findmnt -n -o FSTYPE /efi", CMD);
    assert_eq!(efi.trim(), "vfat");
    guest_sh(
        &mut vm,
        "echo kept > /var/lib/cairn-test-mark && echo kept > /etc/cairn-test-mark && sync",
        CMD,
    );
    let host_key = guest_sh(&mut vm, "cat /etc/ssh/ssh_host_ed25519_key.pub", CMD);
    // everything boot 2 looks for is on the disk once `sync` returns (the
    // host keys, Docker's image store, the marks): the machine is killed
    // rather than shut down, which under TCG takes a minute or more
    guest_sh(&mut vm, "sync", CMD);
    vm.kill().unwrap();
    drop(vm);

    // --- 2. second boot of the same disk keeps /var, /etc and the host keys.
    // A decoy disk comes first (vda): it carries the same partition labels
    // and another system (the small image's root) in its cairn-a, but no
    // boot loader. The firmware boots the real disk (vdb); /init must take
    // the slot and the state from the disk systemd-boot came from, not
    // from the first disk with a partition labelled cairn-a.
    let small_root = test_image().join("rootfs.squashfs");
    let decoy = work.path().join("decoy.raw");
    let mut spec = cairn_disk::DiskSpec::new("decoy disk");
    spec.slot_a = Some(&small_root);
    cairn_disk::write_disk(&decoy, &spec).expect("writing the decoy disk");
    let mut vm = Vm::start(
        VmConfig::new("disk-boot-2")
            .uefi()
            .disk(&decoy)
            .disk(&disk)
            .boot_disk(1)
            .persist(true)
            .memory_mib(2048)
            .cpus(2)
            .user_net(),
    )
    .expect("starting QEMU");
    vm.wait_for("cairn-init: root cairn-a (/dev/vdb2)", BOOT)
        .expect("/init took slot A from the boot disk, vdb");
    check_running_system(&mut vm, true);
    assert_eq!(
        guest_sh(
            &mut vm,
            "cat /var/lib/cairn-test-mark /etc/cairn-test-mark",
            CMD
        ),
        "kept\nkept\n"
    );
    assert_eq!(
        guest_sh(&mut vm, "cat /etc/ssh/ssh_host_ed25519_key.pub", CMD),
        host_key,
        "host keys are kept"
    );
    // Docker kept the preloaded image in /var: it is not loaded again
    let preload = guest_sh(
        &mut vm,
        "journalctl -b -u cairn-preload-images --no-pager -o cat",
        CMD,
    );
    assert!(
        preload.contains("busybox:latest: already loaded (sha256:"),
        "cairn-preload-images on the second boot:\n{preload}"
    );
    vm.kill().unwrap();
    drop(vm);

    // --- 3. the small image: kernel + initrd directly, diskless
    let out = test_image();
    let small = work.path().join("small.qcow2");
    cairn_qemu::vm::create_overlay(&out.join("disk.raw"), DiskFormat::Raw, &small)
        .expect("qcow2 overlay over disk.raw");
    let cmdline =
        "cairn.slot=a cairn.state=tmpfs console=ttyS0,115200 cairn.debug systemd.gpt_auto=0";
    let mut vm = Vm::start(
        VmConfig::new("diskless")
            .kernel(out.join("vmlinuz"), Some(out.join("initrd.img")), cmdline)
            .disk(&small)
            .memory_mib(2048)
            .cpus(2)
            .user_net(),
    )
    .expect("starting QEMU");
    let line = vm
        .wait_for("switching to /sbin/init", BOOT)
        .expect("/init hands over");
    eprintln!("diskless: {line}");
    check_running_system(&mut vm, false);
    let var = guest_sh(&mut vm, "findmnt -n -o FSTYPE /var", CMD);
    assert_eq!(var.trim(), "tmpfs", "diskless /var");
    // No loader named the disk: /init loads q35's AHCI driver to see every
    // disk, and the file systems it will mount load on a second thread
    // meanwhile (each starts before ahci's load has ended), not after it;
    // a tmpfs state needs no ext4
    let rec = guest_sh(
        &mut vm,
        &format!("cat {}", cairn_initrd::boot::MODULES_RECORD),
        CMD,
    );
    let times = |m: &str| -> (f64, f64) {
        let f = record_fields(&rec, m).unwrap_or_else(|| panic!("no {m} in:\n{rec}"));
        assert_eq!(f.get(3), Some(&"loaded"), "{m} in:\n{rec}");
        let (end, took): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        (end - took, end)
    };
    let (_, ahci_end) = times("ahci");
    for m in ["squashfs", "overlay", "vfat"] {
        let (start, _) = times(m);
        assert!(start < ahci_end, "{m} waited for ahci:\n{rec}");
    }
    assert!(
        !rec.lines().any(|l| l.starts_with("ext4 ")),
        "ext4 for a tmpfs state:\n{rec}"
    );
    vm.kill().unwrap();
    drop(vm);

    // --- 4. a damaged slot: /init explains and reboots
    let info = cairn_disk::inspect(&out.join("disk.raw")).unwrap();
    let slot = info
        .partitions
        .iter()
        .find(|p| p.name == "cairn-a")
        .unwrap();
    let broken = work.path().join("broken.qcow2");
    cairn_qemu::vm::create_overlay(&out.join("disk.raw"), DiskFormat::Raw, &broken)
        .expect("qcow2 overlay over disk.raw");
    // the squashfs superblock is gone
    let zero = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -z {} 1M", slot.offset()))
        .arg(&broken)
        .output()
        .expect("running qemu-io (Debian package qemu-utils)");
    assert!(zero.status.success(), "qemu-io: {zero:?}");
    let mut vm = Vm::start(
        VmConfig::new("broken-slot")
            .kernel(
                out.join("vmlinuz"),
                Some(out.join("initrd.img")),
                "cairn.slot=a console=ttyS0,115200",
            )
            .disk(&broken)
            .memory_mib(1024)
            .no_reboot(true),
    )
    .expect("starting QEMU");
    let fatal = vm
        .wait_for("cairn-init: FATAL:", BOOT)
        .expect("/init reports the damaged slot");
    assert!(
        fatal.contains("cairn-a") && fatal.contains("squashfs"),
        "{fatal}"
    );
    // with -no-reboot, the reboot /init asks for makes QEMU exit
    vm.wait_exit(Duration::from_secs(60))
        .expect("/init reboots after the FATAL line");

    drop(vm);

    // --- 5. no slot partition: /init names what it waited for and reboots
    let blank = work.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut vm = Vm::start(
        VmConfig::new("missing-slot")
            .kernel(
                out.join("vmlinuz"),
                Some(out.join("initrd.img")),
                "cairn.slot=b cairn.timeout=5 console=ttyS0,115200",
            )
            .disk(&blank)
            .memory_mib(1024)
            .no_reboot(true),
    )
    .expect("starting QEMU");
    let fatal = vm
        .wait_for("cairn-init: FATAL:", BOOT)
        .expect("/init reports the missing slot");
    assert!(
        fatal.contains("no partition labelled cairn-b") && fatal.contains("5s"),
        "{fatal}"
    );
    vm.wait_exit(Duration::from_secs(60))
        .expect("/init reboots after the FATAL line");
}
