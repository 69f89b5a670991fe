//! The release's job templates, rendered the way the BOSH director renders them (by
//! scripts/lib/render-template.rb, which follows bosh-template's EvaluationContext), with the
//! spec defaults, with non-default values, and with the manifests in manifests/ bound to the
//! job specs as the director binds them (before variables are resolved). The outputs must parse, the binaries must accept
//! them (`boshy pilot|virtual-ip-agent --check-config`, `envoy --mode validate`), they must agree with
//! what the Rust side renders for the same purpose, and the renderer must refuse what the
//! director would (or, stricter, what a release should never do).
//!
//! Needs `ruby` (scripts/lib/prereqs.sh installs it) and Envoy (`BOSHY_ENVOY`, else `envoy` on
//! PATH).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use boshy::catalog::model::{Catalog, Endpoint, Protocol, Service};
use boshy::catalog::testing;
use boshy_lab::jobs::{self, InstanceSpec, JobRender, Link, LinkInstance, LinkProvider};
use serde_json::{json, Value};

use boshy_test_support::jobs::{job_spec, pilot_link};
use boshy_test_support::manifests;

const JOBS: [&str; 6] = [
    "bosh-pilot",
    "bosh-envoy",
    "virtual-ip-agent",
    "example-httpbin",
    "bookinfo",
    "smoke-tests",
];

fn spec() -> InstanceSpec {
    InstanceSpec {
        deployment: "sample-deployment".into(),
        name: "apricot".into(),
        id: "6d0e0b4c-1111-4a4a-9b9b-000000000003".into(),
        index: Some(3),
        az: Some("z1".into()),
        ip: "10.244.0.7".into(),
        address: "10.244.0.7".into(),
        bootstrap: false,
    }
}

/// One job rendered under `<root>/jobs/<job>`, with the bosh-pilot link if the job consumes it.
struct Rendered {
    root: tempfile::TempDir,
    job: String,
}

impl Rendered {
    fn dir(&self) -> PathBuf {
        self.root.path().join("jobs").join(&self.job)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.dir().join(file)
    }
    fn text(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file))
            .unwrap_or_else(|e| panic!("{}: {e}", self.path(file).display()))
    }
    fn json(&self, file: &str) -> Value {
        serde_json::from_str(&self.text(file))
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.path(file).display()))
    }
    /// Points the rendered /var/vcap paths into this temporary root, as the lab does.
    fn rebased(self) -> Self {
        jobs::rebase(&self.dir(), self.root.path()).unwrap();
        self
    }
}

fn try_render(
    release: &Path,
    job: &str,
    properties: Value,
    spec: &InstanceSpec,
    link: Option<Link>,
) -> anyhow::Result<Rendered> {
    let root = tempfile::tempdir().unwrap();
    let links: BTreeMap<String, Link> = link
        .into_iter()
        .map(|l| ("bosh-pilot".to_string(), l))
        .collect();
    let job_render = JobRender {
        name: job.into(),
        output: root.path().join("jobs").join(job),
        properties,
        links,
    };
    jobs::render(release, spec, &[job_render])?;
    Ok(Rendered {
        root,
        job: job.into(),
    })
}

/// Renders one of the release's jobs; the bosh-pilot link is given when the spec consumes it.
fn render(job: &str, properties: Value, link: Link) -> Rendered {
    render_for(job, properties, link, &spec())
}

fn render_for(job: &str, properties: Value, link: Link, spec: &InstanceSpec) -> Rendered {
    let release = jobs::release_dir();
    // The mesh certificates are required wherever xDS or the name table is spoken (no
    // default exists); tests not about them get a valid set. tests/mtls.rs covers them.
    let properties = match mesh_tls(job) {
        Some(tls) if properties.get("tls").is_none() => {
            jobs::deep_merge(&properties, &json!({ "tls": tls }))
        }
        _ => properties,
    };
    try_render(
        &release,
        job,
        properties,
        spec,
        consumes_pilot(&release, job).then_some(link),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn consumes_pilot(release: &Path, job: &str) -> bool {
    job_spec(release, job)["consumes"]
        .as_sequence()
        .is_some_and(|c| c.iter().any(|l| l["name"] == "bosh-pilot"))
}

/// The properties a job cannot do without (no sensible default exists).
fn required_properties(job: &str) -> Value {
    match job {
        "bosh-pilot" => json!({"director": {
            "url": "https://10.0.0.6:25555",
            "client_secret": "hunter2",
            "ca_cert": ca_pem(),
        }}),
        "bookinfo" => json!({"part": "productpage"}),
        _ => json!({}),
    }
}

/// The `tls` property of the jobs that need one: the pilot's server certificate, or the
/// addon's client certificate, from one CA per test process.
fn mesh_tls(job: &str) -> Option<Value> {
    let (ca, _, [server, client]) = mesh_pki();
    let issued = match job {
        "bosh-pilot" => server,
        "virtual-ip-agent" | "bosh-envoy" => client,
        _ => return None,
    };
    Some(json!({"ca": ca, "certificate": issued.cert_pem, "private_key": issued.key_pem}))
}

/// The mesh CA (certificate, key) and the certificates it issued, one per test process.
fn mesh_pki() -> &'static (String, String, [boshy_lab::pki::Issued; 2]) {
    static PKI: std::sync::OnceLock<(String, String, [boshy_lab::pki::Issued; 2])> =
        std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ca = boshy_lab::pki::Ca::new("templates test CA").unwrap();
        let server = ca.server(boshy_lab::pki::PILOT_SERVER_NAME).unwrap();
        let client = ca.client("templates test client").unwrap();
        (ca.cert_pem(), ca.key_pem(), [server, client])
    })
}

fn default_link() -> Link {
    pilot_link(&["10.244.0.10"], json!({}))
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn boshy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_boshy"))
        .args(args)
        .env_remove("BOSHY_DIRECTOR_CLIENT_SECRET")
        .output()
        .expect("run boshy")
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a rendered bpm process as the VM would, with `--check-config` added. Its executable is
/// `/var/vcap/packages/boshy/bin/<file>` (rebased), which packages/boshy/packaging must install;
/// here that file is the binary cargo built under the same name.
fn check_bpm_process(process: &jobs::BpmProcess) -> Output {
    let file = Path::new(&process.executable)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_else(|| panic!("bpm executable `{}`", process.executable));
    assert!(
        process
            .executable
            .ends_with(&format!("/packages/boshy/bin/{file}")),
        "bpm runs `{}`, not a binary of the boshy package",
        process.executable
    );
    let packaging = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/boshy/packaging"),
    )
    .unwrap();
    assert!(
        packaging.contains(&format!("\"${{BOSH_INSTALL_TARGET}}/bin/{file}\"")),
        "packages/boshy/packaging does not install bin/{file}:\n{packaging}"
    );
    let built = match file {
        "boshy" => env!("CARGO_BIN_EXE_boshy"),
        "virtual-ip-agent" => env!("CARGO_BIN_EXE_virtual-ip-agent"),
        other => panic!("bpm runs bin/{other}, which this crate does not build"),
    };
    Command::new(built)
        .args(&process.args)
        .arg("--check-config")
        .output()
        .unwrap_or_else(|e| panic!("run {built}: {e}"))
}

