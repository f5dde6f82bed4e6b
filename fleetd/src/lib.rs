//! fleetd: the fleet daemon of every cairn machine. It runs the agent (this
//! machine's units) and, unless `disable_engine`, a candidate for the
//! cluster's one engine; [`config`] reads fleet's settings, [`host`] finds
//! the machine ID and the address to publish, [`daemon`] runs them.

pub mod config;
pub mod daemon;
pub mod host;
