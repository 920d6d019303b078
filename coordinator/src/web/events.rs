//! Live updates for the pages: server-sent events fed by the coordinator's watch
//! machinery ([`crate::watch`]), counted against the same per-token watch limit as the
//! gRPC watch streams.
//!
//! - `GET /api/v1/sweeps/{id}/events`: `sweep` events, the sweep (as
//!   `GET /api/v1/sweeps/{id}` without its file) now and after each change of it; an
//!   `end` event once it has ended.
//! - `GET /api/v1/runs/{id}/events`: `run` events as `WatchRun` sends them: first the
//!   current attempt's card series (`"replace": true`), then only what is new (points,
//!   log lines, status); an `end` event once the run has ended.
//!
//! A stream ends with the `end` event (a page closes its `EventSource` then, or the
//! browser would reconnect) or an `error` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use ladder_proto::v1 as pb;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::json as to_json;
use super::session::authorize;
use super::{ApiError, Web};
use crate::auth::Action;
use crate::service::watch_slot;

/// How long a quiet stream waits before it sends the sweep again (which also tells a
/// proxy the connection is alive).
const SWEEP_REFRESH: Duration = Duration::from_secs(15);

/// One event in the `text/event-stream` format.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_event(error: impl Into<ApiError>) -> Bytes {
    let error = error.into();
    event(
        "error",
        &json!({"code": error.code, "message": error.message}),
    )
}

/// `GET /api/v1/sweeps/{id}/events`.
pub async fn sweep_events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = authorize(&web, &headers, Action::Read)?;
    if id.is_empty() || id.len() > ladder_limits::MAX_ID_BYTES {
        return Err(ApiError::invalid("sweep_id", "must be a non-empty id"));
    }
    let slot = watch_slot(&web.shared, principal.as_ref())?;
    let mut changes = web.shared.changes.subscribe();
    let sweep_id = id.clone();
    let first = web.shared.read(move |q| q.sweep(&sweep_id)).await?;
    let (tx, rx) = mpsc::channel(4);
    let shared = web.shared.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut snapshot = first;
        loop {
            let ended = snapshot.ended();
            if tx
                .send(event("sweep", &to_json::sweep(&snapshot, false)))
                .await
                .is_err()
            {
                return;
            }
            if ended {
                let _ = tx.send(event("end", &json!({}))).await;
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                changed = crate::watch::wait_for_change(&mut changes, &id, Some(SWEEP_REFRESH)) => {
                    if !changed {
                        return;
                    }
                }
            }
            // Let a burst of changes settle, as `WatchSweep` does.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sweep_id = id.clone();
            snapshot = match shared.read(move |q| q.sweep(&sweep_id)).await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    let _ = tx.send(error_event(error)).await;
                    return;
                }
            };
        }
    });
    Ok(event_stream(rx))
}

/// A `WatchRun` message as a `run` event; `replace`: its points replace what the page
/// drew of the attempt (the first message, or a new attempt).
fn run_event(message: pb::WatchRunResponse, replace: bool) -> Bytes {
    // Deltas shared between watchers carry their points encoded once; decoding the
    // message as a client would gives them back as points.
    let message = if message.encoded_points.is_empty() {
        message
    } else {
        pb::WatchRunResponse::decode(message.encode_to_vec().as_slice()).unwrap_or(message)
    };
    let points: Vec<Value> = message
        .points
        .iter()
        .map(|point| {
            let values: serde_json::Map<String, Value> = point
                .values
                .iter()
                .map(|(name, value)| {
                    let number =
                        serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number);
                    (name.clone(), number)
                })
                .collect();
            json!({"step": point.step, "time_ms": point.time_ms, "values": values})
        })
        .collect();
    let lines: Vec<Value> = message
        .lines
        .iter()
        .map(|line| json!({"time_ms": line.time_ms, "stream": line.stream, "text": line.text}))
        .collect();
    let status = pb::RunStatus::try_from(message.status)
        .ok()
        .and_then(|status| crate::RunStatusFilter::try_from(status).ok())
        .map(|status| status.0.as_str())
        .unwrap_or("");
    event(
        "run",
        &json!({
            "attempt": message.attempt,
            "replace": replace,
            "downsampled": message.downsampled,
            "status": status,
            "points": points,
            "lines": lines,
        }),
    )
}

/// `GET /api/v1/runs/{id}/events`.
pub async fn run_events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = authorize(&web, &headers, Action::Read)?;
    if id.is_empty() || id.len() > ladder_limits::MAX_ID_BYTES {
        return Err(ApiError::invalid("run_id", "must be a non-empty id"));
    }
    // Unknown runs are refused here rather than as an event.
    let run_id = id.clone();
    web.shared.read(move |q| q.run_record(&run_id)).await?;
    let slot = watch_slot(&web.shared, principal.as_ref())?;
    let (watch_tx, mut watch_rx) = mpsc::channel(ladder_limits::WATCH_STREAM_MESSAGES);
    crate::watch::spawn_watch(web.shared.clone(), id, false, watch_tx, slot);
    let (tx, rx) = mpsc::channel(ladder_limits::WATCH_STREAM_MESSAGES);
    tokio::spawn(async move {
        let mut attempt = None;
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return,
                received = watch_rx.recv() => received,
            };
            let bytes = match received {
                Some(Ok(message)) => {
                    let replace = attempt != Some(message.attempt);
                    attempt = Some(message.attempt);
                    run_event(message, replace)
                }
                Some(Err(status)) => {
                    let _ = tx.send(error_event(status)).await;
                    return;
                }
                None => {
                    let _ = tx.send(event("end", &json!({}))).await;
                    return;
                }
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    Ok(event_stream(rx))
}
