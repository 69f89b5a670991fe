//! Checks across resources, and against the mesh: which of the parsed resources form the
//! rule set.
//!
//! Resources are taken kind by kind, ServiceEntries first (they define hosts), then
//! WorkloadGroups (they define hosts too, after the entries: a group's host is derived from
//! its name, an entry's is written out, so a clash is the group's to give way), then
//! DestinationRules (they define subsets), then VirtualServices (they use both), then Sidecars
//! (they pin hosts, and claim nothing), then the security policies (they depend on no other
//! kind), and within a kind in the order of config name, then resource name; but
//! PeerAuthentications oldest config first (the director's id of its version), since the
//! oldest of one level wins as in Istio, and a later one of the same level is warned about as
//! ignored. A resource that fails a check is
//! rejected alone; what depends on it then fails its own checks (a route to a subset of a
//! rejected DestinationRule names a subset nobody defines). When two resources claim the same
//! thing (a kind and name, a VirtualService or DestinationRule for a host, a ServiceEntry's
//! or a WorkloadGroup's host), the first in that order keeps it and the later one is rejected, naming the first.
//!
//! Without a mesh view, host existence and instance selection cannot be checked and are
//! skipped (the result says so); everything else is checked all the same.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::labels;
use crate::catalog::model::Protocol;

use crate::traffic::HostPattern;

use super::checks::{egress_host, Problems};
use super::entries::{group_dns_name, group_ports};
use super::finding::{Finding, ResourceRef};
use super::mesh::{selects, MeshView};
use super::model::{
    AuthorizationPolicy, Destination, DestinationRule, Kind, Labels, PeerAuthentication,
    PolicySelector, Resolution, ServiceEntry, Sidecar, Spec, TrafficPolicy, VirtualService,
    WorkloadGroup,
};
use super::parse::{ParsedConfig, Resource};
use super::values::PolicyPort;
use crate::text::clip;
use crate::traffic::security::WorkloadKey;

/// What one config came to: the resources it contributed to the rule set, and every finding
/// about it. Each error rejected a resource (or, without a resource, the whole config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigVerdict {
    pub config: String,
    pub accepted: Vec<ResourceRef>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl ConfigVerdict {
    /// The resources rejected, each once (`None`: the config could not be read at all).
    pub fn rejected(&self) -> Vec<Option<&ResourceRef>> {
        let mut rejected: Vec<_> = self.errors.iter().map(|e| e.resource.as_ref()).collect();
        rejected.dedup();
        rejected
    }
}

/// An accepted resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule<S> {
    pub config: String,
    pub name: String,
    /// How findings name it (with its place in a `List`).
    pub reference: ResourceRef,
    /// A security policy's deployment (`Resource::deployment`); `None` for the other kinds.
    pub deployment: Option<String>,
    pub spec: S,
}

/// An accepted WorkloadGroup and the hostname of its service (`<service>.<group>.<config>`
/// and the mesh's domain; without a mesh view, which knows the domain, the name without it).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupService {
    pub hostname: String,
    pub group: WorkloadGroup,
}

/// The accepted resources, each kind in the order they were checked (config name, then
/// resource name). No two VirtualServices share a host, nor two DestinationRules, nor two
/// ServiceEntries. Sidecars claim nothing: several may select one VM, and their hosts add up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub service_entries: Vec<Rule<ServiceEntry>>,
    /// No two share a hostname, with each other or with a ServiceEntry's host.
    pub workload_groups: Vec<Rule<GroupService>>,
    pub destination_rules: Vec<Rule<DestinationRule>>,
    pub virtual_services: Vec<Rule<VirtualService>>,
    pub sidecars: Vec<Rule<Sidecar>>,
    /// Oldest config first: of those that select one instance group, the first applies
    /// there. At most one without a selector per deployment and one for the whole mesh (an
    /// older one of the same level leaves a later one out, with a warning).
    pub peer_authentications: Vec<Rule<PeerAuthentication>>,
    /// They add up: every policy that applies to an instance group is checked there.
    pub authorization_policies: Vec<Rule<AuthorizationPolicy>>,
}

impl RuleSet {
    pub fn is_empty(&self) -> bool {
        self.service_entries.is_empty()
            && self.workload_groups.is_empty()
            && self.destination_rules.is_empty()
            && self.virtual_services.is_empty()
            && self.sidecars.is_empty()
            && self.peer_authentications.is_empty()
            && self.authorization_policies.is_empty()
    }

    pub fn virtual_service(&self, host: &str) -> Option<&Rule<VirtualService>> {
        self.virtual_services
            .iter()
            .find(|rule| rule.spec.hosts.iter().any(|h| h == host))
    }

    pub fn destination_rule(&self, host: &str) -> Option<&Rule<DestinationRule>> {
        self.destination_rules
            .iter()
            .find(|rule| rule.spec.host == host)
    }

    pub fn service_entry(&self, host: &str) -> Option<&Rule<ServiceEntry>> {
        self.service_entries
            .iter()
            .find(|rule| rule.spec.hosts.iter().any(|h| h == host))
    }
}

/// The rule set and the verdict on each config.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub rules: RuleSet,
    /// One per config, in the order given.
    pub verdicts: Vec<ConfigVerdict>,
    /// The checks that could not be made for lack of a mesh view or of instance labels.
    pub skipped_checks: Vec<&'static str>,
}

impl Validated {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.verdicts.iter().flat_map(|verdict| &verdict.errors)
    }
}

pub(crate) const NO_MESH_VIEW: &str = "without a mesh view, hosts were not checked against the \
     services of the mesh, nor subsets and workload selectors against its instances";
pub(crate) const NO_LABELS: &str = "the mesh view has no instance labels: subsets and workload \
     selectors were not checked against instances";

/// Checks the parsed configs together, against `mesh` when there is one.
pub fn validate(configs: &[ParsedConfig], mesh: Option<&MeshView>) -> Validated {
    let mut candidates: Vec<(&ParsedConfig, &Resource)> = configs
        .iter()
        .flat_map(|config| config.resources.iter().map(move |r| (config, r)))
        .collect();
    candidates.sort_by_key(|(config, resource)| {
        let kind = resource.spec.kind();
        let age = match kind {
            Kind::PeerAuthentication => config.director_id.unwrap_or(u64::MAX),
            _ => 0,
        };
        (kind, age, config.name.as_str(), resource.name.as_str())
    });
    let mut state = State {
        mesh,
        names: BTreeMap::new(),
        entries: BTreeMap::new(),
        destination_rules: BTreeMap::new(),
        routed: BTreeMap::new(),
        mtls_levels: BTreeMap::new(),
        selected_mtls: BTreeMap::new(),
        rules: RuleSet::default(),
    };
    let mut outcomes: BTreeMap<&str, Vec<(ResourceRef, Problems)>> = BTreeMap::new();
    for (config, resource) in candidates {
        let config = config.name.as_str();
        let problems = state.check(config, resource);
        if problems.errors.is_empty() {
            state.accept(config, resource);
        }
        outcomes
            .entry(config)
            .or_default()
            .push((resource.reference(), problems));
    }

    let verdicts = configs
        .iter()
        .map(|config| {
            let mut verdict = ConfigVerdict {
                config: config.name.clone(),
                accepted: Vec::new(),
                errors: config.errors.clone(),
                warnings: config.warnings.clone(),
            };
            for (reference, problems) in outcomes.remove(config.name.as_str()).unwrap_or_default() {
                let finding = |(field, message): (String, String)| {
                    Finding::new(&config.name, Some(&reference), Some(&field), message)
                };
                if problems.errors.is_empty() {
                    verdict.accepted.push(reference.clone());
                }
                verdict
                    .errors
                    .extend(problems.errors.into_iter().map(finding));
                verdict
                    .warnings
                    .extend(problems.warnings.into_iter().map(finding));
            }
            verdict.errors.sort();
            verdict
        })
        .collect();

    let skipped_checks = match mesh {
        None => vec![NO_MESH_VIEW],
        Some(mesh) if !mesh.labels_known => vec![NO_LABELS],
        Some(_) => Vec::new(),
    };
    Validated {
        rules: state.rules,
        verdicts,
        skipped_checks,
    }
}

