//! The real backend: systemd over D-Bus with `zbus` (pure Rust, on tokio).
//!
//! What it does, and which systemd calls (`org.freedesktop.systemd1.Manager`
//! on `/org/freedesktop/systemd1`):
//!
//! * **load**: the file is written atomically into the units directory
//!   ([`UnitsDir`]), linked as a runtime unit (`LinkUnitFiles([path],
//!   runtime=true, force=true)`, i.e. `systemctl link --runtime`; also
//!   `EnableUnitFiles` when the unit has an `[Install]` section, as fleet
//!   did), then `Reload` (daemon-reload), shared by all loads that queued
//!   while one ran ([`super::reload`]), then one `ListUnitsByNames` for the
//!   state and the unit's `FragmentPath`: a unit of the same name that
//!   systemd prefers (in `/etc/systemd/system`) is refused as shadowing
//!   ours. Loading the same text again does nothing.
//! * **unload**: `StopUnit(name, "replace")` if the unit runs, waiting (at
//!   most [`DbusOptions::stop_timeout`]) until the signals say it stopped;
//!   `DisableUnitFiles([name], runtime=true)` removes the links,
//!   `ResetFailedUnit` clears a failure, the file is removed, `Reload`.
//! * **start**/**stop**: `StartUnit`/`StopUnit` with mode `replace`; only
//!   for managed units.
//! * **states**: kept from signals, never polled. After `Subscribe`, one
//!   match rule delivers `PropertiesChanged` of every unit object
//!   (`path_namespace=/org/freedesktop/systemd1/unit`; systemd puts the new
//!   `LoadState`/`ActiveState`/`SubState` values in the signal), filtered
//!   here to the managed units (one rule, not one per unit: the system bus
//!   limits match rules per connection). `JobRemoved` of a managed unit,
//!   `Reloading(false)` and a new owner of the systemd name (daemon-reexec)
//!   ask for a state refresh, which a second task answers with one
//!   `ListUnitsByNames` for all units asked about meanwhile. `UnitNew` is
//!   not answered with a query (asking loads the unit, systemd drops the
//!   idle unit again, and the next `UnitNew` would ask again, forever);
//!   `UnitRemoved` (systemd unloaded an unused, inactive unit from memory)
//!   makes it `inactive`/`dead`.
//!
//! The signal task never waits on a D-Bus reply: zbus's reader stops when
//! a signal stream is full, and a task that waited for a reply while its
//! own stream filled would wait forever. The refresh task does the calls.
//! A refresh answer may be older than a signal handled meanwhile; the
//! next signal (systemd sends one for every later change) sets it right.
//!
//! Operations on one unit are expected one at a time (the agent's
//! reconciler does so); operations on different units may overlap freely.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use sha1::{Digest, Sha1};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use super::dir::UnitsDir;
use super::reload::Coalescer;
use super::{
    check_unit_name, DbusError, SystemdError, UnitManager, UnitState, UnitStates, DEFAULT_UNITS_DIR,
};

/// systemd's bus name.
pub const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
/// The manager object.
pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
/// Where unit objects live: `UNIT_PATH_PREFIX/` + [`unit_object_path`]'s
/// escaped name.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
/// Where `LinkUnitFiles(runtime=true)` puts its links (system manager).
const RUNTIME_UNIT_DIR: &str = "/run/systemd/system";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// Messages a signal stream may hold before zbus's reader waits for us.
const SIGNAL_QUEUE: usize = 8192;

/// One row of `ListUnitsByNames`: name, description, load state, active
/// state, sub state, followed unit, object path, job id, job type, job path.
type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// The part of `org.freedesktop.systemd1.Manager` the agent uses, with
/// systemd's signatures (`man org.freedesktop.systemd1`).
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn link_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<ListedUnit>>;
}

