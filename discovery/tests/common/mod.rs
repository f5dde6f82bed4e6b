//! Shared test helpers: a discovery server on 127.0.0.1 in its own runtime (restartable on the
//! same port and state directory), and a small HTTP client on hyper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use cairn_discovery::{Discovery, Limits};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)] // each test binary uses its own subset
pub use cairn_testkit::free_port;

/// Binds with SO_REUSEADDR so a restarted server gets its port back at once.
pub async fn listen(port: u16) -> tokio::net::TcpListener {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind(addr)
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    sock.listen(1024).unwrap()
}

/// Serves `d` nested at `/discovery` (as cairn serve mounts it, with each connection's peer
/// address) in the current runtime.
pub async fn serve(d: Discovery, port: u16) -> SocketAddr {
    let listener = listen(port).await;
    let addr = listener.local_addr().unwrap();
    let app: Router = Router::new().nest("/discovery", cairn_discovery::router(d));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

/// A discovery server with its own runtime; dropping it drops every connection.
pub struct TestServer {
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    pub discovery: Discovery,
    pub state_dir: PathBuf,
}

impl TestServer {
    pub fn start(state_dir: &Path, port: u16, wait_timeout: Duration) -> TestServer {
        TestServer::start_with(state_dir, port, wait_timeout, Limits::default())
    }

    pub fn start_with(
        state_dir: &Path,
        port: u16,
        wait_timeout: Duration,
        limits: Limits,
    ) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let d = Discovery::open(state_dir, None)
            .unwrap()
            .with_wait_timeout(wait_timeout)
            .with_limits(limits);
        let addr = rt.block_on(serve(d.clone(), port));
        TestServer {
            rt: Some(rt),
            addr,
            discovery: d,
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}/discovery", self.addr)
    }

    /// Stops serving: every task (listener, connections, waits) is dropped.
    pub fn stop(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client whose connections come from `local` (any 127.0.0.0/8 address is loopback on Linux):
/// another machine as far as per-client limits go.
pub fn client_from(local: std::net::IpAddr) -> HttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(connector)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn index(&self) -> u64 {
        self.headers
            .get("x-etcd-index")
            .unwrap_or_else(|| panic!("no X-Etcd-Index in {:?}", self.headers))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// Sends a request; a `form` body goes as `application/x-www-form-urlencoded`.
pub async fn start(
    c: &HttpClient,
    method: Method,
    url: &str,
    form: Option<&str>,
) -> Response<Incoming> {
    let mut b = Request::builder().method(method).uri(url);
    if form.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = b
        .body(Full::new(Bytes::from(form.unwrap_or("").to_string())))
        .unwrap();
    c.request(req)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:?}"))
}

pub async fn finish(r: Response<Incoming>) -> Answer {
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn call(c: &HttpClient, method: Method, url: &str, form: Option<&str>) -> Answer {
    finish(start(c, method, url, form).await).await
}

/// A [`cairn_discovery::Store`] in memory, for tests that make many changes (no fsync).
#[derive(Debug, Default)]
pub struct MemStore(
    std::sync::Mutex<std::collections::BTreeMap<String, cairn_discovery::v2::TokenRecord>>,
);

impl cairn_discovery::Store for MemStore {
    fn load(&self) -> Result<Vec<cairn_discovery::v2::TokenRecord>, cairn_discovery::StoreError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    fn save(
        &self,
        record: &cairn_discovery::v2::TokenRecord,
    ) -> Result<(), cairn_discovery::StoreError> {
        self.0
            .lock()
            .unwrap()
            .insert(record.token.clone(), record.clone());
        Ok(())
    }
    fn remove(&self, token: &str, _index: u64) -> Result<(), cairn_discovery::StoreError> {
        self.0.lock().unwrap().remove(token);
        Ok(())
    }
}
