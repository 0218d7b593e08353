//! The methods a request claims besides the one on its request line. Web
//! frameworks take the method from override headers (Rails, Google's
//! APIs, ASP.NET, Express's method-override) or from a `_method` query
//! parameter (Laravel, Symfony): a POST that says DELETE is a DELETE to
//! them, and must pass the policy as one too.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::body_claims::{NameIs, UNREADABLE, as_claim, names_method};

// A static, not a const: a const array is built anew at every use.
static OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Each method the request claims: every item of every override header
/// (a list is split at its commas: Express takes its first item, other
/// frameworks may take another), and every `_method` query parameter,
/// decoded. Names are read as PHP reads them (Laravel, Symfony): a query
/// name ` _method`, `.method` or `_method[]` is `$_GET['_method']`, and a
/// header `X_HTTP_METHOD_OVERRIDE` is `X-HTTP-Method-Override` in
/// `$_SERVER`. A value that is not text, or longer than any method a rule
/// names, is claimed as [`UNREADABLE`], as in a body: the claim goes into
/// the audit record and before a human, and there it must be short.
pub fn claimed<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<Cow<'a, str>> {
    let mut claimed = Vec::new();
    let mut claim_items = |value: &'a HeaderValue| match value.to_str() {
        Ok(text) => claimed.extend(
            text.split(',')
                .map(str::trim)
                .filter(|method| !method.is_empty())
                .map(|method| readable(Cow::Borrowed(method))),
        ),
        Err(_) => claimed.push(Cow::Borrowed(UNREADABLE)),
    };
    for name in &OVERRIDE_HEADERS {
        headers.get_all(name).iter().for_each(&mut claim_items);
    }
    for (name, value) in headers {
        if name.as_str().contains('_') && is_override_spelled_with_underscores(name.as_str()) {
            claim_items(value);
        }
    }
    if let Some(query) = query {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match names_method(name.as_bytes()) {
                Some(NameIs::Method) => {
                    claimed.push(readable(Cow::Owned(value.trim().to_owned())));
                }
                Some(NameIs::MethodArray) => claimed.push(Cow::Borrowed(UNREADABLE)),
                None => {}
            }
        }
    }
    claimed
}

/// CGI and FastCGI hand a header to the application as `HTTP_` and its
/// name with `-` made `_`, so one spelled with `_` lands where the
/// override header would. (nginx, Apache, Puma and Gunicorn drop such
/// headers; not every front end does.)
fn is_override_spelled_with_underscores(name: &str) -> bool {
    OVERRIDE_HEADERS.iter().any(|known| {
        let known = known.as_str().as_bytes();
        known.len() == name.len()
            && known
                .iter()
                .zip(name.as_bytes())
                .all(|(k, n)| k == n || (*k == b'-' && *n == b'_'))
    })
}

/// The method as claimed, or [`UNREADABLE`] where it could be none
/// ([`as_claim`]).
fn readable(method: Cow<'_, str>) -> Cow<'_, str> {
    // UNREADABLE is no token, so only a method that could be none gets it.
    if as_claim(&method) == UNREADABLE {
        Cow::Borrowed(UNREADABLE)
    } else {
        method
    }
}

#[cfg(test)]
mod tests {
    use super::{UNREADABLE, claimed};
    use crate::proxy::headers::map_of;

    #[test]
    fn a_request_that_claims_nothing_claims_nothing() {
        let headers = map_of(&[("accept", "*/*")]);
        assert!(claimed(&headers, None).is_empty());
        assert!(claimed(&headers, Some("q=delete&method=DELETE")).is_empty());
    }

    #[test]
    fn every_item_of_every_override_header_is_claimed() {
        let headers = map_of(&[
            ("x-http-method-override", "DELETE, GET"),
            ("x-http-method", "PUT"),
            ("x-method-override", " patch ,"),
        ]);
        assert_eq!(claimed(&headers, None), ["DELETE", "GET", "PUT", "patch"]);
    }

    #[test]
    fn a_claim_too_long_or_not_text_is_unreadable() {
        let long = "D".repeat(65);
        let mut headers = map_of(&[("x-http-method-override", &long)]);
        headers.append(
            "x-http-method",
            http::HeaderValue::from_bytes(b"DEL\xffETE").expect("value"),
        );
        let query = format!("_method={long}&_method={}", "P".repeat(64));
        assert_eq!(
            claimed(&headers, Some(&query)),
            [UNREADABLE, UNREADABLE, UNREADABLE, &"P".repeat(64)]
        );
    }

    /// A claim is shown to the human who approves the request: control
    /// bytes there could overwrite the real method and path on a terminal.
    #[test]
    fn a_claim_that_is_no_method_token_is_unreadable() {
        let none = map_of(&[]);
        assert_eq!(
            claimed(&none, Some("_method=%08%08%08%08GET%20https://x/%1B%5B8m")),
            [UNREADABLE]
        );
        assert_eq!(claimed(&none, Some("_method=DEL%0DETE")), [UNREADABLE]);
        let headers = map_of(&[("x-http-method-override", "GET /safe, PATCH")]);
        assert_eq!(claimed(&headers, None), [UNREADABLE, "PATCH"]);
    }

    #[test]
    fn a_method_query_parameter_is_claimed_decoded() {
        let none = map_of(&[]);
        assert_eq!(claimed(&none, Some("_method=DELETE")), ["DELETE"]);
        assert_eq!(
            claimed(&none, Some("a=1&%5Fmethod=DEL%45TE&_method=+put+")),
            ["DELETE", "put"]
        );
    }

    /// PHP turns ` ` and `.` in a name into `_` and drops leading spaces,
    /// so each of these is `$_GET['_method']` to Laravel and Symfony.
    #[test]
    fn a_query_name_php_reads_as_method_is_claimed() {
        let none = map_of(&[]);
        assert_eq!(
            claimed(
                &none,
                Some(".method=DELETE&+_method=PUT&%20%20_method=PATCH")
            ),
            ["DELETE", "PUT", "PATCH"]
        );
        assert_eq!(claimed(&none, Some("_method%00x=DELETE")), ["DELETE"]);
        assert_eq!(claimed(&none, Some("_method[]=DELETE")), [UNREADABLE]);
        assert!(claimed(&none, Some("x_method=DELETE&_methods=PUT&method=GET")).is_empty());
    }

    #[test]
    fn an_override_header_spelled_with_underscores_is_claimed() {
        let headers = map_of(&[
            ("x_http_method_override", "DELETE"),
            ("x-http_method", "PUT"),
            ("x_method-override", "PATCH"),
            ("x_other_header", "GET"),
        ]);
        assert_eq!(claimed(&headers, None), ["DELETE", "PUT", "PATCH"]);
    }
}
