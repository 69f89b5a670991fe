//! This release's jobs as the tests render them: a job's spec, and the `bosh-pilot` link the
//! addon's jobs consume.

use std::path::Path;

use boshy_lab::jobs::{Link, LinkInstance, LinkProvider};
use serde_json::Value;

/// The spec of `job` in the release at `release` (this repository or a fixture release), as
/// YAML; panics naming the file when it is missing or not YAML.
pub fn job_spec(release: &Path, job: &str) -> serde_yaml::Value {
    let path = release.join("jobs").join(job).join("spec");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `bosh-pilot` link with one provider instance per address (the first is the bootstrap
/// instance, each in its own AZ), sharing `provider_properties`.
pub fn pilot_link(addresses: &[&str], provider_properties: Value) -> Link {
    Link {
        instances: addresses
            .iter()
            .enumerate()
            .map(|(index, address)| LinkInstance {
                name: "bosh-pilot".into(),
                id: format!("pilot-{index}"),
                index: Some(index as u32),
                az: Some(format!("z{}", index + 1)),
                address: address.to_string(),
                bootstrap: index == 0,
            })
            .collect(),
        address: None,
        provider: LinkProvider {
            job: "bosh-pilot".into(),
            properties: provider_properties,
        },
    }
}
