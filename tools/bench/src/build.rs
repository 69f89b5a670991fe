//! Control-plane build cost: for synthetic estates of N services × 10 instances, the time from
//! director data (parsed manifests and instance rows) to the catalog with VIPs and every xDS
//! resource encoded, and the process's RSS. Each size runs in a fresh child process
//! (`--single`) so that its peak RSS is its own.
//!
//! References in the same run: serde_json serialization of the same catalog (a trivial pass
//! over the same data), the per-service cost at the smallest size (linearity), and the RSS of
//! the same process before the estate existed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::report::Row;
use super::{median, ProcMemory};
use boshy::catalog::model::{Catalog, DeploymentInput, Instance};
use boshy::catalog::{self, manifest};
use boshy::vip::{VipAllocator, VipState};
use boshy::xds::cache::Snapshot;

const BENCHMARK: &str = "build";
const TLD: &str = "boshy";
pub const INSTANCES_PER_SERVICE: usize = 10;
const SERVICES_PER_DEPLOYMENT: usize = 10;
/// A /16: room for every service of the largest estate.
const VIP_POOL: &str = "169.254.0.0/16";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Estate sizes, in services (10 instances each).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub sizes: Vec<usize>,
    /// Timed repetitions per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Measure one size in this process and print its figures as JSON (used by the parent).
    #[arg(long, hide = true)]
    pub single: Option<usize>,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One deployment's raw director data: its manifest and its instance rows.
pub struct DirectorDeployment {
    pub name: String,
    pub manifest: String,
    pub instances: Vec<Instance>,
}

/// An estate of `services` services (ten per deployment, one per instance group, each with an
/// HTTP and a TCP port), each with `instances_per_service` running instances.
pub fn synthetic_estate(services: usize, instances_per_service: usize) -> Vec<DirectorDeployment> {
    let deployments = services.div_ceil(SERVICES_PER_DEPLOYMENT);
    let mut host = 0u32;
    (0..deployments)
        .map(|d| {
            let groups = (services - d * SERVICES_PER_DEPLOYMENT).min(SERVICES_PER_DEPLOYMENT);
            let mut manifest = format!("name: deployment-{d}\ninstance_groups:\n");
            let mut instances = Vec::new();
            for g in 0..groups {
                manifest.push_str(&format!(
                    "- name: group-{g}\n  instances: {instances_per_service}\n  jobs:\n  \
                     - name: svc\n    release: app\n    expose_ports:\n    \
                     - {{name: http, number: 8080}}\n    - {{name: db, number: 5432}}\n"
                ));
                for index in 0..instances_per_service {
                    host += 1;
                    let ip = std::net::Ipv4Addr::from(
                        u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + host,
                    );
                    instances.push(Instance {
                        id: format!("{d:04}-{g:02}-{index:02}-0000-0000-000000000000"),
                        instance_group: format!("group-{g}"),
                        index: Some(index as u32),
                        az: Some(format!("z{}", index % 3 + 1)),
                        ips: vec![ip.to_string()],
                        job_state: Some("running".into()),
                        vm_cid: Some(format!("vm-{host}")),
                        bootstrap: Some(index == 0),
                    });
                }
            }
            DirectorDeployment {
                name: format!("deployment-{d}"),
                manifest,
                instances,
            }
        })
        .collect()
}

/// The estate's director data as the poller hands it to the catalog.
pub fn deployment_inputs(estate: &[DirectorDeployment]) -> Result<Vec<DeploymentInput>> {
    estate
        .iter()
        .map(|d| {
            Ok(DeploymentInput {
                name: d.name.clone(),
                manifest: Arc::new(manifest::parse(&d.name, &d.manifest)?),
                instances: Arc::new(d.instances.clone()),
            })
        })
        .collect()
}

/// The catalog of a synthetic estate of `services` services, VIPs included.
pub fn synthetic_catalog(services: usize, instances_per_service: usize) -> Result<Catalog> {
    let inputs = deployment_inputs(&synthetic_estate(services, instances_per_service))?;
    let mut vips = vip_allocator()?;
    vips.sync(&wanted_hostnames(&inputs), 0);
    Ok(catalog::build(&inputs, TLD, vips.assignments()).catalog)
}

