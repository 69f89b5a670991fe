//! What each lab VM runs: planned purely from the simulated director's state (the
//! deployment manifests and instances), the way BOSH plus the runtime-config addon would
//! place jobs on VMs. Starting the plan is in `mod.rs`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::director::{SimInstance, SimState};
use super::process::ProcessSpec;
use super::Layout;

/// The deployment of the control plane; the addon excludes it, as the runtime config does.
pub const CONTROL_PLANE_DEPLOYMENT: &str = "bosh-istio";
pub const PILOT_JOB: &str = "bosh-pilot";
pub const HTTPBIN_JOB: &str = "example-httpbin";
pub const NAMES_PORT: u16 = 15011;
pub const XDS_PORT: u16 = 15010;
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
    /// Config files to write before anything starts: (path, content).
    pub files: Vec<(PathBuf, String)>,
    /// One-shot commands run before the processes (a job's pre-start).
    pub pre_start: Vec<Vec<String>>,
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

    pub fn runs_addon(&self) -> bool {
        self.deployment != CONTROL_PLANE_DEPLOYMENT
    }

    pub fn process_mut(&mut self, name: &str) -> Option<&mut ProcessSpec> {
        self.processes.iter_mut().find(|p| p.name == name)
    }
}

/// A job placed on an instance group by the deployment manifest.
#[derive(Debug, Clone)]
struct ManifestJob {
    name: String,
    properties: serde_yaml::Value,
    expose_ports: serde_yaml::Value,
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
        .filter_map(|job| {
            Some(ManifestJob {
                name: job["name"].as_str()?.to_string(),
                properties: job["properties"].clone(),
                expose_ports: job["expose_ports"].clone(),
            })
        })
        .collect()
}

/// The first usable IPv4 of an instance (director-api.md §7.7: entries may be CIDR or IPv6).
fn instance_ip(instance: &SimInstance) -> Option<Ipv4Addr> {
    instance
        .ips
        .iter()
        .find_map(|ip| ip.split('/').next()?.parse().ok())
}

/// Every VM the simulated director says exists (instances with a VM and an IPv4).
pub fn plan(layout: &Layout, state: &SimState) -> Result<Vec<Vm>> {
    let pilots: Vec<Ipv4Addr> = state
        .deployments
        .iter()
        .filter(|d| d.name == CONTROL_PLANE_DEPLOYMENT)
        .flat_map(|d| {
            let manifest = d.manifest.as_deref().unwrap_or_default();
            d.instances.iter().filter(move |i| {
                manifest_jobs(manifest, &i.job_name)
                    .iter()
                    .any(|j| j.name == PILOT_JOB)
            })
        })
        .filter(|i| i.vm_cid.is_some())
        .filter_map(instance_ip)
        .collect();
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
                &pilots,
            )?);
        }
    }
    Ok(vms)
}

fn plan_vm(
    layout: &Layout,
    deployment: &str,
    instance: &SimInstance,
    ip: Ipv4Addr,
    jobs: &[ManifestJob],
    pilots: &[Ipv4Addr],
) -> Result<Vm> {
    let index = instance
        .index
        .map_or_else(|| instance.id.clone(), |i| i.to_string());
    let namespace = format!(
        "{}-{}-{}-{}",
        layout.name, deployment, instance.job_name, index
    );
    let root = layout.dir.join("vms").join(&namespace);
    let mut vm = Vm {
        deployment: deployment.to_string(),
        instance_group: instance.job_name.clone(),
        index: instance.index,
        id: instance.id.clone(),
        az: instance.az.clone(),
        ip,
        veth: format!("{}{}", layout.name, ip.octets()[3]),
        namespace,
        root,
        files: Vec::new(),
        pre_start: Vec::new(),
        processes: Vec::new(),
    };
    for job in jobs {
        match job.name.as_str() {
            PILOT_JOB => add_pilot(layout, &mut vm),
            HTTPBIN_JOB => add_httpbin(layout, &mut vm, job),
            other => tracing::debug!(job = other, vm = %vm.name(), "the lab does not run this job"),
        }
    }
    if vm.runs_addon() {
        add_addon(layout, &mut vm, pilots)?;
    }
    Ok(vm)
}

fn log_path(vm: &Vm, job: &str, process: &str) -> PathBuf {
    vm.root
        .join("sys/log")
        .join(job)
        .join(format!("{process}.log"))
}

fn config_path(vm: &Vm, job: &str, file: &str) -> PathBuf {
    vm.root.join("jobs").join(job).join("config").join(file)
}

