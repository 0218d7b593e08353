//! Every way a request can fail, turned into a response in one place: the
//! status, a JSON body the agent can read, and a bounded reason label.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::body::{ProxyBody, full};
use crate::{audit::Action, ratelimit::RetryAfter};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("denied by policy: {reason}")]
    Denied {
        reason: &'static str,
        rule: Option<Arc<str>>,
    },
    /// Refused for a method the request claims besides its own (an
    /// override header, `_method`): named in the answer, since the
    /// request's own method is allowed.
    #[error("denied by policy: {reason} for the claimed method")]
    ClaimDenied {
        claimed: String,
        reason: &'static str,
        rule: Option<Arc<str>>,
    },
    #[error("request carries the placeholder of secret {secret}, which no rule allows here")]
    PlaceholderNotAllowed { secret: String },
    /// A placeholder where its secret's kind is not swapped: `detail`
    /// says where it is (names and places only, never a value).
    #[error("{detail}")]
    PlaceholderMisplaced { detail: String },
    #[error("a credential would travel over plain HTTP")]
    CredentialOverPlainHttp,
    #[error("rate limit of rule {rule} exceeded")]
    RateLimited {
        rule: Arc<str>,
        retry_after: Duration,
    },
    #[error("a human denied the request")]
    ApprovalDenied,
    #[error("no human answered in time")]
    ApprovalTimeout,
    #[error("upstream failed: {reason}")]
    Upstream { reason: String },
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the audit log is not being written")]
    AuditUnavailable,
    /// The token of an `oauth2_client_credentials` or `github_app` secret
    /// could not be fetched; `problem` never holds the endpoint's text.
    #[error("no token for secret {secret}: {problem}")]
    TokenUnavailable { secret: String, problem: String },
    /// The daemon is at a limit it keeps to stay up (memory for bodies
    /// read whole); the agent may retry.
    #[error("the proxy is busy: {reason}")]
    Overloaded { reason: &'static str },
}

/// What the agent asked, for the JSON body.
pub struct Asked<'a> {
    pub agent: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

