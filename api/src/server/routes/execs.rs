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
use crate::{Error, ErrorBody};

/// `POST .../execs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecQuery {
    /// Answer once, with the result and the whole output, instead of
    /// streaming.
    #[serde(default)]
    wait: bool,
}

/// Most output a `?wait=true` answer collects (stdout + stderr); the
/// agent's own cap (16 MiB) stops the program's output before that.
const MAX_WAIT_OUTPUT: usize = 32 << 20;

/// Runs a command. The response streams NDJSON events: `started`,
/// `stdout`/`stderr` (`data`, or `data_b64` when not UTF-8), `keepalive`
/// while quiet, then `exited` (exit code, signal, timed_out, duration) or
/// `error`. Closing the stream kills the command. With `?wait=true` the
/// answer is one `ExecResult` with the output.
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
    let mut events = backend(&state, &peer).exec(id, spec, key).await?;
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
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout { data, data_b64, .. } => {
                stdout.extend(ExecEvent::bytes(&data, &data_b64));
            }
            ExecEvent::Stderr { data, data_b64, .. } => {
                stderr.extend(ExecEvent::bytes(&data, &data_b64));
            }
            ExecEvent::Exited { result, .. } => {
                return Ok(Json(ExecResult {
                    stdout: Some(String::from_utf8_lossy(&stdout).into_owned()),
                    stderr: Some(String::from_utf8_lossy(&stderr).into_owned()),
                    ..result
                })
                .into_response())
            }
            ExecEvent::Error { error, .. } => {
                return Err(Error::from_body(ErrorBody { error }).into())
            }
            ExecEvent::Started { .. } | ExecEvent::Keepalive { .. } => {}
        }
        if stdout.len() + stderr.len() > MAX_WAIT_OUTPUT {
            return Err(Error::TooLarge(format!(
                "more than {MAX_WAIT_OUTPUT} bytes of output: stream it instead of ?wait=true"
            ))
            .into());
        }
    }
    Err(Error::Guest("the exec ended without a result".into()).into())
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
