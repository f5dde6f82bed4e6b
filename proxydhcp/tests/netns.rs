//! ProxyDHCP beside a real DHCP server: network namespaces made by the test ("site" with Debian's
//! dnsmasq as a plain DHCP server and cairn's proxy on the same interface; "client" sending crafted
//! PXE and plain DHCP packets over a veth pair). Needs root, `ip` (iproute2) and dnsmasq
//! (dnsmasq-base).
//!
//! The proxy and the client sockets are made on short-lived threads that `setns` into their
//! namespace: a socket belongs to the namespace it was created in for its whole life, so the proxy
//! then runs on the test's tokio runtime and the client is driven from the test thread, all in one
//! process, with no re-exec and nothing left running if the test panics (the guard kills dnsmasq and
//! deletes both namespaces, which destroys the veth pair).

use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proxydhcp::dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use cairn_proxydhcp::dhcproto::Encodable as _;
use cairn_proxydhcp::{answer::pxe_discover, boot_file, parse, ProxyConfig, ProxyDhcp};

const SITE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// The namespaces, the veth pair and dnsmasq; all gone when dropped, panic or not.
struct Lab {
    site: String,
    client: String,
    site_if: String,
    client_if: String,
    dnsmasq: Option<Child>,
    dnsmasq_log: tempfile::NamedTempFile,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.site, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Lab {
    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dnsmasq_log.path()).unwrap_or_default()
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_tools() -> &'static str {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and binds UDP 67: run it as root"
    );
    assert!(
        Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "`ip` not found: install the Debian package iproute2"
    );
    ["dnsmasq", "/usr/sbin/dnsmasq"]
        .into_iter()
        .find(|d| {
            Command::new(d)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("`dnsmasq` not found: install the Debian package dnsmasq-base")
}

fn setup() -> Lab {
    let dnsmasq_bin = require_tools();
    let pid = std::process::id();
    let lab = Lab {
        site: format!("cairn-pxsite-{pid}"),
        client: format!("cairn-pxcli-{pid}"),
        site_if: format!("cpxs{pid}"),
        client_if: format!("cpxc{pid}"),
        dnsmasq: None,
        dnsmasq_log: tempfile::NamedTempFile::new().expect("creating dnsmasq's log file"),
    };
    let (s, c, si, ci) = (&lab.site, &lab.client, &lab.site_if, &lab.client_if);
    run(&["ip", "netns", "add", s]);
    run(&["ip", "netns", "add", c]);
    run(&["ip", "link", "add", si, "type", "veth", "peer", "name", ci]);
    run(&["ip", "link", "set", si, "netns", s]);
    run(&["ip", "link", "set", ci, "netns", c]);
    run(&["ip", "-n", s, "addr", "add", "192.0.2.1/24", "dev", si]);
    run(&["ip", "-n", s, "link", "set", si, "up"]);
    run(&["ip", "-n", c, "link", "set", ci, "up"]);
    let mut lab = lab;
    // The site's DHCP server: addresses only, no PXE options (no --dhcp-boot, no --pxe-service).
    let log = lab
        .dnsmasq_log
        .reopen()
        .expect("opening dnsmasq's log file");
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.site, dnsmasq_bin])
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            "--leasefile-ro",
            "--no-ping",
            "--log-dhcp",
            "--log-facility=-",
            "--pid-file=",
            "--dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,2m",
        ])
        .arg(format!("--interface={}", lab.site_if))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting dnsmasq");
    lab.dnsmasq = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.dnsmasq_log().contains("DHCP, sockets bound") {
        if let Some(st) = lab.dnsmasq.as_mut().unwrap().try_wait().unwrap() {
            panic!("dnsmasq exited ({st}):\n{}", lab.dnsmasq_log());
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq not ready after 10 s:\n{}",
            lab.dnsmasq_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering network namespace {path}: {e}"));
        f()
    })
    .join()
    .expect("thread in the network namespace panicked")
}