fn boshy(layout: &Layout, args: &[&str]) -> Vec<String> {
    std::iter::once(layout.boshy_bin.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

fn add_pilot(layout: &Layout, vm: &mut Vm) {
    let config = config_path(vm, PILOT_JOB, "pilot.yml");
    let data = vm.root.join("data").join(PILOT_JOB);
    let content = format!(
        "director:\n  url: https://{director}:25555\n  client: {client}\n  client_secret_file: {secret}\n  ca_cert_path: {ca}\n  poll_interval_seconds: 1\n  health_interval_seconds: 2\n  task_timeout_seconds: 20\n  request_timeout_seconds: 5\ntld: {tld}\nvirtual_ip_cidr: {cidr}\nvip_state_path: {vips}\nlisten:\n  xds: 0.0.0.0:{XDS_PORT}\n  api: 0.0.0.0:{API_PORT}\n  names: 0.0.0.0:{NAMES_PORT}\n",
        director = layout.director_ip(),
        client = super::DIRECTOR_CLIENT,
        secret = layout.client_secret_path().display(),
        ca = layout.director_ca_path().display(),
        tld = layout.tld,
        cidr = layout.vip_cidr,
        vips = data.join("vips.json").display(),
    );
    vm.processes.push(ProcessSpec {
        name: PILOT_JOB.into(),
        argv: boshy(
            layout,
            &["pilot", "--config", &config.display().to_string()],
        ),
        env: vec![("RUST_LOG".into(), "info".into())],
        log: log_path(vm, PILOT_JOB, PILOT_JOB),
        pid: None,
    });
    vm.files.push((config, content));
}

/// The port example-httpbin listens on: its `port` property, else its first exposed port.
fn httpbin_port(job: &ManifestJob) -> u16 {
    job.properties["port"]
        .as_u64()
        .or_else(|| job.expose_ports[0]["number"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(8080)
}

fn add_httpbin(layout: &Layout, vm: &mut Vm, job: &ManifestJob) {
    let listen = format!("0.0.0.0:{}", httpbin_port(job));
    let ip = vm.ip.to_string();
    let index = vm.index.map(|i| i.to_string());
    let mut args = vec![
        "example-httpbin",
        "--listen",
        &listen,
        "--deployment",
        &vm.deployment,
        "--instance-group",
        &vm.instance_group,
        "--instance-id",
        &vm.id,
        "--ip",
        &ip,
    ];
    if let Some(index) = &index {
        args.extend(["--index", index]);
    }
    if let Some(az) = &vm.az {
        args.extend(["--az", az]);
    }
    let argv = boshy(layout, &args);
    vm.processes.push(ProcessSpec {
        name: HTTPBIN_JOB.into(),
        argv,
        env: Vec::new(),
        log: log_path(vm, HTTPBIN_JOB, HTTPBIN_JOB),
        pid: None,
    });
}

/// The runtime-config addon: virtual-ip-agent (DNAT pre-start + DNS) and bosh-envoy.
fn add_addon(layout: &Layout, vm: &mut Vm, pilots: &[Ipv4Addr]) -> Result<()> {
    let agent_config = config_path(vm, "virtual-ip-agent", "agent.yml");
    let pilot_urls: Vec<String> = pilots
        .iter()
        .map(|ip| format!("\"http://{ip}:{NAMES_PORT}\""))
        .collect();
    let agent_content = format!(
        "tld: {tld}\nlisten: 127.0.0.1:53\nttl_seconds: 5\npilots: [{pilots}]\ntable_path: {table}\nbosh_dns_handlers_path: {handlers}\n",
        tld = layout.tld,
        pilots = pilot_urls.join(", "),
        table = vm.root.join("data/virtual-ip-agent/names.json").display(),
        handlers = vm.root.join("jobs/virtual-ip-agent/dns/handlers.json").display(),
    );
    vm.pre_start.push(boshy(
        layout,
        &[
            "dnat",
            "install",
            "--vip-cidr",
            &layout.vip_cidr.to_string(),
            "--redirect-port",
            "15001",
        ],
    ));
    vm.processes.push(ProcessSpec {
        name: "vip-agent".into(),
        argv: boshy(
            layout,
            &["vip-agent", "--config", &agent_config.display().to_string()],
        ),
        env: vec![("RUST_LOG".into(), "info".into())],
        log: log_path(vm, "virtual-ip-agent", "vip-agent"),
        pid: None,
    });
    vm.files.push((agent_config, agent_content));

    let bootstrap_path = config_path(vm, "bosh-envoy", "envoy.yaml");
    let node = crate::xds::bootstrap::NodeIdentity {
        deployment: vm.deployment.clone(),
        instance_group: vm.instance_group.clone(),
        instance_id: vm.id.clone(),
        index: vm.index,
        az: vm.az.clone(),
        ip: vm.ip.into(),
    };
    let pilot_addrs: Vec<String> = pilots.iter().map(|ip| format!("{ip}:{XDS_PORT}")).collect();
    let bootstrap = crate::xds::bootstrap::render(
        &node,
        &pilot_addrs,
        ENVOY_ADMIN.parse().expect("valid admin address"),
    )
    .with_context(|| format!("envoy bootstrap for {}", vm.name()))?;
    vm.processes.push(ProcessSpec {
        name: "envoy".into(),
        argv: vec![
            layout.envoy_bin.display().to_string(),
            "-c".into(),
            bootstrap_path.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warn".into(),
        ],
        env: Vec::new(),
        log: log_path(vm, "bosh-envoy", "envoy"),
        pid: None,
    });
    vm.files.push((bootstrap_path, bootstrap));
    Ok(())
}
