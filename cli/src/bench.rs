//! `ladder bench`: measurements whose figures the README quotes.
//!
//! `dispatch` measures end-to-end dispatch throughput: a coordinator and N agents (in
//! this process, over loopback gRPC, with the durable store on disk) run a sweep of
//! no-op commands; the figure is runs completed per second from submission to the last
//! run's durable completion, every run going through placement, assignment, process
//! start, exit and the acknowledged `finished` report.

use std::time::Instant;

use clap::Subcommand;
use serde_json::json;

use crate::allinone::Embedded;
use crate::client;

#[derive(Subcommand)]
pub enum BenchCommand {
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
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Dispatch {
            runs,
            agents,
            slots,
            command,
            json,
        } => dispatch(runs, agents, slots, &command, json).await,
    }
}

async fn dispatch(
    runs: u64,
    agents: u32,
    slots: u32,
    command: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        runs >= 1 && agents >= 1 && slots >= 1,
        "--runs, --agents and --slots must be at least 1"
    );
    let dir = std::env::temp_dir().join(format!("ladder-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sweep_file = dir.join("bench.yaml");
    std::fs::write(
        &sweep_file,
        format!(
            "name: bench-dispatch\nproject: bench\nmethod: grid\nparallel: {}\nparameters:\n  i: {{distribution: int_uniform, min: 1, max: {runs}}}\ncommand: [{command:?}]\n",
            agents * slots
        ),
    )?;
    let names: Vec<(String, u32)> = (0..agents)
        .map(|i| (format!("bench-agent-{i}"), slots))
        .collect();
    let embedded = Embedded::start(&dir.join("data"), &names).await?;
    // Let every agent register before the clock starts.
    let started = Instant::now();
    loop {
        let channel = client::channel(&embedded.url).await?;
        let listed = ladder_proto::v1::agent_service_client::AgentServiceClient::new(channel)
            .list_agents(ladder_proto::v1::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if listed.iter().filter(|a| a.connected).count() == agents as usize {
            break;
        }
        anyhow::ensure!(
            started.elapsed().as_secs() < 30,
            "agents did not register within 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let sweep = client::submit(&embedded.url, &sweep_file).await?;
    let finished = client::watch(&embedded.url, &sweep.id, true).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let counts = finished.counts.unwrap_or_default();
    embedded.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let rate = counts.completed as f64 / elapsed;
    if json_output {
        println!(
            "{}",
            json!({"runs": runs, "agents": agents, "slots": slots, "completed": counts.completed, "failed": counts.failed, "seconds": elapsed, "runs_per_second": rate})
        );
    } else {
        println!(
            "dispatch: {} runs of {command:?} on {agents} agents x {slots} slots: {} completed, {} failed in {:.2}s = {:.1} runs/s",
            runs, counts.completed, counts.failed, elapsed, rate
        );
    }
    Ok(())
}
