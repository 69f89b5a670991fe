//! Traffic rules without a director: the files of Istio's bookinfo tasks (written as
//! director configs, with mesh names for hosts; `tests/fixtures/rules/bookinfo/`) parse and
//! validate against a mesh view of a bookinfo deployment, through the library and through
//! `boshy rules check`; bad files are rejected with one line per finding naming config,
//! resource and field, and exit status 1. The security policies' examples of docs/rules.md
//! are accepted against the same mesh, and `boshy rules check` judges security policies too.
//!
//! The bookinfo deployment of the fixtures: instance groups `productpage`, `details`,
//! `ratings` (one job each, of the same name) and `reviews-v1`, `reviews-v2`, `reviews-v3`
//! (job `reviews`), every job exposing port 9080 (http), every instance labelled `app` and
//! `version` by its manifest. `registration.json` is that mesh as `GET /v1/registration`
//! would show it with instance labels.

use std::path::PathBuf;
use std::process::{Command, Output};

use boshy::rules::model::StringMatch;
use boshy::rules::{parse_config, validate, MeshView, ParsedConfig, Validated};

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/rules/bookinfo/{name}"))
}

/// The fixture `name`.yml as the director config `name`.
fn config(name: &str) -> ParsedConfig {
    let content = std::fs::read_to_string(fixture(&format!("{name}.yml"))).unwrap();
    let parsed = parse_config(name, &content);
    assert!(parsed.errors.is_empty(), "{name}: {:?}", parsed.errors);
    parsed
}

fn bookinfo_mesh() -> MeshView {
    let json = std::fs::read_to_string(fixture("registration.json")).unwrap();
    MeshView::from_registration_json(&json).unwrap()
}

/// The configs every task step stands on: the name for reviews and the subsets.
const BASE: [&str; 2] = ["service-entry-reviews", "destination-rule-all"];

const STEPS: [&str; 5] = [
    "virtual-service-all-v1",
    "virtual-service-reviews-test-v2",
    "virtual-service-reviews-v2-v3",
    "virtual-service-ratings-test-delay",
    "virtual-service-ratings-test-abort",
];

fn step(step: &str) -> Validated {
    let configs: Vec<ParsedConfig> = BASE.iter().chain([&step]).map(|n| config(n)).collect();
    validate(&configs, Some(&bookinfo_mesh()))
}

#[test]
fn every_bookinfo_step_is_accepted_against_the_bookinfo_mesh() {
    for name in STEPS {
        let validated = step(name);
        let findings: Vec<String> = validated
            .verdicts
            .iter()
            .flat_map(|v| v.errors.iter().chain(&v.warnings))
            .map(ToString::to_string)
            .collect();
        assert_eq!(findings, Vec::<String>::new(), "{name}");
        assert!(validated.skipped_checks.is_empty(), "{name}");
        let accepted: Vec<usize> = validated
            .verdicts
            .iter()
            .map(|v| v.accepted.len())
            .collect();
        let routes = if name == "virtual-service-all-v1" {
            4
        } else {
            1
        };
        assert_eq!(accepted, [1, 4, routes], "{name}");
    }
}

