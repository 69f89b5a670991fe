//! Pure: the access logs that feed the request metrics (docs/telemetry.md).
//!
//! Every HTTP connection manager and `tcp_proxy` the pilot builds (outbound per VIP:port,
//! inbound per exposed port) logs each request, and each connection as it starts and ends,
//! over Envoy's gRPC access log service to the agent of its VM, on the bootstrap's static
//! cluster [`TELEMETRY_CLUSTER`] (a Unix socket). The agent labels them with BOSH identities
//! and serves them as Prometheus metrics (`telemetry` at the crate root).
//!
//! Every logger has the same configuration, on purpose: Envoy keeps one gRPC stream per
//! distinct access log configuration and worker, so one configuration means one stream per
//! worker whatever the number of services. The entries carry what tells services apart: the
//! address the connection was made to (a VIP:port outbound, the VM's own IP:port inbound), and
//! the caller's certificate inbound.
//!
//! An Envoy whose bootstrap has no such cluster (an addon older than its pilot) accepts the
//! configuration and drops the entries.
//!
//! Tracing: with a Zipkin collector configured, every HTTP connection manager traces with
//! Envoy's Zipkin tracer (B3 headers, 128-bit trace ids) into the cluster [`ZIPKIN_CLUSTER`],
//! which every Envoy gets over CDS. Spans carry the BOSH names of both sides: the local
//! service is the Envoy's node cluster (`<deployment>/<instance group>`, `xds::bootstrap`),
//! and tags name the service called and, inbound, the caller's verified identity.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::core::v3::{grpc_service, ApiVersion, GrpcService};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::trace::v3::{tracing as trace, zipkin_config, ZipkinConfig};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use serde::Serialize;

/// What every Envoy of the mesh reports (the pilot's `telemetry` config; docs/telemetry.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Telemetry {
    /// Access logs to the VM's agent, for the request metrics.
    pub request_metrics: bool,
    pub tracing: Option<Tracing>,
}

impl Telemetry {
    /// Nothing reported.
    pub const OFF: Telemetry = Telemetry {
        request_metrics: false,
        tracing: None,
    };
}

/// Zipkin tracing (docs/telemetry.md, "Tracing").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// The collector's Zipkin v2 HTTP API (Zipkin, Jaeger's or an OpenTelemetry collector's
    /// Zipkin receiver).
    pub collector: Collector,
    /// The path spans are posted to.
    pub collector_path: String,
    /// Requests traced when no caller decided (a B3 `x-b3-sampled` header decides for its
    /// request), in percent.
    pub sampling_percent: f64,
}

/// Where spans go: an IP literal or a DNS name, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collector {
    /// Without brackets for an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl Collector {
    /// `host:port` (`[v6]:port`); `None` for anything else or port 0.
    pub fn parse(text: &str) -> Option<Collector> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
        (!host.is_empty()).then(|| Collector {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The cluster to the Zipkin collector.
pub(crate) const ZIPKIN_CLUSTER: &str = "zipkin";

/// The bootstrap's static cluster to the agent's access log server (`bootstrap`).
pub(crate) const TELEMETRY_CLUSTER: &str = "boshy-telemetry";
/// The `log_name` of every entry stream: the agent takes only this one.
pub(crate) const LOG_NAME: &str = "boshy";

fn common() -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: LOG_NAME.to_string(),
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: TELEMETRY_CLUSTER.to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        transport_api_version: ApiVersion::V3 as i32,
        // Envoy's defaults: entries are sent every second or every 16 KiB.
        ..Default::default()
    }
}

/// The access logs of an HTTP connection manager: with telemetry on, one entry per request.
pub(crate) fn http_access_logs(telemetry: bool) -> Vec<AccessLog> {
    match telemetry {
        true => vec![http_access_log()],
        false => Vec::new(),
    }
}

/// Has `proxy` log each connection when it starts and when it ends, with telemetry on.
pub(crate) fn log_connections(proxy: &mut TcpProxy, telemetry: bool) {
    if telemetry {
        proxy.access_log = vec![tcp_access_log()];
        proxy.access_log_options = Some(tcp_access_log_options());
    }
}

