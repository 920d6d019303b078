//! A deterministic virtual cluster that drives [`place`] the way the scheduler does, over
//! simulated time steps with no clock: 4 agents with 8 GPUs each, a seeded queue of 200
//! runs needing 1, 2, 4 or 8 GPUs, each holding its GPUs for a seeded number of steps.
//!
//! Each step, runs that end free their GPUs, then the waiting runs, in FIFO order (the
//! scheduler's `queue` is a `VecDeque` handed to [`place`] front to back, new trials
//! after it), are placed over what is free. As in the scheduler, a run that fits nowhere
//! does not block the runs behind it, so small runs overtake a waiting 8-GPU run; the
//! tests bound how long that can make any run wait, and measure how busy the GPUs are
//! while anything waits. First-fit and strict-FIFO packers, written here, run the same
//! simulation for comparison.

use super::*;

const AGENTS: usize = 4;
const GPUS_PER_AGENT: u32 = 8;
/// Enough slots that slots never limit placement: at most 8 runs fit per agent anyway.
const SLOTS_PER_AGENT: u32 = 64;
const RUNS: usize = 200;
const SEED: u64 = 0x1a_dde5_2026;
/// Longest a run holds its GPUs, in steps.
const MAX_DURATION: u64 = 12;

/// splitmix64: a tiny seeded generator, so the run mix does not depend on `rand`'s
/// algorithm choices across versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (the modulo bias is irrelevant for a test mix).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// One simulated run: how many GPUs it needs, for how many steps it holds them, and the
/// step at which it joins the back of the queue.
#[derive(Debug, Clone, Copy)]
struct SimRun {
    gpus: u32,
    duration: u64,
    arrival: u64,
}

/// 200 runs, about 50 % needing 1 GPU, 25 % 2, 15 % 4 and 10 % 8, lasting 1 to 12 steps,
/// all queued at step 0. With this seed: 95, 57, 26 and 22 runs, 3173 GPU-steps of work.
fn seeded_backlog() -> Vec<SimRun> {
    let mut rng = SplitMix64(SEED);
    (0..RUNS)
        .map(|_| {
            let gpus = match rng.below(100) {
                0..50 => 1,
                50..75 => 2,
                75..90 => 4,
                _ => 8,
            };
            let duration = 1 + rng.below(MAX_DURATION);
            SimRun {
                gpus,
                duration,
                arrival: 0,
            }
        })
        .collect()
}

/// A placement function under test: the real best-fit [`place`] or a comparison.
type Packer = fn(&[Capacity], &[Demand]) -> Vec<Placement>;

/// First-fit: each run, in queue order, goes to the first agent (by name) it fits on.
/// Otherwise the same contract as [`place`]; used only to compare utilisation.
fn place_first_fit(free: &[Capacity], queue: &[Demand]) -> Vec<Placement> {
    let mut free: Vec<Capacity> = free.to_vec();
    free.sort_by(|a, b| a.agent.cmp(&b.agent));
    let mut placements = Vec::new();
    for (demand_index, demand) in queue.iter().enumerate() {
        let Some(capacity) = free.iter_mut().find(|capacity| fits(capacity, demand)) else {
            continue;
        };
        capacity.free_slots -= 1;
        let gpus: Vec<u32> = capacity.free_gpus.drain(..demand.gpus as usize).collect();
        placements.push(Placement {
            demand: demand_index,
            agent: capacity.agent.clone(),
            gpus,
        });
    }
    placements
}

/// Strict FIFO: best-fit, but the first run that fits nowhere blocks every run behind
/// it (head-of-line blocking, which [`place`] avoids). [`place`] is greedy in queue
/// order, so its placements before the first run it skips are exactly strict FIFO's.
fn place_strict_fifo(free: &[Capacity], queue: &[Demand]) -> Vec<Placement> {
    place(free, queue)
        .into_iter()
        .enumerate()
        .take_while(|(position, placement)| placement.demand == *position)
        .map(|(_, placement)| placement)
        .collect()
}

/// What a simulation measured.
#[derive(Debug)]
struct Outcome {
    /// Steps until the last run finished.
    makespan: u64,
    /// Busy GPU-steps / total GPU-steps over the steps where a run was left waiting.
    utilisation_while_queued: f64,
    queued_steps: u64,
    /// Longest wait from arrival to placement, in steps, of runs needing fewer than 8
    /// GPUs and of 8-GPU (whole-node) runs.
    max_wait_partial_node: u64,
    max_wait_whole_node: u64,
    /// Most runs queued behind one 8-GPU run that were placed before it.
    max_overtaken_whole_node: usize,
}

/// One virtual agent: which run holds each GPU, and how many slots are taken.
struct VirtualAgent {
    name: String,
    holder: Vec<Option<usize>>,
    runs: u32,
}

