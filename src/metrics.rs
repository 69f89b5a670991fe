//! Process-wide counters and gauges, rendered in the Prometheus text format by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Default)]
pub struct Metrics {
    pub catalog_services: AtomicU64,
    pub catalog_endpoints: AtomicU64,
    pub catalog_version: AtomicU64,
    pub xds_connected_proxies: AtomicU64,
    pub xds_pushes: AtomicU64,
    pub xds_nacks: AtomicU64,
    pub names_streams: AtomicU64,
    pub director_requests: AtomicU64,
    /// Rule configs with every resource accepted, and with at least one refused.
    pub rule_configs_accepted: AtomicU64,
    pub rule_configs_rejected: AtomicU64,
    /// Director poll errors by kind (e.g. `http_500`, `timeout`, `manifest_yaml`).
    director_poll_errors: Mutex<BTreeMap<String, u64>>,
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    pub(crate) fn director_poll_error(&self, kind: &str) {
        let mut errors = self.director_poll_errors.lock().expect("metrics lock");
        *errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauges = [
            (
                "boshy_catalog_services",
                "Services in the current catalog",
                &self.catalog_services,
            ),
            (
                "boshy_catalog_endpoints",
                "Endpoints in the current catalog",
                &self.catalog_endpoints,
            ),
            (
                "boshy_catalog_version",
                "Content hash of the current catalog",
                &self.catalog_version,
            ),
            (
                "boshy_xds_connected_proxies",
                "Envoy ADS streams open now",
                &self.xds_connected_proxies,
            ),
            (
                "boshy_names_streams",
                "Name-table streams open now",
                &self.names_streams,
            ),
            (
                "boshy_rule_configs_accepted",
                "Rule configs (director configs of type boshy-istio) with every resource accepted",
                &self.rule_configs_accepted,
            ),
            (
                "boshy_rule_configs_rejected",
                "Rule configs with at least one resource refused (GET /v1/rules says why)",
                &self.rule_configs_rejected,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let counters = [
            (
                "boshy_xds_pushes_total",
                "xDS responses sent",
                &self.xds_pushes,
            ),
            (
                "boshy_xds_nacks_total",
                "xDS NACKs received",
                &self.xds_nacks,
            ),
            (
                "boshy_director_requests_total",
                "HTTP requests sent to the director and UAA",
                &self.director_requests,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "boshy_director_poll_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Director poll errors by kind\n# TYPE {name} counter"
        );
        for (kind, count) in self
            .director_poll_errors
            .lock()
            .expect("metrics lock")
            .iter()
        {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {count}");
        }
        out
    }
}