/// How to reach systemd and where to keep unit files.
#[derive(Debug, Clone)]
pub struct DbusOptions {
    /// The units directory ([`DEFAULT_UNITS_DIR`]).
    pub units_dir: PathBuf,
    /// A D-Bus address (`unix:path=...`) instead of the system bus: for
    /// tests and for a systemd reached another way. It must be a bus (with
    /// match rules), not systemd's private peer-to-peer socket.
    pub address: Option<String>,
    /// How long unload waits for a running unit to stop.
    pub stop_timeout: Duration,
    /// How long any one D-Bus call may take (a daemon-reload on a busy
    /// machine takes seconds).
    pub call_timeout: Duration,
}

impl Default for DbusOptions {
    fn default() -> Self {
        DbusOptions {
            units_dir: PathBuf::from(DEFAULT_UNITS_DIR),
            address: None,
            // systemd's default stop timeout is 90 s; a little more.
            stop_timeout: Duration::from_secs(100),
            call_timeout: Duration::from_secs(120),
        }
    }
}

/// systemd's object path for unit `name`: systemd's `bus_label_escape`
/// (every byte but ASCII letters, and digits not in first place, as `_xx`
/// in lower-case hex) under [`UNIT_PATH_PREFIX`].
pub fn unit_object_path(name: &str) -> String {
    let mut out = String::with_capacity(UNIT_PATH_PREFIX.len() + 1 + name.len() * 3);
    out.push_str(UNIT_PATH_PREFIX);
    out.push('/');
    if name.is_empty() {
        out.push('_');
        return out;
    }
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push('_');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The managed units: their file digests and object paths.
#[derive(Debug, Default)]
struct Managed {
    /// name -> SHA-1 of the text in its file (`None`: not loaded
    /// successfully, so the next load goes through whatever the text).
    digests: HashMap<String, Option<[u8; 20]>>,
    /// object path -> name, to match signals.
    paths: HashMap<String, String>,
    /// name -> the file systemd loads instead of ours (see
    /// [`DbusUnitManager::check_fragment`]): never started, stopped or
    /// reset through us, since that would act on someone else's unit.
    shadowed: HashMap<String, String>,
}

impl Managed {
    fn add(&mut self, name: &str, digest: Option<[u8; 20]>) {
        self.digests.insert(name.to_string(), digest);
        self.paths.insert(unit_object_path(name), name.to_string());
    }

    fn remove(&mut self, name: &str) {
        self.digests.remove(name);
        self.paths.remove(&unit_object_path(name));
        self.shadowed.remove(name);
    }
}

/// State refreshes asked for and not yet answered.
#[derive(Default)]
struct RefreshQueue {
    pending: Mutex<Refreshes>,
    wake: Notify,
}

#[derive(Default)]
struct Refreshes {
    names: BTreeSet<String>,
    all: bool,
    resubscribe: bool,
    waiters: Vec<oneshot::Sender<Result<(), DbusError>>>,
}

struct Shared {
    manager: ManagerProxy<'static>,
    dir: Arc<UnitsDir>,
    managed: Mutex<Managed>,
    states: watch::Sender<UnitStates>,
    reload: Coalescer<DbusError>,
    refresh: RefreshQueue,
    /// Cleared when the signal stream ends (the bus connection is gone).
    connected: AtomicBool,
    options: DbusOptions,
}

/// Aborts the background tasks when the manager goes away.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The D-Bus backend (see the module documentation).
pub struct DbusUnitManager {
    shared: Arc<Shared>,
    _tasks: Tasks,
}

impl DbusUnitManager {
    /// Opens (creating) the units directory, connects to systemd,
    /// subscribes to its signals and adopts the units already in the
    /// directory (a restarted agent finds its units as it left them).
    pub async fn connect(options: DbusOptions) -> Result<DbusUnitManager, SystemdError> {
        // The directory first: an unsafe directory is refused before
        // anything else happens.
        let dir = UnitsDir::open(&options.units_dir)?;
        let builder = match &options.address {
            Some(a) => zbus::connection::Builder::address(a.as_str()),
            None => zbus::connection::Builder::system(),
        }
        .map_err(SystemdError::bus("connect"))?;
        let conn = builder
            .method_timeout(options.call_timeout)
            .build()
            .await
            .map_err(SystemdError::bus("connect"))?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(SystemdError::bus("connect"))?;

        // Match rules before Subscribe: no signal falls between the two.
        let streams = Streams::open(&conn)
            .await
            .map_err(SystemdError::bus("AddMatch"))?;
        subscribe(&manager)
            .await
            .map_err(SystemdError::bus("Subscribe"))?;

        // The files a previous run left: managed again, with their digests,
        // so loading the same text again costs nothing.
        let mut managed = Managed::default();
        for name in dir.list()? {
            let digest = dir
                .read(&name)?
                .map(|text| <[u8; 20]>::from(Sha1::digest(&text)));
            managed.add(&name, digest);
        }
        let shared = Arc::new(Shared {
            manager,
            dir: Arc::new(dir),
            managed: Mutex::new(managed),
            states: watch::Sender::new(UnitStates::new()),
            reload: Coalescer::new(),
            refresh: RefreshQueue::default(),
            connected: AtomicBool::new(true),
            options,
        });
        let tasks = Tasks(vec![
            tokio::spawn(streams.pump(shared.clone())),
            tokio::spawn(refresher(shared.clone())),
        ]);
        let manager = DbusUnitManager {
            shared,
            _tasks: tasks,
        };
        manager
            .shared
            .refresh_wait(Vec::new(), true)
            .await
            .map_err(|source| SystemdError::Bus {
                call: "ListUnitsByNames",
                source,
            })?;
        Ok(manager)
    }

    /// The units directory in use.
    pub fn units_dir(&self) -> &std::path::Path {
        self.shared.dir.path()
    }

    /// Whether the bus connection still delivers systemd's signals. When
    /// it does not (the bus or the connection went away), states no longer
    /// change: drop this manager and connect again (the units directory
    /// brings the units back).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// How many daemon-reloads this manager asked for.
    pub fn reloads(&self) -> u64 {
        self.shared.reload.runs()
    }

    /// Asks systemd again for the state of every managed unit (one call).
    /// Not needed in normal operation; for an agent that wants to be sure.
    pub async fn refresh_all(&self) -> Result<(), SystemdError> {
        self.shared
            .refresh_wait(Vec::new(), true)
            .await
            .map_err(|source| SystemdError::Bus {
                call: "ListUnitsByNames",
                source,
            })
    }

    /// Refuses a loaded unit that systemd reads from another file than
    /// ours: a unit of the same name in a directory systemd prefers
    /// (`/etc/systemd/system`, `/run/systemd/transient`, ...) shadows the
    /// runtime link, and starting it would run the administrator's unit
    /// while fleet reports its own as running. systemd reports a linked
    /// unit's `FragmentPath` as the link's target before version 248 and
    /// as the link itself since; both are ours.
    async fn check_fragment(&self, name: &str) -> Result<(), SystemdError> {
        let loaded = self
            .shared
            .states
            .borrow()
            .get(name)
            .is_some_and(|s| s.load_state == "loaded");
        if !loaded {
            // Not found, a bad setting, masked: the state says so.
            return Ok(());
        }
        let conn = self.shared.manager.inner().connection();
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(SYSTEMD_SERVICE)
            .and_then(|b| b.path(unit_object_path(name)))
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
            .map_err(SystemdError::call(name, "Get(FragmentPath)"))?
            .build()
            .await
            .map_err(SystemdError::call(name, "Get(FragmentPath)"))?;
        let value = props
            .get(
                zbus::names::InterfaceName::from_static_str_unchecked(UNIT_INTERFACE),
                "FragmentPath",
            )
            .await
            .map_err(|e| SystemdError::call(name, "Get(FragmentPath)")(e.into()))?;
        let fragment = value_str(&value).unwrap_or_default();
        let ours = self.shared.dir.unit_path(name);
        let link = format!("{RUNTIME_UNIT_DIR}/{name}");
        let mut managed = self.shared.lock();
        if fragment.is_empty() || Path::new(&fragment) == ours || fragment == link {
            managed.shadowed.remove(name);
            return Ok(());
        }
        managed.shadowed.insert(name.to_string(), fragment.clone());
        Err(SystemdError::Shadowed {
            unit: name.to_string(),
            fragment,
            ours,
        })
    }

    /// Managed, and not known to be shadowed.
    fn require_managed(&self, name: &str) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        let managed = self.shared.lock();
        if !managed.digests.contains_key(name) {
            return Err(SystemdError::NotManaged {
                unit: name.to_string(),
            });
        }
        if let Some(fragment) = managed.shadowed.get(name) {
            return Err(SystemdError::Shadowed {
                unit: name.to_string(),
                fragment: fragment.clone(),
                ours: self.shared.dir.unit_path(name),
            });
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&UnitsDir) -> Result<T, SystemdError> + Send + 'static,
    ) -> Result<T, SystemdError> {
        let dir = self.shared.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|_| SystemdError::FileTask {
                unit: name.to_string(),
            })?
    }
}

