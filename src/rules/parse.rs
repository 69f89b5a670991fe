//! One director config of type `boshy-istio` → the Istio resources it holds.
//!
//! The director keeps a config's content only if it is a YAML hash, and the bosh CLI sends
//! only the first YAML document of a file, so a config holds one resource, or several as a
//! Kubernetes `List` (`apiVersion: v1`, `kind: List`, `items:`). Content that cannot be read
//! at all (not YAML, not a mapping, beyond the YAML limits, a List that is not one) is an
//! error for the whole config; otherwise each resource stands or falls alone: one that is
//! refused leaves a finding naming it and the field, and the others are kept.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::catalog::manifest::is_dns_label;
use crate::catalog::yaml_limits::{
    check_expanded_size, flow_depth_exceeds, SizeCheck, MAX_FLOW_DEPTH, MAX_MANIFEST_NODES,
};
use crate::text::clip;

use super::checks;
use super::finding::{Finding, ResourceRef};
use super::model::{
    AuthorizationPolicy, DestinationRule, Kind, Labels, PeerAuthentication, ServiceEntry, Sidecar,
    Spec, VirtualService, WorkloadGroup, NETWORKING_API_VERSIONS, SECURITY_API_VERSIONS,
};

/// The namespace Istio reads as the whole mesh's (its root namespace): a security policy
/// there, or without a namespace, is mesh-wide.
pub(crate) const MESH_NAMESPACE: &str = "istio-system";

/// Every API version accepted: each kind takes those of its group ([`Kind::api_versions`]).
pub const API_VERSIONS: [&str; 5] = [
    NETWORKING_API_VERSIONS[0],
    NETWORKING_API_VERSIONS[1],
    NETWORKING_API_VERSIONS[2],
    SECURITY_API_VERSIONS[0],
    SECURITY_API_VERSIONS[1],
];

/// What one config holds: the resources that passed every check a resource can pass alone,
/// and the findings about the others. Checks across resources come later
/// ([`super::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedConfig {
    pub name: String,
    /// The director's id of the config's current version. The director numbers versions as
    /// it stores them, so a smaller id is an older config: between security policies of one
    /// level, the oldest wins, as Istio takes the oldest by creation time. `None` (a file
    /// that `boshy rules check` reads): after every config with an id, by name.
    pub director_id: Option<u64>,
    pub resources: Vec<Resource>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// One resource of a config, read and checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `metadata.name`.
    pub name: String,
    /// Its index in the config's `List`, if the config is one.
    pub item: Option<usize>,
    /// For a security policy, the deployment its `metadata.namespace` names (Istio's
    /// namespace-wide policy); `None`: mesh-wide (no namespace, or `istio-system`). Always
    /// `None` for the other kinds, where the namespace is ignored.
    pub deployment: Option<String>,
    pub spec: Spec,
}

impl Resource {
    pub fn reference(&self) -> ResourceRef {
        ResourceRef::new(Some(self.spec.kind().as_str()), Some(&self.name), self.item)
    }
}

