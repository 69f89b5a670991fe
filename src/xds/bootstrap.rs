//! The Envoy bootstrap of the `bosh-envoy` sidecar: who this node is, where its admin
//! interface listens (loopback only), and ADS to every bosh-pilot instance. ADS is delta
//! (incremental) by default: an endpoint change then sends one `ClusterLoadAssignment`
//! instead of every cluster's; state of the world stays available (`--ads sotw`).
//!
//! Node naming (what the pilot's logs and Envoy's config dump show):
//! - `node.id`      = `sidecar~<ip>~<instance_group>/<instance_id>~<deployment>`, Istio's
//!   `type~ip~id~domain` shape, unique per VM and readable in a log line;
//! - `node.cluster` = `<deployment>/<instance_group>`;
//! - `node.locality.zone` = the BOSH AZ;
//! - `node.metadata` = deployment, instance_group, instance_id, index, ip, az.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Default Envoy admin address: loopback, the port Envoy's docs use.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8001";
/// Default address of the agent's request metrics (`AgentTelemetry::metrics_listen`).
pub const DEFAULT_AGENT_METRICS: &str = "127.0.0.1:15020";
/// The static cluster to the agent's `/metrics`.
const AGENT_METRICS_CLUSTER: &str = "boshy-agent-metrics";
/// The static cluster to Envoy's own admin, for `/stats/prometheus` alone.
const ADMIN_CLUSTER: &str = "envoy-admin";
/// Cap on open downstream connections (applications on this VM talking to the mesh). It
/// keeps a runaway client from exhausting Envoy's file descriptors and silences Envoy's
/// start-up warning about having no limit.
pub(crate) const MAX_DOWNSTREAM_CONNECTIONS: u32 = 50_000;
/// The static cluster that carries ADS.
pub(crate) const XDS_CLUSTER: &str = "xds_cluster";
/// The static cluster to the virtual-ip-agent's SDS socket (`--sds-socket`): xDS resources
/// name their secrets with `sds_config` through it (`api_type: GRPC`, `envoy_grpc` with this
/// cluster name, V3), Istio's name for it.
pub(crate) const SDS_CLUSTER: &str = "sds-grpc";
/// The stats Envoy keeps: its own health, the managers, the xDS connection and the
/// connections to VIP:ports nobody exposes. Per-service stats (a few hundred per cluster
/// and listener) are left out: every Envoy of the foundation would keep them for every
/// service, and they were most of Envoy's memory beyond its binary. What an operator needs
/// per instance is still in `/clusters` (per-host counters and health flags). A VM's own
/// inbound ports (`xds::inbound`) are few: their stats stay, RBAC's denials among them.
pub(crate) const STATS_PREFIXES: [&str; 11] = [
    "server.",
    "cluster_manager.",
    "listener_manager.",
    "control_plane.",
    "cluster.xds_cluster.",
    "overload.",
    "runtime.",
    "http.admin.",
    "tcp.outbound_unexposed.",
    "http.inbound_",
    "tcp.inbound_",
];

/// Which ADS variant Envoy speaks; bosh-pilot serves both.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdsMode {
    /// Incremental xDS (`DELTA_GRPC`): only changed resources and removals are sent.
    #[default]
    Delta,
    /// State of the world (`GRPC`): every response carries the whole set of its type.
    Sotw,
}

