//! Pure translation of a [`Catalog`] into Envoy v3 resources (LDS, CDS, EDS, RDS).
//!
//! Everything here is built and encoded once per catalog version; the ADS streams only pick
//! and clone the encoded resources (see `cache` and `stream`).
//!
//! Shapes:
//! - one listener `outbound` on 127.0.0.1:15001, where the DNAT rule lands. The
//!   `original_dst` listener filter restores the VIP:port the application dialled and
//!   `use_original_dst` hands the connection to the listener of that VIP:port.
//!   Connections to a VIP:port nobody exposes stay on `outbound`, whose only filter chain
//!   closes them at once (a `tcp_proxy` to a cluster that never exists, as Istio's
//!   `BlackHoleCluster`).
//! - one listener per (VIP, port), named `<vip>_<port>` and not bound to a socket, with
//!   `tcp_proxy` or the HTTP connection manager by protocol. One listener per VIP:port
//!   rather than one filter chain each in `outbound` keeps a service change small: adding
//!   a service sends every Envoy one small listener, not the whole outbound listener
//!   again (44 kB at 100 services), and leaves every other listener's connections alone.
//! - one EDS cluster per service port, named Istio-style `outbound|<port>||<hostname>`, with
//!   outlier detection and connect retries so that a dead instance stops getting requests
//!   at its first failures, long before the director notices (see [`outlier_detection`]).
//!   And one per port of each subset of the traffic model, `outbound|<port>|<subset>|<hostname>`.
//! - one `ClusterLoadAssignment` per cluster with the healthy endpoints (of the subset), one
//!   locality per AZ.
//! - for a service whose endpoints are DNS names (a ServiceEntry resolved through DNS), a DNS
//!   cluster instead, with the same names and policies: it carries its names in its own
//!   load assignment, and Envoy resolves them with the VM's resolver (see [`dns_discovery`]).
//! - one `RouteConfiguration` per HTTP-ish service port, named like its cluster: the traffic
//!   model's routes of that port (see `routes`), then the default route to the whole service.
//!   Where those routes have matches limited by `sourceLabels`, the configuration served to a
//!   client depends on the selectors it satisfies: the one among the resources is for clients
//!   that satisfy none, and [`RouteVariants`] holds the others (Istio builds routes per
//!   sidecar for the same reason).
//! - with workload identities on ([`Inputs::identity`]): one inbound listener per instance
//!   group, which only that group's Envoys get ([`Resources::owner`]), and the passthrough
//!   clusters behind them (see `inbound`, with the security model's authorization in `rbac`);
//!   the clusters of BOSH services originate mutual TLS and check the server's SPIFFE ID, on
//!   every port the server does not DISABLE (see `mtls`). A group whose names cannot form a
//!   SPIFFE ID stays plaintext, with a warning ([`Resources::warnings`]).
//!
//! The traffic model (`crate::traffic`) changes only what it names: without rules, every
//! resource is what it would be without the model, byte for byte. HTTP routes change route
//! configurations only, never a listener (see [`vip_listener`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions, Locality, RoutingPriority, SocketAddress,
    TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    retry_policy, route, route_action, route_match, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily;
use envoy_types::pb::envoy::extensions::clusters::dns::v3::{dns_cluster, DnsCluster};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};

use super::client::SourceClass;
use super::routes;
use super::telemetry::{self, Tag, Telemetry};
use super::{inbound, mtls};
use crate::catalog::model::{Catalog, DnsResolution, Labels, Service, ServicePort};
use crate::identity::spiffe::{workload_id, TrustDomain};
use crate::traffic::security::{MtlsMode, SecurityRules, WorkloadKey, WorkloadSecurity};
use crate::traffic::{
    self, ConnectionPool, Destination, LoadBalancer, LocalityLoadBalancing, ServiceRules,
    TrafficPolicy, TrafficRules, WeightedDestination,
};

/// Name of the one outbound listener.
pub(crate) const OUTBOUND_LISTENER: &str = "outbound";
/// Where DNAT sends VIP traffic (docs/ARCHITECTURE.md, "From a connection to an instance").
pub(crate) const OUTBOUND_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub(crate) const OUTBOUND_PORT: u16 = 15001;

/// Upstream connect timeout: instances are on the same BOSH network, so a second is plenty
/// and a dead instance is given up on quickly.
pub(super) const CONNECT_TIMEOUT: Duration = seconds(1);

/// Passive outlier detection instead of active health checks. Every Envoy of the
/// foundation would probe every endpoint it knows (N VMs × M endpoints of probes, 20,000
/// targets per Envoy at 1,000 services × 2 ports × 10 instances, which Envoy 1.40 does not
/// survive), while the director's job state already takes failing instances out of EDS.
/// What the director has not seen yet is caught by the traffic itself: connections refused,
/// reset or timed out (local-origin failures, counted apart from the application's own HTTP
/// errors) eject a host after two in a row, and the failed attempts are retried on another
/// host (see [`retry_policy`] and `TCP_CONNECT_ATTEMPTS`), so the client does not see them.
/// At most half of a cluster is ever ejected: when every host fails at once the fault is
/// more likely on this side (the VM's network), and ejecting all would keep the service down
/// after the network returns. An ejection is short (2 s, growing with each repeat, at most
/// 30 s): its length is how long a recovered instance waits to get traffic again, while a
/// still-dead one is ejected again by the first attempts that fail.
const CONSECUTIVE_LOCAL_ORIGIN_FAILURES: u32 = 2;
const CONSECUTIVE_GATEWAY_FAILURES: u32 = 3;
const CONSECUTIVE_5XX: u32 = 5;
const OUTLIER_INTERVAL: Duration = seconds(1);
const BASE_EJECTION_TIME: Duration = seconds(2);
const MAX_EJECTION_TIME: Duration = seconds(30);
const MAX_EJECTION_PERCENT: u32 = 50;

/// Retries of a request whose upstream connection failed before the request reached the
/// application, always on another host. Requests the application may have seen (a reset
/// after sending) are not retried: that could run a POST twice.
const RETRY_ON: &str = "connect-failure,refused-stream,reset-before-request";
const RETRIES: u32 = 2;
/// tcp_proxy: connection attempts (on any host the load balancer picks) before giving up.
const TCP_CONNECT_ATTEMPTS: u32 = 3;

const fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

/// The four xDS resource types we serve, in the order Envoy wants updates pushed
/// (clusters before their endpoints, listeners before their routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl ResourceType {
    pub const PUSH_ORDER: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::PUSH_ORDER
            .into_iter()
            .find(|t| t.type_url() == type_url)
    }

    /// Listeners and clusters are always sent whole (wildcard subscription); endpoints and
    /// routes only for the names Envoy asked for.
    pub(crate) fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One encoded resource with its own content version (for delta xDS and for cheap
/// "did anything change" checks).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    /// Hex of the first 8 bytes of SHA-256 over the encoded resource.
    pub version: String,
    pub resource: Any,
}

impl NamedResource {
    fn new(name: String, resource: Any) -> Self {
        NamedResource {
            version: content_version(&[&resource.value]),
            name,
            resource,
        }
    }
}

/// All resources built from one version of the inputs, per type, each list sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// The version of the inputs these were built from ([`Inputs::version`]).
    pub version: u64,
    by_type: [Vec<NamedResource>; 4],
    /// The distinct `sourceLabels` of the traffic model, numbered: what [`SourceClass`]
    /// indexes.
    pub(crate) source_selectors: Vec<Labels>,
    /// By route configuration name: the configurations for clients that satisfy some of its
    /// selectors.
    route_variants: BTreeMap<String, RouteVariants>,
    /// The workload of each resource only its own Envoys get (`xds::inbound`): by listener
    /// name. Empty without workload identities.
    owners: HashMap<Box<str>, WorkloadKey>,
    /// What the inputs asked that the resources cannot carry, for the log.
    warnings: Vec<String>,
    /// Per type, each name's place in `by_type`: every delta stream looks names up, thousands
    /// of times per Envoy that connects, and a binary search over names sharing long prefixes
    /// was a quarter of the pilot's CPU in a mass reconnect (bench/notes.md, fleet).
    positions: [NameIndex; 4],
}

/// A name → its place in one type's sorted list.
#[derive(Debug, Clone, Default, PartialEq)]
struct NameIndex(HashMap<Box<str>, u32>);

impl NameIndex {
    fn of(list: &[NamedResource]) -> NameIndex {
        NameIndex(
            list.iter()
                .enumerate()
                .map(|(i, r)| (Box::from(r.name.as_str()), i as u32))
                .collect(),
        )
    }
}

/// The route configurations of one VIP:port for the clients that satisfy some of the
/// `sourceLabels` its routes use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteVariants {
    /// The selectors its routes use, as indexes into `Resources::source_selectors`; at most
    /// `traffic::MAX_SOURCE_SELECTORS`.
    selectors: Vec<usize>,
    /// By the bit mask of the selectors a client satisfies (bit i: `selectors[i]`), from
    /// mask 1 at index 0: mask 0 is the configuration among the resources.
    by_mask: Vec<NamedResource>,
}

impl RouteVariants {
    pub(crate) fn resources(&self) -> &[NamedResource] {
        &self.by_mask
    }
}

impl Resources {
    /// All resources of one type, sorted by name.
    pub(crate) fn of_type(&self, resource_type: ResourceType) -> &[NamedResource] {
        &self.by_type[resource_type.index()]
    }

    /// Where the resource of that type and name is in [`Resources::of_type`], if there is one.
    pub(crate) fn position(&self, resource_type: ResourceType, name: &str) -> Option<usize> {
        let at = self.positions[resource_type.index()].0.get(name)?;
        Some(*at as usize)
    }

    pub fn get(&self, resource_type: ResourceType, name: &str) -> Option<&NamedResource> {
        let i = self.position(resource_type, name)?;
        Some(&self.of_type(resource_type)[i])
    }

    /// The resource of that type and name as the client of `class` gets it.
    pub(crate) fn get_for(
        &self,
        resource_type: ResourceType,
        name: &str,
        class: &SourceClass,
    ) -> Option<&NamedResource> {
        let variants = (resource_type == ResourceType::Route)
            .then(|| self.route_variants.get(name))
            .flatten();
        if let Some(variants) = variants {
            let mask = variants
                .selectors
                .iter()
                .enumerate()
                .filter(|(_, selector)| class.satisfies(**selector))
                .fold(0, |mask, (bit, _)| mask | 1 << bit);
            if mask > 0 {
                return Some(&variants.by_mask[mask - 1]);
            }
        }
        self.get(resource_type, name)
    }

    /// The route configurations that have variants per client, by name.
    pub(crate) fn route_variants(&self) -> &BTreeMap<String, RouteVariants> {
        &self.route_variants
    }

    /// The workload whose Envoys alone get the resource of that type and name; `None` for a
    /// resource every Envoy gets.
    pub(crate) fn owner(&self, resource_type: ResourceType, name: &str) -> Option<&WorkloadKey> {
        if resource_type != ResourceType::Listener || self.owners.is_empty() {
            return None;
        }
        self.owners.get(name)
    }

    /// Whether the Envoys of `workload` (`None`: an Envoy of no BOSH instance) get the resource
    /// of that type and name.
    pub(crate) fn is_for(
        &self,
        workload: Option<&WorkloadKey>,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.owner(resource_type, name)
            .is_none_or(|owner| workload == Some(owner))
    }

    /// What the inputs asked that these resources cannot carry.
    pub(crate) fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// A short, stable content hash: equal inputs give equal versions on every replica.
pub(crate) fn content_version(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefix each part so that ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Istio's name for the listener of one VIP:port.
pub(crate) fn listener_name(vip: Ipv4Addr, port: u16) -> String {
    format!("{vip}_{port}")
}

/// Istio's outbound cluster name; also used for the route configuration and filter chain.
pub fn cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}")
}

/// Istio's name for the cluster of one subset of a service port.
pub fn subset_cluster_name(hostname: &str, port: u16, subset: &str) -> String {
    format!("outbound|{port}|{subset}|{hostname}")
}

