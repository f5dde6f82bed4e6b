//! The verbs that change units: `submit`, `load`, `start`, `stop`,
//! `unload`, `destroy` (and `cat`), as fleetctl did them: units missing
//! from the registry are created from local files or their template,
//! desired states change through [`transition`] and compare-and-swap
//! ([`Registry::set_desired_state`], retried on conflict a few times), and
//! the verbs that wait poll the agents' state reports as fleet did
//! (attempts of 2 s, a look every 250 ms).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use cairn_fleet::model::{MachineRecord, UnitRecord, UnitStateReport};
use cairn_fleet::registry::{Registry, RegistryError, Versioned};
use cairn_fleet::unit::{
    may_replace, transition, JobState, Transition, Unit, UnitHash, UnitName, Verb,
};

use crate::files::{exists, local_file, read_unit_file, template_file};
use crate::view::{self, legend, running};
use crate::{expand_args, unit_name, BlockOpts, Ctx};

/// Compare-and-swap attempts before giving up on a unit that keeps
/// changing.
const CAS_TRIES: usize = 8;
/// One of fleet's block attempts (its `defaultSleepTime`).
pub const ATTEMPT: Duration = Duration::from_millis(2000);
/// How often a waiting verb looks (fleet's ticker).
pub const POLL: Duration = Duration::from_millis(250);

/// What a waiting verb waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// start: the unit's report says loaded and active.
    Launched,
    /// load: the unit's report says loaded, and it is not running.
    Loaded,
    /// stop: no report says the unit runs.
    Stopped,
    /// unload: no machine reports the unit.
    Unloaded,
}

impl Goal {
    pub fn verb(self) -> Verb {
        match self {
            Goal::Launched => Verb::Start,
            Goal::Loaded => Verb::Load,
            Goal::Stopped => Verb::Stop,
            Goal::Unloaded => Verb::Unload,
        }
    }

    /// The state fleet named in its messages.
    pub fn state(self) -> JobState {
        match self {
            Goal::Launched => JobState::Launched,
            Goal::Loaded | Goal::Stopped => JobState::Loaded,
            Goal::Unloaded => JobState::Inactive,
        }
    }

    /// Whether `reports` (those of the unit) show the goal reached; the
    /// report that shows it, if one does.
    fn reached<'r>(
        self,
        reports: &[&'r UnitStateReport],
        hash: UnitHash,
    ) -> Option<Option<&'r UnitStateReport>> {
        let find = |f: &dyn Fn(&UnitStateReport) -> bool| reports.iter().copied().find(|r| f(r));
        match self {
            Goal::Launched => {
                find(&|r| r.hash == hash && r.load == "loaded" && r.active == "active").map(Some)
            }
            Goal::Loaded => {
                find(&|r| r.hash == hash && r.load == "loaded" && !running(&r.active)).map(Some)
            }
            Goal::Stopped => {
                if reports.iter().any(|r| running(&r.active)) {
                    None
                } else {
                    Some(reports.first().copied())
                }
            }
            Goal::Unloaded => reports.is_empty().then_some(None),
        }
    }
}

fn no_units() -> Result<u8> {
    eprintln!("No units given");
    Ok(0)
}

/// `fleetctl submit UNIT...`.
pub async fn submit(ctx: &Ctx, args: &[String], replace: bool) -> Result<u8> {
    if args.is_empty() {
        return no_units();
    }
    let args = expand_args(args).context("Error creating units")?;
    create_units(ctx, Verb::Submit, &args, replace)
        .await
        .context("Error creating units")?;
    Ok(0)
}

/// `fleetctl load UNIT...` and `fleetctl start UNIT...`.
pub async fn load_or_start(
    ctx: &Ctx,
    goal: Goal,
    args: &[String],
    replace: bool,
    block: BlockOpts,
) -> Result<u8> {
    if args.is_empty() {
        return no_units();
    }
    let verb = goal.verb();
    let args = expand_args(args).context("Error creating units")?;
    let names = create_units(ctx, verb, &args, replace)
        .await
        .context("Error creating units")?;
    let what = if goal == Goal::Launched {
        "Error starting units"
    } else {
        "Error loading units"
    };
    let mut waiting = Vec::new();
    for (name, created) in names {
        // a unit created now was created in the verb's state
        let r = match created {
            Some(r) => r,
            None => match set_state(&ctx.reg, verb, &name).await.context(what)? {
                Some(r) => r,
                None => continue,
            },
        };
        if is_global(&r) {
            println!("Triggered global unit {} {verb}", r.name);
        } else {
            waiting.push(r);
        }
    }
    wait_for(&ctx.reg, &waiting, goal, block)
        .await
        .context("Error waiting for unit states, exit status")?;
    Ok(0)
}

