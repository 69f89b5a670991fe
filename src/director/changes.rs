//! Pure bookkeeping of the poller: which deployments (and whether the rule configs) events
//! mark dirty, backoff of a failing part, and de-duplication of error logs
//! (docs/director-api.md §8).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::decode::Event;
use super::rule_configs::RULES_CONFIG_TYPE;
use crate::workloads::store::CONFIG_TYPE as WORKLOADS_CONFIG_TYPE;

/// `GET /events` returns at most this many events, newest first, with no `after_id` (§5).
pub(crate) const EVENTS_PAGE: usize = 200;

/// What a page of events says has changed since `last_seen`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EventScan {
    /// The newest id in the page; `None` for an empty page.
    pub newest: Option<u64>,
    /// Deployments named by new, relevant events.
    pub dirty: BTreeSet<String>,
    /// A new event says a rule config was written.
    pub rule_configs: bool,
    /// A new event says the registration store (`boshy-workloads`) was written: by another
    /// pilot (or by this one: a re-read that finds nothing new costs one small request).
    pub workloads: bool,
    /// Events may have been missed (the page is all new, or ids went backwards): refresh all.
    pub everything: bool,
}

/// Scans a page of events. With no `last_seen` (first look) nothing is dirty: the caller
/// refreshes everything at start anyway and only needs a baseline.
pub(crate) fn scan_events(events: &[Event], last_seen: Option<u64>) -> EventScan {
    let newest = events.iter().map(|e| e.id).max();
    let (Some(last_seen), Some(newest_id)) = (last_seen, newest) else {
        return EventScan {
            newest,
            ..EventScan::default()
        };
    };
    if newest_id < last_seen {
        // The director's event log was reset (a rebuilt director): nothing can be trusted.
        return EventScan {
            newest,
            everything: true,
            ..EventScan::default()
        };
    }
    let fresh: Vec<&Event> = events.iter().filter(|e| e.id > last_seen).collect();
    let everything = fresh.len() >= EVENTS_PAGE && fresh.len() == events.len();
    let rule_configs = fresh.iter().any(|e| is_rule_config_event(e));
    let workloads = fresh
        .iter()
        .any(|e| config_event_type(e) == Some(WORKLOADS_CONFIG_TYPE));
    let dirty = fresh
        .into_iter()
        .filter_map(dirty_deployment)
        .map(str::to_string)
        .collect();
    EventScan {
        newest,
        dirty,
        rule_configs,
        workloads,
        everything,
    }
}

/// The type of the config a `config/<type>` event is about.
fn config_event_type(event: &Event) -> Option<&str> {
    event.object_type.as_deref()?.strip_prefix("config/")
}

/// `POST /configs` of type `boshy-istio`, accepted or refused: the director writes
/// `config/<type>` (§5). Deleting a config writes no event at all. The VIP store's own
/// writes (`config/boshy-vips`, at every VIP change) are not rules.
fn is_rule_config_event(event: &Event) -> bool {
    config_event_type(event) == Some(RULES_CONFIG_TYPE)
}

/// The deployment an event may have changed. Config events (`config/<type>`, `cloud-config`,
/// `runtime-config`) change no deployment until it is redeployed, which writes its own events.
fn dirty_deployment(event: &Event) -> Option<&str> {
    let object_type = event.object_type.as_deref().unwrap_or_default();
    if object_type.starts_with("config") || object_type.ends_with("-config") {
        return None;
    }
    event.deployment.as_deref().or(match object_type {
        "deployment" => event.object_name.as_deref(),
        _ => None,
    })
}

/// Exponential backoff for one failing part: `base`, `2·base`, `4·base` … up to `cap`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Records a failure; returns how long the part now waits.
    pub fn failed(&mut self, now: Instant, base: Duration, cap: Duration) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        let delay = base.saturating_mul(factor).min(cap);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + delay);
        delay
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// Which call of the poll failed; with the deployment, the key of a logged error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    Events,
    DeploymentList,
    ManifestFetch,
    ManifestParse,
    InstanceList,
    Instances,
    RuleConfigs,
}

impl Part {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Part::Events => "event check",
            Part::DeploymentList => "deployment list",
            Part::ManifestFetch => "manifest fetch",
            Part::ManifestParse => "manifest",
            Part::InstanceList => "instance list",
            Part::Instances => "instance health",
            Part::RuleConfigs => "rule configs read",
        }
    }
}

/// Remembers which errors are being reported, so that each (deployment, kind) is logged once
/// when it starts and once when it ends, not at every poll nor once per failing call.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    /// (deployment or `None` for the director as a whole, kind) → the parts failing so.
    failing: BTreeMap<(Option<String>, String), BTreeSet<Part>>,
}

impl ErrorLog {
    /// Records an error; true when this kind is new for the deployment (log it).
    pub fn report(&mut self, deployment: Option<&str>, part: Part, kind: &str) -> bool {
        let parts = self
            .failing
            .entry((deployment.map(str::to_string), kind.to_string()))
            .or_default();
        let new = parts.is_empty();
        parts.insert(part);
        new
    }

    /// Records a success of `part`; returns the kinds of error the deployment no longer has
    /// (log the recovery).
    pub fn recovered(&mut self, deployment: Option<&str>, part: Part) -> Vec<String> {
        let mut cleared = Vec::new();
        self.failing.retain(|(name, kind), parts| {
            if name.as_deref() != deployment || !parts.remove(&part) || !parts.is_empty() {
                return true;
            }
            cleared.push(kind.clone());
            false
        });
        cleared
    }

    /// Forgets every error of a deployment that no longer exists.
    pub(crate) fn forget(&mut self, deployment: &str) {
        self.failing
            .retain(|(name, _), _| name.as_deref() != Some(deployment));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, object_type: &str, object_name: &str, deployment: Option<&str>) -> Event {
        Event {
            id,
            object_type: Some(object_type.into()),
            object_name: Some(object_name.into()),
            deployment: deployment.map(str::to_string),
        }
    }

