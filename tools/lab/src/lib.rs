//! The local lab: the whole system on one machine. A director simulator plays BOSH; every
//! instance it reports becomes a "VM", a network namespace on a shared bridge running what
//! BOSH would put there: the control plane on `bosh-istio` VMs; the workload plus the addon
//! (virtual-ip-agent with its DNAT rules, and Envoy) everywhere else.
//!
//! `boshy-lab up|down|status|wait|ssh|process|director|rules|demo|api`; `scripts/lab` installs the
//! tools and calls this. Everything binds to loopback or to addresses inside namespaces the
//! lab created.

#![forbid(unsafe_code)]

pub mod binaries;
mod demo;
pub mod director;
pub mod jobs;
pub mod net;
pub mod outside;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod ready;
mod rules;
mod update;
pub mod vm;

/// The Zipkin collector's port on the host (`Layout::zipkin_collector`).
pub const ZIPKIN_PORT: u16 = 9411;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use binaries::BOSHY;
use director::SimControl;
use jobs::release_dir;
use process::ProcessSpec;
use vm::Vm;

/// The UAA client the lab's control plane logs in with.
pub const DIRECTOR_CLIENT: &str = "pilot";
const DIRECTOR_HOST: u32 = 6;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Names the lab's namespaces, bridge and state directory, so that two labs can coexist.
    #[arg(long, env = "BOSHY_LAB_NAME", default_value = "boshy")]
    pub name: String,
    /// The lab's VM network (the bridge takes .1, the director .6).
    #[arg(long, env = "BOSHY_LAB_SUBNET", default_value = "10.244.0.0/24")]
    pub subnet: Ipv4Net,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Starts the director simulator, the control plane and every VM; returns when the mesh is ready.
    Up {
        /// Instances of the control plane (`bosh-pilot` in `bosh-istio`), set in the director
        /// before any VM boots; applies to a lab that is not up yet.
        #[arg(long, env = "BOSHY_LAB_PILOTS", default_value_t = 1)]
        pilots: u32,
    },
    /// Stops everything and removes every namespace, link and rule the lab made.
    Down,
    /// Lists the VMs and their processes.
    Status,
    /// Waits until every VM resolves every service and its Envoy has every healthy endpoint.
    Wait {
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Runs a command on a VM (`bosh ssh`): `lab ssh apricot/3 -- curl ...`.
    Ssh {
        /// `instance_group/index` (in sample-deployment) or `deployment/instance_group/index`.
        vm: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Starts, stops or kills one process of a VM.
    Process {
        vm: String,
        /// e.g. envoy, virtual-ip-agent, bosh-pilot, example-httpbin
        process: String,
        #[arg(value_enum)]
        action: ProcessAction,
    },
    /// Plays BOSH updating an instance group (`bosh deploy` of a changed job): one instance at
    /// a time, each job's drain, the jobs stopped, post-stop, pre-start, the jobs started.
    Update {
        /// `instance_group` (in sample-deployment) or `deployment/instance_group`.
        group: String,
    },
    /// Runs a VM's drain scripts, as BOSH does before it stops its jobs (`update` does it too).
    Drain { vm: String },
    /// Changes the simulated director's state (and creates or deletes the VMs that follow).
    Director {
        #[command(subcommand)]
        command: DirectorCommand,
    },
    /// Traffic rules kept in the director as configs of type boshy-istio, as `bosh
    /// update-config`, `bosh configs` and `bosh delete-config` handle them.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Brings the lab up (if needed) and runs the tire-kicking story.
    Demo,
    /// Rotates the workload CA the pilots sign with, one step at a time (docs/security.md,
    /// "Certificate authority"); `update bosh-istio/bosh-pilot` then deploys the step.
    CaRotate {
        #[arg(value_enum)]
        step: pki::RotationStep,
    },
    /// `GET` of the control plane's HTTPS API (`/v1/registration`, `/v1/rules`, `/metrics`,
    /// `/healthz`) with the lab's mesh client certificate (docs/api.md); prints the body.
    Api {
        /// e.g. /v1/rules
        path: String,
    },
    /// `boshy mesh <command>` against the lab's first pilot, with the lab's mesh client
    /// certificate (docs/observability.md): `lab mesh status`, `lab mesh describe <hostname>`,
    /// `lab mesh config apricot/3 [listeners]`, `lab mesh diff apricot/3` (its exit code is
    /// the command's).
    Mesh {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// VMs outside BOSH joining the mesh with `boshy join` (docs/workloads.md):
    /// `lab outside create rabbit-1`, `lab outside configure legacy/rabbitmq`,
    /// `lab outside join rabbit-1 --files <dir>`, `lab outside leave rabbit-1`.
    Outside {
        #[command(subcommand)]
        command: outside::OutsideCommand,
    },
    /// Prints a Prometheus scrape configuration for the lab (docs/telemetry.md): the pilots'
    /// `/metrics` and every VM's Envoy metrics listener, with the lab's scraper certificate.
    PrometheusConfig {
        #[arg(long, default_value_t = 5)]
        scrape_interval_seconds: u32,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessAction {
    Start,
    Stop,
    Kill,
    Restart,
}

#[derive(Subcommand, Debug)]
pub enum DirectorCommand {
    /// Prints the simulator's deployments and instances.
    State,
    /// Adds an instance to an instance group (BOSH scales it up; the lab boots its VM).
    AddInstance {
        deployment: String,
        instance_group: String,
        #[arg(long)]
        az: Option<String>,
    },
    /// Deletes an instance and its VM.
    RemoveInstance { vm: String },
    /// Sets an instance's job_state (running, failing, stopped, "unresponsive agent").
    SetState { vm: String, job_state: String },
    /// Makes the director misbehave: none, http_500, hang, reject_tokens, bad_gateway.
    Fault {
        mode: String,
        #[arg(long)]
        path_prefix: Option<String>,
    },
    /// Expires every UAA token issued so far.
    ExpireTokens,
    /// Replaces a deployment's manifest with the contents of a file (may be invalid YAML).
    Manifest { deployment: String, file: PathBuf },
    /// Prints the director's request counters.
    Requests,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// `bosh update-config --type boshy-istio --name NAME FILE`: the first YAML document of
    /// FILE becomes the latest config of that name.
    Apply {
        file: PathBuf,
        /// The config's name; by default FILE's name without its extension.
        #[arg(long)]
        name: Option<String>,
    },
    /// `bosh configs --type boshy-istio`: the latest config of every name.
    List,
    /// `bosh delete-config --type boshy-istio --name NAME`.
    Delete { name: String },
}

/// Where the lab puts things; derived from its name and subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub name: String,
    pub subnet: Ipv4Net,
    pub dir: PathBuf,
    pub vip_cidr: Ipv4Net,
    pub tld: String,
    pub boshy_bin: PathBuf,
    // A lab brought up by an older build has no record of these: `down` must still be able
    // to take it apart after the checkout moved on.
    #[serde(default)]
    pub virtual_ip_agent_bin: PathBuf,
    #[serde(default)]
    pub director_sim_bin: PathBuf,
    pub envoy_bin: PathBuf,
}

impl Layout {
    fn new(name: &str, subnet: Ipv4Net) -> Result<Self> {
        if name.len() > 10 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("lab name `{name}`: at most 10 characters of [a-z0-9-] (it prefixes interface names)");
        }
        Ok(Layout {
            name: name.to_string(),
            subnet,
            dir: Path::new("/tmp/boshy-lab").join(name),
            vip_cidr: "169.254.255.0/24".parse().expect("valid"),
            tld: "boshy".into(),
            boshy_bin: binaries::workspace(BOSHY)?,
            virtual_ip_agent_bin: binaries::workspace(binaries::VIRTUAL_IP_AGENT)?,
            director_sim_bin: binaries::workspace(binaries::DIRECTOR_SIM)?,
            envoy_bin: binaries::envoy()?,
        })
    }

    pub fn bridge(&self) -> String {
        format!("{}-br", self.name)
    }
    pub fn director_ip(&self) -> Ipv4Addr {
        net::host(self.subnet, DIRECTOR_HOST)
    }
    /// The host's address on the lab's bridge: what the VMs reach the host by.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        net::host(self.subnet, 1)
    }
    /// Where the lab's pilots tell Envoys to send spans (docs/telemetry.md): a Zipkin
    /// collector on the host, when one runs (`lab` starts none; the end-to-end test does).
    pub fn zipkin_collector(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.gateway_ip().into(), ZIPKIN_PORT)
    }
    fn director_namespace(&self) -> String {
        format!("{}-director", self.name)
    }
    fn director_veth(&self) -> String {
        format!("{}{}", self.name, DIRECTOR_HOST)
    }
    pub fn control_url(&self) -> String {
        format!("http://{}:25580", self.director_ip())
    }
    pub fn client_secret_path(&self) -> PathBuf {
        self.dir.join("director/client-secret")
    }
    pub fn director_ca_path(&self) -> PathBuf {
        self.dir.join("director/ca.pem")
    }
    fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
}

