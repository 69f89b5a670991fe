//! The catalog: services, ports, endpoints and VIPs; pure data.

pub mod model;
