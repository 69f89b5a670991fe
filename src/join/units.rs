//! The systemd units `boshy join` installs, pure. Their `ExecStartPre=`/`ExecStart=` lines are
//! plain absolute commands (no quoting, no specifiers, no environment): a lab without systemd
//! (`--service-manager none`) runs the same lines itself. [`check_plain`] keeps it so.

use std::path::Path;

use anyhow::{bail, Result};
use ipnet::Ipv4Net;

use super::layout::{Layout, AGENT_UNIT};

/// The first line of every unit: who wrote it.
const HEADER: &str = "# boshy-istio: written by `boshy join`; `boshy leave` removes it.";

/// `boshy-agent.service`: the DNAT rules first (a reboot flushes the nat table, so every start
/// installs them again: idempotent), then the agent. With the inbound capture, the rules
/// include it, from the ports the agent last wrote: as the virtual-ip-agent job's start
/// program does, the VM's ports are captured again before any pilot answers.
pub(crate) fn agent_unit(layout: &Layout, vip_cidr: Ipv4Net, capture: bool) -> String {
    let boshy = layout.boshy();
    format!(
        "{HEADER}\n[Unit]\nDescription=boshy-istio virtual-ip-agent: the mesh's names, health \
         reports and heartbeats\nWants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nExecStartPre={}\n\
         ExecStart={} virtual-ip-agent --config {}\nRestart=always\nRestartSec=2\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        dnat_command(layout, "install", vip_cidr, capture),
        boshy.display(),
        layout.agent_config().display(),
    )
}

/// `boshy-capture.service`: what the virtual-ip-agent job's `inbound_capture` runs, as root
/// (iptables): `boshy dnat follow` keeps the capture of the VM's exposed ports in step with
/// the file the agent writes. Its rules stay when it stops, so a restart never opens the
/// ports to plaintext callers; `boshy leave` removes them.
pub(crate) fn capture_unit(layout: &Layout, vip_cidr: Ipv4Net) -> String {
    format!(
        "{HEADER}\n[Unit]\nDescription=boshy-istio inbound capture: the VM's exposed ports \
         through Envoy's inbound listener (mutual TLS)\nWants={AGENT_UNIT}\n\
         After={AGENT_UNIT}\n\n[Service]\nExecStart={}\nRestart=always\nRestartSec=2\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        dnat_command(layout, "follow", vip_cidr, true),
    )
}

/// `boshy dnat <action>` with the arguments of the virtual-ip-agent job's `bin/dnat`: the VIP
/// range and, with the capture, the agent's ports file and Envoy's inbound listener port.
fn dnat_command(layout: &Layout, action: &str, vip_cidr: Ipv4Net, capture: bool) -> String {
    let mut command = format!(
        "{} dnat {action} --vip-cidr {vip_cidr}",
        layout.boshy().display()
    );
    if capture {
        command.push_str(&format!(
            " --inbound-ports-file {} --inbound-redirect-port {}",
            layout.inbound_ports().display(),
            crate::xds::inbound::INBOUND_PORT
        ));
    }
    command
}

/// `boshy-envoy.service`: Envoy with the bootstrap join rendered, after the agent (its SDS
/// socket, and the DNAT rules that send the VIP traffic to it).
pub(crate) fn envoy_unit(layout: &Layout) -> String {
    format!(
        "{HEADER}\n[Unit]\nDescription=boshy-istio Envoy: the VM's sidecar in the mesh\n\
         Wants={AGENT_UNIT}\nAfter={AGENT_UNIT} network-online.target\n\n\
         [Service]\nExecStart={} -c {} --log-level info\nRestart=always\nRestartSec=2\n\
         LimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n",
        layout.envoy().display(),
        layout.envoy_config().display(),
    )
}

/// The root must be a path systemd and a shell read as one word, unquoted: the units name
/// files under it.
pub(crate) fn check_plain(root: &Path) -> Result<()> {
    let text = root.to_string_lossy();
    let plain = root.is_absolute()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if !plain {
        bail!(
            "--root {}: must be an absolute path of letters, digits and `/._-+` (the units' \
             commands name files under it, unquoted)",
            root.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands of a unit's `ExecStartPre=` and `ExecStart=` lines, in order (what a lab
    /// without systemd runs).
    fn exec_lines(unit: &str) -> Vec<&str> {
        unit.lines()
            .filter_map(|line| {
                line.strip_prefix("ExecStartPre=")
                    .or_else(|| line.strip_prefix("ExecStart="))
            })
            .collect()
    }

    #[test]
    fn the_agent_unit_installs_the_rules_then_runs_the_agent() {
        let layout = Layout::new(Path::new("/tmp/vm-1"));
        let unit = agent_unit(&layout, "169.254.255.0/24".parse().unwrap(), false);
        assert_eq!(
            exec_lines(&unit),
            [
                "/tmp/vm-1/usr/local/lib/boshy/bin/boshy dnat install --vip-cidr 169.254.255.0/24",
                "/tmp/vm-1/usr/local/lib/boshy/bin/boshy virtual-ip-agent --config \
                 /tmp/vm-1/etc/boshy/agent.yml",
            ]
        );
        assert!(
            unit.contains("[Install]\nWantedBy=multi-user.target\n"),
            "{unit}"
        );
        assert!(unit.starts_with(HEADER));
    }

    #[test]
    fn with_the_capture_the_agent_installs_it_and_the_capture_unit_follows_the_agents_ports() {
        let layout = Layout::new(Path::new("/"));
        let vips = "169.254.255.0/24".parse().unwrap();
        let capture = " --vip-cidr 169.254.255.0/24 --inbound-ports-file \
                       /var/lib/boshy/agent/inbound_ports.json --inbound-redirect-port 15006";
        assert_eq!(
            exec_lines(&agent_unit(&layout, vips, true))[0],
            format!("/usr/local/lib/boshy/bin/boshy dnat install{capture}")
        );
        let unit = capture_unit(&layout, vips);
        assert_eq!(
            exec_lines(&unit),
            [format!(
                "/usr/local/lib/boshy/bin/boshy dnat follow{capture}"
            )]
        );
        assert!(unit.contains("After=boshy-agent.service"), "{unit}");
        assert!(unit.contains("Restart=always"), "{unit}");
        assert!(unit.starts_with(HEADER));
    }

    #[test]
    fn envoy_starts_after_the_agent_with_its_bootstrap() {
        let unit = envoy_unit(&Layout::new(Path::new("/")));
        assert_eq!(
            exec_lines(&unit),
            ["/usr/local/lib/boshy/bin/envoy -c /etc/boshy/envoy.yaml --log-level info"]
        );
        assert!(unit.contains("After=boshy-agent.service"), "{unit}");
    }

    #[test]
    fn roots_that_would_need_quoting_are_refused() {
        assert!(check_plain(Path::new("/")).is_ok());
        assert!(check_plain(Path::new("/tmp/.tmpAb12_x/vm-1")).is_ok());
        for bad in ["relative", "/tmp/with space", "/tmp/100%", "/tmp/$HOME"] {
            assert!(check_plain(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