impl AdsMode {
    fn api_type(self) -> &'static str {
        match self {
            AdsMode::Delta => "DELTA_GRPC",
            AdsMode::Sotw => "GRPC",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// BOSH deployment name (spec.deployment).
    #[arg(long)]
    pub deployment: String,
    /// BOSH instance group name (spec.name).
    #[arg(long)]
    pub instance_group: String,
    /// BOSH instance id (spec.id).
    #[arg(long)]
    pub instance_id: String,
    /// BOSH instance index (spec.index).
    #[arg(long)]
    pub index: Option<u32>,
    /// BOSH availability zone (spec.az).
    #[arg(long)]
    pub az: Option<String>,
    /// The VM's IP (spec.ip).
    #[arg(long)]
    pub ip: IpAddr,
    /// A bosh-pilot xDS address, `host:port` (repeat for every instance of the link).
    #[arg(long = "pilot", required = true)]
    pub pilots: Vec<String>,
    /// Envoy admin address; must be a loopback address.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// ADS variant: delta (incremental) or sotw (state of the world).
    #[arg(long, value_enum, default_value_t = AdsMode::Delta)]
    pub ads: AdsMode,
    /// Write the bootstrap here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Mutual TLS to the pilots: the mesh CA's PEM file (with --tls-cert, --tls-key and
    /// --tls-server-name). Required unless --insecure-plaintext.
    #[arg(long, required_unless_present = "insecure_plaintext", requires_all = ["tls_cert", "tls_key", "tls_server_name"])]
    pub tls_ca: Option<PathBuf>,
    /// This Envoy's client certificate (PEM file).
    #[arg(long, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM file).
    #[arg(long, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    /// The DNS name in the pilots' certificate.
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Talk to the pilots without TLS (tests only).
    #[arg(long, conflicts_with = "tls_ca")]
    pub insecure_plaintext: bool,
    /// The virtual-ip-agent's SDS Unix socket: adds the static cluster `sds-grpc` to it, which
    /// the workload certificate's secrets are fetched through (docs/security.md).
    #[arg(long)]
    pub sds_socket: Option<PathBuf>,
    /// The virtual-ip-agent's access log Unix socket: adds the static cluster
    /// `boshy-telemetry` to it, which every request and connection is logged through for the
    /// request metrics (docs/telemetry.md).
    #[arg(long)]
    pub access_log_socket: Option<PathBuf>,
    /// Serve the metrics to the network on this address: `/metrics` (the agent's request
    /// metrics, from --agent-metrics) and `/stats/prometheus` (Envoy's own), over mutual TLS
    /// with the --tls-* certificate, to clients whose certificate the mesh CA signed.
    #[arg(long, requires_all = ["access_log_socket", "tls_ca"])]
    pub metrics_listen: Option<SocketAddr>,
    /// The agent's loopback `/metrics` endpoint.
    #[arg(long, default_value = DEFAULT_AGENT_METRICS)]
    pub agent_metrics: SocketAddr,
    /// The service name of this VM's spans (docs/telemetry.md); empty or absent:
    /// `<deployment>/<instance group>`.
    #[arg(long)]
    pub service_name: Option<String>,
}

/// Where the request metrics come from and where Envoy serves them (docs/telemetry.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// The agent's access log socket (static cluster `xds::telemetry::TELEMETRY_CLUSTER`).
    pub access_log_socket: PathBuf,
    /// Envoy's metrics listener, if it has one.
    pub metrics: Option<MetricsListener>,
}

/// Envoy's listener that serves the metrics to scrapers holding a mesh certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListener {
    pub listen: SocketAddr,
    /// The agent's `/metrics`, on loopback.
    pub agent: SocketAddr,
}

/// Who this Envoy is, in BOSH terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub deployment: String,
    pub instance_group: String,
    pub instance_id: String,
    pub index: Option<u32>,
    pub az: Option<String>,
    pub ip: IpAddr,
    /// The name the VM's spans carry (bosh-envoy's `tracing.service_name`); `None`:
    /// `<deployment>/<instance group>`.
    pub service_name: Option<String>,
}

impl NodeIdentity {
    pub fn node_id(&self) -> String {
        format!(
            "sidecar~{}~{}/{}~{}",
            self.ip, self.instance_group, self.instance_id, self.deployment
        )
    }

