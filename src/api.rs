//! The control-plane HTTP API, read-only but for the joined VMs' endpoints under
//! `/v1/workloads` (`workloads::api`, docs/workloads.md):
//!
//! - `GET /v1/registration`: every service of the current catalog as JSON (the shape is
//!   `Registration` below; the keys are a public contract).
//! - `GET /healthz`: `200 ok` once the pilot holds a catalog built from the director, `503`
//!   before. The pilot starts with a placeholder catalog of version 0 and an honest "not
//!   ready" keeps a load balancer or `bosh` health check from sending clients to a pilot
//!   that would tell them there are no services. After the first catalog the pilot stays
//!   healthy through director outages: it keeps serving the last good catalog, which is
//!   what clients should get.
//! - `GET /v1/rules`: the rule configs read from the director (configs of type
//!   `boshy-istio`), one entry per name sorted by name: `name`, `id`, `created_at`, and the
//!   content's `content_bytes` and `content_sha256`, never the content itself, so that nothing
//!   an operator put in a config is echoed to whoever can reach the API. `503` until the
//!   director's configs were read once. It says what the pilot holds, not whether the rules
//!   are valid.
//! - `GET /v1/proxies`: every Envoy connected to this pilot's xDS server, what it was sent
//!   and answered per xDS type, and how far behind the current snapshot it is
//!   (`xds::proxy_status::ProxiesReport`; `boshy mesh status` reads it).
//! - `GET /v1/services/<hostname>`: one service as `/v1/registration` shows it, with the
//!   rule configs that have traffic rules for it (`boshy mesh describe` reads it); `404` for a
//!   hostname the catalog does not have.
//! - `GET /v1/graph`: the service graph: every service by instance group and deployment with
//!   its endpoints' health, and the calls the agents reported as edges with request rate,
//!   error ratio and p99 (`console::graph`).
//! - `GET /console/`: the live web console, a page that reads the paths above (docs/console.md).
//! - `GET /metrics`: OpenMetrics text (docs/metrics.md).
//!
//! Any other method on these paths is `405`; other paths are `404`.
//!
//! The pilot serves it over HTTPS (`serve_tls`): everything but `/healthz` wants a mesh client
//! certificate or a UAA token with a BOSH read scope, and is refused `401`/`403` with no data
//! otherwise (docs/api.md). `serve` is the open, plain-HTTP form (`api.insecure_open`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::api_auth::{Refusal, UaaKeys};
use crate::catalog::model::{
    Catalog, DnsEndpoints, Endpoint, Labels, Protocol, Service, ServicePort,
};
use crate::console::TrafficBoard;
use crate::director::{PublishedRuleConfigs, RuleConfig};
use crate::names::stream_status::NameStreams;
use crate::rule_status::{PublishedRuleStatus, RuleStatus};
use crate::rules::ConfigVerdict;
use crate::workloads::api::{need, Need};
use crate::workloads::Peer;
use crate::xds::cache::Snapshot;
use crate::xds::proxy_status::{ProxiesReport, SnapshotRef};
use crate::xds::resources::ResourceType;
use crate::xds::stream_config;
use crate::xds::sync::{Lookup, SyncBoard};

/// What the API shows: the pilot's current catalog, rule configs and their verdicts, and its
/// Envoys.
#[derive(Clone)]
struct Sources {
    catalog: watch::Receiver<Arc<Catalog>>,
    rule_configs: watch::Receiver<PublishedRuleConfigs>,
    rule_status: watch::Receiver<PublishedRuleStatus>,
    proxies: Proxies,
}

/// The Envoys connected to the pilot's xDS server and the snapshot it serves, and the
/// name-table streams of its names server.
#[derive(Clone)]
pub struct Proxies {
    pub board: Arc<SyncBoard>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub name_streams: Arc<NameStreams>,
    /// The calls the agents report, for the graph.
    pub traffic: Arc<TrafficBoard>,
}

impl Proxies {
    /// An API served without xDS and names servers: it has no Envoys and no agents.
    pub fn none() -> Self {
        Proxies {
            board: Arc::default(),
            snapshots: watch::channel(None).1,
            name_streams: Arc::default(),
            traffic: Arc::default(),
        }
    }

    fn report(&self) -> ProxiesReport {
        let snapshot = self.snapshots.borrow().as_ref().map(|s| SnapshotRef {
            seq: s.seq(),
            version: s.version(),
        });
        ProxiesReport {
            snapshot,
            proxies: self.board.proxies(snapshot.map(|s| s.seq)),
            agents: self.name_streams.list(),
        }
    }
}

/// Serves the API on `listener` until it is dropped.
pub async fn serve(
    listener: TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    rule_configs: watch::Receiver<PublishedRuleConfigs>,
    rule_status: watch::Receiver<PublishedRuleStatus>,
    proxies: Proxies,
) -> anyhow::Result<()> {
    let sources = Sources {
        catalog,
        rule_configs,
        rule_status,
        proxies,
    };
    serve_router(listener, router(sources, None), "api").await
}

/// Who may read the API (docs/api.md): a caller whose TLS connection presented a mesh
/// client certificate, or one with a UAA token of `bosh.admin` or `bosh.read`. `/healthz`
/// is open. The registrations' endpoints (docs/workloads.md) want more or less
/// (`workloads::api::need`).
pub struct Access {
    /// Checks bearer tokens; `None` (a director without UAA) accepts none.
    pub tokens: Option<Arc<UaaKeys>>,
    /// VMs joining WorkloadGroups; `None` when the pilot has no `workloads` config.
    pub workloads: Option<Arc<crate::workloads::Workloads>>,
}

