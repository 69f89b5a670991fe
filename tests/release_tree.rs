//! The repository as a BOSH release, checked the way `bosh create-release` and
//! `bosh int --var-errs` would check it (neither CLI can run here):
//!
//! - the release tree: every job's spec, templates, monit and packages; every package's spec,
//!   packaging, dependencies and files (from config/blobs.yml or src/); config/final.yml;
//!   config/blobs.yml (and the local blobs, when present, against it); releases/ index and
//!   manifests; .gitignore for what the CLI writes.
//! - the manifests in manifests/: each file (manifest, ops-file, vars file) is one YAML
//!   document, as the bosh CLI reads only the first; every ops-file applies to the manifest it names,
//!   every `((variable))` resolves from `variables:` (generated) or manifests/example-vars.yml
//!   (any other is an error, as with --var-errs), and the jobs, properties and links they name
//!   exist in the job specs: the runtime config's addon consumes `bosh-pilot` from deployment
//!   bosh-istio, which shares it, and excludes that deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha256};

use boshy_test_support::{jobs, manifests};

use manifests::{interpolate, release_jobs, yaml, MANIFESTS, RELEASE_NAME};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|v| v.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn job_spec(job: &str) -> serde_yaml::Value {
    jobs::job_spec(&root(), job)
}

/// `*` in a package's `files` glob matches within one path segment, as in the bosh CLI.
fn glob_matches(pattern: &str, path: &str) -> bool {
    fn matches(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                matches(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && matches(p, &s[1..]))
            }
            (Some(a), Some(b)) if a == b => matches(&p[1..], &s[1..]),
            _ => false,
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn final_yml_names_the_release_and_a_blobstore() {
    let final_yml = yaml(&root().join("config/final.yml"));
    assert_eq!(final_yml["name"], RELEASE_NAME);
    assert!(
        final_yml["blobstore"]["provider"].as_str().is_some(),
        "config/final.yml needs blobstore.provider for final releases"
    );
}

#[test]
fn every_job_is_complete() {
    let packages = names_in(&root().join("packages"));
    let jobs = names_in(&root().join("jobs"));
    assert_eq!(
        jobs,
        [
            "bookinfo",
            "bosh-envoy",
            "bosh-pilot",
            "example-httpbin",
            "smoke-tests",
            "virtual-ip-agent"
        ]
        .map(String::from)
        .into(),
        "the jobs docs/ARCHITECTURE.md names"
    );
    for job in &jobs {
        let dir = root().join("jobs").join(job);
        let spec = job_spec(job);
        assert_eq!(
            spec["name"].as_str(),
            Some(job.as_str()),
            "jobs/{job}/spec: name"
        );
        assert!(dir.join("monit").is_file(), "jobs/{job}/monit is missing");
        let templates = spec["templates"].as_mapping().expect("templates");
        let listed: BTreeSet<String> = templates
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        let on_disk = names_in(&dir.join("templates"));
        assert_eq!(
            listed, on_disk,
            "jobs/{job}: the spec's templates and jobs/{job}/templates/ differ"
        );
        let destinations: BTreeSet<&str> =
            templates.values().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(
            destinations.len(),
            templates.len(),
            "jobs/{job}: two templates render to one file"
        );
        for package in strings(&spec["packages"]) {
            assert!(
                packages.contains(&package),
                "jobs/{job} needs package {package}, which packages/ lacks"
            );
        }
        for link in spec["provides"]
            .as_sequence()
            .into_iter()
            .chain(spec["consumes"].as_sequence())
            .flatten()
        {
            assert!(
                link["name"].as_str().is_some() && link["type"].as_str().is_some(),
                "jobs/{job}: a link without name or type: {link:?}"
            );
        }
        for (name, property) in spec["properties"].as_mapping().into_iter().flatten() {
            assert!(
                property["description"].as_str().is_some(),
                "jobs/{job}: property {name:?} has no description"
            );
        }
    }
}

#[test]
fn every_package_is_complete_and_its_files_exist() {
    let blobs = yaml(&root().join("config/blobs.yml"));
    let blob_paths: Vec<String> = blobs
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str().unwrap().to_string())
        .collect();
    let mut src_files = Vec::new();
    files_under(&root().join("src"), "", &mut src_files);
    let packages = names_in(&root().join("packages"));
    assert_eq!(
        packages,
        ["boshy", "envoy"].map(String::from).into(),
        "the packages docs/ARCHITECTURE.md names"
    );
    for package in &packages {
        let dir = root().join("packages").join(package);
        let spec = yaml(&dir.join("spec"));
        assert_eq!(spec["name"].as_str(), Some(package.as_str()));
        assert!(
            dir.join("packaging").is_file(),
            "packages/{package}/packaging is missing"
        );
        for dependency in strings(&spec["dependencies"]) {
            assert!(
                packages.contains(&dependency),
                "packages/{package}: no package {dependency}"
            );
        }
        let files = strings(&spec["files"]);
        assert!(!files.is_empty(), "packages/{package}: no files");
        for pattern in files {
            assert!(
                blob_paths
                    .iter()
                    .chain(&src_files)
                    .any(|p| glob_matches(&pattern, p)),
                "packages/{package}: `{pattern}` matches nothing in config/blobs.yml or src/ \
                 (run scripts/build-blobs)"
            );
            // The packaging scripts install each blob glob to one file: one blob per pattern.
            let blobs: Vec<&String> = blob_paths
                .iter()
                .filter(|p| glob_matches(&pattern, p))
                .collect();
            assert!(
                blobs.len() <= 1,
                "packages/{package}: `{pattern}` matches several blobs: {blobs:?}"
            );
        }
        let packaging = std::fs::read_to_string(dir.join("packaging")).unwrap();
        for network_tool in ["curl ", "wget ", "pip ", "cargo ", "git clone"] {
            assert!(
                !packaging.contains(network_tool),
                "packages/{package}/packaging uses `{network_tool}`: packaging runs without network"
            );
        }
    }
}