async fn subscribe(manager: &ManagerProxy<'_>) -> zbus::Result<()> {
    match manager.subscribe().await {
        Err(zbus::Error::MethodError(n, _, _))
            if n.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" =>
        {
            Ok(())
        }
        other => other,
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == NO_SUCH_UNIT)
}

/// Whether the unit has an `[Install]` section (fleet enabled those).
fn has_install_section(contents: &str) -> bool {
    contents.lines().any(|l| l.trim() == "[Install]")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Managed> {
        self.managed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A daemon-reload for `unit`'s change, shared with the changes of
    /// other units made meanwhile ([`Coalescer`]).
    async fn daemon_reload(&self, unit: &str) -> Result<(), SystemdError> {
        self.reload
            .run(|| async { self.manager.reload().await.map_err(Arc::new) })
            .await
            .map_err(|source| SystemdError::Call {
                unit: unit.to_string(),
                call: "Reload",
                source,
            })
    }

    /// Asks the refresher for the states of `names` (or of all managed
    /// units), without waiting.
    fn refresh_later(&self, names: impl IntoIterator<Item = String>, all: bool) {
        let mut p = self
            .refresh
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        p.names.extend(names);
        p.all |= all;
        drop(p);
        self.refresh.wake.notify_one();
    }

    /// As [`Shared::refresh_later`], and waits for the answer.
    async fn refresh_wait(&self, names: Vec<String>, all: bool) -> Result<(), DbusError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self
                .refresh
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.names.extend(names);
            p.all |= all;
            p.waiters.push(tx);
        }
        self.refresh.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(Arc::new(zbus::Error::Failure("refresh task gone".into()))))
    }

    /// Sets the state of a managed unit (ignored for others).
    fn set_state(&self, name: &str, update: impl FnOnce(&mut UnitState)) {
        let managed = self.lock();
        if !managed.digests.contains_key(name) {
            return;
        }
        self.states.send_if_modified(|states| {
            let entry = states
                .entry(name.to_string())
                .or_insert_with(|| UnitState::new("", "", ""));
            let before = entry.clone();
            update(entry);
            *entry != before
        });
        drop(managed);
    }
}