/// `fleetctl stop UNIT...` and `fleetctl unload UNIT...`: units not in
/// the registry are skipped.
pub async fn stop_or_unload(
    ctx: &Ctx,
    goal: Goal,
    args: &[String],
    block: BlockOpts,
) -> Result<u8> {
    if args.is_empty() {
        return no_units();
    }
    let verb = goal.verb();
    let found = find_units(&ctx.reg, args).await?;
    if found.is_empty() {
        eprintln!("Units not found in registry");
        return Ok(0);
    }
    let mut waiting = Vec::new();
    for name in &found {
        let Some(r) = set_state(&ctx.reg, verb, name).await? else {
            continue;
        };
        if is_global(&r) {
            println!("Triggered global unit {} {verb}", r.name);
        } else {
            waiting.push(r);
        }
    }
    let list = waiting
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (failed, done) = if goal == Goal::Stopped {
        ("Failed to stop units", "Successfully stopped units")
    } else {
        ("Failed to unload units", "Successfully unloaded units")
    };
    if let Err(e) = wait_for(&ctx.reg, &waiting, goal, block).await {
        return Err(anyhow!("{failed} [{list}]. err: {e:#}"));
    }
    eprintln!("{done} [{list}].");
    Ok(0)
}

/// `fleetctl destroy UNIT...`: removes the units (their machines stop and
/// unload them); a record that does not read can be destroyed too.
pub async fn destroy(ctx: &Ctx, args: &[String]) -> Result<u8> {
    if args.is_empty() {
        return no_units();
    }
    let mut any = false;
    for arg in expand_args(args).context("Error destroying units")? {
        let name = unit_name(&arg).context("Error destroying units")?;
        match ctx.reg.unit(name.as_str()).await {
            Ok(None) => continue,
            Ok(Some(v)) => {
                // always Remove for a unit that exists
                transition(Verb::Destroy, &name, Some(v.record.desired_state))?;
            }
            Err(RegistryError::Unreadable { error, .. }) => {
                eprintln!("WARNING: Unit {name} does not read ({error}); destroying it");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("Error destroying units: {name}"));
            }
        }
        any = true;
        if ctx
            .reg
            .destroy_unit(name.as_str())
            .await
            .with_context(|| format!("Error destroying units: {name}"))?
        {
            println!("Destroyed {name}");
        }
    }
    if !any {
        eprintln!("Units not found in registry");
    }
    Ok(0)
}

/// `fleetctl cat UNIT`: the unit's text as submitted, byte for byte.
pub async fn cat(ctx: &Ctx, args: &[String]) -> Result<u8> {
    if args.len() != 1 {
        eprintln!("One unit file must be provided");
        return Ok(1);
    }
    let name = unit_name(&args[0]).context("Error retrieving Unit")?;
    let Some(v) = ctx
        .reg
        .unit(name.as_str())
        .await
        .with_context(|| format!("Error retrieving Unit {name}"))?
    else {
        eprintln!("Unit {name} not found");
        return Ok(1);
    };
    let mut out = std::io::stdout().lock();
    out.write_all(v.record.contents.as_bytes())?;
    out.flush()?;
    Ok(0)
}

fn is_global(r: &UnitRecord) -> bool {
    r.unit().is_ok_and(|u| u.is_global())
}

/// fleet's `findUnits`: the names in the registry, in argument order,
/// once each.
async fn find_units(reg: &Registry, args: &[String]) -> Result<Vec<UnitName>> {
    let mut out: Vec<UnitName> = Vec::new();
    for arg in expand_args(args)? {
        let name = unit_name(&arg)?;
        if out.contains(&name) {
            continue;
        }
        let v = reg
            .unit(name.as_str())
            .await
            .with_context(|| format!("Error retrieving Unit({name}) from Registry"))?;
        if v.is_some() {
            out.push(name);
        }
    }
    Ok(out)
}

