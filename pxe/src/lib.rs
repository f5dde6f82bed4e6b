//! cairn-pxe: `cairn serve`, the network boot server. Owns the inventory (profiles, groups, selectors,
//! cloud-config templates), the HTTP endpoints (iPXE scripts, image assets with ranges, cloud-config,
//! metadata, machine status) and the TFTP wiring (iPXE binaries, assets, `boot.ipxe`) on top of
//! `cairn-tftp`. Must not touch image building (builder/) or cloud-config semantics (cairn-cloudconfig,
//! whose `validate` it calls).
//!
//! Endpoints: `GET /boot.ipxe`, `/ipxe?mac=..`, `/assets/IMAGE/FILE`, `/cloud-config?mac=..` (alias
//! `/cloud`), `/metadata?mac=..`, `/machines`, `/healthz`, signed update bundles at `/update/v1/CHANNEL/FILE`, machines' reports at
//! `POST /lifecycle/v1/report` and the installer's `/lifecycle/v1/map/IMAGE` ([`lifecycle`]), and the
//! etcd discovery service under `/discovery` (cairn-discovery). ProxyDHCP (cairn-proxydhcp) with `--proxy-dhcp`. See README.md.

pub mod assets;
pub mod explain;
pub mod facts;
pub mod http;
pub mod inventory;
pub mod ipxe;
pub mod lifecycle;
pub mod programs;
mod server;
pub mod status;
pub mod updates;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

pub use facts::{Facts, Mac};
pub use http::HttpLimits;
pub use inventory::{
    BootMode, CloudConfigAccess, Group, Inventory, InventoryError, Profile, RenderContext,
    Transport,
};
pub use server::{Limits, LocalAddrs, Server, ServerConfig, Stopper, IPXE_FILES};
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
    /// Listen address of the operators' endpoints (`/machines`: every MAC, IP, hostname and
    /// serial seen; `/healthz`), kept off the machines' HTTP listener; `off` serves them nowhere.
    /// Put it on a management network, not the boot LAN.
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR:PORT|off", value_parser = parse_admin_addr)]
    pub admin_addr: AdminAddr,
    /// Do not run the TFTP server.
    #[arg(long)]
    pub no_tftp: bool,
    /// Directory holding undionly.kpxe, ipxe.efi and snponly.efi (Debian package ipxe), served over TFTP
    /// when the image folders' own ipxe/ lacks them; its symlinks are followed (trusted).
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
    /// Keep etcd discovery tokens in etcd instead of --state-dir (for several servers):
    /// etcd://HOST:PORT[,HOST:PORT][/prefix].
    #[arg(long, value_name = "etcd://HOST:PORT")]
    pub store: Option<String>,
    /// HTTP connections open at once; beyond it the longest-idle one is closed (503 when all are busy).
    #[arg(long, default_value_t = HttpLimits::default().max_connections, value_name = "N")]
    pub http_max_connections: usize,
    /// Seconds a client has to send a whole request head.
    #[arg(long, default_value_t = HttpLimits::default().header_timeout.as_secs(), value_name = "SECS")]
    pub http_header_timeout: u64,
    /// Seconds an HTTP keep-alive connection may stay idle (also: a response nobody reads).
    #[arg(long, default_value_t = HttpLimits::default().idle_timeout.as_secs(), value_name = "SECS")]
    pub http_idle_timeout: u64,
    /// Machines kept in the status table (/machines); the one seen least recently goes first.
    #[arg(long, default_value_t = status::DEFAULT_MAX_MACHINES, value_name = "N")]
    pub max_machines: usize,
    /// TFTP transfers at once; a request beyond it takes the place of the oldest transfer whose
    /// client never acknowledged data, else (all progressed) gets a TFTP error ("server busy").
    #[arg(long, default_value_t = cairn_tftp::DEFAULT_MAX_TRANSFERS, value_name = "N")]
    pub tftp_max_transfers: usize,
    /// TFTP transfers at once from one client address.
    #[arg(long, default_value_t = cairn_tftp::DEFAULT_MAX_TRANSFERS_PER_CLIENT, value_name = "N")]
    pub tftp_max_transfers_per_client: usize,
    /// A TFTP transfer whose client acknowledged nothing new for this long ends, whatever
    /// timeout it asked for (e.g. 15s).
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub tftp_max_idle: std::time::Duration,
    /// etcd discovery tokens kept at once (not counting the inventory's groups'); /new beyond it is 503.
    #[arg(long, default_value_t = cairn_discovery::DEFAULT_MAX_TOKENS, value_name = "N")]
    pub discovery_max_tokens: usize,
    /// Discovery tokens one client address may have made and still kept; /new beyond it is 429.
    #[arg(long, default_value_t = cairn_discovery::DEFAULT_MAX_TOKENS_PER_CLIENT, value_name = "N")]
    pub discovery_max_tokens_per_client: usize,
    /// A discovery token nobody registered with is removed this long after it was made.
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub discovery_unused_token_ttl: std::time::Duration,
    /// A used discovery token is removed this long after its last change.
    #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub discovery_idle_token_ttl: std::time::Duration,
}

impl ServeArgs {
    /// The server configuration these arguments describe.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        if let Some(s) = &self.store {
            if !s.starts_with("etcd://") {
                anyhow::bail!(
                    "--store {s:?}: expected etcd://HOST:PORT (files in --state-dir are the default)"
                );
            }
        }
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
            store: self.store.clone(),
            admin_addr: self.admin_addr.0,
        })
    }
}

