//! fleetctl: fleet's command-line client on cairn's registry in etcd v3,
//! with fleet's verbs, columns, flags, messages and exit codes (see
//! `docs/usage.md`, "fleetctl"), `ssh` to a machine or a unit's machine,
//! and `explain`, which says why a unit is where it is. Everything read
//! from etcd is checked before it is used or shown; unit names are checked
//! before they reach a key or a command.

pub mod braces;
pub mod explain;
pub mod files;
pub mod list;
pub mod remote;
pub mod ssh;
pub mod table;
pub mod verbs;
pub mod view;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cairn_etcd::{Client, Config, Tls};
use cairn_fleet::registry::{Keys, Registry, DEFAULT_PREFIX};
use cairn_fleet::unit::name::with_default_type;
use cairn_fleet::unit::UnitName;
use clap::{Args, Parser, Subcommand};

/// fleetctl's command line.
#[derive(Parser, Debug)]
#[command(
    name = "fleetctl",
    version,
    about = "fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system (cairn's fleet, on etcd v3)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags of every command (fleet's global flags; each may also be
/// given as `FLEETCTL_FLAG_NAME` in the environment).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ENDPOINT",
        value_name = "URL[,URL]",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoint: String,
    /// Keyspace for fleet data in etcd.
    #[arg(long, global = true, env = "FLEETCTL_ETCD_KEY_PREFIX", value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_key_prefix: String,
    /// Amount of time in seconds to allow a single request before considering it failed.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 3.0
    )]
    pub request_timeout: f64,
    /// Print out more debug information to stderr.
    #[arg(long, global = true, env = "FLEETCTL_DEBUG")]
    pub debug: bool,
    /// Username to use when connecting to CoreOS instance.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        value_name = "NAME",
        default_value = "core"
    )]
    pub ssh_username: String,
    /// Verify host keys presented by remote machines before initiating SSH connections.
    #[arg(long, global = true, env = "FLEETCTL_STRICT_HOST_KEY_CHECKING", value_name = "BOOL",
          default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub strict_host_key_checking: bool,
    /// File used to store remote machine fingerprints (default ~/.fleetctl/known_hosts). Ignored if strict host key checking is disabled.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KNOWN_HOSTS_FILE",
        value_name = "FILE"
    )]
    pub known_hosts_file: Option<PathBuf>,
    /// Amount of time in seconds to allow for SSH connection initialization before failing.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    pub ssh_timeout: f64,
    /// Location of TLS CA file that will be used to verify the etcd server certificate (endpoints are then https://).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_CA_FILE",
        value_name = "FILE",
        value_parser = clap::value_parser!(OsString)
    )]
    pub ca_file: Option<OsString>,
    /// Location of TLS Cert file shared with the etcd server (a client certificate, with --key-file).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_CERT_FILE",
        value_name = "FILE",
        value_parser = clap::value_parser!(OsString)
    )]
    pub cert_file: Option<OsString>,
    /// Location of TLS Key file shared with the etcd server (the key of --cert-file).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KEY_FILE",
        value_name = "FILE",
        value_parser = clap::value_parser!(OsString)
    )]
    pub key_file: Option<OsString>,
    /// Reach the machines that `status`, `journal` and `ssh` run on through this SSH host (HOST[:PORT]).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_TUNNEL",
        value_name = "HOST[:PORT]"
    )]
    pub tunnel: Option<String>,
}

/// `--no-legend`, `--full`, `--fields` of the listings.
#[derive(Args, Debug, Clone)]
pub struct ListOpts {
    /// Do not print a legend (column headers).
    #[arg(long)]
    pub no_legend: bool,
    /// Do not ellipsize fields on output.
    #[arg(long, short = 'l')]
    pub full: bool,
    /// Columns to print, comma-separated.
    #[arg(long, value_name = "LIST")]
    pub fields: Option<String>,
}

