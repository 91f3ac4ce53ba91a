//! One upgraded socket's task: it reads client frames (through `reader::Reader`), answers
//! them, keeps the socket alive, runs the close handshake, and writes only when the flusher
//! hands a full socket over or when it closes.
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::fanout::Drain;
use super::frame::{close_code, close_frame, control_frame};
use super::reader::{Event, MAX_PENDING, Reader};
use super::{CloseReason, Hub, SocketHandle};

/// Why a socket's task ends.
enum End {
    /// EOF or an I/O error: the peer is gone.
    Gone,
    /// A close frame from the client, with its code (none: an empty close).
    ClientClose(Option<u16>),
    /// A protocol violation (1002), invalid UTF-8 (1007) or a message over the limit (1009).
    Violation(u16, &'static str),
    /// The hub asked the socket to close.
    Closed(CloseReason),
}

/// One upgraded socket's task, on the socket runtime: it reads and parses client frames
/// straight off the socket (readiness from the socket runtime's own reactor), and writes
/// only when its flusher handed writing over (the socket was full) or when it closes.
struct Conn {
    /// Client bytes not yet parsed. Starts with what arrived behind the upgrade request;
    /// after each parse it is empty (released, so an idle socket holds no read buffer) or
    /// holds at most `MAX_PENDING` bytes in a small allocation.
    rbuf: BytesMut,
    reader: Reader,
}

/// Bytes read per wake-up before the reader gets them.
const READ_CHUNK: usize = 16 * 1024;

impl Conn {
    /// Runs until the peer goes, breaks the protocol, closes, or the hub closes the socket.
    async fn serve(&mut self, h: &Arc<SocketHandle>) -> End {
        loop {
            if let Err(end) = self.parse(h) {
                return end;
            }
            if let Some(r) = h.close_reason() {
                return End::Closed(r);
            }
            let mut interest = Interest::READABLE;
            if h.task_writes() {
                match h.drain_as_task() {
                    Drain::Idle => {}
                    Drain::Full => interest = Interest::READABLE | Interest::WRITABLE,
                    Drain::Failed => return End::Gone,
                }
            }
            tokio::select! {
                biased;
                ready = h.stream.ready(interest) => match ready {
                    Ok(r) if r.is_readable() || r.is_read_closed() => {
                        match self.read_some(&h.stream) {
                            Ok(()) => h.mark_alive(),
                            Err(end) => return end,
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return End::Gone,
                },
                // A close request, or writing handed over. A notification sent while we
                // were busy leaves a permit, so none is lost.
                _ = h.wake.notified() => {}
            }
        }
    }

    /// Acts on every event in what was read: one socket-id reply per data message (§2.1),
    /// a pong per ping. A refused enqueue means the socket is closing: the caller sees why.
    fn parse(&mut self, h: &Arc<SocketHandle>) -> Result<(), End> {
        while let Some(event) = self.reader.next(&mut self.rbuf) {
            let queued = match event {
                Event::Message => h.enqueue(h.socket_id_frame.clone()),
                Event::Ping(payload) => h.enqueue(control_frame(0xA, &payload)),
                Event::Close(code) => return Err(End::ClientClose(code)),
                Event::Violation(code, why) => return Err(End::Violation(code, why)),
            };
            if !queued {
                break;
            }
        }
        self.release();
        Ok(())
    }

    /// Keeps an idle socket's read memory at nothing (or a few bytes of a cut frame).
    fn release(&mut self) {
        if self.rbuf.is_empty() {
            if self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new();
            }
        } else if self.rbuf.capacity() > 2 * MAX_PENDING {
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
    }

    /// Reads what the socket has (until it would block, or a chunk's worth).
    fn read_some(&mut self, stream: &TcpStream) -> Result<(), End> {
        let start = self.rbuf.len();
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            match stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Err(End::Gone),
                Ok(_) if self.rbuf.len() - start >= READ_CHUNK => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(End::Gone),
            }
        }
    }

