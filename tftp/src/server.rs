//! The server: the request socket (async, on the caller's tokio runtime) and, per request, a task that
//! resolves it through the `Handler` and hands the transfer to its own thread (see `transfer`), within
//! the limits of [`Config`] (transfers in all, per client address, idle lifetime, shutdown grace). At
//! a cap a new request takes the place of the oldest transfer whose client never acknowledged data.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::handler::{Handler, Outcome, TftpError};
use crate::options::{self, negotiate};
use crate::packet::{error_code, DecodeError, Mode, Packet};
use crate::pktinfo;
use crate::transfer::{self, send_error, Lease, StopFlag, Transfer};

/// Server settings. `Default`: 1 s timeout, 5 retries, blksize up to 1468, windowsize up to 16,
/// 64 transfers at once (8 per client address), 15 s without progress ends a transfer, 2 s of grace at
/// shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Retransmission timeout when the client does not ask for one (`timeout` option, whole seconds).
    pub timeout: Duration,
    /// Retransmissions of the same packet before the transfer is given up.
    pub retries: u32,
    /// Largest blksize granted. 1468 fills a 1500-byte Ethernet frame without IP fragmentation; raise it
    /// for loopback or jumbo frames. Never more than 65464 (RFC 2348) whatever is configured.
    pub max_blksize: u16,
    /// Largest windowsize (RFC 7440) granted.
    pub max_windowsize: u16,
    /// Requests handled at once, all clients together: transfers in flight and requests still being
    /// opened. Each holds a thread, a socket and usually an open file. A request beyond it takes the
    /// place of the oldest transfer whose client has not acknowledged a DATA block yet (evicted: it
    /// ends without sending anything more, [`crate::Outcome::Evicted`]), so requests from spoofed
    /// addresses, whose data goes to a host that never answers, cannot keep out a client that does.
    /// When every transfer has progressed, the request is answered with error 0 "server busy, try
    /// again" and nothing else is done for it.
    pub max_transfers: usize,
    /// Requests handled at once for one client address (IPv4-mapped IPv6 counts as IPv4). A request
    /// beyond it takes the place of that address's oldest transfer without an acknowledged DATA
    /// block, else it is answered with error 0 "too many transfers from this address".
    pub max_transfers_per_client: usize,
    /// A transfer ends ([`crate::Outcome::TimedOut`]) when its client has acknowledged nothing new for
    /// this long, whatever `timeout` option (up to 255 s) and `retries` would allow.
    pub max_idle: Duration,
    /// After the shutdown future of [`Server::serve`] completes: transfers in flight may finish within
    /// this time; then they end with error 0 "server shutting down"
    /// ([`crate::Outcome::Stopped`]) and `serve` returns.
    pub shutdown_grace: Duration,
}

/// Default of [`Config::max_transfers`].
pub const DEFAULT_MAX_TRANSFERS: usize = 64;
/// Default of [`Config::max_transfers_per_client`].
pub const DEFAULT_MAX_TRANSFERS_PER_CLIENT: usize = 8;
/// Default of [`Config::max_idle`].
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(15);
/// Default of [`Config::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: 1468,
            max_windowsize: 16,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_transfers_per_client: DEFAULT_MAX_TRANSFERS_PER_CLIENT,
            max_idle: DEFAULT_MAX_IDLE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The error message of a request refused because the server is at [`Config::max_transfers`].
pub const BUSY_MESSAGE: &str = "server busy, try again";
/// The error message of a request refused at [`Config::max_transfers_per_client`].
pub const CLIENT_BUSY_MESSAGE: &str = "too many transfers from this address";

/// Why a request found no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Total,
    Client,
}

