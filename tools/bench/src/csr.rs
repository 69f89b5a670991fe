//! Workload certificates (`boshy-bench csr`): one `boshy pilot` process signing CSRs on its
//! names port (mutual TLS, `POST /v1/identity/csr`), as every VM's agent asks at start and
//! at each renewal. The estate: `--instances` instances of one deployment, listed by the
//! director simulator at addresses of 127.16.0.0/16 (loopback: each client sends from its own
//! instance's address, which the pilot checks); the workload CA is RSA-2048 with a PKCS#1
//! key, as CredHub makes it. Each instance's key and CSR are made before the clock starts (a
//! request is answered the same for any fresh nonce).
//!
//! Figures: certificates a second with N clients each sending one request after another on
//! its own connection, and the time until the last of `--burst` requests sent at once (each
//! on a new connection, as after a pilot restart) is answered; references in the same run:
//! the same checks and signatures in this process on one core, without HTTP or TLS. Whether
//! signing starves xDS: the time `--xds-streams` new Envoys (emulated, delta ADS over mutual
//! TLS) take to get and ACK their whole configuration while the burst is being signed,
//! against the same with the pilot idle.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use boshy::config::{ClientTls, Secret};
use boshy::identity::ca::{check_csr, WorkloadCa};
use boshy::identity::wire::{CsrAnswer, CsrRequest, CSR_PATH};
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use serde_json::Value;
use tokio::task::JoinSet;

use boshy::xds::bootstrap::AdsMode;
use boshy_xds_fleet::fleet::Fleet;

use super::director::manifest;
use super::fleet::{last_ack, xds_proxy};
use super::pilot::{free_port, Pilot};
use super::report::Row;
use super::{percentile, ScratchDir};

const BENCHMARK: &str = "csr";
const SECRET: &str = "bench-csr-secret";
const DEPLOYMENT: &str = "fleet";
/// Instances per instance group of the estate.
const GROUP_SIZE: usize = 500;
/// The workload CA: RSA-2048 with a PKCS#1 key, as CredHub generates a CA (the tests' CA).
const CA_CERTIFICATE: &str = include_str!("../../../tests/fixtures/identity/ca-rsa.pem");
const CA_KEY: &str = include_str!("../../../tests/fixtures/identity/ca-rsa.key");
const TTL_SECONDS: u64 = 86400;
/// Bounds a broken run: no phase may take longer.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);
/// The goal for a mass reconnect: 5,000 VMs all asking at once, every one certified within 30 s.
const GOAL_BURST_SECONDS: f64 = 30.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Concurrent clients of the throughput figure, each a VM sending one request after
    /// another on its own connection.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// How long each throughput figure is measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests sent at once, one per VM, each on a new connection.
    #[arg(long, default_value_t = 5000)]
    pub burst: usize,
    /// New Envoys connecting while the burst is signed (and, the reference, while idle).
    #[arg(long, default_value_t = 100)]
    pub xds_streams: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    let most_clients = args.clients.iter().copied().max().unwrap_or(1);
    let instances = args.burst.max(most_clients);
    let scratch = ScratchDir::new(BENCHMARK)?;
    let sim = director(instances, scratch.path()).await?;
    let setup = setup(&sim, scratch.path())?;
    let pilot = Pilot::start(&setup.config, &scratch.path().join("pilot.log"))?;
    let vms = vms(&sim, &setup).await?;
    if vms.len() < instances {
        bail!(
            "the director lists {} instances, not {instances}",
            vms.len()
        );
    }
    let mut rows = Vec::new();

    let alone = signing_alone(&vms[..vms.len().min(500)])?;
    rows.push(
        Row::new(BENCHMARK, "signing alone, one core", alone, "certs/s").note(
            "check_csr and WorkloadCa::sign in one thread, no HTTP or TLS: RSA-2048 CA, \
             P-256 workload keys",
        ),
    );

    for &clients in &args.clients {
        let cpu_before = pilot.cpu()?;
        let (signed, failed) =
            throughput(&setup, &vms[..clients], Duration::from_secs(args.seconds)).await?;
        let cpu = pilot.cpu()? - cpu_before;
        let rate = signed as f64 / args.seconds as f64;
        rows.push(
            Row::new(
                BENCHMARK,
                format!(
                    "signed a second, {clients} client{}",
                    if clients == 1 { "" } else { "s" }
                ),
                rate,
                "certs/s",
            )
            .against("signing alone, one core", alone)
            .note(format!(
                "{signed} certificates in {} s, {failed} refused or failed; the pilot used \
                 {:.2} ms of CPU a certificate; the clients share the machine's cores",
                args.seconds,
                1000.0 * cpu / signed.max(1) as f64,
            )),
        );
    }

    let mut proxy_tasks = JoinSet::new();
    let proxy = xds_proxy(setup.xds, setup.client_tls.clone(), &mut proxy_tasks).await?;
    let xds_idle = envoys_synced(proxy, args.xds_streams).await?;
    let memory_before = pilot.memory()?;
    let ((elapsed, latencies, failed), xds_during) =
        tokio::try_join!(burst(&setup, &vms[..args.burst]), async {
            // Once the burst's connections are being accepted and signed.
            tokio::time::sleep(Duration::from_millis(200)).await;
            envoys_synced(proxy, args.xds_streams).await
        })?;
    let peak = pilot.memory()?;
    let alone_seconds = args.burst as f64 / alone;
    rows.push(
        Row::new(
            BENCHMARK,
            format!("{} requests at once: the last certificate", args.burst),
            elapsed.as_secs_f64(),
            "s",
        )
        .against(
            format!("{} signatures alone, one core", args.burst),
            alone_seconds,
        )
        .goal(
            format!("< {GOAL_BURST_SECONDS} s"),
            elapsed.as_secs_f64() < GOAL_BURST_SECONDS && failed == 0,
        )
        .note(format!(
            "each on a new mutual-TLS connection from its own address; {failed} refused or \
             failed; latency p50 {:.2} s, p99 {:.2} s; the pilot's RSS {:.0} MB before, \
             peak {:.0} MB",
            percentile(&latencies, 0.5).unwrap_or(f64::NAN),
            percentile(&latencies, 0.99).unwrap_or(f64::NAN),
            memory_before.rss_mb(),
            peak.hwm_kb as f64 / 1024.0,
        )),
    );
    rows.push(
        Row::new(
            BENCHMARK,
            format!(
                "{} new Envoys' whole configuration during the burst",
                args.xds_streams
            ),
            xds_during.as_secs_f64() * 1000.0,
            "ms",
        )
        .against("same, the pilot idle", xds_idle.as_secs_f64() * 1000.0)
        .note(format!(
            "delta ADS over mutual TLS, each on its own connection, from their connection to \
             the last ACK; they connected 0.2 s into the burst of {} requests, which took \
             {:.2} s",
            args.burst,
            elapsed.as_secs_f64()
        )),
    );
    pilot.kill().await?;
    super::emit(&rows, args.out.as_deref())
}

