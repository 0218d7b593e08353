use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use super::*;

const PR_BOT: &str = include_str!("../../../policies/pr-bot.yaml");
const LLM_CLIENT: &str = include_str!("../../../policies/llm-client.yaml");
const PACKAGE_FETCHER: &str = include_str!("../../../policies/package-fetcher.yaml");

/// Joins lines so tests can state line numbers by position (first = line 1).
fn doc(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn policy(text: &str) -> Policy {
    match parse_policy(Path::new("test.yaml"), text) {
        Ok(policy) => policy,
        Err(errors) => panic!("policy should parse:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<PolicyError> {
    match parse_policy(Path::new("test.yaml"), text) {
        Ok(_) => panic!("policy should be rejected:\n{text}"),
        Err(errors) => errors.0,
    }
}

fn only_error(text: &str) -> PolicyError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

fn allowed(decision: HttpDecision) -> Allowed {
    match decision {
        HttpDecision::Allow(allowed) => allowed,
        HttpDecision::Deny(denied) => panic!("expected allow, got {denied:?}"),
    }
}

fn denied(decision: HttpDecision) -> Denied {
    match decision {
        HttpDecision::Deny(denied) => denied,
        HttpDecision::Allow(allowed) => panic!("expected deny, got {allowed:?}"),
    }
}

fn reason(decision: HttpDecision) -> DenyReason {
    denied(decision).reason
}

/// Every path of `paths`, asked of `host` with GET, is refused `why`.
fn each_refused(p: &Policy, host: &str, why: DenyReason, paths: &[&str]) {
    for path in paths {
        assert_eq!(reason(p.decide_http(host, 443, "GET", path)), why, "{path}");
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
}

fn no_dns(_: &str) -> Vec<IpAddr> {
    Vec::new()
}

// ---- example policies ----

#[test]
fn pr_bot_example_reads_opens_prs_and_never_deletes() {
    let p = policy(PR_BOT);
    assert_eq!(p.agent, "pr-bot");
    assert_eq!(
        p.env,
        vec![
            (
                "GITHUB_TOKEN".to_owned(),
                EnvValue::Placeholder {
                    secret: "github-token".to_owned()
                }
            ),
            (
                "GH_REPO".to_owned(),
                EnvValue::Plain("myorg/myrepo".to_owned())
            ),
        ]
    );
    let read = allowed(p.decide_http(
        "api.github.com",
        443,
        "GET",
        "/repos/myorg/myrepo/pulls?state=open",
    ));
    assert_eq!(read.rule, RuleId(0));
    assert_eq!(&*read.rule_label, "rules[0] api.github.com");
    assert_eq!(*read.credentials, ["github-token".to_owned()]);
    assert!(!read.approval);
    allowed(p.decide_http("api.github.com", 443, "GET", "/repos/myorg/myrepo"));

    let open = allowed(p.decide_http("api.github.com", 443, "POST", "/repos/myorg/myrepo/pulls"));
    assert_eq!(open.rule, RuleId(1));
    assert_eq!(
        open.rate_limit,
        Some(RateLimit {
            count: 30,
            per: Duration::from_secs(60)
        })
    );
    allowed(p.decide_http(
        "api.github.com",
        443,
        "POST",
        "/repos/myorg/myrepo/issues/12/comments",
    ));
    allowed(p.decide_http(
        "api.github.com",
        443,
        "PATCH",
        "/repos/myorg/myrepo/git/refs/heads/pr-bot/fix/typo",
    ));
    assert_eq!(
        reason(p.decide_http(
            "api.github.com",
            443,
            "PATCH",
            "/repos/myorg/myrepo/git/refs/heads/main"
        )),
        DenyReason::PathNotAllowed
    );

    let delete = denied(p.decide_http(
        "api.github.com",
        443,
        "DELETE",
        "/repos/myorg/myrepo/issues/comments/1",
    ));
    assert_eq!(delete.reason, DenyReason::DenyRule);
    assert_eq!(delete.rule_label.as_deref(), Some("deny[0] api.github.com"));
    assert_eq!(
        reason(p.decide_http("api.github.com", 443, "GET", "/repos/otherorg/secret")),
        DenyReason::PathNotAllowed
    );
    assert_eq!(
        reason(p.decide_http(
            "api.github.com",
            443,
            "PUT",
            "/repos/myorg/myrepo/contents/x"
        )),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("evil.example", 443, "GET", "/")),
        DenyReason::NoRuleForHost
    );

    // git fetch yes, git push no.
    allowed(p.decide_http(
        "github.com",
        443,
        "GET",
        "/myorg/myrepo.git/info/refs?service=git-upload-pack",
    ));
    allowed(p.decide_http(
        "github.com",
        443,
        "POST",
        "/myorg/myrepo.git/git-upload-pack",
    ));
    assert_eq!(
        reason(p.decide_http(
            "github.com",
            443,
            "POST",
            "/myorg/myrepo.git/git-receive-pack"
        )),
        DenyReason::DenyRule
    );
    assert_eq!(p.secrets().collect::<Vec<_>>(), vec!["github-token"]);
    assert!(p.names_host("api.github.com"));
    assert!(p.names_host("GitHub.com."));
    assert!(!p.names_host("gist.github.com"));
}

#[test]
fn llm_client_example_binds_each_key_to_its_api() {
    let p = policy(LLM_CLIENT);
    assert_eq!(p.agent, "llm-client");
    assert_eq!(
        p.secrets().collect::<Vec<_>>(),
        vec!["anthropic-api-key", "openai-api-key"]
    );
    assert!(p.env.contains(&(
        "ANTHROPIC_API_KEY".to_owned(),
        EnvValue::Placeholder {
            secret: "anthropic-api-key".to_owned()
        }
    )));

    let chat = allowed(p.decide_http("api.openai.com", 443, "POST", "/v1/chat/completions"));
    assert_eq!(*chat.credentials, ["openai-api-key".to_owned()]);
    assert!(p.rule_allows_secret(chat.rule, "openai-api-key"));
    assert!(!p.rule_allows_secret(chat.rule, "anthropic-api-key"));
    allowed(p.decide_http("api.openai.com", 443, "POST", "/v1/responses"));
    let models = allowed(p.decide_http("api.openai.com", 443, "GET", "/v1/models"));
    assert_eq!(models.rule, RuleId(1));
    assert_eq!(models.rate_limit, None);
    assert_eq!(
        reason(p.decide_http("api.openai.com", 443, "DELETE", "/v1/models/ft-1")),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("api.openai.com", 443, "POST", "/v1/files")),
        DenyReason::PathNotAllowed
    );

    let messages = allowed(p.decide_http("api.anthropic.com", 443, "POST", "/v1/messages"));
    assert_eq!(*messages.credentials, ["anthropic-api-key".to_owned()]);
    assert_eq!(messages.rate_limit.map(|limit| limit.count), Some(50));
    assert!(!p.rule_allows_secret(messages.rule, "openai-api-key"));
    assert!(!p.rule_allows_secret(RuleId(99), "openai-api-key"));
}

#[test]
fn package_fetcher_example_is_get_only() {
    let p = policy(PACKAGE_FETCHER);
    assert_eq!(p.agent, "package-fetcher");
    assert!(p.env.is_empty());
    assert_eq!(p.secrets().count(), 0);
    let npm = allowed(p.decide_http("registry.npmjs.org", 443, "GET", "/@types%2fnode"));
    assert!(npm.credentials.is_empty());
    allowed(p.decide_http(
        "registry.npmjs.org",
        443,
        "GET",
        "/lodash/-/lodash-4.17.21.tgz",
    ));
    allowed(p.decide_http("pypi.org", 443, "GET", "/simple/requests/"));
    allowed(p.decide_http(
        "files.pythonhosted.org",
        443,
        "GET",
        "/packages/ab/cd/requests-2.32.0.tar.gz",
    ));
    assert_eq!(
        reason(p.decide_http("registry.npmjs.org", 443, "PUT", "/lodash")),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("pypi.org", 443, "POST", "/legacy/")),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("pypi.org", 443, "GET", "/account/login/")),
        DenyReason::PathNotAllowed
    );
}

