//! Resource limits (issue 15, item 3), on loopback: the transfer caps in all and per client address
//! (beyond them a request takes the place of the oldest transfer whose client never acknowledged
//! data, so never-answering spoofed requests cannot keep out a real client; refusals, when every
//! transfer progressed, are TFTP error packets; descriptors and threads stay bounded), the idle
//! lifetime whatever `timeout` a client asks for, and a shutdown that does not wait for stuck
//! transfers. Its own binary: it counts the process's descriptors and threads, so its tests also run
//! one at a time (`serial`).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tftp::{Config, DirHandler, Outcome, Server, BUSY_MESSAGE, CLIENT_BUSY_MESSAGE};
use common::{ack, pattern, Client, Harness, Loss, Pkt};

/// Options that make the server answer with an OACK and then wait for ACK 0 (a spoofed source never
/// sends it), asking for the longest timeout there is.
const STUCK: &[(&str, &str)] = &[("timeout", "255"), ("tsize", "0")];

/// Held by each test: the descriptor and thread counts must not see another test's server.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), pattern(100_000, 1)).unwrap();
    dir
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sends `n` stuck requests from `c`, one each.
fn send_stuck(c: &Client, n: usize) {
    for _ in 0..n {
        c.send_rrq("f.bin", STUCK);
    }
}

/// What a flooding address got back: OACKs (from the transfers' ports) and error packets.
#[derive(Debug, Default)]
struct Answers {
    oacks: Vec<SocketAddr>,
    errors: Vec<(u16, String)>,
    other: Vec<Pkt>,
}

/// Everything that arrived at `c` (when the server has long sent it: a short read timeout).
fn answers(c: &Client) -> Answers {
    c.sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut a = Answers::default();
    while let Some((p, from)) = c.recv_from() {
        assert_ne!(from, c.server, "answers come from a port of their own");
        match p {
            Pkt::Oack(_) => a.oacks.push(from),
            Pkt::Error(code, m) => a.errors.push((code, m)),
            other => a.other.push(other),
        }
    }
    a
}

/// Waits (at most 20 s) until `done` holds: the server has handled what the test sent.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < give_up, "still waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Each of `clients` sends `each` stuck requests, a client at a time, waiting until the server has
/// taken them in (a burst of hundreds would overflow the request socket's receive buffer).
fn flood(h: &Harness, clients: &[Client], each: usize) {
    for c in clients {
        let want = h.stats.admitted() + h.stats.refused_busy() + h.stats.refused_client_busy();
        send_stuck(c, each);
        wait_until("the server to take in the requests", || {
            h.stats.admitted() + h.stats.refused_busy() + h.stats.refused_client_busy()
                == want + each as u64
        });
    }
}

/// `n` addresses 127.0.`net`.1..=n, one never-answering client each.
fn flooders(h: &Harness, net: u8, n: u8) -> Vec<Client> {
    (1..=n)
        .map(|i| Client::new_from(h.addr, IpAddr::V4(Ipv4Addr::new(127, 0, net, i))))
        .collect()
}

/// A client that fetches `f.bin` by hand, one block at a time, so that the test can pause it.
struct Stepper {
    c: Client,
    got: Vec<u8>,
    next: u16,
    /// Block `next` was received and not acknowledged yet.
    pending: bool,
}

impl Stepper {
    /// Asks for `f.bin` (blksize 1468, tsize, as PXE firmware does, and `timeout`: how long the
    /// test may pause the client) and acknowledges the OACK.
    fn start(h: &Harness, from: IpAddr, timeout: &str) -> Stepper {
        let mut c = Client::new_from(h.addr, from);
        c.send_rrq(
            "f.bin",
            &[("blksize", "1468"), ("tsize", "0"), ("timeout", timeout)],
        );
        match c.recv() {
            Some(Pkt::Oack(_)) => {}
            other => panic!("expected an OACK, got {other:?}"),
        }
        c.send(&ack(0));
        Stepper {
            c,
            got: Vec::new(),
            next: 1,
            pending: false,
        }
    }