/// How long `streams` new Envoys take, from connecting through `proxy` to the last ACK of
/// their whole configuration.
async fn envoys_synced(proxy: SocketAddr, streams: usize) -> Result<Duration> {
    let since = Instant::now();
    let fleet = Fleet::connect(proxy, streams, AdsMode::Delta).await?;
    Ok(last_ack(&fleet.settle(since, 1).await?, since))
}

/// A director with one deployment of `instances` instances at loopback addresses.
async fn director(instances: usize, dir: &Path) -> Result<SimHandle> {
    let fixtures = dir.join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    let groups = instances.div_ceil(GROUP_SIZE);
    let per_group = instances.div_ceil(groups);
    // Exposing ports makes the pilot read the instance lists (what requests are checked
    // against); the loopback addresses make no endpoints, which this benchmark needs none of.
    std::fs::write(
        fixtures.join(format!("{DEPLOYMENT}.yml")),
        manifest(DEPLOYMENT, groups, per_group, |_| true),
    )?;
    sim::start(SimOptions {
        fixtures: Some(fixtures),
        instance_network: "127.16.0.0/16".parse().expect("a valid CIDR"),
        task_delay: Duration::from_millis(10),
        ..SimOptions::new(SECRET)
    })
    .await
}

/// The pilot's config and the clients' TLS.
struct Setup {
    config: PathBuf,
    api: SocketAddr,
    names: SocketAddr,
    xds: SocketAddr,
    client_tls: rustls::ClientConfig,
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
    let client_tls = boshy::tls::client_config(&ClientTls {
        ca_cert_path: write("ca.pem", &ca.cert_pem())?,
        cert_path: write("client.pem", &client.cert_pem)?,
        key_path: write("client.key", &client.key_pem)?,
        server_name: PILOT_SERVER_NAME.to_string(),
    })?;
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let names = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = format!(
        "director:\n  url: {url}\n  client: pilot\n  client_secret_file: {secret}\n  \
         ca_cert_path: {director_ca}\nvip_store: file\nvip_state_path: {vips}\n\
         tls:\n  ca_cert_path: {ca}\n  cert_path: {cert}\n  key_path: {key}\n\
         api:\n  insecure_open: true\n\
         listen:\n  api: {api}\n  xds: {xds}\n  names: {names}\n\
         identity:\n  certificate_ttl_seconds: {TTL_SECONDS}\n  ca:\n    \
         certificate: {ca_certificate}\n    private_key: {ca_key}\n",
        url = sim.director_url(),
        secret = write("pilot-secret", SECRET)?.display(),
        director_ca = write("director-ca.pem", sim.ca_pem())?.display(),
        vips = dir.join("vips.json").display(),
        ca = dir.join("ca.pem").display(),
        cert = write("pilot.pem", &server.cert_pem)?.display(),
        key = write("pilot.key", &server.key_pem)?.display(),
        ca_certificate = write("workload-ca.pem", CA_CERTIFICATE)?.display(),
        ca_key = write("workload-ca.key", CA_KEY)?.display(),
    );
    Ok(Setup {
        config: write("pilot.yml", &config)?,
        api,
        names,
        xds,
        client_tls,
    })
}

