//! Tokens of `oauth2_client_credentials` and `github_app` secrets, fetched
//! when a request needs one and kept until shortly before they expire.
//!
//! Requests that need the same token while it is being fetched wait for that
//! one fetch. A token endpoint that fails is not asked again for
//! [`RETRY_AFTER_FAILURE`], so a broken endpoint sees one request, not one
//! per agent request; a token still within its lifetime is used while its
//! refresh fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use tracing::{info, warn};

use super::grant::{Grant, TokenError};
use super::swap::Credential;
use crate::secret::Secret;

/// How long a token fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A token is renewed this long before it expires (or at nine tenths of
/// its lifetime, if that is shorter), so no request carries one that
/// expires on its way.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Tokens are scrubbed from responses this long after they expire.
const SCRUB_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

/// Sends a token request and returns the answer's status and body.
pub trait Transport {
    fn send(
        &self,
        req: Request<Bytes>,
    ) -> impl Future<Output = Result<(StatusCode, Bytes), String>> + Send;
}

#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Every token handed out and not long expired, with its placeholder.
    issued: Mutex<Vec<(Secret, Vec<u8>, Instant)>>,
    /// Counts changes to `issued`; bumped before a new token is handed to
    /// any request, so a scrubber built at generation N knows every token
    /// handed out by then.
    generation: AtomicU64,
}

struct Slot {
    /// The stored value the token comes from: a secret set or rotated since
    /// gets a new slot, so its old token is not used.
    source: Secret,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    token: Option<Held>,
    failed: Option<(Instant, TokenError)>,
}

struct Held {
    value: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

impl TokenCache {
    /// The token for `cred` at `now`, fetched through `transport` if none is
    /// held or it is due for renewal.
    pub async fn token(
        &self,
        cred: &Credential,
        transport: &impl Transport,
        now: Instant,
    ) -> Result<Secret, TokenError> {
        let slot = self.slot(cred);
        let mut state = slot.state.lock().await;
        let usable = state.token.as_ref().filter(|t| now < t.expires_at);
        if let Some(held) = usable.filter(|t| now < t.refresh_at) {
            return Ok(held.value.clone());
        }
        if let Some((at, err)) = &state.failed
            && now.saturating_duration_since(*at) < RETRY_AFTER_FAILURE
        {
            return match usable {
                Some(held) => Ok(held.value.clone()),
                None => Err(err.clone()),
            };
        }
        match fetch(cred, transport).await {
            Ok(token) => {
                let margin = REFRESH_MARGIN.min(token.lifetime / 10);
                let expires_at = now + token.lifetime;
                state.token = Some(Held {
                    value: token.value.clone(),
                    refresh_at: expires_at - margin,
                    expires_at,
                });
                state.failed = None;
                self.remember(&token.value, cred, expires_at, now);
                info!(secret = %cred.name, lifetime_secs = token.lifetime.as_secs(), "token fetched");
                Ok(token.value)
            }
            Err(err) => {
                warn!(secret = %cred.name, error = %err, "token fetch failed");
                state.failed = Some((now, err.clone()));
                match state.token.as_ref().filter(|t| now < t.expires_at) {
                    Some(held) => Ok(held.value.clone()),
                    None => Err(err),
                }
            }
        }
    }

