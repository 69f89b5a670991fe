//! What the pilot knows of every connected Envoy, for `GET /v1/proxies` and
//! `boshy mesh status`: who it is, and per xDS type what it was sent, what it accepted, and
//! the last error it rejected something with. Pure: the stream loop (`server`) tells each
//! stream's [`ProxyStatus`] what happened and when; the board (`sync`) adds how far behind the
//! current snapshot each stream is when it is read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use serde::{Deserialize, Serialize};

use super::client::node_field;
use super::resources::ResourceType;
use super::sotw::RequestKind;
use crate::names::stream_status::AgentStatus;

/// Longest NACK error kept and logged; Envoy's can hold a whole resource.
const MAX_ERROR: usize = 1000;

impl ResourceType {
    /// The xDS name of the type, as operators and `istioctl` say it: `cds`, `eds`, `lds`,
    /// `rds`.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    /// The type a person names by its short name or its resources' plural: `cds` or
    /// `clusters`, `eds` or `endpoints`, `lds` or `listeners`, `rds` or `routes`.
    pub(crate) fn from_word(word: &str) -> Option<ResourceType> {
        ResourceType::PUSH_ORDER
            .into_iter()
            .find(|t| word == t.short_name() || word == t.plural())
    }

    /// `clusters`, `endpoints`, `listeners` or `routes`.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            ResourceType::Cluster => "clusters",
            ResourceType::Endpoint => "endpoints",
            ResourceType::Listener => "listeners",
            ResourceType::Route => "routes",
        }
    }
}

/// `GET /v1/proxies`: the snapshot the pilot serves now, every Envoy connected to it, and
/// every name-table stream (each virtual-ip-agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxiesReport {
    /// `None` before the first snapshot.
    pub snapshot: Option<SnapshotRef>,
    pub proxies: Vec<ProxyStatus>,
    pub agents: Vec<AgentStatus>,
}

/// A snapshot: its place in the order the pilot published them, and its content version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub seq: u64,
    pub version: u64,
}

/// One connected Envoy (one ADS stream). Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The node id its bootstrap gives it; empty until its first request.
    pub node: String,
    /// `sotw` or `delta`.
    pub ads: String,
    /// The address it connected from.
    pub address: Option<String>,
    /// The BOSH instance, from the node's metadata (`None` for an Envoy the bosh-envoy job
    /// did not start).
    pub deployment: Option<String>,
    pub instance_group: Option<String>,
    pub instance_id: Option<String>,
    pub index: Option<u32>,
    pub connected_at: u64,
    /// When it last answered a response (ACK or NACK).
    pub last_sync: Option<u64>,
    /// The snapshot it is synced to (every response sent for it answered), and how many
    /// snapshots the pilot published since.
    pub synced_snapshot: u64,
    pub snapshots_behind: u64,
    /// By type's short name (`cds`, `eds`, `lds`, `rds`), the types it subscribed to.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One type of one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeStatus {
    pub state: SyncState,
    /// Version and nonce of the last response sent; empty before the first.
    pub sent_version: String,
    pub sent_nonce: String,
    /// The version it last accepted; empty before the first ACK.
    pub acked_version: String,
    /// The last rejection, kept after a later ACK (the state says whether it still stands).
    pub last_nack: Option<Nack>,
}

/// Where one type of one stream stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    /// Subscribed, nothing sent yet.
    #[default]
    #[serde(rename = "NOT SENT")]
    NotSent,
    /// The last response is sent and not answered yet.
    #[serde(rename = "STALE")]
    Stale,
    /// The last response was accepted.
    #[serde(rename = "SYNCED")]
    Synced,
    /// The last response was rejected: the Envoy runs what it accepted before.
    #[serde(rename = "NACK")]
    Nack,
}

impl SyncState {
    pub fn label(self) -> &'static str {
        match self {
            SyncState::NotSent => "NOT SENT",
            SyncState::Stale => "STALE",
            SyncState::Synced => "SYNCED",
            SyncState::Nack => "NACK",
        }
    }
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nack {
    pub version: String,
    /// The resource of ours Envoy's error names, if it names one.
    pub resource: Option<String>,
    /// Envoy's error on one line, clipped.
    pub error: String,
    pub at: u64,
}

impl ProxyStatus {
    /// A stream that just opened, its `ads` variant and peer known.
    pub(crate) fn connected(ads: &str, peer: Option<SocketAddr>, now: SystemTime) -> Self {
        ProxyStatus {
            node: String::new(),
            ads: ads.to_string(),
            address: peer.map(|peer| peer.ip().to_string()),
            deployment: None,
            instance_group: None,
            instance_id: None,
            index: None,
            connected_at: unix(now),
            last_sync: None,
            synced_snapshot: 0,
            snapshots_behind: 0,
            types: BTreeMap::new(),
        }
    }

    /// The stream's node, from its first request.
    pub(crate) fn identify(&mut self, node: &Node) {
        self.node = node.id.clone();
        self.deployment = node_field(node, "deployment");
        self.instance_group = node_field(node, "instance_group");
        self.instance_id = node_field(node, "instance_id");
        self.index = node_field(node, "index").and_then(|index| index.parse().ok());
    }

