//! Knowing when the lab's mesh has converged: every addon VM resolves every service to its
//! VIP, and every Envoy has exactly the healthy endpoints the control plane lists (or, for a
//! service whose endpoints Envoy finds through DNS, the service's clusters).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::net;
use super::vm::{self, Vm};
use super::LabState;
use boshy::catalog::model::DnsEndpoints;
use boshy::xds::resources::cluster_name;

/// Polls `check` every 250 ms until it says yes or `timeout` passes.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let detail = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredPort {
    pub name: String,
    pub number: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredEndpoint {
    pub address: String,
    pub az: Option<String>,
    pub instance: String,
    pub index: Option<u32>,
    pub healthy: bool,
    /// Its agent says its Envoy takes no mutual TLS yet (absent: false).
    #[serde(default)]
    pub plaintext: bool,
}

/// One entry of the control plane's `/v1/registration`.
#[derive(Debug, Clone, Deserialize)]
pub struct Registration {
    pub hostname: String,
    pub vip: String,
    pub deployment: String,
    pub instance_group: String,
    pub job: String,
    pub ports: Vec<RegisteredPort>,
    pub endpoints: Vec<RegisteredEndpoint>,
    /// A ServiceEntry's service resolved through DNS: the names Envoy resolves.
    #[serde(default)]
    pub dns: Option<DnsEndpoints>,
}

/// Reads `/v1/registration` from the first control-plane VM that answers.
pub async fn registration(state: &LabState) -> Result<Vec<Registration>> {
    let body = api_get(state, "/v1/registration").await?;
    serde_json::from_str(&body).context("decode /v1/registration")
}

/// An HTTPS client of the pilots' API that presents the lab's mesh client certificate
/// (docs/api.md) and reaches `pilot` under the name its certificate carries.
fn api_client(state: &LabState, pilot: &Vm) -> Result<reqwest::Client> {
    let files = crate::pki::MeshFiles::of(&state.layout);
    mesh_client(
        &files,
        (files.client_cert(), files.client_key()),
        crate::pki::PILOT_SERVER_NAME,
        std::net::SocketAddr::new(pilot.ip.into(), vm::API_PORT),
    )
}

/// An HTTPS client of the lab's mesh CA presenting `certificate` (certificate and key files),
/// which reaches `server_name` at `address`.
fn mesh_client(
    files: &crate::pki::MeshFiles,
    (cert, key): (std::path::PathBuf, std::path::PathBuf),
    server_name: &str,
    address: std::net::SocketAddr,
) -> Result<reqwest::Client> {
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut identity = read(cert)?;
    identity.extend(read(key)?);
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read(files.ca())?)?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .resolve(server_name, address)
        .timeout(Duration::from_secs(3))
        .build()
        .with_context(|| format!("the HTTPS client of {server_name}"))
}

/// A VM's request metrics, as Prometheus scrapes them from its Envoy's metrics listener
/// (mutual TLS with the lab's scraper certificate; docs/telemetry.md).
pub async fn vm_metrics(state: &LabState, vm: &Vm) -> Result<String> {
    let files = crate::pki::MeshFiles::of(&state.layout);
    let address = std::net::SocketAddr::new(vm.ip.into(), crate::prometheus::METRICS_PORT);
    let client = mesh_client(
        &files,
        (files.scraper_cert(), files.scraper_key()),
        crate::pki::ADDON_SERVER_NAME,
        address,
    )?;
    let url = format!(
        "https://{}:{}/metrics",
        crate::pki::ADDON_SERVER_NAME,
        crate::prometheus::METRICS_PORT
    );
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("{} {url}", vm.name()))?;
    response.text().await.with_context(|| format!("read {url}"))
}

/// `GET <path>` of the pilots' API from the first control-plane VM that answers 2xx: its body.
pub async fn api_get(state: &LabState, path: &str) -> Result<String> {
    let mut errors = Vec::new();
    for pilot in pilots(state) {
        let url = format!(
            "https://{}:{}{path}",
            crate::pki::PILOT_SERVER_NAME,
            vm::API_PORT
        );
        let response = api_client(state, pilot)?.get(&url).send().await;
        match response {
            Ok(r) if r.status().is_success() => {
                return r.text().await.with_context(|| format!("read {url}"));
            }
            Ok(r) => errors.push(format!("{} {url}: {}", pilot.ip, r.status())),
            Err(e) => errors.push(format!("{} {url}: {e}", pilot.ip)),
        }
    }
    Err(anyhow!("no control plane answered: {}", errors.join("; ")))
}

pub fn pilots(state: &LabState) -> impl Iterator<Item = &Vm> {
    state
        .vms
        .iter()
        .filter(|vm| vm.processes.iter().any(|p| p.name == vm::PILOT_JOB))
}

