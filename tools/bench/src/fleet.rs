//! A fleet on one pilot (`boshy-bench fleet`): the release's `boshy pilot` process, reading the
//! director simulator, with N virtual-ip-agents and N Envoys connected to it, as every VM of a
//! foundation holds them; the pilot's RSS and CPU are read from `/proc/<pid>`.
//!
//! The estate has the director benchmark's size (50 deployments, 10,000 instances, 500
//! exposed services), shaped so that every instance is an endpoint (10 groups of 20, each
//! exposing an HTTP and a TCP port): every agent then has probes and reports. Instances get
//! addresses of `198.18.0.0/16`, routed to lo for the run, so that each emulated agent binds
//! its sockets to its own instance's address and passes the pilot's check of the stream's
//! source address.
//!
//! - Agents: in this process, one HTTP client each (mutual TLS, one shared client config,
//!   HTTP/1.1 as the real agent's): `GET /v1/names/watch?deployment=&instance=`, and on the
//!   probes line a report with every port fine (`POST /v1/names/health`). A stream that ends
//!   is followed again with the agent's backoff and jitter.
//! - The console's calls windows: for a phase of their own, each agent also posts a window of
//!   its VM's calls every 10 s (`POST /v1/names/traffic`), to 5 services of the catalog, as
//!   the real agent's calls reporter does (`telemetry`): on a client of its own from the same
//!   address, which keeps its connection between windows.
//! - Envoys: `boshy_xds_fleet` (delta ADS, every response ACKed). The fleet speaks plaintext
//!   gRPC, so a proxy in this process carries each of its connections over mutual TLS (ALPN
//!   h2, the client certificate) to the pilot, which then serves xDS as it does in production.
//!
//! Figures, for N and for a reference of fewer clients in the same run: the time until every
//! agent reports (the pilot's `boshy_agents_reporting`) and every Envoy took every type of
//! the snapshot; the pilot's RSS and CPU over a steady window; the same with every agent
//! posting its calls window, and the time of one `GET /v1/graph` then (checked to have every
//! edge the agents report); then the pilot is killed (SIGKILL) and started again on the same
//! ports, and the time until every agent reports again and the last Envoy is synced again,
//! with the pilot's peak RSS meanwhile.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy::config::ClientTls;
use boshy::xds::bootstrap::AdsMode;
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_xds_fleet::fleet::{Fleet, Received};
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use super::director::manifest;
use super::pilot::{free_port, Pilot};
use super::report::Row;
use super::ScratchDir;

const BENCHMARK: &str = "fleet";
const SECRET: &str = "bench-fleet-secret";
const GOAL_RSS_MB: f64 = 1024.0;
const GOAL_RECONNECT_SECONDS: f64 = 30.0;
/// The agents and Envoys (as many of each) the goals are set for.
const GOAL_CLIENTS: usize = 10_000;
/// The instances' addresses: the range set aside for network benchmarks (RFC 2544), made
/// local on lo for the run ([`LocalRange`]). Loopback itself would do for the sockets, but
/// the catalog rightly takes no loopback address as an endpoint.
const INSTANCE_NETWORK: &str = "198.18.0.0/16";
/// Bounds a broken run: no phase may take longer.
const PHASE_DEADLINE: Duration = Duration::from_secs(400);
/// The real agent's timings (`names::follower`): a stream silent this long is dead; a report
/// not taken within `REPORT_TIMEOUT` fails the stream; backoff between `BACKOFF_MIN` and
/// `BACKOFF_MAX`. Envoy's ADS retry uses the same bounds (500 ms base, 30 s max, jittered).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often Envoys due to reconnect are gathered into one connecting batch.
const RECONNECT_TICK: Duration = Duration::from_millis(50);
/// The real agent's calls window (`telemetry`): each agent posts one this often.
const CALLS_WINDOW: Duration = Duration::from_secs(10);
/// The services each instance group calls.
const CALLED_SERVICES: usize = 5;
/// How an agent's request durations spread over Istio's 20 buckets (`console::wire`), in
/// percent: most between 1 and 100 ms, a tail to 2.5 s.
const DURATION_SHAPE: [u64; 20] = [
    0, 2, 10, 18, 25, 20, 12, 7, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agents and Envoys (as many of each) connected to the pilot; at most the estate's
    /// instances.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// The same-run reference: the same figures with this many agents and Envoys.
    #[arg(long, default_value_t = 1_000)]
    pub reference: usize,
    #[arg(long, default_value_t = 50)]
    pub deployments: usize,
    /// Instance groups per deployment, each exposing an HTTP and a TCP port.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Instances per instance group.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// The steady window over which the pilot's RSS and CPU are read.
    #[arg(long, default_value_t = 30)]
    pub steady_seconds: u64,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: be the Envoys' process, `--clients` of them, through a proxy to this xDS
    /// address; driven by stdin lines (`connect`, `broke`, `up <ms>`).
    #[arg(long, hide = true)]
    pub envoys_for: Option<SocketAddr>,
}

async fn director(args: &Args, scratch: &ScratchDir) -> Result<SimHandle> {
    let fixtures = scratch.path().join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    for d in 0..args.deployments {
        let name = format!("deployment-{d:02}");
        std::fs::write(
            fixtures.join(format!("{name}.yml")),
            // Every group exposes its ports, so that every instance is an endpoint.
            manifest(&name, args.groups, args.instances, |_| true),
        )?;
    }
    sim::start(SimOptions {
        fixtures: Some(fixtures),
        instance_network: INSTANCE_NETWORK.parse().expect("a valid CIDR"),
        task_delay: Duration::from_millis(10),
        ..SimOptions::new(SECRET)
    })
    .await
}

/// A route making every address of a range local on lo, as 127/8 is, for as long as it is
/// held: each agent binds its sockets to its own instance's address, and the pilot sees
/// streams come from there.
pub(crate) struct LocalRange(&'static str);

impl LocalRange {
    pub(crate) fn add(range: &'static str) -> Result<LocalRange> {
        super::require_tool("ip", "iproute2")?;
        let status = std::process::Command::new("ip")
            .args(["route", "replace", "local", range, "dev", "lo"])
            .status()
            .context("running ip route")?;
        if !status.success() {
            bail!("`ip route replace local {range} dev lo` failed (needs root)");
        }
        Ok(LocalRange(range))
    }
}

impl Drop for LocalRange {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["route", "del", "local", self.0, "dev", "lo"])
            .status();
    }
}