/// What is running now; saved after every change so that later commands can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub layout: Layout,
    pub director: ProcessSpec,
    pub vms: Vec<Vm>,
    /// VMs outside BOSH (`lab outside`), which the director does not know.
    #[serde(default)]
    pub outside: Vec<outside::OutsideVm>,
}

impl LabState {
    fn load(layout: &Layout) -> Result<Option<LabState>> {
        let path = layout.state_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| {
                    format!("lab state {} is corrupt", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self) -> Result<()> {
        let path = self.layout.state_path();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Finds a VM by `group/index` (any deployment, must be unique) or `deployment/group/index`.
    pub fn find_vm(&self, spec: &str) -> Result<usize> {
        let matches: Vec<usize> = self
            .vms
            .iter()
            .enumerate()
            .filter(|(_, vm)| {
                let name = vm.name();
                name == spec || name.split_once('/').is_some_and(|(_, rest)| rest == spec)
            })
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => bail!(
                "no VM `{spec}` in the lab; VMs: {}",
                self.vms.iter().map(Vm::name).collect::<Vec<_>>().join(", ")
            ),
            _ => bail!("`{spec}` names several VMs; use deployment/instance_group/index"),
        }
    }

    pub(crate) fn sim(&self) -> Result<SimControl> {
        SimControl::new(self.layout.control_url())
    }
}

pub async fn run(args: Args) -> Result<()> {
    let layout = Layout::new(&args.name, args.subnet)?;
    match args.command {
        LabCommand::Up { pilots } => {
            up_with_pilots(&layout, pilots).await?;
            Ok(())
        }
        LabCommand::Down => down(&layout),
        LabCommand::Status => status(&require_state(&layout)?),
        LabCommand::CaRotate { step } => {
            pki::MeshFiles::of(&layout).rotate_workload_ca(step)?;
            println!(
                "workload CA rotation: {step:?}; deploy it with `update bosh-istio/bosh-pilot`"
            );
            Ok(())
        }
        LabCommand::Api { path } => {
            let body = ready::api_get(&require_state(&layout)?, &path).await?;
            print!("{body}");
            Ok(())
        }
        LabCommand::Mesh { args } => {
            let state = require_state(&layout)?;
            let pilot = ready::pilots(&state)
                .next()
                .context("the lab has no bosh-pilot VM")?;
            let files = pki::MeshFiles::of(&layout);
            let (command, options) = args.split_first().context("a mesh command")?;
            // exec, not a child: its exit code is `boshy mesh`'s, and stopping this process
            // (`mesh console` runs until stopped) stops the console, leaving nothing behind.
            use std::os::unix::process::CommandExt as _;
            let error = std::process::Command::new(&layout.boshy_bin)
                .args(["mesh", command])
                .args(options)
                .arg("--pilot")
                .arg(format!("https://{}:{}", pilot.ip, vm::API_PORT))
                .arg("--ca")
                .arg(files.ca())
                .arg("--cert")
                .arg(files.client_cert())
                .arg("--key")
                .arg(files.client_key())
                .exec();
            Err(error).context("cannot run `boshy mesh`")
        }
        LabCommand::PrometheusConfig {
            scrape_interval_seconds,
        } => {
            print!(
                "{}",
                prometheus::config(&require_state(&layout)?, scrape_interval_seconds)
            );
            Ok(())
        }
        LabCommand::Wait { timeout_seconds } => {
            ready::wait(
                &require_state(&layout)?,
                Duration::from_secs(timeout_seconds),
            )
            .await
        }
        LabCommand::Ssh { vm, command } => {
            let state = require_state(&layout)?;
            let vm = &state.vms[state.find_vm(&vm)?];
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &vm.namespace])
                .args(&command)
                .status()
                .context("cannot run `ip netns exec`")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::Process {
            vm,
            process,
            action,
        } => {
            let mut state = require_state(&layout)?;
            let index = state.find_vm(&vm)?;
            control_process(&mut state.vms[index], &process, action)?;
            state.save()
        }
        LabCommand::Update { group } => {
            let mut state = require_state(&layout)?;
            update::rolling_update(&mut state, &group)
        }
        LabCommand::Drain { vm } => {
            let state = require_state(&layout)?;
            update::drain(&state.vms[state.find_vm(&vm)?])
        }
        LabCommand::Director { command } => director_command(&layout, command).await,
        LabCommand::Rules { command } => {
            let cli = rules::RulesCli::of_lab(&require_state(&layout)?.layout)?;
            match command {
                RulesCommand::Apply { file, name } => cli.apply(&file, name).await,
                RulesCommand::List => cli.list().await,
                RulesCommand::Delete { name } => cli.delete(&name).await,
            }
        }
        LabCommand::Demo => demo::run(&layout).await,
        LabCommand::Outside { command } => {
            outside::run(&mut require_state(&layout)?, command).await
        }
    }
}

fn require_state(layout: &Layout) -> Result<LabState> {
    LabState::load(layout)?
        .ok_or_else(|| anyhow!("the lab `{}` is not up: run `scripts/lab up`", layout.name))
}

fn require_root_and_tools() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab creates network namespaces and iptables rules: run it as root");
    }
    for tool in ["ip", "iptables", "iptables-restore", "dig", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("`{tool}` is missing: `scripts/lab up` installs it (apt-get install iptables dnsutils curl iproute2)");
        }
    }
    Ok(())
}

