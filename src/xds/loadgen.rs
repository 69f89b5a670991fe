//! The push fan-out benchmark (`boshy xds-load`, hidden): N ADS streams that behave like
//! Envoys (one HTTP/2 connection each, wildcard CDS and LDS, EDS and RDS for the names those
//! bring, every response ACKed) against a bosh-pilot xDS server in a child process, so that
//! the server's CPU and memory can be read from `/proc` apart from the client's.
//!
//! For each (ADS mode, stream count) it measures the initial sync, then an endpoint-only
//! change (one instance of one service fails) and a service being added: time from the
//! catalog change to the last ACK, bytes the clients received, the server's CPU time and
//! RSS. Rows go to `bench/rows/push.json` in the format of `boshy bench report`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use super::bootstrap::AdsMode;
use super::resources::{cluster_name, ResourceType};
use crate::catalog::model::{Catalog, Endpoint, Protocol, Service, ServiceKey, ServicePort};

/// Streams connecting at once: enough to be quick, few enough not to overflow the
/// server's accept backlog.
const CONNECT_CONCURRENCY: usize = 200;
/// Envoy's default HTTP/2 stream and connection windows (256 MiB).
const ENVOY_GRPC_WINDOW: u32 = 256 * 1024 * 1024;
/// A fleet is settled when no response arrived for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Bounds a broken run.
const SETTLE_DEADLINE: Duration = Duration::from_secs(300);
const GOAL_SECONDS: f64 = 1.0;
const GOAL_RSS_MB: f64 = 200.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream counts to run, e.g. `1000,5000`.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub streams: Vec<usize>,
    /// ADS modes to run, e.g. `delta,sotw`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "delta,sotw")]
    pub ads: Vec<AdsMode>,
    /// Services in the synthetic estate (one http port each).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Instances per service.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Write the rows (JSON) here as well as printing the table.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: be the xDS server on this address; each stdin line is a catalog change.
    #[arg(long, hide = true)]
    pub serve: Option<SocketAddr>,
}

/// A synthetic estate: `services` http services of `instances` healthy instances each.
pub fn estate(version: u64, services: usize, instances: usize) -> Catalog {
    Catalog {
        version,
        tld: "boshy".into(),
        services: (0..services).map(|i| service(i, instances)).collect(),
    }
}

fn service(i: usize, instances: usize) -> Service {
    let job = format!("svc{i:05}");
    Service {
        key: ServiceKey {
            deployment: "load".into(),
            instance_group: "group".into(),
            job: job.clone(),
        },
        hostname: format!("{job}.group.load.boshy"),
        vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(169, 254, 1, 0)) + i as u32),
        ports: vec![ServicePort {
            name: "http".into(),
            number: 8080,
            protocol: Protocol::Http,
        }],
        endpoints: (0..instances)
            .map(|n| Endpoint {
                address: Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i * instances + n) as u32,
                )
                .into(),
                az: Some(format!("z{}", n % 3 + 1)),
                instance: format!("{job}-{n}"),
                index: Some(n as u32),
                healthy: true,
            })
            .collect(),
    }
}

/// The catalog changes the benchmark makes, one per stdin line of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first instance of the first service flips between failing and healthy.
    Endpoint,
    /// A new service is deployed.
    Service,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Endpoint => "endpoint",
            Change::Service => "service",
        }
    }

    /// Applies the change to `catalog`, with the next version.
    pub fn apply(self, catalog: &Catalog, instances: usize) -> Catalog {
        let mut next = catalog.clone();
        next.version += 1;
        match self {
            Change::Endpoint => {
                let endpoint = &mut next.services[0].endpoints[0];
                endpoint.healthy = !endpoint.healthy;
            }
            Change::Service => next.services.push(service(next.services.len(), instances)),
        }
        next
    }

    /// The cluster whose endpoints the change touches.
    pub fn endpoint_cluster() -> String {
        cluster_name(&service(0, 1).hostname, 8080)
    }
}

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

