//! The images the update tests boot and offer, built once into a folder
//! shared by the test binaries (`target/cairn-test-updates`,
//! `CAIRN_TEST_UPDATES` overrides): an update key pair from `keygen`, and
//! `images/test.yaml` with `update: {channel: lab, keys: [update.pub]}` as
//! 1.0.0 (unsigned: the disk a machine starts from) and signed 2.0.0 and
//! 3.0.0; 5.0.0 adds a unit that always fails (it boots, but is not
//! healthy). A later binary finds the builds current and only re-signs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_builder::pipeline::{self, SignOptions};
use cairn_updater::KeyPairFiles;

use super::{images_copy, opts, repo_root};

pub struct UpdateImages {
    pub keys: KeyPairFiles,
    pub sign: SignOptions,
    dir: PathBuf,
    images: tempfile::TempDir,
}

impl UpdateImages {
    /// The output folder of version `v` ("1.0.0" → `v1`).
    pub fn out(&self, v: &str) -> PathBuf {
        self.dir.join(format!("v{}", v.split('.').next().unwrap()))
    }

    /// Builds version `v` (signed unless it is 1.0.0) if it is not current.
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
        let out = self.out(v);
        let sign = (v != "1.0.0").then_some(&self.sign);
        let t = Instant::now();
        pipeline::build_signed(&opts(&def, &out, true), sign)
            .unwrap_or_else(|e| panic!("building {v} from {}: {e:#}", def.display()));
        eprintln!("image {v} ready in {:.0?}: {}", t.elapsed(), out.display());
        out
    }
}

/// The shared folder and its key pair (made on first use).
pub fn update_images() -> UpdateImages {
    let dir = std::env::var_os("CAIRN_TEST_UPDATES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cairn-test-updates"));
    let kdir = dir.join("keys");
    let keys = if kdir.join("update.key").exists() {
        let secret = cairn_updater::SecretKey::load(&kdir.join("update.key")).unwrap();
        KeyPairFiles {
            secret: kdir.join("update.key"),
            public: kdir.join("update.pub"),
            key_id: secret.id(),
        }
    } else {
        let _ = std::fs::remove_dir_all(&kdir);
        cairn_updater::keygen(&kdir).unwrap()
    };
    let sign = SignOptions {
        key: keys.secret.clone(),
        channel: None,
        valid_for: Duration::from_secs(30 * 86400),
    };
    UpdateImages {
        keys,
        sign,
        dir,
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
