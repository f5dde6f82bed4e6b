//! Container images preloaded into the root image: each definition entry
//! becomes a `docker load`-able archive (the `docker save` layout: a
//! `manifest.json`, an image config and one layer tar) under
//! `/usr/share/cairn/images/`, made from files of the assembled tree, so a
//! machine can `docker run` it with no registry and no network.
//!
//! Owns the archive format and its determinism (fixed mtimes, root owner,
//! sorted entries); loading at boot is the job of the
//! `cairn-preload-images.service` unit in the overlay.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::definition::ContainerImage;
use crate::tree::{Entry, Tree};

/// Where the archives go in the image.
pub const IMAGES_DIR: &str = "usr/share/cairn/images";

fn header(path: &str, mtime: u64, mode: u32, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    let _ = h.set_path(path);
    h
}

/// The layer tar of one image: its files (taken from `tree`) and links.
fn layer(tree: &Tree, img: &ContainerImage, mtime: u64) -> Result<Vec<u8>> {
    enum Item<'a> {
        File(std::borrow::Cow<'a, [u8]>, u32),
        Link(&'a str),
        Dir,
    }
    let mut items: BTreeMap<String, Item<'_>> = BTreeMap::new();
    fn add_parents(items: &mut BTreeMap<String, Item<'_>>, p: &str) {
        let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        for i in 1..parts.len() {
            items.entry(parts[..i].join("/")).or_insert(Item::Dir);
        }
    }
    for (dest, src) in &img.files {
        let real = tree.resolve(src).with_context(|| {
            format!(
                "container image {}: {src} is not in the image tree",
                img.name
            )
        })?;
        let e = tree.get(&real).expect("resolved path exists");
        let data = tree
            .read(&real)
            .with_context(|| format!("container image {}: {src} is not a file", img.name))?;
        let d = dest.trim_start_matches('/').to_string();
        add_parents(&mut items, &d);
        items.insert(d, Item::File(data, e.mode));
    }
    for (dest, target) in &img.links {
        let d = dest.trim_start_matches('/').to_string();
        add_parents(&mut items, &d);
        items.insert(d, Item::Link(target));
    }
    for d in ["tmp", "proc", "sys", "dev", "etc"] {
        items.entry(d.to_string()).or_insert(Item::Dir);
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, item) in &items {
        match item {
            Item::Dir => {
                let mode = if path == "tmp" { 0o1777 } else { 0o755 };
                let mut h = header(
                    &format!("{path}/"),
                    mtime,
                    mode,
                    tar::EntryType::Directory,
                    0,
                );
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
            Item::File(data, mode) => {
                let mut h = header(
                    path,
                    mtime,
                    *mode,
                    tar::EntryType::Regular,
                    data.len() as u64,
                );
                h.set_cksum();
                b.append(&h, &data[..])?;
            }
            Item::Link(target) => {
                let mut h = header(path, mtime, 0o777, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// The `docker save` archive for one image, and the image ID Docker will
/// give it (`sha256:` + the config's digest).
pub fn archive(tree: &Tree, img: &ContainerImage, mtime: u64) -> Result<(Vec<u8>, String)> {
    let (repo, tag) = match img.name.rsplit_once(':') {
        Some((r, t)) if !r.is_empty() && !t.is_empty() && !t.contains('/') => (r, t),
        _ => bail!("container image name {:?} must be NAME:TAG", img.name),
    };
    let layer = layer(tree, img, mtime)?;
    let layer_id = hex::encode(Sha256::digest(&layer));
    let created = format!("{}", mtime);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created_rfc3339(mtime),
        "config": {
            "Cmd": img.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_id}")]},
        "history": [{"created": created_rfc3339(mtime), "created_by": format!("cairn build (SOURCE_DATE_EPOCH {created})")}],
    });
    let config = serde_json::to_vec(&config)?;
    let config_id = hex::encode(Sha256::digest(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": [format!("{layer_id}/layer.tar")],
    }]))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = header(
            path,
            mtime,
            0o644,
            tar::EntryType::Regular,
            data.len() as u64,
        );
        h.set_cksum();
        b.append(&h, data)?;
        Ok(())
    };
    add(&format!("{config_id}.json"), &config)?;
    add(&format!("{layer_id}/layer.tar"), &layer)?;
    add("manifest.json", &manifest)?;
    Ok((b.into_inner()?, format!("sha256:{config_id}")))
}

fn created_rfc3339(t: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(t).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Write every definition image into the tree: `NAME_TAG.tar` (the
/// archive) and `NAME_TAG.id` (`IMAGE_ID NAME:TAG`), which lets
/// `cairn-preload-images.service` skip an image Docker already has under
/// that name (every boot after the first, when `/var` persists).
pub fn add_all(tree: &mut Tree, images: &[ContainerImage], mtime: u64) -> Result<usize> {
    let origin: Arc<str> = Arc::from("cairn:container-images");
    for img in images {
        let (data, id) = archive(tree, img, mtime)?;
        let base = format!("{IMAGES_DIR}/{}", img.name.replace([':', '/'], "_"));
        tree.insert(&format!("{base}.tar"), Entry::file(data, 0o644, &origin))?;
        let idline = format!("{id} {}\n", img.name);
        tree.insert(
            &format!("{base}.id"),
            Entry::file(idline.into_bytes(), 0o644, &origin),
        )?;
    }
    Ok(images.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn img() -> ContainerImage {
        ContainerImage {
            name: "busybox:latest".into(),
            files: [("/bin/busybox".to_string(), "/usr/bin/busybox".to_string())].into(),
            links: [("/bin/sh".to_string(), "busybox".to_string())].into(),
            cmd: vec!["sh".into()],
        }
    }

    fn tree() -> Tree {
        let o: Arc<str> = Arc::from("t");
        let mut t = Tree::new_merged_usr();
        t.insert(
            "usr/bin/busybox",
            Entry::file(b"\x7fELF busybox".to_vec(), 0o755, &o),
        )
        .unwrap();
        t
    }

    fn members(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            out.insert(p, d);
        }
        out
    }

    #[test]
    fn docker_save_layout_with_matching_digests() {
        let (a, id) = archive(&tree(), &img(), 1_700_000_000).unwrap();
        let m = members(&a);
        let manifest: serde_json::Value = serde_json::from_slice(&m["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "busybox:latest");
        let cfg_name = manifest[0]["Config"].as_str().unwrap();
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let cfg = &m[cfg_name];
        assert_eq!(
            format!("{}.json", hex::encode(Sha256::digest(cfg))),
            cfg_name
        );
        assert_eq!(
            format!("{}.json", id.trim_start_matches("sha256:")),
            cfg_name
        );
        let layer = &m[layer_name];
        let cfg: serde_json::Value = serde_json::from_slice(cfg).unwrap();
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex::encode(Sha256::digest(layer)))
        );
        assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
        let files = members(layer);
        assert_eq!(files["bin/busybox"], b"\x7fELF busybox");
        assert!(files.contains_key("bin/sh"));
        assert!(files.contains_key("tmp/"));
        // deterministic
        assert_eq!(a, archive(&tree(), &img(), 1_700_000_000).unwrap().0);
    }

    #[test]
    fn missing_source_and_bad_name_are_errors() {
        let mut i = img();
        i.files.insert("/bin/x".into(), "/usr/bin/nothere".into());
        let e = archive(&tree(), &i, 0).unwrap_err().to_string();
        assert!(
            e.contains("busybox:latest") && e.contains("/usr/bin/nothere"),
            "{e}"
        );
        let mut i = img();
        i.name = "busybox".into();
        assert!(archive(&tree(), &i, 0)
            .unwrap_err()
            .to_string()
            .contains("NAME:TAG"));
    }
}