/// The requests being handled, in all and per client address, in the order they came, with their
/// [`Lease`]s; and the resources a transfer needs (a socket, a file, a thread), as permits.
#[derive(Debug)]
struct Slots {
    max_total: usize,
    max_per_client: usize,
    /// One permit per transfer holding a socket, a file or a thread. An evicted transfer keeps its
    /// permit until it has really let go of them, so the request that took its place waits for it:
    /// never more than `max_total` at once, however fast places change hands.
    resources: Arc<tokio::sync::Semaphore>,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Admission number -> the request holding the place: oldest first.
    entries: BTreeMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    lease: Arc<Lease>,
}

/// One request's place in [`Slots`]; given back when dropped (when the transfer thread ends), unless
/// it was taken back before (evicted).
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    lease: Arc<Lease>,
}

/// A request let in: its place, and whether it took the place of a transfer (evicted).
#[derive(Debug)]
struct Admitted {
    slot: Slot,
    evicted: bool,
}

impl SlotState {
    /// Takes back the place of the oldest request (of `ip` only, when given) whose client has not
    /// acknowledged a DATA block. False when every such request has progressed.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| ip.is_none_or(|ip| e.ip == ip))
            .find(|(_, e)| e.lease.evict())
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.entries.remove(&id)) {
            Some(e) => {
                self.release(e.ip);
                true
            }
            None => false,
        }
    }

    fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
    }
}

