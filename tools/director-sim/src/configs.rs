//! Director configs with optimistic concurrency (docs/director-api.md §6). bosh-pilot keeps its
//! VIP table here, so the 412 behaviour matters as much as the happy path.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::clock::ruby_time;

#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub content: String,
    pub created_at: SystemTime,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// 400, code 440010.
    BadRequest(String),
    /// 400, code 440011.
    BadConfig(String),
    /// 404, code 440012.
    NotFound(u64),
    /// 412 with the latest id the director holds.
    LatestIdMismatch { latest_id: String, expected: String },
}

impl ConfigError {
    /// The description of a body the director refused (the errors its `parse_config` raises
    /// and records in an event); `None` for the other errors.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            ConfigError::BadRequest(text) | ConfigError::BadConfig(text) => Some(text),
            ConfigError::NotFound(_) | ConfigError::LatestIdMismatch { .. } => None,
        }
    }
}

/// The event a `POST /configs` writes (the configs controller's `create_event`): action
/// `create`, object type `config/<type>`, for a new version and, with `error`, for a body the
/// director refused. Deleting a config writes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEvent {
    pub user: String,
    pub object_type: String,
    pub object_name: String,
    pub error: Option<String>,
}

impl ConfigEvent {
    pub fn created(user: &str, body: &Value) -> ConfigEvent {
        ConfigEvent {
            user: user.to_string(),
            object_type: format!("config/{}", event_text(body, "type")),
            object_name: event_text(body, "name"),
            error: None,
        }
    }

    /// `body` is `null` when it was not JSON: the event names no type and no name.
    pub fn refused(user: &str, body: &Value, error: &str) -> ConfigEvent {
        ConfigEvent {
            error: Some(error.to_string()),
            ..ConfigEvent::created(user, body)
        }
    }
}

/// `GET /configs` parameters as they came in (strings, validated here).
#[derive(Debug, Default)]
pub struct ConfigQuery {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub latest: Option<String>,
    pub limit: Option<String>,
}

/// The result of a `POST /configs` that passed validation.
pub struct Posted {
    pub config: Value,
    /// `false` when the content was identical and the existing config came back.
    pub created: bool,
}

#[derive(Debug, Default)]
pub struct ConfigStore {
    configs: Vec<Config>,
    last_id: u64,
}

/// `type` and `name` of a `POST /configs` body, checked as the director does (`check`, then
/// `is_a?(String)`).
fn required_string(body: &Value, key: &str) -> Result<String, ConfigError> {
    match body.get(key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(ConfigError::BadRequest(format!("'{key}' is required")))
        }
        Some(_) => Err(ConfigError::BadRequest(format!("'{key}' must be a string"))),
    }
}

