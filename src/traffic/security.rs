//! The security model: who may call a workload and how (Istio's `PeerAuthentication` and
//! `AuthorizationPolicy`), resolved to BOSH instance groups. Like the rest of the traffic
//! model it is said in the catalog's terms (deployments, instance groups, port numbers) and
//! holds no Envoy message and no Istio resource: `rules::compile` fills it, `xds` renders the
//! inbound listener of each instance group and the client side of each cluster from it.
//!
//! A workload is an instance group: every instance of a group runs the same jobs from the same
//! manifest and holds the same identity (`identity::spiffe::workload_id`). Selectors are
//! resolved against the labels shared by the whole group, so a policy never applies to some
//! instances of a group and not to others.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

/// Mutual TLS on a workload's inbound side (Istio's `PeerAuthentication` modes; `UNSET`
/// is resolved away by the compiler: it inherits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub enum MtlsMode {
    /// Mutual TLS from mesh clients, plaintext from callers outside the mesh still accepted.
    #[default]
    Permissive,
    /// Mutual TLS only: a plaintext connection is closed.
    Strict,
    /// Plaintext only: mesh clients do not originate TLS to it.
    Disable,
}

/// An instance group, the unit a security rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadKey {
    pub deployment: String,
    pub instance_group: String,
}

/// Everything the security rules say about one workload's inbound side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadSecurity {
    /// The mode of every port without its own.
    pub mtls: MtlsMode,
    /// Modes of single ports (Istio's `portLevelMtls`), by the port the job listens on.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// The authorization policies that select it, DENY and ALLOW, in the order of their
    /// rules (config name, then resource name). None: every caller is allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AuthzPolicy>,
}

impl WorkloadSecurity {
    /// The mode of `port`.
    pub fn mtls_of(&self, port: u16) -> MtlsMode {
        self.port_mtls.get(&port).copied().unwrap_or(self.mtls)
    }
}

/// The security rules of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecurityRules {
    /// The mode of workloads that no selecting `PeerAuthentication` gives one: the mesh-wide
    /// policy's, else PERMISSIVE.
    pub mesh_mtls: MtlsMode,
    /// Workloads that some rule selects; any other has `mesh_mtls` and no policies.
    /// Serialized as a list of `[workload, security]` pairs: JSON map keys are strings only.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_entries"
    )]
    pub workloads: BTreeMap<WorkloadKey, WorkloadSecurity>,
}

fn serialize_entries<S: serde::Serializer>(
    workloads: &BTreeMap<WorkloadKey, WorkloadSecurity>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(workloads)
}

impl SecurityRules {
    /// What the rules say about `workload`.
    pub fn of(&self, workload: &WorkloadKey) -> std::borrow::Cow<'_, WorkloadSecurity> {
        match self.workloads.get(workload) {
            Some(security) => std::borrow::Cow::Borrowed(security),
            None => std::borrow::Cow::Owned(WorkloadSecurity {
                mtls: self.mesh_mtls,
                ..WorkloadSecurity::default()
            }),
        }
    }

    /// Whether it is the mesh without security rules (serialized away, so that versions of
    /// meshes without them are unchanged).
    pub fn is_empty(&self) -> bool {
        self.mesh_mtls == MtlsMode::default() && self.workloads.is_empty()
    }
}

/// ALLOW or DENY (Istio's `AUDIT` and `CUSTOM` are refused by the compiler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuthzAction {
    Allow,
    Deny,
}

/// One `AuthorizationPolicy` as it applies to one workload. Istio's semantics: DENY policies
/// are checked first and any match denies; then, if any ALLOW policy applies to the workload,
/// a request must match one of their rules; an ALLOW policy with no rules matches nothing, so
/// it denies everything (and a policy with `rules: [{}]` allows everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzPolicy {
    /// The rule config it comes from and the policy's name in it (for statistics and logs).
    pub config: String,
    pub name: String,
    pub action: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

/// A rule matches when one of its sources, one of its operations and every condition match
/// (an empty list matches anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthzRule {
    pub from: Vec<AuthzSource>,
    pub to: Vec<AuthzOperation>,
    pub when: Vec<AuthzCondition>,
}

