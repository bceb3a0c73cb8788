//! Async host-side client over tokio (cargo feature `tokio`).
//!
//! The same operations as the blocking [`crate::client`], one connection
//! per operation, generic over any `AsyncRead + AsyncWrite + Unpin` stream
//! (a `tokio::net::UnixStream` to a VM's hybrid vsock socket, `&mut` of
//! one, an in-memory duplex). Bytes go through the sans-IO codec
//! ([`crate::protocol::codec`]) and replies are read by the same code as in
//! the blocking client, so both speak exactly the same protocol.
//!
//! Nothing here times out by itself: the agent may legitimately stay
//! silent (a quiet program, a long wait). Bound every call with
//! `tokio::time::timeout`, and every stream item likewise (for example
//! `tokio::time::timeout(d, stream.next())`). Dropping a future or a stream
//! drops the connection, which ends an `exec` (the agent kills it) but not
//! a started process.

pub mod files;

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{self, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::reply;
pub use crate::client::{AttachEvent, ClientError, ExecEvent};
use crate::protocol::{
    encode_to_vec, Attach, ExecRequest, ExitStatus, FrameError, Message, MessageDecoder, Pong,
    ProcessInfo, Resume, Signal, StdinWrite, Wait, MAX_CHUNK,
};

/// The read side of a connection with its decoder. `recv` is cancel-safe:
/// bytes already read stay in the decoder.
pub(crate) struct MessageReader<R> {
    inner: R,
    decoder: MessageDecoder,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: MessageDecoder::new(),
        }
    }

    /// The next message; an `Error` frame is [`ClientError::Agent`].
    pub(crate) async fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            let n = self
                .inner
                .read(self.decoder.buf_mut())
                .await
                .map_err(|e| ClientError::Protocol(FrameError::Io(e).into()))?;
            if n == 0 {
                return Err(reply::read_error(self.decoder.end_of_stream()));
            }
            if let Some(msg) = self.decoder.advance(n).map_err(reply::read_error)? {
                return reply::received(msg);
            }
        }
    }
}

/// Writes one message (one frame) and flushes.
pub(crate) async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ClientError> {
    let buf = encode_to_vec(message)?;
    let io = |e| ClientError::Protocol(FrameError::Io(e).into());
    writer.write_all(&buf).await.map_err(io)?;
    writer.flush().await.map_err(io)
}

/// Sends `request` and reads the one reply.
pub(crate) async fn call<S>(stream: &mut S, request: &Message) -> Result<Message, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, request).await?;
    MessageReader::new(stream).recv().await
}

/// Checks that the agent is up; returns its version and uptime.
pub async fn ping<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Pong, ClientError> {
    reply::pong(call(stream, &Message::Ping).await?)
}

/// Asks the agent to power off the VM (an agent on the host exits).
pub async fn shutdown<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::Shutdown).await?)
}

/// Tells the agent of a VM restored from a snapshot to reseed its kernel
/// RNG and set its clock (see [`crate::protocol::Resume`]).
pub async fn resume<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    resume: &Resume,
) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::Resume(resume.clone())).await?)
}

/// Runs a program; the stream yields its output as it arrives and ends
/// with [`ExecEvent::Exit`] (or an error). With `stdin`, `request.stdin` is
/// set and the source is copied to the program while output is read, so
/// neither side can block the other; without it the program's stdin is
/// `/dev/null`. A failing stdin source ends the stream with
/// [`ClientError::Stdin`]. Dropping the stream kills the program.
pub fn exec<S, I>(
    stream: S,
    request: &ExecRequest,
    stdin: Option<I>,
) -> impl Stream<Item = Result<ExecEvent, ClientError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
{
    let request = ExecRequest {
        stdin: stdin.is_some(),
        ..request.clone()
    };
    let (reader, writer) = tokio::io::split(stream);
    let state = Duplex {
        reader: MessageReader::new(reader),
        writer: Some(Box::pin(send_exec(writer, request, stdin))),
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let event = match st.next().await {
            Ok(msg) => reply::exec_event(msg),
            Err(e) => Err(e),
        };
        st.done = !matches!(event, Ok(ExecEvent::Stdout(_) | ExecEvent::Stderr(_)));
        Some((event, st))
    })
}

/// A reader, and a writer future that runs alongside it.
struct Duplex<R, F> {
    reader: MessageReader<R>,
    writer: Option<std::pin::Pin<Box<F>>>,
    done: bool,
}