/// The cluster a traffic-model destination names. It may not exist (a host the catalog does
/// not have, an unknown subset): Envoy then answers the requests routed there with a 503.
pub(super) fn destination_cluster(destination: &Destination) -> String {
    match &destination.subset {
        None => cluster_name(&destination.host, destination.port),
        Some(subset) => subset_cluster_name(&destination.host, destination.port, subset),
    }
}

/// The clusters of the destinations that get traffic, with their weights.
pub(super) fn weighted_clusters(destinations: &[WeightedDestination]) -> Vec<(String, u32)> {
    destinations
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| (destination_cluster(&d.destination), d.weight))
        .collect()
}

/// The protobuf form of a duration (one beyond `i64::MAX` seconds is cut there).
pub(super) fn duration(duration: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).expect("below a billion"),
    }
}

/// What the resources are built from: the catalog, the traffic model, the trust domain
/// when workload identities are on, and whether Envoys report requests. A catalog alone
/// (`From<&Catalog>`) has no traffic rules, no identities and no telemetry.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub catalog: &'a Catalog,
    pub traffic: &'a TrafficRules,
    /// `None`: the plaintext mesh without inbound listeners, every resource what it was
    /// before identities; `Some`: inbound listeners and mutual TLS (`xds::inbound`).
    pub identity: Option<&'a TrustDomain>,
    /// What Envoys report: an access log entry per request and per connection to the VM's
    /// agent, which turns them into request metrics with BOSH identities, and spans to a
    /// Zipkin collector (`xds::telemetry`, docs/telemetry.md).
    pub telemetry: &'a Telemetry,
}

impl<'a> From<&'a Catalog> for Inputs<'a> {
    fn from(catalog: &'a Catalog) -> Self {
        static NO_RULES: TrafficRules = TrafficRules {
            services: BTreeMap::new(),
            scope_pins: Vec::new(),
            security: SecurityRules {
                mesh_mtls: MtlsMode::Permissive,
                workloads: BTreeMap::new(),
            },
        };
        Inputs {
            catalog,
            traffic: &NO_RULES,
            identity: None,
            telemetry: &Telemetry::OFF,
        }
    }
}

impl Inputs<'_> {
    /// The version of what these inputs build: the catalog's own version without traffic
    /// rules and identities (a mesh without them serves exactly what it did before the traffic
    /// model, versions included), else a hash of the catalog's version, the rules (security
    /// rules included) and the trust domain, so that a change of the rules alone is a new
    /// version. The empty default catalog's 0 stays 0 whatever the
    /// rules (it is never served, see `cache::follow`).
    pub fn version(&self) -> u64 {
        // The Sidecars' pins change what scoped streams get, not any resource: they count too.
        let no_rules = self.traffic.services.is_empty()
            && self.traffic.scope_pins.is_empty()
            && self.traffic.security.is_empty()
            && self.identity.is_none()
            && *self.telemetry == Telemetry::OFF;
        if self.catalog.version == 0 || no_rules {
            return self.catalog.version;
        }
        let rules = serde_json::to_vec(self.traffic).expect("the traffic model serializes");
        let mut digest = Sha256::new()
            .chain_update(self.catalog.version.to_be_bytes())
            .chain_update(rules);
        if let Some(trust_domain) = self.identity {
            digest.update(trust_domain.as_str());
        }
        if *self.telemetry != Telemetry::OFF {
            digest.update(serde_json::to_vec(self.telemetry).expect("telemetry serializes"));
        }
        let digest = digest.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
    }
}

pub fn build<'a>(inputs: impl Into<Inputs<'a>>) -> Resources {
    let inputs = inputs.into();
    let source_selectors = source_selectors(inputs.traffic);
    let mut route_variants = BTreeMap::new();
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let mut routes = Vec::new();
    let mut listeners = vec![NamedResource::new(
        OUTBOUND_LISTENER.to_string(),
        pack_any(outbound_listener()),
    )];
    for service in &inputs.catalog.services {
        let rules = inputs.traffic.services.get(&service.hostname);
        let server_id = server_identity(&inputs, service);
        for port in &service.ports {
            let name = cluster_name(&service.hostname, port.number);
            let policy = |subset| {
                rules
                    .map(|r| r.policy(port.number, subset))
                    .unwrap_or_default()
            };
            let tls = server_id
                .as_ref()
                .filter(|(_, security)| security.mtls_of(port.number) != MtlsMode::Disable)
                .map(|(id, _)| mtls::client_transport_socket(port, id));
            let (cluster, assignment) =
                cluster_with_endpoints(&name, service, port, &policy(None), None, tls.as_ref());
            clusters.push(cluster);
            endpoints.extend(assignment);
            for (subset_name, subset) in rules.iter().flat_map(|r| &r.subsets) {
                let (cluster, assignment) = cluster_with_endpoints(
                    &subset_cluster_name(&service.hostname, port.number, subset_name),
                    service,
                    port,
                    &policy(Some(subset_name)),
                    Some(subset),
                    tls.as_ref(),
                );
                clusters.push(cluster);
                endpoints.extend(assignment);
            }
            if port.protocol.is_http() {
                let http_routes = http_routes(rules, port);
                let used: Vec<usize> = source_selectors
                    .iter()
                    .enumerate()
                    .filter(|(_, selector)| uses(http_routes, selector))
                    .map(|(at, _)| at)
                    .collect();
                let for_mask = |mask: usize| {
                    let satisfied: Vec<&Labels> = used
                        .iter()
                        .enumerate()
                        .filter(|(bit, _)| mask & 1 << bit != 0)
                        .map(|(_, at)| &source_selectors[*at])
                        .collect();
                    let config =
                        route_configuration(&name, service, port, inputs.traffic, &satisfied);
                    NamedResource::new(name.clone(), pack_any(config))
                };
                routes.push(for_mask(0));
                if !used.is_empty() {
                    let by_mask = (1..1 << used.len()).map(for_mask).collect();
                    let variants = RouteVariants {
                        selectors: used,
                        by_mask,
                    };
                    route_variants.insert(name.clone(), variants);
                }
            }
            listeners.push(NamedResource::new(
                listener_name(service.vip, port.number),
                pack_any(vip_listener(&name, service, port, rules, inputs.telemetry)),
            ));
        }
    }
    let mut owners = HashMap::new();
    let mut warnings = Vec::new();
    if let Some(trust_domain) = inputs.identity {
        for (workload, ports) in inbound::workloads(inputs.catalog) {
            let id = workload_id(trust_domain, &workload.deployment, &workload.instance_group);
            if let Err(why) = &id {
                warnings.push(format!(
                    "instance group {:?} of deployment {:?} has no workload identity, its \
                     inbound ports stay plaintext: {why}",
                    workload.instance_group, workload.deployment
                ));
            }
            let security = inputs.traffic.security.of(&workload);
            let listener =
                inbound::listener(&workload, &ports, &security, id.is_ok(), inputs.telemetry);
            let name = inbound::listener_name(&workload);
            owners.insert(Box::from(name.as_str()), workload);
            listeners.push(NamedResource::new(name, pack_any(listener)));
        }
        clusters.extend(
            inbound::passthrough_clusters()
                .map(|cluster| NamedResource::new(cluster.name.clone(), pack_any(cluster))),
        );
    }
    clusters.extend(
        telemetry::zipkin_cluster(inputs.telemetry)
            .map(|cluster| NamedResource::new(cluster.name.clone(), pack_any(cluster))),
    );
    let mut by_type = [clusters, endpoints, listeners, routes];
    for list in &mut by_type {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let positions = [0, 1, 2, 3].map(|i| NameIndex::of(&by_type[i]));
    Resources {
        version: inputs.version(),
        by_type,
        source_selectors,
        route_variants,
        owners,
        warnings,
        positions,
    }
}

/// The SPIFFE ID the instances of `service` prove, and what the security rules say about
/// them, when its clients are to check it: identities on, a BOSH job or a WorkloadGroup
/// (`inbound::workload_of`: a ServiceEntry's endpoints are outside the mesh), and names that
/// can form a SPIFFE ID (see `build`'s warning). An endpoint whose agent reports no inbound
/// capture is still called in plaintext (`Endpoint::plaintext`).
fn server_identity<'a>(
    inputs: &Inputs<'a>,
    service: &Service,
) -> Option<(String, std::borrow::Cow<'a, WorkloadSecurity>)> {
    let trust_domain = inputs.identity?;
    let workload = inbound::workload_of(service)?;
    let id = workload_id(trust_domain, &workload.deployment, &workload.instance_group).ok()?;
    Some((id, inputs.traffic.security.of(&workload)))
}

/// The distinct `sourceLabels` of every HTTP route of `traffic`, sorted.
fn source_selectors(traffic: &TrafficRules) -> Vec<Labels> {
    let all = traffic
        .services
        .values()
        .flat_map(|rules| rules.http_routes.values().flatten())
        .flat_map(|route| &route.matches)
        .map(|m| &m.source_labels)
        .filter(|labels| !labels.is_empty());
    let distinct: BTreeSet<&Labels> = all.collect();
    distinct.into_iter().cloned().collect()
}

/// Whether one of `routes` has a match limited to the clients `selector` selects.
fn uses(routes: &[traffic::HttpRoute], selector: &Labels) -> bool {
    routes
        .iter()
        .flat_map(|route| &route.matches)
        .any(|m| m.source_labels == *selector)
}

/// The cluster of `port` of `service` (of `subset`, or of the whole service) and its
/// endpoints: an EDS cluster and the load assignment Envoy asks for by the cluster's name or,
/// for a service resolved through DNS, a DNS cluster that carries its names itself (a DNS
/// cluster takes no EDS; Envoy resolves the names).
fn cluster_with_endpoints(
    name: &str,
    service: &Service,
    port: &ServicePort,
    policy: &TrafficPolicy,
    subset: Option<&traffic::Subset>,
    tls: Option<&TransportSocket>,
) -> (NamedResource, Option<NamedResource>) {
    let locality = policy.locality.as_ref();
    let Some(dns) = &service.dns else {
        let endpoints = service
            .endpoints
            .iter()
            .filter(|e| e.healthy)
            .filter(|e| subset.is_none_or(|subset| subset.endpoints.contains(&e.address)))
            .map(|e| {
                let address = socket_address(e.address, port.number);
                (e.az.as_deref(), address, e.plaintext)
            });
        let cluster = Cluster {
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: String::new(),
            }),
            ..cluster_with_policy(name, port, policy, tls)
        };
        return (
            NamedResource::new(name.to_string(), pack_any(cluster)),
            Some(NamedResource::new(
                name.to_string(),
                pack_any(load_assignment(name, endpoints, locality)),
            )),
        );
    };
    let endpoints = dns
        .endpoints
        .iter()
        .filter(|e| subset.is_none_or(|subset| subset.dns_endpoints.contains(&e.address)))
        .map(|e| {
            (
                e.az.as_deref(),
                socket_address(&e.address, port.number),
                false,
            )
        });
    let cluster = Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: DNS_CLUSTER_TYPE.to_string(),
                typed_config: Some(pack_any(dns_discovery(dns.resolution))),
            },
        )),
        load_assignment: Some(load_assignment(name, endpoints, locality)),
        ..cluster_with_policy(name, port, policy, tls)
    };
    (
        NamedResource::new(name.to_string(), pack_any(cluster)),
        None,
    )
}

/// Envoy's DNS cluster: what `STRICT_DNS` and `LOGICAL_DNS` are since Envoy 1.3x, whose own
/// fields for the refresh rate and the TTL are deprecated on `Cluster` (Envoy warns at every
/// update that sets them).
const DNS_CLUSTER_TYPE: &str = "envoy.cluster.dns";

/// How often a name is resolved again when its answer gives no TTL (Envoy's default), and how
/// soon after a failed resolution (backing off up to the refresh rate): the VM's own resolver
/// answers, and caches what it recurses for, so asking it often is cheap, and a name that
/// moves (a recreated VM) is followed within seconds.
const DNS_REFRESH_RATE: Duration = seconds(5);
const DNS_FAILURE_REFRESH_RATE: Duration = seconds(1);

