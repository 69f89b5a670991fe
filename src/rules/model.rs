//! The Istio resources boshy-istio takes, typed with Istio's own field names (camelCase, as
//! in Istio's Kubernetes YAML): what serde reads from a resource's `spec`.
//!
//! Every struct denies unknown fields, so a misspelt field is an error that names it. Istio
//! fields that boshy-istio does not support are declared too, as `()` fields named after
//! them with a leading `_` and of type [`Refused`], read by [`refuse`]: their error says they
//! are refused, not unknown. They never hold anything. A value serde accepts may still be refused by the
//! checks of `checks.rs` (a weight sum, a host name); only resources that pass both are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::model::Protocol;

use super::values::{
    duration, optional_duration, refuse, refuse_group_address, refuse_outbound_traffic_policy,
    refuse_service_account, refuse_target_ref, refuse_tls, word, Refused,
};
pub use super::values::{Percent, PolicyPort, StringMatch};

/// Label names to values: instance labels, subset labels, selectors.
pub type Labels = BTreeMap<String, String>;

/// The kinds of resource boshy-istio takes: traffic rules (`networking.istio.io`) and
/// security policies (`security.istio.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceEntry,
    WorkloadGroup,
    DestinationRule,
    VirtualService,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::ServiceEntry,
        Kind::WorkloadGroup,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The `apiVersion`s of its API group, accepted alike.
    pub fn api_versions(self) -> &'static [&'static str] {
        if self.is_security_policy() {
            &SECURITY_API_VERSIONS
        } else {
            &NETWORKING_API_VERSIONS
        }
    }

    /// Whether it is of `security.istio.io`, whose `metadata.namespace` means something: the
    /// deployment the policy is for (docs/rules.md, "Security policies").
    pub fn is_security_policy(self) -> bool {
        matches!(self, Kind::PeerAuthentication | Kind::AuthorizationPolicy)
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// The API versions of `networking.istio.io` accepted, alike: the three carry the same
/// fields for the kinds boshy-istio takes.
pub const NETWORKING_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// The API versions of `security.istio.io` accepted, alike (the same fields).
pub const SECURITY_API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// A resource's `spec`, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    ServiceEntry(ServiceEntry),
    WorkloadGroup(WorkloadGroup),
    Sidecar(Sidecar),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadGroup(_) => Kind::WorkloadGroup,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }
}

// ------------------------------------------------------------------------ VirtualService

/// Routing for the hosts it names: HTTP routes for their http ports, TCP routes for the others.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    pub hosts: Vec<String>,
    /// Only `mesh` (every Envoy of the mesh, the default) is accepted.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Accepted and without effect: every rule applies to the whole mesh.
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, rename = "tls", deserialize_with = "refuse")]
    _tls: Refused,
}

/// One HTTP route: the first whose `match` matches a request handles it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any of them matches (empty: every request).
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Where requests go; empty only with `redirect`.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub rewrite: Option<HttpRewrite>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFault>,
    pub mirror: Option<Destination>,
    /// Absent with a `mirror`: 100%, as in Istio.
    pub mirror_percentage: Option<Percent>,
    pub headers: Option<Headers>,
    #[serde(default, rename = "directResponse", deserialize_with = "refuse")]
    _direct_response: Refused,
    #[serde(default, rename = "delegate", deserialize_with = "refuse")]
    _delegate: Refused,
    #[serde(default, rename = "mirrors", deserialize_with = "refuse")]
    _mirrors: Refused,
    #[serde(default, rename = "mirrorPercent", deserialize_with = "refuse")]
    _mirror_percent: Refused,
    #[serde(default, rename = "corsPolicy", deserialize_with = "refuse")]
    _cors_policy: Refused,
}

