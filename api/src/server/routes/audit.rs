//! The audit trail.

use axum::extract::State;
use axum::Json;

use super::backend;
use crate::backend::Backend;
use crate::model::{AuditFilter, AuditRecord};
use crate::server::error::{ApiQuery, ApiResult};
use crate::server::gate::Caller;
use crate::server::AppState;
use crate::ErrorBody;

/// Audit records, oldest first: the newest `limit` (default 1000) that
/// match every filter given. Each says who (a socket peer's `uid` or a
/// token's `subject`), which sandbox, what (`kind`, argv, path, bytes,
/// signal) and how it went (`outcome`: ok, error or denied, with the
/// `reason`; an exec's end with its exit code and duration).
#[utoipa::path(get, path = "/v1/audit", tag = "system", params(AuditFilter),
    responses((status = 200, body = Vec<AuditRecord>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    state: State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    Ok(Json(backend(&state, &caller).audit(filter).await?))
}