/// The three signal streams the pump reads.
struct Streams {
    properties: MessageStream,
    manager: MessageStream,
    owner: MessageStream,
}

impl Streams {
    async fn open(conn: &Connection) -> zbus::Result<Streams> {
        let signal = || MatchRule::builder().msg_type(zbus::message::Type::Signal);
        let properties = signal()
            .sender(SYSTEMD_SERVICE)?
            .interface("org.freedesktop.DBus.Properties")?
            .member("PropertiesChanged")?
            .path_namespace(UNIT_PATH_PREFIX)?
            .build();
        let manager = signal()
            .sender(SYSTEMD_SERVICE)?
            .interface(MANAGER_INTERFACE)?
            .path(SYSTEMD_PATH)?
            .build();
        let owner = signal()
            .sender("org.freedesktop.DBus")?
            .interface("org.freedesktop.DBus")?
            .member("NameOwnerChanged")?
            .arg(0, SYSTEMD_SERVICE)?
            .build();
        Ok(Streams {
            properties: MessageStream::for_match_rule(properties, conn, Some(SIGNAL_QUEUE)).await?,
            manager: MessageStream::for_match_rule(manager, conn, Some(SIGNAL_QUEUE)).await?,
            owner: MessageStream::for_match_rule(owner, conn, Some(64)).await?,
        })
    }

