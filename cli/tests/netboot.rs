//! QEMU netboot through `cairn serve` (TCG, QEMU user networking): the
//! server runs in this test on 127.0.0.1; the guest reaches it as
//! `10.0.2.100:8080` (a slirp guest forward), and slirp's DHCP hands iPXE
//! (QEMU's NIC option ROM) the boot file `http://10.0.2.100:8080/boot.ipxe`.
//!
//! 1. UEFI (OVMF), a MAC the inventory knows: iPXE takes `/boot.ipxe`, its
//!    machine script, the kernel and `pxe-initrd.img` over HTTP; `/init`
//!    mounts the root image from RAM (diskless) through dm-verity on its
//!    loop device, with the root hash of the image's manifest that the
//!    machine script names (Debian's `dmsetup table` on the machine: the
//!    `verity` target over the loop device); `cairn-cloudinit` fetches
//!    the machine's rendered cloud-config from the server: its hostname and
//!    file are there; the server's machine table followed every stage.
//! 2. Legacy BIOS (SeaBIOS), another known MAC: the same path to a running
//!    system; each of the two machines has its own hostname and SSH key from
//!    its own group, checked inside each VM.
//! 3. Legacy BIOS, a MAC no group matches: the console shows the server's
//!    message and iPXE retries; no kernel is ever served to it.

use std::time::Duration;

use cairn_formats::verity::Verity;
use cairn_pxe::{Server, ServerConfig, Stage};
use cairn_qemu::{Firmware, Vm, VmConfig};

mod common;
use common::verity::{dmsetup_table, image_verity};
use common::{assert_running, guest_sh, test_image, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(420);
const CMD: Duration = Duration::from_secs(60);
const GUEST_HTTP: u16 = 8080;

/// Public halves of two throwaway ed25519 keys (`ssh-keygen -t ed25519`).
const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICX5qoqdSrprZZQOxMfpmUG1hoKVTD5zAM5lelsJIUav";
const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIMdHFZLt67LHrYrSdIV4SsSAqLBdfFVl+FOFncX5mnPx";

/// A machine the inventory knows came up diskless from the network,
/// its root image through dm-verity with `verity`, with its own group's
/// cloud-config applied.
fn check_known_machine(vm: &mut Vm, mac: &str, host: &str, role: &str, key: &str, verity: &Verity) {
    let line = vm.wait_for("through dm-verity as", BOOT).expect(
        "the kernel and /init came over the network; /init opens the image through dm-verity",
    );
    assert!(
        line.contains("/dev/loop")
            && line.contains(&verity.root_hash_hex())
            && line.contains("EIO"),
        "{line}"
    );
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    wait_cloudinit(vm, 50);
    let journal = guest_sh(
        vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        CMD,
    );
    assert_eq!(guest_sh(vm, "hostname", CMD).trim(), host, "{journal}");
    assert_eq!(
        guest_sh(vm, "cat /etc/cairn/role", CMD),
        format!("role={role} group={host} mac={mac}\n")
    );
    let keys = guest_sh(vm, "cat /home/core/.ssh/authorized_keys", CMD);
    assert!(keys.contains(key), "{host}'s authorized_keys: {keys}");
    for other in [KEY_A, KEY_B].into_iter().filter(|k| *k != key) {
        assert!(!keys.contains(other), "{host} got another machine's key");
    }
    let root = guest_sh(vm, "findmnt -n -o FSTYPE,SOURCE /", CMD);
    assert!(
        root.starts_with("squashfs")
            && (root.contains("/dev/mapper/cairn-root") || root.contains("/dev/dm-0")),
        "/ is {root}"
    );
    let dm = guest_sh(
        vm,
        "cat /sys/block/dm-0/dm/name; ls /sys/block/dm-0/slaves",
        CMD,
    );
    assert!(dm.contains("cairn-root") && dm.contains("loop"), "{dm}");
    let table = dmsetup_table(vm, "cairn-root");
    let want = format!("0 {} verity 1 7:", verity.data_sectors());
    let params = format!(
        " 4096 4096 {} {} sha256 {} {}",
        verity.data_blocks,
        verity.hash_start_block(),
        verity.root_hash_hex(),
        verity.salt_hex()
    );
    assert!(
        table.starts_with(&want) && table.contains(&params),
        "dmsetup table: {table}"
    );
    assert_eq!(
        guest_sh(vm, "findmnt -n -o FSTYPE /var", CMD).trim(),
        "tmpfs"
    );
    assert!(guest_sh(vm, "cat /proc/cmdline", CMD).contains("cairn.root=ram"));
    assert_running(vm, BOOT);
}

#[test]
fn netboot_through_cairn_serve() {
    cairn_testkit::require("dmsetup", "dmsetup");
    let out = test_image();
    let verity = image_verity(&out);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(
        dir.join("node.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.hostname }}\nssh_authorized_keys:\n  - {{ metadata.ssh_key }}\nwrite_files:\n  - path: /etc/cairn/role\n    content: |\n      role={{ metadata.role }} group={{ group }} mac={{ mac }}\n",
    )
    .unwrap();
    let inventory = format!(
        "profiles:\n  - name: diskless\n    image: {}\n    boot: ram\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: node.yaml.j2\ngroups:\n  - name: node-a\n    profile: diskless\n    selector:\n      mac: 52:54:00:00:0a:01\n    metadata:\n      hostname: node-a\n      role: etcd\n      ssh_key: ssh-ed25519 {KEY_A} a@test\n  - name: node-b\n    profile: diskless\n    selector:\n      mac: 52:54:00:00:0a:02\n    metadata:\n      hostname: node-b\n      role: worker\n      ssh_key: ssh-ed25519 {KEY_B} b@test\n",
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
            state_dir: dir.join("state"),
            proxy_dhcp: None,
            store: None,
            admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        }))
        .expect("starting cairn serve");
    let http = server.local_addrs().http.port();
    // slirp's TFTP root (unused: the boot file is a URL) must exist
    let tftp_root = dir.join("tftp");
    std::fs::create_dir(&tftp_root).unwrap();
    let bootfile = format!("http://10.0.2.100:{GUEST_HTTP}/boot.ipxe");

    // --- 1. UEFI and 2. BIOS, two known MACs: diskless, each with its own config
    for (firmware, mac, host, role, key) in [
        (Firmware::Uefi, "52:54:00:00:0a:01", "node-a", "etcd", KEY_A),
        (
            Firmware::Bios,
            "52:54:00:00:0a:02",
            "node-b",
            "worker",
            KEY_B,
        ),
    ] {
        let config = VmConfig::new(format!("netboot-{host}"))
            .netboot(&tftp_root, &bootfile)
            .mac(mac)
            .guest_forward(GUEST_HTTP, http)
            .memory_mib(3072)
            .cpus(2)
            .firmware(firmware);
        let mut vm = Vm::start(config).expect("starting QEMU");
        check_known_machine(&mut vm, mac, host, role, key, &verity);
        vm.kill().unwrap();
        drop(vm);
        let machines = server.machines();
        let m = machines
            .iter()
            .find(|m| m.mac.as_deref() == Some(mac))
            .unwrap_or_else(|| panic!("the server never saw {mac}: {machines:?}"));
        assert_eq!(m.group.as_deref(), Some(host));
        assert_eq!(m.stage, Stage::CloudConfig, "{m:?}");
    }

    // --- 3. BIOS, a MAC no group matches: a message and a retry, no image
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
