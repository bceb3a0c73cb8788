//! [`Backend`] over HTTP/1.1 to a `kiln serve` daemon, on its unix socket
//! or its TCP listener ([`Transport`]).
//! One connection per request; errors come back as the [`crate::Error`]
//! the daemon answered with.

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::io::ReaderStream;

use super::lines::LineSplitter;
use super::transport::Transport;
use super::{Backend, CreateOutcome, Download, ExecEvents, Upload};
use crate::model::{
    AuditFilter, AuditRecord, CreatedSandbox, Event, ExecEvent, ExecInfo, ExecSpec, FileEntry,
    FileWritten, Health, Info, PoolInfo, PoolUpdate, SandboxFilter, SandboxInfo, SandboxPatch,
    SandboxSpec, SignalName, SignalRequest, StdinWritten, TemplateInfo,
};
use crate::{Error, ErrorBody, Result};

/// Header with a file's SHA-256 (lower-case hex), both ways.
pub const SHA256_HEADER: &str = "x-kiln-sha256";
/// Header with a file's permission bits (octal) on upload.
pub const MODE_HEADER: &str = "x-kiln-mode";
/// Header with a file's size on download.
pub const SIZE_HEADER: &str = "x-kiln-size";
/// Idempotency key header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Header with a stdin write's offset (instead of the `offset` query).
pub const OFFSET_HEADER: &str = "x-kiln-offset";

/// Largest JSON response or NDJSON line the client accepts.
const MAX_RESPONSE: usize = 64 << 20;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Percent-encodes everything but unreserved characters (a guest path,
/// slashes included, becomes one URL path segment).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_body<T: Serialize>(v: &T) -> Result<Body> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync())
}

/// The client.
pub(crate) struct HttpBackend {
    transport: Transport,
}

/// Collects a body, at most `MAX_RESPONSE` bytes.
async fn collect(mut body: Incoming) -> Result<Bytes> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Unavailable(format!("reading the response: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_RESPONSE {
                return Err(Error::TooLarge("the daemon's response is too large".into()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("unexpected response from the daemon: {e}")))
}

/// Splits a body into lines (NDJSON), each at most `MAX_RESPONSE` bytes.
fn lines(body: Incoming) -> BoxStream<'static, Result<Bytes>> {
    struct St {
        body: Incoming,
        lines: LineSplitter,
        done: bool,
    }
    stream::unfold(
        St {
            body,
            lines: LineSplitter::new(MAX_RESPONSE),
            done: false,
        },
        |mut st| async move {
            loop {
                if st.done {
                    return st.lines.finish().map(|line| (line, st));
                }
                if let Some(line) = st.lines.next_line() {
                    // A line over the bound ends the stream.
                    st.done |= line.is_err();
                    return Some((line, st));
                }
                match st.body.frame().await {
                    None => st.done = true,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            st.lines.push(&data);
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        st.lines = LineSplitter::new(0);
                        return Some((
                            Err(Error::Unavailable(format!("the stream broke: {e}"))),
                            st,
                        ));
                    }
                }
            }
        },
    )
    .boxed()
}

/// Parses NDJSON lines, skipping blank ones.
fn ndjson<T: DeserializeOwned + Send + 'static>(body: Incoming) -> BoxStream<'static, Result<T>> {
    lines(body)
        .filter_map(|line| async move {
            match line {
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
                Ok(l) => Some(parse::<T>(&l)),
                Err(e) => Some(Err(e)),
            }
        })
        .boxed()
}

impl HttpBackend {
    pub fn new(transport: Transport) -> Self {
        HttpBackend { transport }
    }

