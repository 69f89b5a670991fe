//! Traffic rules at scale (`boshy-bench rules`): an estate where every service has a
//! VirtualService and a DestinationRule, written as Istio YAML in one director config per
//! service, taken through what the pilot does with them: parse every config, validate them
//! together against the mesh, compile the accepted ones into the traffic model, and build the
//! xDS snapshot from the catalog and that model.
//!
//! The estate is the build benchmark's (`build::synthetic_estate`: director data, 10 instances
//! per service, an HTTP and a TCP port each). References in the same run: the same estate's
//! VIPs + catalog + xDS build without rules, and the xDS snapshot of the same catalog without
//! rules.
//!
//! The rules and the version labels they select by are shared with the push benchmark, whose
//! estate has them too and whose `rule` change edits one service's config.

use boshy::xds::telemetry::Telemetry;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::build::{self, millis};
use super::median;
use super::report::Row;
use boshy::catalog::model::Catalog;
use boshy::rules::{self, MeshView, ParsedConfig};
use boshy::traffic::TrafficRules;
use boshy::xds::cache::Snapshot;
use boshy::xds::resources::{Inputs, ResourceType};

const BENCHMARK: &str = "rules";
/// The share of the requests without the tester's header that go to v1, in percent.
pub const SPLIT_V1: u32 = 90;
/// The same after the change the push benchmark's `rule` word makes (and this one times).
pub const CHANGED_SPLIT_V1: u32 = 50;
/// The label the subsets select by, and its values.
const VERSION_LABEL: &str = "version";
const VERSIONS: [&str; 2] = ["v1", "v2"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Services in the estate (10 instances each), each with its own rules.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Labels every service's endpoints `version: v1` and `version: v2`, alternately in the
/// catalog's order, so that each subset selects half of the instances.
///
/// A BOSH job's `expose_labels` label all its instances alike (versions are separate instance
/// groups, joined by a ServiceEntry: docs/rules.md); the synthetic estates set the label on the
/// catalog's endpoints instead, which is what the rules see either way. xDS does not depend on
/// labels, so the snapshot without rules is the same with or without them.
pub fn label_versions(catalog: &mut Catalog) {
    for service in &mut catalog.services {
        for (i, endpoint) in service.endpoints.iter_mut().enumerate() {
            let version = VERSIONS[i % VERSIONS.len()];
            endpoint
                .labels
                .insert(VERSION_LABEL.to_string(), version.to_string());
        }
    }
}

/// One director config (type `boshy-istio`): its name and content.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub content: String,
}

/// The config of the service `host`: a List of its DestinationRule (subsets v1 and v2 by
/// version label, a connection pool and outlier detection) and its VirtualService (requests
/// with `end-user: tester` to v2, the others split `v1_weight`/rest between v1 and v2 with a
/// timeout, retries and an injected delay and abort). Named after the host, as are its
/// resources (hostnames are valid Kubernetes names).
pub fn service_config(host: &str, v1_weight: u32) -> RuleConfig {
    let v2_weight = 100 - v1_weight;
    let content = format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata:
    name: {host}
  spec:
    host: {host}
    trafficPolicy:
      connectionPool:
        tcp: {{maxConnections: 100, connectTimeout: 2s}}
        http: {{http1MaxPendingRequests: 64, http2MaxRequests: 256, maxRetries: 3}}
      outlierDetection:
        consecutive5xxErrors: 5
        interval: 10s
        baseEjectionTime: 30s
        maxEjectionPercent: 50
    subsets:
    - name: v1
      labels: {{version: v1}}
    - name: v2
      labels: {{version: v2}}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata:
    name: {host}
  spec:
    hosts: [{host}]
    http:
    - name: tester
      match:
      - headers:
          end-user: {{exact: tester}}
      route:
      - destination: {{host: {host}, subset: v2}}
    - name: split
      route:
      - destination: {{host: {host}, subset: v1}}
        weight: {v1_weight}
      - destination: {{host: {host}, subset: v2}}
        weight: {v2_weight}
      timeout: 5s
      retries: {{attempts: 3, perTryTimeout: 1s, retryOn: "5xx,connect-failure"}}
      fault:
        delay: {{fixedDelay: 50ms, percentage: {{value: 1}}}}
        abort: {{httpStatus: 503, percentage: {{value: 0.5}}}}
"#
    );
    RuleConfig {
        name: host.to_string(),
        content,
    }
}

/// One config per service of `catalog`, every split at [`SPLIT_V1`].
pub fn service_configs(catalog: &Catalog) -> Vec<RuleConfig> {
    catalog
        .services
        .iter()
        .map(|service| service_config(&service.hostname, SPLIT_V1))
        .collect()
}

pub fn parse(configs: &[RuleConfig]) -> Vec<ParsedConfig> {
    configs
        .iter()
        .map(|config| rules::parse_config(&config.name, &config.content))
        .collect()
}