#[test]
fn blobs_yml_is_well_formed_and_matches_local_blobs() {
    let blobs = yaml(&root().join("config/blobs.yml"));
    let entries = blobs.as_mapping().expect("config/blobs.yml is a map");
    assert!(
        !entries.is_empty(),
        "config/blobs.yml lists no blob: run scripts/build-blobs"
    );
    for (path, entry) in entries {
        let path = path.as_str().expect("blob path");
        let size = entry["size"]
            .as_u64()
            .unwrap_or_else(|| panic!("{path}: size"));
        let sha = entry["sha"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: sha"));
        let hex = sha.strip_prefix("sha256:").unwrap_or(sha);
        let valid = (hex.len() == 64 && sha.starts_with("sha256:")) || hex.len() == 40;
        assert!(
            valid && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{path}: sha `{sha}` is neither sha1 nor sha256:<hex>"
        );
        if let Some(object_id) = entry.get("object_id") {
            assert!(object_id.as_str().is_some(), "{path}: object_id");
        }
        // The blob itself is not in git; when scripts/build-blobs made it here, it must be the
        // one recorded (bosh create-release refuses a mismatch).
        let local = root().join("blobs").join(path);
        if let Ok(bytes) = std::fs::read(&local) {
            assert_eq!(
                bytes.len() as u64,
                size,
                "{}: size differs from config/blobs.yml",
                local.display()
            );
            if sha.starts_with("sha256:") {
                let digest = Sha256::digest(&bytes);
                let digest: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(
                    digest,
                    hex,
                    "{}: sha256 differs from config/blobs.yml",
                    local.display()
                );
            }
        }
    }
}

#[test]
fn release_index_lists_manifests_that_match_the_tree() {
    let dir = root().join("releases").join(RELEASE_NAME);
    let index = yaml(&dir.join("index.yml"));
    assert_eq!(index["format-version"], "2");
    let builds = index["builds"].as_mapping().expect("builds is a map");
    let jobs = names_in(&root().join("jobs"));
    let packages = names_in(&root().join("packages"));
    for (id, build) in builds {
        let version = build["version"]
            .as_str()
            .unwrap_or_else(|| panic!("build {id:?}: version"));
        let manifest = yaml(&dir.join(format!("{RELEASE_NAME}-{version}.yml")));
        assert_eq!(manifest["name"], RELEASE_NAME);
        assert_eq!(manifest["version"].as_str(), Some(version));
        let listed = |key: &str| -> BTreeSet<String> {
            manifest[key]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(listed("jobs"), jobs, "release {version}: jobs");
        assert_eq!(listed("packages"), packages, "release {version}: packages");
    }
    let manifests: BTreeSet<String> = names_in(&dir)
        .into_iter()
        .filter(|n| n != "index.yml")
        .collect();
    assert_eq!(
        manifests.len(),
        builds.len(),
        "releases/{RELEASE_NAME}: a release manifest the index does not list, or the reverse"
    );
}

#[test]
fn gitignore_covers_what_the_bosh_cli_writes() {
    let gitignore = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    for entry in [
        "/blobs/",
        "/.blobs/",
        "/dev_releases/",
        "/.dev_builds/",
        "/config/private.yml",
    ] {
        assert!(
            gitignore.lines().any(|l| l.trim() == entry),
            ".gitignore lacks {entry}"
        );
    }
}

// ---- manifests: bosh int emulation ------------------------------------------------------

/// The document the bosh CLI reads from a file it is handed (`bosh deploy`,
/// `update-runtime-config`, `update-config`, `-o` ops-files, `-l` vars files): like `bosh int`,
/// it keeps the first YAML document of the file and silently drops every other, so a second
/// document is an error here.
fn the_only_document(text: &str) -> Result<Value, String> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let first = documents.next().ok_or("no YAML document")?;
    let first = Value::deserialize(first).map_err(|e| format!("not YAML: {e}"))?;
    let dropped = documents.count();
    if dropped > 0 {
        return Err(format!(
            "{} YAML documents: the bosh CLI (like `bosh int`) would keep the first and drop \
             everything after the first document",
            dropped + 1
        ));
    }
    Ok(first)
}

#[test]
fn every_file_for_the_bosh_cli_is_one_yaml_document() {
    let mut files = Vec::new();
    files_under(&root().join("manifests"), "manifests/", &mut files);
    files.retain(|f| f.ends_with(".yml") || f.ends_with(".yaml"));
    assert!(
        files.iter().any(|f| f.starts_with("manifests/ops/")),
        "manifests/ has no ops-files: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        if let Err(e) = the_only_document(&text) {
            panic!("{file}: {e}");
        }
    }
}

