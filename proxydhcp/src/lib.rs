//! cairn-proxydhcp: ProxyDHCP for `cairn serve --proxy-dhcp IFACE`. Owns answering PXE clients beside
//! a site's existing DHCP server (UDP 67 and 4011 on one interface) with the boot file for their
//! architecture, and iPXE with the HTTP URL of `/boot.ipxe`. Hands out no addresses, answers no
//! client that is not PXE, serves no files (TFTP and HTTP are `cairn-pxe`'s).
//!
//! ```no_run
//! # async fn f() -> Result<(), cairn_proxydhcp::ProxyError> {
//! use cairn_proxydhcp::{ProxyConfig, ProxyDhcp};
//! let cfg = ProxyConfig::new("eth0", "http://192.0.2.1:8080/boot.ipxe");
//! let proxy = ProxyDhcp::bind(&cfg)?; // needs root (ports 67/4011, SO_BINDTODEVICE)
//! let handle = proxy.spawn()?; // inside a tokio runtime
//! // ...
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod answer;
mod server;

pub use answer::{
    answer, arch_name, boot_file, decide, encode, parse, reply_destination, Answer, BootConfig,
    Firmware, Ignored, PacketError, Port, CLIENT_PORT, DHCP_PORT, PXE_PORT,
};
pub use server::{interface_ipv4, ProxyConfig, ProxyDhcp, ProxyError, ProxyHandle};

/// Re-exported so callers and tests can build and read messages with the same types.
pub use dhcproto;
