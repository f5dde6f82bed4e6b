//! What fleetd learns about its own machine: the machine ID
//! (`/etc/machine-id`, as fleet used it) and, when `public_ip` is not set,
//! the address to publish, found as fleet did from the routing table: the
//! source address the kernel picks toward the first etcd server (a UDP
//! socket connected there; nothing is sent), else the first global
//! address of an interface that is up.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;

use anyhow::{bail, Context, Result};
use cairn_fleet::registry::check_machine_id;

/// fleet's (and systemd's) machine ID file.
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// Reads and checks a machine ID file (one line of 32 hex digits, as
/// systemd writes it; any ID the registry accepts is taken).
pub fn machine_id(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the machine ID from {}", path.display()))?;
    let id = text.trim();
    if id.is_empty() {
        bail!(
            "{} is empty: systemd writes it at first boot (or pass --machine-id)",
            path.display()
        );
    }
    check_machine_id(id).with_context(|| format!("{}", path.display()))?;
    Ok(id.to_string())
}

/// The address to publish: toward the first etcd server, else the first
/// non-loopback address of the machine.
pub fn detect_public_ip(etcd_servers: &[String]) -> Option<IpAddr> {
    let toward = etcd_servers.first().and_then(|u| host_port(u));
    if let Some(target) = toward {
        if let Some(ip) = source_toward(target) {
            if !ip.is_loopback() && !ip.is_unspecified() {
                return Some(ip);
            }
        }
    }
    first_interface_address()
}

/// `HOST:PORT` of an `http://HOST:PORT/...` URL, resolved (an IP needs no
/// lookup; a name is looked up once).
fn host_port(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    let with_port = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:2379")
    };
    with_port.to_socket_addrs().ok()?.next()
}

fn source_toward(target: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).ok()?;
    // connect() on UDP only asks the kernel for a route: no packet is sent
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn first_interface_address() -> Option<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut v4 = None;
    let mut v6 = None;
    for a in addrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP)
            || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            v4.get_or_insert(IpAddr::V4(sin.ip()));
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip = sin6.ip();
            // link-local addresses (fe80::/10) cannot be reached by peers
            if ip.segments()[0] & 0xffc0 != 0xfe80 {
                v6.get_or_insert(IpAddr::V6(ip));
            }
        }
    }
    v4.or(v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("machine-id");
        std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(machine_id(&f).unwrap(), "0123456789abcdef0123456789abcdef");
        std::fs::write(&f, "\n").unwrap();
        let e = format!("{:#}", machine_id(&f).unwrap_err());
        assert!(
            e.ends_with("is empty: systemd writes it at first boot (or pass --machine-id)"),
            "{e}"
        );
        std::fs::write(&f, "../../x\n").unwrap();
        let e = format!("{:#}", machine_id(&f).unwrap_err());
        assert!(e.contains("machine ID \"../../x\""), "{e}");
        let e = format!("{:#}", machine_id(&dir.path().join("none")).unwrap_err());
        assert!(e.starts_with("reading the machine ID from "), "{e}");
    }

    #[test]
    fn the_source_address_toward_loopback_is_loopback_and_then_not_used() {
        let a = source_toward("127.0.0.1:2379".parse().unwrap()).unwrap();
        assert!(a.is_loopback());
        // toward a loopback etcd, the published address is an interface's
        // (or none on a machine with only loopback), never 127.0.0.1
        let ip = detect_public_ip(&["http://127.0.0.1:2379".into()]);
        assert!(ip.is_none_or(|ip| !ip.is_loopback()), "{ip:?}");
        assert_eq!(
            host_port("http://127.0.0.1:4001/v2"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(
            host_port("http://127.0.0.1"),
            Some("127.0.0.1:2379".parse().unwrap())
        );
        assert_eq!(host_port("ftp://x"), None);
    }
}
