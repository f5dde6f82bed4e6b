//! The machine's addresses for $private_ipv4 & co: the interface of the default route (/proc/net/route, /proc/net/ipv6_route) and its first addresses (getifaddrs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What substitution gets; `None` becomes the empty string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineAddresses {
    pub public_ipv4: Option<Ipv4Addr>,
    pub private_ipv4: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub private_ipv6: Option<Ipv6Addr>,
}

impl MachineAddresses {
    /// Takes the addresses `known` has over these: a private address
    /// `known` has replaces this one and, unless `known` also has a public
    /// one of its family, the public one too (cairn's rule when nothing
    /// tells public apart: public = private).
    pub fn overlay(&mut self, known: &MachineAddresses) {
        if let Some(a) = known.private_ipv4 {
            self.private_ipv4 = Some(a);
            self.public_ipv4 = Some(a);
        }
        if let Some(a) = known.private_ipv6 {
            self.private_ipv6 = Some(a);
            self.public_ipv6 = Some(a);
        }
        self.public_ipv4 = known.public_ipv4.or(self.public_ipv4);
        self.public_ipv6 = known.public_ipv6.or(self.public_ipv6);
    }
}

const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The interface holding the IPv4 default route (lowest metric) in the text
/// of /proc/net/route.
pub fn default_route_v4(proc_net_route: &str) -> Option<String> {
    let mut best: Option<(u32, String)> = None;
    for line in proc_net_route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (iface, dest, flags, metric, mask) = (f[0], f[1], f[3], f[6], f[7]);
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        if dest != "00000000"
            || mask != "00000000"
            || flags & RTF_UP == 0
            || flags & RTF_REJECT != 0
        {
            continue;
        }
        let metric: u32 = metric.parse().unwrap_or(u32::MAX);
        if best.as_ref().is_none_or(|(m, _)| metric < *m) {
            best = Some((metric, iface.to_string()));
        }
    }
    best.map(|(_, i)| i)
}

/// The interface holding the IPv6 default route (::/0, lowest metric, not
/// `lo`, not a reject route) in the text of /proc/net/ipv6_route.
pub fn default_route_v6(proc_net_ipv6_route: &str) -> Option<String> {
    let mut best: Option<(u32, String)> = None;
    for line in proc_net_ipv6_route.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (dest, plen, metric, flags, iface) = (f[0], f[1], f[5], f[8], f[9]);
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        if dest.bytes().any(|b| b != b'0')
            || plen != "00"
            || iface == "lo"
            || flags & RTF_UP == 0
            || flags & RTF_REJECT != 0
        {
            continue;
        }
        let metric = u32::from_str_radix(metric, 16).unwrap_or(u32::MAX);
        if best.as_ref().is_none_or(|(m, _)| metric < *m) {
            best = Some((metric, iface.to_string()));
        }
    }
    best.map(|(_, i)| i)
}

/// The addresses of every interface, in getifaddrs order.
pub fn interface_addresses() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("getifaddrs failed: no addresses for substitution");
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push((a.interface_name.clone(), IpAddr::V4(v4.ip())));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push((a.interface_name.clone(), IpAddr::V6(v6.ip())));
        }
    }
    out
}

