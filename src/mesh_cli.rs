//! `boshy mesh status`: what `istioctl proxy-status` is to Istio. Reads one pilot's
//! `GET /v1/proxies` (docs/api.md) and prints a row per connected Envoy, each xDS type
//! `SYNCED`, `STALE`, `NACK` or `NOT SENT`, with the errors of the NACKs below the table; or
//! the JSON as the pilot answered it (`--json`). `boshy mesh describe <hostname>` prints one
//! service from `GET /v1/services/<hostname>`: VIP, ports, endpoints and their health, and
//! the rule configs that have rules for it. `boshy mesh config <instance>` prints what the
//! pilot sends that instance's Envoy now, per type a table of its resources
//! (`GET /v1/proxies/<instance>/config`); `boshy mesh diff <instance>` what it would send
//! against what the Envoy ACKed (`…/diff`), exiting 1 when they differ, like `diff`.
//!
//! Credentials never go on the command line: a client certificate is read from files, a UAA
//! token from the environment variable `--token-env` names (docs/observability.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use crate::names::stream_status::AgentStatus;
use crate::xds::proxy_status::{ProxiesReport, ProxyStatus, SnapshotRef, SyncState};
use crate::xds::resources::ResourceType;
use crate::xds::stream_config::{ProxyConfig, ProxyDiff, ResourceConfig, Summary, TypeDiff};

/// How long the pilot has to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The xDS types the table shows, in its column order.
const COLUMNS: [&str; 4] = ["cds", "lds", "eds", "rds"];

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: MeshCommand,
}

