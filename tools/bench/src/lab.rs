//! The lab benchmarks, in a lab of their own (`BOSHY_LAB_NAME`/`BOSHY_LAB_SUBNET`, default
//! `boshy-b` on 10.247.0.0/24), brought up and torn down here:
//!
//! - steady state: director requests over a fixed idle window, by route, from the simulator's
//!   counters: topology-check requests per poll tick and health-refresh tasks per minute;
//! - convergence: from a change at the director (an instance added; an instance failing) to
//!   every Envoy in the lab having it, read from each Envoy's admin `/clusters` by one poller
//!   thread per VM inside the VM's network namespace;
//! - data plane: a fixed-rate HTTP load from an apricot VM to banana through the mesh (by name:
//!   the client's Envoy, mutual TLS, the server's Envoy), through the mesh in plaintext (a
//!   mesh-wide PeerAuthentication DISABLE), and directly (the same workload on the server VM
//!   on a port nothing captures), same run, with the client Envoy's CPU and RSS.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use boshy_lab::binaries;

use super::load::LoadResult;
use super::report::Row;
use super::{cpu_seconds, percentile, ProcMemory};
use boshy::xds::resources::cluster_name;
use boshy_lab::director::SimControl;
use boshy_lab::vm::Vm;
use boshy_lab::LabState;

const DEPLOYMENT: &str = "sample-deployment";
const SERVICE_GROUP: &str = "banana";
const CLIENT_GROUP: &str = "apricot";
const HOSTNAME: &str = "example-httpbin.banana.sample-deployment.boshy";
/// The instance whose health the convergence trials change, and its workload.
const BANANA_VM: &str = "banana/1";
const WORKLOAD: &str = "example-httpbin";
/// The rolling update's steady load (the figure).
const UPDATE_RATE: u64 = 50;
const PORT: u16 = 9002;
/// The lab's director polling (src/lab/vm.rs renders the pilot with these).
const POLL_INTERVAL_SECONDS: f64 = 1.0;
const HEALTH_INTERVAL_SECONDS: f64 = 2.0;
const ENVOY_ADMIN_PORT: u16 = 8001;
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "BOSHY_LAB_NAME", default_value = "boshy-b")]
    pub lab: String,
    #[arg(long, env = "BOSHY_LAB_SUBNET", default_value = "10.247.0.0/24")]
    pub subnet: String,
    /// Trials per kind of change.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// The idle window over which director requests are counted.
    #[arg(long, default_value_t = 30)]
    pub steady_seconds: u64,
    /// Seconds of each fixed-rate load run.
    #[arg(long, default_value_t = 20)]
    pub load_seconds: u64,
    #[arg(long, default_value_t = 1000)]
    pub load_rate: u64,
    /// Seconds of steady load through the rolling update of banana (it takes about 10).
    #[arg(long, default_value_t = 25)]
    pub update_seconds: u64,
    /// Measure the data plane alone (dataplane.json), leaving the other rows as they are.
    #[arg(long)]
    pub dataplane_only: bool,
    /// Where the rows files go (convergence.json, steady.json, dataplane.json).
    #[arg(long, default_value = "bench/rows")]
    pub out_dir: PathBuf,
}

struct Lab<'a> {
    args: &'a Args,
}

