//! What a connection may cost the service before it has sent a request. poem's
//! server has no header-read timeout and no connection cap, so a client that opens
//! sockets and sends nothing, or trickles a request head a byte at a time
//! (slowloris), would hold a descriptor each for ever; some thousand of them lock
//! everyone out. The listener is therefore wrapped:
//! - a new connection must send a whole request head within `header_timeout`;
//! - between requests, a connection silent in both directions for `idle_timeout` is
//!   closed, and the next head, once begun, must be complete within `header_timeout`;
//! - at `max_connections`, a new connection sheds the connection that has waited
//!   longest for a request head (so `/healthz` and real requests still get in); when
//!   every connection is busy with a request, the new one is closed at once;
//! - accept errors (no descriptors left) pause accepting briefly instead of spinning.
//!
//! Empty lines before a request line are skipped by the HTTP parser (httparse), so
//! they neither begin a head nor end one here: a client sending only `\r\n\r\n`
//! is still waiting for its head, and under its deadline. A connection whose head is
//! complete is handled; the request timeout (`app::REQUEST_TIMEOUT`) and the body
//! limit bound that, and as a backstop, if no answer has begun within
//! `request_timeout + header_timeout` the connection is closed, so a head this
//! wrapper took for complete while the parser did not can never hold it for ever.
//! HTTP/2 with prior knowledge (h2c) is refused: no browser or Bitrix24 speaks it,
//! its frames (a PING a minute) would keep a connection busy for ever, and a proxy
//! in front terminates TLS and HTTP/2 itself.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long connections may wait and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// For a whole request head: from a connection's opening, or from the first byte
    /// of a later head.
    pub header_timeout: Duration,
    /// Silence between two requests of a kept-alive connection.
    pub idle_timeout: Duration,
    /// Open connections; `None`: derived from the descriptor limit at start-up.
    pub max_connections: Option<usize>,
    /// How long a request may be handled (`app::REQUEST_TIMEOUT`); with
    /// `header_timeout`, how long a connection may wait for the start of an answer.
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            request_timeout: crate::app::REQUEST_TIMEOUT,
        }
    }
}

/// Descriptors kept for the database pool, outgoing calls, files and logs.
const RESERVED_DESCRIPTORS: u64 = 256;
const MIN_CONNECTIONS: u64 = 64;
const MAX_CONNECTIONS: u64 = 10_000;
/// Pause after an accept error (typically no descriptor left).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Raises the soft limit of open descriptors to the hard one (a container often
/// starts at 1 024 of a far larger hard limit) and returns the limit in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let Some(current) = limit.current else {
        return u64::MAX;
    };
    match limit.maximum {
        Some(max) if max > current => {
            let raised = Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => max,
                Err(e) => {
                    tracing::warn!(error = %e, current, "не удалось поднять лимит открытых файлов");
                    current
                }
            }
        }
        _ => current,
    }
}

/// Connections the kernel may hold before they are accepted. A burst of new
/// connections (a flood, or many clients at once) overflowing a short queue is
/// silently dropped; the cap above decides what is kept.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the service's port with [`LISTEN_BACKLOG`] (the kernel may cap it lower).
pub fn bind(listen: std::net::SocketAddr) -> io::Result<poem::listener::TcpAcceptor> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own bind does: a restart may reuse the port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    poem::listener::TcpAcceptor::from_tokio(socket.listen(LISTEN_BACKLOG)?)
}

