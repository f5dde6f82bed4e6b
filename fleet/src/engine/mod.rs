//! The engine: the one elected leader that turns the registry into a schedule (placeholder, being written).
