//! vmpi's own ivshmem server: serves QEMU's `ivshmem-doorbell` devices with the
//! protocol of QEMU's `docs/specs/ivshmem-spec.rst` (Debian ships no
//! `ivshmem-server`).
//!
//! # Protocol (server → client only; every message is one little-endian `i64`,
//! optionally with one file descriptor attached through `SCM_RIGHTS`)
//! 1. on connect: the protocol version `0`; the client's own peer id; `-1` with the
//!    shared-memory fd;
//! 2. for every other end that ever had a client: its id once per vector, each with
//!    one of its eventfds; on an end's first connection only, every connected peer
//!    is told the new client's id with each of its eventfds;
//! 3. the client's own id once per vector with its own eventfds (QEMU listens on
//!    them: a peer's doorbell write to `(id << 16) | vector` signals them);
//! 4. nothing when a client disconnects (see the eventfds below).
//!
//! # Design
//! - **One socket per channel end**, not per channel or per system. The client
//!   sends nothing, so a server learns who connected only from *where*: a socket per
//!   end lets the id be fixed in advance (lower rank = 0, higher = 1, the monitor 2
//!   later), so the guest command line can name it, and a second QEMU on an end is
//!   refused. A socket per system could not even choose the right shared-memory fd.
//! - One thread serves every socket of a system with `poll(2)`; a pipe stops it.
//!   It never blocks on a client for long: writes time out after one second.
//! - A client connecting to an occupied end waits up to [`WAIT_FOR_HANG_UP`] for the
//!   occupant to hang up (a restarted VM may connect before its predecessor's
//!   socket is gone), then is refused.
//! - Eventfds belong to an **end**, for the server's life: a restarted VM gets the
//!   same ones as its predecessor, and its peers are told nothing, neither the
//!   hang-up nor the new connection. QEMU 7.2's `ivshmem` frees a peer's eventfd
//!   array on a disconnect notice ("id, no fd") and then writes into the freed array
//!   when that id connects again: a restarted partition whose new VM later exited
//!   made every peer's QEMU abort ("double free or corruption"). Fixed ids per end
//!   therefore need fixed eventfds. A ring while the end has no VM is a write to an
//!   eventfd the server holds; the next VM may see it as one spurious doorbell.
//!   Whether a peer is alive is the channel's business (`layout::mark_dead`), not
//!   the doorbell's.
//!
//! # Assumptions
//! - Linux (`eventfd`, `SCM_RIGHTS`), x86_64 little-endian like QEMU's host.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client connecting to an occupied end waits for the occupant to hang
/// up before it is refused.
pub const WAIT_FOR_HANG_UP: Duration = Duration::from_secs(1);
/// The protocol version QEMU 7.2 speaks.
pub const PROTOCOL_VERSION: i64 = 0;
/// Interrupt vectors per peer: 0 = data (the peer wrote to a ring), 1 = control
/// (reserved for the monitor: revoke, cancel).
pub const VECTORS: usize = 2;

/// Doorbell server errors.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    /// A socket could not be created.
    #[error("doorbell socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("doorbell server: {0}")]
    Io(#[from] io::Error),
}

/// What the server reports as clients come and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A QEMU completed the handshake on channel `channel`, end `peer`.
    Connected {
        /// Channel index.
        channel: usize,
        /// Peer id (end).
        peer: usize,
    },
    /// That QEMU hung up.
    Disconnected {
        /// Channel index.
        channel: usize,
        /// Peer id (end).
        peer: usize,
    },
    /// A second client on an occupied end was refused.
    Refused {
        /// Channel index.
        channel: usize,
        /// Peer id (end).
        peer: usize,
    },
}

/// One channel to serve: its shared-memory file and one socket path per end
/// (index = peer id).
#[derive(Debug)]
pub struct ChannelSpec {
    /// The shared-memory file (handed to each client).
    pub shm: File,
    /// Socket paths, one per end.
    pub sockets: Vec<PathBuf>,
}

/// A running doorbell server; dropping it stops the thread and removes its sockets.
#[derive(Debug)]
pub struct DoorbellServer {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    paths: Vec<PathBuf>,
}

