//! The pilot side of the name-table stream, and the agents' other requests on the names
//! port: health reports, drains, scope changes, certificate requests.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stream_status::{AgentStatus, NameStreamEntry, NameStreams};
use super::table::NameTable;
use super::wire::{Message, CONTENT_TYPE, HEARTBEAT_INTERVAL, WATCH_PATH};
use crate::catalog::model::{Catalog, InstanceRef};
use crate::console::wire::{TrafficReport, TRAFFIC_PATH};
use crate::health::registry::AgentStream;
use crate::health::report::{DRAINED_PATH, REPORT_PATH};
use crate::health::{instance_out, AgentRegistry, AgentReport, ProbeIndex, ProbeSet};
use crate::identity::issuer::Issuer;
use crate::identity::wire::CSR_PATH;
use crate::metrics;
use crate::scope::wire::SCOPE_PATH;
use crate::scope::{ScopeAnswer, ScopeChange, ScopeRequest};
use crate::text::clip;
use crate::workloads::{Peer, Workloads};

/// The TLS peer of a request, when the names port is served over TLS.
type Client = Option<axum::Extension<Peer>>;

/// Whether the request's client may speak for `instance`: a joined VM's certificate only for
/// its own registration (a BOSH VM's agent is held to its address alone, the mesh client
/// certificate being every BOSH VM's; so is a joined VM's, beside this).
fn own_claim(client: &Client, instance: &InstanceRef) -> Result<(), String> {
    match client {
        Some(axum::Extension(Peer::Workload(identity))) if identity.instance_ref() != *instance => {
            Err(format!(
                "this certificate is the joined VM {}'s ({}), which speaks for no other instance",
                identity.id,
                identity.group_path()
            ))
        }
        _ => Ok(()),
    }
}

/// An agent's report is a few ports: anything bigger is not one.
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Serves `GET /v1/names/watch`, and the agents' `POST /v1/names/health` and
/// `GET /v1/names/drained` (docs/health.md), until the listener fails. Dropping the future closes every
/// open stream too, so followers notice at once and reconnect elsewhere. With `identity`, also
/// An agent's request refused: counted by `kind`, logged naming `what` and the instance it
/// claimed, answered `status` with the reason.
fn refuse_agent(
    what: &str,
    peer: SocketAddr,
    instance: &InstanceRef,
    status: StatusCode,
    kind: &str,
    reason: String,
) -> Response {
    metrics::global().agent_refusal(kind);
    tracing::debug!(%peer, deployment = %clip(&instance.deployment), instance = %clip(&instance.instance_id), "{what} refused: {reason}");
    (status, reason).into_response()
}

/// `POST /v1/names/traffic`: an agent's last window of its VM's calls, for the console; taken
/// when the director lists its instance at the address the request comes from, and kept under
/// the instance group the director lists it in, or for a joined VM (its registration's
/// certificate, from the registration's address) under its WorkloadGroup.
async fn take_traffic(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    Json(report): Json<TrafficReport>,
) -> Response {
    let instance = report.instance_ref();
    let refused = |status: StatusCode, kind: &str, reason: String| {
        refuse_agent("calls report", peer, &instance, status, kind, reason)
    };
    if let Err(reason) = own_claim(&client, &instance) {
        return refused(StatusCode::FORBIDDEN, "claim", reason);
    }
    let Some(xds) = config.agents.xds() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this pilot serves no xDS").into_response();
    };
    if let Err(reason) = report.check() {
        return refused(StatusCode::BAD_REQUEST, "calls_report", reason);
    }
    // `own_claim` held a joined VM's certificate to its own registration, and the scope
    // registry lists registrations at their addresses: a VM that left is refused there.
    let registered = matches!(client, Some(axum::Extension(Peer::Workload(_))));
    match xds.scopes.instance_group(&instance, peer.ip()) {
        Ok(group) => {
            let source =
                crate::console::graph::caller_group(&instance.deployment, &group, registered);
            config
                .agents
                .traffic()
                .take(source, report, std::time::Instant::now());
            StatusCode::NO_CONTENT.into_response()
        }
        Err(unverified) => refused(StatusCode::FORBIDDEN, "claim", unverified.to_string()),
    }
}