/// How the director writes a body's `type` or `name` into an event (Ruby string
/// interpolation): absent is empty.
fn event_text(body: &Value, key: &str) -> String {
    match body.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

impl ConfigStore {
    fn current(&self, kind: &str, name: &str) -> Option<&Config> {
        self.configs
            .iter()
            .filter(|c| !c.deleted && c.kind == kind && c.name == name)
            .max_by_key(|c| c.id)
    }

    fn to_json(&self, config: &Config) -> Value {
        let current = self
            .current(&config.kind, &config.name)
            .is_some_and(|latest| latest.id == config.id);
        json!({
            "content": config.content,
            "id": config.id.to_string(),
            "type": config.kind,
            "name": config.name,
            "team": null,
            "created_at": ruby_time(config.created_at),
            "current": current,
        })
    }

    pub fn get(&self, id: u64) -> Result<Value, ConfigError> {
        self.configs
            .iter()
            .find(|c| c.id == id && !c.deleted)
            .map(|c| self.to_json(c))
            .ok_or(ConfigError::NotFound(id))
    }

    /// `GET /configs`: the newest `limit` versions of each (type, name); `limit` defaults to 1
    /// (`latest=true`, the default) or to all of them (`latest=false`), and wins over `latest`.
    pub fn list(&self, query: &ConfigQuery) -> Result<Vec<Value>, ConfigError> {
        let limit = match &query.limit {
            None => None,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if n >= 1 => Some(n as usize),
                Ok(_) => {
                    return Err(ConfigError::BadRequest(
                        "'limit' must be larger than zero".to_string(),
                    ))
                }
                Err(_) => {
                    return Err(ConfigError::BadRequest(
                        "'limit' must be a number".to_string(),
                    ))
                }
            },
        };
        let latest = match query.latest.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => {
                return Err(ConfigError::BadRequest(
                    "'latest' must be 'true' or 'false'".to_string(),
                ))
            }
        };
        let per_name = limit.unwrap_or(if latest { 1 } else { usize::MAX });
        let mut selected: Vec<&Config> = self
            .configs
            .iter()
            .filter(|c| !c.deleted)
            .filter(|c| query.kind.as_ref().is_none_or(|k| &c.kind == k))
            .filter(|c| query.name.as_ref().is_none_or(|n| &c.name == n))
            .filter(|c| self.newer_versions(c) < per_name)
            .collect();
        selected.sort_by(|a, b| {
            (
                &a.kind,
                a.name != "default",
                &a.name,
                std::cmp::Reverse(a.id),
            )
                .cmp(&(
                    &b.kind,
                    b.name != "default",
                    &b.name,
                    std::cmp::Reverse(b.id),
                ))
        });
        Ok(selected.into_iter().map(|c| self.to_json(c)).collect())
    }

    /// How many versions of the same (type, name) are newer than `config`.
    fn newer_versions(&self, config: &Config) -> usize {
        self.configs
            .iter()
            .filter(|c| !c.deleted && c.kind == config.kind && c.name == config.name)
            .filter(|c| c.id > config.id)
            .count()
    }

    /// `POST /configs`: the `expected_latest_id` check comes before anything is written.
    pub fn post(&mut self, body: &Value, now: SystemTime) -> Result<Posted, ConfigError> {
        let kind = required_string(body, "type")?;
        let name = required_string(body, "name")?;
        let content = match body.get("content") {
            Some(Value::String(text)) => text.clone(),
            _ => {
                return Err(ConfigError::BadConfig(
                    "Config must be valid YAML: 'content' is not a string".to_string(),
                ))
            }
        };
        match serde_yaml::from_str::<serde_yaml::Value>(&content) {
            Ok(serde_yaml::Value::Mapping(_)) => {}
            Ok(_) => return Err(ConfigError::BadConfig("YAML hash expected".to_string())),
            Err(err) => {
                return Err(ConfigError::BadConfig(format!(
                    "Config must be valid YAML: {err}"
                )))
            }
        }
        let latest_id = self
            .current(&kind, &name)
            .map_or_else(|| "0".to_string(), |c| c.id.to_string());
        let expected = match body.get("expected_latest_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        };
        if let Some(expected) = expected {
            if expected != latest_id {
                return Err(ConfigError::LatestIdMismatch {
                    latest_id,
                    expected,
                });
            }
        }
        if let Some(existing) = self.current(&kind, &name) {
            if existing.content == content {
                return Ok(Posted {
                    config: self.to_json(existing),
                    created: false,
                });
            }
        }
        self.last_id += 1;
        let config = Config {
            id: self.last_id,
            kind,
            name,
            content,
            created_at: now,
            deleted: false,
        };
        self.configs.push(config);
        let config = self.configs.last().expect("just pushed");
        Ok(Posted {
            config: self.to_json(config),
            created: true,
        })
    }

    /// Deletes one version: the one before it, if any, is the latest again.
    pub fn delete_id(&mut self, id: u64) -> Result<(), ConfigError> {
        let config = self
            .configs
            .iter_mut()
            .find(|c| c.id == id && !c.deleted)
            .ok_or(ConfigError::NotFound(id))?;
        config.deleted = true;
        Ok(())
    }

    /// Deletes every version of (type, name); `false` when there was none.
    pub fn delete_named(&mut self, kind: &str, name: &str) -> bool {
        let mut found = false;
        for config in self
            .configs
            .iter_mut()
            .filter(|c| !c.deleted && c.kind == kind && c.name == name)
        {
            config.deleted = true;
            found = true;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(store: &mut ConfigStore, body: Value) -> Result<Posted, ConfigError> {
        store.post(&body, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn expected_latest_id_guards_against_lost_races() {
        let mut store = ConfigStore::default();
        let body = |content: &str, expected: &str| json!({"type": "boshy", "name": "vips", "content": content, "expected_latest_id": expected});
        let first = post(&mut store, body("a: 1", "0")).ok().unwrap();
        assert!(first.created);
        assert_eq!(first.config["id"], "1");
        assert_eq!(first.config["current"], true);
        assert_eq!(first.config["created_at"], "1970-01-01 00:00:00 UTC");

        let lost = post(&mut store, body("a: 2", "0")).err().unwrap();
        assert_eq!(
            lost,
            ConfigError::LatestIdMismatch {
                latest_id: "1".into(),
                expected: "0".into()
            }
        );
        let second = post(&mut store, body("a: 2", "1")).ok().unwrap();
        assert_eq!(second.config["id"], "2");

        let same = post(&mut store, body("a: 2", "2")).ok().unwrap();
        assert!(!same.created);
        assert_eq!(same.config["id"], "2");
        assert_eq!(store.get(1).unwrap()["current"], false);
    }

    #[test]
    fn bad_bodies_and_queries_are_rejected() {
        let mut store = ConfigStore::default();
        let missing_name = post(&mut store, json!({"type": "t", "content": "a: 1"}));
        assert!(matches!(missing_name, Err(ConfigError::BadRequest(_))));
        let not_hash = post(
            &mut store,
            json!({"type": "t", "name": "n", "content": "- 1"}),
        );
        assert!(matches!(not_hash, Err(ConfigError::BadConfig(_))));
        let not_yaml = post(
            &mut store,
            json!({"type": "t", "name": "n", "content": "a: [1"}),
        );
        assert!(matches!(not_yaml, Err(ConfigError::BadConfig(_))));
        let bad_latest = ConfigQuery {
            latest: Some("yes".into()),
            ..Default::default()
        };
        assert!(store.list(&bad_latest).is_err());
        let bad_limit = ConfigQuery {
            limit: Some("0".into()),
            ..Default::default()
        };
        assert!(store.list(&bad_limit).is_err());
    }

    #[test]
    fn lists_latest_per_name_default_first_and_hides_deleted() {
        let mut store = ConfigStore::default();
        for (kind, name, content) in [
            ("runtime", "zeta", "a: 1"),
            ("runtime", "default", "a: 1"),
            ("runtime", "zeta", "a: 2"),
            ("cloud", "default", "a: 1"),
        ] {
            post(
                &mut store,
                json!({"type": kind, "name": name, "content": content}),
            )
            .ok()
            .unwrap();
        }
        let ids = |store: &ConfigStore, q: ConfigQuery| -> Vec<String> {
            store
                .list(&q)
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&store, ConfigQuery::default()), ["4", "2", "3"]);
        let all = ConfigQuery {
            latest: Some("false".into()),
            ..Default::default()
        };
        assert_eq!(ids(&store, all), ["4", "2", "3", "1"]);
        store.delete_id(3).unwrap();
        assert_eq!(store.delete_id(3), Err(ConfigError::NotFound(3)));
        let zeta = ConfigQuery {
            name: Some("zeta".into()),
            ..Default::default()
        };
        assert_eq!(ids(&store, zeta), ["1"]);
        assert!(store.delete_named("runtime", "zeta"));
        assert!(!store.delete_named("runtime", "zeta"));
    }

    #[test]
    fn limit_counts_versions_per_name_and_wins_over_latest() {
        let mut store = ConfigStore::default();
        for (name, content) in [("a", "v: 1"), ("b", "v: 1"), ("a", "v: 2"), ("a", "v: 3")] {
            post(
                &mut store,
                json!({"type": "boshy-istio", "name": name, "content": content}),
            )
            .ok()
            .unwrap();
        }
        let ids = |store: &ConfigStore, latest: Option<&str>, limit: Option<&str>| -> Vec<String> {
            let query = ConfigQuery {
                latest: latest.map(str::to_string),
                limit: limit.map(str::to_string),
                ..Default::default()
            };
            store
                .list(&query)
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&store, None, None), ["4", "2"]);
        assert_eq!(ids(&store, Some("false"), None), ["4", "3", "1", "2"]);
        assert_eq!(ids(&store, Some("true"), Some("2")), ["4", "3", "2"]);
        // Deleting the latest version by id makes the one before it the latest again.
        store.delete_id(4).unwrap();
        assert_eq!(ids(&store, None, None), ["3", "2"]);
    }

    #[test]
    fn refusals_say_what_the_director_says() {
        let mut store = ConfigStore::default();
        let refused = |store: &mut ConfigStore, body: Value| post(store, body).err().unwrap();
        assert_eq!(
            refused(&mut store, json!({"name": "n", "content": "a: 1"})),
            ConfigError::BadRequest("'type' is required".into())
        );
        assert_eq!(
            refused(
                &mut store,
                json!({"type": "t", "name": 5, "content": "a: 1"})
            ),
            ConfigError::BadRequest("'name' must be a string".into())
        );
        assert_eq!(
            refused(
                &mut store,
                json!({"type": "t", "name": "n", "content": "just text"})
            ),
            ConfigError::BadConfig("YAML hash expected".into())
        );
        assert_eq!(event_text(&json!({"type": "t"}), "type"), "t");
        assert_eq!(event_text(&json!({"type": 5}), "type"), "5");
        assert_eq!(event_text(&json!({}), "name"), "");
    }
}
