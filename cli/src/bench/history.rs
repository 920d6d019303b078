//! `ladder bench history`: how fast the shared history answers on a large store.
//!
//! Fills a fresh store directly through [`SledStore::put_new_runs`] (batched; `--sweeps`
//! completed sweeps of one project, each run with 10 float parameters `p0..p9`, 5
//! metrics `m0..m4` and one completed attempt; the sweeps' objective is `m0`,
//! maximised), then serves it with a real coordinator inside this process on loopback
//! and times, through gRPC, `--calls` leaderboards (top 10 by the objective, an index
//! walk), `--calls` filtered pages sorted by a metric (`runs ls --project bench --where
//! 'params.p0 < 0.5 and status = completed' --sort -metrics.m1 --limit 50`, a metric
//! index walk with a filter) and `--calls` filtered pages sorted by a parameter (the same
//! with `--sort -params.p1`, a parameter index walk with a filter), plus one call of a
//! query no index serves (sorted by creation time: a scan). The fill runs in a child
//! process (`--fill-only`); RSS is then this process's `VmRSS` from /proc/self/status:
//! the coordinator and the client, which run in-process.

use super::percentile;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ladder_coordinator::model::{now_ms, AttemptOutcome, AttemptRecord, RunRecord, SweepRecord};
use ladder_coordinator::store::{SledStore, Store};
use ladder_metrics::summary::{MetricSummary, Reduction};
use ladder_proto::v1 as pb;
use ladder_proto::v1::run_service_client::RunServiceClient;
use ladder_spec::ParamValue;
use ladder_types::{RunStatus, SweepStatus};
use serde_json::json;

use crate::allinone::Embedded;
use crate::client;

/// Runs handed to [`SledStore::put_new_runs`] at once. It sorts their index keys before
/// writing them, so a larger window rewrites fewer index pages but holds more memory: at
/// a million runs, windows of 100,000 filled faster (578 s against 734 s) to a smaller
/// store (6523 MiB against 7235 MiB) than windows of 10,000, with a peak RSS about 4 GiB
/// higher (11.6 GiB against 7.5 GiB, both measured with the fill in the serving process).
const BATCH: u64 = 10_000;

/// A small deterministic generator (SplitMix64), so every fill is the same.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The largest RSS any finished child process reached (`getrusage(RUSAGE_CHILDREN)`).
fn children_peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let result = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if result != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&path),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Times `calls` calls of one page query, sorted; checks each page is full.
async fn time_pages(
    service: &mut RunServiceClient<crate::connect::CoordinatorChannel>,
    request: &pb::ListRunsRequest,
    calls: usize,
    runs: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let listed = service
            .list_runs(request.clone())
            .await
            .map_err(client::status_error)?
            .into_inner();
        times.push(start.elapsed());
        anyhow::ensure!(
            listed.runs.len() == 50.min(runs as usize)
                || !listed.next_cursor.is_empty()
                || runs < 200,
            "page of {} runs",
            listed.runs.len()
        );
    }
    times.sort();
    Ok(times)
}

