//! Who a web request comes from, and the sign-in that lets a browser prove it.
//!
//! A request carries the same token as a gRPC call: `Authorization: Bearer TOKEN` (curl,
//! notebooks), or the `ladder_token` cookie that `/signin` sets once it has checked the
//! token. The cookie is `HttpOnly` (page scripts never see it), `SameSite=Strict` (a
//! request started by another site carries none) and `Secure` when the coordinator
//! serves TLS. Over plain HTTP the cookie, like a gRPC token, crosses the network in
//! clear: serve TLS beyond a trusted network.
//!
//! A request that changes something ([`check_csrf`]) must carry `X-Ladder-CSRF` or
//! `Authorization`: a cross-site form cannot set a header, and a cross-site script
//! that sets one needs a CORS preflight the coordinator never grants; an `Origin` header,
//! when sent, must be this coordinator's own.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::metadata::{MetadataMap, MetadataValue};

use super::params::{self, Params};
use super::{ApiError, Web};
use crate::auth::{Action, AuthError, Principal};

/// The name of the session cookie.
pub const COOKIE: &str = "ladder_token";
/// The header a state-changing request sent with the cookie must carry.
pub const CSRF_HEADER: &str = "x-ladder-csrf";
/// How long a browser keeps the session cookie.
const COOKIE_MAX_AGE_S: u64 = 30 * 24 * 3600;

/// The token a request carries: its bearer token, else its session cookie.
fn presented_token(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::MalformedToken)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MalformedToken);
        }
        return Ok(Some(token.trim().to_string()));
    }
    Ok(cookie(headers, COOKIE).and_then(|raw| params::decode(&raw).ok()))
}

/// The value of the cookie `name`, as sent.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=') {
                if key == name {
                    return Some(value.to_string());
                }
            }
        }
    }
    None
}

/// Who `token` is, by the coordinator's access rules.
fn principal_of(web: &Web, token: &str) -> Result<Option<Principal>, AuthError> {
    let Some(auth) = &web.shared.auth else {
        return Ok(None);
    };
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    let value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| AuthError::MalformedToken)?;
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", value);
    auth.authenticate(&metadata).map(Some)
}

/// Checks that the request may do `action` and returns who sent it; `None` (and no
/// check) when the coordinator runs without access control, as gRPC does.
pub fn authorize(
    web: &Web,
    headers: &HeaderMap,
    action: Action<'_>,
) -> Result<Option<Principal>, ApiError> {
    let Some(auth) = &web.shared.auth else {
        return Ok(None);
    };
    let token = presented_token(headers)?.ok_or(AuthError::MissingToken)?;
    let principal = principal_of(web, &token)?.ok_or(AuthError::MissingToken)?;
    auth.authorize(&principal, action).inspect_err(|error| {
        tracing::info!(%error, "web request refused");
    })?;
    Ok(Some(principal))
}

/// Refuses a state-changing request a cross-site page could have sent: it needs the
/// [`CSRF_HEADER`] or an `Authorization` header, and its `Origin`, when sent, must be
/// this coordinator (same scheme, host and port as the request's `Host`).
pub fn check_csrf(web: &Web, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let scheme = if web.tls { "https" } else { "http" };
        let expected = format!("{scheme}://{host}");
        if host.is_empty() || origin.as_bytes() != expected.as_bytes() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                format!(
                    "this request comes from another site (Origin {:?}, expected {expected:?}); \
                     it was refused",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    if !headers.contains_key(CSRF_HEADER) && !headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_header_missing",
            format!(
                "a request that changes something needs the header `{CSRF_HEADER}: 1` (sent \
                 by the web pages) or `Authorization: Bearer TOKEN`"
            ),
        ));
    }
    Ok(())
}

/// Whether a page request may be served: without access control always; with it, when
/// the request carries a valid token.
pub fn signed_in(web: &Web, headers: &HeaderMap) -> bool {
    if web.shared.auth.is_none() {
        return true;
    }
    matches!(presented_token(headers), Ok(Some(token)) if matches!(principal_of(web, &token), Ok(Some(_))))
}

/// The path a sign-in returns to: a path of this site, `/` otherwise.
fn local_path(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control());
    if local {
        next
    } else {
        "/"
    }
}

fn set_cookie(web: &Web, value: &str, max_age: u64) -> HeaderValue {
    let secure = if web.tls { "; Secure" } else { "" };
    let text =
        format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Checks `token`, and answers with the session cookie and a redirect to `next`.
fn sign_in(web: &Web, token: &str, next: &str) -> Response {
    match principal_of(web, token) {
        Ok(principal) => {
            if let Some(principal) = &principal {
                tracing::info!(%principal, "signed in to the web pages");
            }
            let mut response = redirect(local_path(next));
            if web.shared.auth.is_some() {
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    set_cookie(web, &params::encode(token), COOKIE_MAX_AGE_S),
                );
            }
            response
        }
        Err(error) => signin_page(
            StatusCode::UNAUTHORIZED,
            next,
            &format!("Sign-in refused: {error}."),
        ),
    }
}

