//! The transfer engine: one read transfer (OACK, windowed DATA, retransmission, ACK/ERROR handling) on its own
//! OS thread with a blocking UDP socket, so each lockstep block costs a `sendto` and a blocking `recvfrom`
//! instead of a wake-up of an async runtime worker.
//!
//! The retransmission timer is the socket's receive timeout (`SO_RCVTIMEO`), changed only when the time
//! left differs from the one set (after a packet that did not advance the transfer), and never longer
//! than [`POLL`] so that the thread sees a server shutdown; file blocks are read with positional reads
//! into a small chunk buffer. A transfer also ends when its client made no progress for the server's
//! idle limit, whatever `timeout` it asked for, and at once when the server takes its place back
//! ([`Lease::evict`]) before its client acknowledged any data.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;

use crate::block;
use crate::handler::{Content, Outcome, TftpError};
use crate::options::Negotiated;
use crate::packet::{encode_data, encode_error, error_code, Packet};

/// Stack reserved for each transfer thread. Only touched pages count towards RSS. Measured: the whole test
/// suite, including `tests/logging.rs` (a fmt subscriber formatting every event at TRACE on these
/// threads, with loss and retransmissions), passes in a debug build with 32 KiB; the rest is margin for
/// heavier subscribers the embedding program may install. `Handler` methods never run on this stack.
pub const STACK_SIZE: usize = 128 * 1024;

/// File bytes read at once for small blocks (rounded down to whole blocks).
const CHUNK: u64 = 16 * 1024;

/// SO_RCVTIMEO is left alone while it is within this much of the time left (Linux counts it in jiffies
/// anyway); otherwise it is set to the time left.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Longest single wait in `recvfrom`: a transfer thread notices a server shutdown within this time
/// even when its client asked for a 255 s timeout.
pub const POLL: Duration = Duration::from_millis(250);

/// Set once when the server stops: the instant by which every transfer must have ended.
#[derive(Debug, Default)]
pub struct StopFlag {
    end: OnceLock<Instant>,
}

impl StopFlag {
    /// Transfers may go on for `grace`, then end.
    pub fn stop(&self, grace: Duration) {
        let now = Instant::now();
        let _ = self.end.set(now.checked_add(grace).unwrap_or(now));
    }

    fn end(&self) -> Option<Instant> {
        self.end.get().copied()
    }
}

/// A transfer's place in the server's table, shared by the table and the transfer: whether the client
/// ever acknowledged a DATA block, and whether the server took the place back for a newer request
/// ([`Lease::evict`], only while no DATA block was acknowledged). An evicted transfer sends nothing
/// more and ends at once: its socket is shut down for reading, which wakes a thread blocked in
/// `recvfrom`, and a task still waiting for its turn is woken too.
#[derive(Debug, Default)]
pub struct Lease {
    /// Set with `state.evicted`; read without the lock on every wait of the transfer.
    evicted: AtomicBool,
    state: Mutex<LeaseState>,
    /// Woken at eviction, for a request still waiting for resources.
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct LeaseState {
    acked: bool,
    evicted: bool,
    /// The transfer's socket once bound, to wake a blocked receive at eviction.
    socket: Option<Weak<UdpSocket>>,
}

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the place was taken back.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// The client acknowledged a DATA block. False when the place was taken back before (the
    /// transfer must end without sending more).
    pub fn mark_acked(&self) -> bool {
        let mut st = self.lock();
        if st.evicted {
            return false;
        }
        st.acked = true;
        true
    }

    /// Takes the place back unless the client acknowledged a DATA block (then false, and nothing
    /// changes): the transfer, or the request still preparing it, ends without sending anything more.
    pub fn evict(&self) -> bool {
        let socket = {
            let mut st = self.lock();
            if st.acked || st.evicted {
                return false;
            }
            st.evicted = true;
            self.evicted.store(true, Ordering::Release);
            st.socket.take()
        };
        self.wake.notify_one();
        if let Some(socket) = socket.and_then(|w| w.upgrade()) {
            // Linux wakes every reader of a UDP socket shut down for reading, connected or not
            // (the call itself reports ENOTCONN for an unconnected one); later receives return at
            // once. Without it the thread would still notice within `POLL`.
            // SAFETY: the descriptor belongs to `socket`, which this Arc keeps open during the call.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RD) };
        }
        true
    }

