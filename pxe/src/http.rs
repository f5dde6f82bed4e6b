//! The HTTP listener with limits (issue 15 item 4): HTTP/1.1 connections served by hyper, each watched
//! for a request head that takes too long (slowloris), an idle keep-alive, and a response nobody reads;
//! at most `max_connections` at once, where a new connection beyond the cap evicts the connection idle
//! the longest (no request in flight), so `/healthz` stays reachable while idle or half-sent connections
//! fill the table, and is answered 503 only when every connection is busy with a request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

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
}

struct Conn {
    state: Mutex<State>,
    close: Notify,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

/// The TCP stream, telling the watchdog when request bytes arrive and when writes stall.
struct Watched {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut s = this.conn.lock();
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
        }
        r
    }
}

impl Watched {
    fn note_write<T>(&self, r: &Poll<io::Result<T>>) {
        let mut s = self.conn.lock();
        match r {
            Poll::Pending => {
                s.write_blocked_since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => s.write_blocked_since = None,
        }
    }
}

impl AsyncWrite for Watched {
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
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
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
        let io = hyper_util::rt::TokioIo::new(Watched {
            io: stream,
            conn: conn.clone(),
        });
        let router = hyper_util::service::TowerToHyperService::new(app.clone());
        let svc_conn = conn.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::new(svc_conn.clone());
            let fut = router.call(req);
            async move {
                let resp = match fut.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|b| Guarded {
                    inner: b,
                    busy: Some(busy),
                }))
            }
        });
        let table = table.clone();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc);
            tokio::pin!(http);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = http.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "HTTP connection: {e}");
                        }
                        break;
                    }
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
                    _ = stopped(&mut stop), if !stopping => {
                        stopping = true;
                        http.as_mut().graceful_shutdown();
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
