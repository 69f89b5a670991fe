//! The checks a security policy (PeerAuthentication, AuthorizationPolicy) passes alone, once
//! serde has read it, and the readings of its values that the compiler shares: condition keys,
//! address blocks, Istio's wildcards. Each problem names its field.
//!
//! A policy applies to whole instance groups (every instance of a group holds the same
//! identity and runs the same jobs), so a selector may name only labels that every instance
//! of a group shares: a per-instance label is refused rather than silently widened.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::catalog::labels::{AZ, BOOTSTRAP, ID, INDEX};
use crate::text::clip;
use crate::traffic::security::ConditionKey;

use super::checks::{header_name_problem, label_syntax, Problems};
use super::model::{
    AuthorizationPolicy, Condition, Operation, PeerAuthentication, PolicyAction, PolicyRule,
    PolicySelector, Source,
};

/// The director's labels that differ between the instances of one group.
pub(crate) const PER_INSTANCE_LABELS: [&str; 4] = [ID, INDEX, AZ, BOOTSTRAP];

/// The condition keys taken, as Istio writes them (`request.headers[<name>]` stands for one
/// per header name).
const CONDITION_KEYS: &str =
    "request.headers[<name>], source.ip, source.principal, source.namespace, destination.port";

pub(crate) fn peer_authentication(pa: &PeerAuthentication, problems: &mut Problems) {
    if let Some(selector) = &pa.selector {
        policy_selector(selector, problems);
    } else if !pa.port_level_mtls.is_empty() {
        problems.error(
            "spec.portLevelMtls",
            "only with a `selector`, as Istio requires: a port is a job's, and a policy without \
             one applies to every instance group of its deployment or of the mesh",
        );
    }
}

pub(crate) fn authorization_policy(ap: &AuthorizationPolicy, problems: &mut Problems) {
    if let Some(selector) = &ap.selector {
        policy_selector(selector, problems);
    }
    if ap.rules.is_empty() {
        let meaning = match ap.action {
            PolicyAction::Allow => {
                "an ALLOW policy without rules allows nothing: every request to the instance \
                 groups it applies to is denied (Istio's meaning; `rules: [{}]` allows every \
                 request)"
            }
            PolicyAction::Deny => {
                "a DENY policy without rules matches no request: it denies nothing"
            }
        };
        problems.warn("spec.rules", meaning);
    }
    for (at, rule) in ap.rules.iter().enumerate() {
        policy_rule(&format!("spec.rules[{at}]"), rule, problems);
    }
}

/// At least one label, in the label syntax, none of them an instance's own.
fn policy_selector(selector: &PolicySelector, problems: &mut Problems) {
    let field = "spec.selector.matchLabels";
    if selector.match_labels.is_empty() {
        problems.error(
            field,
            "at least one label is required: leave `selector` out for a policy on every \
             instance group of its deployment (or of the mesh)",
        );
    }
    label_syntax(field, &selector.match_labels, problems);
    for key in selector.match_labels.keys() {
        if PER_INSTANCE_LABELS.contains(&key.as_str()) {
            problems.error(
                format!("{field}.{key}"),
                format!(
                    "{key} differs between the instances of a group, and a policy applies to \
                     whole instance groups (they share one identity and one inbound \
                     configuration): select by bosh.io/deployment, bosh.io/instance-group, \
                     bosh.io/job or the jobs' expose_labels"
                ),
            );
        }
    }
}

fn policy_rule(field: &str, rule: &PolicyRule, problems: &mut Problems) {
    for (at, from) in rule.from.iter().enumerate() {
        let field = format!("{field}.from[{at}].source");
        match &from.source {
            Some(source) if !source.is_empty() => self::source(&field, source, problems),
            _ => problems.error(field, "a source with at least one field is required"),
        }
    }
    for (at, to) in rule.to.iter().enumerate() {
        let field = format!("{field}.to[{at}].operation");
        match &to.operation {
            Some(operation) if !operation.is_empty() => {
                self::operation(&field, operation, problems)
            }
            _ => problems.error(field, "an operation with at least one field is required"),
        }
    }
    for (at, condition) in rule.when.iter().enumerate() {
        self::condition(&format!("{field}.when[{at}]"), condition, problems);
    }
}

