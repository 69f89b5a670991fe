//! Pure: a workload's authorization policies (`traffic::security`, Istio's
//! `AuthorizationPolicy`) as Envoy RBAC filters on its inbound ports: on an HTTP port
//! `envoy.filters.http.rbac`, on a TCP port `envoy.filters.network.rbac`; a DENY filter first
//! when a DENY policy applies, then an ALLOW filter when an ALLOW policy applies. One Envoy
//! policy per Istio rule, named `<config>/<policy>/rule-<n>`.
//!
//! Istio's mapping: `principals` are peer identities (`authenticated.principal_name`, the
//! peer certificate's URI SAN, `spiffe://` prepended; `*` as prefix or suffix), `namespaces`
//! are the deployment of the peer identity (a regex over the SPIFFE ID), `ipBlocks` the
//! connection's peer address, `methods` the `:method` header, `paths` the URL path without its
//! query, `ports` the destination port. On a TCP port the HTTP-only fields (methods, paths,
//! `request.headers` conditions) cannot be checked: in an ALLOW policy a rule that has any is
//! dropped (it allows nothing), in a DENY policy they are dropped from the rule (it denies
//! more), as Istio does. A denied HTTP request gets Envoy's 403; a denied TCP connection is
//! closed.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac, Permission, Policy, Principal,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher, string_matcher, PathMatcher, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use ipnet::IpNet;
use prost::Message;

use crate::traffic::security::{
    AuthzAction, AuthzCondition, AuthzMatch, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
    ConditionKey,
};

const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// Envoy's `envoy.config.rbac.v3.RBAC`, field for field, with its policies (a protobuf map)
/// as a list: Envoy's generated type keeps them in a `HashMap`, whose order, and so the
/// encoded bytes and the resource's version, would change from one build to the next.
#[derive(Clone, PartialEq, Message)]
struct RbacRules {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<NamedPolicy>,
}

/// One entry of the policies map.
#[derive(Clone, PartialEq, Message)]
struct NamedPolicy {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    policy: Option<Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` (the fields used).
#[derive(Clone, PartialEq, Message)]
struct HttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacRules>,
    #[prost(string, tag = "6")]
    rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC` (the fields used).
#[derive(Clone, PartialEq, Message)]
struct NetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacRules>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
}

/// Whether the port the filters guard speaks HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortKind {
    Http,
    Tcp,
}

/// The HTTP RBAC filters of an HTTP port (none without policies). Their counters are the
/// connection manager's `http.<stat prefix>.rbac.<deny|allow>.{allowed,denied}`.
pub(super) fn http_filters(policies: &[AuthzPolicy]) -> Vec<HttpFilter> {
    filters_by_action(policies, PortKind::Http)
        .map(|(action, rules)| HttpFilter {
            name: HTTP_RBAC.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
                    .to_string(),
                value: HttpRbac {
                    rules: Some(rules),
                    rules_stat_prefix: stat_word(action).to_string(),
                }
                .encode_to_vec(),
            })),
            ..Default::default()
        })
        .collect()
}

/// The network RBAC filters of a TCP port (none without policies), counting in
/// `<stat_prefix>.<deny|allow>.rbac.{allowed,denied}`.
pub(super) fn network_filters(policies: &[AuthzPolicy], stat_prefix: &str) -> Vec<Filter> {
    filters_by_action(policies, PortKind::Tcp)
        .map(|(action, rules)| Filter {
            name: NETWORK_RBAC.to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
                    .to_string(),
                value: NetworkRbac {
                    rules: Some(rules),
                    stat_prefix: format!("{stat_prefix}.{}.", stat_word(action)),
                }
                .encode_to_vec(),
            })),
        })
        .collect()
}

fn stat_word(action: AuthzAction) -> &'static str {
    match action {
        AuthzAction::Deny => "deny",
        AuthzAction::Allow => "allow",
    }
}

/// The DENY rules if a DENY policy applies, then the ALLOW rules if an ALLOW policy does.
fn filters_by_action(
    policies: &[AuthzPolicy],
    kind: PortKind,
) -> impl Iterator<Item = (AuthzAction, RbacRules)> + '_ {
    [AuthzAction::Deny, AuthzAction::Allow]
        .into_iter()
        .filter(|action| policies.iter().any(|p| p.action == *action))
        .map(move |action| (action, rules_of(policies, action, kind)))
}

