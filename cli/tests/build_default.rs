//! Integration test: build `images/default.yaml` from the real Debian
//! archive (the mirror this machine's apt sources name), check the tree
//! inside the squashfs, and check that a rebuild from the lock gives the
//! same bytes. The first build goes through the cache of built test images
//! (the boot tests use the same folder); the rebuild is always made anew
//! and must match it byte for byte, also when the first came from an
//! earlier run. The package cache is shared between test runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::process::Command;

use backhand::{FilesystemReader, InnerNode};
use cairn_builder::pipeline::{build, fingerprint, Manifest};

mod common;
use common::{cached_build, images_copy, opts, test_cache};

enum Kind {
    File(Vec<u8>),
    Link(String),
    Dir,
    Other,
}

struct Node {
    kind: Kind,
    mode: u16,
}

fn read_image(path: &Path) -> BTreeMap<String, Node> {
    let fs = FilesystemReader::from_reader(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut out = BTreeMap::new();
    for n in fs.files() {
        let p = n.fullpath.display().to_string();
        let kind = match &n.inner {
            InnerNode::File(f) => {
                // read only what the checks need: small files
                if f.file_len() < 1 << 20 {
                    let mut buf = Vec::new();
                    fs.file(f).reader().read_to_end(&mut buf).unwrap();
                    Kind::File(buf)
                } else {
                    Kind::File(Vec::new())
                }
            }
            InnerNode::Symlink(s) => Kind::Link(s.link.display().to_string()),
            InnerNode::Dir(_) => Kind::Dir,
            _ => Kind::Other,
        };
        out.insert(
            p,
            Node {
                kind,
                mode: n.header.permissions,
            },
        );
    }
    out
}

/// The squashfs superblock's `bytes_used`.
fn info_bytes_used(image: &Path) -> u64 {
    let mut head = [0u8; 48];
    File::open(image).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], b"hsqs");
    u64::from_le_bytes(head[40..48].try_into().unwrap())
}

fn text(img: &BTreeMap<String, Node>, p: &str) -> String {
    match img.get(p).map(|n| &n.kind) {
        Some(Kind::File(d)) => String::from_utf8_lossy(d).into_owned(),
        _ => panic!("{p} is not a file in the image"),
    }
}

