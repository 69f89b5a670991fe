//! VMs outside BOSH (docs/workloads.md): a namespace on the lab's bridge that the director
//! knows nothing of, standing in for a plain Debian VM, with a directory as its `/`. It runs a
//! workload and joins the mesh exactly as an operator joins such a VM: `boshy workload
//! configure` on the operator's side (with a UAA token of the director's), `boshy join
//! --files` on the VM, `boshy leave` to go.
//!
//! The lab has no systemd, so `join` runs with `--service-manager none` and the lab plays
//! systemd: it starts each unit's `ExecStartPre=` and `ExecStart=` lines, read from the unit
//! files join wrote, in the VM's namespace, and stops them before `leave`. Everything else
//! (files, DNAT rules, the resolver) is join's own doing. The VM's `/etc/resolv.conf` is
//! `<root>/etc/resolv.conf`, which `ip netns exec` shows every process of the VM through the
//! symlink `/etc/netns/<namespace>/resolv.conf`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::process::ProcessSpec;
use super::{net, LabState, Layout};

/// Where outside VMs take their addresses in the lab's subnet: `.200` and up, far from the
/// director's instances.
const FIRST_HOST: u32 = 200;
/// The units `boshy join` may install, in the order they start (`boshy-capture` only when the
/// pilots sign workload certificates, as the lab's do).
const UNITS: [&str; 3] = ["boshy-agent", "boshy-envoy", "boshy-capture"];
/// A resolver no lab VM reaches (RFC 5737's TEST-NET-1; the namespace has no default route,
/// so a query to it fails at once): the plain VM's own resolver before it joins.
const OWN_RESOLVER: &str = "192.0.2.53";
/// The workload's process name.
pub const WORKLOAD: &str = "workload";

#[derive(Subcommand, Debug)]
pub enum OutsideCommand {
    /// Boots a VM outside BOSH: a namespace with an address on the lab's network, running
    /// the sample workload (`boshy example-httpbin`) on `--port`.
    Create {
        name: String,
        #[arg(long, default_value_t = 15672)]
        port: u16,
    },
    /// `boshy workload configure` as an operator runs it: a join token for the
    /// WorkloadGroup `<config>/<name>` and the files a VM joins with, in `--out` (default the
    /// lab's `outside/files-<config>-<name>`).
    Configure {
        group: String,
        #[arg(long)]
        out: Option<PathBuf>,
        /// The token's lifetime, as `boshy workload configure --ttl` takes it.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// `boshy join --files <dir>` on the VM, then starts the units join installed.
    Join {
        name: String,
        #[arg(long)]
        files: PathBuf,
    },
    /// Stops the units, then `boshy leave` on the VM.
    Leave { name: String },
    /// Starts, stops or kills one process of the VM (`workload`, `boshy-agent`,
    /// `boshy-envoy`, `boshy-capture`).
    Process {
        name: String,
        process: String,
        #[arg(value_enum)]
        action: super::ProcessAction,
    },
    /// Runs a command on the VM: `lab outside ssh rabbit-1 -- curl ...`.
    Ssh {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Deletes the VM (its namespace, processes and root) without leaving: a VM that vanished.
    Delete { name: String },
}

/// One VM outside BOSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideVm {
    pub name: String,
    pub ip: Ipv4Addr,
    pub namespace: String,
    /// Root-namespace end of the VM's veth pair.
    pub veth: String,
    /// The directory standing in for the VM's `/`.
    pub root: PathBuf,
    /// The workload, then the units' processes once joined.
    pub processes: Vec<ProcessSpec>,
}

impl OutsideVm {
    fn process_mut(&mut self, name: &str) -> Result<&mut ProcessSpec> {
        let vm = self.name.clone();
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("outside VM {vm} runs no process `{name}`"))
    }