/// `parsed` validated together against `catalog`'s mesh and compiled, as the pilot does, with
/// the time of each of the two stages in ms. Fails on any finding: the benchmarks measure
/// rules that all apply, so a refused or partly carried rule is a broken benchmark.
pub fn validate_and_compile(
    parsed: &[ParsedConfig],
    catalog: &Catalog,
) -> Result<(TrafficRules, [f64; 2])> {
    let start = Instant::now();
    let validated = rules::validate(parsed, Some(&MeshView::from_catalog(catalog)));
    let validate_ms = millis(start);
    let start = Instant::now();
    let compiled = rules::compile(&validated.rules, catalog);
    let compile_ms = millis(start);
    let findings: Vec<String> = validated
        .verdicts
        .iter()
        .flat_map(|verdict| verdict.errors.iter().chain(&verdict.warnings))
        .chain(
            parsed
                .iter()
                .flat_map(|p| p.errors.iter().chain(&p.warnings)),
        )
        .chain(&compiled.warnings)
        .map(|finding| finding.to_line())
        .collect();
    if let Some(first) = findings.first() {
        bail!(
            "the benchmark's rules have {} findings, the first: {first}",
            findings.len()
        );
    }
    Ok((compiled.traffic, [validate_ms, compile_ms]))
}

/// The xDS snapshot of `catalog` with `traffic`.
pub fn snapshot(catalog: &Catalog, traffic: &TrafficRules) -> Snapshot {
    Snapshot::build(Inputs {
        catalog,
        traffic,
        identity: None,
        telemetry: &Telemetry::OFF,
    })
}

/// Resources of every type in `snapshot`, and their encoded bytes.
fn resource_totals(snapshot: &Snapshot) -> (usize, usize) {
    ResourceType::PUSH_ORDER
        .iter()
        .flat_map(|t| snapshot.select(*t, None).resources)
        .fold((0, 0), |(count, bytes), r| {
            (count + 1, bytes + r.resource.value.len())
        })
}

/// What one run measured, medians in ms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RulesFigures {
    pub services: usize,
    pub configs: usize,
    pub yaml_bytes: usize,
    /// VIPs + catalog + xDS snapshot without rules, from director data (the build benchmark's).
    pub build_without_rules_ms: f64,
    pub parse_ms: f64,
    pub validate_ms: f64,
    pub compile_ms: f64,
    pub xds_with_rules_ms: f64,
    pub xds_without_rules_ms: f64,
    /// One config changed: parsed again, every config validated and compiled, the snapshot
    /// rebuilt (what the pilot does on `bosh update-config`, but for the list of changed
    /// names each snapshot keeps against the previous one, which only the product can build).
    pub one_changed_ms: f64,
    pub resources_with_rules: (usize, usize),
    pub resources_without_rules: (usize, usize),
}

impl RulesFigures {
    fn rules_ms(&self) -> f64 {
        self.parse_ms + self.validate_ms + self.compile_ms
    }
}

/// Measures an estate of `services` services in this process.
pub fn measure(services: usize, repeat: usize) -> Result<RulesFigures> {
    let inputs = build::deployment_inputs(&build::synthetic_estate(
        services,
        build::INSTANCES_PER_SERVICE,
    ))?;
    let mut reference = Vec::new();
    let mut catalog = None;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let (built, _, _) = build::timed_build(&inputs, &mut build::vip_allocator()?);
        reference.push(millis(start));
        catalog = Some(built);
    }
    let mut catalog = catalog.expect("at least one repetition");
    label_versions(&mut catalog);
    let configs = service_configs(&catalog);

    let mut times: [Vec<f64>; 6] = Default::default();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let parsed = parse(&configs);
        let parse_ms = millis(start);
        let (traffic, [validate_ms, compile_ms]) = validate_and_compile(&parsed, &catalog)?;
        let start = Instant::now();
        let with_rules = snapshot(&catalog, &traffic);
        let with_ms = millis(start);
        let start = Instant::now();
        let without_rules = Snapshot::from_catalog(&catalog);
        let without_ms = millis(start);

        // The first service's split moves, as the push benchmark's `rule` change does.
        let start = Instant::now();
        let mut changed = parsed.clone();
        changed[0] = parse(&[service_config(
            &catalog.services[0].hostname,
            CHANGED_SPLIT_V1,
        )])
        .remove(0);
        let (next, _) = validate_and_compile(&changed, &catalog)?;
        std::hint::black_box(snapshot(&catalog, &next));
        let one_changed_ms = millis(start);

        for (series, ms) in times.iter_mut().zip([
            parse_ms,
            validate_ms,
            compile_ms,
            with_ms,
            without_ms,
            one_changed_ms,
        ]) {
            series.push(ms);
        }
        if traffic.services.len() != services {
            bail!(
                "{services} services' rules compiled to the rules of {}",
                traffic.services.len()
            );
        }
        last = Some((with_rules, without_rules));
    }
    let (with_rules, without_rules) = last.expect("at least one repetition");
    let [parse_ms, validate_ms, compile_ms, xds_with_rules_ms, xds_without_rules_ms, one_changed_ms] =
        times.map(|series| median(&series).unwrap_or(f64::NAN));
    Ok(RulesFigures {
        services,
        configs: configs.len(),
        yaml_bytes: configs.iter().map(|c| c.content.len()).sum(),
        build_without_rules_ms: median(&reference).unwrap_or(f64::NAN),
        parse_ms,
        validate_ms,
        compile_ms,
        xds_with_rules_ms,
        xds_without_rules_ms,
        one_changed_ms,
        resources_with_rules: resource_totals(&with_rules),
        resources_without_rules: resource_totals(&without_rules),
    })
}

