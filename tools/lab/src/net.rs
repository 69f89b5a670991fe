//! The lab's network: one bridge in the root namespace and one network namespace per BOSH VM,
//! each joined to the bridge by a veth pair. Everything here shells out to `ip`; nothing
//! touches an interface or namespace the lab did not create.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}` (is it installed?)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Runs a command inside a namespace, like `bosh ssh` runs one on a VM.
pub fn run_in(namespace: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["netns", "exec", namespace];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub fn namespaces() -> Result<Vec<String>> {
    let output = run("ip", &["netns", "list"])?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Creates the bridge with the lab gateway address (`.1` of the subnet) unless present.
pub fn ensure_bridge(bridge: &str, subnet: Ipv4Net) -> Result<()> {
    if link_exists(bridge) {
        return Ok(());
    }
    let gateway = format!("{}/{}", host(subnet, 1), subnet.prefix_len());
    run("ip", &["link", "add", bridge, "type", "bridge"])?;
    run("ip", &["addr", "add", &gateway, "dev", bridge])?;
    run("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

/// Deletes a link unless it is gone already (a veth vanishes with its peer's namespace).
pub fn delete_link(name: &str) -> Result<()> {
    if link_exists(name) {
        if let Err(e) = run("ip", &["link", "del", name]) {
            if link_exists(name) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The `n`th address of the subnet.
pub fn host(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// A VM: a namespace with loopback up, `eth0` on the bridge with `ip`, and a `local` route for
/// the VIP range: `connect()` needs a route to reach the DNAT rule, and without the rule the
/// connection is refused at once inside the VM instead of leaving it (lab VMs have no
/// default route, unlike a real VM).
pub fn create_vm(
    namespace: &str,
    veth_host: &str,
    bridge: &str,
    ip: Ipv4Addr,
    subnet: Ipv4Net,
    vip_cidr: Ipv4Net,
    resolver: Option<&str>,
) -> Result<()> {
    if !namespaces()?.iter().any(|n| n == namespace) {
        run("ip", &["netns", "add", namespace])?;
    }
    delete_link(veth_host)?;
    let veth_vm = format!("{veth_host}v");
    run(
        "ip",
        &[
            "link", "add", veth_host, "type", "veth", "peer", "name", &veth_vm,
        ],
    )?;
    run("ip", &["link", "set", &veth_vm, "netns", namespace])?;
    run("ip", &["link", "set", veth_host, "master", bridge, "up"])?;
    let address = format!("{ip}/{}", subnet.prefix_len());
    run_in(namespace, &["ip", "link", "set", "lo", "up"])?;
    run_in(namespace, &["ip", "link", "set", &veth_vm, "name", "eth0"])?;
    run_in(namespace, &["ip", "addr", "add", &address, "dev", "eth0"])?;
    run_in(namespace, &["ip", "link", "set", "eth0", "up"])?;
    run_in(
        namespace,
        &[
            "ip",
            "route",
            "add",
            "local",
            &vip_cidr.to_string(),
            "dev",
            "lo",
        ],
    )?;
    if let Some(resolver) = resolver {
        // `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the
        // VM's own resolver, as bosh-dns is on a real VM.
        let dir = Path::new("/etc/netns").join(namespace);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {resolver}\noptions timeout:1 attempts:2\n"),
        )
        .with_context(|| format!("cannot write {}/resolv.conf", dir.display()))?;
    }
    Ok(())
}

/// Writes the VM's /etc/hosts (`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
/// /etc/hosts for the processes it starts). In place, not by rename: the processes already
/// running hold the bind mount of the file itself, and see its new content only so.
pub(crate) fn write_hosts(namespace: &str, hosts: &str) -> Result<()> {
    let dir = Path::new("/etc/netns").join(namespace);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("hosts");
    std::fs::write(&path, hosts).with_context(|| format!("cannot write {}", path.display()))
}

/// Kills every process left in the namespace, then deletes it and its configs (resolver,
/// hosts).
pub fn delete_vm(namespace: &str, veth_host: &str) -> Result<()> {
    if namespaces()?.iter().any(|n| n == namespace) {
        if let Ok(output) = run("ip", &["netns", "pids", namespace]) {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        run("ip", &["netns", "del", namespace])?;
    }
    delete_link(veth_host)?;
    let dir = Path::new("/etc/netns").join(namespace);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}