impl Slots {
    fn new(config: &Config) -> Slots {
        Slots {
            max_total: config.max_transfers,
            max_per_client: config.max_transfers_per_client,
            resources: Arc::new(tokio::sync::Semaphore::new(config.max_transfers.max(1))),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a request from `ip`: a free one, else the place of the oldest request (of this
    /// address at its cap, of any address at the total cap) whose client never acknowledged data.
    fn acquire(self: &Arc<Slots>, ip: IpAddr) -> Result<Admitted, Busy> {
        let ip = ip.to_canonical();
        let mut st = self.lock();
        let mut evicted = false;
        if st.per_client.get(&ip).copied().unwrap_or(0) >= self.max_per_client {
            if !st.evict_oldest(Some(ip)) {
                return Err(Busy::Client);
            }
            evicted = true;
        }
        // (After an eviction of this address's own request there is room.)
        if st.entries.len() >= self.max_total {
            if !st.evict_oldest(None) {
                return Err(Busy::Total);
            }
            evicted = true;
        }
        let id = st.next;
        st.next += 1;
        let lease = Arc::new(Lease::default());
        st.entries.insert(
            id,
            Entry {
                ip,
                lease: lease.clone(),
            },
        );
        *st.per_client.entry(ip).or_insert(0) += 1;
        Ok(Admitted {
            slot: Slot {
                slots: self.clone(),
                id,
                lease,
            },
            evicted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        if let Some(e) = st.entries.remove(&self.id) {
            st.release(e.ip);
        }
    }
}

/// Counters of a [`Server`], from [`Server::stats`]; they only grow.
#[derive(Debug, Default)]
pub struct Stats {
    admitted: AtomicU64,
    refused_busy: AtomicU64,
    refused_client_busy: AtomicU64,
    evicted: AtomicU64,
}

impl Stats {
    /// Requests that got a place (a transfer, or an error packet from the handler or for a WRQ).
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Requests refused with [`BUSY_MESSAGE`]: every place held by a transfer that has progressed.
    pub fn refused_busy(&self) -> u64 {
        self.refused_busy.load(Ordering::Relaxed)
    }

    /// Requests refused with [`CLIENT_BUSY_MESSAGE`]: their address's places all held by transfers
    /// that have progressed.
    pub fn refused_client_busy(&self) -> u64 {
        self.refused_client_busy.load(Ordering::Relaxed)
    }

    /// Transfers (or requests still being opened) whose place went to a newer request because their
    /// client had acknowledged no DATA block.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// Requests refused for lack of a slot and transfers evicted, logged once at first and then as
/// counts at most every [`PressureLog::EVERY`], so that a flood does not flood the log as well.
#[derive(Debug, Default)]
struct PressureLog {
    since: Option<Instant>,
    total: u64,
    client: u64,
    evicted: u64,
}

/// What [`PressureLog`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pressure {
    Refused(Busy),
    Evicted,
}

impl PressureLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, what: Pressure, peer: SocketAddr, config: &Config) {
        match what {
            Pressure::Refused(Busy::Total) => self.total += 1,
            Pressure::Refused(Busy::Client) => self.client += 1,
            Pressure::Evicted => self.evicted += 1,
        }
        debug!(%peer, ?what, "TFTP transfer places full");
        match self.since {
            Some(t) if t.elapsed() < Self::EVERY => {}
            _ => {
                warn!(
                    %peer,
                    refused_server_busy = self.total,
                    refused_client_busy = self.client,
                    evicted_never_acknowledged = self.evicted,
                    max_transfers = config.max_transfers,
                    max_transfers_per_client = config.max_transfers_per_client,
                    "TFTP transfer places full: requests took the places of transfers whose clients never acknowledged data (evicted), or were refused when every transfer had progressed (counts since the last such message)"
                );
                self.since = Some(Instant::now());
                self.total = 0;
                self.client = 0;
                self.evicted = 0;
            }
        }
    }
}

/// Raises this process's soft limit on open file descriptors (`RLIMIT_NOFILE`) to its hard limit and
/// returns the soft limit in force (`None`: unlimited). [`Server::bind`] calls it: a server holding a
/// socket and a file per transfer must not run into the 1024 soft limit many systems start with
/// while the hard limit is far higher. An unlimited hard limit means the kernel's `fs.nr_open`.
/// Failure leaves the limit as it was.
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    let get = || {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            Ok(lim)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let lim = get()?;
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(libc::RLIM_INFINITY)
    } else {
        lim.rlim_max
    };
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let now = get()?.rlim_cur;
    Ok((now != libc::RLIM_INFINITY).then_some(now))
}

/// A bound TFTP server; [`Server::serve`] runs it.
pub struct Server {
    socket: UdpSocket,
    local_addr: SocketAddr,
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
    /// Bound to the wildcard address and the kernel reports each request's destination address.
    pktinfo: bool,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the request socket (port 69 in production; any port for tests).
    pub async fn bind(
        addr: SocketAddr,
        handler: Arc<dyn Handler>,
        config: Config,
    ) -> io::Result<Server> {
        match raise_fd_limit() {
            Ok(limit) => debug!(?limit, "open file limit"),
            Err(e) => warn!("cannot raise the open file limit to the hard limit: {e}"),
        }
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding TFTP socket {addr}: {e}")))?;
        let local_addr = socket.local_addr()?;
        let pktinfo = local_addr.ip().is_unspecified()
            && match pktinfo::enable(&socket) {
                Ok(()) => true,
                Err(e) => {
                    warn!(%local_addr, "cannot learn request destination addresses (IP_PKTINFO): {e}; replies leave from the routing source address");
                    false
                }
            };
        Ok(Server {
            socket,
            local_addr,
            handler,
            config: Arc::new(config),
            pktinfo,
            stats: Arc::default(),
        })
    }

    /// The server's counters (admitted, refused, evicted); the handle stays valid while and after
    /// [`Server::serve`] runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The address the request socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `shutdown` completes; then stops accepting requests, gives the transfers
    /// in flight [`Config::shutdown_grace`] to finish, ends the rest with an error packet and returns.
    /// It never waits longer for a stuck client.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            socket,
            local_addr,
            handler,
            config,
            pktinfo,
            stats,
        } = self;
        info!(
            %local_addr,
            max_transfers = config.max_transfers,
            max_transfers_per_client = config.max_transfers_per_client,
            "TFTP server listening"
        );
        let slots = Arc::new(Slots::new(&config));
        let stop = Arc::new(StopFlag::default());
        let mut pressure_log = PressureLog::default();
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; 65536];
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        warn!("TFTP transfer task failed: {e}");
                    }
                }
                received = recv_request(&socket, &mut buf, pktinfo) => {
                    let (len, peer, local_ip) = match received {
                        Ok(r) => r,
                        Err(e) => {
                            debug!("TFTP request socket {local_addr}: {e}");
                            continue;
                        }
                    };
                    let datagram = &buf[..len];
                    // Only requests (RRQ, WRQ) are answered on this port; anything else is dropped
                    // before it costs a slot, a task or a socket.
                    let opcode = (len >= 2).then(|| u16::from_be_bytes([datagram[0], datagram[1]]));
                    if !matches!(opcode, Some(crate::packet::opcode::RRQ | crate::packet::opcode::WRQ)) {
                        debug!(%peer, len, "ignoring a datagram that is not a request on the request port");
                        continue;
                    }
                    let reply_from = reply_ip(local_ip.unwrap_or(local_addr.ip()), peer);
                    match slots.acquire(peer.ip()) {
                        Ok(Admitted { slot, evicted }) => {
                            stats.admitted.fetch_add(1, Ordering::Relaxed);
                            if evicted {
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                                pressure_log.note(Pressure::Evicted, peer, &config);
                            }
                            tasks.spawn(handle_request(
                                datagram.to_vec(),
                                peer,
                                reply_from,
                                slot,
                                RequestContext {
                                    handler: handler.clone(),
                                    config: config.clone(),
                                    resources: slots.resources.clone(),
                                    stop: stop.clone(),
                                },
                            ));
                        }
                        Err(busy) => {
                            let (message, counter) = match busy {
                                Busy::Total => (BUSY_MESSAGE, &stats.refused_busy),
                                Busy::Client => (CLIENT_BUSY_MESSAGE, &stats.refused_client_busy),
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            refuse_busy(&socket, peer, reply_from, message);
                            pressure_log.note(Pressure::Refused(busy), peer, &config);
                        }
                    }
                }
            }
        }
        drop(socket);
        stop.stop(config.shutdown_grace);
        info!(%local_addr, in_flight = tasks.len(), grace_ms = config.shutdown_grace.as_millis() as u64, "TFTP server stopping");
        // Transfer threads notice the stop within `transfer::POLL`; the margin covers that and a
        // handler's `open` still running on the blocking pool.
        let give_up = tokio::time::Instant::now()
            + config.shutdown_grace
            + transfer::POLL
            + Duration::from_millis(500);
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    None => break,
                    Some(Err(e)) => warn!("TFTP transfer task failed: {e}"),
                    Some(Ok(())) => {}
                },
                () = tokio::time::sleep_until(give_up) => {
                    warn!(left = tasks.len(), "TFTP requests still in progress after the shutdown grace; not waiting for them");
                    tasks.abort_all();
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Answers a request that found no slot with error 0, from a socket of its own (closed at once) as any
/// other answer, or from the request socket when no socket can be had.
fn refuse_busy(request_socket: &UdpSocket, peer: SocketAddr, local_ip: IpAddr, message: &str) {
    let err = TftpError::new(error_code::NOT_DEFINED, message);
    match transfer_socket(local_ip) {
        Ok(s) => send_error(&s, peer, &err),
        Err(e) => {
            debug!(%peer, "binding a socket for a busy answer: {e}; answering from the request port");
            let mut out = Vec::new();
            crate::packet::encode_error(&mut out, err.code, &err.message);
            let _ = request_socket.try_send_to(&out, peer);
        }
    }
}

/// The address to answer from, in the peer's family: a dual-stack socket reports IPv4 destinations
/// (IP_PKTINFO) for peers it shows as IPv4-mapped IPv6 addresses.
fn reply_ip(local: IpAddr, peer: SocketAddr) -> IpAddr {
    match (local, peer) {
        (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (ip, _) => ip,
    }
}

/// Receives a request; with `pktinfo`, also the local address it was sent to.
async fn recv_request(
    socket: &UdpSocket,
    buf: &mut [u8],
    pktinfo: bool,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if pktinfo {
        pktinfo::recv(socket, buf).await
    } else {
        let (len, peer) = socket.recv_from(buf).await?;
        Ok((len, peer, None))
    }
}

/// Binds the transfer's own socket: an ephemeral port (RFC 1350 TID) on the address the request was sent
/// to, so the client sees the answer come from the server it asked. Falls back to the wildcard address
/// (routing picks the source) if that address cannot be bound. Blocking: it is used on the transfer's thread.
fn transfer_socket(local_ip: IpAddr) -> io::Result<std::net::UdpSocket> {
    match std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)) {
        Ok(s) => Ok(s),
        Err(e) if !local_ip.is_unspecified() => {
            debug!("binding a transfer socket on {local_ip}: {e}; using the wildcard address");
            let any = match local_ip {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            std::net::UdpSocket::bind(SocketAddr::new(any, 0))
        }
        Err(e) => Err(e),
    }
}

/// What every request's task shares with the server.
struct RequestContext {
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
    /// [`Slots::resources`].
    resources: Arc<tokio::sync::Semaphore>,
    stop: Arc<StopFlag>,
}

async fn handle_request(
    datagram: Vec<u8>,
    peer: SocketAddr,
    local_ip: IpAddr,
    slot: Slot,
    cx: RequestContext,
) {
    let RequestContext {
        handler,
        config,
        resources,
        stop,
    } = cx;
    let refusal = match Packet::decode(&datagram) {
        Ok(Packet::Rrq(req)) => {
            if req.mode == Mode::Mail {
                Err((
                    req.filename,
                    TftpError::new(error_code::ILLEGAL_OPERATION, "mail mode is not supported"),
                ))
            } else {
                Ok(req)
            }
        }
        Ok(Packet::Wrq(req)) => Err((
            req.filename,
            TftpError::access_violation("this server is read-only"),
        )),
        Ok(other) => {
            debug!(%peer, "ignoring {other:?} sent to the request port");
            return;
        }
        Err(
            e @ (DecodeError::Unterminated(_)
            | DecodeError::NotUtf8(_)
            | DecodeError::UnknownMode(_)),
        ) => Err((
            String::new(),
            TftpError::new(error_code::ILLEGAL_OPERATION, e.to_string()),
        )),
        Err(e) => {
            debug!(%peer, "ignoring malformed datagram on the request port: {e}");
            return;
        }
    };
    // The place may have been another transfer's, evicted: wait until that one let go of its
    // resources, unless this request loses its place first (then nothing at all is sent for it).
    let lease = slot.lease.clone();
    let permit = tokio::select! {
        biased;
        () = lease.evicted() => {
            debug!(%peer, "TFTP request evicted before it started");
            return;
        }
        permit = resources.acquire_owned() => match permit {
            Ok(p) => p,
            Err(_) => return,
        },
    };
    let socket = match transfer_socket(local_ip) {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, "binding a TFTP transfer socket on {local_ip}: {e}");
            return;
        }
    };
    let req = match refusal {
        Ok(req) => req,
        Err(_) if lease.is_evicted() => return,
        Err((path, err)) => {
            info!(%peer, path, "TFTP request refused: {err}");
            send_error(&socket, peer, &err);
            handler.finished(&path, peer, &Outcome::Refused(err));
            return;
        }
    };
    let path = req.filename;
    let opened = {
        let handler = handler.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || handler.open(&path, peer)).await
    };
    if lease.is_evicted() {
        debug!(%peer, path, "TFTP request evicted while its content was opened");
        handler.finished(&path, peer, &Outcome::Evicted);
        return;
    }
    let content = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(err)) => {
            info!(%peer, path, "TFTP read refused: {err}");
            send_error(&socket, peer, &err);
            handler.finished(&path, peer, &Outcome::Refused(err));
            return;
        }
        Err(join) => {
            let err = TftpError::new(error_code::NOT_DEFINED, "internal error");
            warn!(%peer, path, "TFTP handler panicked: {join}");
            send_error(&socket, peer, &err);
            handler.finished(
                &path,
                peer,
                &Outcome::Failed(format!("handler panicked: {join}")),
            );
            return;
        }
    };
    // netascii is served byte for byte like octet (no LF -> CR LF conversion): boot files are binary and
    // iPXE scripts are read fine with LF line ends; this keeps tsize exact.
    let len = content.len();
    let negotiated = negotiate(&req.options, len, config.max_blksize, config.max_windowsize);
    let started = std::time::Instant::now();
    let mut transfer = Transfer::new(
        socket,
        peer,
        content,
        &negotiated,
        config.timeout,
        config.retries,
    )
    .with_limits(config.max_idle, stop);
    let outcome = if transfer.with_lease(lease) {
        run_on_thread(transfer, peer, local_ip, (slot, permit)).await
    } else {
        Outcome::Evicted
    };
    let elapsed = started.elapsed();
    match &outcome {
        Outcome::Completed { bytes } => info!(
            %peer, path, bytes, blksize = negotiated.blksize, windowsize = negotiated.windowsize,
            ms = elapsed.as_millis() as u64, "TFTP transfer complete"
        ),
        // Counted and logged at most every 10 s by the request loop: a flood must not flood the log.
        Outcome::Evicted => {
            debug!(%peer, path, ms = elapsed.as_millis() as u64, "TFTP transfer evicted")
        }
        other => {
            info!(%peer, path, ms = elapsed.as_millis() as u64, "TFTP transfer ended: {other:?}")
        }
    }
    handler.finished(&path, peer, &outcome);
}

