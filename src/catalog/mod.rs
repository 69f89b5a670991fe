//! The catalog: services, ports, endpoints and VIPs; pure data.

mod build;
pub(crate) mod labels;
pub mod manifest;
pub mod model;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub(crate) mod yaml_limits;

pub use build::{build, diff, hostnames, rehash, with_entries, Built, CatalogDiff, Hostnames};
