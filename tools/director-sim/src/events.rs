//! The director's event log (docs/director-api.md §5).

use serde::Serialize;
use serde_json::Value;

/// The director trims its events to this many (`max_events`).
const MAX_EVENTS: usize = 10_000;
/// `GET /events` never answers with more than this.
const PAGE_SIZE: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub parent_id: Option<u64>,
    pub timestamp: i64,
    pub user: String,
    pub action: String,
    pub object_type: String,
    pub object_name: String,
    pub task: Option<u64>,
    pub deployment: Option<String>,
    pub instance: Option<String>,
    pub error: Option<String>,
    pub context: Value,
}

/// The JSON form: ids are strings, and nil or empty values are left out.
#[derive(Serialize)]
struct EventJson<'a> {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    context: &'a Value,
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

impl Event {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(EventJson {
            id: self.id.to_string(),
            parent_id: self.parent_id.map(|id| id.to_string()),
            timestamp: self.timestamp,
            user: non_empty(&self.user),
            action: non_empty(&self.action),
            object_type: non_empty(&self.object_type),
            object_name: non_empty(&self.object_name),
            error: self.error.as_deref().and_then(non_empty),
            task: self.task.map(|task| task.to_string()),
            deployment: self.deployment.as_deref().and_then(non_empty),
            instance: self.instance.as_deref().and_then(non_empty),
            context: &self.context,
        })
        .expect("an event serializes to JSON")
    }
}

/// `GET /events` filters; `after_time` means `timestamp >= after_time + 1`.
#[derive(Debug, Default)]
pub struct EventQuery {
    pub before_id: Option<u64>,
    pub before_time: Option<i64>,
    pub after_time: Option<i64>,
    pub task: Option<String>,
    pub deployment: Option<String>,
    pub instance: Option<String>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub object_type: Option<String>,
    pub object_name: Option<String>,
}

fn matches(wanted: &Option<String>, actual: Option<&str>) -> bool {
    wanted.as_deref().is_none_or(|w| actual == Some(w))
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<Event>,
    last_id: u64,
}

impl EventLog {
    /// Records an event and returns its id; `id` in `event` is ignored.
    pub fn record(&mut self, mut event: Event) -> u64 {
        self.last_id += 1;
        event.id = self.last_id;
        self.events.push(event);
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
        self.last_id
    }

    /// Newest first, at most 200.
    pub fn query(&self, q: &EventQuery) -> Vec<&Event> {
        let task_text = |e: &Event| e.task.map(|t| t.to_string());
        self.events
            .iter()
            .rev()
            .filter(|e| q.before_id.is_none_or(|id| e.id < id))
            .filter(|e| q.before_time.is_none_or(|t| e.timestamp < t))
            .filter(|e| q.after_time.is_none_or(|t| e.timestamp > t))
            .filter(|e| matches(&q.task, task_text(e).as_deref()))
            .filter(|e| matches(&q.deployment, e.deployment.as_deref()))
            .filter(|e| matches(&q.instance, e.instance.as_deref()))
            .filter(|e| matches(&q.user, Some(&e.user)))
            .filter(|e| matches(&q.action, Some(&e.action)))
            .filter(|e| matches(&q.object_type, Some(&e.object_type)))
            .filter(|e| matches(&q.object_name, Some(&e.object_name)))
            .take(PAGE_SIZE)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(action: &str, deployment: Option<&str>) -> Event {
        Event {
            id: 0,
            parent_id: None,
            timestamp: 100,
            user: "admin".into(),
            action: action.into(),
            object_type: "deployment".into(),
            object_name: "d".into(),
            task: Some(7),
            deployment: deployment.map(str::to_string),
            instance: Some(String::new()),
            error: None,
            context: json!({}),
        }
    }

    fn get(log: &EventLog, id: u64) -> &Event {
        log.events.iter().find(|e| e.id == id).unwrap()
    }

    #[test]
    fn json_has_string_ids_and_omits_empty_values() {
        let mut log = EventLog::default();
        let start = log.record(event("create", Some("d")));
        let mut end = event("create", None);
        end.parent_id = Some(start);
        let end = log.record(end);
        let json = get(&log, end).to_json();
        assert_eq!(json["id"], "2");
        assert_eq!(json["parent_id"], "1");
        assert_eq!(json["task"], "7");
        for absent in ["deployment", "instance", "error"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        assert_eq!(json["context"], json!({}));
        assert!(get(&log, start).to_json().get("parent_id").is_none());
    }

    #[test]
    fn pages_newest_first_at_most_two_hundred_with_before_id() {
        let mut log = EventLog::default();
        for _ in 0..250 {
            log.record(event("update", Some("d")));
        }
        let page = log.query(&EventQuery::default());
        assert_eq!(page.len(), 200);
        assert_eq!((page[0].id, page[199].id), (250, 51));
        let next = log.query(&EventQuery {
            before_id: Some(51),
            ..Default::default()
        });
        assert_eq!(next.len(), 50);
        assert_eq!(next[0].id, 50);
        let none = log.query(&EventQuery {
            deployment: Some("x".into()),
            ..Default::default()
        });
        assert!(none.is_empty());
        let after = log.query(&EventQuery {
            after_time: Some(99),
            ..Default::default()
        });
        assert_eq!(after.len(), 200);
        assert!(log
            .query(&EventQuery {
                after_time: Some(100),
                ..Default::default()
            })
            .is_empty());
    }
}