// ---- hosts and ports ----

#[test]
fn wildcard_matches_labels_below_but_not_apex_or_lookalikes() {
    let p = policy(&doc(&["agent: a", "rules:", "  - host: \"*.example.com\""]));
    allowed(p.decide_http("a.example.com", 443, "GET", "/"));
    allowed(p.decide_http("a.b.example.com", 443, "GET", "/"));
    allowed(p.decide_http("A.Example.COM.", 443, "GET", "/"));
    for host in [
        "example.com",
        "badexample.com",
        "a.example.com.evil",
        ".example.com",
        "a..example.com",
        "evil/x.example.com",
        "",
    ] {
        assert_eq!(
            reason(p.decide_http(host, 443, "GET", "/")),
            DenyReason::NoRuleForHost,
            "{host}"
        );
    }
    assert!(p.names_host("x.example.com"));
    assert!(!p.names_host("example.com"));
}

#[test]
fn exact_host_is_case_insensitive_and_ignores_trailing_dot() {
    let p = policy(&doc(&["agent: a", "rules:", "  - host: API.Example.com."]));
    allowed(p.decide_http("api.example.com", 443, "GET", "/"));
    allowed(p.decide_http("API.EXAMPLE.COM.", 443, "GET", "/"));
    assert_eq!(
        reason(p.decide_http("x.api.example.com", 443, "GET", "/")),
        DenyReason::NoRuleForHost
    );
}

#[test]
fn ports_default_to_443_and_can_be_given_either_way() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: default.example",
        "  - host: inline.example:8443",
        "  - host: field.example",
        "    port: 8080",
        "  - host: \"[2001:db8::1]:9000\"",
        "  - host: 10.1.2.3",
    ]));
    allowed(p.decide_http("default.example", 443, "GET", "/"));
    assert_eq!(
        reason(p.decide_http("default.example", 80, "GET", "/")),
        DenyReason::NoRuleForHost
    );
    let inline = allowed(p.decide_http("inline.example", 8443, "GET", "/"));
    assert_eq!(&*inline.rule_label, "rules[1] inline.example:8443");
    assert_eq!(
        reason(p.decide_http("inline.example", 443, "GET", "/")),
        DenyReason::NoRuleForHost
    );
    allowed(p.decide_http("field.example", 8080, "GET", "/"));
    allowed(p.decide_http("2001:db8::1", 9000, "GET", "/"));
    allowed(p.decide_http("[2001:db8:0::1]", 9000, "GET", "/"));
    allowed(p.decide_http("10.1.2.3", 443, "GET", "/"));
    allowed(p.decide_http("::ffff:10.1.2.3", 443, "GET", "/"));
}

#[test]
fn bad_hosts_and_ports_are_reported() {
    let cases = [
        ("not a host", "invalid host"),
        ("*", "invalid host"),
        ("a.*.example.com", "invalid host"),
        ("*.10.0.0.1", "invalid host"),
        ("exa_mple..com", "invalid host"),
        ("-bad.example", "invalid host"),
        ("999.1.1.1", "invalid host"),
        ("example.com:0", "invalid host"),
        ("example.com:http", "invalid host"),
        ("ünïcode.example", "invalid host"),
        ("[::1", "invalid host"),
    ];
    for (host, message) in cases {
        let text = doc(&["agent: a", "rules:", &format!("  - host: \"{host}\"")]);
        let error = only_error(&text);
        assert!(error.message.contains(message), "{host}: {error}");
        assert_eq!((error.line, error.column), (3, 11), "{host}: {error}");
        assert!(error.hint.is_some());
    }
    let twice = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example:8443",
        "    port: 8443",
    ]));
    assert!(twice.message.contains("port given twice"), "{twice}");
    assert_eq!(twice.line, 4);
    let zero = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    port: 0",
    ]));
    assert!(zero.message.contains("port 0"), "{zero}");
}

// ---- methods and paths ----

#[test]
fn methods_are_checked_exactly_on_allow_rules() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    methods: [GET, POST]",
    ]));
    allowed(p.decide_http("a.example", 443, "GET", "/x"));
    allowed(p.decide_http("a.example", 443, "POST", "/x"));
    assert_eq!(
        reason(p.decide_http("a.example", 443, "get", "/x")),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("a.example", 443, "PUT", "/x")),
        DenyReason::MethodNotAllowed
    );
    let any = policy(&doc(&["agent: a", "rules:", "  - host: a.example"]));
    allowed(any.decide_http("a.example", 443, "PROPFIND", "/x"));
}

