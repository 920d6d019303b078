//! Placement: which queued run goes to which agent. A pure function over a snapshot of
//! free capacity, with no I/O and no clock, so it is property-tested in isolation.
//!
//! Rules:
//! - a run needs one slot of an agent, `gpus` free GPUs of that same agent, and every
//!   label it asks for with the same value;
//! - runs with GPUs go best-fit: to the agent left with the fewest free GPUs, so large
//!   runs later still find whole nodes;
//! - runs without GPUs spread: to the agent with the most free slots (CPU runs on the
//!   same box slow each other down), preferring agents without free GPUs;
//! - the queue is served in order, but a run that fits nowhere does not block the ones
//!   behind it.
//!
//! [`never_fits`] decides at submit whether any known agent could ever run a sweep.

use std::collections::BTreeMap;

#[cfg(test)]
mod simulation;

/// Free capacity of one connected agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub agent: String,
    pub free_slots: u32,
    /// Indices of the agent's free GPUs, ascending.
    pub free_gpus: Vec<u32>,
    pub labels: BTreeMap<String, String>,
}

/// What one queued run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub gpus: u32,
    pub labels: BTreeMap<String, String>,
}

/// Queue entry `demand` (its index in the queue) goes to `agent` with these GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub demand: usize,
    pub agent: String,
    pub gpus: Vec<u32>,
}

/// Whether an agent with this capacity could ever (when idle) or now fit the demand.
pub fn fits(capacity: &Capacity, demand: &Demand) -> bool {
    capacity.free_slots >= 1
        && capacity.free_gpus.len() as u64 >= u64::from(demand.gpus)
        && demand
            .labels
            .iter()
            .all(|(key, value)| capacity.labels.get(key) == Some(value))
}

/// Places as much of `queue` as fits on `free`, in queue order.
pub fn place(free: &[Capacity], queue: &[Demand]) -> Vec<Placement> {
    let mut free: Vec<Capacity> = free.to_vec();
    let mut placements = Vec::new();
    for (demand_index, demand) in queue.iter().enumerate() {
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, capacity)| fits(capacity, demand))
            .min_by(|(_, a), (_, b)| {
                if demand.gpus > 0 {
                    // Best fit on GPUs, then on slots.
                    (a.free_gpus.len(), a.free_slots, &a.agent).cmp(&(
                        b.free_gpus.len(),
                        b.free_slots,
                        &b.agent,
                    ))
                } else {
                    // Spread CPU runs; keep GPU boxes for GPU runs.
                    (a.free_gpus.len(), std::cmp::Reverse(a.free_slots), &a.agent).cmp(&(
                        b.free_gpus.len(),
                        std::cmp::Reverse(b.free_slots),
                        &b.agent,
                    ))
                }
            })
            .map(|(index, _)| index);
        let Some(agent_index) = best else {
            continue;
        };
        let capacity = &mut free[agent_index];
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

