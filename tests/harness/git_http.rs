//! Git's smart HTTP protocol, as a hosting service answers it: each request
//! under `/git/` is handed to the real `git http-backend` (a CGI program),
//! behind Basic authentication with a token, as GitHub's
//! `https://x-access-token:TOKEN@github.com/ORG/REPO.git` asks.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{Request, Response, StatusCode};

/// The user name GitHub expects in front of an installation token.
pub const GIT_USER: &str = "x-access-token";

/// Repositories served, and the token that opens them.
#[derive(Clone)]
pub struct GitHost {
    pub root: PathBuf,
    pub token: String,
}

/// Answer one request whose path starts with `/git`.
pub async fn serve(req: Request<hyper::body::Incoming>, host: &GitHost) -> Response<Bytes> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{GIT_USER}:{}", host.token))
    );
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        let mut r = Response::new(Bytes::from_static(b"authentication required\n"));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"git\"".parse().expect("h"),
        );
        return r;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let env = [
        ("GIT_PROJECT_ROOT", host.root.display().to_string()),
        ("GIT_HTTP_EXPORT_ALL", "1".into()),
        (
            "PATH_INFO",
            req.uri().path().trim_start_matches("/git").into(),
        ),
        ("QUERY_STRING", req.uri().query().unwrap_or("").into()),
        ("REQUEST_METHOD", req.method().to_string()),
        ("CONTENT_TYPE", header("content-type")),
        ("HTTP_CONTENT_ENCODING", header("content-encoding")),
        ("GIT_PROTOCOL", header("git-protocol")),
        // Pushing over HTTP needs an authenticated user.
        ("REMOTE_USER", GIT_USER.into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
    ];
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body\n"),
    };
    let out = tokio::task::spawn_blocking(move || run_backend(&env, &body))
        .await
        .expect("backend task");
    match out {
        Ok(stdout) => cgi_response(&stdout),
        Err(err) => status(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
    }
}

fn run_backend(env: &[(&str, String)], body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // The request bodies here are small; the backend reads all of it
    // before it answers, so writing first cannot deadlock.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body)?;
    }
    Ok(child.wait_with_output()?.stdout)
}

/// A CGI program's output: header lines (`Status:` among them), a blank
/// line, the body.
fn cgi_response(out: &[u8]) -> Response<Bytes> {
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return status(StatusCode::BAD_GATEWAY, "no CGI header\n");
    };
    let mut r = Response::new(Bytes::copy_from_slice(&out[split + 4..]));
    for line in String::from_utf8_lossy(&out[..split]).split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse().ok());
            *r.status_mut() = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::try_from(name),
            hyper::header::HeaderValue::try_from(value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn status(code: StatusCode, text: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::copy_from_slice(text.as_bytes()));
    *r.status_mut() = code;
    r
}
