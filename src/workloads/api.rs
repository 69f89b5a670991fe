//! The registrations' part of the pilot's HTTP API (docs/api.md, docs/workloads.md):
//!
//! - `POST /v1/workloads/tokens` (`bosh.admin`): a join token for a group, shown once.
//! - `DELETE /v1/workloads/tokens/<id>` (`bosh.admin`): revokes it.
//! - `GET /v1/workloads` (read access): the tokens (never their secrets) and registrations.
//! - `POST /v1/workloads/join` (a join token, no certificate): registers the address the
//!   connection comes from and signs the VM's certificate.
//! - `POST /v1/workloads/leave` (the VM's certificate): deregisters it at once.
//! - `DELETE /v1/workloads/registrations/<id>` (`bosh.admin`): the same, by an operator.
//!
//! Who may call what is [`need`]'s, applied by `api.rs`'s `authorize` layer before routing;
//! the handlers check the join token themselves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::identity::Peer;
use super::refusal::JoinRefusal;
use super::service::{ChangeError, Workloads};
use super::token::JoinToken;
use crate::catalog::labels::{check_key, check_value, is_reserved};
use crate::catalog::model::Labels;
use crate::metrics;
use crate::text::clip;

pub(crate) const JOIN_PATH: &str = "/v1/workloads/join";
pub(crate) const LEAVE_PATH: &str = "/v1/workloads/leave";
const LIST_PATH: &str = "/v1/workloads";
const TOKENS_PATH: &str = "/v1/workloads/tokens";
const REGISTRATIONS_PREFIX: &str = "/v1/workloads/registrations/";

/// What a request needs to get in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing (the handler checks what it needs, as the join does its token).
    Open,
    /// A mesh client certificate or a token with a read scope: the API's default.
    Read,
    /// A UAA token with `bosh.admin`: changes of the mesh's membership are an operator's.
    Admin,
    /// A joined VM's own certificate.
    JoinedVm,
}

/// What `method` on `path` needs. Every path outside the registrations' is `Read` (and
/// `/healthz` `Open`), as before they existed.
pub(crate) fn need(method: &Method, path: &str) -> Need {
    match (method, path) {
        (_, "/healthz") => Need::Open,
        (&Method::POST, JOIN_PATH) => Need::Open,
        (&Method::POST, LEAVE_PATH) => Need::JoinedVm,
        (&Method::POST, TOKENS_PATH) => Need::Admin,
        (&Method::DELETE, p)
            if p.starts_with("/v1/workloads/tokens/") || p.starts_with(REGISTRATIONS_PREFIX) =>
        {
            Need::Admin
        }
        _ => Need::Read,
    }
}

/// The routes, answering 404 with the reason when the pilot has no `workloads` config.
pub(crate) fn router(workloads: Option<Arc<Workloads>>) -> Router {
    Router::new()
        .route(LIST_PATH, get(list))
        .route(TOKENS_PATH, post(create_token))
        .route("/v1/workloads/tokens/{id}", delete(revoke_token))
        .route(JOIN_PATH, post(join))
        .route(LEAVE_PATH, post(leave))
        .route("/v1/workloads/registrations/{id}", delete(remove))
        .with_state(workloads)
}

type Feature = State<Option<Arc<Workloads>>>;

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "joining VMs is not configured on this pilot (no `workloads` in its config)\n",
    )
        .into_response()
}

/// A refusal: counted, and answered with its status and a line saying what was wrong.
fn refused(refusal: &JoinRefusal) -> Response {
    metrics::global().workload_refusal(refusal.label());
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("{refusal}\n")).into_response()
}

fn failed(error: ChangeError) -> Response {
    match error {
        ChangeError::Refused(refusal) => refused(&refusal),
        ChangeError::Store(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the registration store could not be written; try again: {why}\n"),
        )
            .into_response(),
    }
}

/// A JSON body of type `T`, or the refusal naming what is wrong with it (a 400).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, JoinRefusal> {
    serde_json::from_slice(bytes).map_err(|err| {
        JoinRefusal::BadRequest(format!(
            "the body is not the expected JSON: {}",
            clip(&err.to_string())
        ))
    })
}

async fn list(State(workloads): Feature) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    Json(workloads.listing()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    group: String,
    ttl_seconds: Option<u64>,
}

async fn create_token(State(workloads): Feature, bytes: Bytes) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    let request: TokenRequest = match body(&bytes) {
        Ok(request) => request,
        Err(refusal) => return refused(&refusal),
    };
    match workloads
        .create_token(&request.group, request.ttl_seconds)
        .await
    {
        Ok((token, record)) => {
            tracing::info!(id = %record.id, group = %record.group, expires_at = record.expires_at, "join token created");
            let answer = json!({
                "id": record.id,
                "group": record.group,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "token": token.reveal(),
                "settings": workloads.settings(),
            });
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(error) => failed(error),
    }
}

async fn revoke_token(State(workloads): Feature, Path(id): Path<String>) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    match workloads.revoke_token(&id).await {
        Ok(record) => {
            tracing::info!(id = %record.id, group = %record.group, "join token revoked");
            Json(json!({"id": record.id, "group": record.group, "expires_at": record.expires_at, "revoked": true}))
                .into_response()
        }
        Err(error) => failed(error),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    group: String,
    csr: String,
    #[serde(default)]
    labels: Labels,
}