#[derive(Subcommand)]
enum MeshCommand {
    /// Every Envoy connected to a pilot: what each xDS type of its configuration stands at
    /// (SYNCED, STALE, NACK, NOT SENT), when it last answered, and the errors it rejected
    /// configuration with.
    Status(StatusArgs),
    /// One service: its VIP, ports, endpoints and their health, and the rule configs with
    /// traffic rules for it.
    Describe(DescribeArgs),
    /// The pilot's live web console in your browser: serves it on a loopback address, adding
    /// your credentials to what it forwards to the pilot, and prints the URL to open.
    Console(crate::console::local::ConsoleArgs),
    /// What the pilot sends one instance's Envoy now: per type, each resource with its
    /// version, size and summary.
    Config(ConfigArgs),
    /// What the pilot would send one instance's Envoy now against what that Envoy accepted
    /// (ACKed); exits 0 when in sync, 1 when they differ, 2 on trouble.
    Diff(DiffArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The instance, as the BOSH CLI names it: `apricot/3`, `sample/apricot/3`,
    /// `apricot/<instance id>` (or an Envoy's node id).
    instance: String,
    /// Only this type: `listeners`, `clusters`, `routes` or `endpoints` (or `lds`, `cds`,
    /// `rds`, `eds`).
    #[arg(value_name = "TYPE")]
    resource_type: Option<String>,
    #[command(flatten)]
    pilot: PilotConnection,
    /// Print the pilot's JSON as it answered it.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DiffArgs {
    /// The instance, as for `config`.
    instance: String,
    #[command(flatten)]
    pilot: PilotConnection,
    /// Print the pilot's JSON as it answered it.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DescribeArgs {
    /// The service's hostname (`example-httpbin.banana.sample-deployment.boshy`).
    hostname: String,
    #[command(flatten)]
    pilot: PilotConnection,
    /// Print the pilot's JSON as it answered it.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    pilot: PilotConnection,
    /// Print the pilot's JSON as it answered it.
    #[arg(long)]
    json: bool,
}

/// How to reach one pilot's HTTP API and be let in (docs/api.md).
#[derive(clap::Args)]
pub(crate) struct PilotConnection {
    /// The pilot's API: `https://<pilot IP>:8080` (`http://` for a pilot with
    /// `api.insecure_open`).
    #[arg(long, value_name = "URL")]
    pub(crate) pilot: String,
    /// The mesh CA (PEM) the pilot's certificate is checked against.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The name the pilot's certificate is for (`tls_server_name`), whatever address is
    /// dialled.
    #[arg(long, value_name = "NAME", default_value = "bosh-pilot.boshy-istio")]
    server_name: String,
    /// A mesh client certificate (PEM) to present, with `--key`.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Without `--cert`: the environment variable holding a UAA token with `bosh.read` or
    /// `bosh.admin` (never the token itself: a command line is visible to every user).
    #[arg(long, value_name = "VAR", default_value = "BOSH_PILOT_TOKEN")]
    token_env: String,
}

/// Runs the command; its exit code (`diff` says whether the Envoy is in sync).
pub async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        MeshCommand::Config(args) => {
            let only = args
                .resource_type
                .as_deref()
                .map(|word| {
                    ResourceType::from_word(word).with_context(|| {
                        format!("{word}: not listeners, clusters, routes or endpoints")
                    })
                })
                .transpose()?;
            let query = only.map_or(String::new(), |t| format!("?type={}", t.short_name()));
            let body = args
                .pilot
                .get(&format!("{}/config{query}", proxy_path(&args.instance)?))
                .await?;
            if args.json {
                println!("{body}");
            } else {
                let config: ProxyConfig = serde_json::from_str(&body)
                    .context("the pilot's /v1/proxies/…/config is not what this boshy reads")?;
                print!("{}", config_text(&config));
            }
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Diff(args) => {
            // Like `diff`: 1 says "they differ", so trouble is 2.
            let asked = async {
                let path = format!("{}/diff", proxy_path(&args.instance)?);
                let body = args.pilot.get(&path).await?;
                let diff: ProxyDiff = serde_json::from_str(&body)
                    .context("the pilot's /v1/proxies/…/diff is not what this boshy reads")?;
                anyhow::Ok((body, diff))
            };
            match asked.await {
                Ok((body, diff)) => {
                    if args.json {
                        println!("{body}");
                    } else {
                        print!("{}", diff_text(&diff));
                    }
                    Ok(ExitCode::from(if diff.in_sync { 0 } else { 1 }))
                }
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        MeshCommand::Status(args) => {
            let body = args.pilot.get("/v1/proxies").await?;
            if args.json {
                println!("{body}");
            } else {
                let report: ProxiesReport = serde_json::from_str(&body)
                    .context("the pilot's /v1/proxies is not what this boshy reads")?;
                print!("{}", status_table(&report, unix_now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Describe(args) => {
            if !args
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                bail!("{}: not a hostname of the mesh", args.hostname);
            }
            let body = args
                .pilot
                .get(&format!("/v1/services/{}", args.hostname))
                .await?;
            if args.json {
                println!("{body}");
            } else {
                let described: DescribedService = serde_json::from_str(&body)
                    .context("the pilot's /v1/services is not what this boshy reads")?;
                print!("{}", service_text(&described));
            }
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Console(args) => crate::console::local::run(args)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// `/v1/proxies/<instance>`, refusing what cannot be an instance's or a node's name.
fn proxy_path(instance: &str) -> Result<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.~/".contains(c);
    if instance.is_empty() || !instance.chars().all(allowed) {
        bail!("{instance}: not an instance (group/index, deployment/group/index) or a node id");
    }
    Ok(format!("/v1/proxies/{instance}"))
}

/// The first line of `config` and `diff`: the instance, its ADS variant and the snapshot.
fn proxy_line(proxy: &ProxyStatus, snapshot: SnapshotRef) -> String {
    let deployment = proxy
        .deployment
        .as_deref()
        .map_or(String::new(), |d| format!(" ({d})"));
    format!(
        "{}{deployment}, {} ADS, snapshot {} (catalog and rules version {})",
        proxy.name(),
        proxy.ads,
        snapshot.seq,
        snapshot.version
    )
}

/// What the pilot sends one Envoy, for people: per type a table of its resources, each row
/// followed by its details (filter chains, localities, virtual hosts and their routes).
pub(crate) fn config_text(config: &ProxyConfig) -> String {
    let mut out = format!("{}\n", proxy_line(&config.proxy, config.snapshot));
    for of_type in &config.types {
        let Some(resource_type) = ResourceType::from_word(&of_type.xds_type) else {
            continue;
        };
        let title = format!(
            "\n{} ({})",
            resource_type.plural().to_uppercase(),
            of_type.xds_type
        );
        if of_type.held_back {
            out.push_str(&format!(
                "{title}: held back until the VM's scope is known (its Envoy keeps what it has)\n"
            ));
            continue;
        }
        out.push_str(&format!("{title}: {}\n", of_type.resources.len()));
        if of_type.resources.is_empty() {
            continue;
        }
        let columns = summary_columns(resource_type);
        let header: Vec<&str> = ["NAME", "VERSION", "BYTES"]
            .into_iter()
            .chain(columns.iter().copied())
            .collect();
        let (rows, details): (Vec<Vec<String>>, Vec<Vec<String>>) = of_type
            .resources
            .iter()
            .map(|resource| resource_row(resource, columns.len()))
            .unzip();
        let table = aligned(&header, &rows);
        let mut lines = table.lines();
        out.push_str(&format!("{}\n", lines.next().unwrap_or_default()));
        for (line, details) in lines.zip(details) {
            out.push_str(&format!("{line}\n"));
            for detail in details {
                out.push_str(&format!("  {detail}\n"));
            }
        }
    }
    out
}

/// The summary columns of a type's table.
fn summary_columns(resource_type: ResourceType) -> &'static [&'static str] {
    match resource_type {
        ResourceType::Cluster => &["TYPE", "LB", "TLS", "ENDPOINTS"],
        ResourceType::Endpoint => &["ENDPOINTS"],
        ResourceType::Listener => &["ADDRESS"],
        ResourceType::Route => &["VIRTUAL HOSTS"],
    }
}

/// A resource's row (name, version, bytes, then `columns` summary cells) and the lines of
/// detail below it.
fn resource_row(resource: &ResourceConfig, columns: usize) -> (Vec<String>, Vec<String>) {
    let (cells, details) = match &resource.summary {
        Summary::Cluster {
            discovery,
            lb_policy,
            tls,
            endpoints,
        } => (
            vec![
                discovery.clone(),
                lb_policy.clone(),
                if *tls { "yes" } else { "no" }.to_string(),
                endpoints.map_or("-".into(), |n| n.to_string()),
            ],
            Vec::new(),
        ),
        Summary::Endpoints { localities } => {
            let total: usize = localities.iter().map(|l| l.endpoints.len()).sum();
            let details = localities
                .iter()
                .map(|locality| {
                    let priority = match locality.priority {
                        0 => String::new(),
                        p => format!(" (priority {p})"),
                    };
                    format!(
                        "{}{priority}: {}",
                        locality.zone,
                        locality.endpoints.join(", ")
                    )
                })
                .collect();
            (vec![total.to_string()], details)
        }
        Summary::Listener {
            address,
            filter_chains,
        } => (vec![address.clone()], filter_chains.clone()),
        Summary::Routes { virtual_hosts } => {
            let details = virtual_hosts
                .iter()
                .flat_map(|host| {
                    let domains = format!("{} ({})", host.name, host.domains.join(", "));
                    std::iter::once(domains)
                        .chain(host.routes.iter().map(|route| format!("  {route}")))
                })
                .collect();
            (vec![virtual_hosts.len().to_string()], details)
        }
        Summary::Undecodable { error } => (
            vec!["-".to_string(); columns],
            vec![format!("undecodable: {error}")],
        ),
    };
    let row = [
        resource.name.clone(),
        resource.version.clone(),
        resource.bytes.to_string(),
    ]
    .into_iter()
    .chain(cells)
    .collect();
    (row, details)
}

/// What the pilot would send one Envoy against what it ACKed, for people: per type what would
/// be added (`+`), removed (`-`) and changed (`~`, from the ACKed version to the new one),
/// and the NACK standing, if any.
pub(crate) fn diff_text(diff: &ProxyDiff) -> String {
    let verdict = if diff.in_sync { "in sync" } else { "differs" };
    let mut out = format!("{}: {verdict}\n", proxy_line(&diff.proxy, diff.snapshot));
    for of_type in &diff.types {
        out.push_str(&type_diff_text(of_type));
    }
    out
}

fn type_diff_text(diff: &TypeDiff) -> String {
    let name = diff.xds_type.to_uppercase();
    if diff.held_back {
        return format!("{name}  held back until the VM's scope is known\n");
    }
    if diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty() {
        let mut out = format!("{name}  in sync\n");
        out.extend(nack_line(diff));
        return out;
    }
    let mut out = format!(
        "{name}  {} to add, {} to remove, {} changed\n",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    );
    for added in &diff.added {
        out.push_str(&format!("  + {} {}\n", added.name, added.version));
    }
    for removed in &diff.removed {
        out.push_str(&format!("  - {} {}\n", removed.name, removed.version));
    }
    for changed in &diff.changed {
        out.push_str(&format!(
            "  ~ {} {} → {}\n",
            changed.name, changed.acked_version, changed.version
        ));
    }
    out.extend(nack_line(diff));
    out
}

/// The NACK standing for the type, on one line.
fn nack_line(diff: &TypeDiff) -> Option<String> {
    let nack = diff.nack.as_ref()?;
    let resource = nack
        .resource
        .as_deref()
        .map_or(String::new(), |r| format!(" {r}"));
    Some(format!(
        "  NACK of version {}{resource}: {}\n",
        nack.version, nack.error
    ))
}

/// `GET /v1/services/<hostname>`, the parts the text shows.
#[derive(Debug, Deserialize)]
pub struct DescribedService {
    service: RegisteredService,
    rule_configs: Vec<String>,
    /// The compiled security of the service's instance group (`traffic::security`), read
    /// loosely: the text names the modes and policies only.
    #[serde(default)]
    security: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RegisteredService {
    hostname: String,
    vip: String,
    deployment: String,
    instance_group: String,
    job: String,
    ports: Vec<RegisteredPort>,
    endpoints: Vec<RegisteredEndpoint>,
    service_entry: Option<String>,
    workload_group: Option<String>,
    dns: Option<DnsEndpoints>,
}

#[derive(Debug, Deserialize)]
struct RegisteredPort {
    name: String,
    number: u16,
    protocol: String,
}

#[derive(Debug, Deserialize)]
struct RegisteredEndpoint {
    address: String,
    az: Option<String>,
    instance: String,
    index: Option<u32>,
    healthy: bool,
}

#[derive(Debug, Deserialize)]
struct DnsEndpoints {
    resolution: String,
    endpoints: Vec<DnsEndpoint>,
}

#[derive(Debug, Deserialize)]
struct DnsEndpoint {
    address: String,
}

/// The text of one service for people.
pub fn service_text(described: &DescribedService) -> String {
    let service = &described.service;
    let source = match (&service.service_entry, &service.workload_group) {
        (Some(entry), _) => format!("ServiceEntry {entry}"),
        (None, Some(group)) => format!("WorkloadGroup {group}"),
        (None, None) => format!(
            "deployment {}, instance group {}, job {}",
            service.deployment, service.instance_group, service.job
        ),
    };
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|p| format!("{} {} ({})", p.name, p.number, p.protocol))
        .collect();
    let rules = if described.rule_configs.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (their verdicts: GET /v1/rules)",
            described.rule_configs.join(", ")
        )
    };
    let mut out = format!(
        "{}\nVIP        {}\nSOURCE     {source}\nPORTS      {}\nRULES      {rules}\n",
        service.hostname,
        service.vip,
        ports.join(", ")
    );
    if let Some(security) = &described.security {
        out.push_str(&security_text(security));
    }
    if let Some(dns) = &service.dns {
        let names: Vec<&str> = dns.endpoints.iter().map(|e| e.address.as_str()).collect();
        out.push_str(&format!(
            "ENDPOINTS  resolved by each Envoy ({}): {}\n",
            dns.resolution,
            names.join(", ")
        ));
        return out;
    }
    let healthy = service.endpoints.iter().filter(|e| e.healthy).count();
    out.push_str(&format!(
        "ENDPOINTS  {healthy} of {} healthy\n",
        service.endpoints.len()
    ));
    if !service.endpoints.is_empty() {
        let rows: Vec<Vec<String>> = service
            .endpoints
            .iter()
            .map(|e| {
                let instance = match e.index {
                    Some(index) => format!("{}/{index} ({})", service.instance_group, e.instance),
                    None => e.instance.clone(),
                };
                let health = if e.healthy { "healthy" } else { "UNHEALTHY" };
                vec![
                    e.address.clone(),
                    e.az.clone().unwrap_or_else(|| "-".into()),
                    instance,
                    health.to_string(),
                ]
            })
            .collect();
        for line in aligned(&["ADDRESS", "AZ", "INSTANCE", "HEALTH"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// Who may call a service: its instance group's mutual TLS modes and, per authorization
/// policy, its action and the callers its rules name (`traffic::security` as JSON).
fn security_text(security: &serde_json::Value) -> String {
    let upper = |mode: &serde_json::Value| mode.as_str().unwrap_or("?").to_uppercase();
    let mut mtls = upper(&security["mtls"]);
    if let Some(ports) = security["port_mtls"].as_object() {
        for (port, mode) in ports {
            mtls.push_str(&format!(", port {port} {}", upper(mode)));
        }
    }
    let policies = security["policies"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let mut out = format!("MTLS       {mtls}\n");
    if policies.is_empty() {
        out.push_str("CALLERS    any caller the mTLS mode admits (no AuthorizationPolicy)\n");
    }
    for (i, policy) in policies.iter().enumerate() {
        let label = if i == 0 { "CALLERS" } else { "" };
        let rules = policy["rules"].as_array().map_or(&[][..], Vec::as_slice);
        let callers: Vec<String> = rules
            .iter()
            .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
            .flat_map(|source| {
                ["principals", "deployments", "ip_blocks"]
                    .into_iter()
                    .flat_map(move |key| source[key].as_array().cloned().unwrap_or_default())
            })
            .map(|name| match &name {
                serde_json::Value::String(any) if any == "Any" => "*".to_string(),
                serde_json::Value::String(block) => block.clone(),
                serde_json::Value::Object(matched) => match matched.iter().next() {
                    Some((kind, value)) => {
                        let value = value.as_str().unwrap_or("?");
                        match kind.as_str() {
                            "Prefix" => format!("{value}*"),
                            "Suffix" => format!("*{value}"),
                            _ => value.to_string(),
                        }
                    }
                    None => "?".to_string(),
                },
                other => other.to_string(),
            })
            .collect();
        let from = match (rules.is_empty(), callers.is_empty()) {
            (true, _) => "no rules: matches nothing".to_string(),
            (false, true) => "from anyone".to_string(),
            (false, false) => format!("from {}", callers.join(", ")),
        };
        out.push_str(&format!(
            "{label:<10} {} {}/{}: {from}\n",
            upper(&policy["action"]),
            policy["config"].as_str().unwrap_or("?"),
            policy["name"].as_str().unwrap_or("?"),
        ));
    }
    out
}

impl PilotConnection {
    /// A connection given by another command's flags (`boshy workload configure` asks every
    /// pilot of a list in turn; `boshy join`/`leave` read theirs from files). An empty
    /// `token_env` reads no token from the environment.
    pub(crate) fn new(
        pilot: &str,
        ca: PathBuf,
        server_name: &str,
        client: Option<(PathBuf, PathBuf)>,
        token_env: &str,
    ) -> PilotConnection {
        let (cert, key) = client.unzip();
        PilotConnection {
            pilot: pilot.to_string(),
            ca: Some(ca),
            server_name: server_name.to_string(),
            cert,
            key,
            token_env: token_env.to_string(),
        }
    }

    /// A client of the pilot with the operator's credentials.
    pub(crate) fn client(&self) -> Result<PilotClient> {
        let mut client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if self.pilot.starts_with("https://") {
            let Some(ca) = &self.ca else {
                bail!("--ca: an https pilot needs the mesh CA to be checked against");
            };
            let identity = self.cert.as_deref().zip(self.key.as_deref());
            let tls = crate::tls::api_client_config(ca, &self.server_name, identity)?;
            client = client.use_preconfigured_tls(tls);
        } else if !self.pilot.starts_with("http://") {
            bail!("--pilot {}: not an http:// or https:// URL", self.pilot);
        }
        let mut token = None;
        if self.cert.is_none() && !self.token_env.is_empty() {
            if let Some(value) = std::env::var(&self.token_env)
                .ok()
                .filter(|t| !t.is_empty())
            {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("bearer {value}"))
                    .with_context(|| format!("${}: not a token", self.token_env))?;
                value.set_sensitive(true);
                token = Some(value);
            }
        }
        Ok(PilotClient {
            client: client.build().context("HTTP client")?,
            base: self.pilot.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The body of `GET <pilot><path>`; an error with the pilot's one-line reason otherwise.
    async fn get(&self, path: &str) -> Result<String> {
        let (url, response) = self.client()?.get(path).await?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", body.trim());
        }
        Ok(body)
    }
}

#[cfg(test)]
impl PilotConnection {
    /// A pilot with `api.insecure_open`, at `pilot` (`http://...`), asked without credentials.
    pub(crate) fn plain(pilot: &str) -> PilotConnection {
        PilotConnection {
            pilot: pilot.to_string(),
            ca: None,
            server_name: String::new(),
            cert: None,
            key: None,
            token_env: "BOSHY_TEST_UNSET_TOKEN".to_string(),
        }
    }
}

/// Requests to one pilot's API with the operator's credentials.
pub(crate) struct PilotClient {
    client: reqwest::Client,
    /// `scheme://host:port`, no trailing slash.
    base: String,
    /// `bearer <token>`, when the credential is a token.
    token: Option<reqwest::header::HeaderValue>,
}

impl PilotClient {
    /// `GET <pilot><path>`: the URL asked and the response, whatever its status.
    pub(crate) async fn get(&self, path: &str) -> Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        Ok((url, response))
    }

    /// `POST <pilot><path>` with a JSON body: the URL asked and the response, whatever its
    /// status (an error only when no answer came: the caller may then ask another pilot).
    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.post(&url).json(body);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        Ok((url, response))
    }

    /// Sends `Bearer <token>` with every request instead of the operator's credentials (a
    /// join token). The header is marked sensitive: never logged by the HTTP stack.
    pub(crate) fn with_bearer(mut self, token: &crate::config::Secret) -> Result<PilotClient> {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| anyhow::anyhow!("the token is not a valid HTTP header value"))?;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The table for people: a row per Envoy, sorted by deployment and name, then each standing
/// NACK with its resource and error. `now` (Unix seconds) gives the ages.
pub fn status_table(report: &ProxiesReport, now: u64) -> String {
    let mut proxies: Vec<&ProxyStatus> = report.proxies.iter().collect();
    proxies.sort_by_key(|p| (p.deployment.clone(), p.name()));
    let header = [
        "NAME",
        "DEPLOYMENT",
        "CDS",
        "LDS",
        "EDS",
        "RDS",
        "LAST SYNC",
        "BEHIND",
    ];
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let state = |t: &str| p.types.get(t).map_or(SyncState::NotSent, |s| s.state);
            let mut row = vec![p.name(), p.deployment.clone().unwrap_or_else(|| "-".into())];
            row.extend(COLUMNS.map(|t| state(t).label().to_string()));
            row.push(
                p.last_sync
                    .map_or("never".into(), |at| age(now.saturating_sub(at))),
            );
            row.push(p.snapshots_behind.to_string());
            row
        })
        .collect();
    let mut out = match report.snapshot {
        Some(snapshot) => format!(
            "pilot snapshot {} (catalog and rules version {}), {} Envoys\n",
            snapshot.seq,
            snapshot.version,
            proxies.len()
        ),
        None => "pilot has no snapshot yet (no catalog from the director)\n".to_string(),
    };
    out.push_str(&aligned(&header, &rows));
    let nacks: Vec<String> = proxies
        .iter()
        .flat_map(|p| {
            p.types.iter().filter_map(move |(xds_type, status)| {
                let nack = status.last_nack.as_ref()?;
                (status.state == SyncState::Nack).then(|| {
                    let resource = nack
                        .resource
                        .as_deref()
                        .map_or(String::new(), |r| format!(" {r}"));
                    format!(
                        "{} {}{resource} (version {}): {}\n",
                        p.name(),
                        xds_type.to_uppercase(),
                        nack.version,
                        nack.error
                    )
                })
            })
        })
        .collect();
    if !nacks.is_empty() {
        out.push_str("\nNACK (the Envoy runs what it accepted before):\n");
        out.extend(nacks);
    }
    if !report.agents.is_empty() {
        let rows: Vec<Vec<String>> = report.agents.iter().map(agent_row).collect();
        out.push('\n');
        out.push_str(&aligned(
            &["AGENT", "ADDRESS", "TABLE", "HEALTH CLAIM"],
            &rows,
        ));
    }
    out
}

/// A name-table stream's row: the instance it claims, its address, whether it has the
/// table served now, and whether its health reports count.
fn agent_row(agent: &AgentStatus) -> Vec<String> {
    let instance = match (&agent.deployment, &agent.instance_id) {
        (Some(deployment), Some(id)) => format!("{deployment}/{id}"),
        _ => "(no instance claimed)".into(),
    };
    let table = match agent.table_version {
        _ if agent.table_current => "current".to_string(),
        Some(version) => format!("OLD ({version})"),
        None => "NONE".to_string(),
    };
    let claim = match (&agent.refusal, agent.verified) {
        (Some(refusal), _) => format!("REFUSED: {refusal}"),
        (None, true) => "verified".into(),
        (None, false) => "-".into(),
    };
    vec![instance, agent.address.clone(), table, claim]
}

/// `header` and `rows` in columns two spaces apart.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// An age as the table shows it: `42s`, `5m`, `3h`, `2d`.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::proxy_status::{Nack, SnapshotRef, TypeStatus};
    use std::collections::BTreeMap;

    fn proxy(group: &str, index: Option<u32>, types: &[(&str, SyncState)]) -> ProxyStatus {
        ProxyStatus {
            node: format!("{group}-node"),
            ads: "delta".into(),
            address: Some("10.0.0.5".into()),
            deployment: Some("banana".into()),
            instance_group: Some(group.into()),
            instance_id: Some("6f1c".into()),
            index,
            connected_at: 900,
            last_sync: Some(958),
            synced_snapshot: 7,
            snapshots_behind: 0,
            types: types
                .iter()
                .map(|(t, state)| {
                    let status = TypeStatus {
                        state: *state,
                        ..TypeStatus::default()
                    };
                    (t.to_string(), status)
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_envoy_and_the_nacks_below() {
        use SyncState::{Stale, Synced};
        let mut web = proxy(
            "web",
            Some(0),
            &[
                ("cds", Synced),
                ("eds", Synced),
                ("lds", SyncState::Nack),
                ("rds", Stale),
            ],
        );
        web.types.get_mut("lds").unwrap().last_nack = Some(Nack {
            version: "abc".into(),
            resource: Some("169.254.255.2_80".into()),
            error: "duplicate address".into(),
            at: 950,
        });
        let mut old = proxy("api", None, &[("cds", Synced)]);
        old.last_sync = None;
        old.snapshots_behind = 2;
        // A NACK since overcome is not shown.
        old.types.get_mut("cds").unwrap().last_nack = web.types["lds"].last_nack.clone();
        let agent = |id: Option<&str>, version, current, refusal: Option<&str>| AgentStatus {
            address: "10.0.0.5".into(),
            deployment: id.map(|_| "banana".to_string()),
            instance_id: id.map(str::to_string),
            verified: id.is_some() && refusal.is_none(),
            refusal: refusal.map(str::to_string),
            connected_at: 0,
            table_version: version,
            table_sent_at: None,
            table_current: current,
        };
        let report = ProxiesReport {
            snapshot: Some(SnapshotRef {
                seq: 9,
                version: 42,
            }),
            proxies: vec![web, old],
            agents: vec![
                agent(Some("6f1c"), Some(42), true, None),
                agent(
                    Some("77aa"),
                    Some(41),
                    false,
                    Some("not listed at 10.0.0.5"),
                ),
                agent(None, None, false, None),
            ],
        };
        assert_eq!(
            status_table(&report, 1000),
            "pilot snapshot 9 (catalog and rules version 42), 2 Envoys\n\
             NAME      DEPLOYMENT  CDS     LDS       EDS       RDS       LAST SYNC  BEHIND\n\
             api/6f1c  banana      SYNCED  NOT SENT  NOT SENT  NOT SENT  never      2\n\
             web/0     banana      SYNCED  NACK      SYNCED    STALE     42s        0\n\
             \n\
             NACK (the Envoy runs what it accepted before):\n\
             web/0 LDS 169.254.255.2_80 (version abc): duplicate address\n\
             \n\
             AGENT                  ADDRESS   TABLE     HEALTH CLAIM\n\
             banana/6f1c            10.0.0.5  current   verified\n\
             banana/77aa            10.0.0.5  OLD (41)  REFUSED: not listed at 10.0.0.5\n\
             (no instance claimed)  10.0.0.5  NONE      -\n"
        );
    }

    #[test]
    fn a_service_is_described_with_its_endpoints_and_rules() {
        let json = serde_json::json!({
            "service": {
                "hostname": "web.banana.sample.boshy",
                "vip": "169.254.255.3",
                "deployment": "sample",
                "instance_group": "banana",
                "job": "web",
                "ports": [{"name": "http", "number": 8080, "protocol": "http"}],
                "endpoints": [
                    {"address": "10.0.0.4", "az": "z1", "instance": "6f1c", "index": 0,
                     "healthy": true, "labels": {}},
                    {"address": "10.0.0.5", "az": null, "instance": "77aa", "index": null,
                     "healthy": false, "labels": {}}
                ]
            },
            "rule_configs": ["reviews", "web-retries"],
            "security": {
                "mtls": "Strict",
                "port_mtls": {"8443": "Permissive"},
                "policies": [
                    {"config": "sample-rules", "name": "no-posts", "action": "Deny",
                     "rules": [{"from": [], "to": [{"methods": [{"Exact": "POST"}]}], "when": []}]},
                    {"config": "sample-rules", "name": "apricot-only", "action": "Allow",
                     "rules": [{"from": [{"principals": [{"Exact": "boshy/deployment/sample/instance_group/apricot"}],
                                          "deployments": [{"Prefix": "cf-"}], "ip_blocks": []}],
                                "to": [], "when": []}]},
                    {"config": "lockdown", "name": "nothing", "action": "Allow", "rules": []}
                ]
            }
        });
        let described: DescribedService = serde_json::from_value(json).unwrap();
        assert_eq!(
            service_text(&described),
            "web.banana.sample.boshy\n\
             VIP        169.254.255.3\n\
             SOURCE     deployment sample, instance group banana, job web\n\
             PORTS      http 8080 (http)\n\
             RULES      reviews, web-retries (their verdicts: GET /v1/rules)\n\
             MTLS       STRICT, port 8443 PERMISSIVE\n\
             CALLERS    DENY sample-rules/no-posts: from anyone\n\
             \x20          ALLOW sample-rules/apricot-only: from boshy/deployment/sample/instance_group/apricot, cf-*\n\
             \x20          ALLOW lockdown/nothing: no rules: matches nothing\n\
             ENDPOINTS  1 of 2 healthy\n\
             \x20 ADDRESS   AZ  INSTANCE         HEALTH\n\
             \x20 10.0.0.4  z1  banana/0 (6f1c)  healthy\n\
             \x20 10.0.0.5  -   77aa             UNHEALTHY\n"
        );
    }

    #[test]
    fn a_service_resolved_by_dns_lists_its_names() {
        let json = serde_json::json!({
            "service": {
                "hostname": "db.example.com",
                "vip": "169.254.255.9",
                "deployment": "", "instance_group": "", "job": "",
                "ports": [{"name": "tcp", "number": 5432, "protocol": "tcp"}],
                "endpoints": [],
                "service_entry": "db/external-db",
                "dns": {"resolution": "DNS", "endpoints": [{"address": "db.example.com", "az": null, "labels": {}}]}
            },
            "rule_configs": []
        });
        let described: DescribedService = serde_json::from_value(json).unwrap();
        let text = service_text(&described);
        assert!(
            text.contains("SOURCE     ServiceEntry db/external-db\n"),
            "{text}"
        );
        assert!(text.contains("RULES      none\n"), "{text}");
        assert!(
            text.ends_with("ENDPOINTS  resolved by each Envoy (DNS): db.example.com\n"),
            "{text}"
        );
    }

    fn resource(name: &str, summary: Summary) -> ResourceConfig {
        ResourceConfig {
            name: name.into(),
            version: "0123456789abcdef".into(),
            bytes: 312,
            summary,
        }
    }

    const SNAPSHOT: SnapshotRef = SnapshotRef {
        seq: 9,
        version: 42,
    };

    #[test]
    fn the_config_is_a_table_per_type_with_each_resources_details_below_it() {
        use crate::xds::stream_config::{LocalityEndpoints, TypeResources, VirtualHostRoutes};
        let of_type = |xds_type: &str, resources| TypeResources {
            xds_type: xds_type.into(),
            held_back: false,
            resources,
        };
        let web = "outbound|80||web.g.d.boshy";
        let config = ProxyConfig {
            proxy: proxy("apricot", Some(3), &[]),
            snapshot: SNAPSHOT,
            types: vec![
                of_type(
                    "cds",
                    vec![
                        resource(
                            web,
                            Summary::Cluster {
                                discovery: "EDS".into(),
                                lb_policy: "LEAST_REQUEST".into(),
                                tls: true,
                                endpoints: Some(2),
                            },
                        ),
                        resource(
                            "broken",
                            Summary::Undecodable {
                                error: "bad wire type".into(),
                            },
                        ),
                    ],
                ),
                of_type(
                    "eds",
                    vec![resource(
                        web,
                        Summary::Endpoints {
                            localities: vec![
                                LocalityEndpoints {
                                    zone: "z1".into(),
                                    priority: 0,
                                    endpoints: vec!["10.0.0.4:80 HEALTHY".into()],
                                },
                                LocalityEndpoints {
                                    zone: "-".into(),
                                    priority: 1,
                                    endpoints: vec!["10.0.0.5:80 UNHEALTHY".into()],
                                },
                            ],
                        },
                    )],
                ),
                TypeResources {
                    held_back: true,
                    ..of_type("lds", Vec::new())
                },
                of_type(
                    "rds",
                    vec![resource(
                        web,
                        Summary::Routes {
                            virtual_hosts: vec![VirtualHostRoutes {
                                name: "web".into(),
                                domains: vec!["web.g.d.boshy".into(), "169.254.255.2".into()],
                                routes: vec![format!("prefix / → {web}")],
                            }],
                        },
                    )],
                ),
            ],
        };
        assert_eq!(
            config_text(&config),
            "apricot/3 (banana), delta ADS, snapshot 9 (catalog and rules version 42)\n\
             \n\
             CLUSTERS (cds): 2\n\
             NAME                        VERSION           BYTES  TYPE  LB             TLS  ENDPOINTS\n\
             outbound|80||web.g.d.boshy  0123456789abcdef  312    EDS   LEAST_REQUEST  yes  2\n\
             broken                      0123456789abcdef  312    -     -              -    -\n\
             \x20 undecodable: bad wire type\n\
             \n\
             ENDPOINTS (eds): 1\n\
             NAME                        VERSION           BYTES  ENDPOINTS\n\
             outbound|80||web.g.d.boshy  0123456789abcdef  312    2\n\
             \x20 z1: 10.0.0.4:80 HEALTHY\n\
             \x20 - (priority 1): 10.0.0.5:80 UNHEALTHY\n\
             \n\
             LISTENERS (lds): held back until the VM's scope is known (its Envoy keeps what it has)\n\
             \n\
             ROUTES (rds): 1\n\
             NAME                        VERSION           BYTES  VIRTUAL HOSTS\n\
             outbound|80||web.g.d.boshy  0123456789abcdef  312    1\n\
             \x20 web (web.g.d.boshy, 169.254.255.2)\n\
             \x20   prefix / → outbound|80||web.g.d.boshy\n"
        );
    }

    #[test]
    fn a_diff_says_what_would_change_per_type_and_the_nack_standing() {
        use crate::xds::stream_config::{Changed, Versioned};
        let same = |xds_type: &str| TypeDiff {
            xds_type: xds_type.into(),
            held_back: false,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            nack: None,
        };
        let versioned = |name: &str, version: &str| Versioned {
            name: name.into(),
            version: version.into(),
        };
        let mut diff = ProxyDiff {
            proxy: proxy("apricot", Some(3), &[]),
            snapshot: SNAPSHOT,
            in_sync: true,
            types: vec![same("cds"), same("lds")],
        };
        assert_eq!(
            diff_text(&diff),
            "apricot/3 (banana), delta ADS, snapshot 9 (catalog and rules version 42): in sync\n\
             CDS  in sync\n\
             LDS  in sync\n"
        );
        diff.in_sync = false;
        diff.types[0] = TypeDiff {
            added: vec![versioned("outbound|80||new.g.d.boshy", "3f2a")],
            removed: vec![versioned("outbound|80||old.g.d.boshy", "1b2c")],
            changed: vec![Changed {
                name: "outbound|80||web.g.d.boshy".into(),
                acked_version: "1b2c".into(),
                version: "3f2a".into(),
            }],
            nack: Some(crate::xds::proxy_status::Nack {
                version: "42".into(),
                resource: Some("outbound|80||web.g.d.boshy".into()),
                error: "bad cluster".into(),
                at: 0,
            }),
            ..same("cds")
        };
        diff.types[1].held_back = true;
        assert_eq!(
            diff_text(&diff),
            "apricot/3 (banana), delta ADS, snapshot 9 (catalog and rules version 42): differs\n\
             CDS  1 to add, 1 to remove, 1 changed\n\
             \x20 + outbound|80||new.g.d.boshy 3f2a\n\
             \x20 - outbound|80||old.g.d.boshy 1b2c\n\
             \x20 ~ outbound|80||web.g.d.boshy 1b2c → 3f2a\n\
             \x20 NACK of version 42 outbound|80||web.g.d.boshy: bad cluster\n\
             LDS  held back until the VM's scope is known\n"
        );
    }

    #[test]
    fn an_instance_goes_in_the_path_as_it_is_and_nothing_else_does() {
        assert_eq!(
            proxy_path("sample/apricot/3").unwrap(),
            "/v1/proxies/sample/apricot/3"
        );
        assert_eq!(
            proxy_path("sidecar~10.0.0.5~apricot/6f1c~sample").unwrap(),
            "/v1/proxies/sidecar~10.0.0.5~apricot/6f1c~sample"
        );
        for bad in ["", "apricot/3?type=x", "a b", "../x#"] {
            assert!(proxy_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pilot_without_a_snapshot_says_so() {
        let report = ProxiesReport {
            snapshot: None,
            proxies: Vec::new(),
            agents: Vec::new(),
        };
        assert!(status_table(&report, 0).starts_with("pilot has no snapshot yet"));
    }

    #[test]
    fn names_are_bosh_instance_names_when_the_node_says_them() {
        let mut p = proxy("web", Some(3), &[]);
        assert_eq!(p.name(), "web/3");
        p.index = None;
        assert_eq!(p.name(), "web/6f1c");
        p.instance_group = None;
        assert_eq!(p.name(), "web-node");
        p.node.clear();
        assert_eq!(p.name(), "(no node yet)");
    }

    #[test]
    fn ages_are_short() {
        let ages = [0, 59, 60, 3599, 3600, 86_399, 86_400].map(age);
        assert_eq!(ages, ["0s", "59s", "1m", "59m", "1h", "23h", "1d"]);
    }
}
