//! Manifest → service declarations (docs/ARCHITECTURE.md, "The manifest contract").
//!
//! The input is the raw manifest the operator uploaded, as the director returns it: YAML with
//! anchors and aliases, comments, and `((variables))` that are never resolved here. A release
//! author's mistake in `expose_ports` must not hide anything else, so only a manifest that is
//! not YAML at all, whose top level is not a mapping, or whose `instance_groups` is not a list
//! is an error; every other problem skips the smallest thing it can (one port entry, or one
//! job when `expose_ports` is not a list) and leaves one warning line naming
//! deployment/instance group/job.
//!
//! Deployment, instance group and job names are kept as BOSH spells them: they identify the
//! service, and the director reports instances under them. The service's DNS name is made of
//! their canonical forms, the ones bosh-dns answers for (see [`canonicalize`]); a name whose
//! canonical form is not a DNS label skips the services it would name. Names that share a
//! canonical form are caught where every deployment is seen (`catalog::hostnames`). Port
//! names are lower-cased and must be DNS labels as they are.
//!
//! A job's `expose_labels` (beside `expose_ports`) are labels for every endpoint of its
//! service. They are never worth the service: a bad one skips only itself, and a mapping that
//! is not one leaves the service without labels of its own.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use crate::text::clip;

use super::labels;
use super::model::{Labels, ParsedManifest, Protocol, ServiceDecl, ServiceKey, ServicePort};
use super::yaml_limits::{
    check_expanded_size, flow_depth_exceeds, SizeCheck, MAX_FLOW_DEPTH, MAX_MANIFEST_NODES,
};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("deployment {deployment:?}: manifest is not valid YAML: {source}")]
    Yaml {
        deployment: String,
        source: serde_yaml::Error,
    },
    #[error("deployment {deployment:?}: manifest top level must be a mapping, found {found}")]
    NotAMapping {
        deployment: String,
        found: &'static str,
    },
    #[error("deployment {deployment:?}: manifest `instance_groups` must be a list, found {found}")]
    InstanceGroupsNotAList {
        deployment: String,
        found: &'static str,
    },
    #[error(
        "deployment {deployment:?}: manifest expands to more than {MAX_MANIFEST_NODES} YAML \
         nodes (an alias bomb?); it is not read"
    )]
    TooManyNodes { deployment: String },
    #[error(
        "deployment {deployment:?}: manifest opens more than {MAX_FLOW_DEPTH} `[`/`{{` without \
         closing them; it is not read"
    )]
    TooDeep { deployment: String },
}

/// Parses one deployment's raw manifest into its instance groups and declared services.
pub fn parse(deployment: &str, yaml: &str) -> Result<ParsedManifest, ManifestError> {
    let yaml_error = |source| ManifestError::Yaml {
        deployment: deployment.to_string(),
        source,
    };
    if flow_depth_exceeds(yaml, MAX_FLOW_DEPTH) {
        return Err(ManifestError::TooDeep {
            deployment: deployment.to_string(),
        });
    }
    check_expanded_size(yaml).map_err(|err| match err {
        SizeCheck::TooManyNodes => ManifestError::TooManyNodes {
            deployment: deployment.to_string(),
        },
        SizeCheck::Yaml(source) => yaml_error(source),
    })?;
    let mut root: Value = serde_yaml::from_str(yaml).map_err(yaml_error)?;
    // `<<: *anchor` merge keys are common in hand-written BOSH manifests. One that cannot be
    // merged (`<<: 1`) stays a plain key: it must not hide every service of the deployment.
    let merge_problem = root.apply_merge().err();
    let Value::Mapping(top) = &root else {
        return Err(ManifestError::NotAMapping {
            deployment: deployment.to_string(),
            found: kind(&root),
        });
    };
    let groups = match top.get("instance_groups") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Sequence(groups)) => groups,
        Some(other) => {
            return Err(ManifestError::InstanceGroupsNotAList {
                deployment: deployment.to_string(),
                found: kind(other),
            })
        }
    };

    let mut parsed = ParsedManifest::default();
    if let Some(problem) = merge_problem {
        parsed.warnings.push(format!(
            "deployment {deployment:?}: a merge key (`<<`) was left unmerged: {problem}"
        ));
    }
    for (position, group) in groups.iter().enumerate() {
        parse_instance_group(deployment, position, group, &mut parsed);
    }
    parsed.services.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(parsed)
}

