//! cairn-pxe (being written).
