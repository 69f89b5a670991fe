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
//!   (Istio's `InboundPassthrough`); but a connection to 15006 itself is closed (Istio's
//!   `virtualInbound-blackhole`): passed through, it would loop back into the listener.
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
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::mtls::{self, MESH_ALPN};
use super::rbac;
use super::resources::{
    explicit_upstream, protocol_options, socket_address, tcp_proxy_filter, BLACKHOLE_CLUSTER,
    CONNECT_TIMEOUT,
};
use super::telemetry::{self, Tag, Telemetry};
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

/// The workload whose instances serve `service`: a job's instance group, or a WorkloadGroup's
/// registered VMs, which are instances of "instance group" `<name>` of "deployment" `<config>`
/// (`workloads::members`: their Envoys' nodes, their SPIFFE IDs); none for a ServiceEntry's
/// endpoints, outside the mesh.
pub(super) fn workload_of(service: &crate::catalog::model::Service) -> Option<WorkloadKey> {
    if service.is_job() {
        return Some(WorkloadKey {
            deployment: service.key.deployment.clone(),
            instance_group: service.key.instance_group.clone(),
        });
    }
    let (config, name) = service.workload_group.as_deref()?.split_once('/')?;
    Some(WorkloadKey {
        deployment: config.to_string(),
        instance_group: name.to_string(),
    })
}

/// The workloads that serve some service of the catalog (ServiceEntries are outside the
/// mesh), each with its exposed ports sorted by number, each number once.
pub(super) fn workloads(catalog: &Catalog) -> BTreeMap<WorkloadKey, Vec<&ServicePort>> {
    let mut workloads: BTreeMap<WorkloadKey, Vec<&ServicePort>> = BTreeMap::new();
    for service in &catalog.services {
        let Some(key) = workload_of(service) else {
            continue;
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
/// (`with_identity` false: its names cannot form a SPIFFE ID) every port is plaintext. With
/// `telemetry`, each port's requests and connections are logged to the agent, and its HTTP
/// requests traced (`xds::telemetry`).
pub(super) fn listener(
    workload: &WorkloadKey,
    ports: &[&ServicePort],
    security: &WorkloadSecurity,
    with_identity: bool,
    telemetry: &Telemetry,
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
                filters: port_filters(port, security, telemetry),
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
                filters: port_filters(port, security, telemetry),
                ..Default::default()
            });
        }
    }
    // A connection made to the listener's own port (not sent by the capture) would have that
    // port as its original destination: passed through, it would come back here, again and
    // again. It is closed at once, and counted (`tcp.inbound_direct.downstream_cx_no_route`).
    filter_chains.push(FilterChain {
        name: "inbound|direct".to_string(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(INBOUND_PORT),
            }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy("inbound_direct", BLACKHOLE_CLUSTER)],
        ..Default::default()
    });
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
    let mut each: Vec<ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|&port| ListenerFilterChainMatchPredicate {
            rule: Some(predicate::Rule::DestinationPortRange(Int32Range {
                start: i32::from(port),
                end: i32::from(port) + 1,
            })),
        })
        .collect();
    // Envoy wants two rules at least in an `or_match`.
    let one_of = match each.len() {
        1 => each.remove(0),
        _ => ListenerFilterChainMatchPredicate {
            rule: Some(predicate::Rule::OrMatch(predicate::MatchSet {
                rules: each,
            })),
        },
    };
    ListenerFilterChainMatchPredicate {
        rule: Some(predicate::Rule::NotMatch(Box::new(one_of))),
    }
}

/// The network filters of one port's chain: the RBAC filters and the proxy.
fn port_filters(
    port: &ServicePort,
    security: &WorkloadSecurity,
    telemetry: &Telemetry,
) -> Vec<Filter> {
    let stat_prefix = format!("inbound_{}", port.number);
    let cluster = match port.protocol.is_http2() {
        true => PASSTHROUGH_CLUSTER_HTTP2,
        false => PASSTHROUGH_CLUSTER,
    };
    if !port.protocol.is_http() {
        let mut filters = rbac::network_filters(&security.policies, &format!("tcp.{stat_prefix}"));
        let mut proxy = tcp_proxy_config(&stat_prefix, cluster);
        telemetry::log_connections(&mut proxy, telemetry.request_metrics);
        filters.push(tcp_proxy_filter(proxy));
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
        access_log: telemetry::http_access_logs(telemetry.request_metrics),
        // The server span names the caller as its Envoy verified it.
        tracing: telemetry::http_tracing(
            telemetry,
            vec![Tag::RequestHeader(
                "boshy.source.identity",
                "x-forwarded-client-cert",
            )],
        ),
        ..Default::default()
    };
    vec![Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
    }]
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy_filter(tcp_proxy_config(stat_prefix, cluster))
}