/// The canonical DNS form of a deployment, instance group or job name, made the way the BOSH
/// director makes it for bosh-dns (bosh-director's `Canonicalizer.canonicalize`; bosh-dns
/// answers `q-s0.diego-cell.default.cf.bosh` for instance group `diego_cell`): lower-cased,
/// `_` turned into `-`, and every other character outside `[a-z0-9-]` dropped. The result may
/// still not be a DNS label (empty, longer than 63, or starting or ending with `-`; BOSH
/// refuses the last two too): check it with [`is_dns_label`].
pub(crate) fn canonicalize(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            '_' => Some('-'),
            'a'..='z' | '0'..='9' | '-' => Some(c),
            _ => None,
        })
        .collect()
}

/// Whether `name` is one DNS label: 1..=63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The protocol Istio would infer from a port name when none is given.
pub(crate) fn infer_protocol(port_name: &str) -> Protocol {
    match port_name {
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        name if name.starts_with("http-") => Protocol::Http,
        name if name.starts_with("grpc-") => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

fn parse_instance_group(
    deployment: &str,
    position: usize,
    group: &Value,
    parsed: &mut ParsedManifest,
) {
    let Some(name) = group.get("name").and_then(Value::as_str) else {
        parsed.warnings.push(format!(
            "deployment {deployment:?} instance_groups[{position}]: no `name` string, skipped"
        ));
        return;
    };
    let group_name = name.to_string();
    if !parsed.instance_groups.insert(group_name.clone()) {
        parsed.warnings.push(format!(
            "deployment {deployment:?} instance group {:?}: appears twice, the \
             second one is skipped",
            clip(&group_name)
        ));
        return;
    }
    let jobs = match group.get("jobs") {
        None | Some(Value::Null) => return,
        Some(Value::Sequence(jobs)) => jobs,
        Some(other) => {
            parsed.warnings.push(format!(
                "deployment {deployment:?} instance group {:?}: `jobs` must be a \
                 list, found {}; its jobs are skipped",
                clip(&group_name),
                kind(other)
            ));
            return;
        }
    };
    let mut seen_jobs = BTreeSet::new();
    for (job_position, job) in jobs.iter().enumerate() {
        let Some(job_name) = job.get("name").and_then(Value::as_str) else {
            parsed.warnings.push(format!(
                "deployment {deployment:?} instance group {:?} jobs[{job_position}]: \
                 no `name` string, skipped",
                clip(&group_name)
            ));
            continue;
        };
        let key = ServiceKey {
            deployment: deployment.to_string(),
            instance_group: group_name.clone(),
            job: job_name.to_string(),
        };
        let mut job_warnings = JobWarnings {
            key: &key,
            out: &mut parsed.warnings,
        };
        if !seen_jobs.insert(key.job.clone()) {
            job_warnings.push("appears twice in the instance group, the second one is skipped");
            continue;
        }
        let Some(ports) = parse_expose_ports(job.get("expose_ports"), &mut job_warnings) else {
            if is_absent(job.get("expose_ports")) && !is_absent(job.get("expose_labels")) {
                job_warnings.push(
                    "expose_labels without expose_ports: the job is no service, so its labels \
                     apply to nothing",
                );
            }
            continue;
        };
        if ports.is_empty() {
            continue;
        }
        let dns_name = match dns_name(&key) {
            Ok(dns_name) => dns_name,
            Err(problem) => {
                job_warnings.push(&format!("{problem}; the service is skipped"));
                continue;
            }
        };
        let labels = parse_expose_labels(job.get("expose_labels"), &mut job_warnings);
        parsed.services.push(ServiceDecl {
            key,
            dns_name,
            ports,
            labels,
        });
    }
}

/// `<job>.<instance_group>.<deployment>` of `key` in canonical form, or which name has no
/// canonical form that is a DNS label. The warning prefix already quotes the name itself.
fn dns_name(key: &ServiceKey) -> Result<String, String> {
    canonical_dns_name(&[
        ("job", &key.job),
        ("instance group", &key.instance_group),
        ("deployment", &key.deployment),
    ])
}

/// The canonical forms of `names` (what each is, its name) joined by '.', or which name has
/// no canonical form that is a DNS label: how BOSH names become a service's DNS name, for a
/// job's service and a WorkloadGroup's alike.
pub(crate) fn canonical_dns_name(names: &[(&str, &str)]) -> Result<String, String> {
    let mut labels = Vec::with_capacity(names.len());
    for (what, name) in names {
        let label = canonicalize(name);
        if !is_dns_label(&label) {
            return Err(format!(
                "the {what} name has no DNS form: canonicalized (lower-case, '_' as '-', \
                 other characters than a-z, 0-9 and '-' dropped) it is {:?}, not a DNS label \
                 (1-63 characters, not starting or ending with '-')",
                clip(&label)
            ));
        }
        labels.push(label);
    }
    Ok(labels.join("."))
}

/// Collects warnings about one job, each prefixed with deployment/instance group/job.
struct JobWarnings<'a> {
    key: &'a ServiceKey,
    out: &'a mut Vec<String>,
}

impl JobWarnings<'_> {
    fn push(&mut self, what: &str) {
        self.out.push(format!("{}: {what}", self.key));
    }
}

