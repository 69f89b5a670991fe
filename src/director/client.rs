//! HTTPS client for the BOSH director and its UAA (docs/director-api.md §0–§6).
//!
//! Redirects are never followed automatically: the only redirect the pilot meets is the
//! `format=full` 302 to a task, and it is handled by hand with only the Location's path.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info, warn};

use super::decode::{
    self, Config, DeploymentManifest, DeploymentName, Event, Info, Task, TaskProgress,
};
use super::error::{classify_status, classify_transport, DirectorError};
use super::uaa::Token;
use crate::catalog::model::Instance;
use crate::config::{DirectorConfig, Secret};
use crate::metrics::{self, DirectorResult};

/// First and longest pause between two `GET /tasks/:id` while a task runs.
const TASK_POLL_FIRST: Duration = Duration::from_millis(100);
const TASK_POLL_MAX: Duration = Duration::from_secs(1);

/// How the director wants to be authenticated, learnt from `GET /info` (§1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthMode {
    /// Local users: HTTP Basic with the client and secret on every request.
    Basic,
    /// UAA client_credentials; `token_url` is `<uaa>/oauth/token`.
    Uaa { token_url: String },
}

/// What one request authenticated with, so that a 401 renews exactly that token.
enum Credential {
    Basic,
    Bearer(Token),
}

/// An answer that was not a 401 (those are handled or turned into errors).
#[derive(Debug)]
pub struct RawResponse {
    pub status: reqwest::StatusCode,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// The director client. Cheap to share behind an `Arc`; safe to use concurrently.
pub struct DirectorClient {
    http: reqwest::Client,
    /// `https://host:port`, no trailing slash.
    base: String,
    client: String,
    secret: Secret,
    configured_uaa_url: Option<String>,
    auth: OnceCell<AuthMode>,
    /// Held while a grant runs, so concurrent requests wait for one grant instead of racing.
    token: Mutex<Option<Token>>,
    request_timeout: Duration,
    task_timeout: Duration,
}

impl std::fmt::Debug for DirectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorClient")
            .field("base", &self.base)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl DirectorClient {
    pub fn new(cfg: &DirectorConfig, secret: Secret) -> Result<DirectorClient> {
        if cfg.insecure_skip_tls_verify {
            warn!(
                director = %cfg.url,
                "director TLS certificate verification is DISABLED (insecure_skip_tls_verify): \
                 anyone on the path can impersonate the director"
            );
        }
        let tls = super::tls::client_config(cfg)?;
        let request_timeout = Duration::from_secs(cfg.request_timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .build()
            .context("director HTTP client")?;
        let base = reqwest::Url::parse(&cfg.url)
            .with_context(|| format!("key `director.url`: {:?} is not a URL", cfg.url))?;
        Ok(DirectorClient {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
            client: cfg.client.clone(),
            secret,
            configured_uaa_url: cfg.uaa_url.clone(),
            auth: OnceCell::new(),
            token: Mutex::new(None),
            request_timeout,
            task_timeout: Duration::from_secs(cfg.task_timeout_seconds.max(1)),
        })
    }

    /// Sends an authenticated request to the director. A plain-text 401 with a UAA token
    /// renews the token and retries once; a scope 401 (code 600000) is returned as is.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        json_body: Option<&serde_json::Value>,
    ) -> Result<RawResponse, DirectorError> {
        let what = format!("{method} {path}");
        let auth = self.auth_mode().await?;
        let mut credential = self.credential(auth, None).await?;
        let mut renewed = false;
        loop {
            let url = format!("{}{path}", self.base);
            let mut request = self.http.request(method.clone(), &url);
            if let Some(body) = json_body {
                request = request.json(body);
            }
            let response = self
                .execute(&method, path, request, Some(&credential))
                .await?;
            if response.status != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let err = classify_status(&what, 401, &response.body);
            match (&err, &credential) {
                (DirectorError::Unauthorized { .. }, Credential::Bearer(rejected)) if !renewed => {
                    debug!(%what, "director rejected the token; renewing it once");
                    credential = self.credential(auth, Some(rejected.generation)).await?;
                    renewed = true;
                }
                _ => return Err(err),
            }
        }
    }

    /// GET a JSON document, whatever Content-Type the director claims (§0).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, DirectorError> {
        let response = self.send(Method::GET, path, None).await?;
        expect_ok(path, &response)?;
        serde_json::from_slice(&response.body).map_err(|e| {
            DirectorError::decode(
                &format!("GET {path}"),
                format!("not the expected JSON: {e}"),
            )
        })
    }

