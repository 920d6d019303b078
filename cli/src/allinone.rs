//! `ladder run FILE`: the whole system on one machine. An embedded coordinator (store in
//! `--data`, `./.ladder` by default) and a local agent serve one sweep; progress is drawn
//! on stderr and the runs are ranked by the sweep's metric at the end. The embedded
//! coordinator requires the admin token of its data directory, as `ladder coordinator`
//! without `--auth` does, so no other user of the machine can reach it.

use std::path::Path;

use anyhow::Context;
use ladder_agent::contain::{Containment, Isolation};
use ladder_agent::gpus::GpuSelection;
use ladder_agent::{Agent, AgentConfig};
use ladder_coordinator::auth::Authorizer;
use ladder_coordinator::local_token::{self, RuntimeFile};
use ladder_coordinator::{Coordinator, CoordinatorConfig, LeaseConfig};
use ladder_proto::v1 as pb;
use serde_json::json;
use tokio::sync::oneshot;

use crate::output::{self, format_number};
use crate::{client, ExitError, RunArgs};

/// A coordinator and agents running inside this process, on a loopback port.
pub struct Embedded {
    pub url: String,
    /// The web pages' sign-in link, carrying the admin token (see `ladder run`).
    pub signin_url: String,
    stops: Vec<oneshot::Sender<()>>,
    agents: Vec<tokio::task::JoinHandle<Result<(), ladder_agent::AgentError>>>,
    server: tokio::task::JoinHandle<Result<(), ladder_coordinator::CoordinatorError>>,
    server_stop: oneshot::Sender<()>,
    /// Lets this user's other clients find the token; removed at [`Embedded::stop`].
    runtime_file: Option<RuntimeFile>,
}

impl Embedded {
    /// Starts a coordinator on `data` and one agent per entry of `agents` (name, slots).
    pub async fn start(data: &Path, agents: &[(String, u32)]) -> anyhow::Result<Embedded> {
        let work = data.join("work");
        Embedded::start_with_gpus(data, &work, agents, &[], Some(Isolation::Auto), None).await
    }

