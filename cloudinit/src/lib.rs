//! cairn-cloudinit (being written).
