//! Protocol behaviour over 127.0.0.1 with a raw UDP client: options, windows, loss, client errors, timeouts,
//! concurrency, rollover and path safety.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_tftp::{Config, Content, Handler, Outcome, TftpError};
use common::{ack, error, fast_config, pattern, Client, Harness, Loss, Pkt};

fn root_with(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, len)) in files.iter().enumerate() {
        let p = dir.path().join(name.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, pattern(*len, i as u64 + 1)).unwrap();
    }
    dir
}

fn content(dir: &tempfile::TempDir, name: &str) -> Vec<u8> {
    std::fs::read(dir.path().join(name)).unwrap()
}

#[test]
fn plain_rfc1350_transfer_of_exact_block_multiple_ends_with_empty_block() {
    let dir = root_with(&[("four.bin", 4 * 512)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut c = Client::new(h.addr);
    let got = c.fetch("four.bin", &[], Loss::default()).unwrap();
    assert_eq!(got.oack, None, "no options requested, so no OACK");
    assert_eq!(got.data, content(&dir, "four.bin"));
    assert_eq!(got.data_packets, 5, "4 full blocks and 1 empty block");
    assert_eq!(
        h.rec.wait("four.bin", Duration::from_secs(5)),
        Some(Outcome::Completed { bytes: 2048 })
    );
}

#[test]
fn oack_reports_real_tsize_and_client_error_ends_transfer() {
    // Firmware-style tsize probe: RRQ with tsize=0, read OACK, answer with ERROR 8.
    let dir = root_with(&[("/pxelinux.0", 40_000)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut c = Client::new(h.addr);
    c.send_rrq("/pxelinux.0", &[("blksize", "1432"), ("tsize", "0")]);
    let p = c.recv().expect("OACK");
    assert_eq!(
        p,
        Pkt::Oack(vec![
            ("blksize".into(), "1432".into()),
            ("tsize".into(), "40000".into())
        ])
    );
    let t = Instant::now();
    c.send(&error(8, "tsize probe done"));
    // The server must stop at once: no retransmitted OACK, no DATA, transfer freed well before a timeout.
    let outcome = h.rec.wait("/pxelinux.0", Duration::from_secs(5)).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "freed after {:?}",
        t.elapsed()
    );
    assert_eq!(
        outcome,
        Outcome::ClientError {
            code: 8,
            message: "tsize probe done".into()
        }
    );
    c.assert_silent(Duration::from_millis(2500));
    // The real download that follows works.
    let mut c2 = Client::new(h.addr);
    let got = c2
        .fetch(
            "/pxelinux.0",
            &[("blksize", "1432"), ("tsize", "0")],
            Loss::default(),
        )
        .unwrap();
    assert_eq!(got.data, content(&dir, "pxelinux.0"));
}

#[test]
fn client_error_mid_transfer_stops_the_server() {
    let dir = root_with(&[("big", 500_000)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut c = Client::new(h.addr);
    c.send_rrq("big", &[]);
    for want in 1..=3u16 {
        match c.recv() {
            Some(Pkt::Data(b, _)) => {
                assert_eq!(b, want);
                if want < 3 {
                    c.send(&ack(b));
                }
            }
            other => panic!("expected DATA {want}, got {other:?}"),
        }
    }
    c.send(&error(0, "user abort"));
    let outcome = h.rec.wait("big", Duration::from_secs(5)).unwrap();
    assert!(
        matches!(outcome, Outcome::ClientError { code: 0, .. }),
        "{outcome:?}"
    );
    c.assert_silent(Duration::from_millis(2500));
}

#[test]
fn windowsize_4_transfer_is_byte_exact() {
    let dir = root_with(&[("w.bin", 1_048_576 + 123)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut c = Client::new(h.addr);
    let got = c
        .fetch(
            "w.bin",
            &[("blksize", "1024"), ("windowsize", "4"), ("tsize", "0")],
            Loss::default(),
        )
        .unwrap();
    assert_eq!(
        got.oack.unwrap(),
        vec![
            ("blksize".to_string(), "1024".to_string()),
            ("windowsize".into(), "4".into()),
            ("tsize".into(), "1048699".into())
        ]
    );
    assert_eq!(got.data, content(&dir, "w.bin"));
    let blocks = 1_048_576 / 1024 + 1;
    assert_eq!(got.data_packets, blocks, "no retransmissions without loss");
    // One ACK for the OACK plus one per window of 4.
    assert_eq!(got.acks_sent, 1 + blocks.div_ceil(4));
}

#[test]
fn lossy_client_lockstep_gets_exact_file() {
    let dir = root_with(&[("lossy.bin", 300_000)]);
    let h = Harness::dir(dir.path(), fast_config());
    let mut c = Client::new(h.addr);
    let got = c
        .fetch(
            "lossy.bin",
            &[("blksize", "1000")],
            Loss {
                drop_data: 7,
                drop_ack: 5,
            },
        )
        .unwrap();
    assert_eq!(got.data, content(&dir, "lossy.bin"));
    assert!(
        got.data_packets > 301,
        "loss must have caused retransmissions"
    );
}

#[test]
fn lossy_client_windowed_gets_exact_file() {
    let dir = root_with(&[("lossy.bin", 700_001)]);
    let h = Harness::dir(dir.path(), fast_config());
    for (drop_data, drop_ack) in [(7, 5), (3, 2), (16, 0)] {
        let mut c = Client::new(h.addr);
        let got = c
            .fetch(
                "lossy.bin",
                &[("blksize", "1000"), ("windowsize", "8")],
                Loss {
                    drop_data,
                    drop_ack,
                },
            )
            .unwrap_or_else(|e| panic!("loss {drop_data}/{drop_ack}: {e}"));
        assert_eq!(
            got.data,
            content(&dir, "lossy.bin"),
            "loss {drop_data}/{drop_ack}"
        );
    }
}

#[test]
fn duplicate_acks_do_not_duplicate_data() {
    // Sorcerer's Apprentice: a client that ACKs every block twice must not get every later block twice.
    let dir = root_with(&[("sa.bin", 100 * 512 + 7)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut c = Client::new(h.addr);
    c.send_rrq("sa.bin", &[]);
    let mut data = Vec::new();
    let mut packets = 0;
    loop {
        match c.recv() {
            Some(Pkt::Data(b, d)) => {
                packets += 1;
                let last = d.len() < 512;
                data.extend_from_slice(&d);
                c.send(&ack(b));
                c.send(&ack(b));
                if last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data, content(&dir, "sa.bin"));
    assert_eq!(packets, 101, "each block sent exactly once");
    c.assert_silent(Duration::from_millis(1500));
}

#[test]
fn vanished_client_is_given_up_after_retries() {
    let dir = root_with(&[("gone.bin", 10_000)]);
    let config = Config {
        timeout: Duration::from_millis(100),
        retries: 3,
        ..Config::default()
    };
    let h = Harness::dir(dir.path(), config);
    let mut c = Client::new(h.addr);
    let t = Instant::now();
    c.send_rrq("gone.bin", &[]);
    // Never ACK: block 1 must arrive exactly 1 + retries times, then nothing.
    let mut copies = 0;
    while let Some(p) = c.recv() {
        assert_eq!(p, Pkt::Data(1, pattern(10_000, 1)[..512].to_vec()));
        copies += 1;
    }
    assert_eq!(copies, 4);
    let outcome = h.rec.wait("gone.bin", Duration::from_secs(5)).unwrap();
    assert_eq!(outcome, Outcome::TimedOut { acked_blocks: 0 });
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "gave up too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn fifty_concurrent_clients() {
    // Fifty machines (addresses 127.0.0.2..=51) at once, within the default limits (64 in all, 8 per
    // address).
    let files: Vec<(String, usize)> = (0..5)
        .map(|i| (format!("f{i}.bin"), 150_000 + i * 1111))
        .collect();
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let dir = root_with(&refs);
    let h = Harness::dir(dir.path(), Config::default());
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let addr = h.addr;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let name = format!("f{}.bin", i % 5);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let local = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8);
                let mut c = Client::new_from(addr, local.into());
                barrier.wait();
                let opts: &[(&str, &str)] = if i % 2 == 0 {
                    &[("blksize", "1468")]
                } else {
                    &[]
                };
                (name.clone(), c.fetch(&name, opts, Loss::default()))
            })
        })
        .collect();
    for t in threads {
        let (name, got) = t.join().unwrap();
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.data, content(&dir, &name), "{name}");
    }
}

struct Generated {
    big: Bytes,
}

impl Handler for Generated {
    fn open(&self, path: &str, peer: SocketAddr) -> Result<Content, TftpError> {
        match path {
            "big" => Ok(Content::Bytes(self.big.clone())),
            "boot.ipxe" => Ok(Content::Bytes(Bytes::from(format!(
                "#!ipxe\necho hello {}\n",
                peer.ip()
            )))),
            _ => Err(TftpError::not_found("no such script")),
        }
    }
}

#[test]
fn generated_content_and_block_number_rollover() {
    // More than 65535 blocks of 512 bytes: block numbers wrap to 0 and the file is still exact.
    let len = 65_535 * 512 + 5_000;
    let h = Harness::start(
        Arc::new(Generated {
            big: Bytes::from(pattern(len, 9)),
        }),
        Config::default(),
    );
    for window in ["1", "16"] {
        let mut c = Client::new(h.addr);
        let got = c
            .fetch(
                "big",
                &[("windowsize", window), ("tsize", "0")],
                Loss::default(),
            )
            .unwrap();
        assert_eq!(got.data.len(), len);
        assert!(
            got.data == pattern(len, 9),
            "content differs (windowsize {window})"
        );
        assert_eq!(got.data_packets, (len / 512 + 1) as u64);
    }
    let mut c = Client::new(h.addr);
    let got = c.fetch("boot.ipxe", &[], Loss::default()).unwrap();
    assert_eq!(got.data, b"#!ipxe\necho hello 127.0.0.1\n");
    let mut c = Client::new(h.addr);
    assert_eq!(
        c.fetch("nope", &[], Loss::default()).unwrap_err(),
        "error 1: no such script"
    );
}

#[test]
fn path_traversal_attempts_get_error_packets() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(outer.path().join("x"), b"outside").unwrap();
    std::fs::write(root.join("ok"), b"inside").unwrap();
    std::os::unix::fs::symlink(outer.path().join("x"), root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let h = Harness::dir(&root, Config::default());
    let cases: &[(&str, u16)] = &[
        ("../etc/passwd", 2),
        ("/../x", 2),
        ("a/../../x", 2),
        ("../x", 2),
        ("//etc/passwd", 2),
        ("link", 2),
        ("etc-link/passwd", 2),
        ("/etc/passwd", 1),
        ("a", 2),
    ];
    for (name, code) in cases {
        let mut c = Client::new(h.addr);
        c.send_rrq(name, &[("tsize", "0")]);
        match c.recv() {
            Some(Pkt::Error(got, msg)) => assert_eq!(got, *code, "{name}: {msg}"),
            other => panic!("{name}: expected an error packet, got {other:?}"),
        }
        c.assert_silent(Duration::from_millis(200));
    }
    let mut c = Client::new(h.addr);
    assert_eq!(
        c.fetch("/ok", &[], Loss::default()).unwrap().data,
        b"inside"
    );
}

#[test]
fn write_requests_are_refused_and_strangers_get_unknown_tid() {
    let dir = root_with(&[("f", 5_000)]);
    let h = Harness::dir(dir.path(), Config::default());
    let mut w = vec![0u8, 2];
    w.extend_from_slice(b"up.bin\0octet\0");
    let mut c = Client::new(h.addr);
    c.sock.send_to(&w, h.addr).unwrap();
    assert!(matches!(c.recv(), Some(Pkt::Error(2, _))));
    assert!(!dir.path().join("up.bin").exists());

    // A packet to a transfer port from another port gets error 5; the transfer goes on.
    let mut c = Client::new(h.addr);
    c.send_rrq("f", &[]);
    assert!(matches!(c.recv(), Some(Pkt::Data(1, _))));
    let stranger = Client::new(h.addr);
    stranger.sock.send_to(&ack(1), c.tid.unwrap()).unwrap();
    assert!(matches!(stranger.recv_from(), Some((Pkt::Error(5, _), _))));
    c.send(&ack(1));
    let mut blocks = 1;
    while let Some(Pkt::Data(b, d)) = c.recv() {
        blocks += 1;
        c.send(&ack(b));
        if d.len() < 512 {
            break;
        }
    }
    assert_eq!(blocks, 10);
}

#[test]
fn shutdown_stops_accepting_and_lets_transfers_finish() {
    let dir = root_with(&[("f", 3000)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handler = Arc::new(cairn_tftp::DirHandler::new(dir.path()).unwrap());
    let server = rt
        .block_on(cairn_tftp::Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            Config::default(),
        ))
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut c = Client::new(addr);
    c.send_rrq("f", &[]);
    assert!(matches!(c.recv(), Some(Pkt::Data(1, _))));
    stop.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !serving.is_finished(),
        "serve returned with a transfer in flight"
    );
    let mut late = Client::new(addr);
    late.send_rrq("f", &[]);
    assert_eq!(late.recv(), None, "a request after shutdown was answered");
    let mut data = pattern(3000, 1)[..512].to_vec();
    c.send(&ack(1));
    while let Some(Pkt::Data(b, d)) = c.recv() {
        data.extend_from_slice(&d);
        c.send(&ack(b));
        if d.len() < 512 {
            break;
        }
    }
    assert_eq!(data, content(&dir, "f"));
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), serving).await })
        .expect("serve did not return after the last transfer")
        .unwrap()
        .unwrap();
}

#[test]
fn serves_over_ipv6_loopback() {
    let dir = root_with(&[("six.bin", 70_000)]);
    let handler = Arc::new(cairn_tftp::DirHandler::new(dir.path()).unwrap());
    let h = Harness::start_on("[::1]:0".parse().unwrap(), handler, Config::default());
    let mut c = Client::new(h.addr);
    let got = c
        .fetch(
            "six.bin",
            &[("blksize", "1432"), ("tsize", "0"), ("windowsize", "4")],
            Loss::default(),
        )
        .unwrap();
    assert_eq!(got.data, content(&dir, "six.bin"));
    assert!(c.tid.unwrap().is_ipv6());
}

#[test]
fn wildcard_server_answers_from_the_address_the_client_asked() {
    // Bound to 0.0.0.0; the client talks to 127.0.0.2. Routing alone would answer from 127.0.0.1, which
    // PXE firmware (and the client's check in `Client::recv`) rejects.
    let dir = root_with(&[("w.bin", 5_000)]);
    let handler = Arc::new(cairn_tftp::DirHandler::new(dir.path()).unwrap());
    let h = Harness::start_on("0.0.0.0:0".parse().unwrap(), handler, Config::default());
    let target: SocketAddr = format!("127.0.0.2:{}", h.addr.port()).parse().unwrap();
    let mut c = Client::new(target);
    let got = c
        .fetch("w.bin", &[("tsize", "0")], Loss::default())
        .unwrap();
    assert_eq!(got.data, content(&dir, "w.bin"));
    assert_eq!(c.tid.unwrap().ip().to_string(), "127.0.0.2");
    let mut c = Client::new(target);
    c.send_rrq("missing", &[]);
    assert!(
        matches!(c.recv(), Some(Pkt::Error(1, _))),
        "error packets too"
    );
}

#[test]
fn dual_stack_server_answers_ipv4_and_ipv6() {
    let dir = root_with(&[("d.bin", 3_000)]);
    let handler = Arc::new(cairn_tftp::DirHandler::new(dir.path()).unwrap());
    let h = Harness::start_on("[::]:0".parse().unwrap(), handler, Config::default());
    for target in [
        format!("[::1]:{}", h.addr.port()),
        format!("127.0.0.1:{}", h.addr.port()),
    ] {
        let mut c = Client::new(target.parse().unwrap());
        let got = c.fetch("d.bin", &[], Loss::default()).unwrap();
        assert_eq!(got.data, content(&dir, "d.bin"), "{target}");
    }
}
