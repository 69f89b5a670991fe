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
/// connection manager's `http.<stat prefix>.rbac.<deny_|allow_>{allowed,denied}`.
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
/// `<stat_prefix><deny_|allow_>rbac.{allowed,denied}`.
pub(super) fn network_filters(policies: &[AuthzPolicy], stat_prefix: &str) -> Vec<Filter> {
    filters_by_action(policies, PortKind::Tcp)
        .map(|(action, rules)| Filter {
            name: NETWORK_RBAC.to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
                    .to_string(),
                value: NetworkRbac {
                    rules: Some(rules),
                    stat_prefix: format!("{stat_prefix}{}", stat_word(action)),
                }
                .encode_to_vec(),
            })),
        })
        .collect()
}

fn stat_word(action: AuthzAction) -> &'static str {
    match action {
        AuthzAction::Deny => "deny_",
        AuthzAction::Allow => "allow_",
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