/// `POST /v1/identity/csr` (docs/security.md); without, that answers 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    identity: Option<Issuer>,
) -> anyhow::Result<()> {
    serve_with(
        listener,
        catalog,
        agents,
        identity,
        AgentSettings::default(),
    )
    .await
}

/// Like [`serve`], telling the agents `settings`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    identity: Option<Issuer>,
    settings: AgentSettings,
) -> anyhow::Result<()> {
    serve_with_heartbeat(
        listener,
        catalog,
        agents,
        HEARTBEAT_INTERVAL,
        identity,
        settings,
    )
    .await
}

/// Like [`serve`], over mutual TLS: only followers presenting a certificate that `tls`
/// trusts get a stream; the others are refused in the handshake.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    tls: Arc<rustls::ServerConfig>,
    identity: Option<Issuer>,
) -> anyhow::Result<()> {
    serve_tls_with(
        listener,
        catalog,
        agents,
        tls,
        identity,
        AgentSettings::default(),
        None,
    )
    .await
}

/// Like [`serve_tls`], telling the agents `settings`; with `workloads`, joined VMs renew
/// their certificates here (`workloads::renewal`), which only mutual TLS can tell apart.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    tls: Arc<rustls::ServerConfig>,
    identity: Option<Issuer>,
    settings: AgentSettings,
    workloads: Option<Arc<Workloads>>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!("names server listening on {local} (mutual TLS)");
    let router = router(catalog, agents, HEARTBEAT_INTERVAL, identity, settings)
        .merge(crate::workloads::renewal::router(workloads));
    let mut incoming = crate::tls::incoming(listener, tls, "names");
    // The connections belong to this future, as with `serve`: dropping it closes them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = incoming.next() => {
                let stream = accepted.context("the TLS accept loop stopped")??;
                let Ok(peer) = crate::tls::peer_addr(&stream) else { continue };
                // A joined VM's certificate speaks for its own registration only (`own_claim`).
                let client = Peer::of(stream.get_ref().get_ref().1.peer_certificates());
                let router = router.clone().layer(axum::Extension(client));
                connections.spawn(crate::api::serve_connection(stream, peer, router));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

pub(crate) async fn serve_with_heartbeat(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    heartbeat: Duration,
    identity: Option<Issuer>,
    settings: AgentSettings,
) -> anyhow::Result<()> {
    let router = router(catalog, agents, heartbeat, identity, settings);
    crate::api::serve_router(listener, router, "names").await
}

/// What the names server tells agents beyond what the catalog says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSettings {
    /// How often the agent of a VM registered into a WorkloadGroup reports even when nothing
    /// changed (its heartbeat; the pilot's `workloads.heartbeat_seconds`). BOSH instances'
    /// agents report on change only.
    pub workload_heartbeat_seconds: u32,
}

/// The pilot config's default `workloads.heartbeat_seconds`.
pub const DEFAULT_WORKLOAD_HEARTBEAT_SECONDS: u32 = 10;

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            workload_heartbeat_seconds: DEFAULT_WORKLOAD_HEARTBEAT_SECONDS,
        }
    }
}

fn router(
    catalog: watch::Receiver<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    heartbeat: Duration,
    identity: Option<Issuer>,
    settings: AgentSettings,
) -> Router {
    Router::new()
        .route(WATCH_PATH, get(watch_names))
        .route(REPORT_PATH, post(take_report))
        .route(DRAINED_PATH, get(wait_drained))
        .route(SCOPE_PATH, post(take_scope))
        .route(TRAFFIC_PATH, post(take_traffic))
        .route(CSR_PATH, post(take_csr))
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .with_state(WatchConfig {
            views: follow_views(catalog.clone(), agents.name_streams().clone(), settings),
            catalog,
            agents,
            heartbeat,
            identity: identity.map(|issuer| {
                Arc::new(IdentityEndpoint {
                    issuer,
                    refusals: Mutex::default(),
                })
            }),
        })
}

#[derive(Clone)]
struct WatchConfig {
    catalog: watch::Receiver<Arc<Catalog>>,
    views: watch::Receiver<Arc<NamesView>>,
    agents: Arc<AgentRegistry>,
    heartbeat: Duration,
    /// `None` when workload identity is off.
    identity: Option<Arc<IdentityEndpoint>>,
}

