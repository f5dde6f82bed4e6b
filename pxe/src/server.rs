//! The running server: shared state (inventory behind an atomic swap, status table, etcd discovery
//! tokens), the HTTP routes (axum, with cairn-discovery nested at `/discovery`), the TFTP handler
//! (cairn-tftp), ProxyDHCP (cairn-proxydhcp), reload, and start/stop of every listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, Response, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assets::{self, AssetError};
use crate::facts::Facts;
use crate::inventory::{CloudConfigAccess, Group, Inventory, InventoryError, RenderContext};
use crate::ipxe::{self, Endpoints};
use crate::status::{self, Machine, Sighting, Stage, StatusTable, BOOT_SESSION};

use crate::programs::Programs;
pub use crate::programs::IPXE_FILES;

/// How to run a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The inventory file.
    pub config: PathBuf,
    /// HTTP listen address (port 0: any free port).
    pub http_addr: SocketAddr,
    /// TFTP listen address; None: no TFTP.
    pub tftp_addr: Option<SocketAddr>,
    /// Directory with `undionly.kpxe`, `ipxe.efi`, ... (Debian's `ipxe` package: /usr/lib/ipxe).
    pub ipxe_dir: PathBuf,
    /// Base URL machines reach the HTTP server at; None: from each request's Host header.
    pub public_url: Option<String>,
    /// Reload the inventory on SIGHUP.
    pub reload_on_sighup: bool,
    /// Where the server keeps what must survive a restart (etcd discovery tokens and
    /// registrations, under `discovery/`).
    pub state_dir: PathBuf,
    /// Answer PXE clients on this interface as a ProxyDHCP server (UDP 67 and 4011).
    pub proxy_dhcp: Option<String>,
    /// Where discovery tokens and the machines' lifecycle records live:
    /// `etcd://HOST:PORT[,HOST:PORT][/prefix]` (tokens under `prefix/tokens/`, default prefix
    /// `/cairn/discovery`; records under `prefix/lifecycle/`, default `/cairn/lifecycle/`, held
    /// by one server at a time); None: files under `state_dir/discovery` and
    /// `state_dir/lifecycle`.
    pub store: Option<String>,
    /// The operators' listener: `/machines` (every MAC, IP, hostname and serial seen) and
    /// `/healthz`, never on the machines' HTTP listener; None: not served at all.
    pub admin_addr: Option<SocketAddr>,
}

/// Limits of a [`Server`] (kept apart from [`ServerConfig`] so that existing struct literals still
/// build); [`Default`] is what `cairn serve` uses without flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// HTTP connections and timeouts.
    pub http: crate::http::HttpLimits,
    /// Rows of the machine status table (least recently seen evicted beyond it).
    pub max_machines: usize,
    /// TFTP transfers at once, per client, and how long one may stall.
    pub tftp: cairn_tftp::Config,
    /// Discovery tokens: sizes, counts, expiry.
    pub discovery: cairn_discovery::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http: crate::http::HttpLimits::default(),
            max_machines: crate::status::DEFAULT_MAX_MACHINES,
            tftp: cairn_tftp::Config::default(),
            discovery: cairn_discovery::Limits::default(),
        }
    }
}

/// Shared by every request.
pub(crate) struct Shared {
    inventory: ArcSwap<Inventory>,
    config_path: PathBuf,
    public_url: Option<String>,
    http_port: u16,
    tftp_port: std::sync::OnceLock<u16>,
    ipxe_dir: PathBuf,
    /// The iPXE programs at the TFTP root, resolved at start and on reload.
    programs: ArcSwap<Programs>,
    status: StatusTable,
    discovery: cairn_discovery::Discovery,
    /// Discovery token of each group with `etcd_cluster`, by group name.
    etcd_tokens: ArcSwap<BTreeMap<String, String>>,
    /// The machines' lifecycle records (install once, reports).
    records: crate::lifecycle::Records,
}

/// The discovery token of every group with `etcd_cluster` (made once per group, then kept).
fn group_tokens(
    inv: &Inventory,
    discovery: &cairn_discovery::Discovery,
) -> Result<BTreeMap<String, String>, InventoryError> {
    let mut tokens = BTreeMap::new();
    for (i, g) in inv.groups.iter().enumerate() {
        if let Some(size) = g.etcd_cluster {
            let token = discovery
                .ensure_group_token(&g.name, u64::from(size))
                .map_err(|e| {
                    InventoryError::Yaml(cairn_yaml::Error::Invalid {
                        file: inv.path.display().to_string(),
                        line: g.line,
                        key: format!("groups[{i}].etcd_cluster"),
                        message: e.to_string(),
                    })
                })?;
            tokens.insert(g.name.clone(), token);
        }
    }
    Ok(tokens)
}