/// Parses the content of the director config named `config`.
pub fn parse_config(config: &str, content: &str) -> ParsedConfig {
    let mut parsed = ParsedConfig {
        name: config.to_string(),
        director_id: None,
        resources: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    match items(content) {
        Ok(items) => {
            if items.is_empty() {
                parsed.warnings.push(Finding::new(
                    config,
                    None,
                    Some("items"),
                    "the List has no items",
                ));
            }
            for (item, value) in items {
                parse_resource(&mut parsed, item, value);
            }
        }
        Err((field, message)) => {
            parsed
                .errors
                .push(Finding::new(config, None, field.as_deref(), message));
        }
    }
    parsed
}

/// What a config-wide error names: the field (of a List) and the reason.
type ConfigError = (Option<String>, String);

/// The config's resources, each with its index when the config is a List.
fn items(content: &str) -> Result<Vec<(Option<usize>, Value)>, ConfigError> {
    if flow_depth_exceeds(content, MAX_FLOW_DEPTH) {
        return Err((
            None,
            format!(
                "opens more than {MAX_FLOW_DEPTH} `[`/`{{` without closing them; it is not read"
            ),
        ));
    }
    check_expanded_size(content).map_err(|err| match err {
        SizeCheck::TooManyNodes => (
            None,
            format!(
                "expands to more than {MAX_MANIFEST_NODES} YAML nodes (an alias bomb?); it is \
                 not read"
            ),
        ),
        SizeCheck::Yaml(err) => (None, format!("not valid YAML: {err}")),
    })?;
    let mut root: Value =
        serde_yaml::from_str(content).map_err(|err| (None, format!("not valid YAML: {err}")))?;
    root.apply_merge()
        .map_err(|err| (None, format!("a merge key (`<<`) cannot be merged: {err}")))?;
    let Value::Mapping(top) = root else {
        return Err((
            None,
            format!(
                "the content must be a YAML mapping (one Istio resource, or a `kind: List` \
                 with `items`), found {}",
                value_kind(&root)
            ),
        ));
    };
    if top.get("kind").and_then(Value::as_str) == Some("List") {
        list_items(top)
    } else {
        Ok(vec![(None, Value::Mapping(top))])
    }
}

/// The `items` of a Kubernetes `List`. Its `metadata` (which `kubectl get -o yaml` writes) is
/// ignored.
fn list_items(list: Mapping) -> Result<Vec<(Option<usize>, Value)>, ConfigError> {
    let mut items = Vec::new();
    for (key, value) in list {
        match key.as_str() {
            Some("apiVersion") if value.as_str() == Some("v1") => {}
            Some("apiVersion") => {
                return Err((
                    Some("apiVersion".into()),
                    format!("a List is apiVersion v1, found {}", clip(&describe(&value))),
                ))
            }
            Some("kind" | "metadata") => {}
            Some("items") => match value {
                Value::Null => {}
                Value::Sequence(values) => {
                    items = values
                        .into_iter()
                        .enumerate()
                        .map(|(at, item)| (Some(at), item))
                        .collect()
                }
                other => {
                    return Err((
                        Some("items".into()),
                        format!("must be a list, found {}", value_kind(&other)),
                    ))
                }
            },
            _ => {
                return Err((
                    None,
                    format!(
                        "unknown field {} in a List (it has `apiVersion`, `kind`, `items` and \
                         `metadata`)",
                        clip(&describe(&key))
                    ),
                ))
            }
        }
    }
    Ok(items)
}

/// The fields every resource has around its `spec`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope<S> {
    // Checked before, from the raw value, so that every finding can name the resource.
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: Metadata,
    spec: S,
}

/// Kubernetes object metadata: `name`, and for a security policy `namespace` (the deployment
/// it is for). Labels and annotations are accepted and unused; the other kinds' `namespace` is
/// accepted and ignored (boshy-istio has no namespaces).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[allow(dead_code)]
    name: String,
    namespace: Option<String>,
    #[allow(dead_code)]
    labels: Option<Labels>,
    #[allow(dead_code)]
    annotations: Option<Labels>,
}