/// The connection cap for a descriptor limit: what is left after the reserve.
pub fn max_connections_for(descriptors: u64) -> usize {
    let cap = descriptors
        .saturating_sub(RESERVED_DESCRIPTORS)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Marks a connection that is handling a request (`waiting_since`).
const BUSY: u64 = u64::MAX;

struct ConnState {
    /// Milliseconds since the registry's epoch at which the connection began to
    /// wait for a request head; [`BUSY`] while a request is handled.
    waiting_since: AtomicU64,
    shed: AtomicBool,
    waker: AtomicWaker,
}

struct Registry {
    epoch: std::time::Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(BUSY - 1)
    }

    /// Registers a new connection, shedding the longest-waiting one at the cap.
    /// `None`: at the cap with every connection busy; refuse the new one.
    fn admit(&self, max: usize) -> Option<(u64, Arc<ConnState>)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= max {
            let oldest = open
                .values()
                .filter(|c| !c.shed.load(Ordering::Relaxed))
                .filter(|c| c.waiting_since.load(Ordering::Relaxed) != BUSY)
                .min_by_key(|c| c.waiting_since.load(Ordering::Relaxed))
                .cloned();
            let oldest = oldest?;
            oldest.shed.store(true, Ordering::Relaxed);
            oldest.waker.wake();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            waiting_since: AtomicU64::new(self.now_ms()),
            shed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        open.insert(id, state.clone());
        Some((id, state))
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// A listener's acceptor under [`ConnectionLimits`].
pub struct GuardedAcceptor<A> {
    inner: A,
    limits: ConnectionLimits,
    max: usize,
    registry: Arc<Registry>,
}

impl<A> GuardedAcceptor<A> {
    /// `limits.max_connections` unset: the cap follows `descriptors`, the limit of
    /// open descriptors ([`raise_descriptor_limit`]).
    pub fn new(inner: A, limits: ConnectionLimits, descriptors: u64) -> Self {
        let max = limits
            .max_connections
            .unwrap_or_else(|| max_connections_for(descriptors));
        tracing::debug!(max_connections = max, descriptors, "Лимит соединений");
        Self {
            inner,
            limits,
            max: max.max(1),
            registry: Arc::new(Registry {
                epoch: std::time::Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (io, local, remote, scheme) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // poem retries at once; out of descriptors that would spin.
                    tracing::warn!(error = %e, "не удалось принять соединение");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some((id, state)) = self.registry.admit(self.max) else {
                tracing::warn!("Все соединения заняты запросами; новое соединение закрыто");
                drop(io);
                continue;
            };
            let guarded = GuardedIo::new(io, id, state, self.registry.clone(), self.limits);
            return Ok((guarded, local, remote, scheme));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being handled, until its answer begins.
    Busy,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4) starts with this.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A connection under [`ConnectionLimits`].
pub struct GuardedIo<T> {
    inner: T,
    id: u64,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
    limits: ConnectionLimits,
    phase: Phase,
    /// Some byte of the current head has arrived.
    began_head: bool,
    /// How much of `\r\n\r\n` (the end of a head) the last bytes matched.
    crlf: u8,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

impl<T> GuardedIo<T> {
    fn new(
        inner: T,
        id: u64,
        state: Arc<ConnState>,
        registry: Arc<Registry>,
        limits: ConnectionLimits,
    ) -> Self {
        Self {
            inner,
            id,
            state,
            registry,
            limits,
            phase: Phase::Head,
            began_head: false,
            crlf: 0,
            deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
        }
    }

    fn wait_for_head(&mut self, within: Duration) {
        self.phase = Phase::Head;
        self.began_head = false;
        self.crlf = 0;
        self.deadline.as_mut().reset(Instant::now() + within);
        self.state
            .waiting_since
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }

    /// Follows the bytes read: a head begun, a head complete. Err: HTTP/2 with
    /// prior knowledge, refused (see the module documentation).
    fn saw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.phase == Phase::Busy {
            return Ok(());
        }
        let mut bytes = bytes;
        if !self.began_head {
            // httparse skips empty lines before the request line (RFC 9112 §2.2
            // allows it): they begin no head, end none, and extend no deadline.
            let Some(start) = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
                return Ok(());
            };
            bytes = &bytes[start..];
            if bytes.starts_with(H2_PREFACE) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "HTTP/2 with prior knowledge is refused",
                ));
            }
            self.began_head = true;
            let within = self.limits.header_timeout;
            self.deadline.as_mut().reset(Instant::now() + within);
        }
        for &b in bytes {
            self.crlf = match (self.crlf, b) {
                (0 | 2, b'\r') => self.crlf + 1,
                (1 | 3, b'\n') => self.crlf + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.crlf == 4 {
                self.phase = Phase::Busy;
                self.state.waiting_since.store(BUSY, Ordering::Relaxed);
                // Ends when the answer begins (`wrote`).
                let within = self.limits.request_timeout + self.limits.header_timeout;
                self.deadline.as_mut().reset(Instant::now() + within);
                return Ok(());
            }
        }
        Ok(())
    }

    /// A write: the answer has begun (the next bytes read start a new head), or
    /// the connection is not idle. An interim answer (`100 Continue`) comes before
    /// the request's body, which is no head.
    fn wrote(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Busy && bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        match self.phase {
            Phase::Busy => self.wait_for_head(self.limits.idle_timeout),
            Phase::Head if !self.began_head => {
                let idle = self.limits.idle_timeout;
                self.deadline.as_mut().reset(Instant::now() + idle);
            }
            Phase::Head => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.shed.load(Ordering::Relaxed) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        this.state.waker.register(cx.waker());
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.saw(read)?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head, or no answer, in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T> GuardedIo<T> {
    /// Notes a write, and cuts off a client that reads nothing of its answer for
    /// `idle_timeout`, or a connection shed at the cap while it answers.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.wrote(bytes);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if self.state.shed.load(Ordering::Relaxed) {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                self.state.waker.register(cx.waker());
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the answer was not read in time",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, result, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.after_write(cx, result, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_descriptor_limit() {
        assert_eq!(max_connections_for(1024), 768);
        assert_eq!(max_connections_for(100), 64);
        assert_eq!(max_connections_for(u64::MAX), 10_000);
    }

    #[test]
    fn at_the_cap_the_longest_waiting_is_shed_and_busy_ones_are_kept() {
        let registry = Registry {
            epoch: std::time::Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        };
        let (_, first) = registry.admit(2).expect("room");
        let (_, second) = registry.admit(2).expect("room");
        first.waiting_since.store(BUSY, Ordering::Relaxed);
        let (_, _third) = registry.admit(2).expect("sheds the waiting one");
        assert!(second.shed.load(Ordering::Relaxed));
        assert!(!first.shed.load(Ordering::Relaxed));
        // Everyone left is busy or already shed: the next one is refused.
        let open = registry.open.lock().unwrap_or_else(PoisonError::into_inner);
        for c in open.values() {
            c.waiting_since.store(BUSY, Ordering::Relaxed);
        }
        drop(open);
        assert!(registry.admit(2).is_none());
    }

    fn registry() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: std::time::Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    #[tokio::test]
    async fn empty_lines_begin_no_head_and_h2_prior_knowledge_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let registry = registry();
        let (id, state) = registry.admit(10).expect("room");
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, id, state, registry.clone(), Default::default());
        let mut buf = [0u8; 256];
        client.write_all(b"\r\n\r\n\r\n").await.expect("write");
        let _ = io.read(&mut buf).await.expect("read");
        assert_eq!(io.phase, Phase::Head, "still waiting for a request line");
        assert!(!io.began_head);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let _ = io.read(&mut buf).await.expect("read");
        assert_eq!(io.phase, Phase::Busy);

        let (id, state) = registry.admit(10).expect("room");
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, id, state, registry, Default::default());
        client
            .write_all(b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let err = io.read(&mut buf).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[tokio::test]
    async fn a_handled_request_must_begin_its_answer_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let registry = registry();
        let (id, state) = registry.admit(10).expect("room");
        let (mut client, server) = tokio::io::duplex(4096);
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(50),
            request_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let mut io = GuardedIo::new(server, id, state, registry, limits);
        let mut buf = [0u8; 256];
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let _ = io.read(&mut buf).await.expect("read");
        assert_eq!(io.phase, Phase::Busy);
        // Nothing more comes and no answer begins: the read fails at the deadline.
        let err = io.read(&mut buf).await.expect_err("cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_head_is_followed_to_its_end_and_an_interim_answer_is_no_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let registry = registry();
        let (id, state) = registry.admit(10).expect("room");
        let (client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(
            server,
            id,
            state,
            registry.clone(),
            ConnectionLimits::default(),
        );
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut buf = [0u8; 256];
        // A head split across reads, its blank line too.
        for part in [
            &b"POST / HTTP/1.1\r\nExpect: 100-continue\r"[..],
            b"\n\r",
            b"\n",
        ] {
            client_write.write_all(part).await.expect("write");
            let n = io.read(&mut buf).await.expect("read");
            assert_eq!(n, part.len());
        }
        assert_eq!(io.phase, Phase::Busy);
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(io.phase, Phase::Busy, "the body is still to come");
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(io.phase, Phase::Head, "the next bytes start a new head");
        let n = client_read.read(&mut buf).await.expect("answer");
        assert!(n > 0);
        drop(io);
        assert!(
            registry
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }
}
