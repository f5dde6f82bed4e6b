//! The bare-metal netboot path, in network namespaces this test makes: a
//! LAN (a bridge) with three hosts on it, as a site would have them:
//!
//! * `dhcp` (192.0.2.2): Debian's dnsmasq as the site's plain DHCP server,
//!   with no PXE options at all;
//! * `cairn` (192.0.2.1): the real `cairn serve` binary with
//!   `--proxy-dhcp`, TFTP on the standard port 69 and HTTP on 8080;
//! * two QEMU machines on tap devices, one BIOS (SeaBIOS) and one UEFI
//!   (OVMF), each with QEMU's iPXE ROM, booted one after the other.
//!
//! Each machine gets its address from dnsmasq and its boot file from cairn's
//! ProxyDHCP answer (iPXE is sent straight to `/boot.ipxe`); its profile
//! says `transport: tftp`, so iPXE fetches the kernel and `pxe-initrd.img`
//! (hundreds of MB) from cairn's TFTP with option negotiation. Each boots
//! diskless to a running system configured by its own group's cloud-config.
//! On the side, a TFTP client on the `dhcp` host fetches `undionly.kpxe`
//! byte-exact from port 69 and is refused a path outside the root.
//!
//! Needs root, iproute2, dnsmasq and atftp (`.ci/run` installs them).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_qemu::{Vm, VmConfig};

mod common;
use common::{assert_running, guest_sh, test_image, wait_cloudinit};

const BOOT: Duration = Duration::from_secs(900);
const CMD: Duration = Duration::from_secs(60);
const CAIRN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DHCP_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Firmware, MAC, the group (and hostname) the inventory gives it, tap device.
const MACHINES: [(&str, &str, &str, &str); 2] = [
    ("bios", "52:54:00:00:0c:01", "rack1-node1", "tap0"),
    ("uefi", "52:54:00:00:0c:02", "rack1-node2", "tap1"),
];

/// Runs `program args...`, panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (Debian package iproute2?)"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found: install the Debian package `{package}`"
    );
}

/// The namespaces and processes of the test LAN; dropping it kills the
/// processes and deletes the namespaces.
struct Lan {
    prefix: String,
    children: Vec<(String, Child)>,
}

impl Lan {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn new() -> Lan {
        let lan = Lan {
            prefix: format!("cairn-bm{}", std::process::id()),
            children: Vec::new(),
        };
        for host in ["lan", "dhcp", "cairn"] {
            run("ip", &["netns", "add", &lan.ns(host)]);
            run("ip", &["-n", &lan.ns(host), "link", "set", "lo", "up"]);
        }
        let l = lan.ns("lan");
        run("ip", &["-n", &l, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &l, "link", "set", "br0", "up"]);
        for (host, ip) in [("dhcp", DHCP_IP), ("cairn", CAIRN_IP)] {
            let ns = lan.ns(host);
            let outside = format!("to-{host}");
            run(
                "ip",
                &[
                    "-n", &l, "link", "add", &outside, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &l, "link", "set", &outside, "master", "br0", "up"],
            );
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        }
        for (_, _, _, tap) in MACHINES {
            run(
                "ip",
                &["-n", &l, "tuntap", "add", "dev", tap, "mode", "tap"],
            );
            run("ip", &["-n", &l, "link", "set", tap, "master", "br0", "up"]);
        }
        lan
    }

    fn spawn(&mut self, what: &str, host: &str, argv: &[&str], log: &Path) {
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        self.children.push((what.to_string(), child));
    }

    /// `argv` run on `host`; its output, or its failure.
    fn exec(&self, host: &str, argv: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .output()
            .unwrap()
    }