/// Fills a fresh store in `data` (see the module doc).
pub fn fill(data: &Path, runs: u64, sweeps: u64) -> anyhow::Result<()> {
    let store = SledStore::open(data)?;
    let per_sweep = runs.div_ceil(sweeps);
    let mut random = SplitMix(42);
    let start_ms = now_ms() - 86_400_000;
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(BATCH as usize);
    for s in 0..sweeps {
        let count = per_sweep.min(runs - written);
        if count == 0 {
            break;
        }
        let mut yaml = format!(
            "name: bench-{s}\nproject: bench\nmethod: random\nmax_runs: {count}\nmetric: {{name: m0, goal: maximize}}\nparameters:\n"
        );
        for p in 0..10 {
            yaml.push_str(&format!(
                "  p{p}: {{distribution: uniform, min: 0, max: 1}}\n"
            ));
        }
        yaml.push_str("command: [\"true\"]\n");
        let spec = ladder_spec::parse_sweep("bench.yaml", &yaml)
            .map_err(|e| anyhow::anyhow!("bench sweep: {e}"))?;
        let sweep_id = format!("bench{s:04}");
        let created_ms = start_ms + s as i64 * 1000;
        let mut record = SweepRecord {
            id: sweep_id.clone(),
            spec,
            file_name: "bench.yaml".into(),
            yaml,
            status: SweepStatus::Completed,
            created_ms,
            ended_ms: Some(created_ms + 1000),
            planned_runs: count,
            created_runs: count,
            owner: "bench".into(),
            git_commit: String::new(),
            git_dirty: false,
        };
        record.ended_ms = Some(created_ms + 1000);
        store.put_sweep(&record)?;
        for index in 0..count {
            let params = (0..10)
                .map(|p| (format!("p{p}"), ParamValue::Float(random.next_f64())))
                .collect();
            let last_metrics: BTreeMap<String, f64> = (0..5)
                .map(|m| (format!("m{m}"), random.next_f64()))
                .collect();
            // As the scheduler keeps them for a run that reported once, at step 1.
            let summaries = last_metrics
                .iter()
                .map(|(name, value)| {
                    let summary = MetricSummary::first(*value, Some(1), Reduction::Last);
                    (name.clone(), summary)
                })
                .collect();
            let created = created_ms + index as i64;
            batch.push(RunRecord {
                id: format!("{sweep_id}-{index:06}"),
                sweep_id: sweep_id.clone(),
                project: "bench".into(),
                index,
                params,
                argv: vec!["true".into()],
                status: RunStatus::Completed,
                attempts: vec![AttemptRecord {
                    outcome: AttemptOutcome::Completed,
                    exit_code: Some(0),
                    reason: "exit code 0".into(),
                    ended_ms: Some(created + 500),
                    acked_seq: 2,
                    metric_points: 1,
                    ..AttemptRecord::running(
                        1,
                        written + 1,
                        format!("agent-{}", index % 16),
                        Vec::new(),
                        created,
                    )
                }],
                last_metrics,
                last_step: Some(1),
                created_ms: created,
                ended_ms: Some(created + 500),
                tags: Default::default(),
                notes: Vec::new(),
                summaries,
                info: Default::default(),
                metrics_dropped: 0,
                next_note_id: 0,
                artifacts: Vec::new(),
            });
            written += 1;
            if batch.len() as u64 == BATCH {
                store.put_new_runs(&batch)?;
                batch.clear();
            }
        }
    }
    store.put_new_runs(&batch)?;
    store.commit()?;
    // Where the bytes go, before sled's own overhead (the parent reports the size on
    // disk).
    for tree in store.tree_usage()? {
        eprintln!(
            "  tree {:<15} {:>9} records  {:>7.0} B/run  (keys {:.0}, values {:.0})",
            tree.tree,
            tree.records,
            (tree.key_bytes + tree.value_bytes) as f64 / runs as f64,
            tree.key_bytes as f64 / runs as f64,
            tree.value_bytes as f64 / runs as f64,
        );
    }
    Ok(())
}

