//! Connection state machine tests: a real unix socket pair on the host side,
//! the test playing the guest's packets.

use std::io::Read;

use super::*;

const GUEST: u64 = 3;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

fn guest(op: u16, buf_alloc: u32, fwd_cnt: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 52,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn rx(c: &mut Connection, cap: usize) -> Option<(VsockHeader, Vec<u8>)> {
    let mut buf = vec![0u8; cap];
    c.next_rx(&mut buf, Instant::now())
        .map(|(h, n)| (h, buf[..n].to_vec()))
}

fn read_all(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(_) => break,
        }
    }
    out
}

/// A guest-initiated, established connection with the given guest credit.
fn established(buf_alloc: u32) -> (Connection, UnixStream) {
    let (host_end, mut client) = pair();
    let mut req = guest(op::REQUEST, buf_alloc, 0);
    req.src_port = 1234;
    let mut c = Connection::new_peer(host_end, &req);
    assert_eq!(rx(&mut c, 0).unwrap().0.op, op::RESPONSE);
    assert_eq!(read_all(&mut client), b"");
    (c, client)
}

#[test]
fn local_connect_then_response_sends_ok_line() {
    let (host_end, mut client) = pair();
    let now = Instant::now();
    let mut c = Connection::new_local(host_end, GUEST, 1 << 30, 52, now, Duration::from_secs(1));
    assert_eq!(c.interest(), Some(EventSet::empty()));
    let (h, _) = rx(&mut c, 100).unwrap();
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::REQUEST, 1 << 30, 52, GUEST)
    );
    assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
    assert!(!c.has_rx());
    let mut resp = guest(op::RESPONSE, 4096, 0);
    (resp.src_port, resp.dst_port) = (52, 1 << 30);
    c.on_packet(&resp, &[], now);
    assert_eq!(c.state(), State::Established);
    assert_eq!(read_all(&mut client), b"OK 1073741824\n");
    assert_eq!(c.interest(), Some(EventSet::IN));
}

#[test]
fn rw_before_response_resets() {
    let (host_end, mut client) = pair();
    let now = Instant::now();
    let mut c = Connection::new_local(host_end, GUEST, 7, 52, now, Duration::from_secs(1));
    rx(&mut c, 0).unwrap();
    c.on_packet(&guest(op::RW, 4096, 0), b"sneaky", now);
    assert_eq!(c.state(), State::Closing);
    let (h, _) = rx(&mut c, 100).unwrap();
    assert_eq!(h.op, op::RST);
    assert!(c.is_dead());
    // The host client sees EOF and none of the data.
    assert_eq!(read_all(&mut client), b"");
}

#[test]
fn guest_rst_during_connect_closes_host_without_ok() {
    let (host_end, mut client) = pair();
    let now = Instant::now();
    let mut c = Connection::new_local(host_end, GUEST, 7, 52, now, Duration::from_secs(1));
    rx(&mut c, 0).unwrap();
    c.on_packet(&guest(op::RST, 0, 0), &[], now);
    assert!(c.is_dead());
    assert!(!c.has_rx());
    assert_eq!(read_all(&mut client), b"");
}

#[test]
fn connect_timeout() {
    let (host_end, _client) = pair();
    let now = Instant::now();
    let mut c = Connection::new_local(host_end, GUEST, 7, 52, now, Duration::from_secs(1));
    // Not yet sent to the guest: dies silently.
    c.on_timer(now + Duration::from_secs(2));
    assert!(c.is_dead());
    let (host_end, _client) = pair();
    let mut c = Connection::new_local(host_end, GUEST, 7, 52, now, Duration::from_secs(1));
    rx(&mut c, 0).unwrap();
    c.on_timer(now + Duration::from_millis(500));
    assert_eq!(c.state(), State::LocalInit);
    c.on_timer(now + Duration::from_secs(2));
    assert_eq!(rx(&mut c, 0).unwrap().0.op, op::RST);
    assert!(c.is_dead());
}

#[test]
fn response_before_request_was_sent_is_a_violation() {
    let (host_end, _client) = pair();
    let now = Instant::now();
    let mut c = Connection::new_local(host_end, GUEST, 7, 52, now, Duration::from_secs(1));
    c.on_packet(&guest(op::RESPONSE, 4096, 0), &[], now);
    assert!(c.is_dead());
}

