//! The JSON of the pilot's workload API as the VM side speaks it (docs/api.md, issue 13's
//! contract): the token request of `boshy workload configure`, the join and its answer. The
//! answers are read leniently (unknown fields ignored) so that a newer pilot that adds a field
//! does not break an older VM's join.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const TOKENS_PATH: &str = "/v1/workloads/tokens";
pub(crate) const JOIN_PATH: &str = "/v1/workloads/join";
pub(crate) const LEAVE_PATH: &str = "/v1/workloads/leave";

/// `POST /v1/workloads/tokens`.
#[derive(Debug, Serialize)]
pub(crate) struct TokenRequest<'a> {
    pub(crate) group: &'a str,
    pub(crate) ttl_seconds: u64,
}

/// Its 201 answer. `token` is the only copy of the secret there will ever be.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenAnswer {
    pub(crate) id: String,
    pub(crate) group: String,
    pub(crate) expires_at: u64,
    pub(crate) token: crate::config::Secret,
    pub(crate) settings: Settings,
}

/// What a VM of the mesh must know of it: in the token answer (kept in `join.yml`) and again
/// in the join answer (the pilot's view at join time wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub(crate) tld: String,
    pub(crate) virtual_ip_cidr: String,
    /// The DNS name in the pilots' certificates.
    pub(crate) server_name: String,
    /// The mesh's SPIFFE trust domain when workload identities are on.
    #[serde(default)]
    pub(crate) trust_domain: Option<String>,
    pub(crate) ports: Ports,
    pub(crate) heartbeat_seconds: u64,
    pub(crate) ttl_seconds: u64,
}

/// The pilots' ports: xDS (Envoy), the name table (the agent), the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ports {
    pub(crate) xds: u16,
    pub(crate) names: u16,
    pub(crate) api: u16,
}

/// `POST /v1/workloads/join`, with `Authorization: Bearer <join token>`. No address: the
/// pilot takes the connection's.
#[derive(Debug, Serialize)]
pub(crate) struct JoinRequest<'a> {
    pub(crate) group: &'a str,
    pub(crate) csr: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: &'a BTreeMap<String, String>,
}

/// Its 200 answer: the registration, the VM's mesh client certificate and the mesh CA.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JoinAnswer {
    pub(crate) id: String,
    pub(crate) deployment: String,
    pub(crate) instance_group: String,
    pub(crate) instance: String,
    pub(crate) address: std::net::IpAddr,
    pub(crate) certificate: String,
    pub(crate) ca: String,
    pub(crate) settings: Settings,
}

/// The one-line reason of a refusal: the pilot's API answers errors as `{"error": "..."}` or
/// as plain text; either way the operator reads the pilot's words, clipped.
pub(crate) fn reason(body: &str) -> String {
    let said = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            ["error", "message", "reason"]
                .iter()
                .find_map(|key| json.get(key).and_then(|v| v.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| body.trim().to_string());
    crate::text::clip(&said)
}

/// POSTs `request` to `path` of each pilot in turn (each reached by `client_of`) until one
/// answers: that pilot and its answer read as `T`. A refusal ends the search, with the
/// pilot's reason and `what` was refused; only pilots that do not answer are skipped.
pub(crate) async fn post_to_first<'p, T: serde::de::DeserializeOwned>(
    pilots: &'p [String],
    client_of: impl Fn(&str) -> anyhow::Result<crate::mesh_cli::PilotClient>,
    path: &str,
    request: &impl Serialize,
    what: &str,
) -> anyhow::Result<(&'p str, T)> {
    use anyhow::Context as _;
    let mut unanswered = Vec::new();
    for pilot in pilots {
        let (url, response) = match client_of(pilot)?.post_json(path, request).await {
            Ok(answered) => answered,
            Err(err) => {
                unanswered.push(format!("{err:#}"));
                continue;
            }
        };
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !status.is_success() {
            anyhow::bail!(
                "the pilot refused the {what} (POST {url}: {status}): {}",
                reason(&body)
            );
        }
        let answer = serde_json::from_str(&body)
            .with_context(|| format!("POST {url}: the answer is not what this boshy reads"))?;
        return Ok((pilot, answer));
    }
    anyhow::bail!("no pilot answered the {what}: {}", unanswered.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_answer_of_the_contract_is_read() {
        let answer: JoinAnswer = serde_json::from_str(
            r#"{"id":"6c1f0000-0000-4000-8000-000000000001","deployment":"legacy",
                "instance_group":"rabbitmq","instance":"rabbitmq/6c1f0000-0000-4000-8000-000000000001",
                "address":"10.249.0.30","certificate":"CERT","ca":"CA",
                "settings":{"tld":"boshy","virtual_ip_cidr":"169.254.255.0/24",
                  "server_name":"bosh-pilot.boshy-istio","trust_domain":null,
                  "ports":{"xds":15010,"names":15011,"api":8080},
                  "heartbeat_seconds":10,"ttl_seconds":30},
                "new_field":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(answer.deployment, "legacy");
        assert_eq!(answer.settings.ports.names, 15011);
        assert_eq!(answer.settings.trust_domain, None);
    }

    #[test]
    fn a_refusal_reads_as_the_pilots_words() {
        assert_eq!(reason(r#"{"error":"token expired"}"#), "token expired");
        assert_eq!(reason("group not found\n"), "group not found");
    }

    #[test]
    fn no_labels_are_left_out_of_the_join() {
        let labels = BTreeMap::new();
        let body = serde_json::to_string(&JoinRequest {
            group: "legacy/rabbitmq",
            csr: "PEM",
            labels: &labels,
        })
        .unwrap();
        assert_eq!(body, r#"{"group":"legacy/rabbitmq","csr":"PEM"}"#);
    }
}