fn parse_resource(parsed: &mut ParsedConfig, item: Option<usize>, value: Value) {
    let config = parsed.name.clone();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = value
        .get("metadata")
        .and_then(|metadata| metadata.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let reference = ResourceRef::new(kind.as_deref(), name.as_deref(), item);
    let finding = |field: Option<&str>, message: String| {
        Finding::new(&config, Some(&reference), field, message)
    };
    let refused = match envelope_problem(&value, kind.as_deref(), name.as_deref()) {
        Some((field, message)) => Err(finding(field, message)),
        None => typed(value).map_err(|(field, message)| finding(field.as_deref(), message)),
    };
    let (namespace, spec) = match refused {
        Ok(read) => read,
        Err(error) => return parsed.errors.push(error),
    };
    let kind = spec.kind();
    let deployment = namespace
        .clone()
        .filter(|namespace| kind.is_security_policy() && namespace != MESH_NAMESPACE);
    let ignored =
        namespace.filter(|namespace| !kind.is_security_policy() && namespace != "default");
    if let Some(namespace) = ignored {
        parsed.warnings.push(finding(
            Some("metadata.namespace"),
            format!(
                "namespace {:?} is ignored: boshy-istio has no namespaces, so names are unique \
                 per kind across every config",
                clip(&namespace)
            ),
        ));
    }
    let problems = checks::check(&spec);
    for (field, message) in problems.warnings {
        parsed.warnings.push(finding(Some(&field), message));
    }
    if problems.errors.is_empty() {
        parsed.resources.push(Resource {
            // Checked by `envelope_problem`.
            name: name.unwrap_or_default(),
            item,
            deployment,
            spec,
        });
    } else {
        for (field, message) in problems.errors {
            parsed.errors.push(finding(Some(&field), message));
        }
    }
}

/// What is wrong with the fields that say what a resource is, read from the raw value.
fn envelope_problem(
    value: &Value,
    kind: Option<&str>,
    name: Option<&str>,
) -> Option<(Option<&'static str>, String)> {
    if !value.is_mapping() {
        return Some((
            None,
            format!("a resource is a mapping, found {}", value_kind(value)),
        ));
    }
    let version = match value.get("apiVersion") {
        Some(Value::String(version)) if API_VERSIONS.contains(&version.as_str()) => version,
        None => return Some((Some("apiVersion"), "missing".into())),
        Some(other) => {
            return Some((
                Some("apiVersion"),
                format!(
                    "{} is not supported: boshy-istio takes {}",
                    clip(&describe(other)),
                    API_VERSIONS.join(", ")
                ),
            ))
        }
    };
    let supported = || {
        format!(
            "boshy-istio takes {}",
            Kind::ALL.map(|kind| kind.as_str()).join(", ")
        )
    };
    match (value.get("kind"), kind.and_then(Kind::from_name)) {
        (_, Some(kind)) if !kind.api_versions().contains(&version.as_str()) => {
            return Some((
                Some("apiVersion"),
                format!(
                    "{version} is not the API group of {}: it is {}",
                    kind.as_str(),
                    kind.api_versions().join(", ")
                ),
            ))
        }
        (_, Some(_)) => {}
        (None, _) => return Some((Some("kind"), format!("missing: {}", supported()))),
        (Some(other), None) => {
            return Some((
                Some("kind"),
                format!(
                    "{} is not supported: {}",
                    clip(&describe(other)),
                    supported()
                ),
            ))
        }
    }
    let raw_name = value
        .get("metadata")
        .and_then(|metadata| metadata.get("name"));
    match name {
        None if raw_name.is_some_and(|raw| !raw.is_null()) => Some((
            Some("metadata.name"),
            format!("a name is a string, found {}", value_kind(raw_name?)),
        )),
        None => Some((
            Some("metadata.name"),
            "missing: every resource has a name".into(),
        )),
        Some(name) if !is_resource_name(name) => Some((
            Some("metadata.name"),
            format!(
                "{:?} is not a resource name: lower-case letters, digits, '-' and '.', at most \
                 253 characters",
                clip(name)
            ),
        )),
        Some(_) => None,
    }
}

/// Reads the resource into its kind's types. An error names the field's path.
fn typed(value: Value) -> Result<(Option<String>, Spec), (Option<String>, String)> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::from_name);
    match kind {
        Some(Kind::VirtualService) => envelope::<VirtualService>(value, Spec::VirtualService),
        Some(Kind::DestinationRule) => envelope::<DestinationRule>(value, Spec::DestinationRule),
        Some(Kind::ServiceEntry) => envelope::<ServiceEntry>(value, Spec::ServiceEntry),
        Some(Kind::WorkloadGroup) => envelope::<WorkloadGroup>(value, Spec::WorkloadGroup),
        Some(Kind::Sidecar) => envelope::<Sidecar>(value, Spec::Sidecar),
        Some(Kind::PeerAuthentication) => {
            envelope::<PeerAuthentication>(value, Spec::PeerAuthentication)
        }
        Some(Kind::AuthorizationPolicy) => {
            envelope::<AuthorizationPolicy>(value, Spec::AuthorizationPolicy)
        }
        None => Err((Some("kind".into()), "not a supported kind".into())),
    }
}

