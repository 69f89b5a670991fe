//! Director load (`boshy-bench director`): the pilot's poller, with its default settings,
//! against the director simulator playing a large foundation on a busy director: `format=full`
//! tasks that take `--task-delay-ms` each on `--workers` workers (docs/director-api.md §3.3).
//!
//! The estate: `--deployments` deployments of `--groups` instance groups of `--instances`
//! instances, half of the groups exposing a service (the build benchmark's two ports), half
//! exposing none. Figures: the time to the first catalog (every deployment and every instance
//! published), the health tasks a minute at steady state for the whole estate and for one
//! deployment of it, and the health freshness each achieves. References in the same run: one
//! `format=full` task on the idle simulator (what the first catalog no longer waits for, and
//! what the old poller waited for once per deployment, two at a time), the budget, and the
//! health interval.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy::catalog::model::DeploymentInput;
use boshy::config::{DirectorConfig, Secret};
use boshy::director::{DirectorClient, Poller};
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::report::Row;
use super::ScratchDir;

const BENCHMARK: &str = "director";
const SECRET: &str = "bench-director-secret";
/// The pilot's defaults (jobs/bosh-pilot/spec): what the figures are measured with.
const HEALTH_INTERVAL_SECONDS: f64 = 15.0;
const HEALTH_TASKS_PER_MINUTE: f64 = 6.0;
/// The simulator's route of a health task.
const HEALTH_TASKS: &str = "GET /deployments/:d/instances?format=full";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 50)]
    pub deployments: usize,
    /// Instance groups per deployment; half of them expose a service.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// Instances per instance group.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// How long one `format=full` task holds a director worker.
    #[arg(long, default_value_t = 2000)]
    pub task_delay_ms: u64,
    /// The director's workers, shared by every task.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// How long health tasks are counted at steady state, for each estate.
    #[arg(long, default_value_t = 120)]
    pub steady_seconds: u64,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A deployment's manifest: `groups` groups of `instances`, those `exposes` says exposing an
/// HTTP and a TCP port (as the build benchmark's), the others nothing.
pub(crate) fn manifest(
    name: &str,
    groups: usize,
    instances: usize,
    exposes: impl Fn(usize) -> bool,
) -> String {
    let mut text = format!(
        "name: {name}\nreleases:\n- name: app\n  version: latest\nstemcells:\n\
         - alias: default\n  os: ubuntu-jammy\n  version: latest\ninstance_groups:\n"
    );
    for g in 0..groups {
        let expose = match exposes(g) {
            true => "    expose_ports:\n    - {name: http, number: 8080}\n    - {name: db, number: 5432}\n",
            false => "",
        };
        text.push_str(&format!(
            "- name: group-{g}\n  instances: {instances}\n  azs: [z1, z2, z3]\n  jobs:\n  \
             - name: svc\n    release: app\n{expose}"
        ));
    }
    text
}

/// One simulated director with `deployments` deployments of the estate's shape.
async fn director(args: &Args, deployments: usize, scratch: &ScratchDir) -> Result<SimHandle> {
    let fixtures = scratch.path().join(format!("fixtures-{deployments}"));
    std::fs::create_dir_all(&fixtures)?;
    for d in 0..deployments {
        let name = format!("deployment-{d:02}");
        std::fs::write(
            fixtures.join(format!("{name}.yml")),
            // The even groups expose ports, the odd ones nothing.
            manifest(&name, args.groups, args.instances, |g| g % 2 == 0),
        )?;
    }
    sim::start(SimOptions {
        fixtures: Some(fixtures),
        instance_network: "10.0.0.0/16".parse().expect("a valid CIDR"),
        task_delay: Duration::from_millis(args.task_delay_ms),
        workers: Some(args.workers),
        ..SimOptions::new(SECRET)
    })
    .await
}

fn director_config(sim: &SimHandle) -> Result<DirectorConfig> {
    // Every other key at the pilot's defaults.
    Ok(serde_json::from_value(json!({
        "url": sim.director_url(),
        "client": "pilot",
        "ca_cert": sim.ca_pem(),
    }))?)
}

async fn health_tasks(http: &reqwest::Client, sim: &SimHandle) -> Result<u64> {
    let counts: Value = http
        .get(format!("{}/_sim/requests", sim.control_url()))
        .send()
        .await?
        .json()
        .await?;
    Ok(counts["by_route"][HEALTH_TASKS].as_u64().unwrap_or(0))
}

/// What one estate measured.
struct Measured {
    first_catalog: Duration,
    tasks_per_minute: f64,
    tasks: u64,
    oldest_reading: Duration,
    cycle: Duration,
}

/// Runs the poller against `sim` until its first complete catalog, then counts health tasks
/// for `steady`.
async fn measure(sim: &SimHandle, deployments: usize, args: &Args) -> Result<Measured> {
    let instances = args.groups * args.instances;
    let poller = Poller::new(&director_config(sim)?, Secret::new(SECRET))?;
    let (tx, mut rx) = watch::channel(Arc::new(Vec::<DeploymentInput>::new()));
    let started = Instant::now();
    let poller = tokio::spawn(poller.run(tx));
    let complete = |list: &[DeploymentInput]| {
        list.len() == deployments && list.iter().all(|d| d.instances.len() == instances)
    };
    let first = async {
        while !complete(&rx.borrow_and_update()) {
            rx.changed().await.context("the poller stopped")?;
        }
        anyhow::Ok(started.elapsed())
    };
    let first_catalog = tokio::time::timeout(Duration::from_secs(600), first)
        .await
        .context("no complete catalog within 600 s")??;
    let http = reqwest::Client::new();
    let before = health_tasks(&http, sim).await?;
    let steady = Duration::from_secs(args.steady_seconds);
    tokio::time::sleep(steady).await;
    let tasks = health_tasks(&http, sim).await? - before;
    let metrics = boshy::metrics::global();
    let millis =
        |gauge: &std::sync::atomic::AtomicU64| Duration::from_millis(gauge.load(Ordering::Relaxed));
    let measured = Measured {
        first_catalog,
        tasks_per_minute: tasks as f64 * 60.0 / steady.as_secs_f64(),
        tasks,
        oldest_reading: millis(&metrics.director_health_age_ms),
        cycle: millis(&metrics.director_health_cycle_ms),
    };
    poller.abort();
    Ok(measured)
}

