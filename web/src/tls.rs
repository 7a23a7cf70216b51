//! The HTTPS accept loop: tokio-rustls for TLS, hyper-util for HTTP/1.1 and
//! HTTP/2, graceful shutdown with a bound.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1 client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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

/// How many connections the admin listener keeps open: beyond them a new
/// connection is closed at once, before its TLS handshake.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// In all.
    pub total: usize,
    /// From one client address.
    pub per_address: usize,
}

impl Default for ConnLimits {
    /// 4,096 in all, 1,024 per address (a benchmark's or a load balancer's
    /// many connections come from one address).
    fn default() -> Self {
        Self {
            total: 4096,
            per_address: 1024,
        }
    }
}

/// Open connections per client address, under [`ConnLimits`].
#[derive(Default)]
struct OpenConns {
    total: usize,
    by_address: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    open: Arc<std::sync::Mutex<OpenConns>>,
    ip: std::net::IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut o = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_address.remove(&self.ip);
            }
        }
    }
}

fn admit(
    open: &Arc<std::sync::Mutex<OpenConns>>,
    limits: ConnLimits,
    ip: std::net::IpAddr,
) -> Option<Admitted> {
    let mut o = open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
async fn call_app<S>(app: S, req: hyper::Request<Incoming>) -> Result<Response, Infallible>
where
    S: Service<hyper::Request<Body>, Response = Response, Error = Infallible>,
{
    let watch = (req.version() <= Version::HTTP_11 && !req.body().is_end_stream())
        .then(|| Arc::new(AtomicBool::new(false)));
    let req = match &watch {
        Some(flag) => req.map(|inner| {
            Body::new(Watched {
                inner,
                read_to_end: Arc::clone(flag),
            })
        }),
        None => req.map(Body::new),
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
/// Each connection runs in its own task: TLS handshake (bounded by 10 s; a
/// failure is logged at `debug` and only drops that connection), then HTTP/1.1
/// or HTTP/2 (auto-detected; offer `h2` in `tls.alpn_protocols` to let
/// clients negotiate it). Requests carry `ConnectInfo<SocketAddr>` of the
/// peer. On shutdown the loop stops accepting, asks every connection to finish
/// its in-flight requests and close, waits up to [`SHUTDOWN_GRACE`], then
/// aborts what is left; the function returns once every connection task has
/// ended. Beyond `limits` a new connection is closed before its handshake.
/// An HTTP/1 answer given before the request body was read to its end
/// closes the connection and says so (`Connection: close`).
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
) -> io::Result<()>
where
    S: Service<hyper::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let open = Arc::new(std::sync::Mutex::new(OpenConns::default()));
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
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
        // Taken before the spawn so shutdown also waits for connections that
        // are still in their TLS handshake.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let app = app.clone();
        conns.spawn(async move {
            let _admitted = admitted;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                call_app(app.clone(), req)
            });
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::debug!(
        ?local,
        open = conns.len(),
        "admin listener closed; draining connections"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
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
