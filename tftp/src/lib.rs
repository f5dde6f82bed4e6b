//! cairn-tftp: a read-only TFTP server for network boot, async on tokio, serving files and generated content.
//!
//! RFC 1350 read requests (write requests get error 2), option negotiation (RFC 2347) with blksize
//! (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440). Requests arrive on an async socket;
//! each transfer runs on its own small-stack thread with its own blocking ephemeral UDP socket. Transfers are
//! capped in all and per client address: beyond a cap a request takes the place of the oldest transfer
//! whose client never acknowledged a DATA block (a spoofed source never does), and is refused with an
//! error packet when every transfer has progressed. Transfers end after `Config::max_idle` without
//! progress whatever the client asked, and a shutdown waits at most `Config::shutdown_grace` for them.
//! See `README.md` for the behaviour in detail.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use cairn_tftp::{Config, DirHandler, Server};
//! let handler = Arc::new(DirHandler::new("/srv/tftp")?);
//! let server = Server::bind("0.0.0.0:69".parse().unwrap(), handler, Config::default()).await?;
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod block;
mod handler;
pub mod options;
pub mod packet;
mod pktinfo;
mod server;
mod transfer;

pub use handler::{Content, DirHandler, Handler, Outcome, TftpError};
pub use packet::error_code;
pub use server::{
    raise_fd_limit, Config, Server, Stats, BUSY_MESSAGE, CLIENT_BUSY_MESSAGE, DEFAULT_MAX_IDLE,
    DEFAULT_MAX_TRANSFERS, DEFAULT_MAX_TRANSFERS_PER_CLIENT, DEFAULT_SHUTDOWN_GRACE, MAX_BLKSIZE,
};
