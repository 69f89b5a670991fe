//! This release's manifests as the bosh CLI and the director see them: which jobs of the
//! release they place, and the values of their `((variables))`: manifests/example-vars.yml for
//! what an operator passes (`-l`), and for each entry of a manifest's `variables:` what the
//! director's CredHub generates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use boshy_lab::jobs::release_dir;
use boshy_lab::pki::Ca;
use serde_yaml::{Mapping, Value};

pub const RELEASE_NAME: &str = "boshy-istio";

/// The deployment manifests and the runtime config in manifests/ (ops-files and the vars file
/// are not manifests of their own).
pub const MANIFESTS: [&str; 3] = [
    "bosh-istio.yml",
    "runtime-config.yml",
    "sample-deployment.yml",
];

pub fn manifests_dir() -> PathBuf {
    release_dir().join("manifests")
}

pub fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Every job of this release the manifest places, with the instance group or addon it is in.
pub fn release_jobs(manifest: &Value) -> Vec<(&str, &Value)> {
    manifest["instance_groups"]
        .as_sequence()
        .into_iter()
        .chain(manifest["addons"].as_sequence())
        .flatten()
        .flat_map(|group| {
            let group_name = group["name"]
                .as_str()
                .expect("instance group or addon name");
            group["jobs"]
                .as_sequence()
                .expect("jobs")
                .iter()
                .filter(|job| job["release"] == RELEASE_NAME)
                .map(move |job| (group_name, job))
        })
        .collect()
}

/// The value of every variable `manifest` may use: manifests/example-vars.yml, and a value
/// generated for each of its `variables:`, as CredHub generates it: a certificate is a hash of
/// `ca`, `certificate` and `private_key` PEMs (signed by the CA variable its options name,
/// which must come before it), anything else a string.
pub fn variables(manifest: &Value) -> Mapping {
    let mut vars = yaml(&manifests_dir().join("example-vars.yml"))
        .as_mapping()
        .cloned()
        .expect("manifests/example-vars.yml is a map");
    let mut cas: BTreeMap<String, Ca> = BTreeMap::new();
    for variable in manifest["variables"].as_sequence().into_iter().flatten() {
        let name = variable["name"].as_str().expect("variables[].name");
        let options = &variable["options"];
        let generated: Value = match variable["type"].as_str() {
            Some("certificate") if options["is_ca"] == true => {
                let ca = Ca::new(options["common_name"].as_str().unwrap_or(name)).unwrap();
                let value = certificate(&ca.cert_pem(), &ca.cert_pem(), &ca.key_pem());
                cas.insert(name.to_string(), ca);
                value
            }
            Some("certificate") => {
                let signer = options["ca"].as_str().unwrap_or_else(|| {
                    panic!("certificate variable {name}: no options.ca (only CAs sign themselves)")
                });
                let ca = cas.get(signer).unwrap_or_else(|| {
                    panic!("certificate variable {name}: its CA {signer} is not declared before it")
                });
                let common_name = options["common_name"].as_str().unwrap_or(name);
                let server = options["extended_key_usage"]
                    .as_sequence()
                    .is_some_and(|usages| usages.iter().any(|u| u == "server_auth"));
                let issued = if server {
                    ca.server(common_name)
                } else {
                    ca.client(common_name)
                }
                .unwrap();
                certificate(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            }
            _ => format!("generated-{name}").into(),
        };
        vars.insert(name.into(), generated);
    }
    vars
}

fn certificate(ca: &str, certificate: &str, private_key: &str) -> Value {
    [
        ("ca", ca),
        ("certificate", certificate),
        ("private_key", private_key),
    ]
    .into_iter()
    .map(|(key, pem)| (key.into(), pem.into()))
    .collect::<Mapping>()
    .into()
}

/// `((name))` as the whole value is replaced by the variable's value; inside a longer string
/// it is spliced in. Unknown names are collected, as `--var-errs` reports them.
pub fn interpolate(value: &Value, vars: &Mapping, unknown: &mut BTreeSet<String>) -> Value {
    match value {
        Value::String(s) => {
            let whole = s
                .strip_prefix("((")
                .and_then(|r| r.strip_suffix("))"))
                .filter(|name| !name.contains("(("));
            if let Some(name) = whole {
                return vars.get(name).cloned().unwrap_or_else(|| {
                    unknown.insert(name.to_string());
                    value.clone()
                });
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("((") {
                let Some(end) = rest[start..].find("))") else {
                    break;
                };
                let name = &rest[start + 2..start + end];
                out += &rest[..start];
                match vars.get(name) {
                    Some(Value::String(v)) => out += v,
                    Some(other) => out += serde_yaml::to_string(other).unwrap().trim(),
                    None => {
                        unknown.insert(name.to_string());
                    }
                }
                rest = &rest[start + end + 2..];
            }
            Value::String(out + rest)
        }
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .map(|v| interpolate(v, vars, unknown))
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.iter()
                .map(|(k, v)| (k.clone(), interpolate(v, vars, unknown)))
                .collect(),
        ),
        other => other.clone(),
    }
}