fn check_config(subcommand: &str, config: &Path) -> Output {
    boshy(&[
        subcommand,
        "--check-config",
        "--config",
        config.to_str().unwrap(),
    ])
}

fn envoy_binary() -> PathBuf {
    boshy_lab::binaries::envoy().unwrap_or_else(|e| panic!("{e:#}"))
}

fn envoy_validate(bootstrap: &Path) {
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c", bootstrap.to_str().unwrap()])
        .output()
        .expect("run envoy");
    assert_success(
        &output,
        &format!("envoy --mode validate -c {}", bootstrap.display()),
    );
}

/// Every file the spec's templates (and monit) render, and how to check it.
#[test]
fn every_template_of_every_job_renders_with_defaults_and_parses() {
    let release = jobs::release_dir();
    let on_disk: Vec<String> = std::fs::read_dir(release.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for job in &on_disk {
        assert!(
            JOBS.contains(&job.as_str()),
            "job {job} is not covered by these tests"
        );
    }
    for job in JOBS {
        let spec_yaml = job_spec(&release, job);
        let rendered = render(job, required_properties(job), default_link());
        let templates = spec_yaml["templates"].as_mapping().unwrap();
        for destination in templates.values() {
            let destination = destination.as_str().unwrap();
            let path = rendered.path(destination);
            let text = rendered.text(destination);
            if destination.ends_with(".json") {
                rendered.json(destination);
            } else if destination.ends_with(".yml") {
                serde_yaml::from_str::<serde_yaml::Value>(&text)
                    .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            } else if destination.starts_with("bin/") {
                let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
                assert_success(&syntax, &format!("bash -n {}", path.display()));
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&path).unwrap().permissions(),
                );
                assert_eq!(mode & 0o111, 0o111, "{} is not executable", path.display());
            }
        }
        check_bpm_and_monit(&rendered, &spec_yaml);
    }
}