/// Istio's `Source`: every field set must match; within a field, any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthzSource {
    /// Peer identities as Istio writes them, without `spiffe://`:
    /// `<trust domain>/deployment/<d>/instance_group/<g>`, with `*` wildcards.
    pub principals: Vec<AuthzMatch>,
    pub not_principals: Vec<AuthzMatch>,
    /// Istio's `namespaces`: the deployments of peer identities.
    pub deployments: Vec<AuthzMatch>,
    pub not_deployments: Vec<AuthzMatch>,
    /// The peer's address (Istio's `ipBlocks`; `remoteIpBlocks` are refused).
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
}

/// Istio's `Operation`; methods, paths and headers apply to HTTP ports only (how a TCP port
/// treats a rule that names them is Istio's, see `xds`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthzOperation {
    pub methods: Vec<AuthzMatch>,
    pub not_methods: Vec<AuthzMatch>,
    pub paths: Vec<AuthzMatch>,
    pub not_paths: Vec<AuthzMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// Istio's `Condition` on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzCondition {
    pub key: ConditionKey,
    pub values: Vec<AuthzMatch>,
    pub not_values: Vec<AuthzMatch>,
}

/// The condition keys supported (every other Istio key is refused by the compiler, naming it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConditionKey {
    /// `request.headers[<name>]`, the name lower-cased.
    RequestHeader(String),
    /// `source.ip`
    SourceIp,
    /// `source.principal`
    SourcePrincipal,
    /// `source.namespace`: the peer identity's deployment.
    SourceDeployment,
    /// `destination.port`
    DestinationPort,
}

/// Istio's string matching in authorization: `*` alone matches any value (present), `abc*`
/// a prefix, `*abc` a suffix, anything else exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AuthzMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl AuthzMatch {
    /// Istio's reading of one value as written in a policy.
    pub fn parse(value: &str) -> AuthzMatch {
        if value == "*" {
            AuthzMatch::Any
        } else if let Some(prefix) = value.strip_suffix('*') {
            AuthzMatch::Prefix(prefix.to_string())
        } else if let Some(suffix) = value.strip_prefix('*') {
            AuthzMatch::Suffix(suffix.to_string())
        } else {
            AuthzMatch::Exact(value.to_string())
        }
    }

    /// Whether `value` matches (for tests and for the tools that explain a decision).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            AuthzMatch::Any => true,
            AuthzMatch::Exact(exact) => value == exact,
            AuthzMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            AuthzMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_wildcards_are_prefix_suffix_or_any() {
        assert_eq!(AuthzMatch::parse("*"), AuthzMatch::Any);
        assert_eq!(
            AuthzMatch::parse("/get*"),
            AuthzMatch::Prefix("/get".into())
        );
        assert_eq!(
            AuthzMatch::parse("*/banana"),
            AuthzMatch::Suffix("/banana".into())
        );
        assert_eq!(AuthzMatch::parse("GET"), AuthzMatch::Exact("GET".into()));
        assert!(AuthzMatch::parse("boshy/deployment/d/*")
            .matches("boshy/deployment/d/instance_group/g"));
        assert!(!AuthzMatch::parse("boshy/deployment/d/*")
            .matches("boshy/deployment/e/instance_group/g"));
        assert!(AuthzMatch::parse("*/instance_group/g").matches("x/instance_group/g"));
    }

    #[test]
    fn a_workload_no_rule_selects_has_the_mesh_mode_and_no_policies() {
        let key = WorkloadKey {
            deployment: "d".into(),
            instance_group: "g".into(),
        };
        let mut rules = SecurityRules {
            mesh_mtls: MtlsMode::Strict,
            ..SecurityRules::default()
        };
        assert_eq!(rules.of(&key).mtls, MtlsMode::Strict);
        assert!(rules.of(&key).policies.is_empty());
        rules.workloads.insert(
            key.clone(),
            WorkloadSecurity {
                mtls: MtlsMode::Permissive,
                port_mtls: BTreeMap::from([(9002, MtlsMode::Disable)]),
                policies: Vec::new(),
            },
        );
        assert_eq!(rules.of(&key).mtls_of(9002), MtlsMode::Disable);
        let json = serde_json::to_value(&rules).expect("the rules serialize (xDS versions them)");
        assert_eq!(json["workloads"][0][0]["instance_group"], "g");
        assert_eq!(json["workloads"][0][1]["port_mtls"]["9002"], "Disable");
        assert_eq!(rules.of(&key).mtls_of(80), MtlsMode::Permissive);
        assert!(SecurityRules::default().is_empty());
    }
}