impl Shared {
    fn reload(&self) -> Result<(), InventoryError> {
        let new = Inventory::load(&self.config_path)?;
        check_transports(&new, self.tftp_port.get().is_some()).map_err(|m| {
            InventoryError::Yaml(cairn_yaml::Error::Invalid {
                file: self.config_path.display().to_string(),
                line: 1,
                key: "profiles".into(),
                message: m,
            })
        })?;
        let tokens = group_tokens(&new, &self.discovery)?;
        self.etcd_tokens.store(Arc::new(tokens));
        let programs = Programs::resolve(&new, self.ipxe_dir.canonicalize().ok().as_deref());
        tracing::info!("iPXE programs: {}", programs.describe());
        self.programs.store(Arc::new(programs));
        tracing::info!(
            config = %self.config_path.display(),
            profiles = new.profiles.len(),
            groups = new.groups.len(),
            "inventory reloaded"
        );
        self.records.apply_plans(&new.rollouts);
        self.inventory.store(Arc::new(new));
        Ok(())
    }

    /// Base URL for a request: `--public-url`, else `http://` + Host header, else the listener's port on
    /// the address the request came in on.
    fn base_url(&self, headers: &HeaderMap, local: Option<SocketAddr>) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_string();
        }
        if let Some(h) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            if !h.is_empty() && !h.contains(['/', ' ', '$']) {
                return format!("http://{h}");
            }
        }
        match local {
            Some(a) => format!("http://{a}"),
            None => format!("http://127.0.0.1:{}", self.http_port),
        }
    }

    fn endpoints(&self, base: &str) -> Endpoints {
        let host = host_of(base);
        Endpoints {
            public_url: base.to_string(),
            tftp: self.tftp_port.get().map(|p| format!("{host}:{p}")),
        }
    }
}

/// `host` (or `[v6]`) of `http://host:port/...`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(end) = authority.find(']') {
        return authority[..=end].to_string();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string()
}

fn check_transports(inv: &Inventory, tftp: bool) -> Result<(), String> {
    if tftp {
        return Ok(());
    }
    match inv
        .profiles
        .iter()
        .find(|p| p.transport == crate::inventory::Transport::Tftp)
    {
        Some(p) => Err(format!(
            "profile {:?} has transport: tftp but the TFTP server is off (--no-tftp)",
            p.name
        )),
        None => Ok(()),
    }
}

/// Who a response was for; read by the request logger.
#[derive(Clone)]
struct MachineTag(String);

fn tagged(mut r: Response<Body>, who: String) -> Response<Body> {
    r.extensions_mut().insert(MachineTag(who));
    r
}

type AppState = Arc<Shared>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    assets::plain(status, body)
}

fn sighting(facts: &Facts, ip: &str, group: Option<(&str, &str)>) -> Sighting {
    let l = |k: &str| facts.labels.get(k).cloned();
    Sighting {
        key: facts.machine_key(ip),
        mac: l("mac"),
        uuid: l("uuid"),
        hostname: l("hostname"),
        serial: l("serial"),
        ip: ip.to_string(),
        group: group.map(|g| g.0.to_string()),
        profile: group.map(|g| g.1.to_string()),
    }
}