#[test]
fn bad_method_on_line_7_is_reported_at_line_7() {
    let text = doc(&[
        "agent: a",            // 1
        "rules:",              // 2
        "  - host: a.example", // 3
        "    methods: [GET]",  // 4
        "  - host: b.example", // 5
        "    methods:",        // 6
        "      - G3T!",        // 7
        "      - POST",        // 8
    ]);
    let error = only_error(&text);
    assert_eq!((error.line, error.column), (7, 9), "{error}");
    assert_eq!(error.message, "invalid HTTP method `G3T!`");
    assert_eq!(
        error.to_string(),
        "test.yaml:7:9: invalid HTTP method `G3T!` (hint: use an HTTP method such as GET, HEAD, POST, PUT, PATCH or DELETE)"
    );

    // Flow style: the column points at the element itself.
    let flow = doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    methods: [GET, get, \"\"]",
    ]);
    let all = errors(&flow);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].line, all[0].column), (4, 20));
    assert_eq!(
        all[0].hint.as_deref(),
        Some("methods are upper-case: `GET`")
    );
    assert_eq!((all[1].line, all[1].column), (4, 25));
}

#[test]
fn globs_single_star_stays_in_a_segment_double_star_crosses() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    paths: [\"/repos/*/issues\", \"/files/**\", \"/exact\", \"/v1/{a,b}/x\"]",
    ]));
    allowed(p.decide_http("a.example", 443, "GET", "/repos/one/issues"));
    allowed(p.decide_http("a.example", 443, "GET", "/repos/one/issues?page=2&x=/y"));
    allowed(p.decide_http("a.example", 443, "GET", "/files/a"));
    allowed(p.decide_http("a.example", 443, "GET", "/files/a/b/c.txt"));
    allowed(p.decide_http("a.example", 443, "GET", "/exact"));
    allowed(p.decide_http("a.example", 443, "GET", "/v1/b/x"));
    each_refused(
        &p,
        "a.example",
        DenyReason::PathNotAllowed,
        &[
            "/repos/one/two/issues",
            "/repos/issues",
            "/files",
            "/exact/more",
            "/exactly",
            "/v1/c/x",
            "",
            "*",
        ],
    );
}

#[test]
fn ambiguous_paths_cannot_satisfy_a_path_rule() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    paths: [\"/public/**\"]",
    ]));
    each_refused(
        &p,
        "a.example",
        DenyReason::PathNotAllowed,
        &[
            "/public/../admin/x",
            "/public/./x",
            "/public/%2e%2E/admin",
            "/public//x",
            "/public\\..\\admin",
            "/public/%zz",
            "/public/%2",
        ],
    );
    // Unreserved escapes are what the server sees once decoded.
    allowed(p.decide_http("a.example", 443, "GET", "/%70ublic/x"));
    allowed(p.decide_http("a.example", 443, "GET", "/public/a%2Fb"));
    allowed(p.decide_http("a.example", 443, "GET", "/public/x/"));
    allowed(p.decide_http("a.example", 443, "GET", "/public/ünï"));
}

/// A rule's rate-limit bucket follows the rule: a reload that adds a rule
/// before it neither hands it a fresh burst nor gives its spent bucket to
/// the newcomer.
#[test]
fn a_rules_rate_limit_key_follows_the_rule_not_its_place() {
    let limited = [
        "  - host: api.example.com",
        "    methods: [POST]",
        "    rate_limit: 30/minute",
    ];
    let before = policy(&doc(&[&["agent: a", "rules:"][..], &limited[..]].concat()));
    let after = policy(&doc(&[
        &[
            "agent: a",
            "rules:",
            "  - host: api.example.com",
            "    methods: [GET]",
        ][..],
        &limited[..],
    ]
    .concat()));
    let post =
        |p: &crate::policy::Policy| allowed(p.decide_http("api.example.com", 443, "POST", "/"));
    let get = allowed(after.decide_http("api.example.com", 443, "GET", "/"));
    assert_ne!(post(&before).rule, post(&after).rule, "the rule moved");
    assert_eq!(post(&before).limit_key, post(&after).limit_key);
    assert_ne!(get.limit_key, post(&before).limit_key);
}

/// Servers that decode `%2F` before routing, or drop a segment's
/// `;parameters`, read these paths as /admin/users: a deny rule refuses
/// them, and an allow rule's `*` does not stretch over them.
#[test]
fn encoded_separators_and_parameters_are_matched_as_servers_may_read_them() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: \"*.example.com\"",
        "  - host: api.example.org",
        "    paths: [\"/repos/org/*\", \"/@types%2f*\", \"/files/**\"]",
        "deny:",
        "  - host: \"*.example.com\"",
        "    paths: [\"/admin/**\", \"/users/root\"]",
    ]));
    each_refused(
        &p,
        "x.example.com",
        DenyReason::DenyRule,
        &[
            "/admin%2Fusers",
            "/admin%2fusers",
            "/admin%5Cusers",
            "/admin;x/users",
            "/admin;/users",
            "/users/root;jsessionid=1",
            "/users%2Froot",
            // Decoded, then cut: nginx passes /admin;x/users on to Tomcat,
            // which reads /admin/users. Cut first, it would be /admin.
            "/admin;x%2Fusers",
        ],
    );
    allowed(p.decide_http("x.example.com", 443, "GET", "/public%2Fadmin"));
    allowed(p.decide_http("x.example.com", 443, "GET", "/users/root2"));

    // Express, Spring MVC 5 and Rails route a path with a trailing slash
    // as the path without it, and the other way round.
    each_refused(
        &p,
        "x.example.com",
        DenyReason::DenyRule,
        &[
            "/users/root/",
            "/users%2Froot/",
            "/users/root;x/",
            "/admin/",
            "/admin",
        ],
    );
    allowed(p.decide_http("x.example.com", 443, "GET", "/users/"));
    allowed(p.decide_http("x.example.com", 443, "GET", "/users"));
    allowed(p.decide_http("x.example.com", 443, "GET", "/"));

    each_refused(
        &p,
        "api.example.org",
        DenyReason::PathNotAllowed,
        &[
            "/repos/org/r%2Fsettings",
            "/repos/org/r%5Csettings",
            "/repos/org/r;x%2Fsettings",
        ],
    );
    // A rule written with the encoded separator allows what it names, and
    // `**` spans separators however they are written.
    allowed(p.decide_http("api.example.org", 443, "GET", "/@types%2fnode"));
    // Whatever the case of an escape's hex digits, in the rule or the path.
    allowed(p.decide_http("api.example.org", 443, "GET", "/@types%2Fnode"));
    allowed(p.decide_http("api.example.org", 443, "GET", "/repos/org/r"));
    allowed(p.decide_http("api.example.org", 443, "GET", "/files/a%2Fb;v=1"));
}