impl<R, F> Duplex<R, F>
where
    R: AsyncRead + Unpin,
    F: Future<Output = Result<(), ClientError>>,
{
    /// The next message, driving the writer meanwhile. A writer that fails
    /// on the connection is left to the reader to explain (the agent's
    /// error frame, or the close); a failing stdin source is reported.
    async fn next(&mut self) -> Result<Message, ClientError> {
        loop {
            let Some(writer) = self.writer.as_mut() else {
                return self.reader.recv().await;
            };
            tokio::select! {
                sent = writer.as_mut() => {
                    self.writer = None;
                    if let Err(e @ ClientError::Stdin(_)) = sent {
                        return Err(e);
                    }
                }
                msg = self.reader.recv() => return msg,
            }
        }
    }
}

/// Sends the `Exec` request, then the stdin source and `StdinEnd`.
async fn send_exec<W, I>(
    mut writer: W,
    request: ExecRequest,
    stdin: Option<I>,
) -> Result<(), ClientError>
where
    W: AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
{
    send(&mut writer, &Message::Exec(request)).await?;
    let Some(mut source) = stdin else {
        return Ok(());
    };
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(ClientError::Stdin(e)),
        };
        send(&mut writer, &Message::StdinChunk(buf[..n].to_vec())).await?;
    }
    send(&mut writer, &Message::StdinEnd).await
}

/// Starts `request` in the agent's process table; returns its id. See
/// [`crate::client::process::start`].
pub async fn start<S>(stream: &mut S, request: &ExecRequest) -> Result<u64, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply::started(call(stream, &Message::Start(request.clone())).await?)
}

/// Every process the agent holds.
pub async fn list<S>(stream: &mut S) -> Result<Vec<ProcessInfo>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply::processes(call(stream, &Message::ListProcesses).await?)
}

/// Streams the output of process `id` after chunk `after_seq`: a
/// [`AttachEvent::Gap`] first if some of it was evicted, then
/// [`AttachEvent::Output`]s, then [`AttachEvent::Exited`] or (without
/// `follow`) [`AttachEvent::CaughtUp`]. Dropping the stream leaves the
/// process running.
pub fn attach<S>(
    stream: S,
    id: u64,
    after_seq: u64,
    follow: bool,
) -> impl Stream<Item = Result<AttachEvent, ClientError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Message::Attach(Attach {
        id,
        after_seq,
        follow,
    });
    let state = (MessageReader::new(stream), Some(request), false);
    stream::unfold(state, |(mut reader, request, done)| async move {
        if done {
            return None;
        }
        if let Some(request) = request {
            if let Err(e) = send(&mut reader.inner, &request).await {
                return Some((Err(e), (reader, None, true)));
            }
        }
        let event = match reader.recv().await {
            Ok(msg) => reply::attach_event(msg),
            Err(e) => Err(e),
        };
        let done = event.as_ref().map_or(true, AttachEvent::is_end);
        Some((event, (reader, None, done)))
    })
}

/// Waits up to `timeout` (capped at an hour by the agent) for process `id`
/// to end; `None` if it still runs.
pub async fn wait<S>(
    stream: &mut S,
    id: u64,
    timeout: Duration,
) -> Result<Option<ExitStatus>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    reply::waited(call(stream, &Message::Wait(Wait { id, timeout_ms })).await?)
}

/// Offset-tagged stdin bytes for process `id`; returns the bytes accepted
/// in total. See [`crate::client::process::write_stdin`].
pub async fn write_stdin<S>(
    stream: &mut S,
    id: u64,
    offset: u64,
    data: &[u8],
) -> Result<u64, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = StdinWrite {
        id,
        offset,
        data: data.to_vec(),
    };
    reply::stdin_ack(call(stream, &Message::WriteStdin(request)).await?)
}

/// Closes process `id`'s stdin.
pub async fn close_stdin<S>(stream: &mut S, id: u64) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply::ok(call(stream, &Message::CloseStdin(id)).await?)
}

/// Sends `signal` to process `id`'s process group.
pub async fn signal<S>(stream: &mut S, id: u64, signal: i32) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply::ok(call(stream, &Message::Signal(Signal { id, signal })).await?)
}

/// Forgets the finished process `id`; returns how it ended.
pub async fn collect<S>(stream: &mut S, id: u64) -> Result<ExitStatus, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply::exit(call(stream, &Message::Collect(id)).await?)
}
