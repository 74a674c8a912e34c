//! The gRPC server: HTTP/2 over any [`Net`](crate::net::Net) listener,
//! shared by the node's client and peer ports and the gateway. Built with
//! the `server` feature only, so the client library carries no server.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::net::{BoxIo, Listener};

/// An accepted connection, as the gRPC server sees it.
pub struct Conn {
    io: BoxIo,
    local: Option<SocketAddr>,
    remote: SocketAddr,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a gRPC server accepts from.
pub type Incoming = Pin<Box<dyn futures::Stream<Item = io::Result<Conn>> + Send>>;

/// The connections `listener` accepts, for `serve_with_incoming`. A failed
/// accept (out of file descriptors, a reset before accept) is logged and
/// retried after a short pause rather than ending the server.
pub fn incoming(listener: Box<dyn Listener>) -> Incoming {
    let local = listener.local_addr().ok();
    Box::pin(futures::stream::unfold(listener, move |mut l| async move {
        loop {
            match l.accept().await {
                Ok((io, remote)) => return Some((Ok(Conn { io, local, remote }), l)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

/// HTTP/2 keep-alive of a gRPC server: a PING after `interval` without
/// traffic, the connection closed when none is answered within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Idle time before a PING.
    pub interval: Duration,
    /// How long a PING may go unanswered.
    pub timeout: Duration,
}

/// How a gRPC server bounds what its callers can hold.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP/2 keep-alive.
    pub keep_alive: KeepAlive,
    /// HTTP/2 streams (calls) one connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// The deadline of a unary call that names none; streaming calls
    /// (see `streaming`) get none.
    pub default_timeout: Option<Duration>,
    /// Unary calls in flight across every connection; past it a call is
    /// answered RESOURCE_EXHAUSTED at once, naming the bound.
    pub max_inflight: Option<usize>,
    /// The paths of streaming methods (`/package.Service/Method`): long
    /// lived by design, so no default deadline and not counted in flight.
    pub streaming: &'static [&'static str],
}

impl Options {
    /// Keep-alive only: no other bound (tests, internal ports).
    pub fn keep_alive(keep_alive: KeepAlive) -> Self {
        Options {
            keep_alive,
            max_concurrent_streams: u32::MAX,
            default_timeout: None,
            max_inflight: None,
            streaming: &[],
        }
    }
}

/// Unary calls in flight, shared by a server's connections.
#[derive(Debug, Default)]
struct InFlight(std::sync::atomic::AtomicUsize);

/// A unary call counted in flight until dropped.
struct Admitted(std::sync::Arc<InFlight>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl InFlight {
    /// Counts a call in, unless `max` are in flight already.
    fn admit(self: &std::sync::Arc<Self>, max: usize) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        let mut n = self.0.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Admitted(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// Serves the gRPC `routes` on every connection from `incoming` until
/// `shutdown` resolves; then stops accepting, lets every connection finish
/// its in-flight requests (an HTTP/2 graceful shutdown: GOAWAY, then close)
/// and returns once they are all closed.
///
/// This is tonic's `Server` without what reads the wall clock: hyper's
/// automatic `date` response header. Its bytes change every second, and
/// in the simulation they changed the HPACK encoding, so the frames on the
/// wire, so the run: the same seed gave different traces. Like tonic's
/// server it is HTTP/2 only, gives each request its connection's
/// [`TcpConnectInfo`] (`Request::remote_addr`), and honours the caller's
/// `grpc-timeout`: a request still running past it is answered with
/// CANCELLED ("Timeout expired", tonic's words) and its handler dropped.
pub async fn serve(
    routes: tonic::service::Routes,
    mut incoming: Incoming,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    let options = std::sync::Arc::new(options);
    let inflight = std::sync::Arc::new(InFlight::default());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            () = &mut shutdown => break,
            conn = incoming.next() => conn,
        };
        let conn = match conn {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
            None => break,
        };
        tokio::spawn(serve_connection(
            conn,
            routes.clone(),
            options.clone(),
            inflight.clone(),
            stopping.clone(),
        ));
    }
    let _ = stop.send(true);
    // Every connection task holds a receiver until its connection closes.
    drop(stopping);
    stop.closed().await;
}

async fn serve_connection(
    conn: Conn,
    routes: tonic::service::Routes,
    options: std::sync::Arc<Options>,
    inflight: std::sync::Arc<InFlight>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let keep_alive = options.keep_alive;
    let max_concurrent_streams = options.max_concurrent_streams;
    use tonic::codegen::http;
    use tower::ServiceExt;
    let info = conn.connect_info();
    let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let path = req.uri().path();
        let streaming = options.streaming.contains(&path);
        let deadline = deadline.or(options.default_timeout.filter(|_| !streaming));
        let admitted = match options.max_inflight.filter(|_| !streaming) {
            None => Ok(None),
            Some(max) => inflight.admit(max).map(Some).ok_or(max),
        };
        let routes = routes.clone();
        async move {
            let _admitted = match admitted {
                Ok(a) => a,
                Err(max) => {
                    tokio::spawn(discard(req.into_body(), DISCARD_BYTES));
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "too many requests in flight on this node (limit max-inflight = {max})"
                    ))
                    .into_http::<tonic::body::Body>());
                }
            };
            let call = routes.oneshot(req);
            match deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout(d, call).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::cancelled("Timeout expired")
                        .into_http::<tonic::body::Body>()),
                },
            }
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout)
        .max_concurrent_streams(max_concurrent_streams)
        .auto_date_header(false);
    let mut connection = std::pin::pin!(builder.serve_connection(
        hyper_util::rt::TokioIo::new(conn),
        hyper_util::service::TowerToHyperService::new(svc),
    ));
    let mut closing = false;
    loop {
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            r = stopping.wait_for(|s| *s), if !closing => {
                closing = true;
                if r.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How much of a refused call's message [`discard`] reads.
const DISCARD_BYTES: usize = 64 << 20;

/// How long a refused call's message may take to arrive (see
/// [`discard`]).
const DISCARD_FOR: Duration = Duration::from_secs(1);

/// Reads a refused call's message to its end, dropping each piece as it
/// comes (so it costs no memory), at most `limit` bytes and one second.
/// Dropped unread, the message's stream would be reset while its caller
/// may still be sending, and a client can see that reset in place of the
/// refusal already sent.
pub async fn discard<B>(mut body: B, limit: usize)
where
    B: tonic::transport::Body<Data = bytes::Bytes> + Unpin,
{
    let mut read = 0usize;
    let drain = async {
        while let Some(Ok(frame)) =
            futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            read += frame.data_ref().map_or(0, bytes::Bytes::len);
            if read > limit {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_FOR, drain).await;
}

/// A `grpc-timeout` header's value (up to 8 digits and a unit: H, M, S,
/// m, u, n) as a duration; `None` when malformed (then no deadline, as
/// tonic does).
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1999m"), Some(Duration::from_millis(1999)));
        assert_eq!(grpc_timeout("5H"), Some(Duration::from_secs(18000)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(grpc_timeout("S"), None);
        assert_eq!(grpc_timeout("12x"), None);
        assert_eq!(grpc_timeout("-1S"), None);
        assert_eq!(grpc_timeout("123456789S"), None);
    }
}
