//! Registries (being written).

pub mod auth;
pub mod name;
