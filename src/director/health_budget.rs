//! Pure: which deployment's health to read next, and when, under one budget of director tasks
//! for the whole pilot (docs/director-api.md §8.3). The clock is passed in.
//!
//! A health reading is an `instances?format=full` task (§3.3): it takes one of the director's
//! few workers, which it shares with every deploy. So the pilot starts at most one task per
//! `spacing` (a minute divided by `health_tasks_per_minute`) and at most `max_in_flight` at
//! once, whatever the number of deployments. A deployment wants a reading when its last one is
//! older than the health interval; urgent ones (an event, a new VM, an agent gone) go first,
//! then the oldest reading. A deployment whose every instance a connected agent reports on costs
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::model::InstanceRef;

/// The instances of the pilot whose health a connected agent reports.
pub(crate) type AgentReports = Arc<BTreeSet<InstanceRef>>;

/// One deployment's place in the schedule.
#[derive(Debug)]
struct Schedule {
    /// The ids of the instances a reading is for: with a VM, in an instance group that declares
    /// services. Nothing to read when empty.
    subjects: BTreeSet<String>,
    /// When the last successful reading was asked for.
    read_at: Option<Instant>,
    /// The time between its last two successful readings.
    last_cycle: Option<Duration>,
    /// When the last reading was asked for, successful or not: the round-robin order, so that a
    /// failing deployment does not take every turn.
    tried_at: Option<Instant>,
    /// When it was first tracked: how old "no reading yet" is.
    tracked_at: Instant,
    /// Wants a reading before any other: since when (the queue order) and the latest reason
    /// (only a reading asked after it satisfies it).
    urgent: Option<(Instant, Instant)>,
    in_flight: bool,
}

/// The budget cannot read every deployment within the health interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lag {
    /// Deployments that need readings.
    pub deployments: usize,
    /// How often each is read at best, one after the other at the budget's pace.
    pub achieved: Duration,
    /// The `health_tasks_per_minute` that would read each within the interval.
    pub needed_per_minute: u64,
}

/// A change worth one log line: the budget started or stopped keeping up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LagChange {
    Started(Lag),
    Ended,
}

/// How fresh the health readings are, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Freshness {
    /// Age of the oldest reading among deployments that need one (since tracked, for one never
    /// read).
    pub oldest_age: Duration,
    /// The longest time between a deployment's last two readings: the cycle achieved.
    pub cycle: Duration,
}

#[derive(Debug)]
pub(crate) struct HealthBudget {
    interval: Duration,
    spacing: Duration,
    max_in_flight: usize,
    next_start: Instant,
    deployments: BTreeMap<String, Schedule>,
    agents: AgentReports,
    lagging: bool,
}

impl HealthBudget {
    /// Each deployment read at least every `interval`, one task started per `spacing` at most,
    /// `max_in_flight` at once. The first task may start at `now`.
    pub fn new(
        now: Instant,
        interval: Duration,
        spacing: Duration,
        max_in_flight: usize,
    ) -> HealthBudget {
        HealthBudget {
            interval,
            spacing,
            max_in_flight,
            next_start: now,
            deployments: BTreeMap::new(),
            agents: AgentReports::default(),
            lagging: false,
        }
    }

    /// Tracks a deployment, or updates the instances a reading of it is for.
    pub fn track(&mut self, deployment: &str, subjects: BTreeSet<String>, now: Instant) {
        match self.deployments.get_mut(deployment) {
            Some(schedule) => schedule.subjects = subjects,
            None => {
                let schedule = Schedule {
                    subjects,
                    read_at: None,
                    last_cycle: None,
                    tried_at: None,
                    tracked_at: now,
                    urgent: None,
                    in_flight: false,
                };
                self.deployments.insert(deployment.to_string(), schedule);
            }
        }
    }

    /// A deployment that no longer exists. A reading in flight is dropped when it ends.
    pub fn forget(&mut self, deployment: &str) {
        self.deployments.remove(deployment);
    }

