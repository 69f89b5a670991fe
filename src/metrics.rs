//! Process-wide counters, gauges and histograms, rendered in the OpenMetrics text format by
//! `/metrics` (docs/metrics.md describes every one).
//!
//! Plain gauges and counters are atomics the code bumps where things happen; labelled
//! families and histograms are `prometheus-client`'s. `render` registers them all in a
//! registry of its own at every scrape, so the exposition is one format throughout.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct resource names a NACK counter keeps as label values; the NACKs of any further
/// resource count under `other`, so a misbehaving estate cannot grow the exposition without
/// bound.
const MAX_NACKED_RESOURCES: usize = 100;

/// Label values of a family: (name, value) pairs in a fixed order.
type LabelSet<const N: usize> = [(&'static str, Cow<'static, str>); N];
type CounterFamily<const N: usize> = Family<LabelSet<N>, Counter>;
type HistogramFamily<const N: usize> = Family<LabelSet<N>, Histogram, fn() -> Histogram>;

/// Bounds of the histograms of durations, in seconds: from a fast local answer to a
/// director or a fleet of Envoys that takes minutes.
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

pub struct Metrics {
    pub catalog_services: AtomicU64,
    pub catalog_endpoints: AtomicU64,
    pub catalog_version: AtomicU64,
    pub xds_connected_proxies: AtomicU64,
    pub names_streams: AtomicU64,
    /// Instances whose health a connected virtual-ip-agent reports.
    pub agents_reporting: AtomicU64,
    pub agent_reports: AtomicU64,
    /// ADS streams serving their VM's scope (docs/scope.md), and names added to scopes.
    pub xds_scoped_streams: AtomicU64,
    pub scope_adds: AtomicU64,
    /// Health readings (`instances?format=full` tasks) asked of the director.
    pub director_health_tasks: AtomicU64,
    /// Tasks the director started for the pilot (the 302s to a task it answered).
    pub director_tasks_started: AtomicU64,
    /// In milliseconds: the age of the oldest health reading among deployments that need one,
    /// and the longest time between a deployment's last two readings.
    pub director_health_age_ms: AtomicU64,
    pub director_health_cycle_ms: AtomicU64,
    /// Rule configs with every resource accepted, and with at least one refused.
    pub rule_configs_accepted: AtomicU64,
    pub rule_configs_rejected: AtomicU64,
    /// Workload certificates the pilot signed (docs/security.md).
    pub identity_certificates_issued: AtomicU64,
    /// The VIP pool as of the last successful sync: usable addresses, assigned ones, and
    /// released ones still in quarantine.
    pub vip_pool_size: AtomicU64,
    pub vip_pool_used: AtomicU64,
    pub vip_pool_quarantined: AtomicU64,
    /// Syncs that left a new hostname without a VIP because the pool was full.
    pub vip_pool_exhausted: AtomicU64,
    /// VMs registered into WorkloadGroups (docs/workloads.md), as this pilot last read or
    /// wrote the store, and how many of them are healthy endpoints now.
    pub workload_registrations: AtomicU64,
    pub workload_registrations_healthy: AtomicU64,
    /// Writes of the registration store this pilot made (one per batch of changes), the
    /// races it lost (412s, each re-read and retried), and its re-reads after another
    /// pilot's write.
    pub workload_store_writes: AtomicU64,
    pub workload_store_conflicts: AtomicU64,
    pub workload_store_reads: AtomicU64,
    /// VMs that joined (a certificate signed), left, and were deregistered for silence.
    pub workload_joins: AtomicU64,
    pub workload_leaves: AtomicU64,
    pub workload_deregistrations: AtomicU64,
    pub workload_renewals: AtomicU64,
    /// xDS responses sent, ACKs and NACKs received, by type (and NACKs by resource).
    xds_pushes: CounterFamily<1>,
    xds_acks: CounterFamily<1>,
    xds_nacks: CounterFamily<2>,
    nacked_resources: Mutex<BoundedValues>,
    /// From a new snapshot's inputs changing to every connected Envoy having answered it.
    xds_convergence: Histogram,
    /// Requests to the director and UAA by method, route and result, and their durations.
    director_requests: CounterFamily<3>,
    director_request_duration: HistogramFamily<2>,
    /// Director poll errors by kind (e.g. `http_500`, `timeout`, `manifest_yaml`).
    director_poll_errors: CounterFamily<1>,
    /// Agent reports and stream identities refused, by reason.
    agent_refusals: CounterFamily<1>,
    /// Requests the HTTP API refused, by reason (docs/api.md).
    api_refusals: CounterFamily<1>,
    /// Certificate requests refused, by reason.
    identity_refusals: CounterFamily<1>,
    /// Joins and other changes of the registrations refused, by reason.
    workload_refusals: CounterFamily<1>,
    /// NACKs of resources built from a rule config, by config name.
    rule_config_nacks: CounterFamily<1>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            catalog_services: AtomicU64::default(),
            catalog_endpoints: AtomicU64::default(),
            catalog_version: AtomicU64::default(),
            xds_connected_proxies: AtomicU64::default(),
            names_streams: AtomicU64::default(),
            agents_reporting: AtomicU64::default(),
            agent_reports: AtomicU64::default(),
            xds_scoped_streams: AtomicU64::default(),
            scope_adds: AtomicU64::default(),
            director_health_tasks: AtomicU64::default(),
            director_tasks_started: AtomicU64::default(),
            director_health_age_ms: AtomicU64::default(),
            director_health_cycle_ms: AtomicU64::default(),
            rule_configs_accepted: AtomicU64::default(),
            rule_configs_rejected: AtomicU64::default(),
            identity_certificates_issued: AtomicU64::default(),
            vip_pool_size: AtomicU64::default(),
            vip_pool_used: AtomicU64::default(),
            vip_pool_quarantined: AtomicU64::default(),
            vip_pool_exhausted: AtomicU64::default(),
            workload_registrations: AtomicU64::default(),
            workload_registrations_healthy: AtomicU64::default(),
            workload_store_writes: AtomicU64::default(),
            workload_store_conflicts: AtomicU64::default(),
            workload_store_reads: AtomicU64::default(),
            workload_joins: AtomicU64::default(),
            workload_leaves: AtomicU64::default(),
            workload_deregistrations: AtomicU64::default(),
            workload_renewals: AtomicU64::default(),
            xds_pushes: Family::default(),
            xds_acks: Family::default(),
            xds_nacks: Family::default(),
            nacked_resources: Mutex::new(BoundedValues::new(MAX_NACKED_RESOURCES)),
            xds_convergence: seconds_histogram(),
            director_requests: Family::default(),
            director_request_duration: Family::new_with_constructor(seconds_histogram),
            director_poll_errors: Family::default(),
            agent_refusals: Family::default(),
            api_refusals: Family::default(),
            identity_refusals: Family::default(),
            workload_refusals: Family::default(),
            rule_config_nacks: Family::default(),
        }
    }
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// How one request to the director ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirectorResult {
    /// Any 2xx or 3xx (a 302 to a task is the expected answer to a task's request).
    Answered(u16),
    Timeout,
    /// No HTTP answer: connection refused, TLS failure, a body cut short.
    Error,
}