/// The conditions of one match: all of them must hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Requests whose headers do NOT match these.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// `exact` and `regex` only, as in Istio.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The service port the request was sent to.
    pub port: Option<u16>,
    /// Labels of the instance the request comes from.
    #[serde(default)]
    pub source_labels: Labels,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default, rename = "scheme", deserialize_with = "refuse")]
    _scheme: Refused,
    #[serde(default, rename = "authority", deserialize_with = "refuse")]
    _authority: Refused,
    #[serde(default, rename = "gateways", deserialize_with = "refuse")]
    _gateways: Refused,
    #[serde(default, rename = "sourceNamespace", deserialize_with = "refuse")]
    _source_namespace: Refused,
    #[serde(default, rename = "statPrefix", deserialize_with = "refuse")]
    _stat_prefix: Refused,
}

/// A service (a mesh hostname or a ServiceEntry's host), optionally a subset of its
/// instances and one of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    /// A subset named by the DestinationRule of `host`.
    pub subset: Option<String>,
    /// Needed only when the host has several ports and the request's should not be kept.
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// Out of 100 across the route's destinations; the only destination gets 100.
    pub weight: Option<u32>,
    pub headers: Option<Headers>,
}

/// Header changes, on the request to the destination and on its response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// 301 (the default), 302, 303, 307 or 308.
    pub redirect_code: Option<u16>,
    #[serde(default, rename = "port", deserialize_with = "refuse")]
    _port: Refused,
    #[serde(default, rename = "derivePort", deserialize_with = "refuse")]
    _derive_port: Refused,
    #[serde(default, rename = "scheme", deserialize_with = "refuse")]
    _scheme: Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replaces the matched prefix (or the whole path when it was not a prefix match).
    pub uri: Option<String>,
    pub authority: Option<String>,
    #[serde(default, rename = "uriRegexRewrite", deserialize_with = "refuse")]
    _uri_regex_rewrite: Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// Retries after the first attempt; 0 disables retries.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, deserialize_with = "optional_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's retry conditions, comma-separated (`5xx,connect-failure`), or status codes.
    pub retry_on: Option<String>,
    #[serde(default, rename = "retryRemoteLocalities", deserialize_with = "refuse")]
    _retry_remote_localities: Refused,
    #[serde(
        default,
        rename = "retryIgnorePreviousHosts",
        deserialize_with = "refuse"
    )]
    _retry_ignore_previous_hosts: Refused,
    #[serde(default, rename = "backoff", deserialize_with = "refuse")]
    _backoff: Refused,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(deserialize_with = "duration")]
    pub fixed_delay: Duration,
    /// Absent: no request is delayed, as in Istio.
    pub percentage: Option<Percent>,
    #[serde(default, rename = "exponentialDelay", deserialize_with = "refuse")]
    _exponential_delay: Refused,
    #[serde(default, rename = "percent", deserialize_with = "refuse")]
    _percent: Refused,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: u16,
    /// Absent: no request is aborted, as in Istio.
    pub percentage: Option<Percent>,
    #[serde(default, rename = "grpcStatus", deserialize_with = "refuse")]
    _grpc_status: Refused,
    #[serde(default, rename = "http2Error", deserialize_with = "refuse")]
    _http2_error: Refused,
    #[serde(default, rename = "percent", deserialize_with = "refuse")]
    _percent: Refused,
}

/// One TCP route: the first whose `match` matches a connection handles it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4Match {
    pub port: Option<u16>,
    #[serde(default)]
    pub source_labels: Labels,
    #[serde(default, rename = "destinationSubnets", deserialize_with = "refuse")]
    _destination_subnets: Refused,
    #[serde(default, rename = "sourceSubnet", deserialize_with = "refuse")]
    _source_subnet: Refused,
    #[serde(default, rename = "gateways", deserialize_with = "refuse")]
    _gateways: Refused,
    #[serde(default, rename = "sourceNamespace", deserialize_with = "refuse")]
    _source_namespace: Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
}

// ----------------------------------------------------------------------- DestinationRule