/// The certificate requests' issuer, and the refusals logged, once per peer and reason.
struct IdentityEndpoint {
    issuer: Issuer,
    refusals: Mutex<crate::tls::Refusals>,
}

/// What every stream reads of a catalog, derived once per catalog rather than once per stream
/// (thousands of agents follow one pilot, and an endpoint's health changes the catalog).
#[derive(Debug, Default)]
struct NamesView {
    /// `None` for the placeholder catalog. The same `Arc` as the previous view's while the
    /// names and VIPs stay the same, so a stream tells a new table by pointer.
    table: Option<Arc<SharedTable>>,
    probes: ProbeIndex,
}

/// A table and its line, encoded once for every stream.
#[derive(Debug)]
struct SharedTable {
    table: NameTable,
    line: Bytes,
}

/// The views of the catalogs `catalog` publishes, with the probes `settings` say.
/// Tells `streams` which table is served.
fn follow_views(
    mut catalog: watch::Receiver<Arc<Catalog>>,
    streams: Arc<NameStreams>,
    settings: AgentSettings,
) -> watch::Receiver<Arc<NamesView>> {
    let (tx, rx) = watch::channel(Arc::new(NamesView::default()));
    tokio::spawn(async move {
        loop {
            let current = catalog.borrow_and_update().clone();
            let previous = tx.borrow().table.clone();
            let table = (current.version != 0).then(|| {
                let table = NameTable::from_catalog(&current);
                match previous {
                    Some(previous)
                        if previous.table.tld == table.tld
                            && previous.table.names == table.names =>
                    {
                        previous
                    }
                    _ => Arc::new(SharedTable {
                        line: Bytes::from(Message::Table(table.clone()).to_line()),
                        table,
                    }),
                }
            });
            if let Some(table) = &table {
                streams.serving(table.table.version);
            }
            let view = NamesView {
                table,
                probes: ProbeIndex::of(&current, settings.workload_heartbeat_seconds),
            };
            if tx.send(Arc::new(view)).is_err() || catalog.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The instance a follower says it runs on: `?deployment=<name>&instance=<id>`, sent by
/// agents that report health. Absent for followers that only want the table.
#[derive(Debug, serde::Deserialize)]
struct Claim {
    deployment: Option<String>,
    instance: Option<String>,
}

async fn watch_names(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    Query(claim): Query<Claim>,
) -> Response {
    let claimed = match (&claim.deployment, &claim.instance) {
        (Some(deployment), Some(instance_id)) => Some(InstanceRef {
            deployment: deployment.clone(),
            instance_id: instance_id.clone(),
        }),
        _ => None,
    };
    if let Some(Err(reason)) = claimed.as_ref().map(|i| own_claim(&client, i)) {
        metrics::global().agent_refusal("claim");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    let status = AgentStatus::connected(peer, claimed.as_ref(), SystemTime::now());
    let entry = config.agents.name_streams().open(status);
    let agent = match (claim.deployment, claim.instance) {
        (Some(deployment), Some(instance_id)) => Some(AgentClaim {
            instance: InstanceRef {
                deployment,
                instance_id,
            },
            registry: config.agents.clone(),
            open: None,
            probes: None,
            refusal: None,
        }),
        _ => None,
    };
    let stream = NameStream {
        views: config.views,
        heartbeat: config.heartbeat,
        sent: None,
        agent,
        counted: OpenStream::new(peer, entry),
    };
    let lines = futures::stream::unfold(stream, |mut stream| async move {
        let line = stream.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(line), stream))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(lines))
        .expect("static headers are valid")
}

/// One follower's stream: what it has been sent, and when to send next.
struct NameStream {
    views: watch::Receiver<Arc<NamesView>>,
    heartbeat: Duration,
    /// The last table sent; `None` until the pilot has a catalog from the director.
    sent: Option<Arc<SharedTable>>,
    /// The follower's agent, when it named its instance.
    agent: Option<AgentClaim>,
    counted: OpenStream,
}

/// The instance an agent's stream claims, and what came of the claim.
struct AgentClaim {
    instance: InstanceRef,
    registry: Arc<AgentRegistry>,
    /// Held while the claim is verified: the agent's reports count until it drops.
    open: Option<AgentStream>,
    /// The probes last sent.
    probes: Option<ProbeSet>,
    /// Why the claim was last refused, logged once per reason.
    refusal: Option<String>,
}

impl AgentClaim {
    /// Checks the claim against the catalog's `index` (the instance is an endpoint, listed at
    /// `peer`); returns the probes to send when they changed.
    fn follow(&mut self, index: &ProbeIndex, peer: SocketAddr) -> Option<ProbeSet> {
        match index.probes_for(&self.instance, peer.ip()) {
            Ok(probes) => {
                self.refusal = None;
                if self.open.is_none() {
                    self.open = Some(self.registry.open(self.instance.clone()));
                }
                if self.probes.as_ref() == Some(&probes) {
                    return None;
                }
                self.probes = Some(probes.clone());
                Some(probes)
            }
            Err(unverified) => {
                // Its reports no longer count; the director's view takes over.
                self.open = None;
                self.probes = None;
                let reason = unverified.to_string();
                if self.refusal.as_ref() != Some(&reason) {
                    metrics::global().agent_refusal("claim");
                    tracing::warn!(%peer, deployment = %clip(&self.instance.deployment), instance = %clip(&self.instance.instance_id), "an agent's health is not taken: {reason}");
                    self.refusal = Some(reason);
                }
                None
            }
        }
    }
}

impl NameStream {
    /// The next line to send: the table when it differs from what this follower has, else a
    /// heartbeat after `heartbeat` of silence. `None` ends the stream (the pilot is stopping).
    ///
    /// Catalog version 0 is the pilot's placeholder before its first director poll: it is
    /// never sent as a table, because followers would replace a good table with an empty one
    /// every time a pilot restarts. Heartbeats keep the stream alive meanwhile.
    async fn next_line(&mut self) -> Option<Bytes> {
        let deadline = Instant::now() + self.heartbeat;
        loop {
            let view = self.views.borrow_and_update().clone();
            let changed = match (&view.table, &self.sent) {
                (Some(table), Some(sent)) => !Arc::ptr_eq(table, sent),
                (table, _) => table.is_some(),
            };
            if changed {
                self.sent = view.table.clone();
                let table = view.table.as_ref()?;
                self.counted
                    .entry
                    .status()
                    .table_sent(table.table.version, SystemTime::now());
                return Some(table.line.clone());
            }
            // Probes follow the first table: before it, the catalog is the placeholder.
            if self.sent.is_some() {
                let peer = self.counted.peer;
                if let Some(agent) = self.agent.as_mut() {
                    let probes = agent.follow(&view.probes, peer);
                    let refusal = agent.refusal.as_deref();
                    self.counted.entry.status().claim_checked(refusal);
                    if let Some(probes) = probes {
                        return Some(Bytes::from(Message::Probes(probes).to_line()));
                    }
                }
            }
            tokio::select! {
                changed = self.views.changed() => changed.ok()?,
                () = tokio::time::sleep_until(deadline) => {
                    let version = self.sent.as_ref().map_or(0, |t| t.table.version);
                    return Some(Bytes::from(Message::Heartbeat(version).to_line()));
                }
            }
        }
    }
}

/// `POST /v1/names/health`: an agent's report, taken when the director lists its instance at
/// the address it comes from and that instance's stream is open here.
async fn take_report(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    Json(report): Json<AgentReport>,
) -> Response {
    let instance = report.instance_ref();
    let view = config.views.borrow().clone();
    let refused = |status: StatusCode, kind: &str, reason: String| {
        refuse_agent("health report", peer, &instance, status, kind, reason)
    };
    if let Err(reason) = own_claim(&client, &instance) {
        return refused(StatusCode::FORBIDDEN, "claim", reason);
    }
    if let Err(unverified) = view.probes.probes_for(&instance, peer.ip()) {
        return refused(StatusCode::FORBIDDEN, "claim", unverified.to_string());
    }
    let failing = report.failing_ports.clone();
    let leaving = report.leaving;
    match config.agents.report(report) {
        Ok(()) => {
            metrics::global()
                .agent_reports
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, ?failing, leaving, "health report");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => refused(StatusCode::CONFLICT, "no_stream", err.to_string()),
    }
}

/// `GET /v1/names/drained?deployment=&instance=&timeout_seconds=`: answers once no Envoy
/// connected to this pilot sends the instance new requests: the catalog has every endpoint
/// of the instance out (its agent reported it leaving), and every xDS stream here has taken
/// a snapshot built from such a catalog. `504` when that takes longer than the timeout.
async fn wait_drained(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    Query(query): Query<DrainQuery>,
) -> Response {
    let instance = InstanceRef {
        deployment: query.deployment,
        instance_id: query.instance,
    };
    if let Err(reason) = own_claim(&client, &instance) {
        metrics::global().agent_refusal("claim");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    let view = config.views.borrow().clone();
    if let Err(unverified) = view.probes.probes_for(&instance, peer.ip()) {
        metrics::global().agent_refusal("claim");
        return (StatusCode::FORBIDDEN, unverified.to_string()).into_response();
    }
    let Some(xds) = config.agents.xds().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this pilot serves no xDS").into_response();
    };
    let timeout = Duration::from_secs(query.timeout_seconds.clamp(1, MAX_DRAIN_SECONDS));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut catalogs = config.catalog.clone();
    let mut snapshots = xds.snapshots.clone();
    // The first snapshot built from a catalog without the instance.
    let target = loop {
        let catalog = catalogs.borrow_and_update().clone();
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            if instance_out(&catalog, &instance) && snapshot.catalog_version() == catalog.version {
                break snapshot.seq();
            }
        }
        let changed = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = catalogs.changed() => {}
                _ = snapshots.changed() => {}
            }
        });
        if changed.await.is_err() {
            return drain_timed_out(&instance, "the instance is still in the catalog", timeout);
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match xds.board.wait_synced(target, left).await {
        Ok(()) => {
            let waited = started.elapsed();
            tracing::info!(deployment = %clip(&instance.deployment), instance = %clip(&instance.instance_id), ?waited, "drained: no Envoy connected here sends the instance new requests");
            Json(serde_json::json!({"drained": true, "waited_ms": waited.as_millis() as u64}))
                .into_response()
        }
        Err(lagging) => drain_timed_out(
            &instance,
            &format!("{lagging} Envoys have not taken the configuration without it"),
            timeout,
        ),
    }
}

/// How long an `add` waits at most for this pilot's Envoys of the instance to hold the new
/// scope: the agent gives up after 2 s anyway.
const SCOPE_WAIT: Duration = Duration::from_secs(3);

/// `POST /v1/names/scope`: an agent changes its VM's scope (docs/scope.md); taken when the
/// director lists its instance at the address the request comes from. An `add` is answered
/// once every ADS stream of the instance on this pilot has had its Envoy acknowledge the
/// resources of the new scope (or after [`SCOPE_WAIT`]); a `set` at once.
async fn take_scope(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    Json(request): Json<ScopeRequest>,
) -> Response {
    let instance = request.instance_ref();
    let refused = |status: StatusCode, kind: &str, reason: String| {
        refuse_agent("scope", peer, &instance, status, kind, reason)
    };
    if let Err(reason) = own_claim(&client, &instance) {
        return refused(StatusCode::FORBIDDEN, "claim", reason);
    }
    let Some(xds) = config.agents.xds().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this pilot serves no xDS").into_response();
    };
    let change = match request.change() {
        Ok(change) => change,
        Err(reason) => return refused(StatusCode::BAD_REQUEST, "scope_request", reason),
    };
    if let Err(unverified) = xds.scopes.verify(&instance, peer.ip()) {
        return refused(StatusCode::FORBIDDEN, "claim", unverified.to_string());
    }
    let generation = xds.scopes.change(&instance, &change);
    let answer = match change {
        ScopeChange::Add(hosts) => {
            metrics::global()
                .scope_adds
                .fetch_add(hosts.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            let answer = xds
                .board
                .wait_scope(&instance, generation, SCOPE_WAIT)
                .await;
            tracing::debug!(%peer, ?hosts, streams = answer.streams, synced = answer.synced, waited = ?started.elapsed(), "scope added");
            answer
        }
        ScopeChange::Set(hosts) => {
            tracing::debug!(%peer, names = hosts.len(), "scope set");
            ScopeAnswer {
                streams: 0,
                synced: false,
            }
        }
    };
    Json(answer).into_response()
}

/// `POST /v1/identity/csr`: an agent asks for its VM's workload certificate
/// (`identity::wire`); signed when the director lists the instance it names at the address it
/// comes from and the CSR asks for that instance group's identity (`identity::issuer`).
async fn take_csr(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Client,
    body: Bytes,
) -> Response {
    // Only the claim is read here; the issuer judges the whole request.
    #[derive(serde::Deserialize)]
    struct Claimed {
        deployment: String,
        instance: String,
    }
    if let Ok(claimed) = serde_json::from_slice::<Claimed>(&body) {
        let instance = InstanceRef {
            deployment: claimed.deployment,
            instance_id: claimed.instance,
        };
        if let Err(reason) = own_claim(&client, &instance) {
            metrics::global().identity_refusal("not_listed");
            return (StatusCode::FORBIDDEN, reason).into_response();
        }
    }
    let Some(identity) = config.identity.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "workload identity is not configured on this pilot (no `identity` in its config)",
        )
            .into_response();
    };
    let Some(xds) = config.agents.xds().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this pilot serves no xDS").into_response();
    };
    // Checking and signing cost a millisecond or more of CPU: off the async workers.
    let endpoint = identity.clone();
    let issued = tokio::task::spawn_blocking(move || {
        endpoint
            .issuer
            .issue(&body, peer.ip(), &xds.scopes, SystemTime::now())
    })
    .await;
    let Ok(issued) = issued else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the signing task failed").into_response();
    };
    let mut refusals = identity.refusals.lock().expect("refusals lock");
    match issued {
        Ok(issued) => {
            refusals.forget(peer.ip());
            drop(refusals);
            metrics::global()
                .identity_certificates_issued
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, id = %issued.id, not_after = issued.answer.not_after, "workload certificate issued");
            Json(issued.answer).into_response()
        }
        Err(refusal) => {
            let label = refusal.reason.label();
            metrics::global().identity_refusal(label);
            if refusals.is_new(peer.ip(), label) {
                tracing::warn!(%peer, reason = %label, "certificate request refused: {}", refusal.message);
            } else {
                tracing::debug!(%peer, reason = %label, "certificate request refused: {}", refusal.message);
            }
            let status = StatusCode::from_u16(refusal.reason.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, refusal.message).into_response()
        }
    }
}

