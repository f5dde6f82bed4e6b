//! `fleetd` (being written).

fn main() {}