#[test]
fn a_second_yaml_document_is_refused() {
    assert_eq!(
        the_only_document("---\n# one document\na: 1\n").unwrap()["a"],
        1
    );
    for two in [
        "a: 1\n---\nb: 2\n",
        "---\n- type: remove\n  path: /x\n---\n- type: remove\n  path: /y\n",
    ] {
        let error = the_only_document(two).unwrap_err();
        assert!(
            error.contains("2 YAML documents")
                && error.contains("drop everything after the first document"),
            "{error}"
        );
    }
}

/// A subset of go-patch (what `bosh int -o` applies): `replace` and `remove`, with path
/// segments `key`, `name=value`, an index, `-` (append) and `?` (create what is missing).
fn apply_op(doc: &mut Value, op: &Value, origin: &str) -> Result<(), String> {
    let kind = op["type"]
        .as_str()
        .ok_or(format!("{origin}: op without type"))?;
    let path = op["path"]
        .as_str()
        .ok_or(format!("{origin}: op without path"))?;
    let segments: Vec<&str> = path
        .strip_prefix('/')
        .ok_or(format!("{origin}: path `{path}` must start with /"))?
        .split('/')
        .collect();
    let mut optional = false;
    let mut node = doc;
    for (i, raw) in segments.iter().enumerate() {
        let last = i == segments.len() - 1;
        let segment = raw.strip_suffix('?').unwrap_or(raw);
        optional |= raw.ends_with('?');
        let missing = || format!("{origin}: `{path}`: `{raw}` not found");
        if let Some((key, value)) = segment.split_once('=') {
            let items = node.as_sequence_mut().ok_or_else(missing)?;
            let position = items
                .iter()
                .position(|item| item[key].as_str() == Some(value));
            if last && kind == "remove" {
                items.remove(position.ok_or_else(missing)?);
                return Ok(());
            }
            let position = match position {
                Some(p) => p,
                None if optional => {
                    let mut entry = Mapping::new();
                    entry.insert(key.into(), value.into());
                    items.push(Value::Mapping(entry));
                    items.len() - 1
                }
                None => return Err(missing()),
            };
            node = &mut items[position];
        } else if segment == "-" || segment.parse::<usize>().is_ok() {
            let items = node.as_sequence_mut().ok_or_else(missing)?;
            let position = match segment.parse::<usize>() {
                Ok(p) if p < items.len() => p,
                Ok(_) => return Err(missing()),
                Err(_) => {
                    items.push(Value::Null);
                    items.len() - 1
                }
            };
            if last && kind == "remove" {
                items.remove(position);
                return Ok(());
            }
            node = &mut items[position];
        } else {
            let map = node.as_mapping_mut().ok_or_else(missing)?;
            if last && kind == "remove" {
                map.remove(segment).ok_or_else(missing)?;
                return Ok(());
            }
            if !map.contains_key(segment) {
                if !(optional || last) {
                    return Err(missing());
                }
                map.insert(segment.into(), Value::Mapping(Mapping::new()));
            }
            node = map.get_mut(segment).unwrap();
        }
    }
    match kind {
        "replace" => {
            *node = op["value"].clone();
            Ok(())
        }
        other => Err(format!("{origin}: op type `{other}` is not supported here")),
    }
}

