use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::StatusCode;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

use super::github_app::unix_time_of;
use super::*;

const CLIENT_SECRET: &str = "test-client-secret/with+odd&chars";

fn secret(text: &str) -> Secret {
    Secret::new(text.as_bytes().to_vec())
}

fn oauth2(text: &str) -> Result<ClientCredentials, GrantProblem> {
    ClientCredentials::parse(&secret(text))
}

fn oauth2_value(extra: &str) -> String {
    format!(
        "token_url: https://auth.example.test/oauth/token\nclient_id: test-client\nclient_secret: \"{CLIENT_SECRET}\"\n{extra}"
    )
}

#[test]
fn an_oauth2_value_is_yaml_or_json_with_the_keys_it_needs() {
    let c = oauth2(&oauth2_value("scope: read write\n")).expect("yaml");
    assert_eq!(c.token_url, "https://auth.example.test/oauth/token");
    assert_eq!(c.client_id.as_str(), "test-client");
    assert_eq!(c.client_secret.expose(), CLIENT_SECRET.as_bytes());
    assert_eq!(c.scope.as_deref().map(String::as_str), Some("read write"));
    assert_eq!(c.auth, oauth2::ClientAuth::Basic);
    let json = format!(
        r#"{{"token_url": "https://auth.example.test/t", "client_id": "42", "client_secret": "{CLIENT_SECRET}", "client_auth": "post"}}"#
    );
    let c = oauth2(&json).expect("json");
    assert_eq!(c.client_id.as_str(), "42");
    assert_eq!(c.auth, oauth2::ClientAuth::Post);
}

#[test]
fn a_bad_oauth2_value_is_refused_by_name_never_showing_the_values() {
    let cases = [
        (
            oauth2_value("scpoe: read\n"),
            GrantProblem::UnknownKey {
                key: Some("scpoe".into()),
            },
        ),
        // A secret pasted where a key goes is not echoed back.
        (
            oauth2_value(&format!("\"{CLIENT_SECRET}\": x\n")),
            GrantProblem::UnknownKey { key: None },
        ),
        (
            "token_url: https://a.test/t\nclient_secret: x\n".to_owned(),
            GrantProblem::Missing { key: "client_id" },
        ),
        (
            oauth2_value("").replace("https://", "http://"),
            GrantProblem::NotHttpsUrl { key: "token_url" },
        ),
        (
            oauth2_value("client_auth: jwt\n"),
            GrantProblem::Invalid {
                key: "client_auth",
                expected: "basic or post",
            },
        ),
        (
            oauth2_value("scope: [a, b]\n"),
            GrantProblem::NotText { key: "scope" },
        ),
        (CLIENT_SECRET.to_owned(), GrantProblem::NotMapping),
        (
            format!("client_secret: \"{CLIENT_SECRET}"),
            GrantProblem::NotYaml {
                line: 1,
                column: 50,
            },
        ),
    ];
    for (value, expected) in cases {
        let problem = oauth2(&value).map(|_| ()).expect_err(&expected.to_string());
        assert_eq!(problem, expected);
        assert!(!problem.to_string().contains(CLIENT_SECRET), "{problem}");
    }
}

#[test]
fn the_oauth2_token_request_authenticates_the_client_as_asked() {
    let basic = oauth2(&oauth2_value(
        "scope: read write\naudience: https://api.test/\n",
    ))
    .expect("value")
    .token_request();
    assert_eq!(basic.method(), http::Method::POST);
    assert_eq!(basic.uri(), "https://auth.example.test/oauth/token");
    assert_eq!(
        basic.headers()["content-type"],
        "application/x-www-form-urlencoded"
    );
    // RFC 6749 §2.3.1: the id and secret are form-encoded, then Basic.
    let expected = format!(
        "Basic {}",
        STANDARD.encode("test-client:test-client-secret%2Fwith%2Bodd%26chars")
    );
    assert_eq!(basic.headers()["authorization"], expected.as_str());
    assert!(basic.headers()["authorization"].is_sensitive());
    assert_eq!(
        basic.body().as_ref(),
        b"grant_type=client_credentials&scope=read%20write&audience=https%3A%2F%2Fapi.test%2F"
    );

    let post = oauth2(&oauth2_value("client_auth: post\n"))
        .expect("value")
        .token_request();
    assert!(post.headers().get("authorization").is_none());
    assert_eq!(
        post.body().as_ref(),
        b"grant_type=client_credentials&client_id=test-client&client_secret=test-client-secret%2Fwith%2Bodd%26chars"
    );
}

