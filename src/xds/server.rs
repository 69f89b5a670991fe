//! The ADS gRPC server, state of the world and delta over the same snapshots. All decisions
//! live in `sotw::SotwStreamState` and `delta::DeltaStreamState`; this file only moves
//! messages, logs, counts, and tells each stream's `proxy_status::ProxyStatus` (on the sync
//! board) what was sent and answered.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::cache::{self, Snapshot, Sources};
use super::client::Client;
use super::delta::{DeltaStreamState, StreamScope};
use super::grpc::{self, Outgoing, Requests};
use super::proxy_status::{one_line, ProxyStatus};
use super::resources::ResourceType;
use super::sotw::{RequestKind, SotwStreamState};
use super::stream_config::{StreamConfig, TypeConfig};
use super::sync::{StreamSync, SyncBoard};
use crate::catalog::model::InstanceRef;
use crate::metrics;
use crate::scope::{InstanceScope, ScopeRegistry};

/// Encoded responses queued per stream before the stream task waits for Envoy to read.
const RESPONSE_QUEUE: usize = 8;
/// HTTP/2 pings find Envoys that vanished without closing (VM deleted, network cut), so the
/// connected-proxies gauge and the stream tasks do not leak.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

// HTTP/2 settings. What we push is paced by Envoy's windows (256 MiB by default), not by
// these: a full snapshot of megabytes goes out at once whatever they are. They bound what each
// connection may make the server hold for what Envoy sends (ACKs and subscriptions, a few kB;
// the largest, after a reconnect, names every resource it has). Measured (bench/notes.md): a
// connected Envoy costs about 33 kB of h2/hyper/tonic heap before any ADS state, mostly h2's
// fixed buffers (16 kB write, 8 kB read, 4 kB HPACK), which no setting changes.
/// Request data a stream or a connection may have in flight unread: 64 KiB (the protocol's
/// default) holds any usual request at once; a larger one waits for window updates, which a
/// stream sends as it reads. hyper's 1 MiB would let each of thousands of Envoys park a
/// megabyte in the server while a stream is busy.
const RECEIVE_WINDOW: u32 = 64 * 1024;
/// The largest frame Envoy may send us, the protocol's minimum: each connection's read
/// buffer grows to the largest frame it received and keeps that size.
const MAX_FRAME: u32 = 16 * 1024;
/// An Envoy opens one ADS stream on its connection; a few more cover a stream being replaced,
/// and the limit bounds the stream tasks (each with its ADS state) one connection can start.
const MAX_STREAMS_PER_CONNECTION: u32 = 8;

/// Serves ADS on an already-bound listener until the listener fails, from the snapshots of
/// `sources` (a catalog channel alone is a mesh without traffic rules).
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: impl Into<Sources>,
) -> anyhow::Result<()> {
    serve_with_tls(listener, sources, None).await
}

/// Like [`serve`]; with `tls` (mutual TLS, see `crate::tls::server_config`) only clients
/// with a certificate from the mesh CA get past the handshake.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    sources: impl Into<Sources>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    let board = Arc::new(SyncBoard::default());
    serve_snapshots(listener, cache::follow(sources), board, None, tls).await
}

/// Like [`serve_with_tls`], from snapshots already followed ([`cache::follow`]), keeping on
/// `board` which snapshot each stream has taken. With `scopes`, the delta streams of BOSH
/// instances get only their VM's scope (docs/scope.md); without, every stream gets the whole
/// mesh.
pub async fn serve_snapshots(
    listener: tokio::net::TcpListener,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    board: Arc<SyncBoard>,
    scopes: Option<Arc<ScopeRegistry>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    serve_gated(listener, snapshots, board, scopes, tls, None).await
}

