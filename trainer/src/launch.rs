//! A run started as several processes: one rank per GPU, the way the agent launches a
//! `train:` run with `resources.gpus: N` (and the way torchrun launches a script).
//!
//! The processes learn their place from torchrun's variables (`WORLD_SIZE`, `RANK`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); [`train_launched`] then joins them into
//! one data-parallel group: NCCL when the ranks are on GPUs (cargo feature `nccl`), the
//! TCP collective when they are on the CPU. Every rank starts from rank 0's weights,
//! trains on its share of each batch, sums gradients every step; rank 0 alone reports
//! metrics, evaluates and writes checkpoints and the final model.
//!
//! `LADDER_COLLECTIVE=nccl` forces NCCL even for one rank (a GPU node check);
//! `LADDER_RENDEZVOUS_TIMEOUT_S` (default 300) bounds how long ranks wait for each other.

use std::path::Path;
use std::time::Duration;

use candle_core::Device;

use crate::collective::tcp::{Rendezvous, TcpCollective};
use crate::config::TrainConfig;
use crate::train::{device_for, setup, train_run, train_with, Collective, Outcome, Reporter};
use crate::{Result, TrainerError};

/// This process's place in a multi-process run.
#[derive(Debug, Clone, PartialEq)]
pub struct Launched {
    pub rank: usize,
    pub world_size: usize,
    /// Which of the visible GPUs is this rank's.
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`, where rank 0 listens.
    pub master: String,
    /// The run id (`LADDER_RUN_ID`): ranks of other runs cannot join.
    pub token: String,
    /// `LADDER_COLLECTIVE`: `nccl` forces NCCL, `tcp` the TCP collective, `auto` picks by
    /// device.
    pub collective: String,
    pub timeout: Duration,
}

fn bad_variable(name: &str, value: &str, why: &str) -> TrainerError {
    TrainerError::config(name, format!("{value:?} {why}"))
}

impl Launched {
    /// Reads the launch variables of this process; `None` when `WORLD_SIZE` is not set
    /// (a plain single-process run).
    pub fn from_env() -> Result<Option<Launched>> {
        Launched::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launched::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launched>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, default: Option<usize>| -> Result<usize> {
            match var(name) {
                Some(text) => text
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| bad_variable(name, &text, "is not a whole number")),
                None => default.ok_or_else(|| {
                    TrainerError::config(name, "is not set, but WORLD_SIZE is; set both (as torchrun and ladder's agent do)")
                }),
            }
        };
        let world_size = world
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                bad_variable("WORLD_SIZE", &world, "is not a whole number of at least 1")
            })?;
        let rank = number("RANK", (world_size == 1).then_some(0))?;
        if rank >= world_size {
            return Err(TrainerError::config(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world_size}"),
            ));
        }
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let port = number("MASTER_PORT", (world_size == 1).then_some(29500))?;
        if port == 0 || port > u16::MAX as usize {
            return Err(bad_variable(
                "MASTER_PORT",
                &port.to_string(),
                "is not a TCP port",
            ));
        }
        let host = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_string());
        let master = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let collective = var("LADDER_COLLECTIVE").unwrap_or_else(|| "auto".to_string());
        if !["auto", "nccl", "tcp"].contains(&collective.as_str()) {
            return Err(bad_variable(
                "LADDER_COLLECTIVE",
                &collective,
                "is not one of auto, nccl, tcp",
            ));
        }
        let timeout = match var("LADDER_RENDEZVOUS_TIMEOUT_S") {
            Some(text) => Duration::from_secs_f64(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        bad_variable(
                            "LADDER_RENDEZVOUS_TIMEOUT_S",
                            &text,
                            "is not a positive number of seconds",
                        )
                    })?,
            ),
            None => Duration::from_secs(300),
        };
        Ok(Some(Launched {
            rank,
            world_size,
            local_rank,
            master,
            token: var("LADDER_RUN_ID").unwrap_or_default(),
            collective,
            timeout,
        }))
    }

    fn rendezvous(&self) -> Rendezvous {
        Rendezvous {
            address: self.master.clone(),
            rank: self.rank,
            world_size: self.world_size,
            token: self.token.clone(),
            timeout: self.timeout,
        }
    }
}

/// Trains this process's part of a run: all of it when `launched` is `None` or a world
/// of one (then `data_parallel` may still split it over threads), else this rank of
/// `launched.world_size` processes.
pub fn train_launched(
    config: &TrainConfig,
    base_dir: &Path,
    out_dir: &Path,
    launched: Option<&Launched>,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let Some(launched) = launched else {
        return train_run(config, base_dir, out_dir, reporter);
    };
    if launched.world_size == 1 && launched.collective != "nccl" {
        return train_run(config, base_dir, out_dir, reporter);
    }
    if config.data_parallel > 1 {
        return Err(TrainerError::config(
            "data_parallel",
            format!(
                "{} ranks in one process cannot be combined with a launch of {} processes (WORLD_SIZE); with resources.gpus, leave data_parallel at 1",
                config.data_parallel, launched.world_size
            ),
        ));
    }
    if !config.batch_size.is_multiple_of(launched.world_size) {
        return Err(TrainerError::config(
            "batch_size",
            format!(
                "{} does not split evenly over {} ranks (WORLD_SIZE)",
                config.batch_size, launched.world_size
            ),
        ));
    }
    let device = device_for(&config.device, launched.local_rank)?;
    let collective = connect(launched, &device)?;
    let setup = setup(config, base_dir, &device)?;
    let mut silent = crate::train::Silent;
    let reporter: &mut dyn Reporter = if launched.rank == 0 {
        reporter
    } else {
        &mut silent
    };
    train_with(config, setup, out_dir, collective.as_ref(), reporter)
}

/// The collective for this rank's device.
fn connect(launched: &Launched, device: &Device) -> Result<Box<dyn Collective>> {
    let wants_nccl = match launched.collective.as_str() {
        "nccl" => true,
        "tcp" => false,
        _ => device.is_cuda(),
    };
    if !wants_nccl {
        return Ok(Box::new(TcpCollective::connect(&launched.rendezvous())?));
    }
    nccl(launched, device)
}

#[cfg(feature = "nccl")]
fn nccl(launched: &Launched, device: &Device) -> Result<Box<dyn Collective>> {
    Ok(Box::new(crate::collective::nccl::NcclCollective::connect(
        &launched.rendezvous(),
        device,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn nccl(launched: &Launched, _device: &Device) -> Result<Box<dyn Collective>> {
    Err(TrainerError::Collective(format!(
        "rank {} of {} is on a GPU, but this ladder was built without NCCL; build it with `cargo build --release --features cuda,nccl` (see docs/guides/gpu-build.md)",
        launched.rank, launched.world_size
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn launch_variables_are_read_like_torchrun_writes_them() {
        assert_eq!(Launched::from_vars(vars(&[])).unwrap(), None);
        let launched = Launched::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29511"),
            ("LADDER_RUN_ID", "r-7"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(launched.rank, 2);
        assert_eq!(launched.world_size, 4);
        assert_eq!(launched.master, "127.0.0.1:29511");
        assert_eq!(launched.token, "r-7");
        assert_eq!(launched.collective, "auto");
        let v6 = Launched::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "::1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(v6.master, "[::1]:1234");
        assert_eq!(v6.local_rank, 1);
    }

    #[test]
    fn bad_launch_variables_name_the_variable() {
        for (pairs, needle) in [
            (vec![("WORLD_SIZE", "two")], "WORLD_SIZE: \"two\""),
            (vec![("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (
                vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
                "RANK: is not set",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
                "RANK: 2 is not below WORLD_SIZE 2",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "1")],
                "MASTER_PORT: is not set",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                vec![("WORLD_SIZE", "1"), ("LADDER_COLLECTIVE", "mpi")],
                "LADDER_COLLECTIVE",
            ),
            (
                vec![("WORLD_SIZE", "1"), ("LADDER_RENDEZVOUS_TIMEOUT_S", "-1")],
                "LADDER_RENDEZVOUS_TIMEOUT_S",
            ),
        ] {
            let error = Launched::from_vars(vars(&pairs)).unwrap_err().to_string();
            assert!(error.contains(needle), "{pairs:?}: {error}");
        }
    }

    #[cfg(not(feature = "nccl"))]
    #[test]
    fn ranks_on_a_gpu_without_nccl_are_told_how_to_build() {
        let launched =
            Launched::from_vars(vars(&[("WORLD_SIZE", "1"), ("LADDER_COLLECTIVE", "nccl")]))
                .unwrap()
                .unwrap();
        let error = connect(&launched, &Device::Cpu).err().unwrap().to_string();
        assert!(error.contains("--features cuda,nccl"), "{error}");
    }
}
