//! The accepted rules, in the catalog's terms: a [`RuleSet`] and the catalog it was validated
//! against → the traffic model (`crate::traffic`) that xDS turns into Envoy's routes and
//! clusters. Pure: what cannot be said in the model is returned as findings (warnings),
//! each naming the config, the resource and the field.
//!
//! What Istio leaves to context is decided here:
//! - a destination without `port` goes to the port the request was sent to when it is the
//!   routed host itself or has that port too, else to its only port;
//! - a route applies to a port of its host when one of its matches has that `port` or none;
//! - a subset is the set of addresses (or, for a host resolved through DNS, names) of the
//!   host's endpoints that carry its labels;
//! - Istio's default retry conditions (`connect-failure,refused-stream,unavailable,
//!   cancelled,retriable-status-codes` with 503) apply to `retries` without `retryOn`;
//! - a Sidecar is a scope pin: its selector and its egress hosts as patterns (a name, a
//!   domain's names, every name), matched against the mesh's hostnames per VM
//!   (`TrafficRules::pinned_hosts`), so that a pinned service that comes later is pinned;
//! - the security policies become the security model per instance group
//!   (`compile_security.rs`).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::model::{Catalog, Service};
use crate::traffic::{self, Percentage, ScopePin, ServiceRules, TrafficRules};

use super::checks::egress_host;
use super::compile_security;
use super::finding::{Finding, ResourceRef};
use super::mesh::selects;
use super::model::{
    self as istio, ConsistentHash, DestinationRule, Sidecar, SimpleLb, VirtualService,
};
use super::validate::{Rule, RuleSet};
use super::values::{Percent, StringMatch};

/// The traffic model of a rule set, and what of the rules it could not carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    pub traffic: TrafficRules,
    pub warnings: Vec<Finding>,
}

/// Istio's retry conditions for `retries` that name none (its `DefaultRetryPolicy`).
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const DEFAULT_RETRIABLE_STATUS_CODES: [u16; 1] = [503];

/// Compiles `rules` (validated against `catalog`) into the traffic model.
pub fn compile(rules: &RuleSet, catalog: &Catalog) -> Compiled {
    let services: BTreeMap<&str, &Service> = catalog
        .services
        .iter()
        .map(|service| (service.hostname.as_str(), service))
        .collect();
    let mut compiler = Compiler {
        services,
        compiled: Compiled::default(),
    };
    for rule in &rules.destination_rules {
        compiler.destination_rule(rule);
    }
    for rule in &rules.virtual_services {
        compiler.virtual_service(rule);
    }
    compiler.compiled.traffic.scope_pins = rules.sidecars.iter().map(scope_pin).collect();
    compiler.compiled.traffic.security = compile_security::security_rules(rules, catalog);
    compiler.compiled
}

/// A Sidecar's pin: its hosts once each, in the order written.
fn scope_pin(rule: &Rule<Sidecar>) -> ScopePin {
    let mut hosts = Vec::new();
    let written = rule.spec.egress.iter().flat_map(|egress| &egress.hosts);
    // Every host passed the checks: none fails here.
    for pattern in written.filter_map(|host| egress_host(host).ok()) {
        if !hosts.contains(&pattern) {
            hosts.push(pattern);
        }
    }
    ScopePin {
        selector: rule
            .spec
            .workload_selector
            .as_ref()
            .map(|selector| selector.labels.clone()),
        hosts,
        config: rule.config.clone(),
        name: rule.name.clone(),
    }
}

struct Compiler<'c> {
    services: BTreeMap<&'c str, &'c Service>,
    compiled: Compiled,
}

/// Where a finding about one resource goes.
struct At<'r> {
    config: &'r str,
    resource: &'r ResourceRef,
}

