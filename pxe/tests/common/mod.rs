//! Shared helpers: fixture image folders, an in-process server on 127.0.0.1 port 0, an HTTP client that
//! does not turn 4xx into errors, and a raw HTTP/1.1 GET that sends the path exactly as given.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use cairn_pxe::{Limits, Server, ServerConfig};

/// A fixture image folder `dir/name` with deterministic contents of the given sizes.
pub fn image(dir: &Path, name: &str, version: &str, kernel_len: usize) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("manifest.json"),
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named(name, version)).unwrap(),
    )
    .unwrap();
    std::fs::write(d.join("vmlinuz"), pattern(kernel_len, 7)).unwrap();
    std::fs::write(d.join("pxe-initrd.img"), pattern(kernel_len / 2 + 3, 11)).unwrap();
    d
}

/// Bytes that differ at every offset (so a wrong range shows).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

pub struct TestServer {
    /// The server's state directory (discovery tokens).
    _state: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub server: Option<Server>,
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
}

impl TestServer {
    pub fn start(config: &Path, tftp: bool, ipxe_dir: &Path) -> TestServer {
        Self::try_start(config, tftp, ipxe_dir, None).unwrap()
    }

    pub fn try_start(
        config: &Path,
        tftp: bool,
        ipxe_dir: &Path,
        public_url: Option<&str>,
    ) -> anyhow::Result<TestServer> {
        Self::try_start_with(config, tftp, ipxe_dir, public_url, Limits::default())
    }

    /// A server with other limits than the defaults.
    pub fn try_start_with(
        config: &Path,
        tftp: bool,
        ipxe_dir: &Path,
        public_url: Option<&str>,
        limits: Limits,
    ) -> anyhow::Result<TestServer> {
        let state = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::start_with_limits(
            ServerConfig {
                config: config.to_path_buf(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                tftp_addr: tftp.then(|| "127.0.0.1:0".parse().unwrap()),
                ipxe_dir: ipxe_dir.to_path_buf(),
                public_url: public_url.map(String::from),
                reload_on_sighup: false,
                state_dir: state.path().to_path_buf(),
                proxy_dhcp: None,
                store: None,
                admin_addr: Some("127.0.0.1:0".parse().unwrap()),
            },
            limits,
        ))?;
        let addrs = server.local_addrs();
        Ok(TestServer {
            _state: state,
            rt,
            server: Some(server),
            http: addrs.http,
            tftp: addrs.tftp,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET with extra headers through ureq (4xx/5xx are returned, not errors).
pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET through hyper's client with the connection bound to `local` (any 127.0.0.0/8 address is
/// loopback on Linux: another host as far as the server can tell); 4xx/5xx are returned.
pub fn get_from(server: &TestServer, local: std::net::IpAddr, path: &str) -> Reply {
    use http_body_util::BodyExt as _;
    let url = server.url(path);
    server.rt.block_on(async {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(local));
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let resp = client
            .get(url.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET {url} from {local}: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    })
}

/// A raw GET: the request target goes on the wire exactly as given (no client-side normalisation).
pub fn raw_get(addr: SocketAddr, target: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

/// Image folder `dir/name` of image `img` at `version` with a signed update bundle on channel
/// `lab` (`key`), its root image a pattern of 50,000 bytes that differs between versions.
pub fn signed_image(
    dir: &Path,
    name: &str,
    version: &str,
    key: &cairn_formats::channel::SecretKey,
) -> PathBuf {
    use cairn_formats::channel::{write_bundle, BundleInput};
    let d = image(dir, name, version, 1000 + version.len());
    std::fs::write(
        d.join("manifest.json"),
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named("img", version)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        d.join("rootfs.squashfs"),
        pattern(50_000, version.len() as u32),
    )
    .unwrap();
    std::fs::write(d.join("initrd.img"), pattern(1000, 5)).unwrap();
    write_bundle(
        &d,
        &BundleInput {
            name: "img",
            version,
            channel: "lab",
            rootfs: &d.join("rootfs.squashfs"),
            kernel: &d.join("vmlinuz"),
            initrd: &d.join("initrd.img"),
            created: 1_790_000_000,
            validity_secs: 3600 * 24 * 365 * 20,
            verity: None,
        },
        key,
    )
    .unwrap();
    d
}
