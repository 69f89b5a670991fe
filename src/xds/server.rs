//! The ADS gRPC server (state of the world). All decisions live in `stream::StreamState`;
//! this file only moves messages, logs and counts.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::cache::{self, Snapshot};
use super::stream::{RequestKind, StreamState};
use crate::catalog::model::Catalog;
use crate::metrics;

/// Longest NACK reason we log; Envoy's can hold a whole resource.
const MAX_LOGGED_ERROR: usize = 1000;
/// Responses queued per stream before the stream task waits for Envoy to read.
const RESPONSE_QUEUE: usize = 8;
/// HTTP/2 pings find Envoys that vanished without closing (VM deleted, network cut), so the
/// connected-proxies gauge and the stream tasks do not leak.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves ADS on an already-bound listener until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("xDS listener address")?;
    let ads = Ads {
        snapshots: cache::follow(catalog),
    };
    tracing::info!(%address, "xDS (ADS) server listening");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(AggregatedDiscoveryServiceServer::new(ads))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .with_context(|| format!("xDS server on {address}"))
}

struct Ads {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let (responses, receiver) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(run_stream(
            request.into_inner(),
            self.snapshots.clone(),
            responses,
            peer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "bosh-pilot serves state-of-the-world ADS only: use ads_config api_type GRPC",
        ))
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

async fn run_stream(
    mut requests: Streaming<DiscoveryRequest>,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    peer: Option<SocketAddr>,
) {
    let _connected = ConnectedProxy::new();
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    // Envoy sends its node only in the first request (set_node_on_first_message_only).
    let mut node = String::from("unknown");
    let mut state = StreamState::default();
    let mut following_snapshots = true;
    let end = loop {
        let outgoing = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    if let Some(id) = request.node.as_ref().map(|n| &n.id) {
                        if node == "unknown" {
                            node = id.clone();
                            tracing::info!(%node, %peer, "proxy connected");
                        }
                    }
                    let snapshot = snapshots.borrow().clone();
                    let (kind, response) = state.on_request(&request, snapshot.as_deref());
                    log_request(&node, &request, &kind);
                    response.into_iter().collect::<Vec<_>>()
                }
                Ok(None) => break "closed by the proxy".to_string(),
                Err(status) => break format!("stream error: {}", status.message()),
            },
            changed = snapshots.changed(), if following_snapshots => {
                if changed.is_err() {
                    // The catalog is gone (shutdown): keep the stream, stop pushing.
                    following_snapshots = false;
                    continue;
                }
                match snapshots.borrow_and_update().clone() {
                    Some(snapshot) => state.on_snapshot(&snapshot),
                    None => Vec::new(),
                }
            }
        };
        if !send_all(&node, &responses, outgoing).await {
            break "response channel closed".to_string();
        }
    };
    tracing::info!(%node, %peer, reason = %end, "proxy disconnected");
}

async fn send_all(
    node: &str,
    responses: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    outgoing: Vec<DiscoveryResponse>,
) -> bool {
    for response in outgoing {
        tracing::debug!(
            %node,
            type_url = %response.type_url,
            version = %response.version_info,
            nonce = %response.nonce,
            resources = response.resources.len(),
            "xDS push"
        );
        if responses.send(Ok(response)).await.is_err() {
            return false;
        }
        metrics::global().xds_pushes.fetch_add(1, Ordering::Relaxed);
    }
    true
}

fn log_request(node: &str, request: &DiscoveryRequest, kind: &RequestKind) {
    let type_url = request.type_url.as_str();
    match kind {
        RequestKind::Nack {
            rejected_version,
            kept_version,
            message,
        } => {
            metrics::global().xds_nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %node,
                %type_url,
                %rejected_version,
                %kept_version,
                error = %one_line(message),
                "proxy rejected (NACK) xDS update; it keeps its last accepted config"
            );
        }
        RequestKind::UnknownType => {
            tracing::warn!(%node, %type_url, "proxy asked for a resource type bosh-pilot does not serve")
        }
        RequestKind::Ack { version } => tracing::debug!(%node, %type_url, %version, "ACK"),
        RequestKind::Subscribe => tracing::debug!(
            %node,
            %type_url,
            names = request.resource_names.len(),
            "subscribe"
        ),
        RequestKind::Stale => {
            tracing::debug!(%node, %type_url, nonce = %request.response_nonce, "stale nonce ignored")
        }
    }
}

/// Envoy's NACK message may embed the whole rejected resource as multi-line proto text
/// before the reason; one log line gets the first and last lines (the last one carries the
/// reason), at most `MAX_LOGGED_ERROR` characters.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let summary = match lines.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [first, .., last] => format!("{first} … {last}"),
    };
    summary.chars().take(MAX_LOGGED_ERROR).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_messages_are_logged_on_one_line_with_the_reason() {
        let envoy = "goo.gle/debugonly \nname: \"outbound\"\nfilter_chains {\n  x: 1\n}\n: Proto constraint validation failed (port out of range)";
        assert_eq!(
            one_line(envoy),
            "goo.gle/debugonly … : Proto constraint validation failed (port out of range)"
        );
        assert_eq!(one_line("duplicate filter chain"), "duplicate filter chain");
        assert_eq!(one_line(""), "");
        assert_eq!(
            one_line(&"é".repeat(5000)).chars().count(),
            MAX_LOGGED_ERROR
        );
    }
}