/// Refuses a subnet that overlaps a route the machine already has (other than the lab's own).
fn check_subnet_is_free(layout: &Layout) -> Result<()> {
    let output = net::run("ip", &["-4", "route", "show"])?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut words = line.split_whitespace();
        let Some(Ok(prefix)) = words.next().map(str::parse::<Ipv4Net>) else {
            continue;
        };
        let on_bridge = line.contains(&format!("dev {} ", layout.bridge()));
        if !on_bridge
            && (prefix.contains(&layout.subnet.network())
                || layout.subnet.contains(&prefix.network()))
        {
            bail!(
                "the lab subnet {} overlaps the route `{line}`: choose another with --subnet",
                layout.subnet
            );
        }
    }
    Ok(())
}

async fn up(layout: &Layout) -> Result<LabState> {
    up_with_pilots(layout, 1).await
}

async fn up_with_pilots(layout: &Layout, pilots: u32) -> Result<LabState> {
    require_root_and_tools()?;
    if !layout.envoy_bin.exists() {
        bail!("Envoy not found at {}", layout.envoy_bin.display());
    }
    let mut state = match LabState::load(layout)? {
        Some(state) if state.director.is_running() => {
            println!("lab `{}`: already up; checking it", layout.name);
            state
        }
        _ => {
            check_subnet_is_free(layout)?;
            let state = start_director(layout).await?;
            scale_control_plane(&state, pilots).await?;
            apply_lab_rules(layout).await?;
            state
        }
    };
    // The mesh's certificates, as CredHub would generate them from the manifests' variables.
    pki::MeshFiles::of(layout).ensure()?;
    reconcile(&mut state).await?;
    println!("lab `{}`: waiting for the mesh to converge", layout.name);
    ready::wait(&state, Duration::from_secs(90)).await?;
    println!(
        "lab `{}`: ready: {} VMs; try `scripts/lab ssh apricot/3 -- curl -s http://example-httpbin.banana.sample-deployment.{}:9002/get`",
        layout.name,
        state.vms.len(),
        layout.tld
    );
    println!(
        "lab `{}`: bookinfo: `scripts/lab ssh bookinfo/productpage/0 -- curl -s http://bookinfo.productpage.bookinfo.{}:9080/productpage?u=jason` (docs/bookinfo.md)",
        layout.name, layout.tld
    );
    Ok(state)
}

