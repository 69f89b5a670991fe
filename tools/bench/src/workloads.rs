//! VMs outside BOSH registered and heartbeating (`boshy-bench workloads`, docs/workloads.md):
//! the release's `boshy pilot` process, reading the director simulator and keeping its
//! registrations in the director (a config of type `boshy-workloads`), with N emulated VMs
//! joined into one WorkloadGroup and heartbeating as their agents do.
//!
//! - The VMs have addresses of `198.18.0.0/16`, routed to lo for the run (as the fleet
//!   benchmark's instances): each joins from its own address, which the pilot registers.
//! - Joining: each VM's key and CSR are made before any clock starts; `POST /v1/workloads/join`
//!   with the join token (minted by `POST /v1/workloads/tokens` with a `bosh.admin` token of the
//!   simulator's UAA). First `--burst` VMs all at once (the director writes they cost are
//!   counted: the pilot batches joins), then the rest 200 at a time.
//! - Heartbeating: each VM follows the name table (`GET /v1/names/watch` as its registration)
//!   with the certificate its join returned, and posts its report (probe passing) every
//!   `heartbeat_seconds`, on a connection kept between heartbeats as the real agent's.
//!
//! - The reference of BOSH VMs: before the joined VMs, the same pilot (same config, a second
//!   process) on a director that also lists N BOSH instances in one instance group, at
//!   addresses of the same network; N emulated agents of those instances follow the name
//!   table with the mesh client certificate every BOSH VM presents and post their report every
//!   `heartbeat_seconds` too (a real BOSH VM's agent reports on change only: here at the joined
//!   VMs' pace, so that the two runs differ by the registrations alone). No registration.
//!
//! Figures: the pilot's RSS and CPU over a steady window with N VMs heartbeating, beside the
//! same pilot (same director, same WorkloadGroup) with none, in the same run; the same with N
//! BOSH VMs' agents instead, so that what N joined VMs add decomposes into what N agents'
//! connections and reports cost (any VM's) and what the registrations cost on top; the
//! director writes a minute in that window (none are wanted: heartbeats live in memory); the
//! burst's time and its writes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::director::manifest;
use super::fleet::LocalRange;
use super::pilot::{free_port, Pilot};
use super::report::Row;
use super::ScratchDir;

const BENCHMARK: &str = "workloads";
const SECRET: &str = "bench-workloads-secret";
/// The VMs' addresses, local on lo for the run.
const VM_NETWORK: &str = "198.18.0.0/16";
/// The director config holding the WorkloadGroup, and the group.
const CONFIG: &str = "legacy";
const GROUP: &str = "vms";
/// The reference's deployment of BOSH VMs: one instance group of N instances.
const BOSH_DEPLOYMENT: &str = "bosh-vms";
/// The registration store's config type and name (named after the tld).
const STORE_TYPE: &str = "boshy-workloads";
const TLD: &str = "boshy";
/// The goal's size and bounds (issue 13): 10,000 VMs cost under 5% of a core and 100 MB.
const GOAL_VMS: usize = 10_000;
const GOAL_CPU_PERCENT: f64 = 5.0;
const GOAL_RSS_MB: f64 = 100.0;
/// Joins in flight at once after the burst.
const JOIN_CONCURRENCY: usize = 200;
/// Bounds a broken run: no phase may take longer.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// VMs registered and heartbeating. Each holds two connections to the pilot (the name
    /// table and its reports), so this machine's open-file limit bounds it.
    #[arg(long, default_value_t = 4_000)]
    pub vms: usize,
    /// Joins sent all at once, first.
    #[arg(long, default_value_t = 1_000)]
    pub burst: usize,
    /// How often each VM heartbeats (the pilot's `workloads.heartbeat_seconds`).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// The steady window over which RSS, CPU and director writes are read.
    #[arg(long, default_value_t = 60)]
    pub steady_seconds: u64,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A director with a small estate and the WorkloadGroup, as `bosh update-config` puts it;