#[test]
fn canonical_path_decodes_only_unreserved_escapes() {
    use super::matcher::canonical_path;
    assert_eq!(canonical_path("/").as_deref(), Some("/"));
    assert_eq!(canonical_path("/%41%7e%2F").as_deref(), Some("/A~%2F"));
    assert_eq!(canonical_path("/a/").as_deref(), Some("/a/"));
    assert_eq!(canonical_path("/a/%2e"), None);
    // What servers read as a separator, or drop from a segment, before
    // they resolve dot segments.
    for ambiguous in [
        "/hello/..%2Fadmin/users",
        "/hello/..%2fadmin",
        "/hello/%2e%2e%2fadmin",
        "/hello/..%5Cadmin",
        "/hello/..;/admin/x",
        "/hello/.;/admin",
        "/hello/..;jsessionid=1/admin",
        "/a%2F%2Fb",
        // A `;` before the encoded separator: cut first, the dot segment
        // goes with the parameter; decoded first (nginx), it is resolved.
        "/x;%2F..%2Fadmin/users",
        "/repos/org/r;%2F..%2F..%2Fother%2Frepo",
        "/x;%5C..%5Cadmin",
    ] {
        assert_eq!(canonical_path(ambiguous), None, "{ambiguous}");
    }
    // Encoded separators and parameters as such are left alone, an
    // escape's hex digits in upper case.
    assert_eq!(
        canonical_path("/@types%2fnode").as_deref(),
        Some("/@types%2Fnode")
    );
    assert_eq!(canonical_path("/a;b=c/x").as_deref(), Some("/a;b=c/x"));
    assert_eq!(canonical_path("/%41%7e%2F").as_deref(), Some("/A~%2F"));
    assert_eq!(canonical_path("a"), None);
}

#[test]
fn bad_paths_are_reported() {
    let all = errors(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    paths:",
        "      - repos/**",
        "      - \"/x/[unclosed\"",
        "  - host: b.example",
        "    paths: []",
    ]));
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[0].line, 5);
    assert_eq!(
        all[0].message,
        "path pattern `repos/**` must start with '/'"
    );
    assert_eq!(all[0].hint.as_deref(), Some("write `/repos/**`"));
    assert_eq!(all[1].line, 6);
    assert!(
        all[1]
            .message
            .starts_with("invalid path pattern `/x/[unclosed`")
    );
    assert_eq!(all[2].line, 8);
    assert_eq!(
        all[2].message,
        "`paths` is an empty list, so this rule can never match"
    );
}

// ---- deny rules ----

#[test]
fn deny_rules_win_over_allow_rules() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: \"*.example.com\"",
        "  - host: api.example.com",
        "    port: 8443",
        "deny:",
        "  - host: api.example.com",
        "    methods: [DELETE]",
        "  - host: \"*.example.com\"",
        "    paths: [\"/admin/**\"]",
        "  - host: blocked.example.com",
    ]));
    allowed(p.decide_http("api.example.com", 443, "GET", "/"));
    let d = denied(p.decide_http("api.example.com", 443, "DELETE", "/thing"));
    assert_eq!(d.reason, DenyReason::DenyRule);
    assert_eq!(d.rule_label.as_deref(), Some("deny[0] api.example.com"));
    // Case folding and other ports do not get around a deny rule.
    assert_eq!(
        reason(p.decide_http("api.example.com", 443, "delete", "/thing")),
        DenyReason::DenyRule
    );
    assert_eq!(
        reason(p.decide_http("api.example.com", 8443, "DELETE", "/thing")),
        DenyReason::DenyRule
    );
    let admin = denied(p.decide_http("x.example.com", 443, "GET", "/admin/users"));
    assert_eq!(admin.rule_label.as_deref(), Some("deny[1] *.example.com"));
    // Nor do encodings, dot segments, encoded separators, `;` parameters
    // or letter case, which servers may resolve or fold before routing.
    each_refused(
        &p,
        "x.example.com",
        DenyReason::DenyRule,
        &[
            "/%61dmin/users",
            "/public/../admin/users",
            "//admin/users",
            "/public/..%2Fadmin/users",
            "/public/..;/admin/users",
            "/ADMIN/users",
            "/Admin/users",
        ],
    );
    allowed(p.decide_http("x.example.com", 443, "GET", "/administrator"));
    assert_eq!(
        reason(p.decide_http("blocked.example.com", 443, "GET", "/")),
        DenyReason::DenyRule
    );
    // A wholly denied host is not resolvable even though a wildcard names it,
    // and a connection to it is refused in the deny rule's name.
    assert!(!p.names_host("blocked.example.com"));
    assert!(p.names_host("api.example.com"));
    assert_eq!(
        p.whole_host_denial("Blocked.Example.com.").as_deref(),
        Some("deny[2] blocked.example.com")
    );
    // Rules that deny only some methods or paths refuse no connection.
    assert_eq!(p.whole_host_denial("api.example.com"), None);
    assert_eq!(p.whole_host_denial("x.example.com"), None);
}

#[test]
fn most_specific_reason_across_rules_for_a_host() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    methods: [POST]",
        "  - host: a.example",
        "    methods: [GET]",
        "    paths: [\"/ok\"]",
        "  - host: a.example",
        "    port: 8443",
    ]));
    assert_eq!(
        reason(p.decide_http("a.example", 443, "GET", "/nope")),
        DenyReason::PathNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("a.example", 443, "PUT", "/ok")),
        DenyReason::MethodNotAllowed
    );
    assert_eq!(
        reason(p.decide_http("a.example", 9999, "GET", "/ok")),
        DenyReason::NoRuleForHost
    );
    // The first matching rule wins.
    assert_eq!(
        allowed(p.decide_http("a.example", 443, "POST", "/x")).rule,
        RuleId(0)
    );
    assert_eq!(
        allowed(p.decide_http("a.example", 8443, "PUT", "/x")).rule,
        RuleId(2)
    );
    assert_eq!(DenyReason::DenyRule.as_str(), "deny_rule");
    assert_eq!(DenyReason::NoRuleForHost.as_str(), "no_rule_for_host");
    assert_eq!(DenyReason::MethodNotAllowed.as_str(), "method_not_allowed");
    assert_eq!(DenyReason::PathNotAllowed.as_str(), "path_not_allowed");
}

#[test]
fn empty_policy_denies_everything() {
    let p = policy("agent: nothing\n");
    assert_eq!(
        reason(p.decide_http("a.example", 443, "GET", "/")),
        DenyReason::NoRuleForHost
    );
    assert!(p.tcp_match(v4(1, 1, 1, 1), 22, &no_dns).is_none());
    assert_eq!(p.passthrough("a.example", 443), Passthrough::Intercept);
    assert!(!p.names_host("a.example"));
}

