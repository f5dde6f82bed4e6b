//! `cairn-update`: the on-host A/B update agent (check, apply, status,
//! health, mark-good) on top of the `cairn_updater` library. Owns argument
//! parsing, logging, exit codes and the reboot command; everything else is
//! the library's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_formats::channel::ChannelError;
use cairn_updater::agent::{Agent, Outcome, Paths, SlotDevices};
use cairn_updater::health::{self, HealthOptions};
use cairn_updater::state::{Event, Phase};
use cairn_updater::Strategy;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-update",
    version,
    about = "A/B updates for cairn machines"
)]
struct Cli {
    #[command(flatten)]
    paths: PathArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where things are (defaults: a cairn machine). Tests point them at files.
#[derive(Args)]
struct PathArgs {
    #[arg(long, global = true, default_value = "/efi")]
    esp: PathBuf,
    #[arg(long, global = true, default_value = "/run/cairn/state/update")]
    state_dir: PathBuf,
    #[arg(long, global = true, default_value = "/etc/cairn/update.conf")]
    config: PathBuf,
    /// Public key file, or folder of *.pub files.
    #[arg(long, global = true, default_value = "/usr/lib/cairn/update-keys")]
    keys: PathBuf,
    #[arg(long, global = true, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    #[arg(long, global = true, default_value = "/usr/lib/os-release")]
    os_release: PathBuf,
    #[arg(long, global = true, default_value = "/proc/sys/kernel/random/boot_id")]
    boot_id: PathBuf,
    #[arg(long, global = true, default_value = "/sys/firmware/efi/efivars")]
    efivars: PathBuf,
    #[arg(long, global = true, default_value = "/etc/machine-id")]
    machine_id: PathBuf,
    #[arg(long, global = true, default_value = "/sys/class/block")]
    sys_class_block: PathBuf,
    /// Slot A's device or file (instead of finding the partition labelled cairn-a).
    #[arg(long, global = true, requires = "slot_b")]
    slot_a: Option<PathBuf>,
    #[arg(long, global = true, requires = "slot_a")]
    slot_b: Option<PathBuf>,
}

impl PathArgs {
    fn paths(&self) -> Paths {
        Paths {
            esp: self.esp.clone(),
            state_dir: self.state_dir.clone(),
            cmdline: self.cmdline.clone(),
            os_release: self.os_release.clone(),
            boot_id: self.boot_id.clone(),
            config: self.config.clone(),
            trusted_keys: self.keys.clone(),
            slots: match (&self.slot_a, &self.slot_b) {
                (Some(a), Some(b)) => SlotDevices::Fixed {
                    a: a.clone(),
                    b: b.clone(),
                },
                _ => SlotDevices::ByLabel(self.sys_class_block.clone()),
            },
            efivars: self.efivars.clone(),
            machine_id: self.machine_id.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Ask the server: is a newer signed version offered? (writes nothing)
    Check,
    /// Download and stage a newer version into the inactive slot, then
    /// reboot if the strategy allows it now.
    Apply {
        /// Stage only, whatever the strategy says.
        #[arg(long)]
        no_reboot: bool,
        /// With REBOOT_STRATEGY=etcd-lock: while every slot of the cluster
        /// reboot lock is held, ask again this often (seconds).
        #[arg(long, default_value_t = 15)]
        lock_poll_secs: u64,
    },
    /// Which slot and version run, what is staged, what happened last.
    Status {
        /// The state file as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The health gate (cairn-health.service): commit a trial when healthy.
    Health {
        /// Keep retrying failing checks this long.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Do not run systemd-bless-boot bad on failure.
        #[arg(long)]
        no_bless: bool,
    },
    /// Commit the slot on trial without running the checks.
    MarkGood,
    /// The cluster reboot lock in etcd (REBOOT_STRATEGY=etcd-lock), as locksmithctl had it.
    Lock {
        /// An etcd client URL.
        /// An etcd client URL (default: update.conf's LOCKSMITHD_ENDPOINT,
        /// else the local member).
        #[arg(long)]
        etcd: Option<String>,
        #[command(subcommand)]
        cmd: LockCmd,
    },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Free slots, slots in all, holders.
    Status,
    /// Take a slot (default: for this machine, its /etc/machine-id).
    Lock { id: Option<String> },
    /// Give a slot back: this machine's, or break another machine's.
    Unlock { id: Option<String> },
    /// Set the number of machines that may reboot at once.
    SetMax { max: u32 },
}

/// The id the reboot lock is held under: the one given, else the machine
/// id from `path` (`--machine-id`, `/etc/machine-id` by default).
fn machine_id(given: Option<String>, path: &Path) -> Result<String> {
    if let Some(id) = given {
        return Ok(id);
    }
    let id = std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "reading the machine id {} (or name the machine)",
                path.display()
            )
        })?
        .trim()
        .to_string();
    anyhow::ensure!(!id.is_empty(), "the machine id {} is empty", path.display());
    Ok(id)
}

fn print_lock(s: &cairn_updater::lock::Semaphore) {
    println!("available: {}/{}", s.semaphore, s.max);
    println!(
        "holders: {}",
        if s.holders.is_empty() {
            "none".to_string()
        } else {
            s.holders.join(", ")
        }
    );
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(colour_logs())
        .without_time()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn-update: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Colour in the log lines only for a person at a terminal: stderr is a
/// TTY and `NO_COLOR` is unset or empty (no-color.org). A pipe, a file or
/// the journal gets plain text.
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn agent(p: &PathArgs) -> Result<Agent> {
    let paths = p.paths();
    let mut a = Agent::new(paths).context("loading the update settings and trusted keys")?;
    if let Ok(v) = std::env::var("CAIRN_UPDATE_TEST_ABORT_AFTER") {
        a.abort_after = Some(
            v.parse()
                .with_context(|| format!("CAIRN_UPDATE_TEST_ABORT_AFTER={v:?}: expected bytes"))?,
        );
    }
    Ok(a)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Lock { etcd, cmd } => {
            let etcd = match etcd {
                Some(e) => e,
                None => cairn_updater::Config::load(&cli.paths.config)?
                    .etcd_endpoints
                    .swap_remove(0),
            };
            let lock = cairn_updater::lock::RebootLock::new(&etcd);
            match cmd {
                LockCmd::Status => print_lock(&lock.status().context("reading the reboot lock")?),
                LockCmd::Lock { id } => {
                    let id = machine_id(id, &cli.paths.machine_id)?;
                    let s = lock
                        .lock(&id)
                        .with_context(|| format!("taking the reboot lock for {id}"))?;
                    print_lock(&s);
                }
                LockCmd::Unlock { id } => {
                    let id = machine_id(id, &cli.paths.machine_id)?;
                    let released = lock
                        .unlock(&id)
                        .with_context(|| format!("releasing the reboot lock of {id}"))?;
                    if released {
                        println!("released {id}");
                    } else {
                        println!("{id} held no slot");
                    }
                }
                LockCmd::SetMax { max } => print_lock(
                    &lock
                        .set_max(max)
                        .with_context(|| format!("setting the reboot lock to {max} slots"))?,
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check => {
            let a = agent(&cli.paths)?;
            let (running, _) = a.observe_boot().context("reading the running system")?;
            match a.check(&running) {
                Ok((m, _)) => {
                    println!(
                        "offered: {} {} (running {})",
                        m.name, m.version, running.version
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(cairn_updater::UpdateError::Channel(ChannelError::NotNewer {
                    offered,
                    running,
                })) => {
                    println!("up to date: running {running}, channel offers {offered}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e).context("checking the channel"),
            }
        }
        Cmd::Apply {
            no_reboot,
            lock_poll_secs,
        } => {
            let lock_poll = Duration::from_secs(lock_poll_secs.max(1));
            let a = agent(&cli.paths)?;
            let outcome = a.apply().context("applying the update")?;
            match &outcome {
                Outcome::UpToDate { running, offered } => {
                    println!("up to date: running {running}, channel offers {offered}")
                }
                Outcome::TrialInProgress { version, slot } => {
                    println!("{version} in slot {slot} is on trial: waiting for the health gate")
                }
                Outcome::AlreadyStaged { version, slot } => {
                    println!("{version} is already staged in slot {slot}")
                }
                Outcome::Staged {
                    version,
                    slot,
                    entry,
                } => {
                    println!("staged {version} in slot {slot} (loader/entries/{entry})")
                }
            }
            if outcome.wants_reboot() {
                if no_reboot {
                    println!("not rebooting (--no-reboot)");
                } else {
                    match a.config.may_reboot_now(cairn_updater::fsutil::now()) {
                        Ok(()) if a.config.strategy == Strategy::EtcdLock => {
                            let id = machine_id(None, &cli.paths.machine_id)?;
                            if wait_for_lock(&a.config, &id, lock_poll) {
                                reboot()?
                            }
                        }
                        Ok(()) => reboot()?,
                        Err(why) => println!("not rebooting now: {why}"),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let a = agent(&cli.paths)?;
            let r = a.status().context("reading the update status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r.state)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Health {
            timeout_secs,
            no_bless,
        } => health_gate(&cli.paths, Duration::from_secs(timeout_secs), no_bless),
        Cmd::MarkGood => {
            let a = agent(&cli.paths)?;
            let (running, _) = a.observe_boot()?;
            let s = cairn_updater::state::transition(
                &a.paths.state_file(),
                Event::HealthPassed {
                    running: running.slot,
                },
            )?;
            println!("state: {}", s.phase.name());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Takes a slot of the cluster reboot lock for `id`, as locksmithd did:
/// while the slots are all held (or etcd does not answer, e.g. while another
/// member reboots), asks again every `poll`. True once taken; false when the
/// reboot window closed meanwhile (the next timer run tries again).
fn wait_for_lock(config: &cairn_updater::Config, id: &str, poll: Duration) -> bool {
    let lock = cairn_updater::lock::RebootLock::new(&config.etcd_endpoints[0]);
    let mut last = String::new();
    loop {
        if let Err(why) = config.may_reboot_now(cairn_updater::fsutil::now()) {
            println!("not rebooting now: {why}");
            return false;
        }
        match lock.lock(id) {
            Ok(s) => {
                println!(
                    "took a slot of the cluster reboot lock as {id} (holders: {})",
                    s.holders.join(", ")
                );
                return true;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last {
                    println!("waiting for the cluster reboot lock: {msg}");
                    last = msg;
                }
            }
        }
        std::thread::sleep(poll);
    }
}

fn reboot() -> Result<()> {
    println!("rebooting into the new slot");
    let st = Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("running systemctl reboot")?;
    anyhow::ensure!(st.success(), "systemctl reboot: {st}");
    Ok(())
}

fn health_gate(p: &PathArgs, timeout: Duration, no_bless: bool) -> Result<ExitCode> {
    let a = agent(p)?;
    let (running, state) = a.observe_boot().context("reading the running system")?;
    let on_trial = matches!(state.phase, Phase::Trial { .. });
    let o = HealthOptions::default();
    let start = Instant::now();
    let problems = loop {
        // a check that cannot even run is a problem, not a reason to fail
        // outside a trial
        let problems = health::check_once(&o, &a.paths.cmdline, &a.paths.efivars, &a.paths.esp)
            .unwrap_or_else(|e| vec![format!("running the health checks: {e}")]);
        if problems.is_empty()
            || start.elapsed() >= timeout
            || problems.iter().any(|p| health::is_final(p))
        {
            break problems;
        }
        tracing::info!("not healthy yet ({}); retrying", problems.join("; "));
        std::thread::sleep(Duration::from_secs(5));
    };
    let sf = a.paths.state_file();
    if problems.is_empty() {
        let s = cairn_updater::state::transition(
            &sf,
            Event::HealthPassed {
                running: running.slot,
            },
        )?;
        println!(
            "healthy: slot {} ({}); update state {}",
            running.slot,
            running.version,
            s.phase.name()
        );
        if a.config.strategy == Strategy::EtcdLock {
            // the slot taken before the reboot goes back once the new slot is healthy
            let id = machine_id(None, &p.machine_id)?;
            match cairn_updater::lock::RebootLock::new(&a.config.etcd_endpoints[0]).unlock(&id) {
                Ok(true) => println!("released the cluster reboot lock ({id})"),
                Ok(false) => {}
                Err(e) => tracing::warn!("releasing the cluster reboot lock: {e}"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reason = problems.join("; ");
    if !on_trial {
        // Not a trial boot: nothing to roll back to; report, do not fail
        // the boot (a failed gate would reboot into the same slot).
        tracing::warn!("unhealthy, but no update is on trial: {reason}");
        return Ok(ExitCode::SUCCESS);
    }
    tracing::error!("health gate failed on slot {}: {reason}", running.slot);
    cairn_updater::state::transition(
        &sf,
        Event::HealthFailed {
            running: running.slot,
            reason: reason.clone(),
        },
    )?;
    if !no_bless {
        let bless = "/usr/lib/systemd/systemd-bless-boot";
        match Command::new(bless).arg("bad").status() {
            Ok(s) if s.success() => tracing::info!("entry marked bad ({bless} bad)"),
            Ok(s) => tracing::error!("{bless} bad: {s}"),
            Err(e) => tracing::error!("{bless}: {e}"),
        }
    }
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_id_comes_from_the_given_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("machine-id");
        std::fs::write(&p, "0123abcd\n").unwrap();
        assert_eq!(machine_id(None, &p).unwrap(), "0123abcd");
        assert_eq!(machine_id(Some("other".into()), &p).unwrap(), "other");
        let missing = t.path().join("none");
        let e = format!("{:#}", machine_id(None, &missing).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::write(&p, "\n").unwrap();
        assert!(machine_id(None, &p).is_err());
    }
}
