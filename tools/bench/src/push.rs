//! The push fan-out benchmark (`boshy-bench push`): N emulated Envoys (`boshy_xds_fleet`)
//! against a bosh-pilot xDS server in a child process, so that the server's CPU and memory can
//! be read from `/proc` apart from the client's.
//!
//! Every service of the estate has rules (`rules::service_config`: subsets v1 and v2, a
//! weighted split, faults, retries), as a mesh that uses them has. For each (ADS mode, stream
//! count) it measures the initial sync, then an endpoint-only change (one instance of one
//! service fails), a service being added and a rule change (one service's split moves): time
//! from the change to the last ACK, resources and bytes the clients received against what
//! the snapshots say changed, the server's CPU time and RSS. Rows go to
//! `bench/rows/push.json` in the format of `boshy-bench report`.

use boshy::xds::telemetry::Telemetry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy::catalog::model::Catalog;
use boshy::rules::ParsedConfig;
use boshy::traffic::TrafficRules;
use boshy::xds::bootstrap::AdsMode;
use boshy::xds::cache::{Snapshot, Sources};
use boshy::xds::resources::ResourceType;
use boshy_xds_fleet::estate::{estate, Change};
use boshy_xds_fleet::fleet::{Fleet, Received};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::rules;

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
    /// Internal: be the xDS server on this address; each stdin line is a change's word.
    #[arg(long, hide = true)]
    pub serve: Option<SocketAddr>,
}

/// Raises the open-file limit to its hard limit: every stream is a socket on both sides.
fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

pub(crate) async fn run(args: Args) -> Result<()> {
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

/// A change the benchmark makes, named by a word on the server's stdin: of the catalog, or of
/// the first service's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushChange {
    Catalog(Change),
    /// The first service's VirtualService moves its split between v1 and v2 (90/10 ↔ 50/50).
    Rule,
}

impl PushChange {
    /// In the order the benchmark makes them.
    const ALL: [PushChange; 3] = [
        PushChange::Catalog(Change::Endpoint),
        PushChange::Catalog(Change::Service),
        PushChange::Rule,
    ];

    fn word(self) -> &'static str {
        match self {
            PushChange::Catalog(change) => change.word(),
            PushChange::Rule => "rule",
        }
    }

    fn from_word(word: &str) -> Option<PushChange> {
        PushChange::ALL.into_iter().find(|c| c.word() == word)
    }
}

/// What the server serves: the synthetic estate, its instances labelled by version, and one
/// rule config per service. The client keeps a copy and makes the same changes to it, to know
/// which resources each change should send.
struct Estate {
    instances: usize,
    catalog: Catalog,
    /// Parallel to the first services of the catalog (a service added later has none).
    parsed: Vec<ParsedConfig>,
    /// v1's share of the first service's split, in percent.
    first_split: u32,
    traffic: TrafficRules,
}

impl Estate {
    fn new(services: usize, instances: usize) -> Result<Estate> {
        let mut catalog = estate(1, services, instances);
        rules::label_versions(&mut catalog);
        let parsed = rules::parse(&rules::service_configs(&catalog));
        let (traffic, _) = rules::validate_and_compile(&parsed, &catalog)?;
        Ok(Estate {
            instances,
            catalog,
            parsed,
            first_split: rules::SPLIT_V1,
            traffic,
        })
    }

