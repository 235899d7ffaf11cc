//! Writes a synthetic OCI layout for demos and benchmarks:
//! `mklayout DIR TAG SIZE_MIB...` makes one image of uncompressed random layers, one per size.

#[path = "../tests/common/gen.rs"]
mod gen;

use std::path::Path;
use std::process::ExitCode;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(tag)) = (args.first(), args.get(1)) else {
        eprintln!("usage: mklayout DIR TAG SIZE_MIB...");
        return ExitCode::from(2);
    };
    let mut sizes = Vec::new();
    for s in &args[2..] {
        match s.parse::<u64>() {
            Ok(n) => sizes.push(n),
            Err(_) => {
                eprintln!("mklayout: {s:?} is not a size in MiB");
                return ExitCode::from(2);
            }
        }
    }
    let mut b = gen::LayoutBuilder::new(Path::new(dir));
    let layers: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, mib)| b.add_random_layer(mib * MIB, i as u64 + 1))
        .collect();
    let m = b.add_manifest(&layers, "amd64");
    b.tag(&m, Some(tag));
    b.write_index();
    println!("{}", m.digest);
    ExitCode::SUCCESS
}