/// What happens to traffic for a host once routed: load balancing, connection limits,
/// outlier detection, and the named subsets of its instances.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default, rename = "workloadSelector", deserialize_with = "refuse")]
    _workload_selector: Refused,
}

/// The instances of the host whose labels include `labels`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Overrides the rule's policy for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// Override the policies above for one port each.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default, rename = "tls", deserialize_with = "refuse_tls")]
    _tls: Refused,
    #[serde(default, rename = "tunnel", deserialize_with = "refuse")]
    _tunnel: Refused,
    #[serde(default, rename = "proxyProtocol", deserialize_with = "refuse")]
    _proxy_protocol: Refused,
    #[serde(default, rename = "retryBudget", deserialize_with = "refuse")]
    _retry_budget: Refused,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: PortSelector,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, rename = "tls", deserialize_with = "refuse_tls")]
    _tls: Refused,
}

/// `simple` or `consistentHash` (not both), and the locality settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHash>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    #[serde(default, rename = "warmupDurationSecs", deserialize_with = "refuse")]
    _warmup_duration_secs: Refused,
    #[serde(default, rename = "warmup", deserialize_with = "refuse")]
    _warmup: Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SimpleLb {
    RoundRobin,
    /// Also written `LEAST_CONN`, Istio's older name for it.
    LeastRequest,
    Random,
}

impl TryFrom<String> for SimpleLb {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        word(
            &text,
            &[
                ("ROUND_ROBIN", SimpleLb::RoundRobin),
                ("LEAST_REQUEST", SimpleLb::LeastRequest),
                ("LEAST_CONN", SimpleLb::LeastRequest),
                ("RANDOM", SimpleLb::Random),
            ],
            &[
                (
                    "PASSTHROUGH",
                    "boshy-istio always balances across the instances it knows",
                ),
                ("UNSPECIFIED", "name a policy or leave `simple` out"),
            ],
        )
    }
}

/// Session affinity: the hash key, exactly one of Istio's `httpHeaderName`, `httpCookie` and
/// `useSourceIp`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ConsistentHashFields")]
pub enum ConsistentHash {
    HttpHeaderName(String),
    HttpCookie(HttpCookie),
    UseSourceIp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConsistentHashFields {
    http_header_name: Option<String>,
    http_cookie: Option<HttpCookie>,
    #[serde(default)]
    use_source_ip: bool,
    #[serde(
        default,
        rename = "httpQueryParameterName",
        deserialize_with = "refuse"
    )]
    _http_query_parameter_name: Refused,
    #[serde(
        default,
        rename = "httpHeaderRegexRewrite",
        deserialize_with = "refuse"
    )]
    _http_header_regex_rewrite: Refused,
    #[serde(default, rename = "ringHash", deserialize_with = "refuse")]
    _ring_hash: Refused,
    #[serde(default, rename = "maglev", deserialize_with = "refuse")]
    _maglev: Refused,
    #[serde(default, rename = "minimumRingSize", deserialize_with = "refuse")]
    _minimum_ring_size: Refused,
}

