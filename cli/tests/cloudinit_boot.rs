//! QEMU test of the cloud-config agent (TCG): an image booted from its disk
//! with `cloud-config-url=` on the kernel command line, the URL served by a
//! small HTTP server in this test (reached from the guest through a slirp
//! guest forward).
//!
//! 1. The default image (Docker and etcd are the point) with a CoreOS-style
//!    config (hostname, SSH key, write_files, etcd2 with
//!    `$private_ipv4`, `etcd.service` and `fleet.service` with
//!    `command: start`, a `MyApp` unit running `docker run busybox`):
//!    hostname set, `core` logs in over SSH with the key, files have owner
//!    and mode, MyApp's journal says `Hello World`, etcd runs with the
//!    name and URLs from `coreos.etcd2`, the missing fleet unit is
//!    reported and the rest applied.
//! 2. The small test image with a config with an error: the machine boots, the agent logs the
//!    finding with its line, and nothing of the config is applied.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_qemu::{Vm, VmConfig};
use cairn_testkit::StaticHttp;

mod common;
use common::{default_image, guest_sh, test_image, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(90);
/// The port the guest uses for the test's HTTP server (10.0.2.100:80).
const GUEST_HTTP: u16 = 80;

fn boot(name: &str, out: &Path, disk: &Path, url: &str, http_port: u16) -> Vm {
    let cmdline =
        format!("cairn.slot=a console=ttyS0,115200 systemd.gpt_auto=0 cloud-config-url={url}");
    let mut vm = Vm::start(
        VmConfig::new(name)
            .kernel(out.join("vmlinuz"), Some(out.join("initrd.img")), &cmdline)
            .disk(disk)
            .memory_mib(2048)
            .cpus(2)
            .forward_ssh()
            .guest_forward(GUEST_HTTP, http_port),
    )
    .expect("starting QEMU");
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    // the agent has run (successfully or not) once its unit is no longer activating
    wait_cloudinit(&mut vm, 240);
    vm
}

#[test]
fn cloud_config_from_url_is_applied_and_a_bad_one_is_not() {
    let out = default_image();
    let work = tempfile::tempdir().unwrap();

    // an SSH key pair for core
    let key = work.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (Debian package openssh-client) must be installed");
    assert!(st.success());
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let good = format!(
        r#"#cloud-config
hostname: node1
ssh_authorized_keys:
  - {pubkey}
write_files:
  - path: /etc/cairn-test/plain.conf
    owner: core:core
    permissions: '0640'
    content: |
      plain text
  - path: /etc/cairn-test/encoded
    encoding: b64
    content: aGVsbG8gYmFzZTY0Cg==
coreos:
  etcd2:
    name: node1
    advertise-client-urls: http://$private_ipv4:2379
    listen-client-urls: http://0.0.0.0:2379
    initial-advertise-peer-urls: http://$private_ipv4:2380
    listen-peer-urls: http://$private_ipv4:2380
    initial-cluster: node1=http://$private_ipv4:2380
  update:
    reboot-strategy: off
  units:
    - name: etcd.service
      command: start
    - name: fleet.service
      command: start
    - name: myapp.service
      command: start
      content: |
        [Unit]
        Description=MyApp
        After=docker.service cairn-preload-images.service
        Requires=docker.service

        [Service]
        TimeoutStartSec=0
        ExecStartPre=-/usr/bin/docker rm -f busybox1
        ExecStart=/usr/bin/docker run --name busybox1 --network none busybox /bin/sh -c "while true; do echo Hello World; sleep 1; done"
"#,
        pubkey = pubkey.trim()
    );
    let bad = "#cloud-config\nhostname: must-not-be-set\ncoreos:\n  update:\n    reboot-strategy: sometimes\n";
    let server = StaticHttp::start([("/good", good.as_str()), ("/bad", bad)]);

    // --- 1. the good config
    // the harness puts a qcow2 overlay over it: the image stays untouched
    let disk = out.join("disk.raw");
    let url = format!("http://10.0.2.100:{GUEST_HTTP}/good");
    let mut vm = boot("cloudinit-good", &out, &disk, &url, server.port());
    assert!(
        server.requests().iter().any(|p| p == "/good"),
        "the agent never fetched the config"
    );
    let journal = guest_sh(
        &mut vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        CMD,
    );
    // a URL source waits for the network itself (the unit is not ordered
    // after network-online.target)
    assert!(
        journal.contains("waiting for network-online.target: the cloud-config URL")
            && journal.contains("network online after"),
        "{journal}"
    );
    assert_eq!(
        guest_sh(&mut vm, "hostname", CMD).trim(),
        "node1",
        "{journal}"
    );
    // the missing fleet unit is reported, the rest applied
    assert!(journal.contains("fleet.service"), "{journal}");

    // core logs in over SSH with the key from the config (once sshd,
    // started after its first-boot host keys, listens)
    guest_sh(
        &mut vm,
        "for i in $(seq 60); do ss -ltnH 'sport = :22' | grep -q . && exit 0; sleep 1; done; \
         systemctl status ssh --no-pager; exit 1",
        CMD,
    );
    let port = vm.ssh_port().unwrap();
    let ssh = Command::new("ssh")
        .args([
            "-i",
            key.to_str().unwrap(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=60",
            "-p",
            &port.to_string(),
            "core@127.0.0.1",
            "id -un; hostname",
        ])
        .output()
        .expect("ssh (Debian package openssh-client) must be installed");
    assert!(
        ssh.status.success(),
        "ssh as core: {}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ssh.stdout), "core\nnode1\n");

    // write_files: owner, mode, decoded content
    assert_eq!(
        guest_sh(
            &mut vm,
            "stat -c '%U:%G %a' /etc/cairn-test/plain.conf",
            CMD
        )
        .trim(),
        "core:core 640"
    );
    assert_eq!(
        guest_sh(
            &mut vm,
            "cat /etc/cairn-test/plain.conf /etc/cairn-test/encoded",
            CMD
        ),
        "plain text\nhello base64\n"
    );
    assert!(guest_sh(&mut vm, "cat /etc/cairn/update.conf", CMD).contains("REBOOT_STRATEGY=off"));

    // MyApp runs busybox under Docker and logs Hello World
    let hello = guest_sh(
        &mut vm,
        "for i in $(seq 120); do journalctl -u myapp.service --no-pager -o cat | grep -m1 'Hello World' && exit 0; sleep 1; done; \
         systemctl status myapp.service --no-pager; exit 1",
        CMD,
    );
    assert!(hello.contains("Hello World"));

    // etcd with the name and URLs from coreos.etcd2 ($private_ipv4 = slirp's 10.0.2.15)
    guest_sh(
        &mut vm,
        "e='etcdctl --dial-timeout=1s --command-timeout=2s'; \
         for i in $(seq 25); do $e member list 2>/dev/null | grep -q node1 && exit 0; sleep 1; done; \
         systemctl status etcd --no-pager; cat /run/systemd/system/etcd.service.d/20-cloudinit.conf; exit 1",
        CMD,
    );
    let members = guest_sh(&mut vm, "etcdctl member list", CMD);
    assert!(
        members.contains("node1")
            && members.contains("http://10.0.2.15:2380")
            && members.contains("http://10.0.2.15:2379"),
        "etcdctl member list: {members}"
    );
    vm.kill().unwrap();
    drop(vm);

    // --- 2. a config with an error: findings logged, nothing applied
    let url = format!("http://10.0.2.100:{GUEST_HTTP}/bad");
    let small = test_image();
    let disk = small.join("disk.raw");
    let mut vm = boot("cloudinit-bad", &small, &disk, &url, server.port());
    let journal = guest_sh(
        &mut vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        CMD,
    );
    assert!(
        journal.contains("5") && journal.contains("invalid value") && journal.contains("sometimes"),
        "the finding (line 5, invalid value) is logged:\n{journal}"
    );
    assert_ne!(guest_sh(&mut vm, "hostname", CMD).trim(), "must-not-be-set");
    guest_sh(&mut vm, "test ! -e /etc/cairn/update.conf", CMD);
    // and the machine is up
    let state = vm
        .guest_exec(&["systemctl", "is-system-running", "--wait"], BOOT)
        .unwrap();
    let state = state.stdout_str();
    assert!(
        state.trim() == "running" || state.trim() == "degraded",
        "{state}"
    );
    vm.kill().unwrap();
}
