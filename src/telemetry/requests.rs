//! Pure: Envoy's access log entries counted into request and connection metrics, labelled
//! with both sides' BOSH names (`view`), rendered as Prometheus text (docs/telemetry.md).

use std::collections::HashSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{address, Address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::certificate_properties::subject_alt_name::San, AccessLogCommon, AccessLogType,
    HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::calls::CallWindow;
use super::view::{MeshView, Parties, Reporter};
use crate::console::wire::{Calls, DURATION_BUCKETS_MS};

/// A label set: keys are this module's constants, values from the entry.
type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

/// Why an entry was not counted.
const DROPPED_SERIES_LIMIT: &str = "series_limit";
const DROPPED_NO_DESTINATION: &str = "no_destination";

/// The request and connection metrics of one VM.
pub(crate) struct RequestMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    request_bytes: Family<Labels, Counter>,
    response_bytes: Family<Labels, Counter>,
    connections_opened: Family<Labels, Counter>,
    connections_closed: Family<Labels, Counter>,
    sent_bytes: Family<Labels, Counter>,
    received_bytes: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    /// The label sets of `requests` and `connections_closed` (the widest of each kind) seen so
    /// far: a new one beyond `max_series` is dropped and counted, so that a flood of distinct
    /// callers or codes cannot grow the agent without bound.
    seen: HashSet<Labels>,
    max_series: usize,
    /// This VM's calls since the last report, for the console.
    calls: CallWindow,
}

