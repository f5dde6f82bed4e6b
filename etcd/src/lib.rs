//! cairn-etcd: an async etcd v3 client over etcd's JSON gateway (`/v3/...`),
//! for fleet and the reboot lock. Being built: see `docs/architecture.md`.
