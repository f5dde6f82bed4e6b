//! The HTTP listener with limits (issue 15 item 4): HTTP/1.1 connections, each watched for a request
//! head that takes too long (slowloris), an idle keep-alive, and a response nobody reads; at most
//! `max_connections` at once, where a new connection beyond the cap evicts the connection idle the
//! longest (no request in flight), so `/healthz` stays reachable while idle or half-sent connections
//! fill the table, and is answered 503 only when every connection is busy with a request. Request
//! heads are read here: GET and HEAD of files are answered on the zero-copy path (`sendfile`,
//! issue 18), everything else by hyper, one request at a time when the connection can come back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

mod sendfile;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; beyond it the longest-idle connection is closed, or the new one is
    /// answered 503 when none is idle.
    pub max_connections: usize,
    /// A request head must arrive complete within this time of its first byte.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long without a byte.
    pub idle_timeout: Duration,
    /// A response whose client reads nothing for this long is abandoned.
    pub send_timeout: Duration,
    /// On shutdown, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What the watchdog knows about one connection.
#[derive(Debug)]
struct State {
    /// Requests being answered (head received, response body not finished).
    in_flight: usize,
    /// When the connection last had nothing in flight.
    idle_since: Instant,
    /// First byte of a request head read while nothing was in flight.
    head_started: Option<Instant>,
    /// A write has been waiting for the client since then.
    write_blocked_since: Option<Instant>,
    /// Requests answered on this connection so far.
    finished: u64,
}

struct Conn {
    state: Mutex<State>,
    close: Notify,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Request bytes arrived: with nothing in flight they start a head, and its deadline.
    fn note_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
        }
    }

    /// A write went through: the client reads.
    fn wrote(&self) {
        self.lock().write_blocked_since = None;
    }

    /// A write waits for the client (the first wait of a stall starts `send_timeout`).
    fn write_blocked(&self) {
        self.lock()
            .write_blocked_since
            .get_or_insert_with(Instant::now);
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &HttpLimits, now: Instant) -> Option<&'static str> {
        let s = self.lock();
        if let Some(t) = s.write_blocked_since {
            if now.duration_since(t) >= limits.send_timeout {
                return Some("client reads nothing");
            }
        }
        if s.in_flight > 0 {
            return None;
        }
        match s.head_started {
            Some(t) if now.duration_since(t) >= limits.header_timeout => {
                Some("request head incomplete")
            }
            None if now.duration_since(s.idle_since) >= limits.idle_timeout => Some("idle"),
            _ => None,
        }
    }
}

