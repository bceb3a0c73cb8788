//! Async files API: upload from an `AsyncRead`, download as a stream of
//! chunks, list, stat, remove, mkdir, rename. SHA-256 is checked both ways
//! as in [`crate::client::files`], whose error type this shares.

use futures_util::stream::{self, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{call, send, MessageReader};
use crate::client::files::Written;
pub use crate::client::files::{FilesError, MAX_LISTED_ENTRIES};
use crate::client::reply::{self, Digester, DownloadCheck, DownloadStep, ListCollector};
use crate::client::ClientError;
use crate::protocol::files::{
    Entry, FileDigest, FileRead, FileWrite, ListDir, Mkdir, Remove, Rename, Stat,
};
use crate::protocol::{Message, MAX_CHUNK};

/// Uploads `source` to `remote_path` with permission bits `mode`
/// (`None` = 0644), making parents and replacing an existing file.
pub async fn upload<S, R>(
    stream: &mut S,
    remote_path: &str,
    mode: Option<u32>,
    source: R,
) -> Result<Written, FilesError>
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let request = FileWrite {
        path: remote_path.to_owned(),
        mode,
        create_parents: true,
        overwrite: true,
    };
    upload_with(stream, &request, source).await
}

/// Uploads `source` as `request` says; the file appears atomically once
/// complete and checked, or not at all.
pub async fn upload_with<S, R>(
    stream: &mut S,
    request: &FileWrite,
    mut source: R,
) -> Result<Written, FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let sent = match send_file(stream, request, &mut source).await {
        Ok(sent) => sent,
        // The agent refused early and hung up: its error frame says why.
        Err(FilesError::Client(ClientError::Protocol(e))) => {
            return Err(match MessageReader::new(stream).recv().await {
                Err(agent @ ClientError::Agent { .. }) => agent.into(),
                _ => ClientError::Protocol(e).into(),
            })
        }
        Err(e) => return Err(e),
    };
    reply::written(MessageReader::new(stream).recv().await?, sent)
}

async fn send_file<S, R>(
    stream: &mut S,
    request: &FileWrite,
    source: &mut R,
) -> Result<FileDigest, FilesError>
where
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    send(stream, &Message::FileWrite(request.clone())).await?;
    let mut digest = Digester::default();
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // Returning hangs up, which makes the agent drop the upload.
            Err(e) => return Err(FilesError::Source(e)),
        };
        digest.update(&buf[..n]);
        send(stream, &Message::FileChunk(buf[..n].to_vec())).await?;
    }
    let digest = digest.finish();
    send(stream, &Message::FileEnd(digest)).await?;
    Ok(digest)
}

/// Downloads `remote_path` as a stream of chunks. The stream ends (`None`)
/// only after the agent's size and SHA-256 matched what arrived; a
/// mismatch or a cut-off connection is an error item instead. Use what
/// you received only once the stream ended cleanly.
pub fn download<S>(stream: S, remote_path: &str) -> impl Stream<Item = Result<Vec<u8>, FilesError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Message::FileRead(FileRead {
        path: remote_path.to_owned(),
    });
    let state = (
        MessageReader::new(stream),
        DownloadCheck::default(),
        Some(request),
    );
    stream::unfold(Some(state), |state| async move {
        let (mut reader, mut check, request) = state?;
        if let Some(request) = request {
            if let Err(e) = send(&mut reader.inner, &request).await {
                return Some((Err(e.into()), None));
            }
        }
        loop {
            let step = match reader.recv().await {
                Ok(msg) => check.step(msg),
                Err(e) => Err(e.into()),
            };
            match step {
                // Empty chunks carry nothing to hand out.
                Ok(DownloadStep::Chunk(data)) if data.is_empty() => {}
                Ok(DownloadStep::Chunk(data)) => {
                    return Some((Ok(data), Some((reader, check, None))))
                }
                Ok(DownloadStep::Done(_)) => return None,
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}

/// Downloads `remote_path` into memory, checked; at most `max_bytes`.
pub async fn download_to_vec<S>(
    stream: S,
    remote_path: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut chunks = std::pin::pin!(download(stream, remote_path));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max_bytes {
            return Err(FilesError::Sink(std::io::Error::other(format!(
                "download is over {max_bytes} bytes"
            ))));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Lists the directory `remote_path` (without `.` and `..`).
pub async fn list_dir<S>(stream: &mut S, remote_path: &str) -> Result<Vec<Entry>, FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = ListDir {
        path: remote_path.to_owned(),
    };
    send(stream, &Message::ListDir(request)).await?;
    let mut reader = MessageReader::new(stream);
    let mut listing = ListCollector::default();
    loop {
        if let Some(entries) = listing.step(reader.recv().await?)? {
            return Ok(entries);
        }
    }
}

/// Describes `remote_path` (a symlink itself, not its target).
pub async fn stat<S>(stream: &mut S, remote_path: &str) -> Result<Entry, FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Stat {
        path: remote_path.to_owned(),
    };
    Ok(reply::entry(call(stream, &Message::Stat(request)).await?)?)
}

/// Removes a file, symlink or directory (`recursive` for a non-empty one).
pub async fn remove<S>(stream: &mut S, remote_path: &str, recursive: bool) -> Result<(), FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Remove {
        path: remote_path.to_owned(),
        recursive,
    };
    Ok(reply::ok(call(stream, &Message::Remove(request)).await?)?)
}

/// Makes a directory (`parents`: like `mkdir -p`).
pub async fn mkdir<S>(
    stream: &mut S,
    remote_path: &str,
    parents: bool,
    mode: Option<u32>,
) -> Result<(), FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Mkdir {
        path: remote_path.to_owned(),
        parents,
        mode,
    };
    Ok(reply::ok(call(stream, &Message::Mkdir(request)).await?)?)
}

/// Moves `from` to `to`.
pub async fn rename<S>(stream: &mut S, from: &str, to: &str) -> Result<(), FilesError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Rename {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    Ok(reply::ok(call(stream, &Message::Rename(request)).await?)?)
}