impl Compiler<'_> {
    fn rules_of(&mut self, host: &str) -> &mut ServiceRules {
        self.compiled
            .traffic
            .services
            .entry(host.to_string())
            .or_default()
    }

    fn warn(&mut self, at: &At, field: &str, message: impl Into<String>) {
        self.compiled.warnings.push(Finding::new(
            at.config,
            Some(at.resource),
            Some(field),
            message,
        ));
    }

    fn destination_rule(&mut self, rule: &Rule<DestinationRule>) {
        let dr = &rule.spec;
        let Some(service) = self.services.get(dr.host.as_str()).copied() else {
            return;
        };
        let mut subsets = BTreeMap::new();
        for subset in &dr.subsets {
            let endpoints = service
                .endpoints
                .iter()
                .filter(|endpoint| selects(&subset.labels, &endpoint.labels))
                .map(|endpoint| endpoint.address)
                .collect();
            let dns_endpoints = service
                .dns
                .iter()
                .flat_map(|dns| &dns.endpoints)
                .filter(|endpoint| selects(&subset.labels, &endpoint.labels))
                .map(|endpoint| endpoint.address.clone())
                .collect();
            let policy = subset
                .traffic_policy
                .as_ref()
                .map(port_policies)
                .unwrap_or_default();
            let subset_model = traffic::Subset {
                endpoints,
                dns_endpoints,
                policy,
            };
            subsets.insert(subset.name.clone(), subset_model);
        }
        let policy = dr.traffic_policy.as_ref().map(port_policies);
        let rules = self.rules_of(&dr.host);
        rules.configs.insert(rule.config.clone());
        rules.subsets = subsets;
        rules.policy = policy.unwrap_or_default();
    }

    fn virtual_service(&mut self, rule: &Rule<VirtualService>) {
        let at = At {
            config: &rule.config,
            resource: &rule.reference,
        };
        for host in &rule.spec.hosts {
            let Some(service) = self.services.get(host.as_str()).copied() else {
                continue;
            };
            let mut routed = false;
            for port in &service.ports {
                if port.protocol.is_http() {
                    let routes = self.http_routes(&at, &rule.spec, service, port.number);
                    if !routes.is_empty() {
                        self.rules_of(host).http_routes.insert(port.number, routes);
                        routed = true;
                    }
                } else if let Some(route) = self.tcp_route(&at, &rule.spec, service, port.number) {
                    self.rules_of(host).tcp_routes.insert(port.number, route);
                    routed = true;
                }
            }
            if routed {
                self.rules_of(host).configs.insert(rule.config.clone());
            }
        }
    }

    fn http_routes(
        &mut self,
        at: &At,
        vs: &VirtualService,
        service: &Service,
        port: u16,
    ) -> Vec<traffic::HttpRoute> {
        let mut routes = Vec::new();
        for (index, route) in vs.http.iter().enumerate() {
            let field = format!("spec.http[{index}]");
            let applies = |m: &istio::HttpMatch| m.port.is_none_or(|p| p == port);
            if !route.matches.is_empty() && !route.matches.iter().any(applies) {
                continue;
            }
            let matches = route
                .matches
                .iter()
                .filter(|m| applies(m))
                .map(http_match)
                .collect();
            let action = match &route.redirect {
                Some(redirect) => traffic::HttpAction::Redirect(redirect_of(redirect)),
                None => {
                    let Some(forward) = self.forward(at, &field, route, service, port) else {
                        continue;
                    };
                    traffic::HttpAction::Forward(forward)
                }
            };
            let mut headers = header_operations(route.headers.as_ref());
            // Istio's headers of the only destination are the route's: with one destination,
            // every forwarded request and its response get them.
            if let [only] = route.route.as_slice() {
                let own = header_operations(only.headers.as_ref());
                headers.request = merge_edits(headers.request, own.request);
                headers.response = merge_edits(headers.response, own.response);
            }
            routes.push(traffic::HttpRoute {
                name: route.name.clone().unwrap_or_default(),
                matches,
                action,
                fault: route.fault.as_ref().map(fault_of),
                headers,
            });
        }
        routes
    }

    fn forward(
        &mut self,
        at: &At,
        field: &str,
        route: &istio::HttpRoute,
        service: &Service,
        port: u16,
    ) -> Option<traffic::Forward> {
        let weighted = route.route.iter().map(|d| (&d.destination, d.weight));
        let destinations = self.weighted(at, field, weighted, service, port)?;
        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            let field = format!("{field}.mirror");
            if let Some(destination) = self.destination(at, &field, mirror, service, port) {
                mirrors.push(traffic::Mirror {
                    destination,
                    percentage: route
                        .mirror_percentage
                        .map_or(Percentage::ALL, percentage_of),
                });
            }
        }
        Some(traffic::Forward {
            destinations,
            rewrite: route.rewrite.as_ref().map(|rewrite| traffic::Rewrite {
                path: rewrite.uri.clone().map(traffic::PathRewrite::Prefix),
                authority: rewrite.authority.clone(),
            }),
            // Istio's `0s` is no timeout.
            timeout: route.timeout.filter(|timeout| !timeout.is_zero()),
            retries: route.retries.as_ref().map(retries_of),
            mirrors,
        })
    }

    fn tcp_route(
        &mut self,
        at: &At,
        vs: &VirtualService,
        service: &Service,
        port: u16,
    ) -> Option<Vec<traffic::WeightedDestination>> {
        let (index, route) = vs.tcp.iter().enumerate().find(|(_, route)| {
            route.matches.is_empty()
                || route
                    .matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == port))
        })?;
        let weighted = route.route.iter().map(|d| (&d.destination, d.weight));
        self.weighted(at, &format!("spec.tcp[{index}]"), weighted, service, port)
    }

    /// A route's destinations (`<field>.route[n]`) with their weights; `None` when the port of
    /// one cannot be told (warned about).
    fn weighted<'d>(
        &mut self,
        at: &At,
        field: &str,
        destinations: impl ExactSizeIterator<Item = (&'d istio::Destination, Option<u32>)>,
        service: &Service,
        port: u16,
    ) -> Option<Vec<traffic::WeightedDestination>> {
        let count = destinations.len();
        destinations
            .enumerate()
            .map(|(to, (destination, weight))| {
                let field = format!("{field}.route[{to}].destination");
                Some(traffic::WeightedDestination {
                    destination: self.destination(at, &field, destination, service, port)?,
                    weight: weight_of(weight, count),
                })
            })
            .collect()
    }

    /// The catalog port of `destination`, or a warning when it cannot be told (the route is
    /// then left out for this port: its requests go to the whole service as without rules).
    fn destination(
        &mut self,
        at: &At,
        field: &str,
        destination: &istio::Destination,
        routed: &Service,
        port: u16,
    ) -> Option<traffic::Destination> {
        let target = self.services.get(destination.host.as_str()).copied()?;
        let numbers: BTreeSet<u16> = target.ports.iter().map(|p| p.number).collect();
        let chosen = match destination.port {
            Some(selector) => Some(selector.number),
            None if target.hostname == routed.hostname || numbers.contains(&port) => Some(port),
            None if numbers.len() == 1 => numbers.first().copied(),
            None => None,
        };
        let Some(number) = chosen.filter(|number| numbers.contains(number)) else {
            self.warn(
                at,
                &format!("{field}.port"),
                format!(
                    "{} has several ports and none is {port}, the port of {} this route is \
                     for: name one with `port.number`; requests to {}:{port} are not routed by \
                     this rule",
                    destination.host, routed.hostname, routed.hostname
                ),
            );
            return None;
        };
        Some(traffic::Destination {
            host: destination.host.clone(),
            port: number,
            subset: destination.subset.clone(),
        })
    }
}