impl VirtualAgent {
    fn capacity(&self) -> Capacity {
        Capacity {
            agent: self.name.clone(),
            free_slots: SLOTS_PER_AGENT - self.runs,
            free_gpus: (0..GPUS_PER_AGENT)
                .filter(|gpu| self.holder[*gpu as usize].is_none())
                .collect(),
            labels: BTreeMap::new(),
        }
    }
}

/// Runs every run through `packer`, asserting the placement invariants at every step:
/// each run placed exactly once, all its GPUs on the one agent named, none held by
/// another run, within the agent's GPUs and slots; and everything finished before
/// `step_limit`. `runs` must be sorted by arrival.
fn simulate(packer: Packer, runs: &[SimRun], step_limit: u64) -> Outcome {
    debug_assert!(runs
        .windows(2)
        .all(|pair| pair[0].arrival <= pair[1].arrival));
    let mut agents: Vec<VirtualAgent> = (0..AGENTS)
        .map(|i| VirtualAgent {
            name: format!("agent-{i}"),
            holder: vec![None; GPUS_PER_AGENT as usize],
            runs: 0,
        })
        .collect();
    // FIFO: runs join the back of the queue at their arrival step, in index order.
    let mut queue: Vec<usize> = Vec::new();
    let mut arrived = 0usize;
    // Per run, once placed: (step placed, agent index, GPUs).
    let mut placed: Vec<Option<(u64, usize, Vec<u32>)>> = vec![None; runs.len()];
    let mut finished = 0usize;
    let mut busy_gpu_steps_queued = 0u64;
    let mut queued_steps = 0u64;
    let mut step = 0u64;
    while finished < runs.len() {
        assert!(
            step < step_limit,
            "not finished within {step_limit} steps; still waiting: {queue:?}"
        );
        // Runs that end now free their slot and GPUs.
        for (run_index, placement) in placed.iter().enumerate() {
            let Some((start, agent_index, gpus)) = placement else {
                continue;
            };
            if start + runs[run_index].duration != step {
                continue;
            }
            let agent = &mut agents[*agent_index];
            for gpu in gpus {
                assert_eq!(agent.holder[*gpu as usize], Some(run_index));
                agent.holder[*gpu as usize] = None;
            }
            agent.runs -= 1;
            finished += 1;
        }
        while arrived < runs.len() && runs[arrived].arrival <= step {
            queue.push(arrived);
            arrived += 1;
        }

        // Place over what is free, as the scheduler does: only agents with a free slot.
        let free: Vec<Capacity> = agents
            .iter()
            .map(VirtualAgent::capacity)
            .filter(|capacity| capacity.free_slots > 0)
            .collect();
        let demands: Vec<Demand> = queue
            .iter()
            .map(|run_index| Demand {
                gpus: runs[*run_index].gpus,
                labels: BTreeMap::new(),
            })
            .collect();
        let mut started_now = Vec::new();
        for placement in packer(&free, &demands) {
            let run_index = queue[placement.demand];
            assert!(
                placed[run_index].is_none(),
                "run {run_index} placed twice (step {step})"
            );
            assert_eq!(
                placement.gpus.len() as u32,
                runs[run_index].gpus,
                "run {run_index} got the wrong number of GPUs"
            );
            let agent_index = agents
                .iter()
                .position(|agent| agent.name == placement.agent)
                .expect("placement names a known agent");
            let agent = &mut agents[agent_index];
            agent.runs += 1;
            assert!(agent.runs <= SLOTS_PER_AGENT, "over slot capacity");
            for gpu in &placement.gpus {
                assert!(*gpu < GPUS_PER_AGENT, "gpu {gpu} beyond the agent's GPUs");
                let holder = &mut agent.holder[*gpu as usize];
                assert_eq!(
                    *holder, None,
                    "gpu {gpu} of {} given to run {run_index} while another run holds it",
                    placement.agent
                );
                *holder = Some(run_index);
            }
            placed[run_index] = Some((step, agent_index, placement.gpus));
            started_now.push(run_index);
        }
        queue.retain(|run_index| !started_now.contains(run_index));

        // Utilisation over this step, counted when a run is left waiting through it.
        if !queue.is_empty() {
            let busy: usize = agents
                .iter()
                .map(|agent| agent.holder.iter().filter(|h| h.is_some()).count())
                .sum();
            busy_gpu_steps_queued += busy as u64;
            queued_steps += 1;
        }
        step += 1;
    }

    // Every run placed exactly once (checked above) and eventually.
    assert!(queue.is_empty() && arrived == runs.len());
    let starts: Vec<u64> = placed
        .iter()
        .map(|placement| placement.as_ref().expect("every run is placed").0)
        .collect();
    let max_wait = |whole_node: bool| {
        runs.iter()
            .zip(&starts)
            .filter(|(run, _)| (run.gpus == GPUS_PER_AGENT) == whole_node)
            .map(|(run, start)| start - run.arrival)
            .max()
            .unwrap_or(0)
    };
    let max_overtaken_whole_node = (0..runs.len())
        .filter(|run_index| runs[*run_index].gpus == GPUS_PER_AGENT)
        .map(|run_index| {
            starts[run_index + 1..]
                .iter()
                .filter(|start| **start < starts[run_index])
                .count()
        })
        .max()
        .unwrap_or(0);
    let total_gpu_steps = queued_steps * u64::from(GPUS_PER_AGENT) * AGENTS as u64;
    Outcome {
        makespan: step,
        utilisation_while_queued: if total_gpu_steps == 0 {
            1.0
        } else {
            busy_gpu_steps_queued as f64 / total_gpu_steps as f64
        },
        queued_steps,
        max_wait_partial_node: max_wait(false),
        max_wait_whole_node: max_wait(true),
        max_overtaken_whole_node,
    }
}

