//! Every subcommand's config file. Errors name the file and the key that was wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Reads a YAML (or JSON) config file into `T`; an error names the file and the key path.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config file {}: cannot read", path.display()))?;
    parse(&text, path)
}

/// Parses config text; `origin` is only used to name the source in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        anyhow::anyhow!(
            "config file {}: key `{}`: {}",
            origin.display(),
            key,
            err.into_inner()
        )
    })
}

/// `boshy pilot` (the bosh-pilot job).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotConfig {
    pub director: DirectorConfig,
    #[serde(default = "default_tld")]
    pub tld: String,
    #[serde(default = "default_vip_cidr")]
    pub virtual_ip_cidr: Ipv4Net,
    /// A released VIP is not handed to another service for this long (far longer than any
    /// DNS TTL or client cache), unless the pool would otherwise be exhausted.
    #[serde(default = "default_vip_quarantine_seconds")]
    pub vip_quarantine_seconds: u64,
    /// Where VIP assignments are kept: `director` (a director config shared by every
    /// replica; the default) or `file` (`vip_state_path`; one pilot alone, for tests and tools).
    #[serde(default)]
    pub vip_store: VipStoreKind,
    /// The VIP state file of `vip_store: file`.
    #[serde(default)]
    pub vip_state_path: Option<PathBuf>,
    #[serde(default)]
    pub listen: PilotListen,
    /// Mutual TLS on the xDS and name-table ports. Required unless `insecure_plaintext`.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Serve xDS and the name table without TLS to anyone who connects; for tests only,
    /// logged as a warning at every start.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Who may read the HTTP API (docs/api.md).
    #[serde(default)]
    pub api: ApiConfig,
    /// Workload identities (docs/security.md): the pilot signs the VMs' certificate requests.
    /// Absent: workload identity is off.
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    /// What Envoys report for the request metrics (docs/telemetry.md).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// VMs outside BOSH joining WorkloadGroups (docs/workloads.md). Absent: joins are
    /// refused (404) and no registration store is read.
    #[serde(default)]
    pub workloads: Option<WorkloadsConfig>,
}

/// `workloads`: join tokens, registrations and their heartbeats (docs/workloads.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsConfig {
    /// The private key of the mesh CA (`tls.ca_cert_path`): a joining VM's certificate is a
    /// mesh client certificate, as every BOSH VM's is.
    pub mesh_ca_private_key: PathBuf,
    /// How often agents of registered VMs report (their heartbeat), as they are told.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// No heartbeat for this long: the VM's endpoint is out of every Envoy.
    #[serde(default = "default_workload_ttl_seconds")]
    pub ttl_seconds: u64,
    /// No heartbeat for this long: the registration is removed from the store.
    #[serde(default = "default_deregister_after_seconds")]
    pub deregister_after_seconds: u64,
    /// The lifetime of a joined VM's certificate.
    #[serde(default = "default_workload_certificate_ttl")]
    pub certificate_ttl_seconds: u64,
    /// The longest lifetime a join token may be given.
    #[serde(default = "default_max_token_ttl")]
    pub max_token_ttl_seconds: u64,
}

fn default_heartbeat_seconds() -> u64 {
    10
}

fn default_workload_ttl_seconds() -> u64 {
    30
}

fn default_deregister_after_seconds() -> u64 {
    600
}

fn default_workload_certificate_ttl() -> u64 {
    7 * 24 * 3600
}

fn default_max_token_ttl() -> u64 {
    7 * 24 * 3600
}

/// The pilot's side of the request metrics (docs/telemetry.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Every Envoy logs each request and connection to its VM's agent, which serves them as
    /// metrics labelled with BOSH identities. On unless turned off.
    #[serde(default = "default_true")]
    pub request_metrics: bool,
    /// Zipkin tracing on every Envoy; absent, none.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            request_metrics: true,
            tracing: None,
        }
    }
}

/// Where Envoys send spans, and how many requests they trace (docs/telemetry.md, "Tracing").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// `host:port` of a collector's Zipkin v2 HTTP API.
    pub zipkin_collector: String,
    #[serde(default = "default_zipkin_path")]
    pub collector_path: String,
    /// Percent of the requests no caller decided for (0 to 100).
    #[serde(default = "default_sampling_percent")]
    pub sampling_percent: f64,
}

fn default_zipkin_path() -> String {
    "/api/v2/spans".to_string()
}

fn default_sampling_percent() -> f64 {
    1.0
}