/// Istio's weight: the only destination gets everything; an absent weight among several is 0.
fn weight_of(weight: Option<u32>, destinations: usize) -> u32 {
    match (weight, destinations) {
        (Some(weight), _) => weight,
        (None, 1) => 100,
        (None, _) => 0,
    }
}

fn percentage_of(percent: Percent) -> Percentage {
    Percentage {
        per_million: (percent.value() * 10_000.0).round() as u32,
    }
}

fn string_match(value: &StringMatch) -> traffic::StringMatch {
    match value {
        StringMatch::Exact(text) => traffic::StringMatch::Exact(text.clone()),
        StringMatch::Prefix(text) => traffic::StringMatch::Prefix(text.clone()),
        StringMatch::Regex(text) => traffic::StringMatch::Regex(text.clone()),
    }
}

fn http_match(m: &istio::HttpMatch) -> traffic::HttpMatch {
    let headers = m
        .headers
        .iter()
        .map(|(name, value)| (name, traffic::HeaderCondition::Matches(string_match(value))))
        .chain(m.without_headers.iter().map(|(name, value)| {
            (
                name,
                traffic::HeaderCondition::DoesNotMatch(string_match(value)),
            )
        }))
        .map(|(name, condition)| traffic::HeaderMatch {
            name: name.to_ascii_lowercase(),
            condition,
        })
        .collect();
    traffic::HttpMatch {
        path: m.uri.as_ref().map(string_match),
        ignore_path_case: m.ignore_uri_case,
        headers,
        method: m.method.as_ref().map(string_match),
        query_params: m
            .query_params
            .iter()
            .map(|(name, value)| traffic::QueryParamMatch {
                name: name.clone(),
                value: Some(string_match(value)),
            })
            .collect(),
        source_labels: m.source_labels.clone(),
    }
}

