//! boshy-istio: an Envoy service mesh for every BOSH-deployed VM.
//!
//! Pure logic (catalog, traffic rules, VIP allocation, xDS resources, DNS answers, rule
//! rendering) has no I/O; I/O lives at the edges (director client, servers, iptables).

// The one exception, the agent's batched UDP system calls (`virtual_ip_agent::transport::udp_batch`), is
// allowed where that module is declared.
#![deny(unsafe_code)]

pub mod admission;
pub mod api;
pub mod api_auth;
pub mod bookinfo;
pub mod catalog;
pub mod config;
pub mod console;
pub mod director;
pub mod dnat;
pub mod fsutil;
pub mod health;
pub mod httpbin;
pub mod identity;
pub mod join;
pub mod logging;
pub mod mesh_cli;
pub mod metrics;
pub mod names;
pub mod pilot;
pub mod rule_status;
pub mod rules;
pub mod rules_check;
pub mod scope;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod traffic;
pub mod vip;
pub mod virtual_ip_agent;
pub mod workload;
pub mod workloads;
pub mod xds;
