//! `cairn-update`: the on-host A/B update agent (check, apply, status,
//! health, mark-good) on top of the `cairn_updater` library. Owns argument
//! parsing, logging, exit codes and the reboot command; everything else is
//! the library's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_formats::channel::ChannelError;
use cairn_updater::agent::{Agent, Outcome, Paths, SlotDevices};
use cairn_updater::gate::{Gate, Verdict};
use cairn_updater::state::Event;
use cairn_updater::strategy::{self, Decision, Facts};
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
    #[arg(long, global = true, default_value = "/proc/net/route")]
    proc_net_route: PathBuf,
    #[arg(long, global = true, default_value = "/sys/class/net")]
    sys_class_net: PathBuf,
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
            proc_net_route: self.proc_net_route.clone(),
            sys_class_net: self.sys_class_net.clone(),
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
    /// Install the image `cairn serve` names to this machine's disk, report
    /// to the server, reboot (cairn-install.service on a machine netbooted
    /// with `boot: install`; every value defaults to the kernel command
    /// line's `cairn.install*`).
    Install(InstallArgs),
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

#[derive(Args)]
struct InstallArgs {
    /// The server's base URL (cairn.install=).
    #[arg(long)]
    server: Option<String>,
    /// The image's NAME-VERSION (cairn.install.image=).
    #[arg(long)]
    image: Option<String>,
    /// The disk rule (cairn.install.disk=; default first-empty).
    #[arg(long)]
    disk: Option<String>,
    /// Write over a disk that holds data (cairn.install.overwrite=1).
    #[arg(long)]
    overwrite: bool,
    /// The MAC address the server knows this machine by (cairn.install.mac=).
    #[arg(long)]
    mac: Option<String>,
    /// Do not reboot once installed.
    #[arg(long)]
    no_reboot: bool,
    /// Where sysfs and /dev are (tests).
    #[arg(long, default_value = "/sys", hide = true)]
    sys: PathBuf,
    #[arg(long, default_value = "/dev", hide = true)]
    dev: PathBuf,
}

