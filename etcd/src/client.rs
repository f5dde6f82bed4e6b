//! [`Client`] and its transport: endpoints, failover, timeouts and size limits. Every call is one
//! `POST /v3/...` with a JSON body over HTTP/1.1 (hyper-util's pooled client), in clear or over
//! TLS (hyper-rustls) for every endpoint of a client; the answer is read within the request
//! timeout and up to a byte limit, then decoded.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cairn_formats::report::Chain;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::Tls;
use crate::wire::ErrorBody;
use crate::Error;

/// The most an error answer (a non-200 status) is read of.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most a small answer (lease grant, keep-alive, status, ...) may be.
pub(crate) const SMALL_LIMIT: usize = 256 * 1024;

/// Limits and timeouts; [`Config::default`] suits a LAN.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connecting to one endpoint, TLS handshake included (then the next is tried).
    pub connect_timeout: Duration,
    /// One whole request: connect, send, status line, headers and the complete body. A watch
    /// gets it for its start (up to etcd's `created` message) and for each line once its first
    /// byte arrived.
    pub request_timeout: Duration,
    /// The largest answer of a range, txn, put or delete (and of a lease's key list).
    pub max_response: usize,
    /// The longest line of a watch stream (one watch response).
    pub max_watch_line: usize,
    /// TCP keep-alive on every connection, so a watch on a silently dead peer ends.
    pub tcp_keepalive: Duration,
    /// TLS for `https://` endpoints (a CA bundle, optionally a client certificate); `None`
    /// (the default) speaks plain HTTP and refuses `https://`. With it, every endpoint must be
    /// `https://` (a bare `HOST:PORT` means that), and every request, watch and lease refresh
    /// goes over TLS.
    pub tls: Option<Tls>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_response: 64 << 20,
            max_watch_line: 64 << 20,
            tcp_keepalive: Duration::from_secs(15),
            tls: None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client, in clear or over TLS.
enum Http {
    Plain(hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>),
    Tls(hyper_util::client::legacy::Client<Handshake<HttpsConnector>, Full<Bytes>>),
}

impl Http {
    fn request(&self, req: Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Http::Plain(c) => c.request(req),
            Http::Tls(c) => c.request(req),
        }
    }
}

/// A connector whose whole connection (TCP connect and TLS handshake) must be done within a
/// limit; past it, a connect error (so nothing was sent and any request may move on). Its
/// connections remember the TLS error that broke them ([`Recorded`]).
#[derive(Clone)]
struct Handshake<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<Uri> for Handshake<C>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = Recorded<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(r) => r.map(Recorded::new).map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TCP connection and TLS handshake not done within {limit:?}"),
                )
                .into()),
            }
        })
    }
}

/// The TLS error a connection broke with, shared between the connection and what hyper-util
/// attaches to an error about it ([`Connected::extra`]).
///
/// With TLS 1.3 the server checks the client's certificate after the client finished its
/// handshake: its refusal (an alert) arrives on the first read, and when hyper's connection
/// task reads it before the first request was handed over, the request fails as "canceled:
/// connection was not ready" without the cause. This keeps the cause.
///
/// [`Connected::extra`]: hyper_util::client::legacy::connect::Connected::extra
#[derive(Clone, Default)]
struct TlsFailure(Arc<std::sync::Mutex<Option<rustls::Error>>>);

impl TlsFailure {
    /// What the connection an error is about recorded, if anything.
    fn of(e: &hyper_util::client::legacy::Error) -> Option<rustls::Error> {
        let connected = e.connect_info()?;
        let mut ext = hyper::http::Extensions::new();
        connected.get_extras(&mut ext);
        let slot = ext.get::<TlsFailure>()?;
        let r = slot.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r
    }
}

/// A connection that records the first TLS error its reads end with.
struct Recorded<S> {
    inner: S,
    failure: TlsFailure,
}

impl<S> Recorded<S> {
    fn new(inner: S) -> Recorded<S> {
        Recorded {
            inner,
            failure: TlsFailure::default(),
        }
    }
}

impl<S: Connection> Connection for Recorded<S> {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected().extra(self.failure.clone())
    }
}

impl<S: hyper::rt::Read + Unpin> hyper::rt::Read for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            if let Some(tls) = crate::tls::find_rustls(e) {
                let mut slot = self.failure.0.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| tls.clone());
            }
        }
        r
    }
}

impl<S: hyper::rt::Write + Unpin> hyper::rt::Write for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// A handle to an etcd cluster through its members' client URLs; cheap to clone (clones share
/// the connection pool and the current endpoint).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    current: AtomicUsize,
    http: Http,
    config: Config,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("current", &self.current_endpoint())
            .finish()
    }
}

