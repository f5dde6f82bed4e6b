//! Converts a raw disk image to a streamOptimized VMDK with
//! `cairn_disk::vmdk::write` and prints the time taken and the report.
//! Usage: `cargo run --release -p cairn-disk --example vmdk -- RAW OUT.vmdk`

use std::path::PathBuf;
use std::time::Instant;

use cairn_disk::vmdk;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: vmdk RAW OUT.vmdk";
    let raw = PathBuf::from(args.next().expect(usage));
    let out = PathBuf::from(args.next().expect(usage));
    if args.next().is_some() {
        panic!("{usage}");
    }
    let started = Instant::now();
    match vmdk::write(&raw, &out) {
        Ok(r) => println!(
            "{:.2} s: {} bytes virtual, {} bytes VMDK ({:.1} MiB), {} data grains, {} zero, {} \
             grain tables, CID {:08x}",
            started.elapsed().as_secs_f64(),
            r.virtual_size,
            r.file_size,
            r.file_size as f64 / (1 << 20) as f64,
            r.data_grains,
            r.zero_grains,
            r.grain_tables,
            r.cid
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
