//! The configs `boshy join` installs, pure: the virtual-ip-agent's (`config::AgentConfig`)
//! and Envoy's bootstrap (`xds::bootstrap`), both for the registration as if it were a BOSH
//! instance (deployment = the director config, instance group = the WorkloadGroup, instance
//! id = the registration id), with the VM's mesh certificate for mutual TLS to the pilots.
//! They are what the virtual-ip-agent and bosh-envoy jobs render for a VM with
//! `identity.enabled`, `inbound.capture` and `metrics.enabled` (the release's defaults for
//! the mesh, `manifests/runtime-config.yml`), with the jobs' default ports.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::layout::Layout;
use super::wire::JoinAnswer;
use crate::config::ClientTls;
use crate::workloads::WorkloadIdentity;
use crate::xds::bootstrap::{self, AdsMode, MetricsListener, Telemetry};

/// Envoy's metrics listener, on every interface (behind mutual TLS), as bosh-envoy's
/// `metrics.port`.
const METRICS_LISTEN: &str = "0.0.0.0:15090";

/// Whether the VM captures its exposed ports inbound: only with workload identities, as on a
/// BOSH VM (the pilots give Envoy an inbound listener only then; without it, capturing would
/// send the callers to a port nobody listens on).
pub(crate) fn captures_inbound(answer: &JoinAnswer) -> bool {
    answer.settings.trust_domain.is_some()
}

/// The request metrics: the agent's access log socket and loopback `/metrics`, served to the
/// network by Envoy's metrics listener.
fn telemetry(layout: &Layout) -> Telemetry {
    Telemetry {
        access_log_socket: layout.access_log_socket(),
        metrics: Some(MetricsListener {
            listen: METRICS_LISTEN.parse().expect("valid"),
            agent: bootstrap::DEFAULT_AGENT_METRICS.parse().expect("valid"),
        }),
    }
}

/// The host of each pilot API URL (`https://10.0.0.5:8080` → `10.0.0.5`, `[fd00::5]` for
/// IPv6): the agent and Envoy reach the same pilots on their other ports.
pub(crate) fn pilot_hosts(api_urls: &[String]) -> Result<Vec<String>> {
    api_urls
        .iter()
        .map(|url| {
            let parsed =
                reqwest::Url::parse(url).with_context(|| format!("pilot `{url}`: not a URL"))?;
            parsed
                .host_str()
                .map(str::to_string)
                .with_context(|| format!("pilot `{url}`: no host"))
        })
        .collect()
}

/// The TLS of the agent and of Envoy towards the pilots: the VM's certificate.
pub(crate) fn client_tls(layout: &Layout, server_name: &str) -> ClientTls {
    ClientTls {
        ca_cert_path: layout.ca(),
        cert_path: layout.certificate(),
        key_path: layout.key(),
        server_name: server_name.to_string(),
    }
}

/// The keys of `AgentConfig` join sets; the others keep their defaults. Its own type because
/// `AgentConfig` is read-only (Deserialize); the unit test parses the output as one.
#[derive(Serialize)]
struct AgentYml<'a> {
    tld: &'a str,
    listen: SocketAddr,
    pilots: Vec<String>,
    table_path: &'a Path,
    tls: TlsYml<'a>,
    instance: InstanceYml<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityYml<'a>>,
    mesh_certificate: MeshCertificateYml,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbound_capture_port: Option<u16>,
    telemetry: TelemetryYml<'a>,
}

/// A joined VM's certificate is the agent's to renew (a BOSH VM's is BOSH's).
#[derive(Serialize)]
struct MeshCertificateYml {
    renew: bool,
}

#[derive(Serialize)]
struct TelemetryYml<'a> {
    access_log_socket: &'a Path,
    metrics_listen: SocketAddr,
}

#[derive(Serialize)]
struct TlsYml<'a> {
    ca_cert_path: &'a Path,
    cert_path: &'a Path,
    key_path: &'a Path,
    server_name: &'a str,
}

#[derive(Serialize)]
struct InstanceYml<'a> {
    deployment: &'a str,
    id: &'a str,
    instance_group: &'a str,
}

#[derive(Serialize)]
struct IdentityYml<'a> {
    trust_domain: &'a str,
    sds_socket: &'a Path,
}