/// fleet's `lazyCreateUnits`: makes sure every argument's unit is in the
/// registry. A unit already there is left as it is (a local file that
/// differs is warned about, or replaced with `--replace` where fleet
/// allowed it); a missing one is created from the file at the argument's
/// path, else (an instance) from its template in the registry or beside
/// the argument, with the verb's desired state.
pub async fn create_units(
    ctx: &Ctx,
    verb: Verb,
    args: &[String],
    replace: bool,
) -> Result<Vec<(UnitName, Option<UnitRecord>)>> {
    let mut names: Vec<(UnitName, Option<UnitRecord>)> = Vec::new();
    for arg in args {
        let name = unit_name(arg)?;
        if names.iter().any(|(n, _)| n == &name) {
            continue;
        }
        // refuse templates before anything is written
        let Transition::Create { desired } = transition(verb, &name, None)? else {
            unreachable!("a unit not in the registry is created");
        };
        let existing = ctx
            .reg
            .unit(name.as_str())
            .await
            .with_context(|| format!("error retrieving Unit({name}) from Registry"))?;
        let created = match existing {
            Some(v) => {
                check_existing(ctx, verb, arg, &name, v, replace).await?;
                None
            }
            None => {
                let (text, from) = unit_text(ctx, arg, &name).await?;
                let record = UnitRecord::submit(name.as_str(), text, desired)
                    .map_err(|e| anyhow!("Unit({name}) from {from}: {e}"))?;
                let raced = ctx
                    .reg
                    .create_unit(&record)
                    .await
                    .with_context(|| format!("failed creating unit {name}"))?;
                if raced.is_some() {
                    tracing::debug!("Unit({name}) was created meanwhile; using it");
                    None
                } else {
                    tracing::debug!("Created Unit({name}) in Registry as {desired}");
                    Some(record)
                }
            }
        };
        names.push((name, created));
    }
    Ok(names)
}

/// The text for a unit not in the registry, and where it came from.
async fn unit_text(ctx: &Ctx, arg: &str, name: &UnitName) -> Result<(String, String)> {
    let path = Path::new(arg);
    if exists(path) {
        let text = read_unit_file(path)
            .with_context(|| format!("failed getting Unit({name}) from file"))?;
        return Ok((text, format!("file {arg}")));
    }
    let Some(template) = name.template().filter(|_| name.is_instance()) else {
        bail!("unable to find Unit({name}) in Registry or on filesystem");
    };
    let t = ctx
        .reg
        .unit(&template)
        .await
        .with_context(|| format!("error retrieving template Unit({template}) from Registry"))?;
    if let Some(t) = t {
        return Ok((
            t.record.contents,
            format!("template {template} in the registry"),
        ));
    }
    let Some(file) = template_file(arg, name) else {
        bail!("unable to find template Unit({template}) in Registry or on filesystem");
    };
    let text = read_unit_file(&file)
        .with_context(|| format!("unable to load template Unit({template}) from file"))?;
    Ok((text, format!("template file {}", file.display())))
}

/// fleet's `checkUnitCreation` for a unit already in the registry.
async fn check_existing(
    ctx: &Ctx,
    verb: Verb,
    arg: &str,
    name: &UnitName,
    v: Versioned<UnitRecord>,
    replace: bool,
) -> Result<()> {
    let Some(file) = local_file(arg, name) else {
        return Ok(());
    };
    let templ = file != Path::new(arg);
    let text = read_unit_file(&file)?;
    let local = Unit::parse(name.as_str(), text.as_str());
    let same = local.as_ref().is_ok_and(|u| u.hash() == v.record.hash);
    if same {
        if replace {
            println!("Found same Unit({name}) in Registry, nothing to do");
        }
        return Ok(());
    }
    if !replace {
        let kind = if templ {
            "local template unit file"
        } else {
            "local unit file"
        };
        eprintln!("WARNING: Unit {name} in registry differs from {kind} {arg}. Add --replace to override.");
        return Ok(());
    }
    local.map_err(|e| anyhow!("Unit({name}) from file {}: {e}", file.display()))?;
    if let Err(e) = may_replace(verb, name, v.record.desired_state) {
        eprintln!("Warning: {e}");
        return Ok(());
    }
    let record = UnitRecord::submit(name.as_str(), text, v.record.desired_state)
        .map_err(|e| anyhow!("Unit({name}) from file {}: {e}", file.display()))?;
    // set_desired_state writes the whole record if it did not change
    // since it was read: here, the new text with the desired state kept
    let desired = record.desired_state;
    let swap = Versioned {
        record,
        mod_revision: v.mod_revision,
    };
    match ctx.reg.set_desired_state(&swap, desired).await {
        Ok(()) => {
            tracing::debug!("Replaced Unit({name}) in Registry");
            Ok(())
        }
        Err(RegistryError::Conflict { .. }) => {
            bail!("Unit {name} changed in the registry while it was being replaced; try again")
        }
        Err(e) => Err(e).with_context(|| format!("failed replacing unit {name}")),
    }
}