/// Where an accepted resource came from, to name it in a conflict.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Origin {
    config: String,
    name: String,
}

impl Origin {
    fn describe(&self, kind: Kind) -> String {
        format!("{} {} (config {})", kind.as_str(), self.name, self.config)
    }
}

/// A host a ServiceEntry or a WorkloadGroup defines.
struct EntryHost {
    kind: Kind,
    origin: Origin,
    ports: Vec<(u16, Protocol)>,
    /// The labels of its endpoints, or of the instances it selects; `None` when they cannot
    /// be known (a workload selector without instance labels).
    instances: Option<Vec<Labels>>,
}

struct DefinedSubsets {
    origin: Origin,
    subsets: Vec<String>,
}

/// What the accepted resources claimed so far.
struct State<'m> {
    mesh: Option<&'m MeshView>,
    /// Kind, config (for a WorkloadGroup, whose name is unique in its config only: the config
    /// plays the deployment's part), name → the config that has it.
    names: BTreeMap<(Kind, Option<String>, String), String>,
    entries: BTreeMap<String, EntryHost>,
    destination_rules: BTreeMap<String, DefinedSubsets>,
    routed: BTreeMap<String, Origin>,
    /// The PeerAuthentication without selector of each deployment (`None`: the mesh's).
    mtls_levels: BTreeMap<Option<String>, Origin>,
    /// The PeerAuthentication with a selector that applies to each instance group.
    selected_mtls: BTreeMap<WorkloadKey, Origin>,
    rules: RuleSet,
}

/// What is known of a host.
enum HostInfo<'a> {
    /// A service of the mesh, or a host of an accepted ServiceEntry: its ports, and the
    /// labels of its instances when known.
    Known {
        ports: Vec<(u16, Protocol)>,
        instances: Option<Vec<&'a Labels>>,
    },
    /// Neither, and there is a mesh view: nobody serves it.
    Missing,
    /// Not a ServiceEntry's, and there is no mesh view to tell.
    Unknown,
}

