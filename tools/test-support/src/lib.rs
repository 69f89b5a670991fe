//! What boshy-istio's integration and end-to-end tests share, one helper per setup (as
//! linkerd2-proxy keeps its test support in a crate of its own): the tests depend on this
//! crate instead of including files by path.
//!
//! - [`lab`]: drives `boshy-lab` for a lab of the test's own.
//! - [`netns`]: a network namespace of the test's own.
//! - [`dns_agent`]: a real virtual-ip-agent process answering from a table on disk.
//! - [`envoy`]: a real Envoy beside an in-process server, in a private network namespace.
//! - [`jobs`]: this release's job specs and the `bosh-pilot` link, as tests render jobs.
//! - [`manifests`]: this release's manifests as the bosh CLI and the director see them.
//! - [`process`]: running a command and reading how it ended.
//! - [`prometheus`]: a real Prometheus scraping a lab, and its query API.
//! - [`zipkin`]: a collector taking spans on the Zipkin v2 HTTP API.
//! - [`chromium`]: a real headless Chromium: a page's DOM after its scripts, a screenshot.
//! - [`fuzz`]: the property-based fuzzers' runner.
//! - [`uaa`]: tokens from the director simulator's UAA.
//! - [`tls`]: a TLS client of the pilot's ports with no certificate.
//! - [`workloads`]: real pilots with joining VMs on, and a VM's and an operator's clients.

#![forbid(unsafe_code)]

pub mod chromium;
pub mod dns_agent;
pub mod envoy;
pub mod fuzz;
pub mod jobs;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod tls;
pub mod uaa;
pub mod workloads;
pub mod zipkin;

use std::path::PathBuf;

/// The workspace binary `name` (see `boshy_lab::binaries::workspace`); panics with the reason
/// when it is not built.
pub fn workspace_binary(name: &str) -> PathBuf {
    boshy_lab::binaries::workspace(name).unwrap_or_else(|e| panic!("{e:#}"))
}
