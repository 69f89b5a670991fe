//! What one connected Envoy is to get and what it accepted, for
//! `GET /v1/proxies/<instance>/config` and `/diff` (`boshy mesh config`, `boshy mesh diff`).
//! Pure: each stream's state (`sotw`, `delta`) says per type what it would send of a snapshot
//! (through the code that makes its responses: its subscriptions, its VM's scope, its instance
//! group's own resources) and the name and version of every resource its Envoy ACKed; this
//! file summarises the resources for people and compares the two sides.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::cache::Snapshot;
use super::proxy_status::{Nack, ProxyStatus, SnapshotRef, SyncState};
use super::resources::{NamedResource, ResourceType};

/// One type of one stream: what it would be sent of a snapshot now, and what its Envoy ACKed.
#[derive(Debug)]
pub(crate) struct TypeConfig<'s> {
    pub resource_type: ResourceType,
    /// `None` while the stream holds the type back (a delta stream waiting for its VM's
    /// scope holds back listeners and clusters: Envoy keeps what it has).
    pub wanted: Option<Vec<&'s NamedResource>>,
    /// Name → version of every resource of the type its Envoy ACKed.
    pub acked: BTreeMap<String, String>,
}

/// A stream's side of `/config` and `/diff`: each ADS variant's state, behind the stream's
/// lock, read by the API against the snapshot it serves now.
pub(crate) trait StreamConfig: Send + Sync {
    /// Per subscribed type, in push order.
    fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>>;
}

/// `GET /v1/proxies/<instance>/config`: what the pilot sends that Envoy now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProxyConfig {
    pub proxy: ProxyStatus,
    pub snapshot: SnapshotRef,
    pub types: Vec<TypeResources>,
}

/// One type of [`ProxyConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TypeResources {
    /// `cds`, `eds`, `lds` or `rds`.
    #[serde(rename = "type")]
    pub xds_type: String,
    /// Held back until the VM's scope is known: nothing of the type is sent meanwhile.
    pub held_back: bool,
    pub resources: Vec<ResourceConfig>,
}

/// One resource as the stream would send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResourceConfig {
    pub name: String,
    pub version: String,
    /// Encoded size.
    pub bytes: usize,
    pub summary: Summary,
}

/// What matters of a resource to someone reading a mesh (envoy-types has no protobuf JSON,
/// so this is the JSON too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Summary {
    Cluster {
        /// `EDS`, `STATIC`, `ORIGINAL_DST`, … or the custom type's name (`envoy.cluster.dns`).
        discovery: String,
        lb_policy: String,
        /// Whether it speaks TLS to its endpoints (a transport socket, or socket matches).
        tls: bool,
        /// Its endpoints: those of its own load assignment, else of its EDS resource in the
        /// snapshot; `None` when it has neither.
        endpoints: Option<usize>,
    },
    Endpoints {
        localities: Vec<LocalityEndpoints>,
    },
    Listener {
        /// `ip:port`.
        address: String,
        /// One line per filter chain: its match and its filters.
        filter_chains: Vec<String>,
    },
    Routes {
        virtual_hosts: Vec<VirtualHostRoutes>,
    },
    /// Bytes that are not the type's message (never from this pilot).
    Undecodable {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LocalityEndpoints {
    /// The zone (the BOSH AZ), `-` for none.
    pub zone: String,
    pub priority: u32,
    /// `ip:port HEALTH`.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VirtualHostRoutes {
    pub name: String,
    pub domains: Vec<String>,
    /// `match → action`, in order.
    pub routes: Vec<String>,
}

/// `GET /v1/proxies/<instance>/diff`: what the pilot would send now against what the Envoy
/// ACKed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProxyDiff {
    pub proxy: ProxyStatus,
    pub snapshot: SnapshotRef,
    /// Nothing to send and no NACK standing.
    pub in_sync: bool,
    pub types: Vec<TypeDiff>,
}

/// One type of [`ProxyDiff`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TypeDiff {
    #[serde(rename = "type")]
    pub xds_type: String,
    pub held_back: bool,
    /// Would be sent, not ACKed.
    pub added: Vec<Versioned>,
    /// ACKed, no longer sent.
    pub removed: Vec<Versioned>,
    /// ACKed at another version than would be sent.
    pub changed: Vec<Changed>,
    /// The NACK standing for the type (the last response was rejected), if any.
    pub nack: Option<Nack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Versioned {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Changed {
    pub name: String,
    pub acked_version: String,
    pub version: String,
}

impl TypeDiff {
    fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.nack.is_none()
    }
}