/// bpm runs executables from the job's own packages; monit starts each bpm process by name.
fn check_bpm_and_monit(rendered: &Rendered, spec_yaml: &serde_yaml::Value) {
    let job = &rendered.job;
    let monit = rendered.text("monit");
    let bpm_path = rendered.path("config/bpm.yml");
    if !bpm_path.exists() {
        assert!(
            monit.trim().is_empty(),
            "{job} has no bpm.yml but monit starts something"
        );
        return;
    }
    let packages: Vec<&str> = spec_yaml["packages"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let bpm = jobs::read_bpm(&bpm_path).unwrap();
    assert!(!bpm.processes.is_empty(), "{job}: bpm.yml has no process");
    for process in &bpm.processes {
        let package = process
            .executable
            .strip_prefix("/var/vcap/packages/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("{job}: {} is not in a package", process.executable));
        assert!(
            packages.contains(&package),
            "{job}: runs {} from package {package}, which its spec does not list",
            process.executable
        );
        let pidfile = format!("/var/vcap/sys/run/bpm/{job}/{}.pid", process.name);
        assert!(
            monit.contains(&pidfile),
            "{job}: monit does not watch {pidfile}"
        );
        assert!(
            monit.contains(&format!("bpm start {job}")),
            "{job}: monit does not start it with bpm"
        );
    }
}

#[test]
fn every_property_is_used_by_a_template_or_shared_by_a_link() {
    let release = jobs::release_dir();
    for job in JOBS {
        let spec_yaml = job_spec(&release, job);
        let mut texts = String::new();
        for entry in std::fs::read_dir(release.join("jobs").join(job).join("templates")).unwrap() {
            texts += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
        }
        let shared = serde_yaml::to_string(&spec_yaml["provides"]).unwrap();
        for (name, definition) in spec_yaml["properties"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            assert!(
                definition["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{job}: property {name} has no description"
            );
            // `p('tls.certificate')` uses a declared `tls` (a certificate variable's hash).
            let used = texts.contains(&format!("'{name}'")) || texts.contains(&format!("'{name}."));
            assert!(
                used || shared.contains(name),
                "{job}: property {name} is declared but no template uses it"
            );
        }
    }
}

/// Every job of this release that manifests/ deploys, as the director deploys it: the job's
/// properties are bound to its spec from the manifest as written, `((variables))` still
/// strings (the director resolves variables only when it renders, after binding); then the
/// variables are resolved (a certificate is a hash of `ca`, `certificate` and `private_key`,
/// as CredHub's) and the templates rendered. A spec declaring `tls.ca` while the manifest sets
/// `tls: ((certificate))` fails here as `bosh deploy` fails.
#[test]
fn every_manifest_binds_to_the_job_specs_as_the_director_binds_it_and_renders() {
    let release = jobs::release_dir();
    // The link the addon and the errand consume: bosh-pilot as bosh-istio.yml deploys it.
    let pilot_properties = director_properties("bosh-istio.yml")
        .into_iter()
        .find(|(_, job, _)| job == "bosh-pilot")
        .expect("bosh-istio.yml deploys bosh-pilot")
        .2;
    let link = pilot_link(&["10.244.0.10"], pilot_properties);
    let mut with_certificate = BTreeSet::new();
    for manifest in manifests::MANIFESTS {
        for (group, job, properties) in director_properties(manifest) {
            let rendered = try_render(
                &release,
                &job,
                properties.clone(),
                &spec(),
                consumes_pilot(&release, &job).then(|| link.clone()),
            )
            .unwrap_or_else(|e| panic!("{manifest}: {group}/{job}: {e:#}"));
            let Some(tls) = properties.get("tls") else {
                continue;
            };
            for (file, key) in [
                ("config/tls/ca.pem", "ca"),
                ("config/tls/cert.pem", "certificate"),
                ("config/tls/key.pem", "private_key"),
            ] {
                assert_eq!(
                    rendered.text(file),
                    tls[key].as_str().unwrap(),
                    "{manifest}: {group}/{job}: {file} is not the certificate variable's {key}"
                );
            }
            with_certificate.insert(job);
        }
    }
    assert_eq!(
        with_certificate,
        ["bosh-envoy", "bosh-pilot", "virtual-ip-agent"]
            .map(String::from)
            .into(),
        "the jobs that speak mutual TLS get their certificate from a variable"
    );
}

/// (instance group or addon, job, properties) of every job of this release `manifest`
/// deploys: bound to the job's spec as the director binds them, then with every variable
/// resolved.
fn director_properties(manifest: &str) -> Vec<(String, String, Value)> {
    let release = jobs::release_dir();
    let doc = manifests::yaml(&manifests::manifests_dir().join(manifest));
    let vars = manifests::variables(&doc);
    manifests::release_jobs(&doc)
        .into_iter()
        .map(|(group, job)| {
            let name = job["name"].as_str().expect("job name");
            let written = serde_json::to_value(&job["properties"]).unwrap();
            let bound = jobs::bind(&release, name, &written).unwrap_or_else(|e| {
                panic!("{manifest}: {group}/{name}: {e:#} (bosh deploy fails the same way)")
            });
            let mut unknown = BTreeSet::new();
            let resolved =
                manifests::interpolate(&serde_yaml::to_value(&bound).unwrap(), &vars, &mut unknown);
            assert!(
                unknown.is_empty(),
                "{manifest}: {group}/{name}: undefined variables {unknown:?}"
            );
            let resolved = serde_json::to_value(&resolved).unwrap();
            (group.to_string(), name.to_string(), resolved)
        })
        .collect()
}

#[test]
fn bosh_pilot_config_is_accepted_with_defaults_and_with_other_values() {
    let rendered = render(
        "bosh-pilot",
        required_properties("bosh-pilot"),
        default_link(),
    )
    .rebased();
    let config = rendered.path("config/pilot.yml");
    assert_success(
        &check_config("pilot", &config),
        "pilot --check-config (defaults)",
    );
    let pilot = rendered.json("config/pilot.yml");
    assert_eq!(pilot["tld"], "boshy");
    assert_eq!(pilot["virtual_ip_cidr"], "169.254.255.0/24");
    assert_eq!(pilot["listen"]["xds"], "0.0.0.0:15010");
    assert_eq!(
        pilot["api"]["insecure_open"], false,
        "the API is locked down"
    );
    assert_eq!(pilot["director"]["client"], "bosh-pilot");
    assert_eq!(pilot["director"]["health_tasks_per_minute"], 6);
    assert!(pilot["director"].get("uaa_url").is_none());
    assert_eq!(
        pilot["telemetry"],
        json!({"request_metrics": true}),
        "request metrics on, no tracing without a collector"
    );
    assert_eq!(rendered.text("config/director_client_secret"), "hunter2");
    assert!(
        !rendered.text("config/pilot.yml").contains("hunter2"),
        "the secret stays out of the config file"
    );

    let other = json!({
        "director": {
            "url": "https://director.example:25555",
            "uaa_url": "https://director.example:8443",
            "client": "mesh",
            "client_secret": "s3cret",
            "insecure_skip_tls_verify": true,
            "poll_interval_seconds": 2,
            "health_tasks_per_minute": 30,
            "request_timeout_seconds": 3,
        },
        "tld": "mesh",
        "virtual_ip_cidr": "169.254.128.0/20",
        "vip_quarantine_seconds": 60,
        "vip_store": "file",
        "ports": {"xds": 16010, "names": 16011, "api": 9080},
        "api": {"insecure_open": true},
        "telemetry": {"request_metrics": false},
        "tracing": {"zipkin_collector": "zipkin.example.com:9411", "sampling_percent": 2.5},
        "log_level": "debug",
    });
    let rendered = render("bosh-pilot", other, default_link()).rebased();
    assert_success(
        &check_config("pilot", &rendered.path("config/pilot.yml")),
        "pilot --check-config (other values)",
    );
    let pilot = rendered.json("config/pilot.yml");
    assert_eq!(
        pilot["director"]["uaa_url"],
        "https://director.example:8443"
    );
    assert_eq!(pilot["director"]["insecure_skip_tls_verify"], true);
    assert_eq!(pilot["director"]["health_tasks_per_minute"], 30);
    assert!(pilot["director"].get("ca_cert_path").is_none());
    assert_eq!(pilot["listen"]["api"], "0.0.0.0:9080");
    assert_eq!(pilot["api"]["insecure_open"], true);
    assert_eq!(
        pilot["telemetry"],
        json!({
            "request_metrics": false,
            "tracing": {
                "zipkin_collector": "zipkin.example.com:9411",
                "collector_path": "/api/v2/spans",
                "sampling_percent": 2.5,
            },
        })
    );
    assert_eq!(pilot["virtual_ip_cidr"], "169.254.128.0/20");
    assert_eq!(
        pilot["vip_state_path"],
        rendered
            .root
            .path()
            .join("data/bosh-pilot/vips.json")
            .to_str()
            .unwrap()
    );
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_eq!(bpm.processes[0].env["RUST_LOG"], "debug");
    // 10,000 VMs: a descriptor per Envoy and up to two per agent, with room to spare.
    let raw: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(rendered.path("config/bpm.yml")).unwrap())
            .unwrap();
    let open_files = raw["processes"][0]["limits"]["open_files"].as_u64();
    assert!(
        open_files.is_some_and(|n| n >= 30_000),
        "the pilot's open-file limit fits 10,000 agents and Envoys: {open_files:?}"
    );
}

/// Workload identity: off without `identity.ca` (no `identity` in the config, empty CA
/// files); with it, the workload CA's certificate and the CA above it in one file, its key in
/// another (never in the config), the TTL in seconds, and `--check-config` loads the CA.
#[test]
fn bosh_pilot_renders_the_workload_ca_only_when_identity_ca_is_set() {
    let rendered = render(
        "bosh-pilot",
        required_properties("bosh-pilot"),
        default_link(),
    )
    .rebased();
    let pilot = rendered.json("config/pilot.yml");
    assert!(
        pilot.get("identity").is_none(),
        "identity is off by default"
    );
    assert_eq!(rendered.text("config/identity/ca.pem").trim(), "");
    assert_eq!(rendered.text("config/identity/ca_key.pem").trim(), "");

    let mesh = boshy_lab::pki::Ca::new("mesh ca").unwrap();
    let workload = boshy_lab::pki::Ca::new("workload ca").unwrap();
    let properties = jobs::deep_merge(
        &required_properties("bosh-pilot"),
        &json!({"identity": {
            "trust_domain": "corp.example",
            "certificate_ttl_hours": 12,
            "ca": {
                "certificate": workload.cert_pem(),
                "private_key": workload.key_pem(),
                "ca": mesh.cert_pem(),
            },
        }}),
    );
    let rendered = render("bosh-pilot", properties, default_link()).rebased();
    assert_success(
        &check_config("pilot", &rendered.path("config/pilot.yml")),
        "pilot --check-config (identity)",
    );
    let pilot = rendered.json("config/pilot.yml");
    assert_eq!(pilot["identity"]["trust_domain"], "corp.example");
    assert_eq!(pilot["identity"]["certificate_ttl_seconds"], 12 * 3600);
    assert!(pilot["identity"]["ca"].get("trust_bundle").is_none());
    let certificates = rendered.text("config/identity/ca.pem");
    assert_eq!(
        certificates.trim(),
        format!("{}\n{}", workload.cert_pem().trim(), mesh.cert_pem().trim()),
        "the workload CA first, then the CA above it"
    );
    assert_eq!(
        rendered.text("config/identity/ca_key.pem").trim(),
        workload.key_pem().trim()
    );
    let key_body = workload.key_pem().lines().nth(1).unwrap().to_string();
    assert!(
        !rendered.text("config/pilot.yml").contains(&key_body),
        "the key stays out of the config file"
    );

    let too_long = jobs::deep_merge(
        &required_properties("bosh-pilot"),
        &json!({"identity": {"certificate_ttl_hours": 721, "ca": {
            "certificate": workload.cert_pem(),
            "private_key": workload.key_pem(),
            "ca": mesh.cert_pem(),
        }}}),
    );
    let rendered = render("bosh-pilot", too_long, default_link()).rebased();
    let output = check_config("pilot", &rendered.path("config/pilot.yml"));
    assert!(!output.status.success(), "721 hours is more than 30 days");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("identity.certificate_ttl_seconds"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Joining VMs (docs/workloads.md): off without `workloads.mesh_ca` (no `workloads` in the
/// config, an empty key file); with it, the mesh CA's key in its own file (never in the
/// config), the durations, and `--check-config` loads the key against `tls.ca`.
#[test]
fn bosh_pilot_renders_workloads_only_when_the_mesh_ca_is_given() {
    let rendered = render(
        "bosh-pilot",
        required_properties("bosh-pilot"),
        default_link(),
    )
    .rebased();
    assert!(rendered.json("config/pilot.yml").get("workloads").is_none());
    assert_eq!(rendered.text("config/tls/ca_key.pem").trim(), "");

    let (ca, key, _) = mesh_pki();
    let properties = jobs::deep_merge(
        &required_properties("bosh-pilot"),
        &json!({"workloads": {
            "mesh_ca": {"certificate": ca, "private_key": key},
            "ttl_seconds": 20,
            "heartbeat_seconds": 5,
        }}),
    );
    let rendered = render("bosh-pilot", properties, default_link()).rebased();
    assert_success(
        &check_config("pilot", &rendered.path("config/pilot.yml")),
        "pilot --check-config (workloads)",
    );
    let pilot = rendered.json("config/pilot.yml");
    let workloads = &pilot["workloads"];
    assert_eq!(workloads["ttl_seconds"], 20);
    assert_eq!(workloads["heartbeat_seconds"], 5);
    assert_eq!(workloads["deregister_after_seconds"], 600);
    assert_eq!(workloads["certificate_ttl_seconds"], 604800);
    assert_eq!(workloads["max_token_ttl_seconds"], 604800);
    assert!(workloads["mesh_ca_private_key"]
        .as_str()
        .unwrap()
        .ends_with("/config/tls/ca_key.pem"));
    assert_eq!(rendered.text("config/tls/ca_key.pem").trim(), key.trim());
    let key_body = key.lines().nth(1).unwrap().to_string();
    assert!(!rendered.text("config/pilot.yml").contains(&key_body));

    // Another CA's key is refused at start, naming both keys.
    let other = boshy_lab::pki::Ca::new("another CA").unwrap();
    let properties = jobs::deep_merge(
        &required_properties("bosh-pilot"),
        &json!({"workloads": {"mesh_ca": {"certificate": other.cert_pem(), "private_key": other.key_pem()}}}),
    );
    let rendered = render("bosh-pilot", properties, default_link()).rebased();
    let output = check_config("pilot", &rendered.path("config/pilot.yml"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("workloads.mesh_ca_private_key") && stderr.contains("tls.ca_cert_path"),
        "{stderr}"
    );
}

#[test]
fn bosh_pilot_check_config_refuses_a_director_without_ca_or_opt_out() {
    let properties = json!({"director": {"url": "https://10.0.0.6:25555", "client_secret": "x"}});
    let rendered = render("bosh-pilot", properties, default_link()).rebased();
    let output = check_config("pilot", &rendered.path("config/pilot.yml"));
    assert!(
        !output.status.success(),
        "a config without CA must be refused"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("ca_cert"));
}

/// Without capture, the dnat script installs no inbound rule, monit runs no follower and the
/// agent's readiness waits for no capture.
fn assert_no_inbound_capture(rendered: &Rendered, agent: &Value, why: &str) {
    let dnat = rendered.text("bin/dnat");
    assert!(!dnat.contains("--inbound"), "{why}: {dnat}");
    assert!(
        !rendered.text("monit").contains("inbound-capture"),
        "{why}: no follower"
    );
    assert!(agent["inbound_capture_port"].is_null(), "{why}: {agent}");
}

/// With capture, the dnat script follows the ports file the agent writes beside its name
/// table, monit runs the follower, and the agent counts a port ready only once it is captured.
fn assert_inbound_capture(rendered: &Rendered, agent: &Value) {
    let dnat = rendered.text("bin/dnat");
    let table_dir = Path::new(agent["table_path"].as_str().unwrap())
        .parent()
        .unwrap();
    let ports_file = table_dir.join("inbound_ports.json");
    assert!(
        dnat.contains(&format!("--inbound-ports-file {}", ports_file.display())),
        "{dnat}"
    );
    assert!(dnat.contains("--inbound-redirect-port '15006'"), "{dnat}");
    let monit = rendered.text("monit");
    let capture = rendered.text("bin/inbound_capture");
    // Monit watches the pidfile the start program writes.
    let run_dir = rendered.root.path().join("sys/run/virtual-ip-agent");
    let pidfile = run_dir.join("inbound-capture.pid");
    assert!(
        monit.contains(&format!("with pidfile {}", pidfile.display())),
        "{monit}"
    );
    assert!(
        capture.contains("PIDFILE=$RUN_DIR/inbound-capture.pid"),
        "{capture}"
    );
    assert!(
        capture.contains(&format!("RUN_DIR={}", run_dir.display())),
        "{capture}"
    );
    assert!(capture.contains("bin/dnat follow"), "{capture}");
    assert_eq!(agent["inbound_capture_port"], 15006, "{agent}");
}

#[test]
fn virtual_ip_agent_config_is_accepted_with_defaults_and_with_other_values() {
    let rendered = render("virtual-ip-agent", json!({}), default_link()).rebased();
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_eq!(bpm.processes[0].name, "virtual-ip-agent");
    assert!(
        bpm.processes[0]
            .executable
            .ends_with("/bin/virtual-ip-agent"),
        "the agent runs from its own binary: {bpm:?}"
    );
    assert_success(
        &check_bpm_process(&bpm.processes[0]),
        "virtual-ip-agent --check-config (defaults)",
    );
    let agent = rendered.json("config/agent.yml");
    assert_eq!(agent["listen"], "127.0.0.1:8053");
    assert_eq!(agent["tld"], "boshy");
    assert_eq!(agent["pilots"], json!(["https://10.244.0.10:15011"]));
    assert_eq!(
        agent["instance"],
        json!({"deployment": "sample-deployment", "id": "6d0e0b4c-1111-4a4a-9b9b-000000000003", "instance_group": "apricot"}),
        "the agent reports the health of the instance it runs on"
    );
    assert!(
        agent.get("identity").is_none(),
        "identity is off by default"
    );
    assert!(
        !rendered
            .text("config/bpm.yml")
            .contains("additional_volumes"),
        "no SDS volume without identity"
    );
    assert_eq!(agent["probe_interval_ms"], 500);
    assert_eq!(agent["drain_timeout_seconds"], 30);
    assert_eq!(agent["scope_idle_seconds"], 24 * 3600);
    let drain = rendered.text("bin/drain");
    assert!(
        drain.contains("--drain") && drain.contains("config/agent.yml"),
        "{drain}"
    );
    let dnat = rendered.text("bin/dnat");
    assert!(dnat.contains("--vip-cidr '169.254.255.0/24'"), "{dnat}");
    assert!(dnat.contains("--redirect-port '15001'"), "{dnat}");
    assert_no_inbound_capture(&rendered, &agent, "identity is off by default");

    let link = pilot_link(
        &["10.244.0.10", "10.244.0.11"],
        json!({"tld": "mesh", "virtual_ip_cidr": "169.254.128.0/20", "ports": {"names": 16011}}),
    );
    let other = json!({
        "dns": {"listen_address": "0.0.0.0", "allow_non_loopback_listen": true, "port": 53, "ttl_seconds": 30},
        "dnat": {"redirect_port": 15002},
        "health": {"probe_interval_ms": 2000},
        "scope": {"idle_hours": 0.5},
        "inbound": {"capture": false},
        "identity": {"enabled": true},
    });
    let rendered = render("virtual-ip-agent", other, link).rebased();
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_success(
        &check_bpm_process(&bpm.processes[0]),
        "virtual-ip-agent --check-config (other values)",
    );
    let agent = rendered.json("config/agent.yml");
    assert_eq!(agent["tld"], "mesh");
    assert_eq!(agent["listen"], "0.0.0.0:53");
    assert_eq!(agent["probe_interval_ms"], 2000);
    assert_eq!(agent["scope_idle_seconds"], 1800);
    assert_eq!(
        agent["pilots"],
        json!(["https://10.244.0.10:16011", "https://10.244.0.11:16011"])
    );
    let dnat = rendered.text("bin/dnat");
    assert!(dnat.contains("--vip-cidr '169.254.128.0/20'"), "{dnat}");
    assert!(dnat.contains("--redirect-port '15002'"), "{dnat}");
    assert_no_inbound_capture(&rendered, &agent, "inbound capture turned off");
    assert!(
        rendered.text("config/bpm.yml").contains("NET_BIND_SERVICE"),
        "port 53 needs the capability: {bpm:?}"
    );
}

/// The directory of the SDS socket: the bpm volume the agent and Envoy share.
const SDS_SOCKET: &str = "/var/vcap/data/boshy-identity/sds.sock";

/// The bpm `additional_volumes` of a rendered job's only process.
fn bpm_volumes(rendered: &Rendered) -> Value {
    let bpm: Value = serde_yaml::from_str(&rendered.text("config/bpm.yml")).unwrap();
    bpm["processes"][0]["additional_volumes"].clone()
}

#[test]
fn with_identity_the_agent_serves_sds_on_a_socket_only_envoy_shares() {
    let link = pilot_link(
        &["10.244.0.10"],
        json!({"identity": {"trust_domain": "corp.example"}}),
    );
    let properties = json!({"identity": {"enabled": true}});
    let rendered = render("virtual-ip-agent", properties.clone(), link).rebased();
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_success(
        &check_bpm_process(&bpm.processes[0]),
        "virtual-ip-agent --check-config (identity)",
    );
    let agent = rendered.json("config/agent.yml");
    assert_eq!(agent["identity"]["trust_domain"], "corp.example");
    assert_inbound_capture(&rendered, &agent);
    assert!(
        agent["identity"]["sds_socket"]
            .as_str()
            .unwrap()
            .ends_with("/data/boshy-identity/sds.sock"),
        "{agent}"
    );
    let volume_dir = Path::new(SDS_SOCKET).parent().unwrap().to_str().unwrap();
    let rendered = render(
        "virtual-ip-agent",
        json!({"identity": {"enabled": true}}),
        default_link(),
    );
    assert_eq!(
        bpm_volumes(&rendered),
        json!([{"path": volume_dir, "writable": true}])
    );
    assert_eq!(
        rendered.json("config/agent.yml")["identity"]["sds_socket"],
        SDS_SOCKET
    );
    assert_eq!(
        rendered.json("config/agent.yml")["identity"]["trust_domain"],
        "boshy",
        "the pilots' default trust domain"
    );
    let envoy = render(
        "bosh-envoy",
        json!({"identity": {"enabled": true}}),
        default_link(),
    );
    assert_eq!(
        bpm_volumes(&envoy),
        json!([{"path": volume_dir, "writable": false}]),
        "Envoy connects to the socket and writes nothing there"
    );
    // No other job of the release mounts the directory holding the key's socket.
    for job in JOBS {
        if job != "virtual-ip-agent" && job != "bosh-envoy" {
            let rendered = render(job, required_properties(job), default_link());
            let bpm = rendered.path("config/bpm.yml");
            if bpm.exists() {
                let text = std::fs::read_to_string(bpm).unwrap();
                assert!(!text.contains(volume_dir), "{job} mounts {volume_dir}");
            }
        }
    }

    // A trust domain that cannot be one is refused by --check-config, naming the key.
    let link = pilot_link(
        &["10.244.0.10"],
        json!({"identity": {"trust_domain": "Corp"}}),
    );
    let rendered = render("virtual-ip-agent", properties, link).rebased();
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    let refused = check_bpm_process(&bpm.processes[0]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("identity.trust_domain"), "{said}");
}

#[test]
fn bosh_dns_handler_is_what_the_agent_itself_would_write() {
    for (properties, tld, listen) in [
        (json!({}), "boshy", "127.0.0.1:8053"),
        (
            json!({"dns": {"listen_address": "0.0.0.0", "allow_non_loopback_listen": true, "port": 5353}}),
            "mesh",
            "0.0.0.0:5353",
        ),
    ] {
        let link = pilot_link(&["10.244.0.10"], json!({"tld": tld}));
        let rendered = render("virtual-ip-agent", properties, link);
        let apex = hickory_proto::rr::Name::from_ascii(format!("{tld}.")).unwrap();
        let listen: SocketAddr = listen.parse().unwrap();
        let expected: Value =
            serde_json::from_str(&boshy::virtual_ip_agent::bosh_dns_handlers(&apex, listen))
                .unwrap();
        assert_eq!(rendered.json("dns/handlers.json"), expected);
    }
}

#[test]
fn envoy_accepts_the_rendered_bootstrap_and_it_matches_the_rust_one() {
    let rendered = render("bosh-envoy", json!({}), default_link());
    let node = boshy::xds::bootstrap::NodeIdentity {
        deployment: "sample-deployment".into(),
        instance_group: "apricot".into(),
        instance_id: spec().id,
        index: Some(3),
        az: Some("z1".into()),
        ip: "10.244.0.7".parse().unwrap(),
        service_name: None,
    };
    let tls = |file: &str| format!("/var/vcap/jobs/bosh-envoy/config/tls/{file}").into();
    let rust = boshy::xds::bootstrap::render_with_tls(
        &node,
        &["10.244.0.10:15010".to_string()],
        boshy::xds::bootstrap::DEFAULT_ADMIN.parse().unwrap(),
        boshy::xds::bootstrap::AdsMode::default(),
        Some(&boshy::config::ClientTls {
            ca_cert_path: tls("ca.pem"),
            cert_path: tls("cert.pem"),
            key_path: tls("key.pem"),
            server_name: boshy_lab::pki::PILOT_SERVER_NAME.into(),
        }),
    )
    .unwrap();
    let rust: Value = serde_yaml::from_str(&rust).unwrap();
    assert_eq!(rendered.json("config/envoy.json"), rust);
    // Envoy reads the certificate files while validating: point them into the render.
    envoy_validate(&rendered.rebased().path("config/envoy.json"));

    // Other values: several pilots by DNS name (bosh-dns link addresses), no AZ or index.
    let link = pilot_link(
        &["q-s0.bosh-pilot.default.bosh-istio.bosh", "10.244.0.11"],
        json!({"ports": {"xds": 16010}}),
    );
    let mut spec = spec();
    spec.az = None;
    spec.index = None;
    let other = json!({"admin_port": 9901, "concurrency": 4, "log_level": "debug", "ads": "sotw", "max_downstream_connections": 100});
    let rendered = render_for("bosh-envoy", other, link, &spec);
    let bootstrap = rendered.json("config/envoy.json");
    let cluster = &bootstrap["static_resources"]["clusters"][0];
    assert_eq!(cluster["type"], "STRICT_DNS");
    let endpoints = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"];
    assert_eq!(
        endpoints[1]["endpoint"]["address"]["socket_address"]["port_value"],
        16010
    );
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["port_value"],
        9901
    );
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    assert_eq!(
        bootstrap["dynamic_resources"]["ads_config"]["api_type"],
        "GRPC"
    );
    assert!(bootstrap["node"]["metadata"].get("az").is_none());
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_eq!(
        bpm.processes[0].args,
        [
            "-c",
            "/var/vcap/jobs/bosh-envoy/config/envoy.json",
            "--disable-hot-restart",
            "--concurrency",
            "4",
            "--log-level",
            "debug"
        ]
    );
    envoy_validate(&rendered.rebased().path("config/envoy.json"));
}

/// The bootstrap `xds::bootstrap` renders for the spec's instance with identity on (the SDS
/// socket) and `telemetry`, as the bosh-envoy job's defaults and link would have it.
fn rust_sidecar_bootstrap(telemetry: Option<&boshy::xds::bootstrap::Telemetry>) -> Value {
    let node = boshy::xds::bootstrap::NodeIdentity {
        deployment: "sample-deployment".into(),
        instance_group: "apricot".into(),
        instance_id: spec().id,
        index: Some(3),
        az: Some("z1".into()),
        ip: "10.244.0.7".parse().unwrap(),
        service_name: None,
    };
    let tls = |file: &str| format!("/var/vcap/jobs/bosh-envoy/config/tls/{file}").into();
    let yaml = boshy::xds::bootstrap::render_sidecar(
        &node,
        &["10.244.0.10:15010".to_string()],
        boshy::xds::bootstrap::DEFAULT_ADMIN.parse().unwrap(),
        boshy::xds::bootstrap::AdsMode::default(),
        Some(&boshy::config::ClientTls {
            ca_cert_path: tls("ca.pem"),
            cert_path: tls("cert.pem"),
            key_path: tls("key.pem"),
            server_name: boshy_lab::pki::PILOT_SERVER_NAME.into(),
        }),
        Some(Path::new(SDS_SOCKET)),
        telemetry,
    )
    .unwrap();
    serde_yaml::from_str(&yaml).unwrap()
}

#[test]
fn the_service_name_of_the_spans_is_the_node_cluster_and_nothing_else_changes() {
    let named = render(
        "bosh-envoy",
        json!({"identity": {"enabled": true}, "tracing": {"service_name": "payments"}}),
        default_link(),
    );
    let mut bootstrap = named.json("config/envoy.json");
    assert_eq!(bootstrap["node"]["cluster"], "payments");
    envoy_validate(&named.rebased().path("config/envoy.json"));
    bootstrap["node"]["cluster"] = json!("sample-deployment/apricot");
    assert_eq!(bootstrap, rust_sidecar_bootstrap(None));
}

#[test]
fn with_identity_envoy_has_the_sds_cluster_and_accepts_it() {
    let rendered = render(
        "bosh-envoy",
        json!({"identity": {"enabled": true}}),
        default_link(),
    );
    let rust = rust_sidecar_bootstrap(None);
    let bootstrap = rendered.json("config/envoy.json");
    assert_eq!(bootstrap, rust);
    assert_eq!(
        bootstrap["static_resources"]["clusters"][1]["name"],
        "sds-grpc"
    );
    envoy_validate(&rendered.rebased().path("config/envoy.json"));
}

/// The access log socket: in the bpm volume the agent and Envoy share for the metrics.
const ACCESS_LOG_SOCKET: &str = "/var/vcap/data/boshy-metrics/als.sock";

#[test]
fn with_metrics_envoy_logs_to_the_agent_and_serves_metrics_over_mutual_tls() {
    let metrics = json!({"identity": {"enabled": true}, "metrics": {"enabled": true}});
    let rendered = render("bosh-envoy", metrics.clone(), default_link());
    let telemetry = boshy::xds::bootstrap::Telemetry {
        access_log_socket: ACCESS_LOG_SOCKET.into(),
        metrics: Some(boshy::xds::bootstrap::MetricsListener {
            listen: "0.0.0.0:15090".parse().unwrap(),
            agent: boshy::xds::bootstrap::DEFAULT_AGENT_METRICS
                .parse()
                .unwrap(),
        }),
    };
    let rust = rust_sidecar_bootstrap(Some(&telemetry));
    let bootstrap = rendered.json("config/envoy.json");
    assert_eq!(bootstrap, rust);
    assert_eq!(
        bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
        15090
    );
    let volume = |writable: bool| {
        json!([
            {"path": "/var/vcap/data/boshy-identity", "writable": writable},
            {"path": "/var/vcap/data/boshy-metrics", "writable": writable},
        ])
    };
    assert_eq!(bpm_volumes(&rendered), volume(false));
    envoy_validate(&rendered.rebased().path("config/envoy.json"));

    let agent = render("virtual-ip-agent", metrics, default_link());
    assert_eq!(bpm_volumes(&agent), volume(true));
    assert_eq!(
        agent.json("config/agent.yml")["telemetry"],
        json!({
            "access_log_socket": ACCESS_LOG_SOCKET,
            "metrics_listen": "127.0.0.1:15020",
            "max_series": 10000,
        })
    );
    let agent = agent.rebased();
    let bpm = jobs::read_bpm(&agent.path("config/bpm.yml")).unwrap();
    assert_success(
        &check_bpm_process(&bpm.processes[0]),
        "virtual-ip-agent --check-config (metrics)",
    );

    // Off by default: no access log cluster, no listener, no volume.
    let rendered = render("bosh-envoy", json!({}), default_link());
    let bootstrap = rendered.json("config/envoy.json");
    assert!(bootstrap["static_resources"].get("listeners").is_none());
    assert!(!rendered
        .text("config/envoy.json")
        .contains("boshy-telemetry"));
    assert!(render("virtual-ip-agent", json!({}), default_link())
        .json("config/agent.yml")
        .get("telemetry")
        .is_none());
}

#[test]
fn example_httpbin_runs_with_the_instance_identity_from_spec() {
    let rendered = render("example-httpbin", json!({"port": 9002}), default_link());
    let args = &jobs::read_bpm(&rendered.path("config/bpm.yml"))
        .unwrap()
        .processes[0]
        .args;
    let joined = args.join(" ");
    assert!(
        joined.starts_with("example-httpbin --listen 0.0.0.0:9002"),
        "{joined}"
    );
    for expected in [
        "--deployment sample-deployment",
        "--instance-group apricot",
        "--index 3",
        "--az z1",
        "--ip 10.244.0.7",
    ] {
        assert!(
            joined.contains(expected),
            "{expected} missing from {joined}"
        );
    }
    let mut spec = spec();
    spec.az = None;
    let rendered = render_for("example-httpbin", json!({}), default_link(), &spec);
    let args = &jobs::read_bpm(&rendered.path("config/bpm.yml"))
        .unwrap()
        .processes[0]
        .args;
    assert!(args.contains(&"0.0.0.0:8080".to_string()), "{args:?}");
    assert!(!args.contains(&"--az".to_string()), "{args:?}");
}

fn bpm_args(rendered: &Rendered) -> Vec<String> {
    jobs::read_bpm(&rendered.path("config/bpm.yml"))
        .unwrap()
        .processes[0]
        .args
        .clone()
}

/// The value after `flag` in a process's arguments.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[at + 1]
}

#[test]
fn bookinfo_runs_its_part_with_the_instance_identity_from_spec() {
    let rendered = render(
        "bookinfo",
        json!({"part": "reviews", "version": "v2"}),
        default_link(),
    );
    let args = bpm_args(&rendered);
    let joined = args.join(" ");
    assert!(
        joined.starts_with("example-bookinfo --part reviews --version v2 --listen 0.0.0.0:9080"),
        "{joined}"
    );
    for expected in [
        "--deployment sample-deployment",
        "--instance-group apricot",
        "--instance-id 6d0e0b4c-1111-4a4a-9b9b-000000000003",
        "--index 3",
        "--az z1",
        "--ip 10.244.0.7",
        "--details-url http://bookinfo.details.bookinfo.boshy:9080",
        "--reviews-url http://reviews.bookinfo.boshy:9080",
        "--ratings-url http://bookinfo.ratings.bookinfo.boshy:9080",
    ] {
        assert!(
            joined.contains(expected),
            "{expected} missing from {joined}"
        );
    }
    assert!(!joined.contains("--upstream-timeout-ms"), "{joined}");
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_success(&check_bpm_process(&bpm.processes[0]), "bookinfo reviews v2");

    let other = json!({
        "part": "productpage",
        "port": 80,
        "upstream_timeout_ms": 1500,
        "reviews_url": "http://bookinfo.reviews-v3.bookinfo.boshy:9080",
    });
    let rendered = render("bookinfo", other, default_link());
    let args = bpm_args(&rendered);
    assert_eq!(arg(&args, "--listen"), "0.0.0.0:80");
    assert_eq!(arg(&args, "--version"), "v1");
    assert_eq!(arg(&args, "--upstream-timeout-ms"), "1500");
    assert_eq!(
        arg(&args, "--reviews-url"),
        "http://bookinfo.reviews-v3.bookinfo.boshy:9080"
    );
    assert!(
        rendered.text("config/bpm.yml").contains("NET_BIND_SERVICE"),
        "port 80 needs the capability"
    );
    let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
    assert_success(
        &check_bpm_process(&bpm.processes[0]),
        "bookinfo productpage",
    );

    for (properties, message) in [
        (
            json!({}),
            "bookinfo: property `part` must be one of productpage, details, ratings, reviews, \
             not nil",
        ),
        (
            json!({"part": "ingress"}),
            "bookinfo: property `part` must be one of productpage, details, ratings, reviews, \
             not \"ingress\"",
        ),
        (
            json!({"part": "reviews", "version": "v4"}),
            "bookinfo: property `version` must be one of v1, v2, v3, not \"v4\"",
        ),
    ] {
        let error = try_render(
            &jobs::release_dir(),
            "bookinfo",
            properties.clone(),
            &spec(),
            None,
        )
        .err()
        .unwrap_or_else(|| panic!("{properties} must fail the render"));
        assert!(
            format!("{error:#}").contains(message),
            "{properties}: {error:#}"
        );
    }
}

/// The lab's bookinfo deployment (fixtures/director/bookinfo.yml), each instance group's job
/// rendered with its manifest properties as the lab renders it: the binary accepts the
/// arguments, listens on the port the job exposes, and plays the part and version its labels
/// name (the rules select instances by those labels).
#[test]
fn the_bookinfo_lab_deployment_plays_each_part_where_its_labels_say() {
    let doc = manifests::yaml(&jobs::release_dir().join("fixtures/director/bookinfo.yml"));
    assert_eq!(doc["name"], "bookinfo");
    let mut played = BTreeSet::new();
    for (group, job) in manifests::release_jobs(&doc) {
        assert_eq!(job["name"], "bookinfo", "{group}");
        let mut spec = spec();
        spec.deployment = "bookinfo".into();
        spec.name = group.into();
        let properties = serde_json::to_value(&job["properties"]).unwrap();
        let rendered = render_for("bookinfo", properties, default_link(), &spec);
        let bpm = jobs::read_bpm(&rendered.path("config/bpm.yml")).unwrap();
        assert_success(&check_bpm_process(&bpm.processes[0]), group);
        let args = &bpm.processes[0].args;
        let port: u64 = arg(args, "--listen")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&job["expose_ports"]).unwrap(),
            json!([{"name": "http", "number": port}]),
            "{group}"
        );
        let labels = &job["expose_labels"];
        let (part, version) = (arg(args, "--part"), arg(args, "--version"));
        assert_eq!(labels["app"].as_str(), Some(part), "{group}");
        assert_eq!(labels["version"].as_str(), Some(version), "{group}");
        played.insert(format!("{part} {version}"));
    }
    assert_eq!(
        played,
        [
            "details v1",
            "productpage v1",
            "ratings v1",
            "reviews v1",
            "reviews v2",
            "reviews v3"
        ]
        .map(String::from)
        .into()
    );
}

/// A release whose jobs exercise the renderer rather than the mesh.
fn fixture_release() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release")
}

/// Binding as the director binds at deploy time: each declared name walked out of the
/// manifest as written (a `((variable))` stays a string), defaults for the rest, and the
/// director's error for a value in the way of a dotted name.
#[test]
fn binding_follows_the_director_before_variables_are_resolved() {
    let release = fixture_release();
    let written = json!({"required": "((secret))", "nested": {"deep": {"value": "((list))"}}});
    assert_eq!(
        jobs::bind(&release, "probe", &written).unwrap(),
        json!({
            "required": "((secret))",
            "with_default": 7,
            "unset": null,
            "nested": {"deep": {"value": "((list))"}},
            "private_link_property": false,
        })
    );
    for (written, received) in [
        (json!({"nested": "((nested))"}), "String"),
        (json!({"nested": {"deep": 1}}), "Integer"),
    ] {
        let error = format!("{:#}", jobs::bind(&release, "probe", &written).unwrap_err());
        assert!(
            error.contains(&format!(
                "job `probe`: Property 'nested.deep.value' expects a hash, but received '{received}'"
            )),
            "{written}: {error}"
        );
    }
}

/// The renderer itself, on a fixture release that exercises every helper of bosh-template.
#[test]
fn renderer_follows_bosh_template_semantics() {
    let release = fixture_release();
    let link = Link {
        instances: vec![LinkInstance {
            name: "provider-group".into(),
            id: "p-id".into(),
            index: Some(0),
            az: Some("z9".into()),
            address: "10.1.1.1".into(),
            bootstrap: true,
        }],
        address: Some("q-s0.provider-group.net.dep.bosh".into()),
        provider: LinkProvider {
            job: "provider".into(),
            properties: json!({"nested": {"value": "v"}, "private": "p"}),
        },
    };
    let probe = |properties: Value| {
        let root = tempfile::tempdir().unwrap();
        let job = JobRender {
            name: "probe".into(),
            output: root.path().join("probe"),
            properties,
            links: [("thing".to_string(), link.clone())].into(),
        };
        jobs::render(&release, &spec(), &[job]).map(|_| root)
    };
    let root = probe(json!({"required": "r"})).unwrap();
    let out: Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join("probe/config/out.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({
            "required": "r",
            "with_default": 7,
            "unset_or": "fallback",
            "first_set": 7,
            "nested": [1, 2],
            "properties_struct": 7,
            "spec": ["sample-deployment", "apricot", spec().id, 3, "z1", "10.244.0.7", "10.244.0.7", false, "probe", "probe", 3],
            "link_instances": [["provider-group", "p-id", 0, "z9", "10.1.1.1", true]],
            "link_address": "q-s0.provider-group.net.dep.bosh",
            "link_shared": "from-default",
            "link_nested": "v",
            "if_unset": "else",
            "if_both": ["r", 7],
            "else_if": 7,
            "absent": "absent",
            "thing_instances": 1,
        })
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("probe/monit")).unwrap(),
        "check process probe-3\n",
        "monit is a template too"
    );

    let error = |result: anyhow::Result<tempfile::TempDir>| format!("{:#}", result.unwrap_err());
    let missing = error(probe(json!({})));
    assert!(
        missing.contains("`required` is not set and has no default"),
        "{missing}"
    );
    let undeclared = error(probe(json!({"required": "r", "colour": "red"})));
    assert!(
        undeclared.contains("`colour`") && undeclared.contains("does not declare"),
        "{undeclared}"
    );
    let private = error(probe(
        json!({"required": "r", "private_link_property": true}),
    ));
    assert!(
        private.contains("property `private` is not among"),
        "{private}"
    );
}