/// `--no-block`, `--block-attempts` of the verbs that wait.
#[derive(Args, Debug, Clone, Copy)]
pub struct BlockOpts {
    /// Do not wait until the units have reached their state before exiting. Always the case for global units.
    #[arg(long)]
    pub no_block: bool,
    /// Wait until the units have reached their state, performing up to N attempts (of about 2 s) before giving up. A value of 0 indicates no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the current state of units in the cluster (UNIT MACHINE ACTIVE SUB).
    ListUnits(ListOpts),
    /// Enumerate the current hosts in the cluster (MACHINE IP METADATA).
    ListMachines(ListOpts),
    /// List the units that exist in the cluster (UNIT HASH DSTATE STATE TARGET).
    ListUnitFiles(ListOpts),
    /// Upload one or more units to the cluster without starting them.
    Submit {
        /// Replace the old submitted units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Schedule one or more units in the cluster, first submitting them if necessary.
    Load {
        #[command(flatten)]
        block: BlockOpts,
        /// Replace the old scheduled units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary.
    Start {
        #[command(flatten)]
        block: BlockOpts,
        /// Replace the already started units in the cluster with new versions.
        #[arg(long)]
        replace: bool,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Instruct systemd to stop one or more units in the cluster.
    Stop {
        #[command(flatten)]
        block: BlockOpts,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Unschedule one or more units in the cluster.
    Unload {
        #[command(flatten)]
        block: BlockOpts,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Destroy one or more units in the cluster.
    Destroy {
        /// Accepted for fleet's sake; destroy does not wait.
        #[command(flatten)]
        block: BlockOpts,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Output the contents of a submitted unit.
    Cat {
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Output the status of one or more units in the cluster (systemctl status on their machines).
    Status {
        /// Connect to remote hosts over SSH using this TCP port.
        #[arg(long, value_name = "N", default_value_t = 22)]
        ssh_port: u16,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Print the journal of a unit in the cluster to stdout.
    Journal {
        /// Number of recent log lines to return.
        #[arg(long, short = 'n', value_name = "N", default_value_t = 10)]
        lines: u32,
        /// Continuously print new entries as they are appended to the journal.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Connect to remote hosts over SSH using this TCP port.
        #[arg(long, value_name = "N", default_value_t = 22)]
        ssh_port: u16,
        /// Execute journal command with sudo.
        #[arg(long)]
        sudo: bool,
        /// Output mode, passed to journalctl.
        #[arg(long, value_name = "MODE", default_value = "short")]
        output: String,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },
    /// Open interactive shell on a machine in the cluster (or run COMMAND there).
    Ssh {
        /// Forward local ssh-agent to target machine.
        #[arg(long, short = 'A')]
        forward_agent: bool,
        /// Open SSH connection to a specific machine.
        #[arg(long, value_name = "MACHINE")]
        machine: Option<String>,
        /// Open SSH connection to machine running provided unit.
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// Connect to remote hosts over SSH using this TCP port.
        #[arg(long, value_name = "N", default_value_t = 22)]
        ssh_port: u16,
        /// MACHINE|UNIT (unless --machine or --unit is given), then the command.
        #[arg(
            value_name = "MACHINE|UNIT [COMMAND]",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// Say why a unit is on its machine, or why no machine takes it.
    Explain {
        #[arg(value_name = "UNIT")]
        unit: String,
    },
    /// Print the version and exit.
    Version,
}

/// What a command works with.
pub struct Ctx {
    pub reg: Registry,
    pub global: Global,
}

impl Ctx {
    /// The registry at `--endpoint` under `--etcd-key-prefix`. Nothing is
    /// connected yet.
    pub fn new(global: Global) -> Result<Ctx> {
        let endpoints: Vec<&str> = global
            .endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let secs = global.request_timeout;
        if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
            bail!("--request-timeout {secs}: expected seconds between 0 and 3600");
        }
        let timeout = Duration::from_secs_f64(secs);
        let config = Config {
            request_timeout: timeout,
            connect_timeout: timeout.min(Duration::from_secs(2)),
            tls: tls(&global)?,
            ..Config::default()
        };
        let etcd = Client::with_config(&endpoints, config)
            .with_context(|| format!("Unable to initialize client for {}", global.endpoint))?;
        let keys = Keys::new(&global.etcd_key_prefix)?;
        Ok(Ctx {
            reg: Registry::new(etcd, keys),
            global,
        })
    }
}

/// TLS from `--ca-file`, `--cert-file` and `--key-file` (fleet's flags;
/// an empty one counts as not given): none without any, the CA alone to
/// verify etcd, the CA and a client certificate with its key.
pub fn tls(global: &Global) -> Result<Option<Tls>> {
    fn given(f: &Option<OsString>) -> Option<&Path> {
        f.as_deref().filter(|p| !p.is_empty()).map(Path::new)
    }
    let (ca, cert, key) = (
        given(&global.ca_file),
        given(&global.cert_file),
        given(&global.key_file),
    );
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() {
            bail!(
                "--cert-file and --key-file need --ca-file (the CA that signed etcd's server \
                 certificate)"
            );
        }
        return Ok(None);
    };
    match (cert, key) {
        (Some(c), None) => bail!(
            "--cert-file {} needs --key-file (the client certificate's key)",
            c.display()
        ),
        (None, Some(k)) => bail!(
            "--key-file {} needs --cert-file (the client certificate)",
            k.display()
        ),
        _ => {}
    }
    Tls::from_files(ca, cert, key)
        .map(Some)
        .context("Unable to set up TLS from --ca-file, --cert-file, --key-file")
}

/// fleetctl's `unitNameMangle`: the last path element of an argument,
/// `.service` added when it has no unit type, checked as a unit name.
pub fn unit_name(arg: &str) -> Result<UnitName> {
    let base = arg.rsplit('/').next().unwrap_or(arg);
    let name = with_default_type(base);
    UnitName::parse(&name).with_context(|| format!("{:?}", table::clean(arg, 300)))
}

/// The arguments with their braces expanded and `.service` added where
/// they have no type (fleet's `maybeAppendDefaultUnitType`).
pub fn expand_args(args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        for e in braces::expand(a)? {
            out.push(with_default_type(&e));
        }
    }
    Ok(out)
}

/// Runs one command; returns the exit code. Errors (printed by `main`,
/// once, with their causes) exit 1.
pub async fn run(cli: Cli) -> Result<u8> {
    if let Command::Version = cli.command {
        println!("fleetctl version {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let ctx = Ctx::new(cli.global)?;
    match cli.command {
        Command::ListUnits(o) => list::list_units(&ctx, &o).await,
        Command::ListMachines(o) => list::list_machines(&ctx, &o).await,
        Command::ListUnitFiles(o) => list::list_unit_files(&ctx, &o).await,
        Command::Submit { replace, units } => verbs::submit(&ctx, &units, replace).await,
        Command::Load {
            block,
            replace,
            units,
        } => verbs::load_or_start(&ctx, verbs::Goal::Loaded, &units, replace, block).await,
        Command::Start {
            block,
            replace,
            units,
        } => verbs::load_or_start(&ctx, verbs::Goal::Launched, &units, replace, block).await,
        Command::Stop { block, units } => {
            verbs::stop_or_unload(&ctx, verbs::Goal::Stopped, &units, block).await
        }
        Command::Unload { block, units } => {
            verbs::stop_or_unload(&ctx, verbs::Goal::Unloaded, &units, block).await
        }
        Command::Destroy { block: _, units } => verbs::destroy(&ctx, &units).await,
        Command::Cat { units } => verbs::cat(&ctx, &units).await,
        Command::Status { ssh_port, units } => remote::status(&ctx, &units, ssh_port).await,
        Command::Journal {
            lines,
            follow,
            ssh_port,
            sudo,
            output,
            units,
        } => {
            let j = remote::JournalOpts {
                lines,
                follow,
                sudo,
                output,
                ssh_port,
            };
            remote::journal(&ctx, &units, &j).await
        }
        Command::Ssh {
            forward_agent,
            machine,
            unit,
            ssh_port,
            args,
        } => {
            let o = ssh::SshOpts {
                forward_agent,
                machine,
                unit,
                ssh_port,
            };
            ssh::ssh(&ctx, &o, &args).await
        }
        Command::Explain { unit } => explain::explain(&ctx, &unit).await,
        Command::Version => unreachable!("handled above"),
    }
}