fn answer(grant: &Grant, status: u16, body: &str) -> Result<Token, TokenError> {
    grant.read_answer(
        StatusCode::from_u16(status).expect("status"),
        body.as_bytes(),
        SystemTime::now(),
    )
}

#[test]
fn an_oauth2_answer_gives_a_bearer_token_and_its_lifetime() {
    let grant = Grant::Oauth2(oauth2(&oauth2_value("")).expect("value"));
    for (body, lifetime) in [
        (
            r#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#,
            3600,
        ),
        (
            r#"{"access_token":"tok-1","token_type":"bearer","expires_in":"120"}"#,
            120,
        ),
        (r#"{"access_token":"tok-1"}"#, 300),
    ] {
        let token = answer(&grant, 200, body).expect(body);
        assert_eq!(token.value.expose(), b"tok-1");
        assert_eq!(token.lifetime, Duration::from_secs(lifetime));
    }
    for (body, what) in [
        ("not json", "not a JSON object"),
        (r#"{"token_type":"Bearer"}"#, "no access_token"),
        (
            r#"{"access_token":"t","token_type":"mac"}"#,
            "token_type is not Bearer",
        ),
        (
            r#"{"access_token":"a b"}"#,
            "the token has characters a header cannot carry",
        ),
        (
            r#"{"access_token":"a\r\nx-injected: 1"}"#,
            "the token has characters a header cannot carry",
        ),
        (r#"{"access_token":""}"#, "the token is empty or too long"),
        (
            r#"{"access_token":"t","expires_in":"soon"}"#,
            "expires_in is not a number of seconds",
        ),
    ] {
        match answer(&grant, 200, body) {
            Err(TokenError::BadAnswer { what: got }) => assert_eq!(got, what, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn a_refusal_names_the_status_and_a_plain_error_code_but_never_echoes_the_body() {
    let grant = Grant::Oauth2(oauth2(&oauth2_value("")).expect("value"));
    let err = answer(
        &grant,
        401,
        r#"{"error":"invalid_client","error_description":"x"}"#,
    )
    .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "the token endpoint answered 401 (invalid_client)"
    );
    let echo = format!(r#"{{"error":"bad secret {CLIENT_SECRET}"}}"#);
    let err = answer(&grant, 400, &echo).expect_err("refused");
    assert_eq!(err.to_string(), "the token endpoint answered 400");
}

/// An RSA key made by openssl, as GitHub hands them out (PKCS#1), or in
/// PKCS#8.
fn rsa_pem(pkcs8: bool) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["genrsa"]);
    if !pkcs8 {
        cmd.arg("-traditional");
    }
    let out = cmd.arg("2048").output().expect("openssl (Debian: openssl)");
    assert!(out.status.success(), "openssl genrsa failed");
    String::from_utf8(out.stdout).expect("pem")
}

fn app_value(pem: &str, extra: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("  {l}\n")).collect();
    format!("app_id: 12345\ninstallation_id: 678\n{extra}private_key: |\n{indented}")
}

fn jwt_parts(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
    let mut it = jwt.split('.');
    let (h, c, s) = (
        it.next().expect("header"),
        it.next().expect("claims"),
        it.next().expect("sig"),
    );
    assert!(it.next().is_none());
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).expect("base64url");
    (
        serde_json::from_slice(&decode(h)).expect("header json"),
        serde_json::from_slice(&decode(c)).expect("claims json"),
        decode(s),
        format!("{h}.{c}"),
    )
}

#[test]
fn a_github_app_signs_its_jwt_with_its_key_and_asks_for_its_installation() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for pkcs8 in [false, true] {
        let pem = rsa_pem(pkcs8);
        let value = secret(&app_value(&pem, ""));
        let app = AppInstallation::parse(&value).expect("github_app value");
        let req = app.token_request(now).expect("request");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri(),
            "https://api.github.com/app/installations/678/access_tokens"
        );
        assert_eq!(req.headers()["user-agent"], "airlock");
        let auth = req.headers()["authorization"].to_str().expect("ascii");
        let jwt = auth.strip_prefix("Bearer ").expect("bearer");
        let (header, claims, sig, signed) = jwt_parts(jwt);
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(
            claims,
            serde_json::json!({"iat": 1_800_000_000u64 - 60, "exp": 1_800_000_000u64 + 540, "iss": "12345"})
        );
        // Verified with the public half of the same key.
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .expect("pem")
            .expect("key");
        let pair = match &der {
            rustls::pki_types::PrivateKeyDer::Pkcs1(k) => {
                ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
            }
            rustls::pki_types::PrivateKeyDer::Pkcs8(k) => {
                ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
            }
            _ => panic!("not RSA"),
        }
        .expect("rsa");
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public().as_ref());
        public
            .verify(signed.as_bytes(), &sig)
            .expect("signature verifies");
        let mut forged = signed.into_bytes();
        forged[40] ^= 1;
        assert!(public.verify(&forged, &sig).is_err());
    }
}

