//! The plain-HTTP POST that tells a human an approval is waiting.
//!
//! Webhook URLs often carry their own token in the path or query (chat
//! integrations do), so only `host:port` ever reaches an error or a log.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{
    Request, Uri,
    header::{CONTENT_LENGTH, CONTENT_TYPE, HOST},
};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};

use super::ApprovalError;

/// How long one notice may take, connect to response head.
pub(super) const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct Webhook {
    /// For `connect()`: an IPv6 literal without its brackets.
    host: String,
    port: u16,
    /// For the `Host` header: as written in the URL.
    authority: String,
    path_and_query: String,
    pub(super) timeout: Duration,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({})", self.target())
    }
}

impl Webhook {
    pub(super) fn parse(url: &str) -> Result<Self, ApprovalError> {
        let bad = |reason| ApprovalError::BadWebhook {
            url: redact(url),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("missing http:// scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            // Credentials in the authority would be silently dropped (no Basic
            // auth is sent); better to say so than to post unauthenticated.
            return Err(bad("user:password in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Webhook {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            timeout: WEBHOOK_TIMEOUT,
        })
    }

    /// What errors and logs may name: never the path or query.
    pub(super) fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// POSTs `json`; Ok only on a 2xx answer within the timeout.
    pub(super) async fn post(&self, json: Vec<u8>) -> Result<(), ApprovalError> {
        match tokio::time::timeout(self.timeout, self.exchange(json)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ApprovalError::WebhookTimeout {
                target: self.target(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self, json: Vec<u8>) -> Result<(), ApprovalError> {
        let http_error = |source| ApprovalError::WebhookHttp {
            target: self.target(),
            source,
        };
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ApprovalError::WebhookConnect {
                target: self.target(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection task must not outlive this notice, even when the
        // timeout drops us mid-exchange.
        let _driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "approval webhook connection ended");
            }
        }));

        let length = json.len();
        let request = Request::post(self.path_and_query.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, length)
            .body(Full::new(Bytes::from(json)))
            .map_err(|source| ApprovalError::WebhookRequest {
                target: self.target(),
                source,
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ApprovalError::WebhookStatus {
                target: self.target(),
                status: status.as_u16(),
            })
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `scheme://host[:port]`, with `/…` standing for whatever followed; no
/// user info. Used only for the construction error.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let tail = if end < rest.len() { "/…" } else { "" };
    format!("{scheme}://{host}{tail}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::{ApprovalError, Webhook, redact};

    #[test]
    fn accepts_plain_http_urls() {
        let hook = Webhook::parse("http://127.0.0.1:9000/hooks/airlock?token=s3cret").unwrap();
        assert_eq!(hook.host, "127.0.0.1");
        assert_eq!(hook.port, 9000);
        assert_eq!(hook.authority, "127.0.0.1:9000");
        assert_eq!(hook.path_and_query, "/hooks/airlock?token=s3cret");
        assert!(!format!("{hook:?}").contains("s3cret"));

        let hook = Webhook::parse("http://[::1]/").unwrap();
        assert_eq!((hook.host.as_str(), hook.port), ("::1", 80));
        assert_eq!(hook.target(), "[::1]:80");

        let hook = Webhook::parse("http://localhost:8080").unwrap();
        assert_eq!(hook.path_and_query, "/");
    }

    #[test]
    fn rejects_other_schemes_and_malformed_urls() {
        for url in [
            "https://hooks.example/abc",
            "ftp://127.0.0.1/x",
            "127.0.0.1:80/x",
            "/just/a/path",
            "http://",
            "not a url",
            "http://user:pw@127.0.0.1/x",
        ] {
            match Webhook::parse(url) {
                Err(ApprovalError::BadWebhook { .. }) => {}
                other => panic!("{url}: expected BadWebhook, got {other:?}"),
            }
        }
    }

    #[test]
    fn construction_errors_hide_path_query_and_credentials() {
        let error = Webhook::parse("https://alice:pw1@hooks.example/T0/B0/tok3n?k=v").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("https://hooks.example/…"), "{text}");
        for secret in ["alice", "pw1", "tok3n", "k=v"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(redact("http://h:1"), "http://h:1");
        assert_eq!(redact("secret-only"), "(not a URL)");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept and then say nothing.
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let mut hook = Webhook::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        hook.timeout = Duration::from_millis(100);
        match hook.post(b"{}".to_vec()).await {
            Err(ApprovalError::WebhookTimeout { target, .. }) => {
                assert_eq!(target, format!("127.0.0.1:{port}"));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let hook = Webhook::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        match hook.post(b"{}".to_vec()).await {
            Err(ApprovalError::WebhookStatus { status: 500, .. }) => {}
            other => panic!("expected a 500 error, got {other:?}"),
        }
        server.await.unwrap();
    }
}