pub async fn run(args: Args) -> Result<()> {
    let figures = measure(args.services, args.repeat)?;
    super::emit(&rows(&figures), args.out.as_deref())
}

fn rows(f: &RulesFigures) -> Vec<Row> {
    let n = f.services;
    let rules_ms = f.rules_ms();
    let mut compile = Row::new(
        BENCHMARK,
        format!("{n} services: parse + validate + compile every service's rules"),
        rules_ms,
        "ms",
    )
    .against(
        "VIPs + catalog + xDS without rules, same estate",
        f.build_without_rules_ms,
    )
    .note(format!(
        "parse {:.1} ms + validate {:.1} ms + compile {:.1} ms; {} configs of a \
         VirtualService and a DestinationRule each ({:.0} kB of YAML), all accepted",
        f.parse_ms,
        f.validate_ms,
        f.compile_ms,
        f.configs,
        f.yaml_bytes as f64 / 1e3
    ));
    if n == 1000 {
        compile = compile.goal("< 100 ms", rules_ms < 100.0);
    }
    let (with_count, with_bytes) = f.resources_with_rules;
    let (without_count, without_bytes) = f.resources_without_rules;
    vec![
        compile,
        Row::new(
            BENCHMARK,
            format!("{n} services: xDS snapshot with every service's rules"),
            f.xds_with_rules_ms,
            "ms",
        )
        .against("same catalog without rules", f.xds_without_rules_ms)
        .note(format!(
            "{with_count} resources, {:.1} MB encoded, against {without_count}, {:.1} MB: \
             subsets v1 and v2 are a cluster and a load assignment each per port",
            with_bytes as f64 / 1e6,
            without_bytes as f64 / 1e6
        )),
        Row::new(
            BENCHMARK,
            format!("{n} services: one config changed → traffic model + xDS snapshot"),
            f.one_changed_ms,
            "ms",
        )
        .against(
            "every config parsed + xDS, cold",
            rules_ms + f.xds_with_rules_ms,
        )
        .note(
            "the first service's split 90/10 → 50/50: that config parsed again, every \
             config validated and compiled, the snapshot rebuilt (without the list of \
             changed names the server's snapshots add)",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use boshy::xds::resources::{cluster_name, subset_cluster_name};

    #[test]
    fn every_service_gets_subsets_and_routes_that_apply() {
        let mut catalog = build::synthetic_catalog(3, 4).unwrap();
        label_versions(&mut catalog);
        let (traffic, _) =
            validate_and_compile(&parse(&service_configs(&catalog)), &catalog).unwrap();
        assert_eq!(traffic.services.len(), 3);
        let service = &catalog.services[1];
        let rules = &traffic.services[&service.hostname];
        assert_eq!(
            rules.subsets.keys().collect::<Vec<_>>(),
            ["v1", "v2"],
            "{rules:?}"
        );
        for subset in rules.subsets.values() {
            assert_eq!(subset.endpoints.len(), 2, "half of the instances each");
        }
        let routes = &rules.http_routes[&8080];
        assert_eq!(routes.len(), 2, "the tester's route and the split");
        assert!(routes[1].fault.is_some() && rules.policy.all_ports.outlier_detection.is_some());

        let with = snapshot(&catalog, &traffic);
        let clusters: BTreeSet<&str> = with
            .select(ResourceType::Cluster, None)
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        for port in [8080, 5432] {
            assert!(clusters.contains(cluster_name(&service.hostname, port).as_str()));
            assert!(clusters.contains(subset_cluster_name(&service.hostname, port, "v2").as_str()));
        }
        assert_eq!(
            clusters.len(),
            3 * 2 * 3,
            "3 services × 2 ports × (whole, v1, v2)"
        );
    }

    #[test]
    fn a_small_estate_is_measured() {
        let figures = measure(20, 1).unwrap();
        let rows = rows(&figures);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.value > 0.0 && r.ratio().is_some()));
        assert!(figures.resources_with_rules.0 > figures.resources_without_rules.0);
    }
}
