//! The HTTPS accept loop: tokio-rustls for TLS, hyper-util for HTTP/1.1 and
//! HTTP/2, each connection under the bounds of `conn`, graceful shutdown
//! with a bound.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Version};
use axum::response::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::conn::{admit, drive, Activity, Busy, ConnLimits, Handshake, OpenConns, TimedBody};

/// How long in-flight connections get to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 128;
/// HTTP/2 keep-alive: a ping after this much silence…
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// …that must be answered within this.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body that records whether it was read to its end.
struct Watched {
    inner: Incoming,
    read_to_end: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = <Incoming as HttpBody>::Data;
    type Error = <Incoming as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read_to_end.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Calls `app` with `req`. An HTTP/1 answer given without reading the
/// request's body to its end (a 404, 405 or 401, a body over the limit, a
/// handler that takes no body) says `Connection: close`: hyper closes such
/// a connection after the answer, and a client told nothing would send its
/// next request on it and find it closed under that request.
/// The body is read under `body_limit` ([`TimedBody`]).
async fn call_app<S>(
    app: S,
    req: hyper::Request<Incoming>,
    body_limit: Duration,
) -> Result<Response, Infallible>
where
    S: Service<hyper::Request<Body>, Response = Response, Error = Infallible>,
{
    let watch = (req.version() <= Version::HTTP_11 && !req.body().is_end_stream())
        .then(|| Arc::new(AtomicBool::new(false)));
    let req = match &watch {
        Some(flag) => req.map(|inner| {
            Body::new(TimedBody::new(
                Watched {
                    inner,
                    read_to_end: Arc::clone(flag),
                },
                body_limit,
            ))
        }),
        None => req.map(|b| Body::new(TimedBody::new(b, body_limit))),
    };
    let mut resp = app.oneshot(req).await?;
    if watch.is_some_and(|flag| !flag.load(Ordering::Relaxed)) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// Serves `app` (an [`crate::AdminApp`] or any axum `Router`) over TLS on
/// `listener` until `shutdown` is cancelled.
///
/// Each connection runs in its own task: the TLS handshake (on
/// `handshakes`, a runtime the caller gives: a thread of its own at a
/// lower CPU priority keeps a flood of handshakes, the costly part of a new
/// connection, from starving the rest of the process), then HTTP/1.1
/// or HTTP/2 (auto-detected; offer `h2` in `tls.alpn_protocols` to let
/// clients negotiate it). Requests carry `ConnectInfo<SocketAddr>` of the
/// peer. Beyond `limits` a new connection is closed before its handshake;
/// one that has no complete request header within
/// [`ConnLimits::request_header`] of its accept (handshake included) is
/// closed, as is an HTTP/1 one whose next header is that late, a request
/// body that is not in within [`ConnLimits::request_body`] fails (400),
/// and a connection without a request in flight for [`ConnLimits::idle`]
/// is closed. A failed handshake is logged at `debug` and drops only that
/// connection. On shutdown the loop stops accepting, asks every
/// connection to finish its in-flight requests and close, waits up to
/// [`SHUTDOWN_GRACE`], then aborts what is left; the function returns once
/// every connection task has ended. An HTTP/1 answer given before the
/// request body was read to its end closes the connection and says so
/// (`Connection: close`).
///
/// # Errors
/// An accept error that says the listener itself is unusable (anything but
/// per-connection failures and resource exhaustion, which are logged and
/// retried).
pub async fn serve_tls<S>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: S,
    shutdown: CancellationToken,
    limits: ConnLimits,
    handshakes: tokio::runtime::Handle,
) -> io::Result<()>
where
    S: Service<hyper::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let open = Arc::new(Mutex::new(OpenConns::default()));
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer when it starts reading a head: on a new
        // connection and whenever a kept-alive one goes idle.
        .header_read_timeout(limits.request_header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let local = listener.local_addr().ok();
    let mut conns = JoinSet::new();
    let mut result = Ok(());

    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                    continue;
                }
                Err(e) if is_fatal_accept_error(&e) => {
                    tracing::error!(error = %e, ?local, "admin listener failed");
                    result = Err(e);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?local, "accept failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };

        let Some(admitted) = admit(&open, limits, peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open");
            drop(tcp);
            continue;
        };
        let first_deadline = Instant::now() + limits.request_header;
        let acceptor = acceptor.clone();
        let handshakes = handshakes.clone();
        let builder = builder.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _admitted = admitted;
            let handshake = Handshake(handshakes.spawn(async move {
                tokio::time::timeout_at(first_deadline, acceptor.accept(tcp)).await
            }));
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                r = handshake => match r {
                    Some(Ok(Ok(stream))) => stream,
                    Some(Ok(Err(e))) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Some(Err(_)) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                    None => return,
                },
            };
            let activity = Activity::new();
            let svc = {
                let activity = Arc::clone(&activity);
                let body_limit = limits.request_body;
                tower::service_fn(move |req: hyper::Request<Incoming>| {
                    let in_flight = activity.begin();
                    let mut req = req;
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    let answer = call_app(app.clone(), req, body_limit);
                    async move {
                        let resp = answer.await?;
                        Ok::<_, Infallible>(resp.map(|body| Busy {
                            body,
                            _in_flight: in_flight,
                        }))
                    }
                })
            };
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            drive(
                conn,
                &activity,
                first_deadline,
                limits.idle,
                &shutdown,
                peer,
            )
            .await;
        });
    }

    drop(listener);
    tracing::debug!(
        ?local,
        open = conns.len(),
        "admin listener closed; draining connections"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?local,
            open = conns.len(),
            "admin connections did not finish in time; aborting them"
        );
    }
    conns.shutdown().await;
    result
}

/// Failures of one incoming connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Errors meaning the listening socket itself is unusable.
fn is_fatal_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::NotConnected | io::ErrorKind::Unsupported
    )
}