fn envelope<S: DeserializeOwned>(
    value: Value,
    spec: fn(S) -> Spec,
) -> Result<(Option<String>, Spec), (Option<String>, String)> {
    // Nearly every resource reads without error, so it is read by plain serde first, and only
    // one that fails is read again with serde_path_to_error to name the field: serde_yaml
    // reads a borrowed `Value` as it reads an owned one, so the findings are those of a single
    // tracked pass, and valid resources do not pay for tracking the path of every node (a
    // String per map key). Measured with callgrind on `boshy-bench rules` (1,000 configs):
    // `parse_resource` 135 M → 106 M instructions; the rest of `parse_config` (about 710 M) is
    // serde_yaml building the `Value` from libyaml's events, which this does not touch.
    let envelope = match Envelope::<S>::deserialize(&value) {
        Ok(envelope) => envelope,
        Err(_) => serde_path_to_error::deserialize::<_, Envelope<S>>(value).map_err(|err| {
            let path = err.path().to_string();
            let field = (path != ".").then_some(path);
            (field, err.into_inner().to_string())
        })?,
    };
    Ok((envelope.metadata.namespace, spec(envelope.spec)))
}

/// Whether `name` is a Kubernetes resource name (a DNS subdomain): dot-separated DNS labels,
/// at most 253 characters.
pub(crate) fn is_resource_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as written, or what kind of value it is.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => value_kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{PeerMtlsMode, PolicyAction};
    use super::*;

    fn one(content: &str) -> ParsedConfig {
        parse_config("reviews", content)
    }

    fn errors(parsed: &ParsedConfig) -> Vec<String> {
        parsed.errors.iter().map(ToString::to_string).collect()
    }

    const ROUTE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews.reviews.bookinfo.boshy]
  http:
  - route:
    - destination: {host: reviews.reviews.bookinfo.boshy, subset: v1}
      weight: 50
    - destination: {host: reviews.reviews.bookinfo.boshy, subset: v2}
      weight: 50
";

    #[test]
    fn one_resource_is_read_into_its_kind() {
        let parsed = one(ROUTE);
        assert_eq!(errors(&parsed), Vec::<String>::new());
        assert_eq!(parsed.resources.len(), 1);
        let resource = &parsed.resources[0];
        assert_eq!((resource.name.as_str(), resource.item), ("reviews", None));
        let Spec::VirtualService(vs) = &resource.spec else {
            panic!("{resource:?}")
        };
        assert_eq!(vs.http[0].route[1].weight, Some(50));
        assert_eq!(
            vs.http[0].route[1].destination.subset.as_deref(),
            Some("v2")
        );
    }

    #[test]
    fn every_api_version_of_networking_is_accepted_alike() {
        for version in NETWORKING_API_VERSIONS {
            let content = ROUTE.replace("networking.istio.io/v1", version);
            assert!(one(&content).errors.is_empty(), "{version}");
        }
    }

    #[test]
    fn a_sidecar_is_read_in_every_api_version() {
        let sidecar = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews-pins, namespace: istio-system}
spec:
  workloadSelector:
    labels: {app: reviews}
  egress:
  - hosts: ['*/ratings.ratings.bookinfo.boshy', './*.external.boshy']