    /// Names of every deployment, the cheapest form of `GET /deployments` (§3.1).
    pub async fn deployments(&self) -> Result<Vec<String>, DirectorError> {
        let list: Vec<DeploymentName> = self
            .get_json("/deployments?exclude_configs=true&exclude_releases=true&exclude_stemcells=true&exclude_lock=true")
            .await?;
        Ok(list.into_iter().map(|d| d.name).collect())
    }

    /// The raw manifest text; `None` until the deployment's first deploy succeeded (§3.2).
    pub async fn manifest(&self, deployment: &str) -> Result<Option<String>, DirectorError> {
        let path = format!("/deployments/{}", percent_encode(deployment));
        Ok(self.get_json::<DeploymentManifest>(&path).await?.manifest)
    }

    /// The newest (at most 200) events, newest first (§5).
    pub async fn events(&self) -> Result<Vec<Event>, DirectorError> {
        self.get_json("/events").await
    }

    /// The latest config of each name of type `kind`, or of the one `name` (§6). Deleted
    /// configs are not listed.
    pub async fn latest_configs(
        &self,
        kind: &str,
        name: Option<&str>,
    ) -> Result<Vec<Config>, DirectorError> {
        let mut path = format!("/configs?type={}&latest=true", percent_encode(kind));
        if let Some(name) = name {
            path.push_str(&format!("&name={}", percent_encode(name)));
        }
        self.get_json(&path).await
    }

    /// Every instance, with or without a VM, from the director's database at once: no task,
    /// no health (§3.4).
    pub async fn instance_list(&self, deployment: &str) -> Result<Vec<Instance>, DirectorError> {
        let path = format!("/deployments/{}/instances", percent_encode(deployment));
        let rows: Vec<serde_json::Value> = self.get_json(&path).await?;
        decode::decode_instance_list(rows)
            .map_err(|e| DirectorError::decode(&format!("GET {path}"), e))
    }

    /// Every instance with live health: `instances?format=full`, its 302 to a task, the task
    /// polled until it ends or `task_timeout_seconds` pass, then its NDJSON result (§3.3).
    pub async fn instance_health(&self, deployment: &str) -> Result<Vec<Instance>, DirectorError> {
        let path = format!(
            "/deployments/{}/instances?format=full",
            percent_encode(deployment)
        );
        let what = format!("GET {path}");
        let response = self.send(Method::GET, &path, None).await?;
        if response.status != reqwest::StatusCode::FOUND {
            expect_ok(&path, &response)?;
            return Err(DirectorError::decode(
                &what,
                format!("expected a 302 to a task, got {}", response.status),
            ));
        }
        let location = response
            .location
            .ok_or_else(|| DirectorError::decode(&what, "302 without a Location"))?;
        let task_path =
            decode::location_path(&location).map_err(|e| DirectorError::decode(&what, e))?;
        let task = decode::task_id(&task_path).map_err(|e| DirectorError::decode(&what, e))?;
        metrics::global()
            .director_tasks_started
            .fetch_add(1, Ordering::Relaxed);
        self.wait_for_task(&what, &task_path, task).await?;
        let output_path = format!("{task_path}/output?type=result");
        let output = self.send(Method::GET, &output_path, None).await?;
        expect_ok(&output_path, &output)?;
        let text = String::from_utf8_lossy(&output.body);
        decode::decode_instances(&text)
            .map_err(|e| DirectorError::decode(&format!("GET {output_path}"), e))
    }

