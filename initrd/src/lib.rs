//! newc cpio writer.