// ---- unknown keys and shape errors ----

#[test]
fn typo_in_key_is_reported_with_line_column_and_valid_keys() {
    let text = doc(&[
        "agent: a",            // 1
        "rules:",              // 2
        "  - host: a.example", // 3
        "    methds: [GET]",   // 4
    ]);
    let error = only_error(&text);
    assert_eq!((error.line, error.column), (4, 5), "{error}");
    assert_eq!(error.message, "unknown key `methds`");
    let hint = error.hint.as_deref().unwrap_or_default();
    assert!(hint.starts_with("did you mean `methods`?"), "{hint}");
    assert!(
        hint.contains("host, port, methods, paths, credentials, rate_limit, approval"),
        "{hint}"
    );
}

#[test]
fn every_unknown_key_is_reported_in_one_pass() {
    let text = doc(&[
        "agent: a",                 // 1
        "colour: blue",             // 2
        "rules:",                   // 3
        "  - host: a.example",      // 4
        "    credentials:",         // 5
        "      - secrte: x",        // 6
        "deny:",                    // 7
        "  - host: b.example",      // 8
        "    rate_limit: 1/second", // 9
    ]);
    let all = errors(&text);
    let found: Vec<(usize, usize, &str)> = all
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, 1, "unknown key `colour`"),
            (6, 9, "unknown key `secrte`"),
            (9, 5, "unknown key `rate_limit`"),
        ]
    );
    assert!(
        all[2]
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("host, port, methods, paths")
    );
}

#[test]
fn key_lists_match_what_serde_accepts() {
    use super::schema::{CREDENTIAL_KEYS, DENY_KEYS, RULE_KEYS, TOP_KEYS};
    // serde's own message lists the fields it knows; the walk's lists must
    // be the same, or it would report valid keys (or miss typos).
    let contexts: [(&str, &[&str]); 4] = [
        ("agent: a\nbogus: 1\n", TOP_KEYS),
        (
            "agent: a\nrules:\n  - host: a.example\n    bogus: 1\n",
            RULE_KEYS,
        ),
        (
            "agent: a\ndeny:\n  - host: a.example\n    bogus: 1\n",
            DENY_KEYS,
        ),
        (
            "agent: a\nrules:\n  - host: a.example\n    credentials:\n      - bogus: 1\n",
            CREDENTIAL_KEYS,
        ),
    ];
    for (text, keys) in contexts {
        let serde_message = serde_yaml::from_str::<super::schema::PolicyFile>(text)
            .unwrap_err()
            .to_string();
        let listed: Vec<&str> = serde_message.split('`').skip(3).step_by(2).collect();
        assert_eq!(listed, keys, "{serde_message}");
        let error = only_error(text);
        assert_eq!(error.message, "unknown key `bogus`");
    }
}

#[test]
fn type_and_syntax_errors_carry_positions() {
    let wrong_type = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    approval: maybe",
    ]));
    assert_eq!(
        (wrong_type.line, wrong_type.column),
        (4, 15),
        "{wrong_type}"
    );
    assert!(!wrong_type.message.contains(" at line "), "{wrong_type}");
    assert!(wrong_type.message.contains("invalid type"), "{wrong_type}");

    let syntax = errors("agent: a\nrules:\n  - host: [unclosed\n");
    assert!(syntax[0].line >= 3, "{:?}", syntax);

    let missing = only_error("rules: []\n");
    assert!(
        missing.message.contains("missing field `agent`"),
        "{missing}"
    );

    for text in ["", "# just a comment\n", "~\n", "---\n"] {
        let empty = only_error(text);
        assert_eq!((empty.line, empty.column), (1, 1), "{text:?}");
        assert_eq!(empty.message, "the policy file is empty", "{text:?}");
    }
    let list = only_error("- agent: a\n");
    assert!(list.message.contains("invalid type"), "{list}");

    let big_port = only_error("agent: a\nrules:\n  - host: a.example\n    port: 70000\n");
    assert_eq!(big_port.line, 4);
}

// ---- agent, version, env ----

#[test]
fn agent_name_is_validated() {
    let empty = only_error("agent: \"\"\n");
    assert_eq!(empty.message, "`agent` must not be empty");
    assert_eq!((empty.line, empty.column), (1, 8));
    for bad in ["Pr-Bot", "-x", "a/b", "..", &"a".repeat(64)] {
        let error = only_error(&format!("agent: \"{bad}\"\n"));
        assert!(
            error.message.starts_with("invalid agent name"),
            "{bad}: {error}"
        );
    }
    policy(&format!("agent: {}\n", "a".repeat(63)));
    policy("agent: 0_a-b\n");
}

#[test]
fn version_must_be_one() {
    policy("version: 1\nagent: a\n");
    let error = only_error("agent: a\nversion: 2\n");
    assert_eq!(error.message, "unsupported policy version 2");
    assert_eq!((error.line, error.column), (2, 10));
}

#[test]
fn env_placeholders_are_whitespace_tolerant_and_must_be_used() {
    let p = policy(&doc(&[
        "agent: a",
        "env:",
        "  A: \"{{placeholder:tok}}\"",
        "  B: \"  {{   placeholder :  tok   }} \"",
        "  C: plain value {{ not a placeholder }}",
        "rules:",
        "  - host: a.example",
        "    credentials: [{secret: tok}]",
    ]));
    let tok = EnvValue::Placeholder {
        secret: "tok".to_owned(),
    };
    assert_eq!(p.env[0], ("A".to_owned(), tok.clone()));
    assert_eq!(p.env[1], ("B".to_owned(), tok));
    assert_eq!(
        p.env[2].1,
        EnvValue::Plain("plain value {{ not a placeholder }}".to_owned())
    );

    let all = errors(&doc(&[
        "agent: a",                                      // 1
        "env:",                                          // 2
        "  UNUSED: \"{{ placeholder: other }}\"",        // 3
        "  EMBEDDED: \"Bearer {{ placeholder: tok }}\"", // 4
        "  NONAME: \"{{ placeholder: }}\"",              // 5
        "  BADSECRET: \"{{ placeholder: Tok }}\"",       // 6
        "  1BAD: x",                                     // 7
        "rules:",                                        // 8
        "  - host: a.example",                           // 9
        "    credentials: [{secret: tok}]",              // 10
    ]));
    let found: Vec<(usize, usize, &str)> = all
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                3,
                11,
                "`UNUSED` holds the placeholder of secret `other`, but no rule's credentials name it"
            ),
            (4, 13, "malformed placeholder reference in `EMBEDDED`"),
            (5, 11, "malformed placeholder reference in `NONAME`"),
            (6, 14, "invalid secret name `Tok`"),
            (7, 3, "invalid environment variable name `1BAD`"),
        ]
    );
}