impl DoorbellServer {
    /// Binds every socket (so QEMU may connect as soon as this returns) and starts
    /// serving. Events go to `events` (ignored if the receiver is gone).
    pub fn start(
        channels: Vec<ChannelSpec>,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, DoorbellError> {
        let mut paths = Vec::new();
        let mut chans = Vec::new();
        for spec in channels {
            let mut ends = Vec::new();
            for path in spec.sockets {
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).map_err(|source| DoorbellError::Bind {
                    path: path.clone(),
                    source,
                })?;
                listener.set_nonblocking(true)?;
                paths.push(path);
                ends.push(End {
                    listener,
                    conn: None,
                    eventfds: Vec::new(),
                    waiting: None,
                });
            }
            chans.push(Chan {
                shm: spec.shm,
                ends,
            });
        }
        let (stop_r, stop_w) = pipe()?;
        let mut server = Server {
            chans,
            events,
            stop: stop_r,
        };
        let thread = std::thread::Builder::new()
            .name("doorbells".into())
            .spawn(move || server.run())?;
        Ok(Self {
            stop: Some(stop_w),
            thread: Some(thread),
            paths,
        })
    }

    /// Stops serving (QEMUs keep the fds they already have) and removes the sockets.
    pub fn stop(&mut self) {
        // Closing the write end wakes the poll loop with POLLHUP.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in self.paths.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for DoorbellServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct End {
    listener: UnixListener,
    conn: Option<Conn>,
    /// One eventfd per vector, made at the end's first connection, kept for good.
    eventfds: Vec<OwnedFd>,
    /// A client that connected while `conn` was still up, and until when it waits.
    waiting: Option<(UnixStream, Instant)>,
}

struct Conn {
    stream: UnixStream,
}

struct Chan {
    shm: File,
    ends: Vec<End>,
}

struct Server {
    chans: Vec<Chan>,
    events: mpsc::Sender<Event>,
    stop: OwnedFd,
}

#[derive(Clone, Copy)]
enum Source {
    Stop,
    Listener(usize, usize),
    Conn(usize, usize),
}

impl Server {
    fn run(&mut self) {
        loop {
            let mut fds = vec![pollfd(self.stop.as_raw_fd())];
            let mut sources = vec![Source::Stop];
            for (c, ch) in self.chans.iter().enumerate() {
                for (e, end) in ch.ends.iter().enumerate() {
                    fds.push(pollfd(end.listener.as_raw_fd()));
                    sources.push(Source::Listener(c, e));
                    if let Some(conn) = &end.conn {
                        fds.push(pollfd(conn.stream.as_raw_fd()));
                        sources.push(Source::Conn(c, e));
                    }
                }
            }
            let waiting = self
                .chans
                .iter()
                .flat_map(|c| &c.ends)
                .any(|e| e.waiting.is_some());
            let timeout = if waiting { 20 } else { -1 };
            // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for (pfd, src) in fds.iter().zip(sources) {
                if pfd.revents == 0 {
                    continue;
                }
                match src {
                    Source::Stop => return,
                    Source::Listener(c, e) => self.accept(c, e),
                    Source::Conn(c, e) => self.readable(c, e),
                }
            }
            self.refuse_overdue();
        }
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    fn accept(&mut self, c: usize, e: usize) {
        let Ok((stream, _)) = self.chans[c].ends[e].listener.accept() else {
            return;
        };
        // A restarted VM may connect before this thread has seen its predecessor
        // hang up: settle the old connection first.
        if self.chans[c].ends[e]
            .conn
            .as_ref()
            .is_some_and(|old| !alive(old))
        {
            self.hang_up(c, e);
        }
        let end = &mut self.chans[c].ends[e];
        if end.conn.is_some() {
            // One VM per end. The old one may be on its way out (its process still
            // exiting): the newcomer waits up to WAIT_FOR_HANG_UP, then is refused
            // (closing the stream makes QEMU fail to start).
            if end.waiting.is_none() {
                end.waiting = Some((stream, Instant::now() + WAIT_FOR_HANG_UP));
            } else {
                drop(stream);
                self.emit(Event::Refused {
                    channel: c,
                    peer: e,
                });
            }
            return;
        }
        self.serve(c, e, stream);
    }

    /// Refuses every waiting client whose predecessor did not hang up in time.
    fn refuse_overdue(&mut self) {
        let now = Instant::now();
        let mut refused = Vec::new();
        for (c, ch) in self.chans.iter_mut().enumerate() {
            for (e, end) in ch.ends.iter_mut().enumerate() {
                if end.waiting.as_ref().is_some_and(|(_, until)| *until <= now) {
                    end.waiting = None;
                    refused.push(Event::Refused {
                        channel: c,
                        peer: e,
                    });
                }
            }
        }
        for ev in refused {
            self.emit(ev);
        }
    }

