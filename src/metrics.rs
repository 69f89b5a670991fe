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
    /// Instances whose health a connected virtual-ip-agent reports.
    pub agents_reporting: AtomicU64,
    pub agent_reports: AtomicU64,
    /// ADS streams serving their VM's scope (docs/scope.md), and names added to scopes.
    pub xds_scoped_streams: AtomicU64,
    pub scope_adds: AtomicU64,
    pub director_requests: AtomicU64,
    /// Health readings (`instances?format=full` tasks) asked of the director.
    pub director_health_tasks: AtomicU64,
    /// In milliseconds: the age of the oldest health reading among deployments that need one,
    /// and the longest time between a deployment's last two readings.
    pub director_health_age_ms: AtomicU64,
    pub director_health_cycle_ms: AtomicU64,
    /// Rule configs with every resource accepted, and with at least one refused.
    pub rule_configs_accepted: AtomicU64,
    pub rule_configs_rejected: AtomicU64,
    /// Workload certificates the pilot signed (docs/security.md).
    pub identity_certificates_issued: AtomicU64,
    /// Director poll errors by kind (e.g. `http_500`, `timeout`, `manifest_yaml`).
    director_poll_errors: Mutex<BTreeMap<String, u64>>,
    /// Agent reports and stream identities refused, by reason.
    agent_refusals: Mutex<BTreeMap<String, u64>>,
    /// Requests the HTTP API refused, by reason (docs/api.md).
    api_refusals: Mutex<BTreeMap<String, u64>>,
    /// Certificate requests refused, by reason.
    identity_refusals: Mutex<BTreeMap<String, u64>>,
    /// NACKs of resources built from a rule config, by config name.
    rule_config_nacks: Mutex<BTreeMap<String, u64>>,
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    pub(crate) fn director_poll_error(&self, kind: &str) {
        count(&self.director_poll_errors, kind);
    }

    pub(crate) fn agent_refusal(&self, reason: &str) {
        count(&self.agent_refusals, reason);
    }

    pub(crate) fn api_refusal(&self, reason: &str) {
        count(&self.api_refusals, reason);
    }

    pub(crate) fn identity_refusal(&self, reason: &str) {
        count(&self.identity_refusals, reason);
    }

    pub(crate) fn rule_config_nack(&self, config: &str) {
        count(&self.rule_config_nacks, config);
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
                "boshy_xds_scoped_streams",
                "ADS streams of BOSH instances, following their VM's scope (one waiting for it, or given the whole mesh after the wait, counts too)",
                &self.xds_scoped_streams,
            ),
            (
                "boshy_agents_reporting",
                "Instances whose health a connected virtual-ip-agent reports (the director's job_state is the fallback for the others)",
                &self.agents_reporting,
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
        let seconds_gauges = [
            (
                "boshy_director_health_age_seconds",
                "Age of the oldest health reading among deployments that need one",
                &self.director_health_age_ms,
            ),
            (
                "boshy_director_health_cycle_seconds",
                "Longest time between a deployment's last two health readings (the cycle achieved)",
                &self.director_health_cycle_ms,
            ),
        ];
        for (name, help, millis) in seconds_gauges {
            let seconds = millis.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {seconds:.3}"
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
            (
                "boshy_scope_adds_total",
                "Names a virtual-ip-agent put into its VM's scope (first lookups)",
                &self.scope_adds,
            ),
            (
                "boshy_agent_reports_total",
                "Health reports taken from virtual-ip-agents",
                &self.agent_reports,
            ),
            (
                "boshy_identity_certificates_issued_total",
                "Workload certificates signed for the VMs' certificate requests",
                &self.identity_certificates_issued,
            ),
            (
                "boshy_director_health_tasks_total",
                "Health readings (instances?format=full tasks) asked of the director",
                &self.director_health_tasks,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        labelled_counter(
            &mut out,
            (
                "boshy_director_poll_errors_total",
                "Director poll errors by kind",
            ),
            "kind",
            &self.director_poll_errors,
        );
        labelled_counter(
            &mut out,
            (
                "boshy_agent_refusals_total",
                "Agent health reports and instance claims refused, by reason",
            ),
            "reason",
            &self.agent_refusals,
        );
        labelled_counter(
            &mut out,
            (
                "boshy_api_refusals_total",
                "Requests the HTTP API refused (401, 403, 503), by reason",
            ),
            "reason",
            &self.api_refusals,
        );
        labelled_counter(
            &mut out,
            (
                "boshy_identity_refusals_total",
                "Workload certificate requests refused, by reason",
            ),
            "reason",
            &self.identity_refusals,
        );
        labelled_counter(
            &mut out,
            (
                "boshy_xds_rule_config_nacks_total",
                "xDS NACKs of resources built from a rule config, by config",
            ),
            "config",
            &self.rule_config_nacks,
        );
        out
    }
}

fn count(counts: &Mutex<BTreeMap<String, u64>>, label: &str) {
    let mut counts = counts.lock().expect("metrics lock");
    *counts.entry(label.to_string()).or_default() += 1;
}

/// A counter with one label, each value a line; values are escaped as the text format
/// requires (a config name is the director's, not ours).
fn labelled_counter(
    out: &mut String,
    (name, help): (&str, &str),
    label: &str,
    counts: &Mutex<BTreeMap<String, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in counts.lock().expect("metrics lock").iter() {
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(out, "{name}{{{label}=\"{escaped}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        let counts = Mutex::new(BTreeMap::from([("a\"b\\c\nd".to_string(), 2)]));
        let mut out = String::new();
        labelled_counter(&mut out, ("m_total", "help"), "config", &counts);
        assert!(
            out.ends_with("m_total{config=\"a\\\"b\\\\c\\nd\"} 2\n"),
            "{out}"
        );
    }
}