/// The rule configs the lab's deployments stand on from the start, as `lab rules apply
/// --name NAME FILE` applies them: the ServiceEntry that makes one name of bookinfo's three
/// reviews instance groups, `reviews.bookinfo.boshy`, which productpage calls. Applied before
/// any VM boots, so that the pilots read it with their first configs.
const LAB_RULES: [(&str, &str); 1] = [(
    "bookinfo-reviews",
    "fixtures/rules/bookinfo/reviews-service.yml",
)];

async fn apply_lab_rules(layout: &Layout) -> Result<()> {
    let cli = rules::RulesCli::of_lab(layout)?;
    for (name, file) in LAB_RULES {
        cli.apply(&release_dir().join(file), Some(name.to_string()))
            .await
            .with_context(|| format!("applying the lab's rule config {name}"))?;
    }
    Ok(())
}

async fn start_director(layout: &Layout) -> Result<LabState> {
    std::fs::create_dir_all(layout.dir.join("director"))
        .with_context(|| format!("cannot create {}", layout.dir.display()))?;
    let secret: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    write_private(&layout.client_secret_path(), &secret)?;
    println!(
        "lab `{}`: network {} on bridge {}",
        layout.name,
        layout.subnet,
        layout.bridge()
    );
    net::ensure_bridge(&layout.bridge(), layout.subnet)?;
    let namespace = layout.director_namespace();
    net::create_vm(
        &namespace,
        &layout.director_veth(),
        &layout.bridge(),
        layout.director_ip(),
        layout.subnet,
        layout.vip_cidr,
        None,
    )?;
    let ip = layout.director_ip();
    let fixtures = release_dir().join("fixtures/director");
    let mut director = ProcessSpec {
        name: "director-sim".into(),
        argv: [
            layout.director_sim_bin.display().to_string(),
            "--listen".into(),
            format!("{ip}:25555"),
            "--uaa-listen".into(),
            format!("{ip}:8443"),
            "--control-listen".into(),
            format!("{ip}:25580"),
            "--fixtures".into(),
            fixtures.display().to_string(),
            "--state-dir".into(),
            layout.dir.join("director").display().to_string(),
            "--client".into(),
            DIRECTOR_CLIENT.into(),
            "--client-secret-file".into(),
            layout.client_secret_path().display().to_string(),
            "--instance-network".into(),
            layout.subnet.to_string(),
        ]
        .to_vec(),
        env: vec![("RUST_LOG".into(), "info".into())],
        log: layout.dir.join("director/director-sim.log"),
        pid: None,
        started: None,
    };
    director.start(&namespace)?;
    println!(
        "lab `{}`: director simulator at https://{ip}:25555",
        layout.name
    );
    let state = LabState {
        layout: layout.clone(),
        director,
        vms: Vec::new(),
        outside: Vec::new(),
    };
    state.save()?;
    let sim = state.sim()?;
    ready::until(
        Duration::from_secs(30),
        "the director simulator to answer",
        || async { Ok(sim.is_up().await && state.layout.director_ca_path().exists()) },
    )
    .await
    .with_context(|| format!("see {}", state.director.log.display()))?;
    Ok(state)
}

