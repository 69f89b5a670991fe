//! What the pilot knows of every name-table stream open on it (each virtual-ip-agent, and any
//! other follower), for `GET /v1/proxies`: who it is, whether its claim to be an instance
//! holds, and which table it was last sent. [`AgentStatus`] is pure; [`NameStreams`] is the
//! record of the open streams, each updating its own entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::catalog::model::InstanceRef;
use crate::xds::proxy_status::unix;

/// One name-table stream. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The address it connected from.
    pub address: String,
    /// The instance it says it runs on (`None` for a follower that only wants the table).
    pub deployment: Option<String>,
    pub instance_id: Option<String>,
    /// Whether the director lists that instance at `address`: its health reports count.
    pub verified: bool,
    /// Why the claim does not hold, when it does not.
    pub refusal: Option<String>,
    pub connected_at: u64,
    /// The catalog version of the table it was last sent, and when; `None` before the first.
    pub table_version: Option<u64>,
    pub table_sent_at: Option<u64>,
    /// Whether that is the table the pilot serves now.
    pub table_current: bool,
}

impl AgentStatus {
    pub(crate) fn connected(
        peer: SocketAddr,
        claim: Option<&InstanceRef>,
        now: SystemTime,
    ) -> Self {
        AgentStatus {
            address: peer.ip().to_string(),
            deployment: claim.map(|c| c.deployment.clone()),
            instance_id: claim.map(|c| c.instance_id.clone()),
            verified: false,
            refusal: None,
            connected_at: unix(now),
            table_version: None,
            table_sent_at: None,
            table_current: false,
        }
    }

    pub(crate) fn table_sent(&mut self, version: u64, now: SystemTime) {
        self.table_version = Some(version);
        self.table_sent_at = Some(unix(now));
    }

    /// The claim was checked: it holds, or it does not for `refusal`.
    pub(crate) fn claim_checked(&mut self, refusal: Option<&str>) {
        self.verified = refusal.is_none();
        self.refusal = refusal.map(str::to_string);
    }

    /// The status as read while the pilot serves the table of `current` (`None`: no table
    /// yet).
    fn at(&self, current: Option<u64>) -> AgentStatus {
        AgentStatus {
            table_current: current.is_some() && self.table_version == current,
            ..self.clone()
        }
    }
}

/// The open name-table streams.
#[derive(Debug, Default)]
pub struct NameStreams {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, Arc<Mutex<AgentStatus>>>>,
    /// The catalog version of the table served now; 0 before the first (the placeholder
    /// catalog's version, whose table is never sent).
    current_table: AtomicU64,
}

impl NameStreams {
    /// A stream opened; its entry goes when the returned guard drops.
    pub(crate) fn open(self: &Arc<Self>, status: AgentStatus) -> NameStreamEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Mutex::new(status));
        self.streams
            .lock()
            .expect("name streams lock")
            .insert(id, status.clone());
        NameStreamEntry {
            streams: self.clone(),
            id,
            status,
        }
    }

    /// The pilot serves the table of catalog `version` now.
    pub(crate) fn serving(&self, version: u64) {
        self.current_table.store(version, Ordering::Relaxed);
    }

    /// Every open stream, oldest first.
    pub fn list(&self) -> Vec<AgentStatus> {
        let current = Some(self.current_table.load(Ordering::Relaxed)).filter(|v| *v != 0);
        let mut streams: Vec<(u64, Arc<Mutex<AgentStatus>>)> = {
            let streams = self.streams.lock().expect("name streams lock");
            streams.iter().map(|(id, s)| (*id, s.clone())).collect()
        };
        streams.sort_by_key(|(id, _)| *id);
        streams
            .into_iter()
            .map(|(_, status)| status.lock().expect("name stream lock").at(current))
            .collect()
    }
}

/// One open stream's entry in [`NameStreams`].
#[derive(Debug)]
pub(crate) struct NameStreamEntry {
    streams: Arc<NameStreams>,
    id: u64,
    status: Arc<Mutex<AgentStatus>>,
}

impl NameStreamEntry {
    pub(crate) fn status(&self) -> MutexGuard<'_, AgentStatus> {
        self.status.lock().expect("name stream lock")
    }
}

impl Drop for NameStreamEntry {
    fn drop(&mut self) {
        self.streams
            .streams
            .lock()
            .expect("name streams lock")
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn instance() -> InstanceRef {
        InstanceRef {
            deployment: "banana".into(),
            instance_id: "6f1c".into(),
        }
    }

    #[test]
    fn a_stream_shows_its_claim_and_the_table_it_was_sent() {
        let mut status =
            AgentStatus::connected("10.0.0.5:4000".parse().unwrap(), Some(&instance()), at(7));
        assert_eq!(
            (status.address.as_str(), status.deployment.as_deref()),
            ("10.0.0.5", Some("banana"))
        );
        assert_eq!(
            (status.instance_id.as_deref(), status.connected_at),
            (Some("6f1c"), 7)
        );
        status.claim_checked(Some("not listed at 10.0.0.5"));
        assert!(!status.verified);
        status.claim_checked(None);
        assert!(status.verified && status.refusal.is_none());
        status.table_sent(3, at(9));
        assert_eq!(
            (status.table_version, status.table_sent_at),
            (Some(3), Some(9))
        );
        assert!(status.at(Some(3)).table_current);
        assert!(!status.at(Some(4)).table_current);
        assert!(!status.at(None).table_current);
    }

    #[test]
    fn the_record_lists_open_streams_against_the_table_served() {
        let streams = Arc::new(NameStreams::default());
        let peer = "10.0.0.5:4000".parse().unwrap();
        let first = streams.open(AgentStatus::connected(peer, None, at(1)));
        let second = streams.open(AgentStatus::connected(peer, Some(&instance()), at(2)));
        first.status().table_sent(3, at(3));
        streams.serving(3);
        let listed = streams.list();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].table_current && !listed[1].table_current);
        drop(second);
        assert_eq!(streams.list().len(), 1, "a closed stream is gone");
    }
}
