//! layoutfs: a local content-addressed store of container images, shown as OCI image-layout
//! directories. This crate holds the store, the OCI model, import and export, and the
//! filesystem with its FUSE adapter; `main.rs` is a thin command line over it.

pub mod archive;
pub mod cli;
pub mod content;
pub mod convert;
pub mod digest;
pub mod docker;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod layout;
pub mod oci;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;

pub use error::{Error, Result};
