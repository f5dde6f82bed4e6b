//! `cargo run --release -p cairn-verity --example append_tree -- FILE SEED`:
//! appends the dm-verity tree to FILE in place (salt derived from SEED, as
//! `cairn build` derives it from its input fingerprint) and prints the
//! `veritysetup` arguments that reproduce and check it. Used by
//! `bench/verity-vs-veritysetup.sh`.

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(seed)) = (args.next(), args.next()) else {
        return Err("usage: append_tree FILE SEED".into());
    };
    let file = PathBuf::from(file);
    let salt = cairn_verity::derive_salt(seed.as_bytes());
    let t = Instant::now();
    let v = cairn_verity::append_tree(&file, &salt)?;
    let secs = t.elapsed().as_secs_f64();
    println!("root_hash {}", v.root_hash_hex());
    println!("salt {}", v.salt_hex());
    println!(
        "uuid {}",
        cairn_verity::uuid_string(&cairn_verity::derive_uuid(&salt))
    );
    println!("data_blocks {}", v.data_blocks);
    println!("hash_offset {}", v.hash_offset());
    println!("seconds {secs:.3}");
    Ok(())
}
