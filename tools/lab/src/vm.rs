//! What each lab VM runs: planned purely from the simulated director's state (the
//! deployment manifests and instances), the way BOSH plus the runtime-config addon would
//! place jobs on VMs; then installed the way a BOSH agent installs jobs: this release's job
//! templates rendered into the VM's stand-in for /var/vcap, bin/pre-start run as pre-start,
//! and each process started as the job's bpm.yml says. Starting the plan is in `mod.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::binaries;
use super::director::{SimInstance, SimState};
use super::jobs::{self, InstanceSpec, JobRender, Link, LinkInstance, LinkProvider};
use super::process::ProcessSpec;
use super::Layout;

/// The deployment of the control plane; the addon excludes it, as the runtime config does.
pub const CONTROL_PLANE_DEPLOYMENT: &str = "bosh-istio";
pub const PILOT_JOB: &str = "bosh-pilot";
/// The link bosh-pilot provides and the addon consumes.
pub const PILOT_LINK: &str = "bosh-pilot";
pub const RELEASE: &str = "boshy-istio";
/// The runtime-config addon's jobs (manifests/runtime-config.yml).
pub const ADDON_JOBS: [&str; 2] = ["virtual-ip-agent", "bosh-envoy"];
/// bosh-pilot's `ports.api` and bosh-envoy's `admin_port` defaults, which the lab keeps.
pub const API_PORT: u16 = 8080;
pub const ENVOY_ADMIN: &str = "127.0.0.1:8001";

/// One BOSH VM of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub deployment: String,
    pub instance_group: String,
    pub index: Option<u32>,
    pub id: String,
    pub az: Option<String>,
    pub ip: Ipv4Addr,
    pub namespace: String,
    /// Root-namespace end of the VM's veth pair.
    pub veth: String,
    /// The directory standing in for the VM's /var/vcap.
    pub root: PathBuf,
    /// The jobs BOSH would place here, with the properties and links they are rendered with
    /// (secrets are added only when rendering, as CredHub would interpolate them).
    pub jobs: Vec<JobRender>,
    /// One-shot commands run before the processes (each job's bin/pre-start); set by
    /// [`install_jobs`].
    pub pre_start: Vec<Vec<String>>,
    /// Each job's bin/drain, run before the processes stop in an update; set by
    /// [`install_jobs`].
    #[serde(default)]
    pub drain: Vec<Vec<String>>,
    /// Each job's bin/post-stop, run once the processes stopped; set by [`install_jobs`].
    #[serde(default)]
    pub post_stop: Vec<Vec<String>>,
    /// Every process of every job's bpm.yml; set by [`install_jobs`].
    pub processes: Vec<ProcessSpec>,
}

impl Vm {
    /// `deployment/instance_group/index`, the way `bosh instances` names it.
    pub fn name(&self) -> String {
        format!(
            "{}/{}/{}",
            self.deployment,
            self.instance_group,
            self.index
                .map_or_else(|| self.id.clone(), |i| i.to_string())
        )
    }

    /// The name bosh-dns gives this instance on a real BOSH VM,
    /// `<instance id>.<instance group>.<network>.<deployment>.bosh` (the fixtures' names are
    /// DNS labels already, and every lab VM is on their one network, `default`).
    fn bosh_dns_name(&self) -> String {
        format!(
            "{}.{}.default.{}.bosh",
            self.id, self.instance_group, self.deployment
        )
    }

    pub fn runs_addon(&self) -> bool {
        self.deployment != CONTROL_PLANE_DEPLOYMENT
    }

    pub fn process_mut(&mut self, name: &str) -> Option<&mut ProcessSpec> {
        self.processes.iter_mut().find(|p| p.name == name)
    }

    /// bosh-template's `spec` for this VM's jobs.
    pub fn instance_spec(&self) -> InstanceSpec {
        InstanceSpec {
            deployment: self.deployment.clone(),
            name: self.instance_group.clone(),
            id: self.id.clone(),
            index: self.index,
            az: self.az.clone(),
            ip: self.ip.to_string(),
            address: self.ip.to_string(),
            bootstrap: self.index == Some(0),
        }
    }
}

