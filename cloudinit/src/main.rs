//! The `cairn-cloudinit` binary: parses flags, finds the user-data, applies it, writes the status file. With no flags it does the boot behaviour.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Context;
use cairn_cloudinit::apply::{self, Options, Outcome, Status};
use cairn_cloudinit::{addrs, cloud, fetch::RetryPolicy, source};
use clap::Parser;

/// Find this machine's cloud-config (cloud-config-url= on the kernel command
/// line, /run/cairn/state/user-data, a config-2 config drive, whose
/// meta_data.json SSH keys and hostname are merged in, then an
/// EC2-compatible or DigitalOcean metadata service, whose hostname, keys
/// and addresses come along), validate it and apply it. Run at every boot
/// by cairn-cloudinit.service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Print the line that tells the console the machine is up (image,
    /// version, slot, addresses, how to log in) and exit; run by
    /// cairn-ready.service at the end of the boot.
    #[arg(long, conflicts_with_all = ["from_file", "config_drive"])]
    ready: bool,
    /// Use this user-data file instead of looking for a data source.
    #[arg(long, value_name = "PATH")]
    from_file: Option<PathBuf>,
    /// Apply under this directory instead of the running system: files are
    /// written there, `useradd --root`/`systemctl --root` are used, and
    /// nothing is started.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Read the kernel command line from this file.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The state partition's user-data file.
    #[arg(long, value_name = "FILE", default_value = source::STATE_USER_DATA)]
    state_user_data: PathBuf,
    /// An already mounted config drive (instead of looking for label
    /// config-2): DIR/openstack/latest/user_data and meta_data.json.
    #[arg(long, value_name = "DIR")]
    config_drive: Option<PathBuf>,
    /// Do not look for a config drive.
    #[arg(long)]
    no_config_drive: bool,
    /// Where to write the status (JSON); default ROOT/run/cairn/cloudinit.status.
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
    /// The metadata services to ask when no other source has user-data, in
    /// order: `ec2`, `digitalocean`, both comma-separated, or `off`
    /// (default: as `cairn.metadata=` on the kernel command line says,
    /// else `ec2,digitalocean`).
    #[arg(long, value_name = "LIST")]
    metadata: Option<String>,
    /// The metadata services' base URL (default http://169.254.169.254).
    /// Under `--root DIR` the services are asked only when this is given.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<String>,
    /// Read an EC2 metadata service that refuses the IMDSv2 session token
    /// without one (IMDSv1), as `cairn.metadata.imdsv1=1` does.
    #[arg(long)]
    imdsv1: bool,
    /// Tries for a URL data source (network errors and 5xx are retried).
    #[arg(long, default_value_t = 15)]
    fetch_tries: u32,
    /// Addresses for substitution instead of the detected ones.
    #[arg(long)]
    private_ipv4: Option<Ipv4Addr>,
    #[arg(long)]
    public_ipv4: Option<Ipv4Addr>,
    #[arg(long)]
    private_ipv6: Option<Ipv6Addr>,
    #[arg(long)]
    public_ipv6: Option<Ipv6Addr>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // colour only for a person at a terminal, never in the journal
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let code = match run(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{}", cairn_formats::report::Chain(e.as_ref()));
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> anyhow::Result<i32> {
    if args.ready {
        let line = cairn_cloudinit::banner::line(&cairn_cloudinit::banner::gather());
        tracing::info!("{line}");
        // on a line of its own: agetty's prompt may be waiting on the console
        println!("\n{line}");
        return Ok(0);
    }
    // useradd --root and systemctl --root want an absolute path
    let root = std::fs::canonicalize(&args.root)
        .with_context(|| format!("--root {}", args.root.display()))?;
    let live = root == std::path::Path::new("/");
    // the status file as (root, path under it): an administrator's
    // --status-file is a path on this machine
    let (status_root, status_path) = match &args.status_file {
        Some(p) => {
            let abs =
                std::path::absolute(p).with_context(|| format!("--status-file {}", p.display()))?;
            (PathBuf::from("/"), abs.display().to_string())
        }
        None => (root.clone(), apply::STATUS_FILE.to_string()),
    };
    let metadata = metadata_sources(args, live)?;
    let found = match &args.from_file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Some(source::Found {
                source: p.display().to_string(),
                bytes,
                metadata: None,
            }))
        }
        None => source::find(&source::Sources {
            cmdline: args.cmdline.clone(),
            state_user_data: args.state_user_data.clone(),
            config_drive_dir: args.config_drive.clone(),
            config_drive: !args.no_config_drive,
            // a machine's own devices, never a --root's host
            load_storage_drivers: live,
            policy: RetryPolicy {
                max_tries: args.fetch_tries,
                ..Default::default()
            },
            metadata,
            // only this machine's boot waits for its network
            network: if live {
                cairn_cloudinit::network::NetworkWait::Systemd {
                    timeout: cairn_cloudinit::network::ONLINE_TIMEOUT,
                }
            } else {
                cairn_cloudinit::network::NetworkWait::Never
            },
        }),
    };
    let outcome = match found {
        Err(e) => {
            tracing::error!("{e}: nothing applied");
            let mut o = Outcome::new(Status::SourceFailed, None);
            o.failures.push(e.to_string());
            o
        }
        Ok(None) => {
            tracing::info!(
                "no user-data found (kernel command line, {}, config drive, metadata services): nothing to do",
                args.state_user_data.display()
            );
            Outcome::new(Status::NoConfig, None)
        }
        Ok(Some(found)) => match source::maybe_gunzip(found.bytes).map(String::from_utf8) {
            Err(e) => outcome_error(
                Status::SourceFailed,
                &found.source,
                cairn_formats::report::Chain(e.as_ref()).to_string(),
            ),
            Ok(Err(_)) => outcome_error(
                Status::Invalid,
                &found.source,
                "user-data is not UTF-8 text".into(),
            ),
            Ok(Ok(text)) => {
                // the addresses: these flags, else the metadata service's,
                // else the detected ones
                let given = addrs::MachineAddresses {
                    private_ipv4: args.private_ipv4,
                    public_ipv4: args.public_ipv4,
                    private_ipv6: args.private_ipv6,
                    public_ipv6: args.public_ipv6,
                };
                let known = match &found.metadata {
                    Some(Ok(md)) => md.addresses.clone(),
                    _ => addrs::MachineAddresses::default(),
                };
                let (want4, want6) = addrs::wanted_families(&text);
                let need4 = want4 && given.private_ipv4.is_none() && known.private_ipv4.is_none();
                let need6 = want6 && given.private_ipv6.is_none() && known.private_ipv6.is_none();
                let mut addresses =
                    if !live || (given.private_ipv4.is_some() || given.private_ipv6.is_some()) {
                        addrs::MachineAddresses::default()
                    } else {
                        addrs::detect_waiting(need4, need6, std::time::Duration::from_secs(60))
                    };
                addresses.overlay(&known);
                addresses.overlay(&given);
                let opts = Options {
                    root: root.clone(),
                    live,
                    addresses,
                };
                apply::run_with_metadata(&text, &found.source, found.metadata.as_ref(), &opts)
            }
        },
    };
    if let Err(e) = apply::write_status(&status_root, &status_path, &outcome) {
        tracing::error!("{}", cairn_formats::report::Chain(e.as_ref()));
    }
    Ok(outcome.status.exit_code())
}

/// The metadata services as the flags say. Under `--root DIR` (a test, an
/// image being prepared) they are asked only at an explicit
/// `--metadata-url`: never the link-local service of the machine the
/// command happens to run on.
fn metadata_sources(args: &Args, live: bool) -> anyhow::Result<source::MetadataSources> {
    let services = args
        .metadata
        .as_deref()
        .map(cloud::Service::parse_list)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--metadata")?;
    let mut m = source::MetadataSources {
        services,
        imdsv1: args.imdsv1,
        ..Default::default()
    };
    match &args.metadata_url {
        // an address given explicitly is asked whatever the platform
        Some(url) => {
            m.base = url.clone();
            m.dmi = None;
        }
        None if !live => {
            tracing::debug!("--root is not /: no metadata service without --metadata-url");
            m.services = Some(Vec::new());
        }
        None => {}
    }
    Ok(m)
}

fn outcome_error(status: Status, source: &str, msg: String) -> Outcome {
    tracing::error!("{source}: {msg}: nothing applied");
    let mut o = Outcome::new(status, Some(source.to_string()));
    o.failures.push(msg);
    o
}
