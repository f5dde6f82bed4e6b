//! `fleetctl`: parses the command line, sets up logs and hands over to
//! `cairn_fleetctl::run`; prints an error once, with its causes, and exits
//! 1 as fleet's fleetctl did.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cairn_fleetctl::Cli::parse();
    let level = if cli.global.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cairn_fleetctl::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", cairn_formats::report::Chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
