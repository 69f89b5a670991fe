//! Bad input for the traffic rules' parser and validation, fuzzed with proptest (stable,
//! inside `cargo test`): YAML token soup, wrong types and unknown field names at random
//! places inside resources that are otherwise valid, random regexes and durations, huge and
//! alias-bombed configs. Never a panic; every error names the config, and every error about
//! a resource names it and the field; findings stay short.
//!
//! Each test prints how many cases it ran (`cargo test --test fuzz_rules -- --nocapture`).

use std::cell::Cell;

use boshy::rules::{parse_config, validate, Finding, MeshView, ParsedConfig};
use boshy_test_support::fuzz::{self, runner, yaml_scalar};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

/// One resource of each kind using every supported field: valid as it is (a Sidecar is
/// warned about, as every accepted one is).
const EVERYTHING: &str = "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: reviews, namespace: default, labels: {app: reviews}, annotations: {a: b}}
  spec:
    hosts: [reviews.bookinfo.boshy]
    location: MESH_INTERNAL
    ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 9080}, {number: 9090, name: tcp}]
    resolution: STATIC
    workloadSelector: {labels: {app: reviews}}
    exportTo: ['*']
- apiVersion: networking.istio.io/v1beta1
  kind: ServiceEntry
  metadata: {name: db}
  spec:
    hosts: [db.external.boshy]
    addresses: []
    ports: [{number: 5432, name: tcp-postgres, protocol: TCP}]
    resolution: STATIC
    endpoints:
    - {address: 192.0.2.10, ports: {tcp-postgres: 5432}, labels: {role: primary}, locality: z1}
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: cache}
  spec:
    hosts: [cache.external.boshy]
    ports: [{number: 6379, name: tcp-redis}]
    resolution: DNS
    endpoints:
    - {address: primary.cache.example.com, ports: {tcp-redis: 6379}, labels: {role: primary}, locality: z1}
    - {address: 192.0.2.11, labels: {role: replica}}
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: legacy}
  spec:
    metadata: {labels: {app: legacy}, annotations: {example.com/owner: team-a}}
    template: {ports: {http: 8080, tcp-admin: 9900}, labels: {tier: vm}}
    probe:
      initialDelaySeconds: 5
      timeoutSeconds: 3
      periodSeconds: 4
      successThreshold: 3
      failureThreshold: 3
      httpGet: {path: /health, port: http, host: 127.0.0.1, scheme: HTTPS, httpHeaders: [{name: X-Probe, value: '1'}]}
