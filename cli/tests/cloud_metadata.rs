//! QEMU test (TCG) of the EC2 metadata data source, in network namespaces
//! this test makes: a LAN (a bridge) with
//!
//! * `dhcp` (192.0.2.2): Debian's dnsmasq, handing out addresses with
//!   192.0.2.1 as the router;
//! * `cairn` (192.0.2.1): the router, which also holds 169.254.169.254,
//!   where a metadata server of this test's own (IMDSv2: a session token,
//!   then GETs that must carry it) listens on port 80, on that address
//!   only. It runs as this test binary itself, started again inside the
//!   namespace (`metadata_server_child_process`);
//! * one QEMU machine on a tap device, booted from the small test image's
//!   disk with no cloud-config anywhere else: no `cloud-config-url=`, no
//!   user-data on its state partition, no config drive.
//!
//! `cairn-cloudinit` at boot finds nothing local, asks 169.254.169.254
//! (through its default route, as on EC2), and applies what it gets: the
//! hostname from `meta-data/hostname`, `$private_ipv4` from `local-ipv4`
//! (the server answers the address the request came from) and
//! `$public_ipv4` from `public-ipv4` in a `write_files` entry, and the key
//! from `public-keys/0/openssh-key`, with which `core` then logs in over
//! SSH from the router. One boot. DigitalOcean's metadata API, which lives
//! at the same address, cannot be proven in the same boot; the agent's
//! integration test (`cloudinit/tests/cloud_metadata.rs`) proves it with
//! the real binary.
//!
//! Needs root (network namespaces, tap devices), iproute2, dnsmasq,
//! openssh-client and curl; without root it says so and passes.

#[path = "../../cloudinit/tests/support/fake_cloud.rs"]
mod fake_cloud;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};
use common::lan::{read, require, run, Lan, CAIRN_IP};
use common::{guest_sh, test_image, wait_cloudinit};
use fake_cloud::{FakeCloud, TOKEN_HEADER, TTL_HEADER};

const BOOT: Duration = Duration::from_secs(600);
const CMD: Duration = Duration::from_secs(90);
/// The metadata service's address, as on EC2.
const METADATA_IP: &str = "169.254.169.254";
/// Tells the test binary it is the metadata server child, and where its
/// files are.
const CHILD_ENV: &str = "CAIRN_TEST_METADATA_DIR";
const TOKEN: &str = "AQAEAcairn-test-token==";
const HOSTNAME: &str = "md-node1.cairn.internal";
const PUBLIC_IPV4: &str = "203.0.113.7";
const USER_DATA: &str = "#cloud-config\nwrite_files:\n  - path: /etc/cairn-test/addrs\n    content: |\n      private=$private_ipv4 public=$public_ipv4\n";