fn http_access_log() -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.http_grpc".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            HttpGrpcAccessLogConfig {
                common_config: Some(common()),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

fn tcp_access_log() -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.tcp_grpc".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            TcpGrpcAccessLogConfig {
                common_config: Some(common()),
            },
        ))),
        ..Default::default()
    }
}

/// An entry when the connection starts too, so that connections opened are counted when
/// they open, not only when they close.
fn tcp_access_log_options() -> tcp_proxy::TcpAccessLogOptions {
    tcp_proxy::TcpAccessLogOptions {
        flush_access_log_on_start: true,
        ..Default::default()
    }
}

/// A span tag: a literal value, or the value of a request header.
pub(crate) enum Tag {
    Literal(&'static str, String),
    RequestHeader(&'static str, &'static str),
}

/// The tracing of an HTTP connection manager, with `tags` on its spans; `None` without a
/// collector.
pub(crate) fn http_tracing(
    telemetry: &Telemetry,
    tags: Vec<Tag>,
) -> Option<http_connection_manager::Tracing> {
    let tracing = telemetry.tracing.as_ref()?;
    let zipkin = ZipkinConfig {
        collector_cluster: ZIPKIN_CLUSTER.to_string(),
        collector_endpoint: tracing.collector_path.clone(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        trace_id_128bit: true,
        // Client and server spans of one hop have their own ids (B3's single-host spans).
        shared_span_context: Some(BoolValue { value: false }),
        collector_hostname: tracing.collector.to_string(),
        ..Default::default()
    };
    // Envoy refuses an empty literal (a ServiceEntry's service has no BOSH names).
    let custom_tags = tags
        .into_iter()
        .filter(|tag| !matches!(tag, Tag::Literal(_, value) if value.is_empty()))
        .map(|tag| match tag {
            Tag::Literal(name, value) => CustomTag {
                tag: name.to_string(),
                r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
            },
            Tag::RequestHeader(name, header) => CustomTag {
                tag: name.to_string(),
                r#type: Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: header.to_string(),
                    ..Default::default()
                })),
            },
        })
        .collect();
    Some(http_connection_manager::Tracing {
        random_sampling: Some(Percent {
            value: tracing.sampling_percent,
        }),
        custom_tags,
        provider: Some(trace::Http {
            name: "envoy.tracers.zipkin".to_string(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(zipkin))),
        }),
        ..Default::default()
    })
}

