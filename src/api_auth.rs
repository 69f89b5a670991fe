//! Checks the UAA tokens that callers of the pilot's API present (docs/director-api.md §1.2,
//! §1.3): the same tokens a BOSH operator's `bosh` CLI gets from the director's UAA.
//!
//! A token is accepted as the director accepts it, with the signature checked against UAA's
//! public keys instead of a shared secret:
//!
//! - `Authorization: bearer <JWT>`, the scheme in any case, exactly two space-separated parts;
//! - signed RS256, RS384 or RS512 (never `none`, never an HMAC algorithm: the pilot holds no
//!   symmetric key, and a public key must not be usable as one) by a key of
//!   `GET <uaa>/token_keys` named by the token's `kid`;
//! - `exp` an integer not yet passed, with no leeway (the director allows no clock skew);
//! - `jti` present and not ending in `-r` (a refresh token);
//! - a scope the director accepts for reading: `bosh.admin`, `bosh.read`, or, when the
//!   director's UUID is known, `bosh.<uuid>.admin` or `bosh.<uuid>.read`.
//!
//! UAA's keys are fetched once and again when a token names a `kid` the pilot has not seen
//! (UAA rotated its key), at most once every `KEY_REFRESH_INTERVAL`, so that tokens with made-up
//! key ids cannot make the pilot hammer UAA. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::director::DirectorClient;

/// How often, at most, an unknown `kid` makes the pilot fetch UAA's keys again.
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The algorithms a UAA token may be signed with: UAA's asymmetric ones.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// Why a request was refused. `label` names it in `boshy_api_refusals_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credentials")]
    Missing,
    #[error("the Authorization header is not `bearer <token>`")]
    NotBearer,
    #[error("the token is not a JWT this pilot can read")]
    Malformed,
    #[error("the token is not signed with an algorithm UAA's public keys verify")]
    Algorithm,
    #[error("the token is signed with a key UAA does not publish")]
    UnknownKey,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is a refresh token or has no jti")]
    NotAccessToken,
    #[error("the token has none of the scopes bosh.admin, bosh.read")]
    Scope,
    #[error("UAA's token keys could not be fetched")]
    KeysUnavailable,
    #[error("this changes the mesh's membership: it needs a UAA token with the scope bosh.admin (bosh.read and mesh client certificates only read)")]
    AdminScope,
    #[error("a joined VM's certificate gives access to POST /v1/workloads/leave only")]
    WorkloadCertificate,
    #[error("only a joined VM, with the certificate its join gave it, may leave")]
    NotJoinedVm,
}

impl Refusal {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::NotBearer => "not_bearer",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotAccessToken => "not_access_token",
            Refusal::Scope => "scope",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::AdminScope => "admin_scope",
            Refusal::WorkloadCertificate => "workload_certificate",
            Refusal::NotJoinedVm => "not_joined_vm",
        }
    }

    /// `403` for a valid token without the scope, `503` when the keys to judge it are
    /// missing, `401` for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::Scope
            | Refusal::AdminScope
            | Refusal::WorkloadCertificate
            | Refusal::NotJoinedVm => http::StatusCode::FORBIDDEN,
            Refusal::KeysUnavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// Every label, for metrics that show zeros before the first refusal.
    pub const ALL: [Refusal; 13] = [
        Refusal::Missing,
        Refusal::NotBearer,
        Refusal::Malformed,
        Refusal::Algorithm,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotAccessToken,
        Refusal::Scope,
        Refusal::KeysUnavailable,
        Refusal::AdminScope,
        Refusal::WorkloadCertificate,
        Refusal::NotJoinedVm,
    ];
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCaller {
    /// `client_id` (client credentials) or `user_name` (a user's token), for the logs.
    pub name: String,
    /// The token has an admin scope (`bosh.admin`, or `bosh.<director uuid>.admin`): it may
    /// change the mesh's membership (join tokens, registrations).
    pub admin: bool,
}

/// UAA's published keys, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