async fn boot_ipxe(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response<Body> {
    let base = s.base_url(&headers, None);
    let ip = peer.ip().to_string();
    let who = s.status.key_for_ip(&ip).unwrap_or_else(|| ip.clone());
    tagged(text(StatusCode::OK, ipxe::boot_script(&base)), who)
}

async fn machine_ipxe(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response<Body> {
    let facts = Facts::from_query(uri.query().unwrap_or(""));
    let ip = peer.ip().to_string();
    let base = s.base_url(&headers, None);
    let inv = s.inventory.load();
    let who = facts.machine_key(&ip);
    let Some(group) = inv.select(&facts) else {
        tracing::warn!(machine = %who, "no group matches {}", facts.describe());
        s.status.record(sighting(&facts, &ip, None), Stage::Seen);
        let script = ipxe::no_match_script(&facts, &format!("{base}/boot.ipxe"));
        return tagged(text(StatusCode::OK, script), who);
    };
    let profile = inv.profile_of(group);
    // the lifecycle records decide (install once, or the diskless A/B) and save: blocking work
    let install = profile.boot == crate::inventory::BootMode::Install;
    let (s2, inv2, facts2, group_name, ep) = (
        s.clone(),
        inv.clone(),
        facts.clone(),
        group.name.clone(),
        s.endpoints(&base),
    );
    let script = tokio::task::spawn_blocking(move || {
        let group = inv2
            .groups
            .iter()
            .find(|g| g.name == group_name)
            .expect("the group was selected from this inventory");
        if install {
            s2.records.install_answer(&inv2, group, &facts2, &ep)
        } else {
            s2.records.diskless_answer(&inv2, group, &facts2, &ep)
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("netboot decision: {e}")));
    match script {
        Ok(script) => {
            if group.cloud_config_access == CloudConfigAccess::BootedIp {
                warn_moved_boot(&s, group, &who, peer);
            }
            s.status.record(
                sighting(&facts, &ip, Some((&group.name, &profile.name))),
                Stage::Script,
            );
            tagged(text(StatusCode::OK, script), who)
        }
        Err(m) => tagged(text(StatusCode::INTERNAL_SERVER_ERROR, m + "\n"), who),
    }
}

/// A machine of a `booted-ip` group netbooting from another address than its last netboot within
/// the boot session: a new DHCP lease, or a host claiming its MAC. The session follows the newest
/// netboot either way; the operator should know.
fn warn_moved_boot(s: &Shared, group: &Group, who: &str, peer: SocketAddr) {
    let ip = peer.ip().to_canonical();
    if let Some(prev) = s.status.boot(who) {
        let ago = prev.at.elapsed();
        if prev.ip != ip && ago <= BOOT_SESSION {
            tracing::warn!(
                machine = %who,
                group = %group.name,
                previous = %prev.ip,
                now = %ip,
                secs_since_previous = ago.as_secs(),
                "machine netbooted again from another address: its cloud-config now goes to the new address only (cloud_config_access: booted-ip); a new DHCP lease, or a host claiming its MAC"
            );
        }
    }
}

/// For a group with `cloud_config_access: booted-ip`, the 403 for a request that does not come from
/// the address that netbooted the machine from this server within [`BOOT_SESSION`]; None when the
/// request may have what it asked for. The answer says why without telling where the machine
/// booted or whether it did.
fn refuse_unbooted(
    s: &Shared,
    group: &Group,
    facts: &Facts,
    peer: SocketAddr,
    what: &str,
) -> Option<Response<Body>> {
    if group.cloud_config_access != CloudConfigAccess::BootedIp {
        return None;
    }
    let who = facts.machine_key(&peer.ip().to_string());
    let why =
        status::check_boot(s.status.boot(&who), peer.ip(), Instant::now(), BOOT_SESSION).err()?;
    let hint = match why {
        status::NotBooted::Elsewhere { .. } => " (if this is the machine itself, its operating system got another DHCP lease than iPXE: key leases on the MAC, e.g. systemd-networkd's [DHCPv4] ClientIdentifier=mac, or reserve its address)",
        _ => "",
    };
    tracing::warn!(machine = %who, %peer, group = %group.name, "{what} refused (cloud_config_access: booted-ip): {why}{hint}");
    Some(tagged(
        text(
            StatusCode::FORBIDDEN,
            format!(
                "cairn: group {:?} has cloud_config_access: booted-ip: its cloud-config and metadata go only to the address that netbooted {who} from this server (fetched its iPXE script) in the last {} minutes, and this request comes from {}; a machine that did not netboot from this server (booted from disk, or before the server started) gets none\n",
                group.name,
                BOOT_SESSION.as_secs() / 60,
                peer.ip().to_canonical(),
            ),
        ),
        who,
    ))
}

async fn cloud_config(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response<Body> {
    let facts = Facts::from_query(uri.query().unwrap_or(""));
    let ip = peer.ip().to_string();
    let who = facts.machine_key(&ip);
    let inv = s.inventory.load();
    let Some(group) = inv.select(&facts) else {
        return tagged(
            text(
                StatusCode::NOT_FOUND,
                format!("cairn: no group matches {}\n", facts.describe()),
            ),
            who,
        );
    };
    if let Some(refused) = refuse_unbooted(&s, group, &facts, peer, "cloud-config") {
        return refused;
    }
    let profile = inv.profile_of(group);
    if profile.cloud_config.is_none() {
        return tagged(
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "cairn: group {:?} (profile {:?}) has no cloud_config\n",
                    group.name, profile.name
                ),
            ),
            who,
        );
    }
    let public_url = s.base_url(&headers, None);
    let etcd_discovery = s
        .etcd_tokens
        .load()
        .get(&group.name)
        .map(|t| format!("{public_url}/discovery/{t}"));
    let ctx = RenderContext {
        facts: facts.clone(),
        ip: ip.clone(),
        public_url,
        etcd_discovery,
    };
    match inv.render_cloud_config(group, &ctx) {
        Ok(body) => {
            s.status.record(
                sighting(&facts, &ip, Some((&group.name, &profile.name))),
                Stage::CloudConfig,
            );
            tagged(text(StatusCode::OK, body), who)
        }
        Err(e) => {
            tracing::error!(machine = %who, group = %group.name, "rendering cloud-config: {e:#}");
            tagged(
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cairn: rendering the cloud-config of group {:?}: {e}\n",
                        group.name
                    ),
                ),
                who,
            )
        }
    }
}

