//! The director API routes (docs/director-api.md §1–§6).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};

use super::auth::{authorize, AuthMode, Permission, Principal, Verifier};
use super::clock::unix_seconds;
use super::configs::{ConfigError, ConfigEvent, ConfigQuery};
use super::deployments::{Deployment, Instance};
use super::events::EventQuery;
use super::fault::FaultMode;
use super::http::{json, json_as_html, observe, with_content_type, Observed};
use super::rows;
use super::state::{DeploymentExcludes, SimError, SimState, VmStateScope};
use super::tasks::{byte_range, ByteRange, TaskQuery};
use super::Shared;

/// Top-level paths the director mounts a controller on (`route_configuration.rb`). Paths
/// under them need credentials even when no route matches; anything else is Rack's 404.
const MOUNTED: [&str; 27] = [
    "info",
    "tasks",
    "task",
    "backup",
    "deployments",
    "packages",
    "releases",
    "resurrection",
    "stemcells",
    "events",
    "cleanup",
    "configs",
    "cloud_configs",
    "runtime_configs",
    "cpi_configs",
    "locks",
    "link_providers",
    "link_consumers",
    "links",
    "link_address",
    "orphan_disks",
    "orphaned_vms",
    "networks",
    "restore",
    "director",
    "deployment_configs",
    "variables",
];

/// The header whose value the director stores on the tasks a request creates.
const CONTEXT_ID: &str = "x-bosh-context-id";
/// The longest `X-Bosh-Context-Id` the director accepts.
const MAX_CONTEXT_ID: usize = 64;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/deployments", get(list_deployments))
        .route("/deployments/{d}", get(deployment_manifest))
        .route("/deployments/{d}/instances", get(instances))
        .route("/deployments/{d}/vms", get(vms))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/output", get(task_output))
        .route("/events", get(list_events))
        .route(
            "/configs",
            get(list_configs)
                .post(create_config)
                .delete(delete_named_config),
        )
        .route("/configs/{id}", get(config).delete(delete_config))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(shared.clone())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Observed {
                shared,
                is_director: true,
            },
            observe,
        ))
}

/// A director error response, already shaped.
pub struct ApiError(Box<Response>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

type ApiResult = Result<Response, ApiError>;

/// `{"code": ..., "description": ...}` with the error's status (`base_controller.rb`).
fn director_error(status: StatusCode, code: u32, description: &str) -> ApiError {
    ApiError(Box::new(json_as_html(
        status,
        &json!({"code": code, "description": description}),
    )))
}

fn with_www_authenticate(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"BOSH Director\""),
    );
    response
}

/// The 401 for a missing, malformed, badly signed or expired credential.
fn not_authorized(path: &str) -> Response {
    with_www_authenticate(with_content_type(
        StatusCode::UNAUTHORIZED,
        format!("Not authorized: '{path}'\n"),
        "text/html;charset=utf-8",
    ))
}

