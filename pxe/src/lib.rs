//! cairn-pxe: `cairn serve`, the network boot server. Owns the inventory (profiles, groups, selectors,
//! cloud-config templates), the HTTP endpoints (iPXE scripts, image assets with ranges, cloud-config,
//! metadata, machine status) and the TFTP wiring (iPXE binaries, assets, `boot.ipxe`) on top of
//! `cairn-tftp`. Must not touch image building (builder/) or cloud-config semantics (cairn-cloudconfig,
//! whose `validate` it calls).
//!
//! Endpoints: `GET /boot.ipxe`, `/ipxe?mac=..`, `/assets/IMAGE/FILE`, `/cloud-config?mac=..` (alias
//! `/cloud`), `/metadata?mac=..`, `/machines`, `/healthz`, signed update bundles at `/update/v1/CHANNEL/FILE`, and the etcd discovery service under
//! `/discovery` (cairn-discovery). ProxyDHCP (cairn-proxydhcp) with `--proxy-dhcp`. See README.md.

pub mod assets;
pub mod facts;
pub mod inventory;
pub mod ipxe;
mod server;
pub mod status;
pub mod updates;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

pub use facts::{Facts, Mac};
pub use inventory::{
    BootMode, Group, Inventory, InventoryError, Profile, RenderContext, Transport,
};
pub use server::{LocalAddrs, Server, ServerConfig, Stopper, IPXE_FILES};
pub use status::{Machine, Stage};

/// Command-line arguments of `cairn serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Inventory file (YAML: profiles and groups).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR:PORT")]
    pub http_addr: SocketAddr,
    /// TFTP listen address.
    #[arg(long, default_value = "0.0.0.0:69", value_name = "ADDR:PORT")]
    pub tftp_addr: SocketAddr,
    /// Do not run the TFTP server.
    #[arg(long)]
    pub no_tftp: bool,
    /// Directory holding undionly.kpxe and ipxe.efi (Debian package ipxe).
    #[arg(long, default_value = "/usr/lib/ipxe", value_name = "DIR")]
    pub ipxe_dir: PathBuf,
    /// Base URL machines use to reach this server, e.g. http://10.0.0.1:8080 (default: from each
    /// request's Host header; TFTP's boot.ipxe then uses iPXE's ${next-server}).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Where the server keeps what survives a restart (etcd discovery tokens and registrations).
    #[arg(long, default_value = "/var/lib/cairn/serve", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Also answer PXE clients on this interface as a ProxyDHCP server (UDP 67 and 4011), beside
    /// the site's own DHCP server: BIOS gets undionly.kpxe, UEFI ipxe.efi, iPXE /boot.ipxe.
    #[arg(long, value_name = "IFACE")]
    pub proxy_dhcp: Option<String>,
}

impl ServeArgs {
    /// The server configuration these arguments describe.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        if let Some(u) = &self.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.contains(char::is_whitespace)
            {
                anyhow::bail!(
                    "--public-url {u:?}: expected an http:// URL such as http://10.0.0.1:8080"
                );
            }
        }
        Ok(ServerConfig {
            config: self.config.clone(),
            http_addr: self.http_addr,
            tftp_addr: (!self.no_tftp).then_some(self.tftp_addr),
            ipxe_dir: self.ipxe_dir.clone(),
            public_url: self.public_url.clone(),
            reload_on_sighup: true,
            state_dir: self.state_dir.clone(),
            proxy_dhcp: self.proxy_dhcp.clone(),
        })
    }
}

/// Runs `cairn serve` until Ctrl-C / SIGTERM (SIGHUP reloads the inventory). Builds its own tokio runtime.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.server_config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-serve")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let server = Server::start(cfg)
            .await
            .with_context(|| format!("starting cairn serve with {}", args.config.display()))?;
        let stopper = server.stopper();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: transfers in flight finish first");
            stopper.stop();
        });
        server.wait().await
    })
}