impl Lab<'_> {
    fn command(&self, lab_args: &[&str]) -> Result<String> {
        let output = Command::new(binaries::workspace(binaries::LAB)?)
            .args(lab_args)
            .env("BOSHY_LAB_NAME", &self.args.lab)
            .env("BOSHY_LAB_SUBNET", &self.args.subnet)
            .output()
            .context("running boshy-lab")?;
        if !output.status.success() {
            bail!(
                "`boshy-lab {}` failed:\n{}{}",
                lab_args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn state(&self) -> Result<LabState> {
        let path = Path::new("/tmp/boshy-lab")
            .join(&self.args.lab)
            .join("lab.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the lab state {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a lab state", path.display()))
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.command(&["down"]) {
            eprintln!("bench lab: tearing the lab down failed: {err:#}");
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("the lab benchmark panicked")?
}

fn run_blocking(args: &Args) -> Result<()> {
    let lab = Lab { args };
    eprintln!("bench lab: bringing up lab {} ({})", args.lab, args.subnet);
    lab.command(&["up"])?;
    lab.command(&["wait", "--timeout-seconds", "120"])?;
    let state = lab.state()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sim = SimControl::new(state.layout.control_url())?;

    if args.dataplane_only {
        let dataplane = data_plane(&lab, args, &state)?;
        return super::emit(&dataplane, Some(&args.out_dir.join("dataplane.json")));
    }
    // First, before anything else asks the VMs for names: every answer is then a first one.
    let scope = first_lookups(&state)?;
    super::emit(&scope, Some(&args.out_dir.join("scope.json")))?;

    let steady = runtime.block_on(steady_state(&sim, args.steady_seconds))?;
    super::emit(&steady, Some(&args.out_dir.join("steady.json")))?;

    let envoys: Vec<&Vm> = state.vms.iter().filter(|vm| vm.runs_addon()).collect();
    let mut convergence = convergence(&lab, &runtime, &sim, &envoys, args.trials)?;
    convergence.push(rolling_update(&lab, &state, args.update_seconds)?);
    super::emit(&convergence, Some(&args.out_dir.join("convergence.json")))?;

    let dataplane = data_plane(&lab, args, &state)?;
    super::emit(&dataplane, Some(&args.out_dir.join("dataplane.json")))?;
    Ok(())
}

/// How long a VM's DNS agent takes to answer `name`, as dig measures it (milliseconds).
fn dig_time(vm: &Vm, name: &str) -> Result<f64> {
    let output = boshy_lab::net::run_in(
        &vm.namespace,
        &["dig", "+tries=1", "+time=5", "@127.0.0.1", name, "A"],
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !text.contains("status: NOERROR") || !text.contains("ANSWER: 1") {
        bail!("{}: no answer for {name}: {text}", vm.name());
    }
    text.lines()
        .find_map(|line| line.strip_prefix(";; Query time: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{}: no query time in dig's output for {name}", vm.name()))
}

/// The first answer for a name not yet in a VM's scope (docs/scope.md: it waits until the VM's
/// Envoy holds the service), from every addon VM for every mesh name, beside the answer to the
/// same names once in scope, same run.
fn first_lookups(state: &LabState) -> Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let services = runtime.block_on(boshy_lab::ready::registration(state))?;
    let vms: Vec<&Vm> = state.vms.iter().filter(|vm| vm.runs_addon()).collect();
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for vm in &vms {
        let scope = boshy_lab::ready::agent_scope(vm);
        // The names the agent answers (a ServiceEntry's outside name is not one of them).
        let table = boshy_lab::ready::agent_table(vm);
        let new = services
            .iter()
            .filter(|s| table.contains_key(&s.hostname) && !scope.contains(&s.hostname));
        for service in new {
            first.push(dig_time(vm, &service.hostname)?);
            again.push(dig_time(vm, &service.hostname)?);
        }
    }
    first.sort_by(f64::total_cmp);
    again.sort_by(f64::total_cmp);
    let samples = first.len();
    let figure = |q: f64, of: &[f64]| percentile(of, q).unwrap_or(f64::NAN);
    let note = format!(
        "{samples} names new to their VM ({} VMs × the mesh's names), each answered once the \
         VM's Envoy held its listener, cluster, endpoints and routes; dig's query time (ms \
         resolution)",
        vms.len()
    );
    let (p50, p99) = (figure(0.5, &first), figure(0.99, &first));
    Ok(vec![
        Row::new(
            "scope",
            "first DNS answer for a name not yet in scope, p50",
            p50,
            "ms",
        )
        .note(note.clone())
        .against("same names once in scope, p50", figure(0.5, &again))
        .goal("< 20 ms", p50 < 20.0),
        Row::new(
            "scope",
            "first DNS answer for a name not yet in scope, p99",
            p99,
            "ms",
        )
        .note(note)
        .against("same names once in scope, p99", figure(0.99, &again))
        .goal("< 100 ms", p99 < 100.0),
    ])
}

/// Which part of the poller a director route belongs to: a `format=full` task and its
/// polling are health; the synchronous instance list is topology.
pub fn route_kind(route: &str) -> &'static str {
    if route.contains("/oauth/token") {
        "auth"
    } else if route.ends_with("?format=full") || route.contains("/tasks") {
        "health refresh"
    } else {
        "topology check"
    }
}

/// Per-route request counts between two `GET /_sim/requests` answers.
pub fn request_delta(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    let count = |v: &Value, route: &str| v["by_route"][route].as_u64().unwrap_or(0);
    after["by_route"]
        .as_object()
        .map(|routes| {
            routes
                .keys()
                .map(|route| (route.clone(), count(after, route) - count(before, route)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

async fn steady_state(sim: &SimControl, seconds: u64) -> Result<Vec<Row>> {
    eprintln!("bench lab: counting director requests over {seconds} s idle");
    let before = sim.requests().await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = sim.requests().await?;
    let delta = request_delta(&before, &after);
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (route, n) in &delta {
        *by_kind.entry(route_kind(route)).or_default() += n;
    }
    let ticks = seconds as f64 / POLL_INTERVAL_SECONDS;
    let minutes = seconds as f64 / 60.0;
    let topology = by_kind.get("topology check").copied().unwrap_or(0) as f64 / ticks;
    let task_creations = delta
        .iter()
        .filter(|(route, _)| route.ends_with("/instances?format=full"))
        .map(|(_, n)| *n)
        .sum::<u64>() as f64
        / minutes;
    let state = sim.state().await?;
    let with_ports = state
        .deployments
        .iter()
        .filter(|d| {
            d.manifest
                .as_deref()
                .is_some_and(|m| m.contains("expose_ports"))
        })
        .count();
    let breakdown = delta
        .iter()
        .map(|(route, n)| format!("{route}: {n}"))
        .collect::<Vec<_>>()
        .join("; ");
    Ok(vec![
        Row::new("steady", "topology-check requests per poll tick", topology, "requests")
            .goal("≤ 2", topology <= 2.0)
            .note(format!("{seconds} s idle, poll every {POLL_INTERVAL_SECONDS} s; {breakdown}")),
        Row::new("steady", "health-refresh tasks per minute", task_creations, "tasks/min")
            .against(
                format!(
                    "{with_ports} deployment(s) with exposed ports × one task per {HEALTH_INTERVAL_SECONDS} s"
                ),
                with_ports as f64 * 60.0 / HEALTH_INTERVAL_SECONDS,
            ),
        Row::new(
            "steady",
            "all director requests per minute",
            delta.values().sum::<u64>() as f64 / minutes,
            "requests/min",
        ),
    ])
}

/// GET /clusters from Envoy's admin on loopback of the calling thread's namespace (Envoy's
/// admin speaks HTTP/1.1 only and answers in chunks).
fn envoy_clusters() -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", ENVOY_ADMIN_PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /clusters HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    http_body(&response)
        .ok_or_else(|| std::io::Error::other("not a 200 response from Envoy's admin"))
}

/// The body of an HTTP/1.1 200 response, de-chunked when it came in chunks.
pub fn http_body(response: &str) -> Option<String> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_string());
    }
    let mut rest = body;
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Every endpoint (`ip:port`) of `cluster` in Envoy's `/clusters` text with its health flags,
/// whatever they are: an endpoint the director just added has no VM in this benchmark, so
/// Envoy's active health check fails it, but Envoy has it — which is what convergence is about.
/// (EDS carries only the endpoints the director reports running.)
pub fn endpoint_flags(clusters: &str, cluster: &str) -> BTreeMap<String, String> {
    let prefix = format!("{cluster}::");
    clusters
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, flags) = rest.split_once("::health_flags::")?;
            Some((endpoint.to_string(), flags.to_string()))
        })
        .collect()
}

/// Seconds from `changed` until every VM's Envoy satisfies `has_it` for the banana cluster.
fn time_until_every_envoy(
    envoys: &[&Vm],
    changed: Instant,
    has_it: impl Fn(&BTreeMap<String, String>) -> bool + Sync,
) -> Result<f64> {
    let cluster = cluster_name(HOSTNAME, PORT);
    std::thread::scope(|scope| {
        let pollers: Vec<_> = envoys
            .iter()
            .map(|vm| {
                let (cluster, has_it) = (&cluster, &has_it);
                scope.spawn(move || -> Result<f64> {
                    let netns = std::fs::File::open(Path::new("/run/netns").join(&vm.namespace))
                        .with_context(|| {
                            format!("opening the network namespace of {}", vm.name())
                        })?;
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).with_context(
                        || format!("entering the network namespace of {}", vm.name()),
                    )?;
                    loop {
                        if let Ok(text) = envoy_clusters() {
                            if has_it(&endpoint_flags(&text, cluster)) {
                                return Ok(changed.elapsed().as_secs_f64());
                            }
                        }
                        if changed.elapsed() > CONVERGENCE_TIMEOUT {
                            bail!(
                                "{}: Envoy did not converge within {CONVERGENCE_TIMEOUT:?}",
                                vm.name()
                            );
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        let mut slowest: f64 = 0.0;
        for poller in pollers {
            let seconds = poller.join().expect("a poller thread panicked")?;
            slowest = slowest.max(seconds);
        }
        Ok(slowest)
    })
}

fn convergence(
    lab: &Lab,
    runtime: &tokio::runtime::Runtime,
    sim: &SimControl,
    envoys: &[&Vm],
    trials: usize,
) -> Result<Vec<Row>> {
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let state = runtime.block_on(sim.state())?;
    let banana = state
        .deployments
        .iter()
        .find(|d| d.name == DEPLOYMENT)
        .and_then(|d| {
            d.instances
                .iter()
                .find(|i| i.job_name == SERVICE_GROUP && i.index == Some(1))
        })
        .context("no banana/1 in the lab's director")?
        .clone();
    let banana_endpoint = format!(
        "{}:{PORT}",
        banana.ips.first().context("banana/1 has no IP")?
    );
    for trial in 0..trials {
        eprintln!("bench lab: convergence trial {} of {trials}", trial + 1);
        let added = runtime.block_on(sim.add_instance(DEPLOYMENT, SERVICE_GROUP, None))?;
        let changed = Instant::now();
        let id = added["id"]
            .as_str()
            .context("the added instance has no id")?
            .to_string();
        let endpoint = format!(
            "{}:{PORT}",
            added["ips"][0]
                .as_str()
                .context("the added instance has no IP")?
        );
        times
            .entry("added")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                e.contains_key(&endpoint)
            })?);
        runtime.block_on(sim.remove_instance(DEPLOYMENT, &id))?;
        let changed = Instant::now();
        times
            .entry("removed")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                !e.contains_key(&endpoint)
            })?);

        // Health from the VM: the workload killed, its agent's probe fails.
        lab.command(&["process", BANANA_VM, WORKLOAD, "kill"])?;
        let changed = Instant::now();
        times
            .entry("process killed (agent)")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                !e.contains_key(&banana_endpoint)
            })?);
        lab.command(&["process", BANANA_VM, WORKLOAD, "start"])?;
        let changed = Instant::now();
        times
            .entry("process started (agent)")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                e.get(&banana_endpoint).is_some_and(|f| f == "healthy")
            })?);

        // The director's view, which decides for an instance without a connected agent.
        lab.command(&["process", BANANA_VM, "virtual-ip-agent", "stop"])?;
        runtime.block_on(sim.set_job_state(DEPLOYMENT, &banana.id, "failing"))?;
        let changed = Instant::now();
        times
            .entry("failing")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                !e.contains_key(&banana_endpoint)
            })?);
        runtime.block_on(sim.set_job_state(DEPLOYMENT, &banana.id, "running"))?;
        let changed = Instant::now();
        times
            .entry("running again")
            .or_default()
            .push(time_until_every_envoy(envoys, changed, |e| {
                e.contains_key(&banana_endpoint)
            })?);
        lab.command(&["process", BANANA_VM, "virtual-ip-agent", "start"])?;
    }
    let mut rows = Vec::new();
    let director_p99 = {
        let mut sorted = times.get("failing").cloned().unwrap_or_default();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 0.99).unwrap_or(f64::NAN)
    };
    for change in ["process killed (agent)", "process started (agent)"] {
        let mut sorted = times.remove(change).unwrap_or_default();
        sorted.sort_by(f64::total_cmp);
        let p50 = percentile(&sorted, 0.5).unwrap_or(f64::NAN);
        let p99 = percentile(&sorted, 0.99).unwrap_or(f64::NAN);
        rows.push(
            Row::new(
                "convergence",
                format!("{change}: p99 to every Envoy"),
                p99,
                "s",
            )
            .against(
                "instance failing at the director, no agent (same run)",
                director_p99,
            )
            .goal("< 2 s", p99 < 2.0)
            .note(format!(
                "p50 {p50:.2} s over {} trials, {} Envoys; probe interval 500 ms; no director task",
                sorted.len(),
                envoys.len()
            )),
        );
    }
    for (change, interval, what) in [
        ("added", POLL_INTERVAL_SECONDS, "poll interval"),
        ("removed", POLL_INTERVAL_SECONDS, "poll interval"),
        ("failing", HEALTH_INTERVAL_SECONDS, "health interval"),
        ("running again", HEALTH_INTERVAL_SECONDS, "health interval"),
        // (the instance's agent stopped: the director decides)
    ] {
        let mut sorted = times.remove(change).unwrap_or_default();
        sorted.sort_by(f64::total_cmp);
        let p50 = percentile(&sorted, 0.5).unwrap_or(f64::NAN);
        let p99 = percentile(&sorted, 0.99).unwrap_or(f64::NAN);
        let goal = interval + 0.5;
        rows.push(
            Row::new(
                "convergence",
                format!("instance {change}: p99 to every Envoy"),
                p99,
                "s",
            )
            .against(format!("{what} {interval} s"), interval)
            .goal(format!("< {goal} s"), p99 < goal)
            .note(format!(
                "p50 {p50:.2} s over {} trials, {} Envoys",
                sorted.len(),
                envoys.len()
            )),
        );
    }
    Ok(rows)
}