/// The config report of `proxy`'s stream against `snapshot`, of the type `only` or of every
/// type it subscribed to.
pub(crate) fn config_report(
    proxy: ProxyStatus,
    snapshot: &Snapshot,
    types: Vec<TypeConfig<'_>>,
    only: Option<ResourceType>,
) -> ProxyConfig {
    let endpoints = |cluster: &str| {
        let resource = snapshot.get(ResourceType::Endpoint, cluster)?;
        let assignment = ClusterLoadAssignment::decode(resource.resource.value.as_slice()).ok()?;
        Some(endpoint_count(&assignment))
    };
    let types = types
        .into_iter()
        .filter(|t| only.is_none_or(|only| only == t.resource_type))
        .map(|t| TypeResources {
            xds_type: t.resource_type.short_name().to_string(),
            held_back: t.wanted.is_none(),
            resources: t
                .wanted
                .unwrap_or_default()
                .into_iter()
                .map(|r| ResourceConfig {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    bytes: r.resource.value.len(),
                    summary: summarize(t.resource_type, &r.resource.value, &endpoints),
                })
                .collect(),
        })
        .collect();
    ProxyConfig {
        proxy,
        snapshot: snapshot_ref(snapshot),
        types,
    }
}

/// The diff report of `proxy`'s stream against `snapshot`.
pub(crate) fn diff_report(
    proxy: ProxyStatus,
    snapshot: &Snapshot,
    types: Vec<TypeConfig<'_>>,
) -> ProxyDiff {
    let types: Vec<TypeDiff> = types
        .into_iter()
        .map(|t| {
            let xds_type = t.resource_type.short_name();
            let nack = proxy
                .types
                .get(xds_type)
                .filter(|status| status.state == SyncState::Nack)
                .and_then(|status| status.last_nack.clone());
            let wanted: Vec<(&str, &str)> = t
                .wanted
                .iter()
                .flatten()
                .map(|r| (r.name.as_str(), r.version.as_str()))
                .collect();
            let (added, removed, changed) = match t.wanted {
                Some(_) => diff(&wanted, &t.acked),
                None => Default::default(),
            };
            TypeDiff {
                xds_type: xds_type.to_string(),
                held_back: t.wanted.is_none(),
                added,
                removed,
                changed,
                nack,
            }
        })
        .collect();
    ProxyDiff {
        in_sync: types.iter().all(TypeDiff::is_empty),
        proxy,
        snapshot: snapshot_ref(snapshot),
        types,
    }
}

fn snapshot_ref(snapshot: &Snapshot) -> SnapshotRef {
    SnapshotRef {
        seq: snapshot.seq(),
        version: snapshot.version(),
    }
}

/// What `wanted` (name → version, any order) adds, removes and changes of `acked`, each by
/// name.
fn diff(
    wanted: &[(&str, &str)],
    acked: &BTreeMap<String, String>,
) -> (Vec<Versioned>, Vec<Versioned>, Vec<Changed>) {
    let wanted: BTreeMap<&str, &str> = wanted.iter().copied().collect();
    let versioned = |name: &str, version: &str| Versioned {
        name: name.to_string(),
        version: version.to_string(),
    };
    let added = wanted
        .iter()
        .filter(|(name, _)| !acked.contains_key(**name))
        .map(|(name, version)| versioned(name, version))
        .collect();
    let removed = acked
        .iter()
        .filter(|(name, _)| !wanted.contains_key(name.as_str()))
        .map(|(name, version)| versioned(name, version))
        .collect();
    let changed = wanted
        .iter()
        .filter_map(|(name, version)| {
            let acked_version = acked.get(*name).filter(|acked| acked != version)?;
            Some(Changed {
                name: name.to_string(),
                acked_version: acked_version.clone(),
                version: version.to_string(),
            })
        })
        .collect();
    (added, removed, changed)
}