fn rules_of(policies: &[AuthzPolicy], action: AuthzAction, kind: PortKind) -> RbacRules {
    let policies = policies
        .iter()
        .filter(|p| p.action == action)
        .flat_map(|p| {
            p.rules.iter().enumerate().filter_map(move |(n, rule)| {
                let rule = for_port(rule, action, kind)?;
                Some(NamedPolicy {
                    name: format!("{}/{}/rule-{n}", p.config, p.name),
                    policy: Some(Policy {
                        permissions: vec![permission_of(&rule)],
                        principals: vec![principal_of(&rule)],
                        ..Default::default()
                    }),
                })
            })
        })
        .collect();
    let action = match action {
        AuthzAction::Allow => rbac::Action::Allow,
        AuthzAction::Deny => rbac::Action::Deny,
    };
    RbacRules {
        action: action as i32,
        policies,
    }
}

/// The rule as a port of `kind` can check it: on a TCP port, without its HTTP-only fields in
/// a DENY policy, and `None` (dropped) when it has any in an ALLOW policy.
fn for_port(rule: &AuthzRule, action: AuthzAction, kind: PortKind) -> Option<AuthzRule> {
    let http_only =
        |condition: &AuthzCondition| matches!(condition.key, ConditionKey::RequestHeader(_));
    let has_http_fields = rule.to.iter().any(|op| {
        !(op.methods.is_empty()
            && op.not_methods.is_empty()
            && op.paths.is_empty()
            && op.not_paths.is_empty())
    }) || rule.when.iter().any(http_only);
    match (kind, action) {
        (PortKind::Http, _) => Some(rule.clone()),
        (PortKind::Tcp, _) if !has_http_fields => Some(rule.clone()),
        (PortKind::Tcp, AuthzAction::Allow) => None,
        (PortKind::Tcp, AuthzAction::Deny) => Some(AuthzRule {
            from: rule.from.clone(),
            to: rule
                .to
                .iter()
                .map(|op| AuthzOperation {
                    ports: op.ports.clone(),
                    not_ports: op.not_ports.clone(),
                    ..AuthzOperation::default()
                })
                .collect(),
            when: rule
                .when
                .iter()
                .filter(|c| !http_only(c))
                .cloned()
                .collect(),
        }),
    }
}

// --- principals (who calls) ---

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn no_principal() -> Principal {
    not_principal(any_principal())
}

fn not_principal(principal: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(principal))),
    }
}

/// All of `ids`; any principal when there are none.
fn and_principals(ids: Vec<Principal>) -> Principal {
    match <[Principal; 1]>::try_from(ids) {
        Ok([only]) => only,
        Err(ids) if ids.is_empty() => any_principal(),
        Err(ids) => Principal {
            identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
        },
    }
}

fn or_principals(ids: Vec<Principal>) -> Principal {
    match <[Principal; 1]>::try_from(ids) {
        Ok([only]) => only,
        Err(ids) => Principal {
            identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
        },
    }
}

fn authenticated(matcher: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(matcher),
            },
        )),
    }
}

/// A peer identity as Istio writes it (without `spiffe://`).
fn peer_identity(matcher: &AuthzMatch) -> Principal {
    let pattern = match matcher {
        AuthzMatch::Any => string_matcher::MatchPattern::Prefix("spiffe://".to_string()),
        AuthzMatch::Exact(id) => string_matcher::MatchPattern::Exact(format!("spiffe://{id}")),
        AuthzMatch::Prefix(prefix) => {
            string_matcher::MatchPattern::Prefix(format!("spiffe://{prefix}"))
        }
        AuthzMatch::Suffix(suffix) => string_matcher::MatchPattern::Suffix(suffix.clone()),
    };
    authenticated(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// The peer identities of a deployment (Istio's namespace): the SPIFFE IDs
/// `spiffe://<trust domain>/deployment/<deployment>/…`.
fn peer_deployment(matcher: &AuthzMatch) -> Principal {
    let deployment = match matcher {
        AuthzMatch::Any => "[^/]+".to_string(),
        AuthzMatch::Exact(name) => regex::escape(name),
        AuthzMatch::Prefix(prefix) => format!("{}[^/]*", regex::escape(prefix)),
        AuthzMatch::Suffix(suffix) => format!("[^/]*{}", regex::escape(suffix)),
    };
    authenticated(regex_matcher(format!(
        "spiffe://[^/]+/deployment/{deployment}/.*"
    )))
}

fn regex_matcher(regex: String) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cidr(net: &IpNet) -> CidrRange {
    CidrRange {
        address_prefix: net.addr().to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(net.prefix_len()),
        }),
    }
}