/// A rolling update of banana (`lab update banana`: drain, stop, start, one instance at a
/// time) under a steady load from an apricot VM: the requests that failed.
fn rolling_update(lab: &Lab, state: &LabState, seconds: u64) -> Result<Row> {
    let client = state
        .vms
        .iter()
        .find(|vm| vm.deployment == DEPLOYMENT && vm.instance_group == CLIENT_GROUP)
        .context("no apricot VM in the lab")?;
    let url = format!("http://{HOSTNAME}:{PORT}/get");
    let (result, update) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(client, &url, UPDATE_RATE, seconds));
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let update = lab
            .command(&["update", SERVICE_GROUP])
            .map(|_| started.elapsed());
        (load.join().expect("the load thread panicked"), update)
    });
    let (result, took) = (result?, update?);
    Ok(Row::new(
        "convergence",
        format!("failed requests during a rolling update of banana, {UPDATE_RATE} req/s"),
        result.errors as f64,
        "requests",
    )
    .goal("0", result.errors == 0)
    .note(format!(
        "{} of {} requests answered; the update of 3 instances took {:.1} s (drain, stop, start, 2 s watch each); p99 {:.1} ms",
        result.ok,
        result.sent,
        took.as_secs_f64(),
        result.p99_ms
    )))
}

/// The Envoy process running in `namespace` (matched by network namespace inode).
fn envoy_pid(namespace: &str) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(Path::new("/run/netns").join(namespace))?.ino();
    let wanted = format!("net:[{inode}]");
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
        if comm.trim() == "envoy" && netns.to_string_lossy() == wanted {
            return Ok(pid);
        }
    }
    bail!("no Envoy process in namespace {namespace}")
}

