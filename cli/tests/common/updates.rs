//! The images the update tests boot and offer, from the cache of built test
//! images (`super::cached_build`): an update key pair from `keygen` kept
//! beside that cache (`update-keys/`, so the images that trust it stay
//! valid across runs), and `images/test.yaml` (the small image) with
//! `update: {channel: lab, keys: [update.pub]}` as 1.0.0 (unsigned: the
//! disk a machine starts from) and signed 2.0.0 and 3.0.0; 5.0.0 adds a
//! unit that always fails (it boots, but is not healthy).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_builder::pipeline::SignOptions;
use cairn_formats::channel::KeyPairFiles;

use super::{cached_build, images_copy, images_root};

pub struct UpdateImages {
    pub keys: KeyPairFiles,
    pub sign: SignOptions,
    images: tempfile::TempDir,
}

impl UpdateImages {
    /// Version `v` (signed unless it is 1.0.0), built unless the cache has it.
    pub fn build(&self, v: &str) -> PathBuf {
        let images = self.images.path().join("images");
        let unhealthy = v == "5.0.0";
        let text = std::fs::read_to_string(images.join("test.yaml")).unwrap();
        assert!(
            text.contains("version: 0.1.0\n") && text.contains("overlay: default.overlay\n"),
            "images/test.yaml changed its version or overlay line"
        );
        let mut text = text.replace("version: 0.1.0\n", &format!("version: {v}\n"));
        if unhealthy {
            let broken = images.join("broken.overlay");
            if !broken.exists() {
                let st = Command::new("cp")
                    .arg("-a")
                    .arg(images.join("default.overlay"))
                    .arg(&broken)
                    .status()
                    .unwrap();
                assert!(st.success());
                let units = broken.join("usr/lib/systemd/system");
                std::fs::write(
                    units.join("cairn-broken.service"),
                    "[Unit]\nDescription=a unit that always fails (update tests)\n\n\
                     [Service]\nType=oneshot\nExecStart=/bin/false\n\n\
                     [Install]\nWantedBy=multi-user.target\n",
                )
                .unwrap();
            }
            text = text
                .replace("overlay: default.overlay\n", "overlay: broken.overlay\n")
                .replace(
                    "    - qemu-guest-agent.service\n",
                    "    - qemu-guest-agent.service\n    - cairn-broken.service\n",
                );
        }
        let text = format!(
            "{text}\nupdate:\n  channel: lab\n  keys: [{}]\n",
            self.keys.public.display()
        );
        let def = images.join(format!("update-{v}.yaml"));
        std::fs::write(&def, text).unwrap();
        let sign = (v != "1.0.0").then_some(&self.sign);
        let t = Instant::now();
        let out = cached_build(&def, &format!("update-{v}"), sign);
        eprintln!("image {v} ready in {:.0?}: {}", t.elapsed(), out.display());
        out
    }
}

/// The update images and their key pair (made on first use).
pub fn update_images() -> UpdateImages {
    let kdir = images_root().join("update-keys");
    let keys = if kdir.join("update.key").exists() {
        let secret = cairn_formats::channel::SecretKey::load(&kdir.join("update.key")).unwrap();
        KeyPairFiles {
            secret: kdir.join("update.key"),
            public: kdir.join("update.pub"),
            key_id: secret.id(),
        }
    } else {
        let _ = std::fs::remove_dir_all(&kdir);
        cairn_formats::channel::keygen(&kdir).unwrap()
    };
    let sign = SignOptions {
        key: keys.secret.clone(),
        channel: None,
        valid_for: Duration::from_secs(30 * 86400),
    };
    UpdateImages {
        keys,
        sign,
        images: images_copy(),
    }
}

/// An inventory for `cairn serve` whose channel `lab` offers `bundle`.
pub fn inventory(profile_image: &Path, bundle: &Path) -> String {
    format!(
        "profiles:\n  - name: lab\n    image: {}\ngroups:\n  - name: lab\n    profile: lab\nupdates:\n  - {}\n",
        profile_image.display(),
        bundle.display()
    )
}