    /// After the server's close frame: reads and drops what the client still sends until
    /// its close frame arrives, it goes, or `within` passes (RFC 6455 §7.1.1: the server
    /// then closes the TCP connection first). Reading the client's close before dropping
    /// the connection matters: a close with unread bytes pending makes the kernel send a
    /// reset, which may discard our close frame before the client read it (it then sees
    /// 1006).
    async fn await_client_close(&mut self, stream: &TcpStream, within: Duration) {
        self.reader.start_closing();
        let _ = tokio::time::timeout(within, async {
            loop {
                while let Some(event) = self.reader.next(&mut self.rbuf) {
                    if matches!(event, Event::Close(_) | Event::Violation(..)) {
                        return;
                    }
                }
                if stream.readable().await.is_err() || self.read_some(stream).is_err() {
                    return;
                }
            }
        })
        .await;
        self.rbuf = BytesMut::new();
    }
}

/// Writes all of `buf`, waiting for the socket to drain as needed; gives up when the peer
/// takes nothing for `stall`.
async fn write_all(stream: &TcpStream, mut buf: &[u8], stall: Duration) -> std::io::Result<()> {
    while !buf.is_empty() {
        tokio::time::timeout(stall, stream.writable())
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        match stream.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes what was queued for the socket before it started closing (its socket-id replies
/// and pongs come before a 1002, say), as its writer does: the flusher while the socket
/// takes it, this task once the socket is full.
async fn write_queued(h: &SocketHandle) {
    let mut hurried = false;
    while h.queued_bytes() > 0 {
        if h.task_writes() {
            match h.drain_as_task() {
                Drain::Idle => {}
                Drain::Full => {
                    if h.stream.writable().await.is_err() {
                        return;
                    }
                }
                Drain::Failed => return,
            }
        } else {
            // Listed on its flush queue: the flusher, on this runtime, gets to it (at once
            // once told: it does not pace a closing socket).
            if !std::mem::replace(&mut hurried, true) {
                h.hurry_flusher();
            }
            tokio::task::yield_now().await;
        }
    }
}

/// How long a close frame may take to go out: in all, and without the peer taking a byte.
struct Deadline {
    within: Duration,
    stall: Duration,
}

/// Takes writing over from the flusher, finishes a partly written frame (if any), then
/// writes the close frame; bounded in time because the peer may have stopped reading.
/// With `queued_first`, frames queued before the close go out first; otherwise (eviction)
/// they are dropped. Returns whether the close frame went out.
async fn send_close(
    h: &SocketHandle,
    close: Bytes,
    deadline: Deadline,
    queued_first: bool,
) -> bool {
    let sent = tokio::time::timeout(deadline.within, async {
        if queued_first {
            write_queued(h).await;
        }
        if let Some(front) = h.take_over() {
            write_all(&h.stream, &front, deadline.stall).await?;
        }
        write_all(&h.stream, &close, deadline.stall).await
    })
    .await;
    // Out of time: the flusher must not write to this socket any more either.
    h.take_over();
    sent.is_ok_and(|r| r.is_ok())
}

/// Owns one upgraded socket from registration to cleanup. `early` holds any client bytes
/// that arrived behind the upgrade request.
pub async fn run_socket(hub: Arc<Hub>, stream: TcpStream, early: Bytes, positions: bool) {
    let h = hub.register_socket(stream, positions);
    // Copied, then dropped: `early` is a slice of the HTTP server's read buffer (8 KiB or
    // more), which it would otherwise keep alive for the socket's whole life.
    let rbuf = BytesMut::from(&early[..]);
    drop(early);
    let mut conn = Conn {
        rbuf,
        reader: Reader::new(hub.config.max_inbound_frame),
    };
    let ended = conn.serve(&h).await;
    // Boxed: the close path's futures (the database cleanup above all) are allocated when
    // the socket closes instead of sizing every idle socket's task.
    Box::pin(close(hub, h, conn, ended)).await;
}

/// The end of a socket: the close handshake (if any) and the cleanup of its rows.
async fn close(hub: Arc<Hub>, h: Arc<SocketHandle>, mut conn: Conn, ended: End) {
    let (reason, close) = match ended {
        End::Gone | End::Closed(CloseReason::Terminated) => (CloseReason::Terminated, None),
        // The echo of §5.5.1: the client's code, or an empty close for an empty one
        // (1005, "no code", may not be sent).
        End::ClientClose(Some(code)) => (CloseReason::Terminated, Some(close_frame(code, ""))),
        End::ClientClose(None) => (CloseReason::Terminated, Some(control_frame(0x8, &[]))),
        End::Violation(code, why) => (CloseReason::Terminated, Some(close_frame(code, why))),
        End::Closed(CloseReason::Evicted) => (
            CloseReason::Evicted,
            Some(close_frame(close_code::TRY_AGAIN_LATER, "slow consumer")),
        ),
        End::Closed(CloseReason::Shutdown) => (
            CloseReason::Shutdown,
            Some(close_frame(close_code::GOING_AWAY, "server shutting down")),
        ),
    };
    h.request_close(reason);
    // The client already closed (its close was answered above, or was itself the
    // violation): nothing more to wait for.
    let client_closed = matches!(ended, End::ClientClose(_)) || conn.reader.peer_closed();
    // An evicted peer gets longer to take the close frame: it is slow by definition, and a
    // clean 1013 tells it why it was dropped. It may read the megabytes in its kernel
    // buffers ahead of the close slowly (a busy machine, a busy tab): it is given up on
    // when it stops reading for 5 s, or after 30 s in all.
    let deadline = if reason == CloseReason::Evicted {
        Deadline {
            within: Duration::from_secs(30),
            stall: Duration::from_secs(5),
        }
    } else {
        Deadline {
            within: Duration::from_secs(1),
            stall: Duration::from_secs(1),
        }
    };
    // An evicted peer reads its backlog (up to megabytes in kernel buffers) before it
    // reaches our close: its answer gets up to 30 s. Dropping the connection earlier, while
    // the backlog drains, would reset it as soon as the peer sent anything (a pong, its
    // close), and the reset discards the close frame it has not read yet.
    let close_wait = if reason == CloseReason::Evicted {
        hub.config.close_wait.max(Duration::from_secs(30))
    } else {
        hub.config.close_wait
    };
    let handshake = async {
        match close {
            Some(frame) => {
                let queued_first = reason != CloseReason::Evicted;
                if send_close(&h, frame, deadline, queued_first).await && !client_closed {
                    conn.await_client_close(&h.stream, close_wait).await;
                }
            }
            None => {
                h.take_over();
            }
        }
    };
    if reason == CloseReason::Shutdown {
        // The shutdown waits (bounded) for sockets to leave the hub: they leave once their
        // close handshake is over, so the process does not exit under it.
        handshake.await;
        hub.socket_ended(&h).await;
    } else {
        tokio::join!(hub.socket_ended(&h), handshake);
    }
    // The handle (and with it the descriptor) may outlive this task for a moment in a
    // flush queue or a request's hands; the peer learns now that the socket is gone.
    let _ = SockRef::from(&h.stream).shutdown(Shutdown::Both);
}
