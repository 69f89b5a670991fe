//! The shared, durable VIP store: a director config (docs/director-api.md §6) of type
//! `boshy-vips`, named after the tld, whose YAML content is the `VipState`.
//!
//! Every pilot replica reads it with `GET /configs?type=boshy-vips&name=<tld>&latest=true`
//! and writes it with `POST /configs` carrying the id it read as `expected_latest_id`
//! (`"0"` creates it). The director answers 412 when another replica wrote first, so two
//! replicas can never both commit a decision made on the same old state. Operators can look
//! at it with `bosh config --type boshy-vips --name boshy`.
//!
//! Writing a config needs an admin scope (`bosh.admin` or `bosh.<director uuid>.admin`).
//!
//! The same mechanics keep other shared state of the pilots (the joined VMs' registrations,
//! `workloads::store`): a [`StoredKind`] names the config type and what its content is.

use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::store::{Saved, Versioned};
use crate::director::decode::Config;
use crate::director::{DirectorClient, DirectorError};

pub(crate) const CONFIG_TYPE: &str = "boshy-vips";

/// What one kind of shared state is called, where and in the messages about it.
#[derive(Debug)]
pub struct StoredKind {
    /// The director config's type.
    pub(crate) config_type: &'static str,
    /// What the content is, in errors: "VIP state".
    pub(crate) noun: &'static str,
    /// The comment the content starts with, for an operator reading it with `bosh config`.
    pub(crate) header: &'static str,
    /// What deleting the config does, in the error about a content that does not parse.
    pub(crate) if_deleted: &'static str,
}

/// The VIP assignments.
pub(crate) static VIPS: StoredKind = StoredKind {
    config_type: CONFIG_TYPE,
    noun: "VIP state",
    header: CONTENT_HEADER,
    if_deleted: "give every service a new VIP",
};

/// The id the director reports for a config that does not exist yet.
const NO_CONFIG_ID: &str = "0";

/// Longest server body quoted in an error.
const QUOTED_BODY_CHARS: usize = 200;

/// Says what the content is to an operator who reads it with `bosh config`.
const CONTENT_HEADER: &str =
    "# VIP assignments of the boshy-istio mesh, kept by bosh-pilot. Do not \
edit while it runs;\n# deleting this config gives every service a new VIP.\n";

pub struct DirectorStore {
    client: Arc<DirectorClient>,
    name: String,
    kind: &'static StoredKind,
}

impl std::fmt::Debug for DirectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectorStore({self})")
    }
}

impl std::fmt::Display for DirectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "director config type {} name {}",
            self.kind.config_type, self.name
        )
    }
}

#[derive(Debug, Deserialize)]
struct CreatedConfig {
    id: String,
}

impl DirectorStore {
    /// `name` is the config's name: the tld, so that two meshes on one director do not
    /// share VIPs.
    pub fn new(client: Arc<DirectorClient>, name: impl Into<String>) -> Self {
        Self::of_kind(client, name, &VIPS)
    }

    /// The store of another `kind` of shared state.
    pub(crate) fn of_kind(
        client: Arc<DirectorClient>,
        name: impl Into<String>,
        kind: &'static StoredKind,
    ) -> Self {
        DirectorStore {
            client,
            name: name.into(),
            kind,
        }
    }

    /// One small request. The state is empty (version `"0"`) when the config does not exist.
    pub async fn load<T: DeserializeOwned + Default>(&self) -> Result<Versioned<T>, DirectorError> {
        let configs = self
            .client
            .latest_configs(self.kind.config_type, Some(&self.name))
            .await?;
        latest_state(self.kind, &configs, &self.name)
            .map_err(|detail| DirectorError::decode(&format!("GET /configs ({self})"), detail))
    }

    /// Writes `state` if the latest config id is still `expected`.
    pub async fn save<T: Serialize>(
        &self,
        expected: &str,
        state: &T,
    ) -> Result<Saved, DirectorError> {
        let body = json!({
            "type": self.kind.config_type,
            "name": self.name,
            "content": encode(self.kind, state),
            "expected_latest_id": expected,
        });
        let response = self
            .client
            .send(Method::POST, "/configs", Some(&body))
            .await?;
        save_outcome(
            &format!("POST /configs ({self})"),
            response.status.as_u16(),
            &response.body,
        )
    }
}

