//! What this pilot heard from the agents of registered VMs: the last report of each, taken
//! by the names server (`health::AgentRegistry::report`), kept in memory only. A heartbeat
//! costs a map update under a lock, never a store write; every pilot hears every agent (an
//! agent reports to each pilot), so each judges liveness alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::liveness::{self, Heard, Liveness, State, Verdict};
use crate::catalog::model::InstanceRef;
use crate::health::report::AgentReport;

#[derive(Debug, Default)]
pub struct Heartbeats {
    members: Mutex<HashMap<InstanceRef, Member>>,
}

#[derive(Debug)]
struct Member {
    /// When this pilot first held the registration: the grace of one never heard counts
    /// from there.
    known_since: Instant,
    /// Until when one never heard counts as healthy (the registrations a pilot finds at its
    /// start, whose agents have not reconnected yet).
    presumed_until: Option<Instant>,
    heard: Option<Heard>,
}

/// One registration as a sweep judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judged {
    pub(crate) verdict: Verdict,
    pub(crate) heard: Option<Heard>,
    pub(crate) due: bool,
}

impl Heartbeats {
    /// The registrations to listen for, as the store now holds them: new ones are known from
    /// `now` (and presumed healthy for `presumed`, if given), gone ones forgotten, the others
    /// keep what was heard.
    pub(crate) fn set_members(
        &self,
        members: impl IntoIterator<Item = InstanceRef>,
        now: Instant,
        presumed: Option<Duration>,
    ) {
        let mut held = self.members.lock().expect("heartbeats lock");
        let mut next: HashMap<InstanceRef, Member> = HashMap::new();
        for instance in members {
            let member = held.remove(&instance).unwrap_or(Member {
                known_since: now,
                presumed_until: presumed.map(|p| now + p),
                heard: None,
            });
            next.insert(instance, member);
        }
        *held = next;
    }

    /// Takes `report` if it is a registered VM's; whether it was.
    pub(crate) fn beat(&self, report: &AgentReport, now: Instant) -> bool {
        let mut held = self.members.lock().expect("heartbeats lock");
        let Some(member) = held.get_mut(&report.instance_ref()) else {
            return false;
        };
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        member.heard = Some(Heard::of(report, now, unix_ms));
        true
    }

    /// Every registration judged at `now`, by registration id.
    pub(crate) fn judge(
        &self,
        now: Instant,
        ttl: Duration,
        grace: Duration,
    ) -> HashMap<String, Judged> {
        let held = self.members.lock().expect("heartbeats lock");
        held.iter()
            .map(|(instance, member)| {
                let heard = member.heard.as_ref();
                let presumed = heard.is_none() && member.presumed_until.is_some_and(|t| now < t);
                let verdict = if presumed {
                    Verdict {
                        state: State::Healthy,
                        plaintext: false,
                    }
                } else {
                    liveness::judge(heard, now, ttl)
                };
                let judged = Judged {
                    verdict,
                    heard: heard.cloned(),
                    due: liveness::due(heard, member.known_since, now, grace),
                };
                (instance.instance_id.clone(), judged)
            })
            .collect()
    }
}

/// The verdicts alone.
pub(crate) fn liveness_of(judged: &HashMap<String, Judged>) -> Liveness {
    Liveness(
        judged
            .iter()
            .map(|(id, j)| (id.clone(), j.verdict))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> InstanceRef {
        InstanceRef {
            deployment: "legacy".into(),
            instance_id: id.into(),
        }
    }

    fn report(id: &str) -> AgentReport {
        AgentReport {
            deployment: "legacy".into(),
            instance: id.into(),
            ..AgentReport::default()
        }
    }

    #[test]
    fn only_members_beat_and_what_was_heard_survives_a_new_member_list() {
        let beats = Heartbeats::default();
        let t0 = Instant::now();
        let (ttl, grace) = (Duration::from_secs(30), Duration::from_secs(600));
        beats.set_members([instance("a"), instance("b")], t0, None);
        assert!(beats.beat(&report("a"), t0));
        assert!(!beats.beat(&report("bosh-vm"), t0), "not a registration");
        let later = t0 + Duration::from_secs(5);
        beats.set_members([instance("a"), instance("c")], later, None);
        let judged = beats.judge(later, ttl, grace);
        assert_eq!(judged.len(), 2);
        assert_eq!(judged["a"].verdict.state, State::Healthy);
        assert_eq!(judged["c"].verdict.state, State::Silent);
        assert!(judged["a"].heard.is_some());
        // c was known from `later`: its grace ends 600 s after that; a's after its beat.
        let end = t0 + grace;
        let judged = beats.judge(end, ttl, grace);
        assert!(judged["a"].due && !judged["c"].due);
        assert_eq!(liveness_of(&judged).healthy(), 0);
    }

    #[test]
    fn registrations_found_at_start_are_presumed_healthy_for_one_ttl_unless_heard() {
        let beats = Heartbeats::default();
        let t0 = Instant::now();
        let (ttl, grace) = (Duration::from_secs(30), Duration::from_secs(600));
        beats.set_members([instance("a"), instance("b")], t0, Some(ttl));
        let soon = t0 + Duration::from_secs(29);
        let judged = beats.judge(soon, ttl, grace);
        assert_eq!(judged["a"].verdict.state, State::Healthy);
        let leaving = AgentReport {
            leaving: true,
            ..report("b")
        };
        beats.beat(&leaving, soon);
        assert_eq!(
            beats.judge(soon, ttl, grace)["b"].verdict.state,
            State::Unhealthy
        );
        let judged = beats.judge(t0 + ttl, ttl, grace);
        assert_eq!(judged["a"].verdict.state, State::Silent);
    }
}