/// The cluster to the Zipkin collector, when tracing is on: every Envoy gets it (it names no
/// service, so no scope leaves it out).
pub(crate) fn zipkin_cluster(telemetry: &Telemetry) -> Option<Cluster> {
    let tracing = telemetry.tracing.as_ref()?;
    let Collector { host, port } = &tracing.collector;
    // An IP literal needs no resolver; a name is re-resolved.
    let discovery = match host.parse::<std::net::IpAddr>() {
        Ok(_) => cluster::DiscoveryType::Static,
        Err(_) => cluster::DiscoveryType::StrictDns,
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.clone(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        *port,
                    ))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    Some(Cluster {
        name: ZIPKIN_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(super::resources::CONNECT_TIMEOUT),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: ZIPKIN_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn grpc_cluster(config: &CommonGrpcAccessLogConfig) -> &str {
        match &config.grpc_service.as_ref().unwrap().target_specifier {
            Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) => &grpc.cluster_name,
            other => panic!("not Envoy's gRPC client: {other:?}"),
        }
    }

    #[test]
    fn http_and_tcp_logs_go_to_the_agent_with_one_shared_configuration() {
        let Some(access_log::ConfigType::TypedConfig(http)) = http_access_log().config_type else {
            panic!("typed config")
        };
        let http = HttpGrpcAccessLogConfig::decode(http.value.as_slice()).unwrap();
        let Some(access_log::ConfigType::TypedConfig(tcp)) = tcp_access_log().config_type else {
            panic!("typed config")
        };
        let tcp = TcpGrpcAccessLogConfig::decode(tcp.value.as_slice()).unwrap();
        let (http, tcp) = (http.common_config.unwrap(), tcp.common_config.unwrap());
        assert_eq!(http, tcp, "one configuration: one stream per worker");
        assert_eq!(grpc_cluster(&http), TELEMETRY_CLUSTER);
        assert_eq!(http.log_name, LOG_NAME);
        assert_eq!(http.transport_api_version, ApiVersion::V3 as i32);
        assert!(tcp_access_log_options().flush_access_log_on_start);
    }

    #[test]
    fn a_collector_is_host_and_port_said_back_as_given() {
        for text in ["zipkin.example.com:9411", "10.0.0.9:9411", "[fd00::9]:9411"] {
            let collector = Collector::parse(text).unwrap();
            assert_eq!(collector.to_string(), text);
        }
        assert_eq!(Collector::parse("[fd00::9]:9411").unwrap().host, "fd00::9");
        for bad in ["zipkin", ":9411", "z:0", "z:65536", "z:", "[]:9411"] {
            assert_eq!(Collector::parse(bad), None, "{bad}");
        }
    }

    fn tracing(collector: &str) -> Telemetry {
        Telemetry {
            request_metrics: false,
            tracing: Some(Tracing {
                collector: Collector::parse(collector).expect("host:port"),
                collector_path: "/api/v2/spans".into(),
                sampling_percent: 1.0,
            }),
        }
    }

    #[test]
    fn spans_go_to_the_collector_in_zipkin_v2_json_with_their_tags() {
        let on = tracing("10.0.0.9:9411");
        let traced = http_tracing(
            &on,
            vec![
                Tag::Literal("boshy.destination.deployment", "d".into()),
                Tag::RequestHeader("boshy.source", "x-forwarded-client-cert"),
            ],
        )
        .unwrap();
        assert_eq!(traced.random_sampling, Some(Percent { value: 1.0 }));
        assert_eq!(traced.custom_tags.len(), 2);
        assert_eq!(traced.custom_tags[0].tag, "boshy.destination.deployment");
        let provider = traced.provider.unwrap();
        assert_eq!(provider.name, "envoy.tracers.zipkin");
        let Some(trace::http::ConfigType::TypedConfig(zipkin)) = provider.config_type else {
            panic!("typed config")
        };
        let zipkin = ZipkinConfig::decode(zipkin.value.as_slice()).unwrap();
        assert_eq!(zipkin.collector_cluster, ZIPKIN_CLUSTER);
        assert_eq!(zipkin.collector_endpoint, "/api/v2/spans");
        assert_eq!(
            zipkin.collector_endpoint_version,
            zipkin_config::CollectorEndpointVersion::HttpJson as i32
        );
        assert!(zipkin.trace_id_128bit);

        let cluster = zipkin_cluster(&on).unwrap();
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        let by_name = zipkin_cluster(&tracing("zipkin.example.com:9411")).unwrap();
        assert_eq!(
            by_name.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );
        let service_entry = http_tracing(
            &on,
            vec![
                Tag::Literal("boshy.destination.service", "reviews.bookinfo.boshy".into()),
                Tag::Literal("boshy.destination.deployment", String::new()),
            ],
        )
        .unwrap();
        assert_eq!(
            service_entry.custom_tags.len(),
            1,
            "an empty literal is refused by Envoy: left out"
        );
        assert!(http_tracing(&Telemetry::OFF, Vec::new()).is_none());
        assert!(zipkin_cluster(&Telemetry::OFF).is_none());
    }

    #[test]
    fn nothing_is_logged_with_telemetry_off() {
        assert!(http_access_logs(false).is_empty());
        assert_eq!(http_access_logs(true), vec![http_access_log()]);
        let mut proxy = TcpProxy::default();
        log_connections(&mut proxy, false);
        assert_eq!(proxy, TcpProxy::default());
        log_connections(&mut proxy, true);
        assert_eq!(proxy.access_log, vec![tcp_access_log()]);
        assert!(proxy.access_log_options.unwrap().flush_access_log_on_start);
    }
}