/// Runs the transfer on a thread of its own (small stack, blocking socket) and waits for its outcome
/// without holding a runtime worker. The thread logs through the caller's tracing dispatcher and holds
/// the request's slot and resource permit until it ends (even if the server stopped waiting for it);
/// the transfer's socket and file are closed before they are given back.
async fn run_on_thread(
    transfer: Transfer,
    peer: SocketAddr,
    local_ip: IpAddr,
    slot: (Slot, tokio::sync::OwnedSemaphorePermit),
) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let spawned = std::thread::Builder::new()
        .name("tftp-transfer".into())
        .stack_size(transfer::STACK_SIZE)
        .spawn(move || {
            let _log = tracing::dispatcher::set_default(&dispatch);
            let outcome = transfer.run();
            drop(slot);
            let _ = tx.send(outcome);
        });
    match spawned {
        Ok(_detached) => rx.await.unwrap_or_else(|_| {
            warn!(%peer, "TFTP transfer thread panicked");
            Outcome::Failed("transfer thread panicked".into())
        }),
        Err(e) => {
            // The transfer (and its socket) went with the closure; answer from a new socket.
            warn!(%peer, "starting a TFTP transfer thread: {e}");
            let err = TftpError::new(error_code::NOT_DEFINED, "server busy, try again");
            if let Ok(socket) = transfer_socket(local_ip) {
                send_error(&socket, peer, &err);
            }
            Outcome::Failed(format!("starting a transfer thread: {e}"))
        }
    }
}

