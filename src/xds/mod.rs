//! xDS: resource generation, snapshot cache, ADS server.
//!
//! `resources` (pure) turns a catalog into encoded Envoy resources; `cache` builds them once
//! per catalog version; `stream` (pure) is one ADS stream's ACK/NACK/nonce bookkeeping;
//! `server` is the tonic service; `bootstrap` renders the Envoy bootstrap that points at it.

pub mod bootstrap;
pub mod cache;
pub mod resources;
pub mod server;
pub mod stream;

pub use server::serve;