/// Sets the number of `bosh-pilot` instances the way an operator would: a deploy of the
/// control-plane manifest with another `instances:` count. Done before any VM boots, so
/// that every addon VM's agent and Envoy are configured with every control plane.
async fn scale_control_plane(state: &LabState, pilots: u32) -> Result<()> {
    if pilots == 0 {
        bail!("--pilots: at least one control plane is needed");
    }
    let sim = state.sim()?;
    let manifest = sim
        .state()
        .await?
        .deployments
        .into_iter()
        .find(|d| d.name == vm::CONTROL_PLANE_DEPLOYMENT)
        .and_then(|d| d.manifest)
        .ok_or_else(|| {
            anyhow!(
                "the director has no {} manifest",
                vm::CONTROL_PLANE_DEPLOYMENT
            )
        })?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&manifest)
        .with_context(|| format!("the {} manifest", vm::CONTROL_PLANE_DEPLOYMENT))?;
    let group = doc["instance_groups"]
        .as_sequence_mut()
        .and_then(|groups| {
            groups
                .iter_mut()
                .find(|g| g["name"].as_str() == Some(vm::PILOT_JOB))
        })
        .ok_or_else(|| {
            anyhow!(
                "the {} manifest has no instance group {}",
                vm::CONTROL_PLANE_DEPLOYMENT,
                vm::PILOT_JOB
            )
        })?;
    if group["instances"].as_u64() == Some(u64::from(pilots)) {
        return Ok(());
    }
    group["instances"] = pilots.into();
    println!("lab `{}`: {pilots} control planes", state.layout.name);
    sim.put_manifest(vm::CONTROL_PLANE_DEPLOYMENT, serde_yaml::to_string(&doc)?)
        .await
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes the lab's VMs match the director: boots new ones, deletes vanished ones.
async fn reconcile(state: &mut LabState) -> Result<()> {
    let sim_state = state.sim()?.state().await?;
    let mut planned = vm::plan(&state.layout, &sim_state)?;
    // The control plane boots first, so that the addon finds it.
    planned.sort_by_key(|vm| vm.runs_addon());
    let gone: Vec<Vm> = state
        .vms
        .iter()
        .filter(|vm| !planned.iter().any(|p| p.namespace == vm.namespace))
        .cloned()
        .collect();
    for mut vm in gone {
        println!("lab `{}`: deleting VM {}", state.layout.name, vm.name());
        delete_vm(&mut vm)?;
        state.vms.retain(|v| v.namespace != vm.namespace);
        state.save()?;
    }
    // Every VM knows every other one by its bosh-dns name, those that boot now included.
    let hosts = vm::hosts_file(&planned);
    for vm in &state.vms {
        net::write_hosts(&vm.namespace, &hosts)?;
    }
    for mut vm in planned {
        if state.vms.iter().any(|v| v.namespace == vm.namespace) {
            continue;
        }
        println!(
            "lab `{}`: booting VM {} ({})",
            state.layout.name,
            vm.name(),
            vm.ip
        );
        boot_vm(&state.layout, &mut vm, &hosts)?;
        state.vms.push(vm);
        state.save()?;
    }
    Ok(())
}

