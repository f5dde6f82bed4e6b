//! What the fleetctl tests share: a real etcd on 127.0.0.1, the registry
//! on it, and stand-ins for the agents (machine records and state reports
//! written through `Registry`) and for the engine (schedule entries
//! written through `Registry::apply` by a leader the test campaigned for);
//! and the `fleetctl` binary run against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use cairn_etcd::{Campaign, Client, Leader};
use cairn_fleet::model::{parse_metadata, MachineRecord, ScheduleEntry, UnitStateReport};
use cairn_fleet::registry::{Keys, Registry, ScheduleChange};
use cairn_testkit::Etcd;

pub const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 1000\n";

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub etcd: Etcd,
    pub rt: tokio::runtime::Runtime,
    pub reg: Registry,
    /// The agents' lease (machines and reports live on it).
    pub lease: i64,
    pub leader: Leader,
}

/// The result of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Fleet {
    /// etcd, with the test as the engine (it holds the engine's leader key).
    pub fn new() -> Fleet {
        Fleet::with_leader_key(&Keys::default().leader())
    }

    /// etcd, the test's leadership on `key` (not the engine's when a real
    /// engine runs).
    pub fn with_leader_key(key: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::single(dir.path(), "fleetctl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Client::new([etcd.client_url.as_str()]).unwrap();
        let reg = Registry::new(client.clone(), Keys::default());
        let (lease, leader) = rt.block_on(async {
            let lease = client.grant(600).await.unwrap().id;
            let leader = match client.campaign(key, "test-engine", lease).await.unwrap() {
                Campaign::Elected(l) => l,
                Campaign::Follower(_) => panic!("not elected"),
            };
            (lease, leader)
        });
        std::fs::create_dir(dir.path().join("units")).unwrap();
        Fleet {
            dir,
            etcd,
            rt,
            reg,
            lease,
            leader,
        }
    }

    /// Where the tests' unit files go (fleetctl's working directory).
    pub fn units(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    pub fn write_unit(&self, name: &str, text: &str) -> PathBuf {
        let p = self.units().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLEETCTL_") {
                c.env_remove(k);
            }
        }
        c.env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--endpoint")
            .arg(&self.etcd.client_url)
            .args(args)
            .current_dir(self.units())
            .stdin(Stdio::null());
        c
    }

    pub fn fleetctl(&self, args: &[&str]) -> Run {
        self.command(args).output().unwrap().into()
    }

    /// Runs fleetctl in the background (for the blocking verbs).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A machine's presence, as its agent writes it.
    pub fn machine(&self, id: &str, ip: &str, metadata: &str) {
        let m = MachineRecord {
            id: id.into(),
            public_ip: ip.into(),
            metadata: parse_metadata(metadata).unwrap(),
            version: "0.1.0".into(),
        };
        self.rt.block_on(self.reg.announce(&m, self.lease)).unwrap();
    }

    /// Puts `unit` (as it is in the registry) on `machine`, as the engine.
    pub fn schedule(&self, unit: &str, machine: &str) {
        self.rt.block_on(async {
            let u = self
                .reg
                .unit(unit)
                .await
                .unwrap()
                .expect("unit in registry");
            self.reg
                .apply(
                    &self.leader,
                    &[ScheduleChange::Put(ScheduleEntry::new(&u.record, machine))],
                )
                .await
                .unwrap();
        });
    }

    pub fn unschedule(&self, unit: &str, machine: &str) {
        self.rt.block_on(async {
            self.reg
                .apply(
                    &self.leader,
                    &[ScheduleChange::Delete {
                        machine: machine.into(),
                        unit: unit.into(),
                    }],
                )
                .await
                .unwrap();
        });
    }

    /// A unit state report, as the agent on `machine` writes it (with the
    /// hash of the unit's text in the registry).
    pub fn report(&self, unit: &str, machine: &str, load: &str, active: &str, sub: &str) {
        self.rt.block_on(async {
            let u = self
                .reg
                .unit(unit)
                .await
                .unwrap()
                .expect("unit in registry");
            let r = UnitStateReport {
                unit: unit.into(),
                load: load.into(),
                active: active.into(),
                sub: sub.into(),
                machine: machine.into(),
                hash: u.record.hash,
            };
            self.reg.report(&r, self.lease).await.unwrap();
        });
    }

    pub fn clear_report(&self, unit: &str, machine: &str) {
        self.rt
            .block_on(self.reg.clear_report(machine, unit))
            .unwrap();
    }

    /// The unit's desired state in the registry (`None`: not there).
    pub fn desired(&self, unit: &str) -> Option<String> {
        self.rt
            .block_on(self.reg.unit(unit))
            .unwrap()
            .map(|v| v.record.desired_state.to_string())
    }

    pub fn contents(&self, unit: &str) -> Option<String> {
        self.rt
            .block_on(self.reg.unit(unit))
            .unwrap()
            .map(|v| v.record.contents)
    }

    /// Writes any value at a key (a hostile or broken record).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.rt
            .block_on(
                self.reg
                    .etcd()
                    .put(key, value.to_vec(), cairn_etcd::PutOptions::new()),
            )
            .unwrap();
    }
}

/// Waits for a background fleetctl to end.
pub fn finish(child: Child) -> Run {
    child.wait_with_output().unwrap().into()
}

pub fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut p = std::ffi::OsString::from(dir);
    p.push(":");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}