async fn metadata(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Response<Body> {
    let facts = Facts::from_query(uri.query().unwrap_or(""));
    let who = facts.machine_key(&peer.ip().to_string());
    let inv = s.inventory.load();
    match inv.select(&facts) {
        Some(group) => refuse_unbooted(&s, group, &facts, peer, "metadata").unwrap_or_else(|| {
            tagged(text(StatusCode::OK, ipxe::metadata_env(group, &facts)), who)
        }),
        None => tagged(
            text(
                StatusCode::NOT_FOUND,
                format!("cairn: no group matches {}\n", facts.describe()),
            ),
            who,
        ),
    }
}

async fn asset(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(rel): UrlPath<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let ip = peer.ip().to_string();
    let inv = s.inventory.load_full();
    let opened = {
        let rel = rel.clone();
        // Path resolution and open are file-system calls: keep them off the runtime's workers.
        tokio::task::spawn_blocking(move || assets::open_asset(&inv, &rel))
            .await
            .unwrap_or_else(|_| Err(AssetError::NotFound("open failed".into())))
    };
    let who = s.status.key_for_ip(&ip).unwrap_or_else(|| ip.clone());
    match opened {
        Ok((file, path)) => {
            let stage = match path.file_name().and_then(|n| n.to_str()) {
                Some("vmlinuz") => Some(Stage::Kernel),
                Some("initrd.img" | "pxe-initrd.img") => Some(Stage::Initrd),
                _ => None,
            };
            if let Some(stage) = stage {
                s.status.record_by_ip(&ip, stage);
            }
            tagged(assets::file_response(file, &headers).await, who)
        }
        Err(AssetError::Refused(m)) => {
            tracing::warn!(machine = %who, "asset {rel:?} refused: {m}");
            tagged(text(StatusCode::FORBIDDEN, format!("cairn: {m}\n")), who)
        }
        Err(AssetError::NotFound(m)) => tagged(
            text(StatusCode::NOT_FOUND, format!("cairn: not found: {m}\n")),
            who,
        ),
    }
}

/// `/update/v1/<channel>/<file>`: the channel's manifest, its signature, and the parts it lists
/// (Range requests, so an agent resumes a cut download).
async fn update_file(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath((channel, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    let ip = peer.ip().to_string();
    let who = s.status.key_for_ip(&ip).unwrap_or_else(|| ip.clone());
    let inv = s.inventory.load_full();
    let Some(versions) = inv.bundles.get(&channel) else {
        let known: Vec<&str> = inv.channels.keys().map(String::as_str).collect();
        return tagged(
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "cairn: no update channel {channel:?} (channels: {})\n",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ),
            who,
        );
    };
    // a rollout of the channel: its version to the machines of open waves, the one before to the rest
    let offer = if inv.rollouts.iter().any(|p| p.channel == channel) {
        use cairn_formats::channel::rollout::{MACHINE_HEADER, SEEDS, SEED_HEADER};
        use cairn_formats::lifecycle::normalize_mac;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mac = header(MACHINE_HEADER)
            .and_then(normalize_mac)
            .or_else(|| s.status.key_for_ip(&ip).and_then(|k| normalize_mac(&k)));
        let seed = header(SEED_HEADER)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|v| *v < SEEDS);
        let (s2, inv2, ch2) = (s.clone(), inv.clone(), channel.clone());
        tokio::task::spawn_blocking(move || {
            s2.records.update_offer(&inv2, &ch2, mac.as_deref(), seed)
        })
        .await
        .unwrap_or_else(|e| crate::lifecycle::UpdateOffer::Hold {
            version: String::new(),
            reason: e.to_string(),
        })
    } else {
        crate::lifecycle::UpdateOffer::NoRollout
    };
    let pick = match &offer {
        crate::lifecycle::UpdateOffer::NoRollout => None,
        crate::lifecycle::UpdateOffer::Offer { version, .. } => Some((version.as_str(), true)),
        crate::lifecycle::UpdateOffer::Hold { version, .. } => Some((version.as_str(), false)),
    };
    let Some(ch) = crate::updates::offered(versions, pick) else {
        let why = match &offer {
            crate::lifecycle::UpdateOffer::Hold { version, reason } => {
                format!("held back from {version}: {reason}; no older version on offer")
            }
            _ => "the rollout's version is not on offer".into(),
        };
        if file == "manifest" || file == "manifest.json" {
            tracing::info!(machine = %who, channel, "update: {why}");
        }
        return tagged(
            text(
                StatusCode::NOT_FOUND,
                format!("cairn: channel {channel:?}: {why}\n"),
            ),
            who,
        );
    };
    let Some(name) = crate::updates::file_of(ch, &file) else {
        return tagged(
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "cairn: channel {channel:?} ({} {}) has no file {file:?}\n",
                    ch.image, ch.version
                ),
            ),
            who,
        );
    };
    match assets::open_in(&ch.dir, name) {
        Ok((f, _)) => {
            if name == cairn_formats::channel::MANIFEST_FILE {
                match &offer {
                    crate::lifecycle::UpdateOffer::Offer { wave, .. } => {
                        tracing::info!(machine = %who, channel, version = %ch.version, wave, "update manifest offered (rollout)")
                    }
                    crate::lifecycle::UpdateOffer::Hold { version, reason } => {
                        tracing::info!(machine = %who, channel, version = %ch.version, "update manifest offered, held back from {version}: {reason}")
                    }
                    crate::lifecycle::UpdateOffer::NoRollout => {
                        tracing::info!(machine = %who, channel, version = %ch.version, "update manifest offered")
                    }
                }
            }
            tagged(assets::file_response(f, &headers).await, who)
        }
        Err(e) => {
            tracing::error!(machine = %who, channel, "update file {name:?}: {e:?}");
            tagged(
                text(
                    StatusCode::NOT_FOUND,
                    format!("cairn: {name} is missing from the bundle\n"),
                ),
                who,
            )
        }
    }
}

