//! xDS: resource generation, snapshot cache, ADS server.
//!
//! `resources` (pure) turns a catalog into encoded Envoy resources, with `inbound`,
//! `mtls` and `rbac` (pure) for each workload's inbound listener, mutual TLS and
//! authorization; `cache` builds them once
//! per catalog version; `sotw` (pure) is one state-of-the-world ADS stream's
//! ACK/NACK/nonce bookkeeping and `delta` (pure) the same for incremental ADS; `server` is
//! the ADS service (tonic's HTTP/2 server, gRPC framing by hand in `grpc`); `bootstrap`
//! renders the Envoy bootstrap that points at it. The emulated Envoys that load it in the
//! benchmarks and tests live outside the product, in `tools/xds-fleet`.

pub mod bootstrap;
pub mod cache;
pub(crate) mod client;
pub(crate) mod delta;
pub mod grpc;
pub(crate) mod inbound;
pub(crate) mod mtls;
pub mod proxy_status;
pub(crate) mod rbac;
pub mod resources;
pub(crate) mod routes;
pub mod server;
pub(crate) mod sotw;
pub(crate) mod stream_config;
pub mod sync;
pub mod telemetry;

pub use server::serve;