fn peer_address(net: &IpNet) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::DirectRemoteIp(cidr(net))),
    }
}

/// A condition value naming an address (`1.2.3.4` or `1.2.3.0/24`); one that names none
/// matches no peer.
fn peer_address_value(value: &AuthzMatch) -> Principal {
    let AuthzMatch::Exact(text) = value else {
        return match value {
            AuthzMatch::Any => any_principal(),
            _ => no_principal(),
        };
    };
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from));
    net.as_ref().map_or_else(no_principal, peer_address)
}

fn source_principal(source: &AuthzSource) -> Principal {
    let ids = |ms: &[AuthzMatch]| ms.iter().map(peer_identity).collect();
    let deployments = |ms: &[AuthzMatch]| ms.iter().map(peer_deployment).collect();
    let nets = |ns: &[IpNet]| ns.iter().map(peer_address).collect();
    let fields = [
        (ids(&source.principals), ids(&source.not_principals)),
        (
            deployments(&source.deployments),
            deployments(&source.not_deployments),
        ),
        (nets(&source.ip_blocks), nets(&source.not_ip_blocks)),
    ];
    and_principals(
        fields
            .into_iter()
            .flat_map(|(values, not_values)| {
                one_and_none(values, not_values, or_principals, not_principal)
            })
            .collect(),
    )
}

/// The rule's sources (any) and its conditions on the peer (all).
fn principal_of(rule: &AuthzRule) -> Principal {
    let mut all = Vec::new();
    if !rule.from.is_empty() {
        all.push(or_principals(
            rule.from.iter().map(source_principal).collect(),
        ));
    }
    for condition in &rule.when {
        let of: fn(&AuthzMatch) -> Principal = match condition.key {
            ConditionKey::SourceIp => peer_address_value,
            ConditionKey::SourcePrincipal => peer_identity,
            ConditionKey::SourceDeployment => peer_deployment,
            ConditionKey::RequestHeader(_) | ConditionKey::DestinationPort => continue,
        };
        all.extend(condition_parts(condition, of, or_principals, not_principal));
    }
    and_principals(all)
}

/// What a field and its negation ask (Istio's `principals` and `notPrincipals`, …): one of
/// `values`, and none of `not_values`; an empty list asks nothing.
fn one_and_none<T>(
    values: Vec<T>,
    not_values: Vec<T>,
    or: fn(Vec<T>) -> T,
    not: fn(T) -> T,
) -> Vec<T> {
    let mut parts = Vec::new();
    if !values.is_empty() {
        parts.push(or(values));
    }
    if !not_values.is_empty() {
        parts.push(not(or(not_values)));
    }
    parts
}

/// A condition's parts: one of its values, and none of its `not_values`.
fn condition_parts<T>(
    condition: &AuthzCondition,
    of: impl Fn(&AuthzMatch) -> T,
    or: fn(Vec<T>) -> T,
    not: fn(T) -> T,
) -> Vec<T> {
    let values = condition.values.iter().map(&of).collect();
    let not_values = condition.not_values.iter().map(&of).collect();
    one_and_none(values, not_values, or, not)
}

// --- permissions (what is called) ---

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn no_permission() -> Permission {
    not_permission(any_permission())
}

fn not_permission(permission: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(permission))),
    }
}

fn and_permissions(rules: Vec<Permission>) -> Permission {
    match <[Permission; 1]>::try_from(rules) {
        Ok([only]) => only,
        Err(rules) if rules.is_empty() => any_permission(),
        Err(rules) => Permission {
            rule: Some(permission::Rule::AndRules(permission::Set { rules })),
        },
    }
}

fn or_permissions(rules: Vec<Permission>) -> Permission {
    match <[Permission; 1]>::try_from(rules) {
        Ok([only]) => only,
        Err(rules) => Permission {
            rule: Some(permission::Rule::OrRules(permission::Set { rules })),
        },
    }
}

