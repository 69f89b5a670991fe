//! The traffic model: what the mesh does with a request or a connection beyond "any healthy
//! instance of the service it dialled". Routes, subsets and policies, said in the catalog's
//! terms (hostnames, port numbers, endpoint addresses) and in nobody else's: no Envoy message
//! and no Istio resource appears here.
//!
//! ```text
//! Istio rules (VirtualService, DestinationRule, Sidecar) ──compiler──▶ TrafficRules ──┐
//!                                                      Catalog ─────────────┴─▶ xds::resources
//! ```
//!
//! The compiler resolves everything Istio leaves to context before it fills this model:
//! short names become catalog hostnames, a destination's port is always a number, a subset is
//! the set of endpoint addresses its labels select, percentages are exact fractions. `xds`
//! then maps each field to one Envoy feature (docs/ARCHITECTURE.md, "The traffic model").
//! What this model can say and Envoy refuses (a regular expression RE2 does not compile, a
//! header a route may not set) is the compiler's to refuse: Envoy rejects the whole route
//! configuration of that VIP:port and keeps its previous one.
//!
//! `TrafficRules::default()` is the mesh without rules: xDS is then byte for byte what it is
//! without this model.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

pub mod security;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The rules of every service that has some, by the service's catalog hostname
/// (`web.banana.sample.boshy`). Rules for a hostname the catalog does not have are ignored.
///
/// Serializable so that xDS can version what it builds by the content of the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficRules {
    pub services: BTreeMap<String, ServiceRules>,
    /// Hosts pinned into the scope of the VMs each pin selects (Istio's `Sidecar`), in the
    /// order of their rules (config name, then resource name); see [`Self::pinned_hosts`].
    /// Left out of the serialized model when empty, so that rules without Sidecars serialize
    /// (and version xDS) exactly as before pins existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope_pins: Vec<ScopePin>,
    /// Mutual TLS and authorization (Istio's `PeerAuthentication` and `AuthorizationPolicy`),
    /// left out of the serialized model when there are none, as the pins are.
    #[serde(skip_serializing_if = "security::SecurityRules::is_empty")]
    pub security: security::SecurityRules,
}

impl TrafficRules {
    /// The hostnames, among `hostnames` (the mesh's), that the pins put in the scope of a VM
    /// whose label sets are `client_label_sets`: one set per job the VM exposes, or its
    /// instance's own labels when it exposes none, as `sourceLabels` judges clients
    /// (`xds::client::SourceSelectors::class_of`). Several pins that select the VM add up.
    /// Empty, without reading `hostnames`, when no pin selects the VM.
    pub fn pinned_hosts<'a>(
        &self,
        client_label_sets: &[Labels],
        hostnames: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        let patterns: Vec<&HostPattern> = self
            .scope_pins
            .iter()
            .filter(|pin| pin.selects(client_label_sets))
            .flat_map(|pin| &pin.hosts)
            .collect();
        if patterns.is_empty() {
            return BTreeSet::new();
        }
        hostnames
            .into_iter()
            .filter(|hostname| patterns.iter().any(|pattern| pattern.matches(hostname)))
            .map(str::to_string)
            .collect()
    }
}

/// Label names to values, as the catalog gives them to instances.
pub type Labels = BTreeMap<String, String>;

/// Hosts that are always in the Envoy config of the VMs a selector picks, whether or not the
/// VM resolved them (Istio's `Sidecar` `egress.hosts`). A pin only adds: names outside every
/// pin still join a VM's scope when the VM resolves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopePin {
    /// The VMs it applies to: those with a label set that has every one of these labels.
    /// `None`: every VM of the mesh.
    pub selector: Option<Labels>,
    pub hosts: Vec<HostPattern>,
    /// The rule config it comes from, and the Sidecar's name in it.
    pub config: String,
    pub name: String,
}

