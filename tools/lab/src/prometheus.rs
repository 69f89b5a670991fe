//! The Prometheus scrape configuration of the lab (`lab prometheus-config`), as an operator
//! writes one for the mesh (docs/telemetry.md): the pilots' `/metrics` over HTTPS, and every
//! addon VM's Envoy metrics listener, `/metrics` (request metrics) and `/stats/prometheus`
//! (Envoy's own), each with a client certificate the mesh CA signed.

use serde_json::{json, Value};

use super::pki::{MeshFiles, ADDON_SERVER_NAME, PILOT_SERVER_NAME};
use super::vm::{API_PORT, CONTROL_PLANE_DEPLOYMENT};
use super::LabState;

/// Envoy's metrics listener (bosh-envoy's `metrics.port`).
pub const METRICS_PORT: u16 = 15090;

/// The scrape configuration, as YAML, scraping every `interval_seconds`.
pub fn config(state: &LabState, interval_seconds: u32) -> String {
    let mesh = MeshFiles::of(&state.layout);
    let tls = |server_name: &str| {
        json!({
            "ca_file": mesh.ca(),
            "cert_file": mesh.scraper_cert(),
            "key_file": mesh.scraper_key(),
            "server_name": server_name,
        })
    };
    let targets = |control_plane: bool, port: u16| -> Vec<Value> {
        state
            .vms
            .iter()
            .filter(|vm| (vm.deployment == CONTROL_PLANE_DEPLOYMENT) == control_plane)
            .map(|vm| {
                json!({
                    "targets": [format!("{}:{port}", vm.ip)],
                    "labels": {
                        "bosh_deployment": vm.deployment,
                        "bosh_instance": format!("{}/{}", vm.instance_group, vm.id),
                    },
                })
            })
            .collect()
    };
    let job = |name: &str, path: &str, server_name: &str, control_plane: bool, port: u16| {
        json!({
            "job_name": name,
            "scheme": "https",
            "metrics_path": path,
            "tls_config": tls(server_name),
            "static_configs": targets(control_plane, port),
        })
    };
    let config = json!({
        "global": {
            "scrape_interval": format!("{interval_seconds}s"),
            "evaluation_interval": format!("{interval_seconds}s"),
        },
        "scrape_configs": [
            job("boshy-pilot", "/metrics", PILOT_SERVER_NAME, true, API_PORT),
            job("boshy-requests", "/metrics", ADDON_SERVER_NAME, false, METRICS_PORT),
            job("envoy", "/stats/prometheus", ADDON_SERVER_NAME, false, METRICS_PORT),
        ],
    });
    serde_yaml::to_string(&config).expect("a JSON value always serializes to YAML")
}