    /// Envoy's `node.cluster`: the service name of the VM's spans (Envoy's Zipkin tracer names
    /// them after it). The pilot identifies a node by its metadata, never by this.
    pub(crate) fn node_cluster(&self) -> String {
        match &self.service_name {
            Some(name) => name.clone(),
            None => format!("{}/{}", self.deployment, self.instance_group),
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    let node = NodeIdentity {
        deployment: args.deployment,
        instance_group: args.instance_group,
        instance_id: args.instance_id,
        index: args.index,
        az: args.az,
        ip: args.ip,
        service_name: args.service_name.filter(|name| !name.is_empty()),
    };
    let tls = match (
        args.tls_ca,
        args.tls_cert,
        args.tls_key,
        args.tls_server_name,
    ) {
        (Some(ca_cert_path), Some(cert_path), Some(key_path), Some(server_name)) => {
            Some(crate::config::ClientTls {
                ca_cert_path,
                cert_path,
                key_path,
                server_name,
            })
        }
        _ => None, // --insecure-plaintext; clap enforces all or none
    };
    let telemetry = args.access_log_socket.map(|access_log_socket| Telemetry {
        access_log_socket,
        metrics: args.metrics_listen.map(|listen| MetricsListener {
            listen,
            agent: args.agent_metrics,
        }),
    });
    let yaml = render_sidecar(
        &node,
        &args.pilots,
        args.admin,
        args.ads,
        tls.as_ref(),
        args.sds_socket.as_deref(),
        telemetry.as_ref(),
    )?;
    match args.output {
        Some(path) => tokio::fs::write(&path, yaml)
            .await
            .with_context(|| format!("writing the Envoy bootstrap to {}", path.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

/// Renders the bootstrap YAML with delta ADS, see [`render_with`].
pub fn render(node: &NodeIdentity, pilots: &[String], admin: SocketAddr) -> Result<String> {
    render_with(node, pilots, admin, AdsMode::default())
}

/// Renders the bootstrap YAML. `pilots` are `host:port` (IP or DNS name; `[v6]:port`).
/// Fails on an admin address that is not loopback (the admin API can reconfigure and stop
/// Envoy), on no pilots, and on a malformed pilot address.
pub fn render_with(
    node: &NodeIdentity,
    pilots: &[String],
    admin: SocketAddr,
    ads_mode: AdsMode,
) -> Result<String> {
    render_with_tls(node, pilots, admin, ads_mode, None)
}

/// Like [`render_with`]; with `tls`, the ADS connection is mutual TLS
/// (`crate::tls::envoy_transport_socket`), as the bosh-envoy job always renders it.
pub fn render_with_tls(
    node: &NodeIdentity,
    pilots: &[String],
    admin: SocketAddr,
    ads_mode: AdsMode,
    tls: Option<&crate::config::ClientTls>,
) -> Result<String> {
    render_with_sds(node, pilots, admin, ads_mode, tls, None)
}

/// Like [`render_with_tls`]; with `sds_socket`, a static cluster [`SDS_CLUSTER`] to the
/// virtual-ip-agent's SDS server on that Unix socket.
pub fn render_with_sds(
    node: &NodeIdentity,
    pilots: &[String],
    admin: SocketAddr,
    ads_mode: AdsMode,
    tls: Option<&crate::config::ClientTls>,
    sds_socket: Option<&Path>,
) -> Result<String> {
    render_sidecar(node, pilots, admin, ads_mode, tls, sds_socket, None)
}

/// Like [`render_with_sds`]; with `telemetry`, the static cluster to the agent's access log
/// server and, with its `metrics`, the metrics listener (which needs `tls`: it serves only
/// over mutual TLS).
pub fn render_sidecar(
    node: &NodeIdentity,
    pilots: &[String],
    admin: SocketAddr,
    ads_mode: AdsMode,
    tls: Option<&crate::config::ClientTls>,
    sds_socket: Option<&Path>,
    telemetry: Option<&Telemetry>,
) -> Result<String> {
    Sidecar {
        node,
        pilots,
        admin,
        ads_mode,
        tls,
        sds_socket,
        telemetry,
        certificate_sds: None,
    }
    .render()
}

/// Everything a sidecar's bootstrap is rendered from ([`render_sidecar`]'s arguments), and
/// where Envoy takes its mesh certificate from.
#[derive(Debug, Clone, Copy)]
pub struct Sidecar<'a> {
    pub node: &'a NodeIdentity,
    pub pilots: &'a [String],
    pub admin: SocketAddr,
    pub ads_mode: AdsMode,
    pub tls: Option<&'a crate::config::ClientTls>,
    pub sds_socket: Option<&'a Path>,
    pub telemetry: Option<&'a Telemetry>,
    /// With `tls`: a file-based SDS file ([`certificate_sds`] renders it) that Envoy takes
    /// `tls.cert_path` and `tls.key_path` through, reading them again whenever their directory
    /// changes, instead of once at start. A joined VM's agent renews its certificate in place
    /// (docs/workloads.md); a BOSH VM's changes only with a deploy, which restarts Envoy.
    pub certificate_sds: Option<&'a Path>,
}

impl Sidecar<'_> {
    /// Renders the bootstrap YAML. `pilots` are `host:port` (IP or DNS name; `[v6]:port`).
    /// Fails on an admin address that is not loopback (the admin API can reconfigure and stop
    /// Envoy), on no pilots, and on a malformed pilot address.
    pub fn render(&self) -> Result<String> {
        let Sidecar {
            node,
            pilots,
            admin,
            ads_mode,
            tls,
            sds_socket,
            telemetry,
            certificate_sds,
        } = *self;
        if !admin.ip().is_loopback() {
            bail!("Envoy admin address {admin} is not a loopback address: the admin API must never be reachable from the network");
        }
        if pilots.is_empty() {
            bail!("no bosh-pilot address given: Envoy would have no xDS server");
        }
        let pilots = pilots
            .iter()
            .map(|p| parse_host_port(p))
            .collect::<Result<Vec<_>>>()?;
        // IP literals need no resolver; names (e.g. bosh-dns link addresses) are re-resolved.
        let discovery = if pilots
            .iter()
            .all(|(host, _)| host.parse::<IpAddr>().is_ok())
        {
            "STATIC"
        } else {
            "STRICT_DNS"
        };
        let endpoints: Vec<Value> = pilots
        .iter()
        .map(|(host, port)| {
            json!({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
        })
        .collect();
        let mut metadata = json!({
            "deployment": node.deployment,
            "instance_group": node.instance_group,
            "instance_id": node.instance_id,
            "ip": node.ip.to_string(),
        });
        if let Some(index) = node.index {
            metadata["index"] = json!(index);
        }
        if let Some(az) = &node.az {
            metadata["az"] = json!(az);
        }
        let ads = json!({"ads": {}, "resource_api_version": "V3"});
        let mut bootstrap = json!({
            "node": {
                "id": node.node_id(),
                "cluster": node.node_cluster(),
                "locality": {"zone": node.az.clone().unwrap_or_default()},
                "metadata": metadata,
            },
            "admin": {
                "address": {"socket_address": {"address": admin.ip().to_string(), "port_value": admin.port()}},
            },
            "overload_manager": {
                "resource_monitors": [{
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }],
            },
            "stats_config": {
                "stats_matcher": {
                    "inclusion_list": {
                        "patterns": STATS_PREFIXES.map(|prefix| json!({"prefix": prefix})),
                    },
                },
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": ads_mode.api_type(),
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                },
                "cds_config": ads,
                "lds_config": ads,
            },
            "static_resources": {
                "clusters": [{
                    "name": XDS_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    // Keepalives notice a dead pilot (VM gone, network cut) and move the stream
                    // to another one.
                    "typed_extension_protocol_options": http2_only(
                        json!({"connection_keepalive": {"interval": "30s", "timeout": "5s"}}),
                    ),
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }],
            },
        });
        if let Some(tls) = tls {
            bootstrap["static_resources"]["clusters"][0]["transport_socket"] =
                crate::tls::envoy_transport_socket(tls, certificate_sds);
        }
        if let Some(socket) = sds_socket {
            let socket = socket
                .to_str()
                .with_context(|| format!("the SDS socket path {socket:?} is not UTF-8"))?;
            bootstrap["static_resources"]["clusters"]
                .as_array_mut()
                .expect("the clusters are a list")
                .push(sds_cluster(socket));
        }
        if let Some(telemetry) = telemetry {
            add_telemetry(&mut bootstrap, telemetry, tls, admin, certificate_sds)?;
        }
        Ok(serde_yaml::to_string(&bootstrap).expect("a JSON value always serializes to YAML"))
    }
}

/// The file-based SDS file of [`Sidecar::certificate_sds`]: the secret
/// `crate::tls::MESH_CERTIFICATE_SECRET`, the certificate and key of `tls` as files, read
/// together when their directory sees an entry moved into it (its `..data` symlink swapped,
/// the Kubernetes secret-volume layout the VM's agent keeps them in), checked by Envoy to be
/// one consistent read.
pub fn certificate_sds(tls: &crate::config::ClientTls) -> Result<String> {
    let dir = tls.cert_path.parent().with_context(|| {
        format!(
            "the certificate path {} has no directory to watch",
            tls.cert_path.display()
        )
    })?;
    if tls.key_path.parent() != Some(dir) {
        bail!(
            "the key {} is not in the certificate's directory {}: Envoy watches one directory \
             for both",
            tls.key_path.display(),
            dir.display()
        );
    }
    let file = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": crate::tls::MESH_CERTIFICATE_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": tls.cert_path},
                "private_key": {"filename": tls.key_path},
                "watched_directory": {"path": dir},
            },
        }],
    });
    Ok(serde_yaml::to_string(&file).expect("a JSON value always serializes to YAML"))
}

