//! Resource limits (issue 15, item 3), on loopback: the transfer caps in all and per client address
//! (refusals are TFTP error packets, descriptors and threads stay bounded, other clients are served),
//! the idle lifetime whatever `timeout` a client asks for, and a shutdown that does not wait for stuck
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

/// What one flooding address got back for its requests.
#[derive(Debug, Default)]
struct Answers {
    oacks: Vec<SocketAddr>,
    busy: usize,
    client_busy: usize,
}

/// Sends `n` stuck requests from `c` and reads the answers until `n` arrived (or nothing more comes).
fn flood(c: &Client, n: usize) -> Answers {
    for _ in 0..n {
        c.send_rrq("f.bin", STUCK);
    }
    let mut a = Answers::default();
    while a.oacks.len() + a.busy + a.client_busy < n {
        match c.recv_from() {
            Some((Pkt::Oack(_), from)) => a.oacks.push(from),
            Some((Pkt::Error(0, m), from)) => {
                assert_ne!(from, c.server, "answers come from a port of their own");
                match m.as_str() {
                    BUSY_MESSAGE => a.busy += 1,
                    CLIENT_BUSY_MESSAGE => a.client_busy += 1,
                    other => panic!("unexpected error message {other:?}"),
                }
            }
            Some((p, _)) => panic!("unexpected {p:?}"),
            None => break,
        }
    }
    a
}

#[test]
fn one_address_is_capped_and_other_clients_are_served() {
    let _serial = serial();
    let dir = root();
    let h = Harness::dir(dir.path(), Config::default());
    let flooder = Client::new_from(h.addr, loopback(2));
    let a = flood(&flooder, 20);
    assert_eq!(
        (a.oacks.len(), a.client_busy, a.busy),
        (8, 12, 0),
        "8 transfers per address by default, the other 12 refused with an error packet: {a:?}"
    );
    // Another machine is served while the flooder holds its 8.
    let mut c = Client::new(h.addr);
    let got = c
        .fetch("f.bin", &[("blksize", "1468")], Loss::default())
        .unwrap();
    assert_eq!(got.data, pattern(100_000, 1));
    // Still capped: the flooder's transfers are alive (15 s idle limit by default).
    let again = flood(&flooder, 1);
    assert_eq!(again.client_busy, 1, "{again:?}");
}

#[test]
fn a_flood_from_many_addresses_is_refused_with_errors_and_resources_stay_bounded() {
    let _serial = serial();
    // The numbers: 600 requests (they would hold 1200 descriptors and 600 threads). Ten
    // addresses send 60 each; the server takes 64 in all (8 per address at most) and refuses the rest
    // with error packets. Once the stuck transfers reach the idle limit, other clients are served.
    let dir = root();
    let config = Config {
        max_idle: Duration::from_secs(2),
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    let floods: Vec<Client> = (2..12)
        .map(|i| Client::new_from(h.addr, loopback(i)))
        .collect();
    let legit = Client::new(h.addr);
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads_before) = (open_fds(), threads());
    let started = Instant::now();
    let mut accepted = 0;
    let mut refused = 0;
    for c in &floods {
        let a = flood(c, 60);
        assert_eq!(
            a.oacks.len() + a.busy + a.client_busy,
            60,
            "every request is answered: {a:?}"
        );
        assert!(a.oacks.len() <= 8, "{a:?}");
        accepted += a.oacks.len();
        refused += a.busy + a.client_busy;
    }
    assert_eq!((accepted, refused), (64, 536));
    let (fds_full, threads_full) = (open_fds(), threads());
    assert!(
        fds_full <= fds + 2 * 64 + 8,
        "{fds} descriptors before, {fds_full} with the server full"
    );
    // 64 transfer threads, and the blocking pool's threads that opened the files (at most 64).
    assert!(
        threads_full <= threads_before + 2 * 64 + 8,
        "{threads_before} threads before, {threads_full} with the server full"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "the flood took {:?}: too slow for the idle-limit check below",
        started.elapsed()
    );
    // Full: a newcomer is refused with an error packet, not left without an answer.
    legit.send_rrq("f.bin", &[]);
    match legit.recv_from() {
        Some((Pkt::Error(0, m), _)) => assert_eq!(m, BUSY_MESSAGE),
        other => panic!("expected a busy error, got {other:?}"),
    }
    // The stuck transfers end at the idle limit (2 s here) and free their places.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut c = Client::new(h.addr);
    let got = loop {
        match c.fetch("f.bin", &[], Loss::default()) {
            Ok(got) => break got,
            Err(e) if e.contains(BUSY_MESSAGE) && Instant::now() < deadline => {
                c = Client::new(h.addr);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("after the flood: {e}"),
        }
    };
    assert_eq!(got.data, pattern(100_000, 1));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "served only {:?} after the flood began",
        started.elapsed()
    );
    let mut timed_out = 0;
    while let Some(o) = h.rec.wait("f.bin", Duration::from_secs(1)) {
        if o == (Outcome::TimedOut { acked_blocks: 0 }) {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 64, "each stuck transfer ended at the idle limit");
    assert!(
        open_fds() <= fds + 4,
        "descriptors left behind: {} before, {} after",
        fds,
        open_fds()
    );
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
    let a = flood(&stuck, 8);
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
