//! cairn-cloudconfig (being written).