#[test]
fn data_flows_both_ways_with_credit() {
    let (mut c, mut client) = established(10);
    let now = Instant::now();
    // guest -> host
    c.on_packet(&guest(op::RW, 10, 0), b"ping", now);
    assert_eq!(read_all(&mut client), b"ping");
    // host -> guest, bounded by the guest's credit of 10 bytes.
    client.write_all(b"0123456789abcdef").unwrap();
    c.on_stream_event(EventSet::IN, now);
    assert_eq!(c.interest(), Some(EventSet::empty()));
    let (h, data) = rx(&mut c, 1000).unwrap();
    assert_eq!((h.op, h.len, h.fwd_cnt), (op::RW, 10, 4));
    assert_eq!(data, b"0123456789");
    // Credit exhausted: one CREDIT_REQUEST, then nothing.
    let (h, _) = rx(&mut c, 1000).unwrap();
    assert_eq!(h.op, op::CREDIT_REQUEST);
    assert!(!c.has_rx());
    assert!(rx(&mut c, 1000).is_none());
    // The guest consumed 6 of them: exactly 6 more may go.
    c.on_packet(&guest(op::CREDIT_UPDATE, 10, 6), &[], now);
    assert!(c.has_rx());
    let (h, data) = rx(&mut c, 1000).unwrap();
    assert_eq!(data, b"abcdef");
    assert_eq!(h.len, 6);
    // The guest grows its buffer and consumed everything.
    c.on_packet(&guest(op::CREDIT_UPDATE, 100, 16), &[], now);
    // Nothing left in the stream: back to watching it.
    assert!(rx(&mut c, 1000).is_none());
    assert_eq!(c.interest(), Some(EventSet::IN));
}

#[test]
fn rx_respects_guest_buffer_size() {
    let (mut c, mut client) = established(1 << 20);
    client.write_all(&[7u8; 100]).unwrap();
    c.on_stream_event(EventSet::IN, Instant::now());
    let (h, data) = rx(&mut c, 30).unwrap();
    assert_eq!((h.len, data.len()), (30, 30));
    // Zero-capacity buffers only get control packets.
    assert!(rx(&mut c, 0).is_none());
}

#[test]
fn guest_exceeding_credit_is_reset_and_buffer_is_bounded() {
    let (mut c, client) = established(4096);
    let now = Instant::now();
    // Nobody reads `client`: fill the socket, then our buffer.
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0usize;
    while c.state() == State::Established && sent < 64 << 20 {
        c.on_packet(&guest(op::RW, 4096, 0), &chunk, now);
        sent += chunk.len();
        assert!(c.tx_buf.len() <= CONN_BUF_SIZE as usize);
    }
    assert_eq!(
        c.state(),
        State::Closing,
        "a guest ignoring credit must be reset"
    );
    assert!(c.tx_buf.is_empty());
    assert_eq!(rx(&mut c, 0).unwrap().0.op, op::RST);
    drop(client);
}

#[test]
fn credit_update_after_draining_a_full_buffer() {
    let (mut c, mut client) = established(4096);
    let now = Instant::now();
    let chunk = vec![1u8; 32 * 1024];
    // Fill our buffer up to (but not past) the advertised credit.
    let mut total = 0usize;
    loop {
        let room = CONN_BUF_SIZE as usize - c.tx_buf.len();
        if room < chunk.len() {
            break;
        }
        c.on_packet(&guest(op::RW, 4096, 0), &chunk, now);
        total += chunk.len();
        assert_eq!(c.state(), State::Established);
    }
    assert!(!c.tx_buf.is_empty());
    assert_eq!(c.interest(), Some(EventSet::IN | EventSet::OUT));
    // The host drains; we flush and tell the guest.
    let mut got = 0usize;
    while got < total {
        got += read_all(&mut client).len();
        c.on_stream_event(EventSet::OUT, now);
    }
    assert_eq!(got, total);
    let (h, _) = rx(&mut c, 0).unwrap();
    assert_eq!(h.op, op::CREDIT_UPDATE);
    assert_eq!(h.fwd_cnt as usize, total);
    assert_eq!(c.interest(), Some(EventSet::IN));
}

#[test]
fn credit_request_gets_credit_update() {
    let (mut c, _client) = established(4096);
    c.on_packet(&guest(op::CREDIT_REQUEST, 4096, 0), &[], Instant::now());
    let (h, _) = rx(&mut c, 0).unwrap();
    assert_eq!((h.op, h.buf_alloc), (op::CREDIT_UPDATE, CONN_BUF_SIZE));
}

#[test]
fn guest_shutdown_both_ways_ends_with_rst() {
    let (mut c, mut client) = established(4096);
    let now = Instant::now();
    c.on_packet(&guest(op::RW, 4096, 0), b"last words", now);
    let mut sd = guest(op::SHUTDOWN, 4096, 0);
    sd.flags = SHUTDOWN_SEND;
    c.on_packet(&sd, &[], now);
    // Host sees the data then EOF, but the connection lives on.
    assert_eq!(read_all(&mut client), b"last words");
    assert_eq!(c.state(), State::Established);
    // More data after SHUTDOWN(SEND) is a violation... on a fresh one:
    sd.flags = SHUTDOWN_RCV;
    c.on_packet(&sd, &[], now);
    assert_eq!(c.state(), State::Closing);
    assert_eq!(rx(&mut c, 0).unwrap().0.op, op::RST);
    assert!(c.is_dead());
}