/// `/etc/boshy/agent.yml`.
pub(crate) fn agent_config(
    layout: &Layout,
    answer: &JoinAnswer,
    hosts: &[String],
    listen: SocketAddr,
) -> String {
    let tls = client_tls(layout, &answer.settings.server_name);
    let sds_socket = layout.sds_socket();
    let table_path = layout.table();
    let telemetry = telemetry(layout);
    let agent_metrics = telemetry
        .metrics
        .as_ref()
        .expect("join serves metrics")
        .agent;
    let yml = AgentYml {
        tld: &answer.settings.tld,
        listen,
        pilots: hosts
            .iter()
            .map(|host| format!("https://{host}:{}", answer.settings.ports.names))
            .collect(),
        table_path: &table_path,
        tls: TlsYml {
            ca_cert_path: &tls.ca_cert_path,
            cert_path: &tls.cert_path,
            key_path: &tls.key_path,
            server_name: &tls.server_name,
        },
        instance: InstanceYml {
            deployment: &answer.deployment,
            id: &answer.id,
            instance_group: &answer.instance_group,
        },
        // Workload identities on: the agent gets the VM's SPIFFE certificate for Envoy, as on
        // a BOSH VM.
        identity: answer
            .settings
            .trust_domain
            .as_deref()
            .map(|trust_domain| IdentityYml {
                trust_domain,
                sds_socket: &sds_socket,
            }),
        mesh_certificate: MeshCertificateYml { renew: true },
        // With identities, Envoy's inbound listener takes the captured ports (mutual TLS):
        // the agent reports a port healthy only once it is captured and that listener answers.
        inbound_capture_port: captures_inbound(answer).then_some(crate::xds::inbound::INBOUND_PORT),
        telemetry: TelemetryYml {
            access_log_socket: &telemetry.access_log_socket,
            metrics_listen: agent_metrics,
        },
    };
    serde_yaml::to_string(&yml).expect("plain data serializes")
}

/// `/etc/boshy/envoy.yaml`: delta ADS to every pilot's xDS port, mutual TLS with the VM's
/// certificate (through file-based SDS, so that a renewed one is taken without a restart),
/// the SDS cluster when identities are on (the pilots' inbound listener takes the workload
/// certificate through it), the access log cluster to the agent and the metrics listener.
pub(crate) fn envoy_bootstrap(
    layout: &Layout,
    answer: &JoinAnswer,
    hosts: &[String],
) -> Result<String> {
    // The node the pilots' xDS port holds this registration's streams to.
    let node = WorkloadIdentity {
        config: answer.deployment.clone(),
        group: answer.instance_group.clone(),
        id: answer.id.clone(),
    }
    .node(answer.address);
    let pilots: Vec<String> = hosts
        .iter()
        .map(|host| format!("{host}:{}", answer.settings.ports.xds))
        .collect();
    let tls = client_tls(layout, &answer.settings.server_name);
    let sds = layout.sds_socket();
    let certificate_sds = layout.certificate_sds();
    bootstrap::Sidecar {
        node: &node,
        pilots: &pilots,
        admin: bootstrap::DEFAULT_ADMIN.parse().expect("valid"),
        ads_mode: AdsMode::Delta,
        tls: Some(&tls),
        sds_socket: answer
            .settings
            .trust_domain
            .is_some()
            .then_some(sds.as_path()),
        telemetry: Some(&telemetry(layout)),
        // The agent renews the certificate in place: Envoy reads it again through this file.
        certificate_sds: Some(&certificate_sds),
    }
    .render()
}