/// Sets the desired state `verb` asks of `name`, by compare-and-swap;
/// the record as written, or `None` when nothing changed.
pub async fn set_state(reg: &Registry, verb: Verb, name: &UnitName) -> Result<Option<UnitRecord>> {
    for _ in 0..CAS_TRIES {
        let Some(v) = reg
            .unit(name.as_str())
            .await
            .with_context(|| format!("error retrieving unit {name} from registry"))?
        else {
            bail!("unable to find unit {name}");
        };
        match transition(verb, name, Some(v.record.desired_state))? {
            Transition::Unchanged { desired } => {
                tracing::debug!("Unit({name}) already {desired}, skipping.");
                return Ok(None);
            }
            Transition::SetDesired { to, .. } => match reg.set_desired_state(&v, to).await {
                Ok(()) => {
                    tracing::debug!("Set target state of Unit({name}) to {to}");
                    let mut r = v.record;
                    r.desired_state = to;
                    return Ok(Some(r));
                }
                Err(RegistryError::Conflict { .. }) => continue,
                Err(e) => return Err(e).with_context(|| format!("setting the state of {name}")),
            },
            t => bail!("{verb} {name}: unexpected {t:?}"),
        }
    }
    bail!("unit {name} kept changing while its state was being set ({CAS_TRIES} tries)")
}

/// Waits until every unit reached `goal` (in the agents' reports),
/// printing a line for each as fleet did, within `--block-attempts`
/// attempts of 2 s (no limit when 0); with `--no-block` only says the
/// units were triggered.
pub async fn wait_for(
    reg: &Registry,
    units: &[UnitRecord],
    goal: Goal,
    block: BlockOpts,
) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    let verb = goal.verb();
    if block.no_block {
        for u in units {
            println!("Triggered unit {} {verb}", u.name);
        }
        return Ok(());
    }
    let deadline =
        (block.block_attempts > 0).then(|| Instant::now() + ATTEMPT * block.block_attempts);
    let mut pending: BTreeMap<&str, UnitHash> =
        units.iter().map(|u| (u.name.as_str(), u.hash)).collect();
    let mut machines: Option<BTreeMap<String, MachineRecord>> = None;
    loop {
        tokio::time::sleep(POLL).await;
        match view::reports(reg).await {
            Ok(reports) => {
                let mut done = Vec::new();
                for (&name, &hash) in &pending {
                    let mine: Vec<&UnitStateReport> =
                        reports.iter().filter(|r| r.unit == name).collect();
                    let Some(report) = goal.reached(&mine, hash) else {
                        continue;
                    };
                    let mut line = format!("Unit {name} {}", goal.state());
                    if let Some(r) = report {
                        if machines.is_none() {
                            machines = Some(view::machines(reg).await.unwrap_or_default());
                        }
                        let m = machines.as_ref().and_then(|m| m.get(&r.machine));
                        line = format!("{line} on {}", legend(m, &r.machine, false));
                    }
                    println!("{line}");
                    done.push(name);
                }
                for name in done {
                    pending.remove(name);
                }
                if pending.is_empty() {
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!("Retrying assertion of states: {e:#}"),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let name = pending.keys().next().expect("pending units");
            bail!(
                "timed out waiting for unit {name} to report state {}",
                goal.state()
            );
        }
    }
}
