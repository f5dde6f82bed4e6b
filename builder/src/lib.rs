//! cairn build.
