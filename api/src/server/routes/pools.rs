//! Warm pools.

use axum::extract::State;
use axum::Json;

use super::backend;
use crate::backend::Backend;
use crate::model::{PoolInfo, PoolUpdate};
use crate::server::error::{ApiJson, ApiPath, ApiResult};
use crate::server::gate::Caller;
use crate::server::AppState;
use crate::ErrorBody;

/// Every pool: target, ready, booting, failures, backoff.
#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolInfo>)))]
pub(crate) async fn list(state: State<AppState>, caller: Caller) -> ApiResult<Json<Vec<PoolInfo>>> {
    Ok(Json(backend(&state, &caller).pools().await?))
}

/// One template's pool.
#[utoipa::path(get, path = "/v1/pools/{template}", tag = "pools",
    params(("template" = String, Path, description = "Template name")),
    responses((status = 200, body = PoolInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    state: State<AppState>,
    caller: Caller,
    ApiPath(template): ApiPath<String>,
) -> ApiResult<Json<PoolInfo>> {
    Ok(Json(backend(&state, &caller).pool(template).await?))
}

/// Sets how many VMs the pool keeps ready (0: pooling off); kept across
/// restarts.
#[utoipa::path(put, path = "/v1/pools/{template}", tag = "pools",
    params(("template" = String, Path, description = "Template name")),
    request_body = PoolUpdate,
    responses((status = 200, body = PoolInfo), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn put(
    state: State<AppState>,
    caller: Caller,
    ApiPath(template): ApiPath<String>,
    ApiJson(update): ApiJson<PoolUpdate>,
) -> ApiResult<Json<PoolInfo>> {
    Ok(Json(
        backend(&state, &caller)
            .set_pool(template, update.target)
            .await?,
    ))
}