/// Steps no schedule could beat: all the GPU work spread perfectly over the cluster.
fn perfect_packing_steps(runs: &[SimRun]) -> u64 {
    let work: u64 = runs
        .iter()
        .map(|run| u64::from(run.gpus) * run.duration)
        .sum();
    let cluster = u64::from(GPUS_PER_AGENT) * AGENTS as u64;
    work.div_ceil(cluster)
}

fn report(scenario: &str, packer: &str, outcome: &Outcome, perfect: u64) {
    eprintln!(
        "{scenario}, {packer}: gpu utilisation while queued: {:.1}% over {} steps; \
         makespan {} steps (perfect packing {perfect}); longest wait {} steps for 1-4 gpu \
         runs, {} for 8-gpu runs; an 8-gpu run overtaken by up to {} later runs",
        100.0 * outcome.utilisation_while_queued,
        outcome.queued_steps,
        outcome.makespan,
        outcome.max_wait_partial_node,
        outcome.max_wait_whole_node,
        outcome.max_overtaken_whole_node,
    );
}

#[test]
fn a_backlog_is_placed_once_each_on_whole_free_gpus_and_keeps_them_busy() {
    let runs = seeded_backlog();
    let perfect = perfect_packing_steps(&runs);
    // Starvation guard: everything, 8-GPU runs included, finishes within two longest
    // runs of the perfect packing (observed: 107 steps against 100).
    let step_limit = perfect + 2 * MAX_DURATION;

    let best_fit = simulate(place, &runs, step_limit);
    let first_fit = simulate(place_first_fit, &runs, step_limit);
    // Strict FIFO idles far more, so it gets no makespan guard.
    let strict_fifo = simulate(place_strict_fifo, &runs, u64::MAX);
    report("backlog", "best-fit", &best_fit, perfect);
    report("backlog", "first-fit", &first_fit, perfect);
    report("backlog", "strict fifo", &strict_fifo, perfect);

    // Deterministic, so this is a regression guard, not a timing figure. While any
    // 1-GPU run waits no GPU can idle (one fits any free GPU), so idle GPU-steps come
    // only from the tail, when holes are smaller than the runs left. 90 % leaves room
    // for tie-break changes (observed 97.2 %) but fails a packer that blocks at the
    // head of the queue (strict FIFO, printed above) or strands GPUs.
    assert!(
        best_fit.utilisation_while_queued > 0.90,
        "gpu utilisation while queued fell to {:.1}%",
        100.0 * best_fit.utilisation_while_queued
    );
    // The threshold must tell a head-of-line-blocking packer apart (observed 84.0 %).
    assert!(strict_fifo.utilisation_while_queued < 0.90);
}

#[test]
fn whole_node_runs_are_not_starved_by_a_steady_stream_of_smaller_ones() {
    // The same runs arriving two per step: about 99 % of the cluster's capacity offered,
    // so small runs keep coming while 8-GPU runs wait for a whole node to drain.
    let runs: Vec<SimRun> = seeded_backlog()
        .into_iter()
        .enumerate()
        .map(|(index, run)| SimRun {
            arrival: index as u64 / 2,
            ..run
        })
        .collect();
    let perfect = perfect_packing_steps(&runs);
    let best_fit = simulate(place, &runs, perfect + 2 * MAX_DURATION);
    let first_fit = simulate(place_first_fit, &runs, perfect + 2 * MAX_DURATION);
    report("stream", "best-fit", &best_fit, perfect);
    report("stream", "first-fit", &first_fit, perfect);

    // Deterministic regression guard (observed 16 steps): no run, 8-GPU runs included,
    // waits longer than two longest runs, although smaller runs may overtake it.
    assert!(
        best_fit.max_wait_whole_node <= 2 * MAX_DURATION,
        "an 8-gpu run waited {} steps",
        best_fit.max_wait_whole_node
    );
    assert!(best_fit.max_wait_partial_node <= 2 * MAX_DURATION);
}