fn boot_vm(layout: &Layout, vm: &mut Vm, hosts: &str) -> Result<()> {
    // A new VM's ephemeral disk is empty: nothing a previous lab's VM of the same name kept
    // (the agent's saved table and scope) may carry over.
    let data = vm.root.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot clear {}", data.display()))?;
    }
    let resolver = vm.runs_addon().then_some("127.0.0.1");
    net::create_vm(
        &vm.namespace,
        &vm.veth,
        &layout.bridge(),
        vm.ip,
        layout.subnet,
        layout.vip_cidr,
        resolver,
    )?;
    // Before any process starts: `ip netns exec` bind-mounts it only if it exists then.
    net::write_hosts(&vm.namespace, hosts)?;
    vm::install_jobs(layout, vm)?;
    for command in &vm.pre_start {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        net::run_in(&vm.namespace, &args).with_context(|| format!("pre-start on {}", vm.name()))?;
    }
    for process in &mut vm.processes {
        process.start(&vm.namespace)?;
    }
    Ok(())
}

fn delete_vm(vm: &mut Vm) -> Result<()> {
    for process in &mut vm.processes {
        process.stop(Duration::from_secs(5));
    }
    net::delete_vm(&vm.namespace, &vm.veth)
}

fn control_process(vm: &mut Vm, name: &str, action: ProcessAction) -> Result<()> {
    let namespace = vm.namespace.clone();
    let vm_name = vm.name();
    let process = vm
        .process_mut(name)
        .ok_or_else(|| anyhow!("VM {vm_name} runs no process `{name}`"))?;
    print!("{vm_name} ");
    act_on(process, &namespace, action)
}