/// A 303 to `location`, which the browser then shows without the token in its address.
fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sign-in form, with `message` above it.
fn signin_page(status: StatusCode, next: &str, message: &str) -> Response {
    let page = super::assets::SIGNIN_HTML
        .replace("{{message}}", &html_escape(message))
        .replace("{{next}}", &html_escape(local_path(next)));
    let mut response = (status, page).into_response();
    super::assets::page_headers(response.headers_mut());
    response
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `GET /signin?token=TOKEN&next=PATH`: the link `ladder run` prints; without a token,
/// the sign-in form.
pub async fn signin_get(State(web): State<Arc<Web>>, RawQuery(query): RawQuery) -> Response {
    let parsed = match Params::parse(query.as_deref(), &["token", "next"], &[]) {
        Ok(parsed) => parsed,
        Err(error) => return signin_page(StatusCode::BAD_REQUEST, "/", &error.message),
    };
    let next = parsed.text("next");
    if web.shared.auth.is_none() {
        return redirect(local_path(next));
    }
    let token = parsed.text("token");
    if token.is_empty() {
        return signin_page(StatusCode::OK, next, "Paste your ladder token to sign in.");
    }
    sign_in(&web, token, next)
}

/// `POST /signin` with the form's `token` and `next`.
pub async fn signin_post(State(web): State<Arc<Web>>, request: Request) -> Response {
    if let Err(error) = check_origin_only(&web, request.headers()) {
        return signin_page(StatusCode::FORBIDDEN, "/", &error.message);
    }
    let body = match axum::body::to_bytes(request.into_body(), ladder_limits::MAX_SIGNIN_FORM_BYTES)
        .await
    {
        Ok(body) => body,
        Err(_) => {
            return signin_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "/",
                &format!(
                    "The sign-in form is at most {} bytes.",
                    ladder_limits::MAX_SIGNIN_FORM_BYTES
                ),
            )
        }
    };
    let text = String::from_utf8_lossy(&body);
    let parsed = match Params::parse(Some(&text), &["token", "next"], &[]) {
        Ok(parsed) => parsed,
        Err(error) => return signin_page(StatusCode::BAD_REQUEST, "/", &error.message),
    };
    sign_in(&web, parsed.text("token"), parsed.text("next"))
}

/// The `Origin` check of [`check_csrf`] alone, for the sign-in form (which has no
/// session to protect yet, but must not be posted by another site).
fn check_origin_only(web: &Web, headers: &HeaderMap) -> Result<(), ApiError> {
    let mut with_header = headers.clone();
    with_header.insert(CSRF_HEADER, HeaderValue::from_static("1"));
    check_csrf(web, &with_header)
}

/// `POST /signout`: forgets the session cookie.
pub async fn signout(State(web): State<Arc<Web>>, method: Method, headers: HeaderMap) -> Response {
    debug_assert_eq!(method, Method::POST);
    if let Err(error) = check_csrf(&web, &headers) {
        return error.into_response();
    }
    let mut response = redirect("/signin");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&web, "", 0));
    response
}

/// Refuses a request to a coordinator without access control whose `Host` is not a
/// loopback name: such a coordinator listens on loopback only, and a page of another
/// site whose name was made to resolve to 127.0.0.1 (DNS rebinding) would otherwise be
/// "same-origin" with it, headers and all, and could read runs and cancel sweeps.
pub fn check_loopback_host(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or("", |(name, _)| name)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        format!(
            "this coordinator runs without access control and answers only requests addressed \
             to localhost, 127.0.0.1 or [::1], not Host {host:?}"
        ),
    ))
}

/// The redirect a page request gets when it is not signed in.
pub fn to_signin(path_and_query: &str) -> Response {
    redirect(&format!("/signin?next={}", params::encode(path_and_query)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_returns_only_to_a_path_of_this_site() {
        assert_eq!(local_path("/runs/r1"), "/runs/r1");
        assert_eq!(local_path("//evil.example/x"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path("/\\evil"), "/");
        assert_eq!(local_path(""), "/");
    }

    #[test]
    fn without_access_control_only_loopback_hosts_are_answered() {
        let with_host = |host: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            headers
        };
        for good in [
            "127.0.0.1:50051",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:50051",
            "127.0.0.2",
        ] {
            assert!(check_loopback_host(&with_host(good)).is_ok(), "{good}");
        }
        for bad in [
            "evil.example:50051",
            "127.0.0.1.evil.example",
            "localhost.evil.example:1",
            "10.0.0.1:50051",
            "[::2]:1",
            "",
        ] {
            let error = check_loopback_host(&with_host(bad)).unwrap_err();
            assert_eq!(error.status, StatusCode::FORBIDDEN, "{bad}");
            assert!(error.message.contains("without access control"), "{bad}");
        }
        assert!(check_loopback_host(&HeaderMap::new()).is_err());
    }

    #[test]
    fn the_bearer_header_wins_over_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ladder_token=c%41"),
        );
        assert_eq!(presented_token(&headers).unwrap().as_deref(), Some("cA"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(presented_token(&headers).unwrap().as_deref(), Some("b"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic b"));
        assert_eq!(presented_token(&headers), Err(AuthError::MalformedToken));
    }
}
