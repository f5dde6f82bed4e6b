//! The D-Bus backend, two ways:
//!
//! * `real_systemd_*`: against the machine's own systemd (system bus, as
//!   root), the true path: a `fleet-test-*.service` running `/bin/sleep 30`
//!   is loaded, started, seen active/running through systemd's signals,
//!   stopped, unloaded, its file and link gone. Skipped, saying why, where
//!   the test cannot reach a systemd (not root, PID 1 is not systemd, no
//!   system bus, nobody owns `org.freedesktop.systemd1`).
//! * `fake_*`: against a stand-in systemd served on a private
//!   `dbus-daemon` started by the test: the Manager methods the backend
//!   calls, with systemd's signatures and error names, and the signals
//!   systemd sends (`PropertiesChanged` on unit objects, `UnitNew`,
//!   `UnitRemoved`, `JobRemoved`, `Reloading`). It records every call, so
//!   the tests check what was asked of systemd and in which order, that
//!   concurrent loads share reloads, that states come from signals and
//!   that nothing is polled at rest. Skipped (saying so) without
//!   `dbus-daemon`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_fleet::systemd::dbus::unit_object_path;
use cairn_fleet::systemd::{
    DbusOptions, DbusUnitManager, SystemdError, UnitManager, UnitState, UnitStates,
};
use tokio::sync::watch;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

const SLEEP_UNIT: &str =
    "[Unit]\nDescription=fleet test unit\n\n[Service]\nExecStart=/bin/sleep 30\n";

fn running() -> UnitState {
    UnitState::new("loaded", "active", "running")
}

/// The calls but state queries.
fn without_queries(calls: Vec<String>) -> Vec<String> {
    calls
        .into_iter()
        .filter(|c| !c.starts_with("ListUnitsByNames"))
        .collect()
}

/// Waits until `name`'s state satisfies `pred` (`None`: not managed).
async fn wait_until(
    rx: &mut watch::Receiver<UnitStates>,
    name: &str,
    within: Duration,
    pred: impl Fn(Option<&UnitState>) -> bool,
) -> Option<UnitState> {
    let found = match tokio::time::timeout(within, rx.wait_for(|s| pred(s.get(name)))).await {
        Ok(Ok(s)) => Some(s.get(name).cloned()),
        Ok(Err(_)) => panic!("{name}: the manager went away"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        let now = rx.borrow().get(name).cloned();
        panic!("{name}: not there within {within:?}; state now {now:?}")
    })
}

// ---------------------------------------------------------------------
// The real systemd
// ---------------------------------------------------------------------

