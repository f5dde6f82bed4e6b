//! cairn-fleet: fleet for cairn machines: systemd units scheduled across
//! the cluster through etcd v3 (`fleetd` on every machine, `fleetctl` for
//! users), compatible with what fleet users wrote (`[X-Fleet]`, fleetctl's
//! verbs and columns). Being built: see `docs/architecture.md`.
