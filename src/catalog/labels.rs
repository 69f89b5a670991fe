//! Endpoint labels, for Istio-style rules that select instances (DestinationRule subsets,
//! workloadSelector, sourceLabels): what the director says about each instance, under the
//! reserved prefix `bosh.io/`, and what a release author writes in a job's `expose_labels`
//! (docs/ARCHITECTURE.md, "The manifest contract").
//!
//! Keys and values follow the Kubernetes label syntax, which is what Istio's selectors accept:
//! a key is an optional DNS-subdomain prefix and `/`, then a name of 1-63 characters of
//! `[A-Za-z0-9-_.]` starting and ending with a letter or digit; a value is empty or such a
//! name. The director's values are names BOSH chose or let the operator choose, so they are
//! mapped when they break that syntax (see [`name_value`]).

use super::manifest::{canonicalize, is_dns_label};
use super::model::{Instance, Labels, ServiceKey};
use crate::text::clip;

/// The domain of the director's labels, and of no one else's: `bosh.io` is the BOSH project's
/// own, so a key under it reads as "what BOSH says" and cannot be confused with a label a
/// release author or Istio chose. Its subdomains are reserved too, as Kubernetes reserves
/// `kubernetes.io` and `*.kubernetes.io`.
pub(crate) const DIRECTOR_DOMAIN: &str = "bosh.io";
pub(crate) const DEPLOYMENT: &str = "bosh.io/deployment";
pub(crate) const INSTANCE_GROUP: &str = "bosh.io/instance-group";
pub(crate) const JOB: &str = "bosh.io/job";
pub(crate) const AZ: &str = "bosh.io/az";
pub(crate) const INDEX: &str = "bosh.io/index";
pub(crate) const ID: &str = "bosh.io/id";
pub(crate) const BOOTSTRAP: &str = "bosh.io/bootstrap";

/// The longest label name or value.
const MAX_LABEL_LEN: usize = 63;
/// The longest key prefix, a DNS subdomain.
const MAX_PREFIX_LEN: usize = 253;

/// The director's labels of `instance` as an endpoint of the service `key`. A label whose
/// value the director does not give (no AZ, no index, a row without `bootstrap`) is absent.
pub(crate) fn director_labels(key: &ServiceKey, instance: &Instance) -> Labels {
    let mut labels = instance_labels(
        &key.deployment,
        &key.instance_group,
        &instance.id,
        instance.az.as_deref(),
        instance.index,
    );
    let job = name_value(&key.job).map(|job| (JOB.to_string(), job));
    let bootstrap = instance
        .bootstrap
        .map(|bootstrap| (BOOTSTRAP.to_string(), bootstrap.to_string()));
    labels.extend(job.into_iter().chain(bootstrap));
    labels
}

/// The director's labels of one instance whatever jobs it runs: its deployment, instance
/// group, id, and AZ and index where known. The labels of a client VM that exposes no job
/// (`xds::client`), and the part of every endpoint's labels that is the instance's.
pub(crate) fn instance_labels(
    deployment: &str,
    instance_group: &str,
    id: &str,
    az: Option<&str>,
    index: Option<u32>,
) -> Labels {
    let names = [
        (DEPLOYMENT, Some(deployment)),
        (INSTANCE_GROUP, Some(instance_group)),
        (AZ, az),
        (ID, Some(id)),
    ];
    names
        .into_iter()
        .map(|(label, name)| (label, name.and_then(name_value)))
        .chain([(INDEX, index.map(|index| index.to_string()))])
        .filter_map(|(label, value)| Some((label.to_string(), value?)))
        .collect()
}

/// A BOSH name (deployment, instance group, job, AZ, instance id) as a label value: the name
/// itself, as the manifest spells it, when it is a valid value, which BOSH's usual names are
/// (`diego_cell`, `z1`, a uuid); otherwise its canonical DNS form, the one its hostname uses
/// (`manifest::canonicalize`), when that is a DNS label; otherwise none. The names of a served
/// service always have one: its hostname exists only when every canonical form is a DNS label.
fn name_value(name: &str) -> Option<String> {
    if check_value(name).is_ok() {
        return Some(name.to_string());
    }
    Some(canonicalize(name)).filter(|canonical| is_dns_label(canonical))
}

/// Whether `key` is one of the director's labels that every instance has, whatever jobs it
/// runs ([`instance_labels`]).
pub(crate) fn is_instance_label(key: &str) -> bool {
    [DEPLOYMENT, INSTANCE_GROUP, AZ, ID, INDEX].contains(&key)
}

/// Whether `key` is the director's: its prefix is [`DIRECTOR_DOMAIN`] or a subdomain of it.
pub(crate) fn is_reserved(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| {
        prefix == DIRECTOR_DOMAIN
            || prefix
                .strip_suffix(DIRECTOR_DOMAIN)
                .is_some_and(|sub| sub.ends_with('.'))
    })
}

/// Whether `key` is a label key, or why not (quoting it).
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let is_subdomain = prefix.len() <= MAX_PREFIX_LEN && prefix.split('.').all(is_dns_label);
        if !is_subdomain {
            return Err(format!(
                "key {:?}: the prefix before '/' is not a DNS subdomain (labels of a-z, 0-9 \
                 and '-' joined by '.', at most {MAX_PREFIX_LEN} characters)",
                clip(key)
            ));
        }
    }
    if !is_label_text(name) {
        return Err(format!(
            "key {:?}: the name{} is not 1-{MAX_LABEL_LEN} characters of a-z, A-Z, 0-9, '-', \
             '_' and '.' starting and ending with a letter or digit",
            clip(key),
            if prefix.is_some() { " after '/'" } else { "" }
        ));
    }
    Ok(())
}

