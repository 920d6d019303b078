//! `ladder bench`: measurements whose figures docs/internals/benchmarks.md quotes.
//!
//! `dispatch` measures end-to-end dispatch throughput: a coordinator and N agents (in
//! this process, over loopback gRPC, with the durable store on disk) run a sweep of
//! no-op commands; the figure is runs completed per second from submission to the last
//! run's durable completion, every run going through placement, assignment, process
//! start, exit and the acknowledged `finished` report.
//!
//! `search` measures search quality: random search, TPE (multivariate, univariate, and
//! multivariate with 8 trials in flight) and the GP method (sequential and with 8 trials
//! in flight) on four standard test functions (Branin, Hartmann6, Rosenbrock-4,
//! Ackley-5), `--seeds` runs of `--trials` trials each,
//! reporting the median simple regret (best value so far minus the global minimum) with
//! its interquartile range, and the proposal rate of `method: bayes` with 1,000 finished
//! trials in 6 dimensions. Pure computation, no coordinator.

use std::time::Instant;

use clap::Subcommand;
use serde_json::json;

use crate::allinone::Embedded;
use crate::client;

mod history;
mod memory;
mod soak;
mod testfns;

/// The `q` quantile (0..=1) of `sorted`, in milliseconds; NaN when empty.
fn percentile(sorted: &[std::time::Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Leaderboard and filtered sorted queries over a store filled with many runs.
    History {
        #[arg(long, default_value_t = 100_000)]
        runs: u64,
        #[arg(long, default_value_t = 100)]
        sweeps: u64,
        /// Timed calls of each query.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Store directory to create and keep (it must not exist or be empty); default: a
        /// fresh one under the temporary directory, removed after.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
        /// Only fill the store in `--data` and exit (the benchmark runs its fill in a
        /// child process this way, so that the RSS it reports is the coordinator's).
        #[arg(long, hide = true, requires = "data")]
        fill_only: bool,
    },
    /// Runs per second dispatched for a sweep of no-op commands.
    Dispatch {
        #[arg(long, default_value_t = 1000)]
        runs: u64,
        #[arg(long, default_value_t = 4)]
        agents: u32,
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// The command each run executes.
        #[arg(long, default_value = "true")]
        command: String,
        /// How agents track each run's processes: auto (as `ladder agent`), cgroup,
        /// subreaper, or none (process groups only, to measure what tracking costs).
        #[arg(long, default_value = "auto")]
        isolation: String,
        /// Where the agents' run directories go (default: the benchmark's temporary
        /// directory, beside the store). The store stays there, on disk and fsynced,
        /// whatever this says; see docs/internals/benchmarks.md for when a tmpfs here
        /// measures ladder rather than the filesystem.
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
        /// Runs each agent keeps waiting beyond its slots (`ladder agent --queue-depth`;
        /// default: twice its slots; 0: none, every run waits for a round trip).
        #[arg(long)]
        queue_depth: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Metric points per second stored durably: runs on in-process agents print
    /// `@ladder` points as fast as they can, streamed over gRPC and acknowledged only
    /// once fsynced. Needs python3.
    Ingest {
        #[arg(long, default_value_t = 8)]
        runs: u64,
        /// Points each run prints (one metric value and a step each).
        #[arg(long, default_value_t = 200_000)]
        points: u64,
        #[arg(long, default_value_t = 2)]
        agents: u32,
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// How agents track each run's processes: auto (as `ladder agent`), cgroup,
        /// subreaper, or none (process groups only, to measure what tracking costs).
        #[arg(long, default_value = "auto")]
        isolation: String,
        /// Where the agents' run directories go (default: the benchmark's temporary
        /// directory, beside the store). The store stays there, on disk and fsynced,
        /// whatever this says; see docs/internals/benchmarks.md for when a tmpfs here
        /// measures ladder rather than the filesystem.
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Training throughput of the built-in trainer (tokens per second, full fine-tuning
    /// with AdamW, forward + backward + update) on a fresh LLaMA model.
    Train {
        #[command(flatten)]
        shape: TrainShape,
        #[arg(long)]
        json: bool,
    },
    /// A coordinator process at a team's scale: thousands of sweeps, a long run watched
    /// by many clients, agents executing; p50/p99 of sweep ls, runs show and runs ls and
    /// the coordinator's peak RSS and CPU. Needs python3 for the long run.
    Soak {
        #[arg(long, default_value_t = 5_000)]
        sweeps: u64,
        /// Steps of the long run (3 metrics each).
        #[arg(long, default_value_t = 100_000)]
        steps: u64,
        #[arg(long, default_value_t = 200)]
        watchers: usize,
        #[arg(long, default_value_t = 16)]
        agents: u32,
        /// Timed calls of each read.
        #[arg(long, default_value_t = 100)]
        calls: usize,
        #[arg(long)]
        json: bool,
    },
    /// Peak memory of loading and scoring a ~1.5 B-parameter bf16 checkpoint, memory-mapped
    /// (`ladder eval`'s loader) against widened to f32 at load (training's, and the loader
    /// before memory-mapping).
    Memory(memory::MemoryArgs),
    /// Median simple regret of random search, TPE and the GP method on standard test
    /// functions, and TPE's proposal rate with a long history.
    Search {
        /// Runs per function and method (seeds 0..N, the same for both methods).
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Sequential trials per run.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// The first seed; runs use seeds first..first+seeds.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Trials in flight for the parallel variants (`parallel: N`), which propose with
        /// the others pending and count regret over finished trials.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// The methods to run, comma-separated: random, tpe, tpe-univariate, gp, and the
        /// parallel variants tpe-parallelN, tpe-parallelN-liar and gp-parallelN (N is
        /// `--parallel`).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "random,tpe,tpe-univariate,tpe-parallel8,tpe-parallel8-liar,gp,gp-parallel8"
        )]
        methods: Vec<String>,
        /// The functions to run, comma-separated: branin, hartmann6, rosenbrock4, ackley5.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "branin,hartmann6,rosenbrock4,ackley5"
        )]
        functions: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::History {
            runs,
            sweeps,
            calls,
            data,
            json,
            fill_only,
        } => {
            if fill_only {
                let data = data.expect("clap requires --data with --fill-only");
                return tokio::task::spawn_blocking(move || history::fill(&data, runs, sweeps))
                    .await?;
            }
            history::run(runs, sweeps, calls, data.as_deref(), json).await
        }
        BenchCommand::Dispatch {
            runs,
            agents,
            slots,
            command,
            isolation,
            work_dir,
            queue_depth,
            json,
        } => {
            let cluster = BenchCluster {
                agents,
                slots,
                isolation: &isolation,
                work_dir: work_dir.as_deref(),
                queue_depth,
            };
            dispatch(runs, &cluster, &command, json).await
        }
        BenchCommand::Search {
            seeds,
            trials,
            first_seed,
            parallel,
            methods,
            functions,
            json,
        } => search(
            first_seed..first_seed + seeds,
            trials,
            parallel,
            &methods,
            &functions,
            json,
        ),
        BenchCommand::Ingest {
            runs,
            points,
            agents,
            slots,
            isolation,
            work_dir,
            json,
        } => {
            let cluster = BenchCluster {
                agents,
                slots,
                isolation: &isolation,
                work_dir: work_dir.as_deref(),
                queue_depth: None,
            };
            ingest(runs, points, &cluster, json).await
        }
        BenchCommand::Soak {
            sweeps,
            steps,
            watchers,
            agents,
            calls,
            json,
        } => {
            soak::run(soak::Soak {
                sweeps,
                steps,
                watchers,
                agents,
                calls,
                json,
            })
            .await
        }
        BenchCommand::Memory(args) => {
            tokio::task::spawn_blocking(move || memory::run(args)).await?
        }
        BenchCommand::Train { shape, json } => {
            tokio::task::spawn_blocking(move || train(shape, json)).await?
        }
    }
}