impl TryFrom<ConsistentHashFields> for ConsistentHash {
    type Error = &'static str;
    fn try_from(fields: ConsistentHashFields) -> Result<Self, Self::Error> {
        match (
            fields.http_header_name,
            fields.http_cookie,
            fields.use_source_ip,
        ) {
            (Some(header), None, false) => Ok(ConsistentHash::HttpHeaderName(header)),
            (None, Some(cookie), false) => Ok(ConsistentHash::HttpCookie(cookie)),
            (None, None, true) => Ok(ConsistentHash::UseSourceIp),
            _ => Err(
                "a consistent hash has exactly one of `httpHeaderName`, `httpCookie` and \
                      `useSourceIp: true`",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    /// The lifetime of the cookie Envoy sets when the request has none.
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
}

/// How traffic spreads across localities. A BOSH instance's locality is its AZ.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    pub enabled: Option<bool>,
    #[serde(default, rename = "failoverPriority", deserialize_with = "refuse")]
    _failover_priority: Refused,
}

/// Traffic from `from` goes to the localities of `to` by weight (out of 100).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    pub http: Option<HttpPool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPool {
    pub max_connections: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, rename = "tcpKeepalive", deserialize_with = "refuse")]
    _tcp_keepalive: Refused,
    #[serde(default, rename = "maxConnectionDuration", deserialize_with = "refuse")]
    _max_connection_duration: Refused,
    #[serde(default, rename = "idleTimeout", deserialize_with = "refuse")]
    _idle_timeout: Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPool {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    #[serde(default, rename = "idleTimeout", deserialize_with = "refuse")]
    _idle_timeout: Refused,
    #[serde(default, rename = "h2UpgradePolicy", deserialize_with = "refuse")]
    _h2_upgrade_policy: Refused,
    #[serde(default, rename = "useClientProtocol", deserialize_with = "refuse")]
    _use_client_protocol: Refused,
    #[serde(default, rename = "maxConcurrentStreams", deserialize_with = "refuse")]
    _max_concurrent_streams: Refused,
}

/// Passive health checking: instances that fail are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    #[serde(default, rename = "consecutiveErrors", deserialize_with = "refuse")]
    _consecutive_errors: Refused,
    #[serde(
        default,
        rename = "splitExternalLocalOriginErrors",
        deserialize_with = "refuse"
    )]
    _split_external_local_origin_errors: Refused,
    #[serde(
        default,
        rename = "consecutiveLocalOriginFailures",
        deserialize_with = "refuse"
    )]
    _consecutive_local_origin_failures: Refused,
    #[serde(default, rename = "minHealthPercent", deserialize_with = "refuse")]
    _min_health_percent: Refused,
}

// -------------------------------------------------------------------------- ServiceEntry

/// New names in the mesh: a service made of BOSH instances chosen by label (across instance
/// groups and deployments), or of listed endpoints, or resolved through DNS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub hosts: Vec<String>,
    /// Accepted and ignored: every host gets a VIP of its own from the pilot.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub ports: Vec<ServiceEntryPort>,
    /// Absent: `MESH_EXTERNAL`, as in Istio.
    pub location: Option<Location>,
    /// Required: Istio's default, `NONE`, has no meaning when every host has a VIP.
    pub resolution: Resolution,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default, rename = "subjectAltNames", deserialize_with = "refuse")]
    _subject_alt_names: Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntryPort {
    pub number: u16,
    /// Absent: inferred from `name` as for `expose_ports` (`http`, `http-*`, `grpc`, ...).
    pub protocol: Option<ServiceEntryProtocol>,
    pub name: String,
    /// The instances' port; absent: `number`.
    pub target_port: Option<u16>,
}

impl ServiceEntryPort {
    pub fn protocol(&self) -> Protocol {
        match self.protocol {
            Some(ServiceEntryProtocol(protocol)) => protocol,
            None => crate::catalog::manifest::infer_protocol(&self.name),
        }
    }

    /// The port the instances listen on.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.number)
    }
}

/// Istio's port protocol word (`HTTP`, `HTTP2`, `GRPC`, `TCP`; any case, as Istio reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ServiceEntryProtocol(pub Protocol);

