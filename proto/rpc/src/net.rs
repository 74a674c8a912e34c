//! The network seam: how connections are made and accepted. Production
//! uses TCP ([`Tcp`]); the deterministic simulation plugs in its own
//! network (turmoil's), so the same client, node and gateway code runs in
//! both. Every gRPC channel cairn opens goes through [`channel`]; every
//! server accepts through `serve::incoming` (the `server` feature).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

/// A byte stream a gRPC connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connection.
pub type BoxIo = Box<dyn Io>;

/// A future of a new connection.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// A future of an accepted connection and its peer's address.
pub type AcceptFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<(BoxIo, SocketAddr)>> + Send + 'a>>;

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The next connection.
    fn accept(&mut self) -> AcceptFuture<'_>;
}

/// A future of a bound listener.
pub type BindFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn Listener>>> + Send>>;

/// How connections are made and accepted.
pub trait Net: Send + Sync + std::fmt::Debug + 'static {
    /// Opens a connection to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> ConnectFuture;
    /// Binds a listener on `addr` (`host:port`).
    fn bind(&self, addr: &str) -> BindFuture;
}

/// TCP through tokio, with Nagle's algorithm off: small gRPC frames must
/// not wait for the peer's delayed ACK (40 ms on Linux).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            Ok((Box::new(s) as BoxIo, peer))
        })
    }
}

impl Net for Tcp {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
    fn bind(&self, addr: &str) -> BindFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(&addr).await?;
            Ok(Box::new(TcpListener(l)) as Box<dyn Listener>)
        })
    }
}

/// The production network.
pub fn tcp() -> Arc<dyn Net> {
    Arc::new(Tcp)
}

/// A lazily connected channel to `addr` over `net`: connections are made
/// on first use and again after a failure, each within `connect_timeout`.
/// `configure` sets the HTTP/2 options (keep-alive) on the endpoint.
pub fn channel(
    net: &Arc<dyn Net>,
    addr: &str,
    connect_timeout: Duration,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = configure(Endpoint::from_shared(format!("http://{addr}"))?);
    let (net, addr) = (net.clone(), addr.to_string());
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let connecting = net.connect(&addr);
            let addr = addr.clone();
            async move {
                match tokio::time::timeout(connect_timeout, connecting).await {
                    Ok(r) => r.map(hyper_util::rt::TokioIo::new),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} timed out after {connect_timeout:?}"),
                    )),
                }
            }
        })),
    )
}
