//! The JSON API (`/api/v1/...`): each endpoint parses its query string, checks it as
//! the gRPC method of the same read does (the same page sizes, cursors and limits),
//! calls the same [`crate::reads::Queries`] read or scheduler event, and answers the
//! domain view as JSON ([`mod@super::json`]).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ladder_proto::v1 as pb;
use ladder_types::RunStatus;
use serde_json::json;

use super::json as to_json;
use super::params::Params;
use super::session::{authorize, check_csrf};
use super::{json_response, ApiError, Web};
use crate::auth::{Action, Principal};
use crate::convert;
use crate::reads::{LeaderboardQuery, RunQuery, MAX_LEADERBOARD_ROWS};
use crate::scheduler::{Event, SweepAction};

type ApiResult = Result<Response, ApiError>;

/// Checks an id taken from the path, naming it.
fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > ladder_limits::MAX_ID_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {} bytes", ladder_limits::MAX_ID_BYTES),
        ));
    }
    Ok(())
}

/// A page size: `default` when absent or 0, refused above `max`.
fn page_size(params: &Params, field: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    let requested = params.number(field)?;
    convert::page_size(requested, default, max).map_err(|e| ApiError::invalid(field, e))
}

fn cursor(params: &Params) -> Result<&str, ApiError> {
    let cursor = params.text("cursor");
    convert::check_cursor(cursor).map_err(|e| ApiError::invalid("cursor", e))?;
    Ok(cursor)
}

/// Run statuses named in `status` parameters, as the protocol's numbers.
fn statuses(params: &Params) -> Result<Vec<i32>, ApiError> {
    let mut numbers = Vec::new();
    for name in params.all("status") {
        for part in name.split(',').filter(|p| !p.is_empty()) {
            let status: RunStatus = part.parse().map_err(|_| {
                ApiError::invalid(
                    "status",
                    format!(
                        "unknown run status {part:?} (expected one of: {})",
                        RunStatus::ALL.map(RunStatus::as_str).join(", ")
                    ),
                )
            })?;
            numbers.push(convert::run_status_to_pb(status) as i32);
        }
    }
    if numbers.len() > RunStatus::ALL.len() {
        return Err(ApiError::invalid(
            "status",
            "names more statuses than exist",
        ));
    }
    Ok(numbers)
}

/// `GET /api/v1/session`: who the request is signed in as.
pub async fn session(State(web): State<Arc<Web>>, headers: HeaderMap) -> ApiResult {
    let principal = authorize(&web, &headers, Action::Read)?;
    let value = match principal {
        Some(Principal::User { name, role }) => {
            json!({"access_control": true, "name": name, "role": role.as_str()})
        }
        Some(Principal::Agent { name }) => {
            json!({"access_control": true, "name": name, "role": "agent"})
        }
        None => json!({"access_control": false, "name": "", "role": "admin"}),
    };
    Ok(json_response(&value))
}

