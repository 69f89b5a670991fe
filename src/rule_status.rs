//! The rule configs the director holds, judged against the mesh: each config is parsed once
//! per content (`rules::parse_config`), and all of them are validated together against the
//! current catalog (`rules::validate`) whenever the configs or the catalog change. The result
//! is published for the API (`/v1/rules`), and the accepted rules compiled into the traffic
//! model xDS follows (`rules::compile`); each finding is logged once, when it appears, and the verdicts are counted
//! in `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;

use crate::catalog::model::Catalog;
use crate::director::{PublishedRuleConfigs, RuleConfigs};
use crate::metrics;
use crate::pilot::Reported;
use crate::rules::{self, MeshView, ParsedConfig, Validated};
use crate::traffic::TrafficRules;

/// The verdicts on one set of rule configs, and which version of each config they judged.
#[derive(Debug)]
pub struct RuleStatus {
    /// Config name → the director's id of the version validated.
    pub judged: BTreeMap<String, String>,
    /// With the compiler's warnings (what of an accepted rule Envoy is not given) in the
    /// verdicts of their configs.
    pub validated: Validated,
    /// The accepted rules, compiled.
    pub traffic: Arc<TrafficRules>,
}

/// What [`follow`] publishes: `None` until the rule configs and a first catalog are in.
pub type PublishedRuleStatus = Option<Arc<RuleStatus>>;

/// Each config's content and what it parsed to, so an unchanged config is not parsed again.
#[derive(Default)]
pub(crate) struct ParsedConfigs(BTreeMap<String, (String, ParsedConfig)>);

impl ParsedConfigs {
    /// The configs parsed, in the director's order (by name), reusing unchanged ones, each
    /// with the director's id of its version (its age, for the security policies).
    pub(crate) fn update(&mut self, configs: &RuleConfigs) -> Vec<ParsedConfig> {
        self.0
            .retain(|name, _| configs.configs.iter().any(|c| &c.name == name));
        configs
            .configs
            .iter()
            .map(|config| {
                let stale = self
                    .0
                    .get(&config.name)
                    .is_none_or(|(content, _)| *content != config.content);
                if stale {
                    let parsed = rules::parse_config(&config.name, &config.content);
                    self.0
                        .insert(config.name.clone(), (config.content.clone(), parsed));
                }
                let mut parsed = self.0[&config.name].1.clone();
                parsed.director_id = config.id.parse().ok();
                parsed
            })
            .collect()
    }
}

/// Judges `configs` against `catalog`.
fn judge(parsed: &mut ParsedConfigs, configs: &RuleConfigs, catalog: &Catalog) -> RuleStatus {
    let mut validated = rules::validate(
        &parsed.update(configs),
        Some(&MeshView::from_catalog(catalog)),
    );
    let compiled = rules::compile(&validated.rules, catalog);
    for warning in compiled.warnings {
        if let Some(verdict) = validated
            .verdicts
            .iter_mut()
            .find(|verdict| verdict.config == warning.config)
        {
            verdict.warnings.push(warning);
        }
    }
    RuleStatus {
        judged: configs
            .configs
            .iter()
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect(),
        validated,
        traffic: Arc::new(compiled.traffic),
    }
}

const REFUSED: &str = "rule refused: ";
const WARNING: &str = "rule warning: ";

/// Every finding of `status` as one log line.
fn finding_lines(status: &RuleStatus) -> Vec<String> {
    let verdicts = &status.validated.verdicts;
    let errors = verdicts
        .iter()
        .flat_map(|v| &v.errors)
        .map(|f| format!("{REFUSED}{f}"));
    let warnings = verdicts
        .iter()
        .flat_map(|v| &v.warnings)
        .map(|f| format!("{WARNING}{f}"));
    errors.chain(warnings).collect()
}