/// Why none of the known agents could ever run `demand`, even idle; `None` when one
/// could, or when no agent is known (agents may join later, so nothing is refused before
/// the cluster has any). `whole` is each known agent's full capacity: all its slots and
/// GPUs, connected or not.
pub fn never_fits(whole: &[Capacity], demand: &Demand) -> Option<String> {
    if whole.is_empty() || whole.iter().any(|capacity| fits(capacity, demand)) {
        return None;
    }
    let describe_labels = |labels: &BTreeMap<String, String>| {
        if labels.is_empty() {
            "no labels".to_string()
        } else {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.join(",")
        }
    };
    let labelled: Vec<&Capacity> = whole
        .iter()
        .filter(|capacity| {
            demand
                .labels
                .iter()
                .all(|(key, value)| capacity.labels.get(key) == Some(value))
        })
        .collect();
    const SHOWN: usize = 5;
    if labelled.is_empty() {
        let mut known: Vec<String> = whole
            .iter()
            .take(SHOWN)
            .map(|capacity| format!("{} ({})", capacity.agent, describe_labels(&capacity.labels)))
            .collect();
        if whole.len() > SHOWN {
            known.push(format!("and {} more", whole.len() - SHOWN));
        }
        return Some(format!(
            "no agent could ever run this sweep: no known agent carries resources.labels {} (agents: {}); start an agent with matching --labels, then submit again",
            describe_labels(&demand.labels),
            known.join(", ")
        ));
    }
    let largest = labelled
        .iter()
        .max_by(|a, b| {
            (a.free_gpus.len(), std::cmp::Reverse(&a.agent))
                .cmp(&(b.free_gpus.len(), std::cmp::Reverse(&b.agent)))
        })
        .expect("not empty");
    let with_labels = if demand.labels.is_empty() {
        String::new()
    } else {
        format!(" with labels {}", describe_labels(&demand.labels))
    };
    Some(format!(
        "no agent could ever run this sweep: each run needs {} GPUs on one node (resources.gpus), but the largest known agent{with_labels}, {}, has {}; start a larger agent or lower resources.gpus, then submit again",
        demand.gpus,
        largest.agent,
        largest.free_gpus.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn labels(pool: Option<&str>) -> BTreeMap<String, String> {
        pool.map(|p| BTreeMap::from([("pool".to_string(), p.to_string())]))
            .unwrap_or_default()
    }

    fn capacity_strategy() -> impl Strategy<Value = Vec<Capacity>> {
        prop::collection::vec(
            (
                0u32..5,
                0u32..9,
                prop::option::of(prop::sample::select(vec!["a100", "h100"])),
            ),
            0..6,
        )
        .prop_map(|agents| {
            agents
                .into_iter()
                .enumerate()
                .map(|(i, (slots, gpus, pool))| Capacity {
                    agent: format!("agent-{i}"),
                    free_slots: slots,
                    free_gpus: (0..gpus).collect(),
                    labels: labels(pool),
                })
                .collect()
        })
    }

    fn demand_strategy() -> impl Strategy<Value = Vec<Demand>> {
        prop::collection::vec(
            (
                0u32..5,
                prop::option::of(prop::sample::select(vec!["a100", "h100"])),
            ),
            0..20,
        )
        .prop_map(|demands| {
            demands
                .into_iter()
                .map(|(gpus, pool)| Demand {
                    gpus,
                    labels: labels(pool),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn placements_respect_capacity_labels_and_exclusivity(
            free in capacity_strategy(),
            queue in demand_strategy(),
        ) {
            let placements = place(&free, &queue);
            let by_name: HashMap<&str, &Capacity> =
                free.iter().map(|c| (c.agent.as_str(), c)).collect();
            let mut slots_used: HashMap<&str, u32> = HashMap::new();
            let mut gpus_used: HashSet<(String, u32)> = HashSet::new();
            let mut demands_placed = HashSet::new();
            for placement in &placements {
                prop_assert!(demands_placed.insert(placement.demand), "demand placed twice");
                let demand = &queue[placement.demand];
                let capacity = by_name[placement.agent.as_str()];
                prop_assert_eq!(placement.gpus.len() as u32, demand.gpus);
                for (key, value) in &demand.labels {
                    prop_assert_eq!(capacity.labels.get(key), Some(value));
                }
                for gpu in &placement.gpus {
                    prop_assert!(capacity.free_gpus.contains(gpu), "gpu not free");
                    prop_assert!(gpus_used.insert((placement.agent.clone(), *gpu)), "gpu given twice");
                }
                let used = slots_used.entry(capacity.agent.as_str()).or_default();
                *used += 1;
                prop_assert!(*used <= capacity.free_slots, "over slot capacity");
            }
        }

        #[test]
        fn a_demand_left_out_fits_nowhere_in_what_remained(
            free in capacity_strategy(),
            queue in demand_strategy(),
        ) {
            let placements = place(&free, &queue);
            // Replay to know the capacity left when each demand was considered.
            let mut remaining = free.clone();
            let placed: HashMap<usize, &Placement> =
                placements.iter().map(|p| (p.demand, p)).collect();
            for (index, demand) in queue.iter().enumerate() {
                match placed.get(&index) {
                    Some(placement) => {
                        let capacity = remaining.iter_mut().find(|c| c.agent == placement.agent).unwrap();
                        capacity.free_slots -= 1;
                        capacity.free_gpus.retain(|g| !placement.gpus.contains(g));
                    }
                    None => {
                        prop_assert!(remaining.iter().all(|c| !fits(c, demand)),
                            "demand {index} fits somewhere but was not placed");
                    }
                }
            }
        }
    }

    #[test]
    fn gpu_runs_pack_best_fit() {
        let free = vec![
            Capacity {
                agent: "big".into(),
                free_slots: 8,
                free_gpus: (0..8).collect(),
                labels: labels(None),
            },
            Capacity {
                agent: "small".into(),
                free_slots: 8,
                free_gpus: vec![5, 6],
                labels: labels(None),
            },
        ];
        let queue = vec![
            Demand {
                gpus: 2,
                labels: labels(None),
            },
            Demand {
                gpus: 8,
                labels: labels(None),
            },
        ];
        let placements = place(&free, &queue);
        assert_eq!(placements[0].agent, "small");
        assert_eq!(placements[0].gpus, vec![5, 6]);
        assert_eq!(placements[1].agent, "big");
        assert_eq!(placements[1].gpus.len(), 8);
    }

    #[test]
    fn cpu_runs_spread_over_agents() {
        let free = vec![
            Capacity {
                agent: "a".into(),
                free_slots: 2,
                free_gpus: vec![],
                labels: labels(None),
            },
            Capacity {
                agent: "b".into(),
                free_slots: 2,
                free_gpus: vec![],
                labels: labels(None),
            },
        ];
        let queue = vec![
            Demand {
                gpus: 0,
                labels: labels(None)
            };
            2
        ];
        let placements = place(&free, &queue);
        let agents: HashSet<&str> = placements.iter().map(|p| p.agent.as_str()).collect();
        assert_eq!(agents.len(), 2);
    }

    #[test]
    fn labels_must_match() {
        let free = vec![Capacity {
            agent: "a".into(),
            free_slots: 4,
            free_gpus: vec![0],
            labels: labels(Some("h100")),
        }];
        let queue = vec![Demand {
            gpus: 1,
            labels: labels(Some("a100")),
        }];
        assert!(place(&free, &queue).is_empty());
    }

    fn agent(name: &str, gpus: u32, pool: Option<&str>) -> Capacity {
        Capacity {
            agent: name.into(),
            free_slots: 4,
            free_gpus: (0..gpus).collect(),
            labels: labels(pool),
        }
    }

    #[test]
    fn never_fits_refuses_only_against_known_agents() {
        let demand = |gpus, pool: Option<&str>| Demand {
            gpus,
            labels: labels(pool),
        };
        // No agent known yet: anything may join later.
        assert_eq!(never_fits(&[], &demand(64, Some("tpu"))), None);
        let cluster = vec![
            agent("big", 8, Some("a100")),
            agent("small", 2, Some("h100")),
            agent("cpu", 0, None),
        ];
        assert_eq!(never_fits(&cluster, &demand(8, None)), None);
        assert_eq!(never_fits(&cluster, &demand(2, Some("h100"))), None);
        let too_big = never_fits(&cluster, &demand(9, None)).unwrap();
        assert!(
            too_big.contains("needs 9 GPUs") && too_big.contains("big, has 8"),
            "{too_big}"
        );
        let too_big_for_pool = never_fits(&cluster, &demand(4, Some("h100"))).unwrap();
        assert!(
            too_big_for_pool.contains("with labels pool=h100, small, has 2"),
            "{too_big_for_pool}"
        );
        let no_labels = never_fits(&cluster, &demand(0, Some("tpu"))).unwrap();
        assert!(
            no_labels.contains("no known agent carries resources.labels pool=tpu")
                && no_labels.contains("cpu (no labels)"),
            "{no_labels}"
        );
    }

    proptest! {
        #[test]
        fn never_fits_exactly_when_no_agent_fits(
            agents in proptest::collection::vec((0u32..9, proptest::option::of(prop_oneof![Just("a"), Just("b")])), 0..5),
            gpus in 0u32..10,
            pool in proptest::option::of(prop_oneof![Just("a"), Just("b"), Just("c")]),
        ) {
            let whole: Vec<Capacity> = agents
                .iter()
                .enumerate()
                .map(|(i, (gpus, pool))| agent(&format!("agent-{i}"), *gpus, *pool))
                .collect();
            let demand = Demand { gpus, labels: labels(pool) };
            let refused = never_fits(&whole, &demand).is_some();
            let fits_somewhere = whole.iter().any(|c| fits(c, &demand));
            prop_assert_eq!(refused, !whole.is_empty() && !fits_somewhere);
        }
    }
}
