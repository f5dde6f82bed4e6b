//! The initramfs layout contract between the builder, which packs the
//! archive, and `/init`, which relies on it: fixed paths, the skeleton every
//! initramfs starts with, and the Debian files `/init` executes (mke2fs and
//! what it links against). It writes nothing but the skeleton.

use std::io::{self, Write};

use crate::cpio::CpioWriter;

/// The `/init` program (the static binary of this crate).
pub const INIT: &str = "init";

/// Where the kernel modules of `release` live in the initramfs (with
/// [`crate::MODULES_ORDER_FILE`] inside).
pub fn modules_dir(release: &str) -> String {
    format!("lib/modules/{release}")
}

/// A file taken from a Debian package into the initramfs at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebFile {
    pub package: &'static str,
    /// Path inside the package (and the initramfs), without the leading `/`.
    pub path: &'static str,
}

/// What `/init` needs to run `/sbin/mke2fs` on first boot, as packaged in
/// Debian bookworm for amd64. Library paths are the SONAME links the dynamic
/// loader opens: carry each as its link plus the target file, or as a
/// regular file holding the target's content. `/lib64/ld-linux-x86-64.so.2`
/// is an absolute link to `/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`.
/// (In bookworm libe2p is part of libext2fs2; there is no libe2p2.)
pub const MKE2FS_FILES: &[DebFile] = &[
    DebFile {
        package: "e2fsprogs",
        path: "sbin/mke2fs",
    },
    DebFile {
        package: "libext2fs2",
        path: "lib/x86_64-linux-gnu/libext2fs.so.2",
    },
    DebFile {
        package: "libext2fs2",
        path: "lib/x86_64-linux-gnu/libe2p.so.2",
    },
    DebFile {
        package: "libcom-err2",
        path: "lib/x86_64-linux-gnu/libcom_err.so.2",
    },
    DebFile {
        package: "libblkid1",
        path: "usr/lib/x86_64-linux-gnu/libblkid.so.1",
    },
    DebFile {
        package: "libuuid1",
        path: "usr/lib/x86_64-linux-gnu/libuuid.so.1",
    },
    DebFile {
        package: "libc6",
        path: "lib/x86_64-linux-gnu/libc.so.6",
    },
    DebFile {
        package: "libc6",
        path: "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    },
    DebFile {
        package: "libc6",
        path: "lib64/ld-linux-x86-64.so.2",
    },
];

/// Adds what every cairn initramfs has: `/init` (mode 0755), `/dev/console`
/// (so the kernel gives `/init` a console even before devtmpfs is
/// mounted), and the mount points `/init` uses.
pub fn add_skeleton<W: Write>(w: &mut CpioWriter<W>, init: &[u8]) -> io::Result<()> {
    w.add_file(INIT, 0o755, 0, 0, init)?;
    w.add_dir("dev", 0o755, 0, 0)?;
    w.add_char_device("dev/console", 0o600, 5, 1)?;
    for d in ["proc", "sys", "run", "sysroot"] {
        w.add_dir(d, 0o755, 0, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skeleton_and_paths() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        add_skeleton(&mut w, b"\x7fELF").unwrap();
        let a = w.finish().unwrap();
        let text = String::from_utf8_lossy(&a);
        for name in ["init\0", "dev/console\0", "sysroot\0", "run\0"] {
            assert!(text.contains(name), "{name}");
        }
        assert_eq!(modules_dir("6.1.0-56-amd64"), "lib/modules/6.1.0-56-amd64");
        assert!(MKE2FS_FILES.iter().all(|f| !f.path.starts_with('/')));
        assert!(crate::boot::MKE2FS_PATHS.contains(&format!("/{}", MKE2FS_FILES[0].path).as_str()));
    }
}