fn redirect_of(redirect: &istio::HttpRedirect) -> traffic::Redirect {
    let code = match redirect.redirect_code {
        Some(302) => traffic::RedirectCode::Found,
        Some(303) => traffic::RedirectCode::SeeOther,
        Some(307) => traffic::RedirectCode::TemporaryRedirect,
        Some(308) => traffic::RedirectCode::PermanentRedirect,
        // 301 and absent; any other code was refused by the checks.
        _ => traffic::RedirectCode::MovedPermanently,
    };
    traffic::Redirect {
        path: redirect.uri.clone(),
        authority: redirect.authority.clone(),
        code,
    }
}

fn retries_of(retry: &istio::HttpRetry) -> traffic::Retries {
    let (retry_on, mut retriable_status_codes) = match &retry.retry_on {
        Some(retry_on) => {
            let mut conditions: Vec<&str> = Vec::new();
            let mut codes = Vec::new();
            for condition in retry_on.split(',').map(str::trim) {
                match condition.parse::<u16>() {
                    Ok(code) => codes.push(code),
                    Err(_) => conditions.push(condition),
                }
            }
            if !codes.is_empty() && !conditions.contains(&"retriable-status-codes") {
                conditions.push("retriable-status-codes");
            }
            (conditions.join(","), codes)
        }
        None => (
            DEFAULT_RETRY_ON.to_string(),
            DEFAULT_RETRIABLE_STATUS_CODES.to_vec(),
        ),
    };
    retriable_status_codes.sort_unstable();
    retriable_status_codes.dedup();
    traffic::Retries {
        attempts: retry.attempts,
        per_try_timeout: retry.per_try_timeout,
        retry_on,
        retriable_status_codes,
    }
}

fn fault_of(fault: &istio::HttpFault) -> traffic::Fault {
    // Istio injects nothing when a fault has no percentage (the checks warn about it).
    let share = |percentage: Option<Percent>| {
        percentage.map_or(Percentage { per_million: 0 }, percentage_of)
    };
    traffic::Fault {
        delay: fault.delay.as_ref().map(|delay| traffic::FaultDelay {
            duration: delay.fixed_delay,
            percentage: share(delay.percentage),
        }),
        abort: fault.abort.as_ref().map(|abort| traffic::FaultAbort {
            http_status: abort.http_status,
            percentage: share(abort.percentage),
        }),
    }
}