    /// Runs the handshake with a client on a free end.
    fn serve(&mut self, c: usize, e: usize, stream: UnixStream) {
        // On a failed handshake, dropping the stream ends the client.
        if let Ok(conn) = self.handshake(c, e, stream) {
            self.chans[c].ends[e].conn = Some(conn);
            self.emit(Event::Connected {
                channel: c,
                peer: e,
            });
        }
    }

    fn handshake(&mut self, c: usize, e: usize, stream: UnixStream) -> io::Result<Conn> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let fresh = self.chans[c].ends[e].eventfds.is_empty();
        if fresh {
            self.chans[c].ends[e].eventfds = (0..VECTORS)
                .map(|_| eventfd())
                .collect::<io::Result<Vec<_>>>()?;
        }
        let ch = &self.chans[c];
        let own: Vec<RawFd> = ch.ends[e].eventfds.iter().map(|f| f.as_raw_fd()).collect();
        let id = e as i64;
        let s = stream.as_raw_fd();
        send_msg(s, PROTOCOL_VERSION, None)?;
        send_msg(s, id, None)?;
        send_msg(s, -1, Some(ch.shm.as_raw_fd()))?;
        for (p, end) in ch.ends.iter().enumerate().filter(|(p, _)| *p != e) {
            if fresh && let Some(peer) = &end.conn {
                for &fd in &own {
                    // A peer that cannot be told will be dropped when it hangs up.
                    let _ = send_msg(peer.stream.as_raw_fd(), id, Some(fd));
                }
            }
            for fd in &end.eventfds {
                send_msg(s, p as i64, Some(fd.as_raw_fd()))?;
            }
        }
        for &fd in &own {
            send_msg(s, id, Some(fd))?;
        }
        Ok(Conn { stream })
    }

    fn readable(&mut self, c: usize, e: usize) {
        let Some(conn) = &mut self.chans[c].ends[e].conn else {
            return;
        };
        let mut buf = [0u8; 64];
        conn.stream.set_nonblocking(true).ok();
        match conn.stream.read(&mut buf) {
            // Clients send nothing; discard anything they do send.
            Ok(n) if n > 0 => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            _ => {
                self.chans[c].ends[e].conn = None;
                self.emit(Event::Disconnected {
                    channel: c,
                    peer: e,
                });
            }
        }
    }

    /// Drops end `e`'s connection (its peers are told nothing: see the module docs).
    fn hang_up(&mut self, c: usize, e: usize) {
        self.chans[c].ends[e].conn = None;
        self.emit(Event::Disconnected {
            channel: c,
            peer: e,
        });
    }
}

/// Whether a client is still connected (its socket is not at end of stream).
fn alive(conn: &Conn) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a local; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            conn.stream.as_raw_fd(),
            (&raw mut b).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0 || (n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock)
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A fresh non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd succeeded: `fd` is a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const CMSG_BUF: usize = 64;

/// Sends one protocol message: `value`, with `fd` attached if given.
pub fn send_msg(sock: RawFd, value: i64, fd: Option<RawFd>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; CMSG_BUF / 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as _;
        // SAFETY: msg_control points at `cbuf` (64 aligned bytes), larger than
        // CMSG_SPACE(int) = 24, so the first header and its data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
    }
    loop {
        // SAFETY: `msg` and everything it points to (iov, bytes, cbuf) live across the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n == bytes.len() as isize {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if n < 0 {
            err
        } else {
            io::ErrorKind::WriteZero.into()
        });
    }
}

/// Receives one protocol message (the client side, for tests and tools): the value
/// and the fd attached to it, if any. `Ok(None)` at end of stream.
pub fn recv_msg(sock: RawFd) -> io::Result<Option<(i64, Option<OwnedFd>)>> {
    let mut bytes = [0u8; 8];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; CMSG_BUF / 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF as _;
    let n = loop {
        // SAFETY: `msg` points at `bytes` and `cbuf`, both live and writable.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    if n != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short ivshmem message",
        ));
    }
    let mut fd = None;
    // SAFETY: the kernel filled `cbuf` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR
    // stay within it, and an SCM_RIGHTS header carries at least one int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some((i64::from_le_bytes(bytes), fd)))
}

#[cfg(test)]
mod tests;