";
        for version in NETWORKING_API_VERSIONS {
            let parsed = one(&sidecar.replace("networking.istio.io/v1", version));
            assert_eq!(errors(&parsed), Vec::<String>::new(), "{version}");
            let [resource] = &parsed.resources[..] else {
                panic!("{parsed:?}")
            };
            assert_eq!(resource.reference().plain(), "Sidecar reviews-pins");
            let Spec::Sidecar(sidecar) = &resource.spec else {
                panic!("{resource:?}")
            };
            let selector = sidecar.workload_selector.as_ref().unwrap();
            assert_eq!(selector.labels["app"], "reviews");
            assert_eq!(sidecar.egress[0].hosts.len(), 2);
        }
    }

    #[test]
    fn a_type_error_names_config_resource_and_field() {
        let parsed = one(&ROUTE.replacen("weight: 50", "weight: fifty", 2));
        assert!(parsed.resources.is_empty());
        assert_eq!(
            errors(&parsed),
            [
                "config \"reviews\": VirtualService \"reviews\": spec.http[0].route[0].weight: \
              invalid type: string \"fifty\", expected u32"
            ]
        );
    }

    #[test]
    fn unknown_and_refused_fields_are_named() {
        let parsed = one(&ROUTE.replace("  - route:", "  - corsPolicy: {}\n    route:"));
        let [error] = &errors(&parsed)[..] else {
            panic!("{parsed:?}")
        };
        assert!(
            error.contains("spec.http[0].corsPolicy: this Istio field is not supported"),
            "{error}"
        );
        let parsed = one(&ROUTE.replace("  - route:", "  - rout: []\n    route:"));
        let error = &errors(&parsed)[0];
        assert!(error.contains("unknown field `rout`"), "{error}");
        assert!(error.contains("spec.http[0]"), "{error}");
        let parsed = one(&ROUTE.replace("spec:", "status: {}\nspec:"));
        assert!(errors(&parsed)[0].contains("unknown field `status`"));
    }

    #[test]
    fn other_kinds_and_api_groups_are_refused_by_name() {
        let gateway = ROUTE.replace("kind: VirtualService", "kind: Gateway");
        assert_eq!(
            errors(&one(&gateway)),
            [
                "config \"reviews\": Gateway \"reviews\": kind: Gateway is not supported: \
              boshy-istio takes ServiceEntry, WorkloadGroup, DestinationRule, VirtualService, \
              Sidecar, PeerAuthentication, AuthorizationPolicy"
            ]
        );
        let extensions = ROUTE
            .replace("networking.istio.io/v1", "extensions.istio.io/v1alpha1")
            .replace("VirtualService", "WasmPlugin");
        let error = &errors(&one(&extensions))[0];
        assert!(
            error.starts_with(
                "config \"reviews\": WasmPlugin \"reviews\": apiVersion: \
                 extensions.istio.io/v1alpha1 is not supported: boshy-istio takes \
                 networking.istio.io/v1, networking.istio.io/v1beta1, \
                 networking.istio.io/v1alpha3, security.istio.io/v1, security.istio.io/v1beta1"
            ),
            "{error}"
        );
        let crossed = ROUTE.replace("networking.istio.io/v1", "security.istio.io/v1beta1");
        assert_eq!(
            errors(&one(&crossed)),
            [
                "config \"reviews\": VirtualService \"reviews\": apiVersion: \
                 security.istio.io/v1beta1 is not the API group of VirtualService: it is \
                 networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
            ]
        );
        let unnamed = ROUTE.replace("  name: reviews\n", "  labels: {app: reviews}\n");
        assert_eq!(
            errors(&one(&unnamed)),
            [
                "config \"reviews\": VirtualService (no metadata.name): metadata.name: missing: \
              every resource has a name"
            ]
        );
        let bad_name = ROUTE.replace("name: reviews", "name: Reviews_1");
        assert!(errors(&one(&bad_name))[0].contains("is not a resource name"));
    }

    #[test]
    fn a_list_keeps_its_good_items_and_names_the_bad_ones() {
        let item = ROUTE.replace('\n', "\n    ");
        let list = format!(
            "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n  - {}\n  - {}\n  - 42\n",
            item.trim_end(),
            item.replace("name: reviews", "name: broken")
                .replace("weight: 50", "weight: -1")
                .trim_end(),
        );
        let parsed = one(&list);
        assert_eq!(parsed.resources.len(), 1, "{parsed:?}");
        assert_eq!(parsed.resources[0].item, Some(0));
        let errors = errors(&parsed);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "config \"reviews\": VirtualService \"broken\": spec.http[0].route[0].weight: \
                 invalid value: integer `-1`"
            ),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "config \"reviews\": resource items[2]: a resource is a mapping, found a number"
        );
    }

    #[test]
    fn content_that_is_not_a_resource_or_a_list_is_a_config_error() {
        for (content, expected) in [
            ("[1, 2]", "must be a YAML mapping"),
            ("a: [", "not valid YAML"),
            ("a: 1\n---\nb: 2\n", "not valid YAML"),
            (
                "apiVersion: v2\nkind: List\nitems: []\n",
                "a List is apiVersion v1",
            ),
            ("apiVersion: v1\nkind: List\nitems: {}\n", "must be a list"),
            (
                "apiVersion: v1\nkind: List\nextra: 1\n",
                "unknown field extra",
            ),
            (&format!("a: {}", "[".repeat(300)), "without closing them"),
        ] {
            let parsed = one(content);
            assert!(parsed.resources.is_empty());
            let errors = errors(&parsed);
            assert!(errors[0].contains(expected), "{content:?}: {errors:?}");
        }
        let empty = one("apiVersion: v1\nkind: List\nitems: []\n");
        assert!(empty.errors.is_empty());
        assert_eq!(
            empty.warnings[0].to_string(),
            "config \"reviews\": items: the List has no items"
        );
    }

    #[test]
    fn anchors_and_merge_keys_work_as_in_manifests() {
        let content = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.bookinfo.boshy
  subsets:
  - name: v1
    labels: &v1 {app: reviews, version: v1}
  - name: v1-again
    labels:
      <<: *v1
";
        let parsed = one(content);
        assert!(parsed.errors.is_empty(), "{parsed:?}");
    }

    #[test]
    fn a_namespace_is_accepted_with_a_warning_unless_default() {
        let content = ROUTE.replace(
            "  name: reviews\n",
            "  name: reviews\n  namespace: default\n",
        );
        assert!(one(&content).warnings.is_empty());
        let content = ROUTE.replace("  name: reviews\n", "  name: reviews\n  namespace: prod\n");
        let parsed = one(&content);
        assert_eq!(parsed.resources.len(), 1);
        assert!(parsed.warnings[0]
            .to_string()
            .contains("metadata.namespace: namespace \"prod\" is ignored"));
    }

    #[test]
    fn a_security_policy_is_read_in_both_versions_its_namespace_naming_its_deployment() {
        let policy = |version: &str, namespace: &str| {
            format!(
                "apiVersion: {version}
kind: List
items:
- apiVersion: {version}
  kind: PeerAuthentication
  metadata: {{name: strict{namespace}}}
  spec:
    mtls: {{mode: STRICT}}
- apiVersion: {version}
  kind: AuthorizationPolicy
  metadata: {{name: deny{namespace}}}
  spec:
    selector: {{matchLabels: {{app: reviews}}}}
    action: DENY
    rules: [{{to: [{{operation: {{methods: [DELETE], ports: ['9080']}}}}]}}]
"
            )
            .replacen(
                &format!("apiVersion: {version}\nkind: List"),
                "apiVersion: v1\nkind: List",
                1,
            )
        };
        for version in SECURITY_API_VERSIONS {
            for (namespace, deployment) in [
                ("", None),
                (", namespace: istio-system", None),
                (", namespace: bookinfo", Some("bookinfo")),
            ] {
                let parsed = one(&policy(version, namespace));
                assert_eq!(errors(&parsed), Vec::<String>::new(), "{version}");
                assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
                let [strict, deny] = &parsed.resources[..] else {
                    panic!("{parsed:?}")
                };
                assert_eq!(strict.deployment.as_deref(), deployment);
                assert_eq!(deny.deployment.as_deref(), deployment);
                let Spec::PeerAuthentication(strict) = &strict.spec else {
                    panic!("{strict:?}")
                };
                assert_eq!(strict.mtls.unwrap().mode, PeerMtlsMode::Strict);
                let Spec::AuthorizationPolicy(deny) = &deny.spec else {
                    panic!("{deny:?}")
                };
                assert_eq!(deny.action, PolicyAction::Deny);
                let operation = deny.rules[0].to[0].operation.as_ref().unwrap();
                assert_eq!(operation.ports[0].0, 9080);
            }
        }
        let traffic_rule = ROUTE.replace(
            "  name: reviews\n",
            "  name: reviews\n  namespace: bookinfo\n",
        );
        assert_eq!(one(&traffic_rule).resources[0].deployment, None);
    }

    #[test]
    fn resource_names_are_dns_subdomains() {
        assert!(is_resource_name("reviews"));
        assert!(is_resource_name("reviews.v1-route"));
        for bad in ["", "Reviews", "a_b", "-a", "a.", &"a".repeat(254)] {
            assert!(!is_resource_name(bad), "{bad}");
        }
    }
}
