//! Emulated Envoys for boshy-istio, outside the server they exercise (as go-control-plane
//! keeps its test Envoys in `pkg/test`): [`estate`] makes a synthetic catalog of any size and
//! the changes a benchmark applies to it; [`fleet`] opens N ADS streams that behave like
//! Envoy against an xDS server. The push benchmark (`boshy-bench push`) and the xDS
//! integration tests use both.

#![forbid(unsafe_code)]

pub mod estate;
pub mod fleet;