impl ScopePin {
    /// Whether it applies to a VM with these label sets: any of them has every label of the
    /// selector (the matching of `sourceLabels` and of workload selectors). Without a
    /// selector, every VM, even one whose labels are not known.
    pub fn selects(&self, client_label_sets: &[Labels]) -> bool {
        let Some(selector) = &self.selector else {
            return true;
        };
        client_label_sets.iter().any(|labels| {
            selector
                .iter()
                .all(|(name, value)| labels.get(name) == Some(value))
        })
    }
}

/// Which hostnames a pin names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum HostPattern {
    /// Every hostname of the mesh (Istio's `*/*`).
    Any,
    /// This hostname (`reviews.bookinfo.boshy`).
    Exact(String),
    /// Every hostname that ends with this suffix, which starts with its dot: Istio's
    /// `*/*.bookinfo.boshy` is `Suffix(".bookinfo.boshy")`, which takes
    /// `reviews.bookinfo.boshy` and `a.b.bookinfo.boshy`, not `bookinfo.boshy`.
    Suffix(String),
}

impl HostPattern {
    pub fn matches(&self, hostname: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(host) => hostname == host,
            HostPattern::Suffix(suffix) => {
                hostname.len() > suffix.len() && hostname.ends_with(suffix.as_str())
            }
        }
    }
}

/// What is decided about one service: how requests and connections to it are routed, and the
/// subsets and policies of the clusters that carry traffic to it (whoever routes there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceRules {
    /// By port number, for the service's http, http2 and grpc ports: routes tried in order, the
    /// first whose match holds decides. A request that none matches goes to the whole service
    /// as without rules.
    pub http_routes: BTreeMap<u16, Vec<HttpRoute>>,
    /// By port number, for the service's tcp ports: where connections go (every connection to
    /// the port; a TCP connection carries nothing else to match on).
    pub tcp_routes: BTreeMap<u16, Vec<WeightedDestination>>,
    /// By subset name (a DNS label; it appears in cluster names).
    pub subsets: BTreeMap<String, Subset>,
    /// The policy of the whole service's clusters, and what its subsets' policies refine.
    pub policy: PortPolicies,
    /// The rule configs these rules come from: an Envoy that rejects this service's
    /// resources names them.
    pub configs: BTreeSet<String>,
}

impl ServiceRules {
    /// The policy of the cluster of `port` (of `subset`, or of the whole service): each part
    /// (load balancer, connection pool, outlier detection, locality) from the most specific
    /// level that sets it, in Istio's order: the subset's port-level setting, the subset's
    /// policy, the service's port-level setting, the service's policy. A part is taken whole
    /// from one level, never merged field by field across levels.
    pub fn policy(&self, port: u16, subset: Option<&str>) -> TrafficPolicy {
        let mut policy = self.policy.for_port(port);
        if let Some(subset) = subset.and_then(|name| self.subsets.get(name)) {
            policy = subset.policy.for_port(port).or(policy);
        }
        policy
    }
}

/// A named part of a service: the endpoints the compiler chose (from their labels), with
/// policies of their own. Each subset is a cluster of its own per port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// Addresses of the service's endpoints that belong to the subset. An address the service
    /// has no endpoint at is ignored; unhealthy endpoints stay out of it as out of the service.
    pub endpoints: BTreeSet<IpAddr>,
    /// For a service whose endpoints Envoy finds through DNS (`catalog::model::Service::dns`):
    /// the names (as the catalog writes them) of those that belong to the subset. A name the
    /// service does not list is ignored.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub dns_endpoints: BTreeSet<String>,
    pub policy: PortPolicies,
}

/// A policy for every port, and per-port settings that take precedence over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortPolicies {
    pub all_ports: TrafficPolicy,
    pub by_port: BTreeMap<u16, TrafficPolicy>,
}

impl PortPolicies {
    fn for_port(&self, port: u16) -> TrafficPolicy {
        match self.by_port.get(&port) {
            Some(specific) => specific.clone().or(self.all_ports.clone()),
            None => self.all_ports.clone(),
        }
    }
}