/// `cairn-update install`: exit 0 installed (rebooting), 2 refused (nothing
/// written: the reason is on the console and with the server), 1 failed.
fn install(paths: &PathArgs, a: InstallArgs) -> Result<ExitCode> {
    use cairn_formats::cmdline as k;
    let cmdline = std::fs::read_to_string(&paths.cmdline)
        .with_context(|| format!("reading {}", paths.cmdline.display()))?;
    let from = |given: Option<String>, key: &str| given.or_else(|| k::value(&cmdline, key));
    let server = from(a.server, k::INSTALL)
        .with_context(|| format!("no server: pass --server or boot with {}=URL", k::INSTALL))?;
    let image = from(a.image, k::INSTALL_IMAGE).with_context(|| {
        format!(
            "no image: pass --image or boot with {}=NAME-VERSION",
            k::INSTALL_IMAGE
        )
    })?;
    let rule_text = from(a.disk, k::INSTALL_DISK).unwrap_or_else(|| "first-empty".into());
    let rule = cairn_install::Rule::parse(&rule_text).context("the disk rule")?;
    let overwrite = a.overwrite || k::value(&cmdline, k::INSTALL_OVERWRITE).as_deref() == Some("1");
    let mac = from(a.mac, k::INSTALL_MAC)
        .and_then(|m| cairn_formats::lifecycle::normalize_mac(&m))
        .with_context(|| {
            format!(
                "no MAC address: pass --mac or boot with {}=MAC",
                k::INSTALL_MAC
            )
        })?;
    let machine_id = std::fs::read_to_string(&paths.machine_id)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 32);
    let (name, version) = image
        .rsplit_once('-')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .unwrap_or((image.clone(), String::new()));
    let opts = cairn_install::Options {
        rule,
        allow_overwrite: overwrite,
        image: name,
        version,
        roots: cairn_install::Roots {
            sys: a.sys,
            dev: a.dev,
        },
    };
    let reporter = cairn_install::Reporter::new(Some(&server), &mac, machine_id);
    let mut src = cairn_install::HttpSource::new(&server, &image);
    let map = match src.map() {
        Ok(m) => m,
        Err(e) => {
            reporter.send(cairn_formats::lifecycle::Event::InstallFailed {
                reason: e.to_string(),
            });
            return Err(e).context("reading the image's disk map");
        }
    };
    tracing::info!(
        "installing {image} from {server}: {} MiB of data in {} pieces, disk rule {}{}",
        map.data_bytes() >> 20,
        map.extents.len(),
        opts.rule.describe(),
        if overwrite { ", overwriting" } else { "" }
    );
    let mut last = 0u64;
    let mut progress = |done: u64, total: u64| {
        let pct = done * 100 / total.max(1);
        if pct >= last + 10 || done == total {
            last = pct;
            tracing::info!("written {pct}% ({} of {} MiB)", done >> 20, total >> 20);
        }
    };
    // the installed system reports its boots to the same server
    let handoff = cairn_install::handoff::Handoff {
        server: server.clone(),
        mac: mac.clone(),
    };
    match cairn_install::install_with(
        &opts,
        &map,
        &mut src,
        &reporter,
        &mut progress,
        Some(&handoff),
    ) {
        Ok(done) => {
            println!(
                "cairn-install: installed {image} to {} ({} MiB written in {:.1} s, read back in {:.1} s)",
                done.disk.dev.display(),
                done.written.bytes >> 20,
                done.written.write.as_secs_f64(),
                done.written.verify.as_secs_f64()
            );
            if !a.no_reboot {
                strategy::reboot()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_refusal() => {
            println!("cairn-install: not installing: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e).context("installing"),
    }
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
/// The lock holder's name: the one given, else the machine id.
fn machine_id(given: Option<String>, path: &Path) -> Result<String> {
    match given {
        Some(id) => Ok(id),
        None => strategy::machine_id(path).context("reading the machine id (or name the machine)"),
    }
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
            eprintln!(
                "cairn-update: error: {}",
                cairn_formats::report::Chain(e.as_ref())
            );
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
        Cmd::Install(a) => install(&cli.paths, a),
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
                    let s = strategy::for_config(&a.config, &a.paths.machine_id, lock_poll)?;
                    let cx = Facts {
                        config: &a.config,
                        now: cairn_updater::fsutil::now,
                    };
                    match s.before_reboot(&cx) {
                        Decision::Reboot => strategy::reboot()?,
                        Decision::NotNow(why) => println!("not rebooting now: {why}"),
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

/// How long one boot report may take: the gate must not wait on a
/// server that is down.
const BOOT_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reporter of a machine `cairn serve` installed (its hand-off on the
/// ESP names the server and MAC), with what runs; `None` for any other
/// machine, or when the hand-off does not read (logged: reports never
/// fail the gate).
fn boot_reporter(a: &Agent) -> Option<(cairn_install::Reporter, cairn_updater::agent::Running)> {
    let id = a.server_identity()?;
    let running = match a.running() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("not reporting to {}: {e}", id.server);
            return None;
        }
    };
    let machine_id = std::fs::read_to_string(&a.paths.machine_id)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 32);
    Some((
        cairn_install::Reporter::quick(&id.server, &id.mac, machine_id, BOOT_REPORT_TIMEOUT),
        running,
    ))
}

fn health_gate(p: &PathArgs, timeout: Duration, no_bless: bool) -> Result<ExitCode> {
    use cairn_formats::cmdline as k;
    use cairn_formats::lifecycle::{BootSource, Event as Report};
    let cmdline = std::fs::read_to_string(&p.cmdline)
        .with_context(|| format!("reading {}", p.cmdline.display()))?;
    if k::value(&cmdline, k::SLOT).is_none() {
        if let Some(server) = k::value(&cmdline, k::REPORT) {
            return diskless_health(p, &cmdline, &server, timeout);
        }
    }
    let a = agent(p)?;
    let reporter = boot_reporter(&a);
    if let Some((r, running)) = &reporter {
        let source = match running.slot {
            cairn_formats::partitions::Slot::A => BootSource::A,
            cairn_formats::partitions::Slot::B => BootSource::B,
        };
        if r.send(Report::Booted {
            image: running.name.clone(),
            version: running.version.clone(),
            source,
        }) {
            println!(
                "reported to the install server: booted {} {} from slot {}",
                running.name, running.version, running.slot
            );
        }
    }
    if let Some((r, running)) = &reporter {
        // This boot may be the fallback after an update that did not
        // boot or failed its gate: say so, once (until the server has it).
        let (_, st) = a.observe_boot().context("reading the running system")?;
        if let Some((version, event)) = rolled_back_report(&st, &running.version) {
            if r.send(event) {
                println!("reported to the install server: {version} rolled back");
                cairn_updater::state::transition(
                    &a.paths.state_file(),
                    Event::RollbackReported { version },
                )?;
            }
        }
    }
    let s = strategy::for_config(&a.config, &a.paths.machine_id, Duration::from_secs(15))?;
    let gate = Gate {
        timeout,
        no_bless,
        strategy: &*s,
        facts: Facts {
            config: &a.config,
            now: cairn_updater::fsutil::now,
        },
    };
    let verdict = gate.run(&a).context("running the health gate")?;
    if let Some((r, running)) = &reporter {
        let version = running.version.clone();
        let (event, what) = match &verdict {
            Verdict::Healthy => (Report::Healthy { version }, "healthy".to_string()),
            Verdict::UnhealthyNoTrial(reason) | Verdict::Failed(reason) => (
                Report::Unhealthy {
                    version,
                    reason: reason.clone(),
                },
                format!("unhealthy: {reason}"),
            ),
        };
        if r.send(event) {
            println!("reported to the install server: {what}");
        }
    }
    match verdict {
        Verdict::Healthy | Verdict::UnhealthyNoTrial(_) => Ok(ExitCode::SUCCESS),
        Verdict::Failed(_) => Ok(ExitCode::from(1)),
    }
}

/// The health gate of a diskless machine (`cairn.report=` on the command
/// line, no `cairn.slot=`): it has no slots, the server that netbooted it
/// keeps its A/B record. Reports the boot, runs the checks that do not
/// need slots, reports the verdict. A failed gate exits 1 (so
/// `FailureAction=reboot` netboots the machine again, into the server's
/// earlier image) only on a trial with such an image to come back to
/// (`cairn.report.trial=1`); otherwise a reboot would bring the same
/// image back, so it only reports.
fn diskless_health(
    p: &PathArgs,
    cmdline: &str,
    server: &str,
    timeout: Duration,
) -> Result<ExitCode> {
    use cairn_formats::cmdline as k;
    use cairn_formats::lifecycle::{BootSource, Event as Report};
    use cairn_updater::health;
    let mac = k::value(cmdline, k::REPORT_MAC).with_context(|| {
        format!(
            "{}: {}= without {}= (the MAC the server knows this machine by)",
            p.cmdline.display(),
            k::REPORT,
            k::REPORT_MAC
        )
    })?;
    let mac = cairn_formats::lifecycle::normalize_mac(&mac).with_context(|| {
        format!(
            "{}: {}={mac:?}: expected a MAC address",
            p.cmdline.display(),
            k::REPORT_MAC
        )
    })?;
    let trial = k::value(cmdline, k::REPORT_TRIAL).as_deref() == Some("1");
    let text = std::fs::read_to_string(&p.os_release)
        .with_context(|| format!("reading {}", p.os_release.display()))?;
    let get = |key: &str| {
        cairn_updater::agent::os_release_value(&text, key)
            .with_context(|| format!("{}: no {key}= line", p.os_release.display()))
    };
    let (image, version) = (get("IMAGE_ID")?, get("IMAGE_VERSION")?);
    let machine_id = std::fs::read_to_string(&p.machine_id)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 32);
    let r = cairn_install::Reporter::quick(server, &mac, machine_id, BOOT_REPORT_TIMEOUT);
    if r.send(Report::Booted {
        image: image.clone(),
        version: version.clone(),
        source: BootSource::Ram,
    }) {
        println!("reported to {server}: booted {image} {version} diskless");
    }
    let o = health::HealthOptions::default();
    let problems = health::retry(timeout, Duration::from_secs(5), || {
        health::check_services(&o)
    });
    let reason = problems.join("; ");
    let (event, what) = if problems.is_empty() {
        (
            Report::Healthy {
                version: version.clone(),
            },
            "healthy".to_string(),
        )
    } else {
        (
            Report::Unhealthy {
                version: version.clone(),
                reason: reason.clone(),
            },
            format!("unhealthy: {reason}"),
        )
    };
    if r.send(event) {
        println!("reported to {server}: {what}");
    }
    if problems.is_empty() {
        println!("healthy: {image} {version} (diskless)");
        Ok(ExitCode::SUCCESS)
    } else if trial {
        tracing::error!(
            "health gate failed on a trial of {version}: failing (the reboot netboots the server's earlier image): {reason}"
        );
        Ok(ExitCode::from(1))
    } else {
        tracing::warn!(
            "unhealthy, but the server has no earlier image that was healthy here: {reason}"
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The report of a rollback not reported yet: the state is
/// `rolled_back` (the boot that found it, or a later one if the server
/// did not answer then) and the install server has not been told.
fn rolled_back_report(
    st: &cairn_updater::state::State,
    running_version: &str,
) -> Option<(String, cairn_formats::lifecycle::Event)> {
    match &st.phase {
        cairn_updater::state::Phase::RolledBack {
            version, reason, ..
        } if st.rollback_reported.as_ref() != Some(version) => Some((
            version.clone(),
            cairn_formats::lifecycle::Event::RolledBack {
                version: version.clone(),
                to_version: running_version.to_string(),
                reason: reason.clone(),
            },
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_is_reported_until_the_server_has_it() {
        use cairn_formats::lifecycle::Event as Report;
        use cairn_formats::partitions::Slot;
        use cairn_updater::state::{Phase, State};
        let trial = State {
            phase: Phase::Trial {
                version: "2.0".into(),
                slot: Slot::B,
                health: Some("etcd did not answer".into()),
            },
            ..State::default()
        };
        assert_eq!(rolled_back_report(&trial, "1.0"), None);
        let back = trial
            .apply(
                Event::Booted {
                    running: Slot::A,
                    boot_id: "b2".into(),
                    entry_note: None,
                },
                1_764_208_000,
            )
            .unwrap();
        let (version, report) = rolled_back_report(&back, "1.0").unwrap();
        assert_eq!(version, "2.0");
        assert_eq!(
            report,
            Report::RolledBack {
                version: "2.0".into(),
                to_version: "1.0".into(),
                reason: "health gate failed on slot b: etcd did not answer".into(),
            }
        );
        // told: not again; another version's rollback is told again
        let told = back
            .apply(Event::RollbackReported { version }, 1_764_208_001)
            .unwrap();
        assert_eq!(told.rollback_reported.as_deref(), Some("2.0"));
        assert_eq!(rolled_back_report(&told, "1.0"), None);
        let wrong = back
            .apply(
                Event::RollbackReported {
                    version: "3.0".into(),
                },
                1_764_208_001,
            )
            .unwrap();
        assert_eq!(wrong, back);
        assert_eq!(rolled_back_report(&State::default(), "1.0"), None);
    }

    #[test]
    fn a_given_machine_name_wins_over_the_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("machine-id");
        std::fs::write(&p, "0123abcd\n").unwrap();
        assert_eq!(machine_id(None, &p).unwrap(), "0123abcd");
        assert_eq!(machine_id(Some("other".into()), &p).unwrap(), "other");
        let missing = t.path().join("none");
        let e = format!("{:#}", machine_id(None, &missing).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }
}