#[test]
fn wildcard_rule_may_carry_credentials() {
    let p = policy(&doc(&[
        "agent: a",
        "env:",
        "  T: \"{{ placeholder: tok }}\"",
        "rules:",
        "  - host: \"*.example.com\"",
        "    credentials: [{secret: tok}]",
    ]));
    let a = allowed(p.decide_http("x.example.com", 443, "GET", "/"));
    assert_eq!(*a.credentials, ["tok".to_owned()]);
}

#[test]
fn duplicate_env_var_is_reported_at_the_second_one() {
    let error = only_error(&doc(&["agent: a", "env:", "  A: x", "  B: y", "  A: z"]));
    assert_eq!((error.line, error.column), (5, 3), "{error}");
    assert!(error.message.contains("`A` is set twice"), "{error}");
}

#[test]
fn credential_secret_names_are_validated() {
    let error = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    credentials:",
        "      - secret: GitHub Token",
    ]));
    assert_eq!((error.line, error.column), (5, 17), "{error}");
    assert_eq!(error.message, "invalid secret name `GitHub Token`");
}

// ---- rate limits ----

#[test]
fn rate_limits_parse_to_count_and_duration() {
    use super::compile::parse_rate_limit;
    let cases = [
        ("30/minute", 30, 60),
        ("1/second", 1, 1),
        (" 5 / hours ", 5, 3600),
        ("100/day", 100, 86_400),
    ];
    for (text, count, seconds) in cases {
        assert_eq!(
            parse_rate_limit(text),
            Ok(RateLimit {
                count,
                per: Duration::from_secs(seconds)
            }),
            "{text}"
        );
    }
    for bad in [
        "0/minute",
        "-1/minute",
        "x/minute",
        "30/fortnight",
        "30",
        "99999999999/second",
        "/minute",
    ] {
        assert!(parse_rate_limit(bad).is_err(), "{bad}");
    }
    let error = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: a.example",
        "    rate_limit: 30/minit",
    ]));
    assert_eq!((error.line, error.column), (4, 17), "{error}");
    assert!(error.message.starts_with("invalid rate_limit `30/minit`"));
    assert!(
        error
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("30/minute")
    );
}

// ---- tcp and passthrough ----

#[test]
fn tcp_cidr_entries_match_v4_v6_and_mapped_destinations() {
    let p = policy(&doc(&[
        "agent: a",
        "tcp:",
        "  - \"10.0.0.0/8:5432\"",
        "  - \"192.168.1.7:22\"",
        "  - \"[2001:db8::/32]:443\"",
        "  - \"[::ffff:172.16.0.0/108]:6379\"",
        "  - \"10.9.9.9/8:2222\"",
    ]));
    let label = |m: Option<TcpMatch>| m.map(|m| m.label);
    assert_eq!(
        label(p.tcp_match(v4(10, 2, 3, 4), 5432, &no_dns)).as_deref(),
        Some("tcp[0] 10.0.0.0/8:5432")
    );
    assert!(p.tcp_match(v4(10, 2, 3, 4), 5433, &no_dns).is_none());
    assert!(p.tcp_match(v4(11, 0, 0, 1), 5432, &no_dns).is_none());
    // v4-mapped v6 destinations are the v4 host.
    assert!(p.tcp_match(v6("::ffff:10.2.3.4"), 5432, &no_dns).is_some());
    assert!(p.tcp_match(v4(192, 168, 1, 7), 22, &no_dns).is_some());
    assert!(p.tcp_match(v4(192, 168, 1, 8), 22, &no_dns).is_none());
    assert!(p.tcp_match(v6("::ffff:192.168.1.7"), 22, &no_dns).is_some());
    assert!(p.tcp_match(v6("2001:db8:1::5"), 443, &no_dns).is_some());
    assert!(p.tcp_match(v6("2001:db9::5"), 443, &no_dns).is_none());
    // A v4-mapped CIDR in the policy is the v4 network.
    assert!(p.tcp_match(v4(172, 16, 3, 4), 6379, &no_dns).is_some());
    assert!(
        p.tcp_match(v6("::ffff:172.16.3.4"), 6379, &no_dns)
            .is_some()
    );
    assert!(p.tcp_match(v4(172, 32, 0, 1), 6379, &no_dns).is_none());
    // Host bits in a CIDR are dropped.
    assert!(p.tcp_match(v4(10, 200, 0, 1), 2222, &no_dns).is_some());
}

#[test]
fn tcp_host_entries_match_through_the_resolver() {
    let p = policy(&doc(&["agent: a", "tcp:", "  - \"GitHub.com.:22\""]));
    let asked = std::cell::RefCell::new(Vec::new());
    let resolve = |name: &str| {
        asked.borrow_mut().push(name.to_owned());
        if name == "github.com" {
            vec![v4(140, 82, 112, 3), v6("2001:db8::3")]
        } else {
            Vec::new()
        }
    };
    let hit = p.tcp_match(v4(140, 82, 112, 3), 22, &resolve);
    assert_eq!(
        hit.map(|m| m.label).as_deref(),
        Some("tcp[0] GitHub.com.:22")
    );
    assert!(
        p.tcp_match(v6("::ffff:140.82.112.3"), 22, &resolve)
            .is_some()
    );
    assert!(p.tcp_match(v6("2001:db8::3"), 22, &resolve).is_some());
    assert!(p.tcp_match(v4(140, 82, 112, 4), 22, &resolve).is_none());
    assert_eq!(asked.borrow().as_slice(), ["github.com"; 4]);
    // Another port does not even ask the resolver.
    assert!(p.tcp_match(v4(140, 82, 112, 3), 443, &resolve).is_none());
    assert_eq!(asked.borrow().len(), 4);
    assert!(p.names_host("github.com"));
    assert!(!p.names_host("api.github.com"));
}

#[test]
fn bad_tcp_entries_are_reported() {
    let bad = [
        "github.com",
        "github.com:0",
        "github.com:ssh",
        "2001:db8::1:22",
        "[2001:db8::1]",
        "[10.0.0.1]:22",
        "10.0.0.0/33:22",
        "*.github.com:22",
        "bad host:22",
    ];
    for entry in bad {
        let error = only_error(&format!("agent: a\ntcp:\n  - \"{entry}\"\n"));
        assert!(
            error.message.starts_with("invalid tcp entry"),
            "{entry}: {error}"
        );
        assert_eq!((error.line, error.column), (3, 5), "{entry}");
    }
}

