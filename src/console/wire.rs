//! What an agent tells the pilots about its VM's calls, for the console's service graph: per
//! destination service, what its Envoy counted over the last window. Pure.

use serde::{Deserialize, Serialize};

use crate::catalog::model::InstanceRef;

/// Where the agent sends its window: `POST` with a [`TrafficReport`] as JSON, on the names
/// port.
pub(crate) const TRAFFIC_PATH: &str = "/v1/names/traffic";

/// Istio's request duration buckets, in milliseconds (upper bounds), so that the agent's
/// `boshy_request_duration_milliseconds` reads as Istio's does and the console's p99 comes
/// from the same buckets.
pub(crate) const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A report names at most this many destinations, the busiest: the rest of a VM that calls
/// more is left out of the graph rather than growing the report past the names port's body
/// limit.
pub(crate) const MAX_CALLS: usize = 200;

/// The longest window a pilot takes: a report covers at most this much time.
const MAX_WINDOW_MS: u64 = 10 * 60 * 1000;

/// One window of one VM's outbound calls, as its own Envoy saw them (the caller's side, so
/// that a call is counted once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficReport {
    pub deployment: String,
    /// The director's instance id.
    pub instance: String,
    /// How long the window was, in milliseconds.
    pub window_ms: u64,
    /// By destination, at most [`MAX_CALLS`].
    pub calls: Vec<Calls>,
}

/// What one VM's Envoy counted of its calls to one service in a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calls {
    /// The service's hostname.
    pub destination: String,
    /// HTTP requests answered or given up on.
    #[serde(default)]
    pub requests: u64,
    /// Of `requests`, those answered 5xx or not answered at all.
    #[serde(default)]
    pub errors: u64,
    /// Request durations: how many fell in each bucket of [`DURATION_BUCKETS_MS`], the last
    /// entry for longer ones; empty when there were no HTTP requests.
    #[serde(default)]
    pub duration_buckets: Vec<u64>,
    /// TCP connections opened (on `tcp_proxy` ports).
    #[serde(default)]
    pub connections: u64,
    /// TCP connections that ended with one of Envoy's failure flags (no upstream, refused).
    #[serde(default)]
    pub failed_connections: u64,
}

impl TrafficReport {
    pub(crate) fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.deployment.clone(),
            instance_id: self.instance.clone(),
        }
    }

    /// Why a pilot refuses the report, if it does: what it would otherwise keep must stay
    /// small and make sense.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.window_ms == 0 || self.window_ms > MAX_WINDOW_MS {
            return Err(format!(
                "window_ms {}: not between 1 and {MAX_WINDOW_MS}",
                self.window_ms
            ));
        }
        if self.calls.len() > MAX_CALLS {
            return Err(format!(
                "calls: {} destinations, at most {MAX_CALLS}",
                self.calls.len()
            ));
        }
        for calls in &self.calls {
            let name = crate::text::clip(&calls.destination);
            if calls.destination.is_empty() || calls.destination.len() > 253 {
                return Err(format!("calls: destination {name:?} is not a hostname"));
            }
            if calls.duration_buckets.len() > DURATION_BUCKETS_MS.len() + 1 {
                return Err(format!(
                    "calls to {name}: {} duration buckets, at most {}",
                    calls.duration_buckets.len(),
                    DURATION_BUCKETS_MS.len() + 1
                ));
            }
            if calls.errors > calls.requests {
                return Err(format!("calls to {name}: more errors than requests"));
            }
            if calls.failed_connections > calls.connections {
                return Err(format!(
                    "calls to {name}: more failed connections than connections"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(calls: Vec<Calls>) -> TrafficReport {
        TrafficReport {
            deployment: "d".into(),
            instance: "i".into(),
            window_ms: 10_000,
            calls,
        }
    }

    fn calls(destination: &str) -> Calls {
        Calls {
            destination: destination.into(),
            requests: 3,
            errors: 1,
            duration_buckets: vec![0, 2, 1],
            ..Calls::default()
        }
    }

    #[test]
    fn a_sound_report_passes() {
        assert_eq!(report(vec![calls("a.g.d.boshy")]).check(), Ok(()));
    }

    #[test]
    fn a_report_that_would_grow_the_pilot_or_makes_no_sense_is_refused_naming_why() {
        let mut long_window = report(vec![]);
        long_window.window_ms = MAX_WINDOW_MS + 1;
        assert_eq!(
            long_window.check(),
            Err("window_ms 600001: not between 1 and 600000".into())
        );
        let many = report((0..=MAX_CALLS).map(|i| calls(&format!("s{i}"))).collect());
        assert_eq!(
            many.check(),
            Err("calls: 201 destinations, at most 200".into())
        );
        let mut buckets = calls("a.g.d.boshy");
        buckets.duration_buckets = vec![0; 21];
        assert_eq!(
            report(vec![buckets]).check(),
            Err("calls to a.g.d.boshy: 21 duration buckets, at most 20".into())
        );
        let mut errors = calls("a.g.d.boshy");
        errors.errors = 4;
        assert_eq!(
            report(vec![errors]).check(),
            Err("calls to a.g.d.boshy: more errors than requests".into())
        );
        assert_eq!(
            report(vec![calls("")]).check(),
            Err("calls: destination \"\" is not a hostname".into())
        );
    }
}
