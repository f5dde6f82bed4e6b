//! `cairn_disk::config_drive::write` read back by independent tools:
//! `mdir`/`mtype` (mtools) for the label and the files, `fsck.fat -n`
//! (dosfstools) for the file system, `blkid` (util-linux) for the label as
//! udev and `cairn-cloudinit` look it up. A missing tool fails the test
//! with the Debian package to install.

use std::process::Command;

use cairn_disk::config_drive::{self, META_DATA, USER_DATA};

fn run_ok(tool: &str, package: &str, args: &[&str]) -> String {
    let o = match Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{tool} not found: install the Debian package `{package}`")
        }
        Err(e) => panic!("running {tool}: {e}"),
    };
    assert!(
        o.status.success(),
        "{tool} {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn config_drive_reads_back_with_mtools_fsck_and_blkid() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("config.img");
    let user_data = "#cloud-config\nhostname: vm1\n";
    let meta_data = r#"{"hostname": "vm1", "public_keys": {"me": "ssh-ed25519 AAAA me"}}"#;
    config_drive::write(
        &img,
        &[
            (USER_DATA, user_data.as_bytes()),
            (META_DATA, meta_data.as_bytes()),
        ],
    )
    .unwrap();
    let i = img.to_str().unwrap();

    let root = run_ok("mdir", "mtools", &["-i", i, "::/"]);
    assert!(root.contains("Volume in drive : is config-2"), "{root}");
    let latest = run_ok("mdir", "mtools", &["-i", i, "::/openstack/latest"]);
    assert!(
        latest.contains("user_data") && latest.contains("meta_data.json"),
        "{latest}"
    );
    assert_eq!(
        run_ok("mtype", "mtools", &["-i", i, &format!("::/{USER_DATA}")]),
        user_data
    );
    assert_eq!(
        run_ok("mtype", "mtools", &["-i", i, &format!("::/{META_DATA}")]),
        meta_data
    );

    let fsck = run_ok("fsck.fat", "dosfstools", &["-n", i]);
    assert!(
        !fsck.contains("Fix?") && !fsck.contains("differences"),
        "{fsck}"
    );

    let label = run_ok(
        "blkid",
        "util-linux",
        &["-p", "-o", "value", "-s", "LABEL", i],
    );
    assert_eq!(label.trim(), config_drive::LABEL);

    // sparse: the 36 MiB file takes little room
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).unwrap()) * 512;
    assert!(used < 2 << 20, "{used} bytes allocated");

    // user_data alone is a drive too
    let only = t.path().join("only.img");
    config_drive::write(&only, &[(USER_DATA, b"#!/bin/sh\n")]).unwrap();
    let o = only.to_str().unwrap();
    assert_eq!(
        run_ok("mtype", "mtools", &["-i", o, &format!("::/{USER_DATA}")]),
        "#!/bin/sh\n"
    );
}