fn header_operations(headers: Option<&istio::Headers>) -> traffic::HeaderOperations {
    let edits = |operations: Option<&istio::HeaderOperations>| {
        operations.map_or_else(traffic::HeaderEdits::default, |ops| traffic::HeaderEdits {
            set: ops.set.clone(),
            add: ops
                .add
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            remove: ops.remove.clone(),
        })
    };
    traffic::HeaderOperations {
        request: edits(headers.and_then(|h| h.request.as_ref())),
        response: edits(headers.and_then(|h| h.response.as_ref())),
    }
}

/// `first`'s edits, then `then`'s: a header both set takes `then`'s value.
fn merge_edits(first: traffic::HeaderEdits, then: traffic::HeaderEdits) -> traffic::HeaderEdits {
    let mut merged = first;
    merged.set.extend(then.set);
    merged.add.extend(then.add);
    merged.remove.extend(then.remove);
    merged
}

fn port_policies(policy: &istio::TrafficPolicy) -> traffic::PortPolicies {
    traffic::PortPolicies {
        all_ports: traffic_policy(
            policy.load_balancer.as_ref(),
            policy.connection_pool.as_ref(),
            policy.outlier_detection.as_ref(),
        ),
        by_port: policy
            .port_level_settings
            .iter()
            .map(|port| {
                (
                    port.port.number,
                    traffic_policy(
                        port.load_balancer.as_ref(),
                        port.connection_pool.as_ref(),
                        port.outlier_detection.as_ref(),
                    ),
                )
            })
            .collect(),
    }
}

fn traffic_policy(
    load_balancer: Option<&istio::LoadBalancer>,
    connection_pool: Option<&istio::ConnectionPool>,
    outlier_detection: Option<&istio::OutlierDetection>,
) -> traffic::TrafficPolicy {
    traffic::TrafficPolicy {
        load_balancer: load_balancer.and_then(load_balancer_of),
        connection_pool: connection_pool.map(|pool| traffic::ConnectionPool {
            max_connections: pool.tcp.as_ref().and_then(|tcp| tcp.max_connections),
            connect_timeout: pool.tcp.as_ref().and_then(|tcp| tcp.connect_timeout),
            max_pending_requests: pool
                .http
                .as_ref()
                .and_then(|http| http.http1_max_pending_requests),
            max_requests: pool.http.as_ref().and_then(|http| http.http2_max_requests),
            max_requests_per_connection: pool
                .http
                .as_ref()
                .and_then(|http| http.max_requests_per_connection),
            max_retries: pool.http.as_ref().and_then(|http| http.max_retries),
        }),
        outlier_detection: outlier_detection.map(|outlier| traffic::OutlierDetection {
            consecutive_5xx: outlier.consecutive_5xx_errors,
            consecutive_gateway_errors: outlier.consecutive_gateway_errors,
            interval: outlier.interval,
            base_ejection_time: outlier.base_ejection_time,
            max_ejection_percent: outlier.max_ejection_percent,
        }),
        locality: load_balancer
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .and_then(locality_of),
    }
}

fn load_balancer_of(load_balancer: &istio::LoadBalancer) -> Option<traffic::LoadBalancer> {
    if let Some(hash) = &load_balancer.consistent_hash {
        let key = match hash {
            ConsistentHash::HttpHeaderName(name) => {
                traffic::HashKey::Header(name.to_ascii_lowercase())
            }
            ConsistentHash::HttpCookie(cookie) => traffic::HashKey::Cookie {
                name: cookie.name.clone(),
                ttl: cookie.ttl,
                path: cookie.path.clone(),
            },
            ConsistentHash::UseSourceIp => traffic::HashKey::SourceIp,
        };
        return Some(traffic::LoadBalancer::RingHash(key));
    }
    load_balancer.simple.map(|simple| match simple {
        SimpleLb::RoundRobin => traffic::LoadBalancer::RoundRobin,
        SimpleLb::LeastRequest => traffic::LoadBalancer::LeastRequest,
        SimpleLb::Random => traffic::LoadBalancer::Random,
    })
}

