//! Health, info, metrics, the OpenAPI document, templates, events.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::backend;
use crate::backend::Backend;
use crate::model::{Event, Health, Info, TemplateInfo};
use crate::server::error::{ApiPath, ApiQuery, ApiResult};
use crate::server::gate::Caller;
use crate::server::{ndjson, AppState};
use crate::ErrorBody;

/// Liveness: `ok`, or `draining` during shutdown.
#[utoipa::path(get, path = "/v1/health", tag = "system",
    responses((status = 200, body = Health)))]
pub(crate) async fn health(state: State<AppState>, caller: Caller) -> ApiResult<Json<Health>> {
    Ok(Json(backend(&state, &caller).health().await?))
}

/// Version, limits in use, allowed ranges of timeouts.
#[utoipa::path(get, path = "/v1/info", tag = "system",
    responses((status = 200, body = Info)))]
pub(crate) async fn info(state: State<AppState>, caller: Caller) -> ApiResult<Json<Info>> {
    Ok(Json(backend(&state, &caller).info().await?))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(state: State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.core.metrics_text(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(crate) async fn openapi(state: State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}

/// Templates (the pool keys) and whether they can start VMs.
#[utoipa::path(get, path = "/v1/templates", tag = "pools",
    responses((status = 200, body = Vec<TemplateInfo>)))]
pub(crate) async fn templates(
    state: State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TemplateInfo>>> {
    Ok(Json(backend(&state, &caller).templates().await?))
}

/// Removes a registry template (`kiln template build`) that nothing uses;
/// 409 `template_in_use` while its pool target is above 0 or a VM or
/// sandbox uses it; built-in and configured templates cannot be removed
/// (400).
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "pools",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "Removed"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_template(
    state: State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    backend(&state, &caller).delete_template(name).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Events after this sequence number (0: from the oldest kept).
    #[serde(default)]
    after_seq: u64,
}

/// Lifecycle events as NDJSON (created, ready, expiring, expired,
/// deleted, pool_error): stored ones after `after_seq`, then live ones;
/// `{}` lines keep the stream alive.
#[utoipa::path(get, path = "/v1/events", tag = "system", params(EventsQuery),
    responses((status = 200, description = "NDJSON stream of Event", body = Event, content_type = "application/x-ndjson"),
              (status = 400, body = ErrorBody)))]
pub(crate) async fn events(
    state: State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let events = backend(&state, &caller).events(q.after_seq).await?;
    // An error mid-stream ends it (the client resumes from its last seq).
    let events = events
        .take_while(|e| futures_util::future::ready(e.is_ok()))
        .filter_map(|e| futures_util::future::ready(e.ok()))
        .boxed();
    Ok(ndjson::response(events, |_| serde_json::json!({})))
}