/// Deny rules come first: a host one refuses outright is not tunnelled
/// by a passthrough pattern that also matches it, not relayed by a `tcp:`
/// entry that names it, and not resolved for the agent.
#[test]
fn a_host_denied_outright_is_neither_passed_through_nor_relayed() {
    let p = policy(&doc(&[
        "agent: a",
        "tcp:",
        "  - \"internal.example.com:22\"",
        "  - \"git.example.com:22\"",
        "passthrough:",
        "  - \"*.example.com\"",
        "deny:",
        "  - host: internal.example.com",
    ]));
    for denied in ["internal.example.com", "Internal.Example.com."] {
        assert_eq!(
            p.passthrough(denied, 443),
            Passthrough::Intercept,
            "{denied}"
        );
    }
    assert!(!p.names_host("internal.example.com"));
    assert_eq!(p.passthrough("other.example.com", 443), Passthrough::Tunnel);
    assert!(p.names_host("other.example.com"));
    let resolve = |name: &str| match name {
        "internal.example.com" => vec![v4(10, 0, 0, 7)],
        "git.example.com" => vec![v4(10, 0, 0, 8)],
        _ => Vec::new(),
    };
    assert!(p.tcp_match(v4(10, 0, 0, 7), 22, &resolve).is_none());
    assert!(p.tcp_match(v4(10, 0, 0, 8), 22, &resolve).is_some());
}

#[test]
fn passthrough_is_decided_on_sni_patterns() {
    let p = policy(&doc(&[
        "agent: a",
        "passthrough:",
        "  - pinned.example.com",
        "  - \"*.pinned.example.net\"",
    ]));
    let tunnelled = |sni: &str| p.passthrough(sni, 443) == Passthrough::Tunnel;
    assert!(tunnelled("pinned.example.com"));
    assert!(tunnelled("PINNED.example.com."));
    assert!(tunnelled("a.pinned.example.net"));
    assert!(!tunnelled("pinned.example.net"));
    assert!(!tunnelled("other.example.com"));
    assert!(!tunnelled(""));
    assert!(!tunnelled("10.0.0.1"));
    assert!(p.names_host("x.pinned.example.net"));
    // Passthrough is not HTTP permission.
    assert_eq!(
        reason(p.decide_http("pinned.example.com", 443, "GET", "/")),
        DenyReason::NoRuleForHost
    );
    for bad in [
        "10.0.0.1",
        "[::1]:443",
        "*",
        "pinned.example.com:0",
        "a.com:x",
    ] {
        let error = only_error(&format!("agent: a\npassthrough: [\"{bad}\"]\n"));
        assert!(
            error.message.starts_with("invalid passthrough entry"),
            "{bad}: {error}"
        );
    }
}

/// A tunnel carries bytes Airlock never reads, so it goes only to the port
/// an entry names: 443 unless the entry says otherwise. The name on
/// another port is refused unless a rule intercepts it there.
#[test]
fn passthrough_tunnels_only_the_port_its_entry_names() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: both.example.com:8080",
        "passthrough:",
        "  - pinned.example.com",
        "  - \"mqtt.example.com:8883\"",
        "  - both.example.com",
        "  - \"*.example.net:8443\"",
        "  - \"shut.example.org:8443\"",
        "deny:",
        "  - host: \"shut.example.org:8443\"",
        "  - host: \"shut.example.org:9443\"",
        "    methods: [DELETE]",
    ]));
    use Passthrough::{Intercept, OtherPortsOnly, Tunnel};
    for (sni, port, expected) in [
        ("pinned.example.com", 443, Tunnel),
        ("pinned.example.com", 22, OtherPortsOnly),
        ("mqtt.example.com", 8883, Tunnel),
        ("mqtt.example.com", 443, OtherPortsOnly),
        ("a.example.net", 8443, Tunnel),
        ("a.example.net", 443, OtherPortsOnly),
        // A rule for the name on another port intercepts it there.
        ("both.example.com", 443, Tunnel),
        ("both.example.com", 8080, Intercept),
        // A deny rule that refuses the port outright comes first.
        ("shut.example.org", 8443, Intercept),
    ] {
        assert_eq!(p.passthrough(sni, port), expected, "{sni}:{port}");
    }
    assert!(p.names_host("mqtt.example.com"));
    // A deny rule that names methods does not refuse a tunnel, which has
    // none.
    let q = policy(&doc(&[
        "agent: a",
        "passthrough:",
        "  - \"shut.example.org:9443\"",
        "deny:",
        "  - host: \"shut.example.org:9443\"",
        "    methods: [DELETE]",
    ]));
    assert_eq!(q.passthrough("shut.example.org", 9443), Passthrough::Tunnel);
}

#[test]
fn names_host_ignores_addresses_and_deny_only_hosts() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: 10.0.0.1",
        "deny:",
        "  - host: only-denied.example",
    ]));
    assert!(!p.names_host("10.0.0.1"));
    assert!(!p.names_host("only-denied.example"));
    assert!(!p.names_host("not a name"));
}

// ---- collection of all problems ----

#[test]
fn all_problems_are_collected_in_source_order() {
    let text = doc(&[
        "version: 3",                       // 1
        "agent: Bad_Name",                  // 2
        "env:",                             // 3
        "  K: \"{{ placeholder: nope }}\"", // 4
        "rules:",                           // 5
        "  - host: \"*\"",                  // 6
        "    methods: [FETCH!]",            // 7
        "    paths: [nope]",                // 8
        "    rate_limit: fast",             // 9
        "tcp: [\"x\"]",                     // 10
    ]);
    let all = errors(&text);
    let lines: Vec<usize> = all.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 6, 7, 8, 9, 10], "{all:#?}");
    assert!(all.iter().all(|e| e.path == Path::new("test.yaml")));
    let shown = PolicyErrors(all).to_string();
    assert_eq!(shown.lines().count(), 8);
    assert!(
        shown.starts_with("test.yaml:1:10: unsupported policy version 3"),
        "{shown}"
    );
}

// ---- load_dir ----

