//! Where `boshy join` puts things on the VM. Every path is under `--root` (default `/`), and
//! the files that name other files (the agent's config, Envoy's bootstrap, the systemd units)
//! name them with the root included: with `--root /` that is the VM's own tree; with another
//! root (a lab sharing one file system between several "VMs", a test) the commands and
//! configs still point at the files join wrote, so the units' `ExecStart` lines run as they
//! are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The agent's DNS address: loopback, and neither systemd-resolved's stub (127.0.0.53) nor
/// its proxy address (127.0.0.54), so both can run on one VM; port 53 because
/// `/etc/resolv.conf` cannot name another.
pub(crate) const DEFAULT_DNS_LISTEN: &str = "127.0.1.53:53";

pub(crate) const AGENT_UNIT: &str = "boshy-agent.service";
pub(crate) const ENVOY_UNIT: &str = "boshy-envoy.service";
/// The inbound capture (`boshy dnat follow`), with workload identities only.
pub(crate) const CAPTURE_UNIT: &str = "boshy-capture.service";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// `absolute` (a path on the VM) under the root.
    pub(crate) fn at(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    pub(crate) fn config_dir(&self) -> PathBuf {
        self.at("/etc/boshy")
    }
    pub(crate) fn agent_config(&self) -> PathBuf {
        self.at("/etc/boshy/agent.yml")
    }
    pub(crate) fn envoy_config(&self) -> PathBuf {
        self.at("/etc/boshy/envoy.yaml")
    }
    pub(crate) fn ca(&self) -> PathBuf {
        self.at("/etc/boshy/ca.pem")
    }
    /// The VM's mesh client certificate and its key, which its agent renews: symlinks into
    /// the generation `..data` names (`identity::mesh_certificate`). The agent makes new
    /// generations as it runs; leave removes the directory whole.
    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.at("/etc/boshy/tls")
    }
    /// The VM's mesh client certificate (names port, xDS port, leave).
    pub(crate) fn certificate(&self) -> PathBuf {
        self.tls_dir().join("vm.pem")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.tls_dir().join("vm.key")
    }
    /// The file-based SDS file Envoy reads the certificate through, again as it is renewed.
    pub(crate) fn certificate_sds(&self) -> PathBuf {
        self.at("/etc/boshy/vm-certificate-sds.yaml")
    }
    pub(crate) fn bin_dir(&self) -> PathBuf {
        self.at("/usr/local/lib/boshy/bin")
    }
    pub(crate) fn boshy(&self) -> PathBuf {
        self.at("/usr/local/lib/boshy/bin/boshy")
    }
    pub(crate) fn envoy(&self) -> PathBuf {
        self.at("/usr/local/lib/boshy/bin/envoy")
    }
    pub(crate) fn units_dir(&self) -> PathBuf {
        self.at("/etc/systemd/system")
    }
    pub(crate) fn unit(&self, name: &str) -> PathBuf {
        self.units_dir().join(name)
    }
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.at("/var/lib/boshy")
    }
    /// What join changed, for leave.
    pub(crate) fn state(&self) -> PathBuf {
        self.at("/var/lib/boshy/join-state.json")
    }
    /// The agent's own directory: its last name table, and what it keeps beside it (its
    /// scope, the ports to capture, the drain mark). The agent writes them; leave removes it.
    pub(crate) fn agent_data_dir(&self) -> PathBuf {
        self.at("/var/lib/boshy/agent")
    }
    pub(crate) fn table(&self) -> PathBuf {
        self.agent_data_dir().join("names.json")
    }
    /// The agent's sockets shared with Envoy (SDS), made by the agent.
    pub(crate) fn run_dir(&self) -> PathBuf {
        self.at("/run/boshy")
    }
    pub(crate) fn sds_socket(&self) -> PathBuf {
        self.at("/run/boshy/sds.sock")
    }
    /// The agent's access log socket, beside its SDS socket (Envoy's request metrics).
    pub(crate) fn access_log_socket(&self) -> PathBuf {
        self.at("/run/boshy/als.sock")
    }
    /// The ports the pilots say the VM exposes, which the agent writes beside its name table
    /// (`virtual_ip_agent::exposed_ports_path`) and `boshy dnat` captures inbound.
    pub(crate) fn inbound_ports(&self) -> PathBuf {
        self.table().with_file_name("inbound_ports.json")
    }
    pub(crate) fn resolv_conf(&self) -> PathBuf {
        self.at("/etc/resolv.conf")
    }
    pub(crate) fn resolved_drop_in(&self) -> PathBuf {
        self.at("/etc/systemd/resolved.conf.d/boshy.conf")
    }
}

/// `--dns-listen`: a loopback address other than systemd-resolved's.
pub(crate) fn parse_dns_listen(text: &str) -> Result<SocketAddr, String> {
    let listen: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an address:port like {DEFAULT_DNS_LISTEN}"))?;
    if !listen.ip().is_loopback() {
        return Err(format!(
            "`{text}` is not a loopback address: the agent must not answer DNS for the network"
        ));
    }
    if ["127.0.0.53", "127.0.0.54"].contains(&listen.ip().to_string().as_str()) {
        return Err(format!(
            "`{text}` is systemd-resolved's own address; use another loopback address such as \
             {DEFAULT_DNS_LISTEN}"
        ));
    }
    Ok(listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_root() {
        let layout = Layout::new(Path::new("/tmp/vm1"));
        assert_eq!(layout.key(), Path::new("/tmp/vm1/etc/boshy/tls/vm.key"));
        assert_eq!(
            Layout::new(Path::new("/")).unit(AGENT_UNIT),
            Path::new("/etc/systemd/system/boshy-agent.service")
        );
    }

    #[test]
    fn the_dns_address_is_loopback_and_not_resolveds() {
        assert!(parse_dns_listen(DEFAULT_DNS_LISTEN).is_ok());
        assert!(parse_dns_listen("127.0.0.53:53")
            .unwrap_err()
            .contains("systemd-resolved"));
        assert!(parse_dns_listen("10.0.0.1:53")
            .unwrap_err()
            .contains("loopback"));
        assert!(parse_dns_listen("nope").is_err());
    }
}