    /// Puts a deployment's reading at the front of the queue: only a reading asked from now on
    /// satisfies it.
    pub fn urgent(&mut self, deployment: &str, now: Instant) {
        if let Some(schedule) = self.deployments.get_mut(deployment) {
            let since = schedule.urgent.map_or(now, |(since, _)| since);
            schedule.urgent = Some((since, now));
        }
    }

    /// The instances agents now report on. A deployment with an instance that left the set
    /// (its agent disconnected: the VM may be gone, or only the agent) becomes urgent, so that
    /// the director's view takes over quickly.
    pub fn set_agent_reports(&mut self, reports: AgentReports, now: Instant) {
        let left: BTreeSet<String> = self
            .agents
            .difference(&reports)
            .map(|gone| gone.deployment.clone())
            .collect();
        self.agents = reports;
        for deployment in left {
            self.urgent(&deployment, now);
        }
    }

    /// Whether a reading would tell anything agents do not.
    fn needs_reading(&self, deployment: &str, schedule: &Schedule) -> bool {
        schedule.subjects.iter().any(|id| {
            !self.agents.contains(&InstanceRef {
                deployment: deployment.to_string(),
                instance_id: id.clone(),
            })
        })
    }

    /// When a deployment's next reading is due, if it needs one.
    fn due_at(&self, deployment: &str, schedule: &Schedule, now: Instant) -> Option<Instant> {
        if schedule.in_flight || !self.needs_reading(deployment, schedule) {
            return None;
        }
        match (schedule.urgent, schedule.read_at) {
            (Some(_), _) | (None, None) => Some(now),
            (None, Some(read_at)) => Some(read_at + self.interval),
        }
    }

    /// The deployment whose reading to ask for now, if the budget allows one and one is due;
    /// `ready` excludes deployments backing off. The caller reports the end with `finished`.
    pub fn start_next(&mut self, now: Instant, ready: impl Fn(&str) -> bool) -> Option<String> {
        if now < self.next_start || self.in_flight() >= self.max_in_flight {
            return None;
        }
        let (name, _) = self
            .deployments
            .iter()
            .filter(|(name, _)| ready(name))
            .filter(|(name, s)| self.due_at(name, s, now).is_some_and(|due| due <= now))
            // Urgent first, the longest waiting of them first; then the least recently tried.
            .min_by_key(|(name, s)| (s.urgent.is_none(), s.urgent, s.tried_at, *name))?;
        let name = name.clone();
        let schedule = self.deployments.get_mut(&name).expect("just found");
        schedule.in_flight = true;
        schedule.tried_at = Some(now);
        self.next_start = now + self.spacing;
        Some(name)
    }

    /// A reading asked for at `asked_at` ended, successfully or not.
    pub fn finished(&mut self, deployment: &str, asked_at: Instant, succeeded: bool) {
        let Some(schedule) = self.deployments.get_mut(deployment) else {
            return;
        };
        schedule.in_flight = false;
        if !succeeded {
            return;
        }
        schedule.last_cycle = schedule.read_at.map(|before| asked_at - before);
        schedule.read_at = Some(asked_at);
        if schedule
            .urgent
            .is_some_and(|(_, latest)| latest <= asked_at)
        {
            schedule.urgent = None;
        }
    }

    fn in_flight(&self) -> usize {
        self.deployments.values().filter(|s| s.in_flight).count()
    }

    /// When `start_next` may next have something to start if nothing else happens; `None`
    /// when nothing is to be read, or every slot is taken (a reading ending changes that).
    pub fn next_wake(&self, now: Instant, ready: impl Fn(&str) -> bool) -> Option<Instant> {
        if self.in_flight() >= self.max_in_flight {
            return None;
        }
        let due = self
            .deployments
            .iter()
            .filter(|(name, _)| ready(name))
            .filter_map(|(name, s)| self.due_at(name, s, now))
            .min()?;
        Some(due.max(self.next_start))
    }

