//! The checks one resource passes alone, once serde has read it: what Istio's own validation
//! refuses (a weight sum, a route with neither destinations nor redirect) and what
//! boshy-istio cannot serve (short or wildcard hosts, gateways). Each problem names its field.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::catalog::labels::{check_key, check_value};
use crate::catalog::manifest::is_dns_label;
use crate::text::clip;
use crate::traffic::{HostPattern, MAX_SOURCE_SELECTORS};

use super::model::{
    ConnectionPool, ConsistentHash, Destination, DestinationRule, HeaderOperations, Headers,
    HttpMatch, HttpRoute, LoadBalancer, OutlierDetection, ProbePort, ReadinessProbe, Resolution,
    ServiceEntry, Sidecar, Spec, TcpRoute, TrafficPolicy, VirtualService, WorkloadGroup,
};
use super::security_checks;
use super::values::StringMatch;

/// Problems found in one resource: (field path, message).
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) errors: Vec<(String, String)>,
    pub(crate) warnings: Vec<(String, String)>,
}

impl Problems {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((field.into(), message.into()));
    }
}

pub(crate) fn check(spec: &Spec) -> Problems {
    let mut problems = Problems::default();
    match spec {
        Spec::VirtualService(vs) => virtual_service(vs, &mut problems),
        Spec::DestinationRule(dr) => destination_rule(dr, &mut problems),
        Spec::ServiceEntry(se) => service_entry(se, &mut problems),
        Spec::WorkloadGroup(wg) => workload_group(wg, &mut problems),
        Spec::Sidecar(sidecar) => sidecar_scope(sidecar, &mut problems),
        Spec::PeerAuthentication(pa) => security_checks::peer_authentication(pa, &mut problems),
        Spec::AuthorizationPolicy(ap) => security_checks::authorization_policy(ap, &mut problems),
    }
    problems
}

/// What is wrong with `host` as a host of a rule, if anything. Hosts are full names, taken
/// as written: there are no namespaces to complete a short one.
pub(crate) fn host_problem(host: &str) -> Option<String> {
    let quoted = format!("{:?}", clip(host));
    if host.contains('*') {
        Some(format!(
            "{quoted}: wildcard hosts are not supported; name each host"
        ))
    } else if host.parse::<IpAddr>().is_ok() {
        Some(format!("{quoted} is an IP address, not a host name"))
    } else if !host.contains('.') {
        Some(format!(
            "{quoted} is a short name: write the full name (such as \
             reviews.reviews.bookinfo.boshy); there are no namespaces to complete it"
        ))
    } else if !is_dns_name(host) {
        Some(format!(
            "{quoted} is not a host name: lower-case letters, digits and '-' in labels \
             separated by '.', at most 253 characters, no final '.'"
        ))
    } else {
        None
    }
}

/// Dot-separated DNS labels (lower-case), at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn hosts(field: &str, hosts: &[String], problems: &mut Problems) {
    if hosts.is_empty() {
        problems.error(field, "at least one host is required");
    }
    let mut seen = BTreeSet::new();
    for (at, host) in hosts.iter().enumerate() {
        let field = format!("{field}[{at}]");
        if let Some(problem) = host_problem(host) {
            problems.error(&field, problem);
        } else if !seen.insert(host) {
            problems.error(&field, format!("{host} is listed twice"));
        }
    }
}

fn export_to(export_to: &[String], problems: &mut Problems) {
    if export_to.iter().any(|namespace| namespace != "*") {
        problems.warn(
            "spec.exportTo",
            "ignored: boshy-istio has no namespaces, every rule applies to the whole mesh",
        );
    }
}

// ------------------------------------------------------------------------ VirtualService

fn virtual_service(vs: &VirtualService, problems: &mut Problems) {
    hosts("spec.hosts", &vs.hosts, problems);
    for (at, gateway) in vs.gateways.iter().enumerate() {
        if gateway != "mesh" {
            problems.error(
                format!("spec.gateways[{at}]"),
                format!(
                    "gateway {:?} is not supported: only `mesh` (every Envoy of the mesh, the \
                     default) is",
                    clip(gateway)
                ),
            );
        }
    }
    export_to(&vs.export_to, problems);
    if vs.http.is_empty() && vs.tcp.is_empty() {
        problems.error("spec", "nothing to route: give `http` or `tcp` routes");
    }
    for (at, route) in vs.http.iter().enumerate() {
        http_route(&format!("spec.http[{at}]"), route, problems);
    }
    for (at, route) in vs.tcp.iter().enumerate() {
        tcp_route(&format!("spec.tcp[{at}]"), route, problems);
    }
    source_selector_count(vs, problems);
}

fn http_route(field: &str, route: &HttpRoute, problems: &mut Problems) {
    for (at, http_match) in route.matches.iter().enumerate() {
        match_conditions(&format!("{field}.match[{at}]"), http_match, problems);
    }
    match (route.route.is_empty(), &route.redirect) {
        (true, None) => problems.error(
            field,
            "a route needs `route` (its destinations) or `redirect`",
        ),
        (false, Some(_)) => problems.error(
            format!("{field}.redirect"),
            "`redirect` and `route` exclude each other",
        ),
        (false, None) => {
            let destinations = route.route.iter().map(|d| (&d.destination, d.weight));
            weighted_destinations(&format!("{field}.route"), destinations, problems);
            for (at, destination) in route.route.iter().enumerate() {
                let headers_field = format!("{field}.route[{at}].headers");
                header_changes(&headers_field, destination.headers.as_ref(), problems);
                if destination.headers.is_some() && route.route.len() > 1 {
                    problems.error(
                        headers_field,
                        "header changes per destination are supported on a route with one \
                         destination only; with several, use the route's `headers`",
                    );
                }
            }
        }
        (true, Some(redirect)) => {
            if redirect.uri.is_none() && redirect.authority.is_none() {
                problems.error(
                    format!("{field}.redirect"),
                    "a redirect sets `uri`, `authority` or both",
                );
            }
            if let Some(code) = redirect.redirect_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    problems.error(
                        format!("{field}.redirect.redirectCode"),
                        format!("{code} is not a redirect: 301, 302, 303, 307 or 308"),
                    );
                }
            }
            if route.rewrite.is_some() {
                problems.error(
                    format!("{field}.rewrite"),
                    "`rewrite` and `redirect` exclude each other",
                );
            }
        }
    }
    if let Some(rewrite) = &route.rewrite {
        if rewrite.uri.is_none() && rewrite.authority.is_none() {
            problems.error(
                format!("{field}.rewrite"),
                "a rewrite sets `uri`, `authority` or both",
            );
        }
    }
    if let Some(retries) = &route.retries {
        at_least_a_millisecond(
            &format!("{field}.retries.perTryTimeout"),
            retries.per_try_timeout,
            problems,
        );
        if let Some(retry_on) = &retries.retry_on {
            retry_conditions(&format!("{field}.retries.retryOn"), retry_on, problems);
        }
    }
    if let Some(fault) = &route.fault {
        fault_injection(&format!("{field}.fault"), fault, problems);
    }
    match (&route.mirror, route.mirror_percentage) {
        (Some(mirror), _) => destination(&format!("{field}.mirror"), mirror, problems),
        (None, Some(_)) => problems.error(
            format!("{field}.mirrorPercentage"),
            "a mirror percentage without a `mirror`",
        ),
        (None, None) => {}
    }
    header_changes(
        &format!("{field}.headers"),
        route.headers.as_ref(),
        problems,
    );
}

fn match_conditions(field: &str, conditions: &HttpMatch, problems: &mut Problems) {
    for (name, headers) in [
        ("headers", &conditions.headers),
        ("withoutHeaders", &conditions.without_headers),
    ] {
        for header in headers.keys() {
            if let Some(problem) = header_name_problem(header) {
                problems.error(format!("{field}.{name}"), problem);
            }
        }
    }
    for (name, value) in &conditions.query_params {
        if name.is_empty() {
            problems.error(
                format!("{field}.queryParams"),
                "a query parameter has a name",
            );
        }
        if matches!(value, StringMatch::Prefix(_)) {
            problems.error(
                format!("{field}.queryParams.{}", clip(name)),
                "`prefix` is not supported for query parameters (nor by Istio): use `exact` \
                 or `regex`",
            );
        }
    }
    source_labels(field, &conditions.source_labels, problems);
    if conditions.port == Some(0) {
        problems.error(format!("{field}.port"), "a port is from 1 to 65535");
    }
}