impl ServeArgs {
    /// The limits these arguments set.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.http_max_connections == 0 || self.max_machines == 0 {
            anyhow::bail!("--http-max-connections and --max-machines must be at least 1");
        }
        if self.tftp_max_transfers == 0
            || self.tftp_max_transfers_per_client == 0
            || self.discovery_max_tokens == 0
            || self.discovery_max_tokens_per_client == 0
        {
            anyhow::bail!("--tftp-max-transfers, --tftp-max-transfers-per-client, --discovery-max-tokens and --discovery-max-tokens-per-client must be at least 1");
        }
        if self.tftp_max_idle.is_zero()
            || self.discovery_unused_token_ttl.is_zero()
            || self.discovery_idle_token_ttl.is_zero()
        {
            anyhow::bail!(
                "--tftp-max-idle and the --discovery-*-ttl durations must be longer than 0"
            );
        }
        if self.http_header_timeout == 0 || self.http_idle_timeout == 0 {
            anyhow::bail!(
                "--http-header-timeout and --http-idle-timeout must be at least 1 second"
            );
        }
        Ok(Limits {
            http: HttpLimits {
                max_connections: self.http_max_connections,
                header_timeout: std::time::Duration::from_secs(self.http_header_timeout),
                idle_timeout: std::time::Duration::from_secs(self.http_idle_timeout),
                send_timeout: std::time::Duration::from_secs(self.http_idle_timeout),
                ..HttpLimits::default()
            },
            max_machines: self.max_machines,
            tftp: cairn_tftp::Config {
                max_transfers: self.tftp_max_transfers,
                max_transfers_per_client: self.tftp_max_transfers_per_client,
                max_idle: self.tftp_max_idle,
                ..cairn_tftp::Config::default()
            },
            discovery: cairn_discovery::Limits {
                max_tokens: self.discovery_max_tokens,
                max_tokens_per_client: self.discovery_max_tokens_per_client,
                unused_token_ttl: self.discovery_unused_token_ttl,
                idle_token_ttl: self.discovery_idle_token_ttl,
                ..cairn_discovery::Limits::default()
            },
        })
    }
}

/// Runs `cairn serve` until Ctrl-C / SIGTERM (SIGHUP reloads the inventory). Builds its own tokio runtime.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.server_config()?;
    let limits = args.limits()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-serve")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let server = Server::start_with_limits(cfg, limits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let mut argv = vec!["serve", "--config", "lab.yaml"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.serve.server_config()
    }

    #[test]
    fn serve_arguments() {
        let c = config(&[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/cairn/serve"));
        assert_eq!((c.proxy_dhcp, c.store), (None, None));
        assert_eq!(c.tftp_addr, Some("0.0.0.0:69".parse().unwrap()));
        let cli = |a: &[&str]| {
            let mut argv = vec!["serve", "--config", "lab.yaml"];
            argv.extend_from_slice(a);
            Cli::try_parse_from(argv).unwrap().serve.limits()
        };
        assert_eq!(cli(&[]).unwrap(), Limits::default());
        let l = cli(&[
            "--http-max-connections",
            "64",
            "--http-header-timeout",
            "5",
            "--max-machines",
            "10",
        ])
        .unwrap();
        assert_eq!(l.http.max_connections, 64);
        assert_eq!(l.http.header_timeout, std::time::Duration::from_secs(5));
        assert_eq!(l.max_machines, 10);
        assert!(cli(&["--http-max-connections", "0"]).is_err());
        let l = cli(&[
            "--tftp-max-transfers",
            "16",
            "--tftp-max-transfers-per-client",
            "2",
            "--tftp-max-idle",
            "5s",
            "--discovery-max-tokens",
            "9",
            "--discovery-max-tokens-per-client",
            "3",
            "--discovery-unused-token-ttl",
            "1h",
            "--discovery-idle-token-ttl",
            "2d",
        ])
        .unwrap();
        assert_eq!(
            (l.tftp.max_transfers, l.tftp.max_transfers_per_client),
            (16, 2)
        );
        assert_eq!(l.tftp.max_idle, std::time::Duration::from_secs(5));
        assert_eq!(
            (l.discovery.max_tokens, l.discovery.max_tokens_per_client),
            (9, 3)
        );
        assert_eq!(
            l.discovery.unused_token_ttl,
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(
            l.discovery.idle_token_ttl,
            std::time::Duration::from_secs(2 * 86400)
        );
        assert!(cli(&["--tftp-max-transfers", "0"]).is_err());
        assert!(cli(&["--discovery-idle-token-ttl", "0s"]).is_err());
        let c = config(&[
            "--proxy-dhcp",
            "eth1",
            "--store",
            "etcd://10.0.0.2:2379/cairn",
            "--state-dir",
            "/srv/cairn",
            "--no-tftp",
        ])
        .unwrap();
        assert_eq!(c.proxy_dhcp.as_deref(), Some("eth1"));
        assert_eq!(c.store.as_deref(), Some("etcd://10.0.0.2:2379/cairn"));
        assert_eq!(c.state_dir, PathBuf::from("/srv/cairn"));
        assert_eq!(c.tftp_addr, None);
        let e = config(&["--store", "/srv/tokens"]).unwrap_err().to_string();
        assert!(
            e.contains("--store \"/srv/tokens\": expected etcd://"),
            "{e}"
        );
        let e = config(&["--public-url", "10.0.0.1:8080"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an http:// URL"), "{e}");
    }
}

/// `--admin-addr`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

fn parse_admin_addr(s: &str) -> Result<AdminAddr, String> {
    if s == "off" {
        return Ok(AdminAddr(None));
    }
    s.parse::<SocketAddr>()
        .map(|a| AdminAddr(Some(a)))
        .map_err(|e| format!("{s:?}: {e}: expected ADDR:PORT such as 127.0.0.1:8081, or off"))
}