const REALM: &str = "Bearer realm=\"bosh-pilot\"";

/// Serves the API over TLS (`tls` lets clients in with or without a certificate), every path
/// but `/healthz` behind `access`.
pub async fn serve_tls(
    listener: TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    rule_configs: watch::Receiver<PublishedRuleConfigs>,
    rule_status: watch::Receiver<PublishedRuleStatus>,
    proxies: Proxies,
    tls: Arc<rustls::ServerConfig>,
    access: Access,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    let sources = Sources {
        catalog,
        rule_configs,
        rule_status,
        proxies,
    };
    let router = guarded(router(sources, access.workloads.clone()), Arc::new(access));
    tracing::info!("api server listening on {} (HTTPS)", listener.local_addr()?);
    let mut incoming = crate::tls::incoming(listener, tls, "api");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(stream)) => {
                    let Ok(peer) = crate::tls::peer_addr(&stream) else { continue };
                    // Set on each request: who the handshake verified (docs/api.md).
                    let client = Peer::of(stream.get_ref().get_ref().1.peer_certificates());
                    let router = router.clone().layer(axum::Extension(client));
                    connections.spawn(serve_connection(stream, peer, router));
                }
                Some(Err(err)) => tracing::debug!("api server: {err}"),
                None => anyhow::bail!("the api server's listener stopped"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn guarded(router: Router, access: Arc<Access>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(access, authorize))
}

async fn authorize(
    State(access): State<Arc<Access>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Anonymous);
    let need = need(request.method(), request.uri().path());
    // A joined VM's certificate is a VM's, not an operator's: it may leave, nothing else.
    let by_certificate = match (need, &peer) {
        (Need::Open, _) | (Need::JoinedVm, Peer::Workload(_)) => Some(Ok(())),
        (_, Peer::Workload(_)) => Some(Err(Refusal::WorkloadCertificate)),
        (Need::JoinedVm, _) => Some(Err(Refusal::NotJoinedVm)),
        (Need::Read, Peer::Mesh) => Some(Ok(())),
        _ => None,
    };
    let checked =
        match by_certificate {
            Some(decided) => decided,
            None => match request.headers().get(header::AUTHORIZATION) {
                // A mesh client certificate reads; it changes nothing.
                None if need == Need::Admin && peer == Peer::Mesh => Err(Refusal::AdminScope),
                None => Err(Refusal::Missing),
                Some(value) => match (value.to_str(), &access.tokens) {
                    (Err(_), _) => Err(Refusal::NotBearer),
                    (Ok(value), Some(tokens)) => tokens.check(value).await.and_then(|caller| {
                        match need == Need::Admin && !caller.admin {
                            true => Err(Refusal::AdminScope),
                            false => Ok(()),
                        }
                    }),
                    (Ok(value), None) => {
                        crate::api_auth::bearer_token(value).and(Err(Refusal::UnknownKey))
                    }
                },
            },
        };
    match checked {
        Ok(()) => next.run(request).await,
        Err(refusal) => refuse(
            &refusal,
            request.headers().contains_key(header::AUTHORIZATION),
        ),
    }
}

/// The refusal's status with a one-line reason and no data.
fn refuse(refusal: &Refusal, sent_credentials: bool) -> axum::response::Response {
    crate::metrics::global().api_refusal(refusal.label());
    let status = refusal.status();
    let challenge = match refusal {
        Refusal::Scope => Some(format!(
            "{REALM}, error=\"insufficient_scope\", scope=\"bosh.admin bosh.read\""
        )),
        Refusal::AdminScope => Some(format!(
            "{REALM}, error=\"insufficient_scope\", scope=\"bosh.admin\""
        )),
        Refusal::WorkloadCertificate | Refusal::NotJoinedVm => None,
        Refusal::KeysUnavailable => None,
        _ if sent_credentials => Some(format!("{REALM}, error=\"invalid_token\"")),
        _ => Some(REALM.to_string()),
    };
    let mut response = (status, format!("{refusal}\n")).into_response();
    if let Some(challenge) = challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_str(&challenge).expect("an ASCII challenge"),
        );
    }
    response
}