/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`), which Istio's
/// `retryOn` passes through; an HTTP status code is also accepted, as in Istio.
const RETRY_CONDITIONS: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// An HTTP match's `sourceLabels`: a label selector like any other.
fn source_labels(field: &str, labels: &super::model::Labels, problems: &mut Problems) {
    label_syntax(&format!("{field}.sourceLabels"), labels, problems);
}

/// Each key and value of a label selector in the label syntax (a selector that breaks it
/// selects nothing).
pub(crate) fn label_syntax(field: &str, labels: &super::model::Labels, problems: &mut Problems) {
    for (key, value) in labels {
        if let Err(problem) = check_key(key).and_then(|()| check_value(value)) {
            problems.error(field, problem);
        }
    }
}

/// The distinct `sourceLabels` of a VirtualService's HTTP routes: at most
/// [`MAX_SOURCE_SELECTORS`], since every combination a client satisfies is a route
/// configuration of its own.
fn source_selector_count(vs: &VirtualService, problems: &mut Problems) {
    let mut distinct = BTreeSet::new();
    for (at, route) in vs.http.iter().enumerate() {
        for (m, conditions) in route.matches.iter().enumerate() {
            let labels = &conditions.source_labels;
            if labels.is_empty() || distinct.contains(labels) {
                continue;
            }
            if distinct.len() == MAX_SOURCE_SELECTORS {
                problems.error(
                    format!("spec.http[{at}].match[{m}].sourceLabels"),
                    format!(
                        "at most {MAX_SOURCE_SELECTORS} distinct sourceLabels per \
                         VirtualService: each combination of them that a client satisfies is \
                         a route configuration of its own"
                    ),
                );
                return;
            }
            distinct.insert(labels);
        }
    }
}

fn retry_conditions(field: &str, retry_on: &str, problems: &mut Problems) {
    for condition in retry_on.split(',').map(str::trim) {
        let is_status = condition.len() == 3
            && condition
                .parse::<u16>()
                .is_ok_and(|code| (100..=599).contains(&code));
        if !is_status && !RETRY_CONDITIONS.contains(&condition) {
            problems.error(
                field,
                format!(
                    "{:?} is not a retry condition: {} or an HTTP status code",
                    clip(condition),
                    RETRY_CONDITIONS.join(", ")
                ),
            );
        }
    }
}

fn fault_injection(field: &str, fault: &super::model::HttpFault, problems: &mut Problems) {
    if fault.delay.is_none() && fault.abort.is_none() {
        problems.error(field, "a fault has a `delay`, an `abort` or both");
    }
    if let Some(delay) = &fault.delay {
        at_least_a_millisecond(
            &format!("{field}.delay.fixedDelay"),
            Some(delay.fixed_delay),
            problems,
        );
        if delay.percentage.is_none() {
            problems.warn(
                format!("{field}.delay"),
                "no `percentage`: as in Istio, no request is delayed",
            );
        }
    }
    if let Some(abort) = &fault.abort {
        if !(200..=599).contains(&abort.http_status) {
            problems.error(
                format!("{field}.abort.httpStatus"),
                format!(
                    "{} is not an HTTP status from 200 to 599",
                    abort.http_status
                ),
            );
        }
        if abort.percentage.is_none() {
            problems.warn(
                format!("{field}.abort"),
                "no `percentage`: as in Istio, no request is aborted",
            );
        }
    }
}

fn tcp_route(field: &str, route: &TcpRoute, problems: &mut Problems) {
    for (at, l4_match) in route.matches.iter().enumerate() {
        if !l4_match.source_labels.is_empty() {
            problems.error(
                format!("{field}.match[{at}].sourceLabels"),
                "not supported yet for tcp routes: they are part of the VIP:port's listener, \
                 which every VM shares; limit HTTP routes by sourceLabels instead",
            );
        }
        if l4_match.port == Some(0) {
            problems.error(
                format!("{field}.match[{at}].port"),
                "a port is from 1 to 65535",
            );
        }
    }
    let destinations = route.route.iter().map(|d| (&d.destination, d.weight));
    weighted_destinations(&format!("{field}.route"), destinations, problems);
}

/// The destinations of one route and their weights: the only destination gets all the
/// traffic (its weight, if written, is 100); several share it by weights that add up to 100
/// (an absent weight is 0, as in Istio).
fn weighted_destinations<'a>(
    field: &str,
    destinations: impl Iterator<Item = (&'a Destination, Option<u32>)>,
    problems: &mut Problems,
) {
    let destinations: Vec<_> = destinations.collect();
    for (at, (target, _)) in destinations.iter().enumerate() {
        destination(&format!("{field}[{at}].destination"), target, problems);
    }
    match destinations.as_slice() {
        [] => problems.error(field, "at least one destination is required"),
        [(_, Some(weight))] if *weight != 100 => problems.error(
            format!("{field}[0].weight"),
            format!(
                "the only destination gets all the traffic: its weight is 100 or absent, not \
                 {weight}"
            ),
        ),
        [_] => {}
        several => {
            let sum: u64 = several
                .iter()
                .map(|(_, weight)| u64::from(weight.unwrap_or(0)))
                .sum();
            if sum != 100 {
                problems.error(
                    field,
                    format!(
                        "the weights of its {} destinations add up to {sum}, not 100 (an \
                         absent weight is 0)",
                        several.len()
                    ),
                );
            }
        }
    }
}

fn destination(field: &str, destination: &Destination, problems: &mut Problems) {
    if let Some(problem) = host_problem(&destination.host) {
        problems.error(format!("{field}.host"), problem);
    }
    if let Some(subset) = &destination.subset {
        if !is_dns_label(subset) {
            problems.error(
                format!("{field}.subset"),
                format!("{:?} is not a subset name", clip(subset)),
            );
        }
    }
    if destination.port.is_some_and(|port| port.number == 0) {
        problems.error(format!("{field}.port.number"), "a port is from 1 to 65535");
    }
}

/// What is wrong with `name` as the name of a header to match or change, if anything.
pub(crate) fn header_name_problem(name: &str) -> Option<String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        Some(format!("{:?} is not a header name", clip(name)))
    } else {
        None
    }
}

fn header_changes(field: &str, headers: Option<&Headers>, problems: &mut Problems) {
    let Some(headers) = headers else { return };
    for (direction, operations) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        let Some(HeaderOperations { set, add, remove }) = operations else {
            continue;
        };
        let names = set.keys().chain(add.keys()).chain(remove);
        for name in names {
            let problem = header_name_problem(name).or_else(|| {
                name.eq_ignore_ascii_case("host").then(|| {
                    "the host header is not changed here: use `rewrite.authority`".to_string()
                })
            });
            if let Some(problem) = problem {
                problems.error(format!("{field}.{direction}"), problem);
            }
        }
    }
}

fn at_least_a_millisecond(field: &str, duration: Option<Duration>, problems: &mut Problems) {
    if duration.is_some_and(|duration| duration < Duration::from_millis(1)) {
        problems.error(field, "must be at least 1ms");
    }
}

// ----------------------------------------------------------------------- DestinationRule

fn destination_rule(dr: &DestinationRule, problems: &mut Problems) {
    if let Some(problem) = host_problem(&dr.host) {
        problems.error("spec.host", problem);
    }
    export_to(&dr.export_to, problems);
    if let Some(policy) = &dr.traffic_policy {
        traffic_policy("spec.trafficPolicy", policy, problems);
    }
    let mut names = BTreeSet::new();
    for (at, subset) in dr.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{at}]");
        if !is_dns_label(&subset.name) {
            problems.error(
                format!("{field}.name"),
                format!(
                    "{:?} is not a subset name: a DNS label (lower-case letters, digits, '-')",
                    clip(&subset.name)
                ),
            );
        } else if !names.insert(&subset.name) {
            problems.error(
                format!("{field}.name"),
                format!("subset {} is defined twice", subset.name),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(&format!("{field}.trafficPolicy"), policy, problems);
        }
    }
}

fn traffic_policy(field: &str, policy: &TrafficPolicy, problems: &mut Problems) {
    port_policies(
        field,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        problems,
    );
    let mut ports = BTreeSet::new();
    for (at, port_policy) in policy.port_level_settings.iter().enumerate() {
        let field = format!("{field}.portLevelSettings[{at}]");
        let number = port_policy.port.number;
        if number == 0 {
            problems.error(format!("{field}.port.number"), "a port is from 1 to 65535");
        } else if !ports.insert(number) {
            problems.error(
                format!("{field}.port.number"),
                format!("port {number} has settings twice"),
            );
        }
        port_policies(
            &field,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            problems,
        );
    }
}

/// The policies a traffic policy and each of its port-level settings share.
fn port_policies(
    field: &str,
    load_balancer: Option<&LoadBalancer>,
    connection_pool: Option<&ConnectionPool>,
    outlier_detection: Option<&OutlierDetection>,
    problems: &mut Problems,
) {
    if let Some(load_balancer) = load_balancer {
        load_balancing(&format!("{field}.loadBalancer"), load_balancer, problems);
    }
    if let Some(tcp) = connection_pool.and_then(|pool| pool.tcp.as_ref()) {
        at_least_a_millisecond(
            &format!("{field}.connectionPool.tcp.connectTimeout"),
            tcp.connect_timeout,
            problems,
        );
    }
    if let Some(outlier) = outlier_detection {
        let field = format!("{field}.outlierDetection");
        at_least_a_millisecond(&format!("{field}.interval"), outlier.interval, problems);
        at_least_a_millisecond(
            &format!("{field}.baseEjectionTime"),
            outlier.base_ejection_time,
            problems,
        );
        if outlier
            .max_ejection_percent
            .is_some_and(|percent| percent > 100)
        {
            problems.error(
                format!("{field}.maxEjectionPercent"),
                "a percentage is from 0 to 100",
            );
        }
    }
}

fn load_balancing(field: &str, load_balancer: &LoadBalancer, problems: &mut Problems) {
    if load_balancer.simple.is_some() && load_balancer.consistent_hash.is_some() {
        problems.error(field, "`simple` and `consistentHash` exclude each other");
    }
    match &load_balancer.consistent_hash {
        Some(ConsistentHash::HttpHeaderName(name)) => {
            if let Some(problem) = header_name_problem(name) {
                problems.error(format!("{field}.consistentHash.httpHeaderName"), problem);
            }
        }
        Some(ConsistentHash::HttpCookie(cookie)) if cookie.name.is_empty() => {
            problems.error(
                format!("{field}.consistentHash.httpCookie.name"),
                "a cookie has a name",
            );
        }
        _ => {}
    }
    let Some(locality) = &load_balancer.locality_lb_setting else {
        return;
    };
    let field = format!("{field}.localityLbSetting");
    if !locality.failover.is_empty() {
        problems.error(
            format!("{field}.failover"),
            "not supported yet: failover by the client's AZ needs endpoints assigned per \
             client AZ; use `distribute` from \"*\"",
        );
    }
    if locality.distribute.len() > 1 {
        problems.error(
            format!("{field}.distribute"),
            "one entry, from \"*\": every client gets the same shares",
        );
    }
    for (at, distribute) in locality.distribute.iter().enumerate() {
        let field = format!("{field}.distribute[{at}]");
        if distribute.from != "*" {
            problems.error(
                format!("{field}.from"),
                format!(
                    "{:?}: only \"*\" (every client) is supported: shares by the client's AZ \
                     need endpoints assigned per client AZ",
                    clip(&distribute.from)
                ),
            );
        }
        for to in distribute.to.keys() {
            let az = to.strip_suffix("/*").unwrap_or(to);
            if az.is_empty() || az.contains('/') || az.contains('*') {
                problems.error(
                    format!("{field}.to"),
                    format!(
                        "{:?}: a locality here is a BOSH AZ, written `z1` or `z1/*`",
                        clip(to)
                    ),
                );
            }
        }
        let sum: u64 = distribute
            .to
            .values()
            .map(|weight| u64::from(*weight))
            .sum();
        if sum != 100 {
            problems.error(
                format!("{field}.to"),
                format!("the weights add up to {sum}, not 100"),
            );
        }
    }
}

// -------------------------------------------------------------------------- ServiceEntry

fn service_entry(se: &ServiceEntry, problems: &mut Problems) {
    hosts("spec.hosts", &se.hosts, problems);
    export_to(&se.export_to, problems);
    let mut any_address = false;
    for (at, address) in se.addresses.iter().enumerate() {
        if address.parse::<IpAddr>().is_err() && address.parse::<IpNet>().is_err() {
            problems.error(
                format!("spec.addresses[{at}]"),
                format!("{:?} is not an IP address or CIDR", clip(address)),
            );
        }
        any_address = true;
    }
    if any_address {
        problems.warn(
            "spec.addresses",
            "ignored: every host of a ServiceEntry gets a VIP of its own from the pilot",
        );
    }
    if se.ports.is_empty() {
        problems.error("spec.ports", "at least one port is required");
    }
    let (mut numbers, mut names) = (BTreeSet::new(), BTreeSet::new());
    for (at, port) in se.ports.iter().enumerate() {
        let field = format!("spec.ports[{at}]");
        if port.number == 0 {
            problems.error(format!("{field}.number"), "a port is from 1 to 65535");
        } else if !numbers.insert(port.number) {
            problems.error(
                format!("{field}.number"),
                format!("port {} is listed twice", port.number),
            );
        }
        let name = port.name.to_ascii_lowercase();
        if !is_dns_label(&name) {
            problems.error(
                format!("{field}.name"),
                format!("{:?} is not a port name (a DNS label)", clip(&port.name)),
            );
        } else if !names.insert(name) {
            problems.error(
                format!("{field}.name"),
                format!("port name {} is used twice", port.name),
            );
        }
        match port.target_port {
            Some(0) => problems.error(format!("{field}.targetPort"), "a port is from 1 to 65535"),
            Some(target) if target != port.number => problems.error(
                format!("{field}.targetPort"),
                "not supported yet: the instances' port is the service port; leave \
                 `targetPort` out or make it equal `number`",
            ),
            _ => {}
        }
    }
    let dns = se.resolution != Resolution::Static;
    match (&se.workload_selector, se.endpoints.is_empty()) {
        (Some(_), _) if dns => problems.error(
            "spec.workloadSelector",
            "not with resolution DNS or DNS_ROUND_ROBIN (Istio refuses it too): the instances \
             a selector picks have addresses already; use resolution STATIC",
        ),
        (Some(_), false) => problems.error(
            "spec.workloadSelector",
            "`workloadSelector` and `endpoints` exclude each other",
        ),
        (Some(selector), true) => {
            if selector.labels.is_empty() {
                problems.error(
                    "spec.workloadSelector.labels",
                    "at least one label is required: an empty selector would select every \
                     instance of the mesh",
                );
            }
        }
        (None, true) if dns => problems.error(
            "spec.endpoints",
            "resolution DNS and DNS_ROUND_ROBIN resolve the endpoints' addresses, and there \
             are none: the hosts themselves are names of the mesh, which resolve to their own \
             VIP, not to the service; list the service's DNS names (or IP addresses) as \
             endpoints",
        ),
        (None, true) => problems.error(
            "spec.resolution",
            "STATIC takes `endpoints` or a `workloadSelector`",
        ),
        (None, false) => {
            if se.resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                problems.error(
                    "spec.endpoints",
                    format!(
                        "resolution DNS_ROUND_ROBIN takes one endpoint, not {}: every \
                         connection goes to the first address of one name (Envoy's logical \
                         DNS cluster has a single host); use resolution DNS for several",
                        se.endpoints.len()
                    ),
                );
            }
            for (at, endpoint) in se.endpoints.iter().enumerate() {
                let field = format!("spec.endpoints[{at}]");
                if let Some(problem) = endpoint_address_problem(&endpoint.address, dns) {
                    problems.error(format!("{field}.address"), problem);
                }
                if endpoint.weight.is_some() {
                    problems.error(
                        format!("{field}.weight"),
                        "not supported yet: every endpoint of a service gets the same share",
                    );
                }
                for (name, number) in &endpoint.ports {
                    match se.ports.iter().find(|port| &port.name == name) {
                        None => problems.error(
                            format!("{field}.ports"),
                            format!("no port is named {:?} in spec.ports", clip(name)),
                        ),
                        Some(port) if *number != port.number => problems.error(
                            format!("{field}.ports"),
                            format!(
                                "{name}: {number}: not supported yet: an endpoint's port is \
                                 the service port ({})",
                                port.number
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------- WorkloadGroup

fn workload_group(wg: &WorkloadGroup, problems: &mut Problems) {
    let (metadata, template) = (&wg.metadata, &wg.template);
    label_syntax("spec.metadata.labels", &metadata.labels, problems);
    label_syntax("spec.template.labels", &template.labels, problems);
    for key in metadata.annotations.keys() {
        if let Err(problem) = check_key(key) {
            problems.error("spec.metadata.annotations", problem);
        }
    }
    for (key, value) in &template.labels {
        match metadata.labels.get(key) {
            Some(other) if other != value => problems.error(
                format!("spec.template.labels.{key}"),
                format!(
                    "{:?} against {:?} in spec.metadata.labels: every member gets both, so \
                     they must agree",
                    clip(value),
                    clip(other)
                ),
            ),
            _ => {}
        }
    }
    if template.ports.is_empty() {
        problems.error(
            "spec.template.ports",
            "at least one port is required: they are the ports of the group's service",
        );
    }
    let (mut numbers, mut names) = (BTreeSet::new(), BTreeSet::new());
    for (name, &number) in &template.ports {
        let field = format!("spec.template.ports.{name}");
        let lower = name.to_ascii_lowercase();
        if !is_dns_label(&lower) {
            problems.error(
                &field,
                format!("{:?} is not a port name (a DNS label)", clip(name)),
            );
        } else if !names.insert(lower) {
            problems.error(&field, format!("port name {name} is used twice"));
        }
        if let Err(problem) = port_number(number) {
            problems.error(&field, problem);
        } else if !numbers.insert(number) {
            problems.error(&field, format!("port {number} is listed twice"));
        }
    }
    if let Some(probe) = &wg.probe {
        readiness_probe(probe, wg, problems);
    }
}

fn port_number(number: i64) -> Result<(), String> {
    match number {
        1..=65535 => Ok(()),
        _ => Err(format!("a port is from 1 to 65535, not {number}")),
    }
}

/// Kubernetes' ranges for a probe (its numbers are int32), and exactly one way to probe.
fn readiness_probe(probe: &ReadinessProbe, wg: &WorkloadGroup, problems: &mut Problems) {
    let numbers = [
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("periodSeconds", probe.period_seconds, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("failureThreshold", probe.failure_threshold, 1),
    ];
    for (name, value, least) in numbers {
        if !(least..=i64::from(i32::MAX)).contains(&value) {
            problems.error(
                format!("spec.probe.{name}"),
                format!("{value} is out of range: from {least} to {}", i32::MAX),
            );
        }
    }
    let port = |field: &str, port: &ProbePort, problems: &mut Problems| {
        let problem = match port {
            ProbePort::Number(number) => port_number(*number).err(),
            ProbePort::Name(name) if wg.template.ports.contains_key(name) => None,
            ProbePort::Name(name) => Some(format!(
                "no port is named {:?} in spec.template.ports",
                clip(name)
            )),
        };
        if let Some(problem) = problem {
            problems.error(format!("spec.probe.{field}.port"), problem);
        }
    };
    let mut ways = 0;
    if let Some(http) = &probe.http_get {
        ways += 1;
        port("httpGet", &http.port, problems);
        if let Some(path) = http.path.as_ref().filter(|path| !path.starts_with('/')) {
            problems.error(
                "spec.probe.httpGet.path",
                format!("{:?} is not a path: it starts with '/'", clip(path)),
            );
        }
        for (at, header) in http.http_headers.iter().enumerate() {
            if let Some(problem) = header_name_problem(&header.name) {
                problems.error(
                    format!("spec.probe.httpGet.httpHeaders[{at}].name"),
                    problem,
                );
            }
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        ways += 1;
        port("tcpSocket", &tcp.port, problems);
    }
    if let Some(exec) = &probe.exec {
        ways += 1;
        if exec.command.first().is_none_or(String::is_empty) {
            problems.error(
                "spec.probe.exec.command",
                "a command is required: the program, then its arguments",
            );
        }
    }
    if ways != 1 {
        problems.error(
            "spec.probe",
            format!("exactly one of httpGet, tcpSocket and exec is required, not {ways}"),
        );
    }
}

/// What is wrong with a ServiceEntry endpoint's `address`, if anything: an IP address for
/// resolution STATIC; for `dns` (DNS, DNS_ROUND_ROBIN), a DNS name (any case) or an IPv4
/// address. Envoy looks names up for IPv4 alone: the mesh is IPv4.
fn endpoint_address_problem(address: &str, dns: bool) -> Option<String> {
    let quoted = format!("{:?}", clip(address));
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) if dns => Some(format!(
            "{quoted} is an IPv6 address: the mesh is IPv4, and Envoy looks DNS endpoints up \
             for IPv4 alone"
        )),
        Ok(_) => None,
        Err(_) if !dns => Some(format!(
            "{quoted} is not an IP address, which resolution STATIC takes (use resolution DNS \
             for a name)"
        )),
        Err(_) if !is_dns_name(&address.to_ascii_lowercase()) => Some(format!(
            "{quoted} is neither an IP address nor a DNS name (labels of letters, digits and \
             '-' separated by '.', at most 253 characters, no final '.')"
        )),
        Err(_) => None,
    }
}

// ------------------------------------------------------------------------------- Sidecar

fn sidecar_scope(sidecar: &Sidecar, problems: &mut Problems) {
    if let Some(selector) = &sidecar.workload_selector {
        if selector.labels.is_empty() {
            problems.error(
                "spec.workloadSelector.labels",
                "at least one label is required: leave `workloadSelector` out for a Sidecar \
                 that applies to every VM of the mesh",
            );
        }
        label_syntax("spec.workloadSelector.labels", &selector.labels, problems);
    }
    match sidecar.egress.as_slice() {
        [] => problems.error(
            "spec.egress",
            "an egress listener with `hosts` is required: they are what a Sidecar pins",
        ),
        [egress, more @ ..] => {
            egress_hosts("spec.egress[0].hosts", &egress.hosts, problems);
            if !more.is_empty() {
                problems.error(
                    "spec.egress[1]",
                    "one egress listener only: Istio takes one without `port` (the \
                     catch-all), and boshy-istio takes no `port`; list every host in \
                     spec.egress[0].hosts",
                );
            }
        }
    }
}

fn egress_hosts(field: &str, hosts: &[String], problems: &mut Problems) {
    if hosts.is_empty() {
        problems.error(field, "at least one host is required");
    }
    let mut seen = BTreeSet::new();
    for (at, host) in hosts.iter().enumerate() {
        let field = format!("{field}[{at}]");
        match egress_host(host) {
            Err(problem) => problems.error(field, problem),
            Ok(pattern) => {
                if !seen.insert(pattern) {
                    problems.warn(field, format!("{:?} is listed twice", clip(host)));
                }
            }
        }
    }
    if seen.contains(&HostPattern::Any) && seen.len() > 1 {
        problems.warn(
            field,
            "`*/*` pins every service of the mesh: the other hosts add nothing",
        );
    }
}

/// A Sidecar's egress host, Istio's `namespace/dnsName`, as the names it pins. The namespace
/// is `*` or `.`: both mean any, since boshy-istio has no namespaces. The name is a full
/// hostname (as a rule's host), `*` (every service) or `*.<domain>` (every service under it).
pub(crate) fn egress_host(host: &str) -> Result<HostPattern, String> {
    let quoted = format!("{:?}", clip(host));
    let Some((namespace, name)) = host.split_once('/') else {
        return Err(format!(
            "{quoted}: write it as Istio does, `namespace/dnsName` (such as \
             */reviews.bookinfo.boshy), with the namespace `*` or `.`: boshy-istio has no \
             namespaces"
        ));
    };
    match namespace {
        "*" | "." => {}
        "~" => {
            return Err(format!(
                "{quoted}: the namespace `~` (no service) is not supported: a Sidecar pins \
                 services, and leaving a host out of it does not keep the host out of a VM's \
                 scope"
            ))
        }
        other => {
            return Err(format!(
                "{quoted}: namespace {:?} is not supported: boshy-istio has no namespaces; \
                 write `*/` or `./` (both mean any) before the name",
                clip(other)
            ))
        }
    }
    if name == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(domain) = name.strip_prefix("*.") {
        if !is_dns_name(domain) {
            return Err(format!(
                "{quoted}: {:?} is not a domain: lower-case letters, digits and '-' in labels \
                 separated by '.', no final '.'",
                clip(domain)
            ));
        }
        return Ok(HostPattern::Suffix(format!(".{domain}")));
    }
    if name.contains('*') {
        return Err(format!(
            "{quoted}: a wildcard is the whole name (`*/*`) or its first label \
             (`*/*.bookinfo.boshy`)"
        ));
    }
    match host_problem(name) {
        Some(problem) => Err(problem),
        None => Ok(HostPattern::Exact(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_config;

    /// The errors (field: message) of a resource of kind `kind` with this `spec`.
    fn errors_of(kind: &str, spec: &str) -> Vec<String> {
        findings_of(kind, spec).0
    }

    fn findings_of(kind: &str, spec: &str) -> (Vec<String>, Vec<String>) {
        super::super::test_support::findings_of("networking.istio.io/v1", kind, spec)
    }

    fn assert_one_error(kind: &str, spec: &str, expected: &str) {
        let errors = errors_of(kind, spec);
        assert!(
            errors.len() == 1 && errors[0].contains(expected),
            "expected one error containing {expected:?}, got {errors:?}\nin {spec}"
        );
    }

    const H: &str = "reviews.reviews.bookinfo.boshy";

    #[test]
    fn weights_of_several_destinations_add_up_to_100() {
        let route = |weights: &[Option<u32>]| {
            let mut spec = format!("hosts: [{H}]\nhttp:\n- route:\n");
            for weight in weights {
                spec.push_str(&format!("  - destination: {{host: {H}}}\n"));
                if let Some(weight) = weight {
                    spec.push_str(&format!("    weight: {weight}\n"));
                }
            }
            errors_of("VirtualService", &spec)
        };
        assert!(route(&[None]).is_empty());
        assert!(route(&[Some(100)]).is_empty());
        assert!(route(&[Some(50), Some(50)]).is_empty());
        assert!(route(&[Some(100), Some(0)]).is_empty());
        assert!(route(&[Some(100), None]).is_empty());
        assert_eq!(
            route(&[Some(50)]),
            [
                "spec.http[0].route[0].weight: the only destination gets all the traffic: its \
              weight is 100 or absent, not 50"
            ]
        );
        assert_eq!(
            route(&[Some(50), Some(30)]),
            [
                "spec.http[0].route: the weights of its 2 destinations add up to 80, not 100 (an \
              absent weight is 0)"
            ]
        );
        assert!(route(&[None, None])[0].contains("add up to 0"));
        assert!(route(&[Some(u32::MAX), Some(u32::MAX)])[0].contains("add up to 8589934590"));
        let tcp = format!(
            "hosts: [{H}]\ntcp:\n- route:\n  - destination: {{host: {H}}}\n    weight: 60\n  \
             - destination: {{host: {H}}}\n    weight: 60\n"
        );
        assert_one_error("VirtualService", &tcp, "spec.tcp[0].route: the weights");
    }

    #[test]
    fn hosts_are_full_lower_case_names() {
        for (host, expected) in [
            ("reviews", "is a short name"),
            ("*.bookinfo.boshy", "wildcard"),
            ("10.0.0.1", "IP address"),
            ("Reviews.bookinfo.boshy", "not a host name"),
            ("reviews.bookinfo.boshy.", "not a host name"),
            ("a_b.bookinfo.boshy", "not a host name"),
        ] {
            let spec =
                format!("hosts: [\"{host}\"]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n");
            assert_one_error("VirtualService", &spec, expected);
            let spec = format!("host: \"{host}\"\n");
            assert_one_error("DestinationRule", &spec, expected);
        }
        let twice = format!("hosts: [{H}, {H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n");
        assert_one_error(
            "VirtualService",
            &twice,
            "spec.hosts[1]: reviews.reviews.bookinfo.boshy is listed twice",
        );
        let none = format!("hosts: []\nhttp:\n- route:\n  - destination: {{host: {H}}}\n");
        assert_one_error("VirtualService", &none, "spec.hosts: at least one host");
    }

    #[test]
    fn virtual_service_shapes_istio_refuses_too() {
        let base = format!("hosts: [{H}]\n");
        for (rest, expected) in [
            ("gateways: [bookinfo-gateway]\nhttp:\n- route:\n  - destination: {host: H}\n", "spec.gateways[0]: gateway \"bookinfo-gateway\" is not supported"),
            ("gateways: [mesh]\n", "spec: nothing to route"),
            ("http:\n- match: [{uri: {prefix: /}}]\n", "spec.http[0]: a route needs `route`"),
            ("http:\n- redirect: {uri: /x}\n  route:\n  - destination: {host: H}\n", "spec.http[0].redirect: `redirect` and `route` exclude"),
            ("http:\n- redirect: {uri: /x}\n  rewrite: {uri: /y}\n", "spec.http[0].rewrite: `rewrite` and `redirect` exclude"),
            ("http:\n- redirect: {redirectCode: 301}\n", "a redirect sets `uri`, `authority` or both"),
            ("http:\n- redirect: {uri: /x, redirectCode: 200}\n", "redirectCode: 200 is not a redirect"),
            ("http:\n- rewrite: {}\n  route:\n  - destination: {host: H}\n", "spec.http[0].rewrite: a rewrite sets"),
            ("http:\n- route:\n  - destination: {host: H}\n  retries: {attempts: 3, retryOn: \"5xx,bogus\"}\n", "spec.http[0].retries.retryOn: \"bogus\" is not a retry condition"),
            ("http:\n- route:\n  - destination: {host: H}\n  retries: {attempts: 3, perTryTimeout: 0s}\n", "perTryTimeout: must be at least 1ms"),
            ("http:\n- route:\n  - destination: {host: H}\n  fault: {}\n", "spec.http[0].fault: a fault has"),
            ("http:\n- route:\n  - destination: {host: H}\n  fault: {abort: {httpStatus: 700, percentage: {value: 1}}}\n", "httpStatus: 700 is not an HTTP status"),
            ("http:\n- route:\n  - destination: {host: H}\n  mirrorPercentage: {value: 5}\n", "spec.http[0].mirrorPercentage: a mirror percentage without"),
            ("http:\n- route:\n  - destination: {host: H, subset: V1}\n", "spec.http[0].route[0].destination.subset"),
            ("http:\n- route:\n  - destination: {host: H, port: {number: 0}}\n", "destination.port.number: a port is from 1"),
            ("http:\n- match: [{queryParams: {q: {prefix: a}}}]\n  route:\n  - destination: {host: H}\n", "spec.http[0].match[0].queryParams.q: `prefix` is not supported"),
            ("http:\n- match: [{headers: {\"bad header\": {exact: a}}}]\n  route:\n  - destination: {host: H}\n", "spec.http[0].match[0].headers: \"bad header\" is not a header name"),
            ("http:\n- route:\n  - destination: {host: H}\n    headers: {request: {set: {host: x}}}\n", "spec.http[0].route[0].headers.request: the host header"),
            ("tcp:\n- match: [{port: 0}]\n  route:\n  - destination: {host: H}\n", "spec.tcp[0].match[0].port"),
            ("tcp:\n- route: []\n", "spec.tcp[0].route: at least one destination"),
            ("tcp:\n- match: [{sourceLabels: {app: a}}]\n  route:\n  - destination: {host: H}\n", "spec.tcp[0].match[0].sourceLabels: not supported yet for tcp routes"),
            ("http:\n- match: [{sourceLabels: {\"-x\": a}}]\n  route:\n  - destination: {host: H}\n", "spec.http[0].match[0].sourceLabels: key \"-x\""),
            ("http:\n- match: [{sourceLabels: {a: x1}}, {sourceLabels: {a: x2}}, {sourceLabels: {a: x1}}]\n  route:\n  - destination: {host: H}\n- match: [{sourceLabels: {a: x3}}, {sourceLabels: {a: x4}}, {sourceLabels: {a: x5}}]\n  route:\n  - destination: {host: H}\n", "spec.http[1].match[2].sourceLabels: at most 4 distinct sourceLabels"),
        ] {
            let spec = format!("{base}{}", rest.replace("host: H", &format!("host: {H}")));
            assert_one_error("VirtualService", &spec, expected);
        }
    }

    #[test]
    fn faults_without_a_percentage_are_warned_about() {
        let spec = format!(
            "hosts: [{H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n  fault:\n    delay: {{fixedDelay: 7s}}\n    abort: {{httpStatus: 500}}\n"
        );
        let (errors, warnings) = findings_of("VirtualService", &spec);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            warnings,
            [
                "spec.http[0].fault.delay: no `percentage`: as in Istio, no request is delayed",
                "spec.http[0].fault.abort: no `percentage`: as in Istio, no request is aborted"
            ]
        );
    }

    #[test]
    fn destination_rule_shapes_istio_refuses_too() {
        for (rest, expected) in [
            ("subsets: [{name: v1}, {name: v1}]", "spec.subsets[1].name: subset v1 is defined twice"),
            ("subsets: [{name: V1}]", "spec.subsets[0].name: \"V1\" is not a subset name"),
            ("trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}", "spec.trafficPolicy.loadBalancer: `simple` and `consistentHash` exclude"),
            ("trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: '*', to: {z1: 80, z2: 10}}]}}}", "distribute[0].to: the weights add up to 90"),
            ("trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: z1, to: {z1: 100}}]}}}", "distribute[0].from: \"z1\": only \"*\""),
            ("trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: '*', to: {z1/a/b: 100}}]}}}", "distribute[0].to: \"z1/a/b\": a locality here is a BOSH AZ"),
            ("trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}]}}}", "localityLbSetting.failover: not supported yet"),
            ("trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}", "maxEjectionPercent: a percentage"),
            ("trafficPolicy: {outlierDetection: {interval: 0s}}", "outlierDetection.interval: must be at least 1ms"),
            ("trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0.1ms}}}", "connectTimeout: must be at least 1ms"),
            ("trafficPolicy: {portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]}", "portLevelSettings[1].port.number: port 80 has settings twice"),
            ("subsets: [{name: v1, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: \"\"}}}}}]", "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.httpCookie.name"),
        ] {
            let spec = format!("host: {H}\n{rest}\n");
            assert_one_error("DestinationRule", &spec, expected);
        }
    }

    #[test]
    fn service_entry_shapes_istio_refuses_too() {
        let ports = "ports: [{number: 9080, name: http, protocol: HTTP}]\n";
        for (rest, expected) in [
            ("resolution: STATIC\n", "spec.resolution: STATIC takes `endpoints` or a `workloadSelector`"),
            ("resolution: DNS\nworkloadSelector: {labels: {app: reviews}}\n", "spec.workloadSelector: not with resolution DNS or DNS_ROUND_ROBIN"),
            ("resolution: DNS_ROUND_ROBIN\nworkloadSelector: {labels: {app: reviews}}\n", "spec.workloadSelector: not with resolution DNS or DNS_ROUND_ROBIN"),
            ("resolution: DNS\n", "spec.endpoints: resolution DNS and DNS_ROUND_ROBIN resolve the endpoints' addresses, and there are none: the hosts themselves are names of the mesh"),
            ("resolution: DNS_ROUND_ROBIN\nendpoints: [{address: a.example.com}, {address: b.example.com}]\n", "spec.endpoints: resolution DNS_ROUND_ROBIN takes one endpoint, not 2"),
            ("resolution: DNS\nendpoints: [{address: a.example.com}, {address: db_1.example.com}]\n", "spec.endpoints[1].address: \"db_1.example.com\" is neither an IP address nor a DNS name"),
            ("resolution: DNS\nendpoints: [{address: db.example.com.}]\n", "spec.endpoints[0].address: \"db.example.com.\" is neither"),
            ("resolution: DNS\nendpoints: [{address: \"2001:db8::1\"}]\n", "spec.endpoints[0].address: \"2001:db8::1\" is an IPv6 address: the mesh is IPv4"),
            ("resolution: DNS\nendpoints: [{address: db.example.com, weight: 2}]\n", "spec.endpoints[0].weight: not supported yet"),
            ("resolution: DNS\nendpoints: [{address: db.example.com, ports: {http: 9081}}]\n", "spec.endpoints[0].ports: http: 9081: not supported yet"),
            ("resolution: STATIC\nworkloadSelector: {labels: {}}\n", "spec.workloadSelector.labels: at least one label"),
            ("resolution: STATIC\nworkloadSelector: {labels: {a: b}}\nendpoints: [{address: 10.0.0.1}]\n", "`workloadSelector` and `endpoints` exclude"),
            ("resolution: STATIC\nendpoints: [{address: db.example.com}]\n", "spec.endpoints[0].address: \"db.example.com\" is not an IP address"),
            ("resolution: STATIC\nendpoints: [{address: 10.0.0.1, ports: {https: 443}}]\n", "spec.endpoints[0].ports: no port is named \"https\""),
            ("resolution: STATIC\nendpoints: [{address: 10.0.0.1, ports: {http: 9081}}]\n", "spec.endpoints[0].ports: http: 9081: not supported yet"),
            ("resolution: STATIC\nendpoints: [{address: 10.0.0.1, weight: 2}]\n", "spec.endpoints[0].weight: not supported yet"),
            ("resolution: STATIC\nendpoints: [{address: 10.0.0.1}]\naddresses: [not-an-ip]\n", "spec.addresses[0]: \"not-an-ip\" is not an IP address or CIDR"),
        ] {
            let spec = format!("hosts: [db.example.com]\n{ports}{rest}");
            assert_one_error("ServiceEntry", &spec, expected);
        }
        assert_one_error(
            "ServiceEntry",
            "hosts: [db.example.com]\nresolution: STATIC\nendpoints: [{address: 10.0.0.1}]\nports: [{number: 80, name: http, targetPort: 8080}]\n",
            "spec.ports[0].targetPort: not supported yet",
        );
        let twice = "hosts: [db.example.com]\nresolution: STATIC\nendpoints: [{address: 10.0.0.1}]\nports: [{number: 80, name: http}, {number: 80, name: Http}]\n";
        let errors = errors_of("ServiceEntry", twice);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let (errors, warnings) = findings_of(
            "ServiceEntry",
            &format!("hosts: [db.example.com]\n{ports}resolution: STATIC\nendpoints: [{{address: 10.0.0.1}}]\naddresses: [10.1.0.0/16]\n"),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            warnings[0].starts_with("spec.addresses: ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn refused_istio_fields_and_values_are_named() {
        for (kind, spec, expected) in [
            ("VirtualService", format!("hosts: [{H}]\ntls: []\n"), "spec.tls: this Istio field is not supported"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n  fault: {{delay: {{exponentialDelay: 1s}}}}\n"), "spec.http[0].fault.delay.exponentialDelay: this Istio field is not supported"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n  timeout: 10\n"), "spec.http[0].timeout: invalid type: integer `10`, expected a string"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n  timeout: 10 s\n"), "spec.http[0].timeout: \"10 s\" is not a duration"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- match: [{{uri: {{regex: \"(\"}}}}]\n  route:\n  - destination: {{host: {H}}}\n"), "spec.http[0].match[0].uri: regex \"(\" is not valid"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- match: [{{uri: {{exact: /a, prefix: /b}}}}]\n  route:\n  - destination: {{host: {H}}}\n"), "spec.http[0].match[0].uri: a string match has exactly one"),
            ("VirtualService", format!("hosts: [{H}]\nhttp:\n- route:\n  - destination: {{host: {H}}}\n  fault: {{abort: {{httpStatus: 500, percentage: {{value: 101}}}}}}\n"), "spec.http[0].fault.abort.percentage: a percentage is from 0 to 100, found 101"),
            ("DestinationRule", format!("host: {H}\ntrafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n"), "spec.trafficPolicy.tls: TLS settings (mutual TLS, TLS origination) are not supported yet"),
            ("DestinationRule", format!("host: {H}\nsubsets:\n- name: v1\n  trafficPolicy:\n    portLevelSettings: [{{port: {{number: 80}}, tls: {{}}}}]\n"), "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls: TLS settings"),
            ("DestinationRule", format!("host: {H}\ntrafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}\n"), "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported"),
            ("DestinationRule", format!("host: {H}\ntrafficPolicy: {{loadBalancer: {{consistentHash: {{useSourceIp: false}}}}}}\n"), "consistentHash: a consistent hash has exactly one"),
            ("DestinationRule", format!("host: {H}\ntrafficPolicy: {{loadBalancer: {{consistentHash: {{maglev: {{}}}}}}}}\n"), "consistentHash.maglev: this Istio field is not supported"),
            ("ServiceEntry", "hosts: [a.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: DNS\n".to_string(), "spec.ports[0].protocol: HTTPS is not supported"),
            ("ServiceEntry", "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: NONE\n".to_string(), "spec.resolution: NONE is not supported"),
            ("ServiceEntry", "hosts: [a.example.com]\nports: [{number: 80, name: http}]\n".to_string(), "missing field `resolution`"),
        ] {
            assert_one_error(kind, &spec, expected);
        }
    }

    /// A Sidecar's spec with these egress hosts (YAML flow items) and `rest`.
    fn sidecar(hosts: &str, rest: &str) -> String {
        format!("egress:\n- hosts: [{hosts}]\n{rest}")
    }

    #[test]
    fn sidecar_fields_istio_has_and_boshy_does_not_are_refused_by_name() {
        for (spec, expected) in [
            (sidecar("'*/*'", "ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]\n"), "spec.ingress: this Istio field is not supported"),
            (sidecar("'*/*'", "inboundConnectionPool: {http: {http1MaxPendingRequests: 1}}\n"), "spec.inboundConnectionPool: this Istio field is not supported"),
            (sidecar("'*/*'", "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"), "spec.outboundTrafficPolicy: not supported: a Sidecar only adds to the scope of the VMs it selects, it never restricts it; a name of the mesh outside its hosts still joins a VM's scope when the VM resolves it"),
            ("egress:\n- hosts: ['*/*']\n  port: {number: 9080, protocol: HTTP, name: http}\n".to_string(), "spec.egress[0].port: this Istio field is not supported"),
            ("egress:\n- hosts: ['*/*']\n  bind: 127.0.0.1\n".to_string(), "spec.egress[0].bind: this Istio field is not supported"),
            ("egress:\n- hosts: ['*/*']\n  captureMode: NONE\n".to_string(), "spec.egress[0].captureMode: this Istio field is not supported"),
            ("egress:\n- hosts: ['*/*']\n  hostz: []\n".to_string(), "spec.egress[0].hostz: unknown field `hostz`"),
            ("egress:\n- port: {number: 80}\n".to_string(), "spec.egress[0].port: this Istio field is not supported"),
            ("egress:\n- {}\n".to_string(), "spec.egress[0]: missing field `hosts`"),
        ] {
            assert_one_error("Sidecar", &spec, expected);
        }
        // The finding names the config, the resource and the field.
        let content = "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\nmetadata: {name: pins}\nspec:\n  egress: [{hosts: ['*/*'], captureMode: NONE}]\n";
        let parsed = parse_config("scope", content);
        assert_eq!(
            parsed.errors[0].to_string(),
            "config \"scope\": Sidecar \"pins\": spec.egress[0].captureMode: this Istio field is \
             not supported by boshy-istio (docs/rules.md lists those that are)"
        );
    }

    #[test]
    fn sidecar_shapes_it_cannot_pin_are_refused() {
        for (spec, expected) in [
            (String::new(), "spec.egress: an egress listener with `hosts` is required"),
            ("egress: []\n".to_string(), "spec.egress: an egress listener with `hosts` is required"),
            (sidecar("", ""), "spec.egress[0].hosts: at least one host is required"),
            ("egress:\n- hosts: ['*/*']\n- hosts: ['*/a.b.boshy']\n".to_string(), "spec.egress[1]: one egress listener only"),
            (sidecar("'*/*'", "workloadSelector: {labels: {}}\n"), "spec.workloadSelector.labels: at least one label is required: leave `workloadSelector` out"),
            (sidecar("'*/*'", "workloadSelector: {labels: {'-app': x}}\n"), "spec.workloadSelector.labels: key \"-app\""),
            (sidecar("'*/*'", "workloadSelector: {matchLabels: {app: x}}\n"), "spec.workloadSelector.matchLabels: unknown field `matchLabels`"),
        ] {
            assert_one_error("Sidecar", &spec, expected);
        }
    }

    #[test]
    fn sidecar_hosts_are_namespace_slash_name_with_any_namespace() {
        use crate::traffic::HostPattern;
        let exact = || Ok(HostPattern::Exact(H.to_string()));
        assert_eq!(super::egress_host(&format!("*/{H}")), exact());
        assert_eq!(super::egress_host(&format!("./{H}")), exact());
        assert_eq!(super::egress_host("*/*"), Ok(HostPattern::Any));
        assert_eq!(super::egress_host("./*"), Ok(HostPattern::Any));
        assert_eq!(
            super::egress_host("*/*.bookinfo.boshy"),
            Ok(HostPattern::Suffix(".bookinfo.boshy".into()))
        );
        for (host, expected) in [
            (H.to_string(), "write it as Istio does, `namespace/dnsName`"),
            (format!("~/{H}"), "the namespace `~` (no service) is not supported"),
            ("~/*".to_string(), "the namespace `~`"),
            (format!("prod/{H}"), "namespace \"prod\" is not supported: boshy-istio has no namespaces; write `*/` or `./`"),
            (format!("/{H}"), "namespace \"\" is not supported"),
            ("*/reviews".to_string(), "is a short name"),
            ("*/Reviews.bookinfo.boshy".to_string(), "is not a host name"),
            ("*/10.0.0.1".to_string(), "is an IP address"),
            ("*/*.Bookinfo.boshy".to_string(), "\"Bookinfo.boshy\" is not a domain"),
            ("*/*.".to_string(), "\"\" is not a domain"),
            ("*/reviews.*.boshy".to_string(), "a wildcard is the whole name (`*/*`) or its first label"),
            ("*/*reviews.boshy".to_string(), "a wildcard is the whole name"),
            ("*/**".to_string(), "a wildcard is the whole name"),
        ] {
            let spec = sidecar(&format!("'{host}'"), "");
            let errors = errors_of("Sidecar", &spec);
            assert!(
                errors.len() == 1
                    && errors[0].starts_with("spec.egress[0].hosts[0]: ")
                    && errors[0].contains(expected),
                "{host}: expected {expected:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn sidecar_hosts_listed_twice_or_beside_every_host_are_warned_about() {
        let (errors, warnings) =
            findings_of("Sidecar", &sidecar(&format!("'*/{H}', './{H}', '*/*'"), ""));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            warnings,
            [
                format!("spec.egress[0].hosts[1]: \"./{H}\" is listed twice"),
                "spec.egress[0].hosts: `*/*` pins every service of the mesh: the other hosts add \
                 nothing"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn everything_supported_at_once_is_accepted() {
        let vs = format!(
            "hosts: [{H}]
gateways: [mesh]
exportTo: ['*']
http:
- name: jason
  match:
  - name: m
    uri: {{prefix: /reviews}}
    method: {{exact: GET}}
    headers: {{end-user: {{exact: jason}}}}
    withoutHeaders: {{x-canary: {{regex: \"^no$\"}}}}
    queryParams: {{v: {{exact: '2'}}}}
    port: 9080
    ignoreUriCase: true
  route:
  - destination: {{host: {H}, subset: v2, port: {{number: 9080}}}}
    weight: 90
  - destination: {{host: {H}, subset: v3}}
    weight: 10
  rewrite: {{uri: /v2/reviews, authority: reviews.example}}
  timeout: 1.5s
  retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,connect-failure,503'}}
  fault:
    delay: {{fixedDelay: 7s, percentage: {{value: 100}}}}
    abort: {{httpStatus: 500, percentage: {{value: 0.1}}}}
  mirror: {{host: {H}, subset: v3}}
  mirrorPercentage: {{value: 5}}
  headers: {{response: {{set: {{x-served-by: mesh}}}}}}
- route:
  - destination: {{host: {H}}}
    headers: {{request: {{set: {{x-a: b}}, add: {{x-c: d}}, remove: [x-e]}}}}
- redirect: {{uri: /new, authority: other.example, redirectCode: 308}}
tcp:
- match: [{{port: 9090}}]
  route:
  - destination: {{host: {H}}}
"
        );
        let (errors, warnings) = findings_of("VirtualService", &vs);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        let dr = format!(
            "host: {H}
exportTo: ['*']
trafficPolicy:
  loadBalancer:
    consistentHash: {{httpCookie: {{name: user, path: /, ttl: 0s}}}}
    localityLbSetting:
      enabled: true
      distribute: [{{from: '*', to: {{z1: 80, z2/*: 20}}}}]
  connectionPool:
    tcp: {{maxConnections: 100, connectTimeout: 30ms}}
    http: {{http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 3}}
  outlierDetection: {{consecutive5xxErrors: 7, consecutiveGatewayErrors: 5, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}}
  portLevelSettings:
  - port: {{number: 9080}}
    loadBalancer: {{simple: LEAST_REQUEST}}
subsets:
- name: v1
  labels: {{version: v1}}
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
- name: v2
  labels: {{version: v2}}
  trafficPolicy: {{loadBalancer: {{localityLbSetting: {{enabled: false}}}}}}
"
        );
        let (errors, warnings) = findings_of("DestinationRule", &dr);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        let se = "hosts: [db.example.com]
location: MESH_EXTERNAL
ports: [{number: 5432, name: tcp-postgres, protocol: tcp, targetPort: 5432}]
resolution: STATIC
endpoints:
- {address: 10.0.0.8, ports: {tcp-postgres: 5432}, labels: {role: primary}, locality: z1}
- {address: 10.0.0.9}
";
        let (errors, warnings) = findings_of("ServiceEntry", se);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        for se in [
            "hosts: [db.example.com]
ports: [{number: 5432, name: tcp-postgres}]
resolution: DNS
endpoints:
- {address: Primary.DB.example.com, ports: {tcp-postgres: 5432}, labels: {role: primary}, locality: z1}
- {address: 10.0.0.9, labels: {role: replica}}
",
            "hosts: [db.example.com]
ports: [{number: 5432, name: tcp-postgres}]
resolution: DNS_ROUND_ROBIN
endpoints: [{address: db.example.com}]
",
        ] {
            let (errors, warnings) = findings_of("ServiceEntry", se);
            assert!(
                errors.is_empty() && warnings.is_empty(),
                "{errors:?} {warnings:?}"
            );
        }
    }

    /// Istio's own example (docs of WorkloadGroup), without the `serviceAccount` boshy-istio
    /// refuses.
    const GROUP: &str = "metadata:
  labels: {app.kubernetes.io/name: reviews, app.kubernetes.io/version: \"1.3.4\"}
  annotations: {example.com/owner: team-a}
template:
  ports: {grpc: 3550, http: 8080}
probe:
  initialDelaySeconds: 5
  timeoutSeconds: 3
  periodSeconds: 4
  successThreshold: 3
  failureThreshold: 3
  httpGet:
    path: /foo/bar
    host: 127.0.0.1
    port: 3100
    scheme: HTTPS
    httpHeaders:
    - {name: Lit-Header, value: Im-The-Best}
";

    #[test]
    fn istios_workload_group_example_is_accepted_with_kubernetes_defaults() {
        assert_eq!(findings_of("WorkloadGroup", GROUP), (vec![], vec![]));
        let bare = "template: {ports: {http: 8080}}\nprobe: {tcpSocket: {port: http}}\n";
        assert_eq!(findings_of("WorkloadGroup", bare), (vec![], vec![]));
        let parsed = crate::rules::parse_config(
            "c",
            "apiVersion: networking.istio.io/v1alpha3\nkind: WorkloadGroup\nmetadata: {name: g}\nspec: {template: {ports: {http: 8080}}, probe: {exec: {command: [/bin/true]}}}\n",
        );
        let crate::rules::Spec::WorkloadGroup(group) = &parsed.resources[0].spec else {
            panic!("{parsed:?}")
        };
        let probe = group.probe.as_ref().expect("a probe");
        assert_eq!(
            (
                probe.initial_delay_seconds,
                probe.timeout_seconds,
                probe.period_seconds,
                probe.success_threshold,
                probe.failure_threshold
            ),
            (0, 1, 10, 1, 3)
        );
    }

    #[test]
    fn template_fields_a_member_or_the_mesh_decides_are_refused_by_name() {
        for (field, value, reason) in [
            ("address", "10.0.0.9", "the one its registration comes from"),
            ("serviceAccount", "default", "comes from the mesh's CA"),
            ("network", "n1", "this Istio field is not supported"),
            ("locality", "us/z1", "this Istio field is not supported"),
            ("weight", "3", "this Istio field is not supported"),
        ] {
            let spec = format!("template: {{ports: {{http: 80}}, {field}: {value}}}\n");
            assert_one_error("WorkloadGroup", &spec, &format!("spec.template.{field}: "));
            assert_one_error("WorkloadGroup", &spec, reason);
        }
        assert_one_error(
            "WorkloadGroup",
            "template: {ports: {http: 80}}\nprobe: {grpc: {port: 80}}\n",
            "spec.probe.grpc: this Istio field is not supported",
        );
    }

    #[test]
    fn a_workload_groups_ports_and_labels_are_checked() {
        for (spec, expected) in [
            ("template: {}", "spec.template.ports: at least one port is required: they are the ports of the group's service"),
            ("template: {ports: {http: 0}}", "spec.template.ports.http: a port is from 1 to 65535, not 0"),
            ("template: {ports: {http: 65536}}", "spec.template.ports.http: a port is from 1 to 65535, not 65536"),
            ("template: {ports: {http: 80, tcp: 80}}", "spec.template.ports.tcp: port 80 is listed twice"),
            ("template: {ports: {http: 80, HTTP: 81}}", "spec.template.ports.http: port name http is used twice"),
            ("template: {ports: {web_ui: 80}}", "spec.template.ports.web_ui: \"web_ui\" is not a port name (a DNS label)"),
            ("metadata: {labels: {app: a}}\ntemplate: {ports: {http: 80}, labels: {app: b}}", "spec.template.labels.app: \"b\" against \"a\" in spec.metadata.labels: every member gets both, so they must agree"),
            ("metadata: {labels: {app: -a}}\ntemplate: {ports: {http: 80}}", "spec.metadata.labels: value \"-a\""),
            ("metadata: {annotations: {a/b/c: x}}\ntemplate: {ports: {http: 80}}", "spec.metadata.annotations: key \"a/b/c\""),
            ("metadata: {owner: me}\ntemplate: {ports: {http: 80}}", "spec.metadata.owner: unknown field `owner`, expected `labels` or `annotations`"),
        ] {
            assert_one_error("WorkloadGroup", spec, expected);
        }
    }

    #[test]
    fn a_probe_is_in_kubernetes_ranges_and_probes_one_way() {
        let probe = |probe: &str| format!("template: {{ports: {{http: 8080}}}}\nprobe: {probe}\n");
        for (spec, expected) in [
            (
                "{}",
                "spec.probe: exactly one of httpGet, tcpSocket and exec is required, not 0",
            ),
            (
                "{tcpSocket: {port: 80}, exec: {command: [/bin/true]}}",
                "spec.probe: exactly one of httpGet, tcpSocket and exec is required, not 2",
            ),
            (
                "{initialDelaySeconds: -1, tcpSocket: {port: 80}}",
                "spec.probe.initialDelaySeconds: -1 is out of range: from 0 to 2147483647",
            ),
            (
                "{timeoutSeconds: 0, tcpSocket: {port: 80}}",
                "spec.probe.timeoutSeconds: 0 is out of range: from 1 to 2147483647",
            ),
            (
                "{periodSeconds: 0, tcpSocket: {port: 80}}",
                "spec.probe.periodSeconds: 0 is out of range: from 1 to 2147483647",
            ),
            (
                "{successThreshold: 0, tcpSocket: {port: 80}}",
                "spec.probe.successThreshold: 0 is out of range: from 1 to 2147483647",
            ),
            (
                "{failureThreshold: 2147483648, tcpSocket: {port: 80}}",
                "spec.probe.failureThreshold: 2147483648 is out of range: from 1 to 2147483647",
            ),
            (
                "{tcpSocket: {port: 0}}",
                "spec.probe.tcpSocket.port: a port is from 1 to 65535, not 0",
            ),
            (
                "{httpGet: {port: 70000}}",
                "spec.probe.httpGet.port: a port is from 1 to 65535, not 70000",
            ),
            (
                "{httpGet: {port: admin}}",
                "spec.probe.httpGet.port: no port is named \"admin\" in spec.template.ports",
            ),
            (
                "{httpGet: {port: http, path: healthz}}",
                "spec.probe.httpGet.path: \"healthz\" is not a path: it starts with '/'",
            ),
            (
                "{httpGet: {port: http, scheme: FTP}}",
                "spec.probe.httpGet.scheme: unknown value \"FTP\", expected one of HTTP, HTTPS",
            ),
            (
                "{httpGet: {port: http, httpHeaders: [{name: 'a b', value: c}]}}",
                "spec.probe.httpGet.httpHeaders[0].name: \"a b\" is not a header name",
            ),
            (
                "{httpGet: {port: [80]}}",
                "spec.probe.httpGet.port: a port number or the name of one of the group's ports",
            ),
            (
                "{exec: {command: []}}",
                "spec.probe.exec.command: a command is required: the program, then its arguments",
            ),
        ] {
            assert_one_error("WorkloadGroup", &probe(spec), expected);
        }
        assert_eq!(
            errors_of(
                "WorkloadGroup",
                &probe("{httpGet: {port: http, scheme: https}}")
            ),
            Vec::<String>::new(),
            "Istio's example once wrote the scheme lower-case"
        );
    }
}
