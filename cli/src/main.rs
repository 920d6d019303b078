//! `ladder`: every role and verb in one binary.
//!
//! - roles: `coordinator`, `agent`, and `run` (all-in-one: an embedded coordinator plus a
//!   local agent, for one machine);
//! - client verbs (`sweep`, `runs`, `agents`) talk gRPC to the coordinator named by
//!   `--coordinator` / `LADDER_COORDINATOR`;
//! - `train` and `eval` run the built-in trainer and scorer (also how an agent runs a
//!   sweep's `train:` runs);
//! - `bench` measures the system.
//!
//! Modules: [`client`] (verbs), [`history`] (queries, leaderboard, notes, compare,
//! export, watch), [`output`] (tables and the documented `--json` forms),
//! [`allinone`] (`ladder run`), [`bench`](mod@bench), [`connect`] (TLS and token of client
//! connections), [`access`] (the coordinator's `--auth`/TLS options, `ladder auth`).

mod access;
mod allinone;
mod artifacts;
mod bench;
mod client;
mod connect;
mod history;
mod output;
mod trainer;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ladder_agent::contain::{Containment, Isolation};
use ladder_agent::gpus::{self, GpuSelection};
use ladder_agent::{Agent, AgentConfig};
use ladder_coordinator::{local_token, Coordinator, CoordinatorConfig, LeaseConfig};
use tracing_subscriber::EnvFilter;

const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

#[derive(Parser)]
#[command(
    name = "ladder",
    version,
    about = "Distributed experiment sweeps: run, track and rank trials across GPU boxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Coordinator URL.
    #[arg(long, global = true, env = "LADDER_COORDINATOR", hide_env_values = true, default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    security: connect::SecurityArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep on this machine: embedded coordinator + local agent, live progress, ranked table at the end.
    Run(RunArgs),
    /// Serve the coordinator.
    Coordinator(CoordinatorArgs),
    /// Serve an agent that executes runs for a coordinator.
    Agent(AgentArgs),
    /// Submit, list, follow, pause, resume and cancel sweeps.
    #[command(subcommand)]
    Sweep(SweepCommand),
    /// List and show runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// List and download the files runs uploaded to the artifact store.
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Rank runs (of one project, or of every project) by an objective, a metric or the average of eval tasks (alias: `leaderboard`).
    #[command(name = "board", alias = "leaderboard")]
    Leaderboard(history::LeaderboardArgs),
    /// Inspect a coordinator's store (with the coordinator stopped).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Measure the system.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Make tokens for the coordinator's --auth file.
    #[command(subcommand)]
    Auth(access::AuthCommand),
    /// Fine-tune a model with the built-in trainer (one run, outside any sweep).
    Train(trainer::TrainArgs),
    /// Score a model on multiple-choice tasks the way lm-evaluation-harness does.
    Eval(trainer::EvalArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// The sweep file.
    file: PathBuf,
    /// Store directory.
    #[arg(long, default_value = ".ladder")]
    data: PathBuf,
    /// Runs executed at once by the local agent (default: the number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// GPUs the local agent offers: auto, none, 0,1,3 or fake:N (as `ladder agent --gpus`).
    #[arg(
        long,
        env = "LADDER_GPUS",
        hide_env_values = true,
        default_value = "auto"
    )]
    gpus: String,
    /// Print the final ranking as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Address to listen on; port 0 picks a free port (the line `listening on HOST:PORT` says which).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Store directory.
    #[arg(long)]
    data: PathBuf,
    /// Seconds an agent may stay silent before its runs are requeued.
    #[arg(long, default_value_t = 15.0)]
    lease_timeout: f64,
    /// Seconds between agent heartbeats.
    #[arg(long, default_value_t = 3.0)]
    heartbeat_interval: f64,
    /// Where run artifacts are kept: file:///PATH (a directory, e.g. on a shared
    /// filesystem) or s3://BUCKET/PREFIX (settings from the AWS_* environment
    /// variables). Default: DATA/artifacts.
    #[arg(long, value_name = "URL")]
    artifacts: Option<String>,
    #[command(flatten)]
    access: access::CoordinatorAccessArgs,
}

