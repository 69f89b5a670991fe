//! The name-table stream: served by the pilot, followed by every virtual-ip-agent.
//!
//! # Wire format
//!
//! The agent sends `GET /v1/names/watch` to the pilot's names port (default 15011) over
//! HTTP/1.1 or HTTP/2, in TLS. The pilot answers `200` with `content-type: application/x-ndjson` and a
//! response that never ends: one JSON object per line, each with exactly one key:
//!
//! ```text
//! {"table":{"version":1234,"tld":"boshy","names":{"example-httpbin.banana.sample-deployment.boshy":"169.254.255.1"}}}
//! {"heartbeat":1234}
//! ```
//!
//! - `table` is the whole `NameTable` (hostname → VIP, derived from the catalog, and under
//!   `origins` each name's deployment, instance group, job and ports, which the agent labels
//!   request metrics with; docs/telemetry.md). It is sent first, as soon as the pilot has a
//!   catalog from the director, and again whenever the table changes (pushed when the catalog
//!   is swapped, not polled). A catalog change that changes no name, VIP, origin or port
//!   (endpoints, health) sends nothing: the table would be the same. Tables are small (about
//!   a hundred bytes per service), so every update is whole and the follower needs no merge
//!   logic.
//! - `heartbeat` carries the version of the last table sent on this stream (0 before the
//!   first) and is sent after 10 s without any other line, so a follower can tell a quiet
//!   pilot from a dead connection: after 30 s without a byte it reconnects.
//! - A pilot that has not yet read the director (catalog version 0) sends only heartbeats:
//!   a restarting pilot must not wipe every agent's table with an empty one.
//!
//! An agent that reports its instance's health (docs/health.md) names the instance:
//! `GET /v1/names/watch?deployment=<name>&instance=<id>`. When the director lists that instance
//! at the address the stream comes from, the pilot also sends, after the first table and again
//! whenever they change, what the agent probes:
//!
//! ```text
//! {"probes":{"address":"10.244.0.24","ports":[9002]}}
//! ```
//!
//! A VM registered into a WorkloadGroup (docs/workloads.md) names its registration
//! (`deployment=<config>&instance=<registration id>`); its line also says what the agent runs
//! instead of connecting to the ports, and how often it reports even unchanged
//! (`AgentSettings::workload_heartbeat_seconds`; docs/health.md):
//!
//! ```text
//! {"probes":{"address":"10.249.0.30","ports":[5672],"workload":{"probe":{"initial_delay_seconds":0,
//!   "timeout_seconds":1,"period_seconds":10,"success_threshold":1,"failure_threshold":3,
//!   "action":{"tcp_socket":{"port":5672}}},"heartbeat_seconds":10}}}
//! ```
//!
//! A BOSH instance's line has no `workload` key, so agents of earlier releases take it.
//!
//! Followers that name no instance never get such a line. The agent's reports
//! (`POST /v1/names/health`) and its drain (`GET /v1/names/drained`) are requests of their own
//! on the same port, and count only while its stream is open. So is its request for the VM's
//! workload certificate (`POST /v1/identity/csr`, `identity::wire`; docs/security.md), which
//! needs no stream: 404 on a pilot without `identity`.
//!
//! A follower keeps one stream open to every configured pilot at once, so losing a pilot
//! costs nothing. Each line must be valid JSON of the shape above, at most 16 MiB, and a
//! table must pass `wire::validate` (lower-case names under the tld, link-local VIPs); any
//! other line is logged with the pilot's address and the connection is dropped and retried
//! with backoff. A valid table is published only when it differs from the one last published.
//!
//! The stream runs over mutual TLS (`serve_tls`, and `follow` with a client config; see
//! `crate::tls`): the pilot streams only to followers with a certificate from the mesh CA, and
//! a follower takes tables only from a pilot with one. Then the bare `host:port` form means
//! `https://host:port`. Plaintext (`serve`, `follow` without TLS) is for tests and the
//! configs' explicit `insecure_plaintext` opt-out.

mod follower;
mod server;
pub mod stream_status;
pub mod table;
pub mod wire;

pub(crate) use follower::{base_url, error_chain, http_client};
pub use follower::{follow, wait_drained, AgentLink};
pub use server::{
    serve, serve_tls, serve_tls_with, serve_with, AgentSettings, DEFAULT_WORKLOAD_HEARTBEAT_SECONDS,
};

#[cfg(test)]
mod tests;