    /// Runs `argv` in the VM's namespace and returns its output; fails with its stderr.
    pub fn run(&self, argv: &[String]) -> Result<String> {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = net::run_in(&self.namespace, &args)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl LabState {
    pub fn find_outside(&self, name: &str) -> Result<usize> {
        self.outside
            .iter()
            .position(|vm| vm.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "no outside VM `{name}` in the lab; outside VMs: {}",
                    self.outside
                        .iter()
                        .map(|vm| vm.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

pub async fn run(state: &mut LabState, command: OutsideCommand) -> Result<()> {
    match command {
        OutsideCommand::Create { name, port } => create(state, &name, port),
        OutsideCommand::Configure { group, out, ttl } => {
            let out = out.unwrap_or_else(|| files_dir(&state.layout, &group));
            configure(state, &group, &out, &ttl).await?;
            println!("join files for {group} in {}", out.display());
            Ok(())
        }
        OutsideCommand::Join { name, files } => {
            let index = state.find_outside(&name)?;
            join(&state.layout, &mut state.outside[index], &files)?;
            state.save()
        }
        OutsideCommand::Leave { name } => {
            let index = state.find_outside(&name)?;
            let output = leave(&state.layout, &mut state.outside[index])?;
            print!("{output}");
            state.save()
        }
        OutsideCommand::Process {
            name,
            process,
            action,
        } => {
            let index = state.find_outside(&name)?;
            let vm = &mut state.outside[index];
            let namespace = vm.namespace.clone();
            super::act_on(vm.process_mut(&process)?, &namespace, action)?;
            state.save()
        }
        OutsideCommand::Ssh { name, command } => {
            let vm = &state.outside[state.find_outside(&name)?];
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &vm.namespace])
                .args(&command)
                .status()
                .context("cannot run `ip netns exec`")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        OutsideCommand::Delete { name } => {
            let index = state.find_outside(&name)?;
            let mut vm = state.outside.remove(index);
            delete(&mut vm)?;
            state.save()
        }
    }
}

/// The default directory of the join files of `group`.
pub fn files_dir(layout: &Layout, group: &str) -> PathBuf {
    layout
        .dir
        .join("outside")
        .join(format!("files-{}", group.replace('/', "-")))
}

/// Where the lab keeps its outside VMs' process logs: outside their roots, so that a root
/// holds only what the VM's own tools wrote (what `leave` must restore is checked on it).
fn logs_dir(layout: &Layout) -> PathBuf {
    layout.dir.join("outside").join("logs")
}

/// Boots the VM and starts its workload.
pub fn create(state: &mut LabState, name: &str, port: u16) -> Result<()> {
    if name.len() > 12 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("outside VM name `{name}`: at most 12 characters of [a-z0-9-]");
    }
    if state.outside.iter().any(|vm| vm.name == name) {
        bail!("outside VM `{name}` exists already");
    }
    let layout = state.layout.clone();
    let host = (FIRST_HOST..250)
        .find(|n| {
            let ip = net::host(layout.subnet, *n);
            !state.outside.iter().any(|vm| vm.ip == ip)
        })
        .ok_or_else(|| anyhow!("the lab has no address left for another outside VM"))?;
    let ip = net::host(layout.subnet, host);
    let root = layout.dir.join("outside").join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clear {}", root.display()))?;
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).with_context(|| format!("cannot create {}", etc.display()))?;
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "# the VM's own resolver\nnameserver {OWN_RESOLVER}\noptions timeout:1 attempts:1\n"
        ),
    )
    .with_context(|| format!("cannot write {}/resolv.conf", etc.display()))?;
    let mut vm = OutsideVm {
        name: name.to_string(),
        ip,
        namespace: format!("{}-out-{name}", layout.name),
        veth: format!("{}{}", layout.name, u32::from(ip) & 0xff),
        root,
        processes: Vec::new(),
    };
    net::create_vm(
        &vm.namespace,
        &vm.veth,
        &layout.bridge(),
        ip,
        layout.subnet,
        layout.vip_cidr,
        None,
    )?;
    // `ip netns exec` bind-mounts what this names (following the link) over /etc/resolv.conf
    // for every process it starts: the VM's resolv.conf is the one in its root, which join
    // edits and leave restores.
    let netns_etc = Path::new("/etc/netns").join(&vm.namespace);
    std::fs::create_dir_all(&netns_etc)
        .with_context(|| format!("cannot create {}", netns_etc.display()))?;
    let link = netns_etc.join("resolv.conf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(etc.join("resolv.conf"), &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    let mut workload = ProcessSpec {
        name: WORKLOAD.into(),
        argv: vec![
            layout.boshy_bin.display().to_string(),
            "example-httpbin".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--ip".into(),
            ip.to_string(),
        ],
        env: Vec::new(),
        log: logs_dir(&layout).join(format!("{name}-{WORKLOAD}.log")),
        pid: None,
        started: None,
    };
    workload.start(&vm.namespace)?;
    vm.processes.push(workload);
    println!("outside VM {name}: {ip}, workload on port {port}");
    state.outside.push(vm);
    state.save()
}

/// `boshy workload configure` naming every pilot of the lab (the VM's agent reports to each:
/// a pilot that never hears it judges it silent), with a `bosh.admin` token from the lab's
/// UAA, in the environment as an operator's shell would hold it.
pub async fn configure(state: &LabState, group: &str, out: &Path, ttl: &str) -> Result<String> {
    let token = state.sim()?.issue_token(&["bosh.admin"], 3600).await?;
    let pilots: Vec<String> = super::ready::pilots(state)
        .flat_map(|pilot| {
            [
                "--pilot".to_string(),
                format!("https://{}:{}", pilot.ip, super::vm::API_PORT),
            ]
        })
        .collect();
    if pilots.is_empty() {
        bail!("the lab has no bosh-pilot VM");
    }
    let files = super::pki::MeshFiles::of(&state.layout);
    let output = std::process::Command::new(&state.layout.boshy_bin)
        .args(["workload", "configure", "--group", group])
        .args(&pilots)
        .arg("--ca")
        .arg(files.ca())
        .args(["--ttl", ttl])
        .arg("--envoy")
        .arg(&state.layout.envoy_bin)
        .arg("--out")
        .arg(out)
        .env("BOSH_PILOT_TOKEN", token)
        .output()
        .context("cannot run `boshy workload configure`")?;
    command_result("boshy workload configure", &output)
}

/// `boshy join` in the VM, then the units it installed started as systemd would.
pub fn join(layout: &Layout, vm: &mut OutsideVm, files: &Path) -> Result<()> {
    print!(
        "{}",
        vm.run(&join_command(
            layout,
            vm,
            "join",
            &["--files", &files.display().to_string()]
        ))?
    );
    for unit in UNITS {
        if !unit_path(&vm.root, unit).exists() {
            continue;
        }
        let (pre, start) = unit_commands(&vm.root, unit)?;
        for command in pre {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            net::run_in(&vm.namespace, &args).with_context(|| format!("{unit}: ExecStartPre"))?;
        }
        vm.processes.retain(|p| p.name != unit);
        let mut process = ProcessSpec {
            name: unit.to_string(),
            argv: start,
            env: vec![("RUST_LOG".into(), "info".into())],
            log: logs_dir(layout).join(format!("{}-{unit}.log", vm.name)),
            pid: None,
            started: None,
        };
        process.start(&vm.namespace)?;
        vm.processes.push(process);
    }
    Ok(())
}

/// The units' processes stopped (as `systemctl stop` would, which `boshy leave` does on a
/// systemd VM), then `boshy leave` in the VM; its output.
pub fn leave(layout: &Layout, vm: &mut OutsideVm) -> Result<String> {
    for process in vm.processes.iter_mut().filter(|p| p.name != WORKLOAD) {
        process.stop(Duration::from_secs(5));
    }
    vm.processes.retain(|p| p.name == WORKLOAD);
    vm.run(&join_command(layout, vm, "leave", &[]))
}

fn join_command(layout: &Layout, vm: &OutsideVm, verb: &str, extra: &[&str]) -> Vec<String> {
    let mut argv = vec![
        layout.boshy_bin.display().to_string(),
        verb.to_string(),
        "--root".into(),
        vm.root.display().to_string(),
        "--service-manager".into(),
        "none".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

/// A command's stdout, or an error with its stderr.
fn command_result(what: &str, output: &std::process::Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn unit_path(root: &Path, unit: &str) -> PathBuf {
    root.join(format!("etc/systemd/system/{unit}.service"))
}

/// A unit's `ExecStartPre=` commands and its `ExecStart=` command, from the file join wrote.
fn unit_commands(root: &Path, unit: &str) -> Result<(Vec<Vec<String>>, Vec<String>)> {
    let path = unit_path(root, unit);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse_unit(&text).with_context(|| format!("{}", path.display()))
}

/// The lines systemd runs to start a `Type=simple` unit. Join writes plain absolute commands
/// (no quoting, no `-`/`@` prefixes, no variables), so splitting on whitespace is exact for
/// them; anything else is refused rather than run differently from systemd.
fn parse_unit(text: &str) -> Result<(Vec<Vec<String>>, Vec<String>)> {
    let mut pre = Vec::new();
    let mut start = None;
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let command = || -> Result<Vec<String>> {
            let argv: Vec<String> = value.split_whitespace().map(str::to_string).collect();
            match argv.first() {
                Some(program) if program.starts_with('/') && !value.contains(['"', '\'', '$']) => {
                    Ok(argv)
                }
                _ => {
                    bail!("`{line}`: not a plain absolute command the lab can run as systemd would")
                }
            }
        };
        match key.trim() {
            "ExecStartPre" => pre.push(command()?),
            "ExecStart" => start = Some(command()?),
            _ => {}
        }
    }
    Ok((pre, start.ok_or_else(|| anyhow!("no ExecStart= line"))?))
}

/// Stops the VM's processes and removes its namespace, links and root.
pub fn delete(vm: &mut OutsideVm) -> Result<()> {
    for process in &mut vm.processes {
        process.stop(Duration::from_secs(5));
    }
    net::delete_vm(&vm.namespace, &vm.veth)?;
    if vm.root.exists() {
        std::fs::remove_dir_all(&vm.root)
            .with_context(|| format!("cannot remove {}", vm.root.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_gives_its_start_commands_in_order() {
        let unit = "[Unit]\nDescription=x\n[Service]\nExecStartPre=/usr/bin/a install --x 1\n\
                    ExecStartPre=/usr/bin/b\nExecStart=/usr/bin/c run --config /etc/c.yml\n\
                    Restart=always\n";
        let (pre, start) = parse_unit(unit).unwrap();
        assert_eq!(
            pre,
            [
                vec!["/usr/bin/a", "install", "--x", "1"],
                vec!["/usr/bin/b"]
            ]
        );
        assert_eq!(start, ["/usr/bin/c", "run", "--config", "/etc/c.yml"]);
    }

    #[test]
    fn a_unit_line_the_lab_would_run_differently_from_systemd_is_refused() {
        for line in [
            "ExecStart=-/usr/bin/c",
            "ExecStart=c",
            "ExecStart=/usr/bin/c \"a b\"",
            "ExecStart=/usr/bin/c $X",
        ] {
            let error = parse_unit(line).unwrap_err().to_string();
            assert!(error.contains(line), "{line}: {error}");
        }
        assert!(parse_unit("[Service]\nRestart=always\n")
            .unwrap_err()
            .to_string()
            .contains("no ExecStart"));
    }
}
