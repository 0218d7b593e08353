//! Bytes relayed uninspected: `tcp:` rules and passthrough tunnels.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connecting to {addrs} timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addrs: String },
    #[error("connecting to {addrs}: {source}")]
    Connect {
        addrs: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to the first of `addrs` that accepts (`dial`).
pub async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, RelayError> {
    let named = || {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, super::dial::dial(addrs))
        .await
        .map_err(|_| RelayError::ConnectTimeout { addrs: named() })?
        .map_err(|source| RelayError::Connect {
            addrs: named(),
            source,
        })?;
    // Nagle on either leg stalls small writes behind delayed ACKs.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Each direction's buffer, allocated when the tunnel opens and held while
/// it lasts (idle SSH and WebSocket tunnels last for hours). One TLS
/// record's worth: 64 KiB cost four times the memory per tunnel and no
/// measurable CPU or throughput on 1 MiB bodies; 8 KiB cost about 15 %
/// more CPU per MiB (BENCHMARKS.md).
const SPLICE_BUFFER: usize = 16 * 1024;

/// Copy both ways until both sides are done; returns (bytes from the
/// agent, bytes to the agent).
pub async fn splice(mut agent: TcpStream, mut upstream: TcpStream) -> (u64, u64) {
    match tokio::io::copy_bidirectional_with_sizes(
        &mut agent,
        &mut upstream,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await
    {
        Ok((out, inn)) => (out, inn),
        Err(_) => (0, 0),
    }
}
