//! A rolling update of an instance group, played in BOSH's order: one instance at a time
//! (`max_in_flight: 1`), each job's `bin/drain` (BOSH waits for it, then the seconds it prints),
//! every process stopped, each `bin/post-stop`, the jobs rendered again from the current
//! properties (a deploy's new certificates included), then each `bin/pre-start`, every
//! process started, and the update watch time before the next instance.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::net;
use super::vm::Vm;
use super::LabState;

/// How long the lab waits after an instance's processes run again before it updates the
/// next one (a manifest's `update_watch_time`).
const WATCH_TIME: Duration = Duration::from_secs(2);
/// How long a process gets to stop on SIGTERM (monit's stop timeout is longer; the lab's
/// processes stop at once).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Updates every instance of `group` (`instance_group` of sample-deployment, or
/// `deployment/instance_group`), one after the other.
pub fn rolling_update(state: &mut LabState, group: &str) -> Result<()> {
    let (deployment, instance_group) = group
        .split_once('/')
        .unwrap_or(("sample-deployment", group));
    let indices: Vec<usize> = state
        .vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| vm.deployment == deployment && vm.instance_group == instance_group)
        .map(|(i, _)| i)
        .collect();
    if indices.is_empty() {
        bail!("no instance of `{group}` in the lab");
    }
    for index in indices {
        let layout = state.layout.clone();
        update_instance(&layout, &mut state.vms[index])?;
        state.save()?;
    }
    Ok(())
}

fn update_instance(layout: &super::Layout, vm: &mut Vm) -> Result<()> {
    let name = vm.name();
    drain(vm)?;
    for process in &mut vm.processes {
        process.stop(STOP_GRACE);
    }
    for script in &vm.post_stop {
        run_script(vm, script).with_context(|| format!("post-stop on {name}"))?;
    }
    println!("{name}: jobs stopped");
    super::vm::install_jobs(layout, vm).with_context(|| format!("rendering the jobs of {name}"))?;
    for script in &vm.pre_start {
        run_script(vm, script).with_context(|| format!("pre-start on {name}"))?;
    }
    for process in &mut vm.processes {
        process.start(&vm.namespace)?;
    }
    std::thread::sleep(WATCH_TIME);
    if let Some(process) = vm.processes.iter().find(|p| !p.is_running()) {
        bail!("{name}: {} is not running after the update", process.name);
    }
    println!("{name}: jobs running again");
    Ok(())
}

/// Runs each job's `bin/drain` as BOSH does before it stops the jobs, and waits the seconds
/// each prints.
pub fn drain(vm: &Vm) -> Result<()> {
    let name = vm.name();
    for script in &vm.drain {
        let output = run_script(vm, script).with_context(|| format!("drain on {name}"))?;
        let printed = String::from_utf8_lossy(&output.stdout);
        let wait: i64 = printed.trim().parse().with_context(|| {
            format!("drain on {name} printed {printed:?}, not the integer BOSH expects")
        })?;
        println!("{name}: drained ({} printed {wait})", script[0]);
        if wait > 0 {
            std::thread::sleep(Duration::from_secs(wait.unsigned_abs()));
        }
    }
    Ok(())
}

fn run_script(vm: &Vm, script: &[String]) -> Result<std::process::Output> {
    let args: Vec<&str> = script.iter().map(String::as_str).collect();
    net::run_in(&vm.namespace, &args)
}
