//! Raw TCP relayed uninspected, for `tcp:` rules.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connecting to {addr} timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: SocketAddr },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub async fn connect(addr: SocketAddr) -> Result<TcpStream, RelayError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| RelayError::ConnectTimeout { addr })?
        .map_err(|source| RelayError::Connect { addr, source })?;
    // Nagle on either leg stalls small writes behind delayed ACKs.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copy both ways until both sides are done; returns (bytes from the
/// agent, bytes to the agent).
pub async fn splice(mut agent: TcpStream, mut upstream: TcpStream) -> (u64, u64) {
    match tokio::io::copy_bidirectional_with_sizes(&mut agent, &mut upstream, 64 * 1024, 64 * 1024)
        .await
    {
        Ok((out, inn)) => (out, inn),
        Err(_) => (0, 0),
    }
}