#[test]
fn default_image_builds_reproducibly_and_holds_a_cluster_node() {
    let imgs = images_copy();
    let def = imgs.path().join("images/default.yaml");
    // resolved afresh (the lock is written next to `def`), built unless cached
    let out1 = cached_build(&def, "default", None);
    assert!(def.with_extension("lock").exists());
    let m1: Manifest =
        serde_json::from_slice(&std::fs::read(out1.join("manifest.json")).unwrap()).unwrap();

    // --- what is in the tree
    let image = out1.join("rootfs.squashfs");
    let img = read_image(&image);
    for p in [
        "/usr/lib/systemd/systemd",
        "/usr/sbin/dockerd",
        "/usr/bin/docker",
        "/usr/bin/etcd",
        "/usr/bin/etcdctl",
        "/usr/sbin/sshd",
        "/usr/bin/sudo",
    ] {
        assert!(
            matches!(img.get(p).map(|n| &n.kind), Some(Kind::File(_))),
            "{p} missing"
        );
    }
    assert!(matches!(img.get("/bin").map(|n| &n.kind), Some(Kind::Link(t)) if t == "usr/bin"));
    assert!(matches!(img.get("/sbin").map(|n| &n.kind), Some(Kind::Link(t)) if t == "usr/sbin"));
    assert!(matches!(img.get("/lib").map(|n| &n.kind), Some(Kind::Link(t)) if t == "usr/lib"));
    assert_eq!(
        img["/usr/bin/sudo"].mode & 0o4000,
        0o4000,
        "sudo keeps its setuid bit"
    );
    let passwd = text(&img, "/etc/passwd");
    for user in ["root", "etcd", "messagebus", "core", "sshd"] {
        assert!(
            passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
            "{user} not in /etc/passwd:\n{passwd}"
        );
    }
    let group = text(&img, "/etc/group");
    let docker = group
        .lines()
        .find(|l| l.starts_with("docker:"))
        .expect("docker group");
    assert!(
        docker.ends_with(":core") || docker.contains("core"),
        "{docker}"
    );
    let wants = "/etc/systemd/system/multi-user.target.wants";
    for unit in ["etcd.service", "ssh.service"] {
        assert!(
            img.contains_key(&format!("{wants}/{unit}")),
            "{unit} not enabled"
        );
    }
    // Docker is socket-activated (as on CoreOS): the socket listens from
    // boot, dockerd and containerd start on its first use, and the
    // preloaded images are loaded whenever docker.service starts
    let etc = "/etc/systemd/system";
    assert!(
        matches!(img.get(&format!("{etc}/sockets.target.wants/docker.socket")).map(|n| &n.kind),
            Some(Kind::Link(t)) if t == "/usr/lib/systemd/system/docker.socket"),
        "docker.socket is not enabled"
    );
    for unit in ["docker.service", "containerd.service"] {
        let links: Vec<&String> = img
            .keys()
            .filter(|k| {
                k.starts_with(&format!("{etc}/"))
                    && !k.starts_with(&format!("{etc}/{unit}."))
                    && k.ends_with(&format!("/{unit}"))
            })
            .collect();
        assert!(
            links.is_empty(),
            "{unit} must not start at boot, but these links pull it in: {links:?}"
        );
    }
    assert!(
        matches!(img.get(&format!("{etc}/docker.service.wants/cairn-preload-images.service")).map(|n| &n.kind),
            Some(Kind::Link(t)) if t == "/usr/lib/systemd/system/cairn-preload-images.service"),
        "cairn-preload-images.service is not wanted by docker.service"
    );
    let docker_unit = text(&img, "/usr/lib/systemd/system/docker.service");
    assert!(
        docker_unit.contains("Requires=docker.socket")
            && docker_unit.contains("fd://")
            && docker_unit
                .lines()
                .any(|l| l.starts_with("Wants=") && l.contains("containerd.service")),
        "docker.service takes its socket from systemd and brings containerd:\n{docker_unit}"
    );
    for gone in [
        "/usr/bin/apt",
        "/usr/bin/apt-get",
        "/usr/bin/dpkg",
        "/var/lib/dpkg/status",
    ] {
        assert!(!img.contains_key(gone), "{gone} should not be in the image");
    }
    assert!(!img
        .keys()
        .any(|k| k.starts_with("/usr/share/doc/") || k.starts_with("/usr/share/man/")));
    // Debian's ipxe package: its network-boot programs are next to the
    // image (for cairn serve), not in it
    assert!(!img
        .keys()
        .any(|k| k.starts_with("/usr/lib/ipxe") || k.starts_with("/boot/ipxe")));
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        let data =
            std::fs::read(out1.join("ipxe").join(f)).unwrap_or_else(|e| panic!("ipxe/{f}: {e}"));
        assert!(data.len() > 50_000, "ipxe/{f} is only {} bytes", data.len());
        assert!(
            m1.artifacts.iter().any(|a| a.name == format!("ipxe/{f}")),
            "ipxe/{f} is not in the manifest"
        );
    }
    // the UEFI programs are PE files, undionly.kpxe a PXE NBP
    assert_eq!(
        &std::fs::read(out1.join("ipxe/ipxe.efi")).unwrap()[..2],
        b"MZ"
    );
    assert!(
        !img.keys().any(|k| k.starts_with("/etc/ssh/ssh_host_")),
        "host keys must not be baked"
    );
    let os = text(&img, "/usr/lib/os-release");
    assert!(
        os.contains("ID=cairn") && os.contains("VERSION_ID=0.1.0"),
        "{os}"
    );
    assert_eq!(text(&img, "/etc/machine-id"), "");
    assert!(text(&img, "/etc/sudoers.d/core").contains("NOPASSWD"));
    let kver = img
        .keys()
        .find_map(|k| {
            k.strip_prefix("/usr/lib/modules/")
                .filter(|r| !r.contains('/'))
        })
        .expect("a kernel module tree")
        .to_string();
    let dep = text(&img, &format!("/usr/lib/modules/{kver}/modules.dep"));
    assert!(
        dep.lines().any(|l| l.contains("squashfs.ko")),
        "modules.dep lists squashfs"
    );

    // --- an independent reader agrees the image is a zstd squashfs
    let o = Command::new("unsquashfs")
        .arg("-s")
        .arg(&image)
        .output()
        .expect("unsquashfs (squashfs-tools) installed");
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && info.contains("zstd"), "{info}");

    // --- manifest
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out1.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["name"], "cairn");
    let art = &m["artifacts"][0];
    assert_eq!(art["name"], "rootfs.squashfs");
    assert_eq!(
        art["size"].as_u64().unwrap(),
        std::fs::metadata(&image).unwrap().len()
    );
    assert!(m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "docker.io"));

    // --- dm-verity: the tree after the squashfs passes Debian's veritysetup
    // (the independent checker) with the manifest's root hash and offset
    let v = m1
        .verity
        .as_ref()
        .expect("manifest.json records the verity tree")
        .to_verity()
        .unwrap();
    assert_eq!(
        v.data_blocks,
        (info_bytes_used(&image)).div_ceil(4096),
        "the data area is the squashfs, padded to a block"
    );
    let o = Command::new("veritysetup")
        .arg("verify")
        .arg(&image)
        .arg(&image)
        .arg(v.root_hash_hex())
        .arg(format!("--hash-offset={}", v.hash_offset()))
        .output()
        .expect("veritysetup (cryptsetup-bin) installed");
    assert!(
        o.status.success(),
        "veritysetup verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // slot A's entry on the disk names that hash
    let disk = cairn_disk::inspect(&out1.join("disk.raw")).unwrap();
    let entries = &disk.esp.as_ref().expect("an ESP").boot_entries;
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]
            .1
            .contains(&format!("options cairn.slot=a {} ", v.to_cmdline_word())),
        "{}",
        entries[0].1
    );
    // `cairn inspect` shows the slot's root hash and that the entry agrees
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("inspect")
        .arg(&out1)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        shown.contains(&format!("root hash {}", v.root_hash_hex())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "cairn-{}.conf: agrees (entry and slot a's tree)",
            m1.version
        )),
        "{shown}"
    );
    // the network-boot initramfs holds the same bytes (squashfs and tree)
    let root_bytes = std::fs::read(&image).unwrap();
    let pxe = std::fs::read(out1.join("pxe-initrd.img")).unwrap();
    let at = pxe
        .windows(16)
        .position(|w| w == b"rootfs.squashfs\0")
        .expect("rootfs.squashfs in pxe-initrd.img")
        + 16;
    let at = at.next_multiple_of(4);
    assert_eq!(
        &pxe[at..at + root_bytes.len()],
        &root_bytes[..],
        "pxe-initrd.img carries rootfs.squashfs with its tree"
    );
    drop((root_bytes, pxe));

    // --- a second build from the lock gives the same bytes
    let out2 = imgs.path().join("out2");
    let s2 = build(&opts(&def, &out2, false)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!s2.lock_written);
    assert!(!s2.up_to_date, "a new output folder is built");
    assert_eq!(
        m1.artifacts, s2.manifest.artifacts,
        "rebuild from the lock is byte-identical"
    );
    assert_eq!(m1.inputs, s2.manifest.inputs);
    assert_eq!(m1.verity, s2.manifest.verity, "the same salt and root hash");

    // --- nothing changed: the output folder is current and is not rebuilt
    let s3 = build(&opts(&def, &out2, false)).unwrap();
    assert!(s3.up_to_date);
    // ...until an input changes: a new overlay file
    std::fs::write(
        imgs.path().join("images/default.overlay/etc/cairn-test"),
        "x",
    )
    .unwrap();
    // (what `build` compares with the folder's manifest before it skips)
    let changed = fingerprint(&opts(&def, &out2, false)).unwrap();
    assert_ne!(changed, s2.manifest.inputs, "an overlay file is an input");

    // --- a tampered .deb in the cache is refused, names the package, and is not kept
    let lock = cairn_builder::lock::Lock::read(&def.with_extension("lock")).unwrap();
    let victim = lock.packages.iter().find(|p| p.name == "sudo").unwrap();
    let cache = cairn_builder::fetch::Cache::open(&test_cache()).unwrap();
    let blob = cache.blob_path(&victim.sha256);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let out3 = imgs.path().join("out3");
    let e = build(&opts(&def, &out3, false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("sudo") && msg.contains("tampered"), "{msg}");
    assert!(!blob.exists(), "the tampered file is deleted");
    assert!(!out3.join("rootfs.squashfs").exists(), "nothing is built");
}