/// How a cluster balances and protects its endpoints. Every part is optional: `None` keeps the
/// mesh's default (round robin, the mesh's connect timeout and Envoy's circuit breakers, the
/// mesh's outlier detection, no locality preference).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub locality: Option<LocalityLoadBalancing>,
}

impl TrafficPolicy {
    /// Each part of `self`, or of `fallback` where `self` has none.
    fn or(self, fallback: TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            load_balancer: self.load_balancer.or(fallback.load_balancer),
            connection_pool: self.connection_pool.or(fallback.connection_pool),
            outlier_detection: self.outlier_detection.or(fallback.outlier_detection),
            locality: self.locality.or(fallback.locality),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hashing: requests with the same key go to the same endpoint while the set of
    /// endpoints stays the same.
    RingHash(HashKey),
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// The value of this request header.
    Header(String),
    /// This cookie; with a `ttl`, a request without it gets one set in the response.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    /// The client's address: every request from one VM to one endpoint.
    SourceIp,
}

/// Limits on what one Envoy sends to one cluster. Unset fields keep Envoy's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    /// Requests waiting for a connection (HTTP).
    pub max_pending_requests: Option<u32>,
    /// Requests in flight (HTTP).
    pub max_requests: Option<u32>,
    /// Requests on one upstream connection before it is closed (HTTP; 1 disables keep-alive).
    pub max_requests_per_connection: Option<u32>,
    /// Retries in flight.
    pub max_retries: Option<u32>,
}

/// Changes to the mesh's passive outlier detection (which also ejects an endpoint that refuses
/// or resets connections, whatever this says). Unset fields keep the mesh's values; a count of
/// 0 turns that detection off, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// 5xx responses in a row that eject an endpoint.
    pub consecutive_5xx: Option<u32>,
    /// 502, 503 and 504 responses in a row that eject an endpoint.
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are decided.
    pub interval: Option<Duration>,
    /// The first ejection's length; each further one is longer.
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

/// Preferences between availability zones (the endpoints' localities), the same for every
/// client: a preference relative to the client's own AZ needs per-AZ endpoint assignments,
/// which the snapshot does not have (docs/ARCHITECTURE.md, "The traffic model").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LocalityLoadBalancing {
    /// Each AZ gets this share of the traffic (weights are relative); an AZ not listed gets
    /// none.
    Distribute(BTreeMap<String, u32>),
    /// AZs in order of preference: traffic goes to the first that has healthy endpoints, and
    /// spills over to the next as the first loses them. AZs not listed come last, together.
    Failover(Vec<String>),
}

/// One HTTP route: a request that matches goes where the action says, with the fault and
/// header changes given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRoute {
    /// Shown in Envoy's config dump; may be empty.
    pub name: String,
    /// The route applies when any of these matches; an empty list matches every request.
    pub matches: Vec<HttpMatch>,
    pub action: HttpAction,
    pub fault: Option<Fault>,
    pub headers: HeaderOperations,
}

/// The most distinct `source_labels` the routes of one service may use: each combination of
/// them a client satisfies is a route configuration of its own (2^n per port).
pub const MAX_SOURCE_SELECTORS: usize = 4;

/// Conditions on a request, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpMatch {
    /// The path without the query string; `None` is any path.
    pub path: Option<StringMatch>,
    /// Whether `path` ignores case.
    pub ignore_path_case: bool,
    pub headers: Vec<HeaderMatch>,
    pub method: Option<StringMatch>,
    pub query_params: Vec<QueryParamMatch>,
    /// Istio's `sourceLabels`: the labels a client VM must have for the match to hold; empty
    /// is every client. A client has the labels of each job it exposes (one endpoint's
    /// labels), or the director's labels of its instance when it exposes none; the match
    /// holds when one of those has every label. The clients differ in nothing a request
    /// carries, so xDS builds one route configuration per combination of the selectors a
    /// client satisfies (at most [`MAX_SOURCE_SELECTORS`] per service).
    pub source_labels: BTreeMap<String, String>,
}