impl State<'_> {
    fn host(&self, host: &str) -> HostInfo<'_> {
        if let Some(entry) = self.entries.get(host) {
            return HostInfo::Known {
                ports: entry.ports.clone(),
                instances: entry.instances.as_ref().map(|all| all.iter().collect()),
            };
        }
        let Some(mesh) = self.mesh else {
            return HostInfo::Unknown;
        };
        match mesh.hosts.get(host) {
            None => HostInfo::Missing,
            Some(service) => HostInfo::Known {
                ports: service
                    .ports
                    .iter()
                    .map(|port| (port.number, port.protocol))
                    .collect(),
                instances: mesh
                    .labels_known
                    .then(|| service.instances.iter().map(|i| &i.labels).collect()),
            },
        }
    }

    fn check(&self, config: &str, resource: &Resource) -> Problems {
        let mut problems = Problems::default();
        let kind = resource.spec.kind();
        if let Some(first) = self.names.get(&name_key(config, resource)) {
            let scope = match kind {
                Kind::WorkloadGroup => "group names are unique per config",
                _ => "names are unique per kind across every config",
            };
            problems.error(
                "metadata.name",
                format!(
                    "{} {} is already defined in config {first}: {scope}",
                    kind.as_str(),
                    resource.name
                ),
            );
        }
        match &resource.spec {
            Spec::ServiceEntry(se) => self.service_entry(se, &mut problems),
            Spec::WorkloadGroup(wg) => {
                if let Err((field, problem)) = self
                    .group_hostname(config, &resource.name, wg)
                    .and_then(|host| self.new_host(&host))
                {
                    problems.error(field, problem);
                }
            }
            Spec::DestinationRule(dr) => self.destination_rule(dr, &mut problems),
            Spec::VirtualService(vs) => self.virtual_service(vs, &mut problems),
            Spec::Sidecar(sidecar) => {
                self.sidecar(sidecar, &mut problems);
                if problems.errors.is_empty() {
                    problems.warn("spec.egress", SIDECAR_ONLY_ADDS);
                }
            }
            Spec::PeerAuthentication(pa) => {
                self.peer_authentication(resource.deployment.as_deref(), pa, &mut problems)
            }
            Spec::AuthorizationPolicy(ap) => {
                let deployment = resource.deployment.as_deref();
                self.policy_scope(deployment, ap.selector.as_ref(), &mut problems);
            }
        }
        problems
    }

    fn accept(&mut self, config: &str, resource: &Resource) {
        let origin = Origin {
            config: config.to_string(),
            name: resource.name.clone(),
        };
        self.names
            .insert(name_key(config, resource), config.to_string());
        match &resource.spec {
            Spec::ServiceEntry(se) => {
                let instances = self.entry_instances(se);
                for host in &se.hosts {
                    let ports = se.ports.iter().map(|p| (p.number, p.protocol())).collect();
                    let entry = EntryHost {
                        kind: Kind::ServiceEntry,
                        origin: origin.clone(),
                        ports,
                        instances: instances.clone(),
                    };
                    self.entries.insert(host.clone(), entry);
                }
                self.rules.service_entries.push(rule(origin, resource, se));
            }
            Spec::WorkloadGroup(wg) => {
                let Ok(hostname) = self.group_hostname(config, &resource.name, wg) else {
                    return; // refused by `check`
                };
                let entry = EntryHost {
                    kind: Kind::WorkloadGroup,
                    origin: origin.clone(),
                    ports: group_ports(wg).map(|p| (p.number, p.protocol)).collect(),
                    // Its members are the VMs that register: none is known to check a subset
                    // against.
                    instances: None,
                };
                self.entries.insert(hostname.clone(), entry);
                let service = GroupService {
                    hostname,
                    group: wg.clone(),
                };
                self.rules
                    .workload_groups
                    .push(rule(origin, resource, &service));
            }
            Spec::DestinationRule(dr) => {
                let subsets = dr.subsets.iter().map(|s| s.name.clone()).collect();
                let defined = DefinedSubsets {
                    origin: origin.clone(),
                    subsets,
                };
                self.destination_rules.insert(dr.host.clone(), defined);
                self.rules
                    .destination_rules
                    .push(rule(origin, resource, dr));
            }
            Spec::VirtualService(vs) => {
                for host in &vs.hosts {
                    self.routed.insert(host.clone(), origin.clone());
                }
                self.rules.virtual_services.push(rule(origin, resource, vs));
            }
            Spec::Sidecar(sidecar) => self.rules.sidecars.push(rule(origin, resource, sidecar)),
            Spec::PeerAuthentication(pa) => {
                match &pa.selector {
                    None => {
                        let level = resource.deployment.clone();
                        if self.mtls_levels.contains_key(&level) {
                            // Ignored: an older one holds its level (warned by `check`).
                            return;
                        }
                        self.mtls_levels.insert(level, origin.clone());
                    }
                    Some(selector) => {
                        let deployment = resource.deployment.as_deref();
                        let selected = self
                            .mesh
                            .map(|mesh| mesh.workloads(deployment, Some(&selector.match_labels)));
                        for workload in selected.unwrap_or_default().into_keys() {
                            self.selected_mtls
                                .entry(workload.clone())
                                .or_insert_with(|| origin.clone());
                        }
                    }
                }
                self.rules
                    .peer_authentications
                    .push(rule(origin, resource, pa));
            }
            Spec::AuthorizationPolicy(ap) => self
                .rules
                .authorization_policies
                .push(rule(origin, resource, ap)),
        }
    }

    /// The labels of the endpoints behind a ServiceEntry's hosts: the instances it selects,
    /// or its listed endpoints (addresses or, resolved through DNS, names).
    fn entry_instances(&self, se: &ServiceEntry) -> Option<Vec<Labels>> {
        match &se.workload_selector {
            Some(selector) => {
                let mesh = self.mesh.filter(|mesh| mesh.labels_known)?;
                let selection = mesh.select(&selector.labels);
                Some(selection.instances.into_values().cloned().collect())
            }
            None => Some(se.endpoints.iter().map(|e| e.labels.clone()).collect()),
        }
    }

    /// The hostname of a WorkloadGroup's service, or the field that cannot make one and why.
    fn group_hostname(
        &self,
        config: &str,
        name: &str,
        wg: &WorkloadGroup,
    ) -> Result<String, (String, String)> {
        let dns_name = group_dns_name(config, name, wg)?;
        Ok(match self.mesh.and_then(|mesh| mesh.tld.as_deref()) {
            Some(tld) => format!("{dns_name}.{tld}"),
            None => dns_name,
        })
    }

    /// `Err` (field, reason) when a WorkloadGroup's `host` is taken already: by a
    /// ServiceEntry, another group, or a job.
    fn new_host(&self, host: &str) -> Result<(), (String, String)> {
        let taken = if let Some(entry) = self.entries.get(host) {
            format!("defined by {}", entry.origin.describe(entry.kind))
        } else if let Some(job) = self.mesh.and_then(|mesh| mesh.hosts.get(host)) {
            match &job.workload {
                Some(workload) => format!(
                    "a service of the mesh: a job of instance group {} of deployment {} \
                     exposes it",
                    workload.instance_group, workload.deployment
                ),
                None => "a service of the mesh (a job exposes it)".to_string(),
            }
        } else {
            return Ok(());
        };
        Err((
            "metadata.name".into(),
            format!(
                "the group's service would be {host}, which is already {taken}: rename the \
                 group (or its `app` label) or the config"
            ),
        ))
    }

    fn service_entry(&self, se: &ServiceEntry, problems: &mut Problems) {
        let tld = self.mesh.and_then(|mesh| mesh.tld.as_deref());
        if let Some(tld) = tld.filter(|_| se.resolution != Resolution::Static) {
            for (at, endpoint) in se.endpoints.iter().enumerate() {
                let name = endpoint.address.to_ascii_lowercase();
                if name == tld || name.ends_with(&format!(".{tld}")) {
                    problems.error(
                        format!("spec.endpoints[{at}].address"),
                        format!(
                            "{name} is a name of the mesh (under .{tld}): it resolves to a VIP, \
                             which Envoy would send back into the mesh; route to it with a \
                             VirtualService instead"
                        ),
                    );
                }
            }
        }
        for (at, host) in se.hosts.iter().enumerate() {
            let field = format!("spec.hosts[{at}]");
            if let Some(entry) = self.entries.get(host) {
                problems.error(
                    field,
                    format!(
                        "{host} is already defined by {}",
                        entry.origin.describe(entry.kind)
                    ),
                );
            } else if let Some(tld) = tld.filter(|tld| !host.ends_with(&format!(".{tld}"))) {
                problems.error(
                    field,
                    format!(
                        "{host} is not under the mesh's domain .{tld}: the VMs' resolver \
                         answers for .{tld} alone, so no VM could resolve it"
                    ),
                );
            } else if self.mesh.is_some_and(|mesh| mesh.hosts.contains_key(host)) {
                problems.error(
                    field,
                    format!(
                        "{host} is already a service of the mesh (a job exposes it): a \
                         ServiceEntry adds new names only"
                    ),
                );
            }
        }
        let (Some(selector), Some(mesh)) = (&se.workload_selector, self.mesh) else {
            return;
        };
        if !mesh.labels_known {
            return;
        }
        let selection = mesh.select(&selector.labels);
        if selection.instances.is_empty() {
            problems.error(
                "spec.workloadSelector.labels",
                "selects no instance of the mesh",
            );
            return;
        }
        for (at, port) in se.ports.iter().enumerate() {
            let target = port.target_port();
            if !selection.ports.contains(&target) {
                problems.warn(
                    format!("spec.ports[{at}]"),
                    format!(
                        "none of the {} instances it selects exposes port {target}",
                        selection.instances.len()
                    ),
                );
            }
        }
    }

    fn destination_rule(&self, dr: &DestinationRule, problems: &mut Problems) {
        let host = &dr.host;
        if let Some(first) = self.destination_rules.get(host) {
            problems.error(
                "spec.host",
                format!(
                    "{host} already has {}: one DestinationRule per host",
                    first.origin.describe(Kind::DestinationRule)
                ),
            );
        }
        let (ports, instances) = match self.host(host) {
            HostInfo::Known { ports, instances } => (ports, instances),
            HostInfo::Missing => {
                problems.error("spec.host", not_served(host));
                return;
            }
            HostInfo::Unknown => return,
        };
        let port_numbers: Vec<u16> = ports.iter().map(|(number, _)| *number).collect();
        let mut policies: Vec<(String, &TrafficPolicy)> = Vec::new();
        if let Some(policy) = &dr.traffic_policy {
            policies.push(("spec.trafficPolicy".into(), policy));
        }
        for (at, subset) in dr.subsets.iter().enumerate() {
            if let Some(policy) = &subset.traffic_policy {
                policies.push((format!("spec.subsets[{at}].trafficPolicy"), policy));
            }
        }
        for (field, policy) in policies {
            for (at, port_policy) in policy.port_level_settings.iter().enumerate() {
                let number = port_policy.port.number;
                if !port_numbers.contains(&number) {
                    problems.error(
                        format!("{field}.portLevelSettings[{at}].port.number"),
                        no_such_port(host, number, &port_numbers),
                    );
                }
            }
        }
        let Some(instances) = instances else { return };
        for (at, subset) in dr.subsets.iter().enumerate() {
            if !instances
                .iter()
                .any(|labels| selects(&subset.labels, labels))
            {
                problems.error(
                    format!("spec.subsets[{at}].labels"),
                    format!(
                        "subset {} selects none of the {} instances of {host}",
                        subset.name,
                        instances.len()
                    ),
                );
            }
        }
    }

    fn virtual_service(&self, vs: &VirtualService, problems: &mut Problems) {
        for (at, host) in vs.hosts.iter().enumerate() {
            let field = format!("spec.hosts[{at}]");
            if let Some(first) = self.routed.get(host) {
                problems.error(
                    &field,
                    format!(
                        "{host} is already routed by {}: one VirtualService per host",
                        first.describe(Kind::VirtualService)
                    ),
                );
            }
            match self.host(host) {
                HostInfo::Missing => problems.error(&field, not_served(host)),
                HostInfo::Known { ports, .. } => {
                    let has = |http: bool| ports.iter().any(|(_, p)| p.is_http() == http);
                    if !vs.http.is_empty() && !has(true) {
                        problems.warn(
                            "spec.http",
                            format!("{host} has no http port: these routes apply to none of its traffic"),
                        );
                    }
                    if !vs.tcp.is_empty() && !has(false) {
                        problems.warn(
                            "spec.tcp",
                            format!(
                                "{host} has no tcp port: these routes apply to none of its traffic"
                            ),
                        );
                    }
                }
                HostInfo::Unknown => {}
            }
        }
        for (field, destination) in destinations(vs) {
            self.destination(&field, destination, problems);
        }
        self.source_labels(vs, problems);
    }

    /// A Sidecar's hosts and selector, against the mesh: what it pins or selects that does
    /// not exist now is warned about, not refused (a pin takes the service once it comes).
    fn sidecar(&self, sidecar: &Sidecar, problems: &mut Problems) {
        let hosts = sidecar.egress.first().map_or(&[][..], |e| &e.hosts[..]);
        for (at, host) in hosts.iter().enumerate() {
            let field = format!("spec.egress[0].hosts[{at}]");
            match egress_host(host) {
                Ok(HostPattern::Exact(name)) => {
                    if let HostInfo::Missing = self.host(&name) {
                        problems.warn(
                            field,
                            format!("{}: it is pinned once one does", not_served(&name)),
                        );
                    }
                }
                Ok(pattern @ HostPattern::Suffix(_)) => {
                    let Some(mesh) = self.mesh else { continue };
                    let mut names = mesh.hosts.keys().chain(self.entries.keys());
                    if !names.any(|name| pattern.matches(name)) {
                        problems.warn(
                            field,
                            format!(
                                "{host}: no job of the mesh exposes such a name and no \
                                 ServiceEntry defines one: those that come are pinned"
                            ),
                        );
                    }
                }
                // `*/*` pins whatever the mesh has; a host that is none was refused alone.
                Ok(HostPattern::Any) | Err(_) => {}
            }
        }
        let Some(selector) = &sidecar.workload_selector else {
            return;
        };
        let Some(mesh) = self.mesh.filter(|mesh| mesh.labels_known) else {
            return;
        };
        let of_any_instance = selector
            .labels
            .keys()
            .all(|key| labels::is_instance_label(key));
        if !of_any_instance && mesh.select(&selector.labels).instances.is_empty() {
            problems.warn(
                "spec.workloadSelector.labels",
                "no instance of the mesh has these labels: it applies to no VM",
            );
        }
    }

    /// A PeerAuthentication against the mesh and the older ones: what it applies to (see
    /// [`State::policy_scope`]), the ports it names that none of those groups exposes, and
    /// which older policy of its level or for its groups takes precedence over it.
    fn peer_authentication(
        &self,
        deployment: Option<&str>,
        pa: &PeerAuthentication,
        problems: &mut Problems,
    ) {
        let selected = self.policy_scope(deployment, pa.selector.as_ref(), problems);
        if pa.selector.is_none() {
            if let Some(older) = self.mtls_levels.get(&deployment.map(str::to_string)) {
                let level = match deployment {
                    Some(deployment) => format!("deployment {}", clip(deployment)),
                    None => "the mesh".to_string(),
                };
                problems.warn(
                    "spec",
                    format!(
                        "ignored: {} is the policy of {level} without selector, and older (the \
                         oldest config wins, as in Istio)",
                        older.describe(Kind::PeerAuthentication)
                    ),
                );
            }
            return;
        }
        let Some(selected) = selected else { return };
        let mut older: BTreeMap<&Origin, Vec<String>> = BTreeMap::new();
        for workload in selected.keys() {
            if let Some(origin) = self.selected_mtls.get(*workload) {
                older.entry(origin).or_default().push(group_name(workload));
            }
        }
        for (origin, groups) in older {
            problems.warn(
                "spec.selector.matchLabels",
                format!(
                    "{} selects {} too and is older: it applies there, this one does not (the \
                     oldest config wins, as in Istio)",
                    origin.describe(Kind::PeerAuthentication),
                    groups.join(", ")
                ),
            );
        }
        if selected.is_empty() {
            return;
        }
        for PolicyPort(port) in pa.port_level_mtls.keys() {
            if !selected.values().any(|ports| ports.contains(port)) {
                problems.warn(
                    format!("spec.portLevelMtls.{port}"),
                    format!(
                        "none of the instance groups it selects ({}) exposes port {port}",
                        selected
                            .keys()
                            .map(|workload| group_name(workload))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }

    /// The instance groups a security policy applies to now, with their ports; `None` when
    /// the mesh view cannot tell. A namespace that names no deployment of the mesh, and a
    /// selector that selects no instance group, are warned about, not refused: the policy
    /// applies once they come.
    fn policy_scope(
        &self,
        deployment: Option<&str>,
        selector: Option<&PolicySelector>,
        problems: &mut Problems,
    ) -> Option<BTreeMap<&WorkloadKey, BTreeSet<u16>>> {
        let mesh = self.mesh?;
        let knows_workloads = mesh.hosts.values().any(|host| host.workload.is_some());
        if !knows_workloads {
            return None;
        }
        if let Some(deployment) = deployment {
            if mesh.workloads(Some(deployment), None).is_empty() {
                problems.warn(
                    "metadata.namespace",
                    format!(
                        "namespace {quoted} names no deployment of the mesh (no job of a \
                         deployment {quoted} is exposed): the policy applies to none of its \
                         instance groups until one is",
                        quoted = format!("{:?}", clip(deployment))
                    ),
                );
            }
        }
        let Some(selector) = selector else {
            return Some(mesh.workloads(deployment, None));
        };
        if !mesh.labels_known {
            return None;
        }
        let selected = mesh.workloads(deployment, Some(&selector.match_labels));
        if selected.is_empty() {
            problems.warn(
                "spec.selector.matchLabels",
                "no instance group of the mesh has these labels: the policy applies to none \
                 until one has",
            );
        }
        Some(selected)
    }

    /// A `sourceLabels` that no instance of the mesh has matches no client, unless it names
    /// only what the director says of every instance (a VM that exposes no job is known to
    /// the pilot only when its Envoy connects).
    fn source_labels(&self, vs: &VirtualService, problems: &mut Problems) {
        let Some(mesh) = self.mesh.filter(|mesh| mesh.labels_known) else {
            return;
        };
        for (at, route) in vs.http.iter().enumerate() {
            for (m, conditions) in route.matches.iter().enumerate() {
                let selector = &conditions.source_labels;
                let of_any_instance = selector.keys().all(|key| labels::is_instance_label(key));
                if selector.is_empty() || of_any_instance {
                    continue;
                }
                if mesh.select(selector).instances.is_empty() {
                    problems.warn(
                        format!("spec.http[{at}].match[{m}].sourceLabels"),
                        "no instance of the mesh has these labels: the match holds for no \
                         client",
                    );
                }
            }
        }
    }

    fn destination(&self, field: &str, destination: &Destination, problems: &mut Problems) {
        let host = &destination.host;
        match self.host(host) {
            HostInfo::Missing => problems.error(format!("{field}.host"), not_served(host)),
            HostInfo::Known { ports, .. } => {
                let numbers: Vec<u16> = ports.iter().map(|(number, _)| *number).collect();
                if let Some(port) = destination.port {
                    if !numbers.contains(&port.number) {
                        problems.error(
                            format!("{field}.port.number"),
                            no_such_port(host, port.number, &numbers),
                        );
                    }
                }
            }
            HostInfo::Unknown => {}
        }
        let Some(subset) = &destination.subset else {
            return;
        };
        match self.destination_rules.get(host) {
            None => problems.error(
                format!("{field}.subset"),
                format!(
                    "subset {subset} of {host} is not defined: no DestinationRule for {host} \
                     was accepted"
                ),
            ),
            Some(defined) if !defined.subsets.contains(subset) => problems.error(
                format!("{field}.subset"),
                format!(
                    "{} has no subset {subset} (it has: {})",
                    defined.origin.describe(Kind::DestinationRule),
                    if defined.subsets.is_empty() {
                        "none".to_string()
                    } else {
                        defined.subsets.join(", ")
                    }
                ),
            ),
            Some(_) => {}
        }
    }
}

/// Every destination of a VirtualService with its field path: routes and mirrors.
pub(crate) fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut all = Vec::new();
    for (at, route) in vs.http.iter().enumerate() {
        for (to, destination) in route.route.iter().enumerate() {
            all.push((
                format!("spec.http[{at}].route[{to}].destination"),
                &destination.destination,
            ));
        }
        if let Some(mirror) = &route.mirror {
            all.push((format!("spec.http[{at}].mirror"), mirror));
        }
    }
    for (at, route) in vs.tcp.iter().enumerate() {
        for (to, destination) in route.route.iter().enumerate() {
            all.push((
                format!("spec.tcp[{at}].route[{to}].destination"),
                &destination.destination,
            ));
        }
    }
    all
}

/// What a resource's name must be unique among: its kind's, in every config (a WorkloadGroup's
/// in its config).
fn name_key(config: &str, resource: &Resource) -> (Kind, Option<String>, String) {
    let kind = resource.spec.kind();
    let scope = (kind == Kind::WorkloadGroup).then(|| config.to_string());
    (kind, scope, resource.name.clone())
}

fn rule<S: Clone>(origin: Origin, resource: &Resource, spec: &S) -> Rule<S> {
    Rule {
        config: origin.config,
        name: origin.name,
        reference: resource.reference(),
        deployment: resource.deployment.clone(),
        spec: spec.clone(),
    }
}

/// The warning on every accepted Sidecar: what it does differs from Istio's.
pub(crate) const SIDECAR_ONLY_ADDS: &str = "unlike Istio's Sidecar, this one only adds: its \
     hosts are always in the Envoy config of the VMs it selects, and any other name of the \
     mesh still joins a VM's config when the VM resolves it (Istio's would leave it out)";

/// An instance group as findings name it: `deployment/instance group`.
fn group_name(workload: &WorkloadKey) -> String {
    format!("{}/{}", workload.deployment, workload.instance_group)
}

fn not_served(host: &str) -> String {
    format!("{host}: no job of the mesh exposes it and no ServiceEntry defines it")
}

fn no_such_port(host: &str, number: u16, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{host} has no port {number} (it has: {})",
        if ports.is_empty() {
            "none".to_string()
        } else {
            ports.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::mesh::{MeshHost, MeshInstance, MeshPort};
    use super::super::parse::parse_config;
    use super::*;

    fn mesh() -> MeshView {
        let instance = |id: &str, version: &str| MeshInstance {
            id: id.into(),
            labels: [
                ("app".to_string(), "reviews".to_string()),
                ("version".to_string(), version.to_string()),
            ]
            .into(),
        };
        let http = |number| MeshPort {
            number,
            protocol: Protocol::Http,
        };
        let mut view = MeshView {
            labels_known: true,
            tld: Some("boshy".into()),
            ..MeshView::default()
        };
        view.hosts.insert(
            "reviews.reviews.bookinfo.boshy".into(),
            MeshHost {
                ports: vec![http(9080)],
                instances: vec![instance("a", "v1"), instance("b", "v2")],
                workload: Some(workload("bookinfo", "reviews")),
            },
        );
        view.hosts.insert(
            "redis.cache.bookinfo.boshy".into(),
            MeshHost {
                ports: vec![MeshPort {
                    number: 6379,
                    protocol: Protocol::Tcp,
                }],
                instances: vec![],
                workload: Some(workload("bookinfo", "cache")),
            },
        );
        view
    }

    fn workload(deployment: &str, instance_group: &str) -> WorkloadKey {
        WorkloadKey {
            deployment: deployment.into(),
            instance_group: instance_group.into(),
        }
    }

    fn resource(kind: &str, name: &str, spec: &str) -> String {
        format!(
            "- apiVersion: networking.istio.io/v1\n  kind: {kind}\n  metadata: {{name: {name}}}\n  spec:\n    {}\n",
            spec.trim_end().replace('\n', "\n    ")
        )
    }

    fn config(name: &str, resources: &[String]) -> ParsedConfig {
        let content = format!("apiVersion: v1\nkind: List\nitems:\n{}", resources.concat());
        let parsed = parse_config(name, &content);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed
    }

    const REVIEWS: &str = "reviews.reviews.bookinfo.boshy";

    fn subsets_rule(name: &str, subsets: &[&str]) -> String {
        let mut spec = format!("host: {REVIEWS}\nsubsets:\n");
        for subset in subsets {
            spec.push_str(&format!(
                "- {{name: {subset}, labels: {{version: {subset}}}}}\n"
            ));
        }
        resource("DestinationRule", name, &spec)
    }

    fn route_to(name: &str, host: &str, subset: &str) -> String {
        resource(
            "VirtualService",
            name,
            &format!("hosts: [{host}]\nhttp:\n- route:\n  - destination: {{host: {host}, subset: {subset}}}\n"),
        )
    }

    fn error_lines(validated: &Validated) -> Vec<String> {
        validated.errors().map(ToString::to_string).collect()
    }

    #[test]
    fn routes_to_defined_subsets_of_mesh_hosts_are_accepted() {
        let configs = [config(
            "reviews",
            &[
                subsets_rule("reviews", &["v1", "v2"]),
                route_to("reviews", REVIEWS, "v2"),
            ],
        )];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(validated.verdicts[0].accepted.len(), 2);
        assert!(validated.skipped_checks.is_empty());
        assert_eq!(
            validated.rules.virtual_service(REVIEWS).unwrap().name,
            "reviews"
        );
        assert_eq!(
            validated
                .rules
                .destination_rule(REVIEWS)
                .unwrap()
                .spec
                .subsets
                .len(),
            2
        );
        assert!(validated.rules.virtual_service("other.g.d.boshy").is_none());
    }

    #[test]
    fn an_undefined_subset_or_host_rejects_the_route_and_nothing_else() {
        let configs = [config(
            "reviews",
            &[
                subsets_rule("reviews", &["v1"]),
                route_to("to-v3", REVIEWS, "v3"),
                route_to("nowhere", "ratings.ratings.bookinfo.boshy", "v1"),
            ],
        )];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            [
                "config \"reviews\": VirtualService \"nowhere\": spec.hosts[0]: \
                 ratings.ratings.bookinfo.boshy: no job of the mesh exposes it and no \
                 ServiceEntry defines it",
                "config \"reviews\": VirtualService \"nowhere\": \
                 spec.http[0].route[0].destination.host: ratings.ratings.bookinfo.boshy: no \
                 job of the mesh exposes it and no ServiceEntry defines it",
                "config \"reviews\": VirtualService \"nowhere\": \
                 spec.http[0].route[0].destination.subset: subset v1 of \
                 ratings.ratings.bookinfo.boshy is not defined: no DestinationRule for \
                 ratings.ratings.bookinfo.boshy was accepted",
                "config \"reviews\": VirtualService \"to-v3\": \
                 spec.http[0].route[0].destination.subset: DestinationRule reviews (config \
                 reviews) has no subset v3 (it has: v1)",
            ]
        );
        assert_eq!(validated.rules.destination_rules.len(), 1);
        assert!(validated.rules.virtual_services.is_empty());
        assert_eq!(validated.verdicts[0].rejected().len(), 2);
    }

    #[test]
    fn a_subset_that_selects_no_instance_rejects_its_rule_and_the_routes_to_it() {
        let configs = [config(
            "reviews",
            &[
                subsets_rule("reviews", &["v1", "v9"]),
                route_to("reviews", REVIEWS, "v1"),
            ],
        )];
        let validated = validate(&configs, Some(&mesh()));
        let errors = error_lines(&validated);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains(
            "DestinationRule \"reviews\": spec.subsets[1].labels: subset v9 selects none of \
             the 2 instances of reviews.reviews.bookinfo.boshy"
        ));
        assert!(errors[1].contains("no DestinationRule for reviews.reviews.bookinfo.boshy"));
        // Without instance labels, the subset cannot be checked and the rule stands.
        let blind = MeshView {
            labels_known: false,
            ..mesh()
        };
        let validated = validate(&configs, Some(&blind));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(validated.skipped_checks, [NO_LABELS]);
    }

    #[test]
    fn the_first_claim_on_a_host_wins_by_config_then_resource_name() {
        let configs = [
            config("b-later", &[route_to("a", REVIEWS, "v1")]),
            config(
                "a-first",
                &[
                    subsets_rule("reviews", &["v1"]),
                    route_to("z", REVIEWS, "v1"),
                ],
            ),
            config(
                "c",
                &[
                    subsets_rule("again", &["v1"]),
                    subsets_rule("reviews", &["v1"]),
                ],
            ),
        ];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            [
                "config \"b-later\": VirtualService \"a\": spec.hosts[0]: \
                 reviews.reviews.bookinfo.boshy is already routed by VirtualService z \
                 (config a-first): one VirtualService per host",
                "config \"c\": DestinationRule \"again\": spec.host: \
                 reviews.reviews.bookinfo.boshy already has DestinationRule reviews (config \
                 a-first): one DestinationRule per host",
                "config \"c\": DestinationRule \"reviews\": metadata.name: DestinationRule \
                 reviews is already defined in config a-first: names are unique per kind \
                 across every config",
                "config \"c\": DestinationRule \"reviews\": spec.host: \
                 reviews.reviews.bookinfo.boshy already has DestinationRule reviews (config \
                 a-first): one DestinationRule per host",
            ]
        );
        // Verdicts come in the order the configs were given.
        let names: Vec<&str> = validated
            .verdicts
            .iter()
            .map(|v| v.config.as_str())
            .collect();
        assert_eq!(names, ["b-later", "a-first", "c"]);
    }

    #[test]
    fn source_labels_no_instance_has_are_warned_about_unless_every_instance_has_such_labels() {
        let limited_to = |selector: &str| {
            resource(
                "VirtualService",
                "reviews",
                &format!("hosts: [{REVIEWS}]\nhttp:\n- match: [{{sourceLabels: {selector}}}]\n  route:\n  - destination: {{host: {REVIEWS}}}\n"),
            )
        };
        let warnings = |selector: &str| -> Vec<String> {
            let validated = validate(&[config("c", &[limited_to(selector)])], Some(&mesh()));
            assert_eq!(error_lines(&validated), Vec::<String>::new());
            validated.verdicts[0]
                .warnings
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            warnings("{app: reviews, version: v2}"),
            Vec::<String>::new()
        );
        assert_eq!(
            warnings("{version: v9}"),
            [
                "config \"c\": VirtualService \"reviews\": spec.http[0].match[0].sourceLabels: no \
              instance of the mesh has these labels: the match holds for no client"
            ]
        );
        assert_eq!(
            warnings("{bosh.io/instance-group: apricot}"),
            Vec::<String>::new(),
            "an instance that exposes nothing has its instance group"
        );
    }

    #[test]
    fn a_service_entry_defines_a_host_across_instance_groups() {
        let entry = resource(
            "ServiceEntry",
            "reviews",
            "hosts: [reviews.bookinfo.boshy]\nports: [{number: 9080, name: http}]\nresolution: STATIC\nworkloadSelector: {labels: {app: reviews}}\n",
        );
        let rule = resource(
            "DestinationRule",
            "reviews",
            "host: reviews.bookinfo.boshy\nsubsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n",
        );
        let route = route_to("reviews", "reviews.bookinfo.boshy", "v2");
        let configs = [config(
            "reviews",
            &[entry.clone(), rule.clone(), route.clone()],
        )];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert!(validated
            .rules
            .service_entry("reviews.bookinfo.boshy")
            .is_some());

        // The same without a mesh view: the entry still defines the host, subsets unchecked.
        let validated = validate(&configs, None);
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(validated.skipped_checks, [NO_MESH_VIEW]);

        let nobody = entry.replace("app: reviews", "app: nobody");
        let validated = validate(&[config("reviews", &[nobody, rule, route])], Some(&mesh()));
        let errors = error_lines(&validated);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.workloadSelector.labels: selects no instance")),
            "{errors:?}"
        );
        // The rule (host) and the route (host, destination host, subset) fall with it.
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(validated.rules.is_empty());
    }

    #[test]
    fn a_service_entry_does_not_redefine_a_mesh_host_or_another_entry() {
        let entry = |name: &str, host: &str| {
            resource(
                "ServiceEntry",
                name,
                &format!(
                    "hosts: [{host}]\nports: [{{number: 80, name: http}}]\nresolution: STATIC\nendpoints: [{{address: 10.9.0.1}}]\n"
                ),
            )
        };
        let configs = [config(
            "entries",
            &[
                entry("mine", REVIEWS),
                entry("db", "db.external.boshy"),
                entry("db2", "db.external.boshy"),
                entry("elsewhere", "db.example.com"),
            ],
        )];
        let validated = validate(&configs, Some(&mesh()));
        let errors = error_lines(&validated);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("ServiceEntry \"db2\": spec.hosts[0]: db.external.boshy is already defined by ServiceEntry db (config entries)"));
        assert!(errors[1].contains("ServiceEntry \"elsewhere\": spec.hosts[0]: db.example.com is not under the mesh's domain .boshy"), "{errors:?}");
        assert!(errors[2].contains("ServiceEntry \"mine\": spec.hosts[0]: reviews.reviews.bookinfo.boshy is already a service of the mesh"));
    }

    #[test]
    fn a_service_entry_resolved_through_dns_names_outside_the_mesh_with_labels_for_subsets() {
        let entry = |endpoints: &str| {
            resource(
                "ServiceEntry",
                "db",
                &format!(
                    "hosts: [db.external.boshy]\nports: [{{number: 5432, name: tcp-postgres}}]\nresolution: DNS\nendpoints: {endpoints}\n"
                ),
            )
        };
        let subsets = resource(
            "DestinationRule",
            "db",
            "host: db.external.boshy\nsubsets: [{name: primary, labels: {role: primary}}, {name: old, labels: {role: old}}]\n",
        );
        let listed = "[{address: primary.db.example.com, labels: {role: primary}}, {address: replica.db.example.com}]";
        let validated = validate(
            &[config("db", &[entry(listed), subsets.clone()])],
            Some(&mesh()),
        );
        assert_eq!(
            error_lines(&validated),
            ["config \"db\": DestinationRule \"db\": spec.subsets[1].labels: subset old selects none of the 2 instances of db.external.boshy"],
            "subsets select among the listed names by their labels"
        );
        let into_the_mesh = "[{address: Reviews.Reviews.Bookinfo.boshy}]";
        let validated = validate(&[config("db", &[entry(into_the_mesh)])], Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            ["config \"db\": ServiceEntry \"db\": spec.endpoints[0].address: reviews.reviews.bookinfo.boshy is a name of the mesh (under .boshy): it resolves to a VIP, which Envoy would send back into the mesh; route to it with a VirtualService instead"]
        );
    }

    #[test]
    fn ports_named_by_a_rule_exist_on_its_host() {
        let route = resource(
            "VirtualService",
            "r",
            &format!("hosts: [{REVIEWS}]\nhttp:\n- route:\n  - destination: {{host: {REVIEWS}, port: {{number: 9090}}}}\n"),
        );
        let policy = resource(
            "DestinationRule",
            "d",
            &format!("host: {REVIEWS}\ntrafficPolicy: {{portLevelSettings: [{{port: {{number: 80}}}}]}}\n"),
        );
        let validated = validate(&[config("c", &[route, policy])], Some(&mesh()));
        let errors = error_lines(&validated);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("DestinationRule \"d\": spec.trafficPolicy.portLevelSettings[0].port.number: reviews.reviews.bookinfo.boshy has no port 80 (it has: 9080)"));
        assert!(errors[1].contains("VirtualService \"r\": spec.http[0].route[0].destination.port.number: reviews.reviews.bookinfo.boshy has no port 9090 (it has: 9080)"));
    }

    #[test]
    fn routes_of_a_protocol_the_host_lacks_are_warned_about() {
        let route = resource(
            "VirtualService",
            "r",
            "hosts: [redis.cache.bookinfo.boshy]\nhttp:\n- route:\n  - destination: {host: redis.cache.bookinfo.boshy}\n",
        );
        let validated = validate(&[config("c", &[route])], Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(
            validated.verdicts[0].warnings[0].to_string(),
            "config \"c\": VirtualService \"r\": spec.http: redis.cache.bookinfo.boshy has no \
             http port: these routes apply to none of its traffic"
        );
    }

    fn sidecar(name: &str, selector: Option<&str>, hosts: &[&str]) -> String {
        let hosts: Vec<String> = hosts.iter().map(|host| format!("'{host}'")).collect();
        let mut spec = format!("egress:\n- hosts: [{}]\n", hosts.join(", "));
        if let Some(selector) = selector {
            spec.push_str(&format!("workloadSelector: {{labels: {selector}}}\n"));
        }
        resource("Sidecar", name, &spec)
    }

    fn warning_lines(validated: &Validated) -> Vec<String> {
        validated
            .verdicts
            .iter()
            .flat_map(|verdict| &verdict.warnings)
            .map(|finding| {
                let field = finding.field.as_deref().unwrap_or("");
                format!("{field}: {}", finding.message)
            })
            .collect()
    }

    #[test]
    fn a_sidecar_warns_of_the_hosts_the_mesh_lacks_and_of_what_it_does_unlike_istio() {
        let entry = resource(
            "ServiceEntry",
            "db",
            "hosts: [db.external.boshy]\nports: [{number: 5432, name: tcp}]\nresolution: STATIC\nendpoints: [{address: 10.9.0.1}]\n",
        );
        let pins = sidecar(
            "reviews",
            Some("{app: reviews}"),
            &[
                "*/reviews.reviews.bookinfo.boshy",
                "./db.external.boshy",
                "*/ratings.ratings.bookinfo.boshy",
                "*/*.cache.bookinfo.boshy",
                "*/*.nowhere.boshy",
                "*/*",
            ],
        );
        let configs = [config("pins", &[entry, pins])];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(
            warning_lines(&validated),
            [
                "spec.egress[0].hosts: `*/*` pins every service of the mesh: the other hosts \
                 add nothing",
                "spec.egress[0].hosts[2]: ratings.ratings.bookinfo.boshy: no job of the mesh \
                 exposes it and no ServiceEntry defines it: it is pinned once one does",
                "spec.egress[0].hosts[4]: */*.nowhere.boshy: no job of the mesh exposes such a \
                 name and no ServiceEntry defines one: those that come are pinned",
                &format!("spec.egress: {SIDECAR_ONLY_ADDS}"),
            ]
        );
        assert_eq!(validated.verdicts[0].accepted.len(), 2);
        let [pins] = &validated.rules.sidecars[..] else {
            panic!("{:?}", validated.rules)
        };
        assert_eq!(
            (pins.config.as_str(), pins.name.as_str()),
            ("pins", "reviews")
        );
        assert!(!validated.rules.is_empty());

        // Without a mesh view, hosts are not checked; what it does unlike Istio is said all the
        // same, which `boshy rules check` shows.
        let validated = validate(&configs, None);
        assert_eq!(
            warning_lines(&validated)[1..],
            [format!("spec.egress: {SIDECAR_ONLY_ADDS}")]
        );
    }

    #[test]
    fn a_sidecar_whose_selector_no_instance_has_is_warned_about() {
        let warnings = |selector: &str| {
            let configs = [config(
                "c",
                &[sidecar(
                    "s",
                    Some(selector),
                    &["*/reviews.reviews.bookinfo.boshy"],
                )],
            )];
            let validated = validate(&configs, Some(&mesh()));
            assert_eq!(error_lines(&validated), Vec::<String>::new());
            warning_lines(&validated)
        };
        let only_adds = format!("spec.egress: {SIDECAR_ONLY_ADDS}");
        assert_eq!(warnings("{version: v2}"), std::slice::from_ref(&only_adds));
        assert_eq!(
            warnings("{version: v9}"),
            [
                "spec.workloadSelector.labels: no instance of the mesh has these labels: it \
                 applies to no VM"
                    .to_string(),
                only_adds.clone()
            ]
        );
        assert_eq!(
            warnings("{bosh.io/instance-group: apricot}"),
            [only_adds],
            "an instance that exposes nothing has its instance group"
        );
    }

    #[test]
    fn sidecars_that_select_one_vm_are_all_accepted_and_their_names_are_unique() {
        let configs = [
            config(
                "a",
                &[
                    sidecar("everyone", None, &["*/redis.cache.bookinfo.boshy"]),
                    sidecar("reviews", Some("{app: reviews}"), &["*/*"]),
                ],
            ),
            config("b", &[sidecar("reviews", None, &["*/*"])]),
        ];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            [
                "config \"b\": Sidecar \"reviews\": metadata.name: Sidecar reviews is already \
              defined in config a: names are unique per kind across every config"
            ]
        );
        let names: Vec<&str> = validated
            .rules
            .sidecars
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(names, ["everyone", "reviews"]);
        assert!(
            validated.verdicts[1].warnings.is_empty(),
            "a refused Sidecar is not said to pin anything"
        );
    }

    /// A security policy of `kind` in `namespace` (`None`: none written) with `spec`.
    fn policy(kind: &str, name: &str, namespace: Option<&str>, spec: &str) -> String {
        let namespace = namespace.map_or(String::new(), |ns| format!(", namespace: {ns}"));
        format!(
            "- apiVersion: security.istio.io/v1\n  kind: {kind}\n  metadata: {{name: {name}{namespace}}}\n  spec:\n    {}\n",
            spec.trim_end().replace('\n', "\n    ")
        )
    }

    /// `config(name, resources)` as the director's version `id`.
    fn config_with_id(name: &str, id: u64, resources: &[String]) -> ParsedConfig {
        ParsedConfig {
            director_id: Some(id),
            ..config(name, resources)
        }
    }

    #[test]
    fn security_policies_warn_of_deployments_and_groups_the_mesh_lacks() {
        let configs = [config(
            "authz",
            &[
                policy("AuthorizationPolicy", "nowhere", Some("nowhere"), "{}"),
                policy(
                    "AuthorizationPolicy",
                    "nobody",
                    None,
                    "selector: {matchLabels: {app: nobody}}\nrules: [{}]\n",
                ),
                policy(
                    "AuthorizationPolicy",
                    "other-deployment",
                    Some("cache"),
                    "selector: {matchLabels: {app: reviews}}\nrules: [{}]\n",
                ),
                policy(
                    "AuthorizationPolicy",
                    "reviews",
                    Some("bookinfo"),
                    "selector: {matchLabels: {app: reviews}}\nrules: [{}]\n",
                ),
                policy(
                    "AuthorizationPolicy",
                    "everyone",
                    Some("istio-system"),
                    "rules: [{}]\n",
                ),
            ],
        )];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(
            warning_lines(&validated),
            [
                // What a policy says alone comes first, from the parse.
                "spec.rules: an ALLOW policy without rules allows nothing: every request to the \
                 instance groups it applies to is denied (Istio's meaning; `rules: [{}]` allows \
                 every request)",
                "spec.selector.matchLabels: no instance group of the mesh has these labels: the \
                 policy applies to none until one has",
                "metadata.namespace: namespace \"nowhere\" names no deployment of the mesh (no \
                 job of a deployment \"nowhere\" is exposed): the policy applies to none of its \
                 instance groups until one is",
                "metadata.namespace: namespace \"cache\" names no deployment of the mesh (no job \
                 of a deployment \"cache\" is exposed): the policy applies to none of its \
                 instance groups until one is",
                "spec.selector.matchLabels: no instance group of the mesh has these labels: the \
                 policy applies to none until one has",
            ]
        );
        let accepted: Vec<(&str, Option<&str>)> = validated
            .rules
            .authorization_policies
            .iter()
            .map(|rule| (rule.name.as_str(), rule.deployment.as_deref()))
            .collect();
        assert_eq!(
            accepted,
            [
                ("everyone", None),
                ("nobody", None),
                ("nowhere", Some("nowhere")),
                ("other-deployment", Some("cache")),
                ("reviews", Some("bookinfo")),
            ]
        );
        // Without a mesh view, nothing is said of the mesh.
        let validated = validate(&configs, None);
        assert_eq!(warning_lines(&validated).len(), 1);
    }

    #[test]
    fn the_oldest_peer_authentication_of_a_level_applies_and_later_ones_are_ignored() {
        let mode = |mode: &str| format!("mtls: {{mode: {mode}}}\n");
        let configs = [
            config_with_id(
                "a-newer",
                7,
                &[
                    policy("PeerAuthentication", "mesh", None, &mode("DISABLE")),
                    policy(
                        "PeerAuthentication",
                        "bookinfo",
                        Some("bookinfo"),
                        &mode("STRICT"),
                    ),
                ],
            ),
            config_with_id(
                "b-older",
                3,
                &[
                    policy(
                        "PeerAuthentication",
                        "default",
                        Some("istio-system"),
                        &mode("STRICT"),
                    ),
                    policy(
                        "PeerAuthentication",
                        "bookinfo-too",
                        Some("bookinfo"),
                        &mode("PERMISSIVE"),
                    ),
                ],
            ),
            config(
                "c-no-id",
                &[policy("PeerAuthentication", "last", None, &mode("UNSET"))],
            ),
        ];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        let warnings: Vec<String> = validated
            .verdicts
            .iter()
            .flat_map(|v| &v.warnings)
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            warnings,
            [
                "config \"a-newer\": PeerAuthentication \"bookinfo\": spec: ignored: \
                 PeerAuthentication bookinfo-too (config b-older) is the policy of deployment \
                 bookinfo without selector, and older (the oldest config wins, as in Istio)",
                "config \"a-newer\": PeerAuthentication \"mesh\": spec: ignored: \
                 PeerAuthentication default (config b-older) is the policy of the mesh without \
                 selector, and older (the oldest config wins, as in Istio)",
                "config \"c-no-id\": PeerAuthentication \"last\": spec: ignored: \
                 PeerAuthentication default (config b-older) is the policy of the mesh without \
                 selector, and older (the oldest config wins, as in Istio)",
            ]
        );
        let kept: Vec<&str> = validated
            .rules
            .peer_authentications
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(kept, ["bookinfo-too", "default"]);
        // Without ids, the first by config name is the oldest.
        let unnumbered: Vec<ParsedConfig> = configs
            .into_iter()
            .map(|c| ParsedConfig {
                director_id: None,
                ..c
            })
            .collect();
        let validated = validate(&unnumbered, Some(&mesh()));
        let kept: Vec<&str> = validated
            .rules
            .peer_authentications
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(kept, ["bookinfo", "mesh"]);
    }

    #[test]
    fn peer_authentications_that_select_one_group_apply_oldest_first_and_ports_are_checked() {
        let selecting = |name: &str, labels: &str, ports: &str| {
            policy(
                "PeerAuthentication",
                name,
                None,
                &format!("selector: {{matchLabels: {labels}}}\nmtls: {{mode: STRICT}}\nportLevelMtls: {ports}\n"),
            )
        };
        let configs = [
            config_with_id(
                "newer",
                9,
                &[selecting("v1", "{version: v1}", "{9080: {mode: DISABLE}}")],
            ),
            config_with_id(
                "older",
                2,
                &[selecting(
                    "reviews",
                    "{app: reviews}",
                    "{9080: {mode: PERMISSIVE}, 8080: {mode: DISABLE}}",
                )],
            ),
        ];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(
            warning_lines(&validated),
            [
                "spec.selector.matchLabels: PeerAuthentication reviews (config older) selects \
                 bookinfo/reviews too and is older: it applies there, this one does not (the \
                 oldest config wins, as in Istio)",
                "spec.portLevelMtls.8080: none of the instance groups it selects \
                 (bookinfo/reviews) exposes port 8080",
            ]
        );
        let order: Vec<&str> = validated
            .rules
            .peer_authentications
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(order, ["reviews", "v1"], "oldest first");
    }

    #[test]
    fn config_errors_and_parse_errors_are_in_the_verdict() {
        let broken = parse_config("broken", "not: [valid");
        let bad_resource = parse_config(
            "bad",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: s}\nspec: {}\n",
        );
        let validated = validate(&[broken, bad_resource], Some(&mesh()));
        assert_eq!(validated.verdicts[0].rejected(), [None]);
        assert_eq!(validated.verdicts[1].errors.len(), 1);
        assert!(validated.rules.is_empty());
    }

    fn group(name: &str, spec: &str) -> String {
        resource("WorkloadGroup", name, spec)
    }

    #[test]
    fn a_workload_group_names_a_service_that_rules_can_target() {
        let orders = group(
            "orders",
            "template:\n  ports: {http-api: 8080}\n  labels: {app: Orders_API}\n",
        );
        let rule = resource(
            "DestinationRule",
            "orders",
            "host: orders-api.orders.shop.boshy\nsubsets: [{name: v1, labels: {version: v1}}]\n",
        );
        let route = route_to("orders", "orders-api.orders.shop.boshy", "v1");
        let validated = validate(&[config("shop", &[orders, rule, route])], Some(&mesh()));
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        let [accepted] = validated.rules.workload_groups.as_slice() else {
            panic!("{:?}", validated.rules)
        };
        assert_eq!(accepted.spec.hostname, "orders-api.orders.shop.boshy");
        assert_eq!(
            (accepted.config.as_str(), accepted.name.as_str()),
            ("shop", "orders")
        );

        // Without the app label, the group's name is the service's; without a mesh view, the
        // name has no domain.
        let plain = group("orders", "template: {ports: {http: 8080}}\n");
        let validated = validate(&[config("Shop_1", &[plain])], None);
        assert_eq!(error_lines(&validated), Vec::<String>::new());
        assert_eq!(
            validated.rules.workload_groups[0].spec.hostname,
            "orders.orders.shop-1"
        );
    }

    #[test]
    fn a_workload_group_takes_no_host_a_job_an_entry_or_another_group_has() {
        let entry = resource(
            "ServiceEntry",
            "db",
            "hosts: [db.db.shop.boshy]\nports: [{number: 5432, name: tcp}]\nresolution: STATIC\nendpoints: [{address: 192.0.2.1}]\n",
        );
        let db = group("db", "template: {ports: {tcp: 5432}}\n");
        let reviews = group(
            "reviews",
            "metadata: {labels: {app: reviews}}\ntemplate: {ports: {http: 9080}}\n",
        );
        let twice = group("orders", "template: {ports: {http: 80}}\n");
        let configs = [
            config("a-entries", &[entry]),
            config("bookinfo", &[reviews]),
            config("my_shop", std::slice::from_ref(&twice)),
            config("my-shop", std::slice::from_ref(&twice)),
            config(
                "shop",
                &[db, twice.clone(), twice.replace("http: 80", "http: 81")],
            ),
        ];
        let validated = validate(&configs, Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            [
                "config \"bookinfo\": WorkloadGroup \"reviews\": metadata.name: the group's \
                 service would be reviews.reviews.bookinfo.boshy, which is already a service of \
                 the mesh: a job of instance group reviews of deployment bookinfo exposes it: \
                 rename the group (or its `app` label) or the config",
                "config \"my_shop\": WorkloadGroup \"orders\": metadata.name: the group's \
                 service would be orders.orders.my-shop.boshy, which is already defined by \
                 WorkloadGroup orders (config my-shop): rename the group (or its `app` label) or \
                 the config",
                "config \"shop\": WorkloadGroup \"db\": metadata.name: the group's service would \
                 be db.db.shop.boshy, which is already defined by ServiceEntry db (config \
                 a-entries): rename the group (or its `app` label) or the config",
                "config \"shop\": WorkloadGroup \"orders\": metadata.name: WorkloadGroup \
                 orders is already defined in config shop: group names are unique per config",
                "config \"shop\": WorkloadGroup \"orders\": metadata.name: the group's service \
                 would be orders.orders.shop.boshy, which is already defined by WorkloadGroup \
                 orders (config shop): rename the group (or its `app` label) or the config",
            ]
        );
        let hosts: Vec<&str> = validated
            .rules
            .workload_groups
            .iter()
            .map(|rule| rule.spec.hostname.as_str())
            .collect();
        assert_eq!(
            hosts,
            ["orders.orders.my-shop.boshy", "orders.orders.shop.boshy"]
        );
    }

    #[test]
    fn a_workload_group_whose_names_have_no_dns_form_is_refused_naming_the_field() {
        let bad_app = group("g", "template: {ports: {http: 80}, labels: {app: ''}}\n");
        let validated = validate(&[config("c", &[bad_app])], Some(&mesh()));
        assert_eq!(
            error_lines(&validated),
            [
                "config \"c\": WorkloadGroup \"g\": spec.template.labels.app: the service (label \
              app) name has no DNS form: canonicalized (lower-case, '_' as '-', other characters \
              than a-z, 0-9 and '-' dropped) it is \"\", not a DNS label (1-63 characters, not \
              starting or ending with '-')"
            ]
        );
        // A resource name of dots drops them: two labels of 40 are one of 80.
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        let long = group(&long, "template: {ports: {http: 80}}\n");
        let errors = error_lines(&validate(&[config("c", &[long])], Some(&mesh())));
        assert!(
            errors.len() == 1
                && errors[0].contains("metadata.name: the group name has no DNS form"),
            "{errors:?}"
        );
        let fine = group("g", "template: {ports: {http: 80}}\n");
        let validated = validate(&[config("-c", &[fine])], Some(&mesh()));
        let errors = error_lines(&validated);
        assert!(
            errors.len() == 1
                && errors[0].starts_with(
                    "config \"-c\": WorkloadGroup \"g\": metadata.name: the config name has no \
                     DNS form"
                ),
            "{errors:?}"
        );
    }
}
