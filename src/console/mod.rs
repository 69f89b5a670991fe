//! The live web console (docs/console.md): a page the pilot serves at `/console/` that draws
//! the service graph and the pilot's tables from its own API, refreshing on its own.
//!
//! - `wire` (pure): what each agent reports of its VM's calls, a window at a time
//!   (`telemetry::calls` counts them on the VM).
//! - `board`: the pilot's last window of each instance, behind a mutex.
//! - `graph` (pure): the catalog and the current windows → `GET /v1/graph`.
//! - `local`: `boshy mesh console`, the operator's way in from a browser: a loopback server
//!   that adds the operator's credentials to what it forwards to the pilot.
//! - `assets/`: the page, its script and its style, compiled into the binary.

pub(crate) mod board;
pub(crate) mod graph;
pub(crate) mod local;
pub(crate) mod wire;

pub use board::TrafficBoard;

/// The console's files, by name under `/console/`: content type and content.
pub(crate) fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "" | "index.html" => Some((
            "text/html; charset=utf-8",
            include_str!("assets/index.html"),
        )),
        "console.js" => Some((
            "text/javascript; charset=utf-8",
            include_str!("assets/console.js"),
        )),
        "console.css" => Some((
            "text/css; charset=utf-8",
            include_str!("assets/console.css"),
        )),
        _ => None,
    }
}