    /// A rule change is what the pilot does on `bosh update-config`: the one config parsed
    /// again, every config validated against the catalog and compiled.
    fn apply(&mut self, change: PushChange) -> Result<()> {
        match change {
            PushChange::Catalog(change) => {
                self.catalog = change.apply(&self.catalog, self.instances);
            }
            PushChange::Rule => {
                self.first_split = match self.first_split {
                    rules::SPLIT_V1 => rules::CHANGED_SPLIT_V1,
                    _ => rules::SPLIT_V1,
                };
                let host = &self.catalog.services[0].hostname;
                self.parsed[0] =
                    rules::parse(&[rules::service_config(host, self.first_split)]).remove(0);
                (self.traffic, _) = rules::validate_and_compile(&self.parsed, &self.catalog)?;
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        rules::snapshot(&self.catalog, &self.traffic)
    }
}

/// The child process: an xDS server whose catalog or rules change on each stdin line.
async fn serve(address: SocketAddr, services: usize, instances: usize) -> Result<()> {
    let mut estate = Estate::new(services, instances)?;
    let (catalog_tx, catalog) = watch::channel(Arc::new(estate.catalog.clone()));
    let (traffic_tx, traffic) = watch::channel(Arc::new(estate.traffic.clone()));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(address)
        .with_context(|| format!("binding {address}"))?;
    let listener = socket.listen(4096)?;
    tokio::spawn(boshy::xds::serve(
        listener,
        Sources {
            catalog,
            traffic,
            identity: None,
            telemetry: Telemetry::OFF,
        },
    ));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Some(change) = PushChange::from_word(line.trim()) else {
            bail!(
                "push benchmark server: unknown change `{}` (endpoint, service, rule)",
                line.trim()
            );
        };
        estate.apply(change)?;
        match change {
            PushChange::Catalog(_) => {
                catalog_tx.send_replace(Arc::new(estate.catalog.clone()));
            }
            PushChange::Rule => {
                traffic_tx.send_replace(Arc::new(estate.traffic.clone()));
            }
        }
    }
    Ok(())
}

/// The (type, name) of every resource added, changed or removed from `before` to `after`:
/// what a delta stream subscribed to everything should be sent.
fn changed_resources(before: &Snapshot, after: &Snapshot) -> BTreeSet<(ResourceType, String)> {
    let versions = |snapshot: &Snapshot, t: ResourceType| -> BTreeSet<(String, String)> {
        let selection = snapshot.select(t, None);
        selection
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    };
    ResourceType::PUSH_ORDER
        .into_iter()
        .flat_map(|t| {
            let (old, new) = (versions(before, t), versions(after, t));
            let names: BTreeSet<String> = old
                .symmetric_difference(&new)
                .map(|(name, _)| name.clone())
                .collect();
            names.into_iter().map(move |name| (t, name))
        })
        .collect()
}

/// Per stream that got any, the (type, name) of the resources it received or was told were
/// removed.
fn received_by_stream(pushed: &[Received]) -> BTreeMap<usize, BTreeSet<(ResourceType, String)>> {
    let mut by_stream: BTreeMap<usize, BTreeSet<_>> = BTreeMap::new();
    for response in pushed {
        let names = response.resources.iter().chain(&response.removed);
        by_stream
            .entry(response.stream)
            .or_default()
            .extend(names.map(|name| (response.resource_type, name.clone())));
    }
    by_stream
}

fn type_name(resource_type: ResourceType) -> &'static str {
    match resource_type {
        ResourceType::Cluster => "CDS",
        ResourceType::Endpoint => "EDS",
        ResourceType::Listener => "LDS",
        ResourceType::Route => "RDS",
    }
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
        .args(["push", "--serve", &address.to_string()])
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
        .context("starting the push benchmark server")?;
    let pid = server.id().context("server pid")?;
    let mut control = server.stdin.take().context("server stdin")?;
    // Wait for the server to listen.
    let ready = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > ready {
            bail!("the push benchmark server never listened on {address}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let label =
        format!("{mode_name}, {streams} streams, {services} services × {instances} with rules");
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
    let mut mirror = Estate::new(services, instances)?;
    for change in PushChange::ALL {
        let before = mirror.snapshot();
        mirror.apply(change)?;
        let expected = changed_resources(&before, &mirror.snapshot());
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
        let mut note = format!(
            "{} responses, {:.1} resources and {:.1} kB per stream; server CPU {:.2} s, \
             load client CPU {:.2} s (the {streams} emulated Envoys, same machine)",
            pushed.len(),
            resources as f64 / streams as f64,
            bytes(&pushed) as f64 / streams as f64 / 1e3,
            cpu_after - cpu_before,
            client_cpu_after - client_cpu_before
        );
        // Delta sends what changed, and the snapshots say what that is; state of the world
        // sends every resource of each changed type.
        if mode == AdsMode::Delta {
            let exact = received_by_stream(&pushed)
                .values()
                .filter(|received| **received == expected)
                .count();
            let names: Vec<String> = expected
                .iter()
                .map(|(t, name)| format!("{} {name}", type_name(*t)))
                .collect();
            note.push_str(&format!(
                "; what changed in the snapshot, {} per stream: {}; {exact} of {streams} \
                 streams got exactly that",
                expected.len(),
                names.join(", ")
            ));
        }
        r["note"] = json!(note);
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

    #[test]
    fn every_change_is_named_by_its_word() {
        for change in PushChange::ALL {
            assert_eq!(PushChange::from_word(change.word()), Some(change));
        }
        assert_eq!(PushChange::from_word("nothing"), None);
    }

    /// What each change should send a delta stream, from the snapshots: a rule change only
    /// the first service's route configuration (the split is in its routes; its subsets and
    /// their clusters stay), and back again.
    #[test]
    fn a_rule_change_changes_only_that_services_route_configuration() {
        let mut estate = Estate::new(3, 2).unwrap();
        let mut changes = Vec::new();
        for change in PushChange::ALL.into_iter().chain([PushChange::Rule]) {
            let before = estate.snapshot();
            estate.apply(change).unwrap();
            changes.push(changed_resources(&before, &estate.snapshot()));
        }
        let first = |t, subset: &str| {
            (
                t,
                format!("outbound|8080|{subset}|svc00000.group.load.boshy"),
            )
        };
        assert_eq!(
            changes[0],
            BTreeSet::from([
                first(ResourceType::Endpoint, ""),
                first(ResourceType::Endpoint, "v1")
            ]),
            "the failing instance is a v1: the service's and v1's load assignments"
        );
        assert_eq!(
            changes[1].len(),
            4,
            "a cluster, its endpoints, a listener, a route"
        );
        assert_eq!(changes[2], BTreeSet::from([first(ResourceType::Route, "")]));
        assert_eq!(changes[3], changes[2]);
        assert_eq!(estate.first_split, rules::SPLIT_V1);
    }
}