    /// Registers the transfer's socket so that an eviction wakes its thread. False when the place was
    /// taken back already.
    pub fn attach(&self, socket: &Arc<UdpSocket>) -> bool {
        let mut st = self.lock();
        if st.evicted {
            return false;
        }
        st.socket = Some(Arc::downgrade(socket));
        true
    }

    /// Completes once the place was taken back.
    pub async fn evicted(&self) {
        loop {
            let notified = self.wake.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }
}

/// Sends a TFTP error packet; failures are only logged (the client times out instead).
pub fn send_error(socket: &UdpSocket, peer: SocketAddr, err: &TftpError) {
    let mut out = Vec::with_capacity(5 + err.message.len());
    encode_error(&mut out, err.code, &err.message);
    if let Err(e) = socket.send_to(&out, peer) {
        debug!(%peer, "sending TFTP error: {e}");
    }
}

/// Where DATA payloads come from.
enum Source {
    Bytes(Bytes),
    File {
        file: File,
        /// File bytes from `chunk_start`; refilled from the block asked for when it is not inside. Its
        /// capacity is the chunk size; 0 for blocks of `CHUNK / 2` bytes or more, read straight into the packet.
        chunk: Vec<u8>,
        chunk_start: u64,
    },
}

/// What waiting for the client produced.
enum Event {
    Ack(u16),
    ClientError {
        code: u16,
        message: String,
    },
    /// The retransmission timer expired.
    Timeout,
    /// No progress for the idle limit.
    Idle,
    /// The server is stopping and this transfer's time is up.
    Stop,
    /// The server took the transfer's place back ([`Lease::evict`]).
    Evicted,
}

/// One read transfer on a blocking socket; [`Transfer::run`] drives it to its [`Outcome`].
pub struct Transfer {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    source: Source,
    len: u64,
    blksize: u64,
    window: u64,
    blocks: u64,
    timeout: Duration,
    retries: u32,
    oack: Option<Vec<(String, String)>>,
    /// The DATA packet last encoded, holding block `packet_block`.
    packet: Vec<u8>,
    packet_block: Option<u64>,
    rbuf: Vec<u8>,
    deadline: Instant,
    /// The receive timeout currently set on the socket.
    rcvtimeo: Option<Duration>,
    /// Longest time without progress (`None`: no limit).
    max_idle: Option<Duration>,
    /// When the transfer ends for lack of progress.
    idle_deadline: Option<Instant>,
    stop: Option<Arc<StopFlag>>,
    /// The transfer's place in the server's table (`None`: not evictable).
    lease: Option<Arc<Lease>>,
    /// A DATA block was acknowledged (and the lease told so).
    data_acked: bool,
}

impl Transfer {
    /// A transfer of `content` to `peer` over `socket` (blocking mode) with the negotiated options;
    /// `timeout` is the retransmission timeout when the client did not negotiate one.
    pub fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        content: Content,
        n: &Negotiated,
        timeout: Duration,
        retries: u32,
    ) -> Transfer {
        let len = content.len();
        let blksize = u64::from(n.blksize);
        let source = match content {
            Content::Bytes(b) => Source::Bytes(b),
            Content::File { file, .. } => Source::File {
                file,
                chunk: if blksize * 2 > CHUNK {
                    Vec::new()
                } else {
                    Vec::with_capacity(((CHUNK / blksize) * blksize) as usize)
                },
                chunk_start: 0,
            },
        };
        Transfer {
            socket: Arc::new(socket),
            peer,
            source,
            len,
            blksize,
            window: u64::from(n.windowsize.max(1)),
            blocks: block::count(len, n.blksize),
            timeout: n.timeout.unwrap_or(timeout).max(Duration::from_millis(1)),
            retries,
            oack: (!n.oack.is_empty()).then(|| n.oack.clone()),
            packet: Vec::with_capacity(4 + usize::from(n.blksize)),
            packet_block: None,
            rbuf: vec![0u8; 1024],
            deadline: Instant::now(),
            rcvtimeo: None,
            max_idle: None,
            idle_deadline: None,
            stop: None,
            lease: None,
            data_acked: false,
        }
    }