/// Largest block size the server ever grants (RFC 2348).
pub const MAX_BLKSIZE: u16 = options::MAX_BLKSIZE;

#[cfg(test)]
mod tests {
    use super::*;

    /// A place whose client acknowledged a DATA block.
    fn progressed(a: Admitted) -> Slot {
        assert!(a.slot.lease.mark_acked());
        a.slot
    }

    #[test]
    fn slots_of_progressed_transfers_cap_in_all_and_per_address_and_come_back_when_dropped() {
        let config = Config {
            max_transfers: 3,
            max_transfers_per_client: 2,
            ..Config::default()
        };
        let slots = Arc::new(Slots::new(&config));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = progressed(slots.acquire(a).unwrap());
        let a2 = progressed(slots.acquire(a_mapped).unwrap());
        assert_eq!(
            slots.acquire(a).unwrap_err(),
            Busy::Client,
            "IPv4-mapped is the same client"
        );
        let b1 = progressed(slots.acquire(b).unwrap());
        assert_eq!(slots.acquire(c).unwrap_err(), Busy::Total);
        drop(a1);
        let c1 = progressed(slots.acquire(c).unwrap());
        assert_eq!(slots.acquire(b).unwrap_err(), Busy::Total);
        drop((a2, b1, c1));
        let st = slots.lock();
        assert!(st.entries.is_empty());
        assert!(st.per_client.is_empty(), "{:?}", st.per_client);
    }

