//! Counting director and UAA requests per route, so tests can see what a client costs.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `GET /deployments/sample-deployment/instances` → `GET /deployments/:d/instances`; numeric
/// and UUID segments become `:id`, so counts group by route, not by object.
pub fn route_key(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let normalized: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(position, segment)| {
            if position == 1 && segments[0] == "deployments" {
                ":d"
            } else if (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
                || uuid::Uuid::parse_str(segment).is_ok()
            {
                ":id"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} /{}", normalized.join("/"))
}

/// The path a request is counted under: a `format=full` request (a task, §3.3) apart from the
/// synchronous form of the same path.
pub fn counted_path(path: &str, query: Option<&str>) -> String {
    let full = query.is_some_and(|q| q.split('&').any(|pair| pair == "format=full"));
    match full {
        true => format!("{path}?format=full"),
        false => path.to_string(),
    }
}

#[derive(Debug, Default)]
pub struct RequestCounts {
    total: u64,
    by_route: BTreeMap<String, u64>,
}

impl RequestCounts {
    pub fn count(&mut self, method: &str, path: &str) {
        self.total += 1;
        *self.by_route.entry(route_key(method, path)).or_default() += 1;
    }

    pub fn reset(&mut self) {
        *self = RequestCounts::default();
    }

    pub fn to_json(&self) -> Value {
        json!({"total": self.total, "by_route": self.by_route})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_deployment_names_are_normalized() {
        assert_eq!(
            route_key("GET", "/deployments/sample-deployment/instances"),
            "GET /deployments/:d/instances"
        );
        assert_eq!(route_key("GET", "/deployments"), "GET /deployments");
        assert_eq!(
            route_key("GET", "/tasks/42/output"),
            "GET /tasks/:id/output"
        );
        assert_eq!(route_key("DELETE", "/configs/7"), "DELETE /configs/:id");
        assert_eq!(route_key("POST", "/oauth/token"), "POST /oauth/token");
        assert_eq!(
            route_key(
                "GET",
                "/deployments/d/instances/6a8e4f2c-4d5b-4f1e-8a9b-0c1d2e3f4a5b"
            ),
            "GET /deployments/:d/instances/:id"
        );
    }

    #[test]
    fn format_full_requests_are_counted_apart() {
        let key = |query| route_key("GET", &counted_path("/deployments/d/instances", query));
        assert_eq!(key(None), "GET /deployments/:d/instances");
        assert_eq!(key(Some("x=1")), "GET /deployments/:d/instances");
        assert_eq!(
            key(Some("x=1&format=full")),
            "GET /deployments/:d/instances?format=full"
        );
    }

    #[test]
    fn counts_total_and_per_route_until_reset() {
        let mut counts = RequestCounts::default();
        counts.count("GET", "/tasks/1");
        counts.count("GET", "/tasks/2");
        counts.count("GET", "/events");
        assert_eq!(
            counts.to_json(),
            json!({"total": 3, "by_route": {"GET /tasks/:id": 2, "GET /events": 1}})
        );
        counts.reset();
        assert_eq!(counts.to_json(), json!({"total": 0, "by_route": {}}));
    }
}
