//! Serves a directory over TFTP (used by bench/tftp-vs-tftpd-hpa.sh and for manual tests).
//!
//! `cargo run --release -p cairn-tftp --example serve_dir -- ADDR DIR [MAX_BLKSIZE] [MAX_WINDOWSIZE]`
//! MAX_BLKSIZE defaults to 65464 (the RFC maximum, for loopback), MAX_WINDOWSIZE to 64.
//! Runs on tokio's multi-thread runtime (as inside `cairn serve`); SERVE_DIR_CURRENT_THREAD=1 selects
//! a current-thread runtime instead. RUST_LOG=cairn_tftp=info logs every transfer.
//! The transfer caps are raised to 1024 (all from one address): the benchmark starts 200 curl clients on
//! 127.0.0.1 at once, which the defaults (64 in all, 8 per address) would mostly refuse.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cairn_tftp::{Config, DirHandler, Server};

fn main() -> anyhow::Result<()> {
    let mut rt = if std::env::var_os("SERVE_DIR_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all()
        .build()
        .context("starting tokio")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, dir, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: serve_dir ADDR DIR [MAX_BLKSIZE] [MAX_WINDOWSIZE]");
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("parsing listen address {addr:?}"))?;
    let mut config = Config {
        max_blksize: cairn_tftp::MAX_BLKSIZE,
        max_windowsize: 64,
        max_transfers: 1024,
        max_transfers_per_client: 1024,
        ..Config::default()
    };
    if let Some(b) = rest.first() {
        config.max_blksize = b
            .parse()
            .with_context(|| format!("parsing MAX_BLKSIZE {b:?}"))?;
    }
    if let Some(w) = rest.get(1) {
        config.max_windowsize = w
            .parse()
            .with_context(|| format!("parsing MAX_WINDOWSIZE {w:?}"))?;
    }
    let handler =
        Arc::new(DirHandler::new(dir).with_context(|| format!("opening TFTP root {dir}"))?);
    let server = Server::bind(addr, handler, config)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("listening on {}", server.local_addr());
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving TFTP")?;
    Ok(())
}