/// `bosh int --var-errs --vars-store=<tmp> -l manifests/example-vars.yml [-o op]... manifest`.
fn bosh_int(manifest: &str, ops: &[&str]) -> Value {
    let manifests = root().join("manifests");
    let mut doc = yaml(&manifests.join(manifest));
    for op_file in ops {
        let ops = yaml(&manifests.join(op_file));
        for op in ops.as_sequence().expect("an ops-file is a list") {
            apply_op(&mut doc, op, op_file).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut unknown = BTreeSet::new();
    let resolved = interpolate(&doc, &manifests::variables(&doc), &mut unknown);
    assert!(
        unknown.is_empty(),
        "{manifest} with {ops:?}: undefined variables {unknown:?} (not in `variables:` nor in \
         manifests/example-vars.yml)"
    );
    resolved
}

/// Which manifest an ops-file is for: its `# Applies to: <file>` line.
fn ops_files() -> Vec<(String, String)> {
    let dir = root().join("manifests/ops");
    names_in(&dir)
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let target = text
                .lines()
                .find_map(|l| l.strip_prefix("# Applies to: "))
                .unwrap_or_else(|| panic!("ops/{name}: no `# Applies to: <manifest>` line"))
                .trim()
                .to_string();
            (format!("ops/{name}"), target)
        })
        .collect()
}

/// Every job of this release a manifest places (instance groups or addons), checked against
/// its spec: properties declared, links consumed and provided by name.
fn check_jobs(manifest: &Value, origin: &str) -> Vec<(String, Value)> {
    let mut placed = Vec::new();
    for (_, job) in release_jobs(manifest) {
        let name = job["name"].as_str().unwrap();
        let spec_path = root().join("jobs").join(name).join("spec");
        assert!(
            spec_path.is_file(),
            "{origin}: job {name} is not in this release"
        );
        let spec = job_spec(name);
        let declared: BTreeSet<String> = spec["properties"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str().unwrap().to_string())
            .collect();
        check_properties(
            &job["properties"],
            "",
            &declared,
            &format!("{origin}: {name}"),
        );
        for (direction, key) in [("consumes", "consumes"), ("provides", "provides")] {
            for (link, _) in job[key].as_mapping().into_iter().flatten() {
                let link = link.as_str().unwrap();
                assert!(
                    spec[key]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|l| l["name"] == link),
                    "{origin}: job {name} {direction} link {link}, which its spec does not declare"
                );
            }
        }
        placed.push((name.to_string(), job.clone()));
    }
    placed
}