    /// Receives the next block (without acknowledging it). True when it was the last.
    /// Copies of the block acknowledged last (resent while the client paused) are skipped.
    fn receive(&mut self) -> bool {
        assert!(!self.pending);
        loop {
            match self.c.recv() {
                Some(Pkt::Data(n, data)) if n == self.next => {
                    let last = data.len() < 1468;
                    self.got.extend_from_slice(&data);
                    self.pending = true;
                    return last;
                }
                Some(Pkt::Data(n, _)) if n + 1 == self.next => {}
                other => panic!("expected block {}, got {other:?}", self.next),
            }
        }
    }

    /// Acknowledges the block received last.
    fn ack(&mut self) {
        assert!(self.pending);
        self.c.send(&ack(self.next));
        self.next += 1;
        self.pending = false;
    }

    /// Receives and acknowledges the rest; returns the file.
    fn finish(mut self) -> Vec<u8> {
        if self.pending {
            self.ack();
        }
        loop {
            let last = self.receive();
            self.ack();
            if last {
                return self.got;
            }
        }
    }
}

#[test]
fn one_address_never_holds_more_than_its_cap() {
    let _serial = serial();
    let dir = root();
    let h = Harness::dir(dir.path(), Config::default());
    let flooder = Client::new_from(h.addr, loopback(2));
    flood(&h, std::slice::from_ref(&flooder), 20);
    // 8 places per address: each request beyond takes the place of that address's oldest request
    // that got no ACK; no error packet, no more than 8 at once.
    assert_eq!(h.stats.evicted(), 12);
    let a = answers(&flooder);
    assert!(a.errors.is_empty() && a.other.is_empty(), "{a:?}");
    assert!((8..=20).contains(&a.oacks.len()), "{a:?}");
    // Another machine is served while the flooder holds its 8.
    let mut c = Client::new(h.addr);
    let got = c
        .fetch("f.bin", &[("blksize", "1468")], Loss::default())
        .unwrap();
    assert_eq!(got.data, pattern(100_000, 1));
    assert_eq!(h.stats.evicted(), 12, "nobody else's place was taken");
    assert_eq!(h.stats.refused_busy() + h.stats.refused_client_busy(), 0);
    let mut evicted = 0;
    while let Some(o) = h.rec.wait("f.bin", Duration::from_millis(300)) {
        evicted += usize::from(o == Outcome::Evicted);
    }
    // Evicted before its content was opened, a request never reaches the handler.
    assert!(evicted <= 12, "{evicted}");
}

#[test]
fn never_acknowledged_requests_cannot_keep_out_a_client_that_answers() {
    let _serial = serial();
    // Default limits: 64 places, 8 per address. 640 never-answering requests (80 spoofed addresses
    // x 8) fill the table ten times over; every one beyond 64 takes the place of the oldest one
    // (evicted: its socket, file and thread are let go of before the newcomer starts). The idle
    // limit is raised so that the real client may pause as long as the test needs.
    let dir = root();
    let config = Config {
        max_idle: Duration::from_secs(120),
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    let fill = flooders(&h, 1, 80);
    let more = flooders(&h, 2, 63);
    let after = flooders(&h, 3, 80);
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads_before) = (open_fds(), threads());
    flood(&h, &fill, 8);
    assert_eq!(h.stats.admitted(), 640);
    assert_eq!(h.stats.evicted(), 640 - 64);
    let (fds_full, threads_full) = (open_fds(), threads());
    assert!(
        fds_full <= fds + 2 * 64 + 8,
        "{fds} descriptors before, {fds_full} after 640 requests: evicted transfers kept theirs"
    );
    // 64 transfer threads, and the blocking pool's threads that opened the files (at most 64).
    assert!(
        threads_full <= threads_before + 2 * 64 + 8,
        "{threads_before} threads before, {threads_full} after 640 requests"
    );

    // A real client (blksize 1468, tsize, like PXE firmware) takes the oldest place. Its transfer
    // is the newest of the 64; until it acknowledges block 1 it is evictable like any other: 63
    // newer never-answering requests take the 63 older places, not its own.
    let mut real = Stepper::start(&h, loopback(1), "60");
    real.receive();
    flood(&h, &more, 1);
    for c in &more {
        let a = answers(c);
        assert_eq!((a.oacks.len(), a.errors.len()), (1, 0), "{a:?}");
    }
    assert_eq!(h.stats.evicted(), 640 - 64 + 1 + 63);
    real.ack();
    // Once it has acknowledged data its place is never taken: 640 more never-answering requests
    // while it pauses in the middle of the file.
    for _ in 0..5 {
        real.receive();
        real.ack();
    }
    flood(&h, &after, 8);
    assert_eq!(h.stats.admitted(), 640 + 1 + 63 + 640);
    assert_eq!(h.stats.evicted(), 640 - 64 + 1 + 63 + 640);
    let real = real.finish();
    assert_eq!(real, pattern(100_000, 1), "byte-exact");
    assert_eq!(h.stats.refused_busy() + h.stats.refused_client_busy(), 0);
    // No flooder got an error packet; each request drew at most its OACK.
    for c in fill.iter().chain(&after) {
        let a = answers(c);
        assert!(
            a.errors.is_empty() && a.other.is_empty() && a.oacks.len() <= 8,
            "{a:?}"
        );
    }
    assert!(
        open_fds() <= fds + 2 * 64 + 8,
        "descriptors: {fds} before, {} at the end",
        open_fds()
    );
    let mut completed = 0;
    while let Some(o) = h.rec.wait("f.bin", Duration::from_millis(300)) {
        completed += usize::from(matches!(o, Outcome::Completed { .. }));
    }
    assert_eq!(completed, 1);
}