    /// Like [`Embedded::start`], the first agent offering `gpus`; each agent's work
    /// directory is `work/NAME`.
    pub async fn start_with_gpus(
        data: &Path,
        work: &Path,
        agents: &[(String, u32)],
        gpus: &[ladder_types::Gpu],
        isolation: Option<Isolation>,
        queue_depth: Option<u32>,
    ) -> anyhow::Result<Embedded> {
        let token = local_token::load_or_create(data)
            .with_context(|| format!("cannot keep the admin token in {}", data.display()))?;
        let coordinator = Coordinator::open(CoordinatorConfig {
            data_dir: data.to_path_buf(),
            lease: LeaseConfig::default(),
            // Loopback, and only for the holder of the token: this user.
            auth: Some(Authorizer::local(&crate::connect::declared_user(), &token)),
            tls: None,
            artifacts: None,
        })
        .with_context(|| format!("failed to open the store in {}", data.display()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind a loopback port")?;
        let address = listener.local_addr()?;
        let url = format!("http://{address}");
        crate::connect::remember_token(&url, &token);
        let runtime_file = RuntimeFile::write(address, &url, &token, data)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot write the runtime file of the embedded coordinator")
            })
            .ok();
        let (server_stop, server_stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(coordinator.serve(listener, async move {
            let _ = server_stopped.await;
        }));
        let mut stops = Vec::new();
        let mut handles = Vec::new();
        // None: process groups only (benchmarks measuring what tracking costs).
        let containment = isolation
            .map(Containment::set_up)
            .transpose()
            .map_err(|message| anyhow::anyhow!(message))?;
        for (number, (name, slots)) in agents.iter().enumerate() {
            let mut config = AgentConfig::new(url.clone(), name.clone(), work.join(name));
            config.slots = *slots;
            config.queue_depth = queue_depth;
            config.token = Some(token.clone());
            config.containment = containment.clone();
            if number == 0 {
                config.gpus = gpus.to_vec();
            }
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            handles.push(tokio::spawn(Agent::new(config).run(async move {
                let _ = stopped.await;
            })));
        }
        let signin_url = format!("{url}/signin?token={token}");
        Ok(Embedded {
            url,
            signin_url,
            stops,
            agents: handles,
            server,
            server_stop,
            runtime_file,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for agent in self.agents {
            agent.await??;
        }
        let _ = self.server_stop.send(());
        self.server.await??;
        drop(self.runtime_file);
        Ok(())
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Validate before starting anything.
    let (_, _, spec) = client::read_sweep(&args.file)?;
    let slots = match args.slots {
        Some(0) => {
            return Err(ExitError {
                code: 2,
                message: "--slots must be at least 1".into(),
            }
            .into())
        }
        Some(slots) => slots,
        None => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    };
    let selection = GpuSelection::parse(&args.gpus)?;
    let gpus = tokio::task::spawn_blocking(move || ladder_agent::gpus::resolve(&selection))
        .await?
        .context("failed to discover this node's GPUs")?;
    let embedded = Embedded::start_with_gpus(
        &args.data,
        &args.data.join("work"),
        &[("local".to_string(), slots)],
        &gpus,
        Some(Isolation::Auto),
        None,
    )
    .await?;
    let sweep = client::submit(&embedded.url, &args.file).await?;
    eprintln!(
        "sweep {} \"{}\": {} runs ({}), {} at a time on {} local slots; store in {}; \
         coordinator {} (your clients find its token)",
        sweep.id,
        spec.name,
        sweep.planned_runs,
        sweep.method,
        sweep.parallel,
        slots,
        args.data.display(),
        embedded.url
    );
    // A browser follows the sweep live from here (the link signs it in with the token).
    eprintln!("web ui: {}&next=/sweeps/{}", embedded.signin_url, sweep.id);
    let finished = tokio::select! {
        result = client::watch(&embedded.url, &sweep.id, false) => result?,
        _ = crate::shutdown_signal() => {
            eprintln!("\ninterrupted: cancelling sweep {}", sweep.id);
            let channel = client::channel(&embedded.url).await?;
            let _ = pb::sweep_service_client::SweepServiceClient::new(channel).max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES)
                .cancel_sweep(pb::CancelSweepRequest { sweep_id: sweep.id.clone() })
                .await;
            embedded.stop().await?;
            return Err(ExitError { code: 130, message: "interrupted".into() }.into());
        }
    };
    let runs = client::list_runs(&embedded.url, Some(sweep.id.clone()), &[], 0).await?;
    embedded.stop().await?;
    print_ranking(&finished, &runs, args.json);
    Ok(())
}

fn print_ranking(sweep: &pb::Sweep, runs: &[pb::Run], json: bool) {
    let ranked = client::rank(sweep, runs);
    if json {
        let value = json!({
            "sweep": output::sweep_json(sweep),
            "ranking": ranked.iter().map(|run| output::run_json(run)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return;
    }
    let metric_header = if sweep.metric_name.is_empty() {
        "METRIC".to_string()
    } else {
        format!(
            "{} ({})",
            sweep.metric_name,
            if sweep.metric_goal == "minimize" {
                "min"
            } else {
                "max"
            }
        )
    };
    let rows: Vec<Vec<String>> = ranked
        .iter()
        .enumerate()
        .map(|(i, run)| {
            vec![
                (i + 1).to_string(),
                run.id.clone(),
                output::run_status_name(run.status).into(),
                output::metric_value(run, &sweep.metric_name)
                    .map(format_number)
                    .unwrap_or_else(|| "-".into()),
                output::params_text(run),
            ]
        })
        .collect();
    println!();
    output::print_table(&["RANK", "RUN", "STATUS", &metric_header, "PARAMS"], &rows);
    let counts = sweep.counts.unwrap_or_default();
    println!(
        "\nsweep {} {}: {}",
        sweep.id,
        output::sweep_status_name(sweep.status),
        output::counts_text(&counts)
    );
}
