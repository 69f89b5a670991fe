//! The accepted security policies (PeerAuthentication, AuthorizationPolicy) and the catalog →
//! the security model (`traffic::security`), per instance group. Pure.
//!
//! An instance group is what a policy applies to: it matches a selector when one of its jobs'
//! label sets (the labels every instance of the group shares: the director's
//! `bosh.io/deployment`, `bosh.io/instance-group`, `bosh.io/job`, and the job's
//! `expose_labels`) has every label of it. Mutual TLS is resolved as Istio resolves it: the
//! policy with a selector (the oldest, of several) over the deployment's (Istio's
//! namespace-wide one) over the mesh's; `UNSET` inherits from the level above, and a port's
//! mode from the group's. Only the groups that some policy touches are listed; the others
//! have the mesh's mode (`SecurityRules::mesh_mtls`) and no authorization policy.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::model::{Catalog, Labels};
use crate::traffic::security::{
    AuthzAction, AuthzCondition, AuthzMatch, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
    ConditionKey, MtlsMode, SecurityRules, WorkloadKey, WorkloadSecurity,
};

use super::mesh::selects;
use super::model::{
    AuthorizationPolicy, Condition, Operation, PeerAuthentication, PeerMtlsMode, PolicyAction,
    PolicyRule, PolicySelector, Source,
};
use super::security_checks::{condition_key, ip_block, PER_INSTANCE_LABELS};
use super::validate::{Rule, RuleSet};

/// The security model of `rules` over the instance groups of `catalog`.
pub(crate) fn security_rules(rules: &RuleSet, catalog: &Catalog) -> SecurityRules {
    let unselected = |deployment: Option<&str>| {
        rules
            .peer_authentications
            .iter()
            .find(|rule| rule.spec.selector.is_none() && rule.deployment.as_deref() == deployment)
    };
    let mesh_mtls = resolve(
        unselected(None).map(|rule| mode_of(&rule.spec)),
        MtlsMode::default(),
    );
    let mut workloads = BTreeMap::new();
    for (workload, label_sets) in instance_groups(catalog) {
        let applies = |deployment: &Option<String>, selector: Option<&PolicySelector>| {
            applies_to(&workload, &label_sets, deployment.as_deref(), selector)
        };
        let deployment_wide = unselected(Some(&workload.deployment));
        let deployment_mtls = resolve(deployment_wide.map(|rule| mode_of(&rule.spec)), mesh_mtls);
        // Oldest first: the first that selects the group applies there.
        let selecting = rules.peer_authentications.iter().find(|rule| {
            rule.spec.selector.is_some() && applies(&rule.deployment, rule.spec.selector.as_ref())
        });
        let mtls = resolve(selecting.map(|rule| mode_of(&rule.spec)), deployment_mtls);
        let port_mtls = selecting
            .map(|rule| {
                let ports = rule.spec.port_level_mtls.iter();
                ports
                    .filter(|(_, port)| port.mode != PeerMtlsMode::Unset)
                    .map(|(number, port)| (*number, resolve(Some(port.mode), mtls)))
                    .collect()
            })
            .unwrap_or_default();
        let policies: Vec<AuthzPolicy> = rules
            .authorization_policies
            .iter()
            .filter(|rule| applies(&rule.deployment, rule.spec.selector.as_ref()))
            .map(authz_policy)
            .collect();
        if deployment_wide.is_some() || selecting.is_some() || !policies.is_empty() {
            let security = WorkloadSecurity {
                mtls,
                port_mtls,
                policies,
            };
            workloads.insert(workload, security);
        }
    }
    SecurityRules {
        mesh_mtls,
        workloads,
    }
}

/// Every instance group of the catalog that exposes a job, with its jobs' label sets: the
/// labels of their endpoints without those of single instances. ServiceEntries' services are
/// no instance group's.
fn instance_groups(catalog: &Catalog) -> BTreeMap<WorkloadKey, BTreeSet<Labels>> {
    let mut groups: BTreeMap<WorkloadKey, BTreeSet<Labels>> = BTreeMap::new();
    for service in catalog
        .services
        .iter()
        .filter(|s| s.service_entry.is_none())
    {
        let key = WorkloadKey {
            deployment: service.key.deployment.clone(),
            instance_group: service.key.instance_group.clone(),
        };
        let label_sets = groups.entry(key).or_default();
        for endpoint in &service.endpoints {
            let mut shared = endpoint.labels.clone();
            shared.retain(|key, _| !PER_INSTANCE_LABELS.contains(&key.as_str()));
            label_sets.insert(shared);
        }
    }
    groups
}