/// `GET /token_keys` as UAA answers it: `{"keys": [{"kty": "RSA", "kid": "…", "alg": "RS256",
/// "n": "…", "e": "AQAB", "use": "sig", "value": "<PEM>"}]}`.
#[derive(Deserialize)]
struct TokenKeysResponse {
    keys: Vec<TokenKeyEntry>,
}

#[derive(Deserialize)]
struct TokenKeyEntry {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
}

impl KeySet {
    /// Reads UAA's answer, keeping the RSA signing keys; a key of another type (UAA never
    /// publishes a symmetric one here) is skipped.
    pub fn from_token_keys_json(body: &str) -> anyhow::Result<KeySet> {
        let response: TokenKeysResponse = serde_json::from_str(body)?;
        let mut keys = HashMap::new();
        for entry in response.keys {
            if entry.kty != "RSA" || entry.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let (Some(n), Some(e)) = (entry.n.as_deref(), entry.e.as_deref()) else {
                continue;
            };
            let key = DecodingKey::from_rsa_components(n, e)?;
            // UAA names every key; a lone unnamed key is what a token without `kid` means.
            keys.insert(entry.kid.unwrap_or_default(), key);
        }
        if keys.is_empty() {
            anyhow::bail!("UAA's token_keys holds no RSA signing key");
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Vec<String>,
    jti: Option<String>,
    client_id: Option<String>,
    user_name: Option<String>,
}

/// The token in an `Authorization` header value: `bearer <token>`, scheme in any case.
pub fn bearer_token(authorization: &str) -> Result<&str, Refusal> {
    let mut parts = authorization.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(token), None)
            if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() =>
        {
            Ok(token)
        }
        _ => Err(Refusal::NotBearer),
    }
}

/// The token's header, if it is one signed with an algorithm UAA's public keys verify.
fn header_of(token: &str) -> Result<jsonwebtoken::Header, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|err| match err.kind() {
        // `alg: none`, and every name jsonwebtoken does not know, in a header that is JSON.
        jsonwebtoken::errors::ErrorKind::Json(_) if names_an_algorithm(token) => Refusal::Algorithm,
        _ => Refusal::Malformed,
    })?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(Refusal::Algorithm);
    }
    Ok(header)
}

/// Whether the token's first segment is a JSON object with an `alg`.
fn names_an_algorithm(token: &str) -> bool {
    use base64::Engine as _;
    let segment = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|header| header.get("alg").is_some())
}

/// Checks `token` against `keys` (see the module's documentation). `director_uuid` adds the
/// UUID-qualified scopes.
pub fn verify(
    token: &str,
    keys: &KeySet,
    director_uuid: Option<&str>,
) -> Result<TokenCaller, Refusal> {
    let header = header_of(token)?;
    let key = keys
        .keys
        .get(header.kid.as_deref().unwrap_or_default())
        .ok_or(Refusal::UnknownKey)?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = ALGORITHMS.to_vec();
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|err| {
        use jsonwebtoken::errors::ErrorKind;
        match err.kind() {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
            _ => Refusal::Malformed,
        }
    })?;
    let claims = data.claims;
    if claims.jti.as_deref().is_none_or(|jti| jti.ends_with("-r")) {
        return Err(Refusal::NotAccessToken);
    }
    // The director's scope names: `bosh.<level>` or `bosh.<director uuid>.<level>`.
    let granted = |scope: &str, levels: &[&str]| {
        scope.strip_prefix("bosh.").is_some_and(|rest| {
            levels.contains(&rest)
                || director_uuid.is_some_and(|uuid| {
                    rest.strip_prefix(uuid)
                        .and_then(|level| level.strip_prefix('.'))
                        .is_some_and(|level| levels.contains(&level))
                })
        })
    };
    if !claims
        .scope
        .iter()
        .any(|scope| granted(scope, &["admin", "read"]))
    {
        return Err(Refusal::Scope);
    }
    Ok(TokenCaller {
        name: claims
            .client_id
            .or(claims.user_name)
            .unwrap_or_else(|| "unnamed".to_string()),
        admin: claims.scope.iter().any(|scope| granted(scope, &["admin"])),
    })
}

