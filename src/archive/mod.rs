//! Image sets in and out of the store. `import` reads a source (a layout directory, a tar
//! stream) through a format (the OCI layout) into the store and registers its images;
//! `export` decides the blobs and images to send and streams them to a destination (the
//! deterministic tar streamer). `tarfmt` writes the tar headers.

pub mod export;
pub mod import;
mod tarfmt;

pub use export::{open_output, ExportOptions, Plan};
pub use import::{import, Imported, Source};