fn load(vm: &Vm, url: &str, rate: u64, seconds: u64) -> Result<LoadResult> {
    eprintln!(
        "bench lab: {rate} req/s for {seconds} s from {} to {url}",
        vm.name()
    );
    let output = Command::new("ip")
        .args(["netns", "exec", &vm.namespace])
        .arg(super::bench_binary()?)
        .args(["load", "--url", url])
        .args(["--rate", &rate.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .context("running the load generator in the client VM")?;
    if !output.status.success() {
        bail!(
            "load to {url} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("decoding the load generator's figures")
}

/// A mesh-wide PeerAuthentication turning mutual TLS off: the plaintext comparison.
const PLAINTEXT_RULE: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: bench-plaintext
  namespace: istio-system
spec:
  mtls:
    mode: DISABLE
";
const PLAINTEXT_CONFIG: &str = "bench-plaintext";
/// The reference workload's port on the server VM: not exposed, so not captured, so a
/// request to it meets no Envoy (the direct path).
const DIRECT_PORT: u16 = PORT + 10_000;

/// What one run through the mesh measured on the client's Envoy.
struct MeshRun {
    load: LoadResult,
    cpu_share: f64,
    memory: ProcMemory,
}

/// Restarts the client's Envoy (so that every run's RSS is that of an Envoy of the same age
/// that carried the same load), waits for the mesh, and loads the service by name.
fn mesh_run(lab: &Lab, client: &Vm, rate: u64, seconds: u64) -> Result<MeshRun> {
    lab.command(&["process", &client.name(), "envoy", "restart"])?;
    lab.command(&["wait", "--timeout-seconds", "120"])?;
    // The measured run starts once a request has succeeded: it measures a steady state, not
    // the restarted Envoy's first connections (their TLS handshakes).
    let url = format!("http://{HOSTNAME}:{PORT}/get");
    let answered = (0..60).any(|_| {
        let ok = boshy_lab::net::run_in(
            &client.namespace,
            &["curl", "-sf", "-o", "/dev/null", "--max-time", "2", &url],
        )
        .is_ok();
        if !ok {
            std::thread::sleep(Duration::from_secs(1));
        }
        ok
    });
    if !answered {
        bail!(
            "{url} never answered from {} after its Envoy restarted",
            client.name()
        );
    }
    let envoy = envoy_pid(&client.namespace)?;
    let cpu_before = cpu_seconds(envoy)?;
    let started = Instant::now();
    let load = load(
        client,
        &format!("http://{HOSTNAME}:{PORT}/get"),
        rate,
        seconds,
    )?;
    let cpu_share = (cpu_seconds(envoy)? - cpu_before) / started.elapsed().as_secs_f64();
    Ok(MeshRun {
        load,
        cpu_share,
        memory: ProcMemory::of(envoy)?,
    })
}

/// The reference: the same workload on the server VM, on a port nothing captures.
struct DirectWorkload(std::process::Child);

impl DirectWorkload {
    fn start(state: &LabState, server: &Vm) -> Result<DirectWorkload> {
        let child = Command::new("ip")
            .args(["netns", "exec", &server.namespace])
            .arg(&state.layout.boshy_bin)
            .args(["example-httpbin", "--listen"])
            .arg(format!("0.0.0.0:{DIRECT_PORT}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting the reference workload on the server VM")?;
        let address = format!("{}:{DIRECT_PORT}", server.ip);
        for _ in 0..100 {
            if boshy_lab::net::run_in(
                &server.namespace,
                &["curl", "-sf", &format!("http://{address}/healthz")],
            )
            .is_ok()
            {
                return Ok(DirectWorkload(child));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the reference workload never answered on {address}")
    }
}

impl Drop for DirectWorkload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn data_plane(lab: &Lab, args: &Args, state: &LabState) -> Result<Vec<Row>> {
    let in_group = |group: &str| {
        state
            .vms
            .iter()
            .find(|vm| vm.deployment == DEPLOYMENT && vm.instance_group == group)
            .with_context(|| format!("no {group} VM in the lab"))
    };
    let client = in_group(CLIENT_GROUP)?;
    let server = in_group(SERVICE_GROUP)?;
    let (rate, seconds) = (args.load_rate, args.load_seconds);
    let mtls = mesh_run(lab, client, rate, seconds)?;
    let direct = {
        let _workload = DirectWorkload::start(state, server)?;
        load(
            client,
            &format!("http://{}:{DIRECT_PORT}/get", server.ip),
            rate,
            seconds,
        )?
    };
    let rule = std::env::temp_dir().join(format!("{PLAINTEXT_CONFIG}-{}.yml", std::process::id()));
    std::fs::write(&rule, PLAINTEXT_RULE)?;
    lab.command(&[
        "rules",
        "apply",
        &rule.display().to_string(),
        "--name",
        PLAINTEXT_CONFIG,
    ])?;
    let plaintext = mesh_run(lab, client, rate, seconds);
    lab.command(&["rules", "delete", PLAINTEXT_CONFIG])?;
    std::fs::remove_file(&rule).ok();
    let plaintext = plaintext?;
    let (mesh, memory) = (&mtls.load, &mtls.memory);
    let errors = format!(
        "{} + {} errors of {} + {} requests",
        mesh.errors, direct.errors, mesh.sent, direct.sent
    );
    let added_p99 = mesh.p99_ms - direct.p99_ms;
    let memory_note = |memory: &ProcMemory| {
        format!(
            "{} kB anonymous + {} kB file-backed (Envoy's binary); peak {:.1} MB; after {} s at {} req/s",
            memory.anon_kb,
            memory.file_kb,
            memory.hwm_kb as f64 / 1024.0,
            seconds,
            rate
        )
    };
    Ok(vec![
        Row::new(
            "dataplane",
            "added p99 latency through the mesh (two Envoys, mutual TLS)",
            added_p99,
            "ms",
        )
        .goal(
            "< 0.3 ms (Istio: 0.298 ms, two proxies with mTLS)",
            added_p99 < 0.3,
        )
        .note(format!(
            "mesh p99 {:.3} ms − direct p99 {:.3} ms at {rate} req/s; {errors}",
            mesh.p99_ms, direct.p99_ms
        )),
        Row::new(
            "dataplane",
            "added p50 latency through the mesh (two Envoys, mutual TLS)",
            mesh.p50_ms - direct.p50_ms,
            "ms",
        )
        .note(format!(
            "mesh p50 {:.3} ms − direct p50 {:.3} ms",
            mesh.p50_ms, direct.p50_ms
        )),
        Row::new(
            "dataplane",
            "p99 latency by name through the mesh (two Envoys, mutual TLS)",
            mesh.p99_ms,
            "ms",
        )
        .against("direct to the workload on the server VM", direct.p99_ms),
        Row::new(
            "dataplane",
            "p99 latency through the mesh, mutual TLS",
            mesh.p99_ms,
            "ms",
        )
        .against("plaintext between the Envoys", plaintext.load.p99_ms)
        .note(format!(
            "plaintext: a mesh-wide PeerAuthentication DISABLE, same two Envoys; {} errors of {}",
            plaintext.load.errors, plaintext.load.sent
        )),
        Row::new(
            "dataplane",
            "client Envoy CPU under load, mutual TLS",
            mtls.cpu_share * 100.0,
            "% of a core",
        )
        .against("plaintext", plaintext.cpu_share * 100.0)
        .note(format!("during the mesh runs, {rate} req/s")),
        Row::new(
            "dataplane",
            "client Envoy RSS (lab catalog), mutual TLS",
            memory.rss_mb(),
            "MB",
        )
        .against("plaintext", plaintext.memory.rss_mb())
        .goal("< 60 MB", memory.rss_mb() < 60.0)
        .note(memory_note(memory)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunked_bodies_are_reassembled() {
        let response = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab\ncd\r\n3\r\nef\n\r\n0\r\n\r\n";
        assert_eq!(http_body(response).as_deref(), Some("ab\ncdef\n"));
        let plain = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(http_body(plain).as_deref(), Some("ok"));
        assert_eq!(http_body("HTTP/1.1 426 Upgrade Required\r\n\r\nx"), None);
    }

    #[test]
    fn endpoint_flags_keep_every_endpoint_of_the_cluster() {
        let text = "outbound|9002||a.boshy::10.0.0.2:9002::health_flags::healthy\n\
            outbound|9002||a.boshy::10.0.0.3:9002::health_flags::/failed_active_hc/failed_eds_health\n\
            outbound|9002||a.boshy::10.0.0.2:9002::cx_active::0\n\
            outbound|80||b.boshy::10.0.0.4:80::health_flags::healthy\n";
        let flags = endpoint_flags(text, "outbound|9002||a.boshy");
        assert_eq!(flags.len(), 2);
        assert_eq!(flags["10.0.0.2:9002"], "healthy");
        assert_eq!(
            flags["10.0.0.3:9002"],
            "/failed_active_hc/failed_eds_health"
        );
    }

    #[test]
    fn routes_are_classified_and_deltas_taken_per_route() {
        assert_eq!(route_kind("GET /deployments"), "topology check");
        assert_eq!(route_kind("GET /events"), "topology check");
        assert_eq!(
            route_kind("GET /deployments/:d/instances?format=full"),
            "health refresh"
        );
        assert_eq!(
            route_kind("GET /deployments/:d/instances"),
            "topology check"
        );
        assert_eq!(route_kind("GET /tasks/:id/output"), "health refresh");
        assert_eq!(route_kind("POST /oauth/token"), "auth");
        let before = json!({"by_route": {"GET /events": 3, "GET /deployments": 1}});
        let after =
            json!({"by_route": {"GET /events": 9, "GET /deployments": 1, "GET /tasks/:id": 4}});
        let delta = request_delta(&before, &after);
        assert_eq!(
            delta,
            BTreeMap::from([
                ("GET /events".to_string(), 6),
                ("GET /tasks/:id".to_string(), 4)
            ])
        );
    }
}
