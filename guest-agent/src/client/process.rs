//! Host side of the process table: start, list, attach, wait, stdin,
//! signal, collect. One connection per call, like the rest of [`super`].
//!
//! A started process belongs to the agent, not to the connection: drop the
//! connection, reconnect, and [`attach`] from the last sequence number seen
//! to get the rest of its output (or a [`Gap`](crate::protocol::Gap) first,
//! when the agent's ring no longer holds it).

use std::io::{Read, Write};
use std::time::Duration;

use super::reply;
use super::{call, next, AttachEvent, ClientError};
use crate::protocol::{
    write_message, Attach, ExecRequest, ExitStatus, Message, ProcessInfo, Signal, StdinWrite, Wait,
    MAX_CHUNK,
};

/// Starts `request` in the agent's process table; returns its id as soon
/// as the program runs. With `request.stdin`, stdin stays open for
/// [`write_stdin`] until [`close_stdin`].
pub fn start<S: Read + Write>(stream: &mut S, request: &ExecRequest) -> Result<u64, ClientError> {
    reply::started(call(stream, &Message::Start(request.clone()))?)
}

/// Every process the agent holds, running or finished (not collected).
pub fn list<S: Read + Write>(stream: &mut S) -> Result<Vec<ProcessInfo>, ClientError> {
    reply::processes(call(stream, &Message::ListProcesses)?)
}

/// Streams the output of process `id` after chunk `after_seq` (0: from
/// the start). The iterator yields a [`AttachEvent::Gap`] first if some of
/// those chunks were evicted, then [`AttachEvent::Output`]s, and ends after
/// [`AttachEvent::Exited`] or (without `follow`, while the process runs)
/// [`AttachEvent::CaughtUp`]. With `follow` a silent process keeps the
/// iterator waiting: bound it with the stream's read timeout.
pub fn attach<S: Read + Write>(
    stream: &mut S,
    id: u64,
    after_seq: u64,
    follow: bool,
) -> Result<Attached<'_, S>, ClientError> {
    let request = Attach {
        id,
        after_seq,
        follow,
    };
    write_message(stream, &Message::Attach(request))?;
    Ok(Attached {
        stream,
        done: false,
    })
}

/// The events of an [`attach`].
pub struct Attached<'a, S> {
    stream: &'a mut S,
    done: bool,
}

impl<S: Read> Iterator for Attached<'_, S> {
    type Item = Result<AttachEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let event = next(self.stream).and_then(reply::attach_event);
        self.done = event.as_ref().map_or(true, AttachEvent::is_end);
        Some(event)
    }
}

/// Waits up to `timeout` (the agent caps it at an hour) for process `id`
/// to end; `None` if it still runs. Set the stream's read timeout above
/// `timeout`.
pub fn wait<S: Read + Write>(
    stream: &mut S,
    id: u64,
    timeout: Duration,
) -> Result<Option<ExitStatus>, ClientError> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    reply::waited(call(stream, &Message::Wait(Wait { id, timeout_ms }))?)
}

/// Sends `data` as the bytes of process `id`'s stdin from `offset` on;
/// returns how many bytes of stdin the agent has accepted in total. That
/// may be less than `offset + data.len()` when the program does not read:
/// send the rest from the returned offset. Bytes sent again (a retry after
/// a lost reply) are acknowledged, not written twice. `data` is sent in
/// one frame; see [`write_stdin_all`] for any size.
pub fn write_stdin<S: Read + Write>(
    stream: &mut S,
    id: u64,
    offset: u64,
    data: &[u8],
) -> Result<u64, ClientError> {
    let request = StdinWrite {
        id,
        offset,
        data: data.to_vec(),
    };
    reply::stdin_ack(call(stream, &Message::WriteStdin(request))?)
}

/// Writes all of `data` from `offset`, one [`MAX_CHUNK`] frame at a time
/// on a fresh connection from `connect` each, continuing from each
/// acknowledgement. Returns the bytes accepted in total. A program that
/// never reads makes this wait as long as the agent's per-write timeout,
/// chunk after chunk: bound it with the streams' timeouts.
pub fn write_stdin_all<S: Read + Write>(
    mut connect: impl FnMut() -> Result<S, ClientError>,
    id: u64,
    offset: u64,
    data: &[u8],
) -> Result<u64, ClientError> {
    let end = offset + data.len() as u64;
    let mut accepted = offset;
    while accepted < end {
        let from = usize::try_from(accepted - offset).unwrap_or(usize::MAX);
        let piece = &data[from..data.len().min(from + MAX_CHUNK)];
        accepted = write_stdin(&mut connect()?, id, accepted, piece)?;
    }
    Ok(accepted)
}