/// What a VM's DNS agent answers for `name` (empty when it has no A record).
pub fn resolve(vm: &Vm, name: &str) -> Result<Vec<String>> {
    let output = net::run_in(
        &vm.namespace,
        &[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "@127.0.0.1",
            name,
            "A",
        ],
    )?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect())
}

/// Envoy's `/clusters` text on `vm`.
fn envoy_clusters(vm: &Vm) -> Result<String> {
    envoy_admin(vm, "clusters")
}

/// `GET /<path>` of the Envoy admin on `vm`.
fn envoy_admin(vm: &Vm, path: &str) -> Result<String> {
    let url = format!("http://{}/{path}", vm::ENVOY_ADMIN);
    let output = net::run_in(&vm.namespace, &["curl", "-sf", "--max-time", "2", &url])?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The mesh's clusters (`outbound|...`) the Envoy on `vm` has: what its VM's scope holds
/// (docs/scope.md).
pub fn envoy_mesh_clusters(vm: &Vm) -> Result<BTreeSet<String>> {
    Ok(mesh_clusters(&envoy_clusters(vm)?))
}

/// The mesh's clusters named in Envoy's `/clusters` text.
pub fn mesh_clusters(clusters: &str) -> BTreeSet<String> {
    clusters
        .lines()
        .filter_map(|line| line.split("::").next())
        .filter(|cluster| cluster.starts_with("outbound|"))
        .map(str::to_string)
        .collect()
}

/// The endpoints (`ip:port`) Envoy on `vm` considers healthy in `cluster`.
pub fn envoy_healthy_endpoints(vm: &Vm, cluster: &str) -> Result<BTreeSet<String>> {
    Ok(parse_healthy_endpoints(&envoy_clusters(vm)?, cluster))
}

/// Whether Envoy's `/clusters` text lists `cluster`, hosts or not: Envoy lists a cluster once
/// it is warm, which for a DNS cluster is after its names were first looked up.
fn lists_cluster(clusters: &str, cluster: &str) -> bool {
    let prefix = format!("{cluster}::");
    clusters.lines().any(|line| line.starts_with(&prefix))
}

/// Parses Envoy's `/clusters` text: `<cluster>::<ip:port>::health_flags::healthy`.
pub fn parse_healthy_endpoints(clusters: &str, cluster: &str) -> BTreeSet<String> {
    let prefix = format!("{cluster}::");
    clusters
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, stat) = rest.split_once("::")?;
            (stat == "health_flags::healthy").then(|| endpoint.to_string())
        })
        .collect()
}

/// The agent's files on `vm` (its table_path's directory).
fn agent_file(vm: &Vm, name: &str) -> std::path::PathBuf {
    vm.root.join("data/virtual-ip-agent").join(name)
}

