//! The catalog's data types: the contract between the director poller (producer) and the
//! xDS server, the name-table stream and the HTTP API (consumers).
//!
//! A `Catalog` is immutable once built; a new one is built whole and published through a
//! `tokio::sync::watch` channel as `Arc<Catalog>`. Consumers diff or rebuild from it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::text::clip;

/// What an `expose_ports` entry speaks. Decides the Envoy filter chain (tcp_proxy or HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// Whether Envoy should terminate this port with the HTTP connection manager.
    pub(crate) fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// Whether the upstream connection must speak HTTP/2.
    pub(crate) fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One entry of a job's `expose_ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub number: u16,
    pub protocol: Protocol,
}

/// Identity of a service: one (deployment, instance group, job) with exposed ports, by the
/// names BOSH knows them by, exactly as the manifest spells them (`diego_cell`): the director
/// reports instances under these names, and operators look for them. The service's hostname
/// is made of their canonical DNS forms instead (see `ServiceDecl::dns_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub deployment: String,
    pub instance_group: String,
    pub job: String,
}

impl fmt::Display for ServiceKey {
    /// `deployment "cf" instance group "diego_cell" job "rep"`, for warnings. Names are
    /// clipped: a manifest's names can be long, even ones that canonicalize to short labels.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deployment {:?} instance group {:?} job {:?}",
            clip(&self.deployment),
            clip(&self.instance_group),
            clip(&self.job)
        )
    }
}

/// Label key → value, in the Kubernetes label syntax that Istio's selectors match
/// (docs/ARCHITECTURE.md, "The manifest contract").
pub type Labels = BTreeMap<String, String>;

/// One instance of the service's instance group that has a VM and an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub az: Option<String>,
    /// The director's stable instance id (uuid).
    pub instance: String,
    pub index: Option<u32>,
    /// `job_state == "running"` at the director's last health report.
    pub healthy: bool,
    /// Its agent says its Envoy takes no mutual TLS yet (`health::AgentReport::plaintext`):
    /// clients call it in plaintext even where the mesh's mode is mutual TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
    /// What the director says about the instance (under `bosh.io/`), and the release
    /// author's `expose_labels` of the service's job. For rules that select instances; xDS and
    /// the name table do not depend on them.
    pub labels: Labels,
}

/// A service as every consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    /// `<ServiceDecl::dns_name>.<tld>`, lower-case, no trailing dot:
    /// `rep.diego-cell.cf.boshy` for job `rep` of instance group `diego_cell` of deployment
    /// `cf`.
    pub hostname: String,
    pub vip: Ipv4Addr,
    /// Sorted by number.
    pub ports: Vec<ServicePort>,
    /// Sorted by (index, instance). Unhealthy endpoints are kept (with `healthy: false`) so
    /// that `/v1/registration` can show them; xDS only sends the healthy ones.
    pub endpoints: Vec<Endpoint>,
    /// For a service an Istio ServiceEntry defines rather than a job exposes: that entry, as
    /// `<config>/<resource name>`. Its `key` then names no job (every name is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_entry: Option<String>,
    /// For the service of an Istio WorkloadGroup (VMs outside BOSH): that group, as
    /// `<config>/<resource name>`. Its `key` names no job either (every name is empty); its
    /// endpoints are the VMs registered into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_group: Option<String>,
    /// A WorkloadGroup's readiness probe, which the agent of each VM registered into it runs
    /// (docs/health.md). `None` for every other service, and for a group without one (its
    /// members are ready while they report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// For a service whose endpoints are DNS names that each Envoy resolves (a ServiceEntry
    /// with `resolution: DNS` or `DNS_ROUND_ROBIN`): those names. `endpoints` is then empty:
    /// the addresses are Envoy's to find, with the VM's own resolver, and may change between
    /// two catalogs without the pilot knowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsEndpoints>,
}

impl Service {
    /// Whether a BOSH job exposes it, rather than rules define it (a ServiceEntry or a
    /// WorkloadGroup): only a job's service has an instance group, instances the director
    /// knows and a security policy of its own.
    pub fn is_job(&self) -> bool {
        self.service_entry.is_none() && self.workload_group.is_none()
    }
}

/// A WorkloadGroup's readiness probe as its members' agents run it: Kubernetes' defaults
/// filled in and a named port resolved to its number against the group's ports, so that an
/// agent needs nothing but this (it knows neither the rules nor the group). The numbers are
/// the checked ones (`rules::checks`: at most `i32::MAX`, each at least 1 but the delay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub initial_delay_seconds: u32,
    pub timeout_seconds: u32,
    pub period_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub action: ProbeAction,
}