fn router(sources: Sources, workloads: Option<Arc<crate::workloads::Workloads>>) -> Router {
    Router::new()
        .route("/v1/registration", get(registration))
        .route("/v1/rules", get(rules))
        .route("/v1/proxies", get(proxies))
        .route("/v1/proxies/{*proxy_and_view}", get(proxy_view))
        .route("/v1/services/{hostname}", get(described_service))
        .route("/v1/graph", get(graph))
        .route(
            "/console",
            get(|| async { Redirect::permanent("console/") }),
        )
        .route("/console/", get(console_asset))
        .route("/console/{asset}", get(console_asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(unknown_path)
        .with_state(sources)
        .merge(crate::workloads::api::router(workloads))
}

/// The API is read-only but for the registrations' endpoints: another write method is 405
/// on every path, known or not; a read of an unknown path is 404.
async fn unknown_path(method: Method) -> StatusCode {
    if method == Method::GET || method == Method::HEAD {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    }
}

/// One service in `/v1/registration`. `deployment`, `instance_group` and `job` are the
/// names BOSH knows the service by (`diego_cell`); `hostname` is made of their canonical DNS
/// forms (`rep.diego-cell.cf.boshy`).
#[derive(Serialize)]
struct Registration<'a> {
    hostname: &'a str,
    vip: Ipv4Addr,
    deployment: &'a str,
    instance_group: &'a str,
    job: &'a str,
    ports: Vec<RegisteredPort<'a>>,
    endpoints: Vec<RegisteredEndpoint<'a>>,
    /// Only for a service a ServiceEntry defines (`<config>/<name>`); its deployment,
    /// instance group and job are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    service_entry: Option<&'a str>,
    /// Only for a WorkloadGroup's service (`<config>/<name>`); its deployment, instance group
    /// and job are then empty, and its endpoints are the VMs registered into the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    workload_group: Option<&'a str>,
    /// Only for a service whose endpoints are DNS names each Envoy resolves (a ServiceEntry
    /// with resolution `DNS` or `DNS_ROUND_ROBIN`): `{"resolution": "DNS", "endpoints":
    /// [{"address": "db.example.com", "az": null, "labels": {}}]}`. Its `endpoints` is then
    /// empty: the addresses are Envoy's to find.
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<&'a DnsEndpoints>,
}

#[derive(Serialize)]
struct RegisteredPort<'a> {
    name: &'a str,
    number: u16,
    protocol: Protocol,
}

/// `labels` is always there, `{}` when the endpoint has none, sorted by key.
#[derive(Serialize)]
struct RegisteredEndpoint<'a> {
    address: IpAddr,
    az: Option<&'a str>,
    instance: &'a str,
    index: Option<u32>,
    healthy: bool,
    labels: &'a Labels,
}

impl<'a> From<&'a Service> for Registration<'a> {
    fn from(service: &'a Service) -> Self {
        Registration {
            hostname: &service.hostname,
            vip: service.vip,
            deployment: &service.key.deployment,
            instance_group: &service.key.instance_group,
            job: &service.key.job,
            ports: service.ports.iter().map(RegisteredPort::from).collect(),
            endpoints: service
                .endpoints
                .iter()
                .map(RegisteredEndpoint::from)
                .collect(),
            service_entry: service.service_entry.as_deref(),
            workload_group: service.workload_group.as_deref(),
            dns: service.dns.as_ref(),
        }
    }
}

impl<'a> From<&'a ServicePort> for RegisteredPort<'a> {
    fn from(port: &'a ServicePort) -> Self {
        RegisteredPort {
            name: &port.name,
            number: port.number,
            protocol: port.protocol,
        }
    }
}

impl<'a> From<&'a Endpoint> for RegisteredEndpoint<'a> {
    fn from(endpoint: &'a Endpoint) -> Self {
        RegisteredEndpoint {
            address: endpoint.address,
            az: endpoint.az.as_deref(),
            instance: &endpoint.instance,
            index: endpoint.index,
            healthy: endpoint.healthy,
            labels: &endpoint.labels,
        }
    }
}

/// One rule config in `/v1/rules`: which version the pilot holds, and a fingerprint of its
/// content to compare with `bosh config --type boshy-istio --name <name>`.
#[derive(Serialize)]
struct ListedRuleConfig<'a> {
    name: &'a str,
    id: &'a str,
    created_at: Option<&'a str>,
    content_bytes: usize,
    /// SHA-256 of the content, lower-case hex.
    content_sha256: String,
    /// The pilot's verdict on this version of the config; `None` while it is being judged
    /// (the configs were just read, or no catalog has been built yet).
    verdict: Option<Verdict>,
}

/// What the pilot decided about one rule config, every finding naming resource and field.
#[derive(Serialize)]
struct Verdict {
    /// `accepted` (every resource), `rejected` (none) or `partly accepted`.
    status: &'static str,
    /// The resources accepted, e.g. `VirtualService reviews`.
    accepted: Vec<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl From<&ConfigVerdict> for Verdict {
    fn from(verdict: &ConfigVerdict) -> Self {
        let status = match (verdict.errors.is_empty(), verdict.accepted.is_empty()) {
            (true, _) => "accepted",
            (false, true) => "rejected",
            (false, false) => "partly accepted",
        };
        Verdict {
            status,
            accepted: verdict.accepted.iter().map(|r| r.plain()).collect(),
            errors: verdict.errors.iter().map(ToString::to_string).collect(),
            warnings: verdict.warnings.iter().map(ToString::to_string).collect(),
        }
    }
}

impl<'a> ListedRuleConfig<'a> {
    fn new(config: &'a RuleConfig, status: Option<&RuleStatus>) -> Self {
        let digest = Sha256::digest(config.content.as_bytes());
        let verdict = status
            .filter(|status| status.judged.get(&config.name) == Some(&config.id))
            .and_then(|status| {
                status
                    .validated
                    .verdicts
                    .iter()
                    .find(|v| v.config == config.name)
            })
            .map(Verdict::from);
        ListedRuleConfig {
            name: &config.name,
            id: &config.id,
            created_at: config.created_at.as_deref(),
            content_bytes: config.content.len(),
            content_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            verdict,
        }
    }
}

async fn registration(State(sources): State<Sources>) -> impl IntoResponse {
    let catalog = sources.catalog.borrow().clone();
    let services: Vec<Registration> = catalog.services.iter().map(Registration::from).collect();
    Json(services).into_response()
}

async fn rules(State(sources): State<Sources>) -> impl IntoResponse {
    let Some(rule_configs) = sources.rule_configs.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the rule configs have not been read from the director yet\n",
        )
            .into_response();
    };
    let status = sources.rule_status.borrow().clone();
    let listed: Vec<ListedRuleConfig> = rule_configs
        .configs
        .iter()
        .map(|config| ListedRuleConfig::new(config, status.as_deref()))
        .collect();
    Json(listed).into_response()
}