impl DirectorResult {
    fn label(self) -> Cow<'static, str> {
        match self {
            DirectorResult::Answered(status) if status < 400 => "ok".into(),
            DirectorResult::Answered(status) => format!("http_{status}").into(),
            DirectorResult::Timeout => "timeout".into(),
            DirectorResult::Error => "error".into(),
        }
    }
}

impl Metrics {
    pub(crate) fn director_poll_error(&self, kind: &str) {
        count(&self.director_poll_errors, "kind", kind);
    }

    pub(crate) fn agent_refusal(&self, reason: &str) {
        count(&self.agent_refusals, "reason", reason);
    }

    pub(crate) fn api_refusal(&self, reason: &str) {
        count(&self.api_refusals, "reason", reason);
    }

    pub(crate) fn identity_refusal(&self, reason: &str) {
        count(&self.identity_refusals, "reason", reason);
    }

    pub(crate) fn workload_refusal(&self, reason: &str) {
        count(&self.workload_refusals, "reason", reason);
    }

    pub(crate) fn rule_config_nack(&self, config: &str) {
        count(&self.rule_config_nacks, "config", config);
    }

    /// An xDS response of type `xds_type` (its short name: `cds`, `eds`…) sent.
    pub(crate) fn xds_push(&self, xds_type: &'static str) {
        self.xds_pushes
            .get_or_create(&[("type", xds_type.into())])
            .inc();
    }

    pub(crate) fn xds_ack(&self, xds_type: &'static str) {
        self.xds_acks
            .get_or_create(&[("type", xds_type.into())])
            .inc();
    }

    /// A NACK of type `xds_type`; `resource` is the rejected resource Envoy's message names,
    /// if it names one of ours.
    pub(crate) fn xds_nack(&self, xds_type: &'static str, resource: Option<&str>) {
        let resource = match resource {
            Some(name) => self
                .nacked_resources
                .lock()
                .expect("metrics lock")
                .admit(name),
            None => "unknown".into(),
        };
        self.xds_nacks
            .get_or_create(&[("type", xds_type.into()), ("resource", resource)])
            .inc();
    }