impl TryFrom<String> for ServiceEntryProtocol {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let tls = "boshy-istio does not route TLS by SNI yet; use TCP";
        word(
            &text.to_ascii_uppercase(),
            &[
                ("HTTP", Protocol::Http),
                ("HTTP2", Protocol::Http2),
                ("GRPC", Protocol::Grpc),
                ("TCP", Protocol::Tcp),
            ],
            &[
                ("HTTPS", tls),
                ("TLS", tls),
                ("MONGO", "use TCP"),
                ("REDIS", "use TCP"),
                ("MYSQL", "use TCP"),
                ("UDP", "the mesh carries TCP only"),
                ("GRPC-WEB", "use GRPC or HTTP"),
            ],
        )
        .map(ServiceEntryProtocol)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

impl TryFrom<String> for Location {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        word(
            &text,
            &[
                ("MESH_EXTERNAL", Location::MeshExternal),
                ("MESH_INTERNAL", Location::MeshInternal),
            ],
            &[],
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Resolution {
    /// The endpoints are the listed addresses or the selected instances.
    Static,
    /// The endpoints' addresses (or the hosts) are names resolved through DNS.
    Dns,
    /// Like `Dns`, one connection at a time to the first address.
    DnsRoundRobin,
}

impl TryFrom<String> for Resolution {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        word(
            &text,
            &[
                ("STATIC", Resolution::Static),
                ("DNS", Resolution::Dns),
                ("DNS_ROUND_ROBIN", Resolution::DnsRoundRobin),
            ],
            &[(
                "NONE",
                "every host gets a VIP, so there is no original address to pass through to; \
                 use STATIC or DNS",
            )],
        )
    }
}

/// One endpoint of a ServiceEntry outside BOSH.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP address (`STATIC`) or a DNS name (`DNS`).
    pub address: String,
    /// Port name (of the ServiceEntry) to this endpoint's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: Labels,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    #[serde(default, rename = "network", deserialize_with = "refuse")]
    _network: Refused,
    #[serde(default, rename = "serviceAccount", deserialize_with = "refuse")]
    _service_account: Refused,
}

/// The BOSH instances (of any instance group of any deployment) whose labels include these.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    pub labels: Labels,
}

// ------------------------------------------------------------------------- WorkloadGroup

/// VMs outside BOSH that join the mesh as one service: `<service>.<group>.<config>.<tld>`
/// (docs/workloads.md). Its members are the VMs registered into it (a later step); until
/// then the service has a VIP, a name and no endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadGroup {
    /// The labels and annotations every member gets.
    #[serde(default)]
    pub metadata: GroupMetadata,
    pub template: WorkloadTemplate,
    /// How a member's readiness is checked: its agent runs it (`health::readiness`, docs/health.md).
    pub probe: Option<ReadinessProbe>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMetadata {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
}

/// The WorkloadEntry every member is made from: its ports and labels. What a member says of
/// itself when it registers (its address) or what the mesh gives it (its identity) is not
/// the template's to set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadTemplate {
    /// Port name to number; the name gives the protocol, as Istio's convention does
    /// (`http`, `http-*`, `grpc`, ...; anything else is TCP).
    #[serde(default)]
    pub ports: BTreeMap<String, i64>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, rename = "address", deserialize_with = "refuse_group_address")]
    _address: Refused,
    #[serde(
        default,
        rename = "serviceAccount",
        deserialize_with = "refuse_service_account"
    )]
    _service_account: Refused,
    #[serde(default, rename = "network", deserialize_with = "refuse")]
    _network: Refused,
    #[serde(default, rename = "locality", deserialize_with = "refuse")]
    _locality: Refused,
    #[serde(default, rename = "weight", deserialize_with = "refuse")]
    _weight: Refused,
}

/// Istio's `ReadinessProbe`, with Kubernetes' defaults filled in. Numbers are read wide
/// so that a negative or huge one is refused by the checks with the range it must be in,
/// not by serde with a type name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadinessProbe {
    #[serde(default)]
    pub initial_delay_seconds: i64,
    #[serde(default = "probe_defaults::timeout_seconds")]
    pub timeout_seconds: i64,
    #[serde(default = "probe_defaults::period_seconds")]
    pub period_seconds: i64,
    #[serde(default = "probe_defaults::success_threshold")]
    pub success_threshold: i64,
    #[serde(default = "probe_defaults::failure_threshold")]
    pub failure_threshold: i64,
    /// Exactly one of `httpGet`, `tcpSocket` and `exec`.
    pub http_get: Option<HttpProbe>,
    pub tcp_socket: Option<TcpProbe>,
    pub exec: Option<ExecProbe>,
    #[serde(default, rename = "grpc", deserialize_with = "refuse")]
    _grpc: Refused,
}