/// The name table the agent on `vm` last took (hostname → VIP), as it saved it.
pub fn agent_table(vm: &Vm) -> BTreeMap<String, String> {
    let Ok(bytes) = std::fs::read(agent_file(vm, "names.json")) else {
        return BTreeMap::new();
    };
    let table: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    table["names"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, vip)| (name.clone(), vip.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The hostnames in the VM's scope (what its Envoy holds), as its agent saved them.
pub fn agent_scope(vm: &Vm) -> BTreeSet<String> {
    std::fs::read(agent_file(vm, "scope.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// What still differs between the control plane's registration and one VM: every name in the
/// agent's table, and for the names in the VM's scope (docs/scope.md) the DNS answer and
/// Envoy's endpoints. A name out of scope is not asked: asking would bring it into the scope.
/// `director_running`: the director lists the VM's instance with `job_state` running.
fn vm_lag(vm: &Vm, services: &[Registration], director_running: bool) -> Result<Vec<String>> {
    let mut lag = Vec::new();
    // A process stopped on purpose (`lab process ... stop`) is not waited for.
    let running = |name: &str| {
        vm.processes
            .iter()
            .any(|p| p.name == name && p.is_running())
    };
    let (answers_dns, runs_envoy) = (running("virtual-ip-agent"), running("envoy"));
    let (table, scope) = (agent_table(vm), agent_scope(vm));
    for service in services {
        let in_scope = scope.contains(&service.hostname);
        let answers = if !answers_dns {
            vec![service.vip.clone()]
        } else if in_scope {
            resolve(vm, &service.hostname)?
        } else {
            table.get(&service.hostname).cloned().into_iter().collect()
        };
        if answers != [service.vip.clone()] {
            lag.push(format!(
                "{}: {} resolves to {answers:?}, not {}",
                vm.name(),
                service.hostname,
                service.vip
            ));
        }
        if !runs_envoy || !in_scope {
            continue;
        }
        for port in &service.ports {
            let cluster = cluster_name(&service.hostname, port.number);
            if service.dns.is_some() {
                // Envoy finds the endpoints itself: it has converged once it has the cluster.
                if !lists_cluster(&envoy_clusters(vm)?, &cluster) {
                    lag.push(format!("{}: Envoy has no cluster {cluster}", vm.name()));
                }
                continue;
            }
            let want: BTreeSet<String> = service
                .endpoints
                .iter()
                .filter(|e| e.healthy)
                .map(|e| format!("{}:{}", e.address, port.number))
                .collect();
            let have = envoy_healthy_endpoints(vm, &cluster)?;
            if have != want {
                lag.push(format!(
                    "{}: Envoy {cluster} has {have:?}, want {want:?}",
                    vm.name()
                ));
            }
        }
    }
    // A VM that serves some service takes connections only once its Envoy's inbound listener
    // is active: the capture sends its exposed ports there (docs/security.md).
    let address = vm.ip.to_string();
    let serves = services
        .iter()
        .any(|service| service.endpoints.iter().any(|e| e.address == address));
    if runs_envoy && serves && !envoy_admin(vm, "listeners")?.contains("inbound|") {
        lag.push(format!(
            "{}: Envoy has no active inbound listener",
            vm.name()
        ));
    }
    // A VM with every process running, that the director says runs and that is not draining,
    // is waited for until its agent reports it healthy and, with an Envoy (every lab VM has an
    // identity), taking mutual TLS through its inbound capture (docs/health.md): before, every
    // Envoy agrees on the endpoints, but not yet on how to call them.
    let draining = vm.root.join("data/virtual-ip-agent/leaving").exists();
    if serves && director_running && !draining && vm.processes.iter().all(|p| p.is_running()) {
        let mine = services
            .iter()
            .flat_map(|service| &service.endpoints)
            .filter(|e| e.address == address);
        for endpoint in mine {
            let not_yet = match (endpoint.healthy, endpoint.plaintext && runs_envoy) {
                (false, _) => "unhealthy",
                (true, true) => "called in plaintext (not captured or not certified yet)",
                (true, false) => continue,
            };
            lag.push(format!(
                "{}: the control plane lists its endpoint {} as {not_yet}",
                vm.name(),
                endpoint.address
            ));
            break;
        }
    }
    Ok(lag)
}

/// Waits until every running addon VM agrees with the control plane.
pub async fn wait(state: &LabState, timeout: Duration) -> Result<()> {
    let last_lag = std::sync::Mutex::new(Vec::new());
    let result = until(timeout, "the mesh to converge", || {
        let last_lag = &last_lag;
        async move {
            let services = registration(state).await?;
            if services.is_empty() {
                bail!("the control plane lists no services yet");
            }
            let running: BTreeSet<String> = state
                .sim()?
                .state()
                .await?
                .deployments
                .into_iter()
                .flat_map(|d| d.instances)
                .filter(|i| i.job_state.as_deref() == Some("running"))
                .map(|i| i.id)
                .collect();
            let mut all = Vec::new();
            for vm in state.vms.iter().filter(|vm| vm.runs_addon()) {
                all.extend(vm_lag(vm, &services, running.contains(&vm.id))?);
            }
            let converged = all.is_empty();
            *last_lag.lock().expect("lag lock") = all;
            Ok(converged)
        }
    })
    .await;
    result.map_err(|e| {
        let lag = last_lag.lock().expect("lag lock");
        let shown: Vec<&String> = lag.iter().take(5).collect();
        anyhow!("{e:#}; still different: {shown:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_healthy_endpoints_of_the_cluster() {
        let text = "\
outbound|9002||a.boshy::10.244.0.12:9002::health_flags::healthy
outbound|9002||a.boshy::10.244.0.13:9002::health_flags::/failed_eds_health
outbound|9002||a.boshy::10.244.0.12:9002::cx_active::0
outbound|9001||a.boshy::10.244.0.20:9001::health_flags::healthy
";
        let healthy = parse_healthy_endpoints(text, "outbound|9002||a.boshy");
        assert_eq!(healthy, BTreeSet::from(["10.244.0.12:9002".to_string()]));
    }

    #[test]
    fn a_cluster_is_listed_with_or_without_hosts() {
        let text = "\
outbound|5432||db.external.boshy::observability_name::outbound|5432||db.external.boshy
outbound|5432||db.external.boshy::default_priority::max_connections::1024
outbound|9002||a.boshy::10.244.0.12:9002::health_flags::healthy
";
        assert!(lists_cluster(text, "outbound|5432||db.external.boshy"));
        assert!(lists_cluster(text, "outbound|9002||a.boshy"));
        assert!(!lists_cluster(text, "outbound|9002||b.boshy"));
    }
}