/// Closes process `id`'s stdin (the program reads end of file).
pub fn close_stdin<S: Read + Write>(stream: &mut S, id: u64) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::CloseStdin(id))?)
}

/// Sends `signal` to process `id`'s whole process group (`SIGKILL` also
/// kills whatever is left in its cgroup).
pub fn signal<S: Read + Write>(stream: &mut S, id: u64, signal: i32) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::Signal(Signal { id, signal }))?)
}

/// Forgets the finished process `id`; returns how it ended.
pub fn collect<S: Read + Write>(stream: &mut S, id: u64) -> Result<ExitStatus, ClientError> {
    reply::exit(call(stream, &Message::Collect(id))?)
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Scripted;
    use super::*;
    use crate::protocol::{ErrorCode, Gap, MessageKind, OutputChunk};
    use std::cell::RefCell;
    use std::io;
    use std::rc::Rc;

    #[test]
    fn attach_yields_until_the_end_event() {
        let out = OutputChunk {
            seq: 5,
            data: b"x".to_vec(),
            ..OutputChunk::default()
        };
        let gap = Gap {
            first_seq: 1,
            last_seq: 4,
        };
        let mut s = Scripted::new(&[
            Message::Gap(gap),
            Message::Output(out.clone()),
            Message::CaughtUp(5),
            Message::Ping, // never read: the stream ended
        ]);
        let events: Vec<_> = attach(&mut s, 3, 0, false)
            .expect("attach")
            .collect::<Result<_, _>>()
            .expect("events");
        assert_eq!(
            events,
            [
                AttachEvent::Gap(gap),
                AttachEvent::Output(out),
                AttachEvent::CaughtUp(5)
            ]
        );
        assert_eq!(
            s.sent(),
            [Message::Attach(Attach {
                id: 3,
                after_seq: 0,
                follow: false
            })]
        );
    }

    #[test]
    fn attach_stops_after_an_error() {
        let mut s = Scripted::new(&[Message::error(ErrorCode::NoSuchProcess, "no process 9")]);
        let events: Vec<_> = attach(&mut s, 9, 0, true).expect("attach").collect();
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0],
            Err(ClientError::Agent {
                code: ErrorCode::NoSuchProcess,
                ..
            })
        ));
        // Cut off mid-stream.
        let mut s = Scripted::new(&[Message::Output(OutputChunk::default())]);
        let events: Vec<_> = attach(&mut s, 1, 0, true).expect("attach").collect();
        assert!(matches!(events[..], [Ok(_), Err(ClientError::Closed)]));
    }

    #[test]
    fn replies_are_checked() {
        let mut s = Scripted::new(&[Message::Started(4)]);
        assert_eq!(start(&mut s, &ExecRequest::default()).expect("start"), 4);
        let mut s = Scripted::new(&[Message::Running]);
        assert_eq!(
            wait(&mut s, 4, Duration::from_millis(1500)).expect("wait"),
            None
        );
        assert_eq!(
            s.sent(),
            [Message::Wait(Wait {
                id: 4,
                timeout_ms: 1500
            })]
        );
        let mut s = Scripted::new(&[Message::Ok]);
        assert!(matches!(
            collect(&mut s, 4),
            Err(ClientError::Unexpected(MessageKind::Ok))
        ));
        let mut s = Scripted::new(&[Message::StdinAck(10)]);
        assert_eq!(write_stdin(&mut s, 4, 7, b"abc").expect("ack"), 10);
    }

    #[test]
    fn write_stdin_all_continues_from_each_ack() {
        let data = vec![1u8; MAX_CHUNK + 100];
        // The agent takes 10 bytes, then the rest of the first chunk, then
        // the tail.
        let acks = [10, MAX_CHUNK as u64, data.len() as u64];
        let sent = Rc::new(RefCell::new(Vec::new()));
        let mut n = 0;
        let accepted = write_stdin_all(
            || {
                let s = Scripted::new(&[Message::StdinAck(acks[n])]);
                n += 1;
                Ok(RecordOnDrop(s, Rc::clone(&sent)))
            },
            1,
            0,
            &data,
        )
        .expect("all");
        assert_eq!(accepted, data.len() as u64);
        let offsets: Vec<_> = sent
            .borrow()
            .iter()
            .map(|m| match m {
                Message::WriteStdin(w) => (w.offset, w.data.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            offsets,
            [(0, MAX_CHUNK), (10, MAX_CHUNK), (MAX_CHUNK as u64, 100)]
        );
    }

    /// A scripted stream that appends what was sent to a list when dropped.
    struct RecordOnDrop(Scripted, Rc<RefCell<Vec<Message>>>);

    impl Read for RecordOnDrop {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for RecordOnDrop {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Drop for RecordOnDrop {
        fn drop(&mut self) {
            self.1.borrow_mut().extend(self.0.sent());
        }
    }
}