/// Follows the rule configs and the catalog until either channel closes.
pub async fn follow(
    mut configs: watch::Receiver<PublishedRuleConfigs>,
    mut catalog: watch::Receiver<Arc<Catalog>>,
    status: watch::Sender<PublishedRuleStatus>,
    traffic: watch::Sender<Arc<TrafficRules>>,
) -> Result<()> {
    let mut parsed = ParsedConfigs::default();
    let mut logged = Reported::default();
    loop {
        let current_configs = configs.borrow_and_update().clone();
        let current_catalog = catalog.borrow_and_update().clone();
        // Version 0 is the empty catalog before the director was read: judged against it,
        // every rule would name a host nobody exposes.
        if let (Some(rule_configs), true) = (current_configs, current_catalog.version != 0) {
            let judged = judge(&mut parsed, &rule_configs, &current_catalog);
            for line in logged.fresh(finding_lines(&judged)) {
                if line.starts_with(REFUSED) {
                    tracing::warn!("{line}");
                } else {
                    tracing::info!("{line}");
                }
            }
            let verdicts = &judged.validated.verdicts;
            let rejected = verdicts.iter().filter(|v| !v.errors.is_empty()).count();
            let m = metrics::global();
            m.rule_configs_rejected
                .store(rejected as u64, Ordering::Relaxed);
            m.rule_configs_accepted
                .store((verdicts.len() - rejected) as u64, Ordering::Relaxed);
            // Sent only when it changed: xDS builds a snapshot per model it is sent.
            traffic.send_if_modified(|current| {
                let changed = *current != judged.traffic;
                if changed {
                    *current = judged.traffic.clone();
                }
                changed
            });
            status.send_replace(Some(Arc::new(judged)));
        }
        tokio::select! {
            changed = configs.changed() => changed?,
            changed = catalog.changed() => changed?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::director::RuleConfig;

    fn catalog() -> Catalog {
        testing::catalog(
            3,
            [service("bookinfo", "ratings", "ratings")
                .port("http", 9080, Protocol::Http)
                .endpoint(Endpoint {
                    labels: labels([("version", "v1")]),
                    ..endpoint("10.0.0.1")
                })],
        )
    }

    fn configs(rules: &[(&str, &str)]) -> RuleConfigs {
        RuleConfigs {
            configs: rules
                .iter()
                .enumerate()
                .map(|(id, (name, content))| RuleConfig {
                    id: id.to_string(),
                    name: name.to_string(),
                    content: content.to_string(),
                    created_at: None,
                })
                .collect(),
        }
    }

    const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings\nspec:\n  host: ratings.ratings.bookinfo.boshy\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n";
    const NO_INSTANCE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings-v9\nspec:\n  host: ratings.ratings.bookinfo.boshy\n  subsets:\n  - name: v9\n    labels:\n      version: v9\n";

    #[test]
    fn each_config_is_judged_against_the_catalog_and_a_bad_one_spares_the_others() {
        let mut parsed = ParsedConfigs::default();
        let status = judge(
            &mut parsed,
            &configs(&[("a-good", GOOD), ("b-bad", NO_INSTANCE)]),
            &catalog(),
        );
        let verdicts = &status.validated.verdicts;
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts[0].errors.is_empty(), "{:?}", verdicts[0]);
        assert_eq!(verdicts[0].accepted.len(), 1);
        assert!(verdicts[1].accepted.is_empty(), "{:?}", verdicts[1]);
        let lines: Vec<String> = verdicts[1].errors.iter().map(|e| e.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("b-bad") && l.contains("subset v9 selects none")),
            "{lines:?}"
        );
        assert_eq!(status.validated.rules.destination_rules.len(), 1);
        assert_eq!(status.judged["b-bad"], "1");
    }

    #[test]
    fn accepted_rules_are_compiled_and_the_compilers_warnings_are_in_their_verdicts() {
        let mut parsed = ParsedConfigs::default();
        let status = judge(&mut parsed, &configs(&[("a-good", GOOD)]), &catalog());
        let ratings = &status.traffic.services["ratings.ratings.bookinfo.boshy"];
        assert_eq!(
            ratings.subsets["v1"].endpoints,
            ["10.0.0.1".parse().unwrap()].into()
        );
        let two_ports = testing::catalog(
            4,
            [
                service("bookinfo", "ratings", "ratings")
                    .port("http", 9080, Protocol::Http)
                    .endpoint(endpoint("10.0.0.1")),
                service("bookinfo", "db", "db")
                    .port("a", 1, Protocol::Tcp)
                    .port("b", 2, Protocol::Tcp),
            ],
        );
        const TO_DB: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [ratings.ratings.bookinfo.boshy]\n  http:\n  - route:\n    - destination: {host: db.db.bookinfo.boshy}\n";
        let status = judge(&mut parsed, &configs(&[("to-db", TO_DB)]), &two_ports);
        let verdict = &status.validated.verdicts[0];
        assert!(verdict.errors.is_empty(), "{verdict:?}");
        assert!(
            verdict.warnings[0]
                .to_string()
                .contains("has several ports"),
            "{verdict:?}"
        );
        assert!(status.traffic.services.is_empty());
    }

    #[test]
    fn the_oldest_config_by_director_id_holds_the_mesh_wide_peer_authentication() {
        let mesh_wide = |mode: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n")
        };
        let (strict, disable) = (mesh_wide("STRICT"), mesh_wide("DISABLE"));
        let mut rules = configs(&[("a", &strict), ("b", &disable)]);
        let mut parsed = ParsedConfigs::default();
        let mesh_mtls = |parsed: &mut ParsedConfigs, rules: &RuleConfigs| {
            let status = judge(parsed, rules, &catalog());
            let ignored: Vec<String> = status
                .validated
                .verdicts
                .iter()
                .flat_map(|v| &v.warnings)
                .map(|w| w.to_string())
                .collect();
            (status.traffic.security.mesh_mtls, ignored)
        };
        let (mode, ignored) = mesh_mtls(&mut parsed, &rules);
        assert_eq!(mode, crate::traffic::security::MtlsMode::Strict);
        assert!(
            ignored[0].starts_with("config \"b\": PeerAuthentication \"default\": spec: ignored"),
            "{ignored:?}"
        );
        // `a` written again after `b`: `b` is now the older config.
        rules.configs[0].id = "7".into();
        let (mode, ignored) = mesh_mtls(&mut parsed, &rules);
        assert_eq!(mode, crate::traffic::security::MtlsMode::Disable);
        assert!(ignored[0].starts_with("config \"a\""), "{ignored:?}");
    }

    #[test]
    fn a_config_is_parsed_again_only_when_its_content_changes_and_gone_ones_are_dropped() {
        let mut parsed = ParsedConfigs::default();
        parsed.update(&configs(&[("a", GOOD), ("b", NO_INSTANCE)]));
        let before = parsed.0["a"].1.clone();
        parsed.update(&configs(&[("a", GOOD)]));
        assert_eq!(parsed.0["a"].1, before);
        assert!(!parsed.0.contains_key("b"));
        parsed.update(&configs(&[("a", "not: [a rule")]));
        assert!(!parsed.0["a"].1.errors.is_empty());
    }
}
