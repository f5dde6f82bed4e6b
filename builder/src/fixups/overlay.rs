//! The `overlay` fixup: copies the definition's overlay directory over the
//! tree (regular files, directories and symlinks with their permission
//! bits; everything owned by root). It runs first so that the fixups after
//! it see the overlay's units, configuration and CA certificates.
//!
//! Owns reading the overlay from the workstation's file system; nothing else
//! in the fixups touches the host.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{origin, Context, FixupError, Report};
use crate::tree::{Entry, Tree};

const NAME: &str = "overlay";

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let Some(dir) = ctx.overlay else {
        return Ok(Report::new(NAME, "no overlay"));
    };
    let (files, dirs, links) = copy_overlay(tree, dir)?;
    tracing::info!(files, dirs, links, dir = %dir.display(), "overlay copied");
    Ok(Report::new(
        NAME,
        format!(
            "{files} files, {dirs} directories, {links} symlinks from {}",
            dir.display()
        ),
    ))
}

/// Copy `dir` over the tree; returns (files, directories, symlinks).
pub fn copy_overlay(tree: &mut Tree, dir: &Path) -> Result<(usize, usize, usize), FixupError> {
    let mut counts = (0, 0, 0);
    walk(tree, dir, "", &mut counts)?;
    Ok(counts)
}

fn walk(
    tree: &mut Tree,
    dir: &Path,
    rel: &str,
    counts: &mut (usize, usize, usize),
) -> Result<(), FixupError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| FixupError::Io {
            fixup: NAME,
            path,
            source,
        }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    let o = origin(NAME);
    for e in entries {
        let host = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&host).map_err(io(&host))?;
        let mode = meta.permissions().mode() & 0o7777;
        let entry = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).map_err(io(&host))?;
            counts.2 += 1;
            Entry::symlink(target.to_string_lossy().into_owned(), &o)
        } else if meta.is_dir() {
            counts.1 += 1;
            Entry::dir(mode, &o)
        } else if meta.is_file() {
            counts.0 += 1;
            Entry::file(std::fs::read(&host).map_err(io(&host))?, mode, &o)
        } else {
            return Err(FixupError::invalid(
                NAME,
                host.display().to_string(),
                "only regular files, directories and symlinks can be in an overlay",
            ));
        };
        let is_dir = entry.is_dir();
        tree.insert(&path, entry)
            .map_err(FixupError::tree(NAME, &path))?;
        if is_dir {
            walk(tree, &host, &path, counts)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;
    use crate::tree::Node;

    #[test]
    fn copies_files_dirs_symlinks_with_modes_owned_by_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc/systemd/network")).unwrap();
        std::fs::write(
            root.join("etc/systemd/network/80-dhcp.network"),
            "[Match]\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
        std::fs::write(root.join("usr/local/bin/hello"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            root.join("usr/local/bin/hello"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("hello", root.join("usr/local/bin/hi")).unwrap();
        // `bin/` in the overlay lands in usr/bin (merged /usr).
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/tool"), "x").unwrap();

        let mut t = Tree::new_merged_usr();
        file(&mut t, "etc/systemd/network/80-dhcp.network", "old");
        let d = def("");
        let mut c = ctx(&d, &[]);
        c.overlay = Some(root);
        let r = apply(&mut t, &c).unwrap();
        assert!(r.summary.starts_with("3 files"), "{}", r.summary);
        assert_eq!(
            t.read_text("etc/systemd/network/80-dhcp.network").unwrap(),
            "[Match]\n"
        );
        let e = t.get("usr/local/bin/hello").unwrap();
        assert_eq!((e.mode, e.uid, e.gid), (0o750, 0, 0));
        assert_eq!(&*e.origin, "fixup:overlay");
        assert_eq!(
            t.get("usr/local/bin/hi").unwrap().node,
            Node::Symlink("hello".into())
        );
        assert!(t.contains("usr/bin/tool"));
        assert_eq!(target(&t, "bin").as_deref(), Some("usr/bin"));
    }

    #[test]
    fn no_overlay_is_a_no_op() {
        let d = def("");
        let mut t = Tree::new();
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(r.summary, "no overlay");
        assert_eq!(t.len(), 1);
    }
}