/// with `bosh_vms`, also a deployment of that many BOSH instances at addresses of
/// [`VM_NETWORK`] (local for the run: their emulated agents connect from them).
async fn director(dir: &Path, bosh_vms: usize) -> Result<SimHandle> {
    let fixtures = dir.join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    std::fs::write(
        fixtures.join("estate.yml"),
        manifest("estate", 2, 5, |_| true),
    )?;
    let network = match bosh_vms {
        0 => "10.250.0.0/24",
        n => {
            std::fs::write(
                fixtures.join(format!("{BOSH_DEPLOYMENT}.yml")),
                manifest(BOSH_DEPLOYMENT, 1, n, |_| true),
            )?;
            VM_NETWORK
        }
    };
    let sim = sim::start(SimOptions {
        fixtures: Some(fixtures),
        instance_network: network.parse().expect("a valid CIDR"),
        task_delay: Duration::from_millis(10),
        ..SimOptions::new(SECRET)
    })
    .await?;
    let group = format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata:\n  name: {GROUP}\n\
         spec:\n  metadata:\n    labels:\n      app: {GROUP}\n  template:\n    ports:\n      \
         tcp-service: 5672\n  probe:\n    tcpSocket:\n      port: 5672\n"
    );
    let director = Director::of(&sim).await?;
    director
        .http
        .post(format!("{}/configs", sim.director_url()))
        .bearer_auth(&director.token)
        .json(&json!({"type": "boshy-istio", "name": CONFIG, "content": group}))
        .send()
        .await?
        .error_for_status()
        .context("the director refused the WorkloadGroup's config")?;
    Ok(sim)
}

/// The director API as an operator with `bosh.admin` reaches it.
struct Director {
    http: reqwest::Client,
    token: String,
    url: String,
}

impl Director {
    async fn of(sim: &SimHandle) -> Result<Director> {
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/_sim/tokens/issue", sim.control_url()))
            .json(&json!({"scopes": ["bosh.admin"], "ttl_seconds": 7200}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Director {
            http: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(sim.ca_pem().as_bytes())?)
                .build()?,
            token: answer["access_token"]
                .as_str()
                .context("no access_token")?
                .to_string(),
            url: sim.director_url(),
        })
    }

    /// How many versions of the registration store the director holds: one per write.
    async fn store_writes(&self) -> Result<usize> {
        let configs: Vec<Value> = self
            .http
            .get(format!("{}/configs", self.url))
            .query(&[("type", STORE_TYPE), ("name", TLD), ("latest", "false")])
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(configs.len())
    }
}

/// The pilot's config, its ports and the mesh CA its certificate is checked against.
#[derive(Clone)]
struct Setup {
    config: PathBuf,
    api: SocketAddr,
    names: SocketAddr,
    ca_pem: String,
    /// The mesh client certificate then its key: what every BOSH VM's agent presents.
    bosh_identity: String,
}

impl Setup {
    fn api_url(&self) -> String {
        format!("https://{PILOT_SERVER_NAME}:{}", self.api.port())
    }
}