/// Kubernetes' defaults for a probe's numbers (`initialDelaySeconds` is 0).
mod probe_defaults {
    pub(super) fn timeout_seconds() -> i64 {
        1
    }
    pub(super) fn period_seconds() -> i64 {
        10
    }
    pub(super) fn success_threshold() -> i64 {
        1
    }
    pub(super) fn failure_threshold() -> i64 {
        3
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// Absent: `/`.
    pub path: Option<String>,
    pub port: ProbePort,
    /// Absent: the member's own address.
    pub host: Option<String>,
    /// Absent: HTTP.
    pub scheme: Option<ProbeScheme>,
    #[serde(default)]
    pub http_headers: Vec<ProbeHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ProbeScheme {
    Http,
    Https,
}

impl TryFrom<String> for ProbeScheme {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        // Istio's own example once wrote it lower-case.
        word(
            &text.to_ascii_uppercase(),
            &[("HTTP", ProbeScheme::Http), ("HTTPS", ProbeScheme::Https)],
            &[],
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// Absent: the member's own address.
    pub host: Option<String>,
    pub port: ProbePort,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    /// Run on the member, without a shell; ready when it exits 0.
    pub command: Vec<String>,
}

/// A probe's port: a number, or (as Kubernetes takes) the name of one of the group's ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a port number or the name of one of the group's ports"
)]
pub enum ProbePort {
    Number(i64),
    Name(String),
}

// ------------------------------------------------------------------------------- Sidecar

/// Services pinned into the scope of the VMs it selects: their Envoys always have the hosts of
/// its `egress`. Unlike Istio's Sidecar it restricts nothing: a name of the mesh outside the
/// pins still joins a VM's scope when the VM resolves it (docs/rules.md, "Sidecar").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sidecar {
    /// The VMs it applies to, by instance labels; absent: every VM of the mesh (Istio's
    /// Sidecar without a selector in the root namespace).
    pub workload_selector: Option<WorkloadSelector>,
    /// Exactly one (Istio takes one listener without `port`, and boshy-istio takes no `port`).
    #[serde(default)]
    pub egress: Vec<EgressListener>,
    #[serde(default, rename = "ingress", deserialize_with = "refuse")]
    _ingress: Refused,
    #[serde(default, rename = "inboundConnectionPool", deserialize_with = "refuse")]
    _inbound_connection_pool: Refused,
    #[serde(
        default,
        rename = "outboundTrafficPolicy",
        deserialize_with = "refuse_outbound_traffic_policy"
    )]
    _outbound_traffic_policy: Refused,
}

/// Istio's `IstioEgressListener`, without a port: the hosts pinned, every port of each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressListener {
    /// `namespace/dnsName`: the namespace `*` or `.` (boshy-istio has no namespaces), the
    /// name a full hostname, `*` or `*.<domain>`.
    pub hosts: Vec<String>,
    #[serde(default, rename = "port", deserialize_with = "refuse")]
    _port: Refused,
    #[serde(default, rename = "bind", deserialize_with = "refuse")]
    _bind: Refused,
    #[serde(default, rename = "captureMode", deserialize_with = "refuse")]
    _capture_mode: Refused,
}

// ------------------------------------------------------------------- security.istio.io

/// The instance groups a security policy applies to: those with a job whose labels, shared by
/// every instance of the group, include every one of these (Istio's `WorkloadSelector`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySelector {
    #[serde(default)]
    pub match_labels: Labels,
}