/// The mesh's certificates and the pilot's config, written once: every pilot of the run
/// (each size, each restart) uses them.
struct Setup {
    config: PathBuf,
    api: Api,
    xds: SocketAddr,
    names: SocketAddr,
    /// The agents' and Envoys' side of mutual TLS.
    client_tls: rustls::ClientConfig,
}

/// The clients' certificate files in `dir` (the Envoys' process runs in it).
fn client_tls_files(dir: &Path) -> ClientTls {
    ClientTls {
        ca_cert_path: dir.join("ca.pem"),
        cert_path: dir.join("client.pem"),
        key_path: dir.join("client.key"),
        server_name: PILOT_SERVER_NAME.to_string(),
    }
}

fn setup(sim: &SimHandle, dir: &Path) -> Result<Setup> {
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let ca = Ca::new("boshy-istio bench CA")?;
    let server = ca.server(PILOT_SERVER_NAME)?;
    let client = ca.client("boshy-istio addon")?;
    let ca_path = write("ca.pem", &ca.cert_pem())?;
    write("client.pem", &client.cert_pem)?;
    write("client.key", &client.key_pem)?;
    let client_tls = boshy::tls::client_config(&client_tls_files(dir))?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (api, xds, names) = (
        loopback(free_port()?),
        loopback(free_port()?),
        loopback(free_port()?),
    );
    let config = format!(
        "director:\n  url: {url}\n  client: pilot\n  client_secret_file: {secret}\n  \
         ca_cert_path: {director_ca}\nvip_store: file\nvip_state_path: {vips}\n\
         virtual_ip_cidr: 169.254.0.0/16\n\
         tls:\n  ca_cert_path: {ca}\n  cert_path: {cert}\n  key_path: {key}\n\
         listen:\n  api: {api}\n  xds: {xds}\n  names: {names}\n",
        url = sim.director_url(),
        secret = write("pilot-secret", SECRET)?.display(),
        director_ca = write("director-ca.pem", sim.ca_pem())?.display(),
        vips = dir.join("vips.json").display(),
        ca = ca_path.display(),
        cert = write("pilot.pem", &server.cert_pem)?.display(),
        key = write("pilot.key", &server.key_pem)?.display(),
    );
    Ok(Setup {
        config: write("pilot.yml", &config)?,
        api: Api {
            base: format!("https://{api}"),
            // The pilot's API takes the mesh's client certificate (docs/api.md).
            client: reqwest::Client::builder()
                .use_preconfigured_tls(client_tls.clone())
                .build()?,
        },
        xds,
        names,
        client_tls,
    })
}

/// The pilot's HTTP API, over HTTPS with the mesh's client certificate.
struct Api {
    base: String,
    client: reqwest::Client,
}

/// One gauge of the pilot's `/metrics`; `None` while the pilot does not answer.
async fn gauge(api: &Api, name: &str) -> Option<f64> {
    let text = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_value(&text, name)
}

/// The value of the unlabelled sample `name` of a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Waits until the pilot's `boshy_agents_reporting` reaches `agents`; the time since `since`.
async fn agents_reporting(api: &Api, agents: usize, since: Instant) -> Result<Duration> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let reporting = gauge(api, "boshy_agents_reporting").await;
        if reporting.is_some_and(|n| n >= agents as f64) {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{reporting:?} of {agents} agents reporting after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One BOSH instance an agent runs on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Instance {
    deployment: String,
    id: String,
    address: Ipv4Addr,
    instance_group: String,
}

/// What the benchmark takes of the pilot's catalog.
struct Catalog {
    instances: Vec<Instance>,
    /// Every service's, sorted.
    hostnames: Vec<String>,
}

/// The pilot's catalog, from `GET /v1/registration`, once it has one.
async fn read_catalog(api: &Api) -> Result<Catalog> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let healthy = api.client.get(format!("{}/healthz", api.base)).send().await;
        if healthy.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the pilot has no catalog after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let services: Vec<Value> = api
        .client
        .get(format!("{}/v1/registration", api.base))
        .send()
        .await?
        .json()
        .await?;
    let mut found = BTreeSet::new();
    let mut hostnames = BTreeSet::new();
    for service in &services {
        let deployment = service["deployment"].as_str().unwrap_or_default();
        let instance_group = service["instance_group"].as_str().unwrap_or_default();
        hostnames.extend(service["hostname"].as_str().map(str::to_string));
        for endpoint in service["endpoints"].as_array().into_iter().flatten() {
            let (Some(id), Some(address)) = (
                endpoint["instance"].as_str(),
                endpoint["address"].as_str().and_then(|a| a.parse().ok()),
            ) else {
                continue;
            };
            found.insert(Instance {
                deployment: deployment.to_string(),
                id: id.to_string(),
                address,
                instance_group: instance_group.to_string(),
            });
        }
    }
    Ok(Catalog {
        instances: found.into_iter().collect(),
        hostnames: hostnames.into_iter().collect(),
    })
}

/// `count` of `all`, spread evenly over it (so over every deployment).
fn spread<T: Clone>(all: &[T], count: usize) -> Vec<T> {
    (0..count)
        .map(|i| all[i * all.len() / count].clone())
        .collect()
}

/// The agent's backoff (`names::follower`): a delay in [current/2, current], then `current`
/// doubles up to the max; reset by every line read.
struct Backoff {
    current: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            current: BACKOFF_MIN,
        }
    }

    fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self
            .current
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        self.current = (self.current * 2).min(BACKOFF_MAX);
        delay
    }
}

