//! OCI archives: the deterministic tar streamer for export and the reader of layouts and
//! archives for import.

pub mod export;
pub mod import;
mod tarfmt;

pub use export::{open_output, ExportOptions, Plan};
pub use import::{import, Imported, Source};