/// Raises the open-file limit to its hard limit: every stream is a socket on both sides.
fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

pub async fn run(args: Args) -> Result<()> {
    raise_file_limit()?;
    if let Some(address) = args.serve {
        return serve(address, args.services, args.instances).await;
    }
    let mut rows = Vec::new();
    for &mode in &args.ads {
        for &streams in &args.streams {
            rows.extend(measure(mode, streams, args.services, args.instances).await?);
        }
    }
    set_references(&mut rows);
    for row in &rows {
        println!(
            "{:<62} {:>12.2} {:<3} {}",
            row["figure"].as_str().unwrap_or(""),
            row["value"].as_f64().unwrap_or(0.0),
            row["unit"].as_str().unwrap_or(""),
            row["note"].as_str().unwrap_or("")
        );
    }
    if let Some(out) = args.out {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialize");
        std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The child process: an xDS server whose catalog changes on each stdin line.
async fn serve(address: SocketAddr, services: usize, instances: usize) -> Result<()> {
    let mut catalog = estate(1, services, instances);
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog.clone()));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(address)
        .with_context(|| format!("binding {address}"))?;
    let listener = socket.listen(4096)?;
    tokio::spawn(super::serve(listener, catalog_rx));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let change = match line.trim() {
            "endpoint" => Change::Endpoint,
            "service" => Change::Service,
            other => bail!("xds-load server: unknown change `{other}` (endpoint, service)"),
        };
        catalog = change.apply(&catalog, instances);
        catalog_tx.send_replace(Arc::new(catalog.clone()));
    }
    Ok(())
}

