//! Look at what an agent sends first, without consuming it: a TLS
//! ClientHello (and the SNI in it), a plain HTTP request line, or
//! something else. Peeking leaves the bytes in the socket, so a TLS
//! connection that is passed through reaches the upstream byte for byte.

use std::time::Duration;

use tokio::net::TcpStream;

/// A client that says nothing this long is not a protocol we intercept
/// (server-first protocols need a `tcp:` rule).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello with post-quantum key shares is ~1.8 KiB; a TLS record is
/// at most 16 KiB plus its header.
const MAX_HELLO: usize = 16 * 1024 + 5;

#[derive(Debug, PartialEq, Eq)]
pub enum FirstBytes {
    Tls(ClientHello),
    Http,
    Other,
    /// The client closed or went silent before saying anything useful.
    Silent,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

pub async fn classify(stream: &TcpStream) -> FirstBytes {
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, classify_inner(stream)).await {
        Ok(found) => found,
        Err(_) => FirstBytes::Silent,
    }
}

async fn classify_inner(stream: &TcpStream) -> FirstBytes {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        // peek() returns what is queued; wait for more only when the
        // decision needs more (a ClientHello split across segments).
        if stream.readable().await.is_err() {
            return FirstBytes::Silent;
        }
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return FirstBytes::Silent,
            Ok(n) => n,
        };
        if n == have && have > 0 {
            // Nothing new yet: yield briefly instead of spinning on peek.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        have = n;
        match decide(&buf[..n]) {
            Decision::Done(found) => return found,
            Decision::NeedMore(total) => {
                if total > MAX_HELLO {
                    return FirstBytes::Other;
                }
                if buf.len() < total {
                    buf.resize(total, 0);
                }
            }
        }
    }
}

enum Decision {
    Done(FirstBytes),
    /// A TLS record of this total length is still arriving.
    NeedMore(usize),
}

fn decide(bytes: &[u8]) -> Decision {
    match bytes.first() {
        Some(0x16) => tls(bytes),
        Some(b'A'..=b'Z') => {
            let token_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
            if token_len == bytes.len() && token_len < 16 {
                // "GE" so far: wait for the space that ends the method.
                return Decision::NeedMore(bytes.len() + 1);
            }
            if bytes.get(token_len) == Some(&b' ') && token_len > 0 {
                Decision::Done(FirstBytes::Http)
            } else {
                Decision::Done(FirstBytes::Other)
            }
        }
        Some(_) => Decision::Done(FirstBytes::Other),
        None => Decision::NeedMore(1),
    }
}

fn tls(bytes: &[u8]) -> Decision {
    if bytes.len() < 5 {
        return Decision::NeedMore(5);
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let total = 5 + record_len;
    if bytes.len() < total {
        return Decision::NeedMore(total);
    }
    // rustls parses the hello for us: feed it the peeked bytes on a
    // throwaway acceptor (the socket still holds them for the real one).
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = &bytes[..total];
    if acceptor.read_tls(&mut reader).is_err() {
        return Decision::Done(FirstBytes::Other);
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Decision::Done(FirstBytes::Tls(ClientHello {
                sni: hello.server_name().map(|s| s.to_ascii_lowercase()),
                alpn: hello
                    .alpn()
                    .map(|protos| protos.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            }))
        }
        // A hello spread over several records: rare; treat as opaque TLS
        // without SNI (the policy then sees only the dialled address).
        Ok(None) => Decision::Done(FirstBytes::Tls(ClientHello::default())),
        Err(_) => Decision::Done(FirstBytes::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_bytes(sni: &str) -> Vec<u8> {
        // A real ClientHello, produced by rustls' client side.
        let roots = rustls::RootCertStore::empty();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let bytes = hello_bytes("API.Example.test");
        let Decision::Done(FirstBytes::Tls(hello)) = decide(&bytes) else {
            panic!("not recognised as TLS");
        };
        assert_eq!(hello.sni.as_deref(), Some("api.example.test"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_partial_hello_asks_for_the_whole_record() {
        let bytes = hello_bytes("a.test");
        match decide(&bytes[..40]) {
            Decision::NeedMore(total) => assert_eq!(total, bytes.len()),
            Decision::Done(other) => panic!("decided early: {other:?}"),
        }
    }

    #[test]
    fn http_and_other_protocols() {
        assert!(matches!(
            decide(b"GET / HTTP/1.1\r\n"),
            Decision::Done(FirstBytes::Http)
        ));
        assert!(matches!(
            decide(b"POST /x"),
            Decision::Done(FirstBytes::Http)
        ));
        assert!(matches!(decide(b"GE"), Decision::NeedMore(3)));
        assert!(matches!(
            decide(b"SSH-2.0-OpenSSH"),
            Decision::Done(FirstBytes::Other)
        ));
        assert!(matches!(
            decide(b"\x00\x01"),
            Decision::Done(FirstBytes::Other)
        ));
        // A TLS record header claiming a record larger than any hello.
        assert!(
            matches!(decide(&[0x16, 3, 1, 0xff, 0xff]), Decision::NeedMore(n) if n > MAX_HELLO)
        );
    }
}
