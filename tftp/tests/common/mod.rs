//! Test harness shared by the integration tests: an in-process server on 127.0.0.1 and a raw UDP TFTP client.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_tftp::{Config, Content, Handler, Outcome, Server, Stats, TftpError};

/// Wraps a handler and records every `finished` call.
pub struct Recorder {
    inner: Arc<dyn Handler>,
    done: Mutex<Vec<(String, Outcome)>>,
    cv: Condvar,
}

impl Handler for Recorder {
    fn open(&self, path: &str, peer: SocketAddr) -> Result<Content, TftpError> {
        self.inner.open(path, peer)
    }
    fn finished(&self, path: &str, _peer: SocketAddr, outcome: &Outcome) {
        self.done
            .lock()
            .unwrap()
            .push((path.to_string(), outcome.clone()));
        self.cv.notify_all();
    }
}

impl Recorder {
    /// Waits until a transfer of `path` finished; returns its outcome.
    pub fn wait(&self, path: &str, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut done = self.done.lock().unwrap();
        loop {
            if let Some(i) = done.iter().position(|(p, _)| p == path) {
                return Some(done.remove(i).1);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            done = self.cv.wait_timeout(done, left).unwrap().0;
        }
    }

    pub fn finished_count(&self) -> usize {
        self.done.lock().unwrap().len()
    }
}

/// A server running on its own thread and runtime; stopped on drop.
pub struct Harness {
    pub addr: SocketAddr,
    pub rec: Arc<Recorder>,
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Harness {
    pub fn start(handler: Arc<dyn Handler>, config: Config) -> Harness {
        Harness::start_on("127.0.0.1:0".parse().unwrap(), handler, config)
    }

    pub fn start_on(bind: SocketAddr, handler: Arc<dyn Handler>, config: Config) -> Harness {
        let rec = Arc::new(Recorder {
            inner: handler,
            done: Mutex::new(Vec::new()),
            cv: Condvar::new(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let rec2 = rec.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(bind, rec2, config).await.unwrap();
                tx.send((server.local_addr(), server.stats())).unwrap();
                server
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let (addr, stats) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Harness {
            addr,
            rec,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn dir(root: &Path, config: Config) -> Harness {
        Harness::start(Arc::new(cairn_tftp::DirHandler::new(root).unwrap()), config)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so files are not all zeros and differ by seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A packet as the test client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    Data(u16, Vec<u8>),
    Oack(Vec<(String, String)>),
    Error(u16, String),
    Other(Vec<u8>),
}

pub fn parse(buf: &[u8]) -> Pkt {
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    match op {
        3 => Pkt::Data(u16::from_be_bytes([buf[2], buf[3]]), buf[4..].to_vec()),
        5 => {
            let msg = &buf[4..];
            let msg = msg.split(|&b| b == 0).next().unwrap_or_default();
            Pkt::Error(
                u16::from_be_bytes([buf[2], buf[3]]),
                String::from_utf8_lossy(msg).into_owned(),
            )
        }
        6 => {
            let parts: Vec<String> = buf[2..]
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let mut opts = Vec::new();
            for pair in parts.chunks(2) {
                if pair.len() == 2 {
                    opts.push((pair[0].clone(), pair[1].clone()));
                }
            }
            Pkt::Oack(opts)
        }
        _ => Pkt::Other(buf.to_vec()),
    }
}

pub fn rrq(name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    for s in [name, mode] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut v = vec![0, 4];
    v.extend_from_slice(&block.to_be_bytes());
    v
}

pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut v = vec![0, 5];
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    v
}

/// Packet loss the client simulates: every `drop_data`-th DATA received and every `drop_ack`-th ACK to be sent
/// is discarded (0 = none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Loss {
    pub drop_data: u64,
    pub drop_ack: u64,
}

/// What a fetch saw.
#[derive(Debug, Default)]
pub struct Fetched {
    pub data: Vec<u8>,
    pub oack: Option<Vec<(String, String)>>,
    pub data_packets: u64,
    pub acks_sent: u64,
}

/// A raw TFTP client on its own socket.
pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub tid: Option<SocketAddr>,
}

impl Client {
    pub fn new(server: SocketAddr) -> Client {
        let local: IpAddr = if server.is_ipv6() {
            "::1".parse().unwrap()
        } else {
            "127.0.0.1".parse().unwrap()
        };
        Client::new_from(server, local)
    }

    /// A client on `local` (any 127.0.0.0/8 address is loopback on Linux): another machine as far as
    /// the server's per-client limits go.
    pub fn new_from(server: SocketAddr, local: IpAddr) -> Client {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Client {
            sock,
            server,
            tid: None,
        }
    }

    pub fn send_rrq(&self, name: &str, options: &[(&str, &str)]) {
        self.sock
            .send_to(&rrq(name, "octet", options), self.server)
            .unwrap();
    }

    /// Next packet (from anyone), or None after the read timeout.
    pub fn recv_from(&self) -> Option<(Pkt, SocketAddr)> {
        let mut buf = vec![0u8; 70000];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((parse(&buf[..n]), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Next packet; remembers the server's transfer port.
    pub fn recv(&mut self) -> Option<Pkt> {
        let (p, from) = self.recv_from()?;
        if let Some(tid) = self.tid {
            assert_eq!(from, tid, "packet from a second server port");
        } else {
            assert_ne!(
                from, self.server,
                "reply must come from a new port, not the request port"
            );
            assert_eq!(from.ip(), self.server.ip(), "reply from another address");
            self.tid = Some(from);
        }
        Some(p)
    }

    pub fn send(&self, datagram: &[u8]) {
        self.sock
            .send_to(datagram, self.tid.expect("no transfer yet"))
            .unwrap();
    }

    /// Fetches `name` like an RFC 7440 client: ACK after each window (or the last block), ACK the last
    /// in-order block on a gap or a timeout.
    pub fn fetch(
        &mut self,
        name: &str,
        options: &[(&str, &str)],
        loss: Loss,
    ) -> Result<Fetched, String> {
        self.send_rrq(name, options);
        let mut got = Fetched::default();
        let mut blksize = 512usize;
        let mut window = 1u64;
        let mut next: u64 = 1;
        let mut since_ack = 0u64;
        let mut data_seen = 0u64;
        let mut acks = 0u64;
        let mut timeouts = 0;
        let mut gap_acked: Option<u64> = None;
        let mut send_ack = |c: &Client, block: u16, got: &mut Fetched| -> bool {
            acks += 1;
            if loss.drop_ack > 0 && acks % loss.drop_ack == 0 {
                return false;
            }
            got.acks_sent += 1;
            c.send(&ack(block));
            true
        };
        loop {
            let Some(p) = self.recv() else {
                timeouts += 1;
                if timeouts > 30 {
                    return Err(format!("no answer (next block {next})"));
                }
                if self.tid.is_some() {
                    send_ack(self, (next - 1) as u16, &mut got);
                }
                continue;
            };
            timeouts = 0;
            match p {
                Pkt::Oack(opts) => {
                    if next == 1 {
                        for (k, v) in &opts {
                            match k.as_str() {
                                "blksize" => blksize = v.parse().unwrap(),
                                "windowsize" => window = v.parse().unwrap(),
                                _ => {}
                            }
                        }
                        got.oack = Some(opts);
                        send_ack(self, 0, &mut got);
                    }
                }
                Pkt::Data(block, data) => {
                    data_seen += 1;
                    got.data_packets += 1;
                    if loss.drop_data > 0 && data_seen % loss.drop_data == 0 {
                        continue;
                    }
                    if block == next as u16 {
                        let last = data.len() < blksize;
                        got.data.extend_from_slice(&data);
                        next += 1;
                        since_ack += 1;
                        if last || since_ack >= window {
                            since_ack = 0;
                            let acked = send_ack(self, block, &mut got);
                            if last {
                                if !acked {
                                    // Our final ACK was lost: the server resends the last block; answer it.
                                    self.dally(block);
                                }
                                return Ok(got);
                            }
                        }
                    } else {
                        // A resent old block means our ACK was lost: ACK again. A block from the future
                        // means a gap: ACK the last block received in order, once per gap (RFC 7440).
                        let old = (next as u16).wrapping_sub(block) <= 1024;
                        if old || gap_acked != Some(next) {
                            gap_acked = Some(next);
                            since_ack = 0;
                            send_ack(self, (next - 1) as u16, &mut got);
                        }
                    }
                }
                Pkt::Error(code, msg) => return Err(format!("error {code}: {msg}")),
                Pkt::Other(raw) => return Err(format!("unexpected packet {raw:?}")),
            }
        }
    }

    fn dally(&mut self, last: u16) {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Some(Pkt::Data(b, _)) = self.recv() {
                if b == last {
                    self.send(&ack(last));
                    return;
                }
            }
        }
    }

    /// Asserts that nothing arrives for `wait`.
    pub fn assert_silent(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some((p, from)) = self.recv_from() {
                panic!("server sent {p:?} from {from} after it should have stopped");
            }
        }
    }
}

/// Fast retransmission for tests that simulate loss.
pub fn fast_config() -> Config {
    Config {
        timeout: Duration::from_millis(50),
        retries: 10,
        max_blksize: cairn_tftp::MAX_BLKSIZE,
        max_windowsize: 64,
        ..Config::default()
    }
}