    /// Every connected Envoy answered a snapshot `elapsed` after its inputs changed.
    pub(crate) fn xds_converged(&self, elapsed: Duration) {
        self.xds_convergence.observe(elapsed.as_secs_f64());
    }

    /// One request to the director (or UAA) on `route` (a template such as
    /// `/deployments/:name`), how it ended and how long it took.
    pub(crate) fn director_request(
        &self,
        method: &'static str,
        route: &'static str,
        result: DirectorResult,
        elapsed: Duration,
    ) {
        self.director_requests
            .get_or_create(&[
                ("method", method.into()),
                ("route", route.into()),
                ("result", result.label()),
            ])
            .inc();
        self.director_request_duration
            .get_or_create(&[("method", method.into()), ("route", route.into())])
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
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
                "boshy_xds_connected_proxies",
                "Envoy ADS streams open now",
                &self.xds_connected_proxies,
            ),
            (
                "boshy_names_streams",
                "Name-table streams open now (one per connected virtual-ip-agent and pilot)",
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
            (
                "boshy_vip_pool_size",
                "Addresses of virtual_ip_cidr that may be VIPs",
                &self.vip_pool_size,
            ),
            (
                "boshy_vip_pool_used",
                "VIPs assigned to a hostname",
                &self.vip_pool_used,
            ),
            (
                "boshy_vip_pool_quarantined",
                "Released VIPs whose quarantine is not over",
                &self.vip_pool_quarantined,
            ),
            (
                "boshy_workload_registrations",
                "VMs registered into WorkloadGroups, as this pilot last read the registration store",
                &self.workload_registrations,
            ),
            (
                "boshy_workload_registrations_healthy",
                "Registered VMs that are healthy endpoints now (a heartbeat within the TTL, probe passing)",
                &self.workload_registrations_healthy,
            ),
        ];
        for (name, help, value) in gauges {
            let value = i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            registry.register(name, help, ConstGauge::new(value));
        }
        // A content hash uses all 64 bits; Prometheus holds every sample as a float anyway.
        registry.register(
            "boshy_catalog_version",
            "Content hash of the current catalog",
            ConstGauge::new(self.catalog_version.load(Ordering::Relaxed) as f64),
        );
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
            registry.register(name, help, ConstGauge::new(seconds));
        }
        // Counters are named without `_total`: the format adds it to their samples.
        let counters = [
            (
                "boshy_scope_adds",
                "Names a virtual-ip-agent put into its VM's scope (first lookups)",
                &self.scope_adds,
            ),
            (
                "boshy_agent_reports",
                "Health reports taken from virtual-ip-agents",
                &self.agent_reports,
            ),
            (
                "boshy_identity_certificates_issued",
                "Workload certificates signed for the VMs' certificate requests",
                &self.identity_certificates_issued,
            ),
            (
                "boshy_director_health_tasks",
                "Health readings (instances?format=full tasks) asked of the director",
                &self.director_health_tasks,
            ),
            (
                "boshy_director_tasks_started",
                "Tasks the director started for the pilot",
                &self.director_tasks_started,
            ),
            (
                "boshy_vip_pool_exhausted",
                "VIP syncs that left a new hostname without a VIP: the pool was full",
                &self.vip_pool_exhausted,
            ),
            (
                "boshy_workload_store_writes",
                "Writes of the registration store (director config boshy-workloads) this pilot made, one per batch of changes; never per heartbeat",
                &self.workload_store_writes,
            ),
            (
                "boshy_workload_store_conflicts",
                "Writes of the registration store another pilot won (412), each re-read and retried",
                &self.workload_store_conflicts,
            ),
            (
                "boshy_workload_store_reads",
                "Reads of the registration store (at start, before each write, after another pilot's write event)",
                &self.workload_store_reads,
            ),
            (
                "boshy_workload_joins",
                "VMs that joined a WorkloadGroup through this pilot",
                &self.workload_joins,
            ),
            (
                "boshy_workload_leaves",
                "Registrations removed at once through this pilot (a VM leaving, or an operator)",
                &self.workload_leaves,
            ),
            (
                "boshy_workload_deregistrations",
                "Registrations this pilot removed after the grace period without a heartbeat",
                &self.workload_deregistrations,
            ),
            (
                "boshy_workload_renewals",
                "Joined VMs' certificates this pilot renewed",
                &self.workload_renewals,
            ),
        ];
        for (name, help, value) in counters {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
        registry.register(
            "boshy_xds_pushes",
            "xDS responses sent, by type",
            self.xds_pushes.clone(),
        );
        registry.register(
            "boshy_xds_acks",
            "xDS responses Envoys accepted (ACK), by type",
            self.xds_acks.clone(),
        );
        registry.register(
            "boshy_xds_nacks",
            "xDS responses Envoys rejected (NACK), by type and the rejected resource its error names (unknown: none; other: beyond the first 100 names)",
            self.xds_nacks.clone(),
        );
        registry.register(
            "boshy_xds_convergence_seconds",
            "From a change of the inputs (catalog built from the director, rules) to every connected Envoy answering the snapshot built from it",
            self.xds_convergence.clone(),
        );
        registry.register(
            "boshy_director_requests",
            "HTTP requests sent to the director and UAA, by method, route and result",
            self.director_requests.clone(),
        );
        registry.register(
            "boshy_director_request_duration_seconds",
            "Duration of the requests to the director and UAA, by method and route",
            self.director_request_duration.clone(),
        );
        let by_label = [
            (
                "boshy_director_poll_errors",
                "Director poll errors by kind",
                &self.director_poll_errors,
            ),
            (
                "boshy_agent_refusals",
                "Agent health reports and instance claims refused, by reason",
                &self.agent_refusals,
            ),
            (
                "boshy_api_refusals",
                "Requests the HTTP API refused (401, 403, 503), by reason",
                &self.api_refusals,
            ),
            (
                "boshy_identity_refusals",
                "Workload certificate requests refused, by reason",
                &self.identity_refusals,
            ),
            (
                "boshy_workload_refusals",
                "Joins and other changes of the registrations refused, by reason",
                &self.workload_refusals,
            ),
            (
                "boshy_xds_rule_config_nacks",
                "xDS NACKs of resources built from a rule config, by config",
                &self.rule_config_nacks,
            ),
        ];
        for (name, help, family) in by_label {
            registry.register(name, help, family.clone());
        }
        let mut out = String::new();
        encode(&mut out, &registry).expect("metrics encode to a String");
        out
    }
}

