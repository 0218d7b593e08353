//! Dialling a host that has several addresses: the first to accept wins.
//!
//! Trying them one after another, each until it fails, lets one dead
//! address (a load balancer node gone, a family that is routed but
//! blackholed) hold the connection for the whole connect timeout, with
//! the live addresses never tried. As RFC 8305 (Happy Eyeballs) does, the
//! next attempt starts when the one before fails or a short delay has
//! passed, whichever comes first, and earlier attempts go on meanwhile.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, task::JoinSet};

/// RFC 8305's recommended "Connection Attempt Delay".
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// A connection to the first of `addrs`, in their order, that accepts;
/// the last error when none does. Attempts still pending when one
/// succeeds are dropped. Bounded by the caller's own timeout.
pub async fn dial(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut next = addrs.iter().copied();
    let mut attempts = JoinSet::new();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    loop {
        if let Some(addr) = next.next() {
            attempts.spawn(TcpStream::connect(addr));
        } else if attempts.is_empty() {
            return Err(last);
        }
        let more = next.len() > 0;
        tokio::select! {
            done = attempts.join_next(), if !attempts.is_empty() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                // A failure starts the next attempt at once.
                Some(Ok(Err(err))) => last = err,
                Some(Err(join)) => last = io::Error::other(join),
                None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if more => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpListener},
        time::Duration,
    };

    use socket2::{Domain, Socket, Type};

    use super::dial;

    /// A loopback address whose connects hang: a listener that never
    /// accepts, with its queue full, drops further SYNs as a dead host
    /// would. The sockets returned keep it so.
    fn hanging_address() -> (SocketAddr, Socket, Vec<std::net::TcpStream>) {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        // Fill the queue (a backlog of 0 still holds one) until a connect
        // hangs.
        let mut filled = Vec::new();
        while let Ok(stream) =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        {
            filled.push(stream);
            assert!(filled.len() < 64, "the listener's queue never filled");
        }
        (addr, listener, filled)
    }

    #[tokio::test]
    async fn a_dead_first_address_does_not_hold_the_connection() {
        let (dead, _keep, _filled) = hanging_address();
        let live = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let live_addr = live.local_addr().expect("addr");
        // Tried in turn, the dead address alone would hold the dial for
        // the kernel's SYN retries (over a minute).
        let stream = tokio::time::timeout(Duration::from_secs(5), dial(&[dead, live_addr]))
            .await
            .expect("the live address was tried while the dead one hung")
            .expect("connected");
        assert_eq!(stream.peer_addr().expect("peer"), live_addr);
    }

    #[tokio::test]
    async fn a_refused_address_gives_way_and_the_last_error_is_kept() {
        let live = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let live_addr = live.local_addr().expect("addr");
        // A port nobody listens on refuses at once.
        let closed = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            l.local_addr().expect("addr")
        };
        let stream = dial(&[closed, live_addr]).await.expect("connected");
        assert_eq!(stream.peer_addr().expect("peer"), live_addr);
        let err = dial(&[closed]).await.expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = dial(&[]).await.expect_err("nothing to dial");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
