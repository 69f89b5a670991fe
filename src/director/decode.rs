//! Pure decoding of director responses (docs/director-api.md §1, §3–§6), with every quirk
//! the contract lists: NDJSON task results, string event and config ids, redirects to absolute
//! URLs.

use serde::{Deserialize, Deserializer};

use crate::catalog::model::Instance;
use crate::text::clip;

/// `GET /info`, reduced to how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub user_authentication: Option<UserAuthentication>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserAuthentication {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub options: AuthOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthOptions {
    #[serde(default)]
    pub url: Option<String>,
}

/// `POST /oauth/token` success.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// One element of `GET /deployments` (only the name is needed).
#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentName {
    pub name: String,
}

/// `GET /deployments/:name`: the raw manifest, `null` until a first deploy succeeds.
#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentManifest {
    #[serde(default)]
    pub manifest: Option<String>,
}

/// `GET /tasks/:id`.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub state: String,
    #[serde(default)]
    pub result: Option<String>,
}

/// Where a task stands (docs/director-api.md §3.3, §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskProgress {
    Running,
    Done,
    Failed,
}

pub(crate) fn task_progress(state: &str) -> TaskProgress {
    match state {
        "queued" | "processing" | "cancelling" => TaskProgress::Running,
        "done" => TaskProgress::Done,
        // error, cancelled, timeout, and anything a newer director may invent.
        _ => TaskProgress::Failed,
    }
}

/// The path of a redirect `Location`, absolute or relative. The host is dropped on purpose:
/// it is built from the request's `Host` and may be unreachable behind NAT (§3.3, §7.1).
pub fn location_path(location: &str) -> Result<String, String> {
    let base = reqwest::Url::parse("http://director.invalid/").expect("valid base URL");
    let url = base
        .join(location.trim())
        .map_err(|e| format!("Location {:?} is not a URL: {e}", clip(location)))?;
    Ok(url.path().to_string())
}

/// The task id of a `/tasks/<id>` path.
pub fn task_id(path: &str) -> Result<u64, String> {
    path.strip_prefix("/tasks/")
        .and_then(|id| id.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("redirect to {path:?} is not a /tasks/<id> path"))
}

/// One row of `instances?format=full`, tolerant of nulls, missing keys and legacy keys.
#[derive(Deserialize)]
struct InstanceRow {
    #[serde(default)]
    id: Option<String>,
    /// The instance group. The synchronous `/instances` form calls it `job`.
    #[serde(default, alias = "job")]
    job_name: Option<String>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    az: Option<String>,
    #[serde(default, deserialize_with = "strings_skipping_others")]
    ips: Vec<String>,
    #[serde(default)]
    job_state: Option<String>,
    /// The synchronous form calls it `cid`.
    #[serde(default, alias = "cid")]
    vm_cid: Option<String>,
    /// Absent from the synchronous form.
    #[serde(default, deserialize_with = "bool_or_none")]
    bootstrap: Option<bool>,
}

/// `ips` as strings; `null` is empty and non-string entries are dropped.
fn strings_skipping_others<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = Option::<Vec<serde_json::Value>>::deserialize(d)?;
    Ok(value
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// A boolean, or `None` for anything else: `bootstrap` only labels endpoints, so a director
/// that sent something odd there must not cost the deployment its instances.
fn bool_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Option::<serde_json::Value>::deserialize(d)?.and_then(|v| v.as_bool()))
}

/// Decodes a `type=result` task output: NDJSON, one instance per line, any order, empty for
/// zero instances. Sorted by (instance group, index, id) since the director's order is random.
pub fn decode_instances(ndjson: &str) -> Result<Vec<Instance>, String> {
    let mut instances = Vec::new();
    for (number, line) in ndjson.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: InstanceRow = serde_json::from_str(line).map_err(|e| {
            format!(
                "task result line {}: not an instance object: {}",
                number + 1,
                clip(&e.to_string())
            )
        })?;
        instances.push(row.into_instance(&format!("task result line {}", number + 1))?);
    }
    sort_instances(&mut instances);
    Ok(instances)
}

