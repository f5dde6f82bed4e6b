//! Native fixups: what Debian's maintainer scripts would have done, done in
//! Rust on the assembled tree (in progress).
