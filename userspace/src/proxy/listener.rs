//! The proxy's listening sockets.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, UdpSocket};

/// A burst of agent connects larger than the backlog falls back to SYN
/// cookies and stalls; the kernel caps this at net.core.somaxconn.
const BACKLOG: u32 = 8192;

/// Congestion control for the agent leg, first available wins. The agent
/// leg never leaves the host (the kernel hooks only redirect to these
/// loopback listeners), and a host-wide `bbr` default would pace it with a
/// kernel timer per burst: on a 1 MiB response that was 8 % of the
/// proxy's CPU (BENCHMARKS.md). Neither of these paces.
const AGENT_LEG_CONGESTION: [&[u8]; 2] = [b"cubic", b"reno"];

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen on {addr}: {source} (is another Airlock, or something else, using the port?)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot mark the socket on {addr} as Airlock's (SO_PRIORITY): {source}; the daemon needs CAP_NET_ADMIN, which the agents' hooks rely on to tell its sockets from another process's"
    )]
    Mark {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Marks `socket` as the daemon's: the kernel hooks send agents only to a
/// socket with this priority (see `agent_common::LISTENER_PRIORITY`).
fn mark(socket: socket2::SockRef<'_>, addr: SocketAddr) -> Result<(), ListenError> {
    socket
        .set_priority(agent_common::LISTENER_PRIORITY)
        .map_err(|source| ListenError::Mark { addr, source })
}

/// Listen on `127.0.0.1:port` and `[::1]:port`.
pub fn tcp_pair(port: u16) -> Result<[TcpListener; 2], ListenError> {
    Ok([
        tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?,
        tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))?,
    ])
}

fn tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    unpaced(&socket);
    mark(socket2::SockRef::from(&socket), addr)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

/// Accepted connections inherit the listener's congestion control. Best
/// effort: with neither available the host's default stays, which is
/// slower but as correct.
fn unpaced(socket: &TcpSocket) {
    let sock = socket2::SockRef::from(socket);
    for name in AGENT_LEG_CONGESTION {
        if sock.set_tcp_congestion(name).is_ok() {
            return;
        }
    }
    tracing::debug!("no unpaced congestion control available for the agent leg");
}

/// UDP on `127.0.0.1:port` and `[::1]:port`.
pub async fn udp_pair(port: u16) -> Result<[UdpSocket; 2], ListenError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    Ok([udp(v4).await?, udp(v6).await?])
}

async fn udp(addr: SocketAddr) -> Result<UdpSocket, ListenError> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })?;
    mark(socket2::SockRef::from(&socket), addr)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::{AGENT_LEG_CONGESTION, tcp, udp};

    /// The kernel hooks hand agents only to sockets with the daemon's
    /// priority. (Setting it needs CAP_NET_ADMIN: the tests run as root.)
    #[tokio::test]
    async fn the_daemons_sockets_carry_its_priority() {
        let any4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let any6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let listeners = [tcp(any4).expect("tcp4"), tcp(any6).expect("tcp6")];
        let sockets = [
            udp(any4).await.expect("udp4"),
            udp(any6).await.expect("udp6"),
        ];
        let priorities = listeners
            .iter()
            .map(|l| socket2::SockRef::from(l).priority())
            .chain(sockets.iter().map(|s| socket2::SockRef::from(s).priority()));
        for priority in priorities {
            assert_eq!(
                priority.expect("SO_PRIORITY"),
                agent_common::LISTENER_PRIORITY
            );
        }
    }

    /// Whatever the host's default (bbr here), an accepted agent
    /// connection runs an unpaced congestion control.
    #[tokio::test]
    async fn accepted_agent_connections_are_not_paced() {
        let listener = tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let name = socket2::SockRef::from(&accepted)
            .tcp_congestion()
            .expect("TCP_CONGESTION");
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        assert!(
            AGENT_LEG_CONGESTION.contains(&name),
            "accepted connection runs {}",
            String::from_utf8_lossy(name)
        );
    }
}