/// Like [`serve_snapshots`], with every stream first passed through `gate`.
pub async fn serve_gated(
    listener: tokio::net::TcpListener,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    board: Arc<SyncBoard>,
    scopes: Option<Arc<ScopeRegistry>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    gate: Option<Arc<dyn StreamGate>>,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("xDS listener address")?;
    let ads = Ads {
        snapshots,
        board,
        scopes,
        gate,
    };
    tracing::info!(%address, mutual_tls = tls.is_some(), "xDS (ADS) server listening");
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW)
        // Growing the windows by measuring round trips (BDP pings) is for bulk uploads;
        // requests are small.
        .http2_adaptive_window(Some(false))
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(ads);
    let served = match tls {
        None => {
            router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        }
        Some(tls) => {
            let incoming = crate::tls::incoming(listener, tls, "xDS");
            router.serve_with_incoming(incoming).await
        }
    };
    served.with_context(|| format!("xDS server on {address}"))
}

/// Who may hold an ADS stream beyond the TLS handshake, decided outside the xDS server: the
/// pilot holds the joined VMs' certificates to their registrations (`workloads::xds_gate`).
pub trait StreamGate: Send + Sync + 'static {
    /// A new stream of the TLS peer that presented `certificates` (leaf first; none without
    /// TLS) from `address`: `Ok(None)` lets it stream unheld (a BOSH VM's certificate),
    /// `Ok(Some)` holds it to a [`StreamPass`], `Err` refuses it with that status.
    fn open(
        &self,
        certificates: &[CertificateDer<'static>],
        address: Option<IpAddr>,
    ) -> Result<Option<StreamPass>, Status>;
}

/// Judges the node an Envoy announces in its stream's first request (`None`: it announced
/// none); `Err` ends the stream before anything is served.
pub type NodeCheck = Box<dyn FnOnce(Option<&Node>) -> Result<(), Status> + Send>;

/// What a stream let through a [`StreamGate`] is held to.
pub struct StreamPass {
    pub node: NodeCheck,
    /// Resolves, with the status that ends the stream, once its holder may stream no more.
    pub revoked: BoxFuture<'static, Status>,
}

/// The AggregatedDiscoveryService: both methods, each stream run by [`run_stream`].
#[derive(Clone)]
struct Ads {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    board: Arc<SyncBoard>,
    scopes: Option<Arc<ScopeRegistry>>,
    gate: Option<Arc<dyn StreamGate>>,
}

impl tonic::server::NamedService for Ads {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for Ads {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Paths are `/<service>/<method>`; tonic routed this one here by its service.
        let path = request.uri().path();
        let method = path.rsplit_once('/').map_or("", |(_, method)| method);
        std::future::ready(Ok(match method {
            "StreamAggregatedResources" => self.start::<SotwStreamState>(request),
            "DeltaAggregatedResources" => self.start::<DeltaStreamState>(request),
            _ => grpc::status_only(&Status::unimplemented(format!(
                "bosh-pilot serves only ADS, not {path}"
            ))),
        }))
    }
}

impl Ads {
    fn start<P: Protocol>(&self, request: http::Request<Body>) -> http::Response<Body> {
        let extensions = request.extensions();
        let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| tls.map(TlsConnectInfo::get_ref))
            .and_then(TcpConnectInfo::remote_addr);
        let pass = match &self.gate {
            None => None,
            Some(gate) => {
                let certificates = tls.and_then(TlsConnectInfo::peer_certs);
                let certificates = certificates.as_deref().map_or(&[][..], Vec::as_slice);
                match gate.open(certificates, peer.map(|p| p.ip())) {
                    Ok(pass) => pass,
                    Err(status) => {
                        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
                        tracing::debug!(%peer, ads = P::NAME, reason = %status.message(), "xDS stream refused");
                        return grpc::status_only(&status);
                    }
                }
            }
        };
        let (responses, receiver) = mpsc::channel::<Outgoing>(RESPONSE_QUEUE);
        let seq = self.snapshots.borrow().as_ref().map_or(0, |s| s.seq());
        let state = Arc::new(Mutex::new(P::default()));
        tokio::spawn(run_stream::<P>(
            Requests::new(request.into_body()),
            self.snapshots.clone(),
            responses,
            peer,
            self.board.join(
                seq,
                ProxyStatus::connected(P::NAME, peer, SystemTime::now()),
                state.clone(),
            ),
            state,
            Holds {
                scopes: self.scopes.clone(),
                pass,
            },
        ));
        grpc::response(ReceiverStream::new(receiver))
    }
}

