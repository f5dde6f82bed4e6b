//! The sockets: configuration and its resolution against the interface, binding UDP 67 and 4011 to one
//! interface, and the receive/answer loops on tokio with their shutdown.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::answer::{self, BootConfig, Port, DHCP_PORT, PXE_PORT};

/// The DHCP `file` field holds 128 bytes including the terminating NUL.
const FILE_FIELD_MAX: usize = 127;

/// How to run the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The interface to answer on, e.g. `eth0`.
    pub interface: String,
    /// Our address: option 54 and where clients send to port 4011. None: the interface's first IPv4.
    pub server_addr: Option<Ipv4Addr>,
    /// The TFTP server (siaddr, option 66). None: the server address.
    pub tftp_addr: Option<Ipv4Addr>,
    /// What iPXE gets: the HTTP URL of `/boot.ipxe`, e.g. `http://192.0.2.1:8080/boot.ipxe`.
    pub http_boot_url: String,
    /// What BIOS PXE gets over TFTP (default `undionly.kpxe`).
    pub bios_file: String,
    /// What x86-64 UEFI gets over TFTP (default `ipxe.efi`).
    pub efi_file: String,
}

impl ProxyConfig {
    /// A configuration with the default boot files and addresses taken from the interface.
    pub fn new(interface: impl Into<String>, http_boot_url: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            interface: interface.into(),
            server_addr: None,
            tftp_addr: None,
            http_boot_url: http_boot_url.into(),
            bios_file: "undionly.kpxe".into(),
            efi_file: "ipxe.efi".into(),
        }
    }

    /// Checks the fields and fills in the addresses (reading the interface's when unset).
    pub fn resolve(&self) -> Result<BootConfig, ProxyError> {
        let bad = |field: &'static str, message: String| ProxyError::Config { field, message };
        if self.interface.is_empty() || self.interface.len() >= 16 || self.interface.contains('/') {
            return Err(bad(
                "interface",
                format!(
                    "{:?}: expected a network interface name such as eth0 (1 to 15 bytes)",
                    self.interface
                ),
            ));
        }
        let u = &self.http_boot_url;
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || u.contains(char::is_whitespace)
        {
            return Err(bad(
                "http_boot_url",
                format!("{u:?}: expected an http:// URL such as http://192.0.2.1:8080/boot.ipxe"),
            ));
        }
        for (field, v) in [
            ("http_boot_url", u),
            ("bios_file", &self.bios_file),
            ("efi_file", &self.efi_file),
        ] {
            if v.is_empty() || v.len() > FILE_FIELD_MAX || v.contains('\0') {
                return Err(bad(
                    field,
                    format!(
                        "{v:?} is {} bytes: the DHCP file field holds 1 to {FILE_FIELD_MAX} bytes without NUL",
                        v.len()
                    ),
                ));
            }
        }
        let server_addr = match self.server_addr {
            Some(a) => a,
            None => interface_ipv4(&self.interface)?,
        };
        Ok(BootConfig {
            server_addr,
            tftp_addr: self.tftp_addr.unwrap_or(server_addr),
            http_boot_url: self.http_boot_url.clone(),
            bios_file: self.bios_file.clone(),
            efi_file: self.efi_file.clone(),
        })
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A configuration field is unusable.
    #[error("proxy DHCP {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// The interface does not exist.
    #[error("interface {interface}: no such network interface")]
    NoInterface { interface: String },
    /// The interface has no IPv4 address and none was given.
    #[error("interface {interface} has no IPv4 address (give the server address explicitly)")]
    NoIpv4 { interface: String },
    /// Listing the interface addresses failed.
    #[error("listing the addresses of {interface}: {error}")]
    Addresses { interface: String, error: io::Error },
    /// Creating, configuring or binding a socket failed.
    #[error("binding UDP {port} on {interface}: {}", bind_reason(.error))]
    Bind {
        interface: String,
        port: u16,
        error: io::Error,
    },
    /// Handing a bound socket to tokio failed (no runtime?).
    #[error("registering UDP {port} on {interface} with tokio: {error}")]
    Register {
        interface: String,
        port: u16,
        error: io::Error,
    },
}

fn bind_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc_errno) if libc_errno == nix::errno::Errno::EACCES as i32 || libc_errno == nix::errno::Errno::EPERM as i32 => {
            "permission denied (needs root or CAP_NET_BIND_SERVICE, and CAP_NET_RAW for SO_BINDTODEVICE)".into()
        }
        Some(n) if n == nix::errno::Errno::EADDRINUSE as i32 => {
            "address in use (another DHCP server or proxy holds the port without SO_REUSEADDR)".into()
        }
        Some(n) if n == nix::errno::Errno::ENODEV as i32 => "no such network interface".into(),
        _ => e.to_string(),
    }
}

/// The first IPv4 address of `interface`.
pub fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, ProxyError> {
    if nix::net::if_::if_nametoindex(interface).is_err() {
        return Err(ProxyError::NoInterface {
            interface: interface.into(),
        });
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| ProxyError::Addresses {
        interface: interface.into(),
        error: io::Error::from(e),
    })?;
    addrs
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
        .ok_or_else(|| ProxyError::NoIpv4 {
            interface: interface.into(),
        })
}