fn source(field: &str, source: &Source, problems: &mut Problems) {
    for (name, values) in [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
    ] {
        let field = format!("{field}.{name}");
        wildcard_values(&field, values, problems);
        principal_shapes(&field, values, problems);
    }
    for (name, values) in [
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ] {
        wildcard_values(&format!("{field}.{name}"), values, problems);
    }
    for (name, values) in [
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
    ] {
        ip_blocks(&format!("{field}.{name}"), values, problems);
    }
}

fn operation(field: &str, operation: &Operation, problems: &mut Problems) {
    for (name, values) in [
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ] {
        wildcard_values(&format!("{field}.{name}"), values, problems);
    }
}

fn condition(field: &str, condition: &Condition, problems: &mut Problems) {
    let key = match condition_key(&condition.key) {
        Ok(key) => key,
        Err(problem) => return problems.error(format!("{field}.key"), problem),
    };
    if condition.values.is_empty() && condition.not_values.is_empty() {
        problems.error(
            field,
            "at least one of `values` and `notValues` is required",
        );
    }
    for (name, values) in [
        ("values", &condition.values),
        ("notValues", &condition.not_values),
    ] {
        let field = format!("{field}.{name}");
        match key {
            ConditionKey::SourceIp => ip_blocks(&field, values, problems),
            ConditionKey::DestinationPort => {
                for (at, value) in values.iter().enumerate() {
                    if let Err(problem) = port_value(value) {
                        problems.error(format!("{field}[{at}]"), problem);
                    }
                }
            }
            ConditionKey::SourcePrincipal => {
                wildcard_values(&field, values, problems);
                principal_shapes(&field, values, problems);
            }
            ConditionKey::RequestHeader(_) | ConditionKey::SourceDeployment => {
                wildcard_values(&field, values, problems)
            }
        }
    }
}

/// A condition's key as the security model has it, or why it is refused.
pub(crate) fn condition_key(key: &str) -> Result<ConditionKey, String> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return match header_name_problem(name) {
            Some(problem) => Err(format!("{:?}: {problem}", clip(key))),
            None => Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase())),
        };
    }
    match key {
        "source.ip" => Ok(ConditionKey::SourceIp),
        "source.principal" => Ok(ConditionKey::SourcePrincipal),
        "source.namespace" => Ok(ConditionKey::SourceDeployment),
        "destination.port" => Ok(ConditionKey::DestinationPort),
        other => Err(format!(
            "condition key {:?} is not supported: boshy-istio takes {CONDITION_KEYS}",
            clip(other)
        )),
    }
}

/// A port number as a condition's value (`destination.port`).
pub(crate) fn port_value(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|port| *port > 0 && !value.starts_with('+'))
        .ok_or_else(|| format!("{:?} is not a port number (1 to 65535)", clip(value)))
}

/// An address or a CIDR block, as Istio's `ipBlocks` and `source.ip` take them: an address
/// alone is a block of one.
pub(crate) fn ip_block(text: &str) -> Result<IpNet, String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    text.parse::<IpNet>().map_err(|_| {
        format!(
            "{:?} is neither an IP address nor a CIDR block (10.0.0.0/16)",
            clip(text)
        )
    })
}

fn ip_blocks(field: &str, values: &[String], problems: &mut Problems) {
    for (at, value) in values.iter().enumerate() {
        if let Err(problem) = ip_block(value) {
            problems.error(format!("{field}[{at}]"), problem);
        }
    }
}

