//! The simulated network: [`cairn_rpc::net::Net`] over turmoil's
//! TCP, so nodes, the gateway and clients talk through the simulator,
//! which delays, drops and partitions their traffic.

use cairn_rpc::net::{AcceptFuture, BindFuture, BoxIo, ConnectFuture, Listener, Net};

/// turmoil's network.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimNet;

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((Box::new(s) as BoxIo, peer))
        })
    }
}

impl Net for SimNet {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as BoxIo)
        })
    }
    fn bind(&self, addr: &str) -> BindFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener(l)) as Box<dyn Listener>)
        })
    }
}