fn setup(sim: &SimHandle, dir: &Path, heartbeat_seconds: u64) -> Result<Setup> {
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let ca = Ca::new("boshy-istio bench CA")?;
    let server = ca.server(PILOT_SERVER_NAME)?;
    let bosh = ca.client("bosh-vm")?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (api, xds, names) = (
        loopback(free_port()?),
        loopback(free_port()?),
        loopback(free_port()?),
    );
    // The VMs' addresses are on lo: the pilot must reach them for nothing, and heartbeats
    // keep them healthy; the TTL is the pilot's default ratio to the heartbeat.
    let config = format!(
        "director:\n  url: {url}\n  client: pilot\n  client_secret_file: {secret}\n  \
         ca_cert_path: {director_ca}\n\
         tls:\n  ca_cert_path: {ca}\n  cert_path: {cert}\n  key_path: {key}\n\
         listen:\n  api: {api}\n  xds: {xds}\n  names: {names}\n\
         workloads:\n  mesh_ca_private_key: {ca_key}\n  heartbeat_seconds: {heartbeat_seconds}\n  \
         ttl_seconds: {ttl}\n",
        url = sim.director_url(),
        secret = write("pilot-secret", SECRET)?.display(),
        director_ca = write("director-ca.pem", sim.ca_pem())?.display(),
        ca = write("ca.pem", &ca.cert_pem())?.display(),
        cert = write("pilot.pem", &server.cert_pem)?.display(),
        key = write("pilot.key", &server.key_pem)?.display(),
        ca_key = write("ca.key", &ca.key_pem())?.display(),
        ttl = heartbeat_seconds * 3,
    );
    Ok(Setup {
        config: write("pilot.yml", &config)?,
        api,
        names,
        ca_pem: ca.cert_pem(),
        bosh_identity: format!("{}\n{}", bosh.cert_pem, bosh.key_pem),
    })
}

/// A client of the pilot trusting the mesh CA, reaching `port` on loopback, from `from`, with
/// an optional client identity (PEM certificate chain then key).
fn pilot_client(
    setup: &Setup,
    port: u16,
    from: Option<IpAddr>,
    identity: Option<&str>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(setup.ca_pem.as_bytes())?)
        .resolve(PILOT_SERVER_NAME, SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(PHASE_DEADLINE)
        .pool_max_idle_per_host(1);
    if let Some(from) = from {
        builder = builder.local_address(from);
    }
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes())?);
    }
    Ok(builder.build()?)
}

/// One emulated VM: its address and key, then what its join returned.
struct Vm {
    address: Ipv4Addr,
    key_pem: String,
    csr: String,
}

/// An emulated agent: of a joined VM, or of a BOSH VM for the reference.
struct Agent {
    address: Ipv4Addr,
    deployment: String,
    id: String,
    /// The VM's certificate chain then its key, as `reqwest::Identity` reads them.
    identity: String,
    /// A joined VM's agent reports its group's probe; a BOSH VM's, its exposed ports.
    joined: bool,
}

fn vms(count: usize) -> Result<Vec<Vm>> {
    (0..count)
        .map(|i| {
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .pem()?;
            // 198.18.0.0/16 from .1.1 on: never a network or broadcast-looking address.
            let n = i as u32 + 257;
            Ok(Vm {
                address: Ipv4Addr::new(198, 18, (n >> 8) as u8, (n & 0xff) as u8),
                key_pem: key.serialize_pem(),
                csr,
            })
        })
        .collect()
}

async fn join(setup: &Setup, token: &str, vm: Vm) -> Result<Agent> {
    let client = pilot_client(setup, setup.api.port(), Some(IpAddr::V4(vm.address)), None)?;
    let response = client
        .post(format!("{}/v1/workloads/join", setup.api_url()))
        .bearer_auth(token)
        .json(&json!({"group": format!("{CONFIG}/{GROUP}"), "csr": vm.csr}))
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("join from {} refused: {status}: {answer}", vm.address);
    }
    let text = |key: &str| -> Result<String> {
        Ok(answer[key]
            .as_str()
            .with_context(|| format!("the join answer has no `{key}`: {answer}"))?
            .to_string())
    };
    Ok(Agent {
        address: vm.address,
        deployment: text("deployment")?,
        id: text("id")?,
        identity: format!("{}\n{}", text("certificate")?, vm.key_pem),
        joined: true,
    })
}

