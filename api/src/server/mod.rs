//! `kiln serve`: the HTTP/1.1 API on a unix socket, a thin axum layer over
//! the embedded core. Routes and the OpenAPI document come from the same
//! handler annotations (utoipa), so they cannot disagree.

mod error;
mod gate;
mod ndjson;
mod openapi_auth;
pub(crate) mod peer;
pub(crate) mod routes;
mod socket;

use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::core::Core;
use crate::Error;
use error::ApiError;
use peer::Peer;
use routes::{audit, execs, files, pools, sandboxes, system};

pub use socket::SocketError;

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    core: Core,
    /// The OpenAPI document, serialized once.
    openapi: Arc<String>,
    /// How many refused token requests get audit records.
    denials: Arc<gate::DenialBudget>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "Sandboxes from warm pools of microVMs. HTTP/1.1 on a unix socket \
            (its peers are administrators) and optionally on TCP, where every request needs \
            Authorization: Bearer <sandbox token> (401 without a valid one, 403 outside its \
            sandbox and operations); JSON bodies; errors as \
            {\"error\":{\"code\",\"message\",\"retryable\",\"details\"}}; \
            exec output and events as NDJSON."
    ),
    tags(
        (name = "sandboxes", description = "Create, find, keep alive, delete"),
        (name = "execs", description = "Run commands; attach to them, write their stdin, signal them"),
        (name = "files", description = "Move files in and out"),
        (name = "pools", description = "Templates and warm pools"),
        (name = "system", description = "Health, info, metrics, events, the audit trail")
    )
)]
struct ApiDoc;

/// The routes (axum) and the document (OpenAPI) from one description.
/// Guest file routes take slashes in `{path}`, so axum routes them as a
/// catch-all while the document names the parameter `{path}`.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::info))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(system::events))
        .routes(routes!(system::templates))
        .routes(routes!(system::delete_template))
        .routes(routes!(audit::list))
        .routes(routes!(pools::list))
        .routes(routes!(pools::get, pools::put))
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::patch, sandboxes::delete))
        .routes(routes!(sandboxes::keepalive))
        .routes(routes!(execs::start, execs::list))
        .routes(routes!(execs::get))
        .routes(routes!(execs::output))
        .routes(routes!(execs::stdin))
        .routes(routes!(execs::signal))
        .routes(routes!(files::list))
        .routes(routes!(files::stat))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::rename))
        .split_for_parts();
    let (schemas, paths, _single_segment) =
        routes!(files::put, files::get, files::head, files::delete);
    for (path, item) in paths.paths {
        api.paths.paths.insert(path, item);
    }
    api.components
        .get_or_insert_with(utoipa::openapi::Components::new)
        .schemas
        .extend(schemas);
    openapi_auth::document(&mut api);
    let router = router.route(
        "/v1/sandboxes/{id}/files/{*path}",
        get(files::get)
            .put(files::put)
            .head(files::head)
            .delete(files::delete)
            .layer(DefaultBodyLimit::disable()),
    );
    (router, api)
}

/// The OpenAPI document.
pub fn openapi_json() -> String {
    parts()
        .1
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

async fn no_route() -> ApiError {
    ApiError(Error::NotFound("no such route".into()))
}

/// A route that exists, asked with a method it doesn't serve: 405 with the
/// same JSON error body as every other refusal (axum's default is empty).
async fn wrong_method(req: Request) -> Response {
    let body = crate::error::ErrorBody {
        error: crate::error::ErrorDetail {
            code: "method_not_allowed".into(),
            message: format!("{} is not served on {}", req.method(), req.uri().path()),
            retryable: false,
            details: serde_json::Value::Null,
        },
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// A span per request, with the peer's uid.
async fn trace_request(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        peer_uid = ?peer.uid,
        peer_pid = ?peer.pid,
        peer_addr = ?peer.tcp,
    );
    let start = std::time::Instant::now();
    let response = next.run(req).instrument(span.clone()).await.into_response();
    // The head: a streamed body (exec output) goes on after this.
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            took_us = start.elapsed().as_micros() as u64,
            "response head"
        );
    });
    response
}

/// The whole app over `core`.
pub(crate) fn app(core: Core, max_request_bytes: u64) -> Router {
    let (router, api) = parts();
    let openapi = Arc::new(
        api.to_pretty_json()
            .expect("the OpenAPI document serializes"),
    );
    let state = AppState {
        core,
        openapi,
        denials: Arc::default(),
    };
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            gate::gate,
        ))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(
            usize::try_from(max_request_bytes).unwrap_or(usize::MAX),
        ))
        .with_state(state)
}

/// Runs `kiln serve` until SIGTERM or SIGINT, then drains: new work gets
/// 503 `draining`, running execs get the drain timeout, every VM stops.
/// With `server.listen` the same API is served on TCP too, to token
/// holders only.
pub async fn serve(config: Config) -> Result<(), SocketError> {
    config.validate().map_err(SocketError::Config)?;
    let path = config.socket_path();
    let listener = socket::bind(&path, &config.server)?;
    let tcp = match config.server.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                return Err(SocketError::Tcp { addr, source });
            }
        },
        None => None,
    };
    let max_request = config.limits.max_request_bytes;
    let core = match Core::start(config).await {
        Ok(core) => core,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(SocketError::Core(e));
        }
    };
    tracing::info!(socket = %path.display(), "kiln serve: listening");
    let app = app(core.clone(), max_request);
    let stopped = tokio_util::sync::CancellationToken::new();
    let tcp_served = tcp.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "kiln serve: listening on TCP (sandbox tokens only)");
        }
        let app = app.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        })
    });
    let drained = {
        let core = core.clone();
        let stopped = stopped.clone();
        async move {
            socket::terminated().await;
            tracing::info!("signal: draining");
            core.shutdown().await;
            stopped.cancel();
        }
    };
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(drained)
        .await;
    stopped.cancel();
    let _ = std::fs::remove_file(&path);
    if let Some(task) = tcp_served {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the TCP listener failed"),
            Err(e) => tracing::warn!(error = %e, "the TCP listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    served.map_err(SocketError::Serve)
}

#[cfg(test)]
mod tests;
