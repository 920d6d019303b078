//! `ladder bench soak`: a coordinator at a team's scale. A real coordinator process is
//! filled with thousands of sweeps and a run of 100,000 steps while agents execute them;
//! then many clients watch that run while the common reads are timed. Reports the
//! latency percentiles of `sweep ls`, `runs show` and `runs ls`, and the coordinator
//! process's peak RSS and CPU time (read from /proc, so the benchmark's own agents and
//! clients do not count).

use super::percentile;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ladder_agent::{Agent, AgentConfig};
use ladder_limits::MAX_MESSAGE_BYTES;
use ladder_proto::v1 as pb;
use ladder_proto::v1::run_service_client::RunServiceClient;
use ladder_proto::v1::sweep_service_client::SweepServiceClient;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

use crate::client;

/// What `bench soak` does; the defaults are the scale the documentation quotes.
pub struct Soak {
    pub sweeps: u64,
    pub steps: u64,
    pub watchers: usize,
    pub agents: u32,
    pub calls: usize,
    pub json: bool,
}

/// Peak RSS (MiB) and CPU seconds (user + system) of process `pid`, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / per_second,
        _ => f64::NAN,
    };
    (peak_kib / 1024.0, cpu)
}

/// Starts `ladder coordinator` on `data` and returns it with its URL.
async fn start_coordinator(data: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the coordinator")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(addr) = line.strip_prefix("ladder coordinator listening on ") {
            let url = format!("http://{}", addr.trim());
            // Keep draining its stdout so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
    }
    anyhow::bail!("the coordinator exited before listening")
}

