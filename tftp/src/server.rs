//! The server: the request socket (async, on the caller's tokio runtime) and, per request, a task that
//! resolves it through the `Handler` and hands the transfer to its own thread (see `transfer`).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::handler::{Handler, Outcome, TftpError};
use crate::options::{self, negotiate};
use crate::packet::{error_code, DecodeError, Mode, Packet};
use crate::pktinfo;
use crate::transfer::{self, send_error, Transfer};

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
    let socket = match transfer_socket(local_ip) {
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
    let transfer = Transfer::new(
        socket,
        peer,
        content,
        &negotiated,
        config.timeout,
        config.retries,
    );
    let outcome = run_on_thread(transfer, peer, local_ip).await;
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

/// Runs the transfer on a thread of its own (small stack, blocking socket) and waits for its outcome
/// without holding a runtime worker. The thread logs through the caller's tracing dispatcher.
async fn run_on_thread(transfer: Transfer, peer: SocketAddr, local_ip: IpAddr) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let spawned = std::thread::Builder::new()
        .name("tftp-transfer".into())
        .stack_size(transfer::STACK_SIZE)
        .spawn(move || {
            let _log = tracing::dispatcher::set_default(&dispatch);
            let _ = tx.send(transfer.run());
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