/// Every VM of `vms` joins, `concurrency` at a time; the time to the last answer.
async fn join_all(
    setup: &Setup,
    token: &str,
    vms: Vec<Vm>,
    concurrency: usize,
    joined: &mut Vec<Agent>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut pending = vms.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < concurrency {
            let Some(vm) = pending.next() else { break };
            let (setup, token) = (setup.clone(), token.to_string());
            tasks.spawn(async move { join(&setup, &token, vm).await });
        }
        match tasks.join_next().await {
            Some(done) => joined.push(done??),
            None => return Ok(started.elapsed()),
        }
    }
}

/// A VM's agent: the name-table stream as its instance, and its report (a joined VM's with
/// its probe passing) every `heartbeat`, from the stream's first line on, until the stream
/// fails. `reported` counts the agents whose first report was taken.
async fn heartbeat(
    setup: &Setup,
    vm: &Agent,
    heartbeat: Duration,
    reported: Arc<AtomicUsize>,
) -> Result<()> {
    let client = pilot_client(
        setup,
        setup.names.port(),
        Some(IpAddr::V4(vm.address)),
        Some(&vm.identity),
    )?;
    let base = format!("https://{PILOT_SERVER_NAME}:{}", setup.names.port());
    let mut stream = client
        .get(format!("{base}/v1/names/watch"))
        .query(&[("deployment", &vm.deployment), ("instance", &vm.id)])
        .send()
        .await?
        .error_for_status()?;
    let mut report = json!({"deployment": vm.deployment, "instance": vm.id});
    if vm.joined {
        report["probe"] = json!({"passing": true});
    }
    let mut first = true;
    // The stream's first line arrives before any report counts (the pilot opens the agent's
    // entry when the stream starts).
    stream.chunk().await?;
    let mut ticks = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            chunk = stream.chunk() => {
                if chunk?.is_none() {
                    bail!("the pilot closed {}'s stream", vm.address);
                }
            }
            _ = ticks.tick() => {
                client
                    .post(format!("{base}/v1/names/health"))
                    .json(&report)
                    .send()
                    .await?
                    .error_for_status()?;
                if std::mem::take(&mut first) {
                    reported.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The agents of the director's BOSH VMs (the reference's deployment), with the mesh client
/// certificate.
async fn bosh_agents(sim: &SimHandle, setup: &Setup) -> Result<Vec<Agent>> {
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.control_url()))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let deployment = state["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == BOSH_DEPLOYMENT))
        .with_context(|| format!("the simulator lists no deployment {BOSH_DEPLOYMENT}"))?;
    deployment["instances"]
        .as_array()
        .context("the deployment has no instances")?
        .iter()
        .map(|instance| {
            let text = |v: &Value| v.as_str().map(str::to_string);
            Ok(Agent {
                address: text(&instance["ips"][0])
                    .context("an instance without an address")?
                    .parse()?,
                deployment: BOSH_DEPLOYMENT.to_string(),
                id: text(&instance["id"]).context("an instance without an id")?,
                identity: setup.bosh_identity.clone(),
                joined: false,
            })
        })
        .collect()
}

/// Runs `agents` until each has reported once, through `until`'s end; fails if one stopped.
async fn with_agents<T>(
    setup: &Setup,
    agents: Vec<Agent>,
    period: Duration,
    until: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let count = agents.len();
    let reported = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for agent in agents {
        let (setup, reported) = (setup.clone(), reported.clone());
        tasks.spawn(async move { heartbeat(&setup, &agent, period, reported).await });
    }
    boshy_lab::ready::until(PHASE_DEADLINE, "every agent reported", || {
        let reported = reported.load(Ordering::Relaxed);
        async move { Ok(reported == count) }
    })
    .await?;
    let outcome = until.await?;
    if let Some(failed) = tasks.try_join_next() {
        bail!("an emulated agent stopped: {:?}", failed?);
    }
    tasks.shutdown().await;
    Ok(outcome)
}

/// The first join token of a pilot that just started: it mints them once it has read the
/// director (its WorkloadGroup).
async fn first_token(setup: &Setup, director: &Director, log: &Path) -> Result<String> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        match join_token(setup, director).await {
            Ok(token) => return Ok(token),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(e.context(format!("see {}", log.display()))),
        }
    }
}

