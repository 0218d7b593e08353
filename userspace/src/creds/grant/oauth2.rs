//! OAuth 2.0 client credentials (RFC 6749 §4.4): the client's id and secret
//! are traded at the token endpoint for a bearer token.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Uri};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{GrantProblem, Token, TokenError, checked_token, fields, form_encode, https_url};
use crate::secret::Secret;

/// A token without `expires_in` is fetched again after this long: the
/// server did not say, and a fetch costs one round trip.
const LIFETIME_UNSAID: Duration = Duration::from_secs(300);

const KNOWN: &[&str] = &[
    "token_url",
    "client_id",
    "client_secret",
    "scope",
    "audience",
    "client_auth",
];
const REQUIRED: &[&str] = &["token_url", "client_id", "client_secret"];

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic, which every server must accept: the default.
    Basic,
    /// `client_id` and `client_secret` in the form body, for servers that
    /// want them there.
    Post,
}

pub struct ClientCredentials {
    pub token_url: Uri,
    pub client_id: Zeroizing<String>,
    pub client_secret: Secret,
    pub scope: Option<Zeroizing<String>>,
    /// Asked for by some servers (Auth0) to name the API the token is for.
    pub audience: Option<Zeroizing<String>>,
    pub auth: ClientAuth,
}

impl ClientCredentials {
    pub fn parse(value: &Secret) -> Result<ClientCredentials, GrantProblem> {
        let mut f = fields(value, KNOWN, REQUIRED)?;
        let mut take = |key| f.remove(key);
        let token_url = https_url(&take("token_url").unwrap_or_default(), "token_url")?;
        let client_id = take("client_id").unwrap_or_default();
        let client_secret = take("client_secret").unwrap_or_default();
        let auth = match take("client_auth").as_deref().map(String::as_str) {
            None | Some("basic") => ClientAuth::Basic,
            Some("post") => ClientAuth::Post,
            Some(_) => {
                return Err(GrantProblem::Invalid {
                    key: "client_auth",
                    expected: "basic or post",
                });
            }
        };
        for (key, text) in [("client_id", &client_id), ("client_secret", &client_secret)] {
            if text.is_empty() {
                return Err(GrantProblem::Invalid {
                    key,
                    expected: "a non-empty string",
                });
            }
        }
        Ok(ClientCredentials {
            token_url,
            client_id,
            client_secret: Secret::new(client_secret.as_bytes().to_vec()),
            scope: take("scope"),
            audience: take("audience"),
            auth,
        })
    }

    pub fn token_request(&self) -> Request<Bytes> {
        let mut body = Zeroizing::new(b"grant_type=client_credentials".to_vec());
        let mut param = |name: &str, value: &[u8]| {
            body.push(b'&');
            body.extend_from_slice(name.as_bytes());
            body.push(b'=');
            form_encode(&mut body, value);
        };
        if let Some(scope) = &self.scope {
            param("scope", scope.as_bytes());
        }
        if let Some(audience) = &self.audience {
            param("audience", audience.as_bytes());
        }
        let mut authorization = None;
        match self.auth {
            ClientAuth::Post => {
                param("client_id", self.client_id.as_bytes());
                param("client_secret", self.client_secret.expose());
            }
            ClientAuth::Basic => {
                let mut pair = Zeroizing::new(Vec::new());
                form_encode(&mut pair, self.client_id.as_bytes());
                pair.push(b':');
                form_encode(&mut pair, self.client_secret.expose());
                let text = Zeroizing::new(format!("Basic {}", STANDARD.encode(&*pair)));
                // Base64 of anything is a valid header value.
                if let Ok(mut value) = HeaderValue::from_str(&text) {
                    value.set_sensitive(true);
                    authorization = Some(value);
                }
            }
        }
        // The body holds the client secret with `post`: the buffer itself
        // travels, and is zeroized when hyper drops the last reference.
        let mut req = Request::new(Bytes::from_owner(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.token_url.clone();
        let headers = req.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value);
        }
        req
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<Zeroizing<String>>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

pub(super) fn read_answer(body: &[u8]) -> Result<Token, TokenError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|_| TokenError::BadAnswer {
        what: "not a JSON object",
    })?;
    let token = answer.access_token.ok_or(TokenError::BadAnswer {
        what: "no access_token",
    })?;
    // A token of another type (a MAC or DPoP token) cannot be used as the
    // bearer token the agent's placeholder stands for.
    if let Some(kind) = &answer.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::BadAnswer {
            what: "token_type is not Bearer",
        });
    }
    // Some servers send the number as a string.
    let seconds = match &answer.expires_in {
        None => None,
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    let lifetime = match (&answer.expires_in, seconds) {
        (None, _) => LIFETIME_UNSAID,
        (Some(_), Some(s)) => Duration::from_secs(s),
        (Some(_), None) => {
            return Err(TokenError::BadAnswer {
                what: "expires_in is not a number of seconds",
            });
        }
    };
    Ok(Token {
        value: checked_token(&token)?,
        lifetime,
    })
}