    async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>> {
        let mut sender = self.transport.connect().await?;
        self.transport.authorize(&mut req);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport.unavailable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = collect(resp.into_body()).await?;
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Error::from_body(body),
            Err(_) => Error::Internal(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
        })
    }

    fn request(method: Method, uri: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "kiln")
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, T)> {
        let mut req = Self::request(method, uri);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(body.unwrap_or_else(empty))
            .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = collect(resp.into_body()).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok((status, parse(b"null")?));
        }
        Ok((status, parse(&bytes)?))
    }

    async fn get_json<T: DeserializeOwned>(&self, uri: &str) -> Result<T> {
        Ok(self.call(Method::GET, uri, None, &[]).await?.1)
    }
}

fn key_header(key: &Option<String>) -> Vec<(&'static str, String)> {
    key.iter()
        .map(|k| (IDEMPOTENCY_HEADER, k.clone()))
        .collect()
}

fn sandbox_uri(id: &str) -> String {
    format!("/v1/sandboxes/{}", encode(id))
}

fn file_uri(id: &str, path: &str) -> String {
    format!("{}/files/{}", sandbox_uri(id), encode(path))
}

fn exec_uri(id: &str, exec: &str) -> String {
    format!("{}/execs/{}", sandbox_uri(id), encode(exec))
}

/// Exec events without the keepalive lines.
fn exec_events(body: Incoming) -> ExecEvents {
    ndjson::<ExecEvent>(body)
        .filter(|e| {
            let keep = !matches!(e, Ok(ExecEvent::Keepalive { .. }));
            async move { keep }
        })
        .boxed()
}

