//! Emulated Envoys: N ADS streams that behave like Envoy (one HTTP/2 connection each with
//! Envoy's gRPC windows, wildcard CDS and LDS, EDS and RDS for the names those bring, every
//! response ACKed, delta or state of the world), recording what each received and when.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy::xds::bootstrap::AdsMode;
use boshy::xds::resources::ResourceType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Streams connecting at once: enough to be quick, few enough not to overflow the
/// server's accept backlog.
const CONNECT_CONCURRENCY: usize = 200;
/// Envoy's default HTTP/2 stream and connection windows (256 MiB).
const ENVOY_GRPC_WINDOW: u32 = 256 * 1024 * 1024;
/// A fleet is settled when no response arrived for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Bounds a broken run.
const SETTLE_DEADLINE: Duration = Duration::from_secs(300);

/// One response a simulated Envoy received (and ACKed).
#[derive(Debug, Clone)]
pub struct Received {
    pub stream: usize,
    pub resource_type: ResourceType,
    /// Names of the resources it carried.
    pub resources: Vec<String>,
    pub removed: Vec<String>,
    /// Encoded size of the response message.
    pub bytes: usize,
    /// When its ACK was queued.
    pub acked_at: Instant,
}

/// N simulated Envoys.
pub struct Fleet {
    received: Arc<Mutex<Vec<Received>>>,
    streams: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Fleet {
    /// Opens `streams` ADS streams to `address`, each on its own connection.
    pub async fn connect(address: SocketAddr, streams: usize, mode: AdsMode) -> Result<Fleet> {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let mut tasks = Vec::with_capacity(streams);
        let ids: Vec<usize> = (0..streams).collect();
        for chunk in ids.chunks(CONNECT_CONCURRENCY) {
            let channels = futures::future::join_all(chunk.iter().map(|_| {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .expect("a socket address is a valid URI")
                    // Envoy's own gRPC client windows: it takes what the server sends at
                    // once rather than leaving it queued in the server.
                    .initial_stream_window_size(ENVOY_GRPC_WINDOW)
                    .initial_connection_window_size(ENVOY_GRPC_WINDOW);
                async move { endpoint.connect().await }
            }))
            .await;
            for (id, channel) in chunk.iter().zip(channels) {
                let channel =
                    channel.with_context(|| format!("stream {id}: connecting to {address}"))?;
                let client = AggregatedDiscoveryServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX);
                let received = received.clone();
                let id = *id;
                tasks.push(tokio::spawn(async move {
                    let result = match mode {
                        AdsMode::Delta => run_delta(id, client, received).await,
                        AdsMode::Sotw => run_sotw(id, client, received).await,
                    };
                    if let Err(error) = result {
                        tracing::warn!(stream = id, "load stream ended: {error:#}");
                    }
                }));
            }
        }
        Ok(Fleet {
            received,
            streams,
            tasks,
        })
    }

    /// Waits until every stream has received responses of at least `types` types after
    /// `since` and no response arrived for [`QUIET`]; returns those responses.
    pub async fn settle(&self, since: Instant, types: usize) -> Result<Vec<Received>> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            tokio::time::sleep(QUIET / 5).await;
            let received = self.received.lock().expect("received lock");
            let after: Vec<&Received> = received.iter().filter(|r| r.acked_at >= since).collect();
            let mut types_by_stream: BTreeMap<usize, BTreeSet<ResourceType>> = BTreeMap::new();
            for r in &after {
                types_by_stream
                    .entry(r.stream)
                    .or_default()
                    .insert(r.resource_type);
            }
            let complete = types_by_stream.len() == self.streams
                && types_by_stream.values().all(|t| t.len() >= types);
            let quiet = after
                .iter()
                .map(|r| r.acked_at)
                .max()
                .is_some_and(|last| last.elapsed() >= QUIET);
            if complete && quiet {
                return Ok(after.into_iter().cloned().collect());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} streams got updates within {SETTLE_DEADLINE:?}",
                    types_by_stream.len(),
                    self.streams
                );
            }
        }
    }
}

fn node(id: usize) -> Node {
    Node {
        id: format!("sidecar~10.1.0.{}~load/{id}~load", id % 250),
        cluster: "load/group".into(),
        ..Default::default()
    }
}

/// RDS names of the listener's HTTP connection managers.
fn route_names(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .flat_map(|chain| &chain.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

/// The names a response makes this Envoy want of the dependent type (clusters → their
/// endpoints, listeners → their routes), as Envoy derives them.
/// Only the iterator of the response's type is read.
fn wanted<'a>(
    resource_type: ResourceType,
    clusters: impl Iterator<Item = &'a String>,
    routes: impl Iterator<Item = &'a String>,
) -> Option<(ResourceType, BTreeSet<String>)> {
    match resource_type {
        ResourceType::Cluster => Some((ResourceType::Endpoint, clusters.cloned().collect())),
        ResourceType::Listener => Some((ResourceType::Route, routes.cloned().collect())),
        _ => None,
    }
}

/// RDS names of the HTTP connection managers of encoded listeners.
fn listener_route_names<'a>(
    listeners: impl Iterator<Item = &'a envoy_types::pb::google::protobuf::Any>,
) -> Vec<String> {
    listeners
        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
        .flat_map(|listener| route_names(&listener))
        .collect()
}