/// Every open connection, for the cap and eviction.
#[derive(Default)]
struct Table {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, evicting the longest-idle one at the cap. None: full of busy ones.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        if conns.len() >= max.max(1) {
            let victim = conns
                .iter()
                .filter_map(|(id, c)| {
                    let s = c.lock();
                    (s.in_flight == 0).then_some((*id, s.head_started.unwrap_or(s.idle_since)))
                })
                .min_by_key(|(_, since)| *since)
                .map(|(id, _)| id)?;
            // The evicted connection's task closes it; its slot is freed here so the count holds.
            if let Some(c) = conns.remove(&victim) {
                c.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
                write_blocked_since: None,
                finished: 0,
            }),
            close: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// The TCP stream as hyper sees it: first the bytes the zero-copy path read ahead (`feed`), then the
/// socket, telling the watchdog when request bytes arrive and when writes stall. For a single
/// request (`one`), bytes after it are kept in `ahead` for the zero-copy path instead of being given
/// to hyper, and [`Round::flushed`] is set once that request's response is entirely on the socket.
struct Side {
    io: TcpStream,
    conn: Arc<Conn>,
    feed: BytesMut,
    one: Option<Arc<Round>>,
    ahead: BytesMut,
    /// The client closed its side (seen while `ahead` held a request; hyper is not told).
    eof: bool,
}

/// One request handed to hyper on a connection that then comes back to the zero-copy path.
struct Round {
    /// Requests finished on the connection before this one.
    finished_before: u64,
    flushed: std::sync::atomic::AtomicBool,
    wake: Notify,
}

/// Read-ahead kept for the zero-copy path while hyper answers one request (a request head is never
/// larger: hyper's own limit answers bigger ones).
const AHEAD_MAX: usize = 64 * 1024;

impl AsyncRead for Side {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.feed.is_empty() {
            let n = this.feed.len().min(buf.remaining());
            buf.put_slice(&this.feed.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if this.one.is_none() {
            if !this.ahead.is_empty() {
                let n = this.ahead.len().min(buf.remaining());
                buf.put_slice(&this.ahead.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let r = Pin::new(&mut this.io).poll_read(cx, buf);
            if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                this.conn.note_read();
            }
            return r;
        }
        // One request: whatever follows it is the zero-copy path's; hyper only learns that the
        // client went away (so a long poll is dropped) when nothing of another request came first.
        loop {
            if this.eof || this.ahead.len() >= AHEAD_MAX {
                return Poll::Pending;
            }
            let mut chunk = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    if this.ahead.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    this.conn.note_read();
                    this.ahead.extend_from_slice(rb.filled());
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Side {
    fn note_write<T>(&self, r: &Poll<io::Result<T>>) {
        match r {
            Poll::Pending => self.conn.write_blocked(),
            Poll::Ready(_) => self.conn.wrote(),
        }
    }
}

impl AsyncWrite for Side {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_write(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes the socket only once its own buffer is written out: when the request is
        // finished too, the whole response is on the socket and the connection can come back.
        if let Some(round) = &this.one {
            if this.conn.lock().finished > round.finished_before
                && !round.flushed.swap(true, Ordering::AcqRel)
            {
                round.wake.notify_one();
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Counts a request as in flight from its head until its response body is done (or dropped).
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Busy {
        {
            let mut s = conn.lock();
            s.in_flight += 1;
            s.head_started = None;
        }
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.finished += 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
    }
}

/// A response body that ends the request's [`Busy`] when its last frame is out.
struct Guarded {
    inner: axum::body::Body,
    busy: Option<Busy>,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = r {
            this.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Returns once `stop` is true (the borrow of the value ends here, so the future stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

const BUSY_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 36\r\nRetry-After: 1\r\nConnection: close\r\n\r\ncairn: too many connections at once\n";

/// Refused connections answered at once (each lingers up to [`REFUSAL_LINGER`]).
const REFUSALS: usize = 32;
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(BUSY_REPLY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A request head larger than this goes to hyper, whose own limit answers it.
const HEAD_MAX: usize = 64 * 1024;

/// What the hyper service's calls return.
type HyperAnswer =
    Pin<Box<dyn Future<Output = Result<hyper::Response<Guarded>, Infallible>> + Send>>;

/// The hyper service for requests hyper answers: the router, with each request counted [`Busy`]
/// until its response body is done.
fn hyper_service(
    app: &Router,
    conn: &Arc<Conn>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Guarded>,
    Error = Infallible,
    Future = HyperAnswer,
> + Unpin {
    let router = hyper_util::service::TowerToHyperService::new(app.clone());
    let conn = conn.clone();
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::new(conn.clone());
        let fut = router.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|b| Guarded {
                inner: b,
                busy: Some(busy),
            }))
        }) as HyperAnswer
    })
}

/// One connection: request heads are read here; GET and HEAD of files are answered on the zero-copy
/// path ([`sendfile`]), any other request by hyper, which gives the connection back after a request
/// without a body, or keeps it to the end after one with a body (or a malformed head, or one asking
/// to close). The watchdog around this future enforces the timeouts; `stop` ends it between
/// requests.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut eof = false;
    loop {
        let head = loop {
            match sendfile::parse(&buf) {
                sendfile::Parsed::Complete(h) => break Some(h),
                sendfile::Parsed::Other => break None,
                sendfile::Parsed::Partial if buf.len() >= HEAD_MAX => break None,
                sendfile::Parsed::Partial => {}
            }
            if eof || *stop.borrow() {
                let _ = stream.shutdown().await;
                return;
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) => eof = true,
                    Ok(_) => conn.note_read(),
                    Err(_) => return,
                },
                _ = stopped(&mut stop) => {}
            }
        };
        if let Some(h) = head.as_ref().filter(|h| h.zero_copy()) {
            if let Some(req) = h.request(peer) {
                buf.advance(h.len);
                let keep = h.keep_alive && !*stop.borrow();
                match answer(&stream, &conn, &app, h, req, keep).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "HTTP connection: {e}");
                        return;
                    }
                }
            }
        }
        // hyper answers. One request without a body, from a client that keeps the connection:
        // hyper gets exactly its head, and the connection comes back after the response.
        let one = head
            .as_ref()
            .filter(|h| h.keep_alive && !h.special)
            .map(|h| h.len);
        let round = one.map(|_| {
            Arc::new(Round {
                finished_before: conn.lock().finished,
                flushed: std::sync::atomic::AtomicBool::new(false),
                wake: Notify::new(),
            })
        });
        let feed = match one {
            Some(n) => buf.split_to(n),
            None => buf.split(),
        };
        let side = Side {
            io: stream,
            conn: conn.clone(),
            feed,
            one: round.clone(),
            ahead: buf,
            eof,
        };
        let mut http = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                hyper_util::rt::TokioIo::new(side),
                hyper_service(&app, &conn, peer),
            );
        let mut closing = false;
        let mut stopping = false;
        let done = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => break r,
                _ = async { round.as_ref().expect("one request").wake.notified().await },
                    if round.is_some() && !closing => {
                    closing = true;
                    Pin::new(&mut http).graceful_shutdown();
                }
                _ = stopped(&mut stop), if !closing && !stopping => {
                    stopping = true;
                    closing = true;
                    Pin::new(&mut http).graceful_shutdown();
                }
            }
        };
        let parts = http.into_parts();
        let mut side = parts.io.into_inner();
        if let Err(e) = &done {
            tracing::debug!(%peer, "HTTP connection: {e}");
            return;
        }
        let back = round
            .as_ref()
            .is_some_and(|r| r.flushed.load(Ordering::Acquire));
        if !back || stopping || *stop.borrow() {
            let _ = side.io.shutdown().await;
            return;
        }
        // What hyper read and did not use comes before what was read ahead for the next request.
        let mut rest = BytesMut::from(&parts.read_buf[..]);
        rest.extend_from_slice(&side.ahead);
        stream = side.io;
        buf = rest;
        eof = side.eof;
    }
}