/// `POST /lifecycle/v1/report`: a machine's report of its install, boot or health.
async fn report(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response<Body> {
    let inv = s.inventory.load_full();
    let s2 = s.clone();
    let result = tokio::task::spawn_blocking(move || {
        // the address that last netbooted the MAC named in the report
        let booted = cairn_formats::lifecycle::Report::parse(&body)
            .ok()
            .and_then(|r| s2.status.boot(&r.mac))
            .map(|b| b.ip);
        s2.records.report(&inv, &body, peer.ip(), booted)
    })
    .await
    .unwrap_or_else(|e| Err((500, e.to_string())));
    match result {
        Ok(m) => text(StatusCode::OK, m),
        Err((code, m)) => {
            tracing::warn!(%peer, "machine report refused: {m}");
            text(
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                format!("cairn: {m}\n"),
            )
        }
    }
}

/// `/lifecycle/v1/map/IMAGE`: which bytes of the image's `disk.raw` hold data, with their hashes.
async fn disk_map(State(s): State<AppState>, UrlPath(image): UrlPath<String>) -> Response<Body> {
    let inv = s.inventory.load();
    let Some(img) = inv.images.get(&image) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("cairn: not found: no image {image:?}\n"),
        );
    };
    let disk = img.dir.join(cairn_formats::image_dir::DISK);
    let s2 = s.clone();
    match tokio::task::spawn_blocking(move || s2.records.disk_map(&disk)).await {
        Ok(Ok(body)) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.as_ref().clone()))
            .expect("static response parts"),
        Ok(Err(e)) => text(
            StatusCode::NOT_FOUND,
            format!("cairn: not found: {image}/disk.raw: {e}\n"),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cairn: {e}\n")),
    }
}

/// Operators: every machine's record and every rollout.
async fn lifecycle_snapshot(State(s): State<AppState>) -> Response<Body> {
    let body = serde_json::to_string_pretty(&s.records.snapshot()).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body + "\n"))
        .expect("static response parts")
}

/// Operators: `POST /lifecycle/reinstall?mac=MAC[&overwrite=1]`.
async fn reinstall(State(s): State<AppState>, uri: Uri) -> Response<Body> {
    let q: BTreeMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let Some(mac) = q.get("mac") else {
        return text(
            StatusCode::BAD_REQUEST,
            "cairn: ?mac=MAC is missing\n".into(),
        );
    };
    let overwrite = q.get("overwrite").is_some_and(|v| v == "1" || v == "true");
    let s2 = s.clone();
    let mac2 = mac.clone();
    match tokio::task::spawn_blocking(move || s2.records.reinstall(&mac2, overwrite)).await {
        Ok(Ok(())) => text(
            StatusCode::OK,
            format!("cairn: {mac} will be installed again at its next netboot\n"),
        ),
        Ok(Err(m)) => text(StatusCode::BAD_REQUEST, format!("cairn: {m}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cairn: {e}\n")),
    }
}

/// Operators: `POST /lifecycle/rollout/resume?channel=CHANNEL`: a paused rollout goes on (its next
/// wave's soak counts from now).
async fn resume_rollout(State(s): State<AppState>, uri: Uri) -> Response<Body> {
    let q: BTreeMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let Some(channel) = q.get("channel").cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            "cairn: ?channel=CHANNEL is missing\n".into(),
        );
    };
    let s2 = s.clone();
    let ch2 = channel.clone();
    match tokio::task::spawn_blocking(move || s2.records.resume(&ch2)).await {
        Ok(Ok(())) => text(
            StatusCode::OK,
            format!("cairn: the rollout of {channel:?} goes on\n"),
        ),
        Ok(Err(m)) => text(StatusCode::BAD_REQUEST, format!("cairn: {m}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cairn: {e}\n")),
    }
}

/// Operators: `GET /explain?mac=MAC[&uuid=..][&hostname=..][&KEY=VALUE..]`: why the machine boots
/// what it boots ([`crate::explain`]); JSON, or text with `Accept: text/plain` or `format=text`.
async fn explain(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response<Body> {
    let mut format = None;
    let mut mac = None;
    let mut others = Vec::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned() {
        match k.as_str() {
            "format" => format = Some(v),
            "mac" => mac = Some(v),
            _ => others.push((k, v)),
        }
    }
    let as_text = match format.as_deref() {
        Some("text") => true,
        Some("json") => false,
        Some(f) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cairn: format: {f:?}: expected text or json\n"),
            )
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json")),
    };
    let facts = match crate::explain::facts_for(mac.as_deref(), others) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cairn: {e}\n")),
    };
    let inv = s.inventory.load_full();
    let s2 = s.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mac = facts.get("mac").to_string();
        let records = s2.records.view(&mac);
        let public_url = s2.public_url.as_deref().map_or_else(
            || format!("http://127.0.0.1:{}", s2.http_port),
            |u| u.trim_end_matches('/').to_string(),
        );
        let etcd_discovery = s2
            .etcd_tokens
            .load()
            .iter()
            .map(|(g, t)| (g.clone(), format!("{public_url}/discovery/{t}")))
            .collect();
        let cx = crate::explain::Context {
            ip: s2
                .status
                .boot(&mac)
                .map_or("0.0.0.0".to_string(), |b| b.ip.to_string()),
            public_url,
            etcd_discovery,
            now: crate::lifecycle::now(),
        };
        crate::explain::explain(&inv, &records, &facts, &cx)
    })
    .await;
    match done {
        Ok(e) if as_text => text(StatusCode::OK, e.to_text()),
        Ok(e) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_string_pretty(&e).unwrap_or_default() + "\n",
            ))
            .expect("static response parts"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cairn: {e}\n")),
    }
}