async fn healthz(State(sources): State<Sources>) -> impl IntoResponse {
    if sources.catalog.borrow().version == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first catalog from the director\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// `/v1/services/<hostname>`: the service and what applies to it.
#[derive(Serialize)]
struct DescribedService<'a> {
    service: Registration<'a>,
    /// The rule configs whose traffic rules the pilot serves for it (their verdicts are in
    /// `/v1/rules`).
    rule_configs: Vec<&'a str>,
    /// Who may call its instances, as the pilot compiled the security rules
    /// (docs/security.md): the mutual TLS mode of its instance group and of single ports, and
    /// the authorization policies that select the group, DENY and ALLOW. Absent for a
    /// ServiceEntry's service (outside the mesh) and until the rules were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    security: Option<crate::traffic::security::WorkloadSecurity>,
}

async fn described_service(
    State(sources): State<Sources>,
    axum::extract::Path(hostname): axum::extract::Path<String>,
) -> axum::response::Response {
    let catalog = sources.catalog.borrow().clone();
    let Some(service) = catalog.services.iter().find(|s| s.hostname == hostname) else {
        return (StatusCode::NOT_FOUND, "no such service in the catalog\n").into_response();
    };
    let snapshot = sources.proxies.snapshots.borrow().clone();
    let rule_configs = snapshot
        .as_deref()
        .map_or_else(Vec::new, |snapshot| snapshot.rule_configs_of(&hostname));
    let security = sources
        .rule_status
        .borrow()
        .clone()
        .filter(|_| service.is_job())
        .map(|status| {
            let workload = crate::traffic::security::WorkloadKey {
                deployment: service.key.deployment.clone(),
                instance_group: service.key.instance_group.clone(),
            };
            status.traffic.security.of(&workload).into_owned()
        });
    Json(DescribedService {
        service: Registration::from(service),
        rule_configs,
        security,
    })
    .into_response()
}

async fn graph(State(sources): State<Sources>) -> axum::response::Response {
    let catalog = sources.catalog.borrow().clone();
    let windows = sources.proxies.traffic.current(std::time::Instant::now());
    Json(crate::console::graph::build(&catalog, &windows)).into_response()
}

/// One of the console's files, with headers that keep the page to its own scripts and out of
/// other sites' frames: it shows everything the API does.
async fn console_asset(asset: Option<axum::extract::Path<String>>) -> axum::response::Response {
    let name = asset.as_ref().map_or("", |path| path.as_str());
    let Some((content_type, body)) = crate::console::asset(name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn proxies(State(sources): State<Sources>) -> Json<ProxiesReport> {
    Json(sources.proxies.report())
}

/// `?type=` of `/v1/proxies/<instance>/config` and `/diff`.
#[derive(serde::Deserialize)]
struct ViewQuery {
    r#type: Option<String>,
}

/// `/v1/proxies/<instance>/config` and `/v1/proxies/<instance>/diff`: what the pilot sends the
/// Envoy `<instance>` names now, through that Envoy's stream (`xds::stream_config`), and how
/// that differs from what it ACKed. `<instance>` is how the BOSH CLI names an instance
/// (`apricot/3`, `sample/apricot/3`, `apricot/<id>`) or a node id.
async fn proxy_view(
    State(sources): State<Sources>,
    axum::extract::Path(proxy_and_view): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<ViewQuery>,
) -> axum::response::Response {
    let Some((wanted, view)) = proxy_and_view
        .rsplit_once('/')
        .filter(|(_, view)| ["config", "diff"].contains(view))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let only = match query.r#type.as_deref().map(ResourceType::from_word) {
        None => None,
        Some(Some(only)) => Some(only),
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                "type: one of cds, eds, lds, rds (or clusters, endpoints, listeners, routes)\n",
            )
                .into_response()
        }
    };
    let Some(snapshot) = sources.proxies.snapshots.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pilot has no configuration to send yet (no catalog from the director)\n",
        )
            .into_response();
    };
    let (proxy, stream) = match sources.proxies.board.find(wanted, Some(snapshot.seq())) {
        Ok(found) => found,
        Err(Lookup::NotFound) => {
            let reason = format!("no Envoy connected to this pilot is {wanted}\n");
            return (StatusCode::NOT_FOUND, reason).into_response();
        }
        Err(Lookup::Ambiguous(candidates)) => {
            let reason = format!(
                "{wanted} names {} Envoys: {}; name one as deployment/group/index\n",
                candidates.len(),
                candidates.join(", ")
            );
            return (StatusCode::CONFLICT, reason).into_response();
        }
    };
    let types = stream.config(&snapshot);
    if view == "config" {
        Json(stream_config::config_report(proxy, &snapshot, types, only)).into_response()
    } else {
        let types = types
            .into_iter()
            .filter(|t| only.is_none_or(|only| only == t.resource_type))
            .collect();
        Json(stream_config::diff_report(proxy, &snapshot, types)).into_response()
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::global().render(),
    )
}