/// The access log cluster, and the metrics listener with its two clusters.
fn add_telemetry(
    bootstrap: &mut Value,
    telemetry: &Telemetry,
    tls: Option<&crate::config::ClientTls>,
    admin: SocketAddr,
    certificate_sds: Option<&Path>,
) -> Result<()> {
    let socket = telemetry.access_log_socket.to_str().with_context(|| {
        format!(
            "the access log socket path {:?} is not UTF-8",
            telemetry.access_log_socket
        )
    })?;
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("the clusters are a list");
    clusters.push(unix_grpc_cluster(
        crate::xds::telemetry::TELEMETRY_CLUSTER,
        socket,
    ));
    let Some(metrics) = &telemetry.metrics else {
        return Ok(());
    };
    let Some(tls) = tls else {
        bail!("the metrics listener serves only over mutual TLS: it needs the mesh certificate (--tls-ca, --tls-cert, --tls-key)");
    };
    if !metrics.agent.ip().is_loopback() {
        bail!(
            "the agent's metrics address {} is not a loopback address",
            metrics.agent
        );
    }
    clusters.push(loopback_cluster(AGENT_METRICS_CLUSTER, metrics.agent));
    clusters.push(loopback_cluster(ADMIN_CLUSTER, admin));
    bootstrap["static_resources"]["listeners"] =
        json!([metrics_listener(metrics.listen, tls, certificate_sds)]);
    Ok(())
}

