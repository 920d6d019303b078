//! The history verbs: `runs ls` with queries, `leaderboard`, `runs note|tag|compare|
//! export|watch`, and the git state recorded at `sweep submit`. Each calls the
//! coordinator's `RunService` and prints a table, or JSON with `--json` (the forms are
//! documented in docs/reference/json-output.md).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use clap::Args;
use ladder_proto::v1 as pb;
use ladder_proto::v1::run_service_client::RunServiceClient;
use serde_json::{json, Map};
use tokio_stream::StreamExt;

use crate::client::{channel, status_error};
use crate::output::{self, format_number, param_text, print_table};
use crate::{ClientArgs, ExitError};

/// The query flags shared by `runs ls` and `runs export`.
#[derive(Args, Clone, Default)]
pub struct QueryArgs {
    /// Only runs of this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Only runs of this project (sorting by one metric within a project uses the index).
    #[arg(long)]
    pub project: Option<String>,
    /// Only runs in this status (repeatable).
    #[arg(long)]
    pub status: Vec<String>,
    /// Filter: e.g. 'params.lr < 1e-3 and metrics.eval/avg >= 0.6 and status = completed'.
    #[arg(long = "where", value_name = "QUERY")]
    pub filter: Option<String>,
    /// Sort key, repeatable, most significant first: metrics.loss (ascending), -params.lr (descending).
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Vec<String>,
    /// At most this many runs (0: all); a next-page cursor is printed when more follow.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Continue after the page that printed this cursor.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Columns to show: id,status,params.lr,metrics.loss,... (table and CSV).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
}

impl QueryArgs {
    fn request(&self) -> anyhow::Result<pb::ListRunsRequest> {
        let mut statuses = Vec::new();
        for status in &self.status {
            statuses.push(parse_status(status, "--status")? as i32);
        }
        Ok(pb::ListRunsRequest {
            sweep_id: self.sweep.clone().unwrap_or_default(),
            statuses,
            limit: self.limit,
            r#where: self.filter.clone().unwrap_or_default(),
            sort: self.sort.clone(),
            cursor: self.cursor.clone().unwrap_or_default(),
            project: self.project.clone().unwrap_or_default(),
        })
    }
}

pub fn parse_status(text: &str, flag: &str) -> anyhow::Result<pb::RunStatus> {
    let parsed: ladder_types::RunStatus = text.parse().map_err(|message: String| ExitError {
        code: 2,
        message: format!("{flag}: {message}"),
    })?;
    Ok(ladder_coordinator::convert::run_status_to_pb(parsed))
}

async fn client(
    args: &ClientArgs,
) -> anyhow::Result<RunServiceClient<crate::connect::CoordinatorChannel>> {
    Ok(RunServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES))
}

/// A column of `--columns`: its header and how a run fills it.
/// A cell of `runs export --format csv`: as [`cell`], but times in RFC 3339 (UTC), for
/// programs rather than people.
fn csv_cell(run: &pb::Run, column: &str) -> String {
    match column {
        "created" => output::rfc3339(run.created_ms).unwrap_or_default(),
        "ended" => output::rfc3339(run.ended_ms).unwrap_or_default(),
        _ => cell(run, column),
    }
}

fn cell(run: &pb::Run, column: &str) -> String {
    if let Some(name) = column.strip_prefix("params.") {
        return run.params.get(name).map(param_text).unwrap_or_default();
    }
    if let Some(name) = column.strip_prefix("metrics.") {
        return output::metric_value(run, name)
            .map(format_number)
            .unwrap_or_default();
    }
    if let Some(name) = column.strip_prefix("info.") {
        return run.info.get(name).cloned().unwrap_or_default();
    }
    match column {
        "id" => run.id.clone(),
        "sweep" | "sweep_id" => run.sweep_id.clone(),
        "project" => run.project.clone(),
        "index" => run.index.to_string(),
        "status" => output::run_status_name(run.status).to_string(),
        "agent" => run.agent.clone(),
        "attempts" => run.attempts.len().to_string(),
        "exit" => output::exit_text(run),
        "created" => output::local_time(run.created_ms),
        "ended" => output::local_time(run.ended_ms),
        "created_ms" => run.created_ms.to_string(),
        "ended_ms" => {
            if run.ended_ms == 0 {
                String::new()
            } else {
                run.ended_ms.to_string()
            }
        }
        "last_step" => run.last_step.map(|s| s.to_string()).unwrap_or_default(),
        "tags" => run.tags.join(" "),
        "params" => output::params_text(run),
        "metrics" => output::metrics_text(run),
        _ => String::new(),
    }
}