#[test]
fn cloud_config_and_instance_facts_from_an_ec2_metadata_service() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "skipping cloud_metadata: needs root (network namespaces, a tap device and a server on {METADATA_IP}:80)"
        );
        return;
    }
    for (tool, package) in [
        ("ssh-keygen", "openssh-client"),
        ("ssh", "openssh-client"),
        ("dnsmasq", "dnsmasq-base"),
    ] {
        require(tool, package);
    }
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // core's key pair
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-md-test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(dir.join("pubkey"), pubkey.trim()).unwrap();

    let mut lan = Lan::new("md", &["tap0"], dir);
    let cairn_ns = lan.ns("cairn");
    // the router holds the metadata address, on its LAN interface
    run(
        "ip",
        &[
            "-n",
            &cairn_ns,
            "addr",
            "add",
            &format!("{METADATA_IP}/32"),
            "dev",
            "eth0",
        ],
    );
    let dhcp_args = [
        "dnsmasq".to_string(),
        "--keep-in-foreground".into(),
        "--log-facility=-".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--interface=eth0".into(),
        "--bind-interfaces".into(),
        "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m".into(),
        format!("--dhcp-option=option:router,{CAIRN_IP}"),
        format!("--dhcp-leasefile={}", lan.leases.display()),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        "--log-dhcp".into(),
    ];
    let argv: Vec<&str> = dhcp_args.iter().map(String::as_str).collect();
    lan.spawn("dnsmasq", "dhcp", &argv, &dir.join("dnsmasq.log"));

    // the metadata server: this binary again, inside the router's namespace
    let exe = std::env::current_exe().unwrap();
    let env = format!("{CHILD_ENV}={}", dir.display());
    lan.spawn(
        "metadata server",
        "cairn",
        &[
            "env",
            &env,
            exe.to_str().unwrap(),
            "--exact",
            "metadata_server_child_process",
            "--nocapture",
            "--test-threads=1",
        ],
        &dir.join("metadata-server.log"),
    );
    let t = Instant::now();
    while !dir.join("ready").exists() {
        lan.check_alive();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the metadata server did not start:\n{}",
            read(&dir.join("metadata-server.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let cmdline = "cairn.slot=a console=ttyS0,115200 systemd.gpt_auto=0";
    let t = Instant::now();
    let mut vm = Vm::start(
        VmConfig::new("cloud-metadata")
            .kernel(out.join("vmlinuz"), Some(out.join("initrd.img")), cmdline)
            .disk(out.join("disk.raw"))
            .netns(lan.ns("lan"))
            .tap("tap0")
            .memory_mib(2048)
            .cpus(2)
            // the firmware's SMBIOS says EC2, as on a Nitro instance: with no
            // cairn.metadata= on the command line, the agent asks the EC2
            // service because of it (a plain QEMU machine asks none)
            .args(["-smbios", "type=1,manufacturer=Amazon EC2,product=t3.micro"]),
    )
    .expect("starting QEMU");
    vm.wait_guest_agent(BOOT).expect("the guest agent answers");
    wait_cloudinit(&mut vm, 300);
    eprintln!("booted and configured after {:?}", t.elapsed());
    let journal = guest_sh(
        &mut vm,
        "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        CMD,
    );
    let requests = read(&dir.join("requests.log"));
    let context = format!(
        "journal:\n{journal}\nrequests:\n{requests}\nmetadata server:\n{}\ndnsmasq:\n{}",
        read(&dir.join("metadata-server.log")),
        read(&dir.join("dnsmasq.log"))
    );
    assert!(
        journal.contains("platform Amazon EC2: asking EC2 metadata service"),
        "{context}"
    );
    assert!(
        journal.contains(&format!(
            "data source: EC2 metadata service http://{METADATA_IP} (IMDSv2)"
        )),
        "{context}"
    );
    let status = guest_sh(&mut vm, "cat /run/cairn/cloudinit.status", CMD);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], "applied", "{status}\n{context}");

    // the hostname: meta-data/hostname's first label
    assert_eq!(
        guest_sh(&mut vm, "hostname", CMD).trim(),
        "md-node1",
        "{context}"
    );
    // $private_ipv4 is local-ipv4, the guest's own DHCP address;
    // $public_ipv4 is public-ipv4, which the guest cannot know otherwise
    let guest_ip = guest_sh(
        &mut vm,
        "ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1",
        CMD,
    )
    .trim()
    .to_string();
    assert!(guest_ip.starts_with("192.0.2."), "{guest_ip}\n{context}");
    assert_eq!(
        guest_sh(&mut vm, "cat /etc/cairn-test/addrs", CMD),
        format!("private={guest_ip} public={PUBLIC_IPV4}\n"),
        "{context}"
    );
    // the key landed in core's authorized keys
    let keys = guest_sh(&mut vm, "cat /home/core/.ssh/authorized_keys", CMD);
    assert!(keys.contains(pubkey.trim()), "{keys}\n{context}");

    // the conversation: the token first, asked with a TTL; every GET carried it
    let lines: Vec<&str> = requests.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("PUT /latest/api/token ttl=yes")),
        "{context}"
    );
    for l in lines.iter().filter(|l| l.starts_with("GET ")) {
        assert!(l.contains(" token=yes"), "{l}\n{context}");
    }
    for want in [
        "GET /latest/user-data ",
        "GET /latest/meta-data/local-ipv4 ",
        "GET /latest/meta-data/public-ipv4 ",
        "GET /latest/meta-data/hostname ",
        "GET /latest/meta-data/public-keys/0/openssh-key ",
    ] {
        assert!(requests.contains(want), "{want}\n{context}");
    }
    assert!(requests.contains(&format!("from={guest_ip}")), "{context}");
    // how long the agent spent on the metadata service
    if let Some(l) = journal.lines().find(|l| l.contains("data source: EC2")) {
        eprintln!("agent: {l}");
    }

    // core logs in with the key, from the router (once sshd listens)
    guest_sh(
        &mut vm,
        "for i in $(seq 90); do ss -ltnH 'sport = :22' | grep -q . && exit 0; sleep 1; done; \
         systemctl status ssh --no-pager; exit 1",
        CMD,
    );
    let ssh = lan.exec(
        "cairn",
        &[
            "ssh",
            "-i",
            key.to_str().unwrap(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            &format!("core@{guest_ip}"),
            "hostname",
        ],
    );
    assert!(
        ssh.status.success(),
        "ssh core@{guest_ip}: {}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ssh.stdout).trim(), "md-node1");
    vm.kill().unwrap();
    lan.check_alive();
}

/// Not a test of its own: the metadata server, when the test above starts
/// this binary again inside the router's namespace (with [`CHILD_ENV`]
/// set). It serves until it is killed, and writes `ready` once it listens
/// and `requests.log` as requests come.
#[test]
fn metadata_server_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let key = std::fs::read_to_string(dir.join("pubkey")).unwrap();
    let s = FakeCloud::start(&format!("{METADATA_IP}:80"), Some(TOKEN));
    s.ec2_instance(Some(USER_DATA), HOSTNAME, Some(PUBLIC_IPV4), &[key.trim()]);
    std::fs::write(dir.join("ready"), "").unwrap();
    eprintln!("metadata server on {}", s.base());
    let mut written = 0;
    loop {
        let reqs = s.requests();
        if reqs.len() != written {
            written = reqs.len();
            write_log(&dir, &reqs);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_log(dir: &Path, reqs: &[fake_cloud::Request]) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let text: String = reqs
        .iter()
        .map(|r| {
            format!(
                "{} {} ttl={} token={} from={}\n",
                r.method,
                r.path,
                yes(r.header(TTL_HEADER).is_some()),
                yes(r.header(TOKEN_HEADER) == Some(TOKEN)),
                r.peer
            )
        })
        .collect();
    let tmp = dir.join("requests.log.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("requests.log")).unwrap();
}
