//! UAA's `POST /oauth/token` for the client_credentials grant and `GET /token_keys`, the
//! public key its tokens are signed with (docs/director-api.md §1.2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::clock::unix_seconds;
use super::http::{json, observe, Observed};
use super::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/token_keys", get(token_keys))
        .with_state(shared.clone())
        .layer(axum::middleware::from_fn_with_state(
            Observed {
                shared,
                is_director: false,
            },
            observe,
        ))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = json(
        status,
        &json!({"error": error, "error_description": description}),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&format!(
                "Basic realm=\"UAA/client\", error=\"{error}\", error_description=\"{description}\""
            ))
            .expect("a static-shaped header value"),
        );
    }
    response
}

/// Client credentials from `Authorization: Basic` or, failing that, the form body.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|decoded| {
            decoded
                .split_once(':')
                .map(|(id, secret)| (id.to_string(), secret.to_string()))
        });
    basic.or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    })
}

/// Audiences UAA derives from the scopes' resource prefixes, plus the client itself.
fn audiences(scopes: &[String], client: &str) -> Vec<String> {
    let mut audiences: Vec<String> = Vec::new();
    let resources = scopes
        .iter()
        .filter_map(|s| s.split_once('.').map(|(r, _)| r));
    for audience in resources.chain([client]) {
        if !audiences.iter().any(|a| a == audience) {
            audiences.push(audience.to_string());
        }
    }
    audiences
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = form.map(|Form(form)| form).unwrap_or_default();
    // UAA authenticates the client before it looks at the grant.
    let authenticated = client_credentials(&headers, &form)
        .is_some_and(|(id, secret)| id == shared.client && secret == shared.client_secret);
    if !authenticated {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
    }
    match form.get("grant_type").map(String::as_str) {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant type",
            )
        }
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            )
        }
    }
    let ttl = shared.token_ttl.as_secs() as i64;
    let (access_token, jti) = issue(&shared, &shared.token_scopes, ttl);
    let body: Value = json!({
        "access_token": access_token,
        "token_type": "bearer",
        // UAA reports one second less than the validity.
        "expires_in": (ttl - 1).max(0),
        "scope": shared.token_scopes.join(" "),
        "jti": jti,
    });
    let mut response = json(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// Signs a token for the client with `scopes`, valid for `ttl` seconds from now (a negative
/// `ttl` gives a token that has already expired), and records its `jti`.
pub(crate) fn issue(shared: &Shared, scopes: &[String], ttl: i64) -> (String, String) {
    let issued_at = unix_seconds(SystemTime::now());
    let jti = uuid::Uuid::new_v4().simple().to_string();
    let claims = json!({
        "jti": jti,
        "sub": shared.client,
        "authorities": scopes,
        "scope": scopes,
        "client_id": shared.client,
        "cid": shared.client,
        "azp": shared.client,
        "grant_type": "client_credentials",
        "rev_sig": format!("{:08x}", rand::random::<u32>()),
        "iat": issued_at,
        "exp": issued_at + ttl,
        "iss": format!("{}/oauth/token", shared.uaa_url),
        "zid": "uaa",
        "aud": audiences(scopes, &shared.client),
    });
    let access_token = shared.signer.sign(&claims);
    shared.state().tokens.issued(jti.clone());
    (access_token, jti)
}

/// UAA serves its public keys to anyone (no authentication).
async fn token_keys(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, shared.signer.token_keys())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_wins_over_the_form_and_the_form_is_a_fallback() {
        let mut headers = HeaderMap::new();
        let form = HashMap::from([
            ("client_id".to_string(), "form".to_string()),
            ("client_secret".to_string(), "fs".to_string()),
        ]);
        assert_eq!(
            client_credentials(&headers, &form),
            Some(("form".into(), "fs".into()))
        );
        let basic = format!("Basic {}", STANDARD.encode("pilot:s:ecret"));
        headers.insert(header::AUTHORIZATION, basic.parse().unwrap());
        assert_eq!(
            client_credentials(&headers, &form),
            Some(("pilot".into(), "s:ecret".into()))
        );
        assert_eq!(client_credentials(&HeaderMap::new(), &HashMap::new()), None);
    }

    #[test]
    fn audiences_come_from_scope_prefixes_and_the_client() {
        let scopes = vec!["bosh.admin".to_string(), "bosh.read".to_string()];
        assert_eq!(audiences(&scopes, "pilot"), ["bosh", "pilot"]);
    }
}
