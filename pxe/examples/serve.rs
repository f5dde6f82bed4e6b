//! `cairn serve` without the rest of the CLI, for benchmarks and manual tests:
//! `cargo run -p cairn-pxe --example serve -- --config examples/lab.yaml --no-tftp`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: cairn_pxe::ServeArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    cairn_pxe::run(Cli::parse().serve)
}