/// The model and batch `ladder bench train` times.
#[derive(clap::Args)]
pub struct TrainShape {
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Steps timed (after 2 untimed warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Train with LoRA adapters of this rank on every projection instead.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Times optimizer steps of the real training loop: each step's tokens/s is reported by
/// the trainer itself (`log_every: 1`), the first two steps are not counted.
fn train(shape: TrainShape, json_output: bool) -> anyhow::Result<()> {
    use ladder_trainer::train::{train_with, Recorded, SingleRank};
    const WARMUP: u64 = 2;
    anyhow::ensure!(shape.steps >= 1, "--steps must be at least 1");
    let mut value = serde_json::json!({
        "model": {"init": "random", "arch": {
            "d_model": shape.d_model, "layers": shape.layers, "heads": shape.heads}},
        "data": {"task": "synthetic-arith", "examples": 20_000, "validation_sequences": 1},
        "steps": shape.steps + WARMUP,
        "batch_size": shape.batch_size,
        "seq_len": shape.seq_len,
        "log_every": 1,
        "device": shape.device,
        "save": {"enabled": false},
    });
    if let Some(rank) = shape.lora_rank {
        value["lora"] = serde_json::json!({"rank": rank, "targets": [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
    }
    let config = ladder_spec::train_config::TrainConfig::from_json(&value)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = ladder_trainer::train::device_for(&config.device, 0)?;
    let setup = ladder_trainer::train::setup(&config, std::path::Path::new("."), &device)?;
    let parameters = setup.model.config().parameter_count();
    let trainable: usize = setup
        .model
        .trainable()
        .iter()
        .map(|(_, var)| var.elem_count())
        .sum();
    let out = tempfile_dir()?;
    let mut recorded = Recorded::default();
    train_with(&config, setup, &out, &SingleRank, &mut recorded)?;
    let _ = std::fs::remove_dir_all(&out);
    let mut rates: Vec<f64> = recorded
        .metrics
        .iter()
        .filter(|(step, _)| *step > WARMUP)
        .filter_map(|(_, values)| {
            values
                .iter()
                .find(|(name, _)| name == "train/tokens_per_s")
                .map(|(_, v)| *v)
        })
        .collect();
    anyhow::ensure!(!rates.is_empty(), "no timed steps");
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let mean_step_ms = rates
        .iter()
        .map(|rate| (shape.batch_size * shape.seq_len) as f64 / rate * 1000.0)
        .sum::<f64>()
        / rates.len() as f64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if json_output {
        println!(
            "{}",
            serde_json::json!({
                "d_model": shape.d_model, "layers": shape.layers, "heads": shape.heads,
                "seq_len": shape.seq_len, "batch_size": shape.batch_size,
                "parameters": parameters, "trainable": trainable,
                "device": shape.device, "threads": threads, "timed_steps": rates.len(),
                "tokens_per_s_median": median, "step_ms_mean": mean_step_ms,
                "tokens_per_s_min": rates[0], "tokens_per_s_max": rates[rates.len() - 1],
            })
        );
    } else {
        println!(
            "model d{} x {} layers x {} heads, {:.2}M parameters ({:.2}M trainable), seq {} x batch {}, {} on {} threads",
            shape.d_model,
            shape.layers,
            shape.heads,
            parameters as f64 / 1e6,
            trainable as f64 / 1e6,
            shape.seq_len,
            shape.batch_size,
            shape.device,
            threads
        );
        println!(
            "{} timed steps: median {:.0} tokens/s (min {:.0}, max {:.0}), mean step {:.0} ms",
            rates.len(),
            median,
            rates[0],
            rates[rates.len() - 1],
            mean_step_ms
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    fresh_dir("ladder-bench-train")
}

/// A new, empty directory under the system's temporary directory, created here (never
/// one that already existed), so that removing it afterwards removes only what the
/// benchmark wrote.
pub(crate) fn fresh_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    fresh_dir_in(&std::env::temp_dir(), prefix)
}

/// A new, empty directory under `base`, created here.
fn fresh_dir_in(base: &std::path::Path, prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    for attempt in 0u32..1000 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "{prefix}-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(anyhow::anyhow!(
                    "cannot create a directory in {}: {error}",
                    base.display()
                ))
            }
        }
    }
    anyhow::bail!("cannot find a free directory name in {}", base.display())
}

fn search(
    seed_range: std::ops::Range<u64>,
    trials: usize,
    parallel: usize,
    method_names: &[String],
    function_names: &[String],
    json_output: bool,
) -> anyhow::Result<()> {
    use testfns::{benchmark, proposal_rate, Method, TestFunction};

    let seeds = seed_range.end - seed_range.start;
    anyhow::ensure!(
        seeds >= 1 && trials >= 1 && parallel >= 1,
        "--seeds, --trials and --parallel must be at least 1"
    );
    // The default names say 8; with another --parallel they mean that one.
    let mut methods = Vec::new();
    for name in method_names {
        let name = name.replace("parallel8", &format!("parallel{parallel}"));
        let method = Method::from_name(&name, parallel).ok_or_else(|| {
            anyhow::anyhow!("--methods: unknown method {name:?} (expected random, tpe, tpe-univariate, gp, tpe-parallel{parallel}, tpe-parallel{parallel}-liar or gp-parallel{parallel})")
        })?;
        methods.push(method);
    }
    let mut functions = Vec::new();
    for name in function_names {
        let function = TestFunction::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| anyhow::anyhow!("--functions: unknown function {name:?} (expected branin, hartmann6, rosenbrock4 or ackley5)"))?;
        functions.push(function);
    }
    let mut checkpoints: Vec<usize> = [25, 40, 50, 100]
        .into_iter()
        .filter(|&t| t < trials)
        .collect();
    checkpoints.push(trials);
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut wins = 0;
    for &function in &functions {
        let mut final_medians = Vec::new();
        for &method in &methods {
            let began = Instant::now();
            let curves = benchmark(function, method, seed_range.clone(), trials);
            let seconds = began.elapsed().as_secs_f64();
            let at: Vec<_> = checkpoints
                .iter()
                .map(|&t| {
                    (
                        t,
                        curves.median_at(t),
                        curves.quantile_at(t, 0.25),
                        curves.quantile_at(t, 0.75),
                    )
                })
                .collect();
            final_medians.push((method, curves.median_at(trials)));
            rows.push((function, method, at, seconds));
        }
        let final_of = |wanted: Method| {
            final_medians
                .iter()
                .find(|(method, _)| *method == wanted)
                .map(|(_, median)| *median)
        };
        if let (Some(random), Some(tpe)) = (final_of(Method::Random), final_of(Method::Tpe)) {
            if tpe < random {
                wins += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Proposal cost with a long history: 1,000 completed trials in 6 dimensions.
    let (speed_dims, speed_observed, speed_rounds, speed_calls) = (6, 1000, 7, 100);
    let (multivariate_rate, multivariate_best) =
        proposal_rate(speed_dims, speed_observed, false, speed_rounds, speed_calls);
    let (univariate_rate, univariate_best) =
        proposal_rate(speed_dims, speed_observed, true, speed_rounds, speed_calls);
    if json_output {
        let rows: Vec<_> = rows
            .iter()
            .map(|(function, method, at, seconds)| {
                json!({
                    "function": function.name(),
                    "global_min": function.global_min(),
                    "method": method.name(),
                    "seconds": seconds,
                    "regret": at.iter().map(|(t, median, q1, q3)| json!({
                        "trials": t, "median": median, "q25": q1, "q75": q3,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"seeds": seeds, "first_seed": seed_range.start, "trials": trials, "parallel": parallel, "seconds": elapsed,
                "proposals_per_second": {"dims": speed_dims, "observed": speed_observed,
                    "rounds": speed_rounds, "calls_per_round": speed_calls,
                    "tpe": multivariate_rate, "tpe_fastest_round": multivariate_best,
                    "tpe_univariate": univariate_rate, "tpe_univariate_fastest_round": univariate_best}, "tpe_wins": wins, "functions": functions.len(), "results": rows})
        );
        return Ok(());
    }
    println!(
        "search: median simple regret (best so far - global minimum) [interquartile range] over seeds {}..{}",
        seed_range.start,
        seed_range.end - 1
    );
    let mut header = format!("{:<12} {:<22}", "function", "method");
    for t in &checkpoints {
        header.push_str(&format!(" {:>28}", format!("@{t}")));
    }
    println!("{header}  seconds");
    for (function, method, at, seconds) in &rows {
        let mut line = format!("{:<12} {:<22}", function.name(), method.name());
        for (_, median, q1, q3) in at {
            line.push_str(&format!(
                " {:>28}",
                format!("{} [{}, {}]", sig(*median), sig(*q1), sig(*q3))
            ));
        }
        println!("{line}  {seconds:>7.2}");
        if let Some(sequential) = method.sequential() {
            // Parallel against sequential: the ratios of the medians.
            let median_of = |wanted: Method| {
                rows.iter()
                    .find(|row| row.0 == *function && row.1 == wanted)
                    .map(|row| row.2.iter().map(|a| a.1).collect::<Vec<f64>>())
            };
            if let Some(sequential_medians) = median_of(sequential) {
                let batch = median_of(*method).unwrap_or_default();
                let mut line = format!(
                    "{:<12} {:<22}",
                    function.name(),
                    format!("{} / {}", method.name(), sequential.name())
                );
                for (b, q) in batch.iter().zip(&sequential_medians) {
                    line.push_str(&format!(" {:>28}", format!("x{:.2}", b / q)));
                }
                println!("{line}");
            }
        }
    }
    println!(
        "tpe beats random at {trials} trials (median) on {wins}/{} functions; {elapsed:.2}s in all",
        functions.len()
    );
    println!(
        "proposals/s with {speed_observed} completed trials in {speed_dims} dims (method: bayes, through propose; median [fastest] of {speed_rounds} rounds of {speed_calls}): tpe {multivariate_rate:.0} [{multivariate_best:.0}], tpe-univariate {univariate_rate:.0} [{univariate_best:.0}]"
    );
    Ok(())
}

/// Four significant digits, fixed notation where that stays short.
fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-4..6).contains(&magnitude) {
        format!("{:.*}", (3 - magnitude).max(0) as usize, x)
    } else {
        format!("{x:.3e}")
    }
}

/// Starts an embedded coordinator with `agents` agents of `slots` slots in a fresh
/// directory and waits until every agent is connected.
/// The in-process cluster a benchmark runs on.
struct BenchCluster<'a> {
    agents: u32,
    slots: u32,
    /// `--isolation`: auto, cgroup, subreaper or none.
    isolation: &'a str,
    /// `--work-dir`: where the agents' run directories go instead of beside the store.
    work_dir: Option<&'a std::path::Path>,
    /// `--queue-depth` of every agent (`None`: the agent's default).
    queue_depth: Option<u32>,
}

/// A coordinator with its store in a fresh temporary directory (returned, with the
/// agents' fresh work directory; both removed by the caller) and its agents, once
/// every agent is connected.
async fn bench_cluster(
    cluster: &BenchCluster<'_>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, Embedded)> {
    let (agents, slots) = (cluster.agents, cluster.slots);
    anyhow::ensure!(
        agents >= 1 && slots >= 1,
        "--agents and --slots must be at least 1"
    );
    let isolation = match cluster.isolation {
        "none" => None,
        other => Some(
            ladder_agent::contain::Isolation::parse(other)
                .map_err(|e| anyhow::anyhow!("--isolation: {e} or none"))?,
        ),
    };
    let dir = fresh_dir("ladder-bench")?;
    let work = match cluster.work_dir {
        Some(base) => fresh_dir_in(base, "ladder-bench-work")?,
        None => dir.join("work"),
    };
    let names: Vec<(String, u32)> = (0..agents)
        .map(|i| (format!("bench-agent-{i}"), slots))
        .collect();
    let embedded = Embedded::start_with_gpus(
        &dir.join("data"),
        &work,
        &names,
        &[],
        isolation,
        cluster.queue_depth,
    )
    .await?;
    let started = Instant::now();
    loop {
        let channel = client::channel(&embedded.url).await?;
        let listed = ladder_proto::v1::agent_service_client::AgentServiceClient::new(channel)
            .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES)
            .list_agents(ladder_proto::v1::ListAgentsRequest::default())
            .await?
            .into_inner()
            .agents;
        if listed.iter().filter(|a| a.connected).count() == agents as usize {
            return Ok((dir, work, embedded));
        }
        anyhow::ensure!(
            started.elapsed().as_secs() < 30,
            "agents did not register within 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes `yaml` as DIR/`file`, submits it and follows it to its end: the sweep id,
/// its final counts and the seconds from submission to the last durable completion.
async fn timed_sweep(
    embedded: &Embedded,
    dir: &std::path::Path,
    file: &str,
    yaml: String,
) -> anyhow::Result<(String, ladder_proto::v1::RunCounts, f64)> {
    let sweep_file = dir.join(file);
    std::fs::write(&sweep_file, yaml)?;
    let start = Instant::now();
    let sweep = client::submit(&embedded.url, &sweep_file).await?;
    let finished = client::watch(&embedded.url, &sweep.id, true).await?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok((sweep.id, finished.counts.unwrap_or_default(), elapsed))
}

/// The program of `bench ingest`: POINTS `@ladder` lines as fast as Python writes them.
const INGEST_PROGRAM: &str = r#"
import sys
points = int(sys.argv[1])
out = sys.stdout
for step in range(points):
    out.write('@ladder {"step": %d, "loss": %.6f}\n' % (step, 1.0 / (step + 1)))
out.flush()
"#;

async fn ingest(
    runs: u64,
    points: u64,
    cluster: &BenchCluster<'_>,
    json_output: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        runs >= 1 && points >= 1,
        "--runs and --points must be at least 1"
    );
    let (agents, slots) = (cluster.agents, cluster.slots);
    let (dir, work, embedded) = bench_cluster(cluster).await?;
    let program = dir.join("emit.py");
    std::fs::write(&program, INGEST_PROGRAM)?;
    let yaml = format!(
        "name: bench-ingest\nproject: bench\nmethod: grid\nparallel: {}\nparameters:\n  i: {{distribution: int_uniform, min: 1, max: {runs}}}\ncommand: [python3, {:?}, \"{points}\"]\n",
        agents * slots,
        program.display().to_string()
    );
    let (sweep_id, counts, elapsed) = timed_sweep(&embedded, &dir, "ingest.yaml", yaml).await?;
    // Every point of every run must be stored for the figure to count.
    let channel = client::channel(&embedded.url).await?;
    let mut runs_client = ladder_proto::v1::run_service_client::RunServiceClient::new(channel)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    let listed = runs_client
        .list_runs(ladder_proto::v1::ListRunsRequest {
            sweep_id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .runs;
    let stored: u64 = listed
        .iter()
        .flat_map(|run| &run.attempts)
        .map(|attempt| attempt.metric_points)
        .sum();
    embedded.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&work);
    let reasons: std::collections::BTreeSet<&str> = listed
        .iter()
        .flat_map(|run| &run.attempts)
        .map(|attempt| attempt.reason.as_str())
        .collect();
    anyhow::ensure!(
        counts.completed == runs && stored == runs * points,
        "not every point was stored: {} of {runs} runs completed, {stored} of {} points stored (attempts ended with: {reasons:?})",
        counts.completed,
        runs * points
    );
    let rate = stored as f64 / elapsed;
    if json_output {
        println!(
            "{}",
            json!({"runs": runs, "points_per_run": points, "agents": agents, "slots": slots, "points": stored, "seconds": elapsed, "points_per_second": rate})
        );
    } else {
        println!(
            "ingest: {runs} runs x {points} points on {agents} agents x {slots} slots: {stored} points stored durably in {elapsed:.2}s = {rate:.0} points/s (process start and exit included)"
        );
    }
    Ok(())
}

async fn dispatch(
    runs: u64,
    cluster: &BenchCluster<'_>,
    command: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let (agents, slots) = (cluster.agents, cluster.slots);
    ladder_timeline::enable();
    let (dir, work, embedded) = bench_cluster(cluster).await?;
    let yaml = format!(
        "name: bench-dispatch\nproject: bench\nmethod: grid\nparallel: {}\nparameters:\n  i: {{distribution: int_uniform, min: 1, max: {runs}}}\ncommand: [{command:?}]\n",
        agents * slots
    );
    let (_, counts, elapsed) = timed_sweep(&embedded, &dir, "bench.yaml", yaml).await?;
    embedded.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&work);
    let rate = counts.completed as f64 / elapsed;
    let mut latencies = ladder_timeline::latencies(&ladder_timeline::take());
    let figures: Vec<(&str, &str, &mut Vec<std::time::Duration>)> = vec![
        (
            "slot_freed_to_process_started",
            "process exited -> next started there",
            &mut latencies.slot_to_started,
        ),
        (
            "slot_freed_to_lease_sent",
            "  dispatched: report, placement, commit",
            &mut latencies.slot_to_lease_sent,
        ),
        (
            "lease_sent_to_received",
            "  lease message to the agent",
            &mut latencies.lease_sent_to_received,
        ),
        (
            "lease_received_to_process_started",
            "  run dir, log, cgroup, spawn",
            &mut latencies.received_to_started,
        ),
        (
            "process_exited_to_completion_durable",
            "process exited -> completion durable",
            &mut latencies.exited_to_durable,
        ),
    ];
    let mut latency_json = serde_json::Map::new();
    let mut latency_lines = Vec::new();
    for (key, label, samples) in figures {
        samples.sort();
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        latency_json.insert(
            key.into(),
            json!({"p50_ms": p50, "p99_ms": p99, "samples": samples.len()}),
        );
        latency_lines.push(format!(
            "  {label:<38} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  ({} samples)",
            samples.len()
        ));
    }
    latency_json.insert(
        "started_from_agent_queue".into(),
        json!(latencies.from_queue),
    );
    latency_lines.insert(
        1,
        format!(
            "    {} of them started from the agent's queue (no round trip); the others:",
            latencies.from_queue
        ),
    );
    if json_output {
        println!(
            "{}",
            json!({"runs": runs, "agents": agents, "slots": slots, "completed": counts.completed, "failed": counts.failed, "seconds": elapsed, "runs_per_second": rate, "latency": latency_json})
        );
    } else {
        println!(
            "dispatch: {} runs of {command:?} on {agents} agents x {slots} slots: {} completed, {} failed in {:.2}s = {:.1} runs/s",
            runs, counts.completed, counts.failed, elapsed, rate
        );
        for line in latency_lines {
            println!("{line}");
        }
    }
    Ok(())
}
