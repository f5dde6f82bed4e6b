//! Transfer threads log through the subscriber that was current where the server runs (a scoped one
//! here), and formatting every event at TRACE fits their small stack. Its own test binary: tracing caches
//! callsite interest process-wide, so a test without a subscriber running beside it could hide events.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_tftp::{Config, DirHandler, Server};
use common::{pattern, Client, Loss};

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn transfer_threads_log_through_the_servers_subscriber_with_full_tracing() {
    // A scoped (not global) subscriber at TRACE level on the thread running the server: the transfer
    // thread's own events (a retransmission) must reach it, and formatting every event at TRACE must fit
    // the transfer thread's small stack, with loss and retransmissions.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("l.bin"), pattern(300_000, 3)).unwrap();
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_thread_names(true)
        .finish();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let root = dir.path().to_path_buf();
    let server_thread = std::thread::spawn(move || {
        let _scoped = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let handler = Arc::new(DirHandler::new(root).unwrap());
            let config = Config {
                timeout: Duration::from_millis(50),
                retries: 10,
                ..Config::default()
            };
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), handler, config)
                .await
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            server
                .serve(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for (opts, loss) in [
        (
            vec![("blksize", "1000")],
            Loss {
                drop_data: 7,
                drop_ack: 5,
            },
        ),
        (
            vec![("blksize", "1000"), ("windowsize", "8"), ("tsize", "0")],
            Loss {
                drop_data: 3,
                drop_ack: 2,
            },
        ),
    ] {
        let mut c = Client::new(addr);
        let got = c.fetch("l.bin", &opts, loss).unwrap();
        assert!(
            got.data == pattern(300_000, 3),
            "content differs ({opts:?})"
        );
    }
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let resend = text
        .lines()
        .find(|l| l.contains("timeout, resending"))
        .unwrap_or_else(|| panic!("no retransmission logged by a transfer thread:\n{text}"));
    assert!(
        resend.contains("tftp-transfer"),
        "logged from another thread: {resend}"
    );
    assert_eq!(text.matches("TFTP transfer complete").count(), 2, "{text}");
}