/// Serves `router` on `listener` with HTTP/1.1 and h2c. Unlike `axum::serve`, the open
/// connections belong to this future: dropping it (a pilot shutting down a server) closes
/// them, long-lived streams included. Handlers can extract `ConnectInfo<SocketAddr>`.
pub(crate) async fn serve_router(
    listener: TcpListener,
    router: Router,
    server: &'static str,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!("{server} server listening on {local}");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    close_when_unacknowledged(&stream);
                    connections.spawn(serve_connection(stream, peer, router.clone()));
                }
                Err(err) => {
                    // Out of file descriptors or an aborted handshake: wait, do not spin.
                    tracing::warn!("{server} server on {local}: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How long data sent on a connection may stay unacknowledged before the kernel closes it.
const UNACKNOWLEDGED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A peer that vanished without closing (its VM deleted, the network cut) never answers: the
/// kernel would retransmit for many minutes before it gave up. The name-table stream writes a
/// heartbeat every 10 s, so with this its end is noticed within `UNACKNOWLEDGED_TIMEOUT` and
/// the agent's health report stops counting (docs/health.md).
pub(crate) fn close_when_unacknowledged(stream: &tokio::net::TcpStream) {
    let millis = UNACKNOWLEDGED_TIMEOUT.as_millis() as u32;
    if let Err(err) =
        nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::TcpUserTimeout, &millis)
    {
        tracing::debug!("cannot set TCP_USER_TIMEOUT: {err}");
    }
}

/// Serves one connection (plain TCP, or TLS already accepted) until it ends.
pub(crate) async fn serve_connection<S>(stream: S, peer: SocketAddr, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    if let Err(err) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, "connection ended: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::director::RuleConfigs;
    use axum::body::Body;
    use axum::http::{Method, Request};

    #[tokio::test]
    async fn accepted_connections_are_closed_when_their_data_stays_unacknowledged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        close_when_unacknowledged(&accepted);
        let set =
            nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::TcpUserTimeout)
                .unwrap();
        assert_eq!(u128::from(set), UNACKNOWLEDGED_TIMEOUT.as_millis());
    }

    fn catalog() -> Catalog {
        testing::catalog(
            42,
            [service("d", "g", "j")
                .port("http", 80, Protocol::Http)
                .endpoint(Endpoint {
                    az: Some("z1".into()),
                    instance: "uuid-1".into(),
                    index: Some(0),
                    labels: labels([("version", "v2"), ("bosh.io/az", "z1")]),
                    ..endpoint("10.0.0.1")
                })
                .endpoint(Endpoint {
                    instance: "uuid-2".into(),
                    healthy: false,
                    ..endpoint("10.0.0.2")
                })],
        )
    }

    fn rule_configs() -> RuleConfigs {
        let config = |id: &str, name: &str, content: &str| RuleConfig {
            id: id.into(),
            name: name.into(),
            content: content.into(),
            created_at: Some("2024-05-01 12:34:56 UTC".into()),
        };
        RuleConfigs {
            configs: vec![
                config("7", "ratings", "{}\n"),
                config("9", "reviews", "password: hunter2-in-a-rule\n"),
            ],
        }
    }

    async fn call(
        catalog: Catalog,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        call_with_rules(catalog, Some(rule_configs()), method, path).await
    }

    async fn call_with_rules(
        catalog: Catalog,
        rule_configs: Option<RuleConfigs>,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        call_with_status(catalog, rule_configs, None, method, path).await
    }

    async fn call_with_status(
        catalog: Catalog,
        rule_configs: Option<RuleConfigs>,
        rule_status: Option<RuleStatus>,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let sources = sources_of(catalog, rule_configs, rule_status);
        send(router(sources, None), method, path).await
    }

    fn sources_of(
        catalog: Catalog,
        rule_configs: Option<RuleConfigs>,
        rule_status: Option<RuleStatus>,
    ) -> Sources {
        Sources {
            catalog: watch::channel(Arc::new(catalog)).1,
            rule_configs: watch::channel(rule_configs.map(Arc::new)).1,
            rule_status: watch::channel(rule_status.map(Arc::new)).1,
            proxies: Proxies::none(),
        }
    }

    async fn response(router: Router, method: Method, path: &str) -> axum::response::Response {
        router
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    async fn send(
        router: Router,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let response = response(router, method, path).await;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn registration_lists_services_with_exactly_the_contract_keys() {
        let (status, content_type, body) = call(catalog(), Method::GET, "/v1/registration").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "hostname": "j.g.d.boshy",
                "vip": "169.254.255.1",
                "deployment": "d",
                "instance_group": "g",
                "job": "j",
                "ports": [{"name": "http", "number": 80, "protocol": "http"}],
                "endpoints": [
                    {"address": "10.0.0.1", "az": "z1", "instance": "uuid-1", "index": 0, "healthy": true,
                     "labels": {"bosh.io/az": "z1", "version": "v2"}},
                    {"address": "10.0.0.2", "az": null, "instance": "uuid-2", "index": null, "healthy": false,
                     "labels": {}}
                ]
            }])
        );
        let (_, _, empty) = call(Catalog::default(), Method::GET, "/v1/registration").await;
        assert_eq!(empty, "[]");
    }

    #[tokio::test]
    async fn registration_shows_the_names_envoy_resolves_for_a_service_resolved_through_dns() {
        use crate::catalog::model::{DnsEndpoint, DnsResolution};
        let db = Service {
            service_entry: Some("external/db".into()),
            ..service("", "", "")
                .port("tcp-postgres", 5432, Protocol::Tcp)
                .dns(
                    DnsResolution::Dns,
                    [
                        DnsEndpoint {
                            az: Some("z1".into()),
                            labels: labels([("role", "primary")]),
                            ..testing::dns_endpoint("primary.db.example.com")
                        },
                        testing::dns_endpoint("192.0.2.7"),
                    ],
                )
                .build()
        };
        let (status, _, body) =
            call(testing::catalog(1, [db]), Method::GET, "/v1/registration").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json[0]["endpoints"], serde_json::json!([]));
        assert_eq!(json[0]["service_entry"], "external/db");
        assert_eq!(
            json[0]["dns"],
            serde_json::json!({
                "resolution": "DNS",
                "endpoints": [
                    {"address": "primary.db.example.com", "az": "z1", "labels": {"role": "primary"}},
                    {"address": "192.0.2.7", "az": null, "labels": {}}
                ]
            })
        );
        let mesh = crate::rules::MeshView::from_registration_json(&body).unwrap();
        assert!(
            mesh.hosts.is_empty(),
            "`boshy rules check` reads it, and leaves the entry's services to the rules"
        );
    }

    #[tokio::test]
    async fn registration_shows_a_workload_groups_service_with_its_vip_and_no_endpoints() {
        let vms = Service {
            workload_group: Some("legacy/reviews-vms".into()),
            ..service("", "", "")
                .port("http", 9080, Protocol::Http)
                .build()
        };
        let (status, _, body) =
            call(testing::catalog(1, [vms]), Method::GET, "/v1/registration").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json[0]["workload_group"], "legacy/reviews-vms");
        assert_eq!(json[0]["vip"], "169.254.255.1");
        assert_eq!(json[0]["endpoints"], serde_json::json!([]));
        assert_eq!(json[0].get("service_entry"), None);
        let mesh = crate::rules::MeshView::from_registration_json(&body).unwrap();
        assert!(
            mesh.hosts.is_empty(),
            "`boshy rules check` leaves the group's service to the rules, as the pilot does"
        );
    }

    #[tokio::test]
    async fn rules_list_each_config_read_with_a_fingerprint_but_never_its_content() {
        let (status, content_type, body) = call(catalog(), Method::GET, "/v1/rules").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "ratings", "id": "7", "created_at": "2024-05-01 12:34:56 UTC",
                 "content_bytes": 3,
                 "content_sha256": "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356",
                 "verdict": null},
                {"name": "reviews", "id": "9", "created_at": "2024-05-01 12:34:56 UTC",
                 "content_bytes": 28,
                 "content_sha256": "02ae9b3f84597f8a89fb9afa6147411aa80f23686c72143b4ed31c44dccb75d6",
                 "verdict": null}
            ])
        );
        assert!(!body.contains("hunter2"), "{body}");
    }

    /// A verdict is shown beside the version of the config it judged, never beside a newer
    /// one that is still being judged.
    #[tokio::test]
    async fn rules_show_the_verdict_on_the_version_judged() {
        let good = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: j\nspec:\n  host: j.g.d.boshy\n";
        let configs = RuleConfigs {
            configs: vec![
                RuleConfig {
                    content: good.into(),
                    ..rule_configs().configs[0].clone()
                },
                rule_configs().configs[1].clone(),
            ],
        };
        let parsed: Vec<_> = configs
            .configs
            .iter()
            .map(|c| crate::rules::parse_config(&c.name, &c.content))
            .collect();
        let judged_status = RuleStatus {
            // reviews was judged at an older version than the one now held.
            judged: [("ratings", "7"), ("reviews", "8")]
                .map(|(n, id)| (n.to_string(), id.to_string()))
                .into(),
            validated: crate::rules::validate(&parsed, None),
            traffic: Default::default(),
        };
        let (status, _, body) = call_with_status(
            catalog(),
            Some(configs),
            Some(judged_status),
            Method::GET,
            "/v1/rules",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json[0]["verdict"],
            serde_json::json!({"status": "accepted", "accepted": ["DestinationRule j"],
                               "errors": [], "warnings": []})
        );
        assert_eq!(json[1]["verdict"], serde_json::Value::Null, "{body}");
    }

    #[tokio::test]
    async fn rules_are_503_until_the_configs_were_read_and_empty_when_there_are_none() {
        let (status, _, body) = call_with_rules(catalog(), None, Method::GET, "/v1/rules").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not been read"), "{body}");
        let none = Some(RuleConfigs::default());
        let (status, _, body) = call_with_rules(catalog(), none, Method::GET, "/v1/rules").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    }

    #[tokio::test]
    async fn healthz_is_503_until_the_first_director_catalog() {
        let (status, _, body) = call(Catalog::default(), Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("waiting"), "{body}");
        let (status, _, body) = call(catalog(), Method::GET, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (status, content_type, body) = call(catalog(), Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(crate::metrics::CONTENT_TYPE));
        assert!(
            body.contains("# TYPE boshy_catalog_services gauge"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn proxies_are_every_stream_on_the_board() {
        let board = Arc::new(SyncBoard::default());
        let stream = board.join_anonymous(0);
        stream.status().node = "apricot/0".into();
        let sources = Sources {
            catalog: watch::channel(Arc::new(catalog())).1,
            rule_configs: watch::channel(None).1,
            rule_status: watch::channel(None).1,
            proxies: Proxies {
                board,
                ..Proxies::none()
            },
        };
        let (status, content_type, body) =
            send(router(sources, None), Method::GET, "/v1/proxies").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let report: ProxiesReport = serde_json::from_str(&body).unwrap();
        assert_eq!(report.snapshot, None);
        assert_eq!(report.proxies.len(), 1);
        assert_eq!(report.proxies[0].node, "apricot/0");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&str> = json["proxies"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "address",
                "ads",
                "connected_at",
                "deployment",
                "index",
                "instance_group",
                "instance_id",
                "last_sync",
                "node",
                "snapshots_behind",
                "synced_snapshot",
                "types"
            ],
            "the shape is a contract of boshy mesh status"
        );
    }

    #[tokio::test]
    async fn an_envoys_config_and_diff_are_read_through_its_stream() {
        use crate::xds::client::testing::node;
        use crate::xds::proxy_status::ProxyStatus;
        use crate::xds::sotw::SotwStreamState;
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use std::sync::Mutex;

        let catalog = catalog();
        let snapshot = Arc::new(Snapshot::from_catalog(&catalog));
        let board = Arc::new(SyncBoard::default());
        let connect = |node: Node| {
            let state = Arc::new(Mutex::new(SotwStreamState::default()));
            let now = std::time::SystemTime::now();
            let sync = board.join(0, ProxyStatus::connected("sotw", None, now), state.clone());
            sync.status().identify(&node);
            let request = DiscoveryRequest {
                node: Some(node),
                type_url: ResourceType::Cluster.type_url().into(),
                ..Default::default()
            };
            let (_, response) = state.lock().unwrap().on_request(&request, Some(&snapshot));
            (sync, state, response.expect("the clusters"))
        };
        let (_sync, state, sent) = connect(node());
        let sources = Sources {
            proxies: Proxies {
                board: board.clone(),
                snapshots: watch::channel(Some(snapshot.clone())).1,
                ..Proxies::none()
            },
            ..sources_of(catalog.clone(), None, None)
        };
        let get = |path: &'static str| send(router(sources.clone(), None), Method::GET, path);
        let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

        let (status, _, body) = get("/v1/proxies/d/g/client/config").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let config = json(&body);
        assert_eq!(config["proxy"]["instance_id"], "client");
        assert_eq!(config["types"][0]["type"], "cds");
        let cluster = &config["types"][0]["resources"][0];
        assert_eq!(cluster["name"], "outbound|80||j.g.d.boshy");
        assert_eq!(cluster["bytes"], sent.resources[0].value.len());
        assert_eq!(cluster["summary"]["kind"], "cluster");
        assert_eq!(cluster["summary"]["endpoints"], 1, "the healthy one");
        let (_, _, other_type) = get("/v1/proxies/g/client/config?type=listeners").await;
        assert_eq!(json(&other_type)["types"], serde_json::json!([]));

        let (status, _, body) = get("/v1/proxies/g/client/diff").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let diff = json(&body);
        assert_eq!(diff["in_sync"], false, "sent, not ACKed");
        assert_eq!(
            diff["types"][0]["added"][0]["name"],
            "outbound|80||j.g.d.boshy"
        );
        let ack = DiscoveryRequest {
            type_url: sent.type_url.clone(),
            version_info: sent.version_info.clone(),
            response_nonce: sent.nonce.clone(),
            ..Default::default()
        };
        state.lock().unwrap().on_request(&ack, Some(&snapshot));
        let (_, _, body) = get("/v1/proxies/g/client/diff").await;
        assert_eq!(json(&body)["in_sync"], true, "{body}");

        let (status, _, body) = get("/v1/proxies/g/nobody/config").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "no Envoy connected to this pilot is g/nobody\n");
        let (status, _, _) = get("/v1/proxies/g/client/config?type=secrets").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = get("/v1/proxies/g/client/other").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The same group and id in another deployment.
        let mut elsewhere = node();
        let fields = &mut elsewhere.metadata.as_mut().unwrap().fields;
        fields.insert(
            "deployment".into(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                    "e".into(),
                )),
            },
        );
        let _other = connect(elsewhere);
        let (status, _, body) = get("/v1/proxies/g/client/config").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            "g/client names 2 Envoys: d/g/client, e/g/client; name one as deployment/group/index\n"
        );
        let (status, _, _) = get("/v1/proxies/e/g/client/diff").await;
        assert_eq!(status, StatusCode::OK);

        // Behind the same access as every other path.
        let guarded = guarded(
            router(sources.clone(), None),
            Arc::new(Access {
                tokens: None,
                workloads: None,
            }),
        );
        let (status, _, _) = send(guarded, Method::GET, "/v1/proxies/d/g/client/config").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_service_is_described_with_its_rule_configs() {
        let catalog = catalog();
        let snapshot = Arc::new(Snapshot::from_catalog(&catalog));
        let sources = Sources {
            catalog: watch::channel(Arc::new(catalog)).1,
            rule_configs: watch::channel(None).1,
            rule_status: watch::channel(None).1,
            proxies: Proxies {
                snapshots: watch::channel(Some(snapshot)).1,
                ..Proxies::none()
            },
        };
        let (status, _, body) = send(
            router(sources.clone(), None),
            Method::GET,
            "/v1/services/j.g.d.boshy",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (_, _, registration) = call(
            sources.catalog.borrow().as_ref().clone(),
            Method::GET,
            "/v1/registration",
        )
        .await;
        let registration: serde_json::Value = serde_json::from_str(&registration).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": registration[0], "rule_configs": []})
        );
        let (status, _, _) = send(
            router(sources, None),
            Method::GET,
            "/v1/services/x.g.d.boshy",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_described_service_says_who_may_call_it() {
        use crate::traffic::security::{
            AuthzAction, AuthzMatch, AuthzPolicy, AuthzRule, AuthzSource, MtlsMode, WorkloadKey,
            WorkloadSecurity,
        };
        let allow_apricot = AuthzPolicy {
            config: "sample-rules".into(),
            name: "only-apricot".into(),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule {
                from: vec![AuthzSource {
                    principals: vec![AuthzMatch::Exact(
                        "boshy/deployment/d/instance_group/apricot".into(),
                    )],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut traffic = crate::traffic::TrafficRules::default();
        let workload = WorkloadKey {
            deployment: "d".into(),
            instance_group: "g".into(),
        };
        let security = WorkloadSecurity {
            mtls: MtlsMode::Strict,
            port_mtls: Default::default(),
            policies: vec![allow_apricot],
        };
        traffic
            .security
            .workloads
            .insert(workload, security.clone());
        let status = RuleStatus {
            judged: Default::default(),
            validated: crate::rules::validate(&[], None),
            traffic: Arc::new(traffic),
        };
        let (code, _, body) = call_with_status(
            catalog(),
            Some(RuleConfigs::default()),
            Some(status),
            Method::GET,
            "/v1/services/j.g.d.boshy",
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["security"], serde_json::to_value(&security).unwrap());
        let (_, _, before_rules) = call(catalog(), Method::GET, "/v1/services/j.g.d.boshy").await;
        let json: serde_json::Value = serde_json::from_str(&before_rules).unwrap();
        assert!(
            json.get("security").is_none(),
            "unknown before the rules are read"
        );
    }

    #[tokio::test]
    async fn the_graph_shows_the_catalog_with_the_calls_the_agents_report() {
        let traffic = Arc::new(TrafficBoard::default());
        let report = crate::console::wire::TrafficReport {
            deployment: "d".into(),
            instance: "caller-0".into(),
            window_ms: 10_000,
            calls: vec![crate::console::wire::Calls {
                destination: "j.g.d.boshy".into(),
                requests: 20,
                ..Default::default()
            }],
        };
        let caller = crate::console::graph::caller_group("d", "caller", false);
        traffic.take(caller, report, std::time::Instant::now());
        let sources = Sources {
            proxies: Proxies {
                traffic,
                ..Proxies::none()
            },
            ..sources_of(catalog(), None, None)
        };
        let (status, content_type, body) =
            send(router(sources, None), Method::GET, "/v1/graph").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let graph: serde_json::Value = serde_json::from_str(&body).unwrap();
        let groups: Vec<&str> = graph["deployments"][0]["instance_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(groups, ["caller", "g"], "{body}");
        assert_eq!(graph["edges"][0]["source"]["instance_group"], "caller");
        assert_eq!(graph["edges"][0]["destination"], "j.g.d.boshy");
        assert_eq!(graph["edges"][0]["requests_per_second"], 2.0);
    }

    #[tokio::test]
    async fn the_console_is_served_with_a_policy_that_keeps_it_to_its_own_scripts() {
        for (path, kind) in [
            ("/console/", "text/html; charset=utf-8"),
            ("/console/index.html", "text/html; charset=utf-8"),
            ("/console/console.js", "text/javascript; charset=utf-8"),
            ("/console/console.css", "text/css; charset=utf-8"),
        ] {
            let sources = sources_of(catalog(), None, None);
            let response = response(router(sources, None), Method::GET, path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], kind, "{path}");
            assert!(headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'; frame-ancestors 'none'"));
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        let (status, _, _) = call(catalog(), Method::GET, "/console/other.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let sources = sources_of(catalog(), None, None);
        let response = response(router(sources, None), Method::GET, "/console").await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[header::LOCATION], "console/");
    }

    #[tokio::test]
    async fn the_api_is_read_only() {
        for path in [
            "/v1/registration",
            "/v1/rules",
            "/v1/proxies",
            "/v1/proxies/g/0/config",
            "/v1/proxies/g/0/diff",
            "/v1/services/j.g.d.boshy",
            "/v1/graph",
            "/console/",
            "/console/console.js",
            "/healthz",
            "/metrics",
        ] {
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                let (status, _, _) = call(catalog(), method.clone(), path).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
        let (status, _, _) = call(catalog(), Method::GET, "/v1/other").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for path in ["/", "/v1/other", "/v1/registration/x"] {
            let (status, _, _) = call(catalog(), Method::POST, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
        }
    }

    #[tokio::test]
    async fn serves_over_a_real_listener_and_follows_catalog_changes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let (_rules_tx, rules_rx) = watch::channel(None);
        let (_status_tx, status_rx) = watch::channel(None);
        let server = tokio::spawn(serve(listener, rx, rules_rx, status_rx, Proxies::none()));
        let client = reqwest::Client::new();
        let healthz = format!("http://{address}/healthz");
        let status = client.get(&healthz).send().await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        tx.send(Arc::new(catalog())).unwrap();
        let status = client.get(&healthz).send().await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::OK);
        let services: serde_json::Value = client
            .get(format!("http://{address}/v1/registration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(services[0]["hostname"], "j.g.d.boshy");
        server.abort();
    }
}
