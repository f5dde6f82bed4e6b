//! Converts a raw disk image to qcow2 with `cairn_disk::qcow2::write` and
//! prints the time taken and the report. Usage:
//! `cargo run --release -p cairn-disk --example qcow2 -- RAW OUT.qcow2 [--plain]`

use std::path::PathBuf;
use std::time::Instant;

use cairn_disk::qcow2::{self, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: qcow2 RAW OUT.qcow2 [--plain]";
    let raw = PathBuf::from(args.next().expect(usage));
    let out = PathBuf::from(args.next().expect(usage));
    let compress = match args.next().as_deref() {
        None => true,
        Some("--plain") => false,
        Some(_) => panic!("{usage}"),
    };
    let started = Instant::now();
    match qcow2::write(&raw, &out, &Options { compress }) {
        Ok(r) => println!(
            "{:.2} s: {} bytes virtual, {} bytes qcow2 ({:.1} MiB), {} data clusters, {} \
             compressed, {} zero",
            started.elapsed().as_secs_f64(),
            r.virtual_size,
            r.file_size,
            r.file_size as f64 / (1 << 20) as f64,
            r.data_clusters,
            r.compressed_clusters,
            r.zero_clusters
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