/// Starts, stops, kills or restarts one process of a VM in `namespace`; prints its state.
fn act_on(process: &mut ProcessSpec, namespace: &str, action: ProcessAction) -> Result<()> {
    match action {
        ProcessAction::Start => {
            if !process.is_running() {
                process.start(namespace)?;
            }
        }
        ProcessAction::Stop => process.stop(Duration::from_secs(10)),
        ProcessAction::Kill => process.kill(),
        ProcessAction::Restart => {
            process.stop(Duration::from_secs(10));
            process.start(namespace)?;
        }
    }
    println!(
        "{}: {}",
        process.name,
        if process.is_running() {
            "running"
        } else {
            "stopped"
        }
    );
    Ok(())
}

fn status(state: &LabState) -> Result<()> {
    let mark = |p: &ProcessSpec| if p.is_running() { "running" } else { "STOPPED" };
    println!(
        "director-sim at {} ({})",
        state.layout.director_ip(),
        mark(&state.director)
    );
    let vms = state.vms.iter().map(|vm| (vm.name(), vm.ip, &vm.processes));
    let outside = state
        .outside
        .iter()
        .map(|vm| (format!("outside/{}", vm.name), vm.ip, &vm.processes));
    for (name, ip, processes) in vms.chain(outside) {
        let processes: Vec<String> = processes
            .iter()
            .map(|p| format!("{} {}", p.name, mark(p)))
            .collect();
        println!("{name:<40} {ip:<15} {}", processes.join(", "));
    }
    Ok(())
}