/// The file-based SDS file of the bootstrap's `certificate_sds` (the VM's certificate).
pub(crate) fn certificate_sds(layout: &Layout, server_name: &str) -> Result<String> {
    bootstrap::certificate_sds(&client_tls(layout, server_name))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::AgentConfig;

    pub(crate) fn answer(trust_domain: Option<&str>) -> JoinAnswer {
        let mut answer: JoinAnswer = serde_json::from_value(serde_json::json!({
            "id": "6c1f0000-0000-4000-8000-000000000001",
            "deployment": "legacy",
            "instance_group": "rabbitmq",
            "instance": "rabbitmq/6c1f0000-0000-4000-8000-000000000001",
            "address": "10.249.0.30",
            "certificate": "CERT",
            "ca": "CA",
            "settings": {"tld": "boshy", "virtual_ip_cidr": "169.254.255.0/24",
                "server_name": "bosh-pilot.boshy-istio", "trust_domain": null,
                "ports": {"xds": 15010, "names": 15011, "api": 8080},
                "heartbeat_seconds": 10, "ttl_seconds": 30}
        }))
        .unwrap();
        answer.settings.trust_domain = trust_domain.map(str::to_string);
        answer
    }

    #[test]
    fn the_agent_config_is_one_the_agent_reads_for_the_registration() {
        let layout = Layout::new(Path::new("/vm"));
        let hosts = pilot_hosts(&[
            "https://10.0.0.5:8080".into(),
            "https://[fd00::5]:8080/".into(),
        ])
        .unwrap();
        let text = agent_config(
            &layout,
            &answer(Some("boshy.example")),
            &hosts,
            "127.0.1.53:53".parse().unwrap(),
        );
        let config: AgentConfig = crate::config::parse(&text, Path::new("agent.yml")).unwrap();
        assert_eq!(
            config.pilots,
            ["https://10.0.0.5:15011", "https://[fd00::5]:15011"]
        );
        let instance = config.instance.as_ref().unwrap();
        assert_eq!(instance.deployment, "legacy");
        assert_eq!(instance.id, "6c1f0000-0000-4000-8000-000000000001");
        assert_eq!(instance.instance_group.as_deref(), Some("rabbitmq"));
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.key_path, Path::new("/vm/etc/boshy/tls/vm.key"));
        assert!(
            config.mesh_certificate.as_ref().is_some_and(|m| m.renew),
            "the agent renews a joined VM's certificate"
        );
        assert_eq!(tls.server_name, "bosh-pilot.boshy-istio");
        assert_eq!(
            config.table_path,
            Path::new("/vm/var/lib/boshy/agent/names.json")
        );
        assert_eq!(
            config.identity.as_ref().unwrap().sds_socket,
            Path::new("/vm/run/boshy/sds.sock")
        );
        assert!(config
            .check_transport(Path::new("agent.yml"))
            .unwrap()
            .is_none());
        assert!(config
            .check_listen(Path::new("agent.yml"))
            .unwrap()
            .is_none());
        // As the virtual-ip-agent job with identity, inbound capture and metrics.
        assert_eq!(config.inbound_capture_port, Some(15006));
        let telemetry = config.telemetry.as_ref().unwrap();
        assert_eq!(
            telemetry.access_log_socket,
            Path::new("/vm/run/boshy/als.sock")
        );
        assert_eq!(telemetry.metrics_listen, "127.0.0.1:15020".parse().unwrap());
    }

    #[test]
    fn no_trust_domain_no_identity() {
        let layout = Layout::new(Path::new("/"));
        let text = agent_config(
            &layout,
            &answer(None),
            &["10.0.0.5".into()],
            "127.0.1.53:53".parse().unwrap(),
        );
        let config: AgentConfig = crate::config::parse(&text, Path::new("a")).unwrap();
        assert!(config.identity.is_none());
        assert_eq!(
            config.inbound_capture_port, None,
            "no inbound listener to go to"
        );
        assert!(config.telemetry.is_some(), "metrics need no identity");
        let bootstrap = envoy_bootstrap(&layout, &answer(None), &["10.0.0.5".into()]).unwrap();
        assert!(!bootstrap.contains("sds-grpc"), "{bootstrap}");
    }

    #[test]
    fn envoy_is_the_registration_with_the_vms_certificate() {
        let layout = Layout::new(Path::new("/"));
        let text = envoy_bootstrap(
            &layout,
            &answer(Some("boshy.example")),
            &["10.0.0.5".into(), "10.0.0.6".into()],
        )
        .unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            yaml["node"]["id"].as_str().unwrap(),
            "sidecar~10.249.0.30~rabbitmq/6c1f0000-0000-4000-8000-000000000001~legacy"
        );
        assert_eq!(
            yaml["node"]["metadata"]["deployment"].as_str().unwrap(),
            "legacy"
        );
        assert!(text.contains("port_value: 15010"), "{text}");
        assert!(text.contains("/run/boshy/sds.sock"), "{text}");
        // The certificate comes through the file-based SDS file, which names the files.
        let context = &yaml["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
            ["common_tls_context"];
        assert!(context.get("tls_certificates").is_none(), "{text}");
        assert_eq!(
            context["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
                ["path"]
                .as_str(),
            Some("/etc/boshy/vm-certificate-sds.yaml")
        );
        let sds: serde_yaml::Value =
            serde_yaml::from_str(&certificate_sds(&layout, "bosh-pilot.boshy-istio").unwrap())
                .unwrap();
        let secret = &sds["resources"][0]["tls_certificate"];
        assert_eq!(
            secret["certificate_chain"]["filename"].as_str(),
            Some("/etc/boshy/tls/vm.pem")
        );
        assert_eq!(
            secret["watched_directory"]["path"].as_str(),
            Some("/etc/boshy/tls")
        );
        // The agent's access log server, and the metrics listener behind mutual TLS.
        let clusters = yaml["static_resources"]["clusters"].as_sequence().unwrap();
        let telemetry = clusters
            .iter()
            .find(|c| c["name"] == "boshy-telemetry")
            .unwrap();
        assert_eq!(
            telemetry["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            "/run/boshy/als.sock"
        );
        let listener = &yaml["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], "metrics");
        assert_eq!(
            listener["address"]["socket_address"]["port_value"].as_u64(),
            Some(15090)
        );
        let tls = &listener["filter_chains"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/etc/boshy/ca.pem"
        );
    }
}