pub async fn run(
    runs: u64,
    sweeps: u64,
    calls: usize,
    data: Option<&Path>,
    json_output: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        runs >= 1 && sweeps >= 1 && calls >= 1,
        "--runs, --sweeps and --calls must be at least 1"
    );
    // The benchmark fills a store of its own: a directory it creates, never one that
    // exists (it could be a live coordinator's), and removes only a temporary one.
    let (data, temporary) = match data {
        Some(dir) => {
            match std::fs::read_dir(dir) {
                Ok(mut entries) => anyhow::ensure!(
                    entries.next().is_none(),
                    "--data {}: the directory exists and is not empty; the benchmark fills a new store and needs a directory that does not exist yet (or is empty)",
                    dir.display()
                ),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => anyhow::bail!("--data {}: {error}", dir.display()),
            }
            (dir.to_path_buf(), false)
        }
        None => (crate::bench::fresh_dir("ladder-bench-history")?, true),
    };
    let began = Instant::now();
    // In a child process: what the fill leaves in this process's heap (sled's freed
    // nodes are not all handed back to the system) would otherwise count as the
    // coordinator's memory.
    let status = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "history", "--fill-only", "--runs"])
        .arg(runs.to_string())
        .arg("--sweeps")
        .arg(sweeps.to_string())
        .arg("--data")
        .arg(&data)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "filling the store failed: {status}");
    let fill_seconds = began.elapsed().as_secs_f64();
    let fill_peak_mib = children_peak_rss_mib();
    let filled_bytes = dir_size(&data);
    eprintln!(
        "filled {runs} runs in {fill_seconds:.1}s ({:.0} MiB on disk); serving",
        filled_bytes as f64 / 1048576.0
    );

    let opened = Instant::now();
    let embedded = Embedded::start(&data, &[]).await?;
    let open_seconds = opened.elapsed().as_secs_f64();
    let mut service = RunServiceClient::new(client::channel(&embedded.url).await?)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);

    let mut leaderboard = Vec::with_capacity(calls);
    let mut top = None;
    for _ in 0..calls {
        let start = Instant::now();
        let board = service
            .leaderboard(pb::LeaderboardRequest {
                project: "bench".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .map_err(client::status_error)?
            .into_inner();
        leaderboard.push(start.elapsed());
        anyhow::ensure!(
            board.rows.len() == 10.min(runs as usize),
            "leaderboard returned {} rows",
            board.rows.len()
        );
        top = board.rows.first().map(|r| r.value);
    }
    let request = pb::ListRunsRequest {
        project: "bench".into(),
        r#where: "params.p0 < 0.5 and status = completed".into(),
        sort: vec!["-metrics.m1".into()],
        limit: 50,
        ..Default::default()
    };
    let page = time_pages(&mut service, &request, calls, runs).await?;
    let by_param = pb::ListRunsRequest {
        sort: vec!["-params.p1".into()],
        ..request.clone()
    };
    let param_page = time_pages(&mut service, &by_param, calls, runs).await?;
    let scan_calls = 1;
    let mut scan = Vec::new();
    for _ in 0..scan_calls {
        let start = Instant::now();
        service
            .list_runs(pb::ListRunsRequest {
                project: "bench".into(),
                sort: vec!["-created".into()],
                limit: 50,
                ..Default::default()
            })
            .await
            .map_err(client::status_error)?;
        scan.push(start.elapsed());
    }
    let rss = rss_mib();
    embedded.stop().await?;
    let store_bytes = dir_size(&data);
    if temporary {
        let _ = std::fs::remove_dir_all(&data);
    }
    leaderboard.sort();
    scan.sort();
    let figures = json!({
        "runs": runs,
        "sweeps": sweeps,
        "calls": calls,
        "fill_seconds": fill_seconds,
        "open_seconds": open_seconds,
        "leaderboard_top10_ms": {"p50": percentile(&leaderboard, 0.5), "p99": percentile(&leaderboard, 0.99)},
        "filtered_sorted_page50_ms": {"p50": percentile(&page, 0.5), "p99": percentile(&page, 0.99)},
        "filtered_param_sorted_page50_ms": {"p50": percentile(&param_page, 0.5), "p99": percentile(&param_page, 0.99)},
        "scan_sorted_by_created_page50_ms": {"p50": percentile(&scan, 0.5), "max": percentile(&scan, 1.0), "calls": scan_calls},
        "rss_mib": rss,
        "fill_peak_rss_mib": fill_peak_mib,
        "store_mib": store_bytes as f64 / 1048576.0,
        "best_m0": top,
    });
    if json_output {
        println!("{figures}");
        return Ok(());
    }
    println!("history: {runs} runs in {sweeps} sweeps of one project (10 params, 5 metrics each); filled in {fill_seconds:.1}s, coordinator opened in {open_seconds:.1}s");
    println!(
        "  leaderboard top 10 by objective        p50 {:>8.2} ms   p99 {:>8.2} ms   ({calls} calls)",
        percentile(&leaderboard, 0.5),
        percentile(&leaderboard, 0.99)
    );
    println!(
        "  runs ls --where .. --sort -m1 --limit 50  p50 {:>8.2} ms   p99 {:>8.2} ms   ({calls} calls)",
        percentile(&page, 0.5),
        percentile(&page, 0.99)
    );
    println!(
        "  runs ls --where .. --sort -params.p1 --limit 50  p50 {:>8.2} ms   p99 {:>8.2} ms   ({calls} calls)",
        percentile(&param_page, 0.5),
        percentile(&param_page, 0.99)
    );
    println!(
        "  runs ls --sort -created --limit 50 (not indexed: a scan)  {:>8.1} ms   ({scan_calls} call)",
        percentile(&scan, 1.0)
    );
    println!(
        "  RSS of the coordinator (and client) in this process {rss:.0} MiB; store on disk {:.0} MiB; the fill (a child process) peaked at {fill_peak_mib:.0} MiB",
        store_bytes as f64 / 1048576.0
    );
    Ok(())
}