/// CPU seconds (user + system) and RSS/peak RSS in MB of a process, from `/proc`.
fn process_usage(pid: u32) -> Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let clock = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((ticks / clock, kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
}

fn row(figure: String, value: f64, unit: &str) -> Value {
    json!({"benchmark": "push", "figure": figure, "value": value, "unit": unit})
}

async fn measure(
    mode: AdsMode,
    streams: usize,
    services: usize,
    instances: usize,
) -> Result<Vec<Value>> {
    let mode_name = match mode {
        AdsMode::Delta => "delta",
        AdsMode::Sotw => "sotw",
    };
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["xds-load", "--serve", &address.to_string()])
        .args([
            "--services",
            &services.to_string(),
            "--instances",
            &instances.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the xds-load server")?;
    let pid = server.id().context("server pid")?;
    let mut control = server.stdin.take().context("server stdin")?;
    // Wait for the server to listen.
    let ready = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > ready {
            bail!("the xds-load server never listened on {address}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let label = format!("{mode_name}, {streams} streams, {services} services × {instances}");
    let started = Instant::now();
    let (cpu_before, _, _) = process_usage(pid)?;
    let fleet = Fleet::connect(address, streams, mode).await?;
    let initial = fleet.settle(started, 4).await?;
    let synced = last_ack(&initial, started);
    let (cpu_synced, rss_synced, _) = process_usage(pid)?;
    let mut initial_row = row(
        format!("{label}: connect + initial sync"),
        synced.as_secs_f64(),
        "s",
    );
    initial_row["note"] = json!(format!(
        "{:.1} MB received by the clients; server CPU {:.2} s",
        bytes(&initial) as f64 / 1e6,
        cpu_synced - cpu_before
    ));
    let mut rows = vec![initial_row];
    rows.push(goal(
        row(
            format!("{label}: server RSS with every stream synced"),
            rss_synced,
            "MB",
        ),
        &format!("< {GOAL_RSS_MB} MB"),
        rss_synced < GOAL_RSS_MB,
    ));
    for change in [Change::Endpoint, Change::Service] {
        let (cpu_before, _, _) = process_usage(pid)?;
        let (client_cpu_before, _, _) = process_usage(std::process::id())?;
        let at = Instant::now();
        control
            .write_all(format!("{}\n", change.word()).as_bytes())
            .await?;
        control.flush().await?;
        let pushed = fleet.settle(at, 1).await?;
        let took = last_ack(&pushed, at).as_secs_f64();
        let (cpu_after, _, _) = process_usage(pid)?;
        let (client_cpu_after, _, _) = process_usage(std::process::id())?;
        let resources: usize = pushed
            .iter()
            .map(|r| r.resources.len() + r.removed.len())
            .sum();
        let mut r = row(
            format!("{label}: {} change → last ACK", change.word()),
            took,
            "s",
        );
        r["note"] = json!(format!(
            "{} responses, {:.1} resources and {:.1} kB per stream; server CPU {:.2} s, \
             load client CPU {:.2} s (the {streams} emulated Envoys, same machine)",
            pushed.len(),
            resources as f64 / streams as f64,
            bytes(&pushed) as f64 / streams as f64 / 1e3,
            cpu_after - cpu_before,
            client_cpu_after - client_cpu_before
        ));
        rows.push(goal(r, &format!("< {GOAL_SECONDS} s"), took < GOAL_SECONDS));
    }
    let (_, _, peak) = process_usage(pid)?;
    rows.push(row(format!("{label}: server peak RSS"), peak, "MB"));
    drop(fleet);
    drop(control);
    let _ = server.kill().await;
    Ok(rows)
}

/// Each delta figure is compared with the same figure over state of the world, same run.
fn set_references(rows: &mut [Value]) {
    let sotw: BTreeMap<String, f64> = rows
        .iter()
        .filter_map(|r| Some((r["figure"].as_str()?.to_string(), r["value"].as_f64()?)))
        .filter(|(figure, _)| figure.starts_with("sotw,"))
        .collect();
    for row in rows.iter_mut() {
        let Some(figure) = row["figure"].as_str() else {
            continue;
        };
        let Some(delta) = figure.strip_prefix("delta,") else {
            continue;
        };
        if let Some(value) = sotw.get(&format!("sotw,{delta}")) {
            row["reference"] = json!({"label": "state of the world, same run", "value": value});
        }
    }
}

fn goal(mut row: Value, goal: &str, met: bool) -> Value {
    row["goal"] = json!(goal);
    row["met"] = json!(met);
    row
}

fn last_ack(received: &[Received], since: Instant) -> Duration {
    received
        .iter()
        .map(|r| r.acked_at.duration_since(since))
        .max()
        .unwrap_or_default()
}

fn bytes(received: &[Received]) -> usize {
    received.iter().map(|r| r.bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estate_and_its_changes_are_what_the_benchmark_says() {
        let catalog = estate(1, 3, 4);
        assert_eq!(catalog.services.len(), 3);
        assert!(catalog.services.iter().all(|s| s.endpoints.len() == 4));
        let addresses: BTreeSet<_> = catalog
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.address))
            .collect();
        assert_eq!(addresses.len(), 12, "every instance has its own IP");

        let failed = Change::Endpoint.apply(&catalog, 4);
        assert_eq!(failed.version, 2);
        assert!(!failed.services[0].endpoints[0].healthy);
        assert!(Change::Endpoint.apply(&failed, 4).services[0].endpoints[0].healthy);
        let grown = Change::Service.apply(&catalog, 4);
        assert_eq!(grown.services.len(), 4);
        assert_eq!(
            Change::endpoint_cluster(),
            "outbound|8080||svc00000.group.load.boshy"
        );
    }

    #[test]
    fn delta_figures_are_compared_with_the_same_sotw_figure() {
        let mut rows = vec![
            row("delta, 5 streams: x".into(), 1.0, "s"),
            row("sotw, 5 streams: x".into(), 4.0, "s"),
            row("delta, 5 streams: only delta".into(), 2.0, "s"),
        ];
        set_references(&mut rows);
        assert_eq!(rows[0]["reference"]["value"], 4.0);
        assert!(rows[1].get("reference").is_none());
        assert!(rows[2].get("reference").is_none());
    }
}
