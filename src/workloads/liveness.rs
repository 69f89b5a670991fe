//! Pure: whether a registered VM is an endpoint that takes traffic, from what this pilot heard
//! of it, and when its registration is due to go. A VM's agent reports every
//! `heartbeat_seconds` even when nothing changed (its heartbeat); its endpoint is healthy iff
//! a report came within `ttl_seconds`, its readiness probe passes and it is not leaving. No
//! heartbeat for `deregister_after_seconds` (counted from when this pilot first held the
//! registration, for one never heard): the registration is removed from the store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::model::Catalog;
use crate::health::report::{AgentReport, ProbeVerdict};

/// The last report this pilot took from a registered VM's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heard {
    pub(crate) at: Instant,
    /// The same moment, for people: UNIX milliseconds.
    pub(crate) at_unix_ms: u64,
    pub(crate) probe: Option<ProbeVerdict>,
    pub(crate) leaving: bool,
    pub(crate) plaintext: bool,
    /// No probed port failed (what judges a VM whose group has no probe).
    pub(crate) ports_pass: bool,
}

impl Heard {
    pub(crate) fn of(report: &AgentReport, at: Instant, at_unix_ms: u64) -> Self {
        Heard {
            at,
            at_unix_ms,
            probe: report.probe.clone(),
            leaving: report.leaving,
            plaintext: report.plaintext,
            ports_pass: report.failing_ports.is_empty(),
        }
    }

    /// The group's probe passes; a group without a probe (its agent reports no verdict) is
    /// judged by the probed ports, as a BOSH instance is.
    fn passing(&self) -> bool {
        self.probe.as_ref().map_or(self.ports_pass, |p| p.passing)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Healthy,
    /// Heard within the TTL, but its probe fails or it is leaving.
    Unhealthy,
    /// Not heard within the TTL (or never).
    Silent,
}

/// What the catalog takes of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) state: State,
    /// Mesh clients call it in plaintext (its agent said so).
    pub(crate) plaintext: bool,
}

pub(crate) fn judge(heard: Option<&Heard>, now: Instant, ttl: Duration) -> Verdict {
    let Some(heard) = heard.filter(|h| now.saturating_duration_since(h.at) < ttl) else {
        return Verdict {
            state: State::Silent,
            plaintext: false,
        };
    };
    let state = if heard.leaving || !heard.passing() {
        State::Unhealthy
    } else {
        State::Healthy
    };
    Verdict {
        state,
        plaintext: heard.plaintext,
    }
}

/// Whether a registration this pilot has held since `known_since` is due to be removed: no
/// heartbeat for `grace`.
pub(crate) fn due(
    heard: Option<&Heard>,
    known_since: Instant,
    now: Instant,
    grace: Duration,
) -> bool {
    let last = heard.map_or(known_since, |h| h.at.max(known_since));
    now.saturating_duration_since(last) >= grace
}

/// Every registration's verdict, by registration id: what the catalog's WorkloadGroup
/// endpoints take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Liveness(pub(crate) HashMap<String, Verdict>);

impl Liveness {
    pub(crate) fn healthy(&self) -> usize {
        self.0
            .values()
            .filter(|v| v.state == State::Healthy)
            .count()
    }
}

/// `catalog` with `liveness` applied to the endpoints of WorkloadGroup services; `None` when
/// that changes nothing. An endpoint without a verdict (a registration this pilot has not
/// judged yet) is out.
pub(crate) fn apply(catalog: &Catalog, liveness: &Liveness) -> Option<Catalog> {
    let unchanged = catalog
        .services
        .iter()
        .filter(|s| s.workload_group.is_some())
        .flat_map(|s| &s.endpoints)
        .all(|e| endpoint_health(liveness, &e.instance) == (e.healthy, e.plaintext));
    if unchanged {
        return None;
    }
    let mut next = catalog.clone();
    for service in next
        .services
        .iter_mut()
        .filter(|s| s.workload_group.is_some())
    {
        for endpoint in &mut service.endpoints {
            (endpoint.healthy, endpoint.plaintext) = endpoint_health(liveness, &endpoint.instance);
        }
    }
    Some(crate::catalog::rehash(next))
}