/// Stops everything; also sweeps namespaces and links with the lab's prefix, so that a
/// crashed or half-built lab is cleaned up too.
fn down(layout: &Layout) -> Result<()> {
    if let Some(mut state) = LabState::load(layout)? {
        for vm in &mut state.vms {
            for process in &mut vm.processes {
                process.stop(Duration::from_secs(5));
            }
            if vm.runs_addon() {
                let remove = [
                    layout.boshy_bin.display().to_string(),
                    "dnat".into(),
                    "remove".into(),
                    "--vip-cidr".into(),
                    layout.vip_cidr.to_string(),
                ];
                let args: Vec<&str> = remove.iter().map(String::as_str).collect();
                if let Err(e) = net::run_in(&vm.namespace, &args) {
                    eprintln!("lab `{}`: {}: {e:#}", layout.name, vm.name());
                }
            }
            net::delete_vm(&vm.namespace, &vm.veth)?;
        }
        for vm in &mut state.outside {
            // Not a leave: the lab goes, and the director's store with it.
            outside::delete(vm)?;
        }
        state.director.stop(Duration::from_secs(5));
    }
    let prefix = format!("{}-", layout.name);
    for namespace in net::namespaces()? {
        if namespace.starts_with(&prefix) {
            net::delete_vm(&namespace, "")?;
        }
    }
    sweep_links(layout)?;
    net::delete_link(&layout.bridge())?;
    let state_path = layout.state_path();
    if state_path.exists() {
        std::fs::remove_file(&state_path)
            .with_context(|| format!("cannot remove {}", state_path.display()))?;
    }
    println!("lab `{}`: down", layout.name);
    Ok(())
}

/// Deletes veth ends named `<lab><octet>` left behind by a crashed lab.
fn sweep_links(layout: &Layout) -> Result<()> {
    let output = net::run("ip", &["-o", "link", "show"])?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let is_ours = name
            .strip_prefix(&layout.name)
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()));
        if is_ours {
            net::delete_link(name)?;
        }
    }
    Ok(())
}

async fn director_command(layout: &Layout, command: DirectorCommand) -> Result<()> {
    let mut state = require_state(layout)?;
    let sim = state.sim()?;
    let instance_of = |state: &LabState, spec: &str| -> Result<(String, String)> {
        let vm = &state.vms[state.find_vm(spec)?];
        Ok((vm.deployment.clone(), vm.id.clone()))
    };
    match command {
        DirectorCommand::State => {
            let value: serde_json::Value =
                reqwest::get(format!("{}/_sim/state", layout.control_url()))
                    .await?
                    .json()
                    .await?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        DirectorCommand::AddInstance {
            deployment,
            instance_group,
            az,
        } => {
            let row = sim
                .add_instance(&deployment, &instance_group, az.as_deref())
                .await?;
            println!("added {deployment}/{instance_group}: {row}");
        }
        DirectorCommand::RemoveInstance { vm } => {
            let (deployment, id) = instance_of(&state, &vm)?;
            sim.remove_instance(&deployment, &id).await?;
        }
        DirectorCommand::SetState { vm, job_state } => {
            let (deployment, id) = instance_of(&state, &vm)?;
            sim.set_job_state(&deployment, &id, &job_state).await?;
            println!("{vm}: job_state {job_state}");
            return Ok(());
        }
        DirectorCommand::Fault { mode, path_prefix } => {
            sim.set_fault(&mode, path_prefix.as_deref()).await?;
            println!("director fault: {mode}");
            return Ok(());
        }
        DirectorCommand::ExpireTokens => {
            sim.expire_tokens().await?;
            return Ok(());
        }
        DirectorCommand::Manifest { deployment, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            sim.put_manifest(&deployment, text).await?;
        }
        DirectorCommand::Requests => {
            println!("{}", serde_json::to_string_pretty(&sim.requests().await?)?);
            return Ok(());
        }
    }
    reconcile(&mut state).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `down` reads the layout a lab was brought up with, maybe by an older build of the lab
    /// that recorded fewer binaries.
    #[test]
    fn a_layout_recorded_by_an_older_lab_still_loads() {
        let older = serde_json::json!({
            "name": "boshy", "subnet": "10.244.0.0/24", "dir": "/tmp/boshy-lab/boshy",
            "vip_cidr": "169.254.255.0/24", "tld": "boshy",
            "boshy_bin": "/work/target/debug/boshy", "envoy_bin": "/usr/bin/envoy"
        });
        let layout: Layout = serde_json::from_value(older).expect("an older layout loads");
        assert_eq!(layout.boshy_bin, Path::new("/work/target/debug/boshy"));
        assert_eq!(layout.director_sim_bin, PathBuf::new());
    }
}