    /// The readings' freshness at `now`.
    pub fn freshness(&self, now: Instant) -> Freshness {
        let needing = self
            .deployments
            .iter()
            .filter(|(name, s)| self.needs_reading(name, s));
        let mut freshness = Freshness::default();
        for (_, schedule) in needing {
            let since = schedule.read_at.unwrap_or(schedule.tracked_at);
            freshness.oldest_age = freshness
                .oldest_age
                .max(now.saturating_duration_since(since));
            freshness.cycle = freshness.cycle.max(schedule.last_cycle.unwrap_or_default());
        }
        freshness
    }

    /// Whether the budget keeps every deployment that needs readings within the interval: at
    /// one task per `spacing`, `n` deployments take `n × spacing` to be read once each.
    pub fn lag(&self) -> Option<Lag> {
        let deployments = self
            .deployments
            .iter()
            .filter(|(name, s)| self.needs_reading(name, s))
            .count();
        let achieved = self.spacing.saturating_mul(deployments as u32);
        if achieved <= self.interval {
            return None;
        }
        let needed = deployments as f64 * 60.0 / self.interval.as_secs_f64();
        Some(Lag {
            deployments,
            achieved,
            needed_per_minute: needed.ceil() as u64,
        })
    }

    /// The lag's start or end since the last call: log each once.
    pub fn lag_change(&mut self) -> Option<LagChange> {
        let lag = self.lag();
        let change = match (self.lagging, lag) {
            (false, Some(lag)) => Some(LagChange::Started(lag)),
            (true, None) => Some(LagChange::Ended),
            _ => None,
        };
        self.lagging = lag.is_some();
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ids(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn always(_: &str) -> bool {
        true
    }

    /// Interval 15 s, one task per 10 s (6 a minute), two in flight.
    fn budget(t0: Instant, deployments: &[&str]) -> HealthBudget {
        let mut budget = HealthBudget::new(t0, 15 * SECOND, 10 * SECOND, 2);
        for name in deployments {
            budget.track(name, ids(&["i1", "i2"]), t0);
        }
        budget
    }

    /// Runs the schedule for `seconds`, each reading taking `task` and succeeding; returns
    /// the deployments read, in order, with the second each was asked at.
    fn run(
        budget: &mut HealthBudget,
        t0: Instant,
        seconds: u64,
        task: Duration,
    ) -> Vec<(u64, String)> {
        let mut asked = Vec::new();
        let mut running: Vec<(Instant, String, Instant)> = Vec::new();
        for step in 0..=seconds * 10 {
            let now = t0 + Duration::from_millis(step * 100);
            running.retain(|(ends, name, at)| {
                let done = *ends <= now;
                if done {
                    budget.finished(name, *at, true);
                }
                !done
            });
            while let Some(name) = budget.start_next(now, always) {
                asked.push((step / 10, name.clone()));
                running.push((now + task, name, now));
            }
        }
        asked
    }

    #[test]
    fn the_pilot_never_exceeds_the_budget_whatever_the_number_of_deployments() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..50).map(|i| format!("d{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut many = budget(t0, &names);
        let asked = run(&mut many, t0, 600, 2 * SECOND);
        // One task per 10 s: 61 in 600 s (at 0, 10, …, 600), never two within 10 s.
        assert_eq!(asked.len(), 61);
        assert!(asked.windows(2).all(|w| w[1].0 - w[0].0 == 10), "{asked:?}");
        // Round robin: each of the 50 once before any twice.
        let first_round: BTreeSet<&String> = asked[..50].iter().map(|(_, n)| n).collect();
        assert_eq!(first_round.len(), 50);
        assert_eq!(asked[50].1, asked[0].1);

        // One deployment is read every interval, never more often than the budget allows.
        let mut one = budget(t0, &["solo"]);
        let asked = run(&mut one, t0, 600, 2 * SECOND);
        assert!(asked.windows(2).all(|w| w[1].0 - w[0].0 >= 10), "{asked:?}");
        assert!(asked.len() <= 61);
        // Due 15 s after the last reading, started at the next 100 ms step: 41 readings.
        assert_eq!(asked.len(), 41, "{asked:?}");
    }

    #[test]
    fn no_more_than_max_in_flight_even_when_tasks_are_slow() {
        let t0 = Instant::now();
        let mut budget = HealthBudget::new(t0, 15 * SECOND, SECOND, 2);
        for name in ["a", "b", "c", "d"] {
            budget.track(name, ids(&["i"]), t0);
        }
        assert_eq!(budget.start_next(t0, always).as_deref(), Some("a"));
        assert_eq!(budget.start_next(t0, always), None, "spacing");
        assert_eq!(budget.start_next(t0 + SECOND, always).as_deref(), Some("b"));
        assert_eq!(
            budget.start_next(t0 + 5 * SECOND, always),
            None,
            "two in flight"
        );
        assert_eq!(budget.next_wake(t0 + 5 * SECOND, always), None);
        budget.finished("a", t0, true);
        assert_eq!(
            budget.next_wake(t0 + 5 * SECOND, always),
            Some(t0 + 5 * SECOND)
        );
        assert_eq!(
            budget.start_next(t0 + 5 * SECOND, always).as_deref(),
            Some("c")
        );
    }

    #[test]
    fn oldest_reading_first_and_failures_take_their_turn() {
        let t0 = Instant::now();
        let mut budget = HealthBudget::new(t0, SECOND, SECOND, 1);
        for name in ["a", "b", "c"] {
            budget.track(name, ids(&["i"]), t0);
        }
        let mut order = Vec::new();
        for step in 0..6 {
            let now = t0 + step * SECOND;
            let name = budget.start_next(now, always).unwrap();
            // "a" always fails: it is tried in its turn, not at every slot.
            budget.finished(&name, now, name != "a");
            order.push(name);
        }
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn urgent_deployments_go_first_and_only_a_later_reading_satisfies_them() {
        let t0 = Instant::now();
        let mut budget = HealthBudget::new(t0, 15 * SECOND, SECOND, 2);
        for name in ["a", "b", "c"] {
            budget.track(name, ids(&["i"]), t0);
        }
        budget.urgent("c", t0);
        budget.urgent("b", t0 + SECOND);
        let now = t0 + 2 * SECOND;
        assert_eq!(budget.start_next(now, always).as_deref(), Some("c"));
        // A new reason while c's reading runs: that reading is too old to satisfy it.
        budget.urgent("c", now + SECOND);
        budget.finished("c", now, true);
        assert_eq!(
            budget.start_next(now + 3 * SECOND, always).as_deref(),
            Some("c"),
            "c has waited longer than b"
        );
        budget.finished("c", now + 3 * SECOND, true);
        assert_eq!(
            budget.start_next(now + 4 * SECOND, always).as_deref(),
            Some("b")
        );
        budget.finished("b", now + 4 * SECOND, true);
        // c is fresh and no longer urgent: a, never read, is next; then nothing is due.
        assert_eq!(
            budget.start_next(now + 5 * SECOND, always).as_deref(),
            Some("a")
        );
        budget.finished("a", now + 5 * SECOND, true);
        assert_eq!(budget.start_next(now + 6 * SECOND, always), None);
        assert_eq!(
            budget.next_wake(now + 6 * SECOND, always),
            Some(now + 3 * SECOND + 15 * SECOND),
            "c's reading is the oldest"
        );
    }

    #[test]
    fn a_deployment_backing_off_is_skipped() {
        let t0 = Instant::now();
        let mut budget = budget(t0, &["a", "b"]);
        assert_eq!(
            budget.start_next(t0, |name| name != "a").as_deref(),
            Some("b")
        );
        assert_eq!(budget.next_wake(t0, |name| name != "a"), None);
    }

    fn reported(pairs: &[(&str, &str)]) -> AgentReports {
        Arc::new(
            pairs
                .iter()
                .map(|(deployment, id)| InstanceRef {
                    deployment: deployment.to_string(),
                    instance_id: id.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_deployment_agents_fully_report_on_costs_no_task() {
        let t0 = Instant::now();
        let mut budget = budget(t0, &["a", "b"]);
        budget.set_agent_reports(reported(&[("a", "i1"), ("a", "i2"), ("b", "i1")]), t0);
        // b's i2 has no agent: b alone is read, forever.
        let asked = run(&mut budget, t0, 60, SECOND);
        assert!(asked.iter().all(|(_, name)| name == "b"), "{asked:?}");
        assert!(!asked.is_empty());
        // Nothing to read: no subjects (no VM in a group with services) is no task either.
        let mut empty = HealthBudget::new(t0, SECOND, SECOND, 2);
        empty.track("c", BTreeSet::new(), t0);
        assert_eq!(empty.start_next(t0, always), None);
        assert_eq!(empty.next_wake(t0, always), None);
        assert_eq!(empty.freshness(t0 + SECOND), Freshness::default());
    }

    #[test]
    fn an_instance_leaving_the_agent_reports_makes_its_deployment_urgent() {
        let t0 = Instant::now();
        let mut budget = HealthBudget::new(t0, 15 * SECOND, SECOND, 1);
        budget.track("a", ids(&["i1"]), t0);
        budget.track("b", ids(&["i1"]), t0);
        budget.set_agent_reports(reported(&[("a", "i1")]), t0);
        assert_eq!(budget.start_next(t0, always).as_deref(), Some("b"));
        budget.finished("b", t0, true);
        assert_eq!(budget.next_wake(t0, always), Some(t0 + 15 * SECOND));
        // a's agent disconnects: a goes first, at the next slot, not at b's next turn.
        budget.set_agent_reports(reported(&[]), t0 + 2 * SECOND);
        assert_eq!(
            budget.next_wake(t0 + 2 * SECOND, always),
            Some(t0 + 2 * SECOND)
        );
        assert_eq!(
            budget.start_next(t0 + 2 * SECOND, always).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn freshness_is_the_oldest_reading_and_the_longest_last_cycle() {
        let t0 = Instant::now();
        let mut budget = HealthBudget::new(t0, 15 * SECOND, SECOND, 2);
        budget.track("a", ids(&["i"]), t0);
        budget.track("b", ids(&["i"]), t0);
        assert_eq!(budget.freshness(t0 + 3 * SECOND).oldest_age, 3 * SECOND);
        budget.finished("a", t0 + 4 * SECOND, true);
        budget.finished("a", t0 + 24 * SECOND, true);
        budget.finished("b", t0 + 20 * SECOND, true);
        let freshness = budget.freshness(t0 + 30 * SECOND);
        assert_eq!(freshness.oldest_age, 10 * SECOND, "b's, read at 20 s");
        assert_eq!(freshness.cycle, 20 * SECOND, "a's, from 4 s to 24 s");
    }

    #[test]
    fn a_lag_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let t0 = Instant::now();
        // 6 a minute, each read every 15 s: one task per 10 s covers one deployment.
        let mut budget = budget(t0, &["a"]);
        assert_eq!(budget.lag_change(), None);
        for i in 0..49 {
            budget.track(&format!("n{i}"), ids(&["i"]), t0);
        }
        let lag = Lag {
            deployments: 50,
            achieved: 500 * SECOND,
            needed_per_minute: 200,
        };
        assert_eq!(budget.lag_change(), Some(LagChange::Started(lag)));
        assert_eq!(budget.lag_change(), None, "not repeated");
        for i in 0..49 {
            budget.forget(&format!("n{i}"));
        }
        assert_eq!(budget.lag_change(), Some(LagChange::Ended));
        assert_eq!(budget.lag_change(), None);
    }
}