    /// Ends the transfer after `max_idle` without progress (an ACK that acknowledges something new),
    /// whatever the retransmission timeout, and when `stop` says the server is stopping.
    pub fn with_limits(mut self, max_idle: Duration, stop: Arc<StopFlag>) -> Transfer {
        self.max_idle = Some(max_idle);
        self.stop = Some(stop);
        self
    }

    /// Ties the transfer to its place in the server's table: it ends at once, sending nothing more,
    /// when the place is taken back ([`Lease::evict`]), and tells the lease when the client
    /// acknowledges its first DATA block. False when the place was taken back already.
    pub fn with_lease(&mut self, lease: Arc<Lease>) -> bool {
        let attached = lease.attach(&self.socket);
        self.lease = Some(lease);
        attached
    }

    fn evicted(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.is_evicted())
    }

    /// The client acknowledged something new: the idle limit starts again.
    fn progress(&mut self) {
        self.idle_deadline = self.max_idle.and_then(|m| Instant::now().checked_add(m));
    }

    /// Tells the client the server is going away.
    fn stopped(&self, acked_blocks: u64) -> Outcome {
        let err = TftpError::new(error_code::NOT_DEFINED, "server shutting down");
        send_error(&self.socket, self.peer, &err);
        Outcome::Stopped { acked_blocks }
    }

    /// Runs the transfer to its end: completion, client error, timeout or a local error.
    pub fn run(mut self) -> Outcome {
        if self.evicted() {
            return Outcome::Evicted;
        }
        self.progress();
        if let Some(opts) = self.oack.take() {
            let mut oack = Vec::new();
            Packet::Oack(opts).encode(&mut oack);
            let mut attempts = 0;
            'oack: loop {
                self.send(&oack);
                self.arm();
                loop {
                    match self.wait() {
                        Event::Ack(0) => {
                            self.progress();
                            break 'oack;
                        }
                        Event::Ack(other) => {
                            debug!(peer = %self.peer, "ignoring ACK {other} before ACK 0 of the OACK")
                        }
                        Event::ClientError { code, message } => {
                            return Outcome::ClientError { code, message }
                        }
                        Event::Idle => return Outcome::TimedOut { acked_blocks: 0 },
                        Event::Stop => return self.stopped(0),
                        Event::Evicted => return Outcome::Evicted,
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
        match self.send_data() {
            Ok(outcome) => outcome,
            Err(e) => {
                let err = TftpError::new(error_code::NOT_DEFINED, "error reading file");
                send_error(&self.socket, self.peer, &err);
                Outcome::Failed(format!("reading the content for {}: {e}", self.peer))
            }
        }
    }

    /// The DATA phase: windows of blocks, ACK handling, retransmission.
    fn send_data(&mut self) -> io::Result<Outcome> {
        let mut acked: u64 = 0; // last block acknowledged by the client
        let mut next: u64 = 1; // next block to send
        let mut attempts: u32 = 0; // timeouts in a row
        let mut rewound_at: Option<u64> = None;
        loop {
            let limit = (acked + self.window).min(self.blocks);
            let mut sent = false;
            while next <= limit {
                self.send_block(next)?;
                next += 1;
                sent = true;
            }
            if sent {
                self.arm();
                self.prepare(next);
            }
            match self.wait() {
                Event::Idle => {
                    return Ok(Outcome::TimedOut {
                        acked_blocks: acked,
                    })
                }
                Event::Stop => return Ok(self.stopped(acked)),
                Event::Evicted => return Ok(Outcome::Evicted),
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
                            if !self.data_acked {
                                self.data_acked = true;
                                if self.lease.as_ref().is_some_and(|l| !l.mark_acked()) {
                                    // Taken back just before this ACK arrived: the place is gone.
                                    return Ok(Outcome::Evicted);
                                }
                            }
                            acked += d;
                            attempts = 0;
                            self.progress();
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

    fn send(&self, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, self.peer) {
            // Treated like a lost packet: the timeout resends it.
            debug!(peer = %self.peer, "sending: {e}");
        }
    }

    /// Sends DATA block `index` (1-based), from the packet prepared ahead when it holds that block.
    fn send_block(&mut self, index: u64) -> io::Result<()> {
        if self.packet_block != Some(index) {
            self.packet_block = None;
            self.encode(index)?;
        }
        if let Err(e) = self.socket.send_to(&self.packet, self.peer) {
            debug!(peer = %self.peer, "sending block {index}: {e}");
        }
        Ok(())
    }

    /// Encodes block `index` now, while the client is busy, so that its ACK is answered without a file
    /// read on the way (tftpd-hpa reads ahead too). A read error is left for `send_block` to report.
    fn prepare(&mut self, index: u64) {
        if index <= self.blocks && self.packet_block != Some(index) {
            self.packet_block = self.encode(index).ok().map(|()| index);
        }
    }

    /// Encodes DATA block `index` into `packet`. Large blocks are read straight into the packet; small ones
    /// come from a chunk buffer (one positional read per `CHUNK` bytes).
    fn encode(&mut self, index: u64) -> io::Result<()> {
        let start = (index - 1) * self.blksize;
        let end = (start + self.blksize).min(self.len);
        let want = (end - start) as usize;
        let packet = &mut self.packet;
        packet.clear();
        encode_data(packet, block::wire(index), &[]);
        let shrank = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            )
        };
        match &mut self.source {
            Source::Bytes(b) => packet.extend_from_slice(&b[start as usize..end as usize]),
            Source::File { file, chunk, .. } if chunk.capacity() == 0 => {
                packet.resize(4 + want, 0);
                if read_full(file, &mut packet[4..], start)? < want {
                    return Err(shrank());
                }
            }
            Source::File {
                file,
                chunk,
                chunk_start,
            } => {
                if start < *chunk_start || end > *chunk_start + chunk.len() as u64 {
                    let size = (chunk.capacity() as u64).min(self.len - start) as usize;
                    chunk.resize(size, 0);
                    let filled = read_full(file, chunk, start)?;
                    chunk.truncate(filled);
                    *chunk_start = start;
                }
                let off = (start - *chunk_start) as usize;
                if off + want > chunk.len() {
                    return Err(shrank());
                }
                packet.extend_from_slice(&chunk[off..off + want]);
            }
        }
        Ok(())
    }

    /// Starts the retransmission timer.
    fn arm(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Waits for a packet from the client until the deadline. Packets from other ports get error 5
    /// (unknown transfer ID) and do not disturb the transfer or move the deadline; anything but ACK and
    /// ERROR is ignored. Ends early for the idle limit and at the end of a server shutdown's grace.
    fn wait(&mut self) -> Event {
        loop {
            if self.evicted() {
                return Event::Evicted;
            }
            let now = Instant::now();
            if self
                .stop
                .as_ref()
                .and_then(|s| s.end())
                .is_some_and(|end| now >= end)
            {
                return Event::Stop;
            }
            if self.idle_deadline.is_some_and(|d| now >= d) {
                return Event::Idle;
            }
            let left = self.deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Event::Timeout;
            }
            let mut wake = left;
            if let Some(d) = self.idle_deadline {
                wake = wake.min(d.saturating_duration_since(now));
            }
            if self.stop.is_some() {
                wake = wake.min(POLL);
            }
            // Off by a little either way is fine: too long delays the timeout by at most the slack,
            // too short only returns early and comes back here. Re-arming after each block gives nearly
            // the same `wake`, so the common path makes no system call for the timer.
            let set = match self.rcvtimeo {
                Some(cur) => cur.abs_diff(wake) > TIMER_SLACK,
                None => true,
            };
            if set {
                let t = wake.max(Duration::from_millis(1));
                match self.socket.set_read_timeout(Some(t)) {
                    Ok(()) => self.rcvtimeo = Some(t),
                    Err(e) => {
                        debug!(peer = %self.peer, "setting the receive timeout: {e}");
                        self.rcvtimeo = None;
                    }
                }
            }
            let (len, from) = match crate::pktinfo::recv_from(&self.socket, &mut self.rbuf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) if self.evicted() => return Event::Evicted,
                Err(e) => {
                    debug!(peer = %self.peer, "receiving: {e}");
                    // An error returns at once; do not spin until the deadline.
                    std::thread::sleep(Duration::from_millis(10).min(wake));
                    continue;
                }
            };
            if from != self.peer {
                let err = TftpError::new(error_code::UNKNOWN_TID, "unknown transfer ID");
                send_error(&self.socket, from, &err);
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

/// Reads into all of `buf` from `offset`, short only at the end of the file; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated(blksize: u16, windowsize: u16) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: None,
            oack: Vec::new(),
        }
    }

    /// A client socket and a server socket on 127.0.0.1; the client reads with a short timeout.
    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        (server, client)
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, bytes).unwrap();
        let f = File::open(tmp.path()).unwrap();
        (tmp, f)
    }

    /// Receives DATA packets and ACKs each until a short one; returns the payload.
    fn lockstep_client(client: &UdpSocket, blksize: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let mut data = Vec::new();
        loop {
            let (n, from) = client.recv_from(&mut buf).expect("DATA");
            assert_eq!(&buf[..2], &[0, 3], "DATA expected");
            data.extend_from_slice(&buf[4..n]);
            client.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
            if n - 4 < blksize {
                return data;
            }
        }
    }

    #[test]
    fn file_blocks_cross_chunk_boundaries_byte_exact() {
        // 1000-byte blocks come from 16000-byte chunks (70 blocks: 5 chunk reads); 8192-byte blocks are
        // read straight into the packet; 65464 is the largest.
        let content: Vec<u8> = (0..269_500u32).map(|i| (i * 7 % 251) as u8).collect();
        for blksize in [1000u16, 8192, 65464] {
            let (_tmp, file) = file_with(&content);
            let (server, client) = pair();
            let peer = client.local_addr().unwrap();
            let t = Transfer::new(
                server,
                peer,
                Content::File {
                    file,
                    len: content.len() as u64,
                },
                &negotiated(blksize, 1),
                Duration::from_secs(1),
                3,
            );
            let run = std::thread::spawn(move || t.run());
            let got = lockstep_client(&client, usize::from(blksize));
            assert!(got == content, "content differs (blksize {blksize})");
            assert_eq!(
                run.join().unwrap(),
                Outcome::Completed {
                    bytes: content.len() as u64
                }
            );
        }
    }

    #[test]
    fn a_file_shorter_than_announced_fails_with_an_error_packet() {
        // The handler announced 40000 bytes but the file has 20000 (it shrank): the transfer sends what
        // there is, then an error packet instead of a short block that would end the download early.
        // Both read paths: the chunk buffer (512) and straight into the packet (8192).
        for blksize in [512u16, 8192] {
            let content = vec![7u8; 20_000];
            let (_tmp, file) = file_with(&content);
            let (server, client) = pair();
            let peer = client.local_addr().unwrap();
            let t = Transfer::new(
                server,
                peer,
                Content::File { file, len: 40_000 },
                &negotiated(blksize, 1),
                Duration::from_secs(1),
                3,
            );
            let run = std::thread::spawn(move || t.run());
            let mut buf = vec![0u8; 70_000];
            let mut blocks = 0;
            let code = loop {
                let (n, from) = client.recv_from(&mut buf).expect("a packet");
                match buf[1] {
                    3 => {
                        assert_eq!(
                            n,
                            4 + usize::from(blksize),
                            "a short block ended the transfer"
                        );
                        blocks += 1;
                        client.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
                    }
                    5 => break u16::from_be_bytes([buf[2], buf[3]]),
                    op => panic!("opcode {op}"),
                }
            };
            assert_eq!(code, error_code::NOT_DEFINED);
            assert_eq!(blocks, 20_000 / usize::from(blksize), "blksize {blksize}");
            assert!(
                matches!(run.join().unwrap(), Outcome::Failed(m) if m.contains("shrank")),
                "outcome (blksize {blksize})"
            );
        }
    }

    #[test]
    fn an_evicted_transfer_ends_at_once_sends_nothing_more_and_closes_its_socket() {
        // The client never answers block 1 and the server would wait 255 s before resending it: the
        // eviction must wake the thread blocked in recvfrom (shutdown), not wait for the timer.
        let (server, client) = pair();
        let peer = client.local_addr().unwrap();
        let mut t = Transfer::new(
            server,
            peer,
            Content::Bytes(Bytes::from_static(&[1u8; 2000])),
            &Negotiated {
                timeout: Some(Duration::from_secs(255)),
                ..negotiated(512, 1)
            },
            Duration::from_secs(1),
            5,
        );
        let lease = Arc::new(Lease::default());
        assert!(t.with_lease(lease.clone()));
        let run = std::thread::spawn(move || t.run());
        let mut buf = vec![0u8; 1024];
        let (n, tid) = client.recv_from(&mut buf).unwrap();
        assert_eq!((n, &buf[..4]), (516, &[0u8, 3, 0, 1][..]));
        std::thread::sleep(Duration::from_millis(50)); // the thread is in recvfrom now
        assert!(lease.evict());
        assert!(!lease.evict(), "evicted once");
        let give_up = Instant::now() + Duration::from_secs(20);
        while !run.is_finished() {
            assert!(
                Instant::now() < give_up,
                "the evicted transfer's thread was not woken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(run.join().unwrap(), Outcome::Evicted);
        // Its socket is closed: an ACK now meets a closed port (ICMP port unreachable).
        client.connect(tid).unwrap();
        client.send(&[0, 4, 0, 1]).unwrap();
        match client.recv(&mut buf) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
            Ok(n) => panic!("the evicted transfer answered: {:?}", &buf[..n]),
        }
        // A lease whose client acknowledged data is never evicted.
        let kept = Lease::default();
        assert!(kept.mark_acked());
        assert!(!kept.evict() && !kept.is_evicted());
    }

    #[test]
    fn receive_timeout_drives_retransmission_and_the_deadline_holds() {
        // The client never ACKs but keeps sending stale ACK 0s every 20 ms: they are ignored and must not
        // push the retransmission deadline back. Block 1 goes out 1 + 2 times, about 150 ms apart.
        let (server, client) = pair();
        let peer = client.local_addr().unwrap();
        let t = Transfer::new(
            server,
            peer,
            Content::Bytes(Bytes::from_static(&[1u8; 2000])),
            &negotiated(512, 1),
            Duration::from_millis(150),
            2,
        );
        let started = Instant::now();
        let run = std::thread::spawn(move || t.run());
        let mut buf = vec![0u8; 1024];
        let (_, tid) = client.recv_from(&mut buf).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut arrivals = vec![started.elapsed()];
        while started.elapsed() < Duration::from_millis(1500) && !run.is_finished() {
            client.send_to(&[0, 4, 0, 0], tid).unwrap();
            if let Ok((n, _)) = client.recv_from(&mut buf) {
                assert_eq!(&buf[..4], &[0, 3, 0, 1], "only block 1 is resent");
                assert_eq!(n, 516);
                arrivals.push(started.elapsed());
            }
        }
        assert!(run.is_finished(), "stale ACKs kept the transfer alive");
        assert_eq!(run.join().unwrap(), Outcome::TimedOut { acked_blocks: 0 });
        assert_eq!(arrivals.len(), 3, "sent at {arrivals:?}");
        for w in arrivals.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(140) && gap < Duration::from_millis(400),
                "resent {gap:?} after the previous copy ({arrivals:?})"
            );
        }
    }
}
