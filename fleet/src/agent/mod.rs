//! The agent: one per machine, runs what the schedule puts on its machine (placeholder, being written).