/// Istio's mapping: `DNS` is strict DNS (every address of every name an endpoint of its own),
/// `DNS_ROUND_ROBIN` logical DNS (one endpoint, connecting to the name's first address at
/// the time). Names are resolved with the VM's resolver (/etc/resolv.conf: bosh-dns on a BOSH
/// VM), for IPv4 alone since the mesh is IPv4, and again as their TTL runs out.
fn dns_discovery(resolution: DnsResolution) -> DnsCluster {
    DnsCluster {
        dns_refresh_rate: Some(DNS_REFRESH_RATE),
        dns_failure_refresh_rate: Some(dns_cluster::RefreshRate {
            base_interval: Some(DNS_FAILURE_REFRESH_RATE),
            max_interval: Some(DNS_REFRESH_RATE),
        }),
        respect_dns_ttl: true,
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        all_addresses_in_single_endpoint: resolution == DnsResolution::DnsRoundRobin,
        ..Default::default()
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// An IP address, or a DNS name for a DNS cluster to resolve, and a port.
pub(super) fn socket_address(address: impl std::fmt::Display, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A cluster with the mesh's defaults, changed where `policy` says (see
/// `crate::traffic::TrafficPolicy`), over mutual TLS with `tls`, without its endpoints: the
/// caller says how they are discovered.
fn cluster_with_policy(
    name: &str,
    port: &ServicePort,
    policy: &TrafficPolicy,
    tls: Option<&TransportSocket>,
) -> Cluster {
    let pool = policy.connection_pool.as_ref();
    let typed_extension_protocol_options = upstream_http_options(port, pool)
        .map(protocol_options)
        .unwrap_or_default();
    let lb_policy = match policy.load_balancer {
        None | Some(LoadBalancer::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(LoadBalancer::LeastRequest) => cluster::LbPolicy::LeastRequest,
        Some(LoadBalancer::Random) => cluster::LbPolicy::Random,
        // The hash is computed on each route that sends here (`routes::hash_policy`).
        Some(LoadBalancer::RingHash(_)) => cluster::LbPolicy::RingHash,
    };
    let locality_config_specifier = match policy.locality {
        Some(LocalityLoadBalancing::Distribute(_)) => Some(
            cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cluster::common_lb_config::LocalityWeightedLbConfig {},
            ),
        ),
        // Failover is in the load assignment's priorities alone.
        Some(LocalityLoadBalancing::Failover(_)) | None => None,
    };
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(
            pool.and_then(|p| p.connect_timeout)
                .map_or(CONNECT_TIMEOUT, duration),
        ),
        lb_policy: lb_policy as i32,
        circuit_breakers: pool.and_then(circuit_breakers),
        typed_extension_protocol_options,
        outlier_detection: Some(outlier_detection(policy.outlier_detection.as_ref())),
        common_lb_config: Some(cluster::CommonLbConfig {
            // No panic mode: Envoy's default (50%) would send traffic to every host,
            // ejected ones included, as soon as half of them are ejected.
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            locality_config_specifier,
            ..Default::default()
        }),
        transport_socket: tls.cloned(),
        transport_socket_matches: tls
            .map(|_| vec![mtls::plaintext_socket_match()])
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// A cluster's `typed_extension_protocol_options` with `options`.
pub(super) fn protocol_options(options: HttpProtocolOptions) -> HashMap<String, Any> {
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack_any(options),
    )])
}

/// HTTP/2 upstream where the port's protocol needs it, and the requests allowed per upstream
/// connection where the connection pool limits them; `None` (Envoy's defaults, HTTP/1.1)
/// otherwise.
fn upstream_http_options(
    port: &ServicePort,
    pool: Option<&ConnectionPool>,
) -> Option<HttpProtocolOptions> {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let max_requests_per_connection = pool
        .and_then(|p| p.max_requests_per_connection)
        .filter(|_| port.protocol.is_http());
    let protocol_config = if port.protocol.is_http2() {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else if max_requests_per_connection.is_some() {
        // Envoy wants the upstream protocol said whenever these options are given.
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    } else {
        return None;
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: max_requests_per_connection.map(|value| {
            CommonHttpProtocolOptions {
                max_requests_per_connection: Some(UInt32Value { value }),
                ..Default::default()
            }
        }),
        ..explicit_upstream(protocol_config)
    })
}

/// Upstream HTTP options that say which protocol the upstream speaks.
pub(super) fn explicit_upstream(
    protocol_config: http_protocol_options::explicit_http_config::ProtocolConfig,
) -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(protocol_config),
                },
            ),
        ),
        ..Default::default()
    }
}

/// Envoy's circuit breakers with the pool's limits; the limits it does not set keep Envoy's
/// defaults. `None` when it sets none.
fn circuit_breakers(pool: &ConnectionPool) -> Option<CircuitBreakers> {
    let limits = [
        pool.max_connections,
        pool.max_pending_requests,
        pool.max_requests,
        pool.max_retries,
    ];
    if limits.iter().all(Option::is_none) {
        return None;
    }
    let [max_connections, max_pending_requests, max_requests, max_retries] =
        limits.map(|limit| limit.map(|value| UInt32Value { value }));
    Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// The mesh's outlier detection, with the traffic model's `changes`. Local-origin failures
/// (refused, reset, timed out) always eject: the mesh's failover depends on it.
fn outlier_detection(changes: Option<&traffic::OutlierDetection>) -> OutlierDetection {
    let count = |value| Some(UInt32Value { value });
    let mut detection = OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: count(CONSECUTIVE_LOCAL_ORIGIN_FAILURES),
        enforcing_consecutive_local_origin_failure: count(100),
        consecutive_gateway_failure: count(CONSECUTIVE_GATEWAY_FAILURES),
        enforcing_consecutive_gateway_failure: count(100),
        consecutive_5xx: count(CONSECUTIVE_5XX),
        enforcing_consecutive_5xx: count(100),
        interval: Some(OUTLIER_INTERVAL),
        base_ejection_time: Some(BASE_EJECTION_TIME),
        max_ejection_time: Some(MAX_EJECTION_TIME),
        max_ejection_percent: count(MAX_EJECTION_PERCENT),
        ..Default::default()
    };
    let Some(changes) = changes else {
        return detection;
    };
    // A count of 0 turns that detection off: Envoy's own way is not enforcing it.
    let consecutive =
        |changed: Option<u32>,
         (threshold, enforcing): (&mut Option<UInt32Value>, &mut Option<UInt32Value>)| {
            match changed {
                Some(0) => *enforcing = count(0),
                Some(n) => *threshold = count(n),
                None => {}
            }
        };
    consecutive(
        changes.consecutive_5xx,
        (
            &mut detection.consecutive_5xx,
            &mut detection.enforcing_consecutive_5xx,
        ),
    );
    consecutive(
        changes.consecutive_gateway_errors,
        (
            &mut detection.consecutive_gateway_failure,
            &mut detection.enforcing_consecutive_gateway_failure,
        ),
    );
    if let Some(interval) = changes.interval {
        detection.interval = Some(duration(interval));
    }
    if let Some(base) = changes.base_ejection_time {
        detection.base_ejection_time = Some(duration(base));
        // Envoy refuses a cluster whose longest ejection is shorter than its first.
        let longest = std::time::Duration::from_secs(MAX_EJECTION_TIME.seconds.unsigned_abs());
        detection.max_ejection_time = Some(duration(base.max(longest)));
    }
    if let Some(percent) = changes.max_ejection_percent {
        // Above 100 Envoy refuses the cluster; it means all anyway.
        detection.max_ejection_percent = count(percent.min(100));
    }
    detection
}

/// The `(AZ, address, plaintext)` endpoints given, one locality per AZ (AZ-less endpoints
/// share the empty zone), weighted or prioritized by AZ as `locality` says; a plaintext one
/// labelled for the cluster's socket match (`mtls::plaintext_socket_match`).
fn load_assignment<'a>(
    name: &str,
    endpoints: impl Iterator<Item = (Option<&'a str>, Address, bool)>,
    locality: Option<&LocalityLoadBalancing>,
) -> ClusterLoadAssignment {
    let mut by_az: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for (az, address, plaintext) in endpoints {
        by_az.entry(az.unwrap_or("")).or_default().push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(address),
                ..Default::default()
            })),
            metadata: plaintext.then(mtls::plaintext_endpoint_metadata),
            ..Default::default()
        });
    }
    let priorities = match locality {
        Some(LocalityLoadBalancing::Failover(order)) => failover_priorities(order, &by_az),
        _ => BTreeMap::new(),
    };
    let listed_priorities = u32::try_from(priorities.len()).expect("fewer AZs than u32::MAX");
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_az
            .into_iter()
            .map(|(az, lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: az.to_string(),
                    ..Default::default()
                }),
                lb_endpoints,
                load_balancing_weight: match locality {
                    // Envoy wants a weight of at least 1; an AZ without one gets no traffic.
                    Some(LocalityLoadBalancing::Distribute(weights)) => weights
                        .get(az)
                        .filter(|weight| **weight > 0)
                        .map(|&value| UInt32Value { value }),
                    _ => None,
                },
                priority: match locality {
                    Some(LocalityLoadBalancing::Failover(_)) => {
                        priorities.get(az).copied().unwrap_or(listed_priorities)
                    }
                    _ => 0,
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The priority of each listed AZ that has endpoints, in the order listed. Envoy wants
/// priorities without gaps, so an AZ without endpoints takes no number; unlisted AZs all get
/// the next one.
fn failover_priorities<'a, T>(
    order: &'a [String],
    by_az: &BTreeMap<&str, T>,
) -> BTreeMap<&'a str, u32> {
    let mut priorities = BTreeMap::new();
    for az in order {
        if by_az.contains_key(az.as_str()) && !priorities.contains_key(az.as_str()) {
            let next = u32::try_from(priorities.len()).expect("fewer AZs than u32::MAX");
            priorities.insert(az.as_str(), next);
        }
    }
    priorities
}

/// The traffic model's routes of the port, in order, then the default route: everything to
/// the whole service. For a client that satisfies the `sourceLabels` in `satisfied` and no
/// others.
fn route_configuration(
    name: &str,
    service: &Service,
    port: &ServicePort,
    traffic: &TrafficRules,
    satisfied: &[&Labels],
) -> RouteConfiguration {
    let host_port = format!("{}:{}", service.hostname, port.number);
    let mut routes: Vec<Route> = http_routes(traffic.services.get(&service.hostname), port)
        .iter()
        .flat_map(|route| routes::envoy_routes(route, traffic, satisfied))
        .collect();
    routes.push(Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.to_string())),
            // No route deadline (Envoy's default is 15 s): the mesh must not cut
            // long requests or gRPC streams the application did not bound (Istio
            // does the same).
            timeout: Some(Duration::default()),
            retry_policy: Some(mesh_retry_policy()),
            hash_policy: routes::hash_policy(traffic, &service.hostname, port.number, None)
                .into_iter()
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    });
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: host_port,
            // The filter chain was already picked by VIP:port, so any Host header is this
            // service (clients may dial the VIP directly).
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The traffic model's HTTP routes of a service port; empty without.
fn http_routes<'a>(
    rules: Option<&'a ServiceRules>,
    port: &ServicePort,
) -> &'a [traffic::HttpRoute] {
    rules
        .and_then(|rules| rules.http_routes.get(&port.number))
        .map_or(&[], Vec::as_slice)
}

/// The mesh's retries, on every route the traffic model does not give retries of its own.
pub(super) fn mesh_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: RETRY_ON.to_string(),
        num_retries: Some(UInt32Value { value: RETRIES }),
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    }
}

