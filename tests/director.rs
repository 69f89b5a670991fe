//! The director client and poller against the in-process director simulator: auth and token
//! renewal, faults, malformed manifests, instance changes, rule configs, steady-state cost,
//! the health budget, secrecy.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boshy::catalog::model::{DeploymentInput, InstanceRef, Labels, Service};
use boshy::config::{DirectorConfig, Secret};
use boshy::director::{DirectorClient, PollTiming, Poller, PublishedRuleConfigs, RuleConfigs};
use boshy_director_sim::{self as sim, AuthMode, SimHandle, SimOptions};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::instrument::WithSubscriber as _;

const SECRET: &str = "s3cret-d0-not-log-me";
/// Upper bound for anything the tests wait for; never a measured duration.
const PATIENCE: Duration = Duration::from_secs(30);

/// Log lines of one poller, captured at DEBUG (including reqwest's and hyper's own).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    async fn wait_for(&self, needle: &str) {
        let found = async {
            while self.count(needle) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, found).await.is_err() {
            panic!("no log line contains {needle:?}; logs:\n{}", self.text());
        }
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn manifest(name: &str, groups: &[(&str, u32, &str)]) -> String {
    let mut text = format!(
        "---\nname: {name}\nreleases:\n- name: boshy-istio\n  version: latest\nstemcells:\n\
         - alias: default\n  os: ubuntu-jammy\n  version: latest\ninstance_groups:\n"
    );
    for (group, instances, expose) in groups {
        text.push_str(&format!(
            "- name: {group}\n  instances: {instances}\n  azs: [z1, z2]\n  jobs:\n  \
             - name: example-httpbin\n    release: boshy-istio\n{expose}"
        ));
    }
    text
}

fn expose(port_name: &str, number: u32) -> String {
    format!("    expose_ports:\n    - name: {port_name}\n      number: {number}\n")
}

/// The prototype's sample: apricot exposes some-port 9001, banana other-http 9002.
fn sample(name: &str) -> String {
    manifest(
        name,
        &[
            ("apricot", 3, &expose("some-port", 9001)),
            ("banana", 2, &expose("other-http", 9002)),
        ],
    )
}

fn no_services(name: &str) -> String {
    manifest(name, &[("pilot", 1, "")])
}

fn fast_timing() -> PollTiming {
    PollTiming {
        poll: Duration::from_millis(100),
        health: Duration::from_millis(400),
        // 20 health tasks a second: a budget that keeps a few deployments within 400 ms.
        health_task_spacing: Duration::from_millis(50),
        full_resync: Duration::from_secs(3600),
        backoff_cap: Duration::from_millis(400),
    }
}

struct Harness {
    sim: SimHandle,
    http: reqwest::Client,
    /// The director API as an operator's `bosh` would use it, with the pilot's credentials.
    director: DirectorClient,
    logs: Logs,
    rx: watch::Receiver<Arc<Vec<DeploymentInput>>>,
    rule_configs: watch::Receiver<PublishedRuleConfigs>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Everything a test may change about the director, the pilot's config and its clocks.
struct Setup {
    sim: SimOptions,
    deployments: Vec<(String, String)>,
    director: Value,
    timing: PollTiming,
    /// The instances agents report on, when the test plays the agents.
    agent_reports: Option<watch::Receiver<Arc<BTreeSet<InstanceRef>>>>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            sim: SimOptions::new(SECRET),
            deployments: vec![("sample-deployment".into(), sample("sample-deployment"))],
            director: json!({"client": "pilot", "request_timeout_seconds": 2, "task_timeout_seconds": 10}),
            timing: fast_timing(),
            agent_reports: None,
        }
    }

    async fn start(self) -> Harness {
        let sim = sim::start(self.sim).await.expect("simulator starts");
        let http = reqwest::Client::new();
        for (name, text) in &self.deployments {
            control(
                &http,
                &sim,
                "POST",
                "/_sim/deployments",
                json!({"name": name, "manifest": text}),
            )
            .await;
        }
        let mut director = self.director;
        director["url"] = json!(sim.director_url());
        if director.get("insecure_skip_tls_verify").is_none() && director.get("ca_cert").is_none() {
            director["ca_cert"] = json!(sim.ca_pem());
        }
        let cfg: DirectorConfig = serde_json::from_value(director).expect("valid director config");
        let logs = Logs::default();
        let writer = logs.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let dispatch = tracing::Dispatch::new(subscriber);
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let mut poller =
            tracing::dispatcher::with_default(&dispatch, || Poller::new(&cfg, Secret::new(SECRET)))
                .expect("poller builds")
                .with_timing(self.timing);
        if let Some(reports) = self.agent_reports {
            poller = poller.with_agent_reports(reports);
        }
        let rule_configs = poller.rule_configs();
        let poller = tokio::spawn(poller.run(tx).with_subscriber(dispatch));
        let director = DirectorClient::new(&cfg, Secret::new(SECRET)).expect("client builds");
        Harness {
            sim,
            http,
            director,
            logs,
            rx,
            rule_configs,
            poller,
        }
    }
}

