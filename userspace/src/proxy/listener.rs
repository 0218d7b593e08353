//! The proxy's listening sockets.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, UdpSocket};

/// A burst of agent connects larger than the backlog falls back to SYN
/// cookies and stalls; the kernel caps this at net.core.somaxconn.
const BACKLOG: u32 = 8192;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {source} (is another Airlock, or something else, using the port?)"
)]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Listen on 127.0.0.1:port and [::1]:port.
pub fn tcp_pair(port: u16) -> Result<[TcpListener; 2], ListenError> {
    Ok([
        tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?,
        tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))?,
    ])
}

fn tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

/// UDP on 127.0.0.1:port and [::1]:port.
pub async fn udp_pair(port: u16) -> Result<[UdpSocket; 2], ListenError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    Ok([
        UdpSocket::bind(v4)
            .await
            .map_err(|source| ListenError { addr: v4, source })?,
        UdpSocket::bind(v6)
            .await
            .map_err(|source| ListenError { addr: v6, source })?,
    ])
}