/// What the stream loop needs from one ADS variant.
trait Protocol: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    /// For log lines: `sotw` or `delta`.
    const NAME: &'static str;
    fn node(request: &Self::Request) -> Option<&Node>;
    fn on_request(
        &mut self,
        request: &Self::Request,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> (RequestKind, Option<Self::Response>);
    fn on_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> Vec<Self::Response>;
    /// The BOSH instance whose VM's scope the stream serves, from the request's node; `None`
    /// for a variant that serves the whole mesh to everyone.
    fn scoped_instance(_request: &Self::Request) -> Option<InstanceRef> {
        None
    }
    fn on_scope(
        &mut self,
        _scope: StreamScope,
        _snapshot: Option<&Arc<Snapshot>>,
    ) -> Vec<Self::Response> {
        Vec::new()
    }
    fn scope_held(&self, _snapshot: &Arc<Snapshot>) -> Option<u64> {
        None
    }
    /// Per subscribed type, what the stream would send of `snapshot` and what Envoy ACKed.
    fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>>;
    fn request_summary(request: &Self::Request) -> RequestSummary<'_>;
    fn response_summary(response: &Self::Response) -> ResponseSummary<'_>;
}

/// The API reads a stream's state between two of its rounds, under the stream's lock.
impl<P: Protocol> StreamConfig for Mutex<P> {
    fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>> {
        self.lock().expect("stream state lock").config(snapshot)
    }
}

struct RequestSummary<'a> {
    type_url: &'a str,
    nonce: &'a str,
    subscribed: usize,
    unsubscribed: usize,
}

struct ResponseSummary<'a> {
    type_url: &'a str,
    version: &'a str,
    nonce: &'a str,
    resources: usize,
    removed: usize,
}

impl Protocol for SotwStreamState {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> (RequestKind, Option<DiscoveryResponse>) {
        SotwStreamState::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        SotwStreamState::on_snapshot(self, snapshot)
    }
    fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>> {
        SotwStreamState::config(self, snapshot)
    }
    fn request_summary(request: &DiscoveryRequest) -> RequestSummary<'_> {
        RequestSummary {
            type_url: &request.type_url,
            nonce: &request.response_nonce,
            subscribed: request.resource_names.len(),
            unsubscribed: 0,
        }
    }
    fn response_summary(response: &DiscoveryResponse) -> ResponseSummary<'_> {
        ResponseSummary {
            type_url: &response.type_url,
            version: &response.version_info,
            nonce: &response.nonce,
            resources: response.resources.len(),
            removed: 0,
        }
    }
}

impl Protocol for DeltaStreamState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> (RequestKind, Option<DeltaDiscoveryResponse>) {
        DeltaStreamState::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DeltaDiscoveryResponse> {
        DeltaStreamState::on_snapshot(self, snapshot)
    }
    fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>> {
        DeltaStreamState::config(self, snapshot)
    }
    fn scoped_instance(request: &DeltaDiscoveryRequest) -> Option<InstanceRef> {
        let client = Client::from_node(request.node.as_ref()?)?;
        Some(client.instance())
    }
    fn on_scope(
        &mut self,
        scope: StreamScope,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> Vec<DeltaDiscoveryResponse> {
        DeltaStreamState::on_scope(self, scope, snapshot)
    }
    fn scope_held(&self, snapshot: &Arc<Snapshot>) -> Option<u64> {
        DeltaStreamState::scope_held(self, snapshot)
    }
    fn request_summary(request: &DeltaDiscoveryRequest) -> RequestSummary<'_> {
        RequestSummary {
            type_url: &request.type_url,
            nonce: &request.response_nonce,
            subscribed: request.resource_names_subscribe.len(),
            unsubscribed: request.resource_names_unsubscribe.len(),
        }
    }
    fn response_summary(response: &DeltaDiscoveryResponse) -> ResponseSummary<'_> {
        ResponseSummary {
            type_url: &response.type_url,
            version: &response.system_version_info,
            nonce: &response.nonce,
            resources: response.resources.len(),
            removed: response.removed_resources.len(),
        }
    }
}

