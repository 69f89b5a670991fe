//! The name-table stream: served by the pilot, followed by every virtual-ip-agent.
//!
//! # Wire format
//!
//! The agent sends `GET /v1/names/watch` to the pilot's names port (default 15011) over plain
//! HTTP/1.1 (or h2c). The pilot answers `200` with `content-type: application/x-ndjson` and a
//! response that never ends: one JSON object per line, each with exactly one key:
//!
//! ```text
//! {"table":{"version":1234,"tld":"boshy","names":{"example-httpbin.banana.sample-deployment.boshy":"169.254.255.1"}}}
//! {"heartbeat":1234}
//! ```
//!
//! - `table` is the whole `NameTable` (hostname → VIP, derived from the catalog). It is sent
//!   first, as soon as the pilot has a catalog from the director, and again whenever the
//!   table changes (pushed when the catalog is swapped, not polled). A catalog change that
//!   does not change any name or VIP (endpoints, ports) sends nothing: the table would be
//!   the same. Tables are small (tens of bytes per service), so every update is whole and
//!   the follower needs no merge logic.
//! - `heartbeat` carries the version of the last table sent on this stream (0 before the
//!   first) and is sent after 10 s without any other line, so a follower can tell a quiet
//!   pilot from a dead connection: after 30 s without a byte it reconnects.
//! - A pilot that has not yet read the director (catalog version 0) sends only heartbeats:
//!   a restarting pilot must not wipe every agent's table with an empty one.
//!
//! A follower keeps one stream open to every configured pilot at once, so losing a pilot
//! costs nothing. Each line must be valid JSON of the shape above, at most 16 MiB, and a
//! table must pass `wire::validate` (lower-case names under the tld, link-local VIPs); any
//! other line is logged with the pilot's address and the connection is dropped and retried
//! with backoff. A valid table is published only when it differs from the one last published.
//!
//! The stream carries no secret and is not authenticated; integrity on untrusted networks
//! (mTLS with the xDS certificates) is future work.

mod follower;
mod server;
pub mod table;
pub mod wire;

pub use follower::follow;
pub use server::serve;

#[cfg(test)]
mod tests;
