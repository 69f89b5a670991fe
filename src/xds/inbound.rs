//! Pure: the inbound side of a workload (an instance group that serves some service), built
//! when workload identities are on (docs/security.md, "Inbound listener, mutual TLS and
//! authorization in Envoy").
//!
//! Shapes:
//! - one listener per workload, `inbound|<deployment>|<instance group>` on 0.0.0.0:15006,
//!   where the VM's inbound capture sends the connections to its exposed ports. Only the
//!   Envoys of that instance group get it (`Resources::owner`); two on one Envoy would both
//!   want port 15006. Its `original_dst` filter restores the port the caller dialled, and
//!   `tls_inspector` (run only for PERMISSIVE ports: a server-first protocol on another port
//!   never waits for it) tells the mesh's mutual TLS (TLS with the ALPN marker
//!   `xds::mtls::MESH_ALPN`) from anything else.
//! - per exposed port, by its mTLS mode (`traffic::security`): STRICT, one chain for the port
//!   that terminates mutual TLS (it matches the port alone, not `transport_protocol: tls`, so
//!   that a plaintext connection fails its handshake instead of falling through to the
//!   default chain); PERMISSIVE, that chain for the mesh's TLS and a plaintext chain for the
//!   rest; DISABLE, the plaintext chain alone. Each chain runs the port's RBAC filters
//!   (`xds::rbac`) and an HTTP connection manager (HTTP ports: the caller's SPIFFE ID in
//!   `x-forwarded-client-cert`, paths normalized before RBAC looks at them) or `tcp_proxy`.
//! - a default chain for any other port: `tcp_proxy` to the original destination, untouched
//!   (Istio's `InboundPassthrough`).
//! - two shared clusters, [`PASSTHROUGH_CLUSTER`] and [`PASSTHROUGH_CLUSTER_HTTP2`] (for ports
//!   whose protocol is HTTP/2), `ORIGINAL_DST`, connecting to the local process from
//!   [`LOCAL_SOURCE`]: the VM's capture rules let traffic from that address through, so Envoy's
//!   own connection never comes back into the inbound listener.
//!
//! Statistics are under `inbound_<port>` (`http.inbound_<port>.…`, `tcp.inbound_<port>.…`,
//! RBAC's `rbac.` counters among them), which the bootstrap's stats trimming keeps: a VM has
//! few inbound ports, so these stay few.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    socket_address, BindConfig, Http2ProtocolOptions, SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, listener_filter_chain_match_predicate as predicate, Filter,
    FilterChain, FilterChainMatch, Listener, ListenerFilter, ListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::mtls::{self, MESH_ALPN};
use super::rbac;
use super::resources::{protocol_options, socket_address, CONNECT_TIMEOUT};
use crate::catalog::model::{Catalog, ServicePort};
use crate::traffic::security::{MtlsMode, WorkloadKey, WorkloadSecurity};

/// Where the VM's inbound capture sends connections to its exposed ports.
pub(crate) const INBOUND_PORT: u16 = 15006;
/// The address Envoy connects to the local process from (the capture lets it through).
pub(crate) const LOCAL_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// The original destination, over HTTP/1.1 or raw TCP.
pub(crate) const PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The original destination, over HTTP/2 (ports whose protocol is `http2` or `grpc`).
pub(crate) const PASSTHROUGH_CLUSTER_HTTP2: &str = "InboundPassthroughClusterHttp2";
/// How long `tls_inspector` waits for a client's first bytes before the connection goes on as
/// plaintext: a server-first protocol on a PERMISSIVE port waits that long once per connection.
const TLS_DETECTION_TIMEOUT: Duration = Duration {
    seconds: 1,
    nanos: 0,
};

/// The name of a workload's inbound listener.
pub(crate) fn listener_name(workload: &WorkloadKey) -> String {
    format!(
        "inbound|{}|{}",
        workload.deployment, workload.instance_group
    )
}

/// The workloads that serve some service of the catalog (ServiceEntries are outside the
/// mesh), each with its exposed ports sorted by number, each number once.
pub(super) fn workloads(catalog: &Catalog) -> BTreeMap<WorkloadKey, Vec<&ServicePort>> {
    let mut workloads: BTreeMap<WorkloadKey, Vec<&ServicePort>> = BTreeMap::new();
    for service in catalog
        .services
        .iter()
        .filter(|s| s.service_entry.is_none())
    {
        let key = WorkloadKey {
            deployment: service.key.deployment.clone(),
            instance_group: service.key.instance_group.clone(),
        };
        workloads.entry(key).or_default().extend(&service.ports);
    }
    for ports in workloads.values_mut() {
        ports.sort_by_key(|port| port.number);
        ports.dedup_by_key(|port| port.number);
    }
    workloads
}

