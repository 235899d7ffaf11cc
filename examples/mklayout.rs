//! Writes a synthetic OCI layout for demos and benchmarks:
//! `mklayout DIR TAG SIZE_MIB...` makes one image of uncompressed random layers, one per size;
//! `mklayout --many N DIR` makes N small images (one 4 KiB layer each) named `app<i>:latest`,
//! one repository each;
//! `mklayout --scale N DIR` makes the synthetic store of issue 16 (see `tests/common/scale.rs`):
//! N small images in N/10 repositories `r00000`.. tagged `t0`..`t9`, sharing eight 4 KiB layers,
//! as one layout at DIR, or as layouts `DIR/part-000`.. over 50,000 images; prints their paths.
//! `mklayout --scale-store N STORE` writes the same images straight into a new store (blob files
//! and one transaction of names; no import: for the scale bench at sizes import is slow at).

#[path = "../tests/common/gen.rs"]
mod gen;
#[path = "../tests/common/scale.rs"]
mod scale;

use std::path::Path;
use std::process::ExitCode;

const MIB: u64 = 1 << 20;
/// The layer size of each `--many` image.
const SMALL_LAYER: u64 = 4096;

fn many(n: &str, dir: &str) -> ExitCode {
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("mklayout: {n:?} is not a number of images");
        return ExitCode::from(2);
    };
    let mut b = gen::LayoutBuilder::new(Path::new(dir));
    for i in 0..n {
        let layer = b.add_random_layer(SMALL_LAYER, i + 1);
        let m = b.add_manifest(&[layer], "amd64");
        b.tag(&m, Some("latest"));
        b.index.last_mut().unwrap().annotations.insert(
            layoutfs::oci::ANNOTATION_IMAGE_NAME.into(),
            format!("app{i:05}:latest"),
        );
    }
    b.write_index();
    ExitCode::SUCCESS
}

fn scale(n: &str, dir: &str) -> ExitCode {
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("mklayout: {n:?} is not a number of images");
        return ExitCode::from(2);
    };
    match scale::write(Path::new(dir), n) {
        Ok(dirs) => {
            for d in dirs {
                println!("{}", d.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mklayout: {dir}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scale_store(n: &str, dir: &str) -> ExitCode {
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("mklayout: {n:?} is not a number of images");
        return ExitCode::from(2);
    };
    match scale::write_store(Path::new(dir), n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mklayout: {dir}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, n, dir] = args.as_slice() {
        if flag == "--many" {
            return many(n, dir);
        }
        if flag == "--scale" {
            return scale(n, dir);
        }
        if flag == "--scale-store" {
            return scale_store(n, dir);
        }
    }
    let (Some(dir), Some(tag)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: mklayout DIR TAG SIZE_MIB... | mklayout --many N DIR | mklayout --scale N DIR"
        );
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
