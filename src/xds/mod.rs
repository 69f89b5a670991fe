//! xDS: resource generation, snapshot cache, ADS server.

pub mod bootstrap;