/// The content written to the director: a YAML hash, as the director requires.
fn encode<T: Serialize>(kind: &StoredKind, state: &T) -> String {
    let yaml = serde_yaml::to_string(state).expect("stored states always serialize");
    format!("{}{yaml}", kind.header)
}

/// The state in the `GET /configs` answer. A config that is not a valid state is an error,
/// never a silent reset: a reset of the VIPs would give every service a new VIP under clients
/// that cached the old ones (and one of the registrations would drop every joined VM).
fn latest_state<T: DeserializeOwned + Default>(
    kind: &StoredKind,
    configs: &[Config],
    name: &str,
) -> Result<Versioned<T>, String> {
    let Some(config) = configs
        .iter()
        .find(|c| c.kind == kind.config_type && c.name == name)
    else {
        return Ok(Versioned {
            version: NO_CONFIG_ID.into(),
            state: T::default(),
        });
    };
    let state = serde_yaml::from_str(&config.content).map_err(|e| {
        format!(
            "config type {} name {name} id {}: not a valid {} ({e}); repair it with \
             `bosh update-config`, or delete it to {}",
            kind.config_type, config.id, kind.noun, kind.if_deleted
        )
    })?;
    Ok(Versioned {
        version: config.id.clone(),
        state,
    })
}

/// 201 is stored, 412 a lost race; anything else an error.
fn save_outcome(what: &str, status: u16, body: &[u8]) -> Result<Saved, DirectorError> {
    match status {
        200 | 201 => {
            let created: CreatedConfig = serde_json::from_slice(body).map_err(|e| {
                DirectorError::decode(what, format!("not the expected config JSON: {e}"))
            })?;
            Ok(Saved::Written(created.id))
        }
        412 => Ok(Saved::Conflict),
        _ => Err(DirectorError::Http {
            what: what.to_string(),
            status,
            body: quote(body),
        }),
    }
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTED_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::{Released, VipAllocator, VipState};
    use std::collections::BTreeMap;

    fn element(id: &str, name: &str, content: &str) -> Config {
        Config {
            id: id.into(),
            kind: CONFIG_TYPE.into(),
            name: name.into(),
            content: content.into(),
            created_at: None,
        }
    }

    fn sample_state() -> VipState {
        let mut vips =
            VipAllocator::new("169.254.255.0/24".parse().unwrap(), 60, VipState::default())
                .unwrap();
        vips.sync(&["a.boshy", "b.boshy"].map(String::from).into(), 0);
        vips.sync(&["b.boshy"].map(String::from).into(), 9);
        vips.state().clone()
    }

    #[test]
    fn content_is_a_yaml_hash_that_round_trips() {
        let state = sample_state();
        let content = encode(&VIPS, &state);
        assert!(content.starts_with("# VIP assignments"), "{content}");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&content).unwrap();
        assert!(parsed.is_mapping(), "the director accepts only a hash");
        let loaded: Versioned =
            latest_state(&VIPS, &[element("7", "boshy", &content)], "boshy").unwrap();
        assert_eq!(loaded.version, "7");
        assert_eq!(loaded.state, state);
        assert_eq!(
            loaded.state.released,
            BTreeMap::from([(
                "169.254.255.1".parse().unwrap(),
                Released {
                    at: 9,
                    hostname: "a.boshy".into()
                }
            )])
        );
    }

    #[test]
    fn no_config_is_an_empty_state_at_version_zero() {
        let other = element("3", "other-tld", &encode(&VIPS, &sample_state()));
        let loaded: Versioned = latest_state(&VIPS, &[other], "boshy").unwrap();
        assert_eq!(loaded.version, "0");
        assert_eq!(loaded.state, VipState::default());
    }

    #[test]
    fn a_config_that_is_not_a_vip_state_is_an_error_naming_it() {
        for content in ["assignments: [1, 2]", "colour: red", "a: {"] {
            let err = latest_state::<VipState>(&VIPS, &[element("12", "boshy", content)], "boshy")
                .unwrap_err();
            assert!(
                err.contains("config type boshy-vips name boshy id 12"),
                "{err}"
            );
            assert!(err.contains("not a valid VIP state"), "{err}");
        }
    }

    #[test]
    fn save_answers_are_interpreted() {
        let what = "POST /configs";
        assert_eq!(
            save_outcome(what, 201, br#"{"id":"8","type":"boshy-vips"}"#).unwrap(),
            Saved::Written("8".into())
        );
        let conflict = br#"{"latest_id":"9","expected_latest_id":"8","description":"x"}"#;
        assert_eq!(save_outcome(what, 412, conflict).unwrap(), Saved::Conflict);
        let err = save_outcome(what, 500, b"").unwrap_err();
        assert_eq!(err.kind(), "http_500");
        assert!(err.to_string().contains("POST /configs"), "{err}");
        assert_eq!(
            save_outcome(what, 201, b"<html>").unwrap_err().kind(),
            "decode"
        );
    }

    /// Against the in-process director simulator: real `POST /configs` races and 412s.
    mod against_the_simulator {
        use super::*;
        use crate::config::{DirectorConfig, Secret};
        use crate::vip::{VipBook, VipStore};
        use boshy_director_sim::{self as sim, SimOptions};
        use std::collections::BTreeSet;
        use std::net::Ipv4Addr;

        const SECRET: &str = "vip-store-test-secret";

        async fn store(sim: &sim::SimHandle) -> DirectorStore {
            let cfg: DirectorConfig = serde_json::from_value(serde_json::json!({
                "url": sim.director_url(),
                "client": "pilot",
                "ca_cert": sim.ca_pem(),
            }))
            .unwrap();
            let client = DirectorClient::new(&cfg, Secret::new(SECRET)).unwrap();
            DirectorStore::new(Arc::new(client), "boshy")
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_stale_version_is_a_conflict_and_nothing_is_written() {
            let sim = sim::start(SimOptions::new(SECRET)).await.unwrap();
            let store = store(&sim).await;
            let empty: Versioned = store.load().await.unwrap();
            assert_eq!(empty.version, "0");
            let state = sample_state();
            let Saved::Written(id) = store.save("0", &state).await.unwrap() else {
                panic!("the first write creates the config");
            };
            assert_eq!(
                store.load().await.unwrap(),
                Versioned {
                    version: id.clone(),
                    state: state.clone()
                }
            );
            // Creating it again, or writing on the old version, loses.
            assert_eq!(
                store.save("0", &VipState::default()).await.unwrap(),
                Saved::Conflict
            );
            assert_eq!(store.load::<VipState>().await.unwrap().state, state);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_replicas_agree_on_one_vip_per_service() {
            let sim = sim::start(SimOptions::new(SECRET)).await.unwrap();
            let wanted: BTreeSet<String> = (0..20).map(|n| format!("s{n:02}.boshy")).collect();
            let mut replicas = Vec::new();
            for _ in 0..3 {
                let store = VipStore::Director(store(&sim).await);
                let book = VipBook::new(store, "169.254.255.0/24".parse().unwrap(), 3600).unwrap();
                let wanted = wanted.clone();
                replicas.push(tokio::spawn(async move {
                    let mut book = book;
                    book.sync(&wanted, 0).await.unwrap();
                    book.assignments().unwrap().clone()
                }));
            }
            let mut seen = Vec::new();
            for replica in replicas {
                seen.push(replica.await.unwrap());
            }
            assert!(
                seen.iter().all(|a| a == &seen[0]),
                "every replica holds the same VIPs: {seen:?}"
            );
            let stored: VipState = store(&sim).await.load().await.unwrap().state;
            assert_eq!(stored.assignments, seen[0]);
            assert_eq!(stored.assignments.len(), wanted.len());
            let distinct: BTreeSet<Ipv4Addr> = stored.assignments.values().copied().collect();
            assert_eq!(distinct.len(), wanted.len(), "no VIP twice");
        }
    }
}
