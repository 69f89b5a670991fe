//! Injected failures: what the director (or UAA) does wrong, and where.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    #[default]
    None,
    /// 500 with an empty body: an unhandled exception in the director.
    #[serde(rename = "http_500")]
    Http500,
    /// Never answers until the fault is cleared or the client gives up.
    Hang,
    /// Every bearer token (or Basic credential) gets the plain-text 401.
    RejectTokens,
    /// nginx's 502 page: puma is down.
    BadGateway,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub mode: FaultMode,
    /// A prefix of the request's path and query: `/deployments/x`, or
    /// `/configs?type=boshy-vips` to break the reads of one config type while writes
    /// (`POST /configs`, no query) and other types still work.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// The page nginx serves when its upstream is gone.
pub const NGINX_BAD_GATEWAY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n\
<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

impl Fault {
    /// Without a prefix a fault hits the director only (so a client can still get tokens and
    /// see the director fail); with one it hits whichever server serves matching requests,
    /// which lets a test break UAA with `/oauth`. `target` is the path and query.
    pub fn applies_to(&self, target: &str, is_director: bool) -> bool {
        self.mode != FaultMode::None
            && match &self.path_prefix {
                Some(prefix) => target.starts_with(prefix.as_str()),
                None => is_director,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_follows_the_prefix_or_defaults_to_the_director() {
        let everywhere = Fault {
            mode: FaultMode::Http500,
            path_prefix: None,
        };
        assert!(everywhere.applies_to("/deployments", true));
        assert!(!everywhere.applies_to("/oauth/token", false));
        let uaa = Fault {
            mode: FaultMode::Hang,
            path_prefix: Some("/oauth".into()),
        };
        assert!(uaa.applies_to("/oauth/token", false));
        assert!(!uaa.applies_to("/deployments", true));
        assert!(!Fault::default().applies_to("/deployments", true));
    }

    #[test]
    fn a_prefix_with_a_query_breaks_only_those_reads() {
        let vip_reads = Fault {
            mode: FaultMode::Http500,
            path_prefix: Some("/configs?type=boshy-vips".into()),
        };
        assert!(vip_reads.applies_to("/configs?type=boshy-vips&name=boshy&latest=true", true));
        assert!(!vip_reads.applies_to("/configs?type=boshy-istio&latest=true", true));
        assert!(
            !vip_reads.applies_to("/configs", true),
            "a POST has no query"
        );
    }

    #[test]
    fn parses_the_control_api_body() {
        let fault: Fault =
            serde_json::from_str(r#"{"mode":"reject_tokens","path_prefix":"/deployments/x"}"#)
                .unwrap();
        assert_eq!(fault.mode, FaultMode::RejectTokens);
        assert_eq!(fault.path_prefix.as_deref(), Some("/deployments/x"));
        let http_500: Fault = serde_json::from_str(r#"{"mode":"http_500"}"#).unwrap();
        assert_eq!(http_500.mode, FaultMode::Http500);
        assert!(serde_json::from_str::<Fault>(r#"{"mode":"explode"}"#).is_err());
    }
}