/// The operator mints a join token for the group (`boshy workload configure` does this).
async fn join_token(setup: &Setup, director: &Director) -> Result<String> {
    let answer: Value = pilot_client(setup, setup.api.port(), None, None)?
        .post(format!("{}/v1/workloads/tokens", setup.api_url()))
        .bearer_auth(&director.token)
        .json(&json!({"group": format!("{CONFIG}/{GROUP}"), "ttl_seconds": 7200}))
        .send()
        .await?
        .error_for_status()
        .context("minting a join token")?
        .json()
        .await?;
    Ok(answer["token"]
        .as_str()
        .context("no token in the answer")?
        .to_string())
}

/// The registrations `GET /v1/workloads` shows healthy.
async fn healthy_registrations(setup: &Setup, director: &Director) -> Result<usize> {
    let answer: Value = pilot_client(setup, setup.api.port(), None, None)?
        .get(format!("{}/v1/workloads", setup.api_url()))
        .bearer_auth(&director.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer["registrations"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["state"] == "healthy").count()))
}

/// The pilot's RSS (MB) and CPU (s) over `steady`, and the director's store writes then.
async fn steady_window(
    pilot: &Pilot,
    director: &Director,
    steady: Duration,
) -> Result<(f64, f64, usize)> {
    let (cpu, writes) = (pilot.cpu()?, director.store_writes().await?);
    tokio::time::sleep(steady).await;
    Ok((
        pilot.memory()?.rss_mb(),
        pilot.cpu()? - cpu,
        director.store_writes().await? - writes,
    ))
}

struct Measured {
    idle_rss_mb: f64,
    idle_cpu: f64,
    /// The reference: the same pilot with N BOSH VMs' agents and no registration.
    bosh_rss_mb: f64,
    bosh_cpu: f64,
    rss_mb: f64,
    cpu: f64,
    steady_writes: usize,
    burst: Duration,
    burst_writes: usize,
    rest: Duration,
}

pub async fn run(args: Args) -> Result<()> {
    if args.burst > args.vms || args.vms == 0 || args.vms > 65_000 {
        bail!("need 0 < --burst ≤ --vms ≤ 65,000");
    }
    let scratch = ScratchDir::new(BENCHMARK)?;
    let _local = LocalRange::add(VM_NETWORK)?;
    let steady = Duration::from_secs(args.steady_seconds);
    let period = Duration::from_secs(args.heartbeat_seconds);
    let (bosh_rss_mb, bosh_cpu) = bosh_reference(scratch.path(), &args, steady).await?;

    let sim = director(scratch.path(), 0).await?;
    let director = Director::of(&sim).await?;
    let setup = setup(&sim, scratch.path(), args.heartbeat_seconds)?;
    eprintln!("bench workloads: making {} keys and CSRs", args.vms);
    let mut vms = vms(args.vms)?;
    let log = scratch.path().join("pilot.log");
    let pilot = Pilot::start(&setup.config, &log)?;
    let token = first_token(&setup, &director, &log).await?;
    eprintln!("bench workloads: the pilot with no VM registered, {steady:?}");
    let (idle_rss_mb, idle_cpu, _) = steady_window(&pilot, &director, steady).await?;

    let rest = vms.split_off(args.burst);
    let mut joined = Vec::with_capacity(args.vms);
    let writes = director.store_writes().await?;
    let burst = join_all(&setup, &token, vms, args.burst, &mut joined).await?;
    // The last batch may still be on its way to the director when the last answer comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst_writes = director.store_writes().await? - writes;
    eprintln!(
        "bench workloads: {} joins at once in {burst:?}, {burst_writes} writes",
        args.burst
    );
    let rest = join_all(&setup, &token, rest, JOIN_CONCURRENCY, &mut joined).await?;

    eprintln!("bench workloads: {} VMs heartbeating", joined.len());
    let measure = async {
        boshy_lab::ready::until(PHASE_DEADLINE, "every VM healthy", || async {
            Ok(healthy_registrations(&setup, &director).await? == args.vms)
        })
        .await?;
        steady_window(&pilot, &director, steady).await
    };
    let (rss_mb, cpu, steady_writes) = with_agents(&setup, joined, period, measure).await?;
    pilot.kill().await?;
    drop(sim);
    let measured = Measured {
        idle_rss_mb,
        idle_cpu,
        bosh_rss_mb,
        bosh_cpu,
        rss_mb,
        cpu,
        steady_writes,
        burst,
        burst_writes,
        rest,
    };
    super::emit(&rows(&measured, &args), args.out.as_deref())
}

