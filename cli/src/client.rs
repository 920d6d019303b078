//! The client verbs: each calls the coordinator over gRPC and prints a table, or one
//! JSON document with `--json`.

use std::collections::BTreeMap;
use std::path::Path;

use ladder_proto::v1 as pb;
use ladder_proto::v1::agent_service_client::AgentServiceClient;
use ladder_proto::v1::run_service_client::RunServiceClient;
use ladder_proto::v1::sweep_service_client::SweepServiceClient;
use serde_json::json;

use crate::output::{self, format_number, print_table};
use crate::{ClientArgs, ExitError};

pub enum Action {
    Pause,
    Resume,
    Cancel,
}

/// Connects to the coordinator with this process's TLS and token (see [`crate::connect`]).
pub async fn channel(url: &str) -> anyhow::Result<crate::connect::CoordinatorChannel> {
    crate::connect::channel(url).await
}

/// Turns a gRPC status into an error for the user; invalid input exits with code 2.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::InvalidArgument => ExitError {
            code: 2,
            message: status.message().to_string(),
        }
        .into(),
        tonic::Code::Unauthenticated if status.message().starts_with("missing bearer token") => {
            ExitError {
                code: 1,
                message: format!(
                    "error: {}; a coordinator started without --auth keeps its token in \
                     DATA_DIR/admin-token, and its own user's clients find it in the runtime \
                     file it writes for its address",
                    status.message()
                ),
            }
            .into()
        }
        tonic::Code::NotFound
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied => ExitError {
            code: 1,
            message: format!("error: {}", status.message()),
        }
        .into(),
        // A plain-HTTP client talking to a TLS coordinator gets only this.
        tonic::Code::Unknown if status.message() == "transport error" => anyhow::anyhow!(
            "the connection to the coordinator failed (transport error); if it serves TLS, \
             use an https:// URL with --ca / LADDER_CA"
        ),
        _ => anyhow::anyhow!(
            "coordinator answered {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// Reads and validates a sweep file locally; invalid files exit with code 2.
pub fn read_sweep(file: &Path) -> anyhow::Result<(String, String, ladder_spec::SweepSpec)> {
    let file_name = file.display().to_string();
    const MAX_SWEEP_FILE_BYTES: u64 = ladder_limits::MAX_SWEEP_FILE_BYTES as u64;
    if let Ok(metadata) = std::fs::metadata(file) {
        if metadata.len() > MAX_SWEEP_FILE_BYTES {
            return Err(ExitError {
                code: 2,
                message: format!(
                    "{file_name}: sweep file is {} bytes; the limit is {MAX_SWEEP_FILE_BYTES}",
                    metadata.len()
                ),
            }
            .into());
        }
    }
    let yaml = std::fs::read_to_string(file).map_err(|error| ExitError {
        code: 2,
        message: format!("{file_name}: cannot read the sweep file: {error}"),
    })?;
    let spec = ladder_spec::parse_sweep(&file_name, &yaml).map_err(|errors| ExitError {
        code: 2,
        message: errors.to_string(),
    })?;
    Ok((file_name, yaml, spec))
}

pub fn sweep_validate(file: &Path, json_output: bool) -> anyhow::Result<()> {
    let (file_name, _, spec) = read_sweep(file)?;
    let planned = ladder_spec::space::trial_count(&spec);
    if json_output {
        output::print_json(
            &json!({"file": file_name, "valid": true, "name": spec.name, "method": spec.method.as_str(), "planned_runs": planned}),
        );
    } else {
        println!(
            "{file_name}: valid {} sweep \"{}\" of {planned} runs",
            spec.method, spec.name
        );
    }
    Ok(())
}

pub async fn submit(url: &str, file: &Path) -> anyhow::Result<pb::Sweep> {
    let (file_name, yaml, _spec) = read_sweep(file)?;
    let (git_commit, git_dirty) = crate::history::git_state(file);
    let mut client = SweepServiceClient::new(channel(url).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let response = client
        .submit_sweep(pb::SubmitSweepRequest {
            file_name,
            yaml,
            owner: crate::connect::declared_user(),
            git_commit,
            git_dirty,
        })
        .await
        .map_err(status_error)?;
    Ok(response.into_inner().sweep.unwrap_or_default())
}

pub async fn sweep_submit(args: &ClientArgs, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    if let [file] = files {
        let sweep = submit(&args.coordinator, file).await?;
        if args.json {
            output::print_json(&output::sweep_json(&sweep));
        } else {
            println!("{}", sweep.id);
        }
        return Ok(());
    }
    // Every file is checked before anything is sent.
    let mut requests = Vec::with_capacity(files.len());
    let mut git_by_dir: std::collections::HashMap<std::path::PathBuf, (String, bool)> =
        std::collections::HashMap::new();
    for file in files {
        let (file_name, yaml, _spec) = read_sweep(file)?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let (git_commit, git_dirty) = git_by_dir
            .entry(dir)
            .or_insert_with(|| crate::history::git_state(file))
            .clone();
        requests.push(pb::SubmitSweepRequest {
            file_name,
            yaml,
            owner: crate::connect::declared_user(),
            git_commit,
            git_dirty,
        });
    }
    use futures::StreamExt;
    let client = SweepServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let submitted: Vec<pb::Sweep> = futures::stream::iter(requests.into_iter().map(|request| {
        let mut client = client.clone();
        async move {
            let file_name = request.file_name.clone();
            client
                .submit_sweep(request)
                .await
                .map(|response| response.into_inner().sweep.unwrap_or_default())
                .map_err(|status| anyhow::anyhow!("{file_name}: {}", status_error(status)))
        }
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    if args.json {
        output::print_json(
            &json!({ "sweeps": submitted.iter().map(output::sweep_json).collect::<Vec<_>>() }),
        );
    } else {
        for sweep in &submitted {
            println!("{}", sweep.id);
        }
    }
    Ok(())
}

/// Every item of a paged listing: `fetch(cursor)` returns one page and the next cursor
/// (empty after the last page), each page bounded by the coordinator's page size.
async fn every_page<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let (page, next) = fetch(cursor).await.map_err(status_error)?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        cursor = next;
    }
}

pub async fn sweep_ls(args: &ClientArgs, project: Option<String>) -> anyhow::Result<()> {
    let client = SweepServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let sweeps = every_page(|cursor| {
        let request = pb::ListSweepsRequest {
            project: project.clone().unwrap_or_default(),
            page_size: ladder_limits::MAX_PAGE_SIZE as u32,
            cursor,
        };
        let mut client = client.clone();
        async move {
            let page = client.list_sweeps(request).await?.into_inner();
            Ok((page.sweeps, page.next_cursor))
        }
    })
    .await?;
    if args.json {
        output::print_json(
            &json!({ "sweeps": sweeps.iter().map(output::sweep_json).collect::<Vec<_>>() }),
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sweeps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.project.clone(),
                s.method.clone(),
                output::sweep_status_name(s.status).into(),
                format!("{}/{}", s.created_runs, s.planned_runs),
                output::counts_text(&s.counts.unwrap_or_default()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "NAME", "PROJECT", "METHOD", "STATUS", "RUNS", "STATES",
        ],
        &rows,
    );
    Ok(())
}

pub async fn get_sweep(url: &str, id: &str) -> anyhow::Result<pb::Sweep> {
    let mut client = SweepServiceClient::new(channel(url).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    Ok(client
        .get_sweep(pb::GetSweepRequest {
            sweep_id: id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .sweep
        .unwrap_or_default())
}

fn print_sweep(sweep: &pb::Sweep) {
    let counts = sweep.counts.unwrap_or_default();
    println!("sweep     {}", sweep.id);
    println!("name      {}", sweep.name);
    println!("project   {}", sweep.project);
    println!("method    {}", sweep.method);
    println!("status    {}", output::sweep_status_name(sweep.status));
    if !sweep.metric_name.is_empty() {
        println!("metric    {} ({})", sweep.metric_name, sweep.metric_goal);
    }
    println!("parallel  {}", sweep.parallel);
    println!(
        "runs      {} of {} created: {}",
        sweep.created_runs,
        sweep.planned_runs,
        output::counts_text(&counts)
    );
}

pub async fn sweep_show(args: &ClientArgs, id: &str) -> anyhow::Result<()> {
    let sweep = get_sweep(&args.coordinator, id).await?;
    if args.json {
        let mut shown = output::sweep_json(&sweep);
        // The file as submitted: only `sweep show` carries it, listings do not.
        shown["yaml"] = json!(sweep.spec_yaml);
        output::print_json(&shown);
    } else {
        print_sweep(&sweep);
    }
    Ok(())
}

/// Where a sweep stands, as its progress bar shows it: `ended` of `planned` runs, and
/// `4 running, 8 completed · best loss=0.31 (RUN)`.
#[derive(Debug, PartialEq)]
pub struct Progress {
    pub ended: u64,
    pub planned: u64,
    pub message: String,
}

impl Progress {
    pub fn of(sweep: &pb::Sweep, best: Option<(String, f64)>) -> Progress {
        let counts = sweep.counts.unwrap_or_default();
        let ended = counts.completed + counts.failed + counts.stopped + counts.cancelled;
        let mut message = output::counts_text(&counts);
        if let Some((run, value)) = best {
            message.push_str(&format!(
                " · best {}={} ({run})",
                sweep.metric_name,
                format_number(value)
            ));
        }
        Progress {
            ended,
            planned: sweep.planned_runs,
            message,
        }
    }
}

/// Follows a sweep until it ends, drawing progress on stderr. Returns the final snapshot.
pub async fn watch(url: &str, id: &str, quiet: bool) -> anyhow::Result<pb::Sweep> {
    let channel = channel(url).await?;
    let mut sweeps = SweepServiceClient::new(channel.clone())
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let mut runs =
        RunServiceClient::new(channel).max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let mut stream = sweeps
        .watch_sweep(pb::WatchSweepRequest {
            sweep_id: id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    // On a terminal, a bar redrawn in place; in a pipe or with `quiet`, nothing (the
    // caller prints the final state).
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut last = None;
    while let Some(update) = stream.message().await.map_err(status_error)? {
        let Some(sweep) = update.sweep else { continue };
        if !bar.is_hidden() {
            let best = if sweep.metric_name.is_empty() {
                None
            } else {
                let listed = runs
                    .list_runs(pb::ListRunsRequest {
                        sweep_id: id.to_string(),
                        statuses: vec![],
                        limit: 0,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .runs;
                best_run(&sweep, &listed)
            };
            let progress = Progress::of(&sweep, best);
            bar.set_prefix(sweep.name.clone());
            bar.set_length(progress.planned);
            bar.set_position(progress.ended);
            bar.set_message(progress.message);
        }
        let ended = output::sweep_ended(&sweep);
        last = Some(sweep);
        if ended {
            break;
        }
    }
    bar.finish();
    last.ok_or_else(|| {
        anyhow::anyhow!("the coordinator closed the watch of sweep {id} without an update")
    })
}

pub async fn sweep_watch(args: &ClientArgs, id: &str) -> anyhow::Result<()> {
    let sweep = watch(&args.coordinator, id, false).await?;
    if args.json {
        output::print_json(&output::sweep_json(&sweep));
    } else {
        print_sweep(&sweep);
    }
    Ok(())
}

pub async fn sweep_action(args: &ClientArgs, id: &str, action: Action) -> anyhow::Result<()> {
    let mut client = SweepServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let sweep = match action {
        Action::Pause => {
            client
                .pause_sweep(pb::PauseSweepRequest {
                    sweep_id: id.into(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .sweep
        }
        Action::Resume => {
            client
                .resume_sweep(pb::ResumeSweepRequest {
                    sweep_id: id.into(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .sweep
        }
        Action::Cancel => {
            client
                .cancel_sweep(pb::CancelSweepRequest {
                    sweep_id: id.into(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .sweep
        }
    }
    .unwrap_or_default();
    if args.json {
        output::print_json(&output::sweep_json(&sweep));
    } else {
        println!("{} {}", sweep.id, output::sweep_status_name(sweep.status));
    }
    Ok(())
}

pub async fn list_runs(
    url: &str,
    sweep: Option<String>,
    statuses: &[String],
    limit: u32,
) -> anyhow::Result<Vec<pb::Run>> {
    let mut status_filter = Vec::new();
    for status in statuses {
        let proto = crate::history::parse_status(status, "--status")?;
        status_filter.push(proto as i32);
    }
    let mut client = RunServiceClient::new(channel(url).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    Ok(client
        .list_runs(pb::ListRunsRequest {
            sweep_id: sweep.unwrap_or_default(),
            statuses: status_filter,
            limit,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .runs)
}

pub async fn runs_show(args: &ClientArgs, run_id: &str, log_lines: u32) -> anyhow::Result<()> {
    let mut client = RunServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let detail = client
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_string(),
            log_tail: log_lines.max(1),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        output::print_json(&output::run_detail_json(&detail));
        return Ok(());
    }
    let run = detail.run.clone().unwrap_or_default();
    println!("run       {}", run.id);
    println!("sweep     {} ({})", run.sweep_id, detail.sweep_name);
    println!("project   {}", run.project);
    if !detail.owner.is_empty() {
        println!("owner     {}", detail.owner);
    }
    if !detail.git_commit.is_empty() {
        let dirty = if detail.git_dirty { " (dirty)" } else { "" };
        println!("git       {}{dirty}", detail.git_commit);
    }
    println!("status    {}", output::run_status_name(run.status));
    if run.created_ms > 0 {
        let created = output::local_time(run.created_ms);
        if run.ended_ms > 0 {
            println!(
                "time      created {created}, ended {} later",
                output::duration_text(run.ended_ms - run.created_ms)
            );
        } else {
            println!(
                "time      created {created}, {} ago",
                output::duration_text(output::now_ms() - run.created_ms)
            );
        }
    }
    if let Some(best) = detail.best_value {
        println!(
            "objective {} ({}): final {}, best {}",
            detail.sweep_metric,
            detail.sweep_goal,
            run.last_metrics
                .get(&detail.sweep_metric)
                .map(|v| format_number(*v))
                .unwrap_or_else(|| "-".into()),
            format_number(best)
        );
    }
    if !run.tags.is_empty() {
        println!("tags      {}", run.tags.join(" "));
    }
    for note in &run.notes {
        if note.author.is_empty() {
            println!("note {:<4} {}", note.id, note.text);
        } else {
            println!("note {:<4} {} ({})", note.id, note.text, note.author);
        }
    }
    println!("params    {}", output::params_text(&run));
    println!(
        "command   {}",
        run.argv
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("metrics   {}", output::metrics_text(&run));
    if !run.info.is_empty() {
        // What the run's `@ladder.info` lines said about it (provenance: base model,
        // data, their hashes), as it printed them.
        println!("\nreported by the run");
        let entries = output::sorted(&run.info);
        let width = entries
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (name, value) in entries {
            println!("  {name:<width$}  {value}");
        }
    }
    if !run.summaries.is_empty() {
        println!();
        print_table(
            &["METRIC", "VALUE", "SUMMARY", "LAST", "MIN", "MAX"],
            &output::summary_rows(&run),
        );
    }
    if !detail.artifacts.is_empty() {
        println!();
        print_table(
            &crate::artifacts::ARTIFACT_HEADERS,
            &crate::artifacts::artifact_rows(&detail.artifacts),
        );
    }
    println!();
    let attempts: Vec<Vec<String>> = run
        .attempts
        .iter()
        .map(|a| {
            vec![
                a.number.to_string(),
                a.agent.clone(),
                a.gpus
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                a.outcome.clone(),
                a.exit_code
                    .map(|c| c.to_string())
                    .or(a.signal.map(|s| format!("signal {s}")))
                    .unwrap_or_default(),
                a.reason.clone(),
            ]
        })
        .collect();
    print_table(
        &["ATTEMPT", "AGENT", "GPUS", "OUTCOME", "EXIT", "REASON"],
        &attempts,
    );
    for a in &run.attempts {
        if a.log_capped {
            println!(
                "attempt {}: log capped at {} bytes stored; the rest is in the agent's log file",
                a.number, a.log_bytes
            );
        }
        if a.points_capped {
            println!(
                "attempt {}: metric points capped at {}; later points were dropped",
                a.number, a.metric_points
            );
        }
    }
    for history in &detail.metrics {
        if history.points.is_empty() {
            continue;
        }
        println!(
            "\nmetrics of attempt {} ({} points)",
            history.attempt,
            history.points.len()
        );
        let rows: Vec<Vec<String>> = history
            .points
            .iter()
            .map(|p| {
                vec![
                    p.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    output::sorted(&p.values)
                        .into_iter()
                        .map(|(k, v)| format!("{k}={}", format_number(*v)))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        print_table(&["STEP", "VALUES"], &rows);
    }
    println!(
        "\nlog ({} lines, last {} shown)",
        detail.log_lines,
        detail.log_tail.len()
    );
    for line in &detail.log_tail {
        println!("  {}", line.text);
    }
    Ok(())
}

pub async fn agents_ls(args: &ClientArgs) -> anyhow::Result<()> {
    let client = AgentServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let agents = every_page(|cursor| {
        let request = pb::ListAgentsRequest {
            page_size: ladder_limits::MAX_PAGE_SIZE as u32,
            cursor,
        };
        let mut client = client.clone();
        async move {
            let page = client.list_agents(request).await?.into_inner();
            Ok((page.agents, page.next_cursor))
        }
    })
    .await?;
    if args.json {
        output::print_json(
            &json!({ "agents": agents.iter().map(output::agent_json).collect::<Vec<_>>() }),
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                if a.connected {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                format!("{}/{}", a.slots - a.free_slots.min(a.slots), a.slots),
                gpu_column(a),
                output::sorted(&a.labels)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                a.runs.join(" "),
            ]
        })
        .collect();
    print_table(&["AGENT", "STATE", "BUSY", "GPUS", "LABELS", "RUNS"], &rows);
    Ok(())
}

/// `4/8 0,1:run-a 5,6:run-b`: GPUs held out of all, then which run holds which GPUs.
fn gpu_column(agent: &pb::Agent) -> String {
    if agent.gpus.is_empty() {
        return "-".into();
    }
    let mut by_run: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (gpu, run_id) in &agent.gpu_runs {
        by_run.entry(run_id.as_str()).or_default().push(*gpu);
    }
    let mut text = format!("{}/{}", agent.gpu_runs.len(), agent.gpus.len());
    for (run_id, mut gpus) in by_run {
        gpus.sort_unstable();
        let gpus: Vec<String> = gpus.iter().map(u32::to_string).collect();
        text.push_str(&format!(" {}:{run_id}", gpus.join(",")));
    }
    text
}

fn agent_state(agent: &pb::Agent) -> String {
    let mut state = if agent.connected {
        "connected"
    } else {
        "disconnected"
    }
    .to_string();
    if agent.draining {
        state.push_str(",draining");
    }
    if agent.quarantined {
        state.push_str(",quarantined");
    }
    state
}

pub async fn agents_enable(args: &ClientArgs, name: &str) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::new(channel(&args.coordinator).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let agent = client
        .enable_agent(pb::EnableAgentRequest {
            name: name.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .agent
        .unwrap_or_default();
    if args.json {
        output::print_json(&output::agent_json(&agent));
    } else {
        println!("{} {}", agent.name, agent_state(&agent));
    }
    Ok(())
}

pub async fn agents_forget(args: &ClientArgs, name: &str, force: bool) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::new(channel(&args.coordinator).await?);
    let agent = client
        .forget_agent(pb::ForgetAgentRequest {
            name: name.to_string(),
            force,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .agent
        .unwrap_or_default();
    if args.json {
        output::print_json(&output::agent_json(&agent));
    } else {
        println!(
            "{} forgotten: the next agent to register as {} enrolls the name",
            agent.name, agent.name
        );
    }
    Ok(())
}

/// The best run by the sweep's metric (its summary value: the last reported value unless
/// the sweep chose another summary).
pub fn best_run(sweep: &pb::Sweep, runs: &[pb::Run]) -> Option<(String, f64)> {
    rank(sweep, runs)
        .first()
        .and_then(|run| output::metric_value(run, &sweep.metric_name).map(|v| (run.id.clone(), v)))
}

/// Runs ordered by the sweep's metric (best first; runs without it last, by index).
pub fn rank<'a>(sweep: &pb::Sweep, runs: &'a [pb::Run]) -> Vec<&'a pb::Run> {
    let maximize = sweep.metric_goal != "minimize";
    let mut ranked: Vec<&pb::Run> = runs.iter().collect();
    ranked.sort_by(|a, b| {
        let va = output::metric_value(a, &sweep.metric_name);
        let vb = output::metric_value(b, &sweep.metric_name);
        match (va, vb) {
            (Some(x), Some(y)) => {
                let order = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                (if maximize { order.reverse() } else { order }).then(a.index.cmp(&b.index))
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.index.cmp(&b.index),
        }
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_ended_runs_against_the_plan_and_names_the_best() {
        let sweep = pb::Sweep {
            name: "lr".into(),
            planned_runs: 24,
            metric_name: "loss".into(),
            counts: Some(pb::RunCounts {
                running: 4,
                completed: 7,
                failed: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Progress::of(&sweep, Some(("lr-000003".into(), 0.31))),
            Progress {
                ended: 8,
                planned: 24,
                message: "4 running, 7 completed, 1 failed · best loss=0.31 (lr-000003)".into(),
            }
        );
    }
}