/// Keeps `xds_connected_proxies` right however the stream task ends.
struct ConnectedProxy;

impl ConnectedProxy {
    fn new() -> Self {
        metrics::global()
            .xds_connected_proxies
            .fetch_add(1, Ordering::Relaxed);
        ConnectedProxy
    }
}

impl Drop for ConnectedProxy {
    fn drop(&mut self) {
        metrics::global()
            .xds_connected_proxies
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one stream is held to beyond its protocol: its VM's scope (with `scopes`), and its
/// holder's standing (with a pass from the [`StreamGate`]).
struct Holds {
    scopes: Option<Arc<ScopeRegistry>>,
    pass: Option<StreamPass>,
}

async fn run_stream<P: Protocol>(
    mut requests: Requests<P::Request>,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    responses: mpsc::Sender<Outgoing>,
    peer: Option<SocketAddr>,
    mut sync: StreamSync,
    state: Arc<Mutex<P>>,
    holds: Holds,
) {
    let _connected = ConnectedProxy::new();
    let Holds { scopes, pass } = holds;
    let (mut node_check, mut revoked) = match pass {
        Some(pass) => (Some(pass.node), Some(pass.revoked)),
        None => (None, None),
    };
    let mut scope = ScopeFollower::default();
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    // Envoy sends its node only in the first request (set_node_on_first_message_only).
    let mut node = String::from("unknown");
    // Locked for each round's decisions, never across an await: the API reads it between
    // rounds.
    let state = || state.lock().expect("stream state lock");
    let mut following_snapshots = true;
    let end = loop {
        let outgoing = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    // Checked before anything of the request is taken (its node picks the
                    // scope and the routes).
                    if let Some(check) = node_check.take() {
                        if let Err(status) = check(P::node(&request)) {
                            let reason = format!("refused: {}", status.message());
                            let _ = responses.send(Err(Box::new(status))).await;
                            break reason;
                        }
                    }
                    if let Some(announced) = P::node(&request) {
                        if node == "unknown" {
                            node = announced.id.clone();
                            sync.status().identify(announced);
                            tracing::info!(%node, %peer, ads = P::NAME, "proxy connected");
                        }
                    }
                    let snapshot = snapshots.borrow().clone();
                    sync.answered(P::request_summary(&request).nonce);
                    if let Some(scopes) = scopes.as_ref().filter(|_| scope.instance.is_none()) {
                        if let Some(instance) = P::scoped_instance(&request) {
                            let initial = scope.follow(scopes, instance);
                            state().on_scope(initial, None);
                        }
                    }
                    let (kind, response) = state().on_request(&request, snapshot.as_ref());
                    let summary = P::request_summary(&request);
                    let resource_type = ResourceType::from_type_url(summary.type_url);
                    let rejected = match (&kind, resource_type, snapshot.as_deref()) {
                        (RequestKind::Nack { message, .. }, Some(t), Some(snapshot)) => {
                            snapshot.rejected_resource(t, message)
                        }
                        _ => None,
                    };
                    if let Some(resource_type) = resource_type {
                        sync.status().requested(resource_type, &kind, rejected, SystemTime::now());
                    }
                    log_request(&node, summary, &kind, rejected, snapshot.as_deref());
                    response.into_iter().collect::<Vec<_>>()
                }
                Ok(None) => break "closed by the proxy".to_string(),
                Err(status) => {
                    let reason = format!("stream error: {}", status.message());
                    // Tell the proxy why, in the stream's status, if it still listens.
                    let _ = responses.send(Err(Box::new(status))).await;
                    break reason;
                }
            },
            changed = snapshots.changed(), if following_snapshots => {
                if changed.is_err() {
                    // The catalog is gone (shutdown): keep the stream, stop pushing.
                    following_snapshots = false;
                    continue;
                }
                match snapshots.borrow_and_update().clone() {
                    Some(snapshot) => {
                        sync.saw_snapshot(snapshot.seq(), snapshot.inputs_changed());
                        state().on_snapshot(&snapshot)
                    }
                    None => Vec::new(),
                }
            }
            status = until_revoked(&mut revoked) => {
                let reason = format!("ended: {}", status.message());
                let _ = responses.send(Err(Box::new(status))).await;
                break reason;
            }
            next = scope.next() => {
                let snapshot = snapshots.borrow().clone();
                match next {
                    Some(next) => {
                        if matches!(next, StreamScope::Full) {
                            tracing::warn!(%node, %peer, "no scope from this VM's agent after {SCOPE_WAIT:?}: serving it the whole mesh");
                        }
                        state().on_scope(next, snapshot.as_ref())
                    }
                    None => Vec::new(),
                }
            }
        };
        if !send_all::<P>(&node, &responses, outgoing, &mut sync).await {
            break "response channel closed".to_string();
        }
        sync.publish();
        if let Some(instance) = &scope.instance {
            let held = snapshots
                .borrow()
                .as_ref()
                .filter(|_| scope.may_wait())
                .and_then(|s| state().scope_held(s));
            if let Some(held) = held {
                scope.held = held;
            }
            sync.publish_scope(instance, held);
        }
    };
    tracing::info!(%node, %peer, reason = %end, "proxy disconnected");
}