fn check_properties(value: &Value, prefix: &str, declared: &BTreeSet<String>, origin: &str) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    for (key, value) in map {
        let name = format!("{prefix}{}", key.as_str().unwrap());
        if declared.contains(&name) {
            continue;
        }
        let is_prefix = declared.iter().any(|d| d.starts_with(&format!("{name}.")));
        assert!(
            is_prefix && value.is_mapping(),
            "{origin}: property `{name}` is not declared in the job's spec"
        );
        check_properties(value, &format!("{name}."), declared, origin);
    }
}

#[test]
fn every_manifest_interpolates_with_the_documented_variables() {
    for manifest in MANIFESTS {
        let resolved = bosh_int(manifest, &[]);
        check_jobs(&resolved, manifest);
        let releases = resolved["releases"].as_sequence().expect("releases");
        assert!(
            releases.iter().any(|r| r["name"] == RELEASE_NAME),
            "{manifest} does not name release {RELEASE_NAME}"
        );
    }
}

#[test]
fn every_ops_file_applies_to_its_manifest() {
    let ops = ops_files();
    assert!(!ops.is_empty());
    for (op_file, target) in &ops {
        let resolved = bosh_int(target, &[op_file]);
        check_jobs(&resolved, &format!("{target} with {op_file}"));
    }
    // All of one manifest's ops-files together, as an operator may combine them.
    for target in ["bosh-istio.yml", "runtime-config.yml"] {
        let together: Vec<&str> = ops
            .iter()
            .filter(|(_, t)| t == target)
            .map(|(o, _)| o.as_str())
            .collect();
        bosh_int(target, &together);
    }
    let pilot = bosh_int("bosh-istio.yml", &["ops/tld.yml", "ops/vip-cidr.yml"]);
    let properties = &pilot["instance_groups"][0]["jobs"][1]["properties"];
    assert_eq!(properties["tld"], "mesh");
    assert_eq!(properties["virtual_ip_cidr"], "169.254.200.0/22");
}

#[test]
fn every_documented_variable_is_used() {
    let vars = yaml(&root().join("manifests/example-vars.yml"));
    let mut texts = String::new();
    for file in MANIFESTS {
        texts += &std::fs::read_to_string(root().join("manifests").join(file)).unwrap();
    }
    for (op_file, _) in ops_files() {
        texts += &std::fs::read_to_string(root().join("manifests").join(op_file)).unwrap();
    }
    for (name, _) in vars.as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            texts.contains(&format!("(({name}))")),
            "example-vars.yml: {name} is used nowhere"
        );
    }
}

