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
/// installs them again: idempotent), then the agent.
pub(crate) fn agent_unit(layout: &Layout, vip_cidr: Ipv4Net) -> String {
    let boshy = layout.boshy();
    format!(
        "{HEADER}\n[Unit]\nDescription=boshy-istio virtual-ip-agent: the mesh's names, health \
         reports and heartbeats\nWants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nExecStartPre={} dnat install --vip-cidr {vip_cidr}\n\
         ExecStart={} virtual-ip-agent --config {}\nRestart=always\nRestartSec=2\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        boshy.display(),
        boshy.display(),
        layout.agent_config().display(),
    )
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
        let unit = agent_unit(&layout, "169.254.255.0/24".parse().unwrap());
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