/// Whether a request may be sent again after the connection broke mid-way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Retry {
    /// Reads and other requests that change nothing (or nothing more when repeated): any
    /// transient error moves on to the next endpoint.
    Idempotent,
    /// Writes: only "could not connect" moves on; a broken request is returned, since etcd may
    /// have applied it.
    OnlyUnsent,
}

impl Client {
    /// A client for `endpoints` (`http://HOST:PORT`, or `HOST:PORT`), with [`Config::default`]
    /// (no TLS: `https://` needs [`Client::with_config`] and [`Config::tls`]). Nothing is
    /// connected yet.
    pub fn new<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_config(endpoints, Config::default())
    }

    /// A client with its own limits, and TLS when [`Config::tls`] is set: then the endpoints
    /// are `https://HOST:PORT` (or `HOST:PORT`), and `http://` ones are refused; without it,
    /// `https://` ones are. Endpoints mixing both schemes are refused either way.
    pub fn with_config<I, S>(endpoints: I, config: Config) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let raw: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_string())
            .collect();
        check_schemes(&raw)?;
        let tls = config.tls.is_some();
        let endpoints = raw
            .iter()
            .map(|e| parse_endpoint(e, tls))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(config.tcp_keepalive));
        connector.set_keepalive_interval(Some(Duration::from_secs(5)));
        connector.set_keepalive_retries(Some(3));
        connector.set_nodelay(true);
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64);
        let http = match &config.tls {
            None => Http::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                // the server name checked is the endpoint's host: a DNS name, or an IP address
                // (then the certificate needs it as an IP address SAN)
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.client_config())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Http::Tls(builder.build(Handshake {
                    inner: https,
                    limit: config.connect_timeout,
                }))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                http,
                config,
            }),
        })
    }

    /// The endpoints, normalised (`http://HOST:PORT`, or `https://HOST:PORT` with TLS).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The endpoint the next request goes to first.
    pub fn current_endpoint(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i]
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Sends `req` to `path` and decodes the answer, at most `limit` bytes of it.
    pub(crate) async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &'static str,
        req: &Q,
        retry: Retry,
        limit: usize,
    ) -> Result<A, Error> {
        let body = Bytes::from(serde_json::to_vec(req).expect("requests serialise"));
        let (endpoint, bytes) = self.post(path, body, retry, limit).await?;
        decode(&endpoint, path, &bytes)
    }

    /// Sends `body` to `path` on the current endpoint, moving on to the next ones as `retry`
    /// allows; returns the endpoint that answered and the whole answer.
    pub(crate) async fn post(
        &self,
        path: &'static str,
        body: Bytes,
        retry: Retry,
        limit: usize,
    ) -> Result<(String, Bytes), Error> {
        self.with_failover(retry, |endpoint| {
            let body = body.clone();
            async move {
                let timeout = self.inner.config.request_timeout;
                let ep = endpoint.clone();
                let work = async {
                    let resp = self.send(&ep, path, body).await?;
                    read_body(&ep, path, resp, limit).await
                };
                match tokio::time::timeout(timeout, work).await {
                    Ok(r) => r.map(|b| (endpoint, b)),
                    Err(_) => Err(Error::Timeout {
                        endpoint,
                        path,
                        after: timeout,
                    }),
                }
            }
        })
        .await
    }

    /// Opens a streaming request (a watch): returns once the status line and headers arrived
    /// (200, or the error read and returned), within the request timeout, with failover.
    pub(crate) async fn open_stream(
        &self,
        path: &'static str,
        body: Bytes,
    ) -> Result<(String, Incoming), Error> {
        self.with_failover(Retry::Idempotent, |endpoint| {
            let body = body.clone();
            async move {
                let timeout = self.inner.config.request_timeout;
                let work = async {
                    let resp = self.send(&endpoint, path, body).await?;
                    if resp.status() != StatusCode::OK {
                        return Err(error_answer(&endpoint, path, resp).await);
                    }
                    Ok(resp.into_body())
                };
                match tokio::time::timeout(timeout, work).await {
                    Ok(r) => r.map(|b| (endpoint, b)),
                    Err(_) => Err(Error::Timeout {
                        endpoint,
                        path,
                        after: timeout,
                    }),
                }
            }
        })
        .await
    }

    /// Runs `attempt` against each endpoint in turn from the current one until one succeeds or
    /// an error says not to go on; an endpoint that failed transiently stops being current.
    async fn with_failover<T, F, Fut>(&self, retry: Retry, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let n = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            match attempt(self.inner.endpoints[i].clone()).await {
                Ok(v) => {
                    if k > 0 {
                        self.inner.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    if e.is_transient() || e.is_connect() {
                        // the next request starts at the next endpoint, unless another
                        // request already moved on
                        let _ = self.inner.current.compare_exchange(
                            i,
                            (i + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    let go_on = match retry {
                        Retry::Idempotent => e.is_transient() || e.is_connect(),
                        Retry::OnlyUnsent => e.is_connect(),
                    };
                    if !go_on {
                        return Err(e);
                    }
                    tracing::debug!("{e}; trying the next etcd endpoint");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    async fn send(
        &self,
        endpoint: &str,
        path: &'static str,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let uri: Uri = format!("{endpoint}{path}")
            .parse()
            .map_err(|e| Error::BadEndpoint {
                endpoint: endpoint.to_string(),
                reason: format!("{e}"),
            })?;
        let req = Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            // gRPC metadata through the gateway: a member without a leader refuses the request
            // ("etcdserver: no leader", Unavailable) instead of serving it, and ends a watch
            // when it loses its leader, as etcd's own client asks with WithRequireLeader
            .header("grpc-metadata-hasleader", "true")
            .body(Full::new(body))
            .expect("a valid request");
        self.inner.http.request(req).await.map_err(|e| {
            if let Some(reason) = self.inner.config.tls.as_ref().and_then(|tls| {
                let recorded = TlsFailure::of(&e);
                let r = crate::tls::find_rustls(&e).or(recorded.as_ref())?;
                crate::tls::failure(r, e.is_connect(), tls)
            }) {
                return Error::Tls {
                    endpoint: endpoint.to_string(),
                    reason,
                };
            }
            let reason = Chain(&e).to_string();
            if e.is_connect() {
                Error::Connect {
                    endpoint: endpoint.to_string(),
                    reason,
                }
            } else {
                Error::Transport {
                    endpoint: endpoint.to_string(),
                    path,
                    reason,
                }
            }
        })
    }
}

/// Refuses endpoints that mix `http://` and `https://`, naming the first that differs from the
/// first one's scheme.
fn check_schemes(raw: &[String]) -> Result<(), Error> {
    let scheme = |e: &str| {
        let e = e.trim();
        if e.len() >= 8 && e[..8].eq_ignore_ascii_case("https://") {
            Some("https")
        } else if e.len() >= 7 && e[..7].eq_ignore_ascii_case("http://") {
            Some("http")
        } else {
            None
        }
    };
    let mut first: Option<(&str, &str)> = None;
    for e in raw {
        let Some(s) = scheme(e) else { continue };
        match first {
            None => first = Some((s, e)),
            Some((f, fe)) if f != s => {
                return Err(Error::BadEndpoint {
                    endpoint: e.clone(),
                    reason: format!(
                        "{s}:// next to {f}:// ({fe}): one client speaks TLS to every \
                         endpoint or to none"
                    ),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `http://HOST:PORT` (or `https://HOST:PORT` when `tls`) from what an operator writes.
fn parse_endpoint(raw: &str, tls: bool) -> Result<String, Error> {
    let bad = |reason: &str| Error::BadEndpoint {
        endpoint: raw.to_string(),
        reason: reason.to_string(),
    };
    let s = raw.trim();
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else if tls {
        format!("https://{s}")
    } else {
        format!("http://{s}")
    };
    let uri: Uri = with_scheme.parse().map_err(|e| bad(&format!("{e}")))?;
    let scheme = match uri.scheme_str() {
        Some("http") if tls => {
            return Err(bad(
                "http:// in clear, but TLS is configured (Config::tls): write https://",
            ))
        }
        Some("https") if !tls => {
            return Err(bad(
                "https:// needs TLS settings, at least a CA file to verify etcd's certificate \
                 (Config::tls; fleet's etcd_cafile, fleetctl's --ca-file)",
            ))
        }
        Some(s @ ("http" | "https")) => s,
        _ => return Err(bad("not an http:// or https:// URL")),
    };
    let Some(auth) = uri.authority() else {
        return Err(bad("no host"));
    };
    if auth.host().is_empty() || auth.as_str().contains('@') {
        return Err(bad("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("a client URL has no path or query"));
    }
    let port = auth.port_u16().unwrap_or(2379);
    let host = auth.host();
    Ok(format!("{scheme}://{host}:{port}"))
}

/// The whole body of a 200 answer, at most `limit` bytes; any other status becomes an error.
async fn read_body(
    endpoint: &str,
    path: &'static str,
    resp: Response<Incoming>,
    limit: usize,
) -> Result<Bytes, Error> {
    if resp.status() != StatusCode::OK {
        return Err(error_answer(endpoint, path, resp).await);
    }
    collect(endpoint, path, resp, limit)
        .await
        .and_then(|r| r.ok_or_else(|| too_large(endpoint, path, limit)))
}

pub(crate) fn too_large(endpoint: &str, path: &'static str, limit: usize) -> Error {
    Error::TooLarge {
        endpoint: endpoint.to_string(),
        path,
        limit,
    }
}

/// The body, or `None` when it is longer than `limit` (known from Content-Length or found
/// while reading; reading stops there).
async fn collect(
    endpoint: &str,
    path: &'static str,
    resp: Response<Incoming>,
    limit: usize,
) -> Result<Option<Bytes>, Error> {
    let declared = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = resp.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Transport {
            endpoint: endpoint.to_string(),
            path,
            reason: Chain(&e).to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.into()))
}

/// A non-200 answer as an error: etcd's JSON when it is that, else the status and the start of
/// the body.
async fn error_answer(endpoint: &str, path: &'static str, resp: Response<Incoming>) -> Error {
    let status = resp.status().as_u16();
    let body = match collect(endpoint, path, resp, ERROR_BODY_LIMIT).await {
        Ok(Some(b)) => b,
        Ok(None) => Bytes::from_static(b"(a body over 64 KiB, not read)"),
        Err(e) => return e,
    };
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(&body) {
        if e.code != 0 || !e.text().is_empty() {
            return Error::Etcd {
                endpoint: endpoint.to_string(),
                path,
                code: e.code,
                message: e.text().to_string(),
            };
        }
    }
    Error::Http {
        endpoint: endpoint.to_string(),
        path,
        status,
        body: excerpt(&body),
    }
}

/// Decodes a whole answer.
pub(crate) fn decode<A: DeserializeOwned>(
    endpoint: &str,
    path: &'static str,
    bytes: &[u8],
) -> Result<A, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        endpoint: endpoint.to_string(),
        path,
        reason: format!("{e}: {}", excerpt(bytes)),
    })
}

/// At most 200 characters of what a peer sent, printable.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    let mut s: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if bytes.len() > 200 {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_or_refused() {
        let parse_endpoint = |e| parse_endpoint(e, false);
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("10.0.0.1:4001").unwrap(),
            "http://10.0.0.1:4001"
        );
        assert_eq!(
            parse_endpoint("http://etcd.local").unwrap(),
            "http://etcd.local:2379"
        );
        assert_eq!(
            parse_endpoint("http://[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
        for bad in [
            "https://127.0.0.1:2379",
            "ftp://x:1",
            "http://x:1/v3",
            "http://x:1/?a=b",
            "http://u@x:1",
            "",
            "http://",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Client::new(Vec::<String>::new()),
            Err(Error::NoEndpoints)
        ));
        let c = Client::new(["127.0.0.1:1", "127.0.0.1:2"]).unwrap();
        assert_eq!(c.current_endpoint(), "http://127.0.0.1:1");
        assert_eq!(c.endpoints().len(), 2);
    }

    #[test]
    fn https_needs_tls_and_tls_needs_https() {
        let e = parse_endpoint("https://127.0.0.1:2379", false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("\"https://127.0.0.1:2379\"") && text.contains("CA file"),
            "{text}"
        );
        assert_eq!(
            parse_endpoint("https://etcd.local", true).unwrap(),
            "https://etcd.local:2379"
        );
        assert_eq!(
            parse_endpoint("10.0.0.1:4001", true).unwrap(),
            "https://10.0.0.1:4001"
        );
        assert_eq!(
            parse_endpoint("https://[::1]:2379/", true).unwrap(),
            "https://[::1]:2379"
        );
        let e = parse_endpoint("http://127.0.0.1:2379", true).unwrap_err();
        assert!(e.to_string().contains("TLS is configured"), "{e}");
        // mixing is refused, naming the odd one out, whatever the configuration
        let e = Client::new(["http://a:1", "b:2", "https://c:3"]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("etcd endpoint \"https://c:3\"") && text.contains("http://a:1"),
            "{text}"
        );
        assert!(matches!(e, Error::BadEndpoint { .. }));
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b" a\x00b\n"), "a.b");
        let long = vec![b'x'; 500];
        assert_eq!(excerpt(&long).len(), 203);
    }
}