/// UAA's keys as the pilot holds them: fetched on first use, again on an unknown `kid` (at
/// most once every `KEY_REFRESH_INTERVAL`).
pub struct UaaKeys {
    http: reqwest::Client,
    uaa: UaaLocation,
    director_uuid: Option<String>,
    held: Mutex<Held>,
}

/// Where UAA is: a URL, or wherever the director's `GET /info` says.
enum UaaLocation {
    Url(String),
    Director(Arc<DirectorClient>),
}

#[derive(Default)]
struct Held {
    keys: Option<KeySet>,
    fetched_at: Option<Instant>,
}

impl UaaKeys {
    /// `uaa_url` is UAA's base URL (from the director's `/info`, or `director.uaa_url`);
    /// `http` must trust UAA's certificate (the director's CA).
    pub fn new(http: reqwest::Client, uaa_url: &str, director_uuid: Option<String>) -> UaaKeys {
        UaaKeys {
            http,
            uaa: UaaLocation::Url(uaa_url.to_string()),
            director_uuid,
            held: Mutex::new(Held::default()),
        }
    }

    /// The UAA the director names (docs/director-api.md §1.1), reached with the director
    /// client's TLS trust.
    pub fn of_director(director: Arc<DirectorClient>) -> UaaKeys {
        UaaKeys {
            http: director.http(),
            uaa: UaaLocation::Director(director),
            director_uuid: None,
            held: Mutex::new(Held::default()),
        }
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let uaa = match &self.uaa {
            UaaLocation::Url(url) => url.clone(),
            UaaLocation::Director(director) => director
                .uaa_url()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the director has no UAA (local users)"))?,
        };
        let url = format!("{}/token_keys", uaa.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, "application/json")
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?;
        KeySet::from_token_keys_json(&response.text().await?)
    }

