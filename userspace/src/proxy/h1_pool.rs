//! HTTP/1.1 connections to upstreams.
//!
//! An agent's HTTP/1.1 connection has one request in flight at a time, so
//! it keeps the upstream connection its last request used (its [`Slot`])
//! and sends the next request on it: no shared pool to look in, no task
//! per request to watch the connection go idle, and never more upstream
//! connections than agent connections. (A shared pool that races a new
//! connect against waiting for an idle one opened about 52 upstream
//! connections for 32 agent connections; see BENCHMARKS.md.) When the
//! agent hangs up, or a plain-HTTP agent turns to another host, the
//! connection goes to the idle pool, where the next request of the same
//! agent for that host finds it. Agents never share a connection: a
//! server may tie state to one (NTLM and Negotiate authenticate the
//! connection, not the request), and one agent must not inherit another's.
//!
//! An idle connection is kept as its stream alone. hyper's state for it
//! (a read buffer of up to 64 KiB, its request channel, its task) is let
//! go when it goes idle and made again when it is next used, which takes
//! no round trip; with no task reading it, whether the upstream closed it
//! meanwhile is checked before it is used. A request that may upgrade the
//! connection (WebSocket, CONNECT) goes on a new connection of its own,
//! whose task can hand the stream over to the upgrade.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant},
};

use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery},
};
use hyper::{body::Incoming, client::conn::http1};
use tokio::sync::oneshot;
use tracing::debug;

use super::{
    body::ProxyBody,
    headers,
    upstream::{ConnectError, Connector, UPSTREAM_READ_BUFFER_MAX, UpstreamIo},
};

/// As long as browsers and most servers keep an idle connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Past it, the connection idle longest is closed.
const MAX_IDLE_PER_HOST: usize = 64;
/// How long a connection may take to be free for the next request. It is
/// free before the agent has read the last answer's end, so this is only
/// a bound for an upstream that never finishes one.
const READY_WAIT: Duration = Duration::from_secs(1);
/// How often idle connections past their time are closed.
const REAP_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no host in upstream URI {uri}")]
    NoHost { uri: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/1.1 with {host}: {source}")]
    Handshake {
        host: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(hyper::Error),
}

/// Which requests a connection can carry: the same agent's (or the
/// daemon's own), with the same scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    owner: Option<Arc<str>>,
    https: bool,
    authority: Authority,
}

impl Key {
    fn of(owner: &Option<Arc<str>>, uri: &Uri) -> Result<Key, SendError> {
        let authority = uri.authority().cloned().ok_or_else(|| SendError::NoHost {
            uri: uri.to_string(),
        })?;
        Ok(Key {
            owner: owner.clone(),
            https: uri.scheme() == Some(&http::uri::Scheme::HTTPS),
            authority,
        })
    }

    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }
}

struct Conn {
    key: Key,
    sender: http1::SendRequest<ProxyBody>,
    /// Where the connection's task hands the stream back once `sender` is
    /// dropped and no answer is in flight; None on a connection made for a
    /// request that may upgrade it.
    stream: Option<oneshot::Receiver<UpstreamIo>>,
}

struct Idle {
    stream: oneshot::Receiver<UpstreamIo>,
    since: Instant,
}