/// The inbound listener of `workload`, which exposes `ports`. Without an identity
/// (`with_identity` false: its names cannot form a SPIFFE ID) every port is plaintext.
pub(super) fn listener(
    workload: &WorkloadKey,
    ports: &[&ServicePort],
    security: &WorkloadSecurity,
    with_identity: bool,
) -> Listener {
    let mode = |port: &ServicePort| match with_identity {
        true => security.mtls_of(port.number),
        false => MtlsMode::Disable,
    };
    let mut filter_chains = Vec::new();
    for port in ports {
        let mode = mode(port);
        if mode != MtlsMode::Disable {
            let application_protocols = match mode {
                MtlsMode::Permissive => vec![MESH_ALPN.to_string()],
                _ => Vec::new(),
            };
            filter_chains.push(FilterChain {
                name: format!("inbound|{}|mtls", port.number),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(port.number),
                    }),
                    transport_protocol: match mode {
                        MtlsMode::Permissive => "tls".to_string(),
                        _ => String::new(),
                    },
                    application_protocols,
                    ..Default::default()
                }),
                filters: port_filters(port, security),
                transport_socket: Some(mtls::server_transport_socket(port)),
                ..Default::default()
            });
        }
        if mode != MtlsMode::Strict {
            filter_chains.push(FilterChain {
                name: format!("inbound|{}|plaintext", port.number),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(port.number),
                    }),
                    ..Default::default()
                }),
                filters: port_filters(port, security),
                ..Default::default()
            });
        }
    }
    let permissive: Vec<u16> = ports
        .iter()
        .filter(|port| mode(port) == MtlsMode::Permissive)
        .map(|port| port.number)
        .collect();
    let mut listener_filters = vec![ListenerFilter {
        name: "envoy.filters.listener.original_dst".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            OriginalDst::default(),
        ))),
        ..Default::default()
    }];
    if !permissive.is_empty() {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                TlsInspector::default(),
            ))),
            filter_disabled: Some(not_one_of(&permissive)),
        });
    }
    Listener {
        name: listener_name(workload),
        stat_prefix: "inbound".to_string(),
        address: Some(socket_address(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            INBOUND_PORT,
        )),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters,
        listener_filters_timeout: Some(TLS_DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: true,
        filter_chains,
        default_filter_chain: Some(FilterChain {
            name: "inbound|passthrough".to_string(),
            filters: vec![tcp_proxy("inbound_passthrough", PASSTHROUGH_CLUSTER)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Matches a connection to any port but `ports`.
fn not_one_of(ports: &[u16]) -> ListenerFilterChainMatchPredicate {
    let one_of = ListenerFilterChainMatchPredicate {
        rule: Some(predicate::Rule::OrMatch(predicate::MatchSet {
            rules: ports
                .iter()
                .map(|&port| ListenerFilterChainMatchPredicate {
                    rule: Some(predicate::Rule::DestinationPortRange(Int32Range {
                        start: i32::from(port),
                        end: i32::from(port) + 1,
                    })),
                })
                .collect(),
        })),
    };
    ListenerFilterChainMatchPredicate {
        rule: Some(predicate::Rule::NotMatch(Box::new(one_of))),
    }
}

/// The network filters of one port's chain: the RBAC filters and the proxy.
fn port_filters(port: &ServicePort, security: &WorkloadSecurity) -> Vec<Filter> {
    let stat_prefix = format!("inbound_{}", port.number);
    let cluster = match port.protocol.is_http2() {
        true => PASSTHROUGH_CLUSTER_HTTP2,
        false => PASSTHROUGH_CLUSTER,
    };
    if !port.protocol.is_http() {
        let mut filters = rbac::network_filters(&security.policies, &format!("tcp.{stat_prefix}."));
        filters.push(tcp_proxy(&stat_prefix, cluster));
        return filters;
    }
    let route_name = format!("inbound|{}", port.number);
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            // The local process bounds its own requests (as on the outbound side).
            timeout: Some(Duration::default()),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut http_filters = rbac::http_filters(&security.policies);
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let manager = HttpConnectionManager {
        stat_prefix,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: route_name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: route_name,
                    domains: vec!["*".to_string()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters,
        // The workload learns who calls from the header, which a caller cannot forge: it is
        // removed from every request, then set from the verified client certificate.
        forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::SanitizeSet
            as i32,
        set_current_client_cert_details: Some(
            http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            },
        ),
        // RBAC's paths are checked on the normalized path (`/a/../admin` is `/admin`), which
        // is also what the workload gets.
        normalize_path: Some(BoolValue { value: true }),
        ..Default::default()
    };
    vec![Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
    }]
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        }))),
    }
}

/// The clusters every inbound listener sends to: the original destination, from
/// [`LOCAL_SOURCE`], over HTTP/1.1 or TCP, and over HTTP/2.
pub(super) fn passthrough_clusters() -> [Cluster; 2] {
    let cluster = |name: &str| Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(CONNECT_TIMEOUT),
        upstream_bind_config: Some(BindConfig {
            source_address: Some(SocketAddress {
                address: LOCAL_SOURCE.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    [
        cluster(PASSTHROUGH_CLUSTER),
        Cluster {
            typed_extension_protocol_options: protocol_options(http2),
            ..cluster(PASSTHROUGH_CLUSTER_HTTP2)
        },
    ]
}