pub async fn run(soak: Soak) -> anyhow::Result<()> {
    anyhow::ensure!(
        soak.sweeps >= 1 && soak.steps >= 1 && soak.agents >= 1 && soak.calls >= 1,
        "--sweeps, --steps, --agents and --calls must be at least 1"
    );
    let dir = crate::bench::fresh_dir("ladder-bench-soak")?;
    let result = soak_in(&dir, &soak).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn soak_in(dir: &Path, soak: &Soak) -> anyhow::Result<()> {
    let (mut coordinator, url) = start_coordinator(&dir.join("data")).await?;
    let pid = coordinator.id().context("coordinator pid")?;
    // The coordinator serves the holder of its admin token: this benchmark.
    let token = std::fs::read_to_string(dir.join("data").join("admin-token"))
        .context("cannot read the coordinator's admin token")?
        .trim()
        .to_string();
    crate::connect::remember_token(&url, &token);
    let code = dir.join("code");
    std::fs::create_dir_all(&code)?;
    // The long run prints its points in bursts, so it is still running while watched.
    std::fs::write(
        code.join("steps.py"),
        format!(
            "import sys, time\nfor i in range(1, {steps} + 1):\n    sys.stdout.write('@ladder {{\"step\": %d, \"loss\": %r, \"acc\": %r, \"lr\": 0.1}}\\n' % (i, 1.0 / i, i / {steps}.0))\n    if i % 5000 == 0:\n        sys.stdout.flush()\n        time.sleep(0.5)\n",
            steps = soak.steps
        ),
    )?;
    let mut stops = Vec::new();
    let mut agents = Vec::new();
    for i in 0..soak.agents {
        let name = format!("soak-{i:02}");
        let mut config = AgentConfig::new(url.clone(), name.clone(), dir.join("work").join(&name));
        config.slots = 1;
        config.code_dir = code.clone();
        config.token = Some(token.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        agents.push(tokio::spawn(Agent::new(config).run(async move {
            let _ = stopped.await;
        })));
    }
    let channel = client::channel(&url).await?;
    let sweeps = SweepServiceClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut runs = RunServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // The long run first, so its agent is busy with it throughout.
    let long = sweeps
        .clone()
        .submit_sweep(pb::SubmitSweepRequest {
            file_name: "long.yaml".into(),
            yaml: "name: long\nproject: soak\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [python3, \"{{ladder.code_dir}}/steps.py\"]\n".into(),
            ..Default::default()
        })
        .await
        .map_err(client::status_error)?
        .into_inner()
        .sweep
        .context("no sweep")?;
    let filled = Instant::now();
    let padding = format!("# {}\n", "c".repeat(1200));
    use futures::StreamExt;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..soak.sweeps)
        .map(|i| {
            let mut sweeps = sweeps.clone();
            let yaml = format!(
                "{padding}name: s{i}\nproject: soak\nmethod: grid\nparameters:\n  x: {{value: {i}}}\ncommand: [\"true\"]\n"
            );
            async move {
                sweeps
                    .submit_sweep(pb::SubmitSweepRequest {
                        file_name: format!("s{i}.yaml"),
                        yaml,
                        ..Default::default()
                    })
                    .await
                    .map_err(client::status_error)?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for result in results {
        result?;
    }
    eprintln!(
        "submitted {} sweeps in {:.1}s",
        soak.sweeps,
        filled.elapsed().as_secs_f64()
    );
    // The long run's id, once it is placed.
    let long_run = loop {
        let page = runs
            .list_runs(pb::ListRunsRequest {
                sweep_id: long.id.clone(),
                ..Default::default()
            })
            .await
            .map_err(client::status_error)?
            .into_inner();
        if let Some(run) = page.runs.first() {
            break run.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Watchers follow the long run from its start while reads are timed.
    let mut watchers = Vec::new();
    for _ in 0..soak.watchers {
        let mut client = runs.clone();
        let run_id = long_run.clone();
        watchers.push(tokio::spawn(async move {
            let mut received = 0u64;
            let mut stream = client
                .watch_run(pb::WatchRunRequest {
                    run_id,
                    only_new: false,
                })
                .await?
                .into_inner();
            while let Some(message) = stream.message().await? {
                received += message.points.len() as u64;
            }
            Ok::<u64, tonic::Status>(received)
        }));
    }
    let (_, cpu_before) = process_usage(pid);
    let timed = Instant::now();
    let mut sweep_ls = Vec::with_capacity(soak.calls);
    let mut runs_show = Vec::with_capacity(soak.calls);
    let mut runs_ls = Vec::with_capacity(soak.calls);
    let mut sweeps_client = sweeps.clone();
    for _ in 0..soak.calls {
        let start = Instant::now();
        let page = sweeps_client
            .list_sweeps(pb::ListSweepsRequest {
                project: "soak".into(),
                page_size: 100,
                cursor: String::new(),
            })
            .await
            .map_err(client::status_error)?
            .into_inner();
        sweep_ls.push(start.elapsed());
        anyhow::ensure!(!page.sweeps.is_empty(), "sweep ls returned nothing");
        let start = Instant::now();
        runs.get_run(pb::GetRunRequest {
            run_id: long_run.clone(),
            log_tail: 50,
        })
        .await
        .map_err(client::status_error)?;
        runs_show.push(start.elapsed());
        let start = Instant::now();
        runs.list_runs(pb::ListRunsRequest {
            project: "soak".into(),
            limit: 50,
            ..Default::default()
        })
        .await
        .map_err(client::status_error)?;
        runs_ls.push(start.elapsed());
    }
    let timed_seconds = timed.elapsed().as_secs_f64();
    let mut watched = Vec::new();
    for watcher in watchers {
        watched.push(watcher.await?.map_err(client::status_error)?);
    }
    let (peak_mib, cpu_after) = process_usage(pid);
    let cpu_seconds = cpu_after - cpu_before;
    let total_cpu = cpu_after;
    let all_seen = watched.len();
    let points_received: u64 = watched.iter().sum();
    for stop in stops {
        let _ = stop.send(());
    }
    for agent in agents {
        agent.await??;
    }
    let _ = coordinator.start_kill();
    let _ = coordinator.wait().await;
    for list in [&mut sweep_ls, &mut runs_show, &mut runs_ls] {
        list.sort();
    }
    let figures = json!({
        "sweeps": soak.sweeps,
        "steps": soak.steps,
        "watchers": soak.watchers,
        "watchers_to_the_end": all_seen,
        "points_received_by_watchers": points_received,
        "agents": soak.agents,
        "calls": soak.calls,
        "sweep_ls_ms": {"p50": percentile(&sweep_ls, 0.5), "p99": percentile(&sweep_ls, 0.99)},
        "runs_show_ms": {"p50": percentile(&runs_show, 0.5), "p99": percentile(&runs_show, 0.99)},
        "runs_ls_ms": {"p50": percentile(&runs_ls, 0.5), "p99": percentile(&runs_ls, 0.99)},
        "coordinator_peak_rss_mib": peak_mib,
        "coordinator_cpu_seconds_while_timed": cpu_seconds,
        "timed_seconds": timed_seconds,
        "coordinator_cpu_seconds_total": total_cpu,
    });
    if soak.json {
        println!("{figures}");
    } else {
        println!(
            "soak: {} sweeps, a {}-step run watched by {} clients ({} to its end, {} points received in all), {} agents",
            soak.sweeps, soak.steps, soak.watchers, all_seen, points_received, soak.agents
        );
        for (name, list) in [
            ("sweep ls (page of 100)", &sweep_ls),
            ("runs show (long run)", &runs_show),
            ("runs ls --limit 50", &runs_ls),
        ] {
            println!(
                "  {name:<24} p50 {:>9.2} ms   p99 {:>9.2} ms   ({} calls)",
                percentile(list, 0.5),
                percentile(list, 0.99),
                list.len()
            );
        }
        println!(
            "  coordinator: peak RSS {peak_mib:.0} MiB, CPU {cpu_seconds:.1} s over the {timed_seconds:.1} s timed, {total_cpu:.1} s in all"
        );
    }
    Ok(())
}