/// A job of this release placed on an instance group by a deployment manifest.
#[derive(Debug, Clone)]
struct ManifestJob {
    name: String,
    properties: Value,
    /// Link names this job consumes from bosh-pilot (`consumes: {<name>: {from: bosh-pilot}}`).
    pilot_links: Vec<String>,
}

fn manifest_jobs(manifest: &str, instance_group: &str) -> Vec<ManifestJob> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(manifest) else {
        return Vec::new();
    };
    let groups = doc["instance_groups"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    groups
        .iter()
        .filter(|g| g["name"].as_str() == Some(instance_group))
        .flat_map(|g| g["jobs"].as_sequence().cloned().unwrap_or_default())
        .filter(|job| job["release"].as_str() == Some(RELEASE))
        .filter_map(|job| {
            let pilot_links = job["consumes"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter(|(_, from)| from["from"].as_str() == Some(PILOT_LINK))
                .filter_map(|(name, _)| name.as_str().map(str::to_string))
                .collect();
            Some(ManifestJob {
                name: job["name"].as_str()?.to_string(),
                properties: match &job["properties"] {
                    serde_yaml::Value::Null => json!({}),
                    props => serde_json::to_value(props).ok()?,
                },
                pilot_links,
            })
        })
        .collect()
}

/// The first usable IPv4 of an instance (docs/director-api.md §7.7: entries may be CIDR or IPv6).
fn instance_ip(instance: &SimInstance) -> Option<Ipv4Addr> {
    instance
        .ips
        .iter()
        .find_map(|ip| ip.split('/').next()?.parse().ok())
}

/// The lab's own bosh-pilot properties, laid over the manifest's as an operator's manifest
/// would set them: the lab's director, fast polling, the lab's tld and VIP range.
fn lab_pilot_properties(layout: &Layout) -> Value {
    json!({
        "director": {
            "url": format!("https://{}:25555", layout.director_ip()),
            "client": super::DIRECTOR_CLIENT,
            "poll_interval_seconds": 1,
            "health_interval_seconds": 2,
            // One reading per 200 ms: each of the lab's deployments within its 2 s, and a
            // new VM or a job flipped to failing seen as quickly as before the budget.
            "health_tasks_per_minute": 300,
            "task_timeout_seconds": 20,
            "request_timeout_seconds": 5,
        },
        "tld": layout.tld,
        "virtual_ip_cidr": layout.vip_cidr.to_string(),
        // Workload certificates live 72 s (renewed every 36 s): the lab shows rotation
        // under traffic all the time, not once a day.
        "identity": {"certificate_ttl_hours": LAB_CERTIFICATE_TTL_HOURS},
        // VMs outside BOSH (`lab outside`): heartbeats every 2 s, out of every Envoy after 6 s
        // of silence, deregistered after 2 minutes of it; their mesh certificates live 72 s
        // (renewed every 36 s), as the workload certificates do, to show renewal in minutes.
        "workloads": {
            "heartbeat_seconds": 2,
            "ttl_seconds": 6,
            "deregister_after_seconds": 120,
            "certificate_ttl_seconds": LAB_VM_CERTIFICATE_TTL_SECONDS,
        },
        // Spans go to a collector on the host, if one runs there; 1% of requests, or those a
        // caller marks with B3's `x-b3-sampled: 1`.
        "tracing": {"zipkin_collector": layout.zipkin_collector().to_string()},
    })
}

/// The lab's workload certificate lifetime (72 s).
const LAB_CERTIFICATE_TTL_HOURS: f64 = 0.02;
/// The lab's lifetime of a joined VM's mesh certificate: the same 72 s.
const LAB_VM_CERTIFICATE_TTL_SECONDS: u64 = 72;

/// The addon's properties in the lab, as runtime-config.yml would set them. No bosh-dns runs
/// in the lab, so the agent is the VM's resolver on port 53 (its netns resolv.conf points
/// at 127.0.0.1); one Envoy worker per VM is plenty for a lab.
fn lab_addon_properties(job: &str) -> Value {
    match job {
        "virtual-ip-agent" => json!({
            "dns": {"port": 53},
            "identity": {"enabled": true},
            "metrics": {"enabled": true},
        }),
        "bosh-envoy" => json!({
            "concurrency": 1,
            "log_level": "warning",
            "identity": {"enabled": true},
            "metrics": {"enabled": true},
        }),
        _ => json!({}),
    }
}

/// The /etc/hosts of every lab VM (`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
/// it): localhost, and the bosh-dns instance name of each of `vms`. No bosh-dns runs in the
/// lab (each VM's nameserver is its virtual-ip-agent, which answers for the mesh's tld alone);
/// glibc and c-ares, Envoy's resolver, read /etc/hosts before asking a nameserver, so these
/// names resolve as bosh-dns would resolve them: what a ServiceEntry resolved through DNS
/// names, a service outside the mesh by its own DNS name.
pub(crate) fn hosts_file(vms: &[Vm]) -> String {
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for vm in vms {
        hosts.push_str(&format!("{} {}\n", vm.ip, vm.bosh_dns_name()));
    }
    hosts
}

/// Every VM the simulated director says exists (instances with a VM and an IPv4).
pub fn plan(layout: &Layout, state: &SimState) -> Result<Vec<Vm>> {
    let pilot_link = pilot_link(layout, state);
    let mut vms = Vec::new();
    for deployment in &state.deployments {
        let manifest = deployment.manifest.as_deref().unwrap_or_default();
        for instance in &deployment.instances {
            let (Some(_), Some(ip)) = (&instance.vm_cid, instance_ip(instance)) else {
                continue;
            };
            let jobs = manifest_jobs(manifest, &instance.job_name);
            vms.push(plan_vm(
                layout,
                &deployment.name,
                instance,
                ip,
                &jobs,
                &pilot_link,
            ));
        }
    }
    Ok(vms)
}

/// The bosh-pilot link as the director would resolve it: every bosh-istio instance that
/// runs bosh-pilot, and that job's properties (the manifest's, with the lab's laid over).
fn pilot_link(layout: &Layout, state: &SimState) -> Link {
    let mut properties = lab_pilot_properties(layout);
    let mut instances = Vec::new();
    for deployment in state
        .deployments
        .iter()
        .filter(|d| d.name == CONTROL_PLANE_DEPLOYMENT)
    {
        let manifest = deployment.manifest.as_deref().unwrap_or_default();
        for instance in &deployment.instances {
            let Some(pilot) = manifest_jobs(manifest, &instance.job_name)
                .into_iter()
                .find(|j| j.name == PILOT_JOB)
            else {
                continue;
            };
            properties = jobs::deep_merge(&pilot.properties, &lab_pilot_properties(layout));
            let (Some(_), Some(ip)) = (&instance.vm_cid, instance_ip(instance)) else {
                continue;
            };
            instances.push(LinkInstance {
                name: instance.job_name.clone(),
                id: instance.id.clone(),
                index: instance.index,
                az: instance.az.clone(),
                address: ip.to_string(),
                bootstrap: instance.index == Some(0),
            });
        }
    }
    Link {
        instances,
        address: None,
        provider: LinkProvider {
            job: PILOT_JOB.into(),
            properties,
        },
    }
}

fn plan_vm(
    layout: &Layout,
    deployment: &str,
    instance: &SimInstance,
    ip: Ipv4Addr,
    manifest_jobs: &[ManifestJob],
    pilot_link: &Link,
) -> Vm {
    let index = instance
        .index
        .map_or_else(|| instance.id.clone(), |i| i.to_string());
    let namespace = format!(
        "{}-{}-{}-{}",
        layout.name, deployment, instance.job_name, index
    );
    let root = layout.dir.join("vms").join(&namespace);
    let job_dir = |name: &str| root.join("jobs").join(name);
    let links_named = |names: &[String]| -> BTreeMap<String, Link> {
        names
            .iter()
            .map(|name| (name.clone(), pilot_link.clone()))
            .collect()
    };
    let mut jobs: Vec<JobRender> = manifest_jobs
        .iter()
        .map(|job| JobRender {
            name: job.name.clone(),
            output: job_dir(&job.name),
            properties: if job.name == PILOT_JOB {
                jobs::deep_merge(&job.properties, &lab_pilot_properties(layout))
            } else {
                job.properties.clone()
            },
            links: links_named(&job.pilot_links),
        })
        .collect();
    if deployment != CONTROL_PLANE_DEPLOYMENT {
        jobs.extend(ADDON_JOBS.iter().map(|name| JobRender {
            name: name.to_string(),
            output: job_dir(name),
            properties: lab_addon_properties(name),
            links: links_named(&[PILOT_LINK.to_string()]),
        }));
    }
    Vm {
        deployment: deployment.to_string(),
        instance_group: instance.job_name.clone(),
        index: instance.index,
        id: instance.id.clone(),
        az: instance.az.clone(),
        ip,
        veth: format!("{}{}", layout.name, ip.octets()[3]),
        namespace,
        root,
        jobs,
        pre_start: Vec::new(),
        drain: Vec::new(),
        post_stop: Vec::new(),
        processes: Vec::new(),
    }
}

/// Installs the VM's jobs as a BOSH agent would: renders every template into
/// `<root>/jobs/<job>/` (paths rebased from /var/vcap to the VM's root), links the packages,
/// creates each job's data and log directories, and reads back what to run: bin/pre-start,
/// bin/drain and bin/post-stop into `pre_start`, `drain` and `post_stop`, every bpm.yml process
/// into `processes`.
pub fn install_jobs(layout: &Layout, vm: &mut Vm) -> Result<()> {
    let jobs_dir = vm.root.join("jobs");
    if jobs_dir.exists() {
        std::fs::remove_dir_all(&jobs_dir)
            .with_context(|| format!("cannot clear {}", jobs_dir.display()))?;
    }
    let with_secrets = vm
        .jobs
        .iter()
        .map(|job| with_lab_secrets(layout, job))
        .collect::<Result<Vec<_>>>()?;
    jobs::render(&jobs::release_dir(), &vm.instance_spec(), &with_secrets)
        .with_context(|| format!("installing the jobs of {}", vm.name()))?;
    jobs::rebase(&jobs_dir, &vm.root)?;
    // The package holds both binaries; the virtual-ip-agent job runs the agent's own.
    link_package(
        &vm.root,
        "boshy",
        &[
            (binaries::BOSHY, &layout.boshy_bin),
            (binaries::VIRTUAL_IP_AGENT, &layout.virtual_ip_agent_bin),
        ],
    )?;
    link_package(&vm.root, "envoy", &[("envoy", &layout.envoy_bin)])?;

    // The SDS and access log sockets' directories, which bpm creates as volumes of the
    // virtual-ip-agent and bosh-envoy jobs alone (the lab plays bpm).
    for shared in ["data/boshy-identity", "data/boshy-metrics"] {
        let dir = vm.root.join(shared);
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    vm.pre_start.clear();
    vm.drain.clear();
    vm.post_stop.clear();
    vm.processes.clear();
    for job in &vm.jobs {
        for dir in [
            vm.root.join("data").join(&job.name),
            vm.root.join("sys/log").join(&job.name),
        ] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for (script, commands) in [
            ("bin/pre-start", &mut vm.pre_start),
            ("bin/drain", &mut vm.drain),
            ("bin/post-stop", &mut vm.post_stop),
        ] {
            let path = job.output.join(script);
            if path.exists() {
                commands.push(vec![path.display().to_string()]);
            }
        }
        // The one process monit runs outside bpm: `dnat follow` (as root), which keeps the
        // inbound capture in step with the ports the agent writes. Its start program only
        // backgrounds `bin/dnat follow`, which the lab runs in the foreground instead.
        let inbound_capture = job.output.join("bin/inbound_capture");
        if inbound_capture.exists() {
            vm.processes.push(ProcessSpec {
                log: vm
                    .root
                    .join("sys/log")
                    .join(&job.name)
                    .join("inbound-capture.log"),
                argv: vec![
                    job.output.join("bin/dnat").display().to_string(),
                    "follow".into(),
                ],
                env: Vec::new(),
                name: "inbound-capture".into(),
                pid: None,
                started: None,
            });
        }
        let bpm = job.output.join("config/bpm.yml");
        if !bpm.exists() {
            continue;
        }
        for process in jobs::read_bpm(&bpm)?.processes {
            vm.processes.push(ProcessSpec {
                log: vm
                    .root
                    .join("sys/log")
                    .join(&job.name)
                    .join(format!("{}.log", process.name)),
                argv: process.argv(),
                env: process.env.into_iter().collect(),
                name: process.name,
                pid: None,
                started: None,
            });
        }
    }
    Ok(())
}

/// The director's client secret and CA go into bosh-pilot's properties only here, read from
/// the simulator's files, so that they are never saved in the lab's state; so do the mesh's
/// certificates (`tls`) of the pilot and of the addon's jobs.
fn with_lab_secrets(layout: &Layout, job: &JobRender) -> Result<JobRender> {
    let mut job = job.clone();
    let mesh = super::pki::MeshFiles::of(layout);
    let tls = match job.name.as_str() {
        PILOT_JOB => Some(mesh.property("pilot")?),
        name if ADDON_JOBS.contains(&name) => Some(mesh.property("client")?),
        _ => None,
    };
    if let Some(tls) = tls {
        job.properties = jobs::deep_merge(&job.properties, &json!({ "tls": tls }));
    }
    if job.name == PILOT_JOB {
        let identity = json!({
            "identity": {"ca": mesh.workload_ca_property()?},
            "workloads": {"mesh_ca": mesh.mesh_ca_property()?},
        });
        job.properties = jobs::deep_merge(&job.properties, &identity);
    }
    if job.name == PILOT_JOB {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let secrets = json!({"director": {
            "client_secret": read(&layout.client_secret_path())?.trim_end(),
            "ca_cert": read(&layout.director_ca_path())?,
        }});
        job.properties = jobs::deep_merge(&job.properties, &secrets);
    }
    Ok(job)
}

/// `<root>/packages/<package>/bin/<file>` → each binary, as the compiled package would hold it.
fn link_package(root: &Path, package: &str, binaries: &[(&str, &Path)]) -> Result<()> {
    let bin = root.join("packages").join(package).join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    for (file, binary) in binaries {
        let link = bin.join(file);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(binary, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), binary.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::director::SimDeployment;

    fn layout() -> Layout {
        Layout {
            name: "t".into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            dir: "/tmp/t".into(),
            vip_cidr: "169.254.255.0/24".parse().unwrap(),
            tld: "boshy".into(),
            boshy_bin: "/bin/boshy".into(),
            virtual_ip_agent_bin: "/bin/virtual-ip-agent".into(),
            director_sim_bin: "/bin/boshy-director-sim".into(),
            envoy_bin: "/bin/envoy".into(),
        }
    }

    fn instance(group: &str, index: u32, ip: &str) -> SimInstance {
        SimInstance {
            id: format!("{group}-{index}-id"),
            job_name: group.into(),
            index: Some(index),
            az: Some("z1".into()),
            ips: vec![ip.into()],
            job_state: Some("running".into()),
            vm_cid: Some(format!("vm-{group}-{index}")),
        }
    }

    fn state() -> SimState {
        let pilot_manifest = "instance_groups:\n- name: bosh-pilot\n  jobs:\n  - name: bosh-pilot\n    release: boshy-istio\n    properties: {tld: mesh, ports: {xds: 1234}}\n";
        let sample = "instance_groups:\n- name: apricot\n  jobs:\n  - name: example-httpbin\n    release: boshy-istio\n    properties: {port: 9001}\n  - name: smoke-tests\n    release: boshy-istio\n    consumes: {bosh-pilot: {from: bosh-pilot, deployment: bosh-istio}}\n  - name: other\n    release: elsewhere\n";
        let mut no_vm = instance("apricot", 1, "10.9.0.21");
        no_vm.vm_cid = None;
        SimState {
            deployments: vec![
                SimDeployment {
                    name: "bosh-istio".into(),
                    manifest: Some(pilot_manifest.into()),
                    instances: vec![instance("bosh-pilot", 0, "10.9.0.10")],
                },
                SimDeployment {
                    name: "sample".into(),
                    manifest: Some(sample.into()),
                    instances: vec![instance("apricot", 0, "10.9.0.20/32"), no_vm],
                },
            ],
        }
    }

    #[test]
    fn places_manifest_jobs_of_this_release_and_the_addon_outside_the_control_plane() {
        let vms = plan(&layout(), &state()).unwrap();
        let names = |vm: &Vm| vm.jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        assert_eq!(vms.len(), 2, "the instance without a VM has no lab VM");
        assert_eq!(names(&vms[0]), ["bosh-pilot"]);
        assert_eq!(
            names(&vms[1]),
            [
                "example-httpbin",
                "smoke-tests",
                "virtual-ip-agent",
                "bosh-envoy"
            ]
        );
        assert_eq!(vms[1].ip, Ipv4Addr::new(10, 9, 0, 20));
        assert_eq!(
            vms[1].jobs[0].output,
            Path::new("/tmp/t/vms/t-sample-apricot-0/jobs/example-httpbin")
        );
    }

    #[test]
    fn lab_settings_lie_over_manifest_properties_and_no_secret_is_planned() {
        let vms = plan(&layout(), &state()).unwrap();
        let pilot = &vms[0].jobs[0].properties;
        assert_eq!(pilot["director"]["url"], "https://10.9.0.6:25555");
        assert_eq!(pilot["director"]["poll_interval_seconds"], 1);
        assert_eq!(pilot["director"]["health_tasks_per_minute"], 300);
        assert_eq!(pilot["ports"]["xds"], 1234, "the manifest's value stays");
        assert_eq!(pilot["tld"], "boshy", "the lab's tld wins");
        assert!(pilot["director"].get("client_secret").is_none());
        let serialized = serde_json::to_string(&vms).unwrap();
        assert!(!serialized.contains("client_secret"));
    }

    #[test]
    fn consumers_get_the_pilot_link_with_every_pilot_instance() {
        let vms = plan(&layout(), &state()).unwrap();
        let apricot = &vms[1];
        for job in ["smoke-tests", "virtual-ip-agent", "bosh-envoy"] {
            let job = apricot.jobs.iter().find(|j| j.name == job).unwrap();
            let link = &job.links[PILOT_LINK];
            assert_eq!(link.instances.len(), 1);
            assert_eq!(link.instances[0].address, "10.9.0.10");
            assert_eq!(link.provider.properties["ports"]["xds"], 1234);
        }
        let httpbin = &apricot.jobs[0];
        assert!(httpbin.links.is_empty());
        assert_eq!(httpbin.properties["port"], 9001);
        let virtual_ip_agent = apricot
            .jobs
            .iter()
            .find(|j| j.name == "virtual-ip-agent")
            .unwrap();
        assert_eq!(virtual_ip_agent.properties["dns"]["port"], 53);
    }

    #[test]
    fn every_vm_resolves_every_vms_bosh_dns_name_from_its_hosts_file() {
        let vms = plan(&layout(), &state()).unwrap();
        assert_eq!(
            hosts_file(&vms),
            "127.0.0.1 localhost\n\
             10.9.0.10 bosh-pilot-0-id.bosh-pilot.default.bosh-istio.bosh\n\
             10.9.0.20 apricot-0-id.apricot.default.sample.bosh\n"
        );
    }
}
