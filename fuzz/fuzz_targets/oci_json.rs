//! The JSON parsers of untrusted layout files: see `checks::oci_json`.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::oci_json(data));