    #[test]
    fn eviction_takes_the_oldest_never_acknowledged_and_spares_progressed_ones() {
        let config = Config {
            max_transfers: 4,
            max_transfers_per_client: 2,
            ..Config::default()
        };
        let slots = Arc::new(Slots::new(&config));
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        // Full: 1 progressed, 2 and 3 never acknowledged (2 older), 4 progressed.
        let s1 = progressed(slots.acquire(ip(1)).unwrap());
        let s2 = slots.acquire(ip(2)).unwrap();
        let s3 = slots.acquire(ip(3)).unwrap();
        let s4 = progressed(slots.acquire(ip(4)).unwrap());
        assert!(!s2.evicted && !s3.evicted);
        // A newcomer takes the place of the oldest never-acknowledged request: 2.
        let s5 = slots.acquire(ip(5)).unwrap();
        assert!(s5.evicted);
        assert!(s2.slot.lease.is_evicted() && !s3.slot.lease.is_evicted());
        assert!(!s2.slot.lease.mark_acked(), "an evicted place stays lost");
        // Then 3, then the newcomer 5 (oldest left unacknowledged).
        let s6 = progressed(slots.acquire(ip(6)).unwrap());
        assert!(s3.slot.lease.is_evicted());
        let s7 = slots.acquire(ip(7)).unwrap();
        assert!(s7.evicted && s5.slot.lease.is_evicted());
        // 1, 4, 6 progressed, 7 too: nothing left to take; the newcomer is refused.
        let s7 = progressed(s7);
        assert_eq!(slots.acquire(ip(8)).unwrap_err(), Busy::Total);
        {
            let st = slots.lock();
            assert_eq!(st.entries.len(), 4);
            let held: Vec<IpAddr> = st.entries.values().map(|e| e.ip).collect();
            assert_eq!(held, [ip(1), ip(4), ip(6), ip(7)]);
        }
        // Evicted places dropped late do not give anything back twice.
        drop((s2, s3, s5));
        assert_eq!(slots.lock().entries.len(), 4);
        assert_eq!(slots.acquire(ip(8)).unwrap_err(), Busy::Total);
        drop((s1, s4, s6, s7));
        let st = slots.lock();
        assert!(st.entries.is_empty() && st.per_client.is_empty());
    }

    #[test]
    fn an_address_at_its_cap_evicts_only_its_own_never_acknowledged_requests() {
        let config = Config {
            max_transfers: 10,
            max_transfers_per_client: 2,
            ..Config::default()
        };
        let slots = Arc::new(Slots::new(&config));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let b1 = slots.acquire(b).unwrap(); // older than a's, never acknowledged
        let a1 = slots.acquire(a).unwrap();
        let a2 = progressed(slots.acquire(a).unwrap());
        let a3 = slots.acquire(a).unwrap();
        assert!(
            a3.evicted,
            "a at its cap takes its own oldest unacknowledged place"
        );
        assert!(a1.slot.lease.is_evicted() && !b1.slot.lease.is_evicted());
        let _a3 = progressed(a3);
        assert_eq!(
            slots.acquire(a).unwrap_err(),
            Busy::Client,
            "both of a's places progressed: the cap holds, b's place is not taken"
        );
        assert!(!b1.slot.lease.is_evicted());
        assert_eq!(slots.lock().per_client[&a], 2);
        drop((a1, a2));
        assert_eq!(slots.lock().per_client[&a], 1);
    }
}
