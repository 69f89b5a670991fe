//! Pure: the TLS of mutual TLS between Envoys (docs/security.md, "Inbound listener, mutual
//! TLS and authorization in Envoy"): the server side of an inbound filter chain and the client
//! side of an outbound cluster, both with the VM's workload certificate and the trust bundle
//! from SDS (`identity::spiffe`'s secret names, served by the virtual-ip-agent over the
//! bootstrap's [`SDS_CLUSTER`]).
//!
//! ALPN: a client Envoy offers [`MESH_ALPN`] first, then the HTTP protocol of the port
//! (`h2` or `http/1.1`; nothing more on a TCP port). The marker is what tells the inbound
//! listener's `tls_inspector` that a TLS connection is the mesh's own mutual TLS and not a
//! caller outside the mesh speaking TLS to the application itself (which a PERMISSIVE port
//! passes through untouched); the server never selects it, so the HTTP protocol the server
//! selects is the one its connection manager then speaks, as without mutual TLS.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source, config_source, grpc_service, transport_socket, ApiConfigSource, ApiVersion,
    ConfigSource, GrpcService, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher, TlsParameters,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{value, BoolValue, Struct, Value};
use envoy_types::util::pack_any;
use std::collections::HashMap;

use super::bootstrap::SDS_CLUSTER;
use crate::catalog::model::ServicePort;
use crate::identity::spiffe::{TRUST_BUNDLE_SECRET, WORKLOAD_SECRET};

/// The ALPN protocol that marks a connection as the mesh's mutual TLS.
pub(crate) const MESH_ALPN: &str = "boshy-mtls";

/// The HTTP protocols an inbound HTTP chain's server side selects from, preferred first.
const SERVER_HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// An SDS secret of that name from the VM's SDS server.
fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: api_config_source::ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    set_node_on_first_message_only: true,
                    ..Default::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// The workload certificate, the trust bundle from SDS with `validation` on top, TLS 1.2 at
/// least (Envoy's default minimum for a server is 1.0), and `alpn`.
fn common_tls_context(
    validation: CertificateValidationContext,
    alpn: Vec<String>,
) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version:
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol::TlSv12
                    as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds_secret(WORKLOAD_SECRET)],
        alpn_protocols: alpn,
        // SDS gives the CAs, this context the static checks: the trust bundle changes during
        // a CA rotation without a new listener or cluster.
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(validation),
                    validation_context_sds_secret_config: Some(sds_secret(TRUST_BUNDLE_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn tls_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

/// The server side of an inbound chain of `port`: a client certificate that chains to the
/// trust bundle is required; which identities may call is the authorization's to say (any
/// workload of the mesh, without policies).
pub(super) fn server_transport_socket(port: &ServicePort) -> TransportSocket {
    let alpn = match port.protocol.is_http() {
        true => SERVER_HTTP_ALPN.map(str::to_string).to_vec(),
        false => Vec::new(),
    };
    tls_socket(pack_any(DownstreamTlsContext {
        common_tls_context: Some(common_tls_context(
            CertificateValidationContext::default(),
            alpn,
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }))
}

/// The client side of a cluster of `port` whose instances are the workload `server_id` (a
/// SPIFFE ID): the server's certificate must carry exactly that URI, so a VIP leads to the
/// workload it names or to no connection at all.
pub(super) fn client_transport_socket(port: &ServicePort, server_id: &str) -> TransportSocket {
    let mut alpn = vec![MESH_ALPN.to_string()];
    if port.protocol.is_http2() {
        alpn.push("h2".to_string());
    } else if port.protocol.is_http() {
        alpn.push("http/1.1".to_string());
    }
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(server_id.to_string())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    tls_socket(pack_any(UpstreamTlsContext {
        common_tls_context: Some(common_tls_context(validation, alpn)),
        ..Default::default()
    }))
}

/// The key of endpoint metadata Envoy matches a cluster's `transport_socket_matches` on.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The label an endpoint taking no mutual TLS carries, as Istio's `tlsMode` label says.
const TLS_MODE: (&str, &str) = ("tlsMode", "disabled");

fn tls_mode_disabled() -> Struct {
    Struct {
        fields: HashMap::from([(
            TLS_MODE.0.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(TLS_MODE.1.to_string())),
            },
        )]),
    }
}

/// The metadata of an endpoint whose agent says its Envoy takes no mutual TLS yet
/// (`Endpoint::plaintext`): a cluster that originates mutual TLS calls it in plaintext.
pub(super) fn plaintext_endpoint_metadata() -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_disabled())]),
        ..Default::default()
    }
}

