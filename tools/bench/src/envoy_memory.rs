//! Envoy's memory with a large mesh: our xDS server serves a synthetic catalog of N services to
//! one real Envoy (concurrency 1, as the bosh-envoy job runs it in the lab) and, once Envoy has
//! every cluster, its RSS is read from /proc. The reference is the same Envoy, same run, with a
//! catalog of one service.
//!
//! With `--subsets N`, one more row: the goal's estate with every service's instances dealt
//! into N subsets of the traffic model, each a cluster of its own per port (what a
//! `DestinationRule` with N subsets on every service costs every Envoy).
//!
//! Envoy binds the outbound listener's fixed port, so each Envoy runs in a network namespace of
//! its own: the benchmark re-runs itself under `unshare --net` (`--inside`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::report::Row;
use super::{require_tool, ProcMemory, ScratchDir};
use boshy::catalog::model::{Catalog, InstanceRef};
use boshy::scope::{ScopeChange, ScopeRegistry};
use boshy::traffic::{ServiceRules, Subset, TrafficRules};
use boshy::xds::bootstrap::{self, NodeIdentity};
use boshy::xds::cache::Sources;
use boshy::xds::sync::SyncBoard;
use boshy::xds::telemetry::Telemetry;

const BENCHMARK: &str = "envoy-memory";
const XDS_PORT: u16 = 15010;
const ADMIN: &str = "127.0.0.1:8001";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Services in the large catalog (one HTTP and one TCP port each).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Instances (endpoints) per service.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Subsets per service in one more row (0: no such row).
    #[arg(long, default_value_t = 0)]
    pub subsets: usize,
    /// Two more rows: a VM whose scope holds this many services (docs/scope.md), in the large
    /// mesh and in a mesh of 10 services (0: no such rows).
    #[arg(long, default_value_t = 5)]
    pub scoped: usize,
    /// With `--inside`: the scope of the measured Envoy's VM, that many services (0: none, the
    /// whole mesh).
    #[arg(long, hide = true, default_value_t = 0)]
    pub scope: usize,
    /// Two more rows: Envoy with request metrics on (every listener logging to the agent,
    /// docs/telemetry.md) beside off, in a mesh the lab's size and in the large one.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_rows: bool,
    /// With `--inside`: request metrics on.
    #[arg(long, hide = true)]
    pub metrics: bool,
    /// Measure one catalog size inside an isolated namespace and print JSON (used by the parent).
    #[arg(long, hide = true)]
    pub inside: Option<usize>,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvoyFigures {
    pub services: usize,
    pub clusters: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub anon_kb: u64,
    pub file_kb: u64,
    pub seconds_to_config: f64,
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(services) = args.inside {
        let figures = measure_inside(
            services,
            args.instances,
            args.subsets,
            args.scope,
            args.metrics,
        )
        .await?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    require_tool("unshare", "util-linux")?;
    let reference = measure_isolated(1, args.instances, 0, 0, false)?;
    let mut rows = Vec::new();
    // The goal's estate, then the same clusters without endpoints (what the clusters and the
    // listener cost alone), then a smaller estate that Envoy survives if the goal's does not.
    let smaller = (args.services * 2 / 5).max(1);
    for (services, instances) in [
        (args.services, args.instances),
        (args.services, 0),
        (smaller, args.instances),
    ] {
        let figure =
            format!("Envoy RSS with {services} services × {instances} instances in its config");
        let row = rss_row(
            figure,
            measure_isolated(services, instances, 0, 0, false),
            "HTTP + TCP port per service",
        );
        let row = row.against("same Envoy, 1 service", mb(reference.rss_kb));
        let met = row.value < 60.0;
        rows.push(
            if services == args.services && instances == args.instances {
                row.goal("< 60 MB", met)
            } else {
                row
            },
        );
    }
    if args.subsets > 0 {
        let (services, instances, subsets) = (args.services, args.instances, args.subsets);
        let without = rows[0].value;
        let figure = format!(
            "Envoy RSS with {services} services × {instances} instances × {subsets} subsets"
        );
        let row = rss_row(
            figure,
            measure_isolated(services, instances, subsets, 0, false),
            "each subset a cluster per port",
        );
        rows.push(row.against("same estate without subsets", without));
    }
    if args.scoped > 0 {
        rows.extend(scoped_rows(&args));
    }
    if args.metrics_rows {
        rows.extend(metrics_rows(&args));
    }
    super::emit(&rows, args.out.as_deref())
}

/// A VM that asked for `--scoped` services, its Envoy scoped by the pilot: in the large mesh,
/// against the same VM in a mesh of 10 services. The goal is on anonymous memory (what
/// configuration costs); the binary's resident text is file-backed and the same in both.
fn scoped_rows(args: &Args) -> Vec<Row> {
    const SMALL_MESH: usize = 10;
    let (services, instances, scoped) = (args.services, args.instances, args.scoped);
    let small = measure_isolated(SMALL_MESH.max(scoped), instances, 0, scoped, false);
    let large = measure_isolated(services, instances, 0, scoped, false);
    let figure = format!(
        "Envoy anonymous memory, mesh of {services} services × {instances}, VM using {scoped}"
    );
    match (large, small) {
        (Ok(large), Ok(small)) => {
            let (value, reference) = (mb(large.anon_kb), mb(small.anon_kb));
            let met = value < 20.0 && value <= reference * 1.1;
            vec![Row::new(BENCHMARK, figure, value, "MB")
                .note(format!(
                    "{} clusters; RSS {:.1} MB, of which {:.1} MB file-backed (the binary's text); \
                     configured {:.1} s after start",
                    large.clusters,
                    mb(large.rss_kb),
                    mb(large.file_kb),
                    large.seconds_to_config
                ))
                .against(format!("same VM in a {SMALL_MESH}-service mesh"), reference)
                .goal("< 20 MB, within 10% of the small mesh", met)]
        }
        (large, small) => {
            let why = [large.err(), small.err()]
                .into_iter()
                .flatten()
                .map(|e| format!("{e:#}").replace('\n', " "))
                .collect::<Vec<_>>()
                .join("; ");
            vec![Row::new(BENCHMARK, figure, f64::NAN, "MB").note(why)]
        }
    }
}

/// Envoy with request metrics on beside off, same run: in a mesh the size of the lab's and in
/// the large one. No traffic flows: what is measured is the configuration (an access log on
/// every listener); the one stream per worker to the agent opens with the first request.
fn metrics_rows(args: &Args) -> Vec<Row> {
    const LAB_MESH: usize = 10;
    let instances = args.instances;
    [LAB_MESH, args.services]
        .into_iter()
        .map(|services| {
            let figure = format!(
                "Envoy RSS with request metrics on, {services} services × {instances} instances"
            );
            let off = measure_isolated(services, instances, 0, 0, false);
            let on = rss_row(
                figure.clone(),
                measure_isolated(services, instances, 0, 0, true),
                "every listener logging to the agent",
            );
            match off {
                Ok(off) => on.against("same Envoy, metrics off", mb(off.rss_kb)),
                Err(err) => on.note(format!("metrics off not measured: {err:#}")),
            }
        })
        .collect()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The RSS row of one measured Envoy (`clusters_are` says what its clusters are), or a row
/// saying why it could not be measured.
fn rss_row(figure: String, measured: Result<EnvoyFigures>, clusters_are: &str) -> Row {
    match measured {
        Ok(large) => Row::new(BENCHMARK, figure, mb(large.rss_kb), "MB").note(format!(
            "{} clusters ({clusters_are}); {} kB anonymous + {} kB file-backed; peak {:.1} MB; \
             configured {:.1} s after start",
            large.clusters,
            large.anon_kb,
            large.file_kb,
            mb(large.hwm_kb),
            large.seconds_to_config
        )),
        Err(err) => {
            Row::new(BENCHMARK, figure, f64::NAN, "MB").note(format!("{err:#}").replace('\n', " "))
        }
    }
}

fn measure_isolated(
    services: usize,
    instances: usize,
    subsets: usize,
    scope: usize,
    metrics: bool,
) -> Result<EnvoyFigures> {
    eprintln!(
        "envoy-memory: {services} services, {subsets} subsets each, scope {scope}, metrics {metrics}"
    );
    let output = Command::new("unshare")
        .arg("--net")
        .arg(super::bench_binary()?)
        .args(["envoy-memory", "--inside", &services.to_string()])
        .args(metrics.then_some("--metrics"))
        .args(["--instances", &instances.to_string()])
        .args(["--subsets", &subsets.to_string()])
        .args(["--scoped", "0", "--scope", &scope.to_string()])
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("running `unshare --net boshy-bench envoy-memory`")?;
    if !output.status.success() {
        bail!(
            "{services} services × {instances} instances: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("decoding the Envoy memory figures")
}

/// `cluster_manager.active_clusters` from Envoy's admin `/stats`.
pub fn parse_active_clusters(stats: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cluster_manager.active_clusters: "))
        .and_then(|n| n.trim().parse().ok())
}

/// Every service's instances dealt round robin into `subsets` subsets, `s0`, `s1`, ….
fn dealt_into_subsets(catalog: &Catalog, subsets: usize) -> TrafficRules {
    if subsets == 0 {
        return TrafficRules::default();
    }
    TrafficRules {
        services: catalog
            .services
            .iter()
            .map(|service| {
                let subsets = (0..subsets)
                    .map(|k| {
                        let endpoints = service.endpoints.iter().skip(k).step_by(subsets);
                        let subset = Subset {
                            endpoints: endpoints.map(|e| e.address).collect(),
                            dns_endpoints: Default::default(),
                            policy: Default::default(),
                        };
                        (format!("s{k}"), subset)
                    })
                    .collect();
                let rules = ServiceRules {
                    subsets,
                    ..Default::default()
                };
                (service.hostname.clone(), rules)
            })
            .collect(),
        scope_pins: Vec::new(),
        security: Default::default(),
    }
}

async fn measure_inside(
    services: usize,
    instances: usize,
    subsets: usize,
    scope: usize,
    metrics: bool,
) -> Result<EnvoyFigures> {
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip")?;
    if !up.success() {
        bail!("cannot bring loopback up in the benchmark's namespace");
    }
    let catalog: Catalog = super::build::synthetic_catalog(services, instances)?;
    let clusters_per_port = 1 + subsets as u64;
    let in_scope = if scope > 0 { scope } else { services };
    let expected_clusters: u64 = catalog
        .services
        .iter()
        .take(in_scope)
        .map(|s| s.ports.len() as u64 * clusters_per_port)
        .sum();
    let scope_hosts: Vec<String> = catalog
        .services
        .iter()
        .take(scope)
        .map(|s| s.hostname.clone())
        .collect();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", XDS_PORT))
        .await
        .context("binding the xDS port")?;
    let traffic = dealt_into_subsets(&catalog, subsets);
    let (_catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog));
    let (_traffic_tx, traffic_rx) = watch::channel(Arc::new(traffic));
    let sources = Sources {
        catalog: catalog_rx,
        traffic: traffic_rx,
        identity: None,
        telemetry: Telemetry {
            request_metrics: metrics,
            tracing: None,
        },
    };
    let node = NodeIdentity {
        deployment: "bench".into(),
        instance_group: "client".into(),
        instance_id: "00000000-0000-0000-0000-000000000001".into(),
        index: Some(0),
        az: Some("z1".into()),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        service_name: None,
    };
    // The VM's scope, as its agent would have told the pilot before Envoy connects.
    let scopes = (scope > 0).then(|| {
        let scopes = Arc::new(ScopeRegistry::default());
        let instance = InstanceRef {
            deployment: node.deployment.clone(),
            instance_id: node.instance_id.clone(),
        };
        scopes.change(&instance, &ScopeChange::Set(scope_hosts));
        scopes
    });
    let board = Arc::new(SyncBoard::default());
    tokio::spawn(boshy::xds::server::serve_snapshots(
        listener,
        boshy::xds::cache::follow(sources),
        board,
        scopes,
        None,
    ));

    let scratch = ScratchDir::new(BENCHMARK)?;
    let admin: SocketAddr = ADMIN.parse().expect("valid");
    let config = scratch.path().join("envoy.yaml");
    let telemetry = metrics.then(|| bootstrap::Telemetry {
        access_log_socket: scratch.path().join("als.sock"),
        metrics: None,
    });
    std::fs::write(
        &config,
        bootstrap::render_sidecar(
            &node,
            &[format!("127.0.0.1:{XDS_PORT}")],
            admin,
            bootstrap::AdsMode::default(),
            None,
            None,
            telemetry.as_ref(),
        )?,
    )?;
    let started = Instant::now();
    let mut envoy = Command::new(boshy_lab::binaries::envoy()?)
        .arg("--config-path")
        .arg(&config)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Envoy (set BOSHY_ENVOY or put envoy on PATH)")?;
    let pid = envoy.id();
    let result = async {
        let client = reqwest::Client::new();
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = envoy.try_wait()? {
                bail!("Envoy exited with {status}");
            }
            let stats = client
                .get(format!(
                    "http://{ADMIN}/stats?filter=cluster_manager.active_clusters"
                ))
                .send()
                .await;
            if let Ok(response) = stats {
                let text = response.text().await.unwrap_or_default();
                if parse_active_clusters(&text).is_some_and(|n| n >= expected_clusters) {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("Envoy did not get {expected_clusters} clusters within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seconds_to_config = started.elapsed().as_secs_f64();
        // Let the first burst of allocations settle (stats flush, init) before reading RSS.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let memory = ProcMemory::of(pid)?;
        Ok(EnvoyFigures {
            services,
            clusters: expected_clusters,
            rss_kb: memory.rss_kb,
            hwm_kb: memory.hwm_kb,
            anon_kb: memory.anon_kb,
            file_kb: memory.file_kb,
            seconds_to_config,
        })
    }
    .await;
    let _ = envoy.kill();
    let _ = envoy.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_clusters_are_read_from_stats() {
        let stats = "cluster_manager.active_clusters: 2001\ncluster_manager.warming_clusters: 0\n";
        assert_eq!(parse_active_clusters(stats), Some(2001));
        assert_eq!(parse_active_clusters("nothing"), None);
    }
}