async fn machines(State(s): State<AppState>) -> Response<Body> {
    let body = serde_json::to_string_pretty(&s.status.snapshot()).unwrap_or_else(|_| "[]".into());
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body + "\n"))
        .expect("static response parts")
}

async fn log_requests(req: Request, next: Next) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let resp = next.run(req).await;
    let machine = resp
        .extensions()
        .get::<MachineTag>()
        .map_or("-".to_string(), |m| m.0.clone());
    tracing::info!(
        %peer,
        %machine,
        %method,
        uri = %uri,
        status = resp.status().as_u16(),
        range = range.as_deref().unwrap_or("-"),
        ms = start.elapsed().as_millis() as u64,
        "http request"
    );
    resp
}

fn router(state: AppState) -> Router {
    let discovery = cairn_discovery::router(state.discovery.clone());
    let routes = Router::new()
        .nest("/discovery", discovery)
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(machine_ipxe))
        .route("/cloud-config", get(cloud_config))
        .route("/cloud", get(cloud_config))
        .route("/metadata", get(metadata))
        .route("/assets/{*rel}", get(asset))
        .route(
            "/machines",
            get(|| async {
                text(
                    StatusCode::NOT_FOUND,
                    "cairn: /machines is served on the operators' address only (--admin-addr)\n"
                        .to_string(),
                )
            }),
        )
        .route("/update/v1/{channel}/{file}", get(update_file))
        .route("/lifecycle/v1/map/{image}", get(disk_map))
        .route(
            cairn_formats::lifecycle::REPORT_PATH,
            axum::routing::post(report).layer(axum::extract::DefaultBodyLimit::max(
                cairn_formats::lifecycle::MAX_REPORT_BYTES,
            )),
        );
    finish(routes, "endpoint", state)
}

/// What both listeners share: `/healthz`, a 404 that names the path (`what`: the kind of
/// endpoint), the request log.
fn finish(routes: Router<AppState>, what: &'static str, state: AppState) -> Router {
    routes
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(move |uri: Uri| async move {
            text(
                StatusCode::NOT_FOUND,
                format!("cairn: no such {what} {}\n", uri.path()),
            )
        })
        .layer(middleware::from_fn(log_requests))
        .with_state(state)
}

/// The operators' endpoints, on their own listener (`--admin-addr`, loopback by default): what
/// the machines' listener must not tell any host on the LAN.
fn admin_router(state: AppState) -> Router {
    finish(
        Router::new()
            .route("/machines", get(machines))
            .route("/lifecycle", get(lifecycle_snapshot))
            .route("/explain", get(explain))
            .route("/lifecycle/reinstall", axum::routing::post(reinstall))
            .route(
                "/lifecycle/rollout/resume",
                axum::routing::post(resume_rollout),
            ),
        "operator endpoint",
        state,
    )
}

/// TFTP: iPXE binaries at the root, `boot.ipxe` generated, `assets/IMAGE/FILE` from image folders.
struct TftpHandler {
    shared: Arc<Shared>,
}

impl cairn_tftp::Handler for TftpHandler {
    fn open(
        &self,
        path: &str,
        peer: SocketAddr,
    ) -> Result<cairn_tftp::Content, cairn_tftp::TftpError> {
        use cairn_tftp::{Content, TftpError};
        let rel = path.trim_start_matches('/');
        let ip = peer.ip().to_string();
        let refuse = |e: AssetError| match e {
            AssetError::Refused(m) => {
                tracing::warn!(%peer, "TFTP {path:?} refused: {m}");
                TftpError::access_violation(m)
            }
            AssetError::NotFound(m) => TftpError::not_found(m),
        };
        if rel == "boot.ipxe" {
            let base = match &self.shared.public_url {
                Some(u) => u.trim_end_matches('/').to_string(),
                // The machine reaches the HTTP server at the address it got iPXE from.
                None => format!("http://${{next-server}}:{}", self.shared.http_port),
            };
            self.shared.status.record(
                Sighting {
                    key: self.shared.status.key_for_ip(&ip).unwrap_or(ip.clone()),
                    ip: ip.clone(),
                    ..Sighting::default()
                },
                Stage::Seen,
            );
            return Ok(Content::Bytes(Bytes::from(ipxe::boot_script(&base))));
        }
        let (file, _) = if let Some(asset) = rel.strip_prefix("assets/") {
            let inv = self.shared.inventory.load();
            assets::open_asset(&inv, asset).map_err(refuse)?
        } else if IPXE_FILES.contains(&rel) {
            // The name is one of a fixed list; the path was resolved from trusted places at start.
            let file = self.shared.programs.load().open(rel).map_err(refuse)?;
            (file, PathBuf::new())
        } else if rel.split('/').any(|c| c == "..") {
            return Err(refuse(AssetError::Refused("'..' is not allowed".into())));
        } else {
            return Err(TftpError::not_found(format!("no file {rel:?}")));
        };
        let len = file
            .metadata()
            .map_err(|e| TftpError::new(0, e.to_string()))?
            .len();
        Ok(Content::File { file, len })
    }