/// The valid ports of one job, sorted by number; `None` when `expose_ports` is absent or is
/// not a list (the job exposes nothing).
fn parse_expose_ports(
    expose_ports: Option<&Value>,
    warnings: &mut JobWarnings,
) -> Option<Vec<ServicePort>> {
    let entries = match expose_ports {
        None | Some(Value::Null) => return None,
        Some(Value::Sequence(entries)) => entries,
        Some(other) => {
            warnings.push(&format!(
                "expose_ports must be a list, found {}; the job is skipped",
                kind(other)
            ));
            return None;
        }
    };
    let mut by_number: BTreeMap<u16, ServicePort> = BTreeMap::new();
    for (position, entry) in entries.iter().enumerate() {
        let port = match parse_port(entry) {
            Ok(port) => port,
            Err(problem) => {
                warnings.push(&format!(
                    "expose_ports[{position}]: {problem}; the entry is skipped"
                ));
                continue;
            }
        };
        if by_number.values().any(|p| p.name == port.name) {
            warnings.push(&format!(
                "expose_ports[{position}]: name {:?} is already used in this job; the entry \
                 is skipped",
                port.name
            ));
            continue;
        }
        match by_number.entry(port.number) {
            Entry::Vacant(slot) => {
                slot.insert(port);
            }
            Entry::Occupied(_) => warnings.push(&format!(
                "expose_ports[{position}]: number {} is already exposed by this job; the \
                 entry is skipped",
                port.number
            )),
        }
    }
    Some(by_number.into_values().collect())
}

/// The valid labels of a job's `expose_labels`, a mapping of label key to value; none when
/// it is absent or not a mapping. Keys under the director's `bosh.io/` are refused: those
/// labels say what the director reports, and a rule selecting by them must be able to trust
/// them.
fn parse_expose_labels(expose_labels: Option<&Value>, warnings: &mut JobWarnings) -> Labels {
    let entries = match expose_labels {
        None | Some(Value::Null) => return Labels::new(),
        Some(Value::Mapping(entries)) => entries,
        Some(other) => {
            warnings.push(&format!(
                "expose_labels must be a mapping of label to value, found {}; the service has \
                 no labels of its own",
                kind(other)
            ));
            return Labels::new();
        }
    };
    let mut labels = Labels::new();
    for (key, value) in entries {
        match parse_label(key, value) {
            Ok((key, value)) => {
                labels.insert(key, value);
            }
            Err(problem) => {
                warnings.push(&format!("expose_labels: {problem}; the label is skipped"))
            }
        }
    }
    labels
}

/// One `expose_labels` entry, or what is wrong with it.
fn parse_label(key: &Value, value: &Value) -> Result<(String, String), String> {
    let Value::String(key) = key else {
        return Err(format!("a key must be a string, found {}", kind(key)));
    };
    labels::check_key(key)?;
    if labels::is_reserved(key) {
        return Err(format!(
            "key {:?} is under {}/, whose labels only the director gives",
            clip(key),
            labels::DIRECTOR_DOMAIN
        ));
    }
    // YAML reads `version: 1.10` as the number 1.1 and `canary: true` as a boolean: turning
    // them back into text could silently change the value the author meant.
    let Value::String(value) = value else {
        return Err(format!(
            "the value of key {:?} must be a string, found {}; quote it",
            clip(key),
            kind(value)
        ));
    };
    labels::check_value(value).map_err(|problem| format!("key {:?}: {problem}", clip(key)))?;
    Ok((key.clone(), value.clone()))
}