    #[test]
    fn first_look_is_only_a_baseline() {
        let events = [
            event(12, "deployment", "a", Some("a")),
            event(10, "vm", "x", Some("b")),
        ];
        let scan = scan_events(&events, None);
        assert_eq!(scan.newest, Some(12));
        assert!(scan.dirty.is_empty());
        assert!(!scan.everything);
    }

    #[test]
    fn new_deployment_instance_and_vm_events_mark_their_deployment() {
        let events = [
            event(15, "vm", "vm-cid", Some("c")),
            event(14, "instance", "banana/0f5c", Some("b")),
            event(13, "deployment", "a", None),
            event(10, "deployment", "old", Some("old")),
        ];
        let scan = scan_events(&events, Some(10));
        assert_eq!(scan.newest, Some(15));
        assert_eq!(
            scan.dirty,
            BTreeSet::from(["a".into(), "b".into(), "c".into()])
        );
        assert!(!scan.everything);
    }

    #[test]
    fn events_already_seen_mark_nothing() {
        let events = [event(10, "deployment", "a", Some("a"))];
        let scan = scan_events(&events, Some(10));
        assert!(scan.dirty.is_empty());
        assert!(!scan.everything);
    }

    #[test]
    fn config_events_mark_nothing_but_other_deployment_events_do() {
        let events = [
            event(23, "config/runtime", "boshy", None),
            event(22, "runtime-config", "default", None),
            event(21, "cloud-config", "default", None),
            event(20, "errand", "smoke-tests", Some("d")),
        ];
        let scan = scan_events(&events, Some(19));
        assert_eq!(scan.dirty, BTreeSet::from(["d".into()]));
    }

    #[test]
    fn registration_store_events_mark_the_registrations_alone() {
        let scan = |events: &[Event]| scan_events(events, Some(10));
        let written = scan(&[event(11, "config/boshy-workloads", "boshy", None)]);
        assert!(written.workloads && !written.rule_configs && written.dirty.is_empty());
        for object_type in [
            "config/boshy-vips",
            "config/boshy-istio",
            "config/boshy-workloads-x",
        ] {
            assert!(
                !scan(&[event(11, object_type, "boshy", None)]).workloads,
                "{object_type}"
            );
        }
        assert!(
            !scan(&[event(9, "config/boshy-workloads", "boshy", None)]).workloads,
            "seen"
        );
    }

    #[test]
    fn only_new_boshy_istio_config_events_mark_the_rule_configs() {
        let scan = |events: &[Event]| scan_events(events, Some(19));
        assert!(scan(&[event(20, "config/boshy-istio", "reviews", None)]).rule_configs);
        for object_type in [
            "config/boshy-vips",
            "config/boshy-istio-extra",
            "config/",
            "config/runtime",
            "runtime-config",
            "deployment",
        ] {
            let events = [event(20, object_type, "reviews", None)];
            assert!(!scan(&events).rule_configs, "{object_type}");
        }
        let seen = [event(19, "config/boshy-istio", "reviews", None)];
        assert!(!scan(&seen).rule_configs, "an event already seen");
        assert!(
            !scan_events(&seen, None).rule_configs,
            "the first look is a baseline"
        );
    }

    #[test]
    fn a_full_page_of_new_events_marks_everything() {
        let events: Vec<Event> = (0..EVENTS_PAGE as u64)
            .rev()
            .map(|i| event(1000 + i, "instance", "g/x", Some("a")))
            .collect();
        assert!(scan_events(&events, Some(999)).everything);
        // One already-seen event in the page proves nothing was missed.
        assert!(!scan_events(&events, Some(1000)).everything);
    }

    #[test]
    fn ids_going_backwards_mark_everything() {
        let events = [event(5, "deployment", "a", Some("a"))];
        let scan = scan_events(&events, Some(4000));
        assert!(scan.everything);
        assert_eq!(scan.newest, Some(5));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        let mut backoff = Backoff::default();
        assert!(backoff.ready(t0));
        let delays: Vec<_> = (0..7)
            .map(|_| backoff.failed(t0, base, cap).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert!(!backoff.ready(t0 + Duration::from_secs(29)));
        assert!(backoff.ready(t0 + Duration::from_secs(30)));
        backoff.succeeded();
        assert_eq!(backoff.failed(t0, base, cap), base);
    }

    #[test]
    fn each_error_kind_is_reported_once_per_deployment_until_recovery() {
        let mut log = ErrorLog::default();
        assert!(log.report(Some("a"), Part::Instances, "http_500"));
        assert!(!log.report(Some("a"), Part::Instances, "http_500"));
        assert!(!log.report(Some("a"), Part::ManifestFetch, "http_500"));
        assert!(log.report(Some("a"), Part::Instances, "timeout"));
        assert!(log.report(Some("b"), Part::Instances, "http_500"));
        assert!(log.report(None, Part::Events, "http_500"));
        // The manifest still fails with a 500: nothing has recovered from it yet.
        assert_eq!(log.recovered(Some("a"), Part::Instances), ["timeout"]);
        assert_eq!(log.recovered(Some("a"), Part::ManifestFetch), ["http_500"]);
        assert!(log.recovered(Some("a"), Part::Instances).is_empty());
        assert!(log.report(Some("a"), Part::Instances, "http_500"));
        log.forget("a");
        assert!(log.recovered(Some("a"), Part::Instances).is_empty());
        assert_eq!(log.recovered(Some("b"), Part::Instances), ["http_500"]);
        assert_eq!(log.recovered(None, Part::Events), ["http_500"]);
    }
}