/// One `format=full` task on the idle simulator, end to end as the pilot's client does it.
async fn one_task(sim: &SimHandle) -> Result<Duration> {
    let client = DirectorClient::new(&director_config(sim)?, Secret::new(SECRET))?;
    let started = Instant::now();
    client.instance_health("deployment-00").await?;
    Ok(started.elapsed())
}

pub async fn run(args: Args) -> Result<()> {
    if args.deployments < 2 || args.groups < 2 {
        bail!("--deployments and --groups must be at least 2 (one estate against one deployment, half the groups exposed)");
    }
    let scratch = ScratchDir::new(BENCHMARK)?;
    let estate = format!(
        "{} deployments × {} groups × {} instances ({} exposed services, {} endpoints), \
         {} ms tasks, {} workers",
        args.deployments,
        args.groups,
        args.instances,
        args.deployments * args.groups.div_ceil(2),
        args.deployments * args.groups.div_ceil(2) * args.instances,
        args.task_delay_ms,
        args.workers
    );
    eprintln!("bench director: {estate}");
    let many_sim = director(&args, args.deployments, &scratch).await?;
    let task = one_task(&many_sim).await?;
    eprintln!(
        "bench director: one task {task:?}; polling {} deployments for {} s",
        args.deployments, args.steady_seconds
    );
    let many = measure(&many_sim, args.deployments, &args).await?;
    drop(many_sim);
    eprintln!(
        "bench director: polling one deployment for {} s",
        args.steady_seconds
    );
    let one_sim = director(&args, 1, &scratch).await?;
    let one = measure(&one_sim, 1, &args).await?;
    drop(one_sim);

    let seconds = |d: Duration| d.as_secs_f64();
    let minutes = args.steady_seconds as f64 / 60.0;
    // A window may catch one more task than its length allows (one at each edge).
    let ceiling = HEALTH_TASKS_PER_MINUTE + 1.0 / minutes;
    let achieved = args.deployments as f64 * 60.0 / many.tasks_per_minute;
    let defaults = format!(
        "pilot defaults: health every {HEALTH_INTERVAL_SECONDS} s, {HEALTH_TASKS_PER_MINUTE} \
         tasks a minute, poll every 5 s"
    );
    let rows = vec![
        Row::new(
            BENCHMARK,
            format!("first catalog, {} deployments", args.deployments),
            seconds(many.first_catalog),
            "s",
        )
        .against("one format=full task on the idle director", seconds(task))
        .goal("< 10 s", many.first_catalog < Duration::from_secs(10))
        .note(format!(
            "{estate}; every instance published from the synchronous instance lists, no task \
             waited for (the poller before this needed one task per deployment, two at a time: \
             ≥ {} × the reference; ~80 s measured in issue 11)",
            args.deployments / 2
        )),
        Row::new(
            BENCHMARK,
            format!("health tasks a minute, {} deployments", args.deployments),
            many.tasks_per_minute,
            "tasks/min",
        )
        .against(
            "the budget (health_tasks_per_minute)",
            HEALTH_TASKS_PER_MINUTE,
        )
        .goal(
            "≤ the budget, whatever the estate",
            many.tasks_per_minute <= ceiling,
        )
        .note(format!(
            "{} tasks in {} s at steady state; {defaults}",
            many.tasks, args.steady_seconds
        )),
        Row::new(
            BENCHMARK,
            "health tasks a minute, 1 deployment",
            one.tasks_per_minute,
            "tasks/min",
        )
        .against(
            format!("{} deployments", args.deployments),
            many.tasks_per_minute,
        )
        .goal("≤ the budget", one.tasks_per_minute <= ceiling)
        .note(format!(
            "{} tasks in {} s; one deployment needs one reading per health interval, {} a \
             minute: the budget caps, it never adds readings",
            one.tasks,
            args.steady_seconds,
            60.0 / HEALTH_INTERVAL_SECONDS
        )),
        Row::new(
            BENCHMARK,
            format!(
                "health read every, {} deployments (from the measured rate)",
                args.deployments
            ),
            achieved,
            "s",
        )
        .against("health_interval_seconds", HEALTH_INTERVAL_SECONDS)
        .note(format!(
            "deployments × 60 / tasks a minute; logged as a warning with the budget that would \
             be needed ({} a minute); oldest reading at the end: {:.0} s \
             (boshy_director_health_age_seconds); the pilot no longer falls behind silently",
            (args.deployments as f64 * 60.0 / HEALTH_INTERVAL_SECONDS).ceil(),
            seconds(many.oldest_reading)
        )),
        Row::new(
            BENCHMARK,
            "health read every, 1 deployment (boshy_director_health_cycle_seconds)",
            seconds(one.cycle),
            "s",
        )
        .against("health_interval_seconds", HEALTH_INTERVAL_SECONDS)
        .goal(
            "≤ the interval + one poll",
            seconds(one.cycle) <= HEALTH_INTERVAL_SECONDS + 5.0,
        )
        .note(format!(
            "the cycle gauge at the end of the window; first catalog {:.2} s",
            seconds(one.first_catalog)
        )),
    ];
    super::emit(&rows, args.out.as_deref())
}
