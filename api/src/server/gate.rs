//! The gate in front of every route. A unix-socket peer is an
//! administrator (the socket is owner-only). A TCP client must send
//! `Authorization: Bearer <token>` with a token that verifies, has not
//! expired, whose sandbox is live (else 401 `unauthenticated`) and that
//! allows this request (else 403 `permission_denied`). Every refusal is
//! an audit record; past [`DENIALS_PER_SEC`] a second the records are
//! counted instead and the count goes with the next one written, so a
//! client hammering the listener cannot flood the audit database.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::peer::Peer;
use super::AppState;
use crate::auth::access::{self, Need};
use crate::auth::{Actor, Claims, TokenError};
use crate::core::Core;
use crate::model::{AuditKind, AuditResult, AuditWhat};
use crate::Error;

/// Refusals recorded per second at most.
pub(crate) const DENIALS_PER_SEC: u32 = 50;

/// Who a request acts for, as the gate decided.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError(Error::Internal("the request bypassed the gate".into())))
    }
}

/// A refused request.
struct Denial {
    error: Error,
    subject: Option<String>,
    sandbox: Option<String>,
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        Error::Unauthenticated(
            "this listener needs a sandbox token: Authorization: Bearer <token>".into(),
        )
    })?;
    let text = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("the Authorization header is not ASCII".into()))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(Error::Unauthenticated(
            "the Authorization header must be Bearer <token>".into(),
        )),
    }
}

/// Checks a TCP request's token against what the route needs.
fn check(core: &Core, req: &Request) -> Result<Claims, Denial> {
    let need = access::need(req.method(), req.uri().path());
    let path_sandbox = match &need {
        Need::Sandbox { id, .. } => Some(id.clone()),
        _ => None,
    };
    let token = bearer(req.headers()).map_err(|error| Denial {
        error,
        subject: None,
        sandbox: path_sandbox.clone(),
    })?;
    let claims = core.verify_token(token).map_err(|e| Denial {
        sandbox: match &e {
            TokenError::SandboxEnded(id) => Some(id.clone()),
            _ => path_sandbox.clone(),
        },
        error: Error::Unauthenticated(e.to_string()),
        subject: None,
    })?;
    access::check(&claims, &need).map_err(|r| Denial {
        error: Error::PermissionDenied(r.to_string()),
        subject: Some(claims.sub.clone()),
        sandbox: path_sandbox,
    })?;
    Ok(claims)
}

/// How many refusals were recorded in the current second, and how many
/// were not.
#[derive(Debug)]
pub(crate) struct DenialBudget {
    state: Mutex<(Instant, u32, u64)>,
}

impl Default for DenialBudget {
    fn default() -> Self {
        DenialBudget {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }
}

impl DenialBudget {
    /// `Some(suppressed before this one)` when this refusal may be
    /// recorded, `None` when it is only counted.
    fn take(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(st.0) >= Duration::from_secs(1) {
            st.0 = now;
            st.1 = 0;
        }
        if st.1 >= DENIALS_PER_SEC {
            st.2 += 1;
            return None;
        }
        st.1 += 1;
        Some(std::mem::take(&mut st.2))
    }
}

fn record(state: &AppState, req: &Request, peer: &Peer, denial: &Denial) {
    let Some(suppressed) = state.denials.take(Instant::now()) else {
        return;
    };
    let mut detail = format!("{} {}", req.method(), req.uri().path());
    if let Some(addr) = peer.tcp {
        detail.push_str(&format!(" from {addr}"));
    }
    if suppressed > 0 {
        detail.push_str(&format!(" ({suppressed} earlier refusals not recorded)"));
    }
    let actor = match &denial.subject {
        Some(subject) => Actor::Token {
            subject: subject.clone(),
        },
        None => Actor::Uid(None),
    };
    state.core.audit(
        &actor,
        AuditKind::TokenDenied,
        denial.sandbox.as_deref(),
        AuditWhat {
            detail: Some(detail),
            ..AuditWhat::default()
        },
        AuditResult::denied({
            let e = denial.error.to_body().error;
            format!("{}: {}", e.code, e.message)
        }),
    );
}

/// The middleware: decides the [`Caller`] or answers 401/403.
pub(super) async fn gate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let actor = if peer.tcp.is_none() {
        Actor::Uid(peer.uid)
    } else {
        match check(&state.core, &req) {
            Ok(claims) => Actor::Token {
                subject: claims.sub,
            },
            Err(denial) => {
                record(&state, &req, &peer, &denial);
                return ApiError(denial.error).into_response();
            }
        }
    };
    req.extensions_mut().insert(Caller(actor));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Err(Error::Unauthenticated(_))));
        h.insert(
            header::AUTHORIZATION,
            "Bearer kt1.a.b".parse().expect("value"),
        );
        assert_eq!(bearer(&h).expect("bearer"), "kt1.a.b");
        h.insert(
            header::AUTHORIZATION,
            "bearer  kt1.a.b ".parse().expect("value"),
        );
        assert_eq!(bearer(&h).expect("any case"), "kt1.a.b");
        h.insert(header::AUTHORIZATION, "Basic dTpw".parse().expect("value"));
        assert!(matches!(bearer(&h), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn refusals_are_recorded_at_a_bounded_rate() {
        let budget = DenialBudget::default();
        let t0 = Instant::now();
        for _ in 0..DENIALS_PER_SEC {
            assert_eq!(budget.take(t0), Some(0));
        }
        assert_eq!(budget.take(t0), None);
        assert_eq!(budget.take(t0), None);
        // The next second: recorded again, with the count of the unrecorded.
        assert_eq!(budget.take(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(budget.take(t0 + Duration::from_secs(1)), Some(0));
    }
}