/// Picks the first IPv4 and the first global IPv6 address of the
/// default-route interfaces. An interface without a default route of one
/// family (a network with no gateway: QEMU's restricted user networking, an
/// isolated cluster LAN) falls back to the other family's default-route
/// interface, then to the first non-loopback interface with such an address.
/// Public is the same as private: the data sources cairn reads (kernel
/// command line, state file, config drive) do not tell a public address
/// apart.
pub fn pick(
    v4_iface: Option<&str>,
    v6_iface: Option<&str>,
    addrs: &[(String, IpAddr)],
) -> MachineAddresses {
    let usable4 = |a: &Ipv4Addr| !a.is_loopback() && !a.is_link_local();
    // skip loopback and link-local fe80::/10
    let usable6 = |a: &Ipv6Addr| !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80;
    let on = |iface: Option<&str>, want4: bool| -> Option<IpAddr> {
        let i = iface?;
        addrs.iter().find_map(|(n, a)| match a {
            IpAddr::V4(v4) if want4 && n == i && usable4(v4) => Some(*a),
            IpAddr::V6(v6) if !want4 && n == i && usable6(v6) => Some(*a),
            _ => None,
        })
    };
    let any = |want4: bool| -> Option<IpAddr> {
        addrs.iter().find_map(|(n, a)| match a {
            _ if n == "lo" => None,
            IpAddr::V4(v4) if want4 && usable4(v4) => Some(*a),
            IpAddr::V6(v6) if !want4 && usable6(v6) => Some(*a),
            _ => None,
        })
    };
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(x) => Some(x),
        IpAddr::V6(_) => None,
    };
    let v6 = |a: IpAddr| match a {
        IpAddr::V6(x) => Some(x),
        IpAddr::V4(_) => None,
    };
    let private_ipv4 = on(v4_iface, true)
        .or_else(|| on(v6_iface, true))
        .or_else(|| any(true))
        .and_then(v4);
    let private_ipv6 = on(v6_iface, false)
        .or_else(|| on(v4_iface, false))
        .or_else(|| any(false))
        .and_then(v6);
    MachineAddresses {
        public_ipv4: private_ipv4,
        private_ipv4,
        public_ipv6: private_ipv6,
        private_ipv6,
    }
}

/// Which address families a user-data text substitutes: `(ipv4, ipv6)`.
pub fn wanted_families(text: &str) -> (bool, bool) {
    let has =
        |v: &str| text.contains(&format!("$public_{v}")) || text.contains(&format!("$private_{v}"));
    (has("ipv4"), has("ipv6"))
}

fn detect_once() -> (Option<String>, Option<String>, MachineAddresses) {
    let v4 = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| default_route_v4(&t));
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route")
        .ok()
        .and_then(|t| default_route_v6(&t));
    let found = pick(v4.as_deref(), v6.as_deref(), &interface_addresses());
    (v4, v6, found)
}

/// The running machine's addresses, waiting up to `timeout` for those the
/// user-data substitutes: `network-online.target` can be reached on an
/// IPv6 address before DHCPv4 has answered, and an empty `$private_ipv4`
/// would give etcd an unusable URL.
pub fn detect_for(text: &str, timeout: std::time::Duration) -> MachineAddresses {
    let (want4, want6) = wanted_families(text);
    detect_waiting(want4, want6, timeout)
}