/// Mutual TLS on the inbound side of the instance groups it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Absent: every instance group of its scope (the deployment its namespace names, or
    /// the mesh).
    pub selector: Option<PolicySelector>,
    /// Absent: `UNSET`, inherited.
    pub mtls: Option<PeerMtls>,
    /// By the port a job listens on (a YAML number, or a string as in Istio's JSON); only
    /// with a `selector`.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<PolicyPort, PeerMtls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerMtls {
    #[serde(default)]
    pub mode: PeerMtlsMode,
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PeerMtlsMode {
    /// Inherited from the policy of the level above.
    #[default]
    Unset,
    Permissive,
    Strict,
    Disable,
}

impl TryFrom<String> for PeerMtlsMode {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        word(
            &text,
            &[
                ("UNSET", PeerMtlsMode::Unset),
                ("PERMISSIVE", PeerMtlsMode::Permissive),
                ("STRICT", PeerMtlsMode::Strict),
                ("DISABLE", PeerMtlsMode::Disable),
            ],
            &[],
        )
    }
}

/// Who may call the instance groups it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Absent: every instance group of its scope.
    pub selector: Option<PolicySelector>,
    /// Absent: `ALLOW`.
    #[serde(default)]
    pub action: PolicyAction,
    /// None: an ALLOW policy allows nothing, so it denies every request (Istio's meaning).
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default, rename = "targetRef", deserialize_with = "refuse_target_ref")]
    _target_ref: Refused,
    #[serde(default, rename = "targetRefs", deserialize_with = "refuse_target_ref")]
    _target_refs: Refused,
    #[serde(default, rename = "provider", deserialize_with = "refuse")]
    _provider: Refused,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
}

impl TryFrom<String> for PolicyAction {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        word(
            &text,
            &[("ALLOW", PolicyAction::Allow), ("DENY", PolicyAction::Deny)],
            &[
                ("AUDIT", "the mesh has no audit log for Envoy to write to"),
                (
                    "CUSTOM",
                    "the mesh has no external authorization providers (Istio's \
                     `extensionProviders`)",
                ),
            ],
        )
    }
}

/// Istio's `Rule`: it matches a request when one of its sources, one of its operations and
/// every condition match (an empty list matches anything).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// Required (checked, so that its absence is named).
    pub source: Option<Source>,
}

/// The peer of a request: every field set must match; within a field, any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Deployments: the mesh has no namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, rename = "requestPrincipals", deserialize_with = "refuse")]
    _request_principals: Refused,
    #[serde(default, rename = "notRequestPrincipals", deserialize_with = "refuse")]
    _not_request_principals: Refused,
    #[serde(default, rename = "remoteIpBlocks", deserialize_with = "refuse")]
    _remote_ip_blocks: Refused,
    #[serde(default, rename = "notRemoteIpBlocks", deserialize_with = "refuse")]
    _not_remote_ip_blocks: Refused,
    #[serde(default, rename = "serviceAccounts", deserialize_with = "refuse")]
    _service_accounts: Refused,
    #[serde(default, rename = "notServiceAccounts", deserialize_with = "refuse")]
    _not_service_accounts: Refused,
}

impl Source {
    /// Whether it sets no field (Istio refuses such a source).
    pub fn is_empty(&self) -> bool {
        *self == Source::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// Required (checked, so that its absence is named).
    pub operation: Option<Operation>,
}

/// The request: every field set must match; within a field, any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    /// Istio writes them as strings (`"9080"`); numbers are taken too.
    #[serde(default)]
    pub ports: Vec<PolicyPort>,
    #[serde(default)]
    pub not_ports: Vec<PolicyPort>,
    #[serde(default, rename = "hosts", deserialize_with = "refuse")]
    _hosts: Refused,
    #[serde(default, rename = "notHosts", deserialize_with = "refuse")]
    _not_hosts: Refused,
}

impl Operation {
    /// Whether it sets no field (Istio refuses such an operation).
    pub fn is_empty(&self) -> bool {
        *self == Operation::default()
    }
}

/// Istio's `Condition`: `key` is checked (`checks_security.rs`), at least one of `values`
/// and `notValues`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}