/// Why this process cannot drive the machine's systemd, if it cannot.
async fn no_real_systemd() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        return Some(format!(
            "PID 1 is {:?}, not systemd (no service manager to drive)",
            pid1.trim()
        ));
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Some("/run/systemd/system is missing: not booted with systemd".into());
    }
    let conn = match Connection::system().await {
        Ok(c) => c,
        Err(e) => return Some(format!("no system bus: {e}")),
    };
    let dbus = match zbus::fdo::DBusProxy::new(&conn).await {
        Ok(p) => p,
        Err(e) => return Some(format!("system bus: {e}")),
    };
    match dbus
        .name_has_owner("org.freedesktop.systemd1".try_into().unwrap())
        .await
    {
        Ok(true) => None,
        Ok(false) => Some("nobody owns org.freedesktop.systemd1 on the system bus".into()),
        Err(e) => Some(format!("NameHasOwner: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_systemd_load_start_stop_unload() {
    if let Some(why) = no_real_systemd().await {
        eprintln!("SKIP real_systemd_load_start_stop_unload: {why}");
        return;
    }
    let pid = std::process::id();
    let root = PathBuf::from(format!("/run/fleet-test-{pid}"));
    let units = root.join("units");
    let name = format!("fleet-test-{pid}.service");
    let outcome = async {
        let m = DbusUnitManager::connect(DbusOptions {
            units_dir: units.clone(),
            ..DbusOptions::default()
        })
        .await
        .expect("connect to systemd");
        let mut rx = m.subscribe();
        m.load(&name, SLEEP_UNIT).await.expect("load");
        assert_eq!(
            std::fs::read_to_string(units.join(&name)).unwrap(),
            SLEEP_UNIT
        );
        assert_eq!(m.states()[&name].load_state, "loaded", "{:?}", m.states());
        m.start(&name).await.expect("start");
        let s = wait_until(&mut rx, &name, Duration::from_secs(30), |s| {
            s == Some(&running())
        })
        .await;
        eprintln!("{name}: {s:?}");
        m.stop(&name).await.expect("stop");
        wait_until(&mut rx, &name, Duration::from_secs(30), |s| {
            s.is_some_and(UnitState::is_stopped)
        })
        .await;
        // Unload a running unit: it is stopped first.
        m.start(&name).await.expect("start again");
        wait_until(&mut rx, &name, Duration::from_secs(30), |s| {
            s == Some(&running())
        })
        .await;
        m.unload(&name).await.expect("unload");
        assert!(!m.states().contains_key(&name));
        assert!(!units.join(&name).exists(), "unit file left behind");
        assert!(
            !Path::new("/run/systemd/system").join(&name).exists(),
            "runtime link left behind"
        );
        eprintln!("{} daemon-reloads", m.reloads());
    };
    let result = tokio::time::timeout(Duration::from_secs(180), outcome).await;
    // Whatever happened, leave nothing behind.
    let _ = Command::new("systemctl")
        .args(["stop", &name])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("systemctl")
        .args(["disable", "--runtime", &name])
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&root);
    result.expect("the real systemd test took over 180 s");
}

// ---------------------------------------------------------------------
// A private bus with a stand-in systemd
// ---------------------------------------------------------------------

/// A `dbus-daemon` of the test's own, on a socket in a temporary folder.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start(test: &str) -> Option<Bus> {
        // installed by .ci/run; missing, the test fails and says how to get it
        cairn_testkit::require("dbus-daemon", "dbus-daemon");
        let Ok(path) = which("dbus-daemon") else {
            unreachable!("{test}: required above");
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new(path)
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // It complains that root may not raise its fd limit here.
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let t = Instant::now();
        // The socket file appears at bind, before listen: wait for a
        // connection to be accepted.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "dbus-daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Bus {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        })
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

/// What the stand-in systemd knows and was asked.
#[derive(Default)]
struct World {
    /// Runtime links: unit name -> file.
    linked: BTreeMap<String, String>,
    /// Unit names whose file the last reload found.
    known: BTreeSet<String>,
    /// Units in memory (systemd's loaded unit objects).
    units: BTreeMap<String, UnitState>,
    /// Every call, in order: "Method arg ...".
    calls: Vec<String>,
    reloads: usize,
    subscribes: usize,
    next_job: u32,
    reload_delay: Duration,
    start_delay: Duration,
    stop_delay: Duration,
    /// Units of the same name that systemd prefers (`/etc/systemd/system`).
    shadowed: BTreeMap<String, String>,
    /// Report a linked unit's `FragmentPath` as the link's target (systemd
    /// before 248) instead of the link.
    fragment_is_target: bool,
}

type WorldRef = Arc<Mutex<World>>;

fn world(w: &WorldRef) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap()
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.DBus.Error")]
enum FdoError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgs(String),
}

async fn emit_properties(conn: &Connection, name: &str, s: &UnitState) {
    let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
    changed.insert("LoadState", Value::from(s.load_state.as_str()));
    changed.insert("ActiveState", Value::from(s.active_state.as_str()));
    changed.insert("SubState", Value::from(s.sub_state.as_str()));
    conn.emit_signal(
        None::<zbus::names::BusName<'_>>,
        unit_object_path(name).as_str(),
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        &("org.freedesktop.systemd1.Unit", changed, Vec::<&str>::new()),
    )
    .await
    .unwrap();
}

async fn emit_manager<B: serde::Serialize + zbus::zvariant::DynamicType>(
    conn: &Connection,
    signal: &str,
    body: &B,
) {
    conn.emit_signal(
        None::<zbus::names::BusName<'_>>,
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        signal,
        body,
    )
    .await
    .unwrap();
}

/// Sets a unit's state in the world and says so on the bus, as systemd.
async fn set_state(conn: &Connection, w: &WorldRef, name: &str, state: UnitState) {
    let new = {
        let mut w = world(w);
        let new = !w.units.contains_key(name);
        w.units.insert(name.to_string(), state.clone());
        new
    };
    if new {
        let path = OwnedObjectPath::try_from(unit_object_path(name)).unwrap();
        emit_manager(conn, "UnitNew", &(name, path)).await;
    }
    emit_properties(conn, name, &state).await;
}

/// A unit object's properties (only what the backend reads).
struct FakeUnit {
    world: WorldRef,
    name: String,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn fragment_path(&self) -> String {
        let mut w = world(&self.world);
        w.calls.push(format!("Get FragmentPath {}", self.name));
        if let Some(other) = w.shadowed.get(&self.name) {
            return other.clone();
        }
        match w.linked.get(&self.name) {
            Some(target) if w.fragment_is_target => target.clone(),
            Some(_) => format!("/run/systemd/system/{}", self.name),
            None => String::new(),
        }
    }
}

/// Loads a unit into memory as systemd does on first use: loaded when the
/// last reload found its file, not-found otherwise.
async fn ensure_loaded(conn: &Connection, w: &WorldRef, name: &str) -> UnitState {
    conn.object_server()
        .at(
            unit_object_path(name).as_str(),
            FakeUnit {
                world: w.clone(),
                name: name.to_string(),
            },
        )
        .await
        .unwrap();
    let (present, state) = {
        let w = world(w);
        let state = if w.known.contains(name) {
            UnitState::loaded_inactive()
        } else {
            UnitState::new("not-found", "inactive", "dead")
        };
        (w.units.get(name).cloned(), state)
    };
    match present {
        Some(s) => s,
        None => {
            set_state(conn, w, name, state.clone()).await;
            state
        }
    }
}

/// Runs a job: `pending` now, `done` after `delay`, then `JobRemoved`.
async fn job(
    conn: &Connection,
    w: &WorldRef,
    name: &str,
    pending: UnitState,
    done: UnitState,
    delay: Duration,
) -> OwnedObjectPath {
    let id = {
        let mut w = world(w);
        w.next_job += 1;
        w.next_job
    };
    let path = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap();
    set_state(conn, w, name, pending).await;
    let (conn, w, name, job) = (conn.clone(), w.clone(), name.to_string(), path.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        set_state(&conn, &w, &name, done).await;
        emit_manager(&conn, "JobRemoved", &(id, job, name.as_str(), "done")).await;
    });
    path
}