impl Backend for HttpBackend {
    fn health(&self) -> BoxFuture<'_, Result<Health>> {
        async move { self.get_json("/v1/health").await }.boxed()
    }

    fn info(&self) -> BoxFuture<'_, Result<Info>> {
        async move { self.get_json("/v1/info").await }.boxed()
    }

    fn templates(&self) -> BoxFuture<'_, Result<Vec<TemplateInfo>>> {
        async move { self.get_json("/v1/templates").await }.boxed()
    }

    fn delete_template(&self, name: String) -> BoxFuture<'_, Result<()>> {
        async move {
            let uri = format!("/v1/templates/{}", encode(&name));
            self.call::<serde_json::Value>(Method::DELETE, &uri, None, &[])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn pools(&self) -> BoxFuture<'_, Result<Vec<PoolInfo>>> {
        async move { self.get_json("/v1/pools").await }.boxed()
    }

    fn pool(&self, template: String) -> BoxFuture<'_, Result<PoolInfo>> {
        async move {
            self.get_json(&format!("/v1/pools/{}", encode(&template)))
                .await
        }
        .boxed()
    }

    fn set_pool(&self, template: String, target: u32) -> BoxFuture<'_, Result<PoolInfo>> {
        async move {
            let body = json_body(&PoolUpdate { target })?;
            let uri = format!("/v1/pools/{}", encode(&template));
            Ok(self.call(Method::PUT, &uri, Some(body), &[]).await?.1)
        }
        .boxed()
    }

    fn create(
        &self,
        spec: SandboxSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<CreateOutcome>> {
        async move {
            let body = json_body(&spec)?;
            let (status, created): (_, CreatedSandbox) = self
                .call(Method::POST, "/v1/sandboxes", Some(body), &key_header(&key))
                .await?;
            Ok(CreateOutcome {
                sandbox: created.sandbox,
                replayed: status == StatusCode::OK,
                token: created.token,
            })
        }
        .boxed()
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        async move { self.get_json(&sandbox_uri(&id)).await }.boxed()
    }

    fn list(&self, filter: SandboxFilter) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        async move {
            let mut query: Vec<String> = filter
                .labels
                .iter()
                .map(|(k, v)| format!("label={}", encode(&format!("{k}={v}"))))
                .collect();
            if let Some(s) = filter.state {
                query.push(format!("state={}", s.as_str()));
            }
            self.get_json(&format!("/v1/sandboxes?{}", query.join("&")))
                .await
        }
        .boxed()
    }

    fn patch(&self, id: String, patch: SandboxPatch) -> BoxFuture<'_, Result<SandboxInfo>> {
        async move {
            let body = json_body(&patch)?;
            Ok(self
                .call(Method::PATCH, &sandbox_uri(&id), Some(body), &[])
                .await?
                .1)
        }
        .boxed()
    }

    fn keepalive(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        async move {
            let uri = format!("{}/keepalive", sandbox_uri(&id));
            Ok(self.call(Method::POST, &uri, None, &[]).await?.1)
        }
        .boxed()
    }

    fn delete(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        async move {
            Ok(self
                .call(Method::DELETE, &sandbox_uri(&id), None, &[])
                .await?
                .1)
        }
        .boxed()
    }

    fn exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecEvents>> {
        async move {
            let uri = format!("{}/execs", sandbox_uri(&id));
            let mut req = Self::request(Method::POST, &uri)
                .header(hyper::header::CONTENT_TYPE, "application/json");
            for (k, v) in key_header(&key) {
                req = req.header(k, v);
            }
            let req = req
                .body(json_body(&spec)?)
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            Ok(exec_events(resp.into_body()))
        }
        .boxed()
    }

    fn start_exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecInfo>> {
        async move {
            let uri = format!("{}/execs?detach=true", sandbox_uri(&id));
            let body = json_body(&spec)?;
            Ok(self
                .call(Method::POST, &uri, Some(body), &key_header(&key))
                .await?
                .1)
        }
        .boxed()
    }

    fn execs(&self, id: String) -> BoxFuture<'_, Result<Vec<ExecInfo>>> {
        async move { self.get_json(&format!("{}/execs", sandbox_uri(&id))).await }.boxed()
    }

    fn exec_info(&self, id: String, exec: String) -> BoxFuture<'_, Result<ExecInfo>> {
        async move { self.get_json(&exec_uri(&id, &exec)).await }.boxed()
    }

    fn attach(
        &self,
        id: String,
        exec: String,
        after_seq: u64,
        follow: bool,
    ) -> BoxFuture<'_, Result<ExecEvents>> {
        async move {
            let uri = format!(
                "{}/output?after_seq={after_seq}&follow={follow}",
                exec_uri(&id, &exec)
            );
            let req = Self::request(Method::GET, &uri)
                .body(empty())
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            Ok(exec_events(resp.into_body()))
        }
        .boxed()
    }

    fn write_stdin(
        &self,
        id: String,
        exec: String,
        offset: Option<u64>,
        data: Bytes,
        close: bool,
    ) -> BoxFuture<'_, Result<StdinWritten>> {
        async move {
            let mut uri = format!("{}/stdin?close={close}", exec_uri(&id, &exec));
            if let Some(offset) = offset {
                uri.push_str(&format!("&offset={offset}"));
            }
            let body = Full::new(data)
                .map_err(|never| match never {})
                .boxed_unsync();
            let req = Self::request(Method::POST, &uri)
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            parse(&collect(resp.into_body()).await?)
        }
        .boxed()
    }

    fn signal(&self, id: String, exec: String, signal: i32) -> BoxFuture<'_, Result<()>> {
        async move {
            let uri = format!("{}/signal", exec_uri(&id, &exec));
            let body = json_body(&SignalRequest {
                signal: SignalName::Number(i64::from(signal)),
            })?;
            self.call::<serde_json::Value>(Method::POST, &uri, Some(body), &[])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn read_file(&self, id: String, path: String) -> BoxFuture<'_, Result<Download>> {
        async move {
            let req = Self::request(Method::GET, &file_uri(&id, &path))
                .body(empty())
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let sha256 = header(SHA256_HEADER)
                .ok_or_else(|| Error::Internal(format!("the response has no {SHA256_HEADER}")))?;
            let size = header(SIZE_HEADER)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Internal(format!("the response has no {SIZE_HEADER}")))?;
            let body = resp
                .into_body()
                .into_data_stream()
                .map(|r| r.map_err(|e| Error::Unavailable(format!("the download broke: {e}"))))
                .boxed();
            Ok(Download { size, sha256, body })
        }
        .boxed()
    }

    fn write_file(
        &self,
        id: String,
        path: String,
        mode: Option<u32>,
        body: Upload,
        sha256: Option<String>,
    ) -> BoxFuture<'_, Result<FileWritten>> {
        async move {
            let frames = ReaderStream::new(body).map(|r| r.map(Frame::data));
            let body: Body = BodyExt::boxed_unsync(StreamBody::new(frames));
            let mut req = Self::request(Method::PUT, &file_uri(&id, &path))
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream");
            if let Some(mode) = mode {
                req = req.header(MODE_HEADER, format!("{mode:o}"));
            }
            if let Some(sha) = sha256 {
                req = req.header(SHA256_HEADER, sha);
            }
            let req = req
                .body(body)
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            parse(&collect(resp.into_body()).await?)
        }
        .boxed()
    }

    fn stat(&self, id: String, path: String) -> BoxFuture<'_, Result<FileEntry>> {
        async move {
            let uri = format!("{}/fs/stat?path={}", sandbox_uri(&id), encode(&path));
            self.get_json(&uri).await
        }
        .boxed()
    }

    fn list_dir(&self, id: String, path: String) -> BoxFuture<'_, Result<Vec<FileEntry>>> {
        async move {
            let uri = format!("{}/fs/list?path={}", sandbox_uri(&id), encode(&path));
            self.get_json(&uri).await
        }
        .boxed()
    }

    fn mkdir(&self, id: String, path: String, parents: bool) -> BoxFuture<'_, Result<()>> {
        async move {
            let uri = format!("{}/fs/mkdir", sandbox_uri(&id));
            let body = json_body(&serde_json::json!({"path": path, "parents": parents}))?;
            self.call::<serde_json::Value>(Method::POST, &uri, Some(body), &[])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn rename(&self, id: String, from: String, to: String) -> BoxFuture<'_, Result<()>> {
        async move {
            let uri = format!("{}/fs/rename", sandbox_uri(&id));
            let body = json_body(&serde_json::json!({"from": from, "to": to}))?;
            self.call::<serde_json::Value>(Method::POST, &uri, Some(body), &[])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn remove(&self, id: String, path: String, recursive: bool) -> BoxFuture<'_, Result<()>> {
        async move {
            let uri = format!("{}?recursive={recursive}", file_uri(&id, &path));
            self.call::<serde_json::Value>(Method::DELETE, &uri, None, &[])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn events(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<Event>>>> {
        async move {
            let req = Self::request(Method::GET, &format!("/v1/events?after_seq={after_seq}"))
                .body(empty())
                .map_err(|e| Error::invalid(format!("building the request: {e}")))?;
            let resp = self.send(req).await?;
            // Keepalive lines are `{}`: not events.
            let events = ndjson::<serde_json::Value>(resp.into_body())
                .filter_map(|v| async move {
                    match v {
                        Ok(v) if v.get("seq").is_none() => None,
                        Ok(v) => Some(serde_json::from_value::<Event>(v).map_err(|e| {
                            Error::Internal(format!("unexpected event from the daemon: {e}"))
                        })),
                        Err(e) => Some(Err(e)),
                    }
                })
                .boxed();
            Ok(events)
        }
        .boxed()
    }

    fn audit(&self, filter: AuditFilter) -> BoxFuture<'_, Result<Vec<AuditRecord>>> {
        async move {
            let query = serde_urlencoded::to_string(&filter)
                .map_err(|e| Error::invalid(format!("audit filter: {e}")))?;
            self.get_json(&format!("/v1/audit?{query}")).await
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn paths_become_one_segment() {
        assert_eq!(encode("a/b c.txt"), "a%2Fb%20c.txt");
        assert_eq!(encode("/tmp/ü"), "%2Ftmp%2F%C3%BC");
        assert_eq!(encode("k=v&x"), "k%3Dv%26x");
    }
}