#[test]
fn a_github_app_value_is_checked_and_enterprise_servers_are_reached_under_api_url() {
    let pem = rsa_pem(false);
    let app = AppInstallation::parse(&secret(&app_value(
        &pem,
        "api_url: https://ghe.example.test/api/v3/\n",
    )))
    .expect("value");
    assert_eq!(
        app.token_url,
        "https://ghe.example.test/api/v3/app/installations/678/access_tokens"
    );
    let cases = [
        (app_value("not a key", ""), GrantProblem::PrivateKey),
        (
            app_value(&pem, "").replace("installation_id: 678", "installation_id: abc"),
            GrantProblem::Invalid {
                key: "installation_id",
                expected: "a number",
            },
        ),
        (
            app_value(&pem, "api_url: http://ghe.example.test\n"),
            GrantProblem::NotHttpsUrl { key: "api_url" },
        ),
        (
            app_value(&pem, "").replace("app_id: 12345\n", ""),
            GrantProblem::Missing { key: "app_id" },
        ),
    ];
    for (value, expected) in cases {
        let problem = AppInstallation::parse(&secret(&value))
            .map(|_| ())
            .expect_err(&expected.to_string());
        assert_eq!(problem, expected);
        let key_line = pem.lines().nth(1).expect("a line of the key");
        assert!(!problem.to_string().contains(key_line), "{problem}");
    }
    assert!(
        format!("{:?}", Grant::GithubApp(app)).ends_with("(***)"),
        "Debug shows nothing of the key"
    );
}

#[test]
fn a_github_answer_lives_until_its_expires_at() {
    let pem = rsa_pem(false);
    let grant =
        Grant::GithubApp(AppInstallation::parse(&secret(&app_value(&pem, ""))).expect("value"));
    let now = UNIX_EPOCH + Duration::from_secs(1_468_275_250 - 3000);
    let token = grant
        .read_answer(
            StatusCode::CREATED,
            br#"{"token":"ghs_test0123","expires_at":"2016-07-11T22:14:10Z"}"#,
            now,
        )
        .expect("token");
    assert_eq!(token.value.expose(), b"ghs_test0123");
    assert_eq!(token.lifetime, Duration::from_secs(3000));
}

#[test]
fn utc_timestamps_convert_to_unix_time() {
    for (text, secs) in [
        ("1970-01-01T00:00:00Z", 0),
        ("2000-02-29T00:00:00Z", 951_782_400),
        ("2016-07-11T22:14:10Z", 1_468_275_250),
        ("2026-12-31T23:59:59Z", 1_798_761_599),
    ] {
        assert_eq!(unix_time_of(text), Some(secs), "{text}");
    }
    for bad in [
        "2016-07-11 22:14:10Z",
        "2016-13-11T22:14:10Z",
        "2016-07-11T22:14:10+01:00",
    ] {
        assert_eq!(unix_time_of(bad), None, "{bad}");
    }
}
