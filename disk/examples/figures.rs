//! Writes a default-layout (4 GiB) disk with a slot image and a few ESP
//! files, then prints the time taken, the allocated size and what
//! `inspect` shows. Usage:
//! `cargo run --release -p cairn-disk --example figures -- OUT.raw [SLOT_MIB [ESP_MIB]]`

use std::path::PathBuf;
use std::time::Instant;

use cairn_disk::{bls_entry, entry_file_name, inspect, loader_conf, write_disk, BootEntry};
use cairn_disk::{DiskSpec, EspSource};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .expect("usage: figures OUT.raw [SLOT_MIB [ESP_MIB]]"),
    );
    let slot_mib: usize = args.next().map_or(100, |s| s.parse().expect("SLOT_MIB"));
    let esp_mib: usize = args.next().map_or(1, |s| s.parse().expect("ESP_MIB"));
    let slot = out.with_extension("slot");
    std::fs::write(&slot, noise(7, slot_mib << 20)).unwrap();
    let entry = BootEntry {
        title: "cairn 1.0.0".into(),
        version: "1.0.0".into(),
        machine_id: None,
        linux: "/cairn/1.0.0/vmlinuz".into(),
        initrd: "/cairn/1.0.0/initrd".into(),
        options: "cairn.slot=cairn-a".into(),
        sort_key: None,
    };
    let mut spec = DiskSpec::new("figures 1.0.0");
    spec.mtime = 1_700_000_000;
    spec.slot_a = Some(&slot);
    spec.esp_files = vec![
        (
            "loader/loader.conf".into(),
            loader_conf(cairn_disk::DEFAULT_MENU_TIMEOUT).into(),
        ),
        (
            format!("loader/entries/{}", entry_file_name("1.0.0", Some(3))),
            bls_entry(&entry).into(),
        ),
        (
            "cairn/1.0.0/vmlinuz".into(),
            EspSource::from(noise(8, esp_mib << 20)),
        ),
    ];
    let t = Instant::now();
    let report = write_disk(&out, &spec).unwrap();
    let elapsed = t.elapsed();
    println!(
        "wrote {} ({} bytes, {slot_mib} MiB slot image, {esp_mib} MiB ESP file) in {elapsed:.2?}; {} bytes allocated",
        out.display(),
        report.size,
        report.allocated_bytes
    );
    let t = Instant::now();
    let info = inspect(&out).unwrap();
    println!("inspect took {:.2?}\n", t.elapsed());
    print!("{info}");
    std::fs::remove_file(&slot).unwrap();
}
