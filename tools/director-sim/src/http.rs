//! HTTP pieces the director and UAA servers share: request counting, fault injection and
//! the response shapes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::fault::{FaultMode, NGINX_BAD_GATEWAY};
use super::requests::counted_path;
use super::Shared;

/// Which server a request reached.
#[derive(Clone)]
pub struct Observed {
    pub shared: Arc<Shared>,
    pub is_director: bool,
}

/// Counts the request, then plays the current fault if it applies to this request (its path
/// and query). A hang
/// waits for the fault to change, so clearing it releases every hung request.
pub async fn observe(State(observed): State<Observed>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |target| target.as_str().to_string());
    observed.shared.state().requests.count(
        request.method().as_str(),
        &counted_path(&path, request.uri().query()),
    );
    let mut faults = observed.shared.fault.subscribe();
    loop {
        let fault = faults.borrow_and_update().clone();
        if !fault.applies_to(&target, observed.is_director) {
            break;
        }
        match fault.mode {
            FaultMode::Http500 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            FaultMode::BadGateway => {
                return with_content_type(
                    StatusCode::BAD_GATEWAY,
                    NGINX_BAD_GATEWAY.to_string(),
                    "text/html",
                )
            }
            FaultMode::Hang => {
                if faults.changed().await.is_err() {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            }
            FaultMode::None | FaultMode::RejectTokens => break,
        }
    }
    next.run(request).await
}

pub fn with_content_type(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut response = (status, Body::from(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// JSON the way the deployments and configs controllers send it: Sinatra's default type.
pub fn json_as_html(status: StatusCode, value: &Value) -> Response {
    with_content_type(status, value.to_string(), "text/html;charset=utf-8")
}

/// JSON from controllers that do set `content_type(:json)` (`/info`, `/tasks`, `/events`).
pub fn json(status: StatusCode, value: &Value) -> Response {
    with_content_type(status, value.to_string(), "application/json")
}
