//! The server: the request socket, one tokio task and one ephemeral UDP socket per transfer, and the
//! transfer engine (OACK, windowed DATA, retransmission, ACK/ERROR handling).

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::pin::Pin;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::block;
use crate::handler::{Content, Handler, Outcome, TftpError};
use crate::options::{self, negotiate, Negotiated};
use crate::packet::{encode_data, encode_error, error_code, DecodeError, Mode, Packet};
use crate::pktinfo;

/// Server settings. `Default`: 1 s timeout, 5 retries, blksize up to 1468, windowsize up to 16.
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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: 1468,
            max_windowsize: 16,
        }
    }
}

/// A bound TFTP server; [`Server::serve`] runs it.
pub struct Server {
    socket: UdpSocket,
    local_addr: SocketAddr,
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
    /// Bound to the wildcard address and the kernel reports each request's destination address.
    pktinfo: bool,
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
        })
    }

    /// The address the request socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `shutdown` completes; then stops accepting requests and waits for the
    /// transfers in flight to finish (each ends by completion, client error or timeout).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            socket,
            local_addr,
            handler,
            config,
            pktinfo,
        } = self;
        info!(%local_addr, "TFTP server listening");
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
                    let datagram = buf[..len].to_vec();
                    tasks.spawn(handle_request(
                        datagram,
                        peer,
                        reply_ip(local_ip.unwrap_or(local_addr.ip()), peer),
                        handler.clone(),
                        config.clone(),
                    ));
                }
            }
        }
        drop(socket);
        info!(%local_addr, in_flight = tasks.len(), "TFTP server stopping");
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                warn!("TFTP transfer task failed: {e}");
            }
        }
        Ok(())
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
/// (routing picks the source) if that address cannot be bound.
async fn transfer_socket(local_ip: IpAddr) -> io::Result<UdpSocket> {
    match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => Ok(s),
        Err(e) if !local_ip.is_unspecified() => {
            debug!("binding a transfer socket on {local_ip}: {e}; using the wildcard address");
            let any = match local_ip {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            UdpSocket::bind(SocketAddr::new(any, 0)).await
        }
        Err(e) => Err(e),
    }
}

async fn send_error(socket: &UdpSocket, peer: SocketAddr, err: &TftpError) {
    let mut out = Vec::with_capacity(5 + err.message.len());
    encode_error(&mut out, err.code, &err.message);
    if let Err(e) = socket.send_to(&out, peer).await {
        debug!(%peer, "sending TFTP error: {e}");
    }
}