    fn finished(&self, path: &str, peer: SocketAddr, outcome: &cairn_tftp::Outcome) {
        let ip = peer.ip().to_string();
        if *outcome == cairn_tftp::Outcome::Evicted {
            // Most likely a spoofed request; cairn-tftp counts these in one warning every 10 s.
            tracing::debug!(%peer, path, "tftp transfer evicted: its client never acknowledged data");
            return;
        }
        tracing::info!(%peer, machine = %self.shared.status.key_for_ip(&ip).unwrap_or(ip.clone()), path, ?outcome, "tftp transfer");
        if let cairn_tftp::Outcome::Completed { .. } = outcome {
            let name = path.rsplit('/').next().unwrap_or(path);
            let stage = match name {
                "vmlinuz" => Some(Stage::Kernel),
                "initrd.img" | "pxe-initrd.img" => Some(Stage::Initrd),
                _ => None,
            };
            if let Some(stage) = stage {
                self.shared.status.record_by_ip(&ip, stage);
            }
        }
    }
}

/// Bound addresses of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddrs {
    /// The HTTP listener.
    pub http: SocketAddr,
    /// The TFTP socket, when TFTP runs.
    pub tftp: Option<SocketAddr>,
    /// The operators' listener (`/machines`), when it runs.
    pub admin: Option<SocketAddr>,
}

/// A running `cairn serve`: HTTP and (optionally) TFTP in the current tokio runtime.
pub struct Server {
    shared: Arc<Shared>,
    addrs: LocalAddrs,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Loads the inventory (refusing to start on any error), binds the listeners and starts serving.
    /// Must be called inside a tokio runtime.
    pub async fn start(cfg: ServerConfig) -> anyhow::Result<Server> {
        Self::start_with_limits(cfg, Limits::default()).await
    }