/// Values Istio matches with `*` as the whole value, a prefix or a suffix: a `*` anywhere else
/// would be taken literally by Envoy and is refused, as Istio refuses it; so is an empty
/// value, and a value listed twice is warned about.
fn wildcard_values(field: &str, values: &[String], problems: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (at, value) in values.iter().enumerate() {
        let field = format!("{field}[{at}]");
        let inner = value
            .strip_prefix('*')
            .or_else(|| value.strip_suffix('*'))
            .unwrap_or(value);
        if value.is_empty() {
            problems.error(field, "an empty value matches nothing: leave it out");
        } else if value != "*" && inner.contains('*') {
            problems.error(
                field,
                format!(
                    "{:?}: `*` matches only as the whole value, a prefix (`abc*`) or a suffix \
                     (`*abc`)",
                    clip(value)
                ),
            );
        } else if !seen.insert(value) {
            problems.warn(field, format!("{:?} is listed twice", clip(value)));
        }
    }
}

fn principal_shapes(field: &str, values: &[String], problems: &mut Problems) {
    for (at, value) in values.iter().enumerate() {
        if !value.is_empty() && !could_be_principal(value) {
            problems.warn(
                format!("{field}[{at}]"),
                format!(
                    "{:?} is not of the shape of the mesh's identities, \
                     `<trust domain>/deployment/<deployment>/instance_group/<instance group>` \
                     (without `spiffe://`, as Istio writes principals): it matches no peer",
                    clip(value)
                ),
            );
        }
    }
}

/// One segment of a principal: `<trust domain>/deployment/<d>/instance_group/<g>`.
#[derive(Clone, Copy)]
enum Segment {
    Literal(&'static str),
    TrustDomain,
    Name,
}

const PRINCIPAL: [Segment; 5] = [
    Segment::TrustDomain,
    Segment::Literal("deployment"),
    Segment::Name,
    Segment::Literal("instance_group"),
    Segment::Name,
];

impl Segment {
    fn chars_fit(self, text: &str) -> bool {
        match self {
            Segment::Literal(_) => false,
            Segment::TrustDomain => text
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')),
            Segment::Name => text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        }
    }

    /// Whether `text` is a whole segment of this kind.
    fn is(self, text: &str) -> bool {
        match self {
            Segment::Literal(literal) => text == literal,
            _ => !text.is_empty() && self.chars_fit(text),
        }
    }