/// Whether a policy of `deployment` (`None`: the mesh's) with `selector` applies to
/// `workload`, whose jobs have `label_sets`.
fn applies_to(
    workload: &WorkloadKey,
    label_sets: &BTreeSet<Labels>,
    deployment: Option<&str>,
    selector: Option<&PolicySelector>,
) -> bool {
    deployment.is_none_or(|deployment| deployment == workload.deployment)
        && selector.is_none_or(|selector| {
            let selected = |labels: &Labels| selects(&selector.match_labels, labels);
            label_sets.iter().any(selected)
        })
}

fn mode_of(pa: &PeerAuthentication) -> PeerMtlsMode {
    pa.mtls.map(|mtls| mtls.mode).unwrap_or_default()
}

/// A level's mode: its own, or, `UNSET` or absent, the one it inherits.
fn resolve(mode: Option<PeerMtlsMode>, inherited: MtlsMode) -> MtlsMode {
    match mode.unwrap_or_default() {
        PeerMtlsMode::Unset => inherited,
        PeerMtlsMode::Permissive => MtlsMode::Permissive,
        PeerMtlsMode::Strict => MtlsMode::Strict,
        PeerMtlsMode::Disable => MtlsMode::Disable,
    }
}

fn authz_policy(rule: &Rule<AuthorizationPolicy>) -> AuthzPolicy {
    AuthzPolicy {
        config: rule.config.clone(),
        name: rule.name.clone(),
        action: match rule.spec.action {
            PolicyAction::Allow => AuthzAction::Allow,
            PolicyAction::Deny => AuthzAction::Deny,
        },
        rules: rule.spec.rules.iter().map(authz_rule).collect(),
    }
}

// The values below passed `security_checks`: none of the readings fails here.

fn authz_rule(rule: &PolicyRule) -> AuthzRule {
    AuthzRule {
        from: rule
            .from
            .iter()
            .filter_map(|from| from.source.as_ref())
            .map(authz_source)
            .collect(),
        to: rule
            .to
            .iter()
            .filter_map(|to| to.operation.as_ref())
            .map(authz_operation)
            .collect(),
        when: rule.when.iter().filter_map(authz_condition).collect(),
    }
}

fn matches(values: &[String]) -> Vec<AuthzMatch> {
    values
        .iter()
        .map(|value| AuthzMatch::parse(value))
        .collect()
}

fn authz_source(source: &Source) -> AuthzSource {
    let blocks = |values: &[String]| values.iter().filter_map(|v| ip_block(v).ok()).collect();
    AuthzSource {
        principals: matches(&source.principals),
        not_principals: matches(&source.not_principals),
        deployments: matches(&source.namespaces),
        not_deployments: matches(&source.not_namespaces),
        ip_blocks: blocks(&source.ip_blocks),
        not_ip_blocks: blocks(&source.not_ip_blocks),
    }
}

fn authz_operation(operation: &Operation) -> AuthzOperation {
    AuthzOperation {
        methods: matches(&operation.methods),
        not_methods: matches(&operation.not_methods),
        paths: matches(&operation.paths),
        not_paths: matches(&operation.not_paths),
        ports: operation.ports.iter().map(|port| port.0).collect(),
        not_ports: operation.not_ports.iter().map(|port| port.0).collect(),
    }
}

/// A condition, its values as Istio reads them; addresses as CIDR blocks (`10.0.0.1/32`).
fn authz_condition(condition: &Condition) -> Option<AuthzCondition> {
    let key = condition_key(&condition.key).ok()?;
    let values = |values: &[String]| match key {
        ConditionKey::SourceIp => values
            .iter()
            .filter_map(|value| ip_block(value).ok())
            .map(|block| AuthzMatch::Exact(block.to_string()))
            .collect(),
        _ => matches(values),
    };
    Some(AuthzCondition {
        values: values(&condition.values),
        not_values: values(&condition.not_values),
        key,
    })
}
