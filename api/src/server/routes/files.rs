//! Files: raw bodies, SHA-256 in headers; listing and directory operations.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::backend;
use crate::backend::http::{MODE_HEADER, SHA256_HEADER, SIZE_HEADER};
use crate::backend::Backend;
use crate::model::{FileEntry, FileWritten};
use crate::server::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::server::gate::Caller;
use crate::server::AppState;
use crate::{Error, ErrorBody};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Error::invalid(format!("header {name} is not ASCII")).into())
        })
        .transpose()
}

/// Writes the request body to the guest file (parents made, replaced
/// atomically). `X-Kiln-Mode` (octal) sets its permission bits; with
/// `X-Kiln-Sha256` the body must have that SHA-256, else nothing is
/// written. The path may hold slashes; relative paths start at the home.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
           ("path" = String, Path, description = "Guest path (slashes allowed; %2F first for an absolute path)"),
           ("X-Kiln-Mode" = Option<String>, Header, description = "Permission bits, octal (default 644)"),
           ("X-Kiln-Sha256" = Option<String>, Header, description = "SHA-256 the body must have")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileWritten), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn put(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, path)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mode = header_str(&headers, MODE_HEADER)?
        .map(|m| {
            u32::from_str_radix(m, 8)
                .map_err(|_| Error::invalid(format!("{MODE_HEADER} {m:?} is not octal")))
        })
        .transpose()?;
    let sha256 = header_str(&headers, SHA256_HEADER)?.map(str::to_ascii_lowercase);
    let reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let written = backend(&state, &caller)
        .write_file(id, path, mode, Box::new(reader), sha256)
        .await?;
    Ok((
        [(SHA256_HEADER, written.sha256.clone())],
        Json::<FileWritten>(written),
    )
        .into_response())
}

/// Reads a guest file. The daemon verifies it (the agent's SHA-256)
/// before the first byte, so `X-Kiln-Sha256` and `X-Kiln-Size` lead the
/// body.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
           ("path" = String, Path, description = "Guest path")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream",
               headers(("X-Kiln-Sha256" = String, description = "SHA-256, hex"), ("X-Kiln-Size" = u64, description = "Bytes"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn get(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let d = backend(&state, &caller).read_file(id, path).await?;
    let body = Body::from_stream(d.body.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, d.size.to_string()),
            (SHA256_HEADER.parse().expect("valid header name"), d.sha256),
            (
                SIZE_HEADER.parse().expect("valid header name"),
                d.size.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The headers of a GET (size and SHA-256) without the body.
#[utoipa::path(head, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
           ("path" = String, Path, description = "Guest path")),
    responses((status = 200, description = "Size and SHA-256 in the headers"),
              (status = 404, description = "No such file or sandbox")))]
pub(crate) async fn head(
    state: State<AppState>,
    caller: Caller,
    path: ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let full = get(state, caller, path).await?;
    let (parts, _) = full.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

/// `DELETE .../files/{path}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    /// Remove a non-empty directory and everything in it.
    #[serde(default)]
    recursive: bool,
}

/// Removes a file, symlink or directory.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
           ("path" = String, Path, description = "Guest path"), RemoveQuery),
    responses((status = 200, description = "Removed"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn delete(
    state: State<AppState>,
    caller: Caller,
    ApiPath((id, path)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    backend(&state, &caller)
        .remove(id, path, q.recursive)
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// `?path=` of list and stat.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathQuery {
    /// Guest path (default: the home).
    #[serde(default)]
    path: Option<String>,
}

/// Lists a directory, sorted by name.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/fs/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, body = Vec<FileEntry>), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn list(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<Vec<FileEntry>>> {
    let path = q.path.unwrap_or_else(|| ".".into());
    Ok(Json(backend(&state, &caller).list_dir(id, path).await?))
}

/// Describes one path (a symlink itself).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/fs/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, body = FileEntry), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub(crate) async fn stat(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<FileEntry>> {
    let path = q.path.unwrap_or_else(|| ".".into());
    Ok(Json(backend(&state, &caller).stat(id, path).await?))
}

/// `fs/mkdir` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mkdir {
    /// Guest path.
    pub(crate) path: String,
    /// Make missing parents (an existing directory is fine then).
    #[serde(default)]
    pub(crate) parents: bool,
}

/// Makes a directory.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fs/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = Mkdir,
    responses((status = 200, description = "Made"), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn mkdir(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(m): ApiJson<Mkdir>,
) -> ApiResult<Json<serde_json::Value>> {
    backend(&state, &caller)
        .mkdir(id, m.path, m.parents)
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// `fs/rename` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rename {
    /// Existing path.
    pub(crate) from: String,
    /// New path (a file or empty directory there is replaced).
    pub(crate) to: String,
}

/// Moves a path.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fs/rename", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = Rename,
    responses((status = 200, description = "Moved"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn rename(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(r): ApiJson<Rename>,
) -> ApiResult<Json<serde_json::Value>> {
    backend(&state, &caller).rename(id, r.from, r.to).await?;
    Ok(Json(serde_json::json!({})))
}
