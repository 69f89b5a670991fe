//! This release's BOSH jobs, rendered the way the director renders them (by
//! `scripts/lib/render-template.rb`, which follows bosh-template), and read back the way bpm
//! reads them. The lab installs every job of a VM with these; `tests/templates.rs` checks
//! every template with them.
//!
//! Rendered files carry the real `/var/vcap/...` paths; [`rebase`] points them at a directory
//! that stands in for `/var/vcap` (a lab VM's root, a test's temporary directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The prefix every path in a rendered job has on a real BOSH VM.
pub const VCAP: &str = "/var/vcap/";

/// The release: where `jobs/`, `packages/` and the renderer are (the workspace's root, two
/// levels above this crate).
pub fn release_dir() -> PathBuf {
    let lab_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    lab_crate
        .ancestors()
        .nth(2)
        .expect("the lab crate is tools/lab of the workspace")
        .to_path_buf()
}

/// The instance a job is rendered for: bosh-template's `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub deployment: String,
    /// The instance group.
    pub name: String,
    pub id: String,
    pub index: Option<u32>,
    pub az: Option<String>,
    pub ip: String,
    pub address: String,
    pub bootstrap: bool,
}

/// One instance of a link's provider: what `link(name).instances` yields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInstance {
    /// The provider's instance group.
    pub name: String,
    pub id: String,
    pub index: Option<u32>,
    pub az: Option<String>,
    pub address: String,
    pub bootstrap: bool,
}

/// A resolved link: its provider job (whose spec says which properties it shares) with that
/// job's manifest properties, and the provider's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub instances: Vec<LinkInstance>,
    /// `link(name).address`: the group's DNS address where bosh-dns serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub provider: LinkProvider,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProvider {
    pub job: String,
    pub properties: Value,
}

/// One job to render: the job's manifest properties, its links, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRender {
    pub name: String,
    pub output: PathBuf,
    pub properties: Value,
    #[serde(default)]
    pub links: BTreeMap<String, Link>,
}

/// Renders every template (and `monit`) of `jobs` (found in `release`/jobs) for one instance,
/// in one run of the renderer. Fails with the renderer's own message: which job, template and
/// property.
pub fn render(release: &Path, spec: &InstanceSpec, jobs: &[JobRender]) -> Result<()> {
    let context = serde_json::json!({ "spec": spec, "jobs": jobs });
    run_renderer(&[release.as_os_str()], &context).with_context(|| {
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        format!(
            "rendering {} for {}/{}",
            names.join(", "),
            spec.name,
            spec.id
        )
    })?;
    Ok(())
}

/// The properties the director binds to `job` at deploy time, from the job's `properties` as
/// the manifest writes them (`((variables))` still strings; they are resolved only when the
/// templates are rendered): each property its spec declares, walked out of the manifest by its
/// dotted name, else its default. Fails with the director's own message when a value is in the
/// way of a dotted name ("Property 'tls.ca' expects a hash, but received 'String'").
pub fn bind(release: &Path, job: &str, manifest_properties: &Value) -> Result<Value> {
    let input = serde_json::json!({ "job": job, "properties": manifest_properties });
    let output = run_renderer(&["--bind".as_ref(), release.as_os_str()], &input)
        .with_context(|| format!("binding the properties of job {job} to its spec"))?;
    serde_json::from_slice(&output)
        .with_context(|| format!("the renderer's bound properties of job {job} are not JSON"))
}

/// Runs scripts/lib/render-template.rb with `args`, `input` as JSON on stdin; its stdout, or
/// its own error message.
fn run_renderer(args: &[&std::ffi::OsStr], input: &Value) -> Result<Vec<u8>> {
    let renderer = release_dir().join("scripts/lib/render-template.rb");
    // The input goes through stdin: it may hold secrets (argv is visible to every user).
    let mut child = Command::new("ruby")
        .arg(&renderer)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ruby` to render the job templates (apt-get install ruby)")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.to_string().as_bytes())
        .context("cannot send the render context to the renderer")?;
    let output = child
        .wait_with_output()
        .context("the template renderer did not finish")?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}

/// `/var/vcap/...` → `<root>/...` in one rendered file's text.
pub fn rebase_text(text: &str, root: &Path) -> String {
    text.replace(VCAP, &format!("{}/", root.display()))
}

/// Rewrites every rendered file under `dir` so that its `/var/vcap/` paths point into `root`.
/// Files keep their mode (bin/ scripts stay executable).
pub fn rebase(dir: &Path, root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rebase(&path, root)?;
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let rebased = rebase_text(&text, root);
        if rebased != text {
            std::fs::write(&path, rebased)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// A rendered `config/bpm.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BpmConfig {
    pub processes: Vec<BpmProcess>,
}

/// One process of a bpm config: what bpm would run. Keys bpm has that the lab does not
/// emulate (limits, capabilities, ephemeral_disk, ...) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BpmProcess {
    pub name: String,
    pub executable: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ephemeral_disk: bool,
}

impl BpmProcess {
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.executable.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

pub fn read_bpm(path: &Path) -> Result<BpmConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}: not a bpm config", path.display()))
}

/// `base` with every key of `overrides` set, recursing into maps: how the lab lays its own
/// settings (fast poll intervals, its director) over a manifest's job properties.
pub fn deep_merge(base: &Value, overrides: &Value) -> Value {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            let mut merged = base.clone();
            for (key, value) in overrides {
                let entry = merged.entry(key.clone()).or_insert(Value::Null);
                *entry = deep_merge(entry, value);
            }
            Value::Object(merged)
        }
        (_, overrides) => overrides.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_overrides_leaves_and_keeps_siblings() {
        let base = json!({"director": {"url": "https://a", "client": "c"}, "tld": "boshy"});
        let overrides = json!({"director": {"url": "https://b"}, "ports": {"api": 1}});
        assert_eq!(
            deep_merge(&base, &overrides),
            json!({"director": {"url": "https://b", "client": "c"}, "tld": "boshy", "ports": {"api": 1}})
        );
        assert_eq!(deep_merge(&Value::Null, &overrides), overrides);
    }

    #[test]
    fn rebase_points_vcap_paths_into_the_root() {
        let text = "exec /var/vcap/packages/boshy/bin/boshy --config /var/vcap/jobs/x/config/a.yml\n/var/vcapx stays";
        assert_eq!(
            rebase_text(text, Path::new("/tmp/vm")),
            "exec /tmp/vm/packages/boshy/bin/boshy --config /tmp/vm/jobs/x/config/a.yml\n/var/vcapx stays"
        );
    }

    #[test]
    fn bpm_process_argv_is_executable_then_args() {
        let bpm: BpmConfig = serde_yaml::from_str(
            "processes:\n- name: envoy\n  executable: /e\n  args: [-c, f]\n  limits: {open_files: 1}\n",
        )
        .unwrap();
        assert_eq!(bpm.processes[0].argv(), ["/e", "-c", "f"]);
        assert!(bpm.processes[0].env.is_empty());
    }
}