#[test]
fn the_bookinfo_rules_say_what_the_tasks_ask() {
    let rules = step("virtual-service-reviews-test-v2").rules;
    let entry = rules.service_entry("reviews.bookinfo.boshy").unwrap();
    let selector = entry.spec.workload_selector.as_ref().unwrap();
    assert_eq!(selector.labels["app"], "reviews");
    let subsets: Vec<&str> = rules
        .destination_rule("reviews.bookinfo.boshy")
        .unwrap()
        .spec
        .subsets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(subsets, ["v1", "v2", "v3"]);
    let jason = &rules
        .virtual_service("reviews.bookinfo.boshy")
        .unwrap()
        .spec
        .http[0];
    assert_eq!(
        jason.matches[0].headers["end-user"],
        StringMatch::Exact("jason".into())
    );
    assert_eq!(jason.route[0].destination.subset.as_deref(), Some("v2"));

    let rules = step("virtual-service-reviews-v2-v3").rules;
    let split = &rules
        .virtual_service("reviews.bookinfo.boshy")
        .unwrap()
        .spec
        .http[0];
    let weights: Vec<_> = split
        .route
        .iter()
        .map(|d| (d.destination.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(weights, [(Some("v2"), Some(50)), (Some("v3"), Some(50))]);

    let rules = step("virtual-service-ratings-test-delay").rules;
    let ratings = "ratings.ratings.bookinfo.boshy";
    let fault = rules.virtual_service(ratings).unwrap().spec.http[0]
        .fault
        .clone();
    let delay = fault.unwrap().delay.unwrap();
    assert_eq!(delay.fixed_delay, std::time::Duration::from_secs(7));
    assert_eq!(delay.percentage.unwrap().value(), 100.0);

    let rules = step("virtual-service-ratings-test-abort").rules;
    let fault = rules.virtual_service(ratings).unwrap().spec.http[0]
        .fault
        .clone();
    let abort = fault.unwrap().abort.unwrap();
    assert_eq!(
        (abort.http_status, abort.percentage.unwrap().value()),
        (500, 100.0)
    );
}

#[test]
fn a_later_step_beside_all_v1_is_a_conflict_until_its_config_is_replaced() {
    // In Istio a task's file replaces the VirtualService of the same name; a director config
    // replaces only a config of the same name. Kept beside all-v1, the step's route for
    // reviews is the later claim on the name and the host, and is refused as such.
    let configs: Vec<ParsedConfig> = BASE
        .iter()
        .chain(&["virtual-service-all-v1", "virtual-service-reviews-test-v2"])
        .map(|n| config(n))
        .collect();
    let validated = validate(&configs, Some(&bookinfo_mesh()));
    let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "config \"virtual-service-reviews-test-v2\": VirtualService \"reviews\": \
             metadata.name: VirtualService reviews is already defined in config \
             virtual-service-all-v1: names are unique per kind across every config",
            "config \"virtual-service-reviews-test-v2\": VirtualService \"reviews\": \
             spec.hosts[0]: reviews.bookinfo.boshy is already routed by VirtualService \
             reviews (config virtual-service-all-v1): one VirtualService per host",
        ]
    );
    // Uploaded under the name of the config it replaces, it is accepted.
    let mut replaced = config("virtual-service-reviews-test-v2");
    replaced.name = "virtual-service-all-v1".into();
    let configs = [config(BASE[0]), config(BASE[1]), replaced];
    assert_eq!(
        validate(&configs, Some(&bookinfo_mesh())).errors().count(),
        0
    );
}