/// A string condition. Regular expressions are RE2's, matched against the whole string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower case, as HTTP/2 spells header names.
    pub name: String,
    pub condition: HeaderCondition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HeaderCondition {
    /// Present, with a value that matches.
    Matches(StringMatch),
    /// Absent, or with a value that does not match (Istio's `withoutHeaders`).
    DoesNotMatch(StringMatch),
    /// Present with any value.
    Present,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<StringMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HttpAction {
    Forward(Forward),
    /// Answered by Envoy itself with a redirect; nothing is forwarded.
    Redirect(Redirect),
}

/// Forwarding a request to one or more destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forward {
    /// Where requests go, split by weight. A destination of weight 0 gets nothing; a route
    /// with no destination of positive weight is left out.
    pub destinations: Vec<WeightedDestination>,
    pub rewrite: Option<Rewrite>,
    /// The whole request's deadline, retries included; `None` is none (as without rules: the
    /// mesh does not cut requests the application did not bound).
    pub timeout: Option<Duration>,
    /// `None` keeps the mesh's retries (a request whose connection failed before it was sent
    /// is retried on another endpoint, twice).
    pub retries: Option<Retries>,
    /// Copies of the request sent elsewhere, their answers dropped.
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedDestination {
    pub destination: Destination,
    pub weight: u32,
}

/// A service port of the catalog, or one subset of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// A catalog hostname.
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    /// The `Host` (`:authority`) sent upstream.
    pub authority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathRewrite {
    /// Replaces what the route's path match matched: the prefix of a prefix match, the whole
    /// path of an exact or regex match, `/` without a path match. Istio's `rewrite.uri`.
    Prefix(String),
    /// Replaces the whole path (the query string stays).
    Full(String),
    /// Replaces every match of an RE2 `pattern` in the path with `substitution`, where `\1`
    /// is the first capture group. Istio's `uriRegexRewrite`.
    Regex {
        pattern: String,
        substitution: String,
    },
}

/// Retries of a request, each on an endpoint not tried yet for it (as the mesh's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retries {
    /// Retries after the first attempt; 0 is none at all (not even the mesh's).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// The conditions that retry, as Envoy spells them (`5xx,connect-failure`); Istio's
    /// `retryOn` once its status codes are moved to `retriable_status_codes`.
    pub retry_on: String,
    /// Status codes retried under the `retriable-status-codes` condition.
    pub retriable_status_codes: Vec<u16>,
}

/// Faults injected into matching requests, before they are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    pub duration: Duration,
    pub percentage: Percentage,
}

