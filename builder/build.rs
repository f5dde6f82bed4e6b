//! Builds the static programs `cairn build` puts into images: `/init`
//! (crate `cairn-initrd`, in every initramfs) and the on-host agents
//! `cairn-cloudinit` and `cairn-update` (crate `cairn-updater`), and fleet's
//! `fleetd` and `fleetctl`, in every root image), and hands their paths to
//! the builder through `CAIRN_INIT_PATH`, `CAIRN_CLOUDINIT_PATH`,
//! `CAIRN_UPDATE_PATH`, `CAIRN_FLEETD_PATH` and `CAIRN_FLEETCTL_PATH` so the
//! `cairn` binary carries them (include_bytes!).
//!
//! A nested cargo with its own target directory (`target/cairn-agents`,
//! shared by every outer build): they must be linked with
//! `-C target-feature=+crt-static` (an image's glibc need not match the
//! workstation's), which cannot apply to the rest of the workspace
//! (proc-macros cannot be static).

use std::path::{Path, PathBuf};
use std::process::Command;

/// FNV-1a over a file, or every file below a directory (path relative to
/// `root` and content, sorted): a cheap, stable fingerprint of the sources a
/// build's output depends on, the same in every clone of the repository.
fn hash_tree(h: &mut u64, root: &Path, path: &Path) {
    if path.is_dir() {
        let Ok(rd) = std::fs::read_dir(path) else {
            return;
        };
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            hash_tree(h, root, &p);
        }
    } else if let Ok(data) = std::fs::read(path) {
        let rel = path.strip_prefix(root).unwrap_or(path);
        for b in rel.to_string_lossy().bytes().chain(data) {
            *h ^= u64::from(b);
            *h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("initrd/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("initrd/Cargo.toml").display()
    );
    // the agents, their HTTP (cairn-fetch) and their contracts:
    // partitions, command line, the update channel
    for d in [
        "cloudinit/src",
        "cloudinit/Cargo.toml",
        "updater/src",
        "updater/Cargo.toml",
        "fetch/src",
        "fetch/Cargo.toml",
        "formats/src",
        "formats/Cargo.toml",
        "fleet/src",
        "fleet/Cargo.toml",
        "fleetd/src",
        "fleetd/Cargo.toml",
        "fleetctl/src",
        "fleetctl/Cargo.toml",
        "etcd/src",
        "etcd/Cargo.toml",
        "verity/src",
        "verity/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(d).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let target = "x86_64-unknown-linux-gnu";
    // One target directory for every outer build (test, check, clippy, doc
    // and their profiles all run this script with their own OUT_DIR): the
    // agents are built once and later runs find them fresh.
    // `CAIRN_AGENTS_DIR` names it outright: CI lints with its own
    // CARGO_TARGET_DIR (so clippy and the tests never wait on each other's
    // lock) and points clippy here at the agents the test build made.
    println!("cargo:rerun-if-env-changed=CAIRN_AGENTS_DIR");
    let target_dir = match std::env::var_os("CAIRN_AGENTS_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|d| if d.is_relative() { root.join(d) } else { d })
            .unwrap_or_else(|| root.join("target"))
            .join("cairn-agents"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Two runs: in one, cargo unifies the features of the packages it
    // builds, and /init must not link what the agents' `cairn-formats`
    // features bring (the update channel's ed25519, JSON and chrono).
    // Not `--offline`: on a fresh machine the outer build (`cargo run
    // --release`, cairn-cli alone) has not downloaded the crates only the
    // agents use, so this build fetches them; `--locked` keeps it to the
    // versions Cargo.lock names and never rewrites it.
    let build = |packages: &[(&str, &str)]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "--locked", "--release"]);
        for (package, bin) in packages {
            cmd.args(["-p", package, "--bin", bin]);
        }
        let status = cmd
            .args(["--target", target])
            .arg("--target-dir")
            .arg(&target_dir)
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            )
            // stripped anyway: no debug info to make and throw away
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            // do not inherit the outer build's settings meant for the host
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            // `cargo clippy` sets this for the outer build: the agents are
            // linted by its own run over the workspace, not rebuilt under it
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .expect("running cargo to build the static /init and agents");
        let names: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
        assert!(
            status.success(),
            "building the static {} failed",
            names.join(", ")
        );
    };
    build(&[("cairn-initrd", "init")]);
    build(&[
        ("cairn-cloudinit", "cairn-cloudinit"),
        ("cairn-updater", "cairn-update"),
        ("cairn-fleetd", "fleetd"),
        ("cairn-fleetctl", "fleetctl"),
    ]);
    let init = target_dir.join(target).join("release/init");
    assert!(init.exists(), "{} was not built", init.display());
    println!("cargo:rustc-env=CAIRN_INIT_PATH={}", init.display());
    let cloudinit = target_dir.join(target).join("release/cairn-cloudinit");
    assert!(cloudinit.exists(), "{} was not built", cloudinit.display());
    println!(
        "cargo:rustc-env=CAIRN_CLOUDINIT_PATH={}",
        cloudinit.display()
    );
    let update = target_dir.join(target).join("release/cairn-update");
    assert!(update.exists(), "{} was not built", update.display());
    println!("cargo:rustc-env=CAIRN_UPDATE_PATH={}", update.display());
    let fleetd = target_dir.join(target).join("release/fleetd");
    assert!(fleetd.exists(), "{} was not built", fleetd.display());
    println!("cargo:rustc-env=CAIRN_FLEETD_PATH={}", fleetd.display());
    let fleetctl = target_dir.join(target).join("release/fleetctl");
    assert!(fleetctl.exists(), "{} was not built", fleetctl.display());
    println!("cargo:rustc-env=CAIRN_FLEETCTL_PATH={}", fleetctl.display());

    // What the image bytes depend on besides the definition and the lock:
    // the code of the builder and the crates it packs with, and the lock of
    // their dependencies. Part of the output's up-to-date fingerprint.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for d in [
        "builder/src",
        "debian/src",
        "initrd/src",
        "disk/src",
        "cloudinit/src",
        "cloudinit/units",
        "cloudconfig/src",
        "updater/src",
        "updater/units",
        "fetch/src",
        "formats/src",
        "fleet/src",
        "fleetd/src",
        "fleetd/units",
        "fleetctl/src",
        "etcd/src",
        "verity/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(d).display());
        hash_tree(&mut h, &root, &root.join(d));
    }
    hash_tree(&mut h, &root, &root.join("Cargo.lock"));
    for bin in [&init, &cloudinit, &update, &fleetd, &fleetctl] {
        if let Ok(bin) = std::fs::read(bin) {
            for b in bin {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    println!("cargo:rustc-env=CAIRN_SOURCE_HASH={h:016x}");
}