/// The reference: the same pilot's config on a director that also lists `--vms` BOSH VMs,
/// whose agents follow the name table and report at the joined VMs' pace; its RSS (MB) and
/// CPU (s) over `steady`. A process of its own, ended before the joined VMs' run.
async fn bosh_reference(scratch: &Path, args: &Args, steady: Duration) -> Result<(f64, f64)> {
    let dir = scratch.join("bosh-reference");
    std::fs::create_dir_all(&dir)?;
    let sim = director(&dir, args.vms).await?;
    let director = Director::of(&sim).await?;
    let setup = setup(&sim, &dir, args.heartbeat_seconds)?;
    let log = dir.join("pilot.log");
    let pilot = Pilot::start(&setup.config, &log)?;
    // Ready as the joined VMs' pilot is: it has read the director.
    first_token(&setup, &director, &log).await?;
    let agents = bosh_agents(&sim, &setup).await?;
    eprintln!(
        "bench workloads: reference, {} BOSH VMs' agents reporting",
        agents.len()
    );
    let period = Duration::from_secs(args.heartbeat_seconds);
    let measure = steady_window(&pilot, &director, steady);
    let (rss_mb, cpu, _) = with_agents(&setup, agents, period, measure)
        .await
        .with_context(|| format!("the reference pilot: see {}", log.display()))?;
    pilot.kill().await?;
    Ok((rss_mb, cpu))
}