/// One emulated agent: follows the name-table stream of the pilot at `base` from its
/// instance's address, naming its instance, forever.
async fn agent(instance: Instance, base: String, tls: rustls::ClientConfig) {
    // The real agent's report connection idles out of its pool after 90 s; closing it at once
    // keeps the steady state (one connection per agent) within the open-file limit.
    let client = match agent_client(&instance, tls, 0) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("agent {}: no HTTP client: {err}", instance.id);
            return;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        let err = follow_once(&client, &base, &instance, &mut backoff)
            .await
            .unwrap_err();
        let delay = backoff.next_delay();
        tracing::debug!("agent {}: {err:#}; again in {delay:?}", instance.id);
        tokio::time::sleep(delay).await;
    }
}

/// An HTTP client of the agent on `instance`, from its address (mutual TLS, HTTP/1.1 as the
/// real agent's), keeping at most `idle_connections` open between requests.
fn agent_client(
    instance: &Instance,
    tls: rustls::ClientConfig,
    idle_connections: usize,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(instance.address))
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Duration::from_secs(30))
        .pool_max_idle_per_host(idle_connections)
        .build()
}

/// One stream, until it fails: on the probes line, the report (every port fine).
async fn follow_once(
    client: &reqwest::Client,
    base: &str,
    instance: &Instance,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible> {
    let request = client
        .get(format!("{base}/v1/names/watch"))
        .query(&[
            ("deployment", instance.deployment.as_str()),
            ("instance", instance.id.as_str()),
        ])
        .send();
    let mut response = tokio::time::timeout(IDLE_TIMEOUT, request)
        .await
        .context("no response")??;
    if !response.status().is_success() {
        bail!("the pilot answered {}", response.status());
    }
    let mut pending = Vec::new();
    loop {
        let chunk = tokio::time::timeout(IDLE_TIMEOUT, response.chunk())
            .await
            .context("an idle stream")??
            .context("the pilot closed the stream")?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            backoff.reset();
            // Every line is one JSON object of one key (`names::wire`): the probes line is
            // told by its key, without parsing the (large) table lines.
            if line.starts_with(br#"{"probes""#) {
                report(client, base, instance).await?;
            }
        }
    }
}

async fn report(client: &reqwest::Client, base: &str, instance: &Instance) -> Result<()> {
    let body = json!({
        "deployment": instance.deployment,
        "instance": instance.id,
        "failing_ports": [],
        "leaving": false,
    });
    post(client, format!("{base}/v1/names/health"), &body).await
}

/// POSTs one of the agent's reports to `url`: it must be taken within [`REPORT_TIMEOUT`].
async fn post(client: &reqwest::Client, url: String, body: &Value) -> Result<()> {
    let sent = client.post(url).json(body).send();
    let response = tokio::time::timeout(REPORT_TIMEOUT, sent)
        .await
        .context("the report was not taken in time")??;
    if !response.status().is_success() {
        bail!("the pilot refused the report: {}", response.status());
    }
    Ok(())
}

/// The agent on `instance` posting a window of its VM's calls to `destinations` every
/// [`CALLS_WINDOW`], the first after `first`, forever. As the real agent's calls reporter
/// (`telemetry`): a client of its own, whose connection stays open between windows (its pool
/// keeps one idle for 90 s).
async fn report_calls(
    instance: Instance,
    destinations: Vec<String>,
    base: String,
    tls: rustls::ClientConfig,
    first: Duration,
) {
    let client = match agent_client(&instance, tls, 1) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("agent {}: no HTTP client for its calls: {err}", instance.id);
            return;
        }
    };
    let url = format!("{base}/v1/names/traffic");
    let mut windows = tokio::time::interval_at(tokio::time::Instant::now() + first, CALLS_WINDOW);
    loop {
        windows.tick().await;
        let window = calls_window(&instance, &destinations);
        if let Err(err) = post(&client, url.clone(), &window).await {
            // The graph then lacks the window, which the benchmark's check of it reports.
            tracing::warn!("agent {}: its calls window: {err:#}", instance.id);
        }
    }
}

/// The services an instance group calls: [`CALLED_SERVICES`] consecutive ones of the catalog,
/// from a place its name picks (fewer when the catalog has fewer); the same for every instance
/// of the group, which runs the same jobs.
fn called_services(hostnames: &[String], caller: &Instance) -> Vec<String> {
    let mut hasher = DefaultHasher::new();
    (&caller.deployment, &caller.instance_group).hash(&mut hasher);
    let start = hasher.finish() as usize;
    (0..CALLED_SERVICES.min(hostnames.len()))
        .map(|k| hostnames[(start % hostnames.len() + k) % hostnames.len()].clone())
        .collect()
}

