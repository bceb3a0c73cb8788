//! Sandboxes.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::backend;
use crate::backend::http::IDEMPOTENCY_HEADER;
use crate::backend::Backend;
use crate::model::{
    CreatedSandbox, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec, SandboxState,
};
use crate::server::error::{ApiJson, ApiPath, ApiResult};
use crate::server::gate::Caller;
use crate::server::AppState;
use crate::{Error, ErrorBody};

/// The Idempotency-Key header, if any.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| {
            Error::invalid("Idempotency-Key must be 1 to 256 visible ASCII characters")
        })?;
    Ok(Some(key.to_string()))
}

/// Creates a sandbox from the template's warm pool (or as `on_empty`
/// says); returns once it is ready. A replayed Idempotency-Key answers 200
/// with the original sandbox. With `token` the answer carries a bearer
/// token scoped to the sandbox (shown once: a replay issues a new one).
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = SandboxSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the create safe to retry")),
    responses((status = 201, body = CreatedSandbox), (status = 200, description = "Idempotent replay", body = CreatedSandbox),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 504, body = ErrorBody)))]
pub(crate) async fn create(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<SandboxSpec>,
) -> ApiResult<(StatusCode, Json<CreatedSandbox>)> {
    let key = idempotency_key(&headers)?;
    let created = backend(&state, &caller).create(spec, key).await?;
    let status = if created.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(CreatedSandbox {
            sandbox: created.sandbox,
            token: created.token,
        }),
    ))
}

/// `GET /v1/sandboxes` query, for the document (parsed by hand: `label`
/// repeats).
#[derive(Debug, Deserialize, IntoParams)]
#[allow(dead_code)] // read by utoipa only
pub(crate) struct ListQuery {
    /// `key=value`; repeat to require several labels.
    #[serde(default)]
    label: Vec<String>,
    /// `ready` or `ended` (default: the live ones).
    #[serde(default)]
    state: Option<String>,
}

/// The filter of a `GET /v1/sandboxes` query (parsed by hand: `label`
/// repeats).
pub(crate) fn parse_list_query(query: &str) -> Result<SandboxFilter, Error> {
    let mut filter = SandboxFilter::default();
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| Error::invalid(format!("query: {e}")))?;
    for (k, v) in pairs {
        match k.as_str() {
            "label" => {
                let (lk, lv) = v
                    .split_once('=')
                    .ok_or_else(|| Error::invalid(format!("label {v:?}: expected key=value")))?;
                filter.labels.insert(lk.to_string(), lv.to_string());
            }
            "state" => filter.state = Some(v.parse::<SandboxState>()?),
            other => return Err(Error::invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(filter)
}

/// Lists sandboxes by labels and state.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListQuery),
    responses((status = 200, body = Vec<SandboxInfo>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    state: State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<SandboxInfo>>> {
    let filter = parse_list_query(uri.query().unwrap_or(""))?;
    Ok(Json(backend(&state, &caller).list(filter).await?))
}

/// A sandbox (counts as activity); 410 with the reason once it ended.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn get(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(backend(&state, &caller).get(id).await?))
}

/// Changes labels (an empty value removes one), TTL and idle timeout.
#[utoipa::path(patch, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SandboxPatch,
    responses((status = 200, body = SandboxInfo), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn patch(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(p): ApiJson<SandboxPatch>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(backend(&state, &caller).patch(id, p).await?))
}

/// Deletes a sandbox: its VM is killed and its files removed; returns the
/// tombstone.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn delete(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(backend(&state, &caller).delete(id).await?))
}

/// Marks the sandbox active (pushes its idle deadline back).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/keepalive", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn keepalive(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(backend(&state, &caller).keepalive(id).await?))
}