    async fn wait_for_task(
        &self,
        what: &str,
        task_path: &str,
        task: u64,
    ) -> Result<(), DirectorError> {
        let deadline = Instant::now() + self.task_timeout;
        let mut pause = TASK_POLL_FIRST;
        loop {
            let state: Task = self.get_json(task_path).await?;
            match decode::task_progress(&state.state) {
                TaskProgress::Done => return Ok(()),
                TaskProgress::Failed => {
                    return Err(DirectorError::TaskFailed {
                        what: what.to_string(),
                        task,
                        state: state.state,
                        result: state.result.unwrap_or_default(),
                    })
                }
                TaskProgress::Running if Instant::now() + pause > deadline => {
                    return Err(DirectorError::TaskTimeout {
                        what: what.to_string(),
                        task,
                        state: state.state,
                        after: self.task_timeout,
                    })
                }
                TaskProgress::Running => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(TASK_POLL_MAX);
                }
            }
        }
    }

    /// Learns (once) whether to use Basic auth or UAA; `uaa_url` in the config wins over `/info`.
    async fn auth_mode(&self) -> Result<&AuthMode, DirectorError> {
        self.auth
            .get_or_try_init(|| async {
                if let Some(uaa) = &self.configured_uaa_url {
                    return Ok(AuthMode::Uaa {
                        token_url: token_url(uaa),
                    });
                }
                let request = self.http.get(format!("{}/info", self.base));
                let response = self.execute(&Method::GET, "/info", request, None).await?;
                expect_ok("/info", &response)?;
                let info: Info = serde_json::from_slice(&response.body)
                    .map_err(|e| DirectorError::decode("GET /info", format!("not the expected JSON: {e}")))?;
                let mode = auth_mode_from_info(&info).map_err(|e| DirectorError::decode("GET /info", e))?;
                info!(director = %self.base, auth = ?mode, "director authentication discovered from GET /info");
                Ok(mode)
            })
            .await
    }

    /// UAA's base URL (`director.uaa_url`, or learnt from `GET /info`); `None` when the
    /// director has local users instead.
    pub async fn uaa_url(&self) -> Result<Option<String>, DirectorError> {
        Ok(match self.auth_mode().await? {
            AuthMode::Uaa { token_url } => Some(
                token_url
                    .strip_suffix("/oauth/token")
                    .unwrap_or(token_url)
                    .to_string(),
            ),
            AuthMode::Basic => None,
        })
    }

    /// The HTTP client, trusting the director's CA (which signed UAA's certificate too).
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The credential for the next request. With UAA, a cached token is reused until it is
    /// due for renewal or until it is the one a 401 rejected (`rejected` generation).
    async fn credential(
        &self,
        auth: &AuthMode,
        rejected: Option<u64>,
    ) -> Result<Credential, DirectorError> {
        let AuthMode::Uaa { token_url } = auth else {
            return Ok(Credential::Basic);
        };
        let mut cached = self.token.lock().await;
        let now = Instant::now();
        if let Some(token) = cached.as_ref() {
            let stale = token.refresh_due(now) || rejected == Some(token.generation);
            if !stale {
                return Ok(Credential::Bearer(token.clone()));
            }
        }
        let generation = cached.as_ref().map_or(1, |t| t.generation + 1);
        let token = self.grant(token_url, generation).await?;
        *cached = Some(token.clone());
        Ok(Credential::Bearer(token))
    }

    /// `POST /oauth/token` with `grant_type=client_credentials` and Basic client auth (§1.2).
    async fn grant(&self, token_url: &str, generation: u64) -> Result<Token, DirectorError> {
        let what = "POST /oauth/token";
        let request = self
            .http
            .post(token_url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(AUTHORIZATION, self.basic_authorization())
            .body("grant_type=client_credentials");
        let obtained = Instant::now();
        let response = self
            .execute(&Method::POST, "/oauth/token", request, None)
            .await?;
        if !response.status.is_success() {
            return Err(classify_status(
                what,
                response.status.as_u16(),
                &response.body,
            ));
        }
        let granted: decode::TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|e| DirectorError::decode(what, format!("not a token response: {e}")))?;
        debug!(expires_in = ?granted.expires_in, generation, "UAA token obtained");
        Ok(Token {
            access: Secret::new(granted.access_token),
            obtained,
            lifetime: granted.expires_in.map(Duration::from_secs),
            generation,
        })
    }

    fn basic_authorization(&self) -> HeaderValue {
        let pair = format!("{}:{}", self.client, self.secret.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        sensitive_header(&format!("Basic {encoded}"))
    }

    /// Sends one request (counted and timed in metrics) and reads the whole body.
    async fn execute(
        &self,
        method: &Method,
        path: &str,
        mut request: reqwest::RequestBuilder,
        credential: Option<&Credential>,
    ) -> Result<RawResponse, DirectorError> {
        request = match credential {
            Some(Credential::Basic) => request.header(AUTHORIZATION, self.basic_authorization()),
            // bosh-cli sends a lowercase `bearer`; the director needs exactly two parts.
            Some(Credential::Bearer(token)) => request.header(
                AUTHORIZATION,
                sensitive_header(&format!("bearer {}", token.access.expose())),
            ),
            None => request,
        };
        let what = format!("{method} {path}");
        let started = Instant::now();
        let answered = self.answer(&what, request).await;
        let result = match &answered {
            Ok(response) => DirectorResult::Answered(response.status.as_u16()),
            Err(DirectorError::Timeout { .. }) => DirectorResult::Timeout,
            Err(_) => DirectorResult::Error,
        };
        metrics::global().director_request(
            method_label(method),
            route_template(path),
            result,
            started.elapsed(),
        );
        answered
    }

    async fn answer(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<RawResponse, DirectorError> {
        let transport = |e: reqwest::Error| classify_transport(what, &e, self.request_timeout);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(transport)?.to_vec();
        debug!(%what, %status, bytes = body.len(), "director answered");
        Ok(RawResponse {
            status,
            location,
            body,
        })
    }
}

/// The `method` label of a director request.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// The `route` label of a request to `path` (query included): the director API's route
/// with `:name` and `:id` for the deployment and the task, so that the label's values stay
/// few whatever the estate. A task's request (`instances?format=full`) is a route of its
/// own: it answers a 302 at once where the list is a database read.
fn route_template(path: &str) -> &'static str {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let task = query.split('&').any(|pair| pair == "format=full");
    match segments.as_slice() {
        ["info"] => "/info",
        ["oauth", "token"] => "/oauth/token",
        ["deployments"] => "/deployments",
        ["deployments", _] => "/deployments/:name",
        ["deployments", _, "instances"] if task => "/deployments/:name/instances?format=full",
        ["deployments", _, "instances"] => "/deployments/:name/instances",
        ["events"] => "/events",
        ["configs"] => "/configs",
        ["tasks", _] => "/tasks/:id",
        ["tasks", _, "output"] => "/tasks/:id/output",
        _ => "other",
    }
}