/// The graph's edges for these callers and the services each calls: one per instance group
/// and service, however many of its instances call it.
fn graph_edges(calls: &[(Instance, Vec<String>)]) -> usize {
    calls
        .iter()
        .flat_map(|(caller, destinations)| {
            destinations
                .iter()
                .map(|destination| (&caller.deployment, &caller.instance_group, destination))
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// One window of `instance`'s calls to each of `destinations` (`console::wire::TrafficReport`,
/// which the pilot parses with `deny_unknown_fields`): 2 to 200 requests a second, about 1%
/// of them errors, a few TCP connections.
fn calls_window(instance: &Instance, destinations: &[String]) -> Value {
    let mut rng = rand::thread_rng();
    let calls: Vec<Value> = destinations
        .iter()
        .map(|destination| {
            let requests: u64 = rng.gen_range(20..=2000);
            let connections: u64 = rng.gen_range(0..=20);
            json!({
                "destination": destination,
                "requests": requests,
                "errors": rng.gen_range(0..=requests / 50),
                "duration_buckets": duration_buckets(requests),
                "connections": connections,
                "failed_connections": rng.gen_range(0..=connections / 10),
            })
        })
        .collect();
    json!({
        "deployment": instance.deployment,
        "instance": instance.id,
        "window_ms": CALLS_WINDOW.as_millis() as u64,
        "calls": calls,
    })
}

/// `requests` spread over the duration buckets as [`DURATION_SHAPE`] says.
fn duration_buckets(requests: u64) -> Vec<u64> {
    let mut buckets: Vec<u64> = DURATION_SHAPE
        .iter()
        .map(|percent| requests * percent / 100)
        .collect();
    // What rounding down left goes to the commonest duration.
    let commonest = (0..buckets.len())
        .max_by_key(|&i| DURATION_SHAPE[i])
        .unwrap_or_default();
    buckets[commonest] += requests - buckets.iter().sum::<u64>();
    buckets
}

/// One `GET /v1/graph` with the benchmark's API client.
struct GraphRead {
    took: Duration,
    bytes: usize,
    edges: usize,
    /// Summed over the instance groups: the instances whose window is current.
    reporting_instances: u64,
}

async fn read_graph(api: &Api) -> Result<GraphRead> {
    let started = Instant::now();
    let response = api
        .client
        .get(format!("{}/v1/graph", api.base))
        .send()
        .await?
        .error_for_status()?;
    let body = response.bytes().await?;
    let took = started.elapsed();
    let graph: Value = serde_json::from_slice(&body).context("GET /v1/graph: not JSON")?;
    let reporting_instances = graph["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|deployment| {
            deployment["instance_groups"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|group| group["reporting_instances"].as_u64())
        .sum();
    Ok(GraphRead {
        took,
        bytes: body.len(),
        edges: graph["edges"].as_array().map_or(0, Vec::len),
        reporting_instances,
    })
}

/// Carries every plaintext connection accepted on the returned address to the pilot's xDS
/// port over mutual TLS (ALPN h2), as Envoy's own connection would be. A connection ends
/// when either side does: the pilot dying ends the Envoy's stream.
pub(crate) async fn xds_proxy(
    pilot: SocketAddr,
    tls: rustls::ClientConfig,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let address = socket.local_addr()?;
    let listener = socket.listen(8192)?;
    tasks.spawn(async move {
        let server_name = rustls::pki_types::ServerName::try_from(PILOT_SERVER_NAME)
            .expect("a DNS name")
            .to_owned();
        while let Ok((mut envoy, _)) = listener.accept().await {
            let connector = connector.clone();
            let server_name = server_name.clone();
            tokio::spawn(async move {
                let carried = async {
                    let upstream = TcpStream::connect(pilot).await?;
                    upstream.set_nodelay(true)?;
                    envoy.set_nodelay(true)?;
                    let mut upstream = connector.connect(server_name, upstream).await?;
                    tokio::io::copy_bidirectional(&mut envoy, &mut upstream).await?;
                    upstream.shutdown().await
                };
                if let Err(err) = carried.await {
                    tracing::debug!("xDS proxy: {err}");
                }
            });
        }
    });
    Ok(address)
}

/// When the last response of `received` was ACKed, after `since`.
pub(crate) fn last_ack(received: &[Received], since: Instant) -> Duration {
    received
        .iter()
        .map(|r| r.acked_at.saturating_duration_since(since))
        .max()
        .unwrap_or_default()
}

/// The instants at which `envoys` Envoys whose streams broke at `broke` connect again, given
/// when the pilot listens again (`up`, measured from `broke`): each retries on Envoy's
/// jittered backoff and the first attempt at or after `up` connects. Sorted.
fn reconnect_times(envoys: usize, up: Duration) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..envoys)
        .map(|_| {
            let mut backoff = Backoff::new();
            let mut at = backoff.next_delay();
            while at < up {
                at += backoff.next_delay();
            }
            at
        })
        .collect();
    times.sort();
    times
}

/// Waits until `address` accepts a connection; the time since `since`.
async fn listening(address: SocketAddr, since: Instant) -> Result<Duration> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(since.elapsed())
}

/// File descriptors one process may hold: RLIMIT_NOFILE's hard limit here (20,000), which
/// needs CAP_SYS_RESOURCE to raise; with room for everything else a process opens.
fn usable_files() -> Result<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    Ok(hard.saturating_sub(1000))
}

/// The Envoys, in child processes: each Envoy costs three descriptors there (its connection,
/// and the proxy's two), so they are shared among as many processes as the open-file limit
/// needs, apart from the agents' process.
struct Envoys {
    processes: Vec<EnvoyProcess>,
}

struct EnvoyProcess {
    child: Child,
    control: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Envoys {
    /// `clients` Envoys to the pilot's `xds`; the processes run in `dir`, where the clients'
    /// certificate files are.
    fn start(xds: SocketAddr, clients: usize, dir: &Path) -> Result<Envoys> {
        let per_process = (usable_files()? / 3).max(1) as usize;
        let count = clients.div_ceil(per_process);
        let processes = (0..count)
            .map(|i| {
                let share = clients / count + usize::from(i < clients % count);
                EnvoyProcess::start(xds, share, dir)
            })
            .collect::<Result<_>>()?;
        Ok(Envoys { processes })
    }

    async fn tell(&mut self, line: &str) -> Result<()> {
        for process in &mut self.processes {
            process
                .control
                .write_all(format!("{line}\n").as_bytes())
                .await?;
            process.control.flush().await?;
        }
        Ok(())
    }

    /// The latest of the processes' next `synced <seconds>` answers.
    async fn synced(&mut self) -> Result<Duration> {
        let mut last = Duration::ZERO;
        for process in &mut self.processes {
            let line = process
                .answers
                .next_line()
                .await?
                .context("an Envoys' process ended")?;
            let seconds: f64 = line
                .strip_prefix("synced ")
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("an Envoys' process said `{line}`"))?;
            last = last.max(Duration::from_secs_f64(seconds));
        }
        Ok(last)
    }

    async fn stop(self) -> Result<()> {
        for mut process in self.processes {
            process.child.start_kill()?;
            process.child.wait().await?;
        }
        Ok(())
    }
}

impl EnvoyProcess {
    fn start(xds: SocketAddr, clients: usize, dir: &Path) -> Result<EnvoyProcess> {
        let mut child = Command::new(super::bench_binary()?)
            .args(["fleet", "--clients", &clients.to_string(), "--reference"])
            .arg(clients.to_string())
            .arg("--envoys-for")
            .arg(xds.to_string())
            .current_dir(dir)
            // Streams ending when the pilot is killed are the point, not news.
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting an Envoys' process")?;
        let control = child.stdin.take().context("its stdin")?;
        let stdout = child.stdout.take().context("its stdout")?;
        Ok(EnvoyProcess {
            child,
            control,
            answers: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        })
    }
}