/// A VIP allocator with no VIP assigned yet, its pool large enough for every estate.
pub fn vip_allocator() -> Result<VipAllocator> {
    Ok(VipAllocator::new(
        VIP_POOL.parse().expect("valid pool"),
        3600,
        VipState::default(),
    )?)
}

/// What the control plane builds from director data without rules: VIPs, the catalog and the
/// xDS snapshot, with each stage's time in ms (VIP allocation, catalog, xDS snapshot), the
/// profile of where a build goes.
pub fn timed_build(
    inputs: &[DeploymentInput],
    vips: &mut VipAllocator,
) -> (Catalog, Snapshot, [f64; 3]) {
    let start = Instant::now();
    vips.sync(&wanted_hostnames(inputs), 0);
    let vips_ms = millis(start);
    let start = Instant::now();
    let catalog = catalog::build(inputs, TLD, vips.assignments()).catalog;
    let catalog_ms = millis(start);
    let start = Instant::now();
    let snapshot = Snapshot::from_catalog(&catalog);
    let xds_ms = millis(start);
    (catalog, snapshot, [vips_ms, catalog_ms, xds_ms])
}

fn wanted_hostnames(inputs: &[DeploymentInput]) -> BTreeSet<String> {
    catalog::hostnames(inputs, TLD)
        .services
        .into_iter()
        .map(|(_, hostname)| hostname)
        .collect()
}

/// What one size measured (the `--single` child's output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeFigures {
    pub services: usize,
    pub parse_ms: f64,
    /// VIP allocation + catalog + xDS snapshot, cold (no VIP assigned yet).
    pub build_ms: f64,
    /// The cold build's stages: VIP allocation, catalog, xDS snapshot.
    pub stages_ms: [f64; 3],
    /// The same with VIPs already assigned and one instance failing: an endpoint change.
    pub rebuild_ms: f64,
    pub serde_json_ms: f64,
    pub baseline_rss_kb: u64,
    pub peak_rss_kb: u64,
    pub resources: usize,
}