/// What one attempt of a [`Probe`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeAction {
    /// `GET scheme://host:port/path`: ready on a status from 200 to 399.
    HttpGet(HttpGetProbe),
    /// A TCP connection to `host:port` opens.
    TcpSocket {
        /// `None`: the member's own address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        port: u16,
    },
    /// The program (then its arguments, no shell) exits 0 on the member.
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGetProbe {
    pub https: bool,
    /// `None`: the member's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ProbeHeader>,
}

/// A header an HTTP probe sends. Its value may be a credential: `Debug` leaves it out, and
/// nothing logs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for ProbeHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeHeader")
            .field("name", &self.name)
            .field("value", &"<hidden>")
            .finish()
    }
}

/// The endpoints of a service that Envoy finds through DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEndpoints {
    pub resolution: DnsResolution,
    /// In the order the ServiceEntry lists them; at least one, exactly one for
    /// `DnsRoundRobin`.
    pub endpoints: Vec<DnsEndpoint>,
}

/// How the names become addresses: Istio's ServiceEntry resolutions, by Istio's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DnsResolution {
    /// Every address each name resolves to is an endpoint of its own, balanced across and
    /// ejected alone (Envoy's strict DNS).
    Dns,
    /// One name; each new connection goes to the first address it resolves to at that time
    /// (Envoy's logical DNS): for a name whose addresses are many and change often.
    DnsRoundRobin,
}

/// One name a DNS service's endpoints are found by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DnsEndpoint {
    /// A DNS name (lower-case), or an IPv4 address, which resolves to itself.
    pub address: String,
    pub az: Option<String>,
    /// The ServiceEntry endpoint's labels, for DestinationRule subsets.
    pub labels: Labels,
}

/// Everything the control plane knows, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Content hash of `services`: equal catalogs have equal versions, on every replica.
    pub version: u64,
    pub tld: String,
    /// Sorted by hostname.
    pub services: Vec<Service>,
}

/// One instance as the director reports it, reduced to what the catalog needs: its topology
/// from the synchronous instance list (docs/director-api.md §3.4), its health from the last
/// `instances?format=full` reading (§3.3, §8.3). Decoded and merged by `director`, consumed by
/// `catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The director's `id` (uuid): the stable identity.
    pub id: String,
    /// The director's `job_name`, which is the instance group (docs/director-api.md quirk
    /// §7.5), spelled as in the manifest (`diego_cell`).
    pub instance_group: String,
    pub index: Option<u32>,
    pub az: Option<String>,
    /// Raw `ips` entries as the director sent them (may be IPv6 or CIDR, quirk §7.7).
    pub ips: Vec<String>,
    /// `job_state` ("Process State") of the last reading of this VM; `running` presumed for a
    /// VM already there at the pilot's first look and not read yet; `None` without a VM or for
    /// a newer VM not read yet (docs/director-api.md §8.3).
    pub job_state: Option<String>,
    /// `vm_cid`; `None` when the instance has no VM.
    pub vm_cid: Option<String>,
    /// The director's `bootstrap`: true on the one instance of its group the director picks
    /// for one-off work (`spec.bootstrap` in job templates). `None` until a health reading
    /// says (the synchronous `/instances` form has no such field).
    pub bootstrap: Option<bool>,
}

/// One BOSH instance, by its deployment and the director's `id`: how the poller is told
/// which instances a connected agent reports the health of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceRef {
    pub deployment: String,
    pub instance_id: String,
}

/// A service as declared in a manifest, before endpoints and VIP are attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDecl {
    pub key: ServiceKey,
    /// `<job>.<instance_group>.<deployment>`, each name in the canonical DNS form BOSH gives
    /// it (`manifest::canonicalize`), without the TLD: `rep.diego-cell.cf`.
    pub dns_name: String,
    /// Sorted by number; at least one entry.
    pub ports: Vec<ServicePort>,
    /// The job's valid `expose_labels`, none under the director's `bosh.io/`: given to every
    /// endpoint of the service.
    pub labels: Labels,
}

/// What the catalog needs from one deployment's manifest, parsed once per manifest change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedManifest {
    /// Every instance group in the manifest, by its BOSH name: only their instances can be
    /// endpoints.
    pub instance_groups: std::collections::BTreeSet<String>,
    pub services: Vec<ServiceDecl>,
    /// One line per skipped entry or job, naming deployment/instance group/job.
    pub warnings: Vec<String>,
}

/// One deployment as the poller last saw it successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentInput {
    pub name: String,
    pub manifest: std::sync::Arc<ParsedManifest>,
    pub instances: std::sync::Arc<Vec<Instance>>,
}