    /// Reads signals until the connection closes. Never awaits a D-Bus
    /// call (see the module documentation).
    async fn pump(mut self, shared: Arc<Shared>) {
        loop {
            tokio::select! {
                Some(Ok(msg)) = self.properties.next() => on_properties(&shared, &msg),
                Some(Ok(msg)) = self.manager.next() => on_manager(&shared, &msg),
                Some(Ok(msg)) = self.owner.next() => on_owner(&shared, &msg),
                else => break,
            }
        }
        shared.connected.store(false, Ordering::SeqCst);
        // Wake subscribers, who may look at is_connected().
        shared.states.send_modify(|_| {});
    }
}

fn value_str(v: &OwnedValue) -> Option<String> {
    <&str>::try_from(&**v).ok().map(str::to_string)
}

fn on_properties(shared: &Shared, msg: &zbus::Message) {
    let header = msg.header();
    let Some(path) = header.path() else { return };
    let Some(name) = shared.lock().paths.get(path.as_str()).cloned() else {
        return;
    };
    let Ok((interface, changed, invalidated)) =
        msg.body()
            .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
    else {
        return;
    };
    if interface != UNIT_INTERFACE {
        return;
    }
    let load = changed.get("LoadState").and_then(value_str);
    let active = changed.get("ActiveState").and_then(value_str);
    let sub = changed.get("SubState").and_then(value_str);
    let mut incomplete = false;
    shared.set_state(&name, |s| {
        if let Some(v) = load {
            s.load_state = v;
        }
        if let Some(v) = active {
            s.active_state = v;
        }
        if let Some(v) = sub {
            s.sub_state = v;
        }
        incomplete = s.load_state.is_empty() || s.active_state.is_empty() || s.sub_state.is_empty();
    });
    let wanted = ["LoadState", "ActiveState", "SubState"];
    if incomplete || invalidated.iter().any(|p| wanted.contains(&p.as_str())) {
        shared.refresh_later([name], false);
    }
}

fn on_manager(shared: &Shared, msg: &zbus::Message) {
    let header = msg.header();
    let Some(member) = header.member() else {
        return;
    };
    let body = msg.body();
    let managed = |name: &str| shared.lock().digests.contains_key(name);
    match member.as_str() {
        "JobRemoved" => {
            if let Ok((_id, _job, unit, _result)) =
                body.deserialize::<(u32, OwnedObjectPath, String, String)>()
            {
                if managed(&unit) {
                    shared.refresh_later([unit], false);
                }
            }
        }
        // `UnitNew` is not followed by a query: asking loads the unit, and
        // systemd drops an idle unit from memory again soon (`UnitRemoved`),
        // so answering each `UnitNew` with a query would go round forever.
        // A unit loaded for our own start reports through its job; one
        // loaded for anything else is idle, as we last saw it.
        "UnitRemoved" => {
            // systemd dropped an unused unit from memory: it was inactive.
            // Asking again would load it again; the load state stays as
            // last known.
            if let Ok((unit, _path)) = body.deserialize::<(String, OwnedObjectPath)>() {
                shared.set_state(&unit, |s| {
                    if !s.is_stopped() {
                        s.active_state = "inactive".into();
                        s.sub_state = "dead".into();
                    }
                });
            }
        }
        "Reloading" => {
            // After a daemon-reload (ours or an administrator's) a unit may
            // load differently: one query for all, batched with the rest.
            if let Ok(false) = body.deserialize::<bool>() {
                shared.refresh_later(Vec::new(), true);
            }
        }
        _ => {}
    }
}

