//! The rule configs: the traffic rules (Istio `VirtualService`, `DestinationRule`,
//! `ServiceEntry` YAML) that operators keep in the director as configs of type `boshy-istio`,
//! one or more names (`bosh update-config --type boshy-istio --name reviews reviews.yml`).
//! The latest config of every name, together, is the mesh's rule set. This is what the
//! director holds, as data; what the YAML means is decided downstream.
//!
//! Configs of type `boshy-vips` (the VIP store, `vip/director_store.rs`) are never rules.

use super::decode::Config;

/// The director config type of the rules (docs/director-api.md §6).
pub const RULES_CONFIG_TYPE: &str = "boshy-istio";

/// The latest config of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// The director's id of this version; a new one at every change of the content.
    pub id: String,
    pub name: String,
    /// The YAML text as the director stores it (a hash, or the director refuses it).
    pub content: String,
    /// As the director writes it (`2024-05-01 12:34:56 UTC`); older directors leave it out.
    pub created_at: Option<String>,
}

/// Every rule config, one per name, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleConfigs {
    pub configs: Vec<RuleConfig>,
}

impl RuleConfigs {
    /// From a `GET /configs?type=boshy-istio&latest=true` answer. Only configs of the rules'
    /// type are kept, whatever else the answer holds; should a name come twice, its first
    /// element wins, the newest in the director's order (§6).
    pub(crate) fn from_listed(listed: Vec<Config>) -> RuleConfigs {
        let mut configs: Vec<RuleConfig> = listed
            .into_iter()
            .filter(|config| config.kind == RULES_CONFIG_TYPE)
            .map(|config| RuleConfig {
                id: config.id,
                name: config.name,
                content: config.content,
                created_at: config.created_at,
            })
            .collect();
        // Stable: equal names keep the director's order.
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        configs.dedup_by(|later, first| later.name == first.name);
        RuleConfigs { configs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(kind: &str, id: &str, name: &str) -> Config {
        Config {
            id: id.into(),
            kind: kind.into(),
            name: name.into(),
            content: format!("{name}: {id}\n"),
            created_at: Some("2024-05-01 12:34:56 UTC".into()),
        }
    }

    fn names_and_ids(rules: &RuleConfigs) -> Vec<(&str, &str)> {
        rules
            .configs
            .iter()
            .map(|c| (c.name.as_str(), c.id.as_str()))
            .collect()
    }

    #[test]
    fn every_name_is_kept_sorted_by_name() {
        let rules = RuleConfigs::from_listed(vec![
            listed(RULES_CONFIG_TYPE, "9", "reviews"),
            listed(RULES_CONFIG_TYPE, "3", "default"),
            listed(RULES_CONFIG_TYPE, "12", "ratings"),
        ]);
        assert_eq!(
            names_and_ids(&rules),
            [("default", "3"), ("ratings", "12"), ("reviews", "9")]
        );
        assert_eq!(rules.configs[2].content, "reviews: 9\n");
        assert_eq!(
            rules.configs[2].created_at.as_deref(),
            Some("2024-05-01 12:34:56 UTC")
        );
    }

    #[test]
    fn other_types_are_never_rules() {
        let rules = RuleConfigs::from_listed(vec![
            listed("boshy-vips", "5", "boshy"),
            listed(RULES_CONFIG_TYPE, "6", "reviews"),
            listed("runtime", "7", "default"),
        ]);
        assert_eq!(names_and_ids(&rules), [("reviews", "6")]);
    }

    #[test]
    fn a_name_listed_twice_keeps_the_directors_newest() {
        let rules = RuleConfigs::from_listed(vec![
            listed(RULES_CONFIG_TYPE, "8", "reviews"),
            listed(RULES_CONFIG_TYPE, "4", "reviews"),
        ]);
        assert_eq!(names_and_ids(&rules), [("reviews", "8")]);
        assert_eq!(RuleConfigs::from_listed(Vec::new()), RuleConfigs::default());
    }
}