fn base_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

struct FakeManager {
    world: WorldRef,
}

type Change = (String, String, String);
type Listed = (
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

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    async fn subscribe(&self) {
        let mut w = world(&self.world);
        w.subscribes += 1;
        w.calls.push("Subscribe".into());
    }

    async fn reload(&self, #[zbus(connection)] conn: &Connection) {
        let delay = {
            let mut w = world(&self.world);
            w.calls.push("Reload".into());
            w.reload_delay
        };
        emit_manager(conn, "Reloading", &true).await;
        tokio::time::sleep(delay).await;
        let changed: Vec<(String, UnitState)> = {
            let mut w = world(&self.world);
            w.reloads += 1;
            let known: BTreeSet<String> = w
                .linked
                .iter()
                .filter(|(_, path)| Path::new(path).is_file())
                .map(|(name, _)| name.clone())
                .chain(w.shadowed.keys().cloned())
                .collect();
            w.known = known;
            let known = w.known.clone();
            w.units
                .iter_mut()
                .filter_map(|(name, s)| {
                    let load = if known.contains(name) {
                        "loaded"
                    } else {
                        "not-found"
                    };
                    (s.load_state != load).then(|| {
                        s.load_state = load.into();
                        (name.clone(), s.clone())
                    })
                })
                .collect()
        };
        for (name, s) in changed {
            emit_properties(conn, &name, &s).await;
        }
        emit_manager(conn, "Reloading", &false).await;
    }

    async fn link_unit_files(
        &self,
        files: Vec<String>,
        runtime: bool,
        force: bool,
    ) -> Result<Vec<Change>, FdoError> {
        let mut w = world(&self.world);
        let mut changes = Vec::new();
        for f in files {
            let name = base_name(&f);
            w.calls.push(format!(
                "LinkUnitFiles {name} runtime={runtime} force={force}"
            ));
            if !Path::new(&f).is_absolute()
                || !std::fs::symlink_metadata(&f).is_ok_and(|m| m.is_file())
            {
                return Err(FdoError::InvalidArgs(format!("{f}: not a unit file")));
            }
            changes.push((
                "symlink".to_string(),
                format!("/run/systemd/system/{name}"),
                f.clone(),
            ));
            w.linked.insert(name, f);
        }
        Ok(changes)
    }

    async fn enable_unit_files(
        &self,
        files: Vec<String>,
        runtime: bool,
        force: bool,
    ) -> (bool, Vec<Change>) {
        let mut w = world(&self.world);
        for f in files {
            w.calls.push(format!(
                "EnableUnitFiles {} runtime={runtime} force={force}",
                base_name(&f)
            ));
        }
        (true, Vec::new())
    }

    async fn disable_unit_files(&self, files: Vec<String>, runtime: bool) -> Vec<Change> {
        let mut w = world(&self.world);
        for f in files {
            let state = w
                .units
                .get(&f)
                .map(|s| s.active_state.clone())
                .unwrap_or_default();
            w.calls
                .push(format!("DisableUnitFiles {f} runtime={runtime} ({state})"));
            w.linked.remove(&f);
        }
        Vec::new()
    }

    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        let (known, delay) = {
            let mut w = world(&self.world);
            w.calls.push(format!("StartUnit {name} {mode}"));
            (w.known.contains(&name), w.start_delay)
        };
        if !known {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not found.")));
        }
        ensure_loaded(conn, &self.world, &name).await;
        Ok(job(
            conn,
            &self.world,
            &name,
            UnitState::new("loaded", "activating", "start"),
            running(),
            delay,
        )
        .await)
    }

    async fn stop_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        let (state, delay) = {
            let mut w = world(&self.world);
            w.calls.push(format!("StopUnit {name} {mode}"));
            (w.units.get(&name).cloned(), w.stop_delay)
        };
        let Some(state) = state else {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        };
        Ok(job(
            conn,
            &self.world,
            &name,
            UnitState::new(&state.load_state, "deactivating", "stop"),
            UnitState::new(&state.load_state, "inactive", "dead"),
            delay,
        )
        .await)
    }

    async fn reset_failed_unit(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), SdError> {
        let state = {
            let mut w = world(&self.world);
            w.calls.push(format!("ResetFailedUnit {name}"));
            w.units.get(&name).cloned()
        };
        match state {
            None => Err(SdError::NoSuchUnit(format!("Unit {name} not loaded."))),
            Some(s) if s.active_state == "failed" => {
                set_state(
                    conn,
                    &self.world,
                    &name,
                    UnitState::new(&s.load_state, "inactive", "dead"),
                )
                .await;
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    async fn list_units_by_names(
        &self,
        names: Vec<String>,
        #[zbus(connection)] conn: &Connection,
    ) -> Vec<Listed> {
        world(&self.world)
            .calls
            .push(format!("ListUnitsByNames {}", names.join(" ")));
        let mut out = Vec::new();
        for name in names {
            let s = ensure_loaded(conn, &self.world, &name).await;
            out.push((
                name.clone(),
                String::new(),
                s.load_state,
                s.active_state,
                s.sub_state,
                String::new(),
                OwnedObjectPath::try_from(unit_object_path(&name)).unwrap(),
                0,
                String::new(),
                OwnedObjectPath::try_from("/").unwrap(),
            ));
        }
        out
    }
}

/// The stand-in systemd: owns `org.freedesktop.systemd1` on the bus.
struct Fake {
    conn: Connection,
    world: WorldRef,
}

impl Fake {
    async fn serve(address: &str, world: WorldRef) -> Fake {
        let conn = zbus::connection::Builder::address(address)
            .unwrap()
            .serve_at(
                "/org/freedesktop/systemd1",
                FakeManager {
                    world: world.clone(),
                },
            )
            .unwrap()
            .name("org.freedesktop.systemd1")
            .unwrap()
            .build()
            .await
            .expect("serve the stand-in systemd");
        Fake { conn, world }
    }

    fn calls(&self) -> Vec<String> {
        world(&self.world).calls.clone()
    }

    fn calls_matching(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    fn clear_calls(&self) {
        world(&self.world).calls.clear();
    }

    /// The unit's main process dies.
    async fn crash(&self, name: &str) {
        set_state(
            &self.conn,
            &self.world,
            name,
            UnitState::new("loaded", "failed", "failed"),
        )
        .await;
    }

    /// systemd drops an unused unit from memory.
    async fn collect(&self, name: &str) {
        world(&self.world).units.remove(name);
        let path = OwnedObjectPath::try_from(unit_object_path(name)).unwrap();
        emit_manager(&self.conn, "UnitRemoved", &(name, path)).await;
    }
}

struct Setup {
    bus: Bus,
    fake: Fake,
    units: tempfile::TempDir,
}

impl Setup {
    async fn new(test: &str, tune: impl FnOnce(&mut World)) -> Option<Setup> {
        let bus = Bus::start(test)?;
        let w = WorldRef::default();
        {
            let mut w = world(&w);
            w.start_delay = Duration::from_millis(50);
            w.stop_delay = Duration::from_millis(50);
            tune(&mut w);
        }
        let fake = Fake::serve(&bus.address, w).await;
        Some(Setup {
            bus,
            fake,
            units: tempfile::tempdir().unwrap(),
        })
    }

    fn units_dir(&self) -> PathBuf {
        self.units.path().join("run/fleet/units")
    }

    async fn connect(&self) -> DbusUnitManager {
        DbusUnitManager::connect(DbusOptions {
            units_dir: self.units_dir(),
            address: Some(self.bus.address.clone()),
            stop_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
        })
        .await
        .expect("connect to the stand-in systemd")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_load_start_stop_unload() {
    let Some(s) = Setup::new("fake_load_start_stop_unload", |_| {}).await else {
        return;
    };
    let m = s.connect().await;
    assert_eq!(s.fake.calls(), ["Subscribe"]);
    let mut rx = m.subscribe();
    let name = "fleet-test-1.service";

    m.load(name, SLEEP_UNIT).await.unwrap();
    let file = s.units_dir().join(name);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), SLEEP_UNIT);
    // The state query after the reload may be one or two (the reload's
    // own `Reloading(false)` asks for all units, batched or not with it).
    assert_eq!(
        without_queries(s.fake.calls()),
        [
            "Subscribe".to_string(),
            format!("LinkUnitFiles {name} runtime=true force=true"),
            "Reload".to_string(),
            format!("Get FragmentPath {name}"),
        ]
    );
    let queries = s.fake.calls_matching("ListUnitsByNames").len();
    assert!((1..=2).contains(&queries), "{:?}", s.fake.calls());
    assert_eq!(m.states()[name], UnitState::loaded_inactive());

    // Loading the same text again asks systemd nothing.
    s.fake.clear_calls();
    m.load(name, SLEEP_UNIT).await.unwrap();
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());

    m.start(name).await.unwrap();
    let seen = wait_until(&mut rx, name, Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;
    assert_eq!(seen, Some(running()));
    m.stop(name).await.unwrap();
    wait_until(&mut rx, name, Duration::from_secs(5), |st| {
        st == Some(&UnitState::loaded_inactive())
    })
    .await;
    assert_eq!(
        s.fake.calls_matching("St"),
        [
            format!("StartUnit {name} replace"),
            format!("StopUnit {name} replace")
        ]
    );

    s.fake.clear_calls();
    m.unload(name).await.unwrap();
    assert!(!file.exists(), "the unit file is removed");
    assert!(!m.states().contains_key(name));
    assert_eq!(
        without_queries(s.fake.calls()),
        [
            format!("DisableUnitFiles {name} runtime=true (inactive)"),
            format!("ResetFailedUnit {name}"),
            "Reload".to_string(),
        ]
    );
    wait_until(&mut rx, name, Duration::from_secs(1), |st| st.is_none()).await;
    assert!(world(&s.fake.world).linked.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_unload_stops_a_running_unit_first() {
    let Some(s) = Setup::new("fake_unload_stops_a_running_unit_first", |w| {
        w.stop_delay = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let m = s.connect().await;
    let mut rx = m.subscribe();
    let name = "web@1.service";
    // An [Install] section is enabled as well, as fleet did.
    let text = format!("{SLEEP_UNIT}\n[Install]\nWantedBy=multi-user.target\n");
    m.load(name, &text).await.unwrap();
    assert_eq!(
        s.fake.calls_matching("EnableUnitFiles"),
        [format!("EnableUnitFiles {name} runtime=true force=true")]
    );
    m.start(name).await.unwrap();
    wait_until(&mut rx, name, Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;

    s.fake.clear_calls();
    let t = Instant::now();
    m.unload(name).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let calls = s.fake.calls();
    let stop = calls
        .iter()
        .position(|c| c.starts_with("StopUnit"))
        .unwrap();
    let disable = calls
        .iter()
        .position(|c| c.starts_with("DisableUnitFiles"))
        .unwrap();
    assert!(stop < disable, "{calls:?}");
    assert_eq!(
        calls[disable],
        format!("DisableUnitFiles {name} runtime=true (inactive)"),
        "the unit had stopped before it was unlinked"
    );
    assert!(!s.units_dir().join(name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_concurrent_loads_share_reloads() {
    let Some(s) = Setup::new("fake_concurrent_loads_share_reloads", |w| {
        w.reload_delay = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let m = s.connect().await;
    let units: Vec<(String, String)> = (0..100)
        .map(|i| (format!("web@{i}.service"), SLEEP_UNIT.to_string()))
        .collect();
    let t = Instant::now();
    for r in m.load_all(&units).await {
        r.unwrap();
    }
    let reloads = world(&s.fake.world).reloads;
    eprintln!(
        "100 loads: {reloads} daemon-reloads, {} state queries, {:?}",
        s.fake.calls_matching("ListUnitsByNames").len(),
        t.elapsed()
    );
    assert!(reloads <= 3, "{reloads} reloads for 100 concurrent loads");
    assert_eq!(m.reloads() as usize, reloads);
    assert_eq!(m.states().len(), 100);
    assert!(m
        .states()
        .values()
        .all(|st| *st == UnitState::loaded_inactive()));
    assert!(
        s.fake.calls_matching("ListUnitsByNames").len() < 100,
        "state queries are batched"
    );
    assert_eq!(
        s.fake.calls_matching("LinkUnitFiles").len(),
        100,
        "every unit is linked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_only_managed_units_and_valid_names_reach_systemd() {
    let Some(s) = Setup::new(
        "fake_only_managed_units_and_valid_names_reach_systemd",
        |_| {},
    )
    .await
    else {
        return;
    };
    let m = s.connect().await;
    s.fake.clear_calls();
    for name in ["sshd.service", "dbus.service"] {
        let e = m.start(name).await.unwrap_err();
        assert!(matches!(e, SystemdError::NotManaged { .. }), "{e}");
        assert!(e.to_string().contains(name), "{e}");
        assert!(m.stop(name).await.is_err());
        // Unloading something not ours is a no-op, not a stop.
        m.unload(name).await.unwrap();
    }
    for name in ["../evil.service", "a/b.service", ".x.service", "evil"] {
        let e = m.load(name, SLEEP_UNIT).await.unwrap_err();
        assert!(matches!(e, SystemdError::BadName { .. }), "{name:?}: {e}");
        assert!(m.unload(name).await.is_err());
        assert!(m.start(name).await.is_err());
    }
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
    let listing: Vec<_> = std::fs::read_dir(s.units_dir()).unwrap().collect();
    assert!(listing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_states_come_from_signals_and_nothing_polls_at_rest() {
    let Some(s) = Setup::new(
        "fake_states_come_from_signals_and_nothing_polls_at_rest",
        |_| {},
    )
    .await
    else {
        return;
    };
    let m = s.connect().await;
    let mut rx = m.subscribe();
    for i in 0..5 {
        m.load(&format!("u{i}.service"), SLEEP_UNIT).await.unwrap();
    }
    m.start("u0.service").await.unwrap();
    wait_until(&mut rx, "u0.service", Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;

    // At rest, two seconds without a single call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.fake.calls().is_empty(), "polled: {:?}", s.fake.calls());

    // A crash arrives as a signal and nothing else is asked.
    s.fake.crash("u0.service").await;
    wait_until(&mut rx, "u0.service", Duration::from_secs(5), |st| {
        st == Some(&UnitState::new("loaded", "failed", "failed"))
    })
    .await;
    // Another machine's unit changing is none of our business.
    s.fake.crash("sshd.service").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!m.states().contains_key("sshd.service"));
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());

    // systemd dropping an idle unit from memory: inactive/dead, no query
    // (one would load it again).
    m.start("u1.service").await.unwrap();
    wait_until(&mut rx, "u1.service", Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;
    s.fake.collect("u1.service").await;
    wait_until(&mut rx, "u1.service", Duration::from_secs(5), |st| {
        st == Some(&UnitState::loaded_inactive())
    })
    .await;

    // A failed unit is reset on unload.
    s.fake.clear_calls();
    m.unload("u0.service").await.unwrap();
    assert_eq!(
        world(&s.fake.world).units["u0.service"].active_state,
        "inactive"
    );
    assert!(s.fake.calls().iter().all(|c| !c.starts_with("StopUnit")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_restarted_agent_adopts_its_units() {
    let Some(s) = Setup::new("fake_a_restarted_agent_adopts_its_units", |_| {}).await else {
        return;
    };
    let m = s.connect().await;
    let mut rx = m.subscribe();
    m.load("a.service", SLEEP_UNIT).await.unwrap();
    m.load("b.service", SLEEP_UNIT).await.unwrap();
    m.start("a.service").await.unwrap();
    wait_until(&mut rx, "a.service", Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;
    // Let the query that the start job's end asked for finish first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(m);

    s.fake.clear_calls();
    let m = s.connect().await;
    assert_eq!(m.states().len(), 2);
    assert_eq!(m.states()["a.service"], running());
    assert_eq!(m.states()["b.service"], UnitState::loaded_inactive());
    assert_eq!(
        s.fake.calls(),
        ["Subscribe", "ListUnitsByNames a.service b.service"]
    );
    // Loading the same text after a restart asks systemd nothing; new
    // text goes through, and the unit keeps running.
    s.fake.clear_calls();
    m.load("a.service", SLEEP_UNIT).await.unwrap();
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
    m.load("a.service", "[Service]\nExecStart=/bin/sleep 60\n")
        .await
        .unwrap();
    assert_eq!(
        without_queries(s.fake.calls()),
        [
            "LinkUnitFiles a.service runtime=true force=true",
            "Reload",
            "Get FragmentPath a.service"
        ]
    );
    assert_eq!(m.states()["a.service"], running());
    // And the adopted unit can be driven.
    m.stop("b.service").await.unwrap();
    m.unload("a.service").await.unwrap();
    assert!(!s.units_dir().join("a.service").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_systemd_reexec_is_followed() {
    let Some(s) = Setup::new("fake_systemd_reexec_is_followed", |_| {}).await else {
        return;
    };
    let m = s.connect().await;
    let mut rx = m.subscribe();
    m.load("a.service", SLEEP_UNIT).await.unwrap();

    // systemd re-executes: its connection goes, a new one takes the name.
    let w = s.fake.world.clone();
    let Setup { bus, fake, units } = s;
    drop(fake);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fake = Fake::serve(&bus.address, w).await;
    let t = Instant::now();
    while world(&fake.world).subscribes < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "no new Subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Signals from the new owner arrive.
    m.start("a.service").await.unwrap();
    wait_until(&mut rx, "a.service", Duration::from_secs(5), |st| {
        st == Some(&running())
    })
    .await;
    drop((m, units));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_shadowed_unit_is_refused() {
    let Some(s) = Setup::new("fake_a_shadowed_unit_is_refused", |w| {
        // The administrator's own sshd.service, running.
        w.shadowed.insert(
            "sshd.service".into(),
            "/etc/systemd/system/sshd.service".into(),
        );
        w.units.insert("sshd.service".into(), running());
    })
    .await
    else {
        return;
    };
    let m = s.connect().await;
    // systemd reports the link (252) or its target (before 248): both ours.
    m.load("a.service", SLEEP_UNIT).await.unwrap();
    world(&s.fake.world).fragment_is_target = true;
    m.load("b.service", SLEEP_UNIT).await.unwrap();
    m.start("b.service").await.unwrap();

    let e = m.load("sshd.service", SLEEP_UNIT).await.unwrap_err();
    match &e {
        SystemdError::Shadowed { unit, fragment, .. } => {
            assert_eq!(unit, "sshd.service");
            assert_eq!(fragment, "/etc/systemd/system/sshd.service");
        }
        other => panic!("expected Shadowed, got {other:?}"),
    }
    assert!(e.to_string().contains("takes precedence"), "{e}");
    // Never started, stopped or reset through us: it is someone else's.
    s.fake.clear_calls();
    assert!(matches!(
        m.start("sshd.service").await,
        Err(SystemdError::Shadowed { .. })
    ));
    assert!(matches!(
        m.stop("sshd.service").await,
        Err(SystemdError::Shadowed { .. })
    ));
    // Unloading removes what we wrote and leaves their unit running.
    m.unload("sshd.service").await.unwrap();
    assert!(!s.units_dir().join("sshd.service").exists());
    let calls = without_queries(s.fake.calls());
    assert_eq!(
        calls,
        [
            "DisableUnitFiles sshd.service runtime=true (active)",
            "Reload"
        ]
    );
    assert_eq!(world(&s.fake.world).units["sshd.service"], running());

    // Shadowed after it was loaded: the next start finds out.
    world(&s.fake.world)
        .shadowed
        .insert("a.service".into(), "/etc/systemd/system/a.service".into());
    assert!(matches!(
        m.start("a.service").await,
        Err(SystemdError::Shadowed { .. })
    ));
    assert!(s.fake.calls_matching("StartUnit a.service").is_empty());
    // And once the other unit is gone, a load clears it.
    world(&s.fake.world).shadowed.clear();
    m.load("a.service", SLEEP_UNIT).await.unwrap();
    m.start("a.service").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_lost_bus_is_reported() {
    let Some(s) = Setup::new("fake_a_lost_bus_is_reported", |_| {}).await else {
        return;
    };
    let m = s.connect().await;
    m.load("a.service", SLEEP_UNIT).await.unwrap();
    assert!(m.is_connected());
    let mut rx = m.subscribe();
    let Setup { bus, fake, units } = s;
    drop(bus);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("subscribers are woken")
        .unwrap();
    assert!(!m.is_connected());
    // Calls fail, naming the unit and the call.
    let e = m.start("a.service").await.unwrap_err();
    assert!(e.to_string().starts_with("a.service: D-Bus "), "{e}");
    drop((fake, units));
}