impl TelemetryConfig {
    /// What Envoys report, or which key of `config_path` is wrong.
    pub(crate) fn resolve(&self, config_path: &Path) -> Result<crate::xds::telemetry::Telemetry> {
        let tracing = match &self.tracing {
            None => None,
            Some(tracing) => {
                let at = |key: &str| {
                    format!(
                        "config file {}: key `telemetry.tracing.{key}`",
                        config_path.display()
                    )
                };
                let Some(collector) =
                    crate::xds::telemetry::Collector::parse(&tracing.zipkin_collector)
                else {
                    bail!(
                        "{}: {:?} is not host:port",
                        at("zipkin_collector"),
                        crate::text::clip(&tracing.zipkin_collector)
                    );
                };
                if !(0.0..=100.0).contains(&tracing.sampling_percent) {
                    bail!(
                        "{}: {} is not a percentage (0 to 100)",
                        at("sampling_percent"),
                        tracing.sampling_percent
                    );
                }
                if !tracing.collector_path.starts_with('/') {
                    bail!("{}: a path starts with /", at("collector_path"));
                }
                Some(crate::xds::telemetry::Tracing {
                    collector,
                    collector_path: tracing.collector_path.clone(),
                    sampling_percent: tracing.sampling_percent,
                })
            }
        };
        Ok(crate::xds::telemetry::Telemetry {
            request_metrics: self.request_metrics,
            tracing,
        })
    }
}

/// The shortest and longest workload certificate lifetimes a pilot accepts.
pub const MIN_CERTIFICATE_TTL_SECONDS: u64 = 60;
pub const MAX_CERTIFICATE_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// `identity`: who signs the workload certificates, for which trust domain, for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub trust_domain: crate::identity::spiffe::TrustDomain,
    pub ca: IdentityCa,
    /// 600 s to 30 days.
    #[serde(default = "default_certificate_ttl")]
    pub certificate_ttl_seconds: u64,
}

/// `identity.ca`: PEM files, read once at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCa {
    /// The signing CA certificate, then the CAs above it.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The CAs Envoys trust; default every certificate of `certificate`. During a CA
    /// rotation, the old and the new.
    #[serde(default)]
    pub trust_bundle: Option<PathBuf>,
}

/// The HTTP API's access control (docs/api.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API over plain HTTP to anyone, without authentication; logged as a warning
    /// at every start. Required when `tls` is absent.
    #[serde(default)]
    pub insecure_open: bool,
}

impl PilotConfig {
    /// Checks that the API is served over HTTPS with authentication, or explicitly open; in
    /// that case returns the warning to log at every start.
    pub(crate) fn check_api(&self, config_path: &Path) -> Result<Option<String>> {
        match (self.tls.is_some(), self.api.insecure_open) {
            (true, false) => Ok(None),
            (_, true) => Ok(Some(format!(
                "the HTTP API is open (api.insecure_open is set in {}): anyone who reaches \
                 listen.api reads the mesh's registration, rules and metrics over plain HTTP",
                config_path.display()
            ))),
            (false, false) => bail!(
                "config file {}: key `api.insecure_open`: the HTTP API is served over HTTPS \
                 with the `tls` certificate, which is missing (`insecure_plaintext`); set \
                 `api: {{insecure_open: true}}` to serve it open over plain HTTP",
                config_path.display()
            ),
        }
    }

    /// Checks `identity.certificate_ttl_seconds`; errors name the file and the key.
    pub(crate) fn check_identity(&self, config_path: &Path) -> Result<()> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let ttl = identity.certificate_ttl_seconds;
        if !(MIN_CERTIFICATE_TTL_SECONDS..=MAX_CERTIFICATE_TTL_SECONDS).contains(&ttl) {
            bail!(
                "config file {}: key `identity.certificate_ttl_seconds`: {ttl} is not between \
                 {MIN_CERTIFICATE_TTL_SECONDS} (a minute) and {MAX_CERTIFICATE_TTL_SECONDS} (30 days)",
                config_path.display()
            );
        }
        Ok(())
    }

    /// Checks `workloads`: it needs the HTTPS API and mutual TLS (a joining VM gets a mesh
    /// client certificate, and operators' tokens are checked), and its durations must be in
    /// order (a heartbeat within the TTL, the TTL within the grace). Errors name the file and
    /// the key.
    pub(crate) fn check_workloads(&self, config_path: &Path) -> Result<()> {
        let Some(workloads) = &self.workloads else {
            return Ok(());
        };
        let at = |key: &str| format!("config file {}: key `{key}`", config_path.display());
        if self.tls.is_none() || self.api.insecure_open {
            bail!(
                "{}: joining VMs need the HTTPS API with authentication and mutual TLS (`tls`, \
                 without `api.insecure_open`): tokens are issued to operators and certificates \
                 to VMs",
                at("workloads")
            );
        }
        let w = workloads;
        if w.heartbeat_seconds == 0 {
            bail!("{}: must be at least 1", at("workloads.heartbeat_seconds"));
        }
        if w.ttl_seconds <= w.heartbeat_seconds {
            bail!(
                "{}: {} must be longer than `workloads.heartbeat_seconds` ({}), or every \
                 VM would be out between two heartbeats",
                at("workloads.ttl_seconds"),
                w.ttl_seconds,
                w.heartbeat_seconds
            );
        }
        if w.deregister_after_seconds < w.ttl_seconds {
            bail!(
                "{}: {} is shorter than `workloads.ttl_seconds` ({}): a VM must be out of \
                 the Envoys before it is forgotten",
                at("workloads.deregister_after_seconds"),
                w.deregister_after_seconds,
                w.ttl_seconds
            );
        }
        let ttl = w.certificate_ttl_seconds;
        if !(MIN_CERTIFICATE_TTL_SECONDS..=MAX_CERTIFICATE_TTL_SECONDS).contains(&ttl) {
            bail!(
                "{}: {ttl} is not between {MIN_CERTIFICATE_TTL_SECONDS} (a minute) and \
                 {MAX_CERTIFICATE_TTL_SECONDS} (30 days)",
                at("workloads.certificate_ttl_seconds")
            );
        }
        if w.max_token_ttl_seconds == 0 {
            bail!(
                "{}: must be at least 1",
                at("workloads.max_token_ttl_seconds")
            );
        }
        Ok(())
    }

    /// Checks that the xDS and name-table ports are locked down (`tls`) or explicitly not;
    /// in that case returns the warning to log at start.
    pub(crate) fn check_transport(&self, config_path: &Path) -> Result<Option<String>> {
        check_transport(self.tls.is_some(), self.insecure_plaintext, config_path)
    }
}

