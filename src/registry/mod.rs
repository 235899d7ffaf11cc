//! Registries (being written).

pub mod name;