- apiVersion: networking.istio.io/v1alpha3
  kind: DestinationRule
  metadata: {name: reviews}
  spec:
    host: reviews.bookinfo.boshy
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpCookie: {name: user, path: /, ttl: 0s}}
        localityLbSetting: {enabled: true, distribute: [{from: '*', to: {z1: 80, z2/*: 20}}]}
      connectionPool:
        tcp: {maxConnections: 100, connectTimeout: 30ms}
        http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 3}
      outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 5, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: LEAST_REQUEST}
    subsets:
    - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
    - {name: v2, labels: {version: v2}}
    - {name: v3, labels: {version: v3}}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: reviews}
  spec:
    hosts: [reviews.bookinfo.boshy]
    gateways: [mesh]
    http:
    - name: jason
      match:
      - uri: {prefix: /reviews}
        method: {exact: GET}
        headers: {end-user: {exact: jason}}
        withoutHeaders: {x-canary: {regex: '^no$'}}
        queryParams: {v: {exact: '2'}}
        port: 9080
        ignoreUriCase: true
      route:
      - destination: {host: reviews.bookinfo.boshy, subset: v2, port: {number: 9080}}
        weight: 90
      - destination: {host: reviews.bookinfo.boshy, subset: v3}
        weight: 10
      rewrite: {uri: /v2/reviews}
      timeout: 1.5s
      retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,connect-failure,503'}
      fault:
        delay: {fixedDelay: 7s, percentage: {value: 100}}
        abort: {httpStatus: 500, percentage: {value: 0.1}}
      mirror: {host: reviews.bookinfo.boshy, subset: v1}
      mirrorPercentage: {value: 5}
      headers: {response: {set: {x-served-by: mesh}}}
    - route:
      - destination: {host: reviews.bookinfo.boshy, subset: v1}
        headers: {request: {set: {x-a: b}, add: {x-c: d}, remove: [x-e]}}
    - redirect: {uri: /new, authority: other.example, redirectCode: 308}
    tcp:
    - match: [{port: 9090}]
      route:
      - destination: {host: db.external.boshy}
- apiVersion: networking.istio.io/v1
  kind: Sidecar
  metadata: {name: reviews}
  spec:
    workloadSelector: {labels: {app: reviews}}
    egress:
    - hosts: ['*/db.external.boshy', './*.bookinfo.boshy']
- apiVersion: security.istio.io/v1beta1
  kind: PeerAuthentication
  metadata: {name: reviews, namespace: bookinfo}
  spec:
    selector: {matchLabels: {app: reviews}}
    mtls: {mode: STRICT}
    portLevelMtls: {9090: {mode: DISABLE}, '9080': {mode: UNSET}}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: reviews, namespace: istio-system}
  spec:
    selector: {matchLabels: {app: reviews}}
    action: DENY
    rules:
    - from:
      - source: {principals: [boshy/deployment/bookinfo/instance_group/productpage], notPrincipals: ['*/instance_group/evil'], namespaces: [bookinfo], notNamespaces: ['test-*'], ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.1]}
      to:
      - operation: {methods: [DELETE], notMethods: [GET], paths: ['/admin*'], notPaths: ['*.css'], ports: ['9080'], notPorts: [9090]}
      when:
      - {key: 'request.headers[x-user]', values: [jason], notValues: ['*']}
      - {key: source.ip, values: [10.0.0.1]}
      - {key: source.principal, values: ['*']}
      - {key: source.namespace, notValues: [test]}
      - {key: destination.port, values: ['9080']}
";

/// The fields under which any key is a value, not a field name.
const FREE_FORM: [&str; 11] = [
    "matchLabels",
    "portLevelMtls",
    "labels",
    "annotations",
    "headers",
    "withoutHeaders",
    "queryParams",
    "set",
    "add",
    "to",
    "ports",
];

fn everything() -> Value {
    serde_yaml::from_str(EVERYTHING).unwrap()
}

/// A position in a YAML tree: map keys and sequence indexes.
#[derive(Debug, Clone)]
enum Step {
    Key(Value),
    Index(usize),
}

/// Every node's path under the items' `spec`s (and the items themselves).
fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                prefix.push(Step::Key(key.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Sequence(items) => {
            for (at, child) in items.iter().enumerate() {
                prefix.push(Step::Index(at));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(root: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(root, |value, step| match step {
        Step::Key(key) => value.as_mapping_mut().unwrap().get_mut(key).unwrap(),
        Step::Index(at) => &mut value.as_sequence_mut().unwrap()[*at],
    })
}

/// The paths of the nodes inside the resources' specs, with the item each belongs to.
fn spec_paths(root: &Value) -> Vec<(usize, Vec<Step>)> {
    let items = root["items"].as_sequence().unwrap();
    let mut all = Vec::new();
    for (at, item) in items.iter().enumerate() {
        let mut found = Vec::new();
        paths(&item["spec"], &mut Vec::new(), &mut found);
        let base = [
            Step::Key("items".into()),
            Step::Index(at),
            Step::Key("spec".into()),
        ];
        all.extend(found.into_iter().map(|path| {
            let mut full = base.to_vec();
            full.extend(path);
            (at, full)
        }));
    }
    all
}

fn scalar() -> impl Strategy<Value = Value> + Clone {
    yaml_scalar(
        vec![0i64, 1, -1, 100, 101, 65535, 65536, i64::MAX, i64::MIN],
        vec![
            "",
            "7s",
            "fifty",
            "mesh",
            "v1",
            "ROUND_ROBIN",
            "PASSTHROUGH",
            "HTTPS",
            "STATIC",
            "NONE",
            "reviews",
            "*.boshy",
            "10.0.0.1",
            "((secret))",
            "(",
            "^a$",
            "1h30m",
            "-1s",
            "jason",
        ],
        40,
    )
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(("[a-zA-Z]{0,8}", inner), 0..4).prop_map(|entries| {
                Value::Mapping(
                    entries
                        .into_iter()
                        .map(|(k, v)| (Value::String(k), v))
                        .collect::<Mapping>(),
                )
            }),
        ]
    })
}

/// A mesh view that knows the hosts of `EVERYTHING`, so that validation runs every check.
fn mesh() -> MeshView {
    MeshView::from_registration_json(
        r#"[{"hostname": "reviews.reviews-v1.bookinfo.boshy", "deployment": "bookinfo", "instance_group": "reviews-v1", "ports": [{"name": "http", "number": 9080, "protocol": "http"}, {"name": "tcp", "number": 9090, "protocol": "tcp"}],
             "endpoints": [{"instance": "a", "labels": {"app": "reviews", "version": "v1"}},
                           {"instance": "b", "labels": {"app": "reviews", "version": "v2"}},
                           {"instance": "c", "labels": {"app": "reviews", "version": "v3"}}]}]"#,
    )
    .unwrap()
}

/// What every finding guarantees: it names the config, stays short, and when it is about a
/// resource, names it (an error about no resource is about the whole config).
fn check_findings(parsed: &ParsedConfig) -> Result<(), TestCaseError> {
    let validated = validate(std::slice::from_ref(parsed), Some(&mesh()));
    let verdict = &validated.verdicts[0];
    let findings: Vec<&Finding> = verdict.errors.iter().chain(&verdict.warnings).collect();
    for finding in findings {
        prop_assert_eq!(&finding.config, "c");
        let line = finding.to_string();
        prop_assert!(line.len() < 3000, "{} bytes: {line}", line.len());
        // An error about no resource is about the whole config: at most a List's own field.
        if finding.resource.is_none() {
            let field = finding.field.as_deref();
            prop_assert!(
                matches!(field, None | Some("apiVersion" | "items")),
                "{line}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_fixture_is_valid_as_it_is() {
    let parsed = parse_config("c", EVERYTHING);
    let validated = validate(&[parsed], Some(&mesh()));
    let findings: Vec<String> = validated.verdicts[0]
        .errors
        .iter()
        .chain(&validated.verdicts[0].warnings)
        .map(ToString::to_string)
        .collect();
    // Every accepted Sidecar says how it differs from Istio's, and nothing else is said.
    let [only_adds] = &findings[..] else {
        panic!("{findings:?}")
    };
    assert!(
        only_adds.starts_with("config \"c\": Sidecar \"reviews\": spec.egress: unlike Istio's"),
        "{only_adds}"
    );
    assert_eq!(validated.verdicts[0].accepted.len(), 9);
}

#[test]
fn wrong_values_anywhere_in_a_spec_are_refused_naming_resource_and_field() {
    let root = everything();
    let targets = spec_paths(&root);
    let cases = Cell::new(0u32);
    runner(3000)
        .run(
            &(
                prop::sample::select(targets),
                prop_oneof![3 => scalar(), 1 => tree()],
            ),
            |((item, path), replacement)| {
                cases.set(cases.get() + 1);
                let mut mutated = root.clone();
                *node(&mut mutated, &path) = replacement;
                let yaml = serde_yaml::to_string(&mutated).unwrap();
                let parsed = parse_config("c", &yaml);
                check_findings(&parsed)?;
                let kind = root["items"][item]["kind"].as_str().unwrap();
                let name = root["items"][item]["metadata"]["name"].as_str().unwrap();
                for error in &parsed.errors {
                    let resource = error.resource.as_ref();
                    prop_assert!(resource.is_some(), "{error}\n{yaml}");
                    let resource = resource.unwrap();
                    prop_assert_eq!(resource.kind.as_deref(), Some(kind), "{}", error);
                    prop_assert_eq!(resource.name.as_deref(), Some(name), "{}", error);
                    let field = error.field.as_deref().unwrap_or("");
                    prop_assert!(field.starts_with("spec"), "{error}\n{yaml}");
                }
                // The other resources of the List are not affected.
                let kept: Vec<&str> = parsed.resources.iter().map(|r| r.name.as_str()).collect();
                prop_assert!(kept.len() >= 3, "{kept:?}: {:?}", parsed.errors);
                Ok(())
            },
        )
        .unwrap();
    println!("wrong values: {} cases", cases.get());
}

#[test]
fn unknown_field_names_inside_resources_are_refused_by_name() {
    let root = everything();
    let mappings: Vec<(usize, Vec<Step>)> = spec_paths(&root)
        .into_iter()
        .filter(|(_, path)| node(&mut root.clone(), path).is_mapping())
        .collect();
    let cases = Cell::new(0u32);
    runner(2000)
        .run(
            &(
                prop::sample::select(mappings),
                "zz[a-zA-Z0-9]{0,10}",
                scalar(),
            ),
            |((_, path), key, value)| {
                cases.set(cases.get() + 1);
                let mut mutated = root.clone();
                node(&mut mutated, &path)
                    .as_mapping_mut()
                    .unwrap()
                    .insert(Value::String(key.clone()), value);
                let yaml = serde_yaml::to_string(&mutated).unwrap();
                let parsed = parse_config("c", &yaml);
                check_findings(&parsed)?;
                let parent = match path.last() {
                    Some(Step::Key(key)) => key.as_str().unwrap_or("").to_string(),
                    _ => String::new(),
                };
                if FREE_FORM.contains(&parent.as_str()) {
                    return Ok(());
                }
                prop_assert_eq!(parsed.errors.len(), 1, "{}", yaml);
                let error = &parsed.errors[0];
                prop_assert!(
                    error.field.as_deref().unwrap_or("").starts_with("spec"),
                    "{error}"
                );
                prop_assert!(
                    error.message.contains(&format!("unknown field `{key}`")),
                    "{error}"
                );
                Ok(())
            },
        )
        .unwrap();
    println!("unknown field names: {} cases", cases.get());
}

/// YAML-significant tokens and resource words in any order.
fn yaml_soup() -> impl Strategy<Value = String> {
    let words = [
        "apiVersion: networking.istio.io/v1\n",
        "apiVersion: v1\n",
        "kind: List\n",
        "kind: VirtualService\n",
        "kind: DestinationRule\n",
        "kind: ServiceEntry\n",
        "kind: Sidecar\n",
        "apiVersion: security.istio.io/v1\n",
        "kind: PeerAuthentication\n",
        "kind: AuthorizationPolicy\n",
        "  selector: {matchLabels: {app: a}}\n",
        "  rules: [{}]\n",
        "  portLevelMtls: {80: {mode: STRICT}}\n",
        "metadata: {name: r}\n",
        "items:\n",
        "spec:\n",
        "  hosts: [a.b.boshy]\n",
        "  http:\n",
        "  - route:\n",
        "    - destination: {host: a.b.boshy}\n",
        "weight: ",
        "50",
    ];
    fuzz::yaml_soup(&words, 80)
}

#[test]
fn yaml_token_soup_never_panics_and_errors_name_the_config() {
    let cases = Cell::new(0u32);
    runner(3000)
        .run(&yaml_soup(), |yaml| {
            cases.set(cases.get() + 1);
            let parsed = parse_config("c", &yaml);
            check_findings(&parsed)?;
            let first = boshy::rules::first_document(&yaml);
            prop_assert!(yaml.starts_with(first.text));
            Ok(())
        })
        .unwrap();
    println!("rules token soup: {} cases", cases.get());
}

#[test]
fn random_regexes_compile_or_are_refused_at_their_field() {
    let cases = Cell::new(0u32);
    let pattern = prop_oneof![
        "[a-z()\\[\\]{}*+?|\\\\^$.,0-9<=!:PpdwsbB-]{0,24}",
        "\\PC{0,16}",
        (1u32..200, 1u32..200).prop_map(|(a, b)| format!("(a{{{a}}}){{{b}}}")),
    ];
    runner(2000)
        .run(&pattern, |pattern| {
            cases.set(cases.get() + 1);
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [a.b.boshy]\n  http:\n  - match: [{{uri: {{regex: {}}}}}]\n    route:\n    - destination: {{host: a.b.boshy}}\n",
                serde_json::to_string(&pattern).unwrap()
            );
            let parsed = parse_config("c", &yaml);
            match parsed.errors.as_slice() {
                [] => prop_assert!(regex::Regex::new(&pattern).is_ok() || pattern.len() > 1024),
                [error] => {
                    prop_assert_eq!(error.field.as_deref(), Some("spec.http[0].match[0].uri"));
                    prop_assert!(error.message.contains("regex"), "{}", error);
                }
                more => prop_assert!(false, "{more:?}"),
            }
            Ok(())
        })
        .unwrap();
    println!("regexes: {} cases", cases.get());
}

#[test]
fn random_durations_parse_or_say_how_to_write_one() {
    let cases = Cell::new(0u32);
    let text = prop_oneof![
        "[0-9.]{0,8}(ns|us|µs|ms|s|m|h|d|){0,3}",
        "\\PC{0,12}",
        ("[0-9]{1,30}", "(h|m|s)").prop_map(|(n, u)| format!("{n}{u}")),
    ];
    runner(1000)
        .run(&text, |text| {
            cases.set(cases.get() + 1);
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [a.b.boshy]\n  http:\n  - timeout: {}\n    route:\n    - destination: {{host: a.b.boshy}}\n",
                serde_json::to_string(&text).unwrap()
            );
            let parsed = parse_config("c", &yaml);
            for error in &parsed.errors {
                prop_assert_eq!(error.field.as_deref(), Some("spec.http[0].timeout"));
            }
            Ok(())
        })
        .unwrap();
    println!("durations: {} cases", cases.get());
}

#[test]
fn huge_configs_are_read_or_refused_within_the_yaml_limits() {
    let cases = Cell::new(0u32);
    let item = "- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {name: rNNN}\n  spec:\n    hosts: [hNNN.b.boshy]\n    http:\n    - route:\n      - destination: {host: hNNN.b.boshy}\n";
    runner(12)
        .run(&(0usize..3000, 0usize..200_000), |(items, long)| {
            cases.set(cases.get() + 1);
            let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
            for at in 0..items {
                yaml.push_str(&item.replace("NNN", &at.to_string()));
            }
            yaml.push_str(&format!(
                "- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {{name: {}}}\n  spec: {{}}\n",
                "x".repeat(long)
            ));
            let parsed = parse_config("c", &yaml);
            prop_assert_eq!(parsed.resources.len(), items);
            prop_assert_eq!(parsed.errors.len(), 1);
            prop_assert!(parsed.errors[0].to_string().len() < 3000);
            // Without a mesh view every host is unknown rather than missing: all accepted.
            let validated = validate(&[parsed], None);
            prop_assert_eq!(validated.verdicts[0].accepted.len(), items);
            Ok(())
        })
        .unwrap();
    println!("huge configs: {} cases", cases.get());

    let anchor = vec!["1"; 2000].join(", ");
    let aliases = vec!["*big"; 2000].join(", ");
    let bomb = format!("big: &big [{anchor}]\napiVersion: v1\nkind: List\nitems: [{aliases}]\n");
    let parsed = parse_config("bomb", &bomb);
    assert!(
        parsed.errors[0].message.contains("alias bomb"),
        "{:?}",
        parsed.errors
    );
    let deep = format!("spec: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let parsed = parse_config("deep", &deep);
    assert!(parsed.errors[0].message.contains("without closing them"));
}