#[test]
fn a_table_full_of_progressing_transfers_refuses_the_newcomer_with_an_error() {
    let _serial = serial();
    // 64 real clients (8 addresses x 8) each acknowledged a block and paused: nothing is evicted,
    // newcomers get error packets, and the 64 finish undisturbed.
    let dir = root();
    let config = Config {
        max_idle: Duration::from_secs(120),
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    let mut held = Vec::new();
    for i in 1..=8 {
        for _ in 0..8 {
            let mut s = Stepper::start(&h, IpAddr::V4(Ipv4Addr::new(127, 0, 4, i)), "60");
            s.receive();
            s.ack();
            s.receive();
            held.push(s);
        }
    }
    let newcomer = Client::new(h.addr);
    newcomer.send_rrq("f.bin", &[]);
    match newcomer.recv_from() {
        Some((Pkt::Error(0, m), _)) => assert_eq!(m, BUSY_MESSAGE),
        other => panic!("expected a busy error, got {other:?}"),
    }
    let same_address = Client::new_from(h.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1)));
    same_address.send_rrq("f.bin", &[]);
    match same_address.recv_from() {
        Some((Pkt::Error(0, m), _)) => assert_eq!(m, CLIENT_BUSY_MESSAGE),
        other => panic!("expected a per-address busy error, got {other:?}"),
    }
    assert_eq!(
        (
            h.stats.evicted(),
            h.stats.refused_busy(),
            h.stats.refused_client_busy()
        ),
        (0, 1, 1)
    );
    for s in held {
        assert_eq!(s.finish(), pattern(100_000, 1));
    }
    // Places free again: the newcomer is served.
    let mut c = Client::new(h.addr);
    let got = c.fetch("f.bin", &[], Loss::default()).unwrap();
    assert_eq!(got.data, pattern(100_000, 1));
    assert_eq!(h.stats.evicted(), 0);
}