fn tcp_proxy_config(stat_prefix: &str, cluster: &str) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
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
    let http2 = explicit_upstream(ProtocolConfig::Http2ProtocolOptions(
        Http2ProtocolOptions::default(),
    ));
    [
        cluster(PASSTHROUGH_CLUSTER),
        Cluster {
            typed_extension_protocol_options: protocol_options(http2),
            ..cluster(PASSTHROUGH_CLUSTER_HTTP2)
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::Protocol;
    use crate::catalog::testing::{self, endpoint, service};
    use crate::traffic::security::{AuthzAction, AuthzPolicy, AuthzRule};
    use crate::xds::bootstrap::STATS_PREFIXES;
    use crate::xds::mtls::tests::tls_context;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use prost::Message;

    fn key(group: &str) -> WorkloadKey {
        WorkloadKey {
            deployment: "d".into(),
            instance_group: group.into(),
        }
    }

    fn port(number: u16, protocol: Protocol) -> ServicePort {
        ServicePort {
            name: format!("p{number}"),
            number,
            protocol,
        }
    }

    fn typed<M: Message + Default>(filter: &Filter) -> M {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            panic!("{}: typed config", filter.name)
        };
        M::decode(any.value.as_slice()).expect("decodes")
    }

    /// Each chain: its name, the port it matches, its transport protocol and ALPN match, and
    /// whether it terminates TLS.
    fn chains(listener: &Listener) -> Vec<(&str, u32, &str, Vec<&str>, bool)> {
        listener
            .filter_chains
            .iter()
            .map(|chain| {
                let matching = chain.filter_chain_match.as_ref().expect("a match");
                (
                    chain.name.as_str(),
                    matching.destination_port.expect("a port").value,
                    matching.transport_protocol.as_str(),
                    matching
                        .application_protocols
                        .iter()
                        .map(String::as_str)
                        .collect(),
                    chain.transport_socket.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn a_workload_is_an_instance_group_with_its_ports_once_and_no_service_entry() {
        let mut entry = service("d", "outside", "api")
            .port("https", 443, Protocol::Tcp)
            .build();
        entry.service_entry = Some("entries".into());
        let catalog = testing::catalog(
            1,
            [
                service("d", "g", "web")
                    .port("http", 8080, Protocol::Http)
                    .port("admin", 9000, Protocol::Http)
                    .endpoint(endpoint("10.0.0.1"))
                    .build(),
                service("d", "g", "db")
                    .port("tcp", 5432, Protocol::Tcp)
                    .port("admin", 9000, Protocol::Http)
                    .build(),
                service("e", "g", "web")
                    .port("http", 80, Protocol::Http)
                    .build(),
                entry,
            ],
        );
        let found: Vec<(String, String, Vec<u16>)> = workloads(&catalog)
            .into_iter()
            .map(|(key, ports)| {
                (
                    key.deployment,
                    key.instance_group,
                    ports.iter().map(|p| p.number).collect(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("d".into(), "g".into(), vec![5432, 8080, 9000]),
                ("e".into(), "g".into(), vec![80]),
            ]
        );
        assert_eq!(listener_name(&key("g")), "inbound|d|g");
    }

    #[test]
    fn each_mode_gets_its_chains_and_the_inspector_runs_for_permissive_ports_alone() {
        let ports = [
            port(5432, Protocol::Tcp),
            port(8080, Protocol::Http),
            port(9000, Protocol::Grpc),
        ];
        let security = WorkloadSecurity {
            mtls: MtlsMode::Permissive,
            port_mtls: BTreeMap::from([(8080, MtlsMode::Strict), (9000, MtlsMode::Disable)]),
            policies: Vec::new(),
        };
        let listener = listener(
            &key("g"),
            &ports.iter().collect::<Vec<_>>(),
            &security,
            true,
            &Telemetry::OFF,
        );
        assert_eq!(listener.name, "inbound|d|g");
        assert_eq!(
            listener.address,
            Some(socket_address(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15006))
        );
        assert_eq!(
            chains(&listener),
            [
                ("inbound|5432|mtls", 5432, "tls", vec!["boshy-mtls"], true),
                ("inbound|5432|plaintext", 5432, "", vec![], false),
                // STRICT matches the port alone: plaintext fails the handshake rather than
                // falling through to the passthrough chain.
                ("inbound|8080|mtls", 8080, "", vec![], true),
                ("inbound|9000|plaintext", 9000, "", vec![], false),
                ("inbound|direct", 15006, "", vec![], false),
            ]
        );
        let server: DownstreamTlsContext =
            tls_context(listener.filter_chains[2].transport_socket.as_ref().unwrap());
        assert_eq!(
            server.require_client_certificate,
            Some(BoolValue { value: true })
        );

        let filters: Vec<&str> = listener
            .listener_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector"
            ]
        );
        let disabled = listener.listener_filters[1]
            .filter_disabled
            .clone()
            .unwrap();
        let Some(predicate::Rule::NotMatch(one_of)) = disabled.rule else {
            panic!("disabled for every port but the permissive ones")
        };
        assert_eq!(
            one_of.rule,
            Some(predicate::Rule::DestinationPortRange(Int32Range {
                start: 5432,
                end: 5433
            }))
        );
        assert!(listener.continue_on_listener_filters_timeout);

        let passthrough = listener.default_filter_chain.as_ref().unwrap();
        let tcp: TcpProxy = typed(&passthrough.filters[0]);
        assert_eq!(
            tcp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                PASSTHROUGH_CLUSTER.into()
            ))
        );
    }

    #[test]
    fn without_an_identity_every_port_is_plaintext_and_nothing_inspects_tls() {
        let ports = [port(8080, Protocol::Http)];
        let strict = WorkloadSecurity {
            mtls: MtlsMode::Strict,
            ..Default::default()
        };
        let listener = listener(
            &key("g"),
            &ports.iter().collect::<Vec<_>>(),
            &strict,
            false,
            &Telemetry::OFF,
        );
        assert_eq!(
            chains(&listener),
            [
                ("inbound|8080|plaintext", 8080, "", vec![], false),
                ("inbound|direct", 15006, "", vec![], false),
            ]
        );
        assert_eq!(listener.listener_filters.len(), 1, "original_dst alone");
        // A connection made to 15006 itself keeps 15006 as its original destination: passed
        // through, it would come straight back to this listener, forever.
        let direct: TcpProxy = typed(&listener.filter_chains[1].filters[0]);
        assert_eq!(
            direct.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                BLACKHOLE_CLUSTER.into()
            ))
        );
    }

    #[test]
    fn http_ports_set_the_callers_identity_check_normalized_paths_and_keep_their_stats() {
        let ports = [port(8080, Protocol::Http), port(9000, Protocol::Grpc)];
        let allow_all = AuthzPolicy {
            config: "c".into(),
            name: "all".into(),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule::default()],
        };
        let security = WorkloadSecurity {
            policies: vec![allow_all],
            ..Default::default()
        };
        let listener = listener(
            &key("g"),
            &ports.iter().collect::<Vec<_>>(),
            &security,
            true,
            &Telemetry::OFF,
        );
        let hcm: HttpConnectionManager = typed(&listener.filter_chains[0].filters[0]);
        assert_eq!(hcm.stat_prefix, "inbound_8080");
        assert_eq!(
            hcm.forward_client_cert_details,
            http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32
        );
        assert!(hcm.set_current_client_cert_details.unwrap().uri);
        assert_eq!(hcm.normalize_path, Some(BoolValue { value: true }));
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["envoy.filters.http.rbac", "envoy.filters.http.router"]
        );
        /// The one cluster an inbound connection manager's inline route sends to.
        fn routed_cluster(hcm: HttpConnectionManager) -> Option<route_action::ClusterSpecifier> {
            let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) =
                hcm.route_specifier
            else {
                panic!("an inline route")
            };
            let Some(route::Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action
            else {
                panic!("a route action")
            };
            action.cluster_specifier.clone()
        }
        assert_eq!(
            routed_cluster(hcm),
            Some(route_action::ClusterSpecifier::Cluster(
                PASSTHROUGH_CLUSTER.into()
            ))
        );
        let grpc: HttpConnectionManager = typed(&listener.filter_chains[2].filters[0]);
        assert_eq!(
            routed_cluster(grpc),
            Some(route_action::ClusterSpecifier::Cluster(
                PASSTHROUGH_CLUSTER_HTTP2.into()
            )),
            "HTTP/2 to a gRPC workload"
        );
        // The bootstrap's stats trimming keeps RBAC's counters of every inbound port.
        for stat in [
            "http.inbound_8080.rbac.allow.denied",
            "tcp.inbound_5432.deny.rbac.denied",
            "tcp.inbound_passthrough.downstream_cx_total",
        ] {
            assert!(
                STATS_PREFIXES.iter().any(|prefix| stat.starts_with(prefix)),
                "{stat} is trimmed"
            );
        }
    }

    #[test]
    fn passthrough_clusters_connect_to_the_original_destination_from_127_0_0_6() {
        let [plain, http2] = passthrough_clusters();
        for cluster in [&plain, &http2] {
            assert_eq!(
                cluster.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::OriginalDst as i32
                ))
            );
            assert_eq!(cluster.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
            let source = cluster.upstream_bind_config.as_ref().unwrap();
            assert_eq!(source.source_address.as_ref().unwrap().address, "127.0.0.6");
        }
        assert_eq!(plain.name, PASSTHROUGH_CLUSTER);
        assert!(plain.typed_extension_protocol_options.is_empty());
        assert_eq!(http2.name, PASSTHROUGH_CLUSTER_HTTP2);
        assert_eq!(http2.typed_extension_protocol_options.len(), 1);
    }
}