impl ProxyError {
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Denied { reason, .. } | ProxyError::ClaimDenied { reason, .. } => reason,
            ProxyError::PlaceholderNotAllowed { .. } => "placeholder_not_allowed",
            ProxyError::PlaceholderMisplaced { .. } => "placeholder_misplaced",
            ProxyError::CredentialOverPlainHttp => "credential_over_plain_http",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::ApprovalDenied => "approval_denied",
            ProxyError::ApprovalTimeout => "approval_timeout",
            ProxyError::Upstream { .. } => "upstream_error",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::AuditUnavailable => "audit_unavailable",
            ProxyError::TokenUnavailable { .. } => "credential_token_unavailable",
            ProxyError::Overloaded { reason } => reason,
        }
    }

    pub fn action(&self) -> Action {
        match self {
            ProxyError::RateLimited { .. } => Action::RateLimited,
            ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout
            | ProxyError::AuditUnavailable
            | ProxyError::TokenUnavailable { .. }
            | ProxyError::Overloaded { .. } => Action::Error,
            _ => Action::Deny,
        }
    }

    /// The metric label for requests_total{decision}.
    pub fn decision(&self) -> &'static str {
        match self.action() {
            Action::RateLimited => "rate_limited",
            Action::Error => "error",
            _ => "deny",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream { .. } | ProxyError::TokenUnavailable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::AuditUnavailable | ProxyError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::FORBIDDEN,
        }
    }

    pub fn rule(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::Denied { rule, .. } | ProxyError::ClaimDenied { rule, .. } => rule.as_ref(),
            ProxyError::RateLimited { rule, .. } => Some(rule),
            _ => None,
        }
    }

    pub fn to_response(&self, asked: &Asked<'_>) -> Response<ProxyBody> {
        // A 503 is Airlock's own state (its audit log, its body budget),
        // not the upstream's failure.
        let error = match (self.action(), self.status()) {
            (_, StatusCode::SERVICE_UNAVAILABLE) => "unavailable",
            (Action::RateLimited, _) => "rate_limited",
            (Action::Error, _) => "upstream",
            _ => "denied",
        };
        let mut body = json!({
            "error": error,
            "agent": asked.agent,
            "host": asked.host,
            "method": asked.method,
            "path": asked.path,
            "reason": self.reason(),
        });
        match self {
            ProxyError::Upstream { reason } => body["detail"] = json!(reason),
            ProxyError::ClaimDenied { claimed, .. } => body["claimed_method"] = json!(claimed),
            ProxyError::TokenUnavailable { .. } | ProxyError::PlaceholderMisplaced { .. } => {
                body["detail"] = json!(self.to_string())
            }
            _ => {}
        }
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-airlock-reason", HeaderValue::from_static(self.reason()));
        if let ProxyError::RateLimited { retry_after, .. } = self {
            let secs = RetryAfter(*retry_after).secs_ceil();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    const ASKED: Asked<'static> = Asked {
        agent: "pr-bot",
        host: "api.github.com",
        method: "DELETE",
        path: "/repos/x",
    };

    async fn json_of(resp: Response<ProxyBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn a_denial_is_403_with_the_designed_json() {
        let err = ProxyError::Denied {
            reason: "method_not_allowed",
            rule: None,
        };
        let resp = err.to_response(&ASKED);
        assert_eq!(resp.status(), 403);
        let body = json_of(resp).await;
        assert_eq!(body["error"], "denied");
        assert_eq!(body["agent"], "pr-bot");
        assert_eq!(body["host"], "api.github.com");
        assert_eq!(body["method"], "DELETE");
        assert_eq!(body["path"], "/repos/x");
        assert_eq!(body["reason"], "method_not_allowed");
    }

    #[tokio::test]
    async fn a_refused_claim_is_named_in_the_403() {
        let err = ProxyError::ClaimDenied {
            claimed: "DELETE".into(),
            reason: "method_not_allowed",
            rule: Some("deny[0]".into()),
        };
        let asked = Asked {
            method: "POST",
            ..ASKED
        };
        let resp = err.to_response(&asked);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-airlock-reason"], "method_not_allowed");
        let body = json_of(resp).await;
        assert_eq!(body["error"], "denied");
        assert_eq!(body["method"], "POST");
        assert_eq!(body["claimed_method"], "DELETE");
        assert_eq!(body["reason"], "method_not_allowed");
        assert_eq!(err.rule().map(|r| &**r), Some("deny[0]"));
    }

    #[tokio::test]
    async fn rate_limits_are_429_with_retry_after() {
        let err = ProxyError::RateLimited {
            rule: "rules[0]".into(),
            retry_after: Duration::from_millis(11_200),
        };
        let resp = err.to_response(&ASKED);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "12");
        assert_eq!(json_of(resp).await["reason"], "rate_limited");
    }

    #[tokio::test]
    async fn each_kind_of_answer_says_whose_it_is() {
        let cases = [
            (ProxyError::Upstream { reason: "x".into() }, "upstream"),
            (ProxyError::UpstreamTimeout, "upstream"),
            (ProxyError::AuditUnavailable, "unavailable"),
            (
                ProxyError::Overloaded {
                    reason: "body_buffer_full",
                },
                "unavailable",
            ),
            (ProxyError::ApprovalTimeout, "denied"),
        ];
        for (err, expected) in cases {
            let reason = err.reason();
            assert_eq!(
                json_of(err.to_response(&ASKED)).await["error"],
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn upstream_failures_are_502_and_504() {
        assert_eq!(ProxyError::Upstream { reason: "x".into() }.status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::AuditUnavailable.status(), 503);
        assert_eq!(ProxyError::ApprovalTimeout.reason(), "approval_timeout");
    }
}
