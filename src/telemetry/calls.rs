//! Pure: one VM's outbound calls counted per destination service over a window, what the agent
//! reports to the pilots for the console's service graph (`console::wire`). Only the caller's
//! side counts, so that each call is counted once in the mesh.

use std::collections::HashMap;

use crate::console::wire::{Calls, DURATION_BUCKETS_MS, MAX_CALLS};

/// The window being counted.
#[derive(Debug, Default)]
pub(crate) struct CallWindow {
    by_destination: HashMap<String, Calls>,
}

impl CallWindow {
    fn calls(&mut self, destination: &str) -> &mut Calls {
        // Destinations are the services of the name table: as many as the mesh has.
        self.by_destination
            .entry(destination.to_string())
            .or_insert_with(|| Calls {
                destination: destination.to_string(),
                ..Calls::default()
            })
    }

    /// An HTTP request answered with `code` (0: not answered) after `duration_ms`.
    pub(crate) fn request(&mut self, destination: &str, code: u32, duration_ms: Option<f64>) {
        let calls = self.calls(destination);
        calls.requests += 1;
        if code == 0 || code >= 500 {
            calls.errors += 1;
        }
        if let Some(ms) = duration_ms {
            if calls.duration_buckets.is_empty() {
                calls.duration_buckets = vec![0; DURATION_BUCKETS_MS.len() + 1];
            }
            let bucket = DURATION_BUCKETS_MS
                .iter()
                .position(|bound| ms <= *bound)
                .unwrap_or(DURATION_BUCKETS_MS.len());
            calls.duration_buckets[bucket] += 1;
        }
    }

    pub(crate) fn connection_opened(&mut self, destination: &str) {
        self.calls(destination).connections += 1;
    }

    /// A connection ended with Envoy's failure flags (`flags`, as the metrics write them).
    pub(crate) fn connection_closed(&mut self, destination: &str, flags: &str) {
        // `-` is none; `DC` is the caller closing first, which is how a connection ends well.
        if flags != "-" && flags != "DC" {
            let calls = self.calls(destination);
            // A connection opened before the window began is counted in this one.
            calls.connections = calls.connections.max(calls.failed_connections + 1);
            calls.failed_connections += 1;
        }
    }

    /// The window's counts, the busiest [`MAX_CALLS`] destinations sorted by name, and a new
    /// window begun.
    pub(crate) fn take(&mut self) -> Vec<Calls> {
        let mut calls: Vec<Calls> = std::mem::take(&mut self.by_destination)
            .into_values()
            .collect();
        if calls.len() > MAX_CALLS {
            calls.sort_by_key(|c| std::cmp::Reverse(c.requests + c.connections));
            calls.truncate(MAX_CALLS);
        }
        calls.sort_by(|a, b| a.destination.cmp(&b.destination));
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_with_errors_and_durations_by_bucket() {
        let mut window = CallWindow::default();
        window.request("b", 200, Some(0.4));
        window.request("b", 503, Some(7.0));
        window.request("b", 0, None);
        window.request("b", 404, Some(4_000_000.0));
        window.request("a", 200, Some(1.0));
        let calls = window.take();
        let mut b_buckets = vec![0; 20];
        b_buckets[0] = 1; // 0.4 ms ≤ 0.5
        b_buckets[3] = 1; // 7 ms ≤ 10
        b_buckets[19] = 1; // beyond the last bound
        let mut a_buckets = vec![0; 20];
        a_buckets[1] = 1; // 1 ms ≤ 1, bounds are inclusive
        assert_eq!(
            calls,
            vec![
                Calls {
                    destination: "a".into(),
                    requests: 1,
                    errors: 0,
                    duration_buckets: a_buckets,
                    ..Calls::default()
                },
                Calls {
                    destination: "b".into(),
                    requests: 4,
                    errors: 2,
                    duration_buckets: b_buckets,
                    ..Calls::default()
                },
            ]
        );
        assert_eq!(window.take(), vec![], "taking begins a new window");
    }

    #[test]
    fn connections_are_counted_when_they_open_and_failures_when_they_close() {
        let mut window = CallWindow::default();
        window.connection_opened("t");
        window.connection_opened("t");
        window.connection_closed("t", "-");
        window.connection_closed("t", "DC");
        window.connection_closed("t", "UF");
        assert_eq!(
            window.take(),
            vec![Calls {
                destination: "t".into(),
                connections: 2,
                failed_connections: 1,
                ..Calls::default()
            }]
        );
        // Opened in an earlier window, failed in this one: never more failures than connections.
        window.connection_closed("t", "UH");
        let calls = window.take();
        assert_eq!((calls[0].connections, calls[0].failed_connections), (1, 1));
    }

    #[test]
    fn a_report_keeps_the_busiest_destinations() {
        let mut window = CallWindow::default();
        for i in 0..=MAX_CALLS {
            for _ in 0..=i {
                window.request(&format!("s{i:03}"), 200, None);
            }
        }
        let calls = window.take();
        assert_eq!(calls.len(), MAX_CALLS);
        assert!(
            calls.iter().all(|c| c.destination != "s000"),
            "the quietest is left out"
        );
        assert_eq!(calls[0].destination, "s001");
    }
}