#[derive(Args)]
struct AgentArgs {
    #[arg(long, env = "LADDER_COORDINATOR", hide_env_values = true, default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
    #[command(flatten)]
    security: connect::SecurityArgs,
    /// Unique name of this agent (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Runs without GPUs executed at once (default: the number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Runs without GPUs kept waiting beyond the slots, each started the moment a run
    /// ends; the coordinator uses the queue only for grid and random sweeps whose runs
    /// take a few seconds (default: twice --slots; 0 turns it off).
    #[arg(long)]
    queue_depth: Option<u32>,
    /// Runs execute in WORK_DIR/runs/RUN_ID.
    #[arg(long, default_value = "ladder-work")]
    work_dir: PathBuf,
    /// Where the sweeps' code lives on this node (`{{ladder.code_dir}}`; default: the current directory).
    #[arg(long)]
    code_dir: Option<PathBuf>,
    /// Labels runs can ask for: k=v,k=v.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped.
    #[arg(long, default_value_t = 10.0)]
    stop_grace: f64,
    /// Seconds the supervisor waits between its SIGTERM and SIGKILL of this agent (Slurm's
    /// KillWait, systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds). A
    /// drain then gives runs at most this minus 5 s before SIGKILL, so that they are handed
    /// back before the agent is killed; the agent logs a warning when --stop-grace is longer.
    #[arg(long)]
    kill_wait: Option<f64>,
    /// Size in bytes past which a run's local log file is rotated (one older part is kept).
    #[arg(long, default_value_t = 64 << 20)]
    log_file_max_bytes: u64,
    /// GPUs offered to runs: auto (every GPU nvidia-smi reports; none without a driver),
    /// none (CPU only), a list of indexes like 0,1,3, or fake:N (N fake GPUs, for tests
    /// and demos on machines without GPUs).
    #[arg(
        long,
        env = "LADDER_GPUS",
        hide_env_values = true,
        default_value = "auto"
    )]
    gpus: String,
    /// Print what this agent found (GPUs, labels, slots, work directory) and exit
    /// without connecting: the check of a GPU node.
    #[arg(long)]
    dry_run: bool,
    /// This agent's name is used once (e.g. slurm-JOBID-NODE): when it drains, the
    /// coordinator drops its entry (and the secret its name is bound to) once its runs are
    /// handed back, so `agents ls` does not keep listing it. An agent that dies without
    /// draining stays listed as disconnected.
    #[arg(long)]
    forget_on_exit: bool,
    /// How the agent keeps track of every process a run starts, so that none outlives
    /// it (a child started with setsid, a daemon): auto (a cgroup v2 per run where the
    /// agent's cgroup is writable, else a child subreaper), cgroup (refuse to start
    /// without one) or subreaper.
    #[arg(long, default_value = "auto")]
    isolation: String,
}

impl Command {
    /// `--token` and `--ca` of a verb that talks to a coordinator by URL.
    fn security(&self) -> Option<&connect::SecurityArgs> {
        let client = match self {
            Command::Agent(args) => return Some(&args.security),
            Command::Sweep(command) => command.client(),
            Command::Runs(command) => Some(command.client()),
            Command::Agents(command) => Some(command.client()),
            Command::Artifacts(command) => Some(command.client()),
            Command::Leaderboard(args) => Some(&args.client),
            Command::Run(_)
            | Command::Coordinator(_)
            | Command::Store(_)
            | Command::Bench(_)
            | Command::Auth(_)
            | Command::Train(_)
            | Command::Eval(_) => None,
        };
        client.map(|client| &client.security)
    }
}