const KNOWN_COLUMNS: &str = "id, sweep, project, index, status, agent, attempts, exit, created, ended, last_step, tags, params, metrics, params.NAME, metrics.NAME, info.NAME";

fn check_columns(columns: &[String]) -> anyhow::Result<()> {
    for column in columns {
        let known = column.starts_with("params.")
            || column.starts_with("metrics.")
            || column.starts_with("info.")
            || [
                "id",
                "sweep",
                "sweep_id",
                "project",
                "index",
                "status",
                "agent",
                "attempts",
                "exit",
                "created",
                "created_ms",
                "ended",
                "ended_ms",
                "last_step",
                "tags",
                "params",
                "metrics",
            ]
            .contains(&column.as_str());
        if !known {
            return Err(ExitError {
                code: 2,
                message: format!(
                    "--columns: unknown column {column:?} (expected one of: {KNOWN_COLUMNS})"
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// `ladder runs ls`: one page of a query.
pub async fn runs_ls(args: &ClientArgs, query: &QueryArgs) -> anyhow::Result<()> {
    check_columns(&query.columns)?;
    let response = client(args)
        .await?
        .list_runs(query.request()?)
        .await
        .map_err(status_error)?
        .into_inner();
    let next = (!response.next_cursor.is_empty()).then_some(response.next_cursor.clone());
    if args.json {
        output::print_json(&json!({
            "runs": response.runs.iter().map(output::run_json).collect::<Vec<_>>(),
            "next_cursor": next,
        }));
        return Ok(());
    }
    if query.columns.is_empty() {
        let rows: Vec<Vec<String>> = response
            .runs
            .iter()
            .map(|run| {
                vec![
                    run.id.clone(),
                    output::run_status_name(run.status).into(),
                    run.agent.clone(),
                    run.attempts.len().to_string(),
                    output::exit_text(run),
                    output::params_text(run),
                    output::metrics_text(run),
                ]
            })
            .collect();
        print_table(
            &[
                "RUN", "STATUS", "AGENT", "ATTEMPTS", "EXIT", "PARAMS", "METRICS",
            ],
            &rows,
        );
    } else {
        let headers: Vec<String> = query.columns.iter().map(|c| c.to_uppercase()).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let rows: Vec<Vec<String>> = response
            .runs
            .iter()
            .map(|run| query.columns.iter().map(|c| cell(run, c)).collect())
            .collect();
        print_table(&headers, &rows);
    }
    if let Some(next) = next {
        eprintln!("more runs follow: --cursor {next}");
    }
    Ok(())
}

#[derive(Args)]
pub struct LeaderboardArgs {
    /// The project whose runs are ranked (default: every project).
    #[arg(long)]
    pub project: Option<String>,
    /// Rank by this metric's summary value, the last one unless the sweep chose another
    /// (default: the objective of the project's latest sweep).
    #[arg(long)]
    pub metric: Option<String>,
    /// maximize or minimize (default: the goal the project's sweeps give the metric).
    #[arg(long)]
    pub goal: Option<String>,
    /// `avg`: rank by the mean of the `eval/<task>/{acc_norm,acc,mc2}` scores, one column per task.
    #[arg(long)]
    pub tasks: Option<String>,
    /// run (default), sweep (best run of each sweep) or model (best run per `model` param).
    #[arg(long, default_value = "run")]
    pub per: String,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only runs in this status (repeatable; default completed and stopped).
    #[arg(long)]
    pub status: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `ladder leaderboard`.
pub async fn leaderboard(args: &LeaderboardArgs) -> anyhow::Result<()> {
    let mut statuses = Vec::new();
    for status in &args.status {
        statuses.push(parse_status(status, "--status")? as i32);
    }
    let board = client(&args.client)
        .await?
        .leaderboard(pb::LeaderboardRequest {
            project: args.project.clone().unwrap_or_default(),
            metric: args.metric.clone().unwrap_or_default(),
            goal: args.goal.clone().unwrap_or_default(),
            tasks: args.tasks.clone().unwrap_or_default(),
            per: args.per.clone(),
            limit: args.limit,
            statuses,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.client.json {
        output::print_json(&json!({
            "project": args.project,
            "metric": board.metric,
            "goal": board.goal,
            "tasks": board.tasks,
            "rows": board.rows.iter().map(|row| json!({
                "rank": row.rank,
                "value": row.value,
                "sweep_name": row.sweep_name,
                "tasks": output::sorted(&row.tasks).into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
                "run": row.run.as_ref().map(output::run_json),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let all_projects = args.project.is_none();
    let mut headers = vec!["RANK".to_string(), "RUN".into()];
    if all_projects {
        headers.push("PROJECT".into());
    }
    headers.extend(["SWEEP".to_string(), board.metric.to_uppercase()]);
    headers.extend(board.tasks.iter().cloned());
    headers.push("PARAMS".into());
    let rows: Vec<Vec<String>> = board
        .rows
        .iter()
        .map(|row| {
            let run = row.run.clone().unwrap_or_default();
            let mut cells = vec![row.rank.to_string(), run.id.clone()];
            if all_projects {
                cells.push(run.project.clone());
            }
            cells.extend([row.sweep_name.clone(), format_number(row.value)]);
            for task in &board.tasks {
                cells.push(
                    row.tasks
                        .get(task)
                        .map(|v| format_number(*v))
                        .unwrap_or_default(),
                );
            }
            cells.push(output::params_text(&run));
            cells
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let scope = match &args.project {
        Some(project) => format!("project {project}"),
        None => "all projects".to_string(),
    };
    println!("{} ({}), {scope}", board.metric, board.goal);
    print_table(&headers, &rows);
    Ok(())
}

/// `ladder runs note RUN TEXT` and `ladder runs tag RUN +a -b`. The tag list accepts
/// values starting with `-`, so it also receives flags written after it: `--json` and
/// `--coordinator URL` are honoured there; other flags must come before the run id.
pub async fn update(
    args: &ClientArgs,
    run_id: &str,
    note: Option<&str>,
    tags: &[String],
    delete_note: Option<u64>,
) -> anyhow::Result<()> {
    let mut args = args.clone();
    let mut add_tags = Vec::new();
    let mut remove_tags = Vec::new();
    let mut words = tags.iter();
    while let Some(tag) = words.next() {
        if tag == "--json" {
            args.json = true;
            continue;
        }
        if tag == "--coordinator" {
            if let Some(url) = words.next() {
                args.coordinator = url.clone();
            }
            continue;
        }
        if let Some(url) = tag.strip_prefix("--coordinator=") {
            args.coordinator = url.to_string();
            continue;
        }
        if tag.starts_with("--") {
            return Err(ExitError {
                code: 2,
                message: format!("runs tag: {tag:?} is not a tag; write flags before the run id"),
            }
            .into());
        }
        if let Some(tag) = tag.strip_prefix('-') {
            remove_tags.push(tag.to_string());
        } else {
            add_tags.push(tag.strip_prefix('+').unwrap_or(tag).to_string());
        }
    }
    let args = &args;
    let run = client(args)
        .await?
        .update_run(pb::UpdateRunRequest {
            run_id: run_id.to_string(),
            note: note.unwrap_or_default().to_string(),
            add_tags,
            remove_tags,
            delete_notes: delete_note.into_iter().collect(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .run
        .unwrap_or_default();
    if args.json {
        output::print_json(&output::run_json(&run));
    } else {
        println!(
            "{}: {} notes, tags [{}]",
            run.id,
            run.notes.len(),
            run.tags.join(" ")
        );
    }
    Ok(())
}

/// The value of one metric at each step of a run's latest attempt (points without a
/// step count as steps 1, 2, 3...).
fn metric_by_step(detail: &pb::GetRunResponse, metric: &str) -> BTreeMap<i64, f64> {
    let mut by_step = BTreeMap::new();
    if let Some(history) = detail.metrics.last() {
        for (ordinal, point) in history.points.iter().enumerate() {
            if let Some(value) = point.values.get(metric) {
                by_step.insert(point.step.unwrap_or(ordinal as i64 + 1), *value);
            }
        }
    }
    by_step
}

/// `ladder runs compare A B ...`.
pub async fn compare(
    args: &ClientArgs,
    run_ids: &[String],
    metric: Option<&str>,
) -> anyhow::Result<()> {
    if run_ids.len() < 2 {
        return Err(ExitError {
            code: 2,
            message: "runs compare: give at least two runs".into(),
        }
        .into());
    }
    let mut service = client(args).await?;
    let mut details = Vec::new();
    for id in run_ids {
        details.push(
            service
                .get_run(pb::GetRunRequest {
                    run_id: id.clone(),
                    log_tail: 1,
                })
                .await
                .map_err(status_error)?
                .into_inner(),
        );
    }
    let runs: Vec<pb::Run> = details
        .iter()
        .map(|d| d.run.clone().unwrap_or_default())
        .collect();
    let names: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let mut params: Vec<(String, Vec<Option<String>>, bool)> = Vec::new();
    for name in names {
        let values: Vec<Option<String>> = runs
            .iter()
            .map(|r| r.params.get(name).map(param_text))
            .collect();
        let differs = values.iter().any(|v| *v != values[0]);
        params.push((name.clone(), values, differs));
    }
    let metric = metric
        .map(str::to_string)
        .or_else(|| {
            details
                .iter()
                .map(|d| d.sweep_metric.clone())
                .find(|m| !m.is_empty())
        })
        .ok_or_else(|| ExitError {
            code: 2,
            message: "runs compare: the runs' sweep has no metric; pass --metric NAME".into(),
        })?;
    let series: Vec<BTreeMap<i64, f64>> =
        details.iter().map(|d| metric_by_step(d, &metric)).collect();
    let steps: BTreeSet<i64> = series.iter().flat_map(|s| s.keys().copied()).collect();
    if args.json {
        output::print_json(&json!({
            "runs": run_ids,
            "params": params.iter().map(|(name, values, _)| (name.clone(), json!(values))).collect::<Map<_, _>>(),
            "differing": params.iter().filter(|p| p.2).map(|p| p.0.clone()).collect::<Vec<_>>(),
            "metric": metric,
            "steps": steps.iter().map(|step| json!({
                "step": step,
                "values": series.iter().map(|s| s.get(step).copied()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "final": runs.iter().map(|r| r.last_metrics.get(&metric).copied()).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut headers = vec!["PARAM".to_string()];
    headers.extend(run_ids.iter().cloned());
    let rows: Vec<Vec<String>> = params
        .iter()
        .map(|(name, values, differs)| {
            let mut row = vec![if *differs {
                format!("* {name}")
            } else {
                format!("  {name}")
            }];
            row.extend(
                values
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "-".into())),
            );
            row
        })
        .collect();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&header_refs, &rows);
    println!("(* marks parameters that differ)\n");
    headers[0] = format!("STEP ({metric})");
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            let mut row = vec![step.to_string()];
            row.extend(series.iter().map(|s| {
                s.get(step)
                    .map(|v| format_number(*v))
                    .unwrap_or_else(|| "-".into())
            }));
            row
        })
        .collect();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&header_refs, &rows);
    Ok(())
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `ladder runs export --format csv|jsonl [query flags]`: streams the query's runs.
/// `ladder runs metrics RUN`: the full metric series of an attempt, page by page.
pub async fn metric_points(
    args: &ClientArgs,
    run_id: &str,
    attempt: u32,
    format: &str,
) -> anyhow::Result<()> {
    if format != "csv" && format != "jsonl" {
        return Err(ExitError {
            code: 2,
            message: format!("--format: unknown format {format:?} (expected csv or jsonl)"),
        }
        .into());
    }
    let mut service = client(args).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == "csv" {
        writeln!(out, "step,time_ms,metric,value")?;
    }
    let mut cursor = String::new();
    loop {
        let page = service
            .list_metric_points(pb::ListMetricPointsRequest {
                run_id: run_id.to_string(),
                attempt,
                page_size: 0,
                cursor,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for point in &page.points {
            let values: BTreeMap<&String, &f64> = point.values.iter().collect();
            if format == "jsonl" {
                let line = json!({"step": point.step, "time_ms": point.time_ms, "values": values});
                writeln!(out, "{line}")?;
            } else {
                let step = point.step.map(|s| s.to_string()).unwrap_or_default();
                for (name, value) in values {
                    writeln!(out, "{step},{},{},{value}", point.time_ms, csv_field(name))?;
                }
            }
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    out.flush()?;
    Ok(())
}

pub async fn export(args: &ClientArgs, query: &QueryArgs, format: &str) -> anyhow::Result<()> {
    if format != "csv" && format != "jsonl" {
        return Err(ExitError {
            code: 2,
            message: format!("--format: unknown format {format:?} (expected csv or jsonl)"),
        }
        .into());
    }
    check_columns(&query.columns)?;
    let mut request = query.request()?;
    request.cursor = query.cursor.clone().unwrap_or_default();
    let mut stream = client(args)
        .await?
        .export_runs(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let write_row = |out: &mut dyn Write, cells: Vec<String>| -> std::io::Result<()> {
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        writeln!(out, "{}", line.join(","))
    };
    if format == "jsonl" {
        while let Some(run) = stream.next().await {
            let run = run.map_err(status_error)?;
            writeln!(out, "{}", serde_json::to_string(&output::run_json(&run))?)?;
        }
        out.flush()?;
        return Ok(());
    }
    if !query.columns.is_empty() {
        write_row(&mut out, query.columns.clone())?;
        while let Some(run) = stream.next().await {
            let run = run.map_err(status_error)?;
            write_row(
                &mut out,
                query.columns.iter().map(|c| csv_cell(&run, c)).collect(),
            )?;
        }
        out.flush()?;
        return Ok(());
    }
    // Without --columns the header needs every parameter and metric name: collect first.
    let mut runs = Vec::new();
    while let Some(run) = stream.next().await {
        runs.push(run.map_err(status_error)?);
    }
    let params: BTreeSet<String> = runs.iter().flat_map(|r| r.params.keys().cloned()).collect();
    let metrics: BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.last_metrics.keys().cloned())
        .collect();
    let mut columns: Vec<String> = [
        "id", "sweep", "project", "index", "status", "agent", "attempts", "created", "ended",
        "tags",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    columns.extend(params.iter().map(|p| format!("params.{p}")));
    columns.extend(metrics.iter().map(|m| format!("metrics.{m}")));
    write_row(&mut out, columns.clone())?;
    for run in &runs {
        write_row(&mut out, columns.iter().map(|c| csv_cell(run, c)).collect())?;
    }
    out.flush()?;
    Ok(())
}

/// `ladder runs watch RUN`: prints metric points and log lines until the run ends.
pub async fn watch(args: &ClientArgs, run_id: &str, only_new: bool) -> anyhow::Result<()> {
    let mut stream = client(args)
        .await?
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_string(),
            only_new,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last_status = None;
    while let Some(message) = stream.next().await {
        let message = message.map_err(status_error)?;
        let status = output::run_status_name(message.status);
        if args.json {
            println!(
                "{}",
                json!({
                    "attempt": message.attempt,
                    "status": status,
                    "downsampled": message.downsampled,
                    "points": message.points.iter().map(|p| json!({
                        "step": p.step,
                        "time_ms": p.time_ms,
                        "values": output::sorted(&p.values).into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
                    })).collect::<Vec<_>>(),
                    "lines": message.lines.iter().map(|l| json!({"time_ms": l.time_ms, "stream": l.stream, "text": l.text})).collect::<Vec<_>>(),
                })
            );
        } else {
            for point in &message.points {
                let values: Vec<String> = output::sorted(&point.values)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", format_number(*v)))
                    .collect();
                let step = point
                    .step
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into());
                println!("step {step:>6}  {}", values.join(" "));
            }
            for line in &message.lines {
                println!("  | {}", line.text);
            }
            if last_status != Some(message.status) {
                eprintln!("run {run_id} attempt {} {status}", message.attempt);
            }
        }
        std::io::stdout().flush()?;
        last_status = Some(message.status);
    }
    Ok(())
}

/// `git rev-parse HEAD` and whether `git status --porcelain` lists changes, in the
/// directory of `file`; empty and false outside a git repository (or without git).
pub fn git_state(file: &Path) -> (String, bool) {
    let dir = match std::path::absolute(file) {
        Ok(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        Err(_) => return (String::new(), false),
    };
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return (String::new(), false);
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
    (commit.trim().to_string(), dirty)
}