impl RequestMetrics {
    pub(crate) fn new(max_series: usize) -> RequestMetrics {
        let mut registry = Registry::default();
        let requests = Family::default();
        let duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let request_bytes = Family::default();
        let response_bytes = Family::default();
        let connections_opened = Family::default();
        let connections_closed = Family::default();
        let sent_bytes = Family::default();
        let received_bytes = Family::default();
        let dropped = Family::default();
        registry.register(
            "boshy_requests",
            "HTTP requests, by both sides, response code and Envoy's response flags",
            requests.clone(),
        );
        registry.register(
            "boshy_request_duration_milliseconds",
            "HTTP request duration as the reporting Envoy saw it, first byte in to last byte out",
            duration.clone(),
        );
        registry.register(
            "boshy_request_bytes",
            "HTTP request body bytes",
            request_bytes.clone(),
        );
        registry.register(
            "boshy_response_bytes",
            "HTTP response body bytes",
            response_bytes.clone(),
        );
        registry.register(
            "boshy_tcp_connections_opened",
            "TCP connections opened, counted when they start",
            connections_opened.clone(),
        );
        registry.register(
            "boshy_tcp_connections_closed",
            "TCP connections closed, by Envoy's response flags",
            connections_closed.clone(),
        );
        registry.register(
            "boshy_tcp_sent_bytes",
            "Bytes sent to the caller on TCP connections, counted when they close",
            sent_bytes.clone(),
        );
        registry.register(
            "boshy_tcp_received_bytes",
            "Bytes received from the caller on TCP connections, counted when they close",
            received_bytes.clone(),
        );
        registry.register(
            "boshy_telemetry_dropped_entries",
            "Access log entries not counted, by reason",
            dropped.clone(),
        );
        RequestMetrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            connections_opened,
            connections_closed,
            sent_bytes,
            received_bytes,
            dropped,
            seen: HashSet::new(),
            max_series,
            calls: CallWindow::default(),
        }
    }

    /// Counts one HTTP request.
    pub(crate) fn record_http(&mut self, view: &MeshView, entry: &HttpAccessLogEntry) {
        let Some(common) = &entry.common_properties else {
            return self.drop_entry(DROPPED_NO_DESTINATION);
        };
        let Some(parties) = parties(view, common) else {
            return self.drop_entry(DROPPED_NO_DESTINATION);
        };
        let code = entry
            .response
            .as_ref()
            .and_then(|response| response.response_code)
            .map_or(0, |code| code.value);
        let duration_ms = common
            .duration
            .or(common.time_to_last_downstream_tx_byte)
            .map(|d| d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6);
        if parties.reporter == Reporter::Source {
            self.calls
                .request(&parties.destination.service, code, duration_ms);
        }
        let mut by_class = party_labels(&parties);
        by_class.push(("response_code_class", code_class(code)));
        let mut labels = by_class.clone();
        labels.push(("response_code", code.to_string()));
        labels.push(("response_flags", flags(common.response_flags.as_ref())));
        if !self.admit(&labels) {
            return;
        }
        self.requests.get_or_create(&labels).inc();
        if let Some(ms) = duration_ms {
            self.duration.get_or_create(&by_class).observe(ms);
        }
        let request = entry.request.as_ref().map_or(0, |r| r.request_body_bytes);
        let response = entry.response.as_ref().map_or(0, |r| r.response_body_bytes);
        self.request_bytes.get_or_create(&by_class).inc_by(request);
        self.response_bytes
            .get_or_create(&by_class)
            .inc_by(response);
    }

    /// Counts a TCP connection starting, or ending with its bytes.
    pub(crate) fn record_tcp(&mut self, view: &MeshView, entry: &TcpAccessLogEntry) {
        let Some(common) = &entry.common_properties else {
            return self.drop_entry(DROPPED_NO_DESTINATION);
        };
        let Some(parties) = parties(view, common) else {
            return self.drop_entry(DROPPED_NO_DESTINATION);
        };
        let labels = party_labels(&parties);
        let outbound = parties.reporter == Reporter::Source;
        let destination = &parties.destination.service;
        match AccessLogType::try_from(common.access_log_type) {
            Ok(AccessLogType::TcpConnectionStart) => {
                if outbound {
                    self.calls.connection_opened(destination);
                }
                if self.admit(&labels) {
                    self.connections_opened.get_or_create(&labels).inc();
                }
            }
            // An Envoy that does not say is one that logs connections when they end.
            Ok(AccessLogType::TcpConnectionEnd | AccessLogType::NotSet) => {
                let flags = flags(common.response_flags.as_ref());
                if outbound {
                    self.calls.connection_closed(destination, &flags);
                }
                let mut closed = labels.clone();
                closed.push(("response_flags", flags));
                if !self.admit(&closed) {
                    return;
                }
                self.connections_closed.get_or_create(&closed).inc();
                let (sent, received) = entry
                    .connection_properties
                    .as_ref()
                    .map_or((0, 0), |c| (c.sent_bytes, c.received_bytes));
                self.sent_bytes.get_or_create(&labels).inc_by(sent);
                self.received_bytes.get_or_create(&labels).inc_by(received);
            }
            // Periodic and upstream entries would count a connection twice.
            _ => {}
        }
    }

    /// Whether a series with `labels` may be counted: known, or new within the limit.
    fn admit(&mut self, labels: &Labels) -> bool {
        if self.seen.contains(labels) {
            return true;
        }
        if self.seen.len() >= self.max_series {
            self.drop_entry(DROPPED_SERIES_LIMIT);
            return false;
        }
        self.seen.insert(labels.clone());
        true
    }

    fn drop_entry(&self, reason: &'static str) {
        self.dropped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// This VM's calls since the last time they were taken, by destination.
    pub(crate) fn take_calls(&mut self) -> Vec<Calls> {
        self.calls.take()
    }

    /// The metrics in the OpenMetrics text format Prometheus scrapes.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Both sides of the entry's connection, from the address it was made to.
fn parties(view: &MeshView, common: &AccessLogCommon) -> Option<Parties> {
    let (ip, port) = socket_address(common.downstream_local_address.as_ref()?)?;
    let caller = common
        .tls_properties
        .as_ref()
        .and_then(|tls| tls.peer_certificate_properties.as_ref())
        .and_then(|peer| {
            peer.subject_alt_name
                .iter()
                .find_map(|name| match &name.san {
                    Some(San::Uri(uri)) => Some(uri.as_str()),
                    _ => None,
                })
        });
    Some(view.parties(ip, port, caller))
}

fn socket_address(address: &Address) -> Option<(IpAddr, u16)> {
    match &address.address {
        Some(address::Address::SocketAddress(socket)) => {
            let ip = socket.address.parse().ok()?;
            match socket.port_specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                        port,
                    ),
                ) => Some((ip, u16::try_from(port).ok()?)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The labels naming both sides. Names come from the director's manifests: escaped, as
/// prometheus-client writes label values as they are.
fn party_labels(parties: &Parties) -> Labels {
    let destination = &parties.destination;
    let name = |value: &str| crate::metrics::escaped(value).into_owned();
    vec![
        ("reporter", parties.reporter.as_str().to_string()),
        ("source_deployment", name(&parties.source.deployment)),
        (
            "source_instance_group",
            name(&parties.source.instance_group),
        ),
        (
            "destination_deployment",
            name(&destination.workload.deployment),
        ),
        (
            "destination_instance_group",
            name(&destination.workload.instance_group),
        ),
        ("destination_job", name(&destination.job)),
        ("destination_service", name(&destination.service)),
        ("destination_port", destination.port.to_string()),
    ]
}

/// `2xx` for 200..=299 and so on; `0` when no response was sent (the caller went away).
fn code_class(code: u32) -> String {
    match code {
        100..=599 => format!("{}xx", code / 100),
        _ => "0".to_string(),
    }
}

/// Envoy's short names of the flags set, comma-separated as its access log writes
/// `%RESPONSE_FLAGS%`; `-` for none.
fn flags(flags: Option<&ResponseFlags>) -> String {
    let Some(f) = flags else {
        return "-".to_string();
    };
    let set: Vec<&str> = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.response_from_cache_filter, "RFCF"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
        (f.downstream_remote_reset, "DR"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    match set.is_empty() {
        true => "-".to_string(),
        false => set.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::table::{NameTable, ServiceOrigin};
    use crate::telemetry::view::Workload;
    use envoy_types::pb::envoy::config::core::v3::{socket_address::PortSpecifier, SocketAddress};
    use envoy_types::pb::envoy::data::accesslog::v3::{
        tls_properties::{certificate_properties::SubjectAltName, CertificateProperties},
        ConnectionProperties, HttpRequestProperties, HttpResponseProperties, TlsProperties,
    };
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use std::collections::BTreeMap;

    /// The view of a VM of sample group `own` of deployment `d`, in a mesh of one service:
    /// banana's httpbin on 9002.
    fn view_of(own: &str) -> MeshView {
        let table = NameTable {
            version: 1,
            tld: "boshy".into(),
            names: BTreeMap::from([(
                "example-httpbin.banana.d.boshy".into(),
                "169.254.0.1".parse().unwrap(),
            )]),
            origins: BTreeMap::from([(
                "example-httpbin.banana.d.boshy".into(),
                ServiceOrigin {
                    deployment: "d".into(),
                    instance_group: "banana".into(),
                    job: "example-httpbin".into(),
                    ports: vec![9002],
                },
            )]),
        };
        let own = Workload {
            deployment: "d".into(),
            instance_group: own.into(),
        };
        MeshView::new(Some(own), &table)
    }

    fn view() -> MeshView {
        view_of("apricot")
    }

    fn common(to: &str, port: u32) -> AccessLogCommon {
        AccessLogCommon {
            downstream_local_address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: to.into(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            duration: Some(Duration {
                seconds: 0,
                nanos: 3_000_000,
            }),
            ..Default::default()
        }
    }

    fn request(code: u32, common: AccessLogCommon) -> HttpAccessLogEntry {
        HttpAccessLogEntry {
            common_properties: Some(common),
            request: Some(HttpRequestProperties {
                request_body_bytes: 10,
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: code }),
                response_body_bytes: 100,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The sample lines of `text` whose name is `metric`, without the name, sorted (a
    /// family's series come in no particular order).
    fn samples<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
        let mut samples: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix(metric))
            .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
            .collect();
        samples.sort();
        samples
    }

    const OUTBOUND: &str = r#"reporter="source",source_deployment="d",source_instance_group="apricot",destination_deployment="d",destination_instance_group="banana",destination_job="example-httpbin",destination_service="example-httpbin.banana.d.boshy",destination_port="9002""#;

    #[test]
    fn requests_are_counted_by_both_sides_code_and_flags() {
        let mut metrics = RequestMetrics::new(100);
        let view = view();
        for _ in 0..3 {
            metrics.record_http(&view, &request(200, common("169.254.0.1", 9002)));
        }
        let mut failed = common("169.254.0.1", 9002);
        failed.response_flags = Some(ResponseFlags {
            no_healthy_upstream: true,
            ..Default::default()
        });
        metrics.record_http(&view, &request(503, failed));
        let text = metrics.render();
        assert_eq!(
            samples(&text, "boshy_requests_total"),
            vec![
                format!(
                    r#"{{{OUTBOUND},response_code_class="2xx",response_code="200",response_flags="-"}} 3"#
                ),
                format!(
                    r#"{{{OUTBOUND},response_code_class="5xx",response_code="503",response_flags="UH"}} 1"#
                ),
            ]
        );
        assert!(text.contains(&format!(
            r#"boshy_request_duration_milliseconds_bucket{{le="5.0",{OUTBOUND},response_code_class="2xx"}} 3"#
        )), "{text}");
        assert!(text.contains(&format!(
            r#"boshy_request_duration_milliseconds_bucket{{le="1.0",{OUTBOUND},response_code_class="2xx"}} 0"#
        )), "{text}");
        assert_eq!(
            samples(&text, "boshy_response_bytes_total"),
            vec![
                format!(r#"{{{OUTBOUND},response_code_class="2xx"}} 300"#),
                format!(r#"{{{OUTBOUND},response_code_class="5xx"}} 100"#),
            ]
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    }

    #[test]
    fn the_console_gets_the_outbound_calls_only_even_beyond_the_series_limit() {
        let mut metrics = RequestMetrics::new(0);
        metrics.record_http(&view(), &request(200, common("169.254.0.1", 9002)));
        metrics.record_http(&view(), &request(503, common("169.254.0.1", 9002)));
        // The same call as banana's Envoy logs it: inbound, counted by the caller already.
        metrics.record_http(&view_of("banana"), &request(200, common("10.0.0.5", 9002)));
        let mut buckets = vec![0; DURATION_BUCKETS_MS.len() + 1];
        buckets[2] = 2; // 3 ms, in (1, 5]
        assert_eq!(
            metrics.take_calls(),
            vec![Calls {
                destination: "example-httpbin.banana.d.boshy".into(),
                requests: 2,
                errors: 1,
                duration_buckets: buckets,
                ..Calls::default()
            }]
        );
        assert_eq!(metrics.take_calls(), vec![]);
    }

    #[test]
    fn an_inbound_request_names_the_caller_from_its_certificate() {
        let mut metrics = RequestMetrics::new(100);
        let mut inbound = common("10.0.0.9", 9002);
        inbound.tls_properties = Some(TlsProperties {
            peer_certificate_properties: Some(CertificateProperties {
                subject_alt_name: vec![SubjectAltName {
                    san: Some(San::Uri(
                        "spiffe://boshy.local/deployment/d/instance_group/apricot".into(),
                    )),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let table_view = view_of("banana");
        metrics.record_http(&table_view, &request(403, inbound));
        let inbound_labels = OUTBOUND.replace(r#"reporter="source""#, r#"reporter="destination""#);
        assert_eq!(
            samples(&metrics.render(), "boshy_requests_total"),
            vec![format!(
                r#"{{{inbound_labels},response_code_class="4xx",response_code="403",response_flags="-"}} 1"#
            )]
        );
    }

    #[test]
    fn connections_are_counted_when_they_open_and_bytes_when_they_close() {
        let mut metrics = RequestMetrics::new(100);
        let view = view();
        let entry = |kind: AccessLogType| TcpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                access_log_type: kind as i32,
                ..common("169.254.0.1", 9002)
            }),
            connection_properties: Some(ConnectionProperties {
                received_bytes: 7,
                sent_bytes: 11,
            }),
        };
        metrics.record_tcp(&view, &entry(AccessLogType::TcpConnectionStart));
        metrics.record_tcp(&view, &entry(AccessLogType::TcpConnectionStart));
        metrics.record_tcp(&view, &entry(AccessLogType::TcpPeriodic));
        metrics.record_tcp(&view, &entry(AccessLogType::TcpConnectionEnd));
        let text = metrics.render();
        assert_eq!(
            samples(&text, "boshy_tcp_connections_opened_total"),
            vec![format!("{{{OUTBOUND}}} 2")]
        );
        assert_eq!(
            samples(&text, "boshy_tcp_connections_closed_total"),
            vec![format!(r#"{{{OUTBOUND},response_flags="-"}} 1"#)]
        );
        assert_eq!(
            samples(&text, "boshy_tcp_sent_bytes_total"),
            vec![format!("{{{OUTBOUND}}} 11")]
        );
        assert_eq!(
            samples(&text, "boshy_tcp_received_bytes_total"),
            vec![format!("{{{OUTBOUND}}} 7")]
        );
    }

    #[test]
    fn series_beyond_the_limit_and_entries_without_an_address_are_dropped_and_counted() {
        let mut metrics = RequestMetrics::new(2);
        let view = view();
        for code in [200, 201, 202, 200] {
            metrics.record_http(&view, &request(code, common("169.254.0.1", 9002)));
        }
        metrics.record_http(&view, &HttpAccessLogEntry::default());
        let text = metrics.render();
        assert_eq!(samples(&text, "boshy_requests_total").len(), 2, "{text}");
        assert!(
            text.contains(r#"boshy_requests_total{"#)
                && text.contains(r#"response_code="200",response_flags="-"} 2"#)
        );
        assert_eq!(
            samples(&text, "boshy_telemetry_dropped_entries_total"),
            vec![
                r#"{reason="no_destination"} 1"#,
                r#"{reason="series_limit"} 1"#
            ]
        );
    }

    #[test]
    fn names_from_the_manifest_are_escaped_in_the_text() {
        let mut table = NameTable::default();
        table
            .names
            .insert("odd.g.d.boshy".into(), "169.254.0.7".parse().unwrap());
        table.origins.insert(
            "odd.g.d.boshy".into(),
            ServiceOrigin {
                deployment: "d\"quoted\\".into(),
                instance_group: "g".into(),
                job: "j\nk".into(),
                ports: vec![80],
            },
        );
        let mut metrics = RequestMetrics::new(10);
        metrics.record_http(
            &MeshView::new(None, &table),
            &request(200, common("169.254.0.7", 80)),
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"destination_deployment="d\"quoted\\",destination_instance_group="g",destination_job="j\nk""#),
            "{text}"
        );
    }

    #[test]
    fn response_flags_read_as_envoy_writes_them() {
        assert_eq!(flags(None), "-");
        assert_eq!(flags(Some(&ResponseFlags::default())), "-");
        let both = ResponseFlags {
            upstream_connection_failure: true,
            upstream_retry_limit_exceeded: true,
            ..Default::default()
        };
        assert_eq!(flags(Some(&both)), "UF,URX");
        assert_eq!(code_class(204), "2xx");
        assert_eq!(code_class(0), "0");
    }
}