#[test]
fn the_addon_consumes_the_shared_pilot_link_and_skips_the_control_plane() {
    let control_plane = bosh_int("bosh-istio.yml", &[]);
    assert_eq!(control_plane["name"], "bosh-istio");
    let pilot_jobs: BTreeMap<String, Value> = check_jobs(&control_plane, "bosh-istio.yml")
        .into_iter()
        .collect();
    let provides = &pilot_jobs["bosh-pilot"]["provides"]["bosh-pilot"];
    assert_eq!(
        provides["shared"], true,
        "other deployments can only consume a shared link"
    );
    let provided_as = provides["as"].as_str().unwrap_or("bosh-pilot");
    let provided_type = job_spec("bosh-pilot")["provides"][0]["type"].clone();

    let runtime = bosh_int("runtime-config.yml", &[]);
    for release in runtime["releases"].as_sequence().unwrap() {
        assert_ne!(
            release["version"], "latest",
            "a runtime config needs exact versions"
        );
    }
    let addon = &runtime["addons"][0];
    assert!(
        strings(&addon["exclude"]["deployments"]).contains(&"bosh-istio".to_string()),
        "the addon must exclude the control plane's deployment"
    );
    let addon_jobs: BTreeMap<String, Value> = check_jobs(&runtime, "runtime-config.yml")
        .into_iter()
        .collect();
    assert_eq!(
        addon_jobs.keys().cloned().collect::<Vec<_>>(),
        ["bosh-envoy", "virtual-ip-agent"]
    );
    let sample = bosh_int("sample-deployment.yml", &[]);
    let mut consumers: Vec<(String, Value)> = addon_jobs.into_iter().collect();
    consumers.extend(
        check_jobs(&sample, "sample-deployment.yml")
            .into_iter()
            .filter(|(name, _)| name == "smoke-tests"),
    );
    assert_eq!(
        consumers.len(),
        3,
        "bosh-envoy, virtual-ip-agent and smoke-tests"
    );
    for (name, job) in consumers {
        let consumed = &job["consumes"]["bosh-pilot"];
        assert_eq!(consumed["from"].as_str(), Some(provided_as), "{name}: from");
        assert_eq!(consumed["deployment"], "bosh-istio", "{name}: deployment");
        let wanted = job_spec(&name)["consumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "bosh-pilot")
            .unwrap()["type"]
            .clone();
        assert_eq!(wanted, provided_type, "{name}: link type");
    }
}

#[test]
fn sample_deployment_exposes_the_ports_its_workloads_listen_on() {
    let sample = bosh_int("sample-deployment.yml", &[]);
    assert_eq!(sample["name"], "sample-deployment");
    let groups: Vec<&str> = sample["instance_groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["apricot", "banana"]);
    for (name, job) in check_jobs(&sample, "sample-deployment.yml") {
        if name != "example-httpbin" {
            continue;
        }
        let exposed = job["expose_ports"][0]["number"].as_u64();
        assert_eq!(
            exposed,
            job["properties"]["port"].as_u64(),
            "expose_ports vs port"
        );
    }
}

#[test]
fn bosh_int_emulation_reports_what_bosh_int_would() {
    let mut doc: Value = serde_yaml::from_str("a: {b: [{name: x, v: 1}]}").unwrap();
    let op: Value = serde_yaml::from_str("{type: replace, path: /a/b/name=x/v, value: 2}").unwrap();
    apply_op(&mut doc, &op, "t").unwrap();
    assert_eq!(doc["a"]["b"][0]["v"], 2);
    let op: Value = serde_yaml::from_str("{type: replace, path: /a/c/d, value: 1}").unwrap();
    assert!(
        apply_op(&mut doc, &op, "t").is_err(),
        "a missing key without ? is an error"
    );
    let op: Value = serde_yaml::from_str("{type: replace, path: /a/c?/d, value: 1}").unwrap();
    apply_op(&mut doc, &op, "t").unwrap();
    assert_eq!(doc["a"]["c"]["d"], 1);
    let op: Value = serde_yaml::from_str("{type: remove, path: /a/b/name=x}").unwrap();
    apply_op(&mut doc, &op, "t").unwrap();
    assert_eq!(doc["a"]["b"].as_sequence().unwrap().len(), 0);

    let vars: Mapping = serde_yaml::from_str("port: 8080\nhost: h").unwrap();
    let mut unknown = BTreeSet::new();
    let doc: Value =
        serde_yaml::from_str("{p: ((port)), u: 'http://((host)):((port))', x: ((nope))}").unwrap();
    let resolved = interpolate(&doc, &vars, &mut unknown);
    assert_eq!(resolved["p"], 8080);
    assert_eq!(resolved["u"], "http://h:8080");
    assert_eq!(unknown, ["nope".to_string()].into());
    assert!(glob_matches(
        "boshy/boshy-*-linux-amd64",
        "boshy/boshy-0.1.0-linux-amd64"
    ));
    assert!(!glob_matches("boshy/*", "boshy/a/b"));
}

#[test]
fn every_pipeline_task_and_its_script_exist() {
    let pipeline = std::fs::read_to_string(root().join("ci/pipeline.yml")).unwrap();
    let tasks: Vec<&str> = pipeline
        .lines()
        .filter_map(|l| l.trim().strip_prefix("file: repo/"))
        .collect();
    assert!(!tasks.is_empty(), "ci/pipeline.yml runs no task file");
    for task in tasks {
        let config = yaml(&root().join(task));
        let script = config["run"]["path"].as_str().expect("run.path");
        // Tasks run from the directory holding their inputs: `<input>/ci/tasks/x.sh`.
        let (input, script) = script.split_once('/').unwrap();
        assert!(
            config["inputs"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|i| i["name"] == input),
            "{task}: runs a script from `{input}`, which is not an input"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root().join(script))
                .unwrap_or_else(|e| panic!("{task}: {script}: {e}"))
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
}