pub fn millis(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Measures one size in this process.
pub fn measure(services: usize, repeat: usize) -> Result<SizeFigures> {
    let baseline = ProcMemory::of(std::process::id())?;
    let estate = synthetic_estate(services, INSTANCES_PER_SERVICE);
    let start = Instant::now();
    let mut inputs = deployment_inputs(&estate)?;
    let parse_ms = millis(start);
    let mut cold = Vec::new();
    let mut stages: [Vec<f64>; 3] = Default::default();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let mut vips = vip_allocator()?;
        let start = Instant::now();
        let (catalog, _, stage_ms) = timed_build(&inputs, &mut vips);
        cold.push(millis(start));
        for (times, ms) in stages.iter_mut().zip(stage_ms) {
            times.push(ms);
        }
        last = Some((catalog, vips));
    }
    let (catalog, mut vips) = last.expect("at least one repetition");
    if catalog.services.len() != services {
        bail!(
            "the estate of {services} services built a catalog of {}",
            catalog.services.len()
        );
    }

    // An endpoint change: one instance of the first deployment starts failing.
    let mut changed = (*inputs[0].instances).clone();
    changed[0].job_state = Some("failing".into());
    inputs[0].instances = Arc::new(changed);
    let mut warm = Vec::new();
    let mut resources = 0;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let (_, snapshot, _) = timed_build(&inputs, &mut vips);
        warm.push(millis(start));
        resources = boshy::xds::resources::ResourceType::PUSH_ORDER
            .iter()
            .map(|t| snapshot.select(*t, None).resources.len())
            .sum();
    }

    let mut json = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let bytes = serde_json::to_vec(&catalog)?;
        json.push(millis(start));
        std::hint::black_box(bytes);
    }
    Ok(SizeFigures {
        services,
        parse_ms,
        build_ms: median(&cold).unwrap_or(f64::NAN),
        stages_ms: stages.map(|times| median(&times).unwrap_or(f64::NAN)),
        rebuild_ms: median(&warm).unwrap_or(f64::NAN),
        serde_json_ms: median(&json).unwrap_or(f64::NAN),
        baseline_rss_kb: baseline.rss_kb,
        peak_rss_kb: ProcMemory::of(std::process::id())?.hwm_kb,
        resources,
    })
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(services) = args.single {
        let repeat = args.repeat;
        let figures = tokio::task::spawn_blocking(move || measure(services, repeat))
            .await
            .context("the build benchmark panicked")??;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let mut all = Vec::new();
    for &services in &args.sizes {
        eprintln!("build: {services} services");
        let output = Command::new(super::bench_binary()?)
            .args(["build", "--single", &services.to_string()])
            .args(["--repeat", &args.repeat.to_string()])
            .env("RUST_LOG", "warn")
            .output()
            .context("running the build benchmark child")?;
        if !output.status.success() {
            bail!(
                "build benchmark for {services} services failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let figures: SizeFigures = serde_json::from_slice(&output.stdout)
            .context("decoding the build benchmark child's figures")?;
        all.push(figures);
    }
    super::emit(&rows(&all), args.out.as_deref())
}

fn rows(all: &[SizeFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    let Some(smallest) = all.first() else {
        return rows;
    };
    let per_service = |f: &SizeFigures| f.build_ms / f.services as f64;
    for f in all {
        let n = f.services;
        let mut build = Row::new(
            BENCHMARK,
            format!("{n} services: VIPs + catalog + xDS, cold"),
            f.build_ms,
            "ms",
        )
        .against("serde_json of the same catalog", f.serde_json_ms)
        .note(format!(
            "VIPs {:.1} ms + catalog {:.1} ms + xDS snapshot {:.1} ms ({} resources); \
             manifests, parsed once per change: {:.1} ms",
            f.stages_ms[0], f.stages_ms[1], f.stages_ms[2], f.resources, f.parse_ms
        ));
        if n == 1000 {
            build = build.goal("< 50 ms", f.build_ms < 50.0);
        }
        rows.push(build);
        rows.push(
            Row::new(
                BENCHMARK,
                format!("{n} services: rebuild after an endpoint change"),
                f.rebuild_ms,
                "ms",
            )
            .against("cold build", f.build_ms),
        );
        if n != smallest.services {
            rows.push(
                Row::new(
                    BENCHMARK,
                    format!("{n} services: build time per service"),
                    per_service(f) * 1000.0,
                    "µs",
                )
                .against(
                    format!("per service at {}", smallest.services),
                    per_service(smallest) * 1000.0,
                ),
            );
        }
        let rss_mb = f.peak_rss_kb as f64 / 1024.0;
        let mut rss = Row::new(BENCHMARK, format!("{n} services: peak RSS"), rss_mb, "MB")
            .against(
                "same process before the estate",
                f.baseline_rss_kb as f64 / 1024.0,
            )
            .note(format!(
                "{:.1} kB per service above the baseline",
                f.peak_rss_kb.saturating_sub(f.baseline_rss_kb) as f64 / n as f64
            ));
        if n == 5000 {
            rss = rss.goal("< 200 MB", rss_mb < 200.0);
        }
        rows.push(rss);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estate_has_the_services_and_instances_asked_for() {
        let estate = synthetic_estate(25, INSTANCES_PER_SERVICE);
        assert_eq!(estate.len(), 3);
        let instances: usize = estate.iter().map(|d| d.instances.len()).sum();
        assert_eq!(instances, 250);
        let parsed = manifest::parse(&estate[2].name, &estate[2].manifest).unwrap();
        assert_eq!(parsed.services.len(), 5);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn a_small_estate_builds_every_service() {
        let figures = measure(20, 1).unwrap();
        assert_eq!(figures.services, 20);
        // A listener, and per service port a cluster, its endpoints and (HTTP) a route.
        assert!(figures.resources > 40, "{figures:?}");
        let rows = rows(&[
            figures.clone(),
            SizeFigures {
                services: 40,
                ..figures
            },
        ]);
        assert!(rows
            .iter()
            .any(|r| r.figure == "40 services: build time per service"));
    }
}
