//! One admin connection's bounds: admission under [`ConnLimits`], the
//! deadline to its first request, the deadline of each request body, and
//! the close of an idle connection. `tls` runs the accept loop around them.
//!
//! hyper bounds what it can (HTTP/1 headers, HTTP/2 streams and pings);
//! what it cannot is here: hyper-util's protocol detection reads the
//! first bytes with no timer, an HTTP/2 connection that opens no stream
//! stays open as long as it answers pings, and no request body has a
//! deadline.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// How many connections the admin listener keeps open and how long each
/// may take; beyond the counts a new connection is closed at once, before
/// its TLS handshake.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one client address.
    pub per_address: usize,
    /// From accept to the first request's complete header, the TLS
    /// handshake included; on HTTP/1 also from one answer to the next
    /// request's complete header (the keep-alive bound).
    pub request_header: Duration,
    /// From a request's header to the end of its body.
    pub request_body: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: `GOAWAY` first, so no request is lost).
    pub idle: Duration,
}

impl Default for ConnLimits {
    /// 4,096 connections in all, 1,024 per address (a benchmark's or a
    /// load balancer's many connections come from one address); 10 s to a
    /// complete request header, 30 s for a body (1 MiB at most: 35 KB/s),
    /// 60 s idle.
    fn default() -> Self {
        Self {
            total: 4096,
            per_address: 1024,
            request_header: Duration::from_secs(10),
            request_body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// How long a connection that was asked to close (idle, or shutdown) may
/// take to do so once no request is in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

// ---- admission ------------------------------------------------------------

/// Open connections per client address, under [`ConnLimits`].
#[derive(Default)]
pub(crate) struct OpenConns {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
pub(crate) struct Admitted {
    open: Arc<Mutex<OpenConns>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_address.remove(&self.ip);
            }
        }
    }
}

/// A place for a connection from `ip`, if `limits` leave one.
pub(crate) fn admit(
    open: &Arc<Mutex<OpenConns>>,
    limits: ConnLimits,
    ip: IpAddr,
) -> Option<Admitted> {
    let mut o = open.lock().unwrap_or_else(PoisonError::into_inner);
    let here = o.by_address.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.total || here >= limits.per_address {
        return None;
    }
    o.total += 1;
    *o.by_address.entry(ip).or_insert(0) += 1;
    Some(Admitted {
        open: Arc::clone(open),
        ip,
    })
}

// ---- requests in flight ---------------------------------------------------

/// What a connection's requests tell its [`drive`] loop.
pub(crate) struct Activity(Mutex<Load>);

#[derive(Clone, Copy)]
struct Load {
    /// Requests whose header arrived and whose answer is not yet sent.
    in_flight: usize,
    /// Whether any request's header arrived.
    served: bool,
    /// When `in_flight` last fell to zero.
    idle_since: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Load {
            in_flight: 0,
            served: false,
            idle_since: Instant::now(),
        })))
    }

    fn load(&self) -> Load {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's header arrived: the connection is busy until the
    /// returned guard (kept by the answer's body) is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.in_flight += 1;
        l.served = true;
        InFlight(Arc::clone(self))
    }
}

/// One request in flight; its end when dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut l = self.0 .0.lock().unwrap_or_else(PoisonError::into_inner);
        l.in_flight -= 1;
        if l.in_flight == 0 {
            l.idle_since = Instant::now();
        }
    }
}

/// An answer's body that keeps its request [`InFlight`] until hyper has
/// sent it (or dropped it): a long answer, such as the event stream, is
/// not idleness.
pub(crate) struct Busy<B> {
    pub(crate) body: B,
    pub(crate) _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Busy<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// ---- request bodies -------------------------------------------------------

/// A request body that did not end within [`ConnLimits::request_body`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline has
/// passed; the handler's extractor answers 400 and hyper closes the
/// connection (its body was not read to the end).
pub(crate) struct TimedBody<B> {
    body: B,
    deadline: Instant,
    limit: Duration,
    /// Made on the first wait only: a body that is already buffered (most
    /// are) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(body: B, limit: Duration) -> Self {
        Self {
            body,
            deadline: Instant::now() + limit,
            limit,
            timer: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimeout(this.limit).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// ---- handshakes -----------------------------------------------------------

/// A handshake spawned on the runtime the caller of `serve_tls` gave for
/// them; aborted when dropped (its connection's task ended first).
pub(crate) struct Handshake<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Future for Handshake<T> {
    /// `None` if the handshake task was aborted or panicked.
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl<T> Drop for Handshake<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- the connection -------------------------------------------------------

/// Drives one connection to its end under its bounds: closed at once if
/// no request header is complete by `first_deadline`, asked to close
/// (HTTP/2 `GOAWAY`) after `idle` without a request in flight or when
/// `shutdown` is cancelled, and dropped if it has not closed
/// [`CLOSE_GRACE`] later with nothing in flight.
pub(crate) async fn drive<C>(
    conn: C,
    activity: &Activity,
    first_deadline: Instant,
    idle: Duration,
    shutdown: &CancellationToken,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut check_at = first_deadline;
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(check_at) => {
                let load = activity.load();
                let now = Instant::now();
                if !load.served {
                    tracing::debug!(%peer, "admin connection closed: no request in time");
                    return;
                }
                if load.in_flight > 0 {
                    check_at = now + idle;
                } else if closing {
                    tracing::debug!(%peer, "admin connection dropped: it did not close");
                    return;
                } else if load.idle_since + idle > now {
                    check_at = load.idle_since + idle;
                } else {
                    tracing::debug!(%peer, "admin connection idle: closing it");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    check_at = now + CLOSE_GRACE;
                }
            }
        }
    }
}
