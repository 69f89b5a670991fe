//! The part of a deployment manifest the simulator acts on: which instance groups exist, how
//! many instances each has, in which AZs, and what runs there.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Versions the simulated director resolves `latest` to.
const LATEST_RELEASE_VERSION: &str = "0+dev.1";
const LATEST_STEMCELL_VERSION: &str = "1.423";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameVersion {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub instances: u32,
    pub azs: Vec<String>,
    /// `lifecycle: errand` groups never keep a VM.
    pub errand: bool,
    pub vm_type: Option<String>,
    pub stemcell: Option<NameVersion>,
    /// Job names, in manifest order; the simulated agent reports one monit process per job.
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSpec {
    pub releases: Vec<NameVersion>,
    pub stemcells: Vec<NameVersion>,
    pub groups: Vec<GroupSpec>,
}

impl DeploymentSpec {
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|group| group.name == name)
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    releases: Vec<RawRelease>,
    #[serde(default)]
    stemcells: Vec<RawStemcell>,
    #[serde(default)]
    instance_groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
struct RawRelease {
    name: String,
    version: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct RawStemcell {
    alias: String,
    name: Option<String>,
    os: Option<String>,
    version: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    instances: u32,
    #[serde(default)]
    azs: Vec<String>,
    lifecycle: Option<String>,
    vm_type: Option<String>,
    stemcell: Option<String>,
    #[serde(default)]
    jobs: Vec<RawJob>,
}

#[derive(Deserialize)]
struct RawJob {
    name: String,
}

/// Versions may be written as numbers (`version: 1.2`); the director keeps them as strings.
fn version_text(version: Option<serde_yaml::Value>, latest: &str) -> String {
    match version {
        Some(serde_yaml::Value::String(text)) if text != "latest" => text,
        Some(serde_yaml::Value::Number(number)) => number.to_string(),
        _ => latest.to_string(),
    }
}

/// Parses the manifest text; the error names what is wrong (serde's path and position).
pub fn parse(text: &str) -> Result<DeploymentSpec, String> {
    let raw: RawManifest = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    let releases = raw
        .releases
        .into_iter()
        .map(|release| NameVersion {
            name: release.name,
            version: version_text(release.version, LATEST_RELEASE_VERSION),
        })
        .collect();
    let stemcells_by_alias: BTreeMap<String, NameVersion> = raw
        .stemcells
        .into_iter()
        .map(|stemcell| {
            let os = stemcell.os.unwrap_or_else(|| "ubuntu-jammy".to_string());
            let resolved = NameVersion {
                name: stemcell
                    .name
                    .unwrap_or_else(|| format!("bosh-warden-boshlite-{os}-go_agent")),
                version: version_text(stemcell.version, LATEST_STEMCELL_VERSION),
            };
            (stemcell.alias, resolved)
        })
        .collect();
    let mut groups = Vec::with_capacity(raw.instance_groups.len());
    for group in raw.instance_groups {
        if groups
            .iter()
            .any(|known: &GroupSpec| known.name == group.name)
        {
            return Err(format!("instance group '{}' appears twice", group.name));
        }
        let stemcell = match group.stemcell {
            Some(alias) => Some(stemcells_by_alias.get(&alias).cloned().ok_or_else(|| {
                format!(
                    "instance group '{}' uses stemcell alias '{alias}' that is not under stemcells",
                    group.name
                )
            })?),
            None => None,
        };
        groups.push(GroupSpec {
            name: group.name,
            instances: group.instances,
            azs: group.azs,
            errand: group.lifecycle.as_deref() == Some("errand"),
            vm_type: group.vm_type,
            stemcell,
            jobs: group.jobs.into_iter().map(|job| job.name).collect(),
        });
    }
    Ok(DeploymentSpec {
        releases,
        stemcells: stemcells_by_alias.into_values().collect(),
        groups,
    })
}

/// The deployment name a fixture file declares.
pub fn declared_name(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    serde_yaml::from_str::<Named>(text).ok().map(|n| n.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
name: demo
releases:
- {name: boshy-istio, version: latest}
- {name: bpm, version: 1.2}
stemcells:
- {alias: default, os: ubuntu-noble, version: "1.100"}
instance_groups:
- name: web
  instances: 2
  azs: [z1, z2]
  vm_type: small
  stemcell: default
  networks: [{name: default}]
  jobs:
  - name: example-httpbin
    release: boshy-istio
    expose_ports: ((anything goes here))
- name: smoke
  lifecycle: errand
  instances: 1
  jobs: [{name: smoke-tests, release: boshy-istio}]
"#;

    #[test]
    fn reads_groups_releases_and_stemcells() {
        let spec = parse(MANIFEST).unwrap();
        assert_eq!(
            spec.releases,
            vec![
                NameVersion {
                    name: "boshy-istio".into(),
                    version: "0+dev.1".into()
                },
                NameVersion {
                    name: "bpm".into(),
                    version: "1.2".into()
                },
            ]
        );
        let web = spec.group("web").unwrap();
        assert_eq!(web.instances, 2);
        assert_eq!(web.azs, ["z1", "z2"]);
        assert!(!web.errand);
        assert_eq!(web.jobs, ["example-httpbin"]);
        assert_eq!(
            web.stemcell.as_ref().unwrap().name,
            "bosh-warden-boshlite-ubuntu-noble-go_agent"
        );
        assert!(spec.group("smoke").unwrap().errand);
        assert_eq!(declared_name(MANIFEST).as_deref(), Some("demo"));
    }

    #[test]
    fn broken_manifests_are_errors_that_say_where() {
        assert!(parse("instance_groups: [").is_err());
        let unresolved =
            parse("instance_groups:\n- name: a\n  instances: ((count))\n").unwrap_err();
        assert!(unresolved.contains("instances"), "{unresolved}");
        let unknown_alias =
            parse("instance_groups:\n- {name: a, instances: 1, stemcell: nope}\n").unwrap_err();
        assert!(unknown_alias.contains("nope"), "{unknown_alias}");
    }
}
