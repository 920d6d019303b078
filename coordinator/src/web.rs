//! The web UI and its JSON API, served on the gRPC listener.
//!
//! `Coordinator::serve` accepts HTTP/1.1 beside HTTP/2 and hands every request that is
//! not for a gRPC service to [`router`]: the pages ([`assets`]: one HTML shell and its
//! script and style sheet, embedded in the binary), the JSON API under `/api/v1`
//! ([`api`]: the same reads as the gRPC adapters, the same checks and limits, answered
//! as JSON by [`mod@json`]), its live feeds as server-sent events ([`events`], fed by
//! [`crate::watch`]) and the sign-in ([`session`]).
//!
//! Access follows gRPC: with tokens (an auth file, or the admin token of a coordinator
//! started without `--auth`) every request needs one, as `Authorization: Bearer` or as
//! the HttpOnly cookie the sign-in sets; with `--no-auth` everything is open. A request
//! that changes something must carry a header a cross-site form cannot send (see
//! [`session::check_csrf`]).

pub mod api;
pub mod assets;
pub mod events;
pub mod json;
pub mod params;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::auth::AuthError;
use crate::error::CoordinatorError;
use crate::service::ServiceHandle;

/// What every handler of the web UI holds.
pub struct Web {
    pub(crate) shared: Arc<ServiceHandle>,
    /// Served over TLS: the session cookie is `Secure`.
    pub(crate) tls: bool,
}

/// The router of the pages, the JSON API and the sign-in; requests for gRPC services
/// are routed beside it by `tonic::service::Routes`, and a gRPC request for a service
/// that does not exist still gets gRPC's UNIMPLEMENTED.
pub fn router(shared: Arc<ServiceHandle>, tls: bool) -> Router {
    let web = Arc::new(Web { shared, tls });
    Router::new()
        .route("/", get(assets::page))
        .route("/sweeps", get(assets::page))
        .route("/sweeps/{id}", get(assets::page))
        .route("/runs/{id}", get(assets::page))
        .route("/agents", get(assets::page))
        .route("/assets/{name}", get(assets::asset))
        .route(
            "/signin",
            get(session::signin_get).post(session::signin_post),
        )
        .route("/signout", post(session::signout))
        .route("/api/v1/session", get(api::session))
        .route("/api/v1/sweeps", get(api::sweeps))
        .route("/api/v1/sweeps/{id}", get(api::sweep))
        .route("/api/v1/sweeps/{id}/events", get(events::sweep_events))
        .route("/api/v1/sweeps/{id}/{action}", post(api::sweep_action))
        .route("/api/v1/runs", get(api::runs))
        .route("/api/v1/runs/{id}", get(api::run))
        .route("/api/v1/runs/{id}/points", get(api::points))
        .route("/api/v1/runs/{id}/events", get(events::run_events))
        .route("/api/v1/leaderboard", get(api::leaderboard))
        .route("/api/v1/agents", get(api::agents))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            guard_host,
        ))
        .with_state(web)
}

/// Without access control, every request must be addressed to a loopback name (see
/// [`session::check_loopback_host`]).
async fn guard_host(
    axum::extract::State(web): axum::extract::State<Arc<Web>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if web.shared.auth.is_none() {
        if let Err(error) = session::check_loopback_host(request.headers()) {
            return error.into_response();
        }
    }
    next.run(request).await
}

/// Unknown paths: gRPC's UNIMPLEMENTED for gRPC requests (as tonic answers without a
/// web router), a JSON error under `/api/`, a plain 404 elsewhere.
async fn not_found(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    let path = request.uri().path();
    if path.starts_with("/api/") {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API endpoint {path} (see docs/reference/http-api.md)"),
        )
        .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("no page at {path}\n"),
    )
        .into_response()
}

/// An API answer that is not a success: an HTTP status and a JSON body
/// `{"error": {"code": ..., "message": ..., "field": ...}}`, `field` naming the request
/// parameter at fault when there is one.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A bad value of the request parameter `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        let message = message.to_string();
        // Messages of the shared checks name the field already.
        let message = if message.starts_with(field) {
            message
        } else {
            format!("{field}: {message}")
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message,
            field: Some(field.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "field": self.field,
            }
        });
        let mut response = (self.status, json_body(&body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ladder\""),
            );
        }
        response
    }
}

fn json_body(value: &serde_json::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// A JSON answer with status 200.
pub fn json_response(value: &serde_json::Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json_body(value),
    )
        .into_response()
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        let (status, code) = match error {
            CoordinatorError::InvalidSweep(_) | CoordinatorError::InvalidArgument(_) => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            CoordinatorError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            CoordinatorError::FailedPrecondition(_) => {
                (StatusCode::CONFLICT, "failed_precondition")
            }
            CoordinatorError::PermissionDenied(_) | CoordinatorError::AgentNameRefused(_) => {
                (StatusCode::FORBIDDEN, "permission_denied")
            }
            CoordinatorError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::MissingToken | AuthError::MalformedToken | AuthError::UnknownToken => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            }
            AuthError::Denied { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
            }
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let (http, code) = match status.code() {
            tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            tonic::Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            tonic::Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            tonic::Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(http, code, status.message().to_string())
    }
}