#[test]
fn an_evicted_transfer_stops_retransmitting_at_once() {
    let _serial = serial();
    // Reflection: a never-answering request without options draws block 1, resent every `timeout`
    // (1 s) at most `retries` (5) times; once its place is taken it sends nothing more.
    let dir = root();
    std::fs::write(dir.path().join("g.bin"), pattern(10_000, 2)).unwrap();
    let config = Config {
        max_transfers: 1,
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    let mut victim = Client::new_from(h.addr, loopback(5));
    victim.send_rrq("g.bin", &[]);
    let block1 = Pkt::Data(1, pattern(10_000, 2)[..512].to_vec());
    assert_eq!(victim.recv(), Some(block1.clone()));
    // The first retransmission (the client reads with a 300 ms timeout: wait up to 3 s).
    let resent = (0..10).find_map(|_| victim.recv());
    assert_eq!(resent, Some(block1));
    let other = Client::new_from(h.addr, loopback(6));
    other.send_rrq("f.bin", &[]);
    assert!(matches!(other.recv_from(), Some((Pkt::Data(1, _), _))));
    assert_eq!(
        h.rec.wait("g.bin", Duration::from_secs(5)),
        Some(Outcome::Evicted)
    );
    assert_eq!(h.stats.evicted(), 1);
    // Silent for longer than two retransmission timeouts.
    victim.assert_silent(Duration::from_millis(2500));
}

#[test]
fn a_client_asking_for_a_255_s_timeout_is_dropped_at_the_idle_limit() {
    let _serial = serial();
    assert_eq!(Config::default().max_idle, Duration::from_secs(15));
    let dir = root();
    let config = Config {
        max_idle: Duration::from_secs(1),
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    // Never ACKs the OACK.
    let mut c = Client::new(h.addr);
    let t = Instant::now();
    c.send_rrq("f.bin", STUCK);
    assert!(matches!(c.recv(), Some(Pkt::Oack(_))));
    let outcome = h.rec.wait("f.bin", Duration::from_secs(4));
    let took = t.elapsed();
    assert_eq!(outcome, Some(Outcome::TimedOut { acked_blocks: 0 }));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "ended after {took:?}"
    );
    c.assert_silent(Duration::from_millis(1000));
    // Stops answering in the middle of the data, after the server's retransmission timer was moved
    // to 255 s: the idle limit ends it too.
    let mut c = Client::new(h.addr);
    c.send_rrq("f.bin", &[("timeout", "255")]);
    assert!(matches!(c.recv(), Some(Pkt::Oack(_))));
    c.send(&ack(0));
    assert!(matches!(c.recv(), Some(Pkt::Data(1, _))));
    let t = Instant::now();
    c.send(&ack(1));
    assert!(matches!(c.recv(), Some(Pkt::Data(2, _))));
    let outcome = h.rec.wait("f.bin", Duration::from_secs(4));
    let took = t.elapsed();
    assert_eq!(outcome, Some(Outcome::TimedOut { acked_blocks: 1 }));
    assert!(took < Duration::from_millis(2500), "ended after {took:?}");
}

#[test]
fn shutdown_returns_promptly_while_transfers_are_stuck() {
    let _serial = serial();
    let dir = root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handler = Arc::new(DirHandler::new(dir.path()).unwrap());
    let config = Config::default();
    let grace = config.shutdown_grace;
    assert_eq!(grace, Duration::from_secs(2));
    let server = rt
        .block_on(Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            config,
        ))
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.serve(async {
        let _ = stopped.await;
    }));
    // Eight transfers waiting for ACK 0 with a 255 s timeout...
    let stuck = Client::new_from(addr, loopback(2));
    send_stuck(&stuck, 8);
    let a = answers(&stuck);
    assert_eq!(a.oacks.len(), 8, "{a:?}");
    // ... and one that stopped answering after two blocks.
    let mut mid = Client::new_from(addr, loopback(3));
    mid.send_rrq("f.bin", &[("timeout", "255")]);
    assert!(matches!(mid.recv(), Some(Pkt::Oack(_))));
    mid.send(&ack(0));
    assert!(matches!(mid.recv(), Some(Pkt::Data(1, _))));
    mid.send(&ack(1));
    assert!(matches!(mid.recv(), Some(Pkt::Data(2, _))));

    let t = Instant::now();
    stop.send(()).unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), serving).await })
        .expect("serve waited for the stuck transfers")
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    assert!(
        took < grace + Duration::from_millis(1500),
        "serve returned {took:?} after the shutdown"
    );
    // Each stuck client is told, from its transfer's port.
    let mut told = Vec::new();
    while let Some((p, from)) = stuck.recv_from() {
        assert_eq!(p, Pkt::Error(0, "server shutting down".into()));
        told.push(from);
    }
    told.sort();
    let mut expect = a.oacks.clone();
    expect.sort();
    assert_eq!(told, expect);
    assert_eq!(
        mid.recv(),
        Some(Pkt::Error(0, "server shutting down".into()))
    );
}