/// The join token of `Authorization: Bearer boshy-join.…`.
fn join_token(headers: &HeaderMap) -> Result<JoinToken, JoinRefusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            JoinRefusal::Malformed("no `Authorization: Bearer boshy-join.…` header".into())
        })?
        .to_str()
        .map_err(|_| JoinRefusal::Malformed("the Authorization header is not text".into()))?;
    let token = crate::api_auth::bearer_token(value).map_err(|_| {
        JoinRefusal::Malformed("the Authorization header is not `Bearer <join token>`".into())
    })?;
    JoinToken::parse(token)
}

/// A VM's own labels: the catalog's label syntax, none under the director's `bosh.io/`.
fn check_labels(labels: &Labels) -> Result<(), JoinRefusal> {
    for (key, value) in labels {
        let problem = if is_reserved(key) {
            Some(format!(
                "key {:?} is under bosh.io/, which only the director's labels use",
                clip(key)
            ))
        } else {
            check_key(key).and_then(|()| check_value(value)).err()
        };
        if let Some(problem) = problem {
            return Err(JoinRefusal::BadRequest(format!("labels: {problem}")));
        }
    }
    Ok(())
}

async fn join(
    State(workloads): Feature,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    let token = match join_token(&headers) {
        Ok(token) => token,
        Err(refusal) => return refused(&refusal),
    };
    let request: JoinRequest = match body(&bytes) {
        Ok(request) => request,
        Err(refusal) => return refused(&refusal),
    };
    if let Err(refusal) = check_labels(&request.labels) {
        return refused(&refusal);
    }
    // The address is the connection's, never the request's: a VM registers only itself.
    let address = peer.ip().to_canonical();
    let joined = workloads
        .join(token, request.group, address, request.labels, &request.csr)
        .await;
    match joined {
        Ok(joined) => {
            let r = &joined.registration;
            Json(json!({
                "id": r.id,
                "deployment": r.config(),
                "instance_group": r.group_name(),
                "instance": format!("{}/{}", r.group_name(), r.id),
                "address": r.address,
                "certificate": joined.certificate,
                "ca": joined.ca,
                "settings": workloads.settings(),
            }))
            .into_response()
        }
        Err(error) => {
            if let ChangeError::Refused(refusal) = &error {
                tracing::info!(%peer, reason = refusal.label(), "join refused: {refusal}");
            }
            failed(error)
        }
    }
}

async fn leave(State(workloads): Feature, peer: Option<Extension<Peer>>) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    // The `authorize` layer let in only a joined VM's certificate.
    let Some(Extension(Peer::Workload(identity))) = peer else {
        return refused(&JoinRefusal::BadRequest(
            "only a joined VM's certificate may leave".into(),
        ));
    };
    if workloads.registration_of(&identity).is_none() {
        return refused(&JoinRefusal::NotFound(format!(
            "no VM is registered as {} in {}: it was removed already",
            identity.id,
            identity.group_path()
        )));
    }
    match workloads.remove(&identity.id).await {
        Ok(registration) => Json(json!({"id": registration.id, "left": true})).into_response(),
        Err(error) => failed(error),
    }
}

async fn remove(State(workloads): Feature, Path(id): Path<String>) -> Response {
    let Some(workloads) = workloads else {
        return off();
    };
    match workloads.remove(&id).await {
        Ok(registration) => Json(json!({
            "id": registration.id,
            "group": registration.group,
            "address": registration.address,
            "removed": true,
        }))
        .into_response(),
        Err(error) => failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_needs_what_it_changes() {
        let cases = [
            (Method::GET, "/healthz", Need::Open),
            (Method::POST, "/v1/workloads/join", Need::Open),
            (Method::GET, "/v1/workloads/join", Need::Read),
            (Method::POST, "/v1/workloads/leave", Need::JoinedVm),
            (Method::POST, "/v1/workloads/tokens", Need::Admin),
            (
                Method::DELETE,
                "/v1/workloads/tokens/0123456789abcdef",
                Need::Admin,
            ),
            (Method::DELETE, "/v1/workloads/registrations/x", Need::Admin),
            (Method::GET, "/v1/workloads", Need::Read),
            (Method::GET, "/v1/registration", Need::Read),
            (Method::POST, "/v1/registration", Need::Read),
        ];
        for (method, path, expected) in cases {
            assert_eq!(need(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn a_vms_labels_follow_the_label_syntax_and_stay_out_of_bosh_io() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            check_labels(&labels(&[("zone", "dc1"), ("example.com/team", "")])),
            Ok(())
        );
        for (bad, why) in [
            (labels(&[("bosh.io/az", "z1")]), "bosh.io/"),
            (labels(&[("-x", "1")]), "key"),
            (labels(&[("x", "a b")]), "value"),
        ] {
            let JoinRefusal::BadRequest(message) = check_labels(&bad).unwrap_err() else {
                panic!("a bad request")
            };
            assert!(
                message.starts_with("labels: ") && message.contains(why),
                "{message}"
            );
        }
    }

    #[test]
    fn the_join_token_comes_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(join_token(&headers).unwrap_err().status(), 401);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(join_token(&headers).unwrap_err().label(), "malformed_token");
        let token = crate::workloads::state::tests::token(5);
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", token.reveal()).parse().unwrap(),
        );
        assert_eq!(join_token(&headers).unwrap(), token);
    }
}
