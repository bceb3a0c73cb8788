//! What a request needs from a token: the route (method and path, as sent)
//! decides. Anything not listed here is for administrators only, so a
//! route added later is closed to tokens until it is listed.

use axum::http::Method;

use super::Claims;
use crate::model::TokenOp;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Any valid token (`GET /v1/health`).
    AnyToken,
    /// A token for this sandbox, allowing `op` (`None`: any token for it).
    Sandbox {
        /// The sandbox id as it appears in the path.
        id: String,
        /// The operation.
        op: Option<TokenOp>,
    },
    /// An administrator (a unix-socket peer).
    Admin,
}

/// What `method path` needs. The sandbox id is the raw path segment: a
/// percent-encoded id never equals a token's id, so it fails closed.
pub(crate) fn need(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or("").split('/').collect();
    match segments.as_slice() {
        ["v1", "health"] if method == Method::GET => Need::AnyToken,
        ["v1", "sandboxes", id, rest @ ..] if !id.is_empty() => {
            let op = match rest {
                [] if method == Method::GET => None,
                ["keepalive"] if method == Method::POST => None,
                ["execs", ..] => Some(TokenOp::Exec),
                ["files", _, ..] | ["fs", _] => Some(TokenOp::Files),
                _ => return Need::Admin,
            };
            Need::Sandbox {
                id: (*id).to_string(),
                op,
            }
        }
        _ => Need::Admin,
    }
}

/// Why a valid token is refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The route is for administrators.
    #[error("this operation needs the daemon's unix socket; tokens reach one sandbox only")]
    AdminOnly,
    /// The token is for another sandbox.
    #[error("the token is for sandbox {token}, not {path}")]
    OtherSandbox {
        /// The token's sandbox.
        token: String,
        /// The one asked for.
        path: String,
    },
    /// The token does not allow the operation.
    #[error("the token does not allow {0}")]
    Op(&'static str),
}

/// Whether `claims` allow what `need` asks for.
pub(crate) fn check(claims: &Claims, need: &Need) -> Result<(), Refusal> {
    match need {
        Need::AnyToken => Ok(()),
        Need::Admin => Err(Refusal::AdminOnly),
        Need::Sandbox { id, .. } if *id != claims.sbx => Err(Refusal::OtherSandbox {
            token: claims.sbx.clone(),
            path: id.clone(),
        }),
        Need::Sandbox { op: Some(op), .. } if !claims.allows(*op) => Err(Refusal::Op(op.as_str())),
        Need::Sandbox { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, op: Option<TokenOp>) -> Need {
        Need::Sandbox { id: id.into(), op }
    }

    #[test]
    fn routes_map_to_needs() {
        let (get, post, put, delete, patch) = (
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        );
        let exec = Some(TokenOp::Exec);
        let files = Some(TokenOp::Files);
        for (method, path, want) in [
            (&get, "/v1/health", Need::AnyToken),
            (&get, "/v1/sandboxes/sbx-1", sandbox("sbx-1", None)),
            (
                &post,
                "/v1/sandboxes/sbx-1/keepalive",
                sandbox("sbx-1", None),
            ),
            (&post, "/v1/sandboxes/sbx-1/execs", sandbox("sbx-1", exec)),
            (
                &get,
                "/v1/sandboxes/sbx-1/execs/e/output",
                sandbox("sbx-1", exec),
            ),
            (
                &post,
                "/v1/sandboxes/sbx-1/execs/e/signal",
                sandbox("sbx-1", exec),
            ),
            (
                &put,
                "/v1/sandboxes/sbx-1/files/a/b",
                sandbox("sbx-1", files),
            ),
            (&get, "/v1/sandboxes/sbx-1/fs/list", sandbox("sbx-1", files)),
            (&delete, "/v1/sandboxes/sbx-1", Need::Admin),
            (&patch, "/v1/sandboxes/sbx-1", Need::Admin),
            (&get, "/v1/sandboxes", Need::Admin),
            (&post, "/v1/sandboxes", Need::Admin),
            (&get, "/v1/sandboxes/", Need::Admin),
            (&get, "/v1/audit", Need::Admin),
            (&get, "/v1/pools", Need::Admin),
            (&get, "/metrics", Need::Admin),
            (&get, "/v1/sandboxes/sbx-1/../sbx-2/execs", Need::Admin),
            (&get, "//v1/health", Need::Admin),
            (&put, "/v1/sandboxes/sbx-1/files", Need::Admin),
        ] {
            assert_eq!(need(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn claims_are_checked_against_the_need() {
        let claims = Claims {
            sbx: "sbx-1".into(),
            ops: vec![TokenOp::Files],
            sub: "s".into(),
            exp: 1,
            jti: "j".into(),
        };
        assert_eq!(check(&claims, &Need::AnyToken), Ok(()));
        assert_eq!(check(&claims, &sandbox("sbx-1", None)), Ok(()));
        assert_eq!(
            check(&claims, &sandbox("sbx-1", Some(TokenOp::Files))),
            Ok(())
        );
        assert_eq!(
            check(&claims, &sandbox("sbx-1", Some(TokenOp::Exec))),
            Err(Refusal::Op("exec"))
        );
        assert!(matches!(
            check(&claims, &sandbox("sbx-2", Some(TokenOp::Files))),
            Err(Refusal::OtherSandbox { .. })
        ));
        assert_eq!(check(&claims, &Need::Admin), Err(Refusal::AdminOnly));
    }
}