async fn control(
    http: &reqwest::Client,
    sim: &SimHandle,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let url = format!("{}{path}", sim.control_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method.clone(), &url);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.expect("control API answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

impl Harness {
    async fn control(&self, method: &str, path: &str, body: Value) -> Value {
        control(&self.http, &self.sim, method, path, body).await
    }

    async fn put_manifest(&self, deployment: &str, text: &str) {
        let url = format!(
            "{}/_sim/deployments/{deployment}/manifest",
            self.sim.control_url()
        );
        let response = self
            .http
            .put(url)
            .body(text.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT manifest: {}",
            response.status()
        );
    }

    async fn fault(&self, mode: &str, path_prefix: Option<&str>) {
        let mut body = json!({"mode": mode});
        if let Some(prefix) = path_prefix {
            body["path_prefix"] = json!(prefix);
        }
        self.control("PUT", "/_sim/fault", body).await;
    }

    async fn requests(&self) -> Value {
        self.control("GET", "/_sim/requests", Value::Null).await
    }

    /// Waits until a published list satisfies `check`, which explains what it still misses.
    async fn published(
        &mut self,
        check: impl Fn(&[DeploymentInput]) -> Result<(), String>,
    ) -> Arc<Vec<DeploymentInput>> {
        let rx = &mut self.rx;
        let wait = async {
            loop {
                let current = rx.borrow_and_update().clone();
                if check(&current).is_ok() {
                    return current;
                }
                rx.changed().await.expect("poller keeps running");
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(list) => list,
            Err(_) => {
                let why = check(&self.rx.borrow()).unwrap_err();
                panic!(
                    "never published what was expected: {why}; logs:\n{}",
                    self.logs.text()
                );
            }
        }
    }

    /// `bosh update-config --type <kind> --name <name>`: the new config's id.
    async fn update_config(&self, kind: &str, name: &str, content: &str) -> String {
        let body = json!({"type": kind, "name": name, "content": content});
        let response = self
            .director
            .send(reqwest::Method::POST, "/configs", Some(&body))
            .await
            .expect("POST /configs answers");
        let text = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, 201, "POST /configs: {text}");
        let created: Value = serde_json::from_str(&text).unwrap();
        created["id"].as_str().expect("a string id").to_string()
    }

    /// `bosh delete-config --type <kind> --name <name>`.
    async fn delete_config(&self, kind: &str, name: &str) {
        let path = format!("/configs?type={kind}&name={name}");
        let response = self
            .director
            .send(reqwest::Method::DELETE, &path, None)
            .await
            .expect("DELETE /configs answers");
        assert_eq!(response.status, 204, "DELETE {path}");
    }

    /// Waits until the published rule configs satisfy `check`, which explains what it still
    /// misses.
    async fn published_rules(
        &mut self,
        check: impl Fn(&RuleConfigs) -> Result<(), String>,
    ) -> Arc<RuleConfigs> {
        let rx = &mut self.rule_configs;
        let matches = |published: &PublishedRuleConfigs| match published {
            Some(rules) => check(rules),
            None => Err("no rule configs published yet".to_string()),
        };
        let wait = async {
            loop {
                let current = rx.borrow_and_update().clone();
                if matches(&current).is_ok() {
                    return current.expect("checked");
                }
                rx.changed().await.expect("poller keeps running");
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(rules) => rules,
            Err(_) => {
                let why = matches(&self.rule_configs.borrow()).unwrap_err();
                panic!(
                    "never published the expected rule configs: {why}; logs:\n{}",
                    self.logs.text()
                );
            }
        }
    }

    /// Waits for `ticks` more polls (each reads `GET /events`).
    async fn ticks(&self, ticks: u64) {
        let start = route_count(&self.requests().await, "GET /events");
        let polled = async {
            while route_count(&self.requests().await, "GET /events") < start + ticks {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, polled)
            .await
            .expect("the poller keeps polling");
    }

    /// Asserts the secret appears in no log line (call at the end of every test).
    /// Clears the fault, waits for the recovery log line, and checks that a change at the
    /// director (a fourth apricot) is published again; the secret was never logged.
    async fn clear_fault_and_follow_the_director(&mut self) {
        self.fault("none", None).await;
        self.logs.wait_for("works again").await;
        self.control(
            "POST",
            "/_sim/deployments/sample-deployment/instances",
            json!({"instance_group": "apricot"}),
        )
        .await;
        self.published(|l| has_instances(l, "sample-deployment", "apricot", 4))
            .await;
        self.assert_secret_never_logged();
    }

    fn assert_secret_never_logged(&self) {
        let logs = self.logs.text();
        assert!(!logs.is_empty(), "the poller logged nothing at all");
        assert!(
            !logs.contains(SECRET),
            "the client secret is in the logs:\n{logs}"
        );
    }
}

fn deployment<'a>(list: &'a [DeploymentInput], name: &str) -> Result<&'a DeploymentInput, String> {
    list.iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("deployment {name} is not published"))
}

/// Instances of `group` in `name` and their job states, once published.
fn group_states(
    list: &[DeploymentInput],
    name: &str,
    group: &str,
) -> Result<Vec<Option<String>>, String> {
    Ok(deployment(list, name)?
        .instances
        .iter()
        .filter(|i| i.instance_group == group)
        .map(|i| i.job_state.clone())
        .collect())
}

fn service_ports(list: &[DeploymentInput], name: &str) -> Result<Vec<(String, u16)>, String> {
    Ok(deployment(list, name)?
        .manifest
        .services
        .iter()
        .flat_map(|s| {
            s.ports
                .iter()
                .map(move |p| (s.key.instance_group.clone(), p.number))
        })
        .collect())
}

fn has_instances(
    list: &[DeploymentInput],
    name: &str,
    group: &str,
    count: usize,
) -> Result<(), String> {
    let states = group_states(list, name, group)?;
    match states.len() == count {
        true => Ok(()),
        false => Err(format!(
            "{name}/{group} has {} instances, not {count}",
            states.len()
        )),
    }
}

/// Every instance of `name` with a VM has had its health read (only a reading says
/// `bootstrap`), so no first reading can change what is published.
fn health_read(list: &[DeploymentInput], name: &str) -> Result<(), String> {
    let unread = deployment(list, name)?
        .instances
        .iter()
        .filter(|i| i.vm_cid.is_some() && i.bootstrap.is_none())
        .count();
    match unread {
        0 => Ok(()),
        _ => Err(format!("{name}: {unread} instances not read yet")),
    }
}

/// `instances?format=full` requests: health tasks created.
const HEALTH_TASKS: &str = "GET /deployments/:d/instances?format=full";

fn route_count(requests: &Value, route: &str) -> u64 {
    requests["by_route"][route].as_u64().unwrap_or(0)
}

const RULES: &str = "boshy-istio";

/// The published rule configs are exactly these `(name, id)`.
fn rules_are(expected: &[(&str, &str)]) -> impl Fn(&RuleConfigs) -> Result<(), String> {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(name, id)| (name.to_string(), id.to_string()))
        .collect();
    move |rules| {
        let published: Vec<(String, String)> = rules
            .configs
            .iter()
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect();
        match published == expected {
            true => Ok(()),
            false => Err(format!("published {published:?}, not {expected:?}")),
        }
    }
}

