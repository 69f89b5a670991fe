//! The catalog: services, ports, endpoints and VIPs; pure data.

pub mod manifest;
pub mod model;