fn count(family: &CounterFamily<1>, label: &'static str, value: &str) {
    family.get_or_create(&[(label, escaped(value))]).inc();
}

/// `value` escaped as the text format requires: prometheus-client writes label values as
/// they are, and some come from outside (a rule config's name, a resource name in Envoy's
/// message).
pub(crate) fn escaped(value: &str) -> Cow<'static, str> {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Label values admitted as they come, up to a limit; later ones are `other`.
#[derive(Debug)]
struct BoundedValues {
    limit: usize,
    admitted: HashSet<String>,
}

impl BoundedValues {
    fn new(limit: usize) -> Self {
        BoundedValues {
            limit,
            admitted: HashSet::new(),
        }
    }

    fn admit(&mut self, value: &str) -> Cow<'static, str> {
        if self.admitted.contains(value) || self.admitted.len() < self.limit {
            self.admitted.insert(value.to_string());
            escaped(value)
        } else {
            "other".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .collect()
    }

    #[test]
    fn plain_metrics_keep_their_sample_names() {
        let metrics = Metrics::default();
        metrics.catalog_services.store(3, Ordering::Relaxed);
        metrics.agent_reports.store(5, Ordering::Relaxed);
        metrics
            .director_health_age_ms
            .store(1500, Ordering::Relaxed);
        metrics.catalog_version.store(u64::MAX, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE boshy_catalog_services gauge\n"),
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "boshy_catalog_services"),
            ["boshy_catalog_services 3"]
        );
        assert!(
            text.contains("# TYPE boshy_agent_reports counter\n"),
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "boshy_agent_reports_total"),
            ["boshy_agent_reports_total 5"]
        );
        assert_eq!(
            lines_of(&text, "boshy_director_health_age_seconds"),
            ["boshy_director_health_age_seconds 1.5"]
        );
        assert_eq!(lines_of(&text, "boshy_catalog_version").len(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn xds_counters_are_labelled_by_type_and_nacked_resource() {
        let metrics = Metrics::default();
        metrics.xds_push("cds");
        metrics.xds_push("cds");
        metrics.xds_push("lds");
        metrics.xds_ack("cds");
        metrics.xds_nack("lds", Some("outbound"));
        metrics.xds_nack("rds", None);
        let text = metrics.render();
        assert!(text.contains("# TYPE boshy_xds_pushes counter\n"), "{text}");
        let mut pushes = lines_of(&text, "boshy_xds_pushes_total");
        pushes.sort();
        assert_eq!(
            pushes,
            [
                "boshy_xds_pushes_total{type=\"cds\"} 2",
                "boshy_xds_pushes_total{type=\"lds\"} 1"
            ]
        );
        assert_eq!(
            lines_of(&text, "boshy_xds_acks_total"),
            ["boshy_xds_acks_total{type=\"cds\"} 1"]
        );
        let mut nacks = lines_of(&text, "boshy_xds_nacks_total");
        nacks.sort();
        assert_eq!(
            nacks,
            [
                "boshy_xds_nacks_total{type=\"lds\",resource=\"outbound\"} 1",
                "boshy_xds_nacks_total{type=\"rds\",resource=\"unknown\"} 1"
            ]
        );
    }

    #[test]
    fn nacked_resource_names_beyond_the_limit_count_as_other() {
        let metrics = Metrics::default();
        for n in 0..=MAX_NACKED_RESOURCES {
            metrics.xds_nack("cds", Some(&format!("cluster-{n}")));
        }
        metrics.xds_nack("cds", Some("cluster-0"));
        let text = metrics.render();
        let nacks = lines_of(&text, "boshy_xds_nacks_total");
        assert_eq!(nacks.len(), MAX_NACKED_RESOURCES + 1, "{text}");
        assert!(nacks.contains(&"boshy_xds_nacks_total{type=\"cds\",resource=\"other\"} 1"));
        assert!(nacks.contains(&"boshy_xds_nacks_total{type=\"cds\",resource=\"cluster-0\"} 2"));
    }

    #[test]
    fn director_requests_are_labelled_by_method_route_and_result() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis;
        metrics.director_request("GET", "/deployments", DirectorResult::Answered(200), ms(20));
        metrics.director_request(
            "GET",
            "/deployments/:name/instances",
            DirectorResult::Answered(302),
            ms(20),
        );
        metrics.director_request("GET", "/deployments", DirectorResult::Answered(500), ms(3));
        metrics.director_request("GET", "/events", DirectorResult::Timeout, ms(30_000));
        metrics.director_request("POST", "/oauth/token", DirectorResult::Error, ms(1));
        let text = metrics.render();
        let mut requests = lines_of(&text, "boshy_director_requests_total");
        requests.sort();
        assert_eq!(
            requests,
            [
                "boshy_director_requests_total{method=\"GET\",route=\"/deployments\",result=\"http_500\"} 1",
                "boshy_director_requests_total{method=\"GET\",route=\"/deployments\",result=\"ok\"} 1",
                "boshy_director_requests_total{method=\"GET\",route=\"/deployments/:name/instances\",result=\"ok\"} 1",
                "boshy_director_requests_total{method=\"GET\",route=\"/events\",result=\"timeout\"} 1",
                "boshy_director_requests_total{method=\"POST\",route=\"/oauth/token\",result=\"error\"} 1",
            ]
        );
        assert!(text.contains("# TYPE boshy_director_request_duration_seconds histogram\n"));
        let mut durations = lines_of(&text, "boshy_director_request_duration_seconds_count");
        durations.sort();
        assert_eq!(
            durations,
            [
                "boshy_director_request_duration_seconds_count{method=\"GET\",route=\"/deployments\"} 2",
                "boshy_director_request_duration_seconds_count{method=\"GET\",route=\"/deployments/:name/instances\"} 1",
                "boshy_director_request_duration_seconds_count{method=\"GET\",route=\"/events\"} 1",
                "boshy_director_request_duration_seconds_count{method=\"POST\",route=\"/oauth/token\"} 1",
            ]
        );
        assert!(
            text.contains(
                "boshy_director_request_duration_seconds_bucket{le=\"30.0\",method=\"GET\",route=\"/events\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn convergence_is_a_histogram_in_seconds() {
        let metrics = Metrics::default();
        metrics.xds_converged(Duration::from_millis(40));
        metrics.xds_converged(Duration::from_secs(3));
        let text = metrics.render();
        assert!(
            text.contains("# TYPE boshy_xds_convergence_seconds histogram\n"),
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "boshy_xds_convergence_seconds_count"),
            ["boshy_xds_convergence_seconds_count 2"]
        );
        assert_eq!(
            lines_of(&text, "boshy_xds_convergence_seconds_sum"),
            ["boshy_xds_convergence_seconds_sum 3.04"]
        );
        assert!(
            text.contains("boshy_xds_convergence_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("boshy_xds_convergence_seconds_bucket{le=\"5.0\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        let metrics = Metrics::default();
        metrics.rule_config_nack("a\"b\\c\nd");
        metrics.rule_config_nack("a\"b\\c\nd");
        let text = metrics.render();
        assert!(
            text.contains("boshy_xds_rule_config_nacks_total{config=\"a\\\"b\\\\c\\nd\"} 2\n"),
            "{text}"
        );
    }
}
