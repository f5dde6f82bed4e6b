//! A test LAN in network namespaces: a bridge with tap devices for QEMU
//! machines, a `dhcp` host (192.0.2.2) running Debian's dnsmasq as the
//! site's plain DHCP server (addresses only, nothing about PXE), and a
//! `cairn` host (192.0.2.1) running the real `cairn serve` binary with
//! ProxyDHCP, TFTP on port 69 and HTTP on 8080. Dropping it kills the
//! processes and deletes the namespaces. Needs root, iproute2, dnsmasq and
//! curl.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CAIRN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const DHCP_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Runs `program args...`, panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
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

pub use cairn_testkit::require;

pub struct Lan {
    prefix: String,
    children: Vec<(String, Child)>,
    /// dnsmasq's lease file.
    pub leases: PathBuf,
    /// `cairn serve`'s log.
    pub serve_log: PathBuf,
}

impl Lan {
    /// Namespace name of `host` (`lan`, `dhcp` or `cairn`).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The namespaces, the bridge, the two hosts and `taps` on the bridge.
    pub fn new(tag: &str, taps: &[&str], dir: &Path) -> Lan {
        for (tool, package) in [
            ("ip", "iproute2"),
            ("dnsmasq", "dnsmasq-base"),
            ("curl", "curl"),
        ] {
            require(tool, package);
        }
        let lan = Lan {
            prefix: format!("cairn-{tag}{}", std::process::id()),
            children: Vec::new(),
            leases: dir.join("dnsmasq.leases"),
            serve_log: dir.join("serve.log"),
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
        for tap in taps {
            run(
                "ip",
                &["-n", &l, "tuntap", "add", "dev", tap, "mode", "tap"],
            );
            run("ip", &["-n", &l, "link", "set", tap, "master", "br0", "up"]);
        }
        lan
    }

    /// The site's DHCP server on the `dhcp` host: 192.0.2.100-199, no PXE options.
    pub fn start_dhcp(&mut self, dir: &Path) {
        let args = [
            "dnsmasq".to_string(),
            "--keep-in-foreground".into(),
            "--log-facility=-".into(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            "--user=root".into(),
            "--interface=eth0".into(),
            "--bind-interfaces".into(),
            "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m".into(),
            format!("--dhcp-leasefile={}", self.leases.display()),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--log-dhcp".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn("dnsmasq", "dhcp", &argv, &dir.join("dnsmasq.log"));
    }

    /// `cairn -v serve` on the `cairn` host with ProxyDHCP on its interface, TFTP on port 69, HTTP on
    /// 8080, state in `dir/state`; returns once `/healthz` answers, with the base URL.
    pub fn start_serve(&mut self, inventory: &Path, ipxe_dir: &Path, dir: &Path) -> String {
        let cairn = env!("CARGO_BIN_EXE_cairn");
        let state = dir.join("state");
        let log = self.serve_log.clone();
        self.spawn(
            "cairn serve",
            "cairn",
            &[
                cairn,
                "-v",
                "serve",
                "--config",
                inventory.to_str().unwrap(),
                "--http-addr",
                "0.0.0.0:8080",
                "--tftp-addr",
                "0.0.0.0:69",
                "--ipxe-dir",
                ipxe_dir.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--proxy-dhcp",
                "eth0",
            ],
            &log,
        );
        let base = format!("http://{CAIRN_IP}:8080");
        self.wait_http("cairn", &format!("{base}/healthz"));
        base
    }

    /// The process id of what [`Lan::spawn`] started as `what`
    /// (`cairn serve`, `dnsmasq`).
    pub fn pid(&self, what: &str) -> u32 {
        self.children
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, c)| c.id())
            .unwrap_or_else(|| panic!("{what} was not started"))
    }

    /// Rewrites `cairn serve`'s inventory and has the server reload it
    /// (SIGHUP); returns once its log says it did.
    pub fn reload_serve(&mut self, inventory: &Path, text: &str) {
        let count = || read(&self.serve_log).matches("inventory reloaded").count();
        let before = count();
        std::fs::write(inventory, text).unwrap();
        run("kill", &["-HUP", &self.pid("cairn serve").to_string()]);
        let t = Instant::now();
        while count() == before {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "cairn serve did not reload {}:\n{}",
                inventory.display(),
                read(&self.serve_log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn spawn(&mut self, what: &str, host: &str, argv: &[&str], log: &Path) {
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
    pub fn exec(&self, host: &str, argv: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .output()
            .unwrap()
    }

    /// The server's machine table (`/machines`, fetched on the `cairn` host
    /// from the operators' listener, loopback there by default); `base`, the
    /// machines' listener, refuses it.
    pub fn machines(&self, base: &str) -> serde_json::Value {
        let lan = self.exec(
            "cairn",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{base}/machines"),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&lan.stdout),
            "404",
            "/machines on the boot LAN: {lan:?}"
        );
        let out = self.exec("cairn", &["curl", "-fsS", "http://127.0.0.1:8081/machines"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("/machines: {e}: {out:?}"))
    }

    /// The server's lifecycle records (`/lifecycle` on the operators'
    /// listener, fetched on the `cairn` host).
    pub fn lifecycle(&self) -> serde_json::Value {
        let out = self.exec(
            "cairn",
            &[
                "curl",
                "-fsS",
                "--max-time",
                "5",
                "http://127.0.0.1:8081/lifecycle",
            ],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("/lifecycle: {e}: {out:?}"))
    }

    /// Polls `/lifecycle` until `mac`'s record satisfies `ok`.
    pub fn wait_record(
        &mut self,
        mac: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let l = self.lifecycle();
            let found = l["machines"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["mac"] == mac))
                .filter(|m| ok(m))
                .cloned();
            if let Some(m) = found {
                return m;
            }
            self.check_alive();
            assert!(
                t.elapsed() < timeout,
                "{mac}: never {what}: {l:#}\nserve log:\n{}",
                read(&self.serve_log)
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Panics when dnsmasq or cairn serve has exited.
    pub fn check_alive(&mut self) {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what} exited early: {status}");
            }
        }
    }

    /// Waits until `url` answers on `host` (curl inside the namespace).
    pub fn wait_http(&mut self, host: &str, url: &str) {
        let t = Instant::now();
        loop {
            let out = self.exec(host, &["curl", "-fsS", "--max-time", "2", url]);
            if out.status.success() {
                return;
            }
            self.check_alive();
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{url} never answered: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
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

/// A file's text, or nothing.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