fn vip_listener(
    name: &str,
    service: &Service,
    port: &ServicePort,
    rules: Option<&ServiceRules>,
    telemetry: &Telemetry,
) -> Listener {
    let stat_prefix = format!("outbound_{}_{}", port.number, service.hostname);
    let network_filter = if port.protocol.is_http() {
        let http_filter = |name: &str, config: Any| HttpFilter {
            name: name.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(config)),
            ..Default::default()
        };
        // The fault filter is in every http listener, rules or not (as in Istio's sidecars),
        // so that no rule ever changes a listener: a changed listener keeps serving the
        // connections it already has with its old filters until they close or Envoy's drain
        // time ends (minutes), and an application's keep-alive connection opened before a
        // fault rule would never see the fault. Without a route that injects one, it does
        // nothing.
        let fault = http_filter(routes::FAULT_FILTER, pack_any(HttpFault::default()));
        Filter {
            name: "envoy.filters.network.http_connection_manager".to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(
                HttpConnectionManager {
                    stat_prefix,
                    route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                        config_source: Some(ads_config_source()),
                        route_config_name: name.to_string(),
                    })),
                    http_filters: vec![
                        fault,
                        http_filter("envoy.filters.http.router", pack_any(Router::default())),
                    ],
                    access_log: telemetry::http_access_logs(telemetry.request_metrics),
                    tracing: telemetry::http_tracing(telemetry, destination_tags(service)),
                    ..Default::default()
                },
            ))),
        }
    } else {
        let mut proxy = TcpProxy {
            stat_prefix,
            cluster_specifier: Some(tcp_cluster_specifier(name, rules, port)),
            max_connect_attempts: Some(UInt32Value {
                value: TCP_CONNECT_ATTEMPTS,
            }),
            ..Default::default()
        };
        telemetry::log_connections(&mut proxy, telemetry.request_metrics);
        tcp_proxy_filter(proxy)
    };
    Listener {
        name: listener_name(service.vip, port.number),
        address: Some(socket_address(IpAddr::V4(service.vip), port.number)),
        // Nothing listens on the VIP: `outbound` accepts the connection and hands it over.
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![only_filter_chain(name, network_filter)],
        ..Default::default()
    }
}

/// The span tags naming the service called, by its BOSH names.
pub(super) fn destination_tags(service: &Service) -> Vec<Tag> {
    vec![
        Tag::Literal("boshy.destination.service", service.hostname.clone()),
        Tag::Literal(
            "boshy.destination.deployment",
            service.key.deployment.clone(),
        ),
        Tag::Literal(
            "boshy.destination.instance_group",
            service.key.instance_group.clone(),
        ),
        Tag::Literal("boshy.destination.job", service.key.job.clone()),
    ]
}

/// Where a tcp port's connections go: the traffic model's destinations, else the whole
/// service.
fn tcp_cluster_specifier(
    name: &str,
    rules: Option<&ServiceRules>,
    port: &ServicePort,
) -> tcp_proxy::ClusterSpecifier {
    let destinations = rules.and_then(|rules| rules.tcp_routes.get(&port.number));
    let clusters = weighted_clusters(destinations.map_or(&[], Vec::as_slice));
    match clusters.as_slice() {
        [] => tcp_proxy::ClusterSpecifier::Cluster(name.to_string()),
        [(only, _)] => tcp_proxy::ClusterSpecifier::Cluster(only.clone()),
        several => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: several
                .iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        metadata_match: None,
                    },
                )
                .collect(),
        }),
    }
}

pub(super) fn tcp_proxy_filter(config: TcpProxy) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    }
}

fn only_filter_chain(name: &str, filter: Filter) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        filters: vec![filter],
        ..Default::default()
    }
}

/// Where connections to a VIP:port that no listener claims go: a cluster that never exists,
/// so `tcp_proxy` closes them at once and counts them
/// (`tcp.outbound_unexposed.downstream_cx_no_route`).
pub(super) const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