/// Answers one request on the zero-copy path: the router makes the response; a file body goes out
/// with sendfile(2), any other (short) body after the head. Ok(keep the connection).
async fn answer(
    stream: &TcpStream,
    conn: &Arc<Conn>,
    app: &Router,
    head: &sendfile::Head,
    req: axum::http::Request<axum::body::Body>,
    keep: bool,
) -> io::Result<bool> {
    use hyper::service::Service as _;
    let _busy = Busy::new(conn.clone());
    let resp = match hyper_util::service::TowerToHyperService::new(app.clone())
        .call(req)
        .await
    {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let keep = keep
        && !parts
            .headers
            .get_all(axum::http::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let head_only = head.method == axum::http::Method::HEAD;
    let file = parts
        .extensions
        .get::<crate::assets::FileBody>()
        .filter(|_| !head_only)
        .cloned();
    if let Some(f) = file {
        drop(body);
        let out = sendfile::response_head(
            parts.status,
            &parts.headers,
            head.version,
            Some(f.len),
            keep,
        );
        sendfile::write_all(stream, conn, &out).await?;
        sendfile::send_file(stream, conn, &f.file, f.start, f.len).await?;
    } else if head_only {
        drop(body);
        let out = sendfile::response_head(parts.status, &parts.headers, head.version, None, keep);
        sendfile::write_all(stream, conn, &out).await?;
    } else {
        // Error and 304/416 answers: a few bytes made in memory.
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(io::Error::other)?;
        let mut out = sendfile::response_head(
            parts.status,
            &parts.headers,
            head.version,
            Some(bytes.len() as u64),
            keep,
        );
        out.extend_from_slice(&bytes);
        sendfile::write_all(stream, conn, &out).await?;
    }
    Ok(keep)
}

/// Serves `app` on `listener` under `limits` until `stop` turns true, then lets requests in flight
/// finish for up to `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let table = Arc::new(Table::default());
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS));
    let tasks = tokio_util::task::TaskTracker::new();
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!("HTTP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((id, conn)) = table.admit(limits.max_connections) else {
            tracing::warn!(%peer, max = limits.max_connections, "HTTP connection refused: every connection is busy");
            // Answer 503 and read what the client sends for a moment, so closing does not reset the
            // connection before the client reads the answer; a few at a time, the rest just closed.
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let app = app.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let work = connection(stream, peer, conn.clone(), app, stop);
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = work.as_mut() => break,
                    _ = conn.close.notified() => {
                        tracing::debug!(%peer, "HTTP connection closed to admit a new one");
                        break;
                    }
                    _ = ticker.tick() => {
                        if let Some(why) = conn.expired(&limits, Instant::now()) {
                            tracing::debug!(%peer, "HTTP connection closed: {why}");
                            break;
                        }
                    }
                }
            }
            table.remove(id);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(limits.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP: {} connections still busy after {:?}; closing them",
            tasks.len(),
            limits.shutdown_grace
        );
        for c in table.lock().values() {
            c.close.notify_one();
        }
        tasks.wait().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_longest_idle_and_spares_busy_ones() {
        let t = Table::default();
        let (a, ca) = t.admit(2).unwrap();
        let (_b, cb) = t.admit(2).unwrap();
        let _busy = Busy::new(cb.clone());
        // a is idle, b busy: c evicts a.
        let (_c, cc) = t.admit(2).unwrap();
        assert!(!t.lock().contains_key(&a));
        let _ = ca;
        let _busy_c = Busy::new(cc);
        // Both busy: refused.
        assert!(t.admit(2).is_none());
    }

    #[test]
    fn expiry_rules() {
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            ..HttpLimits::default()
        };
        let t = Table::default();
        let (_, c) = t.admit(10).unwrap();
        let now = Instant::now();
        assert_eq!(c.expired(&limits, now + Duration::from_secs(30)), None);
        assert_eq!(
            c.expired(&limits, now + Duration::from_secs(61)),
            Some("idle")
        );
        c.lock().head_started = Some(now);
        assert_eq!(
            c.expired(&limits, now + Duration::from_secs(11)),
            Some("request head incomplete")
        );
        let busy = Busy::new(c.clone());
        assert_eq!(c.expired(&limits, now + Duration::from_secs(600)), None);
        c.lock().write_blocked_since = Some(now);
        assert_eq!(
            c.expired(&limits, now + Duration::from_secs(31)),
            Some("client reads nothing")
        );
        c.lock().write_blocked_since = None;
        drop(busy);
        assert_eq!(c.lock().in_flight, 0);
    }
}