async fn handle_request(
    datagram: Vec<u8>,
    peer: SocketAddr,
    local_ip: IpAddr,
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
) {
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
    let socket = match transfer_socket(local_ip).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, "binding a TFTP transfer socket on {local_ip}: {e}");
            return;
        }
    };
    let req = match refusal {
        Ok(req) => req,
        Err((path, err)) => {
            info!(%peer, path, "TFTP request refused: {err}");
            send_error(&socket, peer, &err).await;
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
    let content = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(err)) => {
            info!(%peer, path, "TFTP read refused: {err}");
            send_error(&socket, peer, &err).await;
            handler.finished(&path, peer, &Outcome::Refused(err));
            return;
        }
        Err(join) => {
            let err = TftpError::new(error_code::NOT_DEFINED, "internal error");
            warn!(%peer, path, "TFTP handler panicked: {join}");
            send_error(&socket, peer, &err).await;
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
    let mut transfer = Transfer::new(socket, peer, content, &negotiated, &config);
    let outcome = transfer.run(&negotiated).await;
    let elapsed = started.elapsed();
    match &outcome {
        Outcome::Completed { bytes } => info!(
            %peer, path, bytes, blksize = negotiated.blksize, windowsize = negotiated.windowsize,
            ms = elapsed.as_millis() as u64, "TFTP transfer complete"
        ),
        other => {
            info!(%peer, path, ms = elapsed.as_millis() as u64, "TFTP transfer ended: {other:?}")
        }
    }
    handler.finished(&path, peer, &outcome);
}

/// Where DATA payloads come from. Files are read in chunks on the blocking pool and kept for retransmission.
enum Source {
    Bytes(Bytes),
    File {
        file: Arc<File>,
        chunk: Bytes,
        chunk_start: u64,
    },
}

/// Smallest file chunk read at once.
const MIN_CHUNK: u64 = 64 * 1024;

/// What waiting for the client produced.
enum Event {
    Ack(u16),
    ClientError { code: u16, message: String },
    Timeout,
}

struct Transfer {
    socket: UdpSocket,
    peer: SocketAddr,
    source: Source,
    len: u64,
    blksize: u64,
    window: u64,
    blocks: u64,
    timeout: Duration,
    retries: u32,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    timer: Pin<Box<Sleep>>,
}

impl Transfer {
    fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        content: Content,
        n: &Negotiated,
        config: &Config,
    ) -> Transfer {
        let len = content.len();
        let source = match content {
            Content::Bytes(b) => Source::Bytes(b),
            Content::File { file, .. } => Source::File {
                file: Arc::new(file),
                chunk: Bytes::new(),
                chunk_start: 0,
            },
        };
        Transfer {
            socket,
            peer,
            source,
            len,
            blksize: u64::from(n.blksize),
            window: u64::from(n.windowsize.max(1)),
            blocks: block::count(len, n.blksize),
            timeout: n.timeout.unwrap_or(config.timeout),
            retries: config.retries,
            out: Vec::with_capacity(4 + usize::from(n.blksize)),
            rbuf: vec![0u8; 2048],
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    async fn run(&mut self, n: &Negotiated) -> Outcome {
        if !n.oack.is_empty() {
            let mut oack = Vec::new();
            Packet::Oack(n.oack.clone()).encode(&mut oack);
            let mut attempts = 0;
            'oack: loop {
                self.send(&oack).await;
                self.arm(Instant::now() + self.timeout);
                loop {
                    match self.wait().await {
                        Event::Ack(0) => break 'oack,
                        Event::Ack(other) => {
                            debug!(peer = %self.peer, "ignoring ACK {other} before ACK 0 of the OACK")
                        }
                        Event::ClientError { code, message } => {
                            return Outcome::ClientError { code, message }
                        }
                        Event::Timeout => {
                            attempts += 1;
                            if attempts > self.retries {
                                return Outcome::TimedOut { acked_blocks: 0 };
                            }
                            continue 'oack;
                        }
                    }
                }
            }
        }
        match self.send_data().await {
            Ok(outcome) => outcome,
            Err(e) => {
                let err = TftpError::new(error_code::NOT_DEFINED, "error reading file");
                let msg = format!("reading the content for {}: {e}", self.peer);
                send_error(&self.socket, self.peer, &err).await;
                Outcome::Failed(msg)
            }
        }
    }

    /// The DATA phase: windows of blocks, ACK handling, retransmission.
    async fn send_data(&mut self) -> io::Result<Outcome> {
        let mut acked: u64 = 0; // last block acknowledged by the client
        let mut next: u64 = 1; // next block to send
        let mut attempts: u32 = 0; // timeouts in a row
        let mut rewound_at: Option<u64> = None;
        loop {
            let limit = (acked + self.window).min(self.blocks);
            let mut sent = false;
            while next <= limit {
                self.send_block(next, acked + 1).await?;
                next += 1;
                sent = true;
            }
            if sent {
                self.arm(Instant::now() + self.timeout);
            }
            match self.wait().await {
                Event::Timeout => {
                    attempts += 1;
                    if attempts > self.retries {
                        return Ok(Outcome::TimedOut {
                            acked_blocks: acked,
                        });
                    }
                    debug!(peer = %self.peer, block = acked + 1, attempts, "timeout, resending");
                    next = acked + 1;
                }
                Event::ClientError { code, message } => {
                    return Ok(Outcome::ClientError { code, message })
                }
                Event::Ack(ack) => {
                    let in_flight = next - 1 - acked;
                    match block::ack_advance(acked, in_flight, ack) {
                        // Old ACK from before the window: ignore.
                        None => {}
                        // Duplicate of the previous ACK. With windowsize 1 it is ignored: answering it
                        // would double every later block (Sorcerer's Apprentice). With a window it means
                        // the client saw a gap; resend the window once per position.
                        Some(0)
                            if self.window > 1 && in_flight > 0 && rewound_at != Some(acked) =>
                        {
                            rewound_at = Some(acked);
                            next = acked + 1;
                        }
                        Some(0) => {}
                        Some(d) => {
                            acked += d;
                            attempts = 0;
                            if acked == self.blocks {
                                return Ok(Outcome::Completed { bytes: self.len });
                            }
                            if d < in_flight {
                                // Part of a window acknowledged: the client lost the block after it
                                // (RFC 7440); continue from there.
                                rewound_at = Some(acked);
                                next = acked + 1;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn send(&self, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, self.peer).await {
            // Treated like a lost packet: the timeout resends it.
            debug!(peer = %self.peer, "sending: {e}");
        }
    }

    async fn send_block(&mut self, index: u64, window_start: u64) -> io::Result<()> {
        let payload = self.payload(index, window_start).await?;
        self.out.clear();
        encode_data(&mut self.out, block::wire(index), &payload);
        if let Err(e) = self.socket.send_to(&self.out, self.peer).await {
            debug!(peer = %self.peer, "sending block {index}: {e}");
        }
        Ok(())
    }

    /// Payload of block `index` (1-based). File chunks start at the window so resends hit memory.
    async fn payload(&mut self, index: u64, window_start: u64) -> io::Result<Bytes> {
        let start = (index - 1) * self.blksize;
        let end = (start + self.blksize).min(self.len);
        let want = (end - start) as usize;
        match &mut self.source {
            Source::Bytes(b) => Ok(b.slice(start as usize..end as usize)),
            Source::File {
                file,
                chunk,
                chunk_start,
            } => {
                if start < *chunk_start || end > *chunk_start + chunk.len() as u64 {
                    let from = (window_start - 1) * self.blksize;
                    let size = (self.blksize * self.window * 2)
                        .max(MIN_CHUNK)
                        .min(self.len - from);
                    let file = file.clone();
                    let data = tokio::task::spawn_blocking(move || read_chunk(&file, from, size))
                        .await
                        .map_err(io::Error::other)??;
                    *chunk = data;
                    *chunk_start = from;
                }
                let off = (start - *chunk_start) as usize;
                if off + want > chunk.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ));
                }
                Ok(chunk.slice(off..off + want))
            }
        }
    }

    /// Sets the retransmission deadline. One timer per transfer is re-armed instead of creating one
    /// per wait: that is measurably cheaper per block.
    fn arm(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
    }

    /// Waits for a packet from the client until the armed deadline. Packets from other ports get error 5
    /// (unknown transfer ID) and do not disturb the transfer; anything but ACK and ERROR is ignored.
    async fn wait(&mut self) -> Event {
        loop {
            let received = tokio::select! {
                biased;
                r = self.socket.recv_from(&mut self.rbuf) => Ok(r),
                () = &mut self.timer => Err(()),
            };
            let received = match received {
                Err(()) => return Event::Timeout,
                Ok(Err(e)) => {
                    debug!(peer = %self.peer, "receiving: {e}");
                    // An error returns at once; do not spin until the deadline.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Ok(Ok(r)) => r,
            };
            let (len, from) = received;
            if from != self.peer {
                let err = TftpError::new(error_code::UNKNOWN_TID, "unknown transfer ID");
                send_error(&self.socket, from, &err).await;
                continue;
            }
            match Packet::decode(&self.rbuf[..len]) {
                Ok(Packet::Ack(n)) => return Event::Ack(n),
                Ok(Packet::Error { code, message }) => return Event::ClientError { code, message },
                Ok(other) => debug!(peer = %self.peer, "ignoring {other:?} during a read transfer"),
                Err(e) => debug!(peer = %self.peer, "ignoring malformed packet: {e}"),
            }
        }
    }
}

fn read_chunk(file: &File, from: u64, size: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], from + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// Largest block size the server ever grants (RFC 2348).
pub const MAX_BLKSIZE: u16 = options::MAX_BLKSIZE;