fn on_owner(shared: &Shared, msg: &zbus::Message) {
    let Ok((_name, _old, new)) = msg.body().deserialize::<(String, String, String)>() else {
        return;
    };
    if !new.is_empty() {
        // systemd re-executed (or came back): subscribe again, ask again.
        let mut p = shared
            .refresh
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        p.resubscribe = true;
        p.all = true;
        drop(p);
        shared.refresh.wake.notify_one();
    }
}

/// Answers refresh requests, batching all that arrived meanwhile into one
/// `ListUnitsByNames`.
async fn refresher(shared: Arc<Shared>) {
    loop {
        shared.refresh.wake.notified().await;
        let batch = std::mem::take(
            &mut *shared
                .refresh
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut outcome = Ok(());
        if batch.resubscribe {
            if let Err(e) = subscribe(&shared.manager).await {
                outcome = Err(Arc::new(e));
            }
        }
        let mut names: Vec<String> = if batch.all {
            shared.lock().digests.keys().cloned().collect()
        } else {
            let managed = shared.lock();
            batch
                .names
                .into_iter()
                .filter(|n| managed.digests.contains_key(n))
                .collect()
        };
        names.sort();
        if !names.is_empty() {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            match shared.manager.list_units_by_names(&refs).await {
                Ok(rows) => {
                    for (name, _, load, active, sub, ..) in rows {
                        shared.set_state(&name, |s| *s = UnitState::new(&load, &active, &sub));
                    }
                }
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(Arc::new(e));
                    }
                }
            }
        }
        for w in batch.waiters {
            let _ = w.send(outcome.clone());
        }
    }
}

impl UnitManager for DbusUnitManager {
    async fn load(&self, name: &str, contents: &str) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        let digest: [u8; 20] = Sha1::digest(contents.as_bytes()).into();
        let unchanged = {
            let managed = self.shared.lock();
            managed.digests.get(name) == Some(&Some(digest)) && !managed.shadowed.contains_key(name)
        } && self
            .shared
            .states
            .borrow()
            .get(name)
            .is_some_and(|s| s.load_state == "loaded");
        if unchanged {
            return Ok(());
        }

        let text = contents.as_bytes().to_vec();
        let owned = name.to_string();
        self.blocking(name, move |dir| dir.write(&owned, &text))
            .await?;
        // Managed from now on (so its signals count and unload can clean
        // up), but with no digest until the load went through.
        self.shared.lock().add(name, None);