/// The pilot's side of mutual TLS: PEM files as the bosh-pilot job renders them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The mesh CA: only clients presenting a certificate it signed are served.
    pub ca_cert_path: PathBuf,
    /// This pilot's certificate (then any intermediates).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A client's side of mutual TLS to the pilots (the agent's, and Envoy's bootstrap).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The mesh CA: a pilot is trusted only with a certificate it signed.
    pub ca_cert_path: PathBuf,
    /// This client's certificate (then any intermediates), presented to the pilot.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The DNS name the pilot's certificate must carry. Pilots are dialled by IP (link
    /// addresses), so this fixed name is what is verified, as bosh-dns does for its health
    /// checks.
    pub server_name: String,
}

/// `tls` xor `insecure_plaintext`; the warning to log when plaintext was chosen.
fn check_transport(
    tls: bool,
    insecure_plaintext: bool,
    config_path: &Path,
) -> Result<Option<String>> {
    match (tls, insecure_plaintext) {
        (true, false) => Ok(None),
        (false, true) => Ok(Some(format!(
            "mutual TLS is off (insecure_plaintext is set in {}): the control plane's xDS and \
             name-table traffic is neither authenticated nor encrypted",
            config_path.display()
        ))),
        (true, true) => bail!(
            "config file {}: key `insecure_plaintext`: set together with `tls`; remove one",
            config_path.display()
        ),
        (false, false) => bail!(
            "config file {}: key `tls`: missing: the xDS and name-table traffic needs mutual \
             TLS (ca_cert_path, cert_path, key_path); `insecure_plaintext: true` turns it off \
             for tests",
            config_path.display()
        ),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipStoreKind {
    #[default]
    Director,
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotListen {
    #[serde(default = "default_xds_listen")]
    pub xds: SocketAddr,
    #[serde(default = "default_api_listen")]
    pub api: SocketAddr,
    #[serde(default = "default_names_listen")]
    pub names: SocketAddr,
}

impl Default for PilotListen {
    fn default() -> Self {
        PilotListen {
            xds: default_xds_listen(),
            api: default_api_listen(),
            names: default_names_listen(),
        }
    }
}

/// How to reach and authenticate to the BOSH director.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorConfig {
    /// e.g. `https://10.244.0.6:25555`
    pub url: String,
    /// UAA URL; when absent it is discovered from the director's `GET /info`.
    #[serde(default)]
    pub uaa_url: Option<String>,
    pub client: String,
    /// The client secret inline (a rendered job config file, mode 0600). Exactly one of
    /// `client_secret`, `client_secret_file` or the env `BOSHY_DIRECTOR_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM file of the CA that signed the director's (and UAA's) certificate.
    #[serde(default)]
    pub ca_cert_path: Option<PathBuf>,
    /// Inline PEM, as BOSH_CA_CERT may be.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// Explicit opt-out of certificate verification; logged loudly at every start.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_seconds: u64,
    /// How often each deployment's health is wanted: its reading older than this is due.
    #[serde(default = "default_health_interval")]
    pub health_interval_seconds: u64,
    /// The whole pilot's budget of health readings (`instances?format=full` tasks, each
    /// taking one of the director's few workers), whatever the number of deployments; at
    /// least one. Too small a budget for the estate and the interval is logged
    /// (docs/director-api.md §8.3).
    #[serde(default = "default_health_tasks_per_minute")]
    pub health_tasks_per_minute: u32,
    #[serde(default = "default_full_resync")]
    pub full_resync_seconds: u64,
    /// Deadline for one `format=full` task (queued + processing).
    #[serde(default = "default_task_timeout")]
    pub task_timeout_seconds: u64,
    /// Deadline for one HTTP request to the director or UAA.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
}

pub const CLIENT_SECRET_ENV: &str = "BOSHY_DIRECTOR_CLIENT_SECRET";

impl DirectorConfig {
    /// Resolves the client secret from exactly one source. Never logs or echoes it.
    pub(crate) fn resolve_secret(&self, config_path: &Path) -> Result<Secret> {
        let from_env = std::env::var(CLIENT_SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty());
        let sources = [
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
            from_env.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => bail!(
                "config file {}: key `director.client_secret`: missing (set it, or \
                 `director.client_secret_file`, or the env {CLIENT_SECRET_ENV})",
                config_path.display()
            ),
            1 => {}
            _ => bail!(
                "config file {}: key `director.client_secret`: more than one of \
                 client_secret, client_secret_file and {CLIENT_SECRET_ENV} is set",
                config_path.display()
            ),
        }
        if let Some(secret) = &self.client_secret {
            return Ok(secret.clone());
        }
        if let Some(file) = &self.client_secret_file {
            let text = std::fs::read_to_string(file).with_context(|| {
                format!(
                    "config file {}: key `director.client_secret_file`: cannot read {}",
                    config_path.display(),
                    file.display()
                )
            })?;
            return Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        Ok(Secret(from_env.unwrap_or_default()))
    }
}

/// A secret string whose Debug/Display never reveal it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `boshy virtual-ip-agent` (the virtual-ip-agent job).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_tld")]
    pub tld: String,
    /// DNS listen address (UDP and TCP).
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// TTL of the A records the agent answers.
    #[serde(default = "default_dns_ttl")]
    pub ttl_seconds: u32,
    /// Base URLs of every bosh-pilot name-table endpoint, e.g. `http://10.244.0.10:15011`.
    pub pilots: Vec<String>,
    /// The last table received, reloaded at start.
    pub table_path: PathBuf,
    /// Where to write the bosh-dns handler that delegates `<tld>.` to this agent; optional.
    #[serde(default)]
    pub bosh_dns_handlers_path: Option<PathBuf>,
    /// Answer the common UDP query (A for a served name) from precomputed wire bytes; `false`
    /// sends every query through hickory (the benchmark's "before", and a way to rule it out).
    #[serde(default = "default_true")]
    pub fast_path: bool,
    /// A `listen` address other than loopback is refused unless this is true: the agent is
    /// reached by bosh-dns on the same VM and must never be an open resolver for the network.
    /// When true, every start logs a warning.
    #[serde(default)]
    pub allow_non_loopback_listen: bool,
    /// Mutual TLS to the pilots. Required unless `insecure_plaintext`.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Follow the pilots without TLS; for tests only, logged as a warning at every start.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The BOSH instance the agent runs on. With it, the agent probes the instance's exposed
    /// ports and reports their health to the pilots (docs/health.md); without it, it only
    /// answers DNS.
    #[serde(default)]
    pub instance: Option<AgentInstance>,
    /// How often the exposed ports are probed; also each probe's timeout.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// With `instance`, when the VM captures its exposed ports inbound (`inbound.capture`): the
    /// port of Envoy's inbound listener they go to. An exposed port is then healthy only once
    /// it is captured and that listener takes connections (docs/health.md).
    #[serde(default)]
    pub inbound_capture_port: Option<u16>,
    /// How long the drain waits for the pilots to say no Envoy sends the instance new
    /// requests.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u64,
    /// With `instance`: a name not asked for this long leaves the VM's scope, so its Envoy
    /// drops that service's configuration (docs/scope.md).
    #[serde(default = "default_scope_idle")]
    pub scope_idle_seconds: u64,
    /// With `instance` (and its `instance_group`): the agent holds the VM's workload key and
    /// serves its certificate to Envoy over SDS (docs/security.md); without it, identity is
    /// off.
    #[serde(default)]
    pub identity: Option<AgentIdentity>,
    /// Request metrics (docs/telemetry.md): the agent takes Envoy's access log entries and
    /// serves them as Prometheus metrics; absent, it does not.
    #[serde(default)]
    pub telemetry: Option<AgentTelemetry>,
    /// What the agent does with the mesh certificate of `tls`: a joined VM's (`boshy join`
    /// sets it) is renewed by the agent; a BOSH VM's is BOSH's, and this is absent.
    #[serde(default)]
    pub mesh_certificate: Option<MeshCertificate>,
}

/// `mesh_certificate` (docs/workloads.md, "Certificate renewal").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshCertificate {
    /// Renew `tls.cert_path` and `tls.key_path` from the pilots at half the certificate's
    /// lifetime, in place: a new key each time, both swapped at once in their directory.
    #[serde(default)]
    pub renew: bool,
}

/// Where the agent takes Envoy's access logs and serves the request metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTelemetry {
    /// The access log Unix socket, in a directory shared with Envoy alone.
    pub access_log_socket: PathBuf,
    /// `/metrics`, on loopback only: Envoy's metrics listener serves it to the network
    /// behind mutual TLS.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Most label sets kept; entries that would make more are dropped and counted.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

fn default_metrics_listen() -> SocketAddr {
    "127.0.0.1:15020".parse().expect("valid")
}

fn default_max_series() -> usize {
    10_000
}

/// `spec.deployment`, `spec.id` and `spec.name` of the VM's jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInstance {
    pub deployment: String,
    pub id: String,
    /// The instance group: whose SPIFFE ID the VM's certificate carries.
    #[serde(default)]
    pub instance_group: Option<String>,
}