/// `GET /api/v1/sweeps?project=&cursor=&page_size=`: as `ListSweeps`.
pub async fn sweeps(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    let params = Params::parse(query.as_deref(), &["project", "cursor", "page_size"], &[])?;
    let size = page_size(
        &params,
        "page_size",
        ladder_limits::DEFAULT_PAGE_SIZE,
        ladder_limits::MAX_PAGE_SIZE,
    )?;
    let cursor = cursor(&params)?.to_string();
    let project = params.text("project").to_string();
    convert::check_len("project", &project, ladder_limits::MAX_ID_BYTES)
        .map_err(|e| ApiError::invalid("project", e))?;
    let (sweeps, next_cursor) = web
        .shared
        .read(move |q| q.sweeps_page(&project, &cursor, size))
        .await?;
    Ok(json_response(&json!({
        "sweeps": sweeps.iter().map(|s| to_json::sweep(s, false)).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// `GET /api/v1/sweeps/{id}`: as `GetSweep`, with the sweep file.
pub async fn sweep(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    check_id(&id, "sweep_id")?;
    let view = web.shared.read(move |q| q.sweep(&id)).await?;
    Ok(json_response(&to_json::sweep(&view, true)))
}

/// `POST /api/v1/sweeps/{id}/pause|resume|cancel`: for the sweep's owner and admins,
/// as the gRPC methods of the same names.
pub async fn sweep_action(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    check_csrf(&web, &headers)?;
    let action = match action.as_str() {
        "pause" => SweepAction::Pause,
        "resume" => SweepAction::Resume,
        "cancel" => SweepAction::Cancel,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!(
                    "unknown sweep action {:?} (expected pause, resume or cancel)",
                    super::params::clip(other, 32)
                ),
            ));
        }
    };
    check_id(&id, "sweep_id")?;
    // Authenticated before the sweep is read, so an unknown caller learns nothing.
    if web.shared.auth.is_some() {
        authorize(&web, &headers, Action::Read)?;
        let sweep_id = id.clone();
        let owner = web.shared.read(move |q| q.sweep_owner(&sweep_id)).await?;
        authorize(&web, &headers, Action::ControlSweep { owner: &owner })?;
    }
    let record = web
        .shared
        .ask(|reply| Event::SweepAction {
            sweep_id: id,
            action,
            reply,
        })
        .await?;
    let view = web
        .shared
        .read(move |q| q.sweep_with_counts(record))
        .await?;
    Ok(json_response(&to_json::sweep(&view, false)))
}

/// `GET /api/v1/runs?sweep=&project=&where=&sort=&status=&limit=&cursor=`: as
/// `ListRuns`, always paginated (`limit` 0 or absent means 100, at most 1,000).
pub async fn runs(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    let params = Params::parse(
        query.as_deref(),
        &[
            "sweep", "project", "where", "sort", "status", "limit", "cursor",
        ],
        &["sort", "status"],
    )?;
    let limit = page_size(
        &params,
        "limit",
        ladder_limits::DEFAULT_PAGE_SIZE,
        ladder_limits::MAX_PAGE_SIZE,
    )?;
    for field in ["sweep", "project"] {
        convert::check_len(field, params.text(field), ladder_limits::MAX_ID_BYTES)
            .map_err(|e| ApiError::invalid(field, e))?;
    }
    let sort = params.all("sort");
    if sort.len() > ladder_limits::MAX_SORT_KEYS {
        return Err(ApiError::invalid(
            "sort",
            format!("at most {} sort keys", ladder_limits::MAX_SORT_KEYS),
        ));
    }
    let request = pb::ListRunsRequest {
        sweep_id: params.text("sweep").to_string(),
        project: params.text("project").to_string(),
        statuses: statuses(&params)?,
        r#where: params.text("where").to_string(),
        sort,
        cursor: cursor(&params)?.to_string(),
        limit: limit as u32,
    };
    let query = RunQuery::parse(&request)?;
    let page = web.shared.read(move |q| q.query_runs(&query)).await?;
    Ok(json_response(&json!({
        "runs": page.runs.iter().map(to_json::run).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

/// `GET /api/v1/runs/{id}?log_tail=`: the run's card, as `GetRun` (the same
/// downsampled series, at most 4 cards built at once).
pub async fn run(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    check_id(&id, "run_id")?;
    let params = Params::parse(query.as_deref(), &["log_tail"], &[])?;
    let tail = params.number("log_tail")? as usize;
    if tail > crate::reads::MAX_LOG_TAIL {
        return Err(ApiError::invalid(
            "log_tail",
            format!("at most {} lines", crate::reads::MAX_LOG_TAIL),
        ));
    }
    let _permit = web.shared.card_reads.acquire().await.expect("never closed");
    let card = web.shared.read(move |q| q.run(&id, tail)).await?;
    Ok(json_response(&to_json::card(&card)))
}

/// `GET /api/v1/runs/{id}/points?attempt=&cursor=&page_size=`: every point of an
/// attempt, a page at a time, as `ListMetricPoints`.
pub async fn points(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    check_id(&id, "run_id")?;
    let params = Params::parse(query.as_deref(), &["attempt", "cursor", "page_size"], &[])?;
    let attempt = params.number("attempt")?;
    let size = page_size(
        &params,
        "page_size",
        ladder_limits::MAX_POINTS_PAGE_SIZE,
        ladder_limits::MAX_POINTS_PAGE_SIZE,
    )?;
    let cursor = cursor(&params)?.to_string();
    let page = web
        .shared
        .read(move |q| q.metric_points(&id, attempt, &cursor, size))
        .await?;
    Ok(json_response(&to_json::points_page(&page)))
}

/// `GET /api/v1/leaderboard?project=&metric=&goal=&tasks=&per=&status=&limit=`: as
/// `Leaderboard` (at most 1,000 rows; a larger `limit` is refused rather than cut).
pub async fn leaderboard(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    let params = Params::parse(
        query.as_deref(),
        &[
            "project", "metric", "goal", "tasks", "per", "status", "limit",
        ],
        &["status"],
    )?;
    let limit = params.number("limit")?;
    if limit as usize > MAX_LEADERBOARD_ROWS {
        return Err(ApiError::invalid(
            "limit",
            format!("at most {MAX_LEADERBOARD_ROWS} rows"),
        ));
    }
    for field in ["project", "metric"] {
        convert::check_len(field, params.text(field), ladder_limits::MAX_ID_BYTES)
            .map_err(|e| ApiError::invalid(field, e))?;
    }
    let request = pb::LeaderboardRequest {
        project: params.text("project").to_string(),
        metric: params.text("metric").to_string(),
        goal: params.text("goal").to_string(),
        tasks: params.text("tasks").to_string(),
        per: params.text("per").to_string(),
        statuses: statuses(&params)?,
        limit,
    };
    let query = LeaderboardQuery::try_from(request)?;
    let board = web.shared.read(move |q| q.leaderboard(&query)).await?;
    Ok(json_response(&to_json::leaderboard(&board)))
}

/// `GET /api/v1/agents?cursor=&page_size=`: as `ListAgents`.
pub async fn agents(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&web, &headers, Action::Read)?;
    let params = Params::parse(query.as_deref(), &["cursor", "page_size"], &[])?;
    let limit = page_size(
        &params,
        "page_size",
        ladder_limits::DEFAULT_PAGE_SIZE,
        ladder_limits::MAX_PAGE_SIZE,
    )?;
    let after = cursor(&params)?.to_string();
    let (views, more) = web
        .shared
        .ask(|reply| Event::ListAgents {
            after,
            limit,
            reply,
        })
        .await?;
    let next_cursor = match (more, views.last()) {
        (true, Some(last)) => Some(last.record.name.clone()),
        _ => None,
    };
    Ok(json_response(&json!({
        "agents": views.iter().map(to_json::agent).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}