/// The child process of [`Envoys`]: `connect` connects every Envoy and answers `synced
/// <seconds>` (to the last ACK of the four types); `broke` drops them (the pilot was killed);
/// `up <ms>` (when the pilot listened again, after `broke`) reconnects each on its backoff
/// and answers `synced <seconds since broke>`.
async fn serve_envoys(xds: SocketAddr, clients: usize) -> Result<()> {
    let mut tasks = JoinSet::new();
    let tls = boshy::tls::client_config(&client_tls_files(&std::env::current_dir()?))?;
    let proxy = xds_proxy(xds, tls, &mut tasks).await?;
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let mut fleets: Vec<Fleet> = Vec::new();
    let mut broke = Instant::now();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let synced = match (words.next(), words.next()) {
            (Some("connect"), None) => {
                let since = Instant::now();
                let fleet = Fleet::connect(proxy, clients, AdsMode::Delta).await?;
                let synced = last_ack(&fleet.settle(since, 4).await?, since);
                fleets.push(fleet);
                synced
            }
            (Some("broke"), None) => {
                broke = Instant::now();
                fleets.clear();
                continue;
            }
            (Some("up"), Some(ms)) => {
                let up = Duration::from_millis(ms.parse().context("up <ms>")?);
                let times = reconnect_times(clients, up);
                let mut next = 0;
                while next < times.len() {
                    let now = broke.elapsed();
                    let due = times[next..].iter().take_while(|t| **t <= now).count();
                    if due > 0 {
                        fleets.push(Fleet::connect(proxy, due, AdsMode::Delta).await?);
                        next += due;
                    }
                    tokio::time::sleep(RECONNECT_TICK).await;
                }
                let mut last = Duration::ZERO;
                for fleet in &fleets {
                    last = last.max(last_ack(&fleet.settle(broke, 4).await?, broke));
                }
                last
            }
            _ => bail!("the Envoys' process: unknown command `{line}`"),
        };
        println!("synced {}", synced.as_secs_f64());
    }
    Ok(())
}

/// What one size measured.
struct Measured {
    clients: usize,
    connected_agents: Duration,
    connected_envoys: Duration,
    connect_cpu: f64,
    steady_rss_mb: f64,
    steady_cpu: f64,
    steady_threads: u64,
    /// Over a window as long as the steady one, every agent posting its calls window.
    calls_cpu: f64,
    calls_rss_mb: f64,
    /// With every agent's window current.
    graph: GraphRead,
    /// One agent's calls window, as JSON.
    window_bytes: usize,
    up_again: Duration,
    reconnected_agents: Duration,
    reconnected_envoys: Duration,
    reconnect_peak_mb: f64,
    reconnect_cpu: f64,
    /// The machine's 1-minute load average when the reconnect ended: the cores are shared,
    /// and other work there stretches every duration (not the pilot's CPU seconds).
    load: f64,
}

async fn measure(
    setup: &Setup,
    catalog: &Catalog,
    clients: usize,
    steady: Duration,
    scratch: &Path,
) -> Result<Measured> {
    let log = scratch.join(format!("pilot-{clients}.log"));
    let pilot = Pilot::start(&setup.config, &log)?;
    read_catalog(&setup.api).await?;
    let mut envoys = Envoys::start(setup.xds, clients, scratch)?;
    let mut agents = JoinSet::new();
    let base = format!("https://{}", setup.names);

    eprintln!("bench fleet: {clients} agents and {clients} Envoys connecting");
    let cpu_before = pilot.cpu()?;
    let started = Instant::now();
    envoys.tell("connect").await?;
    let on = spread(&catalog.instances, clients);
    for instance in &on {
        agents.spawn(agent(
            instance.clone(),
            base.clone(),
            setup.client_tls.clone(),
        ));
    }
    let (connected_agents, connected_envoys) = tokio::join!(
        agents_reporting(&setup.api, clients, started),
        envoys.synced()
    );
    let (connected_agents, connected_envoys) = (connected_agents?, connected_envoys?);
    let connect_cpu = pilot.cpu()? - cpu_before;

    eprintln!(
        "bench fleet: connected (agents {connected_agents:?}, Envoys {connected_envoys:?}); \
         steady for {steady:?}"
    );
    let cpu_before = pilot.cpu()?;
    tokio::time::sleep(steady).await;
    let steady_cpu = pilot.cpu()? - cpu_before;
    let memory = pilot.memory()?;

    eprintln!("bench fleet: every agent posting its calls window every {CALLS_WINDOW:?}");
    let calls: Vec<(Instance, Vec<String>)> = on
        .into_iter()
        .map(|instance| {
            let destinations = called_services(&catalog.hostnames, &instance);
            (instance, destinations)
        })
        .collect();
    let expected_edges = graph_edges(&calls);
    let window_bytes = calls.first().map_or(0, |(instance, destinations)| {
        calls_window(instance, destinations).to_string().len()
    });
    let mut reporters = JoinSet::new();
    for (i, (instance, destinations)) in calls.into_iter().enumerate() {
        // Spread over the window, as the real agents' timers are: each starts with its agent.
        let first = CALLS_WINDOW.mul_f64(i as f64 / clients as f64);
        reporters.spawn(report_calls(
            instance,
            destinations,
            base.clone(),
            setup.client_tls.clone(),
            first,
        ));
    }
    // Every agent's first window is in after one window and the time a pilot has to take it.
    tokio::time::sleep(CALLS_WINDOW + REPORT_TIMEOUT).await;
    let cpu_before = pilot.cpu()?;
    tokio::time::sleep(steady).await;
    let calls_cpu = pilot.cpu()? - cpu_before;
    let calls_rss_mb = pilot.memory()?.rss_mb();
    let graph = read_graph(&setup.api).await?;
    // The agents' calls go no further: the reconnect below is measured as before the console.
    reporters.shutdown().await;
    if graph.edges != expected_edges || graph.reporting_instances != clients as u64 {
        bail!(
            "GET /v1/graph has {} edges and {} reporting instances; the agents' windows make \
             {expected_edges} edges of {clients} instances",
            graph.edges,
            graph.reporting_instances
        );
    }

    eprintln!("bench fleet: killing the pilot and starting it again");
    pilot.kill().await?;
    let broke = Instant::now();
    envoys.tell("broke").await?;
    let pilot = Pilot::start(&setup.config, &log)?;
    let cpu_before = pilot.cpu()?;
    let up_again = listening(setup.xds, broke).await?;
    envoys.tell(&format!("up {}", up_again.as_millis())).await?;
    let (reconnected_agents, reconnected_envoys) = tokio::join!(
        agents_reporting(&setup.api, clients, broke),
        envoys.synced()
    );
    let (reconnected_agents, reconnected_envoys) = (reconnected_agents?, reconnected_envoys?);
    let reconnect_cpu = pilot.cpu()? - cpu_before;
    let reconnect_peak_mb = pilot.memory()?.hwm_kb as f64 / 1024.0;
    let load = load_average();
    eprintln!(
        "bench fleet: reconnected (listening after {up_again:?}, agents {reconnected_agents:?}, \
         Envoys {reconnected_envoys:?})"
    );
    envoys.stop().await?;
    agents.shutdown().await;
    pilot.kill().await?;
    Ok(Measured {
        clients,
        connected_agents,
        connected_envoys,
        connect_cpu,
        steady_rss_mb: memory.rss_mb(),
        steady_cpu,
        steady_threads: memory.threads,
        calls_cpu,
        calls_rss_mb,
        graph,
        window_bytes,
        up_again,
        reconnected_agents,
        reconnected_envoys,
        reconnect_peak_mb,
        reconnect_cpu,
        load,
    })
}

