//! The admin socket: root-only, one JSON request a line, one JSON answer a
//! line. `airlock status` and `airlock approvals` speak it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot reach the Airlock daemon at {path}: {source} (is it running? `airlock daemon` or `systemctl start airlock`)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the admin socket {path} answers only root: run the command as root (sudo airlock ...)"
    )]
    NotRoot { path: PathBuf },
    #[error(
        "the daemon at {path} closed the connection without answering (it answers only root: run the command as root)"
    )]
    Closed { path: PathBuf },
    #[error("the daemon's answer is not JSON: {0}")]
    Decode(#[source] serde_json::Error),
}

/// A connect refused for want of permission is the root-only socket, not a
/// daemon that is down.
fn connect_error(path: &Path, source: std::io::Error) -> AdminError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        AdminError::NotRoot {
            path: path.to_path_buf(),
        }
    } else {
        AdminError::Connect {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    Status,
    ApprovalsList,
    Approve {
        id: String,
    },
    Deny {
        id: String,
    },
    /// The environment `airlock run` gives the agent.
    AgentEnv {
        agent: String,
    },
    /// `airlock secret` changed the vault: re-read it before answering.
    VaultChanged,
}

/// What answers admin requests (the daemon).
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, req: AdminRequest) -> serde_json::Value;
}

pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let err = |source| AdminError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a killed daemon would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, handler: Arc<dyn AdminHandler>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // The file mode already keeps others out; the peer check holds even
        // if the mode were loosened by hand.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 => {}
            Ok(cred) => {
                warn!(uid = cred.uid(), "admin socket: refused non-root peer");
                continue;
            }
            Err(_) => continue,
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = answer(stream, handler).await;
        });
    }
}

async fn answer(stream: UnixStream, handler: Arc<dyn AdminHandler>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(req) => {
                let handler = handler.clone();
                // Handlers may block briefly (kernel queries); keep them off
                // the async workers.
                tokio::task::spawn_blocking(move || handler.handle(req))
                    .await
                    .unwrap_or_else(|_| serde_json::json!({"error": "internal"}))
            }
            Err(err) => serde_json::json!({"error": format!("bad request: {err}")}),
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
    }
    Ok(())
}

/// A daemon that accepts but never answers must not hang the command that
/// asked (`airlock secret set` tells the daemon after every change).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One request from the command line to the daemon.
pub fn request(path: &Path, req: &AdminRequest) -> Result<serde_json::Value, AdminError> {
    request_within(path, req, REQUEST_TIMEOUT)
}

fn request_within(
    path: &Path,
    req: &AdminRequest,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, AdminError> {
    use std::io::{BufRead as _, Write as _};
    let io = |source: std::io::Error| match source.kind() {
        // The daemon hangs up on peers that are not root, before or after
        // the request is written.
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            AdminError::Closed {
                path: path.to_path_buf(),
            }
        }
        _ => AdminError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| connect_error(path, source))?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(AdminError::Decode)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer).map_err(io)? == 0 {
        return Err(AdminError::Closed {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_str(&answer).map_err(AdminError::Decode)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{AdminError, AdminRequest, request_within};

    #[test]
    fn a_hang_up_without_an_answer_says_the_socket_is_for_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let peer = std::thread::spawn(move || {
            // What the daemon does with a non-root peer: accept, then close.
            let (conn, _) = listener.accept().expect("accept");
            drop(conn);
        });
        let err = request_within(&path, &AdminRequest::Status, Duration::from_secs(5))
            .expect_err("no answer");
        peer.join().expect("peer");
        assert!(matches!(err, AdminError::Closed { .. }), "{err:?}");
        assert!(err.to_string().contains("run the command as root"), "{err}");
    }

    #[test]
    fn a_connect_refused_for_permission_names_root_not_a_stopped_daemon() {
        let path = std::path::Path::new("/run/airlock/admin.sock");
        let denied = super::connect_error(path, std::io::ErrorKind::PermissionDenied.into());
        assert!(denied.to_string().contains("answers only root"), "{denied}");
        let absent = super::connect_error(path, std::io::ErrorKind::NotFound.into());
        assert!(absent.to_string().contains("is it running?"), "{absent}");
    }

    #[test]
    fn a_daemon_that_never_answers_gives_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // Accepts, reads nothing, answers nothing.
        let _hold = std::thread::spawn(move || {
            let conn = listener.accept();
            std::thread::sleep(Duration::from_secs(5));
            drop(conn);
        });
        let started = Instant::now();
        let result = request_within(
            &path,
            &AdminRequest::VaultChanged,
            Duration::from_millis(200),
        );
        assert!(matches!(&result, Err(AdminError::Io { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("admin.sock"), "{text}");
    }
}