/// The summary of an encoded resource of `resource_type`; `endpoints` counts the endpoints
/// of a cluster's EDS resource by name.
fn summarize(
    resource_type: ResourceType,
    encoded: &[u8],
    endpoints: &dyn Fn(&str) -> Option<usize>,
) -> Summary {
    let decoded = match resource_type {
        ResourceType::Cluster => Cluster::decode(encoded).map(|c| cluster_summary(&c, endpoints)),
        ResourceType::Endpoint => {
            ClusterLoadAssignment::decode(encoded).map(|a| endpoints_summary(&a))
        }
        ResourceType::Listener => Listener::decode(encoded).map(|l| listener_summary(&l)),
        ResourceType::Route => RouteConfiguration::decode(encoded).map(|r| routes_summary(&r)),
    };
    decoded.unwrap_or_else(|error| Summary::Undecodable {
        error: error.to_string(),
    })
}

fn cluster_summary(cluster: &Cluster, endpoints: &dyn Fn(&str) -> Option<usize>) -> Summary {
    let discovery = match &cluster.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_or_else(|_| t.to_string(), |t| t.as_str_name().to_string()),
        Some(cluster::ClusterDiscoveryType::ClusterType(custom)) => custom.name.clone(),
        None => "-".to_string(),
    };
    let lb_policy = cluster::LbPolicy::try_from(cluster.lb_policy).map_or_else(
        |_| cluster.lb_policy.to_string(),
        |p| p.as_str_name().to_string(),
    );
    let eds_name = cluster
        .eds_cluster_config
        .as_ref()
        .map(|eds| eds.service_name.as_str())
        .filter(|name| !name.is_empty())
        .unwrap_or(&cluster.name);
    let endpoints = match &cluster.load_assignment {
        Some(assignment) => Some(endpoint_count(assignment)),
        None => endpoints(eds_name),
    };
    Summary::Cluster {
        discovery,
        lb_policy,
        tls: cluster.transport_socket.is_some() || !cluster.transport_socket_matches.is_empty(),
        endpoints,
    }
}

fn endpoint_count(assignment: &ClusterLoadAssignment) -> usize {
    assignment
        .endpoints
        .iter()
        .map(|locality| locality.lb_endpoints.len())
        .sum()
}

fn endpoints_summary(assignment: &ClusterLoadAssignment) -> Summary {
    let localities = assignment
        .endpoints
        .iter()
        .map(|locality| LocalityEndpoints {
            zone: locality
                .locality
                .as_ref()
                .map(|l| l.zone.as_str())
                .filter(|zone| !zone.is_empty())
                .unwrap_or("-")
                .to_string(),
            priority: locality.priority,
            endpoints: locality
                .lb_endpoints
                .iter()
                .map(|endpoint| {
                    let address = match &endpoint.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                            address_text(e.address.as_ref())
                        }
                        Some(lb_endpoint::HostIdentifier::EndpointName(name)) => name.clone(),
                        None => "-".to_string(),
                    };
                    let health = HealthStatus::try_from(endpoint.health_status)
                        .map_or("?", |h| h.as_str_name());
                    format!("{address} {health}")
                })
                .collect(),
        })
        .collect();
    Summary::Endpoints { localities }
}

/// `ip:port` of a socket address, `-` otherwise.
fn address_text(address: Option<&Address>) -> String {
    let socket = address.and_then(|a| match &a.address {
        Some(address::Address::SocketAddress(socket)) => Some(socket),
        _ => None,
    });
    match socket {
        Some(socket) => match socket.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(port)) => {
                format!("{}:{port}", socket.address)
            }
            _ => socket.address.clone(),
        },
        None => "-".to_string(),
    }
}

fn listener_summary(listener: &Listener) -> Summary {
    Summary::Listener {
        address: address_text(listener.address.as_ref()),
        filter_chains: listener
            .filter_chains
            .iter()
            .chain(&listener.default_filter_chain)
            .map(filter_chain_text)
            .collect(),
    }
}

/// `<name>: <match> → <filter>, <filter>`, the match `any` when the chain matches everything.
fn filter_chain_text(chain: &FilterChain) -> String {
    let mut conditions = Vec::new();
    if let Some(m) = &chain.filter_chain_match {
        if let Some(port) = &m.destination_port {
            conditions.push(format!("port {}", port.value));
        }
        if !m.transport_protocol.is_empty() {
            conditions.push(m.transport_protocol.clone());
        }
        if !m.application_protocols.is_empty() {
            conditions.push(m.application_protocols.join("/"));
        }
        if !m.server_names.is_empty() {
            conditions.push(format!("sni {}", m.server_names.join(",")));
        }
        for range in &m.prefix_ranges {
            let length = range.prefix_len.as_ref().map_or(32, |l| l.value);
            conditions.push(format!("to {}/{length}", range.address_prefix));
        }
    }
    let matches = if conditions.is_empty() {
        "any".to_string()
    } else {
        conditions.join(" ")
    };
    let filters: Vec<String> = chain.filters.iter().map(filter_text).collect();
    let name = if chain.name.is_empty() {
        "-"
    } else {
        &chain.name
    };
    format!("{name}: {matches} → {}", filters.join(", "))
}