    fn check_alive(&mut self) {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what} exited early: {status}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in ["lan", "dhcp", "cairn"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

/// Waits until `url` answers on `host` (curl inside the namespace).
fn wait_http(lan: &mut Lan, host: &str, url: &str) {
    let t = Instant::now();
    loop {
        let out = lan.exec(host, &["curl", "-fsS", "--max-time", "2", url]);
        if out.status.success() {
            return;
        }
        lan.check_alive();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{url} never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bare_metal_netboot_with_site_dhcp_and_proxy_dhcp() {
    for (tool, package) in [
        ("ip", "iproute2"),
        ("dnsmasq", "dnsmasq-base"),
        ("atftp", "atftp"),
        ("curl", "curl"),
    ] {
        require(tool, package);
    }
    let out = test_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(
        dir.join("node.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.hostname }}\nwrite_files:\n  - path: /etc/cairn/where\n    content: |\n      group={{ group }} mac={{ mac }} ip={{ ip }}\n",
    )
    .unwrap();
    let inventory = format!(
        "profiles:\n  - name: tftp-diskless\n    image: {}\n    boot: ram\n    transport: tftp\n    kernel_args: console=ttyS0,115200 panic=10\n    cloud_config: node.yaml.j2\ngroups:\n  - name: rack1-node1\n    profile: tftp-diskless\n    selector:\n      mac: {}\n    metadata:\n      hostname: rack1-node1\n  - name: rack1-node2\n    profile: tftp-diskless\n    selector:\n      mac: {}\n    metadata:\n      hostname: rack1-node2\n",
        out.display(),
        MACHINES[0].1,
        MACHINES[1].1,
    );
    let inv_path = dir.join("lab.yaml");
    std::fs::write(&inv_path, inventory).unwrap();

    let mut lan = Lan::new();
    // the site's DHCP server: addresses only, nothing about PXE
    let leases = dir.join("dnsmasq.leases");
    let dnsmasq_args = [
        "dnsmasq".to_string(),
        "--keep-in-foreground".into(),
        "--log-facility=-".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--interface=eth0".into(),
        "--bind-interfaces".into(),
        "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m".into(),
        format!("--dhcp-leasefile={}", leases.display()),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        "--log-dhcp".into(),
    ];
    let argv: Vec<&str> = dnsmasq_args.iter().map(String::as_str).collect();
    lan.spawn("dnsmasq", "dhcp", &argv, &dir.join("dnsmasq.log"));

    // cairn serve through its command line, as a user runs it
    let serve_log = dir.join("serve.log");
    let cairn = env!("CARGO_BIN_EXE_cairn");
    let inv = inv_path.to_str().unwrap();
    let ipxe_dir = out.join("ipxe");
    let ipxe = ipxe_dir.to_str().unwrap();
    lan.spawn(
        "cairn serve",
        "cairn",
        &[
            cairn,
            "-v",
            "serve",
            "--config",
            inv,
            "--http-addr",
            "0.0.0.0:8080",
            "--tftp-addr",
            "0.0.0.0:69",
            "--ipxe-dir",
            ipxe,
            "--proxy-dhcp",
            "eth0",
        ],
        &serve_log,
    );
    let base = format!("http://{CAIRN_IP}:8080");
    wait_http(&mut lan, "cairn", &format!("{base}/healthz"));

    // a TFTP client elsewhere on the LAN: port 69, byte-exact, no way out
    let got = dir.join("undionly.kpxe");
    let fetch = lan.exec(
        "dhcp",
        &[
            "atftp",
            "--option",
            "blksize 1428",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            got.to_str().unwrap(),
            &CAIRN_IP.to_string(),
            "69",
        ],
    );
    assert!(fetch.status.success(), "atftp: {fetch:?}");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(ipxe_dir.join("undionly.kpxe")).unwrap(),
        "undionly.kpxe over TFTP port 69"
    );
    let escape = lan.exec(
        "dhcp",
        &[
            "atftp",
            "-g",
            "-r",
            "../../../../etc/passwd",
            "-l",
            dir.join("passwd").to_str().unwrap(),
            &CAIRN_IP.to_string(),
            "69",
        ],
    );
    assert!(
        !escape.status.success()
            && std::fs::metadata(dir.join("passwd")).map_or(0, |m| m.len()) == 0,
        "a path outside the root was served: {escape:?}"
    );

    // the machines, NIC first, on the LAN: one BIOS, one UEFI, one after the other
    for (firmware, mac, host, tap) in MACHINES {
        let t = Instant::now();
        let config = VmConfig::new(format!("baremetal-{firmware}"))
            .netns(lan.ns("lan"))
            .tap(tap)
            .pxe()
            .mac(mac)
            .memory_mib(3072)
            .cpus(2);
        let config = if firmware == "uefi" {
            config.uefi()
        } else {
            config.bios()
        };
        let mut vm = Vm::start(config).expect("starting QEMU");
        let line = vm.wait_for("cairn-init:", BOOT).unwrap_or_else(|e| {
            panic!(
                "{firmware}: no kernel came over TFTP: {e}\nserve log:\n{}",
                read(&serve_log)
            )
        });
        eprintln!(
            "{firmware}: kernel + pxe-initrd.img over TFTP, /init running after {:?}: {line}",
            t.elapsed()
        );
        vm.wait_guest_agent(BOOT).expect("the guest agent answers");
        let sh = |vm: &mut Vm, s: &str| guest_sh(vm, s, CMD);
        wait_cloudinit(&mut vm, 120);
        let journal = sh(
            &mut vm,
            "journalctl -b -u cairn-cloudinit --no-pager -o cat",
        );
        assert_eq!(sh(&mut vm, "hostname").trim(), host, "{journal}");
        // the address came from the site's dnsmasq (192.0.2.100-199), the config from cairn
        let addr = sh(&mut vm, "ip -4 -o addr show scope global");
        let ip = addr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("192.0.2.")?.strip_suffix("/24"))
            .and_then(|n| n.parse::<u8>().ok())
            .unwrap_or_else(|| panic!("{firmware}: no address on the LAN: {addr}"));
        assert!((100..=199).contains(&ip), "{addr}");
        assert_eq!(
            sh(&mut vm, "cat /etc/cairn/where"),
            format!("group={host} mac={mac} ip=192.0.2.{ip}\n")
        );
        assert!(
            read(&leases).contains(mac),
            "dnsmasq leased no address to {mac}"
        );
        let cmdline = sh(&mut vm, "cat /proc/cmdline");
        assert!(cmdline.contains("cairn.root=ram"), "{cmdline}");
        assert_running(&mut vm, BOOT);
        eprintln!("{firmware}: running after {:?}", t.elapsed());
        vm.kill().unwrap();
        drop(vm);
    }

    // what the server saw: ProxyDHCP answers, the kernels and initrds over TFTP
    let log = read(&serve_log);
    for needle in [
        "ProxyDHCP offer sent",
        "undionly.kpxe",
        "vmlinuz",
        "pxe-initrd.img",
        "boot.ipxe",
    ] {
        assert!(log.contains(needle), "serve log lacks {needle:?}:\n{log}");
    }
    let machines = lan.exec("cairn", &["curl", "-fsS", &format!("{base}/machines")]);
    let machines: serde_json::Value = serde_json::from_slice(&machines.stdout)
        .unwrap_or_else(|e| panic!("/machines: {e}: {machines:?}"));
    for (_, mac, host, _) in MACHINES {
        assert!(log.contains(mac), "serve log lacks {mac}");
        let m = machines
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mac"].as_str() == Some(mac)))
            .unwrap_or_else(|| panic!("the server never saw {mac}: {machines}"));
        assert_eq!(m["group"], host, "{m}");
        assert_eq!(m["stage"], "cloud-config", "{m}");
    }
    lan.check_alive();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