fn rules_check(args: &[&str]) -> Output {
    Command::new(BOSHY)
        .args(["rules", "check"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn rules_check_accepts_the_bookinfo_files() {
    let files: Vec<String> = BASE
        .iter()
        .chain(&[STEPS[1]])
        .map(|n| fixture(&format!("{n}.yml")).display().to_string())
        .collect();
    let registration = fixture("registration.json").display().to_string();
    let mut args = vec!["--registration", &registration];
    args.extend(files.iter().map(String::as_str));
    let output = rules_check(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[1],
        format!(
            "[destination-rule-all] {}: 4 accepted, 0 rejected",
            files[1]
        )
    );

    // Without the mesh, the same files pass the checks that can be made, and it says so.
    let output = rules_check(&files.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("Info: without a mesh view, hosts were not checked"),
        "{stdout}"
    );
}

#[test]
fn rules_check_rejects_bad_files_with_a_line_per_finding() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let weights = write(
        "reviews.yml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.bookinfo.boshy]
  http:
  - route:
    - destination: {host: reviews.bookinfo.boshy, subset: v2}
      weight: 50
    - destination: {host: reviews.bookinfo.boshy, subset: v3}
      weight: fifty
",
    );
    let gateway = write(
        "gateway.yml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress}\nspec: {}\n",
    );
    let two_documents = write(
        "two.yml",
        &(std::fs::read_to_string(fixture("virtual-service-reviews-v2-v3.yml"))
            .unwrap()
            .replace("name: reviews", "name: split")
            .replace("subset: v3", "subset: v9")
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"),
    );
    let rules = fixture("destination-rule-all.yml").display().to_string();
    let entry = fixture("service-entry-reviews.yml").display().to_string();
    let registration = fixture("registration.json").display().to_string();
    let output = rules_check(&[
        &weights,
        &format!("routes={gateway}"),
        &two_documents,
        &rules,
        &entry,
        "--registration",
        &registration,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = [
        "Error [reviews] VirtualService reviews: spec.http[0].route[1].weight: invalid type: \
         string \"fifty\", expected u32"
            .to_string(),
        "Error [routes] Gateway ingress: kind: Gateway is not supported: boshy-istio takes \
         ServiceEntry, WorkloadGroup, DestinationRule, VirtualService, Sidecar, \
         PeerAuthentication, AuthorizationPolicy"
            .to_string(),
        "Error [two] VirtualService split: spec.http[0].route[1].destination.subset: \
         DestinationRule reviews (config destination-rule-all) has no subset v9 (it has: v1, \
         v2, v3)"
            .to_string(),
        format!(
            "Warning [two]: {two_documents} has more than one YAML document: bosh \
             update-config sends the first one only, so the others are not checked either \
             (keep several resources in one config as a `kind: List`)"
        ),
        format!("[reviews] {weights}: 0 accepted, 1 rejected"),
        format!("[routes] {gateway}: 0 accepted, 1 rejected"),
        format!("[two] {two_documents}: 0 accepted, 1 rejected"),
        format!("[destination-rule-all] {rules}: 4 accepted, 0 rejected"),
        format!("[service-entry-reviews] {entry}: 1 accepted, 0 rejected"),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rejected: 3"), "{stderr}");
}

#[test]
fn rules_check_judges_workload_groups_against_the_jobs_services() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yml");
    std::fs::write(
        &path,
        "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: reviews-v1}
  spec:
    metadata: {labels: {app: reviews}}
    template: {ports: {http: 9080}}
- apiVersion: networking.istio.io/v1beta1
  kind: WorkloadGroup
  metadata: {name: ratings-vms}
  spec:
    metadata: {labels: {app: ratings}}
    template: {ports: {http: 9080}}
    probe: {httpGet: {path: /health, port: http}}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: ratings-vms}
  spec:
    hosts: [ratings.ratings-vms.bookinfo.boshy]
    http: [{route: [{destination: {host: ratings.ratings-vms.bookinfo.boshy}}], timeout: 2s}]
",
    )
    .unwrap();
    let registration = fixture("registration.json").display().to_string();
    let file = format!("bookinfo={}", path.display());
    let output = rules_check(&[&file, "--registration", &registration]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "Error [bookinfo] WorkloadGroup reviews-v1: metadata.name: the group's service \
             would be reviews.reviews-v1.bookinfo.boshy, which is already a service of the \
             mesh: a job of instance group reviews-v1 of deployment bookinfo exposes it: rename \
             the group (or its `app` label) or the config"
                .to_string(),
            format!("[bookinfo] {}: 2 accepted, 1 rejected", path.display()),
        ],
        "{stdout}"
    );
}

#[test]
fn rules_check_refuses_what_it_cannot_read() {
    let output = rules_check(&["/nonexistent/rules.yml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/rules.yml: cannot read"));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a/r.yml"), dir.path().join("b/r.yml"));
    for path in [&a, &b] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "{}").unwrap();
    }
    let output = rules_check(&[&a.display().to_string(), &b.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("would both be config \"r\""));
    let registration = dir.path().join("registration.json");
    std::fs::write(&registration, "{\"not\": \"a list\"}").unwrap();
    let output = rules_check(&[
        "--registration",
        &registration.display().to_string(),
        &a.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a /v1/registration answer"));
}

/// The YAML examples of docs/rules.md that are security policies.
fn security_examples() -> Vec<String> {
    let guide =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md"))
            .unwrap();
    guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(yaml, _)| yaml.to_string()))
        .filter(|yaml| yaml.contains("security.istio.io"))
        .collect()
}

#[test]
fn the_security_examples_of_the_guide_are_accepted_against_the_bookinfo_mesh() {
    let examples = security_examples();
    assert_eq!(
        examples.len(),
        2,
        "the PeerAuthentication and AuthorizationPolicy examples"
    );
    let configs: Vec<ParsedConfig> = examples
        .iter()
        .enumerate()
        .map(|(at, yaml)| parse_config(&format!("example-{at}"), yaml))
        .collect();
    let validated = validate(&configs, Some(&bookinfo_mesh()));
    let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
    assert_eq!(errors, Vec::<String>::new());
    let warnings: Vec<String> = validated
        .verdicts
        .iter()
        .flat_map(|v| &v.warnings)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "config \"example-1\": AuthorizationPolicy \"details-closed\": spec.rules: an ALLOW \
          policy without rules allows nothing: every request to the instance groups it applies \
          to is denied (Istio's meaning; `rules: [{}]` allows every request)"
        ],
        "the guide says the policy without rules is warned about, and nothing else is"
    );
    let rules = &validated.rules;
    assert_eq!(rules.peer_authentications.len(), 2);
    let closed = rules
        .authorization_policies
        .iter()
        .find(|rule| rule.name == "details-closed")
        .unwrap();
    assert_eq!(closed.deployment.as_deref(), Some("bookinfo"));
    assert!(closed.spec.rules.is_empty());
    let no_deletes = rules
        .authorization_policies
        .iter()
        .find(|rule| rule.name == "no-deletes")
        .unwrap();
    assert_eq!(no_deletes.deployment, None, "no namespace: mesh-wide");
}

