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
                    .map(|(number, port)| (number.0, resolve(Some(port.mode), mtls)))
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
    for service in catalog.services.iter().filter(|s| s.is_job()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::rules::{parse_config, validate, MeshView, ParsedConfig};
    use ipnet::IpNet;

    /// bookinfo's `reviews` (jobs `reviews` and `metrics`) and `ratings`, and a `web`
    /// group in `shop`; endpoints labelled as the director and the manifests would.
    fn estate() -> Catalog {
        let labelled =
            |address: &str, deployment: &str, group: &str, job: &str, app: &str| Endpoint {
                labels: labels([
                    ("bosh.io/deployment", deployment),
                    ("bosh.io/instance-group", group),
                    ("bosh.io/job", job),
                    ("bosh.io/id", address),
                    (
                        "bosh.io/az",
                        if address.ends_with('1') { "z1" } else { "z2" },
                    ),
                    ("app", app),
                ]),
                ..endpoint(address)
            };
        testing::catalog(
            1,
            [
                service("bookinfo", "reviews", "reviews")
                    .port("http", 9080, Protocol::Http)
                    .endpoint(labelled(
                        "10.0.0.1", "bookinfo", "reviews", "reviews", "reviews",
                    ))
                    .endpoint(labelled(
                        "10.0.0.2", "bookinfo", "reviews", "reviews", "reviews",
                    )),
                service("bookinfo", "reviews", "metrics")
                    .port("metrics", 9100, Protocol::Tcp)
                    .endpoint(labelled(
                        "10.0.0.1", "bookinfo", "reviews", "metrics", "metrics",
                    ))
                    .endpoint(labelled(
                        "10.0.0.2", "bookinfo", "reviews", "metrics", "metrics",
                    )),
                service("bookinfo", "ratings", "ratings")
                    .port("http", 9080, Protocol::Http)
                    .endpoint(labelled(
                        "10.0.0.3", "bookinfo", "ratings", "ratings", "ratings",
                    )),
                service("shop", "web", "web")
                    .port("http", 8080, Protocol::Http)
                    .endpoint(labelled("10.0.1.1", "shop", "web", "web", "web")),
            ],
        )
    }

    fn key(deployment: &str, instance_group: &str) -> WorkloadKey {
        WorkloadKey {
            deployment: deployment.into(),
            instance_group: instance_group.into(),
        }
    }

    /// The security model of `configs` (name, director id, List items), which must be
    /// accepted without error.
    fn security_of(configs: &[(&str, u64, &str)]) -> SecurityRules {
        let catalog = estate();
        let parsed: Vec<ParsedConfig> = configs
            .iter()
            .map(|(name, id, items)| ParsedConfig {
                director_id: Some(*id),
                ..parse_config(
                    name,
                    &format!("apiVersion: v1\nkind: List\nitems:\n{items}"),
                )
            })
            .collect();
        let validated = validate(&parsed, Some(&MeshView::from_catalog(&catalog)));
        let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        crate::rules::compile(&validated.rules, &catalog)
            .traffic
            .security
    }

    fn peer(name: &str, namespace: &str, spec: &str) -> String {
        format!(
            "- {{apiVersion: security.istio.io/v1beta1, kind: PeerAuthentication, metadata: {{name: {name}, namespace: {namespace}}}, spec: {spec}}}\n"
        )
    }

    fn authz(name: &str, namespace: &str, spec: &str) -> String {
        format!(
            "- {{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{name: {name}, namespace: {namespace}}}, spec: {spec}}}\n"
        )
    }

    #[test]
    fn no_policy_is_the_empty_model() {
        assert!(security_of(&[]).is_empty());
    }

    #[test]
    fn mtls_is_the_selecting_policy_over_the_deployment_over_the_mesh_unset_inheriting() {
        let items = [
            peer("mesh", "istio-system", "{mtls: {mode: STRICT}}"),
            peer("bookinfo", "bookinfo", "{mtls: {mode: PERMISSIVE}}"),
            peer(
                "reviews",
                "bookinfo",
                "{selector: {matchLabels: {app: reviews}}, mtls: {mode: UNSET}, portLevelMtls: {9080: {mode: DISABLE}, 9100: {mode: UNSET}}}",
            ),
        ]
        .concat();
        let security = security_of(&[("mtls", 1, &items)]);
        assert_eq!(security.mesh_mtls, MtlsMode::Strict);
        let reviews = &security.workloads[&key("bookinfo", "reviews")];
        assert_eq!(
            reviews.mtls,
            MtlsMode::Permissive,
            "UNSET: the deployment's"
        );
        assert_eq!(
            reviews.port_mtls,
            BTreeMap::from([(9080, MtlsMode::Disable)])
        );
        assert_eq!(reviews.mtls_of(9100), MtlsMode::Permissive);
        let ratings = &security.workloads[&key("bookinfo", "ratings")];
        assert_eq!(ratings.mtls, MtlsMode::Permissive);
        assert!(ratings.port_mtls.is_empty());
        assert!(
            !security.workloads.contains_key(&key("shop", "web")),
            "no policy touches it: it has the mesh's mode"
        );
        assert_eq!(security.of(&key("shop", "web")).mtls, MtlsMode::Strict);

        // An UNSET deployment-wide policy inherits the mesh's; no mesh policy is PERMISSIVE.
        let items = [
            peer("bookinfo", "bookinfo", "{mtls: {mode: UNSET}}"),
            peer(
                "web",
                "istio-system",
                "{selector: {matchLabels: {bosh.io/instance-group: web}}, mtls: {mode: DISABLE}}",
            ),
        ]
        .concat();
        let security = security_of(&[("mtls", 1, &items)]);
        assert_eq!(security.mesh_mtls, MtlsMode::Permissive);
        assert_eq!(
            security.workloads[&key("bookinfo", "ratings")].mtls,
            MtlsMode::Permissive
        );
        assert_eq!(
            security.workloads[&key("shop", "web")].mtls,
            MtlsMode::Disable
        );
    }

    #[test]
    fn of_policies_that_select_one_group_the_oldest_applies() {
        let newer = peer(
            "newer",
            "bookinfo",
            "{selector: {matchLabels: {bosh.io/job: metrics}}, mtls: {mode: DISABLE}}",
        );
        let older = peer(
            "older",
            "bookinfo",
            "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}",
        );
        let security = security_of(&[("a", 8, &newer), ("b", 4, &older)]);
        assert_eq!(
            security.workloads[&key("bookinfo", "reviews")].mtls,
            MtlsMode::Strict
        );
        let security = security_of(&[("a", 4, &newer), ("b", 8, &older)]);
        assert_eq!(
            security.workloads[&key("bookinfo", "reviews")].mtls,
            MtlsMode::Disable,
            "the group's second job has the label: the group is selected"
        );
        assert_eq!(security.workloads.len(), 1);
    }

    #[test]
    fn authorization_policies_apply_to_their_deployment_and_selection_and_add_up() {
        let items = [
            authz(
                "deny-delete",
                "istio-system",
                "{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}",
            ),
            authz("lockout", "shop", "{}"),
            authz(
                "open",
                "bookinfo",
                "{selector: {matchLabels: {app: ratings}}, rules: [{}]}",
            ),
        ]
        .concat();
        let security = security_of(&[("authz", 1, &items)]);
        let names = |workload: &WorkloadKey| -> Vec<(String, AuthzAction, usize)> {
            security.workloads[workload]
                .policies
                .iter()
                .map(|p| (p.name.clone(), p.action, p.rules.len()))
                .collect()
        };
        assert_eq!(
            names(&key("bookinfo", "reviews")),
            [("deny-delete".into(), AuthzAction::Deny, 1)]
        );
        assert_eq!(
            names(&key("bookinfo", "ratings")),
            [
                ("deny-delete".into(), AuthzAction::Deny, 1),
                ("open".into(), AuthzAction::Allow, 1)
            ]
        );
        assert_eq!(
            names(&key("shop", "web")),
            [
                ("deny-delete".into(), AuthzAction::Deny, 1),
                ("lockout".into(), AuthzAction::Allow, 0)
            ],
            "`spec: {{}}` is an ALLOW policy without rules: it denies everything"
        );
        let open = &security.workloads[&key("bookinfo", "ratings")].policies[1];
        assert_eq!(
            open.rules,
            [AuthzRule::default()],
            "`rules: [{{}}]` allows everything"
        );
        assert_eq!(open.config, "authz");
        for workload in security.workloads.values() {
            assert_eq!(workload.mtls, MtlsMode::Permissive);
        }
    }

    #[test]
    fn every_field_of_a_rule_reaches_the_model() {
        let spec = "{rules: [{from: [{source: {principals: ['boshy/deployment/bookinfo/instance_group/productpage'], notPrincipals: ['*/instance_group/evil'], namespaces: [bookinfo], notNamespaces: ['test-*'], ipBlocks: [10.0.0.0/8, 192.168.1.1], notIpBlocks: ['10.9.0.0/16']}}], to: [{operation: {methods: [GET, 'HEAD'], notMethods: [DELETE], paths: ['/api/*'], notPaths: ['*/admin'], ports: ['9080'], notPorts: [9100]}}], when: [{key: 'request.headers[X-User]', values: [jason]}, {key: source.ip, values: [10.1.2.3], notValues: [10.1.0.0/16]}, {key: destination.port, values: ['9080']}, {key: source.principal, notValues: ['*']}, {key: source.namespace, values: [bookinfo]}]}]}";
        let security = security_of(&[("authz", 1, &authz("all", "bookinfo", spec))]);
        let [policy] = &security.workloads[&key("bookinfo", "reviews")].policies[..] else {
            panic!("{security:?}")
        };
        let exact = |s: &str| AuthzMatch::Exact(s.into());
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let expected = AuthzRule {
            from: vec![AuthzSource {
                principals: vec![exact(
                    "boshy/deployment/bookinfo/instance_group/productpage",
                )],
                not_principals: vec![AuthzMatch::Suffix("/instance_group/evil".into())],
                deployments: vec![exact("bookinfo")],
                not_deployments: vec![AuthzMatch::Prefix("test-".into())],
                ip_blocks: vec![net("10.0.0.0/8"), net("192.168.1.1/32")],
                not_ip_blocks: vec![net("10.9.0.0/16")],
            }],
            to: vec![AuthzOperation {
                methods: vec![exact("GET"), exact("HEAD")],
                not_methods: vec![exact("DELETE")],
                paths: vec![AuthzMatch::Prefix("/api/".into())],
                not_paths: vec![AuthzMatch::Suffix("/admin".into())],
                ports: vec![9080],
                not_ports: vec![9100],
            }],
            when: vec![
                AuthzCondition {
                    key: ConditionKey::RequestHeader("x-user".into()),
                    values: vec![exact("jason")],
                    not_values: vec![],
                },
                AuthzCondition {
                    key: ConditionKey::SourceIp,
                    values: vec![exact("10.1.2.3/32")],
                    not_values: vec![exact("10.1.0.0/16")],
                },
                AuthzCondition {
                    key: ConditionKey::DestinationPort,
                    values: vec![exact("9080")],
                    not_values: vec![],
                },
                AuthzCondition {
                    key: ConditionKey::SourcePrincipal,
                    values: vec![],
                    not_values: vec![AuthzMatch::Any],
                },
                AuthzCondition {
                    key: ConditionKey::SourceDeployment,
                    values: vec![exact("bookinfo")],
                    not_values: vec![],
                },
            ],
        };
        assert_eq!(policy.rules, [expected]);
        assert_eq!(policy.action, AuthzAction::Allow);
    }
}