/// A network filter: `http (routes <name>)`, `tcp → <cluster>`, or its name.
fn filter_text(filter: &envoy_types::pb::envoy::config::listener::v3::Filter) -> String {
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return filter.name.clone();
    };
    let decoded_as = |message: &str| any.type_url.rsplit('.').next() == Some(message);
    if decoded_as("HttpConnectionManager") {
        if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
            return match &hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    format!("http (routes {})", rds.route_config_name)
                }
                Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) => {
                    format!("http (inline routes {})", routes.name)
                }
                _ => "http".to_string(),
            };
        }
    }
    if decoded_as("TcpProxy") {
        if let Ok(tcp) = TcpProxy::decode(any.value.as_slice()) {
            return match &tcp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) => format!("tcp → {cluster}"),
                Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)) => {
                    let clusters: Vec<String> = weighted
                        .clusters
                        .iter()
                        .map(|c| format!("{} {}", c.name, c.weight))
                        .collect();
                    format!("tcp → {}", clusters.join(", "))
                }
                None => "tcp".to_string(),
            };
        }
    }
    filter.name.clone()
}

fn routes_summary(routes: &RouteConfiguration) -> Summary {
    Summary::Routes {
        virtual_hosts: routes
            .virtual_hosts
            .iter()
            .map(|host| VirtualHostRoutes {
                name: host.name.clone(),
                domains: host.domains.clone(),
                routes: host.routes.iter().map(route_text).collect(),
            })
            .collect(),
    }
}