    /// [`Server::start`] with other limits than the defaults.
    pub async fn start_with_limits(cfg: ServerConfig, limits: Limits) -> anyhow::Result<Server> {
        let inventory = Inventory::load(&cfg.config)?;
        check_transports(&inventory, cfg.tftp_addr.is_some())
            .map_err(|m| anyhow::anyhow!("{}: {m}", cfg.config.display()))?;
        tracing::info!(
            config = %cfg.config.display(),
            profiles = inventory.profiles.len(),
            groups = inventory.groups.len(),
            images = inventory.images.len(),
            "inventory loaded"
        );
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {}", cfg.http_addr))?;
        let http = listener.local_addr().context("reading the HTTP address")?;
        let admin_listener = match cfg.admin_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("binding the operators' listener on {a} (--admin-addr)")
            })?),
            None => None,
        };
        let admin = match &admin_listener {
            Some(l) => Some(l.local_addr().context("reading the operators' address")?),
            None => None,
        };
        if let Some(a) = admin.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!("the operators' endpoints (/machines) listen on {a}, not loopback: every host that reaches it sees every machine's MAC, IP, hostname and serial");
        }
        let ipxe_dir = match cfg.ipxe_dir.canonicalize() {
            Ok(d) => Some(d),
            Err(e) => {
                if cfg.tftp_addr.is_some() {
                    tracing::warn!(
                        "iPXE directory {}: {e}; TFTP serves no iPXE binaries (install Debian's ipxe package or pass --ipxe-dir)",
                        cfg.ipxe_dir.display()
                    );
                }
                None
            }
        };
        let programs = Programs::resolve(&inventory, ipxe_dir.as_deref());
        if cfg.tftp_addr.is_some() {
            tracing::info!("iPXE programs: {}", programs.describe());
        }
        let discovery_dir = cfg.state_dir.join("discovery");
        let public_base = cfg
            .public_url
            .as_ref()
            .map(|u| format!("{}/discovery", u.trim_end_matches('/')));
        // Blocking file work (fsync) before anything is served: the runtime has nothing else to do yet.
        let discovery = match &cfg.store {
            None => cairn_discovery::Discovery::open(&discovery_dir, public_base.as_deref())
                .with_context(|| {
                    format!("opening the discovery store in {}", discovery_dir.display())
                })?,
            Some(spec) => {
                let store = cairn_discovery::store_from_spec(spec)
                    .with_context(|| format!("opening the discovery store --store {spec}"))?;
                cairn_discovery::Discovery::with_store(store, public_base.as_deref())
                    .with_context(|| format!("opening the discovery store --store {spec}"))?
            }
        };
        let discovery = discovery.with_limits(limits.discovery.clone());
        let etcd_tokens = group_tokens(&inventory, &discovery)?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let records = crate::lifecycle::Records::open(&cfg.state_dir, cfg.store.as_deref())?;
        records.apply_plans(&inventory.rollouts);
        let shared = Arc::new(Shared {
            inventory: ArcSwap::from_pointee(inventory),
            config_path: cfg.config.clone(),
            public_url: cfg.public_url.clone(),
            http_port: http.port(),
            tftp_port: std::sync::OnceLock::new(),
            ipxe_dir: cfg.ipxe_dir.clone(),
            programs: ArcSwap::from_pointee(programs),
            status: StatusTable::new(limits.max_machines),
            discovery: discovery.clone(),
            etcd_tokens: ArcSwap::from_pointee(etcd_tokens),
            records,
        });
        let tftp = match cfg.tftp_addr {
            Some(addr) => {
                let handler = Arc::new(TftpHandler {
                    shared: shared.clone(),
                });
                let server = cairn_tftp::Server::bind(addr, handler, limits.tftp.clone())
                    .await
                    .with_context(|| format!("binding the TFTP server on {addr}"))?;
                let bound = server.local_addr();
                let _ = shared.tftp_port.set(bound.port());
                let mut rx = stopped.clone();
                tasks.push(tokio::spawn(async move {
                    server
                        .serve(async move {
                            let _ = rx.wait_for(|s| *s).await;
                        })
                        .await
                        .context("serving TFTP")
                }));
                Some(bound)
            }
            None => None,
        };
        let app = router(shared.clone());
        let rx = stopped.clone();
        let http_limits = limits.http;
        tasks.push(tokio::spawn(async move {
            crate::http::serve(listener, app, http_limits, rx)
                .await
                .context("serving HTTP")
        }));
        if let Some(l) = admin_listener {
            let app = admin_router(shared.clone());
            let rx = stopped.clone();
            let admin_limits = limits.http;
            tasks.push(tokio::spawn(async move {
                crate::http::serve(l, app, admin_limits, rx)
                    .await
                    .context("serving the operators' endpoints")
            }));
        }
        {
            // long polls would hold axum's graceful shutdown for minutes
            let mut rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let _ = rx.wait_for(|s| *s).await;
                discovery.close_waits();
                Ok(())
            }));
        }
        if let Some(iface) = &cfg.proxy_dhcp {
            let boot_url = match &cfg.public_url {
                Some(u) => format!("{}/boot.ipxe", u.trim_end_matches('/')),
                None => {
                    let ip = cairn_proxydhcp::interface_ipv4(iface).with_context(|| {
                        format!("--proxy-dhcp {iface}: reading its IPv4 address")
                    })?;
                    format!("http://{ip}:{}/boot.ipxe", http.port())
                }
            };
            if tftp.is_none() {
                tracing::warn!("ProxyDHCP without TFTP: PXE firmware that is not iPXE gets a boot file nobody serves");
            }
            let proxy_cfg = cairn_proxydhcp::ProxyConfig::new(iface.clone(), boot_url);
            let proxy = cairn_proxydhcp::ProxyDhcp::bind(&proxy_cfg)
                .with_context(|| format!("starting ProxyDHCP on {iface}"))?;
            let handle = proxy
                .spawn()
                .with_context(|| format!("starting ProxyDHCP on {iface}"))?;
            let mut rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let _ = rx.wait_for(|s| *s).await;
                handle.shutdown().await;
                Ok(())
            }));
        }
        if cfg.reload_on_sighup {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?;
            let sh = shared.clone();
            let mut rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        got = hup.recv() => {
                            if got.is_none() { break; }
                            tracing::info!("SIGHUP: reloading {}", sh.config_path.display());
                            if let Err(e) = sh.reload() {
                                tracing::error!("reloading the inventory failed, keeping the old one: {e}");
                            }
                        }
                        _ = rx.wait_for(|s| *s) => break,
                    }
                }
                Ok(())
            }));
        }
        tracing::info!(
            http = %http,
            tftp = %tftp.map_or("off".to_string(), |a| a.to_string()),
            admin = %admin.map_or("off".to_string(), |a| a.to_string()),
            ipxe_dir = %shared.ipxe_dir.display(),
            "cairn serve listening"
        );
        Ok(Server {
            shared,
            addrs: LocalAddrs { http, tftp, admin },
            stop,
            tasks,
        })
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> LocalAddrs {
        self.addrs
    }

    /// Re-reads the inventory file; on error the old inventory stays in place and the error is returned.
    /// Requests in flight keep the inventory they started with.
    pub fn reload(&self) -> Result<(), InventoryError> {
        self.shared.reload().inspect_err(|e| {
            tracing::error!("reloading the inventory failed, keeping the old one: {e}");
        })
    }

    /// The machine status table.
    pub fn machines(&self) -> Vec<Machine> {
        self.shared.status.snapshot()
    }

    /// The inventory in use.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.shared.inventory.load_full()
    }

    /// Stops accepting, lets transfers in flight finish, and returns the first listener error.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Runs until a listener fails (or [`Server::shutdown`] is called from elsewhere).
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut first = Ok(());
        for t in self.tasks {
            let r = t.await.context("server task panicked").and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// A handle that stops the server when `stop()` is called.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }
}

/// Stops a [`Server`] from another task (Ctrl-C handler).
#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    /// Asks the server to stop.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}