/// Istio's string match, `None` for `*` (any value).
fn string_match(value: &AuthzMatch) -> Option<StringMatcher> {
    let pattern = match value {
        AuthzMatch::Any => return None,
        AuthzMatch::Exact(exact) => string_matcher::MatchPattern::Exact(exact.clone()),
        AuthzMatch::Prefix(prefix) => string_matcher::MatchPattern::Prefix(prefix.clone()),
        AuthzMatch::Suffix(suffix) => string_matcher::MatchPattern::Suffix(suffix.clone()),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// A request header of that name with a value `value` matches (`*`: present).
fn header(name: &str, value: &AuthzMatch) -> Permission {
    let specifier = match string_match(value) {
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        Some(matcher) => header_matcher::HeaderMatchSpecifier::StringMatch(matcher),
    };
    Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: name.to_string(),
            header_match_specifier: Some(specifier),
            ..Default::default()
        })),
    }
}

fn method(value: &AuthzMatch) -> Permission {
    header(":method", value)
}

fn path(value: &AuthzMatch) -> Permission {
    match string_match(value) {
        None => any_permission(),
        Some(matcher) => Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(matcher)),
            })),
        },
    }
}

fn port(number: u16) -> Permission {
    Permission {
        rule: Some(permission::Rule::DestinationPort(u32::from(number))),
    }
}

/// A condition value naming a port; one that names none matches nothing.
fn port_value(value: &AuthzMatch) -> Permission {
    match value {
        AuthzMatch::Any => any_permission(),
        AuthzMatch::Exact(text) => text.parse().map_or_else(|_| no_permission(), port),
        AuthzMatch::Prefix(_) | AuthzMatch::Suffix(_) => no_permission(),
    }
}

fn operation_permission(operation: &AuthzOperation) -> Permission {
    let methods = |ms: &[AuthzMatch]| ms.iter().map(method).collect();
    let paths = |ms: &[AuthzMatch]| ms.iter().map(path).collect();
    let ports = |ps: &[u16]| ps.iter().copied().map(port).collect();
    let fields = [
        (methods(&operation.methods), methods(&operation.not_methods)),
        (paths(&operation.paths), paths(&operation.not_paths)),
        (ports(&operation.ports), ports(&operation.not_ports)),
    ];
    and_permissions(
        fields
            .into_iter()
            .flat_map(|(values, not_values)| {
                one_and_none(values, not_values, or_permissions, not_permission)
            })
            .collect(),
    )
}