#[test]
fn load_dir_loads_sorted_yaml_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("b.yml", "agent: bee\n");
    write("a.yaml", "agent: ay\n");
    write("c.YAML", "agent: cee\n");
    write("broken.yaml", "agent: x\nrules:\n  - hots: a.example\n");
    write("notes.txt", "agent: ignored\n");
    write(".hidden.yaml", "agent: hidden\n");
    write("z-dup.yaml", "# again\nagent: ay\n");
    std::fs::create_dir(dir.path().join("dir.yaml")).unwrap();

    let report = load_dir(dir.path());
    let agents: Vec<&str> = report.policies.iter().map(|p| p.agent.as_str()).collect();
    assert_eq!(agents, vec!["ay", "bee", "cee"]);
    assert_eq!(report.policies[0].source, dir.path().join("a.yaml"));
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);

    let broken = &report.errors[0].0[0];
    assert_eq!(broken.path, dir.path().join("broken.yaml"));
    assert_eq!((broken.line, broken.column), (3, 5));
    assert_eq!(broken.message, "unknown key `hots`");

    let dup = &report.errors[1].0[0];
    assert_eq!(dup.path, dir.path().join("z-dup.yaml"));
    assert_eq!((dup.line, dup.column), (2, 8));
    assert!(
        dup.message.contains("agent `ay` is already defined by"),
        "{dup}"
    );
    assert!(dup.message.contains("a.yaml"), "{dup}");
}

#[test]
fn load_dir_on_missing_dir_is_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let report = load_dir(&missing);
    assert!(report.policies.is_empty());
    assert_eq!(report.errors.len(), 1);
    let error = &report.errors[0].0[0];
    assert_eq!(error.path, missing);
    assert_eq!(error.line, 0);
    assert!(
        error.to_string().starts_with(&format!(
            "{}: cannot read policy directory",
            missing.display()
        )),
        "{error}"
    );
}

#[test]
fn load_dir_reads_the_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let report = load_dir(&dir);
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    let agents: Vec<&str> = report.policies.iter().map(|p| p.agent.as_str()).collect();
    assert_eq!(agents, vec!["llm-client", "package-fetcher", "pr-bot"]);
}

#[test]
fn repeated_keys_are_reported_at_the_repetition() {
    let all = errors(&doc(&[
        "agent: a",            // 1
        "rules:",              // 2
        "  - host: a.example", // 3
        "    methods: [GET]",  // 4
        "    host: b.example", // 5
        "agent: b",            // 6
    ]));
    let found: Vec<(usize, usize, &str)> = all
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (5, 5, "key `host` is given twice"),
            (6, 1, "key `agent` is given twice"),
        ]
    );
}

#[test]
fn a_problem_reached_through_an_alias_is_reported_once() {
    let all = errors(&doc(&[
        "agent: a",
        "rules:",
        "  - &r",
        "    host: a.example",
        "    methods: [get]",
        "  - *r",
    ]));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!((all[0].line, all[0].column), (5, 15));
}

#[test]
fn errors_point_into_flow_and_folded_styles() {
    let all = errors(&doc(&[
        "agent: a",
        "rules:",
        "  - {host: a.example, methods: [GET, \"PO ST\"], paths: [x]}",
    ]));
    let at: Vec<(usize, usize)> = all.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, vec![(3, 38), (3, 56)]);
    let folded = only_error(&doc(&[
        "agent: a",
        "rules:",
        "  - host: >-",
        "      bad",
        "      host",
    ]));
    assert_eq!((folded.line, folded.column), (3, 11));
    assert_eq!(
        folded.message,
        "invalid host `bad host`: only a-z, 0-9, '-' and '_' are allowed (use the xn-- form for IDNs)"
    );
}

#[test]
fn locate_finds_keys_values_and_repeated_keys() {
    use super::locate::{NodePath, locate};
    let text = "a: 1\nb:\n  - x\n  - {c: 2, c: 3}\n";
    let root = NodePath::root();
    assert_eq!(locate(text, &root.key("a")), (1, 4));
    assert_eq!(locate(text, &root.key("a").the_key()), (1, 1));
    assert_eq!(locate(text, &root.key("b").index(1)), (4, 5));
    assert_eq!(locate(text, &root.key("b").index(1).key("c")), (4, 9));
    // Missing nodes fall back to the nearest ancestor that exists.
    assert_eq!(locate(text, &root.key("b").index(7)), (3, 3));
    assert_eq!(locate(text, &root.key("zzz")), (1, 1));
}

#[test]
fn a_host_that_any_rule_of_the_policy_binds_secrets_to_is_bound_on_every_path() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: api.example.com",
        "    paths: [\"/v1/**\"]",
        "    credentials: [{secret: key}]",
        "  - host: \"*.example.com\"",
        "    paths: [\"/public/**\"]",
        "  - host: \"*.corp.example\"",
        "    credentials: [{secret: key}]",
        "  - host: api.example.com",
        "    port: 8443",
        "  - host: docs.example.org",
    ]));
    let holds = |host: &str, port: u16, path: &str| {
        allowed(p.decide_http(host, port, "GET", path)).binds_secrets_to_host
    };
    assert!(holds("api.example.com", 443, "/v1/chat"));
    // Another rule, without credentials, lets this path through; the host
    // was still sent the secret on /v1.
    assert!(holds("api.example.com", 443, "/public/x"));
    assert!(holds("git.corp.example", 443, "/"));
    assert!(!holds("www.example.com", 443, "/public/x"));
    assert!(!holds("api.example.com", 8443, "/"));
    assert!(!holds("docs.example.org", 443, "/"));
}

#[test]
fn a_claimed_methods_rule_narrows_what_the_request_may_do() {
    let p = policy(&doc(&[
        "agent: a",
        "rules:",
        "  - host: api.example",
        "    methods: [GET, POST]",
        "    credentials: [{secret: read-key}, {secret: write-key}]",
        "  - host: api.example",
        "    methods: [DELETE]",
        "    credentials: [{secret: write-key}]",
        "    approval: true",
        "    rate_limit: 5/minute",
    ]));
    let mut post = allowed(p.decide_http("api.example", 443, "POST", "/x"));
    assert!(!post.approval);
    let delete = allowed(p.decide_http("api.example", 443, "DELETE", "/x"));
    post.narrow_to(&delete);
    // A human must approve it, and only the secret both rules bind goes.
    assert!(post.approval);
    assert_eq!(&*post.credentials, ["write-key".to_owned()].as_slice());
    // It stays the POST rule's request, whose rate limit it keeps; the
    // DELETE rule's is charged on its own.
    assert_eq!(
        post.rule_label,
        allowed(p.decide_http("api.example", 443, "GET", "/x")).rule_label
    );
    assert_eq!(post.rate_limit, None);

    // A claim under a rule that asks for less takes nothing away.
    let mut delete_claiming_get = delete.clone();
    delete_claiming_get.narrow_to(&allowed(p.decide_http("api.example", 443, "GET", "/x")));
    assert_eq!(delete_claiming_get, delete);
}
