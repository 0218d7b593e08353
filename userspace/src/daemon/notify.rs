//! Readiness: tell systemd (Type=notify) and write a pid file for hosts
//! without it.

use std::{os::unix::net::UnixDatagram, path::Path};

/// Send `READY=1` to $NOTIFY_SOCKET when systemd started us; a no-op
/// otherwise.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1\n", &addr))
    } else {
        sock.send_to(b"READY=1\n", Path::new(&path))
    };
    if let Err(err) = result {
        tracing::warn!(error = %err, "sd_notify READY failed");
    }
}