fn outbound_listener() -> Listener {
    Listener {
        name: OUTBOUND_LISTENER.to_string(),
        stat_prefix: OUTBOUND_LISTENER.to_string(),
        address: Some(socket_address(IpAddr::V4(OUTBOUND_ADDRESS), OUTBOUND_PORT)),
        traffic_direction: TrafficDirection::Outbound as i32,
        // The DNAT rewrote the destination to 127.0.0.1:15001; this filter restores the
        // VIP:port from SO_ORIGINAL_DST, and `use_original_dst` then hands the connection
        // to the listener of that address.
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                OriginalDst::default(),
            ))),
            ..Default::default()
        }],
        use_original_dst: Some(BoolValue { value: true }),
        // Envoy wants at least one filter chain.
        filter_chains: vec![only_filter_chain(
            BLACKHOLE_CLUSTER,
            tcp_proxy_filter(TcpProxy {
                stat_prefix: "outbound_unexposed".to_string(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                    BLACKHOLE_CLUSTER.to_string(),
                )),
                ..Default::default()
            }),
        )],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing;
    use prost::Message;

    fn endpoint(last_octet: u8, az: Option<&str>, healthy: bool) -> Endpoint {
        Endpoint {
            az: az.map(str::to_string),
            index: Some(u32::from(last_octet)),
            healthy,
            ..testing::endpoint(&format!("10.0.0.{last_octet}"))
        }
    }

    /// A banana service with `ports` and four endpoints: two healthy in z1 and z2, one failing
    /// in z1, one healthy without an AZ.
    fn service(job: &str, vip: Ipv4Addr, ports: &[(&str, u16, Protocol)]) -> Service {
        let endpoints = [
            endpoint(1, Some("z1"), true),
            endpoint(2, Some("z2"), true),
            endpoint(3, Some("z1"), false),
            endpoint(4, None, true),
        ];
        let service = ports.iter().fold(
            testing::service("sample", "banana", job).vip(vip),
            |service, (name, number, protocol)| service.port(name, *number, *protocol),
        );
        endpoints
            .into_iter()
            .fold(service, |service, e| service.endpoint(e))
            .build()
    }

    fn catalog() -> Catalog {
        testing::catalog(
            42,
            [
                service(
                    "db",
                    Ipv4Addr::new(169, 254, 255, 2),
                    &[("tcp-db", 5432, Protocol::Tcp)],
                ),
                service(
                    "web",
                    Ipv4Addr::new(169, 254, 255, 3),
                    &[
                        ("grpc", 9000, Protocol::Grpc),
                        ("http", 9002, Protocol::Http),
                    ],
                ),
            ],
        )
    }

    fn decode<M: Message + Default>(resource: &NamedResource) -> M {
        M::decode(resource.resource.value.as_slice()).expect("decodes")
    }

    /// The resource of that type and name, decoded.
    fn resource<M: Message + Default>(resources: &Resources, t: ResourceType, name: &str) -> M {
        decode(
            resources
                .get(t, name)
                .unwrap_or_else(|| panic!("no {t:?} named {name}")),
        )
    }

    fn typed_config<M: Message + Default>(filter: &Filter) -> M {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            panic!("{}: no typed config", filter.name)
        };
        M::decode(any.value.as_slice()).unwrap()
    }

    /// The config of the network filter of a listener with one filter chain.
    fn network_filter<M: Message + Default>(listener: &Listener) -> M {
        typed_config(&listener.filter_chains[0].filters[0])
    }

    fn names(resources: &Resources, t: ResourceType) -> Vec<&str> {
        resources
            .of_type(t)
            .iter()
            .map(|r| r.name.as_str())
            .collect()
    }

    #[test]
    fn names_follow_istio_conventions_and_routes_exist_only_for_http_ports() {
        let resources = build(&catalog());
        let clusters = [
            "outbound|5432||db.banana.sample.boshy",
            "outbound|9000||web.banana.sample.boshy",
            "outbound|9002||web.banana.sample.boshy",
        ];
        assert_eq!(names(&resources, ResourceType::Cluster), clusters);
        assert_eq!(names(&resources, ResourceType::Endpoint), clusters);
        assert_eq!(names(&resources, ResourceType::Route), &clusters[1..]);
        assert_eq!(
            names(&resources, ResourceType::Listener),
            [
                "169.254.255.2_5432",
                "169.254.255.3_9000",
                "169.254.255.3_9002",
                "outbound"
            ]
        );
        assert_eq!(resources.version, 42);
        for t in ResourceType::PUSH_ORDER {
            for r in resources.of_type(t) {
                assert_eq!(r.resource.type_url, t.type_url());
            }
        }
    }

    #[test]
    fn outbound_hands_connections_to_one_listener_per_vip_and_port_by_protocol() {
        let resources = build(&catalog());
        let outbound: Listener = resource(&resources, ResourceType::Listener, "outbound");
        assert_eq!(outbound.stat_prefix, "outbound");
        assert_eq!(outbound.address, Some(socket_address("127.0.0.1", 15001)));
        assert_eq!(
            outbound.listener_filters[0].name,
            "envoy.filters.listener.original_dst"
        );
        assert_eq!(outbound.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(outbound.bind_to_port, None, "outbound binds 15001");
        let [blackhole] = outbound.filter_chains.as_slice() else {
            panic!("outbound has exactly one filter chain")
        };
        let blackhole: TcpProxy = typed_config(&blackhole.filters[0]);
        assert_eq!(
            blackhole.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                BLACKHOLE_CLUSTER.into()
            ))
        );
        assert!(
            resources
                .get(ResourceType::Cluster, BLACKHOLE_CLUSTER)
                .is_none(),
            "the black hole cluster never exists"
        );

        let vip_listeners: Vec<Listener> = resources
            .of_type(ResourceType::Listener)
            .iter()
            .filter(|named| named.name != "outbound")
            .map(decode)
            .collect();
        let summary: Vec<(&str, Option<Address>, Option<BoolValue>, &str)> = vip_listeners
            .iter()
            .map(|listener| {
                let [chain] = listener.filter_chains.as_slice() else {
                    panic!("{}: one filter chain", listener.name)
                };
                assert_eq!(chain.filter_chain_match, None, "{}", listener.name);
                (
                    listener.name.as_str(),
                    listener.address.clone(),
                    listener.bind_to_port,
                    chain.filters[0].name.as_str(),
                )
            })
            .collect();
        let vip = |ip: &str, port| Some(socket_address(ip, port));
        let unbound = Some(BoolValue { value: false });
        assert_eq!(
            summary,
            [
                (
                    "169.254.255.2_5432",
                    vip("169.254.255.2", 5432),
                    unbound,
                    "envoy.filters.network.tcp_proxy"
                ),
                (
                    "169.254.255.3_9000",
                    vip("169.254.255.3", 9000),
                    unbound,
                    "envoy.filters.network.http_connection_manager"
                ),
                (
                    "169.254.255.3_9002",
                    vip("169.254.255.3", 9002),
                    unbound,
                    "envoy.filters.network.http_connection_manager"
                ),
            ]
        );
        let tcp: TcpProxy = network_filter(&vip_listeners[0]);
        assert_eq!(
            tcp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|5432||db.banana.sample.boshy".into()
            ))
        );

        let hcm: HttpConnectionManager = network_filter(&vip_listeners[2]);
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("HCM uses RDS")
        };
        assert_eq!(
            rds.route_config_name,
            "outbound|9002||web.banana.sample.boshy"
        );
        assert_eq!(rds.config_source, Some(ads_config_source()));
        let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            filters,
            ["envoy.filters.http.fault", "envoy.filters.http.router"],
            "the fault filter, idle without rules, so that rules never change a listener"
        );
    }

    #[test]
    fn clusters_use_eds_over_ads_and_http2_only_where_the_protocol_needs_it() {
        let resources = build(&catalog());
        let cluster = |name: &str| -> Cluster { resource(&resources, ResourceType::Cluster, name) };
        let db = cluster("outbound|5432||db.banana.sample.boshy");
        assert_eq!(
            db.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        assert_eq!(
            db.eds_cluster_config.unwrap().eds_config,
            Some(ads_config_source())
        );
        assert_eq!(db.connect_timeout, Some(CONNECT_TIMEOUT));
        assert!(db.typed_extension_protocol_options.is_empty());
        assert!(cluster("outbound|9002||web.banana.sample.boshy")
            .typed_extension_protocol_options
            .is_empty());
        let grpc = cluster("outbound|9000||web.banana.sample.boshy");
        let options = &grpc.typed_extension_protocol_options
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let options = HttpProtocolOptions::decode(options.value.as_slice()).unwrap();
        assert!(matches!(
            options.upstream_protocol_options,
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                    )
                }
            ))
        ));
    }

    #[test]
    fn clusters_eject_failing_hosts_passively_without_panic_mode_or_active_probes() {
        let resources = build(&catalog());
        for named in resources.of_type(ResourceType::Cluster) {
            let cluster: Cluster = decode(named);
            assert!(
                cluster.health_checks.is_empty(),
                "{}: no active health checks (N VMs × M endpoints of probes)",
                named.name
            );
            let outlier = cluster.outlier_detection.expect("outlier detection");
            assert!(outlier.split_external_local_origin_errors);
            assert_eq!(outlier.consecutive_local_origin_failure.unwrap().value, 2);
            assert_eq!(
                outlier
                    .enforcing_consecutive_local_origin_failure
                    .unwrap()
                    .value,
                100
            );
            assert_eq!(
                outlier.enforcing_consecutive_gateway_failure.unwrap().value,
                100
            );
            assert_eq!(outlier.max_ejection_percent.unwrap().value, 50);
            assert_eq!(outlier.base_ejection_time, Some(seconds(2)));
            assert_eq!(
                cluster.common_lb_config.unwrap().healthy_panic_threshold,
                Some(Percent { value: 0.0 })
            );
        }
    }

    #[test]
    fn http_routes_retry_failed_connections_on_other_hosts_and_tcp_retries_connects() {
        let resources = build(&catalog());
        let config: RouteConfiguration = resource(
            &resources,
            ResourceType::Route,
            "outbound|9002||web.banana.sample.boshy",
        );
        let Some(route::Action::Route(action)) = &config.virtual_hosts[0].routes[0].action else {
            panic!("route action")
        };
        let retry = action.retry_policy.as_ref().expect("retry policy");
        assert_eq!(
            retry.retry_on,
            "connect-failure,refused-stream,reset-before-request"
        );
        assert_eq!(retry.num_retries.unwrap().value, 2);
        assert_eq!(
            retry.retry_host_predicate[0].name,
            "envoy.retry_host_predicates.previous_hosts"
        );

        let db: Listener = resource(&resources, ResourceType::Listener, "169.254.255.2_5432");
        let tcp: TcpProxy = network_filter(&db);
        assert_eq!(tcp.max_connect_attempts.unwrap().value, 3);
    }

    #[test]
    fn endpoints_are_the_healthy_instances_grouped_by_az() {
        let resources = build(&catalog());
        let assignment: ClusterLoadAssignment = resource(
            &resources,
            ResourceType::Endpoint,
            "outbound|9002||web.banana.sample.boshy",
        );
        let localities: Vec<(String, Vec<String>)> = assignment
            .endpoints
            .iter()
            .map(|locality| {
                let addresses = locality
                    .lb_endpoints
                    .iter()
                    .map(|lb| {
                        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier
                        else {
                            panic!("endpoint")
                        };
                        let Some(address::Address::SocketAddress(s)) =
                            &e.address.as_ref().unwrap().address
                        else {
                            panic!("socket address")
                        };
                        let Some(socket_address::PortSpecifier::PortValue(port)) = s.port_specifier
                        else {
                            panic!("port")
                        };
                        format!("{}:{port}", s.address)
                    })
                    .collect();
                (locality.locality.as_ref().unwrap().zone.clone(), addresses)
            })
            .collect();
        assert_eq!(
            localities,
            [
                ("".to_string(), vec!["10.0.0.4:9002".to_string()]),
                ("z1".to_string(), vec!["10.0.0.1:9002".to_string()]),
                ("z2".to_string(), vec!["10.0.0.2:9002".to_string()]),
            ]
        );
    }

    #[test]
    fn routes_send_everything_to_the_port_cluster_without_a_deadline() {
        let resources = build(&catalog());
        let config: RouteConfiguration = resource(
            &resources,
            ResourceType::Route,
            "outbound|9002||web.banana.sample.boshy",
        );
        let host = &config.virtual_hosts[0];
        assert_eq!(host.domains, ["*"]);
        let route = &host.routes[0];
        assert_eq!(
            route.r#match.as_ref().unwrap().path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        let Some(route::Action::Route(action)) = &route.action else {
            panic!("route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "outbound|9002||web.banana.sample.boshy".into()
            ))
        );
        assert_eq!(action.timeout, Some(Duration::default()));
    }

    #[test]
    fn versions_are_stable_and_change_only_with_the_resource() {
        let before = build(&catalog());
        assert_eq!(before, build(&catalog()), "same catalog, same bytes");

        let mut changed = catalog();
        changed.version = 43;
        changed.services[1].endpoints[0].healthy = false;
        let after = build(&changed);
        let version = |r: &Resources, t, name| r.get(t, name).unwrap().version.clone();
        let web = "outbound|9002||web.banana.sample.boshy";
        let db = "outbound|5432||db.banana.sample.boshy";
        assert_ne!(
            version(&before, ResourceType::Endpoint, web),
            version(&after, ResourceType::Endpoint, web)
        );
        assert_eq!(
            version(&before, ResourceType::Endpoint, db),
            version(&after, ResourceType::Endpoint, db)
        );
        for t in [ResourceType::Cluster, ResourceType::Route] {
            assert_eq!(version(&before, t, web), version(&after, t, web));
        }
        assert_eq!(
            version(&before, ResourceType::Listener, "outbound"),
            version(&after, ResourceType::Listener, "outbound")
        );
    }

    mod with_traffic_rules {
        use std::collections::{BTreeMap, BTreeSet};
        use std::time::Duration as StdDuration;

        use super::*;
        use crate::traffic::testing::to;
        use crate::traffic::{
            Forward, HashKey, HttpAction, HttpMatch, HttpRoute, PortPolicies, Subset,
        };

        const WEB: &str = "web.banana.sample.boshy";

        fn traffic(rules: impl IntoIterator<Item = (&'static str, ServiceRules)>) -> TrafficRules {
            TrafficRules {
                services: rules
                    .into_iter()
                    .map(|(host, rules)| (host.to_string(), rules))
                    .collect(),
                scope_pins: Vec::new(),
                security: Default::default(),
            }
        }

        fn built(traffic: &TrafficRules) -> Resources {
            build(Inputs {
                catalog: &catalog(),
                traffic,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            })
        }

        fn subset(addresses: &[&str], policy: PortPolicies) -> Subset {
            Subset {
                endpoints: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                dns_endpoints: Default::default(),
                policy,
            }
        }

        fn forward_everything_to(subset: &str) -> HttpRoute {
            HttpRoute {
                name: format!("to-{subset}"),
                matches: Vec::new(),
                action: HttpAction::Forward(Forward {
                    destinations: vec![to(WEB, 9002, Some(subset), 1)],
                    ..Default::default()
                }),
                fault: None,
                headers: Default::default(),
            }
        }

        /// (zone, priority, weight, addresses) of each locality.
        fn localities(
            assignment: &ClusterLoadAssignment,
        ) -> Vec<(String, u32, Option<u32>, Vec<String>)> {
            assignment
                .endpoints
                .iter()
                .map(|locality| {
                    let addresses = locality
                        .lb_endpoints
                        .iter()
                        .map(|lb| ip(lb).to_string())
                        .collect();
                    (
                        locality.locality.as_ref().unwrap().zone.clone(),
                        locality.priority,
                        locality.load_balancing_weight.map(|w| w.value),
                        addresses,
                    )
                })
                .collect()
        }

        fn http_filter_names(resources: &Resources, listener: &str) -> Vec<String> {
            let listener: Listener = resource(resources, ResourceType::Listener, listener);
            let hcm: HttpConnectionManager = network_filter(&listener);
            hcm.http_filters.into_iter().map(|f| f.name).collect()
        }

        #[test]
        fn rules_that_say_nothing_change_no_byte() {
            let without = build(&catalog());
            let with = built(&traffic([
                (WEB, ServiceRules::default()),
                (
                    "ghost.banana.sample.boshy",
                    ServiceRules {
                        http_routes: BTreeMap::from([(9002, vec![forward_everything_to("v1")])]),
                        subsets: BTreeMap::from([(
                            "v1".to_string(),
                            subset(&["10.0.0.1"], PortPolicies::default()),
                        )]),
                        ..Default::default()
                    },
                ),
            ]));
            for t in ResourceType::PUSH_ORDER {
                assert_eq!(with.of_type(t), without.of_type(t), "{t:?}");
            }
            assert_ne!(
                with.version, without.version,
                "other inputs, another version"
            );
            assert_eq!(
                built(&TrafficRules::default()).version,
                42,
                "without rules, the catalog's version"
            );
        }

        #[test]
        fn subsets_are_clusters_of_their_own_with_their_endpoints_and_policies() {
            let pool = ConnectionPool {
                max_connections: Some(10),
                connect_timeout: Some(StdDuration::from_millis(250)),
                max_requests_per_connection: Some(1),
                ..Default::default()
            };
            let v2_on_9002 = TrafficPolicy {
                outlier_detection: Some(traffic::OutlierDetection {
                    consecutive_5xx: Some(0),
                    consecutive_gateway_errors: Some(7),
                    base_ejection_time: Some(StdDuration::from_secs(60)),
                    max_ejection_percent: Some(150),
                    ..Default::default()
                }),
                load_balancer: Some(LoadBalancer::RingHash(HashKey::Header("x-user".into()))),
                ..Default::default()
            };
            let rules = ServiceRules {
                policy: PortPolicies {
                    all_ports: TrafficPolicy {
                        load_balancer: Some(LoadBalancer::LeastRequest),
                        connection_pool: Some(pool),
                        ..Default::default()
                    },
                    by_port: BTreeMap::new(),
                },
                subsets: BTreeMap::from([
                    (
                        "v1".to_string(),
                        subset(&["10.0.0.1", "10.0.0.3"], PortPolicies::default()),
                    ),
                    (
                        "v2".to_string(),
                        subset(
                            &["10.0.0.2", "10.0.0.4", "10.9.9.9"],
                            PortPolicies {
                                all_ports: TrafficPolicy::default(),
                                by_port: BTreeMap::from([(9002, v2_on_9002)]),
                            },
                        ),
                    ),
                ]),
                ..Default::default()
            };
            let resources = built(&traffic([(WEB, rules)]));
            let web_clusters = [
                "outbound|9000|v1|web.banana.sample.boshy",
                "outbound|9000|v2|web.banana.sample.boshy",
                "outbound|9000||web.banana.sample.boshy",
                "outbound|9002|v1|web.banana.sample.boshy",
                "outbound|9002|v2|web.banana.sample.boshy",
                "outbound|9002||web.banana.sample.boshy",
            ];
            let mut expected = vec!["outbound|5432||db.banana.sample.boshy"];
            expected.extend(web_clusters);
            assert_eq!(names(&resources, ResourceType::Cluster), expected);
            assert_eq!(names(&resources, ResourceType::Endpoint), expected);

            let members = |name: &str| -> Vec<String> {
                let assignment: ClusterLoadAssignment =
                    resource(&resources, ResourceType::Endpoint, name);
                assert_eq!(assignment.cluster_name, name);
                localities(&assignment)
                    .into_iter()
                    .flat_map(|(.., a)| a)
                    .collect()
            };
            assert_eq!(
                members("outbound|9002|v1|web.banana.sample.boshy"),
                ["10.0.0.1"],
                "the unhealthy 10.0.0.3 stays out"
            );
            assert_eq!(
                members("outbound|9000|v2|web.banana.sample.boshy"),
                ["10.0.0.4", "10.0.0.2"],
                "10.9.9.9 is not the service's"
            );
            assert_eq!(
                members("outbound|9002||web.banana.sample.boshy"),
                ["10.0.0.4", "10.0.0.1", "10.0.0.2"]
            );

            let cluster =
                |name: &str| -> Cluster { resource(&resources, ResourceType::Cluster, name) };
            for name in web_clusters {
                let c = cluster(name);
                assert_eq!(
                    c.connect_timeout,
                    Some(Duration {
                        seconds: 0,
                        nanos: 250_000_000
                    }),
                    "{name}"
                );
                let thresholds = &c
                    .circuit_breakers
                    .as_ref()
                    .expect("circuit breakers")
                    .thresholds;
                assert_eq!(
                    thresholds[0].max_connections,
                    Some(UInt32Value { value: 10 }),
                    "{name}"
                );
                assert_eq!(thresholds[0].max_requests, None, "Envoy's default");
                let options = HttpProtocolOptions::decode(
                    c.typed_extension_protocol_options
                        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                        .value
                        .as_slice(),
                )
                .unwrap();
                assert_eq!(
                    options
                        .common_http_protocol_options
                        .unwrap()
                        .max_requests_per_connection,
                    Some(UInt32Value { value: 1 })
                );
                let Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    explicit,
                )) = options.upstream_protocol_options
                else {
                    panic!("explicit upstream protocol")
                };
                assert_eq!(
                    matches!(
                        explicit.protocol_config,
                        Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_))
                    ),
                    name.starts_with("outbound|9000|"),
                    "{name}: HTTP/2 for grpc, HTTP/1.1 said explicitly for http"
                );
            }
            let lb = |name: &str| cluster(name).lb_policy;
            assert_eq!(
                lb("outbound|9002||web.banana.sample.boshy"),
                cluster::LbPolicy::LeastRequest as i32
            );
            assert_eq!(
                lb("outbound|9000|v2|web.banana.sample.boshy"),
                cluster::LbPolicy::LeastRequest as i32
            );
            assert_eq!(
                lb("outbound|9002|v2|web.banana.sample.boshy"),
                cluster::LbPolicy::RingHash as i32
            );
            let db = cluster("outbound|5432||db.banana.sample.boshy");
            assert_eq!(
                (db.lb_policy, db.circuit_breakers),
                (0, None),
                "another service's clusters keep the defaults"
            );

            let mesh = outlier_detection(None);
            assert_eq!(
                cluster("outbound|9002|v1|web.banana.sample.boshy").outlier_detection,
                Some(mesh.clone())
            );
            let changed = cluster("outbound|9002|v2|web.banana.sample.boshy")
                .outlier_detection
                .unwrap();
            assert_eq!(
                (changed.consecutive_5xx, changed.enforcing_consecutive_5xx),
                (mesh.consecutive_5xx, Some(UInt32Value { value: 0 })),
                "0 turns 5xx detection off"
            );
            assert_eq!(
                changed.consecutive_gateway_failure,
                Some(UInt32Value { value: 7 })
            );
            assert_eq!(changed.base_ejection_time, Some(seconds(60)));
            assert_eq!(
                changed.max_ejection_time,
                Some(seconds(60)),
                "never shorter than the first"
            );
            assert_eq!(
                changed.max_ejection_percent,
                Some(UInt32Value { value: 100 })
            );
            assert_eq!(
                changed.consecutive_local_origin_failure, mesh.consecutive_local_origin_failure,
                "refused connections still eject"
            );
            let tcp = cluster("outbound|5432||db.banana.sample.boshy");
            assert!(tcp.typed_extension_protocol_options.is_empty());
        }

        #[test]
        fn locality_preferences_weigh_or_order_the_azs() {
            let locality = |locality| PortPolicies {
                all_ports: TrafficPolicy {
                    locality: Some(locality),
                    ..Default::default()
                },
                by_port: BTreeMap::new(),
            };
            let rules = ServiceRules {
                policy: locality(LocalityLoadBalancing::Distribute(BTreeMap::from([
                    ("z1".to_string(), 80),
                    ("z2".to_string(), 20),
                    ("z3".to_string(), 0),
                ]))),
                subsets: BTreeMap::from([(
                    "all".to_string(),
                    subset(
                        &["10.0.0.1", "10.0.0.2", "10.0.0.4"],
                        locality(LocalityLoadBalancing::Failover(vec![
                            "z9".to_string(),
                            "z2".to_string(),
                            "z1".to_string(),
                            "z2".to_string(),
                        ])),
                    ),
                )]),
                ..Default::default()
            };
            let resources = built(&traffic([(WEB, rules)]));
            let assignment = |name| -> ClusterLoadAssignment {
                resource(&resources, ResourceType::Endpoint, name)
            };
            let summary = |name| -> Vec<(String, u32, Option<u32>)> {
                localities(&assignment(name))
                    .into_iter()
                    .map(|(zone, priority, weight, _)| (zone, priority, weight))
                    .collect()
            };
            assert_eq!(
                summary("outbound|9002||web.banana.sample.boshy"),
                [
                    ("".into(), 0, None),
                    ("z1".into(), 0, Some(80)),
                    ("z2".into(), 0, Some(20))
                ],
                "an AZ without a weight gets no traffic"
            );
            let weighted: Cluster = resource(
                &resources,
                ResourceType::Cluster,
                "outbound|9002||web.banana.sample.boshy",
            );
            assert!(matches!(
                weighted.common_lb_config.unwrap().locality_config_specifier,
                Some(
                    cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_)
                )
            ));
            assert_eq!(
                summary("outbound|9002|all|web.banana.sample.boshy"),
                [
                    ("".into(), 2, None),
                    ("z1".into(), 1, None),
                    ("z2".into(), 0, None)
                ],
                "listed AZs in order without gaps, the rest last"
            );
            let failover: Cluster = resource(
                &resources,
                ResourceType::Cluster,
                "outbound|9002|all|web.banana.sample.boshy",
            );
            assert_eq!(
                failover.common_lb_config.unwrap().locality_config_specifier,
                None
            );
        }

        #[test]
        fn a_port_with_routes_gets_them_before_the_default_route_and_the_fault_filter() {
            let ring = TrafficPolicy {
                load_balancer: Some(LoadBalancer::RingHash(HashKey::Header("x-user".into()))),
                ..Default::default()
            };
            let rules = ServiceRules {
                http_routes: BTreeMap::from([(9002, vec![forward_everything_to("v1")])]),
                subsets: BTreeMap::from([(
                    "v1".to_string(),
                    subset(&["10.0.0.1"], PortPolicies::default()),
                )]),
                policy: PortPolicies {
                    all_ports: ring,
                    by_port: BTreeMap::new(),
                },
                ..Default::default()
            };
            let resources = built(&traffic([(WEB, rules)]));
            assert_eq!(
                http_filter_names(&resources, "169.254.255.3_9002"),
                ["envoy.filters.http.fault", "envoy.filters.http.router"]
            );
            assert_eq!(
                resources.get(ResourceType::Listener, "169.254.255.3_9002"),
                build(&catalog()).get(ResourceType::Listener, "169.254.255.3_9002"),
                "routes leave the listener as it is without rules: a changed listener would \
                 keep its open connections on its old filters"
            );
            let config: RouteConfiguration = resource(
                &resources,
                ResourceType::Route,
                "outbound|9002||web.banana.sample.boshy",
            );
            let routes = &config.virtual_hosts[0].routes;
            let targets: Vec<(&str, &route_action::ClusterSpecifier, usize)> = routes
                .iter()
                .map(|r| {
                    let Some(route::Action::Route(action)) = &r.action else {
                        panic!("route")
                    };
                    (
                        r.name.as_str(),
                        action.cluster_specifier.as_ref().unwrap(),
                        action.hash_policy.len(),
                    )
                })
                .collect();
            let cluster = |name: &str| route_action::ClusterSpecifier::Cluster(name.into());
            assert_eq!(
                targets,
                [
                    (
                        "to-v1",
                        &cluster("outbound|9002|v1|web.banana.sample.boshy"),
                        1
                    ),
                    ("", &cluster("outbound|9002||web.banana.sample.boshy"), 1),
                ],
                "the model's route, then the default; both hash as the ring hash cluster wants"
            );
            let grpc: RouteConfiguration = resource(
                &resources,
                ResourceType::Route,
                "outbound|9000||web.banana.sample.boshy",
            );
            assert_eq!(grpc.virtual_hosts[0].routes.len(), 1);
        }

        #[test]
        fn routes_limited_by_source_labels_vary_by_the_selectors_a_client_satisfies() {
            let limited_to = |app: &str| HttpRoute {
                name: format!("from-{app}"),
                matches: vec![HttpMatch {
                    source_labels: testing::labels([("app", app)]),
                    ..Default::default()
                }],
                ..forward_everything_to("v1")
            };
            let rules = ServiceRules {
                http_routes: BTreeMap::from([(
                    9002,
                    vec![
                        limited_to("y"),
                        limited_to("x"),
                        forward_everything_to("v1"),
                    ],
                )]),
                subsets: BTreeMap::from([(
                    "v1".to_string(),
                    subset(&["10.0.0.1"], PortPolicies::default()),
                )]),
                ..Default::default()
            };
            let resources = built(&traffic([(WEB, rules)]));
            assert_eq!(
                resources.source_selectors,
                [
                    testing::labels([("app", "x")]),
                    testing::labels([("app", "y")])
                ]
            );
            let name = "outbound|9002||web.banana.sample.boshy";
            let route_names = |class: Vec<usize>| -> Vec<String> {
                let resource = resources
                    .get_for(ResourceType::Route, name, &SourceClass(class))
                    .expect("the route configuration");
                assert_eq!(resource.name, name, "every variant has the one name");
                let config: RouteConfiguration = decode(resource);
                config.virtual_hosts[0]
                    .routes
                    .iter()
                    .map(|r| r.name.clone())
                    .collect()
            };
            assert_eq!(route_names(vec![]), ["to-v1", ""]);
            assert_eq!(
                resources.get_for(ResourceType::Route, name, &SourceClass::default()),
                resources.get(ResourceType::Route, name),
                "a client that satisfies no selector gets the shared configuration"
            );
            assert_eq!(route_names(vec![0]), ["from-x", "to-v1", ""]);
            assert_eq!(route_names(vec![1]), ["from-y", "to-v1", ""]);
            assert_eq!(route_names(vec![0, 1]), ["from-y", "from-x", "to-v1", ""]);
            let grpc = "outbound|9000||web.banana.sample.boshy";
            assert_eq!(
                resources.get_for(ResourceType::Route, grpc, &SourceClass(vec![0, 1])),
                resources.get(ResourceType::Route, grpc),
                "a port whose routes use no selector has one configuration"
            );
            assert_eq!(
                resources.get_for(ResourceType::Cluster, name, &SourceClass(vec![0])),
                resources.get(ResourceType::Cluster, name),
                "only route configurations vary"
            );
        }

        fn ip(lb: &LbEndpoint) -> IpAddr {
            host(lb).parse().unwrap()
        }

        /// The address (an IP, or a name to resolve) of an endpoint.
        fn host(lb: &LbEndpoint) -> String {
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                panic!("endpoint")
            };
            let Some(address::Address::SocketAddress(s)) = &e.address.as_ref().unwrap().address
            else {
                panic!("socket address")
            };
            s.address.clone()
        }

        /// The figures behind choosing subset clusters over Envoy's subset load balancer
        /// (docs/ARCHITECTURE.md, "The traffic model"): 1,000 services of six instances, two
        /// per AZ, each with three subsets of two instances, as `build` makes them and as the
        /// subset load balancer would have them (one cluster per service with
        /// `lb_subset_config`, each endpoint's subset in its metadata). Prints them:
        /// `cargo test --lib subset_clusters_against -- --nocapture`.
        #[test]
        fn subset_clusters_against_envoys_subset_load_balancer_at_1000_services() {
            const SERVICES: u32 = 1000;
            const SUBSETS: [&str; 3] = ["v1", "v2", "v3"];
            let estate = |first_healthy: bool| {
                testing::catalog(
                    1,
                    (0..SERVICES).map(|i| {
                        (0..6u32).fold(
                            testing::service("load", "group", &format!("svc{i:04}"))
                                .vip(Ipv4Addr::from(u32::from(Ipv4Addr::new(169, 254, 1, 0)) + i))
                                .port("http", 8080, Protocol::Http),
                            |service, n| {
                                let address = Ipv4Addr::from(
                                    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 8 + n,
                                );
                                service.endpoint(Endpoint {
                                    az: Some(format!("z{}", n % 3 + 1)),
                                    healthy: first_healthy || i > 0 || n > 0,
                                    ..testing::endpoint(&address.to_string())
                                })
                            },
                        )
                    }),
                )
            };
            let catalog = estate(true);
            let subset_of = |n: usize| SUBSETS[n / 2];
            let rules = TrafficRules {
                services: catalog
                    .services
                    .iter()
                    .map(|service| {
                        let subsets = SUBSETS
                            .iter()
                            .map(|name| {
                                let members = (0..6).filter(|n| subset_of(*n) == *name);
                                let subset = Subset {
                                    endpoints: members
                                        .map(|n| service.endpoints[n].address)
                                        .collect(),
                                    dns_endpoints: Default::default(),
                                    policy: PortPolicies::default(),
                                };
                                (name.to_string(), subset)
                            })
                            .collect();
                        (
                            service.hostname.clone(),
                            ServiceRules {
                                subsets,
                                ..Default::default()
                            },
                        )
                    })
                    .collect(),
                scope_pins: Vec::new(),
                security: Default::default(),
            };
            let bytes = |resources: &[NamedResource]| {
                resources
                    .iter()
                    .map(|r| r.resource.value.len())
                    .sum::<usize>()
            };

            // Subset clusters, as built.
            let built = build(Inputs {
                catalog: &catalog,
                traffic: &rules,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            });
            let clusters = built.of_type(ResourceType::Cluster);
            let assignments = built.of_type(ResourceType::Endpoint);
            // The first instance of svc0000 (in v1) fails: what a delta stream sends.
            let failed = build(Inputs {
                catalog: &estate(false),
                traffic: &rules,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            });
            let pushed: Vec<&NamedResource> = failed
                .of_type(ResourceType::Endpoint)
                .iter()
                .filter(|r| {
                    built
                        .get(ResourceType::Endpoint, &r.name)
                        .map(|b| &b.version)
                        != Some(&r.version)
                })
                .collect();
            let pushed_bytes: usize = pushed.iter().map(|r| r.resource.value.len()).sum();

            // The subset load balancer.
            let subset_metadata = |name: &str| envoy_types::pb::envoy::config::core::v3::Metadata {
                filter_metadata: std::collections::HashMap::from([(
                    "envoy.lb".to_string(),
                    envoy_types::pb::google::protobuf::Struct {
                        fields: std::collections::HashMap::from([(
                            "subset".to_string(),
                            envoy_types::pb::google::protobuf::Value {
                                kind: Some(
                                    envoy_types::pb::google::protobuf::value::Kind::StringValue(
                                        name.to_string(),
                                    ),
                                ),
                            },
                        )]),
                    },
                )]),
                ..Default::default()
            };
            let one_cluster_per_service =
                |catalog: &Catalog| -> Vec<(Cluster, ClusterLoadAssignment)> {
                    catalog
                        .services
                        .iter()
                        .map(|service| {
                            let port = &service.ports[0];
                            let name = cluster_name(&service.hostname, port.number);
                            let (cluster, assignment) = cluster_with_endpoints(
                                &name,
                                service,
                                port,
                                &TrafficPolicy::default(),
                                None,
                                None,
                            );
                            let mut cluster = Cluster::decode(cluster.resource.value.as_slice())
                                .expect("a cluster");
                            let mut assignment = ClusterLoadAssignment::decode(
                                assignment.expect("EDS").resource.value.as_slice(),
                            )
                            .expect("a load assignment");
                            cluster.lb_subset_config = Some(cluster::LbSubsetConfig {
                                subset_selectors: vec![
                                    cluster::lb_subset_config::LbSubsetSelector {
                                        keys: vec!["subset".to_string()],
                                        ..Default::default()
                                    },
                                ],
                                ..Default::default()
                            });
                            for lb in assignment
                                .endpoints
                                .iter_mut()
                                .flat_map(|l| &mut l.lb_endpoints)
                            {
                                let n = service
                                    .endpoints
                                    .iter()
                                    .position(|e| e.address == ip(lb))
                                    .unwrap();
                                lb.metadata = Some(subset_metadata(subset_of(n)));
                            }
                            (cluster, assignment)
                        })
                        .collect()
                };
            let alternative = one_cluster_per_service(&catalog);
            let alternative_cluster_bytes: usize =
                alternative.iter().map(|(c, _)| c.encoded_len()).sum();
            let alternative_assignment_bytes: usize =
                alternative.iter().map(|(_, a)| a.encoded_len()).sum();
            let alternative_pushed = one_cluster_per_service(&estate(false))[0].1.encoded_len();

            println!("1000 services × 6 instances × 3 subsets of 2 | subset clusters | subset load balancer");
            println!(
                "clusters | {} ({} kB) | {} ({} kB)",
                clusters.len(),
                bytes(clusters) / 1000,
                alternative.len(),
                alternative_cluster_bytes / 1000
            );
            println!(
                "load assignments | {} ({} kB) | {} ({} kB)",
                assignments.len(),
                bytes(assignments) / 1000,
                alternative.len(),
                alternative_assignment_bytes / 1000
            );
            println!(
                "an instance fails: EDS pushed | {} ({} B) | 1 ({} B)",
                pushed.len(),
                pushed_bytes,
                alternative_pushed
            );

            assert_eq!(clusters.len(), 4000, "the service's and its three subsets'");
            assert_eq!(assignments.len(), 4000);
            assert_eq!(
                pushed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                [
                    "outbound|8080|v1|svc0000.group.load.boshy",
                    "outbound|8080||svc0000.group.load.boshy"
                ]
            );
        }

        #[test]
        fn tcp_routes_split_connections_by_weight() {
            let db = "db.banana.sample.boshy";
            let resources = built(&traffic([(
                db,
                ServiceRules {
                    tcp_routes: BTreeMap::from([(
                        5432,
                        vec![
                            to(db, 5432, Some("primary"), 9),
                            to(db, 5432, Some("replica"), 1),
                        ],
                    )]),
                    ..Default::default()
                },
            )]));
            let listener: Listener =
                resource(&resources, ResourceType::Listener, "169.254.255.2_5432");
            let tcp: TcpProxy = network_filter(&listener);
            let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(split)) = tcp.cluster_specifier
            else {
                panic!("weighted clusters")
            };
            let weights: BTreeSet<(String, u32)> = split
                .clusters
                .into_iter()
                .map(|c| (c.name, c.weight))
                .collect();
            assert_eq!(
                weights,
                BTreeSet::from([
                    (
                        "outbound|5432|primary|db.banana.sample.boshy".to_string(),
                        9
                    ),
                    (
                        "outbound|5432|replica|db.banana.sample.boshy".to_string(),
                        1
                    )
                ])
            );
        }

        #[test]
        fn services_resolved_through_dns_are_dns_clusters_that_carry_their_names() {
            use crate::catalog::model::DnsEndpoint;
            use crate::catalog::testing::{dns_endpoint, labels};

            let db = testing::service("external", "db", "postgres")
                .port("tcp-postgres", 5432, Protocol::Tcp)
                .dns(
                    DnsResolution::Dns,
                    [
                        DnsEndpoint {
                            az: Some("z1".into()),
                            labels: labels([("role", "primary")]),
                            ..dns_endpoint("primary.db.example.com")
                        },
                        dns_endpoint("replica.db.example.com"),
                        dns_endpoint("192.0.2.7"),
                    ],
                )
                .build();
            let cache = testing::service("external", "cache", "redis")
                .vip([169, 254, 255, 9])
                .port("tcp-redis", 6379, Protocol::Tcp)
                .dns(
                    DnsResolution::DnsRoundRobin,
                    [dns_endpoint("cache.example.com")],
                )
                .build();
            let (db_host, cache_host) = (db.hostname.clone(), cache.hostname.clone());
            let rules = ServiceRules {
                policy: PortPolicies {
                    all_ports: TrafficPolicy {
                        load_balancer: Some(LoadBalancer::LeastRequest),
                        outlier_detection: Some(traffic::OutlierDetection {
                            consecutive_gateway_errors: Some(9),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    by_port: BTreeMap::new(),
                },
                subsets: BTreeMap::from([(
                    "primary".to_string(),
                    Subset {
                        dns_endpoints: BTreeSet::from(["primary.db.example.com".to_string()]),
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            };
            let catalog = testing::catalog(7, [db, cache]);
            let traffic = TrafficRules {
                services: BTreeMap::from([(db_host.clone(), rules)]),
                scope_pins: Vec::new(),
                security: Default::default(),
            };
            let resources = build(Inputs {
                catalog: &catalog,
                traffic: &traffic,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            });
            let whole = cluster_name(&db_host, 5432);
            let primary = subset_cluster_name(&db_host, 5432, "primary");
            let logical = cluster_name(&cache_host, 6379);
            assert_eq!(
                names(&resources, ResourceType::Cluster),
                [&primary, &whole, &logical]
            );
            assert!(
                names(&resources, ResourceType::Endpoint).is_empty(),
                "a DNS cluster takes no EDS"
            );

            let dns_cluster = |name: &str| -> (Cluster, DnsCluster, Vec<(String, String)>) {
                let cluster: Cluster = resource(&resources, ResourceType::Cluster, name);
                let Some(cluster::ClusterDiscoveryType::ClusterType(custom)) =
                    &cluster.cluster_discovery_type
                else {
                    panic!("{name}: {:?}", cluster.cluster_discovery_type)
                };
                assert_eq!(custom.name, "envoy.cluster.dns");
                let any = custom.typed_config.as_ref().expect("typed config");
                assert_eq!(any.type_url, <DnsCluster as prost::Name>::type_url());
                let dns = DnsCluster::decode(any.value.as_slice()).unwrap();
                let assignment = cluster.load_assignment.as_ref().expect("inline endpoints");
                assert_eq!(assignment.cluster_name, name);
                let hosts = assignment
                    .endpoints
                    .iter()
                    .flat_map(|locality| {
                        let zone = locality.locality.as_ref().unwrap().zone.clone();
                        locality
                            .lb_endpoints
                            .iter()
                            .map(move |lb| (zone.clone(), host(lb)))
                    })
                    .collect();
                (cluster, dns, hosts)
            };

            let (cluster, dns, hosts) = dns_cluster(&whole);
            assert!(!dns.all_addresses_in_single_endpoint, "strict DNS");
            assert_eq!(dns.dns_lookup_family, DnsLookupFamily::V4Only as i32);
            assert!(dns.respect_dns_ttl);
            assert_eq!(dns.dns_refresh_rate, Some(seconds(5)));
            let failure = dns.dns_failure_refresh_rate.unwrap();
            assert_eq!(failure.base_interval, Some(seconds(1)));
            assert_eq!(failure.max_interval, Some(seconds(5)));
            assert!(dns.typed_dns_resolver_config.is_none(), "the VM's resolver");
            assert_eq!(
                hosts,
                [
                    ("".to_string(), "replica.db.example.com".to_string()),
                    ("".to_string(), "192.0.2.7".to_string()),
                    ("z1".to_string(), "primary.db.example.com".to_string()),
                ]
            );
            let port = |cluster: &Cluster| {
                let lb = &cluster.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
                let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                    panic!("endpoint")
                };
                let Some(address::Address::SocketAddress(s)) = &e.address.as_ref().unwrap().address
                else {
                    panic!("socket address")
                };
                s.port_specifier.clone()
            };
            assert_eq!(
                port(&cluster),
                Some(socket_address::PortSpecifier::PortValue(5432))
            );
            assert!(cluster.eds_cluster_config.is_none());
            assert_eq!(cluster.lb_policy, cluster::LbPolicy::LeastRequest as i32);
            assert_eq!(
                cluster
                    .outlier_detection
                    .unwrap()
                    .consecutive_gateway_failure,
                Some(UInt32Value { value: 9 }),
                "the DestinationRule's policy, as for an EDS cluster"
            );

            let (subset, _, hosts) = dns_cluster(&primary);
            assert_eq!(
                hosts,
                [("z1".to_string(), "primary.db.example.com".to_string())]
            );
            assert_eq!(subset.lb_policy, cluster::LbPolicy::LeastRequest as i32);

            let (_, dns, hosts) = dns_cluster(&logical);
            assert!(dns.all_addresses_in_single_endpoint, "logical DNS");
            assert_eq!(hosts, [("".to_string(), "cache.example.com".to_string())]);
            let listener: Listener = resource(
                &resources,
                ResourceType::Listener,
                &listener_name(Ipv4Addr::new(169, 254, 255, 9), 6379),
            );
            let proxy: TcpProxy = network_filter(&listener);
            assert_eq!(
                proxy.cluster_specifier,
                Some(tcp_proxy::ClusterSpecifier::Cluster(logical.clone())),
                "the service's VIP goes to its DNS cluster like to any other"
            );
        }
    }

    mod with_identity {
        use std::collections::BTreeMap;

        use super::*;
        use crate::identity::spiffe::TrustDomain;
        use crate::traffic::security::WorkloadSecurity;
        use crate::traffic::{ServiceRules, Subset};
        use crate::xds::mtls::tests::tls_context;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            common_tls_context, UpstreamTlsContext,
        };
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;

        const WEB_HTTP: &str = "outbound|9002||web.banana.sample.boshy";
        const WEB_GRPC: &str = "outbound|9000||web.banana.sample.boshy";

        /// The test catalog, a ServiceEntry's service, and a group whose deployment name
        /// cannot be a SPIFFE ID path segment.
        fn mesh() -> Catalog {
            let mut services = catalog().services;
            let mut entry = testing::service("sample", "entries", "api")
                .vip(Ipv4Addr::new(169, 254, 255, 9))
                .port("https", 443, Protocol::Tcp)
                .build();
            entry.service_entry = Some("outside".into());
            entry.hostname = "api.example.com".into();
            services.push(entry);
            services.push(
                testing::service("odd deployment", "g", "x")
                    .vip(Ipv4Addr::new(169, 254, 255, 10))
                    .port("http", 80, Protocol::Http)
                    .build(),
            );
            testing::catalog(42, services)
        }

        /// banana's gRPC port DISABLE, a subset of web.
        fn traffic() -> TrafficRules {
            let banana = WorkloadKey {
                deployment: "sample".into(),
                instance_group: "banana".into(),
            };
            let mut rules = TrafficRules::default();
            rules.security.workloads.insert(
                banana,
                WorkloadSecurity {
                    port_mtls: BTreeMap::from([(9000, MtlsMode::Disable)]),
                    ..Default::default()
                },
            );
            rules.services.insert(
                "web.banana.sample.boshy".into(),
                ServiceRules {
                    subsets: BTreeMap::from([("v1".to_string(), Subset::default())]),
                    ..Default::default()
                },
            );
            rules
        }

        fn built(identity: Option<&TrustDomain>) -> Resources {
            build(Inputs {
                catalog: &mesh(),
                traffic: &traffic(),
                identity,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            })
        }

        /// The exact SPIFFE ID a cluster's TLS context wants, `None` without TLS.
        fn server_id(resources: &Resources, name: &str) -> Option<String> {
            let cluster: Cluster = resource(resources, ResourceType::Cluster, name);
            let tls: UpstreamTlsContext = tls_context(cluster.transport_socket.as_ref()?);
            let Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                combined,
            )) = tls.common_tls_context?.validation_context_type
            else {
                panic!("{name}: a combined validation context")
            };
            let san = &combined
                .default_validation_context?
                .match_typed_subject_alt_names[0];
            match &san.matcher.as_ref()?.match_pattern {
                Some(string_matcher::MatchPattern::Exact(id)) => Some(id.clone()),
                other => panic!("{name}: an exact SAN, not {other:?}"),
            }
        }

        #[test]
        fn each_group_gets_its_inbound_listener_only_its_own_envoys_get() {
            let trust_domain = TrustDomain::default();
            let resources = built(Some(&trust_domain));
            let inbound: Vec<&str> = names(&resources, ResourceType::Listener)
                .into_iter()
                .filter(|name| name.starts_with("inbound|"))
                .collect();
            assert_eq!(
                inbound,
                ["inbound|odd deployment|g", "inbound|sample|banana"]
            );
            let banana = WorkloadKey {
                deployment: "sample".into(),
                instance_group: "banana".into(),
            };
            let cherry = WorkloadKey {
                instance_group: "cherry".into(),
                ..banana.clone()
            };
            let listener = ResourceType::Listener;
            assert_eq!(
                resources.owner(listener, "inbound|sample|banana"),
                Some(&banana)
            );
            assert!(resources.is_for(Some(&banana), listener, "inbound|sample|banana"));
            assert!(!resources.is_for(Some(&cherry), listener, "inbound|sample|banana"));
            assert!(!resources.is_for(None, listener, "inbound|sample|banana"));
            assert!(resources.is_for(None, listener, "outbound"));
            assert!(resources.is_for(Some(&cherry), ResourceType::Cluster, WEB_HTTP));
            for cluster in [
                "InboundPassthroughCluster",
                "InboundPassthroughClusterHttp2",
            ] {
                assert!(resources.get(ResourceType::Cluster, cluster).is_some());
            }
            assert_ne!(
                resources.version,
                built(None).version,
                "identities change what is built"
            );
        }

        #[test]
        fn clients_want_the_servers_identity_except_on_disable_ports_and_outside_the_mesh() {
            let trust_domain = TrustDomain::default();
            let resources = built(Some(&trust_domain));
            let banana = "spiffe://boshy/deployment/sample/instance_group/banana";
            assert_eq!(server_id(&resources, WEB_HTTP).as_deref(), Some(banana));
            assert_eq!(
                server_id(&resources, "outbound|9002|v1|web.banana.sample.boshy").as_deref(),
                Some(banana),
                "subsets too"
            );
            assert_eq!(
                server_id(&resources, "outbound|5432||db.banana.sample.boshy").as_deref(),
                Some(banana)
            );
            assert_eq!(server_id(&resources, WEB_GRPC), None, "DISABLE");
            assert_eq!(
                server_id(&resources, "outbound|443||api.example.com"),
                None,
                "a ServiceEntry's endpoints are outside the mesh"
            );
        }

        #[test]
        fn a_workload_groups_vms_get_its_inbound_listener_and_are_called_as_its_identity() {
            let trust_domain = TrustDomain::default();
            let mut catalog = mesh();
            let mut group = testing::service("", "", "")
                .vip(Ipv4Addr::new(169, 254, 255, 11))
                .port("tcp-amqp", 5672, Protocol::Tcp)
                .build();
            group.hostname = "rabbitmq.rabbitmq.legacy.boshy".into();
            group.workload_group = Some("legacy/rabbitmq".into());
            catalog.services.push(group);
            let traffic = traffic();
            let inputs = |identity| Inputs {
                catalog: &catalog,
                traffic: &traffic,
                identity,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            };
            let resources = build(inputs(Some(&trust_domain)));
            // Its registered VMs' Envoys are nodes of "deployment" legacy, "instance group"
            // rabbitmq (`workloads::members`), as their SPIFFE IDs.
            let vms = WorkloadKey {
                deployment: "legacy".into(),
                instance_group: "rabbitmq".into(),
            };
            assert_eq!(
                resources.owner(ResourceType::Listener, "inbound|legacy|rabbitmq"),
                Some(&vms)
            );
            assert_eq!(
                server_id(&resources, "outbound|5672||rabbitmq.rabbitmq.legacy.boshy").as_deref(),
                Some("spiffe://boshy/deployment/legacy/instance_group/rabbitmq")
            );
            let plain = build(inputs(None));
            assert!(!names(&plain, ResourceType::Listener).contains(&"inbound|legacy|rabbitmq"));
        }

        #[test]
        fn an_endpoint_its_agent_calls_plaintext_is_called_in_plaintext_the_others_in_mutual_tls() {
            let trust_domain = TrustDomain::default();
            let mut catalog = mesh();
            let web = catalog
                .services
                .iter_mut()
                .find(|s| s.hostname == "web.banana.sample.boshy")
                .unwrap();
            web.endpoints[0].plaintext = true;
            let plaintext_address = socket_address(web.endpoints[0].address, 9002);
            let resources = build(Inputs {
                catalog: &catalog,
                traffic: &traffic(),
                identity: Some(&trust_domain),
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            });
            let cluster: Cluster = resource(&resources, ResourceType::Cluster, WEB_HTTP);
            let [socket_match] = &cluster.transport_socket_matches[..] else {
                panic!("one socket match: {:?}", cluster.transport_socket_matches)
            };
            assert_eq!(
                socket_match.r#match,
                mtls::plaintext_endpoint_metadata()
                    .filter_metadata
                    .get("envoy.transport_socket_match")
                    .cloned()
            );
            assert_eq!(
                socket_match.transport_socket.as_ref().unwrap().name,
                "envoy.transport_sockets.raw_buffer"
            );
            // The cluster's own socket, for every endpoint without the label, is mutual TLS.
            assert!(server_id(&resources, WEB_HTTP).is_some());
            let assignment: ClusterLoadAssignment =
                resource(&resources, ResourceType::Endpoint, WEB_HTTP);
            let (labelled, others): (Vec<&LbEndpoint>, Vec<&LbEndpoint>) = assignment
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .partition(|e| e.metadata == Some(mtls::plaintext_endpoint_metadata()));
            let [labelled] = labelled[..] else {
                panic!("one labelled endpoint: {labelled:?}")
            };
            assert_eq!(
                labelled.host_identifier,
                Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(plaintext_address),
                    ..Default::default()
                }))
            );
            assert!(!others.is_empty() && others.iter().all(|e| e.metadata.is_none()));
            // A DISABLE port needs no match; without identities nothing has one.
            let grpc: Cluster = resource(&resources, ResourceType::Cluster, WEB_GRPC);
            assert!(grpc.transport_socket_matches.is_empty());
            let plain = build(&catalog);
            assert!(plain
                .of_type(ResourceType::Cluster)
                .iter()
                .all(|c| decode::<Cluster>(c).transport_socket_matches.is_empty()));
        }

        #[test]
        fn a_group_that_cannot_have_an_identity_stays_plaintext_and_says_why() {
            let trust_domain = TrustDomain::default();
            let resources = built(Some(&trust_domain));
            assert_eq!(
                server_id(&resources, "outbound|80||x.g.odddeployment.boshy"),
                None
            );
            let odd: Listener = resource(
                &resources,
                ResourceType::Listener,
                "inbound|odd deployment|g",
            );
            assert!(odd
                .filter_chains
                .iter()
                .all(|c| c.transport_socket.is_none()));
            let [warning] = resources.warnings() else {
                panic!("one warning: {:?}", resources.warnings())
            };
            assert!(
                warning.contains("\"odd deployment\"") && warning.contains("plaintext"),
                "{warning}"
            );
        }

        #[test]
        fn without_identities_nothing_changes_and_security_rules_alone_version_nothing_new() {
            let plain = build(&mesh());
            assert!(plain.warnings().is_empty());
            assert!(names(&plain, ResourceType::Listener)
                .iter()
                .all(|name| !name.starts_with("inbound|")));
            assert!(plain
                .of_type(ResourceType::Cluster)
                .iter()
                .all(|c| decode::<Cluster>(c).transport_socket.is_none()));
            let security_only = TrafficRules {
                security: traffic().security,
                ..TrafficRules::default()
            };
            let with_security = build(Inputs {
                catalog: &mesh(),
                traffic: &security_only,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            });
            assert_ne!(
                with_security.version, plain.version,
                "the security rules are part of the version"
            );
            assert_eq!(
                with_security.by_type, plain.by_type,
                "but build nothing without identities"
            );
        }
    }

    #[test]
    fn labels_change_no_resource() {
        let mut labelled = catalog();
        let endpoints = labelled.services.iter_mut().flat_map(|s| &mut s.endpoints);
        for (n, endpoint) in endpoints.enumerate() {
            let index = n.to_string();
            endpoint.labels = testing::labels([("version", "v2"), ("bosh.io/index", &index)]);
        }
        assert_eq!(build(&labelled), build(&catalog()), "byte for byte");
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::PUSH_ORDER {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
        assert_eq!(
            ResourceType::Listener.type_url(),
            <Listener as prost::Name>::type_url()
        );
        assert_eq!(
            ResourceType::Endpoint.type_url(),
            <ClusterLoadAssignment as prost::Name>::type_url()
        );
    }
}
