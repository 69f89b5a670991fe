//! What can go wrong talking to the director or UAA, classified so that the poller can count
//! errors by kind and log each kind once.

use std::time::Duration;

/// One failed director or UAA call. `what` names the call (`GET /deployments/x`), never a
/// credential; bodies quoted here come from the server and are truncated.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error("{what}: TLS failure: {detail}")]
    Tls { what: String, detail: String },
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what}: cannot connect: {detail}")]
    Connect { what: String, detail: String },
    #[error("{what}: not authorized ({detail})")]
    Unauthorized { what: String, detail: String },
    #[error("{what}: the client lacks a scope (code 600000): {description}")]
    Scope { what: String, description: String },
    #[error("{what}: not found: {description}")]
    NotFound { what: String, description: String },
    #[error("{what}: HTTP {status}: {body}")]
    Http {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unexpected response: {detail}")]
    Decode { what: String, detail: String },
    #[error("{what}: director task {task} ended in state {state:?}: {result}")]
    TaskFailed {
        what: String,
        task: u64,
        state: String,
        result: String,
    },
    #[error("{what}: director task {task} still {state:?} after {after:?}")]
    TaskTimeout {
        what: String,
        task: u64,
        state: String,
        after: Duration,
    },
}

impl DirectorError {
    /// The metrics label and log de-duplication key.
    pub fn kind(&self) -> String {
        match self {
            DirectorError::Tls { .. } => "tls".into(),
            DirectorError::Timeout { .. } => "timeout".into(),
            DirectorError::Connect { .. } => "connect".into(),
            DirectorError::Unauthorized { .. } => "unauthorized".into(),
            DirectorError::Scope { .. } => "scope".into(),
            DirectorError::NotFound { .. } => "not_found".into(),
            DirectorError::Http { status, .. } => format!("http_{status}"),
            DirectorError::Decode { .. } => "decode".into(),
            DirectorError::TaskFailed { .. } => "task_failed".into(),
            DirectorError::TaskTimeout { .. } => "task_timeout".into(),
        }
    }

    pub(crate) fn decode(what: &str, detail: impl std::fmt::Display) -> DirectorError {
        DirectorError::Decode {
            what: what.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// Longest server body quoted in an error.
const QUOTED_BODY_CHARS: usize = 200;

/// Classifies a non-success answer (docs/director-api.md §1.3, §2): a 401 with JSON code 600000 is
/// a missing scope, any other 401 a rejected credential; a 404 carries the director's
/// description; everything else keeps its status.
pub(crate) fn classify_status(what: &str, status: u16, body: &[u8]) -> DirectorError {
    let envelope: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let code = envelope
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(|c| c.as_i64());
    let description = envelope
        .as_ref()
        .and_then(|v| v.get("description").or_else(|| v.get("error_description")))
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| quote_body(body));
    let what = what.to_string();
    match (status, code) {
        (401, Some(600_000)) => DirectorError::Scope { what, description },
        (401, _) => DirectorError::Unauthorized {
            what,
            detail: description,
        },
        (404, _) => DirectorError::NotFound { what, description },
        _ => DirectorError::Http {
            what,
            status,
            body: quote_body(body),
        },
    }
}

/// A body as text, trimmed and cut short, for error messages.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(QUOTED_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Classifies a transport failure: a timeout, a TLS failure (anywhere in the source chain,
/// including rustls errors wrapped in `io::Error`), or any other connection problem.
pub(crate) fn classify_transport(
    what: &str,
    err: &reqwest::Error,
    timeout: Duration,
) -> DirectorError {
    let what = what.to_string();
    if err.is_timeout() {
        return DirectorError::Timeout {
            what,
            after: timeout,
        };
    }
    let detail = error_chain(err);
    if is_tls_failure(err) {
        return DirectorError::Tls { what, detail };
    }
    DirectorError::Connect { what, detail }
}

fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.is::<rustls::Error>() {
        return true;
    }
    // `io::Error::source` skips the wrapped error itself (and hyper wraps io errors in io
    // errors), so look inside explicitly.
    let wrapped = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| is_tls_failure(inner));
    wrapped || err.source().is_some_and(is_tls_failure)
}

/// `a: b: c` from an error and its sources, the way anyhow's `{:#}` prints.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_401_is_unauthorized() {
        let err = classify_status("GET /deployments", 401, b"Not authorized: '/deployments'\n");
        assert_eq!(err.kind(), "unauthorized");
        assert!(err.to_string().contains("Not authorized"), "{err}");
    }

    #[test]
    fn json_401_with_code_600000_is_a_scope_error() {
        let body =
            br#"{"code":600000,"description":"Require one of the scopes: bosh.admin, bosh.read"}"#;
        let err = classify_status("GET /deployments/x", 401, body);
        assert_eq!(err.kind(), "scope");
        assert!(
            err.to_string().contains("Require one of the scopes"),
            "{err}"
        );
    }

    #[test]
    fn json_401_with_other_code_is_unauthorized() {
        let body = br#"{"error":"unauthorized","error_description":"Bad credentials"}"#;
        let err = classify_status("POST /oauth/token", 401, body);
        assert_eq!(err.kind(), "unauthorized");
        assert!(err.to_string().contains("Bad credentials"), "{err}");
    }

    #[test]
    fn server_errors_keep_their_status() {
        assert_eq!(classify_status("GET /events", 500, b"").kind(), "http_500");
        let err = classify_status("GET /events", 502, b"<html>Bad Gateway</html>");
        assert_eq!(err.kind(), "http_502");
        assert!(err.to_string().contains("Bad Gateway"), "{err}");
    }

    #[test]
    fn not_found_carries_the_description() {
        let body = br#"{"code":70000,"description":"Deployment 'x' doesn't exist"}"#;
        let err = classify_status("GET /deployments/x", 404, body);
        assert_eq!(err.kind(), "not_found");
        assert!(err.to_string().contains("doesn't exist"), "{err}");
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(10_000);
        let err = classify_status("GET /info", 500, body.as_bytes());
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_tls_failure(&wrapped));
        let twice = std::io::Error::other(wrapped);
        assert!(is_tls_failure(&twice));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_tls_failure(&plain));
    }
}
