//! Execs: NDJSON event streams, or one JSON result with `?wait=true`.

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::backend;
use super::sandboxes::idempotency_key;
use crate::backend::Backend;
use crate::model::{ExecEvent, ExecResult, ExecSpec};
use crate::server::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::server::peer::Peer;
use crate::server::{ndjson, AppState};
use crate::ErrorBody;

/// `POST .../execs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecQuery {
    /// Answer once, with the result and the whole output, instead of
    /// streaming.
    #[serde(default)]
    wait: bool,
}

/// Runs a command. The response streams NDJSON events: `started`,
/// `stdout`/`stderr` (`data`, or `data_b64` when not UTF-8), `keepalive`
/// while quiet, then `exited` (exit code, signal, timed_out, duration) or
/// `error`. Closing the stream kills the command. With `?wait=true` the
/// answer is one `ExecResult` with the output (at most the agent's output
/// cap, 16 MiB).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ExecQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "A replay returns the first exec's result")),
    request_body = ExecSpec,
    responses((status = 200, description = "NDJSON stream of ExecEvent, or with ?wait=true an ExecResult",
               body = ExecEvent, content_type = "application/x-ndjson"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn start(
    state: State<AppState>,
    peer: ConnectInfo<Peer>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<ExecSpec>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let events = backend(&state, &peer).exec(id, spec, key).await?;
    if !q.wait {
        let events = events
            .map(|e| match e {
                Ok(e) => e,
                Err(error) => ExecEvent::Error {
                    seq: u64::MAX,
                    error: error.to_body().error,
                },
            })
            .boxed();
        return Ok(ndjson::response(events, |last: Option<&ExecEvent>| {
            ExecEvent::Keepalive {
                seq: last.map_or(0, seq_of),
            }
        }));
    }
    let out = crate::kiln::Exec::from_events(events).output().await?;
    Ok(Json(ExecResult {
        stdout: Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        stderr: Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        ..out.result
    })
    .into_response())
}

fn seq_of(e: &ExecEvent) -> u64 {
    match e {
        ExecEvent::Started { seq, .. }
        | ExecEvent::Stdout { seq, .. }
        | ExecEvent::Stderr { seq, .. }
        | ExecEvent::Keepalive { seq }
        | ExecEvent::Exited { seq, .. }
        | ExecEvent::Error { seq, .. } => *seq,
    }
}