/// Whether a job's key is absent or null: not written, as far as the job is concerned.
fn is_absent(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

/// One `expose_ports` entry, or what is wrong with it.
fn parse_port(entry: &Value) -> Result<ServicePort, String> {
    if !entry.is_mapping() {
        return Err(format!("must be a mapping, found {}", kind(entry)));
    }
    let name = match entry.get("name") {
        Some(Value::String(name)) => name.to_lowercase(),
        None | Some(Value::Null) => return Err("`name` is missing".into()),
        Some(other) => return Err(format!("`name` must be a string, found {}", kind(other))),
    };
    if !is_dns_label(&name) {
        return Err(format!(
            "name {:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending \
             with '-')",
            clip(&name)
        ));
    }
    let number = match entry.get("number") {
        None | Some(Value::Null) => return Err("`number` is missing".into()),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("number {n} is not in 1..65535"))?,
        Some(Value::String(s)) => {
            return Err(format!(
                "number must be an integer in 1..65535, found the string {:?}",
                clip(s)
            ))
        }
        Some(other) => {
            return Err(format!(
                "number must be an integer in 1..65535, found {}",
                kind(other)
            ))
        }
    };
    let protocol = match entry.get("protocol") {
        None | Some(Value::Null) => infer_protocol(&name),
        Some(Value::String(p)) => match p.to_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            _ => {
                return Err(format!(
                    "protocol {:?} is not one of tcp, http, http2, grpc",
                    clip(p)
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "protocol must be one of tcp, http, http2, grpc, found {}",
                kind(other)
            ))
        }
    };
    Ok(ServicePort {
        name,
        number,
        protocol,
    })
}

/// A YAML node's kind, for error messages (never its content, which may be large).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::testing::labels;

    fn port(name: &str, number: u16, protocol: Protocol) -> ServicePort {
        ServicePort {
            name: name.into(),
            number,
            protocol,
        }
    }

    fn key(deployment: &str, group: &str, job: &str) -> ServiceKey {
        ServiceKey {
            deployment: deployment.into(),
            instance_group: group.into(),
            job: job.into(),
        }
    }

    const SAMPLE: &str = r#"
name: sample-deployment
# a comment
releases: [{name: boshy-istio, version: latest}]
instance_groups:
- name: apricot
  instances: 3
  jobs:
  - name: example-httpbin
    release: boshy-istio
    expose_ports:
    - name: http
      number: 9001
- name: banana
  instances: 2
  jobs:
  - name: example-httpbin
    release: boshy-istio
    expose_ports:
    - name: other-http     # name decides: http
      number: 9002
      protocol: http
    - &grpc_port
      name: grpc-api
      number: 9000
  - name: sidecar
    release: boshy-istio
    properties: {password: ((sidecar_password))}
- name: cherry
  instances: 1
