//! What travels between an agent and a pilot about its VM's scope. Pure.

use serde::{Deserialize, Serialize};

use crate::catalog::model::InstanceRef;

/// Where the agent changes its VM's scope: `POST` with a [`ScopeRequest`] as JSON, on the
/// names port; the answer is a [`ScopeAnswer`].
pub(crate) const SCOPE_PATH: &str = "/v1/names/scope";

/// A scope holds at most this many hostnames, a request names at most this many: far more
/// than a VM calls, and it bounds what one request makes the pilot hold.
pub(crate) const MAX_SCOPE_HOSTS: usize = 10_000;
const MAX_HOSTNAME_LEN: usize = 253;

/// One change of one instance's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    pub deployment: String,
    /// The director's instance id.
    pub instance: String,
    /// Exactly one of `add` and `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<String>>,
}

/// `add`: hostnames the VM just asked for (the answer waits until this pilot's Envoys of the
/// instance hold them). `set`: the whole scope, sent on every new stream and when hostnames
/// expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeChange {
    Add(Vec<String>),
    Set(Vec<String>),
}

/// What a pilot says to a scope change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeAnswer {
    /// The instance's ADS streams open on this pilot.
    pub streams: usize,
    /// Every one of them has had its Envoy acknowledge the resources of the scope (for an
    /// `add`; a `set` does not wait).
    pub synced: bool,
}

impl ScopeRequest {
    pub fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.deployment.clone(),
            instance_id: self.instance.clone(),
        }
    }

    pub fn new(instance: &InstanceRef, change: ScopeChange) -> Self {
        let (add, set) = match change {
            ScopeChange::Add(hosts) => (Some(hosts), None),
            ScopeChange::Set(hosts) => (None, Some(hosts)),
        };
        ScopeRequest {
            deployment: instance.deployment.clone(),
            instance: instance.instance_id.clone(),
            add,
            set,
        }
    }

    /// The change asked for, or what is wrong with the request: not exactly one of `add` and
    /// `set`, too many hostnames, or one that is no hostname.
    pub fn change(&self) -> Result<ScopeChange, String> {
        let change = match (&self.add, &self.set) {
            (Some(hosts), None) => ScopeChange::Add(hosts.clone()),
            (None, Some(hosts)) => ScopeChange::Set(hosts.clone()),
            _ => return Err("exactly one of `add` and `set` is required".into()),
        };
        let (ScopeChange::Add(hosts) | ScopeChange::Set(hosts)) = &change;
        if hosts.len() > MAX_SCOPE_HOSTS {
            return Err(format!(
                "{} hostnames; a scope holds at most {MAX_SCOPE_HOSTS}",
                hosts.len()
            ));
        }
        let bad = hosts.iter().find(|h| {
            h.is_empty()
                || h.len() > MAX_HOSTNAME_LEN
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        });
        match bad {
            Some(host) => Err(format!(
                "`{}` is not a lower-case hostname",
                crate::text::clip(host)
            )),
            None => Ok(change),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_agent_writes_them_and_bad_ones_are_named() {
        let read = |json: &str| serde_json::from_str::<ScopeRequest>(json);
        let add = read(r#"{"deployment":"d","instance":"i","add":["web.g.d.boshy"]}"#).unwrap();
        assert_eq!(
            add.change(),
            Ok(ScopeChange::Add(vec!["web.g.d.boshy".into()]))
        );
        let instance = add.instance_ref();
        let written = ScopeRequest::new(&instance, ScopeChange::Add(vec!["web.g.d.boshy".into()]));
        assert_eq!(
            read(&serde_json::to_string(&written).unwrap()).unwrap(),
            add
        );
        let set = read(r#"{"deployment":"d","instance":"i","set":[]}"#).unwrap();
        assert_eq!(set.change(), Ok(ScopeChange::Set(vec![])));

        let neither = read(r#"{"deployment":"d","instance":"i"}"#).unwrap();
        assert_eq!(
            neither.change().unwrap_err(),
            "exactly one of `add` and `set` is required"
        );
        let both = read(r#"{"deployment":"d","instance":"i","add":[],"set":[]}"#).unwrap();
        assert!(both.change().is_err());
        assert!(read(r#"{"deployment":"d","instance":"i","add":[],"extra":1}"#).is_err());
        let upper = ScopeRequest::new(&instance, ScopeChange::Add(vec!["Web.boshy".into()]));
        assert_eq!(
            upper.change().unwrap_err(),
            "`Web.boshy` is not a lower-case hostname"
        );
        let many = ScopeRequest::new(
            &instance,
            ScopeChange::Set(vec!["a.boshy".into(); MAX_SCOPE_HOSTS + 1]),
        );
        assert!(many.change().unwrap_err().contains("at most 10000"));
    }
}