/// Whether `value` is a label value, or why not (quoting it).
pub(crate) fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_text(value) {
        return Ok(());
    }
    Err(format!(
        "value {:?} is not empty nor 1-{MAX_LABEL_LEN} characters of a-z, A-Z, 0-9, '-', '_' \
         and '.' starting and ending with a letter or digit",
        clip(value)
    ))
}

/// A non-empty label name or value: at most 63 of `[A-Za-z0-9-_.]`, starting and ending with
/// a letter or digit.
fn is_label_text(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= MAX_LABEL_LEN
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::testing::labels;

    fn instance(
        id: &str,
        az: Option<&str>,
        index: Option<u32>,
        bootstrap: Option<bool>,
    ) -> Instance {
        Instance {
            id: id.into(),
            instance_group: "diego_cell".into(),
            index,
            az: az.map(String::from),
            ips: vec!["10.0.0.1".into()],
            job_state: Some("running".into()),
            vm_cid: Some("vm-1".into()),
            bootstrap,
        }
    }

    fn key(deployment: &str, instance_group: &str, job: &str) -> ServiceKey {
        ServiceKey {
            deployment: deployment.into(),
            instance_group: instance_group.into(),
            job: job.into(),
        }
    }

    #[test]
    fn the_director_labels_every_fact_it_gives_under_bosh_io() {
        let id = "6a8e4f2c-1d3b-4c5e-9f70-0123456789ab";
        let given = director_labels(
            &key("cf", "diego_cell", "rep"),
            &instance(id, Some("z1"), Some(3), Some(true)),
        );
        assert_eq!(
            given,
            labels([
                ("bosh.io/az", "z1"),
                ("bosh.io/bootstrap", "true"),
                ("bosh.io/deployment", "cf"),
                ("bosh.io/id", id),
                ("bosh.io/index", "3"),
                ("bosh.io/instance-group", "diego_cell"),
                ("bosh.io/job", "rep"),
            ])
        );
        for (key, value) in &given {
            assert!(is_reserved(key), "{key}");
            assert_eq!(check_key(key), Ok(()));
            assert_eq!(check_value(value), Ok(()));
        }
    }

    #[test]
    fn facts_the_director_does_not_give_are_no_labels() {
        let given = director_labels(&key("d", "g", "j"), &instance("i", None, None, None));
        assert_eq!(
            given,
            labels([
                ("bosh.io/deployment", "d"),
                ("bosh.io/id", "i"),
                ("bosh.io/instance-group", "g"),
                ("bosh.io/job", "j"),
            ])
        );
        let not_bootstrap =
            director_labels(&key("d", "g", "j"), &instance("i", None, None, Some(false)));
        assert_eq!(not_bootstrap[BOOTSTRAP], "false");
    }

    #[test]
    fn names_that_are_no_label_values_get_their_dns_form() {
        let long = format!("{}!", "a".repeat(63));
        let given = director_labels(
            &key("My Dep", "Diego.Cell_2", &long),
            &instance("i", Some("AZ #1"), None, None),
        );
        assert_eq!(given[DEPLOYMENT], "mydep");
        // Valid as it is: kept as BOSH spells it.
        assert_eq!(given[INSTANCE_GROUP], "Diego.Cell_2");
        assert_eq!(given[JOB], "a".repeat(63));
        assert_eq!(given[AZ], "az1");

        // No DNS form either: no label (such a deployment serves no service anyway).
        let given = director_labels(&key("d", "g", "j"), &instance("i", Some("-_-"), None, None));
        assert!(!given.contains_key(AZ), "{given:?}");
    }

    #[test]
    fn keys_follow_the_kubernetes_syntax() {
        for good in [
            "version",
            "app",
            "v",
            "9",
            "Version_2.a-b",
            "example.com/tier",
            "a-b.c-d.example/x",
            "istio.io/rev",
            &format!("{}/{}", "a".repeat(63), "n".repeat(63)),
        ] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/version",
            "example.com/",
            "Example.com/tier",
            "a_b.com/x",
            "-x.com/x",
            "a/b/c",
            "-version",
            "version-",
            "_v",
            "v.",
            "ver sion",
            "vérsion",
            "<<",
            &"n".repeat(64),
            &format!("{}.{}/x", "a".repeat(63), "b".repeat(64)),
            &format!("{}/x", vec!["a".repeat(63); 4].join(".")),
        ] {
            let problem = check_key(bad).expect_err(bad);
            assert!(problem.starts_with("key \""), "{problem}");
        }
        assert!(check_key("example.com/-x")
            .unwrap_err()
            .contains("the name after '/'"));
        assert!(check_key("Bad.Prefix/x").unwrap_err().contains("prefix"));
    }

    #[test]
    fn values_follow_the_kubernetes_syntax() {
        for good in ["", "v2", "1.10", "canary_1", "A-b.C", &"v".repeat(63)] {
            assert_eq!(check_value(good), Ok(()), "{good}");
        }
        for bad in [
            "-v",
            "v-",
            ".",
            "two words",
            "((version))",
            "ü",
            &"v".repeat(64),
        ] {
            assert!(check_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_director_domain_and_its_subdomains_are_reserved() {
        for reserved in ["bosh.io/az", "bosh.io/anything", "team.bosh.io/x"] {
            assert!(is_reserved(reserved), "{reserved}");
        }
        for free in [
            "az",
            "bosh.io",
            "notbosh.io/x",
            "bosh.io.example/x",
            "x/bosh.io/y",
        ] {
            assert!(!is_reserved(free), "{free}");
        }
    }
}