/// Answering instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    /// 200 to 599.
    pub http_status: u16,
    pub percentage: Percentage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub destination: Destination,
    pub percentage: Percentage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOperations {
    /// On the request, before it is forwarded.
    pub request: HeaderEdits,
    /// On the response, before it is returned.
    pub response: HeaderEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderEdits {
    /// Header → value, replacing any value it has.
    pub set: BTreeMap<String, String>,
    /// (header, value) pairs appended to any values it has.
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    /// The new path; `None` keeps the request's.
    pub path: Option<String>,
    /// The new host; `None` keeps the request's.
    pub authority: Option<String>,
    pub code: RedirectCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RedirectCode {
    /// 301, Istio's default.
    MovedPermanently,
    /// 302
    Found,
    /// 303
    SeeOther,
    /// 307
    TemporaryRedirect,
    /// 308
    PermanentRedirect,
}

/// A share of requests in millionths, Envoy's finest fraction: 1% is 10,000. Istio's
/// percentage `p` (a double from 0 to 100) is `round(p × 10,000)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentage {
    /// 0 to 1,000,000; more is every request.
    pub per_million: u32,
}

impl Percentage {
    pub const ALL: Percentage = Percentage::percent(100);

    pub const fn percent(percent: u32) -> Percentage {
        Percentage {
            per_million: percent * 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn least_request() -> TrafficPolicy {
        TrafficPolicy {
            load_balancer: Some(LoadBalancer::LeastRequest),
            ..Default::default()
        }
    }

    fn pool(max_connections: u32) -> Option<ConnectionPool> {
        Some(ConnectionPool {
            max_connections: Some(max_connections),
            ..Default::default()
        })
    }

    #[test]
    fn a_policy_part_comes_whole_from_the_most_specific_level_that_sets_it() {
        let rules = ServiceRules {
            policy: PortPolicies {
                all_ports: TrafficPolicy {
                    connection_pool: pool(1),
                    outlier_detection: Some(OutlierDetection {
                        consecutive_5xx: Some(7),
                        ..Default::default()
                    }),
                    ..least_request()
                },
                by_port: BTreeMap::from([(
                    80,
                    TrafficPolicy {
                        connection_pool: pool(2),
                        ..Default::default()
                    },
                )]),
            },
            subsets: BTreeMap::from([(
                "v2".to_string(),
                Subset {
                    endpoints: BTreeSet::new(),
                    dns_endpoints: Default::default(),
                    policy: PortPolicies {
                        all_ports: TrafficPolicy {
                            load_balancer: Some(LoadBalancer::Random),
                            ..Default::default()
                        },
                        by_port: BTreeMap::from([(
                            80,
                            TrafficPolicy {
                                connection_pool: Some(ConnectionPool {
                                    max_requests: Some(3),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        )]),
                    },
                },
            )]),
            ..Default::default()
        };
        let service_8080 = rules.policy(8080, None);
        assert_eq!(service_8080, rules.policy.all_ports);
        let service_80 = rules.policy(80, None);
        assert_eq!(service_80.connection_pool, pool(2), "port beats service");
        assert_eq!(service_80.load_balancer, Some(LoadBalancer::LeastRequest));
        let subset_8080 = rules.policy(8080, Some("v2"));
        assert_eq!(subset_8080.load_balancer, Some(LoadBalancer::Random));
        assert_eq!(
            subset_8080.connection_pool,
            pool(1),
            "the service's, inherited"
        );
        let subset_80 = rules.policy(80, Some("v2"));
        assert_eq!(
            subset_80.connection_pool,
            Some(ConnectionPool {
                max_requests: Some(3),
                ..Default::default()
            }),
            "the subset's port setting, whole: nothing of the service's port pool"
        );
        assert_eq!(subset_80.outlier_detection, service_8080.outlier_detection);
        assert_eq!(
            rules.policy(80, Some("absent")),
            service_80,
            "an unknown subset has the service's policy"
        );
    }

    #[test]
    fn no_rules_is_no_policy() {
        assert_eq!(
            ServiceRules::default().policy(80, Some("v1")),
            TrafficPolicy::default()
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn pin(selector: Option<Labels>, hosts: Vec<HostPattern>) -> ScopePin {
        ScopePin {
            selector,
            hosts,
            config: "pins".into(),
            name: "pin".into(),
        }
    }

    const HOSTS: [&str; 4] = [
        "reviews.bookinfo.boshy",
        "ratings.ratings.bookinfo.boshy",
        "db.external.boshy",
        "bookinfo.boshy",
    ];

    fn pinned(rules: &TrafficRules, label_sets: &[Labels]) -> Vec<String> {
        rules.pinned_hosts(label_sets, HOSTS).into_iter().collect()
    }

    #[test]
    fn host_patterns_match_a_name_a_domain_or_everything() {
        let exact = HostPattern::Exact("reviews.bookinfo.boshy".into());
        assert!(exact.matches("reviews.bookinfo.boshy"));
        assert!(!exact.matches("x.reviews.bookinfo.boshy"));
        let suffix = HostPattern::Suffix(".bookinfo.boshy".into());
        assert!(suffix.matches("reviews.bookinfo.boshy"));
        assert!(suffix.matches("ratings.ratings.bookinfo.boshy"));
        assert!(!suffix.matches("bookinfo.boshy"));
        assert!(!suffix.matches(".bookinfo.boshy"));
        assert!(!suffix.matches("xbookinfo.boshy"));
        assert!(HostPattern::Any.matches("db.external.boshy"));
    }

    #[test]
    fn pins_select_vms_by_any_of_their_label_sets_and_add_up() {
        let reviews = labels(&[("app", "reviews"), ("version", "v2")]);
        let metrics = labels(&[("app", "metrics")]);
        let rules = TrafficRules {
            scope_pins: vec![
                pin(
                    Some(labels(&[("app", "reviews")])),
                    vec![HostPattern::Exact("ratings.ratings.bookinfo.boshy".into())],
                ),
                pin(
                    Some(labels(&[("app", "reviews"), ("version", "v2")])),
                    vec![
                        HostPattern::Suffix(".external.boshy".into()),
                        HostPattern::Exact("not.in.the.mesh.boshy".into()),
                    ],
                ),
                pin(None, vec![HostPattern::Exact("bookinfo.boshy".into())]),
            ],
            ..TrafficRules::default()
        };
        assert_eq!(
            pinned(&rules, &[metrics.clone(), reviews.clone()]),
            [
                "bookinfo.boshy",
                "db.external.boshy",
                "ratings.ratings.bookinfo.boshy"
            ],
            "one label set of the VM is enough; a pinned name the mesh lacks is no host"
        );
        assert_eq!(
            pinned(&rules, &[labels(&[("app", "reviews"), ("version", "v1")])]),
            ["bookinfo.boshy", "ratings.ratings.bookinfo.boshy"]
        );
        assert_eq!(
            pinned(&rules, &[metrics]),
            ["bookinfo.boshy"],
            "a pin without a selector is for every VM"
        );
        assert_eq!(pinned(&rules, &[]), ["bookinfo.boshy"]);
        let a_selector_of_labels_split_across_two_sets = pinned(
            &rules,
            &[labels(&[("app", "reviews")]), labels(&[("version", "v2")])],
        );
        assert!(!a_selector_of_labels_split_across_two_sets.contains(&"db.external.boshy".into()));
    }

    #[test]
    fn any_pins_every_host_and_no_pin_pins_none() {
        let everything = TrafficRules {
            scope_pins: vec![pin(
                Some(labels(&[("app", "reviews")])),
                vec![HostPattern::Any],
            )],
            ..TrafficRules::default()
        };
        assert_eq!(
            pinned(&everything, &[labels(&[("app", "reviews")])]).len(),
            HOSTS.len()
        );
        assert!(pinned(&everything, &[labels(&[("app", "x")])]).is_empty());
        assert!(pinned(&TrafficRules::default(), &[]).is_empty());
    }

    #[test]
    fn rules_without_pins_serialize_as_before_pins() {
        let rules = TrafficRules {
            services: BTreeMap::from([("a.b.boshy".to_string(), ServiceRules::default())]),
            ..TrafficRules::default()
        };
        let json = serde_json::to_string(&rules).unwrap();
        assert!(json.starts_with("{\"services\":{\"a.b.boshy\":"), "{json}");
        assert!(!json.contains("scope_pins"), "{json}");
        let pinned = TrafficRules {
            scope_pins: vec![pin(None, vec![HostPattern::Any])],
            ..rules
        };
        assert!(serde_json::to_string(&pinned)
            .unwrap()
            .contains("\"scope_pins\":[{\"selector\":null,\"hosts\":[\"Any\"]"));
    }

    #[test]
    fn percentages_are_millionths() {
        assert_eq!(Percentage::percent(1).per_million, 10_000);
        assert_eq!(Percentage::ALL.per_million, 1_000_000);
    }
}