/// One VM: its instance, its address and its CSR, made before any clock starts.
#[derive(Clone)]
struct Vm {
    instance: String,
    address: IpAddr,
    id: String,
    csr: String,
}

/// Every instance the simulator lists, with a CSR for its group's identity, once the pilot
/// has read them (its `/healthz`).
async fn vms(sim: &SimHandle, setup: &Setup) -> Result<Vec<Vm>> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let ready = reqwest::get(format!("http://{}/healthz", setup.api)).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the pilot has no catalog after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.control_url()))
        .await?
        .json()
        .await?;
    let instances = state["deployments"][0]["instances"]
        .as_array()
        .context("the simulator's state has no instances")?;
    instances
        .iter()
        .map(|instance| {
            let group = instance["job_name"].as_str().context("job_name")?;
            let id = format!("spiffe://boshy/deployment/{DEPLOYMENT}/instance_group/{group}");
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into()?)];
            Ok(Vm {
                instance: instance["id"].as_str().context("id")?.to_string(),
                address: instance["ips"][0].as_str().context("ips")?.parse()?,
                csr: params.serialize_request(&key)?.pem()?,
                id,
            })
        })
        .collect()
}

/// Certificates a second that this process checks and signs on one core.
fn signing_alone(vms: &[Vm]) -> Result<f64> {
    let ca = WorkloadCa::from_pem(
        CA_CERTIFICATE,
        &Secret::new(CA_KEY),
        None,
        Duration::from_secs(TTL_SECONDS),
    )?;
    let started = Instant::now();
    for vm in vms {
        let checked =
            check_csr(&vm.csr, &vm.id).map_err(|problem| anyhow::anyhow!("{problem:?}"))?;
        ca.sign(&checked, &vm.id, SystemTime::now())?;
    }
    Ok(vms.len() as f64 / started.elapsed().as_secs_f64())
}

/// A client of the names port sending from `vm`'s address.
fn client(setup: &Setup, vm: &Vm) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(setup.client_tls.clone())
        .resolve(PILOT_SERVER_NAME, setup.names)
        .local_address(vm.address)
        .timeout(PHASE_DEADLINE)
        .build()?)
}

/// Asks for `vm`'s certificate once (a fresh nonce); whether it came.
async fn ask(client: &reqwest::Client, url: &str, vm: &Vm) -> bool {
    let request = CsrRequest {
        deployment: DEPLOYMENT.into(),
        instance: vm.instance.clone(),
        csr: vm.csr.clone(),
        nonce: format!("{:032x}", rand::random::<u128>()),
        issued_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let Ok(response) = client.post(url).json(&request).send().await else {
        return false;
    };
    response.status().is_success() && response.json::<CsrAnswer>().await.is_ok()
}

fn url(setup: &Setup) -> String {
    format!(
        "https://{PILOT_SERVER_NAME}:{}{CSR_PATH}",
        setup.names.port()
    )
}

/// Each of `vms` asks again and again on its own connection for `window`: (signed, failed).
async fn throughput(setup: &Setup, vms: &[Vm], window: Duration) -> Result<(u64, u64)> {
    let url = Arc::new(url(setup));
    let mut tasks = JoinSet::new();
    let deadline = Instant::now() + window;
    for vm in vms {
        let client = client(setup, vm)?;
        // Connected (and admitted) before the clock, as a running agent is.
        ask(&client, &url, vm).await;
        let vm = vm.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let (mut signed, mut failed) = (0, 0);
            while Instant::now() < deadline {
                match ask(&client, &url, &vm).await {
                    true => signed += 1,
                    false => failed += 1,
                }
            }
            (signed, failed)
        });
    }
    let mut totals = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (signed, failed) = done?;
        totals = (totals.0 + signed, totals.1 + failed);
    }
    Ok(totals)
}

/// Every VM of `vms` asks once, all at once, each on a new connection: the time to the last
/// answer, every latency (s, sorted) and the failures.
async fn burst(setup: &Setup, vms: &[Vm]) -> Result<(Duration, Vec<f64>, usize)> {
    let url = Arc::new(url(setup));
    let clients = vms
        .iter()
        .map(|vm| client(setup, vm))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (client, vm) in clients.into_iter().zip(vms) {
        let url = url.clone();
        let vm = vm.clone();
        tasks.spawn(async move { (ask(&client, &url, &vm).await, started.elapsed()) });
    }
    let mut latencies = Vec::with_capacity(vms.len());
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        let (ok, latency) = done?;
        if !ok {
            failed += 1;
        }
        latencies.push(latency.as_secs_f64());
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok((elapsed, latencies, failed))
}
