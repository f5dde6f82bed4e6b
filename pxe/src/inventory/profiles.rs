//! The inventory's profiles: names, image folders (their manifests and
//! update bundles), cloud-config templates, state labels and kernel
//! arguments, checked one by one.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_formats::image_dir;

use super::checker::Checker;
use super::schema::RawProfile;
use super::templates::template_message;
use super::{Image, InventoryError, Profile};

/// What the profiles give the rest of the inventory.
pub(super) struct Checked {
    pub profiles: Vec<Profile>,
    /// Profile name -> index.
    pub names: BTreeMap<String, usize>,
    pub images: BTreeMap<String, Image>,
    /// Update bundles found in the profiles' image folders.
    pub bundles: Vec<crate::updates::Channel>,
}

/// Checks every profile; templates are added to `env`.
pub(super) fn check(
    cx: &Checker<'_>,
    raw: Vec<RawProfile>,
    env: &mut minijinja::Environment<'static>,
) -> Result<Checked, InventoryError> {
    let mut images: BTreeMap<String, Image> = BTreeMap::new();
    let mut bundles = Vec::new();
    let mut profiles = Vec::new();
    let mut profile_names = BTreeMap::new();
    for (i, p) in raw.into_iter().enumerate() {
        if !is_name(&p.name) {
            return Err(cx.invalid(
                "profiles",
                i,
                "name",
                format!(
                    "{:?} is not a valid name: expected letters, digits, '-', '_' or '.'",
                    p.name
                ),
            ));
        }
        if profile_names.insert(p.name.clone(), i).is_some() {
            return Err(cx.invalid(
                "profiles",
                i,
                "name",
                format!("a second profile named {:?}", p.name),
            ));
        }
        let dir = cx.base.join(&p.image);
        let image = read_image(&dir).map_err(|m| cx.invalid("profiles", i, "image", m))?;
        let key = format!("{}-{}", image.name, image.version);
        if let Some(other) = images.get(&key) {
            if other.dir != image.dir {
                return Err(cx.invalid(
                    "profiles",
                    i,
                    "image",
                    format!(
                        "{} and {} are both image {key}: one name and version must be one folder",
                        other.dir.display(),
                        image.dir.display()
                    ),
                ));
            }
        }
        match crate::updates::read_bundle(&image.dir) {
            Ok(Some(b)) => bundles.push(b),
            Ok(None) => {}
            Err(m) => {
                return Err(cx.invalid("profiles", i, "image", format!("update bundle: {m}")))
            }
        }
        images.insert(key.clone(), image);
        let cloud_config = match &p.cloud_config {
            None => None,
            Some(t) => {
                let name = t.display().to_string();
                if env.get_template(&name).is_err() {
                    let file = cx.base.join(t);
                    let source = std::fs::read_to_string(&file).map_err(|e| {
                        cx.invalid(
                            "profiles",
                            i,
                            "cloud_config",
                            format!("reading {}: {e}", file.display()),
                        )
                    })?;
                    env.add_template_owned(name.clone(), source).map_err(|e| {
                        InventoryError::Yaml(cairn_yaml::Error::Invalid {
                            file: file.display().to_string(),
                            line: e.line().unwrap_or(1),
                            key: format!("profiles[{i}].cloud_config"),
                            message: format!("template syntax: {}", template_message(&e)),
                        })
                    })?;
                }
                Some(name)
            }
        };
        let state_label = p.state_label.unwrap_or_else(|| "cairn-state".into());
        if state_label.is_empty() || state_label.contains(char::is_whitespace) {
            return Err(cx.invalid(
                "profiles",
                i,
                "state_label",
                format!("{state_label:?} is not a partition label: expected no spaces"),
            ));
        }
        if let Some(bad) = p
            .kernel_args
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(cx.invalid(
                "profiles",
                i,
                "kernel_args",
                format!("{bad:?}: each kernel argument must be one word without spaces"),
            ));
        }
        let install = match (p.boot, p.install) {
            (super::BootMode::Install, raw) => {
                let raw = raw.unwrap_or(super::schema::RawInstall {
                    disk: None,
                    overwrite: false,
                });
                let disk = raw.disk.unwrap_or_else(|| "first-empty".into());
                cairn_install::Rule::parse(&disk)
                    .map_err(|e| cx.invalid("profiles", i, "install", e.to_string()))?;
                let raw_disk = images[&key].dir.join(image_dir::DISK);
                if !raw_disk.is_file() {
                    return Err(cx.invalid(
                        "profiles",
                        i,
                        "image",
                        format!(
                            "boot: install needs {} (the image's disk, which the installer copies)",
                            raw_disk.display()
                        ),
                    ));
                }
                Some(super::InstallSpec {
                    disk,
                    overwrite: raw.overwrite,
                })
            }
            (_, Some(_)) => {
                return Err(cx.invalid(
                    "profiles",
                    i,
                    "install",
                    "only a profile with boot: install has install settings".into(),
                ))
            }
            (_, None) => None,
        };
        profiles.push(Profile {
            name: p.name,
            image: key,
            boot: p.boot,
            state_label,
            kernel_args: p.kernel_args,
            cloud_config,
            transport: p.transport,
            install,
        });
    }
    Ok(Checked {
        profiles,
        names: profile_names,
        images,
        bundles,
    })
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub(super) fn read_image(dir: &Path) -> Result<Image, String> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("image folder {}: {e}", dir.display()))?;
    let manifest = canonical.join(image_dir::MANIFEST);
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "{}: {e} (expected an output folder of `cairn build`)",
            manifest.display()
        )
    })?;
    let m: image_dir::Manifest = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: {e} (expected the manifest.json of `cairn build`)",
            manifest.display()
        )
    })?;
    if !is_name(&m.name) || !is_name(&m.version) {
        return Err(format!(
            "{}: name {:?} / version {:?} are not usable in URLs",
            manifest.display(),
            m.name,
            m.version
        ));
    }
    for f in [image_dir::KERNEL, image_dir::PXE_INITRD] {
        if !canonical.join(f).is_file() {
            return Err(format!(
                "{} has no {f} (expected an output folder of `cairn build`)",
                canonical.display()
            ));
        }
    }
    let verity = m
        .verity
        .as_ref()
        .map(|r| r.to_verity())
        .transpose()
        .map_err(|e| format!("{}: verity: {e}", manifest.display()))?;
    Ok(Image {
        dir: canonical,
        name: m.name,
        version: m.version,
        verity,
    })
}