/// A plain HTTP/1.1 cluster to one loopback address.
fn loopback_cluster(name: &str, address: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": address.ip().to_string(), "port_value": address.port(),
            }}}}]}],
        },
    })
}

/// Serves `GET /metrics` (the agent's) and `GET /stats/prometheus` (Envoy's, and nothing else
/// of the admin API) over TLS 1.3 to clients with a certificate the mesh CA signed; anything
/// else is a 404.
fn metrics_listener(
    listen: SocketAddr,
    tls: &crate::config::ClientTls,
    certificate_sds: Option<&Path>,
) -> Value {
    let (certificate_key, certificate) = crate::tls::envoy_tls_certificate(tls, certificate_sds);
    let get = |path: &str, cluster: &str| {
        json!({
            "match": {
                "path": path,
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "route": {"cluster": cluster},
        })
    };
    let mut listener = json!({
        "name": "metrics",
        "address": {"socket_address": {"address": listen.ip().to_string(), "port_value": listen.port()}},
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_params": {
                            "tls_minimum_protocol_version": "TLSv1_3",
                            "tls_maximum_protocol_version": "TLSv1_3",
                        },
                        "validation_context": {"trusted_ca": {"filename": tls.ca_cert_path}},
                    },
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "metrics",
                    "route_config": {
                        "name": "metrics",
                        "virtual_hosts": [{
                            "name": "metrics",
                            "domains": ["*"],
                            "routes": [
                                get("/metrics", AGENT_METRICS_CLUSTER),
                                get("/stats/prometheus", ADMIN_CLUSTER),
                                {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                            ],
                        }],
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }],
                },
            }],
        }],
    });
    listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
        [certificate_key] = certificate;
    listener
}

/// The `typed_extension_protocol_options` of a gRPC cluster: HTTP/2 with `http2_options`.
fn http2_only(http2_options: Value) -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": http2_options},
        },
    })
}

