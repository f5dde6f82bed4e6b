//! `fleetd`: reads fleet's settings (config file, `FLEET_*`, flags), then
//! runs the agent and a candidate engine until SIGTERM or SIGINT. Errors
//! are printed once with their causes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use cairn_fleetd::config::{self, Origin, Setting, Settings};
use cairn_fleetd::{daemon, host};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// fleet's daemon for cairn machines: runs this machine's share of the
/// cluster's units (the agent) and stands for the cluster's engine. Each
/// flag is one of fleet's options; flags override FLEET_* variables, which
/// override the config file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// fleet's config file (`key=value` lines); a missing default file is
    /// no settings.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// etcd client URLs, comma-separated (default http://127.0.0.1:2379).
    #[arg(long, value_name = "URLS")]
    etcd_servers: Option<String>,
    /// Where fleet's records live in etcd (default /cairn/fleet/).
    #[arg(long, value_name = "PREFIX")]
    etcd_key_prefix: Option<String>,
    /// Seconds one etcd request may take, connect to last byte (default 5).
    #[arg(long, value_name = "SECONDS")]
    etcd_request_timeout: Option<String>,
    /// etcd TLS: the CA bundle that signed etcd's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<String>,
    /// etcd TLS: this machine's client certificate (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_certfile: Option<String>,
    /// etcd TLS: the client certificate's key (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_keyfile: Option<String>,
    /// The address published for this machine (default: detected).
    #[arg(long, value_name = "IP")]
    public_ip: Option<String>,
    /// This machine's metadata, `key=value` pairs, comma-separated.
    #[arg(long, value_name = "PAIRS")]
    metadata: Option<String>,
    /// How long after this agent stops answering its machine is gone
    /// (Go duration, default 30s).
    #[arg(long, value_name = "DURATION")]
    agent_ttl: Option<String>,
    /// Seconds between the engine's plans when nothing changes (default 2).
    #[arg(long, value_name = "SECONDS")]
    engine_reconcile_interval: Option<String>,
    /// Run no engine on this machine, only the agent.
    #[arg(long)]
    disable_engine: bool,
    /// Log detail: 0, 1 or 2 (RUST_LOG overrides).
    #[arg(long, value_name = "N")]
    verbosity: Option<String>,
    /// This machine's ID (default: /etc/machine-id).
    #[arg(long, value_name = "ID")]
    machine_id: Option<String>,
    /// How units are run: `dbus` (systemd, the default) or `sim` (kept in
    /// memory and reported running: for scale tests without machines).
    #[arg(long, value_name = "MODE")]
    systemd: Option<String>,
    /// With --systemd=sim: this many agents in this process, IDs
    /// MACHINE-0001, MACHINE-0002...
    #[arg(long, value_name = "N")]
    sim_agents: Option<String>,
    /// Where unit files are written for systemd (default /run/fleet/units).
    #[arg(long, value_name = "DIR")]
    units_dir: Option<String>,
}

impl Args {
    fn settings(&self) -> Vec<Setting> {
        let flags: [(&'static str, &Option<String>); 15] = [
            ("etcd-servers", &self.etcd_servers),
            ("etcd-key-prefix", &self.etcd_key_prefix),
            ("etcd-request-timeout", &self.etcd_request_timeout),
            ("etcd-cafile", &self.etcd_cafile),
            ("etcd-certfile", &self.etcd_certfile),
            ("etcd-keyfile", &self.etcd_keyfile),
            ("public-ip", &self.public_ip),
            ("metadata", &self.metadata),
            ("agent-ttl", &self.agent_ttl),
            ("engine-reconcile-interval", &self.engine_reconcile_interval),
            ("verbosity", &self.verbosity),
            ("machine-id", &self.machine_id),
            ("systemd", &self.systemd),
            ("sim-agents", &self.sim_agents),
            ("units-dir", &self.units_dir),
        ];
        let mut out: Vec<Setting> = flags
            .iter()
            .filter_map(|(flag, v)| {
                v.as_ref().map(|v| Setting {
                    key: flag.to_string(),
                    value: v.clone(),
                    origin: Origin::Flag(flag),
                })
            })
            .collect();
        if self.disable_engine {
            out.push(Setting {
                key: "disable-engine".into(),
                value: "true".into(),
                origin: Origin::Flag("disable-engine"),
            });
        }
        out
    }
}

fn load(args: &Args) -> Result<Settings> {
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let file = config::read_file(&path, required)?;
    let (env, unknown) = config::from_env(std::env::vars());
    let s = Settings::default()
        .apply(&file)?
        .apply(&env)?
        .apply(&args.settings())?;
    for var in unknown {
        eprintln!("fleetd: warning: environment variable {var} is not a fleet option; ignored");
    }
    Ok(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "fleetd: error: {}",
                cairn_formats::report::Chain(e.as_ref())
            );
            return ExitCode::FAILURE;
        }
    };
    let level = ["info", "debug", "trace"][usize::from(settings.verbosity.min(2))];
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for (key, origin) in &settings.ignored {
        warn!(
            "{origin}: {key} is accepted for compatibility with fleet and has no effect in cairn"
        );
    }
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "fleetd: error: {}",
                cairn_formats::report::Chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> Result<()> {
    let me = daemon::machine(&settings, Path::new(host::MACHINE_ID_FILE))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
            let _ = tx.send(true);
        });
        daemon::run(settings, me, rx).await
    })
}
