//! cairn-fleet: fleet for cairn machines: systemd units scheduled across
//! the cluster through etcd v3 (`fleetd` on every machine, `fleetctl` for
//! users), compatible with what fleet users wrote (`[X-Fleet]`, fleetctl's
//! verbs and columns). See `docs/architecture.md` ("fleet: unit model and
//! scheduler").
//!
//! The pure, I/O-free heart lives here: [`unit`] (names, files, hashes,
//! `[X-Fleet]`, states and verbs), [`schedule`] (the scheduler and its
//! explanations) and [`model`] (the JSON records the registry stores).

pub mod agent;
pub mod engine;
pub mod model;
pub mod registry;
pub mod schedule;
pub mod systemd;
pub mod unit;