    /// Whether some segment of this kind starts with `text` (or ends with it).
    fn could_extend(self, text: &str, at_start: bool) -> bool {
        match self {
            Segment::Literal(literal) if at_start => literal.starts_with(text),
            Segment::Literal(literal) => literal.ends_with(text),
            _ => self.chars_fit(text),
        }
    }
}

/// Whether an identity of the mesh can match `value` as Istio reads it: exactly, by prefix
/// (`abc*`), by suffix (`*abc`), or any (`*`). The trust domain is not known here, only the
/// shape: what fits no identity at all is a mistake (such as a Kubernetes-style
/// `cluster.local/ns/x/sa/y`, or a `spiffe://` Istio does not write).
pub(crate) fn could_be_principal(value: &str) -> bool {
    if value == "*" {
        return true;
    }
    if let Some(prefix) = value.strip_suffix('*') {
        let segments: Vec<&str> = prefix.split('/').collect();
        let Some((partial, whole)) = segments.split_last() else {
            return true;
        };
        return segments.len() <= PRINCIPAL.len()
            && whole
                .iter()
                .zip(PRINCIPAL)
                .all(|(text, kind)| kind.is(text))
            && PRINCIPAL[whole.len()].could_extend(partial, true);
    }
    if let Some(suffix) = value.strip_prefix('*') {
        let segments: Vec<&str> = suffix.split('/').collect();
        let Some((partial, whole)) = segments.split_first() else {
            return true;
        };
        let first = PRINCIPAL.len().saturating_sub(segments.len());
        return segments.len() <= PRINCIPAL.len()
            && whole
                .iter()
                .zip(&PRINCIPAL[first + 1..])
                .all(|(text, kind)| kind.is(text))
            && PRINCIPAL[first].could_extend(partial, false);
    }
    let segments: Vec<&str> = value.split('/').collect();
    segments.len() == PRINCIPAL.len()
        && segments
            .iter()
            .zip(PRINCIPAL)
            .all(|(text, kind)| kind.is(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors and warnings (field: message) of a resource of kind `kind` with `spec`.
    fn findings_of(kind: &str, spec: &str) -> (Vec<String>, Vec<String>) {
        super::super::test_support::findings_of("security.istio.io/v1", kind, spec)
    }

    fn assert_one_error(kind: &str, spec: &str, expected: &str) {
        let (errors, _) = findings_of(kind, spec);
        assert!(
            errors.len() == 1 && errors[0].starts_with(expected),
            "expected one error starting {expected:?}, got {errors:?}\nin {spec}"
        );
    }

    #[test]
    fn peer_authentication_shapes_istio_refuses_too() {
        #[rustfmt::skip]
        let cases = [
            ("mtls: {mode: MUTUAL}\n", "spec.mtls.mode: unknown value \"MUTUAL\", expected one of UNSET, PERMISSIVE, STRICT, DISABLE"),
            ("portLevelMtls: {9080: {mode: DISABLE}}\n", "spec.portLevelMtls: only with a `selector`, as Istio requires"),
            ("selector: {matchLabels: {app: x}}\nportLevelMtls: {0: {mode: DISABLE}}\n", "spec.portLevelMtls.0: 0 is not a port number (1 to 65535)"),
            ("selector: {matchLabels: {app: x}}\nportLevelMtls: {http: {mode: DISABLE}}\n", "spec.portLevelMtls.http: \"http\" is not a port number (1 to 65535)"),
            ("selector: {matchLabels: {}}\n", "spec.selector.matchLabels: at least one label is required"),
            ("selector: {matchLabels: {'-app': x}}\n", "spec.selector.matchLabels: key \"-app\""),
            ("selector: {labels: {app: x}}\n", "spec.selector.labels: unknown field `labels`, expected `matchLabels`"),
            ("selector: {matchLabels: {bosh.io/az: z1}}\n", "spec.selector.matchLabels.bosh.io/az: bosh.io/az differs between the instances of a group"),
            ("selector: {matchLabels: {bosh.io/id: x, app: y}}\n", "spec.selector.matchLabels.bosh.io/id: bosh.io/id differs"),
            ("selector: {matchLabels: {bosh.io/index: '0'}}\n", "spec.selector.matchLabels.bosh.io/index: bosh.io/index differs"),
            ("selector: {matchLabels: {bosh.io/bootstrap: 'true'}}\n", "spec.selector.matchLabels.bosh.io/bootstrap: bosh.io/bootstrap differs"),
            ("targetRef: {kind: Service, name: x}\n", "spec.targetRef: unknown field `targetRef`, expected one of `selector`, `mtls`, `portLevelMtls`"),
        ];
        for (spec, expected) in cases {
            assert_one_error("PeerAuthentication", spec, expected);
        }
        let (errors, warnings) = findings_of(
            "PeerAuthentication",
            "selector: {matchLabels: {bosh.io/instance-group: web, app: web}}\nmtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}, '9090': {}}\n",
        );
        assert_eq!((errors, warnings), (vec![], vec![]));
    }

    #[test]
    fn authorization_policy_fields_istio_has_and_boshy_does_not_are_refused_by_name() {
        #[rustfmt::skip]
        let cases = [
            ("action: AUDIT\n", "spec.action: AUDIT is not supported: the mesh has no audit log"),
            ("action: CUSTOM\nprovider: {name: ext}\n", "spec.action: CUSTOM is not supported: the mesh has no external authorization providers"),
            ("provider: {name: ext}\n", "spec.provider: this Istio field is not supported"),
            ("action: deny\n", "spec.action: unknown value \"deny\", expected one of ALLOW, DENY"),
            ("targetRef: {kind: Gateway, name: x}\n", "spec.targetRef: not supported: there are no Gateway API resources"),
            ("targetRefs: [{kind: Service, name: x}]\n", "spec.targetRefs: not supported"),
            ("rules: [{from: [{source: {requestPrincipals: ['*']}}]}]\n", "spec.rules[0].from[0].source.requestPrincipals: this Istio field is not supported"),
            ("rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]\n", "spec.rules[0].from[0].source.notRequestPrincipals: this Istio field is not supported"),
            ("rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]\n", "spec.rules[0].from[0].source.remoteIpBlocks: this Istio field is not supported"),
            ("rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/8]}}]}]\n", "spec.rules[0].from[0].source.notRemoteIpBlocks: this Istio field is not supported"),
            ("rules: [{from: [{source: {serviceAccounts: [a]}}]}]\n", "spec.rules[0].from[0].source.serviceAccounts: this Istio field is not supported"),
            ("rules: [{to: [{operation: {hosts: [a.boshy]}}]}]\n", "spec.rules[0].to[0].operation.hosts: this Istio field is not supported"),
            ("rules: [{to: [{operation: {notHosts: [a.boshy]}}]}]\n", "spec.rules[0].to[0].operation.notHosts: this Istio field is not supported"),
            ("rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]\n", "spec.rules[0].when[0].key: condition key \"request.auth.claims[iss]\" is not supported: boshy-istio takes request.headers[<name>], source.ip"),
            ("rules: [{when: [{key: destination.ip, values: [10.0.0.1]}]}]\n", "spec.rules[0].when[0].key: condition key \"destination.ip\" is not supported"),
            ("rules: [{when: [{key: 'request.headers[]', values: [x]}]}]\n", "spec.rules[0].when[0].key: \"request.headers[]\": \"\" is not a header name"),
        ];
        for (spec, expected) in cases {
            assert_one_error("AuthorizationPolicy", spec, expected);
        }
    }

    #[test]
    fn authorization_policy_values_are_checked_each_naming_its_field() {
        #[rustfmt::skip]
        let cases = [
            ("rules: [{from: [{}]}]\n", "spec.rules[0].from[0].source: a source with at least one field is required"),
            ("rules: [{from: [{source: {}}]}]\n", "spec.rules[0].from[0].source: a source with at least one field is required"),
            ("rules: [{to: [{operation: {}}]}]\n", "spec.rules[0].to[0].operation: an operation with at least one field is required"),
            ("rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]\n", "spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is neither an IP address nor a CIDR block"),
            ("rules: [{from: [{source: {notIpBlocks: [somewhere]}}]}]\n", "spec.rules[0].from[0].source.notIpBlocks[0]: \"somewhere\" is neither"),
            ("rules: [{from: [{source: {namespaces: ['a*b']}}]}]\n", "spec.rules[0].from[0].source.namespaces[0]: \"a*b\": `*` matches only as the whole value"),
            ("rules: [{from: [{source: {principals: ['**']}}]}]\n", "spec.rules[0].from[0].source.principals[0]: \"**\": `*` matches only"),
            ("rules: [{to: [{operation: {paths: ['']}}]}]\n", "spec.rules[0].to[0].operation.paths[0]: an empty value matches nothing"),
            ("rules: [{to: [{operation: {ports: ['http']}}]}]\n", "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number"),
            ("rules: [{to: [{operation: {notPorts: [0]}}]}]\n", "spec.rules[0].to[0].operation.notPorts[0]: 0 is not a port number"),
            ("rules: [{when: [{key: source.ip}]}]\n", "spec.rules[0].when[0]: at least one of `values` and `notValues` is required"),
            ("rules: [{when: [{key: source.ip, values: ['10.*']}]}]\n", "spec.rules[0].when[0].values[0]: \"10.*\" is neither an IP address"),
            ("rules: [{when: [{key: destination.port, notValues: ['80', '8o']}]}]\n", "spec.rules[0].when[0].notValues[1]: \"8o\" is not a port number"),
            ("rules: [{when: [{key: source.namespace, values: ['*a*']}]}]\n", "spec.rules[0].when[0].values[0]: \"*a*\": `*` matches only"),
            ("rules: [{when: [{values: [x]}]}]\n", "spec.rules[0].when[0]: missing field `key`"),
        ];
        for (spec, expected) in cases {
            assert_one_error("AuthorizationPolicy", spec, expected);
        }
    }

    #[test]
    fn policies_without_rules_and_odd_principals_are_warned_about() {
        let warnings = |spec: &str| {
            let (errors, warnings) = findings_of("AuthorizationPolicy", spec);
            assert_eq!(errors, Vec::<String>::new(), "{spec}");
            warnings
        };
        assert_eq!(
            warnings("{}"),
            [
                "spec.rules: an ALLOW policy without rules allows nothing: every request to the \
              instance groups it applies to is denied (Istio's meaning; `rules: [{}]` allows \
              every request)"
            ]
        );
        assert_eq!(
            warnings("action: DENY\n"),
            ["spec.rules: a DENY policy without rules matches no request: it denies nothing"]
        );
        assert_eq!(warnings("rules: [{}]\n"), Vec::<String>::new());
        let odd = warnings(
            "rules:\n- from:\n  - source:\n      principals: [spiffe://boshy/deployment/d/instance_group/g, boshy/deployment/d/instance_group/g, cluster.local/ns/default/sa/x]\n      notPrincipals: [boshy/deployment/d/*, boshy/deployment/d/*]\n  when:\n  - {key: source.principal, values: ['*/ns/x']}\n",
        );
        assert_eq!(odd.len(), 4, "{odd:?}");
        assert!(odd[0].starts_with("spec.rules[0].from[0].source.principals[0]: \"spiffe://boshy/deployment/d/instance_group/g\" is not of the shape"), "{odd:?}");
        assert!(
            odd[1].starts_with(
                "spec.rules[0].from[0].source.principals[2]: \"cluster.local/ns/default/sa/x\""
            ),
            "{odd:?}"
        );
        assert_eq!(odd[2], "spec.rules[0].from[0].source.notPrincipals[1]: \"boshy/deployment/d/*\" is listed twice");
        assert!(
            odd[3].starts_with("spec.rules[0].when[0].values[0]: \"*/ns/x\" is not of the shape"),
            "{odd:?}"
        );
    }

    #[test]
    fn principals_fit_the_mesh_identities_exactly_by_prefix_or_by_suffix() {
        for fits in [
            "*",
            "boshy/deployment/d/instance_group/g",
            "corp.example/deployment/cf_1/instance_group/diego-cell",
            "boshy/deployment/d/*",
            "boshy/deployment/d/instance_*",
            "boshy/dep*",
            "bo*",
            "*/instance_group/g",
            "*group/g",
            "*/deployment/d/instance_group/g",
            "*boshy/deployment/d/instance_group/g",
            "*-cell",
        ] {
            assert!(could_be_principal(fits), "{fits}");
        }
        for fits_none in [
            "spiffe://boshy/deployment/d/instance_group/g",
            "cluster.local/ns/default/sa/x",
            "boshy/deployment/d",
            "boshy/deployment/d/instance_group/g/x",
            "Boshy/deployment/d/instance_group/g",
            "boshy/deployment/d/instance_group/g h",
            "boshy/ns/*",
            "*/ns/x",
            "*/a/b/c/d/e/f",
            "boshy/deployment/d/instance_group/g/*",
        ] {
            assert!(!could_be_principal(fits_none), "{fits_none}");
        }
    }

    #[test]
    fn condition_keys_and_blocks_read_as_the_model_has_them() {
        assert_eq!(
            condition_key("request.headers[X-Token]"),
            Ok(ConditionKey::RequestHeader("x-token".into()))
        );
        assert_eq!(
            condition_key("source.namespace"),
            Ok(ConditionKey::SourceDeployment)
        );
        assert!(condition_key("source.namespaces").is_err());
        assert_eq!(ip_block("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(ip_block("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(port_value("9080"), Ok(9080));
        assert!(port_value("0").is_err() && port_value("+1").is_err());
    }
}
