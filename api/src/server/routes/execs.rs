//! Execs: start (NDJSON event stream, one JSON result with `?wait=true`, or
//! at once with `?detach=true`), list, attach to the output from a
//! sequence number, write stdin at an offset, signal. The program lives in
//! the sandbox's agent: an HTTP client that leaves ends only its stream.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::backend;
use super::sandboxes::idempotency_key;
use crate::backend::http::OFFSET_HEADER;
use crate::backend::{Backend, ExecEvents};
use crate::core::MAX_STDIN_WRITE;
use crate::model::{ExecEvent, ExecInfo, ExecResult, ExecSpec, SignalRequest, StdinWritten};
use crate::server::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::server::gate::Caller;
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
    /// Answer at once with the exec (`ExecInfo`); the program runs on.
    #[serde(default)]
    detach: bool,
}

/// Starts a command. The response streams NDJSON events: `started`,
/// `stdout`/`stderr` (`data`, or `data_b64` when not UTF-8, with the
/// output's `seq`), `gap` (output evicted before this reader got it),
/// `keepalive` while quiet, then `exited` (exit code, signal, timed_out,
/// duration) or `error`. The command runs on if the client goes away
/// (attach again with `GET .../output?after_seq=`), unless the body asks for
/// `kill_on_disconnect`. With `?wait=true` the answer is one `ExecResult`
/// with the output (at most the agent's output cap, 16 MiB); with
/// `?detach=true` it is the `ExecInfo` (201), at once.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ExecQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "A replay returns the first exec")),
    request_body = ExecSpec,
    responses((status = 200, description = "NDJSON stream of ExecEvent, or with ?wait=true an ExecResult",
               body = ExecEvent, content_type = "application/x-ndjson"),
              (status = 201, description = "With ?detach=true: the exec", body = ExecInfo),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn start(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<ExecSpec>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    if q.wait && q.detach {
        return Err(Error::invalid("wait and detach exclude each other").into());
    }
    let backend = backend(&state, &caller);
    if q.detach {
        let info = backend.start_exec(id, spec, key).await?;
        return Ok((StatusCode::CREATED, Json(info)).into_response());
    }
    let events = backend.exec(id, spec, key).await?;
    if !q.wait {
        return Ok(stream(events));
    }
    let out = crate::kiln::collect_output(events).await?;
    Ok(Json(ExecResult {
        stdout: Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        stderr: Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        ..out.result
    })
    .into_response())
}

/// Exec events as NDJSON, with keepalives.
fn stream(events: ExecEvents) -> Response {
    let events = events
        .map(|e| match e {
            Ok(e) => e,
            Err(error) => ExecEvent::Error {
                seq: u64::MAX,
                error: error.to_body().error,
            },
        })
        .boxed();
    ndjson::response(events, |last: Option<&ExecEvent>| ExecEvent::Keepalive {
        seq: last.map_or(0, ExecEvent::seq),
    })
}

/// Lists a sandbox's execs, newest first (at most 256): running, exited,
/// or `gone` (the agent forgot it; it keeps the newest finished ones).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Vec<ExecInfo>), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn list(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<ExecInfo>>> {
    Ok(Json(backend(&state, &caller).execs(id).await?))
}

/// One exec.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec}", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec" = String, Path, description = "Exec id")),
    responses((status = 200, body = ExecInfo), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn get(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, exec)): ApiPath<(String, String)>,
) -> ApiResult<Json<ExecInfo>> {
    Ok(Json(backend(&state, &caller).exec_info(id, exec).await?))
}

/// `GET .../output` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputQuery {
    /// Output chunks after this sequence number (0: from the start).
    #[serde(default)]
    after_seq: u64,
    /// Keep streaming until the program exits (default); `false` ends
    /// with `caught_up` once the output so far was sent.
    #[serde(default = "yes")]
    follow: bool,
}

fn yes() -> bool {
    true
}

/// Attaches to an exec's output: NDJSON events after `after_seq` (a `gap`
/// line first when some were evicted from the agent's buffer), then
/// live ones and `exited`, or with `follow=false` `caught_up`. Leaving
/// ends only the attach.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec}/output", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec" = String, Path, description = "Exec id"),
           OutputQuery),
    responses((status = 200, description = "NDJSON stream of ExecEvent", body = ExecEvent,
               content_type = "application/x-ndjson"),
              (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
pub(crate) async fn output(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, exec)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> ApiResult<Response> {
    let events = backend(&state, &caller)
        .attach(id, exec, q.after_seq, q.follow)
        .await?;
    Ok(stream(events))
}

/// `POST .../stdin` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StdinQuery {
    /// Where the body starts in the program's stdin. Bytes the program
    /// already accepted (a retry) are not written again; an offset past
    /// them is refused (409). Without it (and without the `X-Kiln-Offset`
    /// header) the body goes after everything accepted so far, which is
    /// not safe to retry.
    #[serde(default)]
    offset: Option<u64>,
    /// Close stdin after the body (the program reads end of file).
    #[serde(default)]
    close: bool,
}

/// The stdin offset from the query or the `X-Kiln-Offset` header.
fn offset_of(query: Option<u64>, headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let header = headers
        .get(OFFSET_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::invalid("X-Kiln-Offset must be a byte offset"))
        })
        .transpose()?;
    match (query, header) {
        (Some(q), Some(h)) if q != h => Err(Error::invalid(
            "the offset query and the X-Kiln-Offset header disagree",
        )),
        (q, h) => Ok(q.or(h)),
    }
}

/// Writes the body (raw bytes, at most 8 MiB) to an exec's stdin (an exec
/// started with `stdin_open`). The answer says how many bytes of stdin the
/// program accepted in total: the offset of the next write, less than the
/// body's end when the program did not read in time.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs/{exec}/stdin", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec" = String, Path, description = "Exec id"),
           StdinQuery, ("X-Kiln-Offset" = Option<u64>, Header, description = "The offset, instead of the query")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StdinWritten), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 410, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn stdin(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, exec)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<StdinQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StdinWritten>> {
    let offset = offset_of(q.offset, &headers)?;
    let body = axum::body::to_bytes(body, MAX_STDIN_WRITE)
        .await
        .map_err(|_| {
            Error::TooLarge(format!(
                "a stdin write has at most {MAX_STDIN_WRITE} bytes (or the body broke off)"
            ))
        })?;
    let written = backend(&state, &caller)
        .write_stdin(id, exec, offset, body, q.close)
        .await?;
    Ok(Json(written))
}

/// Sends a signal (`{"signal": "TERM"}` or `15`) to an exec's process
/// group.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs/{exec}/signal", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec" = String, Path, description = "Exec id")),
    request_body = SignalRequest,
    responses((status = 204, description = "Sent"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn signal(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, exec)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> ApiResult<StatusCode> {
    let signal = req.signal.number()?;
    backend(&state, &caller).signal(id, exec, signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_comes_from_the_query_or_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(offset_of(None, &h).expect("none"), None);
        assert_eq!(offset_of(Some(4), &h).expect("query"), Some(4));
        h.insert(OFFSET_HEADER, "7".parse().expect("value"));
        assert_eq!(offset_of(None, &h).expect("header"), Some(7));
        assert_eq!(offset_of(Some(7), &h).expect("both"), Some(7));
        assert!(offset_of(Some(4), &h).is_err());
        h.insert(OFFSET_HEADER, "-1".parse().expect("value"));
        assert!(offset_of(None, &h).is_err());
    }
}