/// The agent's workload identity: the mesh's trust domain, and where Envoy asks for the
/// certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    #[serde(default)]
    pub trust_domain: crate::identity::spiffe::TrustDomain,
    /// The SDS Unix socket, in a directory shared with Envoy alone.
    pub sds_socket: PathBuf,
}

impl AgentConfig {
    /// Checks that the name-table stream is locked down (`tls`, and no `http://` pilot) or
    /// explicitly not (`insecure_plaintext`, and no `https://` pilot); returns the warning to
    /// log at start for plaintext. Errors name the file and the key.
    pub(crate) fn check_transport(&self, config_path: &Path) -> Result<Option<String>> {
        let warning = check_transport(self.tls.is_some(), self.insecure_plaintext, config_path)?;
        let (refused, because) = if self.tls.is_some() {
            ("http://", "`tls` is set")
        } else {
            ("https://", "`insecure_plaintext` is set")
        };
        if let Some((i, pilot)) = self
            .pilots
            .iter()
            .enumerate()
            .find(|(_, p)| p.trim().to_ascii_lowercase().starts_with(refused))
        {
            bail!(
                "config file {}: key `pilots[{i}]`: `{pilot}` is {refused} but {because}",
                config_path.display()
            );
        }
        Ok(warning)
    }

    /// Checks that `listen` is a loopback address, or that a non-loopback one was explicitly
    /// allowed; in that case returns the warning to log at start. Errors name the file and key.
    pub(crate) fn check_listen(&self, config_path: &Path) -> Result<Option<String>> {
        if let Some(telemetry) = self
            .telemetry
            .as_ref()
            .filter(|telemetry| !telemetry.metrics_listen.ip().is_loopback())
        {
            bail!(
                "config file {}: key `telemetry.metrics_listen`: {} is not a loopback address; \
                 the metrics are served to the network by Envoy, behind mutual TLS",
                config_path.display(),
                telemetry.metrics_listen
            );
        }
        if self.listen.ip().is_loopback() {
            return Ok(None);
        }
        if !self.allow_non_loopback_listen {
            bail!(
                "config file {}: key `listen`: {} is not a loopback address; the agent would \
                 answer DNS for the network (set `allow_non_loopback_listen: true` to do that \
                 on purpose)",
                config_path.display(),
                self.listen
            );
        }
        Ok(Some(format!(
            "DNS listens on {}, not on loopback (allow_non_loopback_listen is set in {}): \
             anything that reaches this address can query the agent",
            self.listen,
            config_path.display()
        )))
    }
}