#[test]
fn rw_after_guest_shutdown_send_resets() {
    let (mut c, _client) = established(4096);
    let now = Instant::now();
    let mut sd = guest(op::SHUTDOWN, 4096, 0);
    sd.flags = SHUTDOWN_SEND;
    c.on_packet(&sd, &[], now);
    c.on_packet(&guest(op::RW, 4096, 0), b"x", now);
    assert_eq!(c.state(), State::Closing);
}

#[test]
fn guest_shutdown_rcv_stops_host_to_guest() {
    let (mut c, mut client) = established(4096);
    let now = Instant::now();
    client.write_all(b"unwanted").unwrap();
    c.on_stream_event(EventSet::IN, now);
    let mut sd = guest(op::SHUTDOWN, 4096, 0);
    sd.flags = SHUTDOWN_RCV;
    c.on_packet(&sd, &[], now);
    assert!(!c.has_rx());
    assert_eq!(c.interest(), Some(EventSet::empty()));
    // The guest can still send.
    c.on_packet(&guest(op::RW, 4096, 0), b"still here", now);
    assert_eq!(read_all(&mut client), b"still here");
}

#[test]
fn host_half_close_and_full_close() {
    // Half close: SHUTDOWN(SEND) after the remaining data.
    let (mut c, client) = established(4096);
    let now = Instant::now();
    (&client).write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    c.on_stream_event(EventSet::IN, now);
    assert_eq!(rx(&mut c, 100).unwrap().1, b"bye");
    let (h, _) = rx(&mut c, 100).unwrap();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(c.interest(), Some(EventSet::empty()));
    // The guest can still talk to the host.
    c.on_packet(&guest(op::RW, 4096, 0), b"ack", now);
    let mut got = [0u8; 3];
    (&client).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ack");
    // Full close: data drained, then SHUTDOWN(both), RST after the timeout.
    let (mut c, client) = established(4096);
    (&client).write_all(b"end").unwrap();
    drop(client);
    c.on_stream_event(EventSet::IN | EventSet::HANG_UP, now);
    assert_eq!(c.interest(), None);
    assert_eq!(rx(&mut c, 100).unwrap().1, b"end");
    let (h, _) = rx(&mut c, 100).unwrap();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_BOTH));
    assert!(c.deadline().is_some());
    c.on_timer(now + CLOSE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(rx(&mut c, 0).unwrap().0.op, op::RST);
    assert!(c.is_dead());
    // Or the guest answers with its RST first.
    let (mut c, client) = established(4096);
    drop(client);
    c.on_stream_event(EventSet::HANG_UP, now);
    rx(&mut c, 100).unwrap();
    c.on_packet(&guest(op::RST, 0, 0), &[], now);
    assert!(c.is_dead());
}

#[test]
fn guest_rst_on_established() {
    let (mut c, mut client) = established(4096);
    c.on_packet(&guest(op::RST, 0, 0), &[], Instant::now());
    assert!(c.is_dead());
    assert!(!c.has_rx());
    assert_eq!(c.interest(), None);
    assert_eq!(read_all(&mut client), b"");
}

#[test]
fn unexpected_ops_reset() {
    for bad in [op::REQUEST, op::RESPONSE] {
        let (mut c, _client) = established(4096);
        c.on_packet(&guest(bad, 4096, 0), &[], Instant::now());
        assert_eq!(c.state(), State::Closing, "op {bad}");
    }
}

#[test]
fn hostile_credit_values_do_not_overflow() {
    let (mut c, mut client) = established(0);
    let now = Instant::now();
    // fwd_cnt ahead of what we ever sent, huge buf_alloc.
    c.on_packet(&guest(op::CREDIT_UPDATE, u32::MAX, u32::MAX), &[], now);
    client.write_all(b"xyz").unwrap();
    c.on_stream_event(EventSet::IN, now);
    let (h, data) = rx(&mut c, 100).unwrap();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"xyz"[..]));
    // buf_alloc shrinks below what is in flight: no credit, no panic.
    c.on_packet(&guest(op::CREDIT_UPDATE, 1, 0), &[], now);
    client.write_all(b"more").unwrap();
    c.on_stream_event(EventSet::IN, now);
    assert_eq!(rx(&mut c, 100).unwrap().0.op, op::CREDIT_REQUEST);
    assert!(rx(&mut c, 100).is_none());
}