/// The client's UDP 68 on its veth, able to send broadcasts.
fn client_socket(lab: &Lab) -> UdpSocket {
    let iface = lab.client_if.clone();
    in_netns(&lab.client, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
            .expect("binding the client's UDP 68");
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    })
}

/// The client's MAC (so unicast replies would reach it too).
fn client_mac(lab: &Lab) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", &lab.client, "-br", "link", "show", &lab.client_if])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().nth(2).expect("ip -br link output");
    let mut b = [0u8; 6];
    for (i, p) in mac.split(':').enumerate() {
        b[i] = u8::from_str_radix(p, 16).unwrap();
    }
    b
}

/// Every reply with `xid` received within `wait`.
fn collect(sock: &UdpSocket, xid: u32, wait: Duration) -> Vec<(SocketAddr, Message, Instant)> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Ok(m) = parse(&buf[..n]) {
                    if m.xid() == xid
                        && m.opcode() == cairn_proxydhcp::dhcproto::v4::Opcode::BootReply
                    {
                        got.push((from, m, Instant::now()));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("client receive: {e}"),
        }
    }
    got
}

fn is_proxy(m: &Message) -> bool {
    m.yiaddr().is_unspecified()
        && matches!(m.opts().get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient")
}

fn describe(replies: &[(SocketAddr, Message, Instant)]) -> String {
    replies
        .iter()
        .map(|(from, m, _)| {
            format!(
                "from {from}: {:?} yiaddr {} siaddr {} file {:?}",
                m.opts().msg_type(),
                m.yiaddr(),
                m.siaddr(),
                boot_file(m)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn send_broadcast(sock: &UdpSocket, m: &Message) {
    sock.send_to(
        &m.to_vec().unwrap(),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
    )
    .expect("sending the DISCOVER");
}

#[test]
fn proxy_answers_pxe_beside_dnsmasq_and_leaves_plain_dhcp_alone() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("cairn_proxydhcp=debug")
        .with_test_writer()
        .try_init();
    let lab = setup();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // The proxy, bound in the site namespace; its address comes from the interface.
    let cfg = ProxyConfig::new(lab.site_if.clone(), "http://192.0.2.1:8080/boot.ipxe");
    let proxy = in_netns(&lab.site, move || ProxyDhcp::bind(&cfg))
        .unwrap_or_else(|e| panic!("{e}\ndnsmasq:\n{}", lab.dnsmasq_log()));
    assert_eq!(proxy.boot_config().server_addr, SITE_ADDR);
    let handle = {
        let _guard = rt.enter();
        proxy.spawn().expect("starting the proxy")
    };

    let client = client_socket(&lab);
    let mac = client_mac(&lab);

    // (a) A BIOS PXE ROM's DISCOVER from 0.0.0.0:68: dnsmasq offers an address, cairn the boot file.
    let xid = 0x0a0a_0001;
    let mut d = pxe_discover(xid, mac, Some(0), true);
    let guid: Vec<u8> = std::iter::once(0).chain(0x10..0x20).collect();
    d.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
    let sent = Instant::now();
    send_broadcast(&client, &d);
    let replies = collect(&client, xid, Duration::from_secs(3));
    let dnsmasq: Vec<_> = replies.iter().filter(|(_, m, _)| !is_proxy(m)).collect();
    let proxy: Vec<_> = replies.iter().filter(|(_, m, _)| is_proxy(m)).collect();
    assert!(
        dnsmasq.iter().any(|(_, m, _)| {
            m.opts().msg_type() == Some(MessageType::Offer)
                && (Ipv4Addr::new(192, 0, 2, 100)..=Ipv4Addr::new(192, 0, 2, 150))
                    .contains(&m.yiaddr())
        }),
        "(a) no address offer from dnsmasq; got: {}\ndnsmasq:\n{}",
        describe(&replies),
        lab.dnsmasq_log()
    );
    let (_, offer, _) = proxy.first().unwrap_or_else(|| {
        panic!(
            "(a) no ProxyDHCP offer; got: {}\ndnsmasq:\n{}",
            describe(&replies),
            lab.dnsmasq_log()
        )
    });
    // A figure, not a limit: how long each server took to answer (debug build, logging on).
    eprintln!(
        "(a) ProxyDHCP offer after {:?}; dnsmasq offer after {:?}",
        proxy[0].2 - sent,
        dnsmasq[0].2 - sent
    );
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(boot_file(offer).as_deref(), Some("undionly.kpxe"));
    assert_eq!(offer.siaddr(), SITE_ADDR);
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.chaddr(), &mac);
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SITE_ADDR))
    );
    assert_eq!(
        offer.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(guid.clone()))
    );
    assert_eq!(
        offer.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );

    // (b) A plain DHCP DISCOVER (no option 60/93): only dnsmasq answers.
    let xid = 0x0a0a_0002;
    send_broadcast(&client, &pxe_discover(xid, mac, None, false));
    let replies = collect(&client, xid, Duration::from_secs(2));
    assert!(
        replies.iter().any(|(_, m, _)| !m.yiaddr().is_unspecified()),
        "(b) no offer from dnsmasq; got: {}\ndnsmasq:\n{}",
        describe(&replies),
        lab.dnsmasq_log()
    );
    assert!(
        !replies.iter().any(|(_, m, _)| is_proxy(m)),
        "(b) the proxy answered a plain DHCP client: {}",
        describe(&replies)
    );

    // (b2) An ARM64 UEFI PXE client: no boot file for it here, so only dnsmasq answers.
    let xid = 0x0a0a_0003;
    send_broadcast(&client, &pxe_discover(xid, mac, Some(11), true));
    let replies = collect(&client, xid, Duration::from_secs(2));
    assert!(
        !replies.is_empty() && !replies.iter().any(|(_, m, _)| is_proxy(m)),
        "(b2) expected only dnsmasq's offer for ARM64; got: {}",
        describe(&replies)
    );

    // (c) With its address, a UEFI x64 client asks the proxy on 4011 and gets an ACK back at its
    // own address and port.
    run(&[
        "ip",
        "-n",
        &lab.client,
        "addr",
        "add",
        "192.0.2.50/24",
        "dev",
        &lab.client_if,
    ]);
    let xid = 0x0a0a_0004;
    let mut r = pxe_discover(xid, mac, Some(7), true);
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    r.set_ciaddr(CLIENT_ADDR);
    r.set_flags(Default::default());
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SITE_ADDR));
    r.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
    client
        .send_to(&r.to_vec().unwrap(), SocketAddrV4::new(SITE_ADDR, 4011))
        .expect("sending the REQUEST to 4011");
    let replies = collect(&client, xid, Duration::from_secs(2));
    let ack = replies
        .iter()
        .find(|(_, m, _)| m.opts().msg_type() == Some(MessageType::Ack))
        .unwrap_or_else(|| panic!("(c) no ACK from port 4011; got: {}", describe(&replies)));
    assert_eq!(
        ack.0,
        SocketAddr::from((SITE_ADDR, 4011)),
        "(c) the ACK comes from 4011"
    );
    assert_eq!(boot_file(&ack.1).as_deref(), Some("ipxe.efi"));
    assert_eq!(ack.1.siaddr(), SITE_ADDR);
    assert_eq!(ack.1.ciaddr(), CLIENT_ADDR);
    assert_eq!(ack.1.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        ack.1.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(guid))
    );

    // (d) After shutdown the proxy is silent: the same BIOS DISCOVER gets only dnsmasq's offer.
    rt.block_on(handle.shutdown());
    let xid = 0x0a0a_0005;
    send_broadcast(&client, &pxe_discover(xid, mac, Some(0), true));
    let replies = collect(&client, xid, Duration::from_secs(2));
    assert!(
        !replies.is_empty() && !replies.iter().any(|(_, m, _)| is_proxy(m)),
        "(d) expected only dnsmasq's offer after shutdown; got: {}",
        describe(&replies)
    );

    // dnsmasq saw the PXE client and answered it as a plain DHCP server.
    let mut log = String::new();
    File::open(lab.dnsmasq_log.path())
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("DHCPOFFER"), "dnsmasq log:\n{log}");
}