impl SweepCommand {
    fn client(&self) -> Option<&ClientArgs> {
        match self {
            SweepCommand::Validate { .. } => None,
            SweepCommand::Submit { client, .. }
            | SweepCommand::Ls { client, .. }
            | SweepCommand::Show { client, .. }
            | SweepCommand::Watch { client, .. }
            | SweepCommand::Pause { client, .. }
            | SweepCommand::Resume { client, .. }
            | SweepCommand::Cancel { client, .. } => Some(client),
        }
    }
}

impl RunsCommand {
    fn client(&self) -> &ClientArgs {
        match self {
            RunsCommand::Ls { client, .. }
            | RunsCommand::Note { client, .. }
            | RunsCommand::Tag { client, .. }
            | RunsCommand::Compare { client, .. }
            | RunsCommand::Export { client, .. }
            | RunsCommand::Metrics { client, .. }
            | RunsCommand::Watch { client, .. }
            | RunsCommand::Show { client, .. } => client,
        }
    }
}

impl AgentsCommand {
    fn client(&self) -> &ClientArgs {
        match self {
            AgentsCommand::Ls { client, .. }
            | AgentsCommand::Enable { client, .. }
            | AgentsCommand::Forget { client, .. } => client,
        }
    }
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Validate and submit a sweep file; prints the sweep id.
    /// Submit sweep files: every file is validated before any is sent; several files are
    /// submitted concurrently and their ids printed in the order given.
    Submit {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a sweep file without submitting it; prints how many runs it plans.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List sweeps.
    Ls {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one sweep.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a sweep until it ends.
    Watch {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop proposing new runs; running ones continue.
    Pause {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused sweep.
    Resume {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel queued runs and stop running ones.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs with their parameters, status, agent, attempts and last metric values.
    Ls {
        #[command(flatten)]
        query: history::QueryArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a note to a run (owner of its sweep or admin), or delete one with --delete ID
    /// (the note's author or an admin; ids are shown by `runs show`).
    Note {
        run: String,
        #[arg(required_unless_present = "delete")]
        text: Option<String>,
        /// Delete the note with this id instead of adding one.
        #[arg(long, value_name = "ID", conflicts_with = "text")]
        delete: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add (+tag or tag) and remove (-tag) tags of a run.
    Tag {
        run: String,
        #[arg(required = true, allow_hyphen_values = true)]
        tags: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Parameters side by side (differences marked) and one metric aligned by step.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        /// The metric to align (default: the sweep metric).
        #[arg(long)]
        metric: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stream the runs a query selects as CSV or JSON lines.
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        query: history::QueryArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every metric point of a run's attempt (the latest by default), page by page, as
    /// JSON lines ({"step", "time_ms", "values"}) or CSV (step,time_ms,metric,value).
    Metrics {
        run: String,
        /// The attempt (1-based).
        #[arg(long)]
        attempt: Option<u32>,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a run's metric points and log lines until it ends.
    Watch {
        run: String,
        /// Skip what was reported before now.
        #[arg(long)]
        only_new: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a run: params, status, attempts, metric history, log tail.
    Show {
        run: String,
        /// How many log lines to show.
        #[arg(long, default_value_t = 50)]
        log_lines: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// List agents with their slots, GPUs, runs and connection state.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift an agent's quarantine.
    Enable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unbind an agent's name from its secret so that the next agent registering with it
    /// enrolls it again (an agent whose work directory was lost). Admins only.
    Forget {
        name: String,
        /// Also forget a connected agent: its session is ended, and whichever agent
        /// registers with the name next enrolls it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify the store's invariants; exits 1 when any is broken.
    Check {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn store_check(data: &std::path::Path, json_output: bool) -> anyhow::Result<()> {
    if !data.join("db").exists() {
        bail!("{} holds no ladder store", data.display());
    }
    let store = ladder_coordinator::store::SledStore::open(data).with_context(|| {
        format!(
            "failed to open the store in {} (is a coordinator still running on it?)",
            data.display()
        )
    })?;
    let report = store.check()?;
    if json_output {
        let mut value = serde_json::to_value(&report)?;
        value["ok"] = serde_json::json!(report.ok());
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{} sweeps, {} runs, {} metric points, {} log lines: {}",
            report.sweeps,
            report.runs,
            report.metric_points,
            report.log_lines,
            if report.ok() {
                "ok".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
        for problem in &report.problems {
            println!("  {problem}");
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(ExitError {
            code: 1,
            message: format!("the store in {} is inconsistent", data.display()),
        }
        .into())
    }
}

/// An error that carries its own exit code (2: the input was invalid).
#[derive(Debug)]
pub struct ExitError {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

/// Logs go to stderr, coloured only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>), so log files (a Slurm job's output, a redirected
/// agent) hold plain text.
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let colour = std::io::stderr().is_terminal() && !no_color;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{what} must be a positive number of seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for item in raw {
        let Some((key, value)) = item.split_once('=') else {
            bail!("--labels: {item:?} is not key=value");
        };
        if key.is_empty() {
            bail!("--labels: {item:?} has an empty key");
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let lease = LeaseConfig {
        lease_timeout: seconds(args.lease_timeout, "--lease-timeout")?,
        heartbeat_interval: seconds(args.heartbeat_interval, "--heartbeat-interval")?,
    };
    if lease.heartbeat_interval >= lease.lease_timeout {
        bail!("--heartbeat-interval must be shorter than --lease-timeout");
    }
    let artifacts = args
        .artifacts
        .as_deref()
        .map(ladder_coordinator::artifacts::ArtifactLocation::parse)
        .transpose()?;
    let access = args.access.load(args.listen, &args.data)?;
    let https = access.tls.is_some();
    let coordinator = Coordinator::open(CoordinatorConfig {
        data_dir: args.data.clone(),
        lease,
        auth: access.auth,
        tls: access.tls,
        artifacts,
    })
    .with_context(|| {
        format!(
            "failed to open the coordinator store in {}",
            args.data.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // Written before the listening line, so a client started after it finds the token.
    let runtime_file = match &access.local_token {
        Some(token) => publish_local_token(address, https, token, &args.data),
        None => {
            local_token::remove_stale(address);
            None
        }
    };
    println!("ladder coordinator listening on {address}");
    // The pages and their JSON API share the listener (sign in with a token there).
    println!("ladder web ui at {}/", local_url(address, https));
    use std::io::Write;
    std::io::stdout().flush()?;
    coordinator.serve(listener, shutdown_signal()).await?;
    // A clean shutdown removes the runtime file; the data directory's token stays.
    drop(runtime_file);
    Ok(())
}

/// Writes the runtime file of a coordinator listening on `address` that requires the
/// admin `token` (see `ladder_coordinator::local_token`). Without a usable runtime
/// directory the coordinator still serves: its data directory holds the token.
fn publish_local_token(
    address: SocketAddr,
    https: bool,
    token: &str,
    data: &std::path::Path,
) -> Option<local_token::RuntimeFile> {
    let token_file = data.join(local_token::DATA_DIR_TOKEN_FILE);
    let url = local_url(address, https);
    match local_token::RuntimeFile::write(address, &url, token, data) {
        Ok(file) => {
            tracing::info!(
                token_file = %token_file.display(),
                runtime_file = %file.path().display(),
                "no --auth: every request needs the admin token of these files, which this \
                 user's clients and agents read by themselves"
            );
            Some(file)
        }
        Err(error) => {
            tracing::warn!(
                token_file = %token_file.display(),
                %error,
                "cannot write the runtime file; give clients the admin token of the data \
                 directory (LADDER_TOKEN)"
            );
            None
        }
    }
}

/// A URL that reaches a coordinator listening on `address` from this machine (a wildcard
/// address is reached on loopback).
pub fn local_url(address: SocketAddr, https: bool) -> String {
    let mut reachable = address;
    if address.ip().is_unspecified() {
        reachable.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{reachable}")
}

pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "agent".into())
}

async fn agent(args: AgentArgs, security: connect::ClientSecurity) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(
        args.coordinator,
        args.name.unwrap_or_else(default_name),
        args.work_dir,
    );
    if let Some(slots) = args.slots {
        if slots == 0 {
            bail!("--slots must be at least 1");
        }
        config.slots = slots;
    }
    if let Some(depth) = args.queue_depth {
        if depth > ladder_limits::MAX_AGENT_SLOTS {
            bail!(
                "--queue-depth {depth} is above the limit of {}",
                ladder_limits::MAX_AGENT_SLOTS
            );
        }
        config.queue_depth = Some(depth);
    }
    config.labels = parse_labels(&args.labels)?;
    if let Some(code_dir) = args.code_dir {
        config.code_dir = std::path::absolute(&code_dir)
            .with_context(|| format!("--code-dir {}", code_dir.display()))?;
    }
    config.stop_grace = seconds(args.stop_grace, "--stop-grace")?;
    config.forget_on_exit = args.forget_on_exit;
    if let Some(kill_wait) = args.kill_wait {
        config.kill_wait = Some(seconds(kill_wait, "--kill-wait")?);
    }
    if args.log_file_max_bytes == 0 {
        bail!("--log-file-max-bytes must be at least 1");
    }
    config.log_file_max_bytes = args.log_file_max_bytes;
    // Without --token / LADDER_TOKEN, a coordinator of this user on this machine has
    // left its admin token in a runtime file.
    config.token = security.token.or_else(|| {
        let found = local_token::find(&config.coordinator)?;
        tracing::info!(file = %found.file.display(), "using the local coordinator's token");
        Some(found.token)
    });
    config.ca_pem = security.ca_pem;
    let selection = GpuSelection::parse(&args.gpus)?;
    config.gpus = tokio::task::spawn_blocking(move || gpus::resolve(&selection))
        .await?
        .context("failed to discover this node's GPUs")?;
    if args.dry_run {
        print!("{}", describe_agent(&config));
        return Ok(());
    }
    let isolation =
        Isolation::parse(&args.isolation).map_err(|e| anyhow::anyhow!("--isolation: {e}"))?;
    let containment = Containment::set_up(isolation).map_err(|message| anyhow::anyhow!(message))?;
    tracing::info!(isolation = %containment.describe(), "run processes are tracked");
    config.containment = Some(containment);
    match Agent::new(config).run(shutdown_signal()).await {
        // Exit code 3: retrying cannot help until an admin forgets the name, so service
        // managers are told not to restart (RestartPreventExitStatus=3).
        Err(error @ ladder_agent::AgentError::NameRefused { .. }) => Err(ExitError {
            code: 3,
            message: format!("error: {error}"),
        }
        .into()),
        result => Ok(result?),
    }
}

/// What `ladder agent --dry-run` prints: what the agent would offer the coordinator.
fn describe_agent(config: &AgentConfig) -> String {
    let mut text = format!(
        "agent {}\ncoordinator {}\nslots {}\nwork dir {}\ncode dir {}\n",
        config.name,
        config.coordinator,
        config.slots,
        std::path::absolute(&config.work_dir)
            .unwrap_or_else(|_| config.work_dir.clone())
            .display(),
        config.code_dir.display()
    );
    let labels: Vec<String> = config
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if labels.is_empty() {
        text.push_str("labels (none)\n");
    } else {
        text.push_str(&format!("labels {}\n", labels.join(",")));
    }
    if config.gpus.is_empty() {
        text.push_str("gpus 0 (runs asking for GPUs will not be placed here)\n");
    } else {
        text.push_str(&format!("gpus {}\n", config.gpus.len()));
    }
    for gpu in &config.gpus {
        let uuid = if gpu.uuid.is_empty() { "-" } else { &gpu.uuid };
        let memory = if gpu.memory_mib == 0 {
            "memory unknown".to_string()
        } else {
            format!("{} MiB", gpu.memory_mib)
        };
        text.push_str(&format!(
            "  gpu {} {uuid} {} {memory}\n",
            gpu.index, gpu.name
        ));
    }
    text
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // The verbs that talk to a coordinator given by URL take --token and --ca; the
    // others (`run`, `bench`: their own embedded coordinator) leave them unset.
    let security = match cli.command.security() {
        Some(args) => args.load()?,
        None => connect::ClientSecurity::default(),
    };
    connect::configure(security.clone());
    match cli.command {
        Command::Run(args) => allinone::run(args).await,
        Command::Train(args) => tokio::task::spawn_blocking(move || trainer::train(args)).await?,
        Command::Eval(args) => tokio::task::spawn_blocking(move || trainer::eval(args)).await?,
        Command::Coordinator(args) => coordinator(args).await,
        Command::Agent(args) => agent(args, security).await,
        Command::Sweep(command) => match command {
            SweepCommand::Submit { files, client } => client::sweep_submit(&client, &files).await,
            SweepCommand::Validate { file, json } => client::sweep_validate(&file, json),
            SweepCommand::Ls { project, client } => client::sweep_ls(&client, project).await,
            SweepCommand::Show { id, client } => client::sweep_show(&client, &id).await,
            SweepCommand::Watch { id, client } => client::sweep_watch(&client, &id).await,
            SweepCommand::Pause { id, client } => {
                client::sweep_action(&client, &id, client::Action::Pause).await
            }
            SweepCommand::Resume { id, client } => {
                client::sweep_action(&client, &id, client::Action::Resume).await
            }
            SweepCommand::Cancel { id, client } => {
                client::sweep_action(&client, &id, client::Action::Cancel).await
            }
        },
        Command::Runs(command) => match command {
            RunsCommand::Ls { query, client } => history::runs_ls(&client, &query).await,
            RunsCommand::Note {
                run,
                text,
                delete,
                client,
            } => history::update(&client, &run, text.as_deref(), &[], delete).await,
            RunsCommand::Tag { run, tags, client } => {
                history::update(&client, &run, None, &tags, None).await
            }
            RunsCommand::Compare {
                runs,
                metric,
                client,
            } => history::compare(&client, &runs, metric.as_deref()).await,
            RunsCommand::Metrics {
                run,
                attempt,
                format,
                client,
            } => history::metric_points(&client, &run, attempt.unwrap_or(0), &format).await,
            RunsCommand::Export {
                format,
                query,
                client,
            } => history::export(&client, &query, &format).await,
            RunsCommand::Watch {
                run,
                only_new,
                client,
            } => history::watch(&client, &run, only_new).await,
            RunsCommand::Show {
                run,
                log_lines,
                client,
            } => client::runs_show(&client, &run, log_lines).await,
        },
        Command::Agents(AgentsCommand::Ls { client }) => client::agents_ls(&client).await,
        Command::Leaderboard(args) => history::leaderboard(&args).await,
        Command::Agents(AgentsCommand::Enable { name, client }) => {
            client::agents_enable(&client, &name).await
        }
        Command::Agents(AgentsCommand::Forget {
            name,
            force,
            client,
        }) => client::agents_forget(&client, &name, force).await,
        Command::Artifacts(command) => artifacts::run(command).await,
        Command::Store(StoreCommand::Check { data, json }) => store_check(&data, json),
        Command::Bench(command) => bench::run(command).await,
        Command::Auth(command) => access::run(command),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Coordinator(_) | Command::Agent(_) => "info",
        _ => "warn",
    };
    init_tracing(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<ExitError>() {
                eprintln!("{}", exit.message);
                return ExitCode::from(exit.code);
            }
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