#[tokio::test]
async fn a_posted_rule_config_is_published_from_its_event_not_the_resync() {
    // The full resync is an hour away (`fast_timing`): only the event can explain a read.
    let mut h = Setup::new().start().await;
    h.published_rules(rules_are(&[])).await;
    let reviews = "kind: VirtualService\nmetadata: {name: reviews}\n";
    let id = h.update_config(RULES, "reviews", reviews).await;
    let rules = h.published_rules(rules_are(&[("reviews", &id)])).await;
    assert_eq!(rules.configs[0].content, reviews);
    assert!(rules.configs[0]
        .created_at
        .as_deref()
        .is_some_and(|t| t.ends_with(" UTC")));
    let requests = h.requests().await;
    assert_eq!(
        route_count(&requests, "GET /configs"),
        2,
        "one read at start, one after the event: {requests}"
    );
    h.logs
        .wait_for("rule configs (director configs of type boshy-istio) changed")
        .await;
    // A new version, and a second name beside the first.
    let newer = h
        .update_config(RULES, "reviews", "kind: VirtualService\n")
        .await;
    let ratings = h
        .update_config(RULES, "ratings", "kind: DestinationRule\n")
        .await;
    h.published_rules(rules_are(&[("ratings", &ratings), ("reviews", &newer)]))
        .await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn vip_store_configs_are_never_rules_nor_a_reason_to_read_them() {
    let mut h = Setup::new().start().await;
    h.published_rules(rules_are(&[])).await;
    let reads = route_count(&h.requests().await, "GET /configs");
    assert_eq!(reads, 1, "read once at start");
    // What every pilot writes at each VIP change.
    h.update_config(
        "boshy-vips",
        "boshy",
        "assignments: {a.boshy: 169.254.255.1}\n",
    )
    .await;
    h.ticks(3).await;
    assert_eq!(route_count(&h.requests().await, "GET /configs"), reads);
    let id = h
        .update_config(RULES, "reviews", "kind: VirtualService\n")
        .await;
    let rules = h.published_rules(rules_are(&[("reviews", &id)])).await;
    assert_eq!(rules.configs.len(), 1, "{rules:?}");
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn a_deleted_rule_config_is_dropped_at_the_next_full_resync() {
    let mut setup = Setup::new();
    // A delete writes no event: only the full resync sees it.
    setup.timing.full_resync = Duration::from_millis(500);
    let mut h = setup.start().await;
    h.published_rules(rules_are(&[])).await;
    let reviews = h
        .update_config(RULES, "reviews", "kind: VirtualService\n")
        .await;
    let ratings = h
        .update_config(RULES, "ratings", "kind: DestinationRule\n")
        .await;
    h.published_rules(rules_are(&[("ratings", &ratings), ("reviews", &reviews)]))
        .await;
    h.delete_config(RULES, "reviews").await;
    h.published_rules(rules_are(&[("ratings", &ratings)])).await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn a_failing_configs_read_keeps_the_last_good_rule_configs() {
    let mut h = Setup::new().start().await;
    h.published_rules(rules_are(&[])).await;
    let reviews = h
        .update_config(RULES, "reviews", "kind: VirtualService\n")
        .await;
    let good = h.published_rules(rules_are(&[("reviews", &reviews)])).await;
    // Reads fail; writes (`POST /configs`, no query) and their events still go through.
    h.fault("http_500", Some("/configs?type=boshy-istio")).await;
    let ratings = h
        .update_config(RULES, "ratings", "kind: DestinationRule\n")
        .await;
    h.logs.wait_for("rule configs read failed").await;
    let failed_reads = route_count(&h.requests().await, "GET /configs");
    let retries = async {
        while route_count(&h.requests().await, "GET /configs") < failed_reads + 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, retries)
        .await
        .expect("the read is retried");
    assert_eq!(h.rule_configs.borrow().as_deref(), Some(&*good));
    assert_eq!(
        h.logs.count("rule configs read failed"),
        1,
        "logged once:\n{}",
        h.logs.text()
    );
    h.fault("none", None).await;
    h.published_rules(rules_are(&[("ratings", &ratings), ("reviews", &reviews)]))
        .await;
    h.logs.wait_for("rule configs read works again").await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn publishes_services_and_instances_sorted_by_deployment() {
    let mut setup = Setup::new();
    setup
        .deployments
        .push(("bosh-istio".into(), no_services("bosh-istio")));
    let mut h = setup.start().await;
    let list = h
        .published(|l| {
            has_instances(l, "sample-deployment", "apricot", 3)?;
            has_instances(l, "sample-deployment", "banana", 2)?;
            has_instances(l, "bosh-istio", "pilot", 1)
        })
        .await;
    let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["bosh-istio", "sample-deployment"]);
    assert_eq!(
        service_ports(&list, "sample-deployment").unwrap(),
        [("apricot".to_string(), 9001), ("banana".to_string(), 9002)]
    );
    assert!(service_ports(&list, "bosh-istio").unwrap().is_empty());
    let apricot = &deployment(&list, "sample-deployment").unwrap().instances[0];
    assert_eq!(apricot.job_state.as_deref(), Some("running"));
    assert!(
        !apricot.ips.is_empty() && apricot.vm_cid.is_some(),
        "{apricot:?}"
    );
    h.assert_secret_never_logged();
}

/// BOSH names are canonicalized for DNS as the director does for bosh-dns: instance group
/// `diego_cell` (as the director reports its instances) is served as `diego-cell`, with its
/// instances as endpoints.
#[tokio::test]
async fn an_instance_group_with_an_underscore_is_served_under_its_dns_name() {
    let mut setup = Setup::new();
    setup.deployments = vec![(
        "cf".into(),
        manifest("cf", &[("diego_cell", 2, &expose("http", 8080))]),
    )];
    let mut h = setup.start().await;
    let list = h
        .published(|l| has_instances(l, "cf", "diego_cell", 2))
        .await;
    let service = served(&list, "example-httpbin.diego-cell.cf.boshy");
    assert_eq!(service.key.instance_group, "diego_cell");
    assert_eq!(service.endpoints.len(), 2, "{service:?}");
}

/// The service of `hostname` in the catalog the pilot would build from `list`, every
/// hostname given a VIP.
fn served(list: &[DeploymentInput], hostname: &str) -> Service {
    let hostnames = boshy::catalog::hostnames(list, "boshy");
    assert!(hostnames.warnings.is_empty(), "{:?}", hostnames.warnings);
    let vips = hostnames
        .services
        .iter()
        .zip(1u8..)
        .map(|((_, hostname), host)| (hostname.clone(), Ipv4Addr::new(169, 254, 255, host)))
        .collect();
    let catalog = boshy::catalog::build(list, "boshy", &vips).catalog;
    catalog
        .services
        .into_iter()
        .find(|s| s.hostname == hostname)
        .unwrap_or_else(|| panic!("{hostname} is not served"))
}

/// What the director says about each instance, and the labels the release author wrote
/// beside `expose_ports`, are on every endpoint; an author label under the director's
/// prefix is refused with a warning.
#[tokio::test]
async fn endpoints_carry_the_directors_and_the_authors_labels() {
    let mut setup = Setup::new();
    let exposed = format!(
        "{}    expose_labels:\n      version: v2\n      bosh.io/az: fake\n",
        expose("http", 9080)
    );
    setup.deployments = vec![(
        "bookinfo".into(),
        manifest("bookinfo", &[("reviews", 3, &exposed)]),
    )];
    let mut h = setup.start().await;
    let list = h
        .published(|l| {
            has_instances(l, "bookinfo", "reviews", 3)?;
            health_read(l, "bookinfo")
        })
        .await;
    let service = served(&list, "example-httpbin.reviews.bookinfo.boshy");
    assert_eq!(service.endpoints.len(), 3, "{service:?}");
    let instances = &deployment(&list, "bookinfo").unwrap().instances;
    for endpoint in &service.endpoints {
        let instance = instances
            .iter()
            .find(|i| i.id == endpoint.instance)
            .expect("an endpoint is an instance");
        let az = instance
            .az
            .clone()
            .expect("the simulator places instances in AZs");
        let index = instance.index.expect("the simulator indexes instances");
        let bootstrap = instance.bootstrap.expect("a health reading says it");
        let expected: Labels = [
            ("bosh.io/deployment", "bookinfo".to_string()),
            ("bosh.io/instance-group", "reviews".to_string()),
            ("bosh.io/job", "example-httpbin".to_string()),
            ("bosh.io/az", az),
            ("bosh.io/index", index.to_string()),
            ("bosh.io/id", instance.id.clone()),
            ("bosh.io/bootstrap", bootstrap.to_string()),
            ("version", "v2".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        assert_eq!(endpoint.labels, expected);
    }
    let bootstraps = service
        .endpoints
        .iter()
        .filter(|e| e.labels["bosh.io/bootstrap"] == "true")
        .count();
    assert_eq!(bootstraps, 1, "one bootstrap instance per group");
    h.logs.wait_for("is under bosh.io/").await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn instance_added_removed_and_failing_are_published() {
    let mut h = Setup::new().start().await;
    h.published(|l| has_instances(l, "sample-deployment", "banana", 2))
        .await;

    let added = h
        .control(
            "POST",
            "/_sim/deployments/sample-deployment/instances",
            json!({"instance_group": "banana"}),
        )
        .await;
    let added_id = added["id"]
        .as_str()
        .expect("the new instance's id")
        .to_string();
    h.published(|l| has_instances(l, "sample-deployment", "banana", 3))
        .await;

    h.control(
        "PUT",
        &format!("/_sim/deployments/sample-deployment/instances/{added_id}"),
        json!({"job_state": "failing"}),
    )
    .await;
    // Health changes write no event: only the health timer sees them.
    let list = h
        .published(|l| {
            let states = group_states(l, "sample-deployment", "banana")?;
            match states.iter().any(|s| s.as_deref() == Some("failing")) {
                true => Ok(()),
                false => Err(format!("no failing banana yet: {states:?}")),
            }
        })
        .await;
    let failing = deployment(&list, "sample-deployment")
        .unwrap()
        .instances
        .iter()
        .find(|i| i.id == added_id)
        .cloned();
    assert_eq!(
        failing.and_then(|i| i.job_state),
        Some("failing".to_string())
    );

    h.control(
        "DELETE",
        &format!("/_sim/deployments/sample-deployment/instances/{added_id}"),
        Value::Null,
    )
    .await;
    let list = h
        .published(|l| has_instances(l, "sample-deployment", "banana", 2))
        .await;
    assert!(deployment(&list, "sample-deployment")
        .unwrap()
        .instances
        .iter()
        .all(|i| i.id != added_id));
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn deployments_appear_and_vanish() {
    let mut h = Setup::new().start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    h.control(
        "POST",
        "/_sim/deployments",
        json!({"name": "other", "manifest": sample("other")}),
    )
    .await;
    h.published(|l| has_instances(l, "other", "banana", 2))
        .await;
    h.control("DELETE", "/_sim/deployments/other", Value::Null)
        .await;
    let list = h
        .published(|l| match deployment(l, "other") {
            Ok(_) => Err("other is still published".into()),
            Err(_) => Ok(()),
        })
        .await;
    assert!(deployment(&list, "sample-deployment").is_ok());
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn basic_auth_is_discovered_from_info() {
    let mut setup = Setup::new();
    setup.sim.auth = AuthMode::Basic;
    let mut h = setup.start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    let requests = h.requests().await;
    assert_eq!(route_count(&requests, "GET /info"), 1, "{requests}");
    assert_eq!(route_count(&requests, "POST /oauth/token"), 0, "{requests}");
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    let mut setup = Setup::new();
    // Renewal is due at 90% of a 2 s life; the test runs through several lifetimes.
    setup.sim.token_ttl = Duration::from_secs(2);
    let mut h = setup.start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    let renewed = async {
        while route_count(&h.requests().await, "POST /oauth/token") < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, renewed)
        .await
        .expect("the token is renewed");
    assert_eq!(
        h.logs.count("rejected the token"),
        0,
        "a token was used after expiry:\n{}",
        h.logs.text()
    );
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn token_rejected_with_401_is_renewed_once_and_the_request_retried() {
    let mut h = Setup::new().start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    h.control("POST", "/_sim/tokens/expire", Value::Null).await;
    h.control(
        "POST",
        "/_sim/deployments/sample-deployment/instances",
        json!({"instance_group": "apricot"}),
    )
    .await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 4))
        .await;
    assert_eq!(route_count(&h.requests().await, "POST /oauth/token"), 2);
    assert_eq!(h.logs.count("rejected the token"), 1, "{}", h.logs.text());
    assert_eq!(
        h.logs.count("WARN"),
        0,
        "a renewed token is no error:\n{}",
        h.logs.text()
    );
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn missing_scope_is_reported_once_and_never_renews_the_token() {
    let mut setup = Setup::new();
    setup.sim.token_scopes = vec!["openid".to_string()];
    let h = setup.start().await;
    h.logs.wait_for("lacks a scope").await;
    // Let many more polls fail the same way.
    let polls = async {
        while route_count(&h.requests().await, "GET /deployments") < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, polls)
        .await
        .expect("the poller keeps polling");
    assert_eq!(route_count(&h.requests().await, "POST /oauth/token"), 1);
    assert_eq!(h.logs.count("lacks a scope"), 1, "{}", h.logs.text());
    assert!(h.rx.borrow().is_empty());
    h.assert_secret_never_logged();
}

/// A fault on one deployment's routes keeps its last good state, leaves the others alone,
/// is logged once, and the poller catches up once it is cleared.
/// `result` is the `result` label `boshy_director_requests_total` gives the failed requests.
async fn fault_keeps_last_good_state(
    mode: &str,
    logged: &str,
    result: &str,
    request_timeout_seconds: u64,
) {
    let mut setup = Setup::new();
    setup.deployments.push(("other".into(), sample("other")));
    setup.director["request_timeout_seconds"] = json!(request_timeout_seconds);
    let mut h = setup.start().await;
    let good = h
        .published(|l| {
            has_instances(l, "sample-deployment", "apricot", 3)?;
            has_instances(l, "other", "apricot", 3)?;
            health_read(l, "sample-deployment")
        })
        .await;
    h.fault(mode, Some("/deployments/sample-deployment")).await;
    h.control(
        "POST",
        "/_sim/deployments/sample-deployment/instances",
        json!({"instance_group": "apricot"}),
    )
    .await;
    h.control(
        "POST",
        "/_sim/deployments/other/instances",
        json!({"instance_group": "apricot"}),
    )
    .await;
    let during = h
        .published(|l| has_instances(l, "other", "apricot", 4))
        .await;
    assert_eq!(
        deployment(&during, "sample-deployment").unwrap(),
        deployment(&good, "sample-deployment").unwrap(),
        "the faulty deployment kept its last good state"
    );
    h.logs.wait_for(logged).await;
    let metrics = boshy::metrics::global().render();
    let failed = metrics.lines().find(|l| {
        l.starts_with("boshy_director_requests_total{method=\"GET\",route=\"/deployments/:name")
            && l.contains(&format!("result=\"{result}\""))
    });
    assert!(failed.is_some(), "no {result} counted: {metrics}");
    // Several retries later it is still logged once.
    let failed_calls = route_count(&h.requests().await, "GET /deployments/:d");
    let retries = async {
        while route_count(&h.requests().await, "GET /deployments/:d") < failed_calls + 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, retries)
        .await
        .expect("the poller keeps polling");
    let warnings: Vec<String> = h
        .logs
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("sample-deployment"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per error kind: {warnings:#?}"
    );
    assert!(warnings[0].contains(logged), "{}", warnings[0]);
    h.fault("none", None).await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 4))
        .await;
    h.logs.wait_for("works again").await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn server_error_keeps_last_good_state_and_recovers() {
    fault_keeps_last_good_state("http_500", "HTTP 500", "http_500", 2).await;
}

#[tokio::test]
async fn hanging_director_times_out_keeps_last_good_state_and_recovers() {
    fault_keeps_last_good_state("hang", "no answer within", "timeout", 1).await;
}

#[tokio::test]
async fn whole_director_outage_keeps_everything() {
    let mut h = Setup::new().start().await;
    let good = h
        .published(|l| {
            has_instances(l, "sample-deployment", "apricot", 3)?;
            health_read(l, "sample-deployment")
        })
        .await;
    h.fault("bad_gateway", None).await;
    h.logs.wait_for("HTTP 502").await;
    assert_eq!(*h.rx.borrow(), good);
    h.clear_fault_and_follow_the_director().await;
}

#[tokio::test]
async fn malformed_manifest_keeps_last_good_services_and_spares_the_others() {
    let mut setup = Setup::new();
    setup.deployments.push(("other".into(), sample("other")));
    let mut h = setup.start().await;
    let good = h
        .published(|l| {
            has_instances(l, "sample-deployment", "apricot", 3)?;
            has_instances(l, "other", "apricot", 3)
        })
        .await;
    h.put_manifest("sample-deployment", "instance_groups: [unclosed\n  - {")
        .await;
    h.logs.wait_for("not valid YAML").await;
    h.control(
        "POST",
        "/_sim/deployments/other/instances",
        json!({"instance_group": "banana"}),
    )
    .await;
    let list = h
        .published(|l| has_instances(l, "other", "banana", 3))
        .await;
    assert_eq!(
        deployment(&list, "sample-deployment").unwrap().manifest,
        deployment(&good, "sample-deployment").unwrap().manifest
    );
    assert_eq!(h.logs.count("not valid YAML"), 1, "{}", h.logs.text());
    // A fixed manifest is picked up.
    h.put_manifest(
        "sample-deployment",
        &manifest(
            "sample-deployment",
            &[("apricot", 3, &expose("fixed", 9009))],
        ),
    )
    .await;
    h.published(
        |l| match service_ports(l, "sample-deployment")?.as_slice() {
            [(group, 9009)] if group == "apricot" => Ok(()),
            other => Err(format!("services are {other:?}")),
        },
    )
    .await;
    h.logs.wait_for("works again").await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn bad_expose_ports_are_skipped_with_a_warning() {
    let mut setup = Setup::new();
    let bad = "    expose_ports:\n    - name: broken\n      number: 70000\n    - name: fine\n      number: 9003\n";
    setup.deployments = vec![("mixed".into(), manifest("mixed", &[("apricot", 1, bad)]))];
    let mut h = setup.start().await;
    let list = h
        .published(|l| has_instances(l, "mixed", "apricot", 1))
        .await;
    assert_eq!(
        service_ports(&list, "mixed").unwrap(),
        [("apricot".to_string(), 9003)]
    );
    h.logs.wait_for("expose_ports[0]").await;
    assert_eq!(
        h.logs.count("expose_ports[0]"),
        1,
        "warned once per manifest:\n{}",
        h.logs.text()
    );
    h.assert_secret_never_logged();
}

/// Requests per route during `ticks` steady-state polls with `deployments` deployments.
async fn steady_state_requests(deployments: usize) -> Value {
    let mut setup = Setup::new();
    setup.deployments = (0..deployments)
        .map(|i| (format!("d{i}"), sample(&format!("d{i}"))))
        .collect();
    // No health refresh during the measurement (each deployment is read once at start):
    // only change detection runs.
    setup.timing.health = Duration::from_secs(3600);
    let mut h = setup.start().await;
    h.published(
        |l| match l.len() == deployments && l.iter().all(|d| d.instances.len() == 5) {
            true => l.iter().try_for_each(|d| health_read(l, &d.name)),
            false => Err(format!("{} deployments published", l.len())),
        },
    )
    .await;
    let reads = route_count(&h.requests().await, "GET /configs");
    assert_eq!(reads, 1, "the rule configs are read once at start");
    h.control("POST", "/_sim/requests/reset", Value::Null).await;
    let ticks = async {
        while route_count(&h.requests().await, "GET /deployments") < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, ticks)
        .await
        .expect("the poller keeps polling");
    let requests = h.requests().await;
    h.assert_secret_never_logged();
    requests
}

#[tokio::test]
async fn steady_state_costs_two_requests_per_tick_whatever_the_estate() {
    for deployments in [1, 6] {
        let requests = steady_state_requests(deployments).await;
        // Not even `GET /configs`: the rule configs are read again only after an event.
        let routes: Vec<&String> = requests["by_route"].as_object().unwrap().keys().collect();
        assert_eq!(routes, ["GET /deployments", "GET /events"], "{requests}");
        let lists = route_count(&requests, "GET /deployments");
        let events = route_count(&requests, "GET /events");
        assert!(lists.abs_diff(events) <= 1, "{requests}");
    }
}

#[tokio::test]
async fn without_events_changes_are_found_by_timer() {
    let mut setup = Setup::new();
    setup.sim.events = false;
    let mut h = setup.start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    h.logs.wait_for("timer only").await;
    h.put_manifest(
        "sample-deployment",
        &manifest(
            "sample-deployment",
            &[("apricot", 2, &expose("moved", 9100))],
        ),
    )
    .await;
    h.published(|l| {
        has_instances(l, "sample-deployment", "apricot", 2)?;
        match service_ports(l, "sample-deployment")?.as_slice() {
            [(_, 9100)] => Ok(()),
            other => Err(format!("services are {other:?}")),
        }
    })
    .await;
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn an_unknown_ca_is_a_tls_error() {
    let mut setup = Setup::new();
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    setup.director["ca_cert"] = json!(other_ca.cert.pem());
    let h = setup.start().await;
    h.logs.wait_for("TLS failure").await;
    assert!(h.rx.borrow().is_empty());
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn skipping_verification_works_and_is_logged_loudly() {
    let mut setup = Setup::new();
    setup.director["insecure_skip_tls_verify"] = json!(true);
    let mut h = setup.start().await;
    h.published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    let warnings = h
        .logs
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("DISABLED"))
        .count();
    assert_eq!(warnings, 1, "{}", h.logs.text());
    h.assert_secret_never_logged();
}

#[test]
fn poller_needs_a_ca_unless_told_to_skip_verification() {
    let cfg: DirectorConfig =
        serde_json::from_value(json!({"url": "https://127.0.0.1:25555", "client": "pilot"}))
            .unwrap();
    let err = Poller::new(&cfg, Secret::new(SECRET))
        .err()
        .expect("no CA is an error");
    let text = format!("{err:#}");
    assert!(text.contains("ca_cert"), "{text}");
    assert!(!text.contains(SECRET));
}

#[tokio::test]
async fn rejected_tokens_are_reported_once_and_recover() {
    let mut setup = Setup::new();
    // The one reading at start, then none: no reading is in flight when the tokens go bad.
    setup.timing.health = Duration::from_secs(3600);
    let mut h = setup.start().await;
    h.published(|l| {
        has_instances(l, "sample-deployment", "apricot", 3)?;
        health_read(l, "sample-deployment")
    })
    .await;
    h.fault("reject_tokens", None).await;
    h.logs.wait_for("not authorized").await;
    let grants = route_count(&h.requests().await, "POST /oauth/token");
    let retries = async {
        while route_count(&h.requests().await, "POST /oauth/token") < grants + 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, retries)
        .await
        .expect("each rejected request renews the token once");
    assert_eq!(h.logs.count("not authorized"), 1, "{}", h.logs.text());
    h.clear_fault_and_follow_the_director().await;
}

#[tokio::test]
async fn a_task_past_its_deadline_is_an_error_and_services_and_instances_stay() {
    let mut setup = Setup::new();
    setup.sim.task_delay = Duration::from_secs(600);
    setup.director["task_timeout_seconds"] = json!(1);
    let mut h = setup.start().await;
    let list = h
        .published(|l| deployment(l, "sample-deployment").map(|_| ()))
        .await;
    assert_eq!(service_ports(&list, "sample-deployment").unwrap().len(), 2);
    h.logs.wait_for("kind=task_timeout").await;
    // The instances come from the instance list, not the task; there at the first look, they
    // are presumed running while no reading succeeds.
    let list = h.rx.borrow().clone();
    let instances = &deployment(&list, "sample-deployment").unwrap().instances;
    assert_eq!(instances.len(), 5, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|i| i.job_state.as_deref() == Some("running")),
        "{instances:?}"
    );
    h.assert_secret_never_logged();
}

/// Deployments `d0`…`d{n-1}`, each the sample (five instances, two services).
fn samples(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("d{i:02}"), sample(&format!("d{i:02}"))))
        .collect()
}

#[tokio::test]
async fn the_first_catalog_waits_for_no_task() {
    let mut setup = Setup::new();
    setup.deployments = samples(50);
    setup.sim.instance_network = "10.244.0.0/20".parse().unwrap();
    // No task ever ends: whatever is published comes from synchronous requests.
    setup.sim.task_delay = Duration::from_secs(600);
    setup.director["task_timeout_seconds"] = json!(600);
    let started = std::time::Instant::now();
    let mut h = setup.start().await;
    let list = h
        .published(
            |l| match l.len() == 50 && l.iter().all(|d| d.instances.len() == 5) {
                true => Ok(()),
                false => Err(format!("{} deployments published", l.len())),
            },
        )
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "first catalog after {elapsed:?}"
    );
    // Every VM was there at the first look: presumed running, with no reading.
    for d in list.iter() {
        for instance in d.instances.iter() {
            assert_eq!(
                instance.job_state.as_deref(),
                Some("running"),
                "{instance:?}"
            );
            assert_eq!(instance.bootstrap, None, "no reading: {instance:?}");
        }
    }
    let requests = h.requests().await;
    assert_eq!(
        route_count(&requests, "GET /tasks/:id/output"),
        0,
        "{requests}"
    );
    assert_eq!(
        route_count(&requests, "GET /deployments/:d/instances"),
        50,
        "{requests}"
    );
    h.assert_secret_never_logged();
}

/// Health tasks per second over `window` once every deployment was read once, with
/// `deployments` deployments, a budget of one task per 250 ms and every deployment due at
/// every slot (interval shorter than the spacing).
async fn health_tasks_per_second(deployments: usize, window: Duration) -> f64 {
    let mut setup = Setup::new();
    setup.deployments = samples(deployments);
    setup.sim.task_delay = Duration::from_millis(20);
    setup.timing.health = Duration::from_millis(100);
    setup.timing.health_task_spacing = Duration::from_millis(250);
    let mut h = setup.start().await;
    h.published(|l| match l.len() == deployments {
        true => l.iter().try_for_each(|d| health_read(l, &d.name)),
        false => Err(format!("{} deployments published", l.len())),
    })
    .await;
    let before = route_count(&h.requests().await, HEALTH_TASKS);
    tokio::time::sleep(window).await;
    let tasks = route_count(&h.requests().await, HEALTH_TASKS) - before;
    h.assert_secret_never_logged();
    tasks as f64 / window.as_secs_f64()
}

#[tokio::test]
async fn health_tasks_stay_within_the_budget_for_one_deployment_or_many() {
    let window = Duration::from_secs(3);
    let one = health_tasks_per_second(1, window).await;
    let many = health_tasks_per_second(12, window).await;
    // Four a second at most (plus the one a window's edge may catch).
    let ceiling = 4.0 + 1.0 / window.as_secs_f64();
    for rate in [one, many] {
        assert!(rate <= ceiling, "{rate} tasks/s (one: {one}, many: {many})");
        assert!(
            rate >= 2.5,
            "the budget is spent: {rate} tasks/s (one: {one}, many: {many})"
        );
    }
    assert!(
        (one - many).abs() <= 1.0,
        "the same for 1 and 12 deployments: {one} vs {many} tasks/s"
    );
}

#[tokio::test]
async fn a_failing_instance_is_seen_within_its_deployments_turn() {
    let mut setup = Setup::new();
    setup.deployments = samples(4);
    setup.sim.task_delay = Duration::from_millis(20);
    setup.timing.health = Duration::from_millis(100);
    setup.timing.health_task_spacing = Duration::from_millis(100);
    let mut h = setup.start().await;
    let list = h
        .published(|l| match l.len() == 4 {
            true => l.iter().try_for_each(|d| health_read(l, &d.name)),
            false => Err(format!("{} deployments published", l.len())),
        })
        .await;
    let victim = deployment(&list, "d02").unwrap().instances[0].id.clone();
    let before = route_count(&h.requests().await, HEALTH_TASKS);
    h.control(
        "PUT",
        &format!("/_sim/deployments/d02/instances/{victim}"),
        json!({"job_state": "failing"}),
    )
    .await;
    h.published(|l| {
        let failing = deployment(l, "d02")?
            .instances
            .iter()
            .any(|i| i.id == victim && i.job_state.as_deref() == Some("failing"));
        match failing {
            true => Ok(()),
            false => Err(format!("{victim} is not failing yet")),
        }
    })
    .await;
    // Round robin over four deployments, two tasks at most in flight: d02's turn came
    // within one round.
    let tasks = route_count(&h.requests().await, HEALTH_TASKS) - before;
    assert!(
        tasks <= 4 + 2,
        "{tasks} health tasks before the failure was seen"
    );
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn a_budget_that_cannot_keep_up_is_logged_once_with_what_it_achieves() {
    let mut setup = Setup::new();
    // Six deployments at one task per 100 ms: each read every 600 ms, not every 200 ms.
    setup.deployments = samples(6);
    setup.timing.health = Duration::from_millis(200);
    setup.timing.health_task_spacing = Duration::from_millis(100);
    let mut h = setup.start().await;
    h.published(|l| match l.len() == 6 {
        true => Ok(()),
        false => Err(format!("{} deployments published", l.len())),
    })
    .await;
    h.logs.wait_for("health readings cannot keep up").await;
    let warning = h
        .logs
        .text()
        .lines()
        .find(|l| l.contains("cannot keep up"))
        .unwrap()
        .to_string();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("6 deployments need one")
            && warning.contains("about every 600ms, not every 200ms")
            && warning.contains("1800 tasks a minute would be needed"),
        "{warning}"
    );
    let metrics = boshy::metrics::global().render();
    for name in [
        "boshy_director_health_age_seconds",
        "boshy_director_health_cycle_seconds",
        "boshy_director_health_tasks_total",
        "boshy_director_tasks_started_total",
        "boshy_director_requests_total{method=\"GET\",route=\"/tasks/:id\",result=\"ok\"}",
        "boshy_director_request_duration_seconds_count{method=\"GET\",route=\"/deployments/:name/instances?format=full\"}",
    ] {
        assert!(metrics.contains(&format!("\n{name} ")), "{name}: {metrics}");
    }
    // Four deployments go: two are read every 200 ms, within the interval.
    for i in 2..6 {
        h.control("DELETE", &format!("/_sim/deployments/d{i:02}"), Value::Null)
            .await;
    }
    h.logs.wait_for("health readings keep up again").await;
    assert_eq!(h.logs.count("cannot keep up"), 1, "{}", h.logs.text());
    h.assert_secret_never_logged();
}

#[tokio::test]
async fn deployments_agents_report_on_cost_no_task_until_an_agent_leaves() {
    let everyone = |list: &[DeploymentInput]| -> BTreeSet<InstanceRef> {
        list.iter()
            .flat_map(|d| {
                d.instances.iter().map(|i| InstanceRef {
                    deployment: d.name.clone(),
                    instance_id: i.id.clone(),
                })
            })
            .collect()
    };
    let (agents, reports) = watch::channel(Arc::new(BTreeSet::new()));
    let mut setup = Setup::new();
    setup.agent_reports = Some(reports);
    let mut h = setup.start().await;
    let list = h
        .published(|l| has_instances(l, "sample-deployment", "apricot", 3))
        .await;
    let all = everyone(&list);
    agents.send_replace(Arc::new(all.clone()));
    // Readings already asked for end; none is asked after.
    h.ticks(3).await;
    let before = route_count(&h.requests().await, HEALTH_TASKS);
    h.ticks(10).await;
    assert_eq!(
        route_count(&h.requests().await, HEALTH_TASKS),
        before,
        "every instance is reported on by its agent"
    );
    // One agent disconnects: the director's view of its deployment is read again.
    let mut fewer = all.clone();
    fewer.pop_first();
    agents.send_replace(Arc::new(fewer));
    let read = async {
        while route_count(&h.requests().await, HEALTH_TASKS) == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a reading once an agent is gone");
    h.assert_secret_never_logged();
}