/// How long a new stream of a VM whose scope this pilot does not know yet holds back
/// listeners and clusters for its agent to tell the scope (after a pilot restart, agents and
/// Envoys reconnect together); then it gets the whole mesh.
const SCOPE_WAIT: Duration = Duration::from_secs(15);

/// What one stream follows of its VM's scope; counted in `boshy_xds_scoped_streams` while it
/// follows one.
#[derive(Default)]
struct ScopeFollower {
    instance: Option<InstanceRef>,
    scopes: Option<watch::Receiver<InstanceScope>>,
    /// While the scope is unknown: when to give up waiting for it.
    deadline: Option<tokio::time::Instant>,
    /// The generation last known to be held by the Envoy, and the current one.
    held: u64,
    current: u64,
}

impl ScopeFollower {
    /// Starts following `instance`'s scope; the stream's scope now.
    fn follow(&mut self, scopes: &ScopeRegistry, instance: InstanceRef) -> StreamScope {
        let mut receiver = scopes.watch(&instance);
        let scope = receiver.borrow_and_update().clone();
        metrics::global()
            .xds_scoped_streams
            .fetch_add(1, Ordering::Relaxed);
        self.instance = Some(instance);
        self.scopes = Some(receiver);
        match self.stream_scope(scope) {
            Some(scope) => scope,
            None => {
                self.deadline = Some(tokio::time::Instant::now() + SCOPE_WAIT);
                StreamScope::Waiting
            }
        }
    }

    fn stream_scope(&mut self, scope: InstanceScope) -> Option<StreamScope> {
        let asked = scope.asked?;
        self.current = scope.generation;
        self.deadline = None;
        Some(StreamScope::Scoped {
            generation: scope.generation,
            asked,
            filter: None,
            filtered_at: None,
        })
    }

    /// Whether an agent may be waiting for the Envoy to hold a newer generation.
    fn may_wait(&self) -> bool {
        self.held < self.current
    }