"#;

    #[test]
    fn parses_the_sample_manifest() {
        let parsed = parse("sample-deployment", SAMPLE).unwrap();
        assert_eq!(
            parsed.instance_groups,
            ["apricot", "banana", "cherry"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(
            parsed.services,
            vec![
                ServiceDecl {
                    key: key("sample-deployment", "apricot", "example-httpbin"),
                    dns_name: "example-httpbin.apricot.sample-deployment".into(),
                    ports: vec![port("http", 9001, Protocol::Http)],
                    labels: Labels::new(),
                },
                ServiceDecl {
                    key: key("sample-deployment", "banana", "example-httpbin"),
                    dns_name: "example-httpbin.banana.sample-deployment".into(),
                    ports: vec![
                        port("grpc-api", 9000, Protocol::Grpc),
                        port("other-http", 9002, Protocol::Http),
                    ],
                    labels: Labels::new(),
                },
            ]
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn protocol_inference_follows_istio() {
        for (name, expected) in [
            ("http", Protocol::Http),
            ("http-web", Protocol::Http),
            ("http2", Protocol::Http2),
            ("grpc", Protocol::Grpc),
            ("grpc-api", Protocol::Grpc),
            ("https", Protocol::Tcp),
            ("httpx", Protocol::Tcp),
            ("http2-x", Protocol::Tcp),
            ("web", Protocol::Tcp),
            ("tcp", Protocol::Tcp),
        ] {
            assert_eq!(infer_protocol(name), expected, "{name}");
        }
    }

    #[test]
    fn explicit_protocol_wins_and_is_case_insensitive() {
        let yaml = r#"
instance_groups:
- name: g
  jobs:
  - name: j
    expose_ports:
    - {name: http, number: 1, protocol: TCP}
    - {name: db, number: 2, protocol: grpc}
    - {name: h2, number: 3, protocol: http2}
"#;
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(
            parsed.services[0].ports,
            vec![
                port("http", 1, Protocol::Tcp),
                port("db", 2, Protocol::Grpc),
                port("h2", 3, Protocol::Http2),
            ]
        );
    }

    #[test]
    fn anchors_aliases_and_merge_keys_resolve() {
        let yaml = r#"
port_defaults: &defaults
  protocol: http
instance_groups:
- name: a
  jobs:
  - name: web
    expose_ports: &ports
    - <<: *defaults
      name: web
      number: 8080
- name: b
  jobs:
  - name: web
    expose_ports: *ports
"#;
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(parsed.services.len(), 2);
        for service in &parsed.services {
            assert_eq!(service.ports, vec![port("web", 8080, Protocol::Http)]);
        }
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn canonical_names_follow_bosh() {
        // (BOSH name, canonical form, whether that is a DNS label)
        for (name, canonical, valid) in [
            ("diego_cell", "diego-cell", true),
            ("Diego_Cell", "diego-cell", true),
            ("UAA", "uaa", true),
            ("web-2", "web-2", true),
            ("2web", "2web", true),
            ("0", "0", true),
            ("bad.job", "badjob", true),
            ("my_dep.v2", "my-depv2", true),
            ("a b\tc!@#$%", "abc", true),
            ("a__b", "a--b", true),
            ("ünïcödé", "ncd", true),
            ("_cell", "-cell", false),
            ("cell_", "cell-", false),
            ("-cell", "-cell", false),
            ("_", "-", false),
            ("._.", "-", false),
            ("é_x", "-x", false),
            ("...", "", false),
            ("", "", false),
        ] {
            assert_eq!(canonicalize(name), canonical, "{name:?}");
            assert_eq!(is_dns_label(canonical), valid, "{name:?}");
        }
        // Length counts after canonicalizing: dropped characters do not count, `_` does.
        let a62 = "a".repeat(62);
        assert!(is_dns_label(&canonicalize(&format!("{a62}.!b"))));
        assert!(!is_dns_label(&canonicalize(&format!("{a62}_b"))));
    }

    #[test]
    fn names_keep_their_bosh_spelling_and_get_a_canonical_dns_name() {
        let yaml = r#"
instance_groups:
- name: Diego_Cell
  jobs:
  - name: Rep.Server
    expose_ports: [{name: HTTP, number: 80}]
- name: diego_cell
  jobs:
  - name: rep
    expose_ports: [{name: http, number: 1801}]
"#;
        let parsed = parse("My_CF", yaml).unwrap();
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(
            parsed.instance_groups,
            ["Diego_Cell", "diego_cell"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        let names: Vec<(&ServiceKey, &str)> = parsed
            .services
            .iter()
            .map(|s| (&s.key, s.dns_name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    &key("My_CF", "Diego_Cell", "Rep.Server"),
                    "repserver.diego-cell.my-cf"
                ),
                (&key("My_CF", "diego_cell", "rep"), "rep.diego-cell.my-cf"),
            ]
        );
        assert_eq!(
            parsed.services[0].ports,
            vec![port("http", 80, Protocol::Http)]
        );
    }

    /// Parses a manifest with one job `j` in group `g` of deployment `d` whose
    /// `expose_ports` is `ports_yaml`.
    fn parse_job(ports_yaml: &str) -> ParsedManifest {
        let yaml = format!(
            "instance_groups:\n- name: g\n  jobs:\n  - name: j\n    expose_ports: {ports_yaml}\n  - name: ok\n    expose_ports: [{{name: p, number: 1}}]\n"
        );
        parse("d", &yaml).unwrap()
    }

    #[test]
    fn invalid_entries_are_skipped_with_one_warning_each() {
        let parsed = parse_job(
            r#"
    - {name: good, number: 80}
    - {number: 81}
    - {name: no-number}
    - {name: zero, number: 0}
    - {name: big, number: 65536}
    - {name: negative, number: -1}
    - {name: float, number: 80.5}
    - {name: var, number: "((httpbin_port))"}
    - {name: quoted, number: "82"}
    - {name: good, number: 83}
    - {name: dup-number, number: 80}
    - {name: bad_label, number: 84}
    - {name: -dash, number: 85}
    - {name: proto, number: 86, protocol: udp}
    - {name: proto-type, number: 87, protocol: 1}
    - {name: 7, number: 88}
    - just-a-string
    - [1, 2]
    - null
    - {name: last, number: 65535}
"#,
        );
        let ports = &parsed.services[0].ports;
        assert_eq!(parsed.services[0].key, key("d", "g", "j"));
        assert_eq!(
            ports,
            &vec![
                port("good", 80, Protocol::Tcp),
                port("last", 65535, Protocol::Tcp)
            ]
        );
        assert_eq!(parsed.warnings.len(), 18, "{:#?}", parsed.warnings);
        for warning in &parsed.warnings {
            assert!(
                warning.starts_with(r#"deployment "d" instance group "g" job "j": expose_ports["#),
                "{warning}"
            );
        }
        let all = parsed.warnings.join("\n");
        for expected in [
            "`name` is missing",
            "`number` is missing",
            "number 0 is not in 1..65535",
            "number 65536 is not in 1..65535",
            "found the string \"((httpbin_port))\"",
            "name \"good\" is already used",
            "number 80 is already exposed",
            "\"bad_label\" is not a DNS label",
            "protocol \"udp\" is not one of",
            "must be a mapping, found a string",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        // The other job of the group is unaffected.
        assert_eq!(parsed.services[1].key, key("d", "g", "ok"));
    }

    #[test]
    fn expose_ports_not_a_list_skips_the_job_only() {
        for garbage in ["{name: p, number: 1}", "9002", "\"((ports))\"", "true"] {
            let parsed = parse_job(garbage);
            assert_eq!(parsed.services.len(), 1, "{garbage}");
            assert_eq!(parsed.services[0].key.job, "ok");
            assert_eq!(parsed.warnings.len(), 1, "{garbage}: {:?}", parsed.warnings);
            assert!(
                parsed.warnings[0].contains(r#"job "j": expose_ports must be a list"#),
                "{}",
                parsed.warnings[0]
            );
        }
    }

    #[test]
    fn empty_or_absent_expose_ports_is_no_service_and_no_warning() {
        for ports in ["[]", "null", "~"] {
            let parsed = parse_job(ports);
            assert_eq!(parsed.services.len(), 1, "{ports}");
            assert!(parsed.warnings.is_empty(), "{ports}: {:?}", parsed.warnings);
        }
    }

    #[test]
    fn names_without_a_dns_form_skip_the_service() {
        let yaml = r#"
instance_groups:
- name: _cell
  jobs:
  - name: rep
    expose_ports: [{name: p, number: 1}]
- name: good
  jobs:
  - name: job_
    expose_ports: [{name: p, number: 1}]
  - name: "!!!"
    expose_ports: [{name: p, number: 1}]
  - name: fine
    expose_ports: [{name: p, number: 1}]
"#;
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.services[0].key, key("d", "good", "fine"));
        assert!(parsed.instance_groups.contains("_cell"));
        assert_eq!(
            parsed.warnings,
            vec![
                "deployment \"d\" instance group \"_cell\" job \"rep\": the instance group name \
                 has no DNS form: canonicalized (lower-case, '_' as '-', other characters than \
                 a-z, 0-9 and '-' dropped) it is \"-cell\", not a DNS label (1-63 characters, not \
                 starting or ending with '-'); the service is skipped",
                "deployment \"d\" instance group \"good\" job \"job_\": the job name has no DNS \
                 form: canonicalized (lower-case, '_' as '-', other characters than a-z, 0-9 and \
                 '-' dropped) it is \"job-\", not a DNS label (1-63 characters, not starting or \
                 ending with '-'); the service is skipped",
                "deployment \"d\" instance group \"good\" job \"!!!\": the job name has no DNS \
                 form: canonicalized (lower-case, '_' as '-', other characters than a-z, 0-9 and \
                 '-' dropped) it is \"\", not a DNS label (1-63 characters, not starting or ending \
                 with '-'); the service is skipped",
            ]
        );

        let parsed = parse("_d", yaml).unwrap();
        assert!(parsed.services.is_empty());
        assert_eq!(parsed.instance_groups.len(), 2);
        assert_eq!(parsed.warnings.len(), 4, "{:?}", parsed.warnings);
        assert!(
            parsed.warnings[3].ends_with(
                "job \"fine\": the deployment name has no DNS form: \
                 canonicalized (lower-case, '_' as '-', other characters than a-z, 0-9 and '-' \
                 dropped) it is \"-d\", not a DNS label (1-63 characters, not starting or ending \
                 with '-'); the service is skipped"
            ),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn malformed_groups_and_jobs_are_skipped_with_a_warning() {
        let yaml = r#"
instance_groups:
- name: a
  jobs: {not: a list}
- jobs: []
- 42
- name: b
  jobs:
  - release: no-name
  - name: j
    expose_ports: [{name: p, number: 1}]
  - name: j
    expose_ports: [{name: q, number: 2}]
- name: b
  jobs:
  - name: k
    expose_ports: [{name: p, number: 1}]
"#;
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(
            parsed.instance_groups,
            ["a", "b"].map(String::from).into_iter().collect()
        );
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.services[0].key, key("d", "b", "j"));
        assert_eq!(parsed.services[0].ports, vec![port("p", 1, Protocol::Tcp)]);
        assert_eq!(parsed.warnings.len(), 6, "{:#?}", parsed.warnings);
    }

    #[test]
    fn structural_errors_name_the_deployment() {
        let err = parse("dep-x", "instance_groups: [\n  - name: a\n  - : :\n").unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { .. }));
        let msg = err.to_string();
        assert!(msg.contains("\"dep-x\"") && msg.contains("line"), "{msg}");

        let err = parse("dep-x", "- a\n- b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "deployment \"dep-x\": manifest top level must be a mapping, found a list"
        );
        assert!(matches!(
            parse("d", "").unwrap_err(),
            ManifestError::NotAMapping { .. }
        ));

        let err = parse("dep-x", "instance_groups: {a: 1}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "deployment \"dep-x\": manifest `instance_groups` must be a list, found a mapping"
        );
    }

    #[test]
    fn manifest_without_instance_groups_is_empty() {
        let parsed = parse("d", "name: d\nreleases: []\n").unwrap();
        assert_eq!(parsed, ParsedManifest::default());
    }

    #[test]
    fn garbage_never_panics() {
        let inputs = [
            "\0\u{1}\u{2}",
            "{{{{",
            "&a [*a]",
            "*undefined",
            "instance_groups: [[[[]]]]",
            "instance_groups: [{name: [1], jobs: [{name: {x: 1}, expose_ports: [{name: x, number: 99999999999999999999}]}]}]",
            "instance_groups: [{name: g, jobs: [{name: j, expose_ports: [{name: x, number: !!str 5}]}]}]",
            "instance_groups: [{name: g, jobs: [{name: j, expose_ports: [{name: x, number: !custom 5}]}]}]",
            "!tagged {instance_groups: []}",
            "---\na: 1\n---\nb: 2\n",
            "instance_groups: [{name: g, jobs: [{name: j, expose_ports: [{<<: 5}]}]}]",
        ];
        for input in inputs {
            // Either result is fine; what matters is no panic and a message if it is an error.
            if let Err(err) = parse("d", input) {
                assert!(err.to_string().starts_with("deployment \"d\""), "{err}");
            }
        }
        let long_name = "a".repeat(64);
        let parsed = parse_job(&format!("[{{name: {long_name}, number: 1}}]"));
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.warnings.len(), 1);
    }

    #[test]
    fn a_bad_merge_key_elsewhere_does_not_hide_the_services() {
        let yaml = "properties: {<<: 1}\ninstance_groups:\n- name: g\n  jobs:\n  \
                    - {name: j, expose_ports: [{name: http, number: 80}]}\n";
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(parsed.services.len(), 1);
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(
            parsed.warnings[0].contains("merge key"),
            "{:?}",
            parsed.warnings
        );
    }

    /// Parses a manifest with job `j` (exposing port 1) in group `g` of deployment `d` whose
    /// `expose_labels` is `labels_yaml`, beside job `ok` without labels.
    fn parse_labels(labels_yaml: &str) -> ParsedManifest {
        let yaml = format!(
            "instance_groups:\n- name: g\n  jobs:\n  - name: j\n    expose_ports: [{{name: p, number: 1}}]\n    expose_labels: {labels_yaml}\n  - name: ok\n    expose_ports: [{{name: p, number: 1}}]\n"
        );
        parse("d", &yaml).unwrap()
    }

    #[test]
    fn expose_labels_are_the_services_labels() {
        let parsed = parse_labels(
            r#"
      version: v2
      app.kubernetes.io/name: reviews
      Canary_Track.1: "1.10"
      empty: ""
"#,
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(
            parsed.services[0].labels,
            labels([
                ("Canary_Track.1", "1.10"),
                ("app.kubernetes.io/name", "reviews"),
                ("empty", ""),
                ("version", "v2"),
            ])
        );
        assert!(parsed.services[1].labels.is_empty());
    }

    #[test]
    fn expose_labels_can_be_shared_with_an_anchor() {
        let yaml = r#"
instance_groups:
- name: a
  jobs:
  - name: web
    expose_ports: [{name: http, number: 80}]
    expose_labels: &team {team: payments}
- name: b
  jobs:
  - name: web
    expose_ports: [{name: http, number: 80}]
    expose_labels:
      <<: *team
      version: v2
"#;
        let parsed = parse("d", yaml).unwrap();
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(parsed.services[0].labels, labels([("team", "payments")]));
        assert_eq!(
            parsed.services[1].labels,
            labels([("team", "payments"), ("version", "v2")])
        );
    }

    #[test]
    fn bad_labels_are_skipped_with_one_warning_each() {
        let parsed = parse_labels(
            r#"
      good: "yes"
      -dash: v
      Bad.Prefix/x: v
      example.com/: v
      two words: v
      ? aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
      : v
      spaces: two words
      long: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv
      unresolved: ((version))
      number: 1.10
      boolean: true
      nothing:
      nested: {a: b}
      7: seven
      bosh.io/az: fake
      zone.bosh.io/x: v
      also-good: v1
"#,
        );
        assert_eq!(parsed.services.len(), 2, "the service stays");
        assert_eq!(
            parsed.services[0].labels,
            labels([("also-good", "v1"), ("good", "yes")])
        );
        assert_eq!(parsed.warnings.len(), 15, "{:#?}", parsed.warnings);
        for warning in &parsed.warnings {
            assert!(
                warning
                    .starts_with(r#"deployment "d" instance group "g" job "j": expose_labels: "#)
                    && warning.ends_with("; the label is skipped"),
                "{warning}"
            );
        }
        let all = parsed.warnings.join("\n");
        for expected in [
            r#"key "-dash": the name is not 1-63 characters"#,
            r#"key "Bad.Prefix/x": the prefix before '/' is not a DNS subdomain"#,
            r#"key "example.com/": the name after '/' is not"#,
            r#"key "two words": the name is not"#,
            r#"key "spaces": value "two words" is not empty nor 1-63 characters"#,
            r#"key "unresolved": value "((version))" is not"#,
            r#"the value of key "number" must be a string, found a number; quote it"#,
            r#"the value of key "boolean" must be a string, found a boolean"#,
            r#"the value of key "nothing" must be a string, found null"#,
            r#"the value of key "nested" must be a string, found a mapping"#,
            "a key must be a string, found a number",
            r#"key "bosh.io/az" is under bosh.io/, whose labels only the director gives"#,
            r#"key "zone.bosh.io/x" is under bosh.io/"#,
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }

    #[test]
    fn expose_labels_not_a_mapping_leaves_the_service_without_labels() {
        for garbage in [
            "[version, v2]",
            "[{version: v2}]",
            "v2",
            "42",
            "\"((labels))\"",
        ] {
            let parsed = parse_labels(garbage);
            assert_eq!(parsed.services.len(), 2, "{garbage}");
            assert!(parsed.services[0].labels.is_empty(), "{garbage}");
            assert_eq!(parsed.warnings.len(), 1, "{garbage}: {:?}", parsed.warnings);
            assert!(
                parsed.warnings[0].starts_with(
                    r#"deployment "d" instance group "g" job "j": expose_labels must be a mapping"#
                ),
                "{}",
                parsed.warnings[0]
            );
        }
        for nothing in ["null", "~", "{}"] {
            let parsed = parse_labels(nothing);
            assert!(parsed.services[0].labels.is_empty(), "{nothing}");
            assert!(
                parsed.warnings.is_empty(),
                "{nothing}: {:?}",
                parsed.warnings
            );
        }
    }

    #[test]
    fn expose_labels_without_expose_ports_is_warned() {
        let yaml = "instance_groups:\n- name: g\n  jobs:\n  - {name: j, expose_labels: {version: v2}}\n  - {name: k, expose_labels: null}\n";
        let parsed = parse("d", yaml).unwrap();
        assert!(parsed.services.is_empty());
        assert_eq!(
            parsed.warnings,
            [
                "deployment \"d\" instance group \"g\" job \"j\": expose_labels without \
              expose_ports: the job is no service, so its labels apply to nothing"
            ]
        );
    }
}
