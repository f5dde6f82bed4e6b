//! cairn-tftp (being written).
