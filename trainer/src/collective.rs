//! Collectives between the data-parallel ranks of one run.
//!
//! [`Collective`] is the one trait the training loop uses. It has three
//! implementations:
//! - [`CpuCollective`] (here): ranks are threads of one process (`data_parallel: N`);
//! - [`tcp::TcpCollective`]: ranks are processes on the CPU, launched one per rank by
//!   the agent, meeting at `MASTER_ADDR:MASTER_PORT`;
//! - `nccl::NcclCollective` (cargo feature `nccl`): ranks are processes on GPUs.
//!
//! [`CpuCollective`]: ranks are threads of one process that meet at each
//! collective, and the sum is taken in rank order so every rank gets bit-identical
//! results (the same guarantee NCCL's all-reduce gives within one job). It is what
//! `data_parallel: N` uses on a machine without GPUs and what proves in CI that the
//! data-parallel path equals one rank on the whole batch.

pub mod tcp;

#[cfg(feature = "nccl")]
pub mod nccl;

use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Tensor};

use crate::{Result, TrainerError};

/// Sums gradients across the data-parallel ranks of one run.
pub trait Collective {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces each tensor by the element-wise sum of that tensor over all ranks.
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces each tensor by rank 0's value (identical initial weights everywhere).
    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()>;
}

/// The collective of a run with one rank: nothing to exchange.
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
}

/// What the ranks exchange at one collective: each rank's flattened f32 tensors.
struct Round {
    /// Bumped when a round completes; waiters compare against the value they joined.
    generation: u64,
    contributions: Vec<Option<Vec<Vec<f32>>>>,
    result: Arc<Vec<Vec<f32>>>,
    /// Set when a rank failed; every later collective fails instead of waiting forever.
    poisoned: Option<String>,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

/// One rank's handle on an in-process group of `world` ranks.
#[derive(Clone)]
pub struct CpuCollective {
    rank: usize,
    shared: Arc<Shared>,
}

impl CpuCollective {
    /// Handles for ranks `0..world`, to be moved to one thread each.
    pub fn group(world: usize) -> Vec<CpuCollective> {
        assert!(world >= 1, "a group has at least one rank");
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                generation: 0,
                contributions: vec![None; world],
                result: Arc::new(Vec::new()),
                poisoned: None,
            }),
            done: Condvar::new(),
        });
        (0..world)
            .map(|rank| CpuCollective {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Marks the group failed (a rank's training failed): ranks waiting in, or later
    /// entering, a collective get an error instead of blocking forever.
    pub fn poison(&self, reason: &str) {
        let mut round = self.shared.round.lock().expect("collective lock");
        round
            .poisoned
            .get_or_insert_with(|| format!("rank {}: {reason}", self.rank));
        self.shared.done.notify_all();
    }

    /// Every rank contributes `data`; all get `combine(contributions in rank order)`.
    fn exchange(
        &self,
        data: Vec<Vec<f32>>,
        combine: impl FnOnce(&[Option<Vec<Vec<f32>>>]) -> Vec<Vec<f32>>,
    ) -> Result<Arc<Vec<Vec<f32>>>> {
        let shared = &self.shared;
        let mut round = shared.round.lock().expect("collective lock");
        if let Some(reason) = &round.poisoned {
            return Err(TrainerError::config(
                "data_parallel",
                format!("another rank failed: {reason}"),
            ));
        }
        let joined = round.generation;
        debug_assert!(round.contributions[self.rank].is_none());
        round.contributions[self.rank] = Some(data);
        if round.contributions.iter().all(Option::is_some) {
            let result = combine(&round.contributions);
            round.result = Arc::new(result);
            for slot in round.contributions.iter_mut() {
                *slot = None;
            }
            round.generation += 1;
            shared.done.notify_all();
            return Ok(round.result.clone());
        }
        while round.generation == joined {
            if let Some(reason) = &round.poisoned {
                return Err(TrainerError::config(
                    "data_parallel",
                    format!("another rank failed: {reason}"),
                ));
            }
            round = shared.done.wait(round).expect("collective lock");
        }
        Ok(round.result.clone())
    }
}

fn flatten(tensors: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        out.push(
            tensor
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

fn restore(tensors: &mut [Tensor], values: &[Vec<f32>]) -> Result<()> {
    for (tensor, values) in tensors.iter_mut().zip(values) {
        let rebuilt = Tensor::from_slice(values, tensor.shape(), tensor.device())?
            .to_dtype(tensor.dtype())?;
        *tensor = rebuilt;
    }
    Ok(())
}

impl Collective for CpuCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.shared.world == 1 {
            return Ok(());
        }
        let result = self.exchange(flatten(tensors)?, |contributions| {
            let mut sum: Vec<Vec<f32>> = contributions[0].clone().expect("all present");
            for contribution in &contributions[1..] {
                let contribution = contribution.as_ref().expect("all present");
                for (acc, part) in sum.iter_mut().zip(contribution) {
                    for (a, b) in acc.iter_mut().zip(part) {
                        *a += *b;
                    }
                }
            }
            sum
        })?;
        restore(tensors, &result)
    }

    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.shared.world == 1 {
            return Ok(());
        }
        let result = self.exchange(flatten(tensors)?, |contributions| {
            contributions[0].clone().expect("all present")
        })?;
        restore(tensors, &result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_reduce_sums_in_rank_order_and_broadcast_takes_rank_zero() {
        let group = CpuCollective::group(3);
        let handles: Vec<_> = group
            .into_iter()
            .map(|collective| {
                std::thread::spawn(move || {
                    let rank = collective.rank() as f32;
                    let mut tensors = vec![
                        Tensor::new(&[rank, 1.0], &Device::Cpu).unwrap(),
                        Tensor::new(&[[rank * 10.0]], &Device::Cpu).unwrap(),
                    ];
                    collective.all_reduce_sum(&mut tensors).unwrap();
                    let summed: Vec<f32> = tensors[0].to_vec1().unwrap();
                    let second: Vec<Vec<f32>> = tensors[1].to_vec2().unwrap();
                    let mut mine = vec![Tensor::new(&[rank + 5.0], &Device::Cpu).unwrap()];
                    collective.broadcast(&mut mine).unwrap();
                    let broadcast: Vec<f32> = mine[0].to_vec1().unwrap();
                    (summed, second, broadcast)
                })
            })
            .collect();
        for handle in handles {
            let (summed, second, broadcast) = handle.join().unwrap();
            assert_eq!(summed, vec![3.0, 3.0]);
            assert_eq!(second, vec![vec![30.0]]);
            assert_eq!(broadcast, vec![5.0]);
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let mut group = CpuCollective::group(2);
        let second = group.pop().unwrap();
        let first = group.pop().unwrap();
        let waiter = std::thread::spawn(move || {
            let mut t = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
            first.all_reduce_sum(&mut t)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        second.poison("out of memory");
        let error = waiter.join().unwrap().unwrap_err().to_string();
        assert!(error.contains("rank 1: out of memory"), "{error}");
    }
}