/// The static cluster to the agent's SDS server on the Unix socket `socket`.
fn sds_cluster(socket: &str) -> Value {
    unix_grpc_cluster(SDS_CLUSTER, socket)
}

/// A static gRPC (HTTP/2) cluster to one of the agent's Unix sockets.
fn unix_grpc_cluster(name: &str, socket: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": http2_only(json!({})),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket}}}}]}],
        },
    })
}

/// `host:port` or `[v6]:port` → (host, port).
fn parse_host_port(address: &str) -> Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("bosh-pilot address `{address}` is not host:port"))?;
    let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => (inner, true),
        None => (host, false),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("bosh-pilot address `{address}`: port must be 1..65535"))?;
    // An unbracketed IPv6 address is ambiguous (is the last group the port?).
    let host_ok = if bracketed {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && !host.contains(':')
    };
    if !host_ok {
        bail!("bosh-pilot address `{address}`: the host is empty or malformed (IPv6 needs [brackets])");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeIdentity {
        NodeIdentity {
            deployment: "sample-deployment".into(),
            instance_group: "apricot".into(),
            instance_id: "6d0e0b4c-1111".into(),
            index: Some(3),
            az: Some("z1".into()),
            ip: "10.244.0.7".parse().unwrap(),
            service_name: None,
        }
    }

    fn parsed(pilots: &[&str]) -> Value {
        let pilots: Vec<String> = pilots.iter().map(|p| p.to_string()).collect();
        let yaml = render(&node(), &pilots, DEFAULT_ADMIN.parse().unwrap()).unwrap();
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn node_carries_the_bosh_identity() {
        let b = parsed(&["10.0.0.5:15010"]);
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.244.0.7~apricot/6d0e0b4c-1111~sample-deployment"
        );
        assert_eq!(b["node"]["cluster"], "sample-deployment/apricot");
        assert_eq!(b["node"]["locality"]["zone"], "z1");
        assert_eq!(
            b["node"]["metadata"],
            json!({"deployment": "sample-deployment", "instance_group": "apricot",
                   "instance_id": "6d0e0b4c-1111", "index": 3, "ip": "10.244.0.7", "az": "z1"})
        );
    }

    #[test]
    fn envoy_keeps_its_own_and_the_xds_stats_but_no_per_service_ones() {
        let b = parsed(&["10.0.0.5:15010"]);
        let kept: Vec<&str> = b["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prefix"].as_str().unwrap())
            .collect();
        let is_kept = |stat: &str| kept.iter().any(|prefix| stat.starts_with(prefix));
        for stat in [
            "server.memory_allocated",
            "cluster_manager.cds.update_success",
            "listener_manager.lds.update_rejected",
            "control_plane.connected_state",
            "cluster.xds_cluster.upstream_cx_active",
            "tcp.outbound_unexposed.downstream_cx_no_route",
        ] {
            assert!(is_kept(stat), "{stat}");
        }
        for stat in [
            "cluster.outbound|9002||web.banana.sample.boshy.upstream_rq_total",
            "listener.169.254.255.2_9002.downstream_cx_total",
            "http.outbound_9002_web.banana.sample.boshy.downstream_rq_total",
            "tcp.outbound_5432_db.banana.sample.boshy.downstream_cx_total",
        ] {
            assert!(!is_kept(stat), "{stat}");
        }
    }

    #[test]
    fn ads_points_at_every_pilot_over_http2() {
        let b = parsed(&["10.0.0.5:15010", "10.0.0.6:15010"]);
        let ads = &b["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "DELTA_GRPC", "delta by default");
        assert_eq!(ads["transport_api_version"], "V3");
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            XDS_CLUSTER
        );
        for source in ["cds_config", "lds_config"] {
            assert_eq!(
                b["dynamic_resources"][source],
                json!({"ads": {}, "resource_api_version": "V3"})
            );
        }
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["name"], XDS_CLUSTER);
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(cluster["connect_timeout"], "1s");
        assert!(cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_object());
        let addresses: Vec<String> = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = &e["endpoint"]["address"]["socket_address"];
                format!("{}:{}", s["address"].as_str().unwrap(), s["port_value"])
            })
            .collect();
        assert_eq!(addresses, ["10.0.0.5:15010", "10.0.0.6:15010"]);
    }

    #[test]
    fn state_of_the_world_is_one_parameter_away() {
        let pilots = vec!["10.0.0.5:15010".to_string()];
        let admin = DEFAULT_ADMIN.parse().unwrap();
        let yaml = render_with(&node(), &pilots, admin, AdsMode::Sotw).unwrap();
        let b: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert_eq!(
            render(&node(), &pilots, admin).unwrap(),
            render_with(&node(), &pilots, admin, AdsMode::Delta).unwrap()
        );
    }

    #[test]
    fn pilot_names_are_resolved_by_dns_and_ipv6_needs_brackets() {
        let b = parsed(&[
            "q-s0.bosh-pilot.default.bosh-istio.bosh:15010",
            "[fd00::1]:15010",
        ]);
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STRICT_DNS");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["endpoint"]["address"]
                ["socket_address"]["address"],
            "fd00::1"
        );
        assert_eq!(
            parsed(&["[::1]:15010"])["static_resources"]["clusters"][0]["type"],
            "STATIC"
        );
    }

    #[test]
    fn downstream_connections_are_capped() {
        let b = parsed(&["10.0.0.5:15010"]);
        let monitor = &b["overload_manager"]["resource_monitors"][0];
        assert_eq!(
            monitor["name"],
            "envoy.resource_monitors.global_downstream_max_connections"
        );
        assert_eq!(
            monitor["typed_config"]["max_active_downstream_connections"],
            MAX_DOWNSTREAM_CONNECTIONS
        );
    }

    #[test]
    fn admin_listens_on_loopback_only() {
        let b = parsed(&["10.0.0.5:15010"]);
        assert_eq!(
            b["admin"]["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 8001})
        );
        let pilots = vec!["10.0.0.5:15010".to_string()];
        for admin in ["0.0.0.0:8001", "10.244.0.7:8001", "[::]:8001"] {
            let err = render(&node(), &pilots, admin.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("not a loopback"), "{admin}: {err}");
        }
        assert!(render(&node(), &pilots, "[::1]:8001".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_pilot_lists_are_rejected_with_the_culprit_named() {
        let admin = DEFAULT_ADMIN.parse().unwrap();
        assert!(render(&node(), &[], admin).is_err());
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:99999",
            ":15010",
            "fd00::1:15010",
        ] {
            let err = render(&node(), &[bad.to_string()], admin).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn an_sds_socket_adds_the_sds_cluster_over_http2() {
        let pilots = vec!["10.0.0.5:15010".to_string()];
        let admin = DEFAULT_ADMIN.parse().unwrap();
        let socket = Path::new("/var/vcap/data/boshy-identity/sds.sock");
        let with = |sds: Option<&Path>| -> Value {
            let yaml = render_with_sds(&node(), &pilots, admin, AdsMode::Delta, None, sds).unwrap();
            serde_yaml::from_str(&yaml).unwrap()
        };
        assert_eq!(
            with(None)["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let b = with(Some(socket));
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters[0]["name"], XDS_CLUSTER);
        let sds = &clusters[1];
        assert_eq!(sds["name"], SDS_CLUSTER);
        assert_eq!(sds["type"], "STATIC");
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"],
            json!({"pipe": {"path": "/var/vcap/data/boshy-identity/sds.sock"}})
        );
        assert!(sds["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_object());
        assert_eq!(
            clusters[0]["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]["connection_keepalive"]["interval"],
            "30s",
            "the xDS cluster keeps its keepalives"
        );
    }

    #[test]
    fn the_service_name_replaces_the_bosh_identity_as_the_node_cluster() {
        let default = render(
            &node(),
            &["127.0.0.1:15010".to_string()],
            DEFAULT_ADMIN.parse().unwrap(),
        );
        let named = NodeIdentity {
            service_name: Some("payments".into()),
            ..node()
        };
        let renamed = render(
            &named,
            &["127.0.0.1:15010".to_string()],
            DEFAULT_ADMIN.parse().unwrap(),
        );
        let cluster = |yaml: anyhow::Result<String>| {
            let b: Value = serde_yaml::from_str(&yaml.unwrap()).unwrap();
            (b["node"]["cluster"].clone(), b["node"]["metadata"].clone())
        };
        let (default_cluster, default_metadata) = cluster(default);
        let (renamed_cluster, renamed_metadata) = cluster(renamed);
        assert_eq!(default_cluster, "sample-deployment/apricot");
        assert_eq!(renamed_cluster, "payments");
        assert_eq!(
            renamed_metadata, default_metadata,
            "the pilot's view of the node"
        );
    }

    #[test]
    fn a_joined_vms_certificate_comes_through_file_sds_everywhere_it_is_presented() {
        let tls = crate::config::ClientTls {
            ca_cert_path: "/etc/boshy/ca.pem".into(),
            cert_path: "/etc/boshy/tls/vm.pem".into(),
            key_path: "/etc/boshy/tls/vm.key".into(),
            server_name: "bosh-pilot.boshy-istio".into(),
        };
        let telemetry = Telemetry {
            access_log_socket: "/run/boshy/access.sock".into(),
            metrics: Some(MetricsListener {
                listen: "10.0.0.30:15090".parse().unwrap(),
                agent: DEFAULT_AGENT_METRICS.parse().unwrap(),
            }),
        };
        let sds = Path::new("/etc/boshy/vm-certificate-sds.yaml");
        let sidecar = Sidecar {
            node: &node(),
            pilots: &["10.0.0.5:15010".to_string()],
            admin: DEFAULT_ADMIN.parse().unwrap(),
            ads_mode: AdsMode::Delta,
            tls: Some(&tls),
            sds_socket: None,
            telemetry: Some(&telemetry),
            certificate_sds: Some(sds),
        };
        let yaml: Value = serde_yaml::from_str(&sidecar.render().unwrap()).unwrap();
        let xds = &yaml["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
            ["common_tls_context"];
        let metrics = &yaml["static_resources"]["listeners"][0]["filter_chains"][0]
            ["transport_socket"]["typed_config"]["common_tls_context"];
        for context in [xds, metrics] {
            assert!(context.get("tls_certificates").is_none(), "{context}");
            assert_eq!(
                context["tls_certificate_sds_secret_configs"][0]["sds_config"]
                    ["path_config_source"]["path"],
                "/etc/boshy/vm-certificate-sds.yaml"
            );
        }
        // Without it, the bootstrap is render_sidecar's: the files themselves.
        let plain = Sidecar {
            certificate_sds: None,
            ..sidecar
        }
        .render()
        .unwrap();
        assert_eq!(
            plain,
            render_sidecar(
                &node(),
                &["10.0.0.5:15010".to_string()],
                DEFAULT_ADMIN.parse().unwrap(),
                AdsMode::Delta,
                Some(&tls),
                None,
                Some(&telemetry)
            )
            .unwrap()
        );
        assert!(plain.contains("filename: /etc/boshy/tls/vm.key"), "{plain}");

        let file: Value = serde_yaml::from_str(&certificate_sds(&tls).unwrap()).unwrap();
        assert_eq!(
            file,
            json!({"resources": [{
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "boshy-mesh-certificate",
                "tls_certificate": {
                    "certificate_chain": {"filename": "/etc/boshy/tls/vm.pem"},
                    "private_key": {"filename": "/etc/boshy/tls/vm.key"},
                    "watched_directory": {"path": "/etc/boshy/tls"},
                },
            }]})
        );
        let apart = crate::config::ClientTls {
            key_path: "/etc/boshy/vm.key".into(),
            ..tls
        };
        let err = certificate_sds(&apart).unwrap_err().to_string();
        assert!(
            err.contains("/etc/boshy/vm.key") && err.contains("one directory"),
            "{err}"
        );
    }

    #[test]
    fn az_and_index_are_optional() {
        let node = NodeIdentity {
            az: None,
            index: None,
            ..node()
        };
        let yaml = render(
            &node,
            &["127.0.0.1:15010".to_string()],
            DEFAULT_ADMIN.parse().unwrap(),
        )
        .unwrap();
        let b: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(b["node"]["locality"]["zone"], "");
        assert!(b["node"]["metadata"].get("index").is_none());
        assert!(b["node"]["metadata"].get("az").is_none());
    }
}