/// The locality setting (the checks admit only `distribute` from every client, `from: "*"`):
/// each AZ's share. A locality `to` key is an AZ, written alone or as `az/*`.
fn locality_of(setting: &istio::LocalityLbSetting) -> Option<traffic::LocalityLoadBalancing> {
    if setting.enabled == Some(false) {
        return None;
    }
    let distribute = setting.distribute.first()?;
    let shares = distribute
        .to
        .iter()
        .map(|(locality, weight)| {
            let az = locality.strip_suffix("/*").unwrap_or(locality);
            (az.to_string(), *weight)
        })
        .collect();
    Some(traffic::LocalityLoadBalancing::Distribute(shares))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::rules::{parse_config, validate, MeshView};

    fn bookinfo() -> Catalog {
        let version = |address: &str, v: &str| Endpoint {
            labels: labels([("app", "reviews"), ("version", v)]),
            ..endpoint(address)
        };
        testing::catalog(
            7,
            [
                service("bookinfo", "reviews", "reviews")
                    .port("http", 9080, Protocol::Http)
                    .endpoint(version("10.0.0.1", "v1"))
                    .endpoint(version("10.0.0.2", "v2"))
                    .endpoint(version("10.0.0.3", "v3")),
                service("bookinfo", "db", "mysql")
                    .port("mysql", 3306, Protocol::Tcp)
                    .port("admin", 8080, Protocol::Http)
                    .endpoint(endpoint("10.0.0.9")),
            ],
        )
    }

    const REVIEWS: &str = "reviews.reviews.bookinfo.boshy";
    const DB: &str = "mysql.db.bookinfo.boshy";

    /// Parses, validates (expecting no error) and compiles `config`.
    fn compiled(config: &str) -> Compiled {
        let catalog = bookinfo();
        let parsed = parse_config("rules", config);
        let validated = validate(&[parsed], Some(&MeshView::from_catalog(&catalog)));
        let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        compile(&validated.rules, &catalog)
    }

    const SUBSETS: &str = "- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: reviews}
  spec:
    host: reviews.reviews.bookinfo.boshy
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
    subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer:
          consistentHash: {httpHeaderName: End-User}
    - {name: v3, labels: {version: v3}}
";

    fn list(items: &str) -> String {
        format!("apiVersion: v1\nkind: List\nitems:\n{items}")
    }

    #[test]
    fn subsets_of_a_host_resolved_through_dns_are_the_names_their_labels_select() {
        let jobs = bookinfo();
        let config = list(
            "- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: db}
  spec:
    hosts: [db.external.boshy]
    resolution: DNS
    ports: [{number: 5432, name: tcp-postgres}]
    endpoints:
    - {address: primary.db.example.com, labels: {role: primary}}
    - {address: replica.db.example.com, labels: {role: replica}}
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: db}
  spec:
    host: db.external.boshy
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
    subsets: [{name: primary, labels: {role: primary}}]
",
        );
        let validated = validate(
            &[parse_config("rules", &config)],
            Some(&MeshView::from_catalog(&jobs)),
        );
        let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let vip = |_: &str| Some(std::net::Ipv4Addr::new(169, 254, 255, 5));
        let entries = crate::rules::entry_services(&validated.rules, &jobs, vip);
        let catalog = crate::catalog::with_entries(jobs, entries);
        let compiled = compile(&validated.rules, &catalog);
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        let db = &compiled.traffic.services["db.external.boshy"];
        let primary = &db.subsets["primary"];
        assert_eq!(
            primary.dns_endpoints,
            BTreeSet::from(["primary.db.example.com".to_string()])
        );
        assert!(primary.endpoints.is_empty());
        assert_eq!(
            db.policy(5432, Some("primary")).load_balancer,
            Some(traffic::LoadBalancer::Random)
        );
    }

    #[test]
    fn subsets_are_the_addresses_their_labels_select_with_their_policies() {
        let compiled = compiled(&list(SUBSETS));
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        let reviews = &compiled.traffic.services[REVIEWS];
        let addresses = |name: &str| -> Vec<String> {
            reviews.subsets[name]
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(addresses("v1"), ["10.0.0.1"]);
        assert_eq!(addresses("v3"), ["10.0.0.3"]);
        assert_eq!(
            reviews.policy(9080, Some("v2")).load_balancer,
            Some(traffic::LoadBalancer::RingHash(traffic::HashKey::Header(
                "end-user".into()
            )))
        );
        assert_eq!(
            reviews.policy(9080, Some("v1")).load_balancer,
            Some(traffic::LoadBalancer::LeastRequest),
            "inherited from the rule"
        );
        assert!(reviews.http_routes.is_empty());
    }

    #[test]
    fn the_bookinfo_routes_become_ordered_http_routes() {
        let routes = format!(
            "{SUBSETS}- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {{name: reviews}}
  spec:
    hosts: [reviews.reviews.bookinfo.boshy]
    http:
    - name: jason
      match:
      - headers: {{end-user: {{exact: jason}}}}
      fault:
        delay: {{fixedDelay: 7s, percentage: {{value: 100}}}}
      route:
      - destination: {{host: reviews.reviews.bookinfo.boshy, subset: v2}}
    - route:
      - destination: {{host: reviews.reviews.bookinfo.boshy, subset: v1}}
        weight: 50
      - destination: {{host: reviews.reviews.bookinfo.boshy, subset: v3}}
        weight: 50
      retries: {{attempts: 3, perTryTimeout: 2s}}
      timeout: 10s
"
        );
        let compiled = compiled(&list(&routes));
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        let http = &compiled.traffic.services[REVIEWS].http_routes[&9080];
        assert_eq!(http.len(), 2);
        assert_eq!(http[0].name, "jason");
        assert_eq!(
            http[0].matches[0].headers,
            [traffic::HeaderMatch {
                name: "end-user".into(),
                condition: traffic::HeaderCondition::Matches(traffic::StringMatch::Exact(
                    "jason".into()
                )),
            }]
        );
        let delay = http[0].fault.as_ref().unwrap().delay.as_ref().unwrap();
        assert_eq!(delay.duration, std::time::Duration::from_secs(7));
        assert_eq!(delay.percentage, Percentage::ALL);
        let traffic::HttpAction::Forward(jason) = &http[0].action else {
            panic!("forward")
        };
        assert_eq!(jason.destinations[0].weight, 100);
        assert_eq!(
            jason.destinations[0].destination.subset.as_deref(),
            Some("v2")
        );
        assert_eq!(jason.destinations[0].destination.port, 9080);
        assert_eq!(jason.retries, None, "the mesh's retries");
        let traffic::HttpAction::Forward(rest) = &http[1].action else {
            panic!("forward")
        };
        assert!(http[1].matches.is_empty());
        assert_eq!(
            rest.destinations
                .iter()
                .map(|d| d.weight)
                .collect::<Vec<_>>(),
            [50, 50]
        );
        let retries = rest.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(retries.retriable_status_codes, [503]);
        assert_eq!(rest.timeout, Some(std::time::Duration::from_secs(10)));
    }

    #[test]
    fn routes_apply_to_the_ports_their_matches_name_and_destinations_take_the_request_port() {
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [mysql.db.bookinfo.boshy]
  http:
  - match: [{port: 8080, uri: {prefix: /admin}}]
    retries: {attempts: 2, retryOn: '5xx,502,429'}
    route:
    - destination: {host: mysql.db.bookinfo.boshy}
  - match: [{port: 9999}]
    route:
    - destination: {host: mysql.db.bookinfo.boshy}
  tcp:
  - route:
    - destination: {host: mysql.db.bookinfo.boshy, port: {number: 3306}}
";
        let compiled = compiled(vs);
        let db = &compiled.traffic.services[DB];
        let admin = &db.http_routes[&8080];
        assert_eq!(admin.len(), 1, "the route for port 9999 is not for 8080");
        let traffic::HttpAction::Forward(forward) = &admin[0].action else {
            panic!("forward")
        };
        assert_eq!(forward.destinations[0].destination.port, 8080);
        let retries = forward.retries.as_ref().unwrap();
        assert_eq!(retries.retry_on, "5xx,retriable-status-codes");
        assert_eq!(retries.retriable_status_codes, [429, 502]);
        assert_eq!(db.tcp_routes[&3306][0].destination.port, 3306);
        assert_eq!(db.tcp_routes[&3306][0].weight, 100);
    }

    #[test]
    fn a_destination_whose_port_cannot_be_told_is_a_warning_naming_the_field() {
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.reviews.bookinfo.boshy]
  http:
  - route:
    - destination: {host: mysql.db.bookinfo.boshy}
";
        let compiled = compiled(vs);
        assert!(!compiled.traffic.services.contains_key(REVIEWS));
        let warning = compiled.warnings[0].to_string();
        assert!(
            warning.contains("VirtualService")
                && warning.contains("spec.http[0].route[0].destination.port")
                && warning.contains("several ports"),
            "{warning}"
        );
    }

    #[test]
    fn sidecars_become_scope_pins_that_pin_the_hosts_of_the_vms_they_select() {
        let pins = list(
            "- apiVersion: networking.istio.io/v1
  kind: Sidecar
  metadata: {name: reviews}
  spec:
    workloadSelector: {labels: {app: reviews}}
    egress:
    - hosts: ['*/mysql.db.bookinfo.boshy', './mysql.db.bookinfo.boshy', '*/*.later.boshy']
- apiVersion: networking.istio.io/v1alpha3
  kind: Sidecar
  metadata: {name: everyone}
  spec:
    egress:
    - hosts: ['./reviews.reviews.bookinfo.boshy']
- apiVersion: networking.istio.io/v1beta1
  kind: Sidecar
  metadata: {name: v3-sees-all}
  spec:
    workloadSelector: {labels: {app: reviews, version: v3}}
    egress:
    - hosts: ['*/*']
",
        );
        let compiled = compiled(&pins);
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        assert!(compiled.traffic.services.is_empty());
        let names: Vec<&str> = compiled
            .traffic
            .scope_pins
            .iter()
            .map(|pin| pin.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["everyone", "reviews", "v3-sees-all"],
            "by resource name"
        );
        let reviews = &compiled.traffic.scope_pins[1];
        assert_eq!(
            reviews,
            &ScopePin {
                selector: Some(labels([("app", "reviews")])),
                hosts: vec![
                    traffic::HostPattern::Exact(DB.into()),
                    traffic::HostPattern::Suffix(".later.boshy".into()),
                ],
                config: "rules".into(),
                name: "reviews".into(),
            },
            "each host once"
        );
        assert_eq!(compiled.traffic.scope_pins[0].selector, None);

        let catalog = bookinfo();
        let mut hostnames: Vec<&str> = catalog
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        hostnames.push("cache.later.boshy");
        let pinned = |label_sets: &[crate::catalog::model::Labels]| -> Vec<String> {
            let hosts = compiled
                .traffic
                .pinned_hosts(label_sets, hostnames.iter().copied());
            hosts.into_iter().collect()
        };
        let v1 = labels([("app", "reviews"), ("version", "v1")]);
        assert_eq!(pinned(&[v1]), ["cache.later.boshy", DB, REVIEWS]);
        let v3 = labels([("app", "reviews"), ("version", "v3")]);
        assert_eq!(
            pinned(&[v3]).len(),
            hostnames.len(),
            "`*/*` pins every host"
        );
        let ratings = labels([("app", "ratings")]);
        assert_eq!(
            pinned(&[ratings]),
            [REVIEWS],
            "the Sidecar without a selector"
        );
    }

    #[test]
    fn no_rules_is_the_empty_model() {
        assert_eq!(
            compile(&RuleSet::default(), &bookinfo()),
            Compiled::default()
        );
    }
}
