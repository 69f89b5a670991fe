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

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{grpc_service, ApiVersion, GrpcService};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::util::pack_any;

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