    /// Fetches the keys if none are held, or if `refresh` and the last fetch is old enough.
    async fn keys(&self, refresh: bool) -> Result<KeySet, Refusal> {
        let mut held = self.held.lock().await;
        let stale = held
            .fetched_at
            .is_none_or(|at| at.elapsed() >= KEY_REFRESH_INTERVAL);
        // An unreachable UAA is asked again no more often than a rotated one.
        if stale && (held.keys.is_none() || refresh) {
            held.fetched_at = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => held.keys = Some(keys),
                Err(err) => {
                    tracing::warn!("cannot fetch UAA's token keys: {err:#}")
                }
            }
        }
        held.keys.clone().ok_or(Refusal::KeysUnavailable)
    }

    /// Checks the value of an `Authorization` header.
    pub async fn check(&self, authorization: &str) -> Result<TokenCaller, Refusal> {
        let token = bearer_token(authorization)?;
        // What can be refused without UAA's keys is refused before they are fetched.
        header_of(token)?;
        let uuid = self.director_uuid.as_deref();
        match verify(token, &self.keys(false).await?, uuid) {
            Err(Refusal::UnknownKey) => verify(token, &self.keys(true).await?, uuid),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const KEY_1: &str = include_str!("../fixtures/uaa/key-1.pem");
    const KEY_2: &str = include_str!("../fixtures/uaa/key-2.pem");
    const TOKEN_KEYS: &str = include_str!("../fixtures/uaa/token_keys.json");
    const TOKEN_KEYS_ROTATED: &str = include_str!("../fixtures/uaa/token_keys-rotated.json");
    const UUID: &str = "9a0e1d2c-0000-4000-8000-000000000001";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(scope: &[&str]) -> Value {
        json!({"jti": "0f1e2d", "client_id": "ops", "cid": "ops", "scope": scope,
               "iat": now(), "exp": now() + 600, "zid": "uaa", "aud": ["bosh", "ops"]})
    }

    fn sign_with(pem: &str, kid: Option<&str>, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(KEY_1, Some("key-1"), Algorithm::RS256, claims)
    }

    fn keys() -> KeySet {
        KeySet::from_token_keys_json(TOKEN_KEYS).unwrap()
    }

    fn check(token: &str) -> Result<TokenCaller, Refusal> {
        verify(token, &keys(), Some(UUID))
    }

    #[test]
    fn reads_uaa_token_keys_and_skips_what_is_not_an_rsa_signing_key() {
        assert_eq!(keys().len(), 1);
        let mixed = json!({"keys": [
            {"kty": "MAC", "kid": "legacy", "alg": "HS256", "value": "secret"},
            serde_json::from_str::<Value>(TOKEN_KEYS).unwrap()["keys"][0].clone(),
        ]});
        assert_eq!(
            KeySet::from_token_keys_json(&mixed.to_string())
                .unwrap()
                .len(),
            1
        );
        assert!(KeySet::from_token_keys_json(r#"{"keys": []}"#).is_err());
        assert!(KeySet::from_token_keys_json("<html>").is_err());
    }

    #[test]
    fn a_good_token_with_a_read_or_admin_scope_is_accepted() {
        for scope in [
            "bosh.admin".to_string(),
            "bosh.read".to_string(),
            format!("bosh.{UUID}.admin"),
            format!("bosh.{UUID}.read"),
        ] {
            let token = sign(&claims(&["openid", &scope]));
            assert_eq!(
                check(&token),
                Ok(TokenCaller {
                    name: "ops".into(),
                    admin: scope.ends_with(".admin"),
                }),
                "{scope}"
            );
        }
        for alg in [Algorithm::RS384, Algorithm::RS512] {
            let token = sign_with(KEY_1, Some("key-1"), alg, &claims(&["bosh.read"]));
            assert!(check(&token).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn a_token_without_the_scope_is_refused_with_403() {
        for scopes in [
            vec!["bosh.teams.x.read"],
            vec!["bosh.teams.x.admin", "openid"],
            vec!["bosh.other-uuid.admin"],
            vec![],
        ] {
            let refusal = check(&sign(&claims(&scopes))).unwrap_err();
            assert_eq!(refusal, Refusal::Scope, "{scopes:?}");
            assert_eq!(refusal.status(), http::StatusCode::FORBIDDEN);
        }
        // The UUID-qualified scopes need the director's UUID.
        let token = sign(&claims(&[&format!("bosh.{UUID}.read")]));
        assert_eq!(verify(&token, &keys(), None), Err(Refusal::Scope));
    }

    #[test]
    fn an_expired_token_is_refused_without_leeway() {
        let mut expired = claims(&["bosh.admin"]);
        expired["exp"] = json!(now() - 1);
        let refusal = check(&sign(&expired)).unwrap_err();
        assert_eq!(refusal, Refusal::Expired);
        assert_eq!(refusal.status(), http::StatusCode::UNAUTHORIZED);
        let mut no_exp = claims(&["bosh.admin"]);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(&sign(&no_exp)), Err(Refusal::Malformed));
        let mut text_exp = claims(&["bosh.admin"]);
        text_exp["exp"] = json!((now() + 600).to_string());
        assert!(check(&sign(&text_exp)).is_err());
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let forged = sign_with(
            KEY_2,
            Some("key-1"),
            Algorithm::RS256,
            &claims(&["bosh.admin"]),
        );
        assert_eq!(check(&forged), Err(Refusal::BadSignature));
        // A good token whose claims were changed afterwards.
        let token = sign(&claims(&["bosh.teams.x.read"]));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] = b64.encode(claims(&["bosh.admin"]).to_string());
        assert_eq!(check(&parts.join(".")), Err(Refusal::BadSignature));
    }

    #[test]
    fn a_token_naming_an_unknown_key_is_refused() {
        let token = sign_with(
            KEY_2,
            Some("key-2"),
            Algorithm::RS256,
            &claims(&["bosh.admin"]),
        );
        assert_eq!(check(&token), Err(Refusal::UnknownKey));
        let unnamed = sign_with(KEY_1, None, Algorithm::RS256, &claims(&["bosh.admin"]));
        assert_eq!(check(&unnamed), Err(Refusal::UnknownKey));
    }

    #[test]
    fn alg_none_and_hmac_tokens_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(claims(&["bosh.admin"]).to_string());
        for alg in ["none", "None", "NONE"] {
            let header = b64.encode(json!({"alg": alg, "kid": "key-1", "typ": "JWT"}).to_string());
            assert_eq!(
                check(&format!("{header}.{body}.")),
                Err(Refusal::Algorithm),
                "{alg}"
            );
        }
        // HS256 keyed with the public key's text: the classic confusion attack.
        let public_pem = serde_json::from_str::<Value>(TOKEN_KEYS).unwrap()["keys"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("key-1".into());
        let hmac = jsonwebtoken::encode(
            &header,
            &claims(&["bosh.admin"]),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&hmac), Err(Refusal::Algorithm));
    }

    #[test]
    fn refresh_tokens_and_garbage_are_refused() {
        let mut refresh = claims(&["bosh.admin"]);
        refresh["jti"] = json!("0f1e2d-r");
        assert_eq!(check(&sign(&refresh)), Err(Refusal::NotAccessToken));
        let mut no_jti = claims(&["bosh.admin"]);
        no_jti.as_object_mut().unwrap().remove("jti");
        assert_eq!(check(&sign(&no_jti)), Err(Refusal::NotAccessToken));
        for garbage in ["", "a.b", "a.b.c", "not a token", "not.a.token"] {
            assert_eq!(check(garbage), Err(Refusal::Malformed), "{garbage}");
        }
    }

    #[test]
    fn the_authorization_header_must_be_bearer_and_one_token() {
        assert_eq!(bearer_token("bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("BEARER abc"), Ok("abc"));
        for bad in [
            "abc",
            "Basic abc",
            "bearer",
            "bearer ",
            "bearer a b",
            "bearer  abc",
        ] {
            assert_eq!(bearer_token(bad), Err(Refusal::NotBearer), "{bad:?}");
        }
    }

    /// A stand-in UAA serving `/token_keys` from a swappable body, counting the fetches.
    async fn uaa(body: Arc<std::sync::Mutex<String>>, fetches: Arc<AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/token_keys",
            axum::routing::get(move || {
                let body = body.lock().unwrap().clone();
                fetches.fetch_add(1, Ordering::SeqCst);
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn keys_are_fetched_once_and_again_for_an_unknown_kid_at_most_every_interval() {
        let body = Arc::new(std::sync::Mutex::new(TOKEN_KEYS.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let url = uaa(body.clone(), fetches.clone()).await;
        let keys = UaaKeys::new(reqwest::Client::new(), &url, None);
        let good = format!("bearer {}", sign(&claims(&["bosh.read"])));
        for _ in 0..3 {
            assert!(keys.check(&good).await.is_ok());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");
        // UAA rotates to key-2: the first token naming it triggers a fetch, but not before
        // the interval since the last one has passed.
        *body.lock().unwrap() = TOKEN_KEYS_ROTATED.to_string();
        let new = format!(
            "bearer {}",
            sign_with(
                KEY_2,
                Some("key-2"),
                Algorithm::RS256,
                &claims(&["bosh.read"])
            )
        );
        assert_eq!(keys.check(&new).await, Err(Refusal::UnknownKey));
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "too soon to fetch again");
        keys.held.lock().await.fetched_at = Some(Instant::now() - KEY_REFRESH_INTERVAL);
        assert!(keys.check(&new).await.is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_eq!(
            keys.check(&good).await,
            Err(Refusal::UnknownKey),
            "key-1 retired"
        );
    }

    #[tokio::test]
    async fn unreachable_uaa_is_503_not_a_pass() {
        let keys = UaaKeys::new(reqwest::Client::new(), "http://127.0.0.1:9", None);
        let good = format!("bearer {}", sign(&claims(&["bosh.read"])));
        let refusal = keys.check(&good).await.unwrap_err();
        assert_eq!(refusal, Refusal::KeysUnavailable);
        assert_eq!(refusal.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
