//! The pilot's record of the calls its agents report (`console::wire`): the last window of
//! each instance, forgotten once it is not renewed. One entry per instance the director lists,
//! so it is bounded by the mesh; a heartbeat costs a map insert.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::graph::GroupRef;
use super::wire::TrafficReport;
use crate::catalog::model::InstanceRef;

/// A window is current for this many of its own lengths after it arrived: the agent sends the
/// next one a window later, so one late or lost window does not blank an edge.
const CURRENT_WINDOWS: u32 = 2;
/// And this long on top, for the pilot's and the agent's clocks ticking apart.
const CURRENT_SLACK: Duration = Duration::from_secs(5);

/// One instance's last window, with the box of the graph its calls start from
/// (`graph::caller_group`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallerWindow {
    pub source: GroupRef,
    pub report: TrafficReport,
}

/// Every instance's last window.
#[derive(Debug, Default)]
pub struct TrafficBoard {
    windows: Mutex<HashMap<InstanceRef, (Instant, CallerWindow)>>,
}

impl TrafficBoard {
    /// Keeps `report` as its instance's last window, received `now`; `source` is the group
    /// the instance is listed in (the caller checked the claim).
    pub(crate) fn take(&self, source: GroupRef, report: TrafficReport, now: Instant) {
        let instance = report.instance_ref();
        let window = CallerWindow { source, report };
        self.lock().insert(instance, (now, window));
    }

    /// The windows still current at `now`; the others are forgotten.
    pub(crate) fn current(&self, now: Instant) -> Vec<CallerWindow> {
        let mut windows = self.lock();
        windows.retain(|_, (at, window)| {
            let length = Duration::from_millis(window.report.window_ms);
            now.saturating_duration_since(*at) <= length * CURRENT_WINDOWS + CURRENT_SLACK
        });
        let mut current: Vec<CallerWindow> =
            windows.values().map(|(_, window)| window.clone()).collect();
        current.sort_by(|a, b| {
            (&a.report.deployment, &a.report.instance)
                .cmp(&(&b.report.deployment, &b.report.instance))
        });
        current
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceRef, (Instant, CallerWindow)>> {
        self.windows
            .lock()
            .expect("no panic holds the traffic board")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, window_ms: u64) -> TrafficReport {
        TrafficReport {
            deployment: "d".into(),
            instance: instance.into(),
            window_ms,
            calls: vec![],
        }
    }

    fn g() -> GroupRef {
        GroupRef {
            deployment: "d".into(),
            instance_group: "g".into(),
        }
    }

    #[test]
    fn the_last_window_of_each_instance_is_current_until_it_is_not_renewed() {
        let board = TrafficBoard::default();
        let start = Instant::now();
        board.take(g(), report("a", 10_000), start);
        board.take(g(), report("b", 10_000), start);
        // a's next window replaces its first.
        board.take(g(), report("a", 9_000), start + Duration::from_secs(10));
        let names = |windows: Vec<CallerWindow>| {
            windows
                .into_iter()
                .map(|w| (w.report.instance, w.report.window_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(board.current(start + Duration::from_secs(25))),
            vec![("a".into(), 9_000), ("b".into(), 10_000)],
            "two windows and the slack: b is still current"
        );
        assert_eq!(
            names(board.current(start + Duration::from_secs(26))),
            vec![("a".into(), 9_000)],
            "b not renewed"
        );
        assert_eq!(
            names(board.current(start + Duration::from_secs(34))),
            vec![]
        );
    }
}