/// The 1-minute load average (`/proc/loadavg`); 0 when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Raises the open-file limit to its hard limit, for this process and the pilot it starts.
/// The agents' process holds two connections per agent (the stream and the calls reports'; a
/// health report goes on a connection of its own, closed after), the pilot those and one per
/// Envoy.
fn raise_file_limit(clients: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    let usable = usable_files()?;
    if 3 * clients as u64 > usable {
        bail!(
            "RLIMIT_NOFILE is {hard} (raising it needs CAP_SYS_RESOURCE): the pilot can hold \
             {} agents reporting their calls and as many Envoys, not {clients}",
            usable / 3
        );
    }
    Ok(())
}

pub async fn run(args: Args) -> Result<()> {
    let total = args.deployments * args.groups * args.instances;
    if args.envoys_for.is_none() && args.clients > total
        || args.reference > args.clients
        || args.reference == 0
    {
        bail!("need 0 < --reference ≤ --clients ≤ the estate's {total} instances");
    }
    raise_file_limit(args.clients)?;
    if let Some(xds) = args.envoys_for {
        return serve_envoys(xds, args.clients).await;
    }
    let scratch = ScratchDir::new(BENCHMARK)?;
    let estate = format!(
        "{} deployments × {} groups × {} instances ({total} instances, {} services of an HTTP \
         and a TCP port, every instance an endpoint)",
        args.deployments,
        args.groups,
        args.instances,
        args.deployments * args.groups,
    );
    eprintln!("bench fleet: {estate}");
    let _local = LocalRange::add(INSTANCE_NETWORK)?;
    let sim = director(&args, &scratch).await?;
    let setup = setup(&sim, scratch.path())?;
    // The instances and services, from a first pilot's catalog (its VIPs are kept for the
    // others).
    let catalog = {
        let pilot = Pilot::start(&setup.config, &scratch.path().join("pilot-catalog.log"))?;
        let catalog = read_catalog(&setup.api).await?;
        pilot.kill().await?;
        catalog
    };
    if catalog.instances.len() < args.clients {
        bail!(
            "the catalog has {} instances, fewer than {}",
            catalog.instances.len(),
            args.clients
        );
    }
    let steady = Duration::from_secs(args.steady_seconds);
    let reference = measure(&setup, &catalog, args.reference, steady, scratch.path())
        .await
        .with_context(|| log_tail(scratch.path(), args.reference))?;
    let many = measure(&setup, &catalog, args.clients, steady, scratch.path())
        .await
        .with_context(|| log_tail(scratch.path(), args.clients))?;
    drop(sim);
    super::emit(
        &rows(&many, &reference, &estate, &args),
        args.out.as_deref(),
    )
}