    /// The stream's next scope: the agent told a new one, or it did not tell any in time
    /// (`Full`). Pending while neither happens; `None` for a change that changes nothing.
    async fn next(&mut self) -> Option<StreamScope> {
        let deadline = self.deadline;
        let Some(scopes) = self.scopes.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            changed = scopes.changed() => {
                if changed.is_err() {
                    self.scopes = None;
                    return None;
                }
                let scope = scopes.borrow_and_update().clone();
                self.stream_scope(scope)
            }
            () = sleep_until_some(deadline) => {
                self.deadline = None;
                Some(StreamScope::Full)
            }
        }
    }
}

impl Drop for ScopeFollower {
    fn drop(&mut self) {
        if self.instance.is_some() {
            metrics::global()
                .xds_scoped_streams
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The status a held stream is ended with, once its pass is revoked; pending for a stream
/// held to nothing.
async fn until_revoked(revoked: &mut Option<BoxFuture<'static, Status>>) -> Status {
    match revoked {
        Some(revoked) => revoked.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn send_all<P: Protocol>(
    node: &str,
    responses: &mpsc::Sender<Outgoing>,
    outgoing: Vec<P::Response>,
    sync: &mut StreamSync,
) -> bool {
    for response in outgoing {
        let summary = P::response_summary(&response);
        sync.sent(summary.nonce);
        if let Some(resource_type) = ResourceType::from_type_url(summary.type_url) {
            sync.status()
                .sent(resource_type, summary.version, summary.nonce);
        }
        tracing::debug!(
            %node,
            type_url = %summary.type_url,
            version = %summary.version,
            nonce = %summary.nonce,
            resources = summary.resources,
            removed = summary.removed,
            "xDS push"
        );
        if responses.send(Ok(grpc::frame(&response))).await.is_err() {
            return false;
        }
        metrics::global().xds_push(type_label(summary.type_url));
    }
    true
}

fn log_request(
    node: &str,
    request: RequestSummary<'_>,
    kind: &RequestKind,
    rejected: Option<&str>,
    snapshot: Option<&Snapshot>,
) {
    let type_url = request.type_url;
    match kind {
        RequestKind::Nack {
            rejected_version,
            kept_version,
            message,
        } => {
            let m = metrics::global();
            m.xds_nack(type_label(type_url), rejected);
            // The rule configs to look at (`/v1/rules` has their verdicts), so that the
            // operator need not decode Envoy's message.
            let rule_configs = snapshot.map(|s| s.rule_configs_behind(message));
            let rule_configs: Vec<&str> = rule_configs.into_iter().flatten().collect();
            for config in &rule_configs {
                m.rule_config_nack(config);
            }
            tracing::warn!(
                %node,
                %type_url,
                %rejected_version,
                %kept_version,
                resource = rejected.unwrap_or(""),
                rule_configs = %rule_configs.join(","),
                error = %one_line(message),
                "proxy rejected (NACK) xDS update; it keeps its last accepted config"
            );
        }
        RequestKind::UnknownType => {
            tracing::warn!(%node, %type_url, "proxy asked for a resource type bosh-pilot does not serve")
        }
        RequestKind::Ack { version } => {
            metrics::global().xds_ack(type_label(type_url));
            tracing::debug!(%node, %type_url, %version, "ACK")
        }
        RequestKind::Subscribe => tracing::debug!(
            %node,
            %type_url,
            subscribed = request.subscribed,
            unsubscribed = request.unsubscribed,
            "subscribe"
        ),
        RequestKind::Stale => {
            tracing::debug!(%node, %type_url, nonce = %request.nonce, "stale nonce ignored")
        }
    }
}

/// The metrics' name of an xDS type: `cds`, `eds`, `lds`, `rds`; `unknown` for a type we do
/// not serve.
fn type_label(type_url: &str) -> &'static str {
    ResourceType::from_type_url(type_url).map_or("unknown", ResourceType::short_name)
}