fn endpoint_health(liveness: &Liveness, id: &str) -> (bool, bool) {
    liveness
        .0
        .get(id)
        .map_or((false, false), |v| (v.state == State::Healthy, v.plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, service};

    const TTL: Duration = Duration::from_secs(30);

    fn heard(at: Instant, probe: Option<bool>, leaving: bool) -> Heard {
        Heard {
            at,
            at_unix_ms: 0,
            probe: probe.map(|passing| ProbeVerdict {
                passing,
                detail: String::new(),
            }),
            leaving,
            plaintext: false,
            ports_pass: true,
        }
    }

    #[test]
    fn healthy_iff_heard_within_the_ttl_with_the_probe_passing_and_not_leaving() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let state = |h: Option<&Heard>, now: u64| judge(h, at(now), TTL).state;
        assert_eq!(state(None, 0), State::Silent);
        let good = heard(t0, Some(true), false);
        assert_eq!(state(Some(&good), 29), State::Healthy);
        assert_eq!(state(Some(&good), 30), State::Silent);
        assert_eq!(
            state(Some(&heard(t0, Some(false), false)), 1),
            State::Unhealthy
        );
        assert_eq!(
            state(Some(&heard(t0, Some(true), true)), 1),
            State::Unhealthy
        );
        // No probe in the group: the probed ports judge.
        assert_eq!(state(Some(&heard(t0, None, false)), 1), State::Healthy);
        let ports_fail = Heard {
            ports_pass: false,
            ..heard(t0, None, false)
        };
        assert_eq!(state(Some(&ports_fail), 1), State::Unhealthy);
    }

    #[test]
    fn a_registration_is_due_after_the_grace_from_its_last_heartbeat_or_from_when_it_was_known() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(600);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!due(None, t0, at(599), grace));
        assert!(due(None, t0, at(600), grace));
        let h = heard(at(100), Some(true), false);
        assert!(!due(Some(&h), t0, at(699), grace));
        assert!(due(Some(&h), t0, at(700), grace));
    }

    #[test]
    fn only_workload_group_endpoints_take_the_verdicts() {
        let mut group = service("", "", "").port("amqp", 5672, Protocol::Tcp);
        group = group
            .endpoint(Endpoint {
                instance: "vm-1".into(),
                ..endpoint("10.0.1.1")
            })
            .endpoint(Endpoint {
                instance: "vm-2".into(),
                ..endpoint("10.0.1.2")
            });
        let mut catalog = testing::catalog(
            1,
            [
                group,
                service("d", "g", "j")
                    .port("http", 80, Protocol::Http)
                    .endpoint(endpoint("10.0.0.1")),
            ],
        );
        catalog.services[0].workload_group = Some("legacy/rabbitmq".into());
        let catalog = crate::catalog::rehash(catalog);
        let verdict = |state| Verdict {
            state,
            plaintext: false,
        };
        let liveness = Liveness(HashMap::from([
            ("vm-1".to_string(), verdict(State::Healthy)),
            ("vm-2".to_string(), verdict(State::Silent)),
        ]));
        let next = apply(&catalog, &liveness).expect("vm-2 goes out");
        let health: Vec<bool> = next.services[0]
            .endpoints
            .iter()
            .map(|e| e.healthy)
            .collect();
        assert_eq!(health, [true, false]);
        assert!(
            next.services[1].endpoints[0].healthy,
            "a job's endpoint is not touched"
        );
        assert_ne!(next.version, catalog.version);
        assert_eq!(apply(&next, &liveness), None, "nothing more to change");
        assert_eq!(liveness.healthy(), 1);
    }
}