pub struct H1Pool {
    connector: Connector,
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

/// The upstream connection one agent connection keeps between requests.
pub struct Slot {
    pool: Arc<H1Pool>,
    /// The agent whose requests it sends; None for the daemon's own
    /// (token requests).
    owner: Option<Arc<str>>,
    kept: Mutex<Option<Conn>>,
}

impl Slot {
    pub fn new(pool: Arc<H1Pool>, owner: Option<Arc<str>>) -> Slot {
        Slot {
            pool,
            owner,
            kept: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<Conn> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn keep(&self, conn: Conn) {
        let before = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(conn);
        if let Some(before) = before {
            self.pool.check_in(before);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let kept = self
            .kept
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = kept {
            self.pool.check_in(conn);
        }
    }
}

impl H1Pool {
    /// Called within the runtime: a task closes idle connections past
    /// their time, and ends with the pool.
    pub fn new(connector: Connector) -> Arc<H1Pool> {
        let pool = Arc::new(H1Pool {
            connector,
            idle: Mutex::new(HashMap::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `req` (absolute URI) on `slot`'s connection when it goes to
    /// the same place, else on an idle one, else on a new one; the slot
    /// keeps the connection for its next request. An upgraded connection
    /// is the upgrade's, and is not kept.
    pub async fn send(
        &self,
        slot: &Slot,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = Key::of(&slot.owner, req.uri())?;
        to_origin_form(&mut req, &key);
        let upgrade = req.method() == Method::CONNECT || headers::is_upgrade(req.headers());
        let (mut conn, reused) = match self.reuse(slot, &key, upgrade).await {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect(key.clone(), upgrade)).await?, false),
        };
        let resp = match conn.sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut err) => match err.take_message() {
                // The upstream closed the connection before the request
                // was written (an idle timeout meeting the request), so
                // it is safe to send on a new one, whatever the method.
                Some(req) if reused => {
                    debug!(host = %key.authority, "kept connection closed; sending on a new one");
                    conn = Box::pin(self.connect(key, upgrade)).await?;
                    conn.sender
                        .send_request(req)
                        .await
                        .map_err(SendError::Http)?
                }
                _ => return Err(SendError::Http(err.into_error())),
            },
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            slot.keep(conn);
        }
        Ok(resp)
    }

    /// The slot's connection if it goes to `key` and is free, else an idle
    /// one. A connection that is neither is closed, or pooled. A request
    /// that may upgrade takes none: it gets a new one.
    async fn reuse(&self, slot: &Slot, key: &Key, upgrade: bool) -> Option<Conn> {
        if upgrade {
            return None;
        }
        if let Some(mut conn) = slot.take() {
            if conn.key != *key {
                self.check_in(conn);
            } else if conn.sender.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WAIT, conn.sender.ready()).await,
                    Ok(Ok(()))
                )
            {
                return Some(conn);
            }
        }
        self.check_out(key).await
    }

    /// An idle connection to `key` the upstream has not closed, the most
    /// recently used first (its TLS session and buffers are warm).
    async fn check_out(&self, key: &Key) -> Option<Conn> {
        loop {
            let entry = {
                let mut idle = self.lock();
                let conns = idle.get_mut(key)?;
                let found = conns.pop();
                if conns.is_empty() {
                    idle.remove(key);
                }
                found?
            };
            if entry.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            // The task hands the stream back as soon as it next runs; one
            // that ended in an error hands back nothing.
            let Ok(Ok(io)) = tokio::time::timeout(READY_WAIT, entry.stream).await else {
                continue;
            };
            if !io.seems_open() {
                debug!(host = %key.authority, "idle connection closed by the upstream; not used");
                continue;
            }
            match self.handshake(key.clone(), io, false).await {
                Ok(conn) => return Some(conn),
                Err(err) => debug!(error = %err, "idle connection not taken up again"),
            }
        }
    }

    /// Pools `conn` if it is free for another request. One with an answer
    /// still streaming has a reader that will end it or let it go idle, and
    /// is closed instead of being watched: agents rarely leave one so.
    fn check_in(&self, conn: Conn) {
        let Conn {
            key,
            sender,
            stream,
        } = conn;
        let Some(stream) = stream.filter(|_| sender.is_ready()) else {
            return;
        };
        // Its task ends with the last sender, and hands back the stream.
        drop(sender);
        let mut idle = self.lock();
        let conns = idle.entry(key).or_default();
        conns.push(Idle {
            stream,
            since: Instant::now(),
        });
        if conns.len() > MAX_IDLE_PER_HOST {
            conns.remove(0);
        }
    }

    async fn connect(&self, key: Key, upgrade: bool) -> Result<Conn, SendError> {
        let host = key.authority.host();
        let port = key.authority.port_u16().unwrap_or(key.default_port());
        let io = self.connector.connect_to(key.https, host, port).await?;
        self.handshake(key, io, upgrade).await
    }

    /// HTTP/1.1 on `io`, driven by a task of its own. Without `upgrade`,
    /// the task gives the stream back once the connection has no sender
    /// left and no answer in flight.
    async fn handshake(&self, key: Key, io: UpstreamIo, upgrade: bool) -> Result<Conn, SendError> {
        let host = key.authority.host();
        let (sender, connection) = http1::Builder::new()
            // hyper grows its read buffer to 400 KiB per connection on
            // large bodies; capped at 64 KiB, 1 MiB bodies move as fast
            // and the daemon's peak RSS stays lower (BENCHMARKS.md). It
            // also bounds an upstream's response head.
            .max_buf_size(UPSTREAM_READ_BUFFER_MAX)
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                host: host.to_owned(),
                source,
            })?;
        if upgrade {
            tokio::spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    debug!(error = %err, "upstream connection ended with an error");
                }
            });
            return Ok(Conn {
                key,
                sender,
                stream: None,
            });
        }
        let (hand_back, stream) = oneshot::channel();
        tokio::spawn(async move {
            match connection.without_shutdown().await {
                Ok(parts) if parts.read_buf.is_empty() => {
                    if let Err(mut io) = hand_back.send(parts.io) {
                        // Not pooled: closed as a finished connection is.
                        let _ = std::future::poll_fn(|cx| {
                            hyper::rt::Write::poll_shutdown(std::pin::Pin::new(&mut io), cx)
                        })
                        .await;
                    }
                }
                // Bytes read and not used (an answer left unread, or sent
                // unasked): the stream is not at the start of a message.
                Ok(_) => debug!("upstream connection ended with bytes unread; closed"),
                Err(err) => debug!(error = %err, "upstream connection ended with an error"),
            }
        });
        Ok(Conn {
            key,
            sender,
            stream: Some(stream),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reap_idle(&self) {
        let mut idle = self.lock();
        idle.retain(|_, conns| {
            conns.retain(|entry| entry.since.elapsed() < IDLE_TIMEOUT);
            !conns.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

async fn reap(pool: Weak<H1Pool>) {
    let mut every = tokio::time::interval(REAP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.reap_idle();
    }
}

/// What an HTTP/1.1 server expects on its own connection: a Host header
/// (the agent's own, checked against the SNI, is kept) and the path alone
/// as the target, or the authority for CONNECT.
fn to_origin_form(req: &mut Request<ProxyBody>, key: &Key) {
    if !req.headers().contains_key(header::HOST) {
        let host = match key.authority.port_u16() {
            Some(port) if port != key.default_port() => key.authority.as_str(),
            _ => key.authority.host(),
        };
        if let Ok(value) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, value);
        }
    }
    let target = if req.method() == Method::CONNECT {
        Uri::from(key.authority.clone())
    } else {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::from(path)
    };
    *req.uri_mut() = target;
}

#[cfg(test)]
mod tests;