fn default_true() -> bool {
    true
}

fn default_tld() -> String {
    "boshy".into()
}
fn default_vip_cidr() -> Ipv4Net {
    "169.254.255.0/24".parse().expect("valid default CIDR")
}
fn default_vip_quarantine_seconds() -> u64 {
    3600
}
fn default_xds_listen() -> SocketAddr {
    "0.0.0.0:15010".parse().expect("valid")
}
fn default_api_listen() -> SocketAddr {
    "0.0.0.0:8080".parse().expect("valid")
}
fn default_names_listen() -> SocketAddr {
    "0.0.0.0:15011".parse().expect("valid")
}
fn default_dns_listen() -> SocketAddr {
    "127.0.0.1:8053".parse().expect("valid")
}
fn default_dns_ttl() -> u32 {
    5
}
fn default_drain_timeout() -> u64 {
    30
}
fn default_certificate_ttl() -> u64 {
    24 * 3600
}
fn default_scope_idle() -> u64 {
    24 * 3600
}

fn default_probe_interval_ms() -> u64 {
    500
}

fn default_poll_interval() -> u64 {
    5
}
fn default_health_interval() -> u64 {
    15
}
fn default_health_tasks_per_minute() -> u32 {
    6
}
fn default_full_resync() -> u64 {
    300
}
fn default_task_timeout() -> u64 {
    60
}
fn default_request_timeout() -> u64 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_file_and_key() {
        let text = "director:\n  url: https://x\n  client: c\n  poll_interval_seconds: soon\nvip_state_path: /tmp/v\n";
        let err = parse::<PilotConfig>(text, Path::new("/etc/pilot.yml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/pilot.yml"), "{msg}");
        assert!(msg.contains("director.poll_interval_seconds"), "{msg}");
    }

    #[test]
    fn workloads_are_off_by_default_and_each_bad_value_names_its_key() {
        let at = Path::new("/etc/pilot.yml");
        let base = "director:\n  url: https://x\n  client: c\n\
                    tls: {ca_cert_path: /ca, cert_path: /c, key_path: /k}\n";
        let cfg: PilotConfig = parse(base, at).unwrap();
        assert!(cfg.workloads.is_none());
        cfg.check_workloads(at).unwrap();
        let with = |extra: &str, workloads: &str| {
            let text =
                format!("{base}{extra}workloads: {{mesh_ca_private_key: /ca.key{workloads}}}\n");
            parse::<PilotConfig>(&text, at)?.check_workloads(at)
        };
        let defaults: PilotConfig = parse(
            &format!("{base}workloads: {{mesh_ca_private_key: /ca.key}}\n"),
            at,
        )
        .unwrap();
        let w = defaults.workloads.unwrap();
        assert_eq!(
            (
                w.heartbeat_seconds,
                w.ttl_seconds,
                w.deregister_after_seconds
            ),
            (10, 30, 600)
        );
        assert_eq!(
            (w.certificate_ttl_seconds, w.max_token_ttl_seconds),
            (604800, 604800)
        );
        with("", "").unwrap();
        for (extra, workloads, key) in [
            ("api: {insecure_open: true}\n", "", "`workloads`"),
            ("", ", heartbeat_seconds: 0", "workloads.heartbeat_seconds"),
            ("", ", ttl_seconds: 10", "workloads.ttl_seconds"),
            (
                "",
                ", deregister_after_seconds: 20",
                "workloads.deregister_after_seconds",
            ),
            (
                "",
                ", certificate_ttl_seconds: 5",
                "workloads.certificate_ttl_seconds",
            ),
            (
                "",
                ", max_token_ttl_seconds: 0",
                "workloads.max_token_ttl_seconds",
            ),
            ("", ", colour: red", "workloads"),
        ] {
            let msg = with(extra, workloads).unwrap_err().to_string();
            assert!(
                msg.contains("/etc/pilot.yml") && msg.contains(key),
                "{workloads}: {msg}"
            );
        }
    }

    #[test]
    fn tracing_is_off_by_default_and_a_bad_collector_or_percentage_names_its_key() {
        let base = "director:\n  url: https://x\n  client: c\n";
        let at = Path::new("/etc/pilot.yml");
        let cfg: PilotConfig = parse(base, at).unwrap();
        let telemetry = cfg.telemetry.resolve(at).unwrap();
        assert!(
            telemetry.request_metrics,
            "request metrics are on by default"
        );
        assert_eq!(telemetry.tracing, None);

        let with = |tracing: &str| {
            let text = format!("{base}telemetry:\n  tracing: {tracing}\n");
            parse::<PilotConfig>(&text, at)
                .unwrap()
                .telemetry
                .resolve(at)
        };
        let tracing = with("{zipkin_collector: 'zipkin.example.com:9411'}")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(tracing.collector.to_string(), "zipkin.example.com:9411");
        assert_eq!(tracing.collector_path, "/api/v2/spans");
        assert_eq!(tracing.sampling_percent, 1.0);
        for (bad, key) in [
            (
                "{zipkin_collector: 'zipkin.example.com'}",
                "zipkin_collector",
            ),
            ("{zipkin_collector: ':9411'}", "zipkin_collector"),
            ("{zipkin_collector: 'z:0'}", "zipkin_collector"),
            (
                "{zipkin_collector: 'z:9411', sampling_percent: 101}",
                "sampling_percent",
            ),
            (
                "{zipkin_collector: 'z:9411', sampling_percent: -1}",
                "sampling_percent",
            ),
            (
                "{zipkin_collector: 'z:9411', collector_path: 'spans'}",
                "collector_path",
            ),
        ] {
            let msg = with(bad).unwrap_err().to_string();
            assert!(
                msg.contains("/etc/pilot.yml") && msg.contains(&format!("telemetry.tracing.{key}")),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn unknown_key_is_an_error() {
        let text =
            "director:\n  url: https://x\n  client: c\n  colour: red\nvip_state_path: /tmp/v\n";
        let msg = parse::<PilotConfig>(text, Path::new("p.yml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn secret_is_redacted_in_debug() {
        let text = "director:\n  url: https://x\n  client: c\n  client_secret: hunter2\nvip_state_path: /tmp/v\n";
        let cfg: PilotConfig = parse(text, Path::new("p.yml")).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(
            cfg.director
                .resolve_secret(Path::new("p.yml"))
                .unwrap()
                .expose(),
            "hunter2"
        );
    }

    #[test]
    fn the_control_plane_ports_need_mutual_tls_or_an_explicit_opt_out() {
        let path = Path::new("/jobs/pilot.yml");
        let pilot = |extra: &str| -> PilotConfig {
            let text = format!("director:\n  url: https://x\n  client: c\n{extra}");
            parse(&text, path).unwrap()
        };
        let tls = "tls:\n  ca_cert_path: /ca.pem\n  cert_path: /c.pem\n  key_path: /c.key\n";
        assert_eq!(pilot(tls).check_transport(path).unwrap(), None);
        let missing = pilot("").check_transport(path).unwrap_err().to_string();
        assert!(
            missing.contains("/jobs/pilot.yml") && missing.contains("key `tls`"),
            "{missing}"
        );
        let warning = pilot("insecure_plaintext: true\n")
            .check_transport(path)
            .unwrap();
        assert!(warning.expect("a warning").contains("insecure_plaintext"));
        let both = pilot(&format!("{tls}insecure_plaintext: true\n"))
            .check_transport(path)
            .unwrap_err()
            .to_string();
        assert!(both.contains("key `insecure_plaintext`"), "{both}");
    }

    #[test]
    fn the_api_is_https_with_authentication_unless_explicitly_open() {
        let path = Path::new("/jobs/pilot.yml");
        let pilot = |extra: &str| -> PilotConfig {
            let text = format!("director:\n  url: https://x\n  client: c\n{extra}");
            parse(&text, path).unwrap()
        };
        let tls = "tls:\n  ca_cert_path: /ca.pem\n  cert_path: /c.pem\n  key_path: /c.key\n";
        assert_eq!(pilot(tls).check_api(path).unwrap(), None);
        let open = "api:\n  insecure_open: true\n";
        for config in [
            format!("{tls}{open}"),
            format!("insecure_plaintext: true\n{open}"),
        ] {
            let warning = pilot(&config).check_api(path).unwrap();
            assert!(
                warning.expect("a warning").contains("api.insecure_open"),
                "{config}"
            );
        }
        let plaintext = pilot("insecure_plaintext: true\n")
            .check_api(path)
            .unwrap_err()
            .to_string();
        assert!(
            plaintext.contains("/jobs/pilot.yml") && plaintext.contains("key `api.insecure_open`"),
            "{plaintext}"
        );
        let text = "director:\n  url: https://x\n  client: c\napi:\n  open: true\n";
        assert!(
            parse::<PilotConfig>(text, path).is_err(),
            "unknown api keys"
        );
    }

    #[test]
    fn identity_is_off_by_default_and_its_ttl_is_bounded() {
        let path = Path::new("/jobs/pilot.yml");
        let pilot = |extra: &str| -> PilotConfig {
            let text = format!("director:\n  url: https://x\n  client: c\n{extra}");
            parse(&text, path).unwrap()
        };
        assert!(pilot("").identity.is_none());
        let ca = "identity:\n  ca: {certificate: /ca.pem, private_key: /ca.key}\n";
        let defaults = pilot(ca);
        let identity = defaults.identity.as_ref().unwrap();
        assert_eq!(identity.trust_domain.as_str(), "boshy");
        assert_eq!(identity.certificate_ttl_seconds, 86400);
        assert_eq!(identity.ca.trust_bundle, None);
        defaults.check_identity(path).unwrap();
        for ttl in [59, 30 * 24 * 3600 + 1] {
            let msg = pilot(&format!("{ca}  certificate_ttl_seconds: {ttl}\n"))
                .check_identity(path)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("/jobs/pilot.yml")
                    && msg.contains("identity.certificate_ttl_seconds")
                    && msg.contains(&ttl.to_string()),
                "{msg}"
            );
        }
        for ttl in [60, 30 * 24 * 3600] {
            pilot(&format!("{ca}  certificate_ttl_seconds: {ttl}\n"))
                .check_identity(path)
                .unwrap();
        }
        let text = "director: {url: https://x, client: c}\nidentity:\n  trust_domain: Bad\n  ca: {certificate: /c, private_key: /k}\n";
        let msg = parse::<PilotConfig>(text, path).unwrap_err().to_string();
        assert!(msg.contains("identity.trust_domain"), "{msg}");
    }

    #[test]
    fn agent_pilot_urls_must_match_the_transport() {
        let path = Path::new("agent.yml");
        let tls =
            "tls: {ca_cert_path: /ca, cert_path: /c, key_path: /k, server_name: pilot.mesh}\n";
        let with_pilots = |pilots: &str, transport: &str| -> AgentConfig {
            parse(
                &format!("pilots: {pilots}\ntable_path: /t\n{transport}"),
                path,
            )
            .unwrap()
        };
        let ok = with_pilots("[\"https://10.0.0.1:15011\", \"10.0.0.2:15011\"]", tls);
        assert_eq!(ok.check_transport(path).unwrap(), None);
        let msg = with_pilots("[\"10.0.0.2:15011\", \"HTTP://10.0.0.1:15011\"]", tls)
            .check_transport(path)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("key `pilots[1]`") && msg.contains("`tls` is set"),
            "{msg}"
        );
        let msg = with_pilots("[\"https://10.0.0.1:15011\"]", "insecure_plaintext: true\n")
            .check_transport(path)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key `pilots[0]`"), "{msg}");
        let plain = with_pilots("[\"http://10.0.0.1:15011\"]", "insecure_plaintext: true\n");
        assert!(plain.check_transport(path).unwrap().is_some());
        let missing = with_pilots("[\"10.0.0.1:15011\"]", "")
            .check_transport(path)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("key `tls`"), "{missing}");
    }

    fn agent(extra: &str) -> AgentConfig {
        let text = format!("pilots: [\"10.0.0.1:15011\"]\ntable_path: /t.json\n{extra}");
        parse(&text, Path::new("agent.yml")).unwrap()
    }

    #[test]
    fn the_agent_listens_on_loopback_unless_told_otherwise() {
        let path = Path::new("/jobs/agent.yml");
        assert_eq!(agent("").check_listen(path).unwrap(), None);
        assert_eq!(
            agent("listen: \"[::1]:53\"\n").check_listen(path).unwrap(),
            None
        );
        for exposed in ["0.0.0.0:53", "10.244.0.2:8053", "\"[::]:53\""] {
            let msg = agent(&format!("listen: {exposed}\n"))
                .check_listen(path)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("/jobs/agent.yml") && msg.contains("`listen`"),
                "{msg}"
            );
            assert!(msg.contains("allow_non_loopback_listen"), "{msg}");
        }
        let allowed = agent("listen: 0.0.0.0:53\nallow_non_loopback_listen: true\n");
        let warning = allowed.check_listen(path).unwrap().expect("a warning");
        assert!(warning.contains("0.0.0.0:53"), "{warning}");
    }

    #[test]
    fn the_agents_metrics_stay_on_loopback_and_bad_telemetry_keys_are_named() {
        let path = Path::new("/jobs/agent.yml");
        let telemetry = |listen: &str| {
            agent(&format!(
                "telemetry: {{access_log_socket: /s/als.sock, metrics_listen: \"{listen}\"}}\n"
            ))
        };
        assert_eq!(
            telemetry("127.0.0.1:15020").check_listen(path).unwrap(),
            None
        );
        // Not even allow_non_loopback_listen (the DNS port's opt-out) opens the metrics.
        for exposed in ["0.0.0.0:15020", "10.244.0.2:15020"] {
            let mut config = telemetry(exposed);
            config.allow_non_loopback_listen = true;
            let msg = config.check_listen(path).unwrap_err().to_string();
            assert!(
                msg.contains("/jobs/agent.yml") && msg.contains("`telemetry.metrics_listen`"),
                "{msg}"
            );
        }
        let defaults = agent("telemetry: {access_log_socket: /s/als.sock}\n");
        let defaults = defaults.telemetry.expect("telemetry");
        assert_eq!(defaults.metrics_listen, "127.0.0.1:15020".parse().unwrap());
        assert_eq!(defaults.max_series, 10_000);
        for garbage in [
            "telemetry: {metrics_listen: \"127.0.0.1:15020\"}\n",
            "telemetry: {access_log_socket: /s, colour: red}\n",
            "telemetry: {access_log_socket: /s, max_series: many}\n",
            "telemetry: {access_log_socket: /s, metrics_listen: nowhere}\n",
        ] {
            let text = format!("pilots: [\"10.0.0.1:15011\"]\ntable_path: /t.json\n{garbage}");
            let msg = parse::<AgentConfig>(&text, Path::new("/jobs/agent.yml"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("/jobs/agent.yml") && msg.contains("telemetry"),
                "{garbage}: {msg}"
            );
        }
    }
}