fn expect_ok(path: &str, response: &RawResponse) -> Result<(), DirectorError> {
    if response.status.is_success() {
        return Ok(());
    }
    Err(classify_status(
        &format!("GET {path}"),
        response.status.as_u16(),
        &response.body,
    ))
}

fn sensitive_header(value: &str) -> HeaderValue {
    // Credentials are base64 or JWT text, always valid header bytes.
    let mut header = HeaderValue::from_str(value).expect("credential is a valid header value");
    header.set_sensitive(true);
    header
}

fn token_url(uaa: &str) -> String {
    format!("{}/oauth/token", uaa.trim_end_matches('/'))
}

fn auth_mode_from_info(info: &Info) -> Result<AuthMode, String> {
    let auth = info
        .user_authentication
        .as_ref()
        .ok_or("no `user_authentication`")?;
    match auth.kind.as_str() {
        "basic" => Ok(AuthMode::Basic),
        "uaa" => {
            let url = auth
                .options
                .url
                .as_deref()
                .ok_or("`user_authentication.options.url` is missing for type uaa")?;
            Ok(AuthMode::Uaa {
                token_url: token_url(url),
            })
        }
        other => Err(format!("unknown `user_authentication.type` {other:?}")),
    }
}

/// Percent-encodes a name for use as one path segment or one query value: everything but
/// the unreserved characters.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_mode_follows_info() {
        let uaa: Info = serde_json::from_str(
            r#"{"user_authentication":{"type":"uaa","options":{"url":"https://10.0.0.6:8443/"}}}"#,
        )
        .unwrap();
        assert_eq!(
            auth_mode_from_info(&uaa).unwrap(),
            AuthMode::Uaa {
                token_url: "https://10.0.0.6:8443/oauth/token".into()
            }
        );
        let basic: Info =
            serde_json::from_str(r#"{"user_authentication":{"type":"basic","options":{}}}"#)
                .unwrap();
        assert_eq!(auth_mode_from_info(&basic).unwrap(), AuthMode::Basic);
        let odd: Info =
            serde_json::from_str(r#"{"user_authentication":{"type":"ldap","options":{}}}"#)
                .unwrap();
        assert!(auth_mode_from_info(&odd).unwrap_err().contains("ldap"));
    }

    #[test]
    fn names_are_one_path_segment_or_query_value() {
        assert_eq!(
            percent_encode("sample-deployment_1.2"),
            "sample-deployment_1.2"
        );
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn routes_name_no_deployment_or_task() {
        let cases = [
            ("/info", "/info"),
            ("/oauth/token", "/oauth/token"),
            (
                "/deployments?exclude_configs=true&exclude_releases=true",
                "/deployments",
            ),
            ("/deployments/cf", "/deployments/:name"),
            ("/deployments/cf/instances", "/deployments/:name/instances"),
            (
                "/deployments/c%2Ff/instances?format=full",
                "/deployments/:name/instances?format=full",
            ),
            ("/events", "/events"),
            ("/configs?type=boshy-istio&latest=true", "/configs"),
            ("/tasks/123", "/tasks/:id"),
            ("/tasks/123/output?type=result", "/tasks/:id/output"),
            ("/deployments/cf/vms", "other"),
            ("/", "other"),
        ];
        for (path, route) in cases {
            assert_eq!(route_template(path), route, "{path}");
        }
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "OTHER");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let cfg: DirectorConfig = serde_yaml::from_str(
            "url: https://127.0.0.1:25555\nclient: admin\ninsecure_skip_tls_verify: true\n",
        )
        .unwrap();
        let client = DirectorClient::new(&cfg, Secret::new("hunter2-secret")).unwrap();
        let shown = format!("{client:?} {:?}", client.basic_authorization());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