/// A UDP socket on `port` of every address, receiving only what arrives on `interface` (so broadcasts
/// reach it), able to broadcast, and sharing the port with a DHCP server that also sets SO_REUSEADDR.
fn bind_socket(interface: &str, port: u16) -> Result<std::net::UdpSocket, ProxyError> {
    let err = |error: io::Error| ProxyError::Bind {
        interface: interface.into(),
        port,
        error,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    Ok(s.into())
}

/// The proxy with its sockets bound and not yet serving.
#[derive(Debug)]
pub struct ProxyDhcp {
    interface: String,
    boot: BootConfig,
    dhcp: std::net::UdpSocket,
    pxe: std::net::UdpSocket,
}

impl ProxyDhcp {
    /// Resolves `cfg` and binds UDP 67 and 4011 on its interface. Needs no runtime: the sockets are
    /// plain until [`ProxyDhcp::spawn`] (and belong to the network namespace of the calling thread).
    pub fn bind(cfg: &ProxyConfig) -> Result<ProxyDhcp, ProxyError> {
        let boot = cfg.resolve()?;
        let dhcp = bind_socket(&cfg.interface, DHCP_PORT)?;
        let pxe = bind_socket(&cfg.interface, PXE_PORT)?;
        Ok(ProxyDhcp {
            interface: cfg.interface.clone(),
            boot,
            dhcp,
            pxe,
        })
    }

    /// What the answers say (addresses resolved).
    pub fn boot_config(&self) -> &BootConfig {
        &self.boot
    }

    /// Starts answering on the current tokio runtime; stop with the handle.
    pub fn spawn(self) -> Result<ProxyHandle, ProxyError> {
        let (stop, rx) = watch::channel(false);
        let tasks = self.start(rx)?;
        Ok(ProxyHandle { stop, tasks })
    }

    /// Answers until the runtime ends (for callers that manage cancellation themselves).
    pub async fn run(self) -> Result<(), ProxyError> {
        let (_stop, rx) = watch::channel(false);
        for t in self.start(rx)? {
            let _ = t.await;
        }
        Ok(())
    }

    fn start(self, stop: watch::Receiver<bool>) -> Result<Vec<JoinHandle<()>>, ProxyError> {
        let iface: Arc<str> = self.interface.as_str().into();
        let boot = Arc::new(self.boot);
        let reg = |s: std::net::UdpSocket, port: u16| {
            UdpSocket::from_std(s).map_err(|error| ProxyError::Register {
                interface: self.interface.clone(),
                port,
                error,
            })
        };
        let dhcp = reg(self.dhcp, DHCP_PORT)?;
        let pxe = reg(self.pxe, PXE_PORT)?;
        tracing::info!(
            interface = %iface,
            server = %boot.server_addr,
            tftp = %boot.tftp_addr,
            http = %boot.http_boot_url,
            "ProxyDHCP answering PXE clients on UDP 67 and 4011"
        );
        Ok(vec![
            tokio::spawn(serve(
                dhcp,
                Port::Dhcp,
                boot.clone(),
                iface.clone(),
                stop.clone(),
            )),
            tokio::spawn(serve(pxe, Port::Pxe, boot, iface, stop)),
        ])
    }
}

/// A running proxy. Dropping the handle stops it too (between packets), like [`ProxyHandle::stop`].
#[derive(Debug)]
pub struct ProxyHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Asks both loops to stop (they stop between packets).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops both loops and waits for them; the ports are free when this returns.
    pub async fn shutdown(self) {
        self.stop();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn serve(
    sock: UdpSocket,
    port: Port,
    boot: Arc<BootConfig>,
    iface: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    // Ethernet-sized and then some: option 57 lets clients send up to 1500 bytes; jumbo frames more.
    let mut buf = vec![0u8; 9000];
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, from) = match received {
            Ok(x) => x,
            Err(e) => {
                // Transient (the interface went down, ICMP errors): log and go on, without spinning.
                tracing::warn!(interface = %iface, %port, error = %e, "ProxyDHCP receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        if let Some((to, bytes)) = handle(&buf[..n], from, port, &boot, &iface) {
            if let Err(e) = sock.send_to(&bytes, to).await {
                tracing::warn!(interface = %iface, %port, %to, error = %e, "ProxyDHCP reply not sent");
            }
        }
    }
}

/// Decides on one datagram and logs the outcome; returns where to send what.
fn handle(
    bytes: &[u8],
    from: SocketAddrV4,
    port: Port,
    boot: &BootConfig,
    iface: &str,
) -> Option<(SocketAddrV4, Vec<u8>)> {
    let msg = match answer::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(interface = %iface, %port, %from, "ignored: {e}");
            return None;
        }
    };
    match answer::decide(&msg, boot, port) {
        Ok(a) => {
            let to = answer::reply_destination(&msg, port, from);
            tracing::info!(
                interface = %iface,
                mac = %a.mac,
                arch = a.arch,
                arch_name = answer::arch_name(a.arch),
                firmware = ?a.firmware,
                file = %a.file,
                %port,
                %to,
                "ProxyDHCP {} sent",
                if port == Port::Dhcp { "offer" } else { "ack" }
            );
            Some((to, answer::encode(&a.reply)))
        }
        Err(why) => {
            let mac = answer::format_mac(msg.chaddr());
            if why.is_warning() {
                tracing::warn!(interface = %iface, %mac, %port, "no ProxyDHCP answer: {why}");
            } else {
                tracing::debug!(interface = %iface, %mac, %port, %from, "ignored: {why}");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field_and_what_was_expected() {
        let mut c = ProxyConfig::new("eth0", "ftp://x/boot.ipxe");
        c.server_addr = Some(Ipv4Addr::new(192, 0, 2, 1));
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "proxy DHCP http_boot_url: \"ftp://x/boot.ipxe\": expected an http:// URL"
            ),
            "{e}"
        );
        c.http_boot_url = format!("http://192.0.2.1/{}", "a".repeat(120));
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.contains("is 137 bytes: the DHCP file field holds 1 to 127 bytes"),
            "{e}"
        );
        c.http_boot_url = "http://192.0.2.1:8080/boot.ipxe".into();
        c.bios_file = String::new();
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("proxy DHCP bios_file: \"\" is 0 bytes"),
            "{e}"
        );
        c.bios_file = "undionly.kpxe".into();
        c.interface = "a-very-long-interface-name".into();
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("proxy DHCP interface:"), "{e}");
    }

    #[test]
    fn explicit_addresses_need_no_interface_lookup_and_tftp_defaults_to_server() {
        let mut c = ProxyConfig::new("nonexistent0", "http://192.0.2.1:8080/boot.ipxe");
        c.server_addr = Some(Ipv4Addr::new(192, 0, 2, 1));
        let b = c.resolve().unwrap();
        assert_eq!(b.tftp_addr, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(b.bios_file, "undionly.kpxe");
        assert_eq!(b.efi_file, "ipxe.efi");
        c.tftp_addr = Some(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(c.resolve().unwrap().tftp_addr, Ipv4Addr::new(192, 0, 2, 2));
    }

    #[test]
    fn interface_lookup_errors_name_the_interface() {
        let e = interface_ipv4("nonexistent0").unwrap_err().to_string();
        assert_eq!(e, "interface nonexistent0: no such network interface");
        // Loopback exists everywhere and has 127.0.0.1.
        assert_eq!(interface_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        let c = ProxyConfig::new("nonexistent0", "http://192.0.2.1:8080/boot.ipxe");
        assert!(matches!(c.resolve(), Err(ProxyError::NoInterface { .. })));
    }

    #[test]
    fn bind_errors_say_what_is_missing() {
        let e = ProxyError::Bind {
            interface: "eth0".into(),
            port: 67,
            error: io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32),
        };
        assert_eq!(
            e.to_string(),
            "binding UDP 67 on eth0: permission denied (needs root or CAP_NET_BIND_SERVICE, and CAP_NET_RAW for SO_BINDTODEVICE)"
        );
        let e = ProxyError::Bind {
            interface: "eth0".into(),
            port: 4011,
            error: io::Error::from_raw_os_error(nix::errno::Errno::EADDRINUSE as i32),
        };
        assert!(e
            .to_string()
            .starts_with("binding UDP 4011 on eth0: address in use"));
    }

    #[test]
    fn handle_answers_pxe_and_ignores_garbage() {
        let boot = BootConfig {
            server_addr: Ipv4Addr::new(192, 0, 2, 1),
            tftp_addr: Ipv4Addr::new(192, 0, 2, 1),
            http_boot_url: "http://192.0.2.1:8080/boot.ipxe".into(),
            bios_file: "undionly.kpxe".into(),
            efi_file: "ipxe.efi".into(),
        };
        let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let d = answer::pxe_discover(1, [2, 0, 0, 0, 0, 1], Some(0), true);
        let (to, bytes) = handle(&d.to_vec_checked(), from, Port::Dhcp, &boot, "eth0").unwrap();
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let r = answer::parse(&bytes).unwrap();
        assert_eq!(answer::boot_file(&r).unwrap(), "undionly.kpxe");
        assert!(handle(b"garbage", from, Port::Dhcp, &boot, "eth0").is_none());
        let plain = answer::pxe_discover(2, [2, 0, 0, 0, 0, 2], None, false);
        assert!(handle(&plain.to_vec_checked(), from, Port::Dhcp, &boot, "eth0").is_none());
    }

    trait ToVecChecked {
        fn to_vec_checked(&self) -> Vec<u8>;
    }
    impl ToVecChecked for dhcproto::v4::Message {
        fn to_vec_checked(&self) -> Vec<u8> {
            dhcproto::Encodable::to_vec(self).unwrap()
        }
    }
}
