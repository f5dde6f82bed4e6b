//! QEMU netboot through `cairn serve` (TCG, QEMU user networking): the
//! server runs in this test on 127.0.0.1; the guest reaches it as
//! `10.0.2.100:8080` (a slirp guest forward), and slirp's DHCP hands iPXE
//! (QEMU's NIC option ROM) the boot file `http://10.0.2.100:8080/boot.ipxe`.
//!
//! 1. UEFI (OVMF), a MAC the inventory knows: iPXE takes `/boot.ipxe`, its
//!    machine script, the kernel and `pxe-initrd.img` over HTTP; `/init`
//!    mounts the root image from RAM (diskless); `cairn-cloudinit` fetches
//!    the machine's rendered cloud-config from the server: its hostname and
//!    file are there; the server's machine table followed every stage.
//! 2. Legacy BIOS (SeaBIOS), a MAC no group matches: the console shows the
//!    server's message and iPXE retries; no kernel is ever served to it.

use std::time::Duration;

use cairn_pxe::{Server, ServerConfig, Stage};
use cairn_qemu::{Vm, VmConfig};

mod common;
use common::{guest_sh, test_image};

const BOOT: Duration = Duration::from_secs(420);
const CMD: Duration = Duration::from_secs(60);
const GUEST_HTTP: u16 = 8080;

fn sh(vm: &mut Vm, script: &str) -> String {
    guest_sh(vm, script, CMD)
}

#[test]
fn netboot_through_cairn_serve() {
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(
        dir.join("node.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.hostname }}\nwrite_files:\n  - path: /etc/cairn/role\n    content: |\n      role={{ metadata.role }} group={{ group }} mac={{ mac }}\n",
    )
    .unwrap();
    let inventory = format!(
        "profiles:\n  - name: diskless\n    image: {}\n    boot: ram\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: node.yaml.j2\ngroups:\n  - name: node-a\n    profile: diskless\n    selector:\n      mac: 52:54:00:00:0a:01\n    metadata:\n      hostname: node-a\n      role: etcd\n",
        out.display()
    );
    let inv_path = dir.join("lab.yaml");
    std::fs::write(&inv_path, inventory).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(Server::start(ServerConfig {
            config: inv_path,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            tftp_addr: None,
            ipxe_dir: out.join("ipxe"),
            public_url: Some(format!("http://10.0.2.100:{GUEST_HTTP}")),
            reload_on_sighup: false,
        }))
        .expect("starting cairn serve");
    let http = server.local_addrs().http.port();
    // slirp's TFTP root (unused: the boot file is a URL) must exist
    let tftp_root = dir.join("tftp");
    std::fs::create_dir(&tftp_root).unwrap();
    let bootfile = format!("http://10.0.2.100:{GUEST_HTTP}/boot.ipxe");

    // --- 1. UEFI, a known MAC: diskless boot with its own cloud-config
    let mut vm = Vm::start(
        VmConfig::new("netboot-uefi")
            .uefi()
            .netboot(&tftp_root, &bootfile)
            .mac("52:54:00:00:0a:01")
            .guest_forward(GUEST_HTTP, http)
            .memory_mib(3072)
            .cpus(2),
    )
    .expect("starting QEMU");
    vm.wait_for("cairn-init:", BOOT)
        .expect("the kernel and /init came over the network");
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    sh(
        &mut vm,
        "for i in $(seq 50); do s=$(systemctl show -P ActiveState cairn-cloudinit.service); \
         [ \"$s\" = active ] || [ \"$s\" = failed ] && exit 0; sleep 1; done; exit 1",
    );
    let journal = sh(
        &mut vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
    );
    assert_eq!(sh(&mut vm, "hostname").trim(), "node-a", "{journal}");
    assert_eq!(
        sh(&mut vm, "cat /etc/cairn/role"),
        "role=etcd group=node-a mac=52:54:00:00:0a:01\n"
    );
    let root = sh(&mut vm, "findmnt -n -o FSTYPE,SOURCE /");
    assert!(
        root.starts_with("squashfs") && root.contains("loop"),
        "/ is {root}"
    );
    assert_eq!(sh(&mut vm, "findmnt -n -o FSTYPE /var").trim(), "tmpfs");
    assert!(sh(&mut vm, "cat /proc/cmdline").contains("cairn.root=ram"));
    let state = vm
        .guest_exec(&["systemctl", "is-system-running", "--wait"], BOOT)
        .unwrap();
    assert_eq!(
        state.stdout_str().trim(),
        "running",
        "{}",
        sh(&mut vm, "systemctl --failed --no-legend")
    );
    vm.kill().unwrap();
    drop(vm);
    let machines = server.machines();
    let m = machines
        .iter()
        .find(|m| m.mac.as_deref() == Some("52:54:00:00:0a:01"))
        .unwrap_or_else(|| panic!("the server never saw the machine: {machines:?}"));
    assert_eq!(m.group.as_deref(), Some("node-a"));
    assert_eq!(m.stage, Stage::CloudConfig, "{m:?}");

    // --- 2. BIOS, a MAC no group matches: a message and a retry, no image
    let mut vm = Vm::start(
        VmConfig::new("netboot-unknown")
            .bios()
            .netboot(&tftp_root, &bootfile)
            .mac("52:54:00:00:0b:02")
            .guest_forward(GUEST_HTTP, http)
            .memory_mib(512),
    )
    .expect("starting QEMU");
    let line = vm
        .wait_for("cairn: no group matches", Duration::from_secs(180))
        .expect("the server's message on the console");
    assert!(
        line.contains("52:54:00:00:0b:02") || line.contains("52-54-00-00-0b-02"),
        "{line}"
    );
    vm.kill().unwrap();
    let log = vm.serial_log();
    assert!(
        !log.contains("Linux version"),
        "an unknown machine booted a kernel"
    );
    let machines = server.machines();
    let m = machines
        .iter()
        .find(|m| m.mac.as_deref() == Some("52:54:00:00:0b:02"))
        .unwrap_or_else(|| panic!("the server never saw the unknown machine: {machines:?}"));
    assert_eq!(m.group, None);
    assert_eq!(m.stage, Stage::Seen);
    rt.block_on(server.shutdown()).unwrap();
}
