//! A GitHub App installation token: a JWT signed with the App's private key
//! (RS256) is traded at `POST /app/installations/{id}/access_tokens` for a
//! token that lives an hour.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{GrantProblem, Token, TokenError, checked_token, fields, https_url};
use crate::secret::Secret;

const DEFAULT_API_URL: &str = "https://api.github.com";
/// GitHub refuses a JWT that lives longer than ten minutes; the issue time
/// is set a minute back for clocks that run ahead of GitHub's.
const JWT_BACKDATE: u64 = 60;
const JWT_LIFETIME: u64 = 9 * 60;
/// Installation tokens live an hour; used when `expires_at` is unreadable.
const LIFETIME_UNSAID: Duration = Duration::from_secs(55 * 60);

const KNOWN: &[&str] = &["app_id", "installation_id", "private_key", "api_url"];
const REQUIRED: &[&str] = &["app_id", "installation_id", "private_key"];

pub struct AppInstallation {
    /// The App's id or client id: the JWT's issuer.
    pub app_id: String,
    key: RsaKeyPair,
    /// Where the token is asked for: the installation's access_tokens URL
    /// under `api_url` (GitHub Enterprise Server: `https://HOST/api/v3`).
    pub token_url: Uri,
}

impl AppInstallation {
    pub fn parse(value: &Secret) -> Result<AppInstallation, GrantProblem> {
        let f = fields(value, KNOWN, REQUIRED)?;
        let text = |key| f.get(key).map_or("", |t: &Zeroizing<String>| t.trim());
        let app_id = text("app_id");
        if app_id.is_empty()
            || !app_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        {
            return Err(GrantProblem::Invalid {
                key: "app_id",
                expected: "the App's id or client id",
            });
        }
        let installation_id: u64 =
            text("installation_id")
                .parse()
                .map_err(|_| GrantProblem::Invalid {
                    key: "installation_id",
                    expected: "a number",
                })?;
        let key = rsa_key(text("private_key"))?;
        let api_url = match f.get("api_url") {
            Some(url) => url.trim().trim_end_matches('/').to_owned(),
            None => DEFAULT_API_URL.to_owned(),
        };
        https_url(&api_url, "api_url")?;
        let token_url = https_url(
            &format!("{api_url}/app/installations/{installation_id}/access_tokens"),
            "api_url",
        )?;
        Ok(AppInstallation {
            app_id: app_id.to_owned(),
            key,
            token_url,
        })
    }

    /// The App's JWT, issued at `now`.
    pub fn jwt(&self, now: SystemTime) -> Result<Zeroizing<String>, TokenError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TokenError::Signing)?
            .as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": now.saturating_sub(JWT_BACKDATE),
            "exp": now + JWT_LIFETIME,
            "iss": self.app_id,
        });
        let mut jwt = Zeroizing::new(format!(
            "{header}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| TokenError::Signing)?;
        let _ = write!(jwt, ".{}", URL_SAFE_NO_PAD.encode(&signature));
        Ok(jwt)
    }

    pub fn token_request(&self, now: SystemTime) -> Result<Request<Bytes>, TokenError> {
        let jwt = self.jwt(now)?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", &*jwt)).map_err(|_| TokenError::Signing)?;
        auth.set_sensitive(true);
        let mut req = Request::new(Bytes::new());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.token_url.clone();
        let headers = req.headers_mut();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        // GitHub refuses requests without a User-Agent.
        headers.insert(USER_AGENT, HeaderValue::from_static("airlock"));
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        Ok(req)
    }
}

/// GitHub hands out PKCS#1 keys (`BEGIN RSA PRIVATE KEY`); PKCS#8 is
/// taken too, for keys converted with openssl.
fn rsa_key(pem: &str) -> Result<RsaKeyPair, GrantProblem> {
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(GrantProblem::PrivateKey)?;
    match &der {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        _ => return Err(GrantProblem::PrivateKey),
    }
    .map_err(|_| GrantProblem::PrivateKey)
}

#[derive(Deserialize)]
struct Answer {
    token: Option<Zeroizing<String>>,
    expires_at: Option<String>,
}

pub(super) fn read_answer(body: &[u8], now: SystemTime) -> Result<Token, TokenError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|_| TokenError::BadAnswer {
        what: "not a JSON object",
    })?;
    let token = answer
        .token
        .ok_or(TokenError::BadAnswer { what: "no token" })?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let lifetime = answer
        .expires_at
        .as_deref()
        .and_then(unix_time_of)
        .map_or(LIFETIME_UNSAID, |at| {
            Duration::from_secs(at.saturating_sub(now))
        });
    Ok(Token {
        value: checked_token(&token)?,
        lifetime,
    })
}

/// Seconds since the epoch of a UTC timestamp as GitHub writes them:
/// `2016-07-11T22:14:10Z`.
pub(super) fn unix_time_of(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> { text.get(from..to)?.parse().ok() };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
    // (the "days from civil" method).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}
