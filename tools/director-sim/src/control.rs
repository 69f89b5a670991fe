//! The control API (`/_sim/...`, plain HTTP): the lab and tests change the estate, inject
//! faults and read request counts through it. Its routes and bodies are a contract.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::fault::Fault;
use super::state::SimError;
use super::Shared;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/_sim/state", get(state))
        .route("/_sim/deployments", post(create_deployment))
        .route("/_sim/deployments/{d}", delete(delete_deployment))
        .route("/_sim/deployments/{d}/manifest", put(replace_manifest))
        .route("/_sim/deployments/{d}/instances", post(add_instance))
        .route(
            "/_sim/deployments/{d}/instances/{id}",
            delete(remove_instance).put(update_instance),
        )
        .route("/_sim/fault", put(set_fault))
        .route("/_sim/tokens/expire", post(expire_tokens))
        .route("/_sim/tokens/issue", post(issue_token))
        .route("/_sim/requests", get(requests))
        .route("/_sim/requests/reset", post(reset_requests))
        .with_state(shared);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %err, "director simulator control API stopped");
    }
}

fn control_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match self {
            SimError::DeploymentNotFound(_) | SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        control_error(status, self.to_string())
    }
}

/// Parses a JSON body, answering 400 with serde's message (which names the bad field).
fn parse_body<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, Box<Response>> {
    serde_json::from_str(body).map_err(|err| {
        Box::new(control_error(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {err}"),
        ))
    })
}

fn deployment_json(shared: &Shared, name: &str) -> Value {
    let snapshot = shared.state().snapshot(SystemTime::now());
    snapshot["deployments"]
        .as_array()
        .and_then(|list| list.iter().find(|d| d["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.state().snapshot(SystemTime::now()))
}

#[derive(Deserialize)]
struct NewDeployment {
    name: String,
    manifest: Option<String>,
}

/// Creates or replaces a deployment; `manifest: null` is one whose first deploy never finished.
async fn create_deployment(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let new: NewDeployment = match parse_body(&body) {
        Ok(new) => new,
        Err(response) => return *response,
    };
    if new.name.is_empty() {
        return control_error(StatusCode::BAD_REQUEST, "'name' must not be empty".into());
    }
    shared
        .state()
        .deploy(&new.name, new.manifest, SystemTime::now());
    (
        StatusCode::CREATED,
        Json(deployment_json(&shared, &new.name)),
    )
        .into_response()
}

async fn delete_deployment(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<StatusCode, SimError> {
    shared.state().delete_deployment(&name, SystemTime::now())?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body is raw manifest text, valid YAML or not.
async fn replace_manifest(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    manifest: String,
) -> Json<Value> {
    shared
        .state()
        .deploy(&name, Some(manifest), SystemTime::now());
    Json(deployment_json(&shared, &name))
}

#[derive(Deserialize)]
struct NewInstance {
    instance_group: String,
    az: Option<String>,
}

async fn add_instance(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: String,
) -> Response {
    let new: NewInstance = match parse_body(&body) {
        Ok(new) => new,
        Err(response) => return *response,
    };
    let added = shared
        .state()
        .add_instance(&name, &new.instance_group, new.az, SystemTime::now());
    match added {
        Ok(row) => (StatusCode::CREATED, Json(json!(row))).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn remove_instance(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, SimError> {
    shared
        .state()
        .remove_instance(&name, &id, SystemTime::now())?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"job_state": ..., "has_vm": ...}`; an absent key leaves that part alone, while
/// `"job_state": null` sets it to null.
async fn update_instance(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, String)>,
    body: String,
) -> Response {
    let fields: Map<String, Value> = match parse_body(&body) {
        Ok(fields) => fields,
        Err(response) => return *response,
    };
    let job_state = match fields.get("job_state") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(state)) => Some(Some(state.clone())),
        Some(other) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("job_state must be a string or null, not {other}"),
            )
        }
    };
    let has_vm = match fields.get("has_vm") {
        None => None,
        Some(Value::Bool(has_vm)) => Some(*has_vm),
        Some(other) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("has_vm must be true or false, not {other}"),
            )
        }
    };
    let updated = shared
        .state()
        .update_instance(&name, &id, job_state, has_vm, SystemTime::now());
    match updated {
        Ok(row) => Json(json!(row)).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn set_fault(State(shared): State<Arc<Shared>>, body: String) -> Response {
    match parse_body::<Fault>(&body) {
        Ok(fault) => {
            tracing::info!(?fault, "director simulator fault set");
            shared.fault.send_replace(fault.clone());
            Json(json!(fault)).into_response()
        }
        Err(response) => *response,
    }
}

async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let expired = shared.state().tokens.expire_all();
    Json(json!({"expired": expired}))
}

/// `{"scopes": ["bosh.teams.x.read"], "ttl_seconds": 600}`: a token UAA would sign for the
/// client, with the chosen scopes and lifetime (negative: already expired). Tests use it to
/// present tokens the configured client would never get; it does not count as a UAA request.
#[derive(Deserialize)]
struct IssueToken {
    scopes: Vec<String>,
    ttl_seconds: i64,
}

async fn issue_token(State(shared): State<Arc<Shared>>, body: String) -> Response {
    match parse_body::<IssueToken>(&body) {
        Ok(request) => {
            let (token, jti) = super::uaa::issue(&shared, &request.scopes, request.ttl_seconds);
            Json(json!({"access_token": token, "jti": jti})).into_response()
        }
        Err(response) => *response,
    }
}

async fn requests(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.state().requests.to_json())
}

async fn reset_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.state().requests.reset();
    StatusCode::NO_CONTENT
}