    /// A response of `resource_type` sent.
    pub(crate) fn sent(&mut self, resource_type: ResourceType, version: &str, nonce: &str) {
        let status = self.of(resource_type);
        status.state = SyncState::Stale;
        status.sent_version = version.to_string();
        status.sent_nonce = nonce.to_string();
    }

    /// A request of `resource_type`, as the stream's state judged it (`rejected`: the
    /// resource a NACK's error names).
    pub(crate) fn requested(
        &mut self,
        resource_type: ResourceType,
        kind: &RequestKind,
        rejected: Option<&str>,
        now: SystemTime,
    ) {
        match kind {
            RequestKind::Subscribe => {
                self.of(resource_type);
            }
            RequestKind::Ack { version } => {
                let status = self.of(resource_type);
                status.state = SyncState::Synced;
                status.acked_version = version.clone();
                self.last_sync = Some(unix(now));
            }
            RequestKind::Nack {
                rejected_version,
                message,
                ..
            } => {
                let status = self.of(resource_type);
                status.state = SyncState::Nack;
                status.last_nack = Some(Nack {
                    version: rejected_version.clone(),
                    resource: rejected.map(str::to_string),
                    error: one_line(message),
                    at: unix(now),
                });
                self.last_sync = Some(unix(now));
            }
            RequestKind::Stale | RequestKind::UnknownType => {}
        }
    }

    /// `<instance group>/<index>` as `bosh instances` says it, else the instance id, else the
    /// node id.
    pub(crate) fn name(&self) -> String {
        match (&self.instance_group, self.index, &self.instance_id) {
            (Some(group), Some(index), _) => format!("{group}/{index}"),
            (Some(group), None, Some(id)) => format!("{group}/{id}"),
            _ if self.node.is_empty() => "(no node yet)".into(),
            _ => self.node.clone(),
        }
    }

    /// `<deployment>/<group>/<index> (<instance id>)`, which names one instance in a mesh;
    /// the node id for an Envoy of no BOSH instance.
    pub(crate) fn qualified_name(&self) -> String {
        match (&self.deployment, &self.instance_group, &self.instance_id) {
            (Some(deployment), Some(group), Some(id)) => match self.index {
                Some(index) => format!("{deployment}/{group}/{index} ({id})"),
                None => format!("{deployment}/{group}/{id}"),
            },
            _ => self.node.clone(),
        }
    }

    /// Whether `wanted` names this Envoy as the BOSH CLI names instances
    /// (`<deployment>/<group>/<index or id>`, `<group>/<index or id>`), or is its node id.
    pub(crate) fn is_named(&self, wanted: &str) -> bool {
        let instance = |group: &str, which: &str| {
            self.instance_group.as_deref() == Some(group)
                && (self.index.is_some_and(|index| index.to_string() == which)
                    || self.instance_id.as_deref() == Some(which))
        };
        let by_instance = match wanted.split('/').collect::<Vec<_>>()[..] {
            [deployment, group, which] => {
                self.deployment.as_deref() == Some(deployment) && instance(group, which)
            }
            [group, which] => instance(group, which),
            _ => false,
        };
        by_instance || (!self.node.is_empty() && self.node == wanted)
    }

    fn of(&mut self, resource_type: ResourceType) -> &mut TypeStatus {
        self.types
            .entry(resource_type.short_name().to_string())
            .or_default()
    }

    /// The status as read with the current snapshot `current`: synced to `synced`.
    pub(crate) fn at(&self, synced: u64, current: Option<u64>) -> ProxyStatus {
        ProxyStatus {
            synced_snapshot: synced,
            snapshots_behind: current.map_or(0, |current| current.saturating_sub(synced)),
            ..self.clone()
        }
    }
}

