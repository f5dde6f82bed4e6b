//! A minimal initramfs packer built on the library, for trying `/init` by
//! hand and as a reference for the builder: it packs the static `/init`,
//! `/dev/console`, the closure of the default kernel modules plus
//! `modules.order-cairn`, any extra host files (mke2fs and its libraries),
//! and optionally the root squashfs for `cairn.root=ram`. Output is an
//! uncompressed newc archive (the kernel accepts that as is).
//!
//! ```text
//! cargo run -p cairn-initrd --example mkinitrd -- \
//!     --init target/x86_64-unknown-linux-gnu/release/init \
//!     --modules /tmp/k/root/lib/modules/6.1.0-56-amd64 \
//!     --with /sbin/mke2fs --with /lib/x86_64-linux-gnu/libext2fs.so.2 ... \
//!     [--root-image rootfs.squashfs] [--load-all-modules] --out initrd.img
//! ```
//!
//! Filtered `modules.dep` and `modules.alias` are carried too, so `/init`
//! loads device drivers per device present; `--load-all-modules` leaves
//! them out, and `/init` then loads every listed module.
//!
//! `--with SRC[=DEST]` copies a host file (symlinks followed) to DEST
//! (default: the same path). `--modules DIR` is `/lib/modules/<release>`
//! of an unpacked kernel with `modules.dep` (run `depmod -b` first).

use std::path::Path;

use cairn_initrd::{
    closure_with_builtin, modules, CpioWriter, DEFAULT_MODULES, MODULES_ORDER_FILE,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("mkinitrd: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut init = None;
    let mut mods = None;
    let mut with = Vec::new();
    let mut root_image = None;
    let mut out = None;
    let mut load_all = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--init" => init = Some(val()?),
            "--modules" => mods = Some(val()?),
            "--with" => with.push(val()?),
            "--root-image" => root_image = Some(val()?),
            "--out" => out = Some(val()?),
            "--load-all-modules" => load_all = true,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let init = init.ok_or("--init is required")?;
    let out = out.ok_or("--out is required")?;
    let epoch: u32 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);

    let mut w = CpioWriter::new(std::io::BufWriter::new(std::fs::File::create(&out)?), epoch);
    cairn_initrd::layout::add_skeleton(&mut w, &std::fs::read(&init)?)?;
    if let Some(dir) = mods {
        let dir = Path::new(&dir);
        let release = dir
            .file_name()
            .ok_or("bad --modules")?
            .to_string_lossy()
            .into_owned();
        let dep = std::fs::read_to_string(dir.join("modules.dep"))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let list = closure_with_builtin(&dep, &builtin, DEFAULT_MODULES)?;
        let base = cairn_initrd::layout::modules_dir(&release);
        for rel in &list {
            w.add_file(
                &format!("{base}/{rel}"),
                0o644,
                0,
                0,
                &std::fs::read(dir.join(rel))?,
            )?;
        }
        if !load_all {
            // With these, /init loads device drivers only for devices present.
            let dep = modules::filter_dep(&dep, &list);
            w.add_file(&format!("{base}/modules.dep"), 0o644, 0, 0, dep.as_bytes())?;
            let alias = std::fs::read_to_string(dir.join("modules.alias"))?;
            let alias = modules::filter_alias(&alias, &list);
            w.add_file(
                &format!("{base}/modules.alias"),
                0o644,
                0,
                0,
                alias.as_bytes(),
            )?;
        }
        w.add_file(
            &format!("{base}/{MODULES_ORDER_FILE}"),
            0o644,
            0,
            0,
            modules::order_file(&list).as_bytes(),
        )?;
        eprintln!("mkinitrd: {} modules for {release}", list.len());
    }
    for spec in &with {
        let (src, dest) = spec.split_once('=').unwrap_or((spec, spec));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(src)?.permissions());
        w.add_file(dest, mode & 0o7777, 0, 0, &std::fs::read(src)?)?;
    }
    if let Some(img) = root_image {
        w.add_file(
            cairn_initrd::RAM_ROOT_IMAGE,
            0o644,
            0,
            0,
            &std::fs::read(img)?,
        )?;
    }
    w.finish()?;
    Ok(())
}
