//! `fleetctl` (being written).

fn main() {}