/// A stream's request queue, holding what Envoy sends first: wildcard CDS, then LDS, its node
/// on the first request only.
fn opening_requests<R>(
    id: usize,
    request: impl Fn(Option<Node>, ResourceType) -> R,
) -> (
    mpsc::UnboundedSender<R>,
    tokio_stream::wrappers::UnboundedReceiverStream<R>,
) {
    let (requests, outgoing) = mpsc::unbounded_channel();
    for (i, t) in [ResourceType::Cluster, ResourceType::Listener]
        .into_iter()
        .enumerate()
    {
        let _ = requests.send(request((i == 0).then(|| node(id)), t));
    }
    (
        requests,
        tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing),
    )
}

fn record(received: &Mutex<Vec<Received>>, entry: Received) {
    received.lock().expect("received lock").push(entry);
}

async fn run_delta(
    id: usize,
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<()> {
    let (requests, outgoing) = opening_requests(id, |node, t| DeltaDiscoveryRequest {
        node,
        type_url: t.type_url().into(),
        ..Default::default()
    });
    let mut responses = client
        .delta_aggregated_resources(outgoing)
        .await?
        .into_inner();
    // What this Envoy has of each type, to subscribe and unsubscribe like Envoy does.
    let mut have: BTreeMap<ResourceType, BTreeSet<String>> = BTreeMap::new();
    // Per listener, the route names of its HTTP connection managers, decoded once.
    let mut routes_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(response) = responses.next().await {
        let response = response?;
        let resource_type = ResourceType::from_type_url(&response.type_url)
            .with_context(|| format!("unknown type {}", response.type_url))?;
        let names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
        let set = have.entry(resource_type).or_default();
        set.extend(names.iter().cloned());
        for name in &response.removed_resources {
            set.remove(name);
        }
        let _ = requests.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
        record(
            &received,
            Received {
                stream: id,
                resource_type,
                resources: names,
                removed: response.removed_resources.clone(),
                bytes: response.encoded_len(),
                acked_at: Instant::now(),
            },
        );
        if resource_type == ResourceType::Listener {
            for r in &response.resources {
                routes_of.insert(r.name.clone(), listener_route_names(r.resource.iter()));
            }
            for name in &response.removed_resources {
                routes_of.remove(name);
            }
        }
        let clusters = have.get(&ResourceType::Cluster).into_iter().flatten();
        if let Some((dependent, want)) =
            wanted(resource_type, clusters, routes_of.values().flatten())
        {
            let subscribed = have.entry(dependent).or_default();
            let subscribe: Vec<String> = want.difference(subscribed).cloned().collect();
            let unsubscribe: Vec<String> = subscribed.difference(&want).cloned().collect();
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                *subscribed = want;
                let _ = requests.send(DeltaDiscoveryRequest {
                    type_url: dependent.type_url().into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                });
            }
        }
    }
    Ok(())
}

async fn run_sotw(
    id: usize,
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<()> {
    let (requests, outgoing) = opening_requests(id, |node, t| DiscoveryRequest {
        node,
        type_url: t.type_url().into(),
        ..Default::default()
    });
    let mut responses = client
        .stream_aggregated_resources(outgoing)
        .await?
        .into_inner();
    // Per type: (version, nonce, names) of the last response, as Envoy keeps them.
    let mut last: BTreeMap<ResourceType, (String, String)> = BTreeMap::new();
    let mut names: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
    while let Some(response) = responses.next().await {
        let response = response?;
        let resource_type = ResourceType::from_type_url(&response.type_url)
            .with_context(|| format!("unknown type {}", response.type_url))?;
        let resource_names: Vec<String> = response
            .resources
            .iter()
            .filter_map(|any| resource_name(resource_type, any))
            .collect();
        last.insert(
            resource_type,
            (response.version_info.clone(), response.nonce.clone()),
        );
        let subscribed = names.get(&resource_type).cloned().unwrap_or_default();
        let _ = requests.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: subscribed,
            ..Default::default()
        });
        record(
            &received,
            Received {
                stream: id,
                resource_type,
                resources: resource_names.clone(),
                removed: Vec::new(),
                bytes: response.encoded_len(),
                acked_at: Instant::now(),
            },
        );
        let routes: Vec<String> = match resource_type {
            ResourceType::Listener => listener_route_names(response.resources.iter()),
            _ => Vec::new(),
        };
        if let Some((dependent, want)) = wanted(resource_type, resource_names.iter(), routes.iter())
        {
            let want: Vec<String> = want.into_iter().collect();
            if names.get(&dependent) != Some(&want) {
                names.insert(dependent, want.clone());
                let (version, nonce) = last.get(&dependent).cloned().unwrap_or_default();
                let _ = requests.send(DiscoveryRequest {
                    type_url: dependent.type_url().into(),
                    version_info: version,
                    response_nonce: nonce,
                    resource_names: want,
                    ..Default::default()
                });
            }
        }
    }
    Ok(())
}

/// The name of a state-of-the-world resource (its own name field).
fn resource_name(
    resource_type: ResourceType,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Option<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let bytes = any.value.as_slice();
    match resource_type {
        ResourceType::Cluster => Cluster::decode(bytes).ok().map(|c| c.name),
        ResourceType::Endpoint => ClusterLoadAssignment::decode(bytes)
            .ok()
            .map(|c| c.cluster_name),
        ResourceType::Listener => Listener::decode(bytes).ok().map(|l| l.name),
        ResourceType::Route => RouteConfiguration::decode(bytes).ok().map(|r| r.name),
    }
}