/// The end of the pilot's log of a failed size: the scratch directory goes with the run.
fn log_tail(dir: &Path, clients: usize) -> String {
    let log = std::fs::read_to_string(dir.join(format!("pilot-{clients}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "{clients} clients; the pilot's log ends:\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// The figure at the goal's size, [`GOAL_CLIENTS`]: measured when `many` has that many
/// clients, else on the line through the two sizes (an optimistic bound: the measured costs
/// grow faster than linearly).
fn at_goal_size(reference: (usize, f64), many: (usize, f64)) -> f64 {
    let ((r, at_r), (n, at_n)) = (reference, many);
    if n >= GOAL_CLIENTS || n == r {
        return at_n;
    }
    at_n + (GOAL_CLIENTS - n) as f64 * (at_n - at_r) / (n - r) as f64
}

fn rows(many: &Measured, reference: &Measured, estate: &str, args: &Args) -> Vec<Row> {
    let n = many.clients;
    let against = format!(
        "{} agents + {} Envoys",
        reference.clients, reference.clients
    );
    let seconds = |d: Duration| d.as_secs_f64();
    let connected = |m: &Measured| seconds(m.connected_agents.max(m.connected_envoys));
    let reconnected = |m: &Measured| seconds(m.reconnected_agents.max(m.reconnected_envoys));
    let extrapolate = |of: &dyn Fn(&Measured) -> f64| {
        at_goal_size((reference.clients, of(reference)), (n, of(many)))
    };
    let steady = format!("{n} + {n} steady, same pilot");
    // What the calls windows add to the steady figures, per agent.
    let rss_per_agent =
        |m: &Measured| (m.calls_rss_mb - m.steady_rss_mb) * 1024.0 * 1024.0 / m.clients as f64;
    let cpu_per_1000_agents = |m: &Measured| {
        (m.calls_cpu - m.steady_cpu) * 100.0 / args.steady_seconds as f64 * 1000.0
            / m.clients as f64
    };
    let rss_at_goal = extrapolate(&|m| m.steady_rss_mb);
    let peak_at_goal = extrapolate(&|m| m.reconnect_peak_mb);
    let reconnect_at_goal = extrapolate(&|m| seconds(m.reconnected_envoys));
    let scope = if n >= GOAL_CLIENTS {
        format!("measured at {n}")
    } else {
        format!(
            "the goal is for {GOAL_CLIENTS} of each, which this machine cannot hold: \
             RLIMIT_NOFILE is 20,000 and not raisable here (no CAP_SYS_RESOURCE) while the \
             pilot needs a descriptor per agent and per Envoy, and 5,000 of each did not sync \
             within the emulated fleet's 300 s (see bench/notes.md); the verdict is taken at \
             {GOAL_CLIENTS} on the line through the two sizes"
        )
    };
    let method = "the release's `boshy pilot` process over mutual TLS (names and xDS), the \
                  director simulator and the agents in the benchmark's process, the Envoys in \
                  child processes, all on the same 2 cores";
    vec![
        Row::new(
            BENCHMARK,
            format!("pilot RSS, {n} agents + {n} Envoys connected (steady)"),
            many.steady_rss_mb,
            "MB",
        )
        .against(&against, reference.steady_rss_mb)
        .goal(
            format!("reported; < {GOAL_RSS_MB:.0} MB at {GOAL_CLIENTS} + {GOAL_CLIENTS}"),
            rss_at_goal < GOAL_RSS_MB,
        )
        .note(format!(
            "{estate}; every agent reporting, every Envoy synced (delta ADS); {} threads; \
             at {GOAL_CLIENTS} + {GOAL_CLIENTS}: {rss_at_goal:.0} MB; {scope}; {method}",
            many.steady_threads
        )),
        Row::new(
            BENCHMARK,
            format!(
                "pilot CPU over a {} s steady window, {n} + {n} connected",
                args.steady_seconds
            ),
            many.steady_cpu,
            "s",
        )
        .against(&against, reference.steady_cpu)
        .goal("reported", true)
        .note(format!(
            "user + system seconds of the pilot process (/proc/<pid>/stat): heartbeats, \
             keepalives, director polls and the catalog changes they bring; {:.1}% of one core",
            many.steady_cpu * 100.0 / args.steady_seconds as f64
        )),
        Row::new(
            BENCHMARK,
            format!(
                "pilot CPU over a {} s window, {n} + {n} connected, every agent posting its \
                 calls window",
                args.steady_seconds
            ),
            many.calls_cpu,
            "s",
        )
        .against(&steady, many.steady_cpu)
        .goal("reported", true)
        .note(format!(
            "the console's input: each agent POSTs /v1/names/traffic every {} s from its own \
             address (its calls to {CALLED_SERVICES} services, 20 duration buckets each, \
             {} bytes of JSON), on a connection of its own kept open between windows as the \
             real agent's; the window starts once every agent's first is in; {:.1}% of one core",
            CALLS_WINDOW.as_secs(),
            many.window_bytes,
            many.calls_cpu * 100.0 / args.steady_seconds as f64
        )),
        Row::new(
            BENCHMARK,
            format!("pilot RSS, {n} + {n} connected, with every agent's calls window"),
            many.calls_rss_mb,
            "MB",
        )
        .against(&steady, many.steady_rss_mb)
        .goal("reported", true)
        .note(
            "after that window: the last window of every instance and the agents' calls \
             connections",
        ),
        Row::new(
            BENCHMARK,
            "the console's pilot RSS per agent posting its calls window",
            rss_per_agent(many),
            "bytes",
        )
        .against(&against, rss_per_agent(reference))
        .note("(RSS with the windows − steady RSS) / agents, each size in its own pilot"),
        Row::new(
            BENCHMARK,
            "the console's pilot CPU per 1000 agents posting their calls windows",
            cpu_per_1000_agents(many),
            "% of a core",
        )
        .against(&against, cpu_per_1000_agents(reference))
        .note(format!(
            "(CPU seconds with the windows − steady CPU seconds) over the {} s windows, per \
             1000 agents",
            args.steady_seconds
        )),
        Row::new(
            BENCHMARK,
            format!("GET /v1/graph with {n} agents' calls windows current"),
            many.graph.took.as_secs_f64() * 1000.0,
            "ms",
        )
        .against(&against, reference.graph.took.as_secs_f64() * 1000.0)
        .goal("reported", true)
        .note(format!(
            "one request with the benchmark's API client (mutual TLS, connection open), to the \
             last byte of the body: {} edges (each calling instance group's to its \
             {CALLED_SERVICES} services, as many as the agents' windows make), {} reporting \
             instances, the whole catalog's nodes, {} kB of JSON ({} edges for the reference)",
            many.graph.edges,
            many.graph.reporting_instances,
            many.graph.bytes / 1024,
            reference.graph.edges
        )),
        Row::new(
            BENCHMARK,
            format!("connect: {n} agents reporting and {n} Envoys synced"),
            connected(many),
            "s",
        )
        .against(&against, connected(reference))
        .note(format!(
            "all at once on a running pilot; agents reporting (boshy_agents_reporting = {n}) \
             after {:.1} s, last Envoy's last ACK of the four types after {:.1} s; pilot CPU \
             {:.1} s",
            seconds(many.connected_agents),
            seconds(many.connected_envoys),
            many.connect_cpu
        )),
        Row::new(
            BENCHMARK,
            format!("mass reconnect after kill -9: last of {n} Envoys fully synced"),
            seconds(many.reconnected_envoys),
            "s",
        )
        .against(&against, seconds(reference.reconnected_envoys))
        .goal(
            format!("< {GOAL_RECONNECT_SECONDS:.0} s at {GOAL_CLIENTS}"),
            reconnect_at_goal < GOAL_RECONNECT_SECONDS,
        )
        .note(format!(
            "from the kill; the pilot started again at once on the same ports and listened \
             after {:.2} s; every Envoy reconnects on its jittered backoff (500 ms base), so \
             all within a second of each other; last ACK of the four types; at \
             {GOAL_CLIENTS}: {reconnect_at_goal:.0} s; {scope}",
            seconds(many.up_again)
        )),
        Row::new(
            BENCHMARK,
            format!("mass reconnect after kill -9: all {n} agents report again"),
            seconds(many.reconnected_agents),
            "s",
        )
        .against(&against, seconds(reference.reconnected_agents))
        .note(format!(
            "from the kill, to boshy_agents_reporting = {n} on the new pilot (its first \
             catalog is read from the director first); whole reconnect (agents and Envoys) \
             {:.1} s",
            reconnected(many),
        )),
        Row::new(
            BENCHMARK,
            format!("pilot CPU during the mass reconnect, {n} + {n}"),
            many.reconnect_cpu,
            "s",
        )
        .against(&against, reference.reconnect_cpu)
        .goal("reported", true)
        .note(format!(
            "user + system seconds of the new pilot process from its start until every agent \
             reports and every Envoy is synced: the work the reconnect costs, which the other \
             work on the shared cores does not stretch as it does the durations (1-minute \
             load average at the end: {:.1} here, {:.1} for the reference)",
            many.load, reference.load
        )),
        Row::new(
            BENCHMARK,
            format!("pilot peak RSS during the reconnect, {n} + {n}"),
            many.reconnect_peak_mb,
            "MB",
        )
        .against(&against, reference.reconnect_peak_mb)
        .goal(
            format!("< {GOAL_RSS_MB:.0} MB at {GOAL_CLIENTS} + {GOAL_CLIENTS}"),
            peak_at_goal < GOAL_RSS_MB,
        )
        .note(format!(
            "VmHWM of the new pilot process once every client is back; at {GOAL_CLIENTS} + \
             {GOAL_CLIENTS}: {peak_at_goal:.0} MB"
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_is_read_from_the_exposition() {
        let text = "# TYPE boshy_agents_reporting gauge\nboshy_agents_reporting 42\n\
                    boshy_agents_reporting_other 7\n";
        assert_eq!(metric_value(text, "boshy_agents_reporting"), Some(42.0));
        assert_eq!(metric_value(text, "boshy_names_streams"), None);
    }

    #[test]
    fn a_goal_is_judged_at_its_size_on_the_line_through_the_two_sizes() {
        assert_eq!(at_goal_size((1000, 100.0), (2000, 200.0)), 1000.0);
        assert_eq!(at_goal_size((1000, 100.0), (10_000, 640.0)), 640.0);
        assert_eq!(at_goal_size((5, 1.0), (5, 2.0)), 2.0);
    }

    #[test]
    fn clients_are_spread_over_the_estate() {
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&all, 5), [0, 2, 4, 6, 8]);
        assert_eq!(spread(&all, 10), all);
    }

    #[test]
    fn envoys_reconnect_on_the_first_attempt_after_the_pilot_listens() {
        let up = Duration::from_secs(2);
        let times = reconnect_times(1000, up);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.iter().all(|t| *t >= up), "none before it listens");
        // The attempt after `up` comes at most one delay later, and delays reach 4 s at most
        // by then (0.5, 1, 2, 4 s ceilings).
        assert!(times.iter().all(|t| *t <= up + Duration::from_secs(4)));
        let soon = reconnect_times(1000, Duration::ZERO);
        assert!(soon
            .iter()
            .all(|t| *t >= BACKOFF_MIN / 2 && *t <= BACKOFF_MIN));
    }

    fn instance(instance_group: &str, id: &str) -> Instance {
        Instance {
            deployment: "d".into(),
            id: id.into(),
            address: Ipv4Addr::new(198, 18, 0, 1),
            instance_group: instance_group.into(),
        }
    }

    #[test]
    fn an_instance_group_calls_the_same_services_from_every_instance_an_edge_each() {
        let hostnames: Vec<String> = (0..8).map(|i| format!("s{i}.boshy")).collect();
        let calls: Vec<(Instance, Vec<String>)> = [("a", "1"), ("a", "2"), ("b", "3")]
            .into_iter()
            .map(|(group, id)| {
                let caller = instance(group, id);
                let destinations = called_services(&hostnames, &caller);
                (caller, destinations)
            })
            .collect();
        assert_eq!(calls[0].1, calls[1].1);
        let distinct: BTreeSet<&String> = calls[0].1.iter().collect();
        assert_eq!(distinct.len(), CALLED_SERVICES);
        assert_eq!(graph_edges(&calls), 2 * CALLED_SERVICES, "groups a and b");
        assert_eq!(
            called_services(&hostnames[..3], &calls[2].0).len(),
            3,
            "a catalog of fewer services: each once"
        );
    }

    #[test]
    fn a_calls_window_is_what_the_pilot_takes() {
        let destinations = vec!["s.boshy".to_string()];
        let window = calls_window(&instance("g", "i"), &destinations);
        // The pilot refuses unknown fields (`console::wire`).
        let keys = |object: &Value| {
            let mut keys: Vec<String> = object.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&window),
            ["calls", "deployment", "instance", "window_ms"]
        );
        let calls = &window["calls"][0];
        assert_eq!(
            keys(calls),
            [
                "connections",
                "destination",
                "duration_buckets",
                "errors",
                "failed_connections",
                "requests"
            ]
        );
        let requests = calls["requests"].as_u64().unwrap();
        let buckets: Vec<u64> = serde_json::from_value(calls["duration_buckets"].clone()).unwrap();
        assert_eq!(buckets.len(), 20);
        assert_eq!(buckets.iter().sum::<u64>(), requests);
        assert!(calls["errors"].as_u64().unwrap() <= requests);
        assert!(calls["failed_connections"].as_u64() <= calls["connections"].as_u64());
    }

    #[test]
    fn durations_fill_the_buckets_to_the_request_count() {
        for requests in [0, 1, 99, 2000] {
            assert_eq!(duration_buckets(requests).iter().sum::<u64>(), requests);
        }
    }

    #[test]
    fn every_instance_of_the_estate_is_an_endpoint() {
        let text = manifest("d", 3, 4, |_| true);
        assert_eq!(text.matches("expose_ports").count(), 3);
        assert_eq!(text.matches("instances: 4").count(), 3);
    }
}