        let path = self.shared.dir.unit_path(name);
        let path = path.to_string_lossy();
        let linked = async {
            let m = &self.shared.manager;
            m.link_unit_files(&[&path], true, true)
                .await
                .map_err(SystemdError::call(name, "LinkUnitFiles"))?;
            if has_install_section(contents) {
                m.enable_unit_files(&[&path], true, true)
                    .await
                    .map_err(SystemdError::call(name, "EnableUnitFiles"))?;
            }
            self.shared.daemon_reload(name).await
        }
        .await;
        if let Err(e) = linked {
            self.shared.refresh_later([name.to_string()], false);
            return Err(e);
        }
        self.shared
            .refresh_wait(vec![name.to_string()], false)
            .await
            .map_err(|source| SystemdError::Call {
                unit: name.to_string(),
                call: "ListUnitsByNames",
                source,
            })?;
        self.check_fragment(name).await?;
        if let Some(d) = self.shared.lock().digests.get_mut(name) {
            *d = Some(digest);
        }
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        if !self.shared.lock().digests.contains_key(name) {
            return Ok(());
        }
        let m = &self.shared.manager;
        // A shadowed unit's state is the other unit's: leave it alone.
        let ours = !self.shared.lock().shadowed.contains_key(name);
        let running = self
            .shared
            .states
            .borrow()
            .get(name)
            .is_some_and(|s| !s.is_stopped() && !s.active_state.is_empty());
        if ours && running {
            let mut rx = self.shared.states.subscribe();
            match m.stop_unit(name, "replace").await {
                Ok(_job) => {}
                Err(e) if is_no_such_unit(&e) => {}
                Err(e) => return Err(SystemdError::call(name, "StopUnit")(e)),
            }
            let waited = self.shared.options.stop_timeout;
            let stopped = tokio::time::timeout(
                waited,
                rx.wait_for(|s| s.get(name).is_none_or(UnitState::is_stopped)),
            )
            .await;
            if stopped.is_err() {
                let state = self
                    .shared
                    .states
                    .borrow()
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| UnitState::new("", "", ""));
                return Err(SystemdError::StopTimeout {
                    unit: name.to_string(),
                    state,
                    waited,
                });
            }
        }
        m.disable_unit_files(&[name], true)
            .await
            .map_err(SystemdError::call(name, "DisableUnitFiles"))?;
        match if ours {
            m.reset_failed_unit(name).await
        } else {
            Ok(())
        } {
            Ok(()) => {}
            Err(e) if is_no_such_unit(&e) => {}
            Err(e) => return Err(SystemdError::call(name, "ResetFailedUnit")(e)),
        }
        let owned = name.to_string();
        self.blocking(name, move |dir| dir.remove(&owned)).await?;
        self.shared.daemon_reload(name).await?;
        let managed = {
            let mut managed = self.shared.lock();
            managed.remove(name);
            managed
        };
        self.shared
            .states
            .send_if_modified(|s| s.remove(name).is_some());
        drop(managed);
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        self.require_managed(name)?;
        // Checked again at each start: an administrator may have put a
        // unit of that name in /etc since it was loaded (or adopted).
        self.check_fragment(name).await?;
        self.shared
            .manager
            .start_unit(name, "replace")
            .await
            .map_err(SystemdError::call(name, "StartUnit"))?;
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        self.require_managed(name)?;
        self.shared
            .manager
            .stop_unit(name, "replace")
            .await
            .map_err(SystemdError::call(name, "StopUnit"))?;
        Ok(())
    }

    fn states(&self) -> UnitStates {
        self.shared.states.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<UnitStates> {
        self.shared.states.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_as_systemd_escapes_them() {
        // As `busctl tree org.freedesktop.systemd1` shows them.
        assert_eq!(
            unit_object_path("sshd.service"),
            "/org/freedesktop/systemd1/unit/sshd_2eservice"
        );
        assert_eq!(
            unit_object_path("fleet-test-1.service"),
            "/org/freedesktop/systemd1/unit/fleet_2dtest_2d1_2eservice"
        );
        assert_eq!(
            unit_object_path("web@2.service"),
            "/org/freedesktop/systemd1/unit/web_402_2eservice"
        );
        assert_eq!(
            unit_object_path("1x.service"),
            "/org/freedesktop/systemd1/unit/_31x_2eservice"
        );
        assert_eq!(unit_object_path(""), "/org/freedesktop/systemd1/unit/_");
    }

    #[test]
    fn install_sections() {
        assert!(has_install_section(
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
        ));
        assert!(!has_install_section(
            "[Service]\nExecStart=/bin/echo [Install]\n"
        ));
    }
}