fn rows(m: &Measured, args: &Args) -> Vec<Row> {
    let n = args.vms;
    let window = args.steady_seconds as f64;
    let percent = |cpu: f64| cpu * 100.0 / window;
    let at_goal = |added: f64| added * GOAL_VMS as f64 / n as f64;
    let added_rss = at_goal(m.rss_mb - m.idle_rss_mb);
    let added_cpu = at_goal(percent(m.cpu) - percent(m.idle_cpu));
    // What the registrations cost beyond N agents' connections and reports (any VM's).
    let own_rss = m.rss_mb - m.bosh_rss_mb;
    let own_cpu = percent(m.cpu) - percent(m.bosh_cpu);
    let none = "the same pilot, no VM registered";
    let bosh = format!("{n} BOSH VMs' agents connected, no registration");
    let scope = if n >= GOAL_VMS {
        format!("measured at {n}")
    } else {
        format!(
            "the goal is for {GOAL_VMS} VMs, which this machine cannot hold: each VM holds two \
             connections to the pilot and RLIMIT_NOFILE is 20,000, not raisable here; the \
             verdict scales what {n} VMs add by {GOAL_VMS}/{n}"
        )
    };
    let method = format!(
        "the release's `boshy pilot` process, its registrations in the director simulator \
         (a `{STORE_TYPE}` config); {n} VMs emulated in the benchmark's process, each from its \
         own address of {VM_NETWORK}, following the name table with the certificate its join \
         returned and posting its report every {} s; all on the same 2 cores",
        args.heartbeat_seconds
    );
    vec![
        Row::new(
            BENCHMARK,
            format!("pilot RSS, {n} VMs registered and heartbeating"),
            m.rss_mb,
            "MB",
        )
        .against(none, m.idle_rss_mb)
        .goal(
            format!("< {GOAL_RSS_MB:.0} MB added at {GOAL_VMS} VMs"),
            added_rss < GOAL_RSS_MB,
        )
        .note(format!(
            "{:.1} MB added, {added_rss:.1} MB at {GOAL_VMS}: {:.1} MB as {bosh} (what any VM's \
             agent and instance cost), {own_rss:.1} MB the registrations' own; {scope}; {method}",
            m.rss_mb - m.idle_rss_mb,
            m.bosh_rss_mb - m.idle_rss_mb
        )),
        Row::new(
            BENCHMARK,
            format!(
                "pilot CPU, % of one core over {} s, {n} VMs heartbeating",
                args.steady_seconds
            ),
            percent(m.cpu),
            "%",
        )
        .against(none, percent(m.idle_cpu))
        .goal(
            format!("< {GOAL_CPU_PERCENT:.0}% of a core added at {GOAL_VMS} VMs"),
            added_cpu < GOAL_CPU_PERCENT,
        )
        .note(format!(
            "user + system time of the pilot process (/proc/<pid>/stat); {added_cpu:.2}% at \
             {GOAL_VMS}: {:.2}% as {bosh}, {own_cpu:.2}% the registrations' own; {scope}",
            percent(m.bosh_cpu) - percent(m.idle_cpu)
        )),
        Row::new(BENCHMARK, format!("pilot RSS, {bosh}"), m.bosh_rss_mb, "MB")
            .against(none, m.idle_rss_mb)
            .note(format!(
                "the reference that decomposes the joined VMs' cost: the same pilot's config, a \
             process of its own, on a director also listing {n} BOSH instances at addresses of \
             {VM_NETWORK}; their agents emulated, each from its instance's address, following \
             the name table with the mesh client certificate and posting its report every {} s \
             (a real BOSH VM's agent reports on change only); {:.1} MB added, {:.1} MB at \
             {GOAL_VMS}; the {n} joined VMs' registrations add {own_rss:.1} MB more",
                args.heartbeat_seconds,
                m.bosh_rss_mb - m.idle_rss_mb,
                at_goal(m.bosh_rss_mb - m.idle_rss_mb)
            )),
        Row::new(
            BENCHMARK,
            format!(
                "pilot CPU, % of one core over {} s, {bosh}",
                args.steady_seconds
            ),
            percent(m.bosh_cpu),
            "%",
        )
        .against(none, percent(m.idle_cpu))
        .note(format!(
            "{:.2}% at {GOAL_VMS}; the {n} joined VMs' registrations add {own_cpu:.2}% more \
             (heartbeats judged, liveness published, the store followed)",
            at_goal(percent(m.bosh_cpu) - percent(m.idle_cpu))
        )),
        Row::new(
            BENCHMARK,
            format!("director writes a minute, {n} VMs heartbeating"),
            m.steady_writes as f64 * 60.0 / window,
            "writes/min",
        )
        .goal("0", m.steady_writes == 0)
        .note(format!(
            "new versions of the `{STORE_TYPE}` config over the {} s window: heartbeats are \
             kept in the pilot's memory, never written",
            args.steady_seconds
        )),
        Row::new(
            BENCHMARK,
            format!("director writes for {} joins at once", args.burst),
            m.burst_writes as f64,
            "writes",
        )
        .goal(
            format!("reported; batched (< {} joins)", args.burst),
            m.burst_writes < args.burst,
        )
        .note(format!(
            "{} joins sent together from {} addresses, the last answered after {:.2} s; the \
             other {} joined {JOIN_CONCURRENCY} at a time in {:.1} s",
            args.burst,
            args.burst,
            m.burst.as_secs_f64(),
            n - args.burst,
            m.rest.as_secs_f64()
        )),
    ]
}
