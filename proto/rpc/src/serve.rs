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
    keep_alive: KeepAlive,
    shutdown: impl Future<Output = ()>,
) {
    use futures::StreamExt;
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
            keep_alive,
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
    keep_alive: KeepAlive,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
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
        let routes = routes.clone();
        async move {
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