/// The running machine's addresses, waiting up to `timeout` for an IPv4
/// address (`want4`) and an IPv6 one (`want6`).
pub fn detect_waiting(want4: bool, want6: bool, timeout: std::time::Duration) -> MachineAddresses {
    let start = std::time::Instant::now();
    loop {
        let (v4, v6, found) = detect_once();
        let ok =
            (!want4 || found.private_ipv4.is_some()) && (!want6 || found.private_ipv6.is_some());
        if ok || start.elapsed() >= timeout {
            if !ok {
                tracing::warn!(
                    "no {} address after {:.0?}: its variables substitute as empty",
                    if want4 && found.private_ipv4.is_none() {
                        "IPv4"
                    } else {
                        "IPv6"
                    },
                    timeout
                );
            }
            log_found(v4, v6, &found);
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The running machine's addresses (empty fields where unknown).
pub fn detect() -> MachineAddresses {
    let (v4, v6, found) = detect_once();
    log_found(v4, v6, &found);
    found
}

fn log_found(v4: Option<String>, v6: Option<String>, found: &MachineAddresses) {
    tracing::info!(
        "addresses: default route IPv4 via {}, IPv6 via {}; private_ipv4={} private_ipv6={}",
        v4.as_deref().unwrap_or("(none)"),
        v6.as_deref().unwrap_or("(none)"),
        found
            .private_ipv4
            .map(|a| a.to_string())
            .unwrap_or_default(),
        found
            .private_ipv6
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_families_follow_the_variables() {
        for (text, want) in [
            ("etcd: http://$private_ipv4:2379", (true, false)),
            ("a: $public_ipv4\nb: $private_ipv6", (true, true)),
            ("a: $public_ipv6", (false, true)),
            ("hostname: x", (false, false)),
            ("a: private_ipv4", (false, false)),
        ] {
            assert_eq!(wanted_families(text), want, "{text}");
        }
    }

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0202000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";
    const ROUTE6: &str = "\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00000003     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000064 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn default_route_interfaces() {
        assert_eq!(default_route_v4(ROUTE).as_deref(), Some("eth0"));
        assert_eq!(default_route_v6(ROUTE6).as_deref(), Some("eth0"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
        // only a non-default route
        let lan = "h\neth0\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_v4(lan), None);
        // the lo reject route alone is no default route
        assert_eq!(default_route_v6(ROUTE6.lines().last().unwrap()), None);
    }

    #[test]
    fn pick_first_address_of_the_route_interface() {
        let addrs: Vec<(String, IpAddr)> = vec![
            ("lo".into(), "127.0.0.1".parse().unwrap()),
            ("eth1".into(), "192.168.1.5".parse().unwrap()),
            ("eth0".into(), "fe80::1".parse().unwrap()),
            ("eth0".into(), "10.0.2.15".parse().unwrap()),
            ("eth0".into(), "10.0.2.16".parse().unwrap()),
            ("eth0".into(), "fd00::15".parse().unwrap()),
        ];
        let got = pick(Some("eth0"), Some("eth0"), &addrs);
        assert_eq!(got.private_ipv4, Some("10.0.2.15".parse().unwrap()));
        assert_eq!(got.public_ipv4, got.private_ipv4);
        assert_eq!(got.private_ipv6, Some("fd00::15".parse().unwrap()));
        // no IPv4 default route (no gateway): the IPv6 route's interface
        let got = pick(None, Some("eth0"), &addrs);
        assert_eq!(got.private_ipv4, Some("10.0.2.15".parse().unwrap()));
        // no route at all: the first non-loopback interface with an address
        let got = pick(None, None, &addrs);
        assert_eq!(got.private_ipv4, Some("192.168.1.5".parse().unwrap()));
        assert_eq!(got.private_ipv6, Some("fd00::15".parse().unwrap()));
        assert_eq!(
            pick(Some("eth9"), None, &addrs).private_ipv4,
            Some("192.168.1.5".parse().unwrap())
        );
        // only loopback and link-local: nothing
        let lo: Vec<(String, IpAddr)> = vec![
            ("lo".into(), "127.0.0.1".parse().unwrap()),
            ("eth0".into(), "fe80::1".parse().unwrap()),
            ("eth0".into(), "169.254.3.4".parse().unwrap()),
        ];
        assert_eq!(pick(None, None, &lo), MachineAddresses::default());
    }

    #[test]
    fn known_addresses_overlay_detected_ones() {
        let detected = MachineAddresses {
            private_ipv4: Some("10.0.2.15".parse().unwrap()),
            public_ipv4: Some("10.0.2.15".parse().unwrap()),
            private_ipv6: Some("fd00::15".parse().unwrap()),
            public_ipv6: Some("fd00::15".parse().unwrap()),
        };
        // a private address alone is the public one too
        let mut a = detected.clone();
        a.overlay(&MachineAddresses {
            private_ipv4: Some("172.31.1.2".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(a.private_ipv4, Some("172.31.1.2".parse().unwrap()));
        assert_eq!(a.public_ipv4, Some("172.31.1.2".parse().unwrap()));
        assert_eq!(a.private_ipv6, detected.private_ipv6);
        // with a public one, each its own
        let mut a = detected.clone();
        a.overlay(&MachineAddresses {
            private_ipv4: Some("172.31.1.2".parse().unwrap()),
            public_ipv4: Some("203.0.113.7".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(a.private_ipv4, Some("172.31.1.2".parse().unwrap()));
        assert_eq!(a.public_ipv4, Some("203.0.113.7".parse().unwrap()));
        // a public one alone keeps the detected private one
        let mut a = detected.clone();
        a.overlay(&MachineAddresses {
            public_ipv4: Some("203.0.113.7".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(a.private_ipv4, detected.private_ipv4);
        assert_eq!(a.public_ipv4, Some("203.0.113.7".parse().unwrap()));
        // nothing known changes nothing
        let mut a = detected.clone();
        a.overlay(&MachineAddresses::default());
        assert_eq!(a, detected);
    }

    #[test]
    fn getifaddrs_sees_loopback() {
        let all = interface_addresses();
        assert!(
            all.iter()
                .any(|(n, a)| n == "lo" && *a == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{all:?}"
        );
    }
}