    /// Read before [`TokenCache::scrub_pairs`]: those pairs include every
    /// token handed out up to this generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `(token, placeholder)` for every token handed out that has not been
    /// expired for long: an upstream may echo one back.
    pub fn scrub_pairs(&self) -> Vec<(Secret, Vec<u8>)> {
        match self.issued.lock() {
            Ok(issued) => issued
                .iter()
                .map(|(token, placeholder, _)| (token.clone(), placeholder.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn slot(&self, cred: &Credential) -> Arc<Slot> {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stale = slots
            .get(&cred.name)
            .is_none_or(|s| s.source.expose() != cred.value.expose());
        if stale {
            slots.insert(
                cred.name.clone(),
                Arc::new(Slot {
                    source: cred.value.clone(),
                    state: tokio::sync::Mutex::new(State::default()),
                }),
            );
        }
        slots[&cred.name].clone()
    }

    fn remember(&self, token: &Secret, cred: &Credential, expires_at: Instant, now: Instant) {
        if let Ok(mut issued) = self.issued.lock() {
            issued.retain(|(_, _, exp)| now.saturating_duration_since(*exp) < SCRUB_AFTER_EXPIRY);
            issued.push((
                token.clone(),
                cred.placeholder.as_bytes().to_vec(),
                expires_at,
            ));
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

async fn fetch(
    cred: &Credential,
    transport: &impl Transport,
) -> Result<super::grant::Token, TokenError> {
    // The vault checked the value when it was stored; a value that no longer
    // parses (a file written by another version) is a failure to fetch.
    let grant = Grant::parse(cred.kind, &cred.value)
        .ok()
        .flatten()
        .ok_or(TokenError::BadStoredValue)?;
    let req = grant.token_request(SystemTime::now())?;
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, transport.send(req))
        .await
        .map_err(|_| TokenError::Timeout(FETCH_TIMEOUT))?
        .map_err(|reason| TokenError::Unreachable { reason })?;
    grant.read_answer(status, &body, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::vault::SecretKind;

    const VALUE: &str = "token_url: https://auth.example.test/token\nclient_id: c\nclient_secret: test-client-secret\n";

    fn cred(value: &str) -> Credential {
        Credential {
            header: None,
            name: "svc".into(),
            kind: SecretKind::Oauth2ClientCredentials,
            placeholder: "airlock-ph-svc".into(),
            value: Secret::new(value.as_bytes().to_vec()),
        }
    }

    /// A token endpoint that gives the queued answers in turn, after
    /// `delay`, and counts the requests it got.
    struct Endpoint {
        answers: Mutex<VecDeque<Result<(StatusCode, &'static str), String>>>,
        asked: AtomicUsize,
        delay: Duration,
    }

    impl Endpoint {
        fn new(answers: Vec<Result<(u16, &'static str), String>>) -> Endpoint {
            Endpoint {
                answers: Mutex::new(
                    answers
                        .into_iter()
                        .map(|a| a.map(|(s, b)| (StatusCode::from_u16(s).expect("status"), b)))
                        .collect(),
                ),
                asked: AtomicUsize::new(0),
                delay: Duration::ZERO,
            }
        }
        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    impl Transport for Endpoint {
        async fn send(&self, req: Request<Bytes>) -> Result<(StatusCode, Bytes), String> {
            assert_eq!(req.uri(), "https://auth.example.test/token");
            self.asked.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let next = self.answers.lock().expect("answers").pop_front();
            let (status, body) = next.expect("an answer queued for every request")?;
            Ok((status, Bytes::from_static(body.as_bytes())))
        }
    }

    const TOKEN_A: &str = r#"{"access_token":"tok-a","expires_in":600}"#;
    const TOKEN_B: &str = r#"{"access_token":"tok-b","expires_in":600}"#;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    async fn get(
        cache: &TokenCache,
        c: &Credential,
        e: &Endpoint,
        at: Instant,
    ) -> Result<String, TokenError> {
        cache
            .token(c, e, at)
            .await
            .map(|t| String::from_utf8_lossy(t.expose()).into_owned())
    }

    #[test]
    fn a_token_is_fetched_once_and_renewed_a_minute_before_it_expires() {
        rt().block_on(async {
            let (cache, c) = (TokenCache::default(), cred(VALUE));
            let e = Endpoint::new(vec![Ok((200, TOKEN_A)), Ok((200, TOKEN_B))]);
            let t0 = Instant::now();
            assert_eq!(get(&cache, &c, &e, t0).await.expect("first"), "tok-a");
            let before_renewal = t0 + Duration::from_secs(600 - 61);
            assert_eq!(
                get(&cache, &c, &e, before_renewal).await.expect("cached"),
                "tok-a"
            );
            assert_eq!(e.asked(), 1);
            let renewal = t0 + Duration::from_secs(600 - 60);
            assert_eq!(
                get(&cache, &c, &e, renewal).await.expect("renewed"),
                "tok-b"
            );
            assert_eq!(e.asked(), 2);
        });
    }

    #[test]
    fn requests_waiting_for_the_same_token_share_one_fetch() {
        rt().block_on(async {
            let (cache, c) = (TokenCache::default(), cred(VALUE));
            let mut e = Endpoint::new(vec![Ok((200, TOKEN_A))]);
            e.delay = Duration::from_millis(50);
            let now = Instant::now();
            let (a, b, d) = tokio::join!(
                get(&cache, &c, &e, now),
                get(&cache, &c, &e, now),
                get(&cache, &c, &e, now)
            );
            for got in [a, b, d] {
                assert_eq!(got.expect("token"), "tok-a");
            }
            assert_eq!(e.asked(), 1);
        });
    }

    #[test]
    fn a_failing_endpoint_is_asked_again_only_after_a_pause() {
        rt().block_on(async {
            let (cache, c) = (TokenCache::default(), cred(VALUE));
            let e = Endpoint::new(vec![
                Ok((401, r#"{"error":"invalid_client"}"#)),
                Err("connection refused".into()),
                Ok((200, TOKEN_A)),
            ]);
            let t0 = Instant::now();
            let err = get(&cache, &c, &e, t0).await.expect_err("refused");
            assert!(
                matches!(err, TokenError::Refused { status: 401, .. }),
                "{err:?}"
            );
            let again = get(&cache, &c, &e, t0 + Duration::from_secs(4)).await;
            assert!(
                matches!(again, Err(TokenError::Refused { .. })),
                "{again:?}"
            );
            assert_eq!(e.asked(), 1, "asked again within the pause");
            let err = get(&cache, &c, &e, t0 + RETRY_AFTER_FAILURE)
                .await
                .expect_err("down");
            assert!(matches!(err, TokenError::Unreachable { .. }), "{err:?}");
            let later = t0 + RETRY_AFTER_FAILURE * 2;
            assert_eq!(get(&cache, &c, &e, later).await.expect("back"), "tok-a");
            assert_eq!(e.asked(), 3);
        });
    }

    #[test]
    fn a_token_still_alive_is_used_while_its_renewal_fails() {
        rt().block_on(async {
            let (cache, c) = (TokenCache::default(), cred(VALUE));
            let e = Endpoint::new(vec![Ok((200, TOKEN_A)), Ok((503, "busy"))]);
            let t0 = Instant::now();
            assert_eq!(get(&cache, &c, &e, t0).await.expect("first"), "tok-a");
            let renewal = t0 + Duration::from_secs(597);
            assert_eq!(
                get(&cache, &c, &e, renewal).await.expect("old token"),
                "tok-a"
            );
            assert_eq!(e.asked(), 2);
            let expired = t0 + Duration::from_secs(600);
            let gone = get(&cache, &c, &e, expired).await;
            assert!(
                matches!(gone, Err(TokenError::Refused { status: 503, .. })),
                "{gone:?}"
            );
        });
    }

    #[test]
    fn a_changed_secret_fetches_a_new_token_and_every_token_stays_scrubbed() {
        rt().block_on(async {
            let cache = TokenCache::default();
            let e = Endpoint::new(vec![Ok((200, TOKEN_A)), Ok((200, TOKEN_B))]);
            let now = Instant::now();
            let g0 = cache.generation();
            assert_eq!(
                get(&cache, &cred(VALUE), &e, now).await.expect("a"),
                "tok-a"
            );
            let rotated = VALUE.replace("test-client-secret", "test-client-secret-2");
            assert_eq!(
                get(&cache, &cred(&rotated), &e, now).await.expect("b"),
                "tok-b"
            );
            assert_eq!(cache.generation(), g0 + 2);
            let pairs: Vec<(String, String)> = cache
                .scrub_pairs()
                .into_iter()
                .map(|(t, p)| {
                    (
                        String::from_utf8_lossy(t.expose()).into_owned(),
                        String::from_utf8_lossy(&p).into_owned(),
                    )
                })
                .collect();
            assert_eq!(
                pairs,
                [
                    ("tok-a".to_owned(), "airlock-ph-svc".to_owned()),
                    ("tok-b".to_owned(), "airlock-ph-svc".to_owned())
                ]
            );
        });
    }
}