/// `<match> → <action>`: the path match (and how many headers and query parameters it also
/// matches), then the cluster, the weighted clusters, or what answers instead.
fn route_text(route: &Route) -> String {
    let mut matches = match route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.as_ref())
    {
        Some(route_match::PathSpecifier::Prefix(prefix)) => format!("prefix {prefix}"),
        Some(route_match::PathSpecifier::Path(path)) => format!("path {path}"),
        Some(route_match::PathSpecifier::SafeRegex(regex)) => format!("regex {}", regex.regex),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(prefix)) => {
            format!("prefix {prefix}")
        }
        _ => "any".to_string(),
    };
    if let Some(m) = &route.r#match {
        if !m.headers.is_empty() {
            matches.push_str(&format!(" +{} headers", m.headers.len()));
        }
        if !m.query_parameters.is_empty() {
            matches.push_str(&format!(" +{} query", m.query_parameters.len()));
        }
    }
    let action = match &route.action {
        Some(route::Action::Route(action)) => match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(cluster)) => cluster.clone(),
            Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                let clusters: Vec<String> = weighted
                    .clusters
                    .iter()
                    .map(|c| {
                        let weight = c.weight.as_ref().map_or(0, |w| w.value);
                        format!("{} {weight}", c.name)
                    })
                    .collect();
                clusters.join(", ")
            }
            Some(route_action::ClusterSpecifier::ClusterHeader(header)) => {
                format!("cluster of header {header}")
            }
            _ => "-".to_string(),
        },
        Some(route::Action::Redirect(_)) => "redirect".to_string(),
        Some(route::Action::DirectResponse(direct)) => format!("direct response {}", direct.status),
        _ => "-".to_string(),
    };
    let name = if route.name.is_empty() {
        String::new()
    } else {
        format!("{}: ", route.name)
    };
    format!("{name}{matches} → {action}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Locality, SocketAddress, TransportSocket};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChainMatch};
    use envoy_types::pb::envoy::config::route::v3::{
        weighted_cluster::ClusterWeight, RouteAction, RouteMatch, VirtualHost, WeightedCluster,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use envoy_types::util::pack_any;

    fn socket(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    fn no_endpoints(_: &str) -> Option<usize> {
        None
    }

    #[test]
    fn a_cluster_says_its_type_balancing_tls_and_endpoints() {
        let eds = Cluster {
            name: "outbound|80||web.g.d.boshy".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            lb_policy: cluster::LbPolicy::LeastRequest as i32,
            transport_socket: Some(TransportSocket::default()),
            ..Default::default()
        };
        let counted = |name: &str| (name == "outbound|80||web.g.d.boshy").then_some(3);
        assert_eq!(
            summarize(ResourceType::Cluster, &eds.encode_to_vec(), &counted),
            Summary::Cluster {
                discovery: "EDS".into(),
                lb_policy: "LEAST_REQUEST".into(),
                tls: true,
                endpoints: Some(3)
            }
        );
        let passthrough = Cluster {
            name: "inbound|passthrough".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: cluster::LbPolicy::ClusterProvided as i32,
            ..Default::default()
        };
        assert_eq!(
            summarize(
                ResourceType::Cluster,
                &passthrough.encode_to_vec(),
                &no_endpoints
            ),
            Summary::Cluster {
                discovery: "ORIGINAL_DST".into(),
                lb_policy: "CLUSTER_PROVIDED".into(),
                tls: false,
                endpoints: None
            }
        );
    }

    #[test]
    fn endpoints_are_listed_by_locality_with_their_health() {
        let endpoint = |ip: &str, health: HealthStatus| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket(ip, 8080)),
                ..Default::default()
            })),
            health_status: health as i32,
            ..Default::default()
        };
        let assignment = ClusterLoadAssignment {
            cluster_name: "outbound|8080||web.g.d.boshy".into(),
            endpoints: vec![
                LocalityLbEndpoints {
                    locality: Some(Locality {
                        zone: "z1".into(),
                        ..Default::default()
                    }),
                    lb_endpoints: vec![
                        endpoint("10.0.0.4", HealthStatus::Healthy),
                        endpoint("10.0.0.5", HealthStatus::Unhealthy),
                    ],
                    ..Default::default()
                },
                LocalityLbEndpoints {
                    priority: 1,
                    lb_endpoints: vec![endpoint("10.0.0.6", HealthStatus::Unknown)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            summarize(
                ResourceType::Endpoint,
                &assignment.encode_to_vec(),
                &no_endpoints
            ),
            Summary::Endpoints {
                localities: vec![
                    LocalityEndpoints {
                        zone: "z1".into(),
                        priority: 0,
                        endpoints: vec![
                            "10.0.0.4:8080 HEALTHY".into(),
                            "10.0.0.5:8080 UNHEALTHY".into()
                        ]
                    },
                    LocalityEndpoints {
                        zone: "-".into(),
                        priority: 1,
                        endpoints: vec!["10.0.0.6:8080 UNKNOWN".into()]
                    }
                ]
            }
        );
        assert_eq!(endpoint_count(&assignment), 3);
    }

    #[test]
    fn a_listener_says_its_address_and_each_filter_chain() {
        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: "outbound|80||web.g.d.boshy".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let tcp = TcpProxy {
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|5432||db.g.d.boshy".into(),
            )),
            ..Default::default()
        };
        let filter = |name: &str, config| Filter {
            name: name.into(),
            config_type: Some(filter::ConfigType::TypedConfig(config)),
        };
        let listener = Listener {
            name: "169.254.255.2_80".into(),
            address: Some(socket("169.254.255.2", 80)),
            filter_chains: vec![
                FilterChain {
                    filters: vec![filter(
                        "envoy.filters.network.http_connection_manager",
                        pack_any(hcm),
                    )],
                    ..Default::default()
                },
                FilterChain {
                    name: "mtls".into(),
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value { value: 5432 }),
                        transport_protocol: "tls".into(),
                        ..Default::default()
                    }),
                    filters: vec![
                        Filter {
                            name: "envoy.filters.network.rbac".into(),
                            config_type: None,
                        },
                        filter("envoy.filters.network.tcp_proxy", pack_any(tcp)),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            summarize(
                ResourceType::Listener,
                &listener.encode_to_vec(),
                &no_endpoints
            ),
            Summary::Listener {
                address: "169.254.255.2:80".into(),
                filter_chains: vec![
                    "-: any → http (routes outbound|80||web.g.d.boshy)".into(),
                    "mtls: port 5432 tls → envoy.filters.network.rbac, tcp → outbound|5432||db.g.d.boshy".into()
                ]
            }
        );
    }

    #[test]
    fn routes_say_each_match_and_where_it_goes() {
        let to = |action| {
            Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(action),
                ..Default::default()
            }))
        };
        let weight = |name: &str, weight| ClusterWeight {
            name: name.into(),
            weight: Some(UInt32Value { value: weight }),
            ..Default::default()
        };
        let routes = RouteConfiguration {
            name: "outbound|80||web.g.d.boshy".into(),
            virtual_hosts: vec![VirtualHost {
                name: "web.g.d.boshy".into(),
                domains: vec!["web.g.d.boshy".into(), "169.254.255.2".into()],
                routes: vec![
                    Route {
                        name: "split".into(),
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Path("/v2".into())),
                            headers: vec![Default::default()],
                            ..Default::default()
                        }),
                        action: to(route_action::ClusterSpecifier::WeightedClusters(
                            WeightedCluster {
                                clusters: vec![
                                    weight("outbound|80|v1|web.g.d.boshy", 90),
                                    weight("outbound|80|v2|web.g.d.boshy", 10),
                                ],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    },
                    Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: to(route_action::ClusterSpecifier::Cluster(
                            "outbound|80||web.g.d.boshy".into(),
                        )),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            summarize(ResourceType::Route, &routes.encode_to_vec(), &no_endpoints),
            Summary::Routes {
                virtual_hosts: vec![VirtualHostRoutes {
                    name: "web.g.d.boshy".into(),
                    domains: vec!["web.g.d.boshy".into(), "169.254.255.2".into()],
                    routes: vec![
                        "split: path /v2 +1 headers → outbound|80|v1|web.g.d.boshy 90, outbound|80|v2|web.g.d.boshy 10".into(),
                        "prefix / → outbound|80||web.g.d.boshy".into()
                    ]
                }]
            }
        );
    }

    #[test]
    fn bytes_of_another_message_are_undecodable_not_a_panic() {
        let summary = summarize(ResourceType::Listener, &[0xff, 0xff, 0xff], &no_endpoints);
        assert!(
            matches!(summary, Summary::Undecodable { .. }),
            "{summary:?}"
        );
    }

    #[test]
    fn a_standing_nack_puts_a_stream_out_of_sync_and_an_overcome_one_does_not() {
        let snapshot = Snapshot::from_catalog(&crate::catalog::model::Catalog {
            version: 3,
            ..Default::default()
        });
        let nack = Nack {
            version: "2".into(),
            resource: None,
            error: "bad listener".into(),
            at: 0,
        };
        let mut proxy = ProxyStatus::connected("sotw", None, std::time::UNIX_EPOCH);
        let lds = proxy.types.entry("lds".into()).or_default();
        lds.state = SyncState::Nack;
        lds.last_nack = Some(nack.clone());
        let in_sync = || TypeConfig {
            resource_type: ResourceType::Listener,
            wanted: Some(Vec::new()),
            acked: BTreeMap::new(),
        };
        let report = diff_report(proxy.clone(), &snapshot, vec![in_sync()]);
        assert!(!report.in_sync);
        assert_eq!(report.types[0].nack, Some(nack));
        assert_eq!(report.snapshot, SnapshotRef { seq: 0, version: 3 });
        proxy.types.get_mut("lds").unwrap().state = SyncState::Synced;
        let report = diff_report(proxy, &snapshot, vec![in_sync()]);
        assert!(report.in_sync);
        assert_eq!(report.types[0].nack, None);
    }

    #[test]
    fn a_diff_names_what_is_added_removed_and_changed_with_both_versions() {
        let acked: BTreeMap<String, String> = [("a", "1"), ("b", "1"), ("c", "1")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .into();
        let (added, removed, changed) = diff(&[("d", "1"), ("b", "2"), ("a", "1")], &acked);
        let versioned = |name: &str, version: &str| Versioned {
            name: name.into(),
            version: version.into(),
        };
        assert_eq!(added, [versioned("d", "1")]);
        assert_eq!(removed, [versioned("c", "1")]);
        assert_eq!(
            changed,
            [Changed {
                name: "b".into(),
                acked_version: "1".into(),
                version: "2".into()
            }]
        );
        let (added, removed, changed) = diff(&[("a", "1"), ("b", "1"), ("c", "1")], &acked);
        assert!(added.is_empty() && removed.is_empty() && changed.is_empty());
    }
}
