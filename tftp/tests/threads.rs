//! Transfers on their own threads: they progress while the tokio runtime that accepted the request is
//! blocked.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_tftp::{Config, DirHandler, Server};
use common::{ack, pattern, Client, Pkt};

fn root_with(name: &str, len: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), pattern(len, 3)).unwrap();
    dir
}

#[test]
fn transfer_progresses_while_the_runtime_is_blocked() {
    let len = 2_000_000;
    let dir = root_with("f.bin", len);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (block_tx, block_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let blocked = Arc::new(AtomicBool::new(false));
    let unblocked = Arc::new(AtomicBool::new(false));
    let (b, u) = (blocked.clone(), unblocked.clone());
    let root = dir.path().to_path_buf();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let handler = Arc::new(DirHandler::new(root).unwrap());
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), handler, Config::default())
                .await
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            // On request, the runtime's only thread blocks for 3 s: nothing async can run meanwhile.
            tokio::spawn(async move {
                if block_rx.await.is_ok() {
                    b.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(3));
                    u.store(true, Ordering::SeqCst);
                }
            });
            server
                .serve(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut c = Client::new(addr);
    c.send_rrq("f.bin", &[]);
    let Some(Pkt::Data(1, first)) = c.recv() else {
        panic!("no DATA 1")
    };
    block_tx.send(()).unwrap();
    while !blocked.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The rest of the file (3906 lockstep blocks) while the runtime sleeps.
    let mut data = first;
    c.send(&ack(1));
    loop {
        match c.recv() {
            Some(Pkt::Data(b, d)) => {
                let last = d.len() < 512;
                data.extend_from_slice(&d);
                c.send(&ack(b));
                if last {
                    break;
                }
            }
            other => panic!("expected DATA, got {other:?} after {} bytes", data.len()),
        }
    }
    assert!(
        !unblocked.load(Ordering::SeqCst),
        "the transfer only finished after the runtime was free again"
    );
    assert!(data == pattern(len, 3), "content differs");
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}
