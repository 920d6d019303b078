//! How a run's GPUs turn into processes and torchrun-style environment variables.
//!
//! [`rank_environments`] is pure: given the run's GPUs, its `resources.launch` and a
//! free port, it returns the variables of each process to start (one map per rank). The
//! runner starts one process per map.

use std::collections::BTreeMap;

use ladder_spec::Launch;

/// The variables of each process of a run, rank 0 first; always at least one map.
///
/// - No GPUs: one process with no extra variables (`CUDA_VISIBLE_DEVICES` is the
///   agent's business).
/// - `single`: one process that sees all N GPUs and is told `WORLD_SIZE=N`, `RANK=0`;
///   it launches its own workers.
/// - `per_gpu`: N processes; every rank sees all N GPUs (`CUDA_VISIBLE_DEVICES`, as
///   under torchrun) and picks its own with `LOCAL_RANK`.
pub fn rank_environments(
    gpus: &[u32],
    launch: Launch,
    master_port: u16,
) -> Vec<BTreeMap<String, String>> {
    if gpus.is_empty() {
        return vec![BTreeMap::new()];
    }
    let world_size = gpus.len();
    let visible: Vec<String> = gpus.iter().map(u32::to_string).collect();
    let processes = match launch {
        Launch::Single => 1,
        Launch::PerGpu => world_size,
    };
    (0..processes)
        .map(|rank| {
            BTreeMap::from([
                ("CUDA_VISIBLE_DEVICES".to_string(), visible.join(",")),
                ("WORLD_SIZE".to_string(), world_size.to_string()),
                ("LOCAL_WORLD_SIZE".to_string(), world_size.to_string()),
                ("RANK".to_string(), rank.to_string()),
                ("LOCAL_RANK".to_string(), rank.to_string()),
                ("MASTER_ADDR".to_string(), "127.0.0.1".to_string()),
                ("MASTER_PORT".to_string(), master_port.to_string()),
            ])
        })
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read, closed), for
/// `MASTER_PORT`. 0 when none could be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_runs_get_one_plain_process() {
        assert_eq!(
            rank_environments(&[], Launch::PerGpu, 1234),
            vec![BTreeMap::new()]
        );
    }

    #[test]
    fn single_launch_tells_one_process_the_world_size() {
        let ranks = rank_environments(&[3, 5], Launch::Single, 29500);
        assert_eq!(ranks.len(), 1);
        let env = &ranks[0];
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "3,5");
        assert_eq!(env["WORLD_SIZE"], "2");
        assert_eq!(env["LOCAL_WORLD_SIZE"], "2");
        assert_eq!(env["RANK"], "0");
        assert_eq!(env["LOCAL_RANK"], "0");
        assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
        assert_eq!(env["MASTER_PORT"], "29500");
    }

    #[test]
    fn per_gpu_launch_starts_one_rank_per_gpu_seeing_all() {
        let ranks = rank_environments(&[0, 1, 6, 7], Launch::PerGpu, 40000);
        assert_eq!(ranks.len(), 4);
        for (rank, env) in ranks.iter().enumerate() {
            assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1,6,7");
            assert_eq!(env["RANK"], rank.to_string());
            assert_eq!(env["LOCAL_RANK"], rank.to_string());
            assert_eq!(env["WORLD_SIZE"], "4");
            assert_eq!(env["LOCAL_WORLD_SIZE"], "4");
            assert_eq!(env["MASTER_PORT"], "40000");
        }
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