#[test]
fn a_template_using_an_undeclared_property_fails_even_with_a_default() {
    let release = fixture_release();
    let error = try_render(&release, "undeclared", json!({}), &spec(), None)
        .err()
        .expect("an undeclared property must fail the render");
    let message = format!("{error:#}");
    assert!(
        message.contains("property `not.declared` is not declared") && message.contains("out.erb"),
        "{message}"
    );
}

#[test]
fn a_job_given_a_link_it_does_not_consume_fails() {
    let error = try_render(
        &jobs::release_dir(),
        "example-httpbin",
        json!({}),
        &spec(),
        Some(default_link()),
    )
    .err()
    .expect("example-httpbin consumes no link");
    assert!(
        format!("{error:#}").contains("does not consume it"),
        "{error:#}"
    );
}

/// The errand against the real control-plane API, with services that answer and one that
/// does not (resolved by the system resolver: `localhost`).
#[tokio::test(flavor = "multi_thread")]
async fn smoke_tests_errand_reports_every_service_and_fails_when_one_does_not_answer() {
    let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let answering_port = answering.local_addr().unwrap().port();
    tokio::spawn(async move {
        let args = boshy::httpbin::Args {
            listen: "127.0.0.1:0".parse().unwrap(),
            instance: boshy::workload::Instance {
                deployment: "d".into(),
                instance_group: "g".into(),
                index: Some(0),
                instance_id: "i".into(),
                ..Default::default()
            },
        };
        axum::serve(
            answering,
            boshy::httpbin::router(&args).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    // A port nothing listens on: bound, then released.
    let silent_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The hostname is `localhost`: Envoy's bootstrap-only config resolves nothing else.
    let service = |deployment: &str, port: u16, protocol: Protocol| Service {
        hostname: "localhost".into(),
        ..testing::service(deployment, "g", "j")
            .port("p", port, protocol)
            .endpoint(Endpoint {
                instance: "i".into(),
                index: Some(0),
                ..testing::endpoint("127.0.0.1")
            })
            .build()
    };
    let catalog = Catalog {
        version: 1,
        tld: "boshy".into(),
        services: vec![
            service("up", answering_port, Protocol::Http),
            service("up", answering_port, Protocol::Tcp),
            service("down", silent_port, Protocol::Http),
        ],
    };
    let (_keep, catalogs) = tokio::sync::watch::channel(Arc::new(catalog));
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = api.local_addr().unwrap().port();
    let (_keep_rules, rule_configs) = tokio::sync::watch::channel(None);
    let (_keep_status, rule_status) = tokio::sync::watch::channel(None);
    tokio::spawn(boshy::api::serve(
        api,
        catalogs,
        rule_configs,
        rule_status,
        boshy::api::Proxies::none(),
    ));

    let run = |deployments: Value| async move {
        let link = pilot_link(&["127.0.0.1"], json!({"ports": {"api": api_port}}));
        let properties =
            json!({"deployments": deployments, "wait_seconds": 0, "request_timeout_seconds": 2});
        let rendered = render("smoke-tests", properties, link);
        let script = rendered.path("bin/run");
        let output = tokio::process::Command::new("bash")
            .arg(&script)
            .output()
            .await
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };

    let (code, report) = run(json!(["up"])).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report.matches("OK    localhost:").count(), 2, "{report}");
    assert!(report.contains("2 of 2 service ports answered"), "{report}");

    let (code, report) = run(json!([])).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("FAIL  localhost:{silent_port} (http)")),
        "{report}"
    );
    assert!(report.contains("2 of 3 service ports answered"), "{report}");

    let (code, report) = run(json!(["elsewhere"])).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("no service to check"), "{report}");
}
