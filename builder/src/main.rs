//! The `cairn` command: parses arguments and dispatches to the library.
//! Errors are printed once, with their whole chain of causes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Build, serve and boot minimal immutable Linux images")]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a definition (images/*.yaml).
    Build {
        /// The image definition.
        definition: PathBuf,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
        /// Debian mirror base URL (else the definition's, else this machine's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// Package cache (default $XDG_CACHE_HOME/cairn).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Re-resolve packages and rewrite the lock file next to the definition.
        #[arg(long)]
        update_lock: bool,
        /// Parallel downloads.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// zstd level of the root image (1-22).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=22))]
        zstd_level: u32,
        /// Directory of Debian archive keys (*.asc); default: keys/ next to the definition.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Rebuild even when the output folder is already current.
        #[arg(long)]
        force: bool,
    },
}

fn run(cli: Cli, progress: MultiProgress) -> Result<()> {
    match cli.command {
        Command::Build {
            definition,
            out,
            mirror,
            cache,
            update_lock,
            jobs,
            zstd_level,
            keys,
            force,
        } => {
            let opts = cairn_builder::pipeline::BuildOptions {
                definition,
                out,
                mirror,
                cache,
                update_lock,
                jobs,
                zstd_level,
                sources_root: PathBuf::from("/"),
                keys,
                progress,
                force,
            };
            let s = cairn_builder::pipeline::build(&opts)?;
            let root = &s.manifest.artifacts[0];
            if s.up_to_date {
                println!(
                    "{} is up to date ({} {}, sha256 {}); --force rebuilds",
                    s.out.display(),
                    s.manifest.name,
                    s.manifest.version,
                    root.sha256
                );
                return Ok(());
            }
            println!(
                "built {} {}: {} packages, {} entries, {:.1} MiB of files -> {} ({:.1} MiB, sha256 {})",
                s.manifest.name,
                s.manifest.version,
                s.manifest.packages.len(),
                s.tree_entries,
                s.tree_bytes as f64 / 1048576.0,
                s.out.join(&root.name).display(),
                root.size as f64 / 1048576.0,
                root.sha256
            );
            if s.lock_written {
                println!("wrote {}", s.lock_path.display());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let progress = MultiProgress::new();
    let writer = {
        let p = progress.clone();
        move || LogWriter(p.clone())
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(writer)
        .with_target(false)
        .init();
    match run(cli, progress) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go through the progress bars so they do not tear them.
struct LogWriter(MultiProgress);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        let s = s.trim_end_matches('\n');
        if self.0.is_hidden() {
            eprintln!("{s}");
        } else {
            self.0.println(s)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