impl From<SimError> for ApiError {
    fn from(err: SimError) -> ApiError {
        match &err {
            SimError::DeploymentNotFound(_) => {
                director_error(StatusCode::NOT_FOUND, 70000, &err.to_string())
            }
            SimError::NotFound(_) => director_error(StatusCode::NOT_FOUND, 70001, &err.to_string()),
            SimError::BadRequest(_) => {
                director_error(StatusCode::BAD_REQUEST, 40000, &err.to_string())
            }
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> ApiError {
        match err {
            ConfigError::BadRequest(description) => {
                director_error(StatusCode::BAD_REQUEST, 440010, &description)
            }
            ConfigError::BadConfig(description) => {
                director_error(StatusCode::BAD_REQUEST, 440011, &description)
            }
            ConfigError::NotFound(id) => director_error(
                StatusCode::NOT_FOUND,
                440012,
                &format!("Config {id} not found"),
            ),
            ConfigError::LatestIdMismatch {
                latest_id,
                expected,
            } => ApiError(Box::new(json_as_html(
                StatusCode::PRECONDITION_FAILED,
                &json!({
                    "latest_id": latest_id,
                    "expected_latest_id": expected,
                    "description": format!("Latest Id: '{latest_id}' does not match expected latest id"),
                }),
            ))),
        }
    }
}

/// The caller of `/info`, where credentials are optional.
#[derive(Clone)]
struct Caller(Option<Principal>);

/// Checks credentials the way the director does before any controller route runs.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let top = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if !MOUNTED.contains(&top) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let fault = shared.fault.borrow().clone();
    let target = request
        .uri()
        .path_and_query()
        .map_or(path.as_str(), |target| target.as_str());
    let rejected = fault.mode == FaultMode::RejectTokens && fault.applies_to(target, true);
    let principal = if rejected {
        None
    } else {
        let state = shared.state();
        Verifier {
            mode: shared.auth,
            signer: &shared.signer,
            revoked: &state.tokens.revoked,
            client: &shared.client,
            client_secret: &shared.client_secret,
            now: unix_seconds(SystemTime::now()),
        }
        .authenticate(authorization)
    };
    if top == "info" {
        request.extensions_mut().insert(Caller(principal));
        return next.run(request).await;
    }
    let Some(principal) = principal else {
        return not_authorized(&path);
    };
    let context_id_len = request
        .headers()
        .get(CONTEXT_ID)
        .map_or(0, |value| value.as_bytes().len());
    if context_id_len > MAX_CONTEXT_ID {
        return director_error(
            StatusCode::BAD_REQUEST,
            70010,
            &format!("X-Bosh-Context-Id cannot be more than {MAX_CONTEXT_ID} characters in length"),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    // The base controller sets the challenge on every response of a protected controller.
    with_www_authenticate(next.run(request).await)
}

/// 401 with code 600000 when the scopes do not allow the call.
fn require(shared: &Shared, principal: &Principal, permission: Permission) -> Result<(), ApiError> {
    let uuid = shared.state().director_uuid.clone();
    authorize(principal, permission, &uuid).map_err(|description| {
        let ApiError(response) = director_error(StatusCode::UNAUTHORIZED, 600000, &description);
        ApiError(Box::new(with_www_authenticate(*response)))
    })
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let top = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if MOUNTED.contains(&top) {
        with_content_type(
            StatusCode::NOT_FOUND,
            format!("Endpoint '{path}' not found."),
            "text/html;charset=utf-8",
        )
    } else {
        // Rack::URLMap's answer for a prefix nothing is mounted on.
        let mut response = with_content_type(
            StatusCode::NOT_FOUND,
            format!("Not Found: {path}"),
            "text/html",
        );
        response
            .headers_mut()
            .insert("x-cascade", HeaderValue::from_static("pass"));
        response
    }
}

async fn info(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Response {
    let user_authentication = match shared.auth {
        AuthMode::Uaa => json!({
            "type": "uaa",
            "options": {"url": shared.uaa_url, "urls": [shared.uaa_url]},
        }),
        AuthMode::Basic => json!({"type": "basic", "options": {}}),
    };
    let director_ip = shared.director_addr.ip();
    json(
        StatusCode::OK,
        &json!({
            "name": "boshy-director-sim",
            "uuid": shared.state().director_uuid,
            "version": "281.0.10 (00000000)",
            "user": caller.0.map(|p| p.user),
            "cpi": "warden_cpi",
            "stemcell_os": "ubuntu-jammy",
            "stemcell_version": "1.423",
            "user_authentication": user_authentication,
            "features": {
                "local_dns": {"status": true, "extras": {"domain_name": "bosh"}},
                "snapshots": {"status": false},
                "config_server": {
                    "status": true,
                    "extras": {"urls": [format!("https://{director_ip}:8844/api/")]}
                }
            }
        }),
    )
}

fn flag(params: &HashMap<String, String>, key: &str) -> bool {
    params.get(key).map(String::as_str) == Some("true")
}

async fn list_deployments(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let excludes = DeploymentExcludes {
        configs: flag(&params, "exclude_configs"),
        releases: flag(&params, "exclude_releases"),
        stemcells: flag(&params, "exclude_stemcells"),
        lock: flag(&params, "exclude_lock"),
    };
    let state = shared.state();
    let list: Vec<Value> = state
        .deployments()
        .map(|d| SimState::deployment_summary(d, &excludes))
        .collect();
    Ok(json_as_html(StatusCode::OK, &Value::Array(list)))
}

async fn deployment_manifest(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let state = shared.state();
    let deployment = state.deployment(&name)?;
    Ok(json_as_html(
        StatusCode::OK,
        &json!({"manifest": deployment.manifest}),
    ))
}

/// Everything the `instances` and `vms` handlers take from the request.
struct VmStateRequest {
    principal: Principal,
    name: String,
    full: bool,
    host: Option<String>,
    context_id: String,
}

impl VmStateRequest {
    fn new(
        principal: Principal,
        name: String,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> VmStateRequest {
        let header_text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        VmStateRequest {
            principal,
            name,
            full: params.get("format").map(String::as_str) == Some("full"),
            host: header_text(header::HOST.as_str()),
            context_id: header_text(CONTEXT_ID).unwrap_or_default(),
        }
    }

    /// The `format=full` answer: a `vms` task and a 302 to it, with an absolute Location
    /// built from the Host header like Sinatra's `absolute_redirects`.
    fn redirect_to_task(self, shared: &Shared, scope: VmStateScope) -> ApiResult {
        let task = shared.state().create_vm_state_task(
            &self.name,
            scope,
            &self.principal.user,
            &self.context_id,
            SystemTime::now(),
        )?;
        let host = self
            .host
            .unwrap_or_else(|| shared.director_addr.to_string());
        let location = format!("https://{host}/tasks/{task}");
        Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location)
            .header(header::CONTENT_TYPE, "text/html;charset=utf-8")
            .body(Body::empty())
            .expect("a valid redirect response"))
    }
}

async fn instances(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let request = VmStateRequest::new(principal, name, &params, &headers);
    vm_state_listing(
        &shared,
        request,
        VmStateScope::Instances,
        |deployment, instance| {
            serde_json::to_value(rows::instance_list_row(deployment, instance)).ok()
        },
    )
}

async fn vms(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let request = VmStateRequest::new(principal, name, &params, &headers);
    vm_state_listing(&shared, request, VmStateScope::Vms, |_, instance| {
        rows::vm_list_row(instance).and_then(|row| serde_json::to_value(row).ok())
    })
}

/// `/instances` and `/vms`: with `format=full` a task (302), otherwise the synchronous list
/// of the rows `row` gives (instances it skips are left out).
fn vm_state_listing(
    shared: &Shared,
    request: VmStateRequest,
    scope: VmStateScope,
    row: impl Fn(&Deployment, &Instance) -> Option<Value>,
) -> ApiResult {
    require(shared, &request.principal, Permission::Read)?;
    if request.full {
        return request.redirect_to_task(shared, scope);
    }
    let state = shared.state();
    let deployment = state.deployment(&request.name)?;
    let list: Vec<_> = rows::ordered_instances(deployment)
        .into_iter()
        .filter_map(|instance| row(deployment, instance))
        .collect();
    Ok(json_as_html(StatusCode::OK, &json!(list)))
}

async fn list_tasks(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let query = TaskQuery {
        states: params
            .get("state")
            .map(|s| s.split(',').map(str::to_string).collect()),
        deployment: params.get("deployment").cloned(),
        context_id: params.get("context_id").cloned(),
        // Ruby's `to_i`: anything unparsable is 0, which becomes 1.
        limit: params.get("limit").map(|l| l.parse().unwrap_or(0)),
        verbose: params.get("verbose").map(|v| v.parse().unwrap_or(1)),
    };
    let now = SystemTime::now();
    let state = shared.state();
    let list: Vec<Value> = state
        .tasks
        .query(&query, now)
        .into_iter()
        .map(|t| t.to_json(now))
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

fn task_not_found(id: &str) -> ApiError {
    director_error(
        StatusCode::NOT_FOUND,
        10000,
        &format!("Task {id} not found"),
    )
}

async fn task(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let state = shared.state();
    let task = id
        .parse()
        .ok()
        .and_then(|id| state.tasks.get(id))
        .ok_or_else(|| task_not_found(&id))?;
    Ok(json(StatusCode::OK, &task.to_json(SystemTime::now())))
}

async fn task_output(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let output_type = params.get("type").map(String::as_str).unwrap_or("debug");
    let permission = match output_type {
        "result" | "event" | "none" => Permission::Read,
        _ => Permission::Admin,
    };
    require(&shared, &principal, permission)?;
    let output = {
        let state = shared.state();
        let task = id
            .parse()
            .ok()
            .and_then(|id| state.tasks.get(id))
            .ok_or_else(|| task_not_found(&id))?;
        match output_type {
            "none" => return Ok(StatusCode::NO_CONTENT.into_response()),
            "result" => task.result_output(SystemTime::now()),
            // The simulated workers log nothing.
            _ => String::new(),
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let size = output.len();
    Ok(match byte_range(range, size) {
        ByteRange::Whole => with_content_type(StatusCode::OK, output, "text/plain"),
        ByteRange::From(start) => {
            let mut response = with_content_type(
                StatusCode::PARTIAL_CONTENT,
                output[start..].to_string(),
                "text/plain",
            );
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{}/{size}", size - 1))
                    .expect("a numeric header value"),
            );
            response
        }
        ByteRange::Unsatisfiable => {
            let mut response = with_content_type(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "Byte range unsatisfiable\n".to_string(),
                "text/plain",
            );
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("a numeric header value"),
            );
            response
        }
    })
}

fn integer_param(params: &HashMap<String, String>, key: &str) -> Option<i64> {
    params.get(key).and_then(|v| v.parse().ok())
}

async fn list_events(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let text = |key: &str| params.get(key).cloned();
    let query = EventQuery {
        before_id: integer_param(&params, "before_id").map(|id| id.max(0) as u64),
        before_time: integer_param(&params, "before_time"),
        after_time: integer_param(&params, "after_time"),
        task: text("task"),
        deployment: text("deployment"),
        instance: text("instance"),
        user: text("user"),
        action: text("action"),
        object_type: text("object_type"),
        object_name: text("object_name"),
    };
    let state = shared.state();
    let list: Vec<Value> = state
        .events
        .query(&query)
        .into_iter()
        .map(|e| e.to_json())
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

async fn list_configs(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let query = ConfigQuery {
        kind: params.get("type").cloned(),
        name: params.get("name").cloned(),
        latest: params.get("latest").cloned(),
        limit: params.get("limit").cloned(),
    };
    let list = shared.state().configs.list(&query)?;
    Ok(json_as_html(StatusCode::OK, &Value::Array(list)))
}

fn config_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        director_error(
            StatusCode::NOT_FOUND,
            440012,
            &format!("Config {id} not found"),
        )
    })
}

async fn config(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&shared, &principal, Permission::Read)?;
    let config = shared.state().configs.get(config_id(&id)?)?;
    Ok(json_as_html(StatusCode::OK, &config))
}

async fn create_config(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !is_json {
        // `post '/', consumes: :json` does not match, so Sinatra falls through to not found.
        return Ok(with_content_type(
            StatusCode::NOT_FOUND,
            "Endpoint '/configs' not found.".to_string(),
            "text/html;charset=utf-8",
        ));
    }
    require(&shared, &principal, Permission::Admin)?;
    let now = SystemTime::now();
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            let description = format!("Invalid JSON request body: {err}");
            let event = ConfigEvent::refused(&principal.user, &Value::Null, &description);
            shared.state().record_config_event(event, now);
            return Err(director_error(
                StatusCode::BAD_REQUEST,
                710001,
                &description,
            ));
        }
    };
    let mut state = shared.state();
    match state.configs.post(&body, now) {
        Ok(posted) => {
            // Identical content is no new version and writes no event.
            if posted.created {
                let event = ConfigEvent::created(&principal.user, &body);
                state.record_config_event(event, now);
            }
            Ok(json_as_html(StatusCode::CREATED, &posted.config))
        }
        Err(err) => {
            // A refused body is recorded; a lost race (412) is not.
            if let Some(refusal) = err.refusal() {
                let event = ConfigEvent::refused(&principal.user, &body, refusal);
                state.record_config_event(event, now);
            }
            Err(err.into())
        }
    }
}

async fn delete_config(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&shared, &principal, Permission::Admin)?;
    let id = config_id(&id)?;
    // Like the director, deleting writes no event.
    shared.state().configs.delete_id(id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_named_config(
    State(shared): State<Arc<Shared>>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    require(&shared, &principal, Permission::Admin)?;
    let required = |key: &str| {
        params
            .get(key)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                director_error(
                    StatusCode::BAD_REQUEST,
                    440010,
                    &format!("'{key}' is required"),
                )
            })
    };
    let (kind, name) = (required("type")?, required("name")?);
    // Like the director, deleting writes no event.
    match shared.state().configs.delete_named(kind, name) {
        true => Ok(StatusCode::NO_CONTENT.into_response()),
        false => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}