/// Decodes the synchronous instance list (§3.4): a JSON array of rows named differently from
/// the task's, with no health. Sorted like `decode_instances`.
pub fn decode_instance_list(rows: Vec<serde_json::Value>) -> Result<Vec<Instance>, String> {
    let mut instances = Vec::new();
    for (number, value) in rows.into_iter().enumerate() {
        let row: InstanceRow = serde_json::from_value(value).map_err(|e| {
            format!(
                "instance {}: not an instance object: {}",
                number + 1,
                clip(&e.to_string())
            )
        })?;
        instances.push(row.into_instance(&format!("instance {}", number + 1))?);
    }
    sort_instances(&mut instances);
    Ok(instances)
}

impl InstanceRow {
    /// `at` names the row in errors.
    fn into_instance(self, at: &str) -> Result<Instance, String> {
        let missing = |key| format!("{at}: `{key}` is missing");
        Ok(Instance {
            id: self.id.ok_or_else(|| missing("id"))?,
            instance_group: self.job_name.ok_or_else(|| missing("job_name"))?,
            index: self.index,
            az: self.az,
            ips: self.ips,
            job_state: self.job_state,
            vm_cid: self.vm_cid,
            bootstrap: self.bootstrap,
        })
    }
}

fn sort_instances(instances: &mut [Instance]) {
    instances.sort_by(|a, b| {
        (&a.instance_group, a.index, &a.id).cmp(&(&b.instance_group, b.index, &b.id))
    });
}

/// One element of `GET /events`. Ids are strings (§5), compared numerically.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub id: u64,
    #[serde(default)]
    pub object_type: Option<String>,
    #[serde(default)]
    pub object_name: Option<String>,
    #[serde(default)]
    pub deployment: Option<String>,
}

/// One element of `GET /configs` (§6), the keys the pilot reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Config {
    /// Opaque to clients: a string, though directors before `id.to_s` sent a number.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub content: String,
    /// Ruby's `Time#to_s` (`2024-05-01 12:34:56 UTC`); older directors leave it out.
    #[serde(default)]
    pub created_at: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id {other} is neither a string nor a number"
        ))),
    }
}

fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom(format!("id {n} is not a whole number"))),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("id {:?} is not a number", clip(&s)))),
        other => Err(serde::de::Error::custom(format!(
            "id {other} is neither a number nor a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pretty-printed row of docs/director-api.md §3.3, on one line.
    const FULL_ROW: &str = r#"{"vm_cid":"3f0c5f44","active":true,"vm_created_at":"2024-05-01T12:34:56Z","cloud_properties":{},"disk_cid":null,"disk_cids":[],"ips":["10.244.0.2"],"agent_id":"b0d2c5a1","job_name":"apricot","index":0,"job_state":"running","state":"started","vm_type":"minimal","vitals":{"cpu":{"sys":"0.5"},"load":["0.12"],"uptime":{"secs":86400}},"processes":[{"name":"example-httpbin","state":"running","uptime":{},"mem":{"percent":0.5},"cpu":{"total":0.3}}],"az":"z1","id":"6a8e4f2c","bootstrap":true,"ignore":false,"stemcell":{"name":"s","version":"1.423","api_version":3}}"#;

    #[test]
    fn decodes_a_full_row() {
        let got = decode_instances(&format!("{FULL_ROW}\n")).unwrap();
        assert_eq!(
            got,
            vec![Instance {
                id: "6a8e4f2c".into(),
                instance_group: "apricot".into(),
                index: Some(0),
                az: Some("z1".into()),
                ips: vec!["10.244.0.2".into()],
                job_state: Some("running".into()),
                vm_cid: Some("3f0c5f44".into()),
                bootstrap: Some(true),
            }]
        );
    }

    #[test]
    fn empty_body_is_zero_instances() {
        assert_eq!(decode_instances("").unwrap(), vec![]);
        assert_eq!(decode_instances("\n\n").unwrap(), vec![]);
    }

    #[test]
    fn instance_without_vm_has_nulls_everywhere() {
        let row = r#"{"vm_cid":null,"active":null,"ips":[],"agent_id":null,"job_name":"smoke-tests","index":null,"job_state":null,"state":"started","vitals":null,"processes":[],"az":null,"id":"u1","bootstrap":false,"ignore":false,"stemcell":{"name":null,"version":null,"api_version":null}}"#;
        let got = decode_instances(row).unwrap();
        assert_eq!(
            got,
            vec![Instance {
                id: "u1".into(),
                instance_group: "smoke-tests".into(),
                index: None,
                az: None,
                ips: vec![],
                job_state: None,
                vm_cid: None,
                bootstrap: Some(false),
            }]
        );
    }

    #[test]
    fn null_and_missing_ips_are_empty_and_odd_entries_are_kept_raw() {
        let rows = concat!(
            r#"{"id":"a","job_name":"g","ips":null}"#,
            "\n",
            r#"{"id":"b","job_name":"g"}"#,
            "\n",
            r#"{"id":"c","job_name":"g","ips":["10.244.5.16/28","fd00::5",7]}"#,
            "\n"
        );
        let got = decode_instances(rows).unwrap();
        assert_eq!(got[0].ips, Vec::<String>::new());
        assert_eq!(got[1].ips, Vec::<String>::new());
        assert_eq!(got[2].ips, vec!["10.244.5.16/28", "fd00::5"]);
    }

    #[test]
    fn legacy_keys_and_unresponsive_agents_are_tolerated() {
        let row = r#"{"id":"x","job_name":"banana","index":2,"ips":["10.0.0.9"],"dns":["2.banana.default.sample.bosh"],"resource_pool":"small","resurrection_paused":false,"job_state":"unresponsive agent","processes":[],"vitals":null}"#;
        let got = decode_instances(row).unwrap();
        assert_eq!(got[0].job_state.as_deref(), Some("unresponsive agent"));
        assert_eq!(got[0].index, Some(2));
    }

    #[test]
    fn synchronous_form_names_are_accepted() {
        let row = r#"{"agent_id":"a","cid":"vm-1","job":"apricot","index":0,"id":"i1","az":"z1","ips":["10.0.0.1"],"expects_vm":true}"#;
        let got = decode_instances(row).unwrap();
        assert_eq!(got[0].instance_group, "apricot");
        assert_eq!(got[0].vm_cid.as_deref(), Some("vm-1"));
        assert_eq!(got[0].bootstrap, None, "the synchronous form does not say");
    }

    #[test]
    fn the_synchronous_list_decodes_to_instances_without_health() {
        let rows: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"agent_id":"a","cid":"vm-2","job":"banana","index":1,"id":"i2","az":"z2","ips":["10.0.0.2"],"vm_created_at":"2024-05-01T12:34:56Z","expects_vm":true},
                {"agent_id":null,"cid":null,"job":"apricot","index":0,"id":"i1","az":null,"ips":[],"vm_created_at":null,"expects_vm":false}]"#,
        )
        .unwrap();
        let got = decode_instance_list(rows).unwrap();
        assert_eq!(
            got,
            vec![
                Instance {
                    id: "i1".into(),
                    instance_group: "apricot".into(),
                    index: Some(0),
                    az: None,
                    ips: vec![],
                    job_state: None,
                    vm_cid: None,
                    bootstrap: None,
                },
                Instance {
                    id: "i2".into(),
                    instance_group: "banana".into(),
                    index: Some(1),
                    az: Some("z2".into()),
                    ips: vec!["10.0.0.2".into()],
                    job_state: None,
                    vm_cid: Some("vm-2".into()),
                    bootstrap: None,
                },
            ]
        );
        let err = decode_instance_list(vec![serde_json::json!({"id": "x"})]).unwrap_err();
        assert!(
            err.contains("instance 1") && err.contains("`job_name`"),
            "{err}"
        );
        assert!(decode_instance_list(vec![serde_json::json!(7)]).is_err());
    }

    #[test]
    fn bootstrap_is_a_boolean_or_unknown() {
        let rows = [
            r#"{"id":"a","job_name":"g","bootstrap":true}"#,
            r#"{"id":"b","job_name":"g","bootstrap":false}"#,
            r#"{"id":"c","job_name":"g","bootstrap":null}"#,
            r#"{"id":"d","job_name":"g","bootstrap":"true"}"#,
            r#"{"id":"e","job_name":"g"}"#,
        ]
        .join("\n");
        let bootstrap: Vec<Option<bool>> = decode_instances(&rows)
            .unwrap()
            .into_iter()
            .map(|i| i.bootstrap)
            .collect();
        assert_eq!(bootstrap, [Some(true), Some(false), None, None, None]);
    }

    #[test]
    fn rows_are_sorted_whatever_the_director_order() {
        let rows = [
            r#"{"id":"b2","job_name":"banana","index":2}"#,
            r#"{"id":"a1","job_name":"apricot","index":1}"#,
            r#"{"id":"b0","job_name":"banana","index":0}"#,
            r#"{"id":"a0","job_name":"apricot","index":0}"#,
        ]
        .join("\n");
        let ids: Vec<_> = decode_instances(&rows)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["a0", "a1", "b0", "b2"]);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_line() {
        let err = decode_instances(&format!("{FULL_ROW}\nnot json\n")).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = decode_instances(r#"{"job_name":"g"}"#).unwrap_err();
        assert!(err.contains("`id`"), "{err}");
    }

    #[test]
    fn location_keeps_only_the_path() {
        assert_eq!(
            location_path("https://10.244.0.6:25555/tasks/1234").unwrap(),
            "/tasks/1234"
        );
        assert_eq!(
            location_path("https://unreachable.internal/tasks/7?x=1").unwrap(),
            "/tasks/7"
        );
        assert_eq!(location_path("/tasks/99").unwrap(), "/tasks/99");
        assert_eq!(task_id("/tasks/1234").unwrap(), 1234);
        assert!(task_id("/deployments/x").is_err());
        assert!(task_id("/tasks/abc").is_err());
    }

    #[test]
    fn task_states() {
        for running in ["queued", "processing", "cancelling"] {
            assert_eq!(task_progress(running), TaskProgress::Running);
        }
        assert_eq!(task_progress("done"), TaskProgress::Done);
        for failed in ["error", "cancelled", "timeout"] {
            assert_eq!(task_progress(failed), TaskProgress::Failed);
        }
    }

    #[test]
    fn event_ids_are_strings_or_numbers() {
        let events: Vec<Event> = serde_json::from_str(
            r#"[{"id":"4312","parent_id":"4301","timestamp":1,"action":"update","object_type":"deployment","object_name":"d","task":"1230","deployment":"d","context":{}},
                {"id":17,"action":"create","object_type":"config/runtime","context":{}}]"#,
        )
        .unwrap();
        assert_eq!(events[0].id, 4312);
        assert_eq!(events[1].id, 17);
        assert_eq!(events[1].deployment, None);
        assert!(serde_json::from_str::<Event>(r#"{"id":"x"}"#).is_err());
    }

    #[test]
    fn configs_have_string_ids_or_older_numeric_ones() {
        let configs: Vec<Config> = serde_json::from_str(
            r#"[{"content":"a: 1\n","id":"42","type":"boshy-istio","name":"reviews","team":null,"created_at":"2024-05-01 12:34:56 UTC","current":true},
                {"content":"b: 2","id":7,"type":"boshy-istio","name":"old"}]"#,
        )
        .unwrap();
        assert_eq!(
            configs[0],
            Config {
                id: "42".into(),
                kind: "boshy-istio".into(),
                name: "reviews".into(),
                content: "a: 1\n".into(),
                created_at: Some("2024-05-01 12:34:56 UTC".into()),
            }
        );
        assert_eq!(
            (configs[1].id.as_str(), configs[1].created_at.as_deref()),
            ("7", None)
        );
        assert!(serde_json::from_str::<Config>(
            r#"{"id":null,"type":"t","name":"n","content":""}"#
        )
        .is_err());
    }

    #[test]
    fn info_tells_how_to_authenticate() {
        let info: Info = serde_json::from_str(
            r#"{"name":"bosh-lite","user":null,"user_authentication":{"type":"uaa","options":{"url":"https://10.244.0.6:8443","urls":["https://10.244.0.6:8443"]}},"features":{}}"#,
        )
        .unwrap();
        let auth = info.user_authentication.unwrap();
        assert_eq!(auth.kind, "uaa");
        assert_eq!(auth.options.url.as_deref(), Some("https://10.244.0.6:8443"));
        let basic: Info =
            serde_json::from_str(r#"{"user_authentication":{"type":"basic","options":{}}}"#)
                .unwrap();
        assert_eq!(basic.user_authentication.unwrap().kind, "basic");
    }
}