#[test]
fn rules_check_judges_security_policies() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let mtls = write(
        "mtls.yml",
        "apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: istio-system}
  spec: {mtls: {mode: STRICT}}
- apiVersion: security.istio.io/v1beta1
  kind: PeerAuthentication
  metadata: {name: lenient}
  spec: {mtls: {mode: PERMISSIVE}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: ratings, namespace: bookinfo}
  spec:
    selector: {matchLabels: {bosh.io/index: '0'}}
    mtls: {mode: DISABLE}
",
    );
    let authz = write(
        "authz.yml",
        "apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: audit}
  spec: {action: AUDIT}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: elsewhere, namespace: shop}
  spec:
    rules:
    - from: [{source: {principals: [spiffe://boshy/deployment/bookinfo/instance_group/productpage]}}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: headers}
  spec:
    rules: [{when: [{key: 'request.auth.claims[iss]', values: [me]}]}]
",
    );
    let registration = fixture("registration.json").display().to_string();
    let output = rules_check(&[&mtls, &authz, "--registration", &registration]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Each file's errors, then its warnings.
    let expected = [
        "Error [mtls] PeerAuthentication ratings: spec.selector.matchLabels.bosh.io/index: \
         bosh.io/index differs between the instances of a group, and a policy applies to whole \
         instance groups (they share one identity and one inbound configuration): select by \
         bosh.io/deployment, bosh.io/instance-group, bosh.io/job or the jobs' expose_labels"
            .to_string(),
        "Warning [mtls] PeerAuthentication lenient: spec: ignored: PeerAuthentication default \
         (config mtls) is the policy of the mesh without selector, and older (the oldest \
         config wins, as in Istio)"
            .to_string(),
        "Error [authz] AuthorizationPolicy audit: spec.action: AUDIT is not supported: the mesh \
         has no audit log for Envoy to write to"
            .to_string(),
        "Error [authz] AuthorizationPolicy headers: spec.rules[0].when[0].key: condition key \
         \"request.auth.claims[iss]\" is not supported: boshy-istio takes \
         request.headers[<name>], source.ip, source.principal, source.namespace, \
         destination.port"
            .to_string(),
        "Warning [authz] AuthorizationPolicy elsewhere: \
         spec.rules[0].from[0].source.principals[0]: \
         \"spiffe://boshy/deployment/bookinfo/instance_group/productpage\" is not of the shape \
         of the mesh's identities, \
         `<trust domain>/deployment/<deployment>/instance_group/<instance group>` (without \
         `spiffe://`, as Istio writes principals): it matches no peer"
            .to_string(),
        "Warning [authz] AuthorizationPolicy elsewhere: metadata.namespace: namespace \"shop\" \
         names no deployment of the mesh (no job of a deployment \"shop\" is exposed): the \
         policy applies to none of its instance groups until one is"
            .to_string(),
        format!("[mtls] {mtls}: 2 accepted, 1 rejected"),
        format!("[authz] {authz}: 1 accepted, 2 rejected"),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
}