/// A drain waits this long at most, whatever it asks for: BOSH's own drain has no limit,
/// and a stuck pilot must not hold a deploy forever.
const MAX_DRAIN_SECONDS: u64 = 300;

#[derive(Debug, serde::Deserialize)]
struct DrainQuery {
    deployment: String,
    instance: String,
    #[serde(default = "default_drain_seconds")]
    timeout_seconds: u64,
}

fn default_drain_seconds() -> u64 {
    30
}

fn drain_timed_out(instance: &InstanceRef, why: &str, timeout: Duration) -> Response {
    tracing::warn!(deployment = %clip(&instance.deployment), instance = %clip(&instance.instance_id), "drain not complete after {timeout:?}: {why}");
    (
        StatusCode::GATEWAY_TIMEOUT,
        format!("not drained after {timeout:?}: {why}"),
    )
        .into_response()
}

/// Counts the stream in `boshy_names_streams` and keeps its entry in the registry's
/// `NameStreams` while it is open, and logs its end.
struct OpenStream {
    peer: SocketAddr,
    entry: NameStreamEntry,
}

impl OpenStream {
    fn new(peer: SocketAddr, entry: NameStreamEntry) -> Self {
        Self::gauge().fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, "name-table stream opened");
        OpenStream { peer, entry }
    }

    fn gauge() -> &'static std::sync::atomic::AtomicU64 {
        &crate::metrics::global().names_streams
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        Self::gauge().fetch_sub(1, Ordering::Relaxed);
        tracing::info!(peer = %self.peer, "name-table stream closed");
    }
}