/// `time` in Unix seconds, as the status reports say times.
pub(crate) fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Envoy's NACK message may embed the whole rejected resource as multi-line proto text
/// before the reason; one line gets the first and last lines (the last one carries the
/// reason), at most `MAX_ERROR` characters.
pub(crate) fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let summary = match lines.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [first, .., last] => format!("{first} … {last}"),
    };
    summary.chars().take(MAX_ERROR).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CDS: ResourceType = ResourceType::Cluster;
    const LDS: ResourceType = ResourceType::Listener;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn every_type_has_its_own_short_name() {
        let names = ResourceType::PUSH_ORDER.map(ResourceType::short_name);
        assert_eq!(names, ["cds", "eds", "lds", "rds"]);
    }

    #[test]
    fn a_node_names_its_bosh_instance() {
        let mut status = ProxyStatus::connected("delta", "10.0.0.5:4321".parse().ok(), at(10));
        let node = Node {
            id: "apricot-node".into(),
            ..crate::xds::client::testing::node()
        };
        status.identify(&node);
        assert_eq!(status.address.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.node, "apricot-node");
        assert_eq!(
            (
                status.deployment.as_deref(),
                status.instance_group.as_deref(),
                status.instance_id.as_deref(),
                status.index
            ),
            (Some("d"), Some("g"), Some("client"), None)
        );
        assert_eq!(status.connected_at, 10);
    }

    #[test]
    fn each_type_goes_from_not_sent_to_stale_to_synced_or_nack() {
        let mut status = ProxyStatus::connected("sotw", None, at(0));
        let state = |status: &ProxyStatus, t: ResourceType| status.types[t.short_name()].state;
        status.requested(CDS, &RequestKind::Subscribe, None, at(1));
        status.requested(LDS, &RequestKind::Subscribe, None, at(1));
        assert_eq!(state(&status, CDS), SyncState::NotSent);
        assert_eq!(status.last_sync, None);

        status.sent(CDS, "v1", "1");
        status.sent(LDS, "v1", "2");
        assert_eq!(state(&status, CDS), SyncState::Stale);
        let ack = RequestKind::Ack {
            version: "v1".into(),
        };
        status.requested(CDS, &ack, None, at(2));
        let nack = RequestKind::Nack {
            rejected_version: "v1".into(),
            kept_version: String::new(),
            message: "goo.gle/debugonly\nname: \"x\"\n: duplicate address".into(),
        };
        status.requested(LDS, &nack, Some("outbound"), at(3));
        status.requested(LDS, &RequestKind::Stale, None, at(4));
        assert_eq!(state(&status, CDS), SyncState::Synced);
        assert_eq!(status.types["cds"].acked_version, "v1");
        assert_eq!(state(&status, LDS), SyncState::Nack);
        assert_eq!(
            status.types["lds"].last_nack,
            Some(Nack {
                version: "v1".into(),
                resource: Some("outbound".into()),
                error: "goo.gle/debugonly … : duplicate address".into(),
                at: 3
            })
        );
        assert_eq!(status.last_sync, Some(3), "a stale request is no answer");

        // A later version accepted: synced, the last rejection kept for the record.
        status.sent(LDS, "v2", "3");
        status.requested(
            LDS,
            &RequestKind::Ack {
                version: "v2".into(),
            },
            None,
            at(5),
        );
        assert_eq!(state(&status, LDS), SyncState::Synced);
        assert!(status.types["lds"].last_nack.is_some());
    }

    #[test]
    fn an_envoy_is_named_as_the_bosh_cli_names_its_instance_or_by_its_node_id() {
        let mut status = ProxyStatus::connected("delta", None, at(0));
        status.node = "sidecar~10.0.0.5~apricot/6f1c~sample".into();
        status.deployment = Some("sample".into());
        status.instance_group = Some("apricot".into());
        status.instance_id = Some("6f1c".into());
        status.index = Some(3);
        for name in [
            "apricot/3",
            "apricot/6f1c",
            "sample/apricot/3",
            "sample/apricot/6f1c",
            "sidecar~10.0.0.5~apricot/6f1c~sample",
        ] {
            assert!(status.is_named(name), "{name}");
        }
        for name in [
            "apricot/4",
            "banana/3",
            "other/apricot/3",
            "apricot",
            "3",
            "",
        ] {
            assert!(!status.is_named(name), "{name}");
        }
        assert_eq!(status.qualified_name(), "sample/apricot/3 (6f1c)");
        status.index = None;
        assert_eq!(status.qualified_name(), "sample/apricot/6f1c");
        status.deployment = None;
        assert_eq!(
            status.qualified_name(),
            "sidecar~10.0.0.5~apricot/6f1c~sample"
        );
    }

    #[test]
    fn types_are_named_by_short_name_or_plural() {
        for t in ResourceType::PUSH_ORDER {
            assert_eq!(ResourceType::from_word(t.short_name()), Some(t));
            assert_eq!(ResourceType::from_word(t.plural()), Some(t));
        }
        assert_eq!(ResourceType::from_word("secrets"), None);
    }

    #[test]
    fn lag_is_counted_in_snapshots_published_since_the_synced_one() {
        let status = ProxyStatus::connected("sotw", None, at(0));
        assert_eq!(status.at(3, Some(5)).snapshots_behind, 2);
        assert_eq!(status.at(5, Some(5)).snapshots_behind, 0);
        assert_eq!(status.at(0, None).snapshots_behind, 0);
        assert_eq!(status.at(3, Some(5)).synced_snapshot, 3);
    }

    #[test]
    fn states_are_written_as_the_table_shows_them() {
        for state in [
            SyncState::NotSent,
            SyncState::Stale,
            SyncState::Synced,
            SyncState::Nack,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.label())
            );
        }
    }

    #[test]
    fn nack_messages_are_kept_on_one_line_with_the_reason() {
        let envoy = "goo.gle/debugonly \nname: \"outbound\"\nfilter_chains {\n  x: 1\n}\n: Proto constraint validation failed (port out of range)";
        assert_eq!(
            one_line(envoy),
            "goo.gle/debugonly … : Proto constraint validation failed (port out of range)"
        );
        assert_eq!(one_line("duplicate filter chain"), "duplicate filter chain");
        assert_eq!(one_line(""), "");
        assert_eq!(one_line(&"é".repeat(5000)).chars().count(), MAX_ERROR);
    }
}