/// The socket match of a cluster that originates mutual TLS: plaintext to the endpoints that
/// carry [`plaintext_endpoint_metadata`]. Every other endpoint gets the cluster's own
/// transport socket (Envoy falls back to it when no match applies), so an endpoint no agent
/// reports on keeps mutual TLS.
pub(super) fn plaintext_socket_match() -> TransportSocketMatch {
    TransportSocketMatch {
        name: "tlsMode-disabled".to_string(),
        r#match: Some(tls_mode_disabled()),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                RawBuffer {},
            ))),
        }),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::catalog::model::Protocol;
    use prost::Message;

    fn port(protocol: Protocol) -> ServicePort {
        ServicePort {
            name: "p".into(),
            number: 9002,
            protocol,
        }
    }

    /// The TLS context of a transport socket, decoded.
    pub(in crate::xds) fn tls_context<M: Message + Default>(socket: &TransportSocket) -> M {
        assert_eq!(socket.name, "envoy.transport_sockets.tls");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("a typed TLS context")
        };
        M::decode(any.value.as_slice()).expect("a TLS context")
    }

    /// The certificate and trust bundle secret names and the SDS cluster of a context.
    fn secrets(context: &CommonTlsContext) -> (Vec<&str>, &str, Vec<&str>) {
        let cluster = |secret: &SdsSecretConfig| {
            let Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) = secret
                .sds_config
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref())
            else {
                panic!("SDS over an API config source")
            };
            let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) =
                &api.grpc_services[0].target_specifier
            else {
                panic!("Envoy's gRPC client")
            };
            grpc.cluster_name.clone()
        };
        let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
            &context.validation_context_type
        else {
            panic!("a combined validation context")
        };
        let bundle = combined
            .validation_context_sds_secret_config
            .as_ref()
            .unwrap();
        let mut clusters: Vec<String> = context
            .tls_certificate_sds_secret_configs
            .iter()
            .map(cluster)
            .collect();
        clusters.push(cluster(bundle));
        assert!(clusters.iter().all(|c| c == SDS_CLUSTER), "{clusters:?}");
        (
            context
                .tls_certificate_sds_secret_configs
                .iter()
                .map(|s| s.name.as_str())
                .collect(),
            bundle.name.as_str(),
            context.alpn_protocols.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn the_server_side_wants_a_client_certificate_from_the_trust_bundle() {
        let server: DownstreamTlsContext =
            tls_context(&server_transport_socket(&port(Protocol::Http)));
        assert_eq!(
            server.require_client_certificate,
            Some(BoolValue { value: true })
        );
        let common = server.common_tls_context.unwrap();
        assert_eq!(
            secrets(&common),
            (vec!["default"], "ROOTCA", vec!["h2", "http/1.1"])
        );
        let tcp: DownstreamTlsContext = tls_context(&server_transport_socket(&port(Protocol::Tcp)));
        assert!(tcp.common_tls_context.unwrap().alpn_protocols.is_empty());
    }

    #[test]
    fn the_client_side_wants_exactly_the_servers_spiffe_id_and_marks_the_mesh_in_alpn() {
        let id = "spiffe://boshy/deployment/d/instance_group/g";
        let client: UpstreamTlsContext =
            tls_context(&client_transport_socket(&port(Protocol::Grpc), id));
        let common = client.common_tls_context.unwrap();
        assert_eq!(
            secrets(&common),
            (vec!["default"], "ROOTCA", vec!["boshy-mtls", "h2"])
        );
        let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("combined")
        };
        let sans = combined
            .default_validation_context
            .unwrap()
            .match_typed_subject_alt_names;
        assert_eq!(sans.len(), 1);
        assert_eq!(
            sans[0].san_type,
            subject_alt_name_matcher::SanType::Uri as i32
        );
        assert_eq!(
            sans[0].matcher.as_ref().unwrap().match_pattern,
            Some(string_matcher::MatchPattern::Exact(id.to_string()))
        );
        let http1: UpstreamTlsContext =
            tls_context(&client_transport_socket(&port(Protocol::Http), id));
        assert_eq!(
            http1.common_tls_context.unwrap().alpn_protocols,
            ["boshy-mtls", "http/1.1"]
        );
        let tcp: UpstreamTlsContext =
            tls_context(&client_transport_socket(&port(Protocol::Tcp), id));
        assert_eq!(
            tcp.common_tls_context.unwrap().alpn_protocols,
            ["boshy-mtls"]
        );
    }
}