/// The rule's operations (any) and its conditions on the request (all).
fn permission_of(rule: &AuthzRule) -> Permission {
    let mut all = Vec::new();
    if !rule.to.is_empty() {
        all.push(or_permissions(
            rule.to.iter().map(operation_permission).collect(),
        ));
    }
    for condition in &rule.when {
        let parts = match &condition.key {
            ConditionKey::RequestHeader(name) => condition_parts(
                condition,
                |value| header(name, value),
                or_permissions,
                not_permission,
            ),
            ConditionKey::DestinationPort => {
                condition_parts(condition, port_value, or_permissions, not_permission)
            }
            ConditionKey::SourceIp
            | ConditionKey::SourcePrincipal
            | ConditionKey::SourceDeployment => continue,
        };
        all.extend(parts);
    }
    and_permissions(all)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as EnvoyHttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as EnvoyNetworkRbac;

    fn policy(name: &str, action: AuthzAction, rules: Vec<AuthzRule>) -> AuthzPolicy {
        AuthzPolicy {
            config: "c".into(),
            name: name.into(),
            action,
            rules,
        }
    }

    fn matches(values: &[&str]) -> Vec<AuthzMatch> {
        values.iter().map(|v| AuthzMatch::parse(v)).collect()
    }

    /// The HTTP filters of `policies` decoded with Envoy's own types: action and policies.
    fn http(policies: &[AuthzPolicy]) -> Vec<(i32, BTreeMap<String, Policy>)> {
        http_filters(policies)
            .iter()
            .map(|filter| {
                assert_eq!(filter.name, "envoy.filters.http.rbac");
                let Some(http_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
                    panic!("typed")
                };
                assert_eq!(
                    any.type_url,
                    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
                );
                let rules = EnvoyHttpRbac::decode(any.value.as_slice())
                    .expect("Envoy's type decodes it")
                    .rules
                    .unwrap();
                (rules.action, rules.policies.into_iter().collect())
            })
            .collect()
    }

    /// The network filters of `policies` decoded with Envoy's own types: stat prefix and
    /// policies.
    fn tcp(policies: &[AuthzPolicy]) -> Vec<(String, BTreeMap<String, Policy>)> {
        network_filters(policies, "tcp.inbound_5432")
            .iter()
            .map(|filter| {
                let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
                    panic!("typed")
                };
                let rbac = EnvoyNetworkRbac::decode(any.value.as_slice()).unwrap();
                let rules = rbac.rules.unwrap();
                (rbac.stat_prefix, rules.policies.into_iter().collect())
            })
            .collect()
    }

    fn exact(value: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
            ..Default::default()
        }
    }

    #[test]
    fn no_policy_no_filter_and_deny_comes_before_allow() {
        assert!(http(&[]).is_empty());
        let allow = policy("allow", AuthzAction::Allow, vec![AuthzRule::default()]);
        let deny = policy("deny", AuthzAction::Deny, vec![]);
        let filters = http(&[allow.clone(), deny.clone()]);
        let actions: Vec<i32> = filters.iter().map(|(action, _)| *action).collect();
        assert_eq!(
            actions,
            [rbac::Action::Deny as i32, rbac::Action::Allow as i32]
        );
        // A DENY policy without rules denies nothing; `rules: [{}]` allows anything.
        assert!(filters[0].1.is_empty());
        let everything = &filters[1].1["c/allow/rule-0"];
        assert_eq!(everything.permissions, [any_permission()]);
        assert_eq!(everything.principals, [any_principal()]);
        // An ALLOW policy without rules allows nothing: its filter has no policy.
        let nothing = http(&[policy("none", AuthzAction::Allow, vec![])]);
        assert_eq!(nothing, [(rbac::Action::Allow as i32, BTreeMap::new())]);
        let stats: Vec<String> = tcp(&[allow, deny]).into_iter().map(|(s, _)| s).collect();
        assert_eq!(stats, ["tcp.inbound_5432.deny.", "tcp.inbound_5432.allow."]);
    }

    #[test]
    fn the_encoding_is_the_same_at_every_build() {
        let rules: Vec<AuthzRule> = (0..20)
            .map(|n| AuthzRule {
                to: vec![AuthzOperation {
                    ports: vec![n],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let policies = [policy("many", AuthzAction::Allow, rules)];
        let bytes = |filter: &HttpFilter| match &filter.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any.value.clone(),
            _ => panic!("typed"),
        };
        let first = bytes(&http_filters(&policies)[0]);
        assert_eq!(first, bytes(&http_filters(&policies)[0]));
        // Envoy's own type, with its map, would not promise that.
        let decoded = EnvoyHttpRbac::decode(first.as_slice()).unwrap();
        assert_eq!(decoded.rules.unwrap().policies.len(), 20);
    }

    #[test]
    fn sources_are_peer_identities_deployments_and_addresses() {
        let source = AuthzSource {
            principals: matches(&[
                "boshy/deployment/d/instance_group/g",
                "boshy/deployment/e/*",
            ]),
            not_principals: matches(&["*/instance_group/evil"]),
            deployments: matches(&["other.dep-1*"]),
            ip_blocks: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let principal = source_principal(&source);
        let Some(principal::Identifier::AndIds(all)) = principal.identifier else {
            panic!("every field set must match: {principal:?}")
        };
        let [ids, not_ids, deployments, addresses] = all.ids.as_slice() else {
            panic!("four fields: {all:?}")
        };
        assert_eq!(
            *ids,
            or_principals(vec![
                authenticated(exact("spiffe://boshy/deployment/d/instance_group/g")),
                authenticated(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Prefix(
                        "spiffe://boshy/deployment/e/".into()
                    )),
                    ..Default::default()
                }),
            ])
        );
        assert_eq!(
            *not_ids,
            not_principal(authenticated(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Suffix(
                    "/instance_group/evil".into()
                )),
                ..Default::default()
            }))
        );
        let Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name:
                Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex)),
                    ..
                }),
        })) = &deployments.identifier
        else {
            panic!("a regex over the SPIFFE ID: {deployments:?}")
        };
        let re = regex::Regex::new(&format!("^(?:{})$", regex.regex)).unwrap();
        assert!(re.is_match("spiffe://boshy/deployment/other.dep-12/instance_group/g"));
        assert!(
            !re.is_match("spiffe://boshy/deployment/otherXdep-1/instance_group/g"),
            "the dot is escaped"
        );
        assert!(!re.is_match("spiffe://boshy/deployment/d/instance_group/other.dep-1"));
        assert_eq!(
            addresses.identifier,
            Some(principal::Identifier::DirectRemoteIp(CidrRange {
                address_prefix: "10.0.0.0".into(),
                prefix_len: Some(UInt32Value { value: 8 }),
            }))
        );
        assert_eq!(source_principal(&AuthzSource::default()), any_principal());
    }

    #[test]
    fn operations_and_conditions_check_the_request() {
        let rule = AuthzRule {
            to: vec![AuthzOperation {
                methods: matches(&["GET"]),
                not_paths: matches(&["/admin*"]),
                ports: vec![8080],
                ..Default::default()
            }],
            when: vec![
                AuthzCondition {
                    key: ConditionKey::RequestHeader("x-team".into()),
                    values: matches(&["*"]),
                    not_values: matches(&["ops"]),
                },
                AuthzCondition {
                    key: ConditionKey::SourceIp,
                    values: matches(&["10.1.2.3", "not an address"]),
                    not_values: Vec::new(),
                },
            ],
            ..Default::default()
        };
        let Some(permission::Rule::AndRules(all)) = permission_of(&rule).rule else {
            panic!("the operation and the header condition")
        };
        let [operation, header_present, header_not_ops] = all.rules.as_slice() else {
            panic!("{all:?}")
        };
        let Some(permission::Rule::AndRules(fields)) = &operation.rule else {
            panic!("{operation:?}")
        };
        assert_eq!(
            fields.rules,
            [
                header(":method", &AuthzMatch::Exact("GET".into())),
                not_permission(Permission {
                    rule: Some(permission::Rule::UrlPath(PathMatcher {
                        rule: Some(path_matcher::Rule::Path(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Prefix(
                                "/admin".into()
                            )),
                            ..Default::default()
                        })),
                    })),
                }),
                port(8080),
            ]
        );
        let Some(permission::Rule::Header(present)) = &header_present.rule else {
            panic!("{header_present:?}")
        };
        assert_eq!(
            present.header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        assert!(matches!(
            header_not_ops.rule,
            Some(permission::Rule::NotRule(_))
        ));
        assert_eq!(
            principal_of(&rule),
            or_principals(vec![
                peer_address(&"10.1.2.3/32".parse().unwrap()),
                no_principal(),
            ]),
            "an address that is none matches no peer"
        );
    }

    #[test]
    fn tcp_ports_drop_http_only_rules_from_allow_and_http_only_fields_from_deny() {
        let http_only = AuthzRule {
            to: vec![AuthzOperation {
                methods: matches(&["POST"]),
                ports: vec![5432],
                ..Default::default()
            }],
            ..Default::default()
        };
        let by_header = AuthzRule {
            when: vec![AuthzCondition {
                key: ConditionKey::RequestHeader("x-a".into()),
                values: matches(&["1"]),
                not_values: Vec::new(),
            }],
            ..Default::default()
        };
        let plain = AuthzRule {
            to: vec![AuthzOperation {
                ports: vec![5432],
                ..Default::default()
            }],
            ..Default::default()
        };
        let allow = policy(
            "allow",
            AuthzAction::Allow,
            vec![http_only.clone(), by_header.clone(), plain.clone()],
        );
        let [(_, allowed)] = tcp(std::slice::from_ref(&allow)).try_into().unwrap();
        assert_eq!(
            allowed.keys().collect::<Vec<_>>(),
            ["c/allow/rule-2"],
            "rules with HTTP fields allow nothing on a TCP port"
        );
        assert_eq!(http(&[allow])[0].1.len(), 3, "an HTTP port checks them all");

        let deny = policy("deny", AuthzAction::Deny, vec![http_only, by_header]);
        let [(_, denied)] = tcp(&[deny]).try_into().unwrap();
        assert_eq!(
            denied["c/deny/rule-0"].permissions,
            [port(5432)],
            "the method is dropped: every connection to the port is denied"
        );
        assert_eq!(
            denied["c/deny/rule-1"].permissions,
            [any_permission()],
            "the header condition is dropped: every connection is denied"
        );
    }
}
