//! The collective of ranks on GPUs: NCCL through cudarc (candle-core's `nccl` feature).
//!
//! Each rank is one process on one GPU. Rank 0 creates the NCCL unique id and sends it
//! to the other ranks over the run's TCP rendezvous (`MASTER_ADDR:MASTER_PORT`, which the
//! agent chose), then every rank joins the communicator on its device's stream, so NCCL
//! calls are ordered with candle's kernels. A collective flattens the tensors into one
//! f32 buffer (one NCCL call per step, not one per tensor), reduces or broadcasts it and
//! splits the result back.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::tcp::{Rendezvous, TcpCollective};
use crate::collective::Collective;
use crate::{Result, TrainerError};

/// One rank's NCCL communicator.
pub struct NcclCollective {
    comm: Arc<Comm>,
    /// The rank's GPU; tensors on the CPU (the step's loss) travel through it.
    device: Device,
    rank: usize,
    world: usize,
}

fn failure(message: impl Into<String>) -> TrainerError {
    TrainerError::Collective(message.into())
}

impl NcclCollective {
    /// Joins the run's NCCL communicator on `device` (a CUDA device), meeting the other
    /// ranks at `rendezvous` to share rank 0's unique id.
    pub fn connect(rendezvous: &Rendezvous, device: &Device) -> Result<NcclCollective> {
        let cuda = device.as_cuda_device().map_err(|_| {
            failure("NCCL needs the run on a GPU (device: cuda or auto with a GPU visible)")
        })?;
        let id = if rendezvous.world_size == 1 {
            Id::new().map_err(|error| failure(format!("ncclGetUniqueId: {error:?}")))?
        } else {
            let group = TcpCollective::connect(rendezvous)?;
            let bytes = if rendezvous.rank == 0 {
                let id =
                    Id::new().map_err(|error| failure(format!("ncclGetUniqueId: {error:?}")))?;
                group.broadcast_bytes(id.internal().iter().map(|&c| c as u8).collect())?
            } else {
                group.broadcast_bytes(Vec::new())?
            };
            let internal: [std::ffi::c_char; 128] = bytes
                .iter()
                .map(|&b| b as std::ffi::c_char)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| failure("rank 0 sent an NCCL id that is not 128 bytes"))?;
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            rendezvous.rank,
            rendezvous.world_size,
            id,
        )
        .map_err(|error| {
            failure(format!(
                "ncclCommInitRank (rank {} of {}): {error:?}",
                rendezvous.rank, rendezvous.world_size
            ))
        })?;
        Ok(NcclCollective {
            comm: Arc::new(comm),
            device: device.clone(),
            rank: rendezvous.rank,
            world: rendezvous.world_size,
        })
    }

    /// `tensors` as one contiguous f32 vector on the GPU, and each one's length.
    fn flat(&self, tensors: &[Tensor]) -> Result<(Tensor, Vec<usize>)> {
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| {
                t.to_device(&self.device)?
                    .to_dtype(DType::F32)?
                    .flatten_all()
            })
            .collect::<candle_core::Result<_>>()?;
        let lengths = parts.iter().map(Tensor::elem_count).collect();
        Ok((Tensor::cat(&parts, 0)?.contiguous()?, lengths))
    }

    fn unflat(tensors: &mut [Tensor], flat: &Tensor, lengths: &[usize]) -> Result<()> {
        let mut offset = 0;
        for (tensor, &length) in tensors.iter_mut().zip(lengths) {
            *tensor = flat
                .narrow(0, offset, length)?
                .reshape(tensor.shape())?
                .to_dtype(tensor.dtype())?
                .to_device(tensor.device())?;
            offset += length;
        }
        Ok(())
    }
}

/// What the custom op does with the flat buffer.
enum Op {
    AllReduceSum,
    BroadcastFromZero,
}

struct NcclOp<'a> {
    comm: &'a Comm,
    op: Op,
}

// Each rank drives its communicator from the one thread that trains; candle only asks
// for the bounds because custom ops may be shared.
unsafe impl Send for NcclOp<'_> {}
unsafe impl Sync for NcclOp<'_> {}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        match self.op {
            Op::AllReduceSum => "nccl-all-reduce-sum",
            Op::BroadcastFromZero => "nccl-broadcast",
        }
    }

    fn cpu_fwd(
        &self,
        _storage: &candle_core::CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("{} runs on GPU tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the buffer is not contiguous", self.name());
        };
        let device = storage.device.clone();
        let source = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut target = device.alloc_zeros::<f32>(end - start)?;
        let status = match self.op {
            Op::AllReduceSum => self.comm.all_reduce(&source, &mut target, &ReduceOp::Sum),
            Op::BroadcastFromZero => self.comm.broadcast(Some(&source), &mut target, 0),
        };
        status.map_err(|error| candle_core::Error::Msg(format!("{}: {error:?}", self.name())))?;
        Ok((
            CudaStorage::wrap_cuda_slice(target, device),
            layout.shape().clone(),
        ))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.apply(tensors, Op::AllReduceSum)
    }

    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.apply(tensors, Op::BroadcastFromZero)
    }
}

impl NcclCollective {
    /// Runs `op` on `tensors` as one flat buffer and puts the result back in place.
    fn apply(&self, tensors: &mut [Tensor], op: Op) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let (flat, lengths) = self.flat(tensors)?;
        let result = flat.apply_op1_no_bwd(&NcclOp {
            comm: &self.comm,
            op,
        })?;
        Self::unflat(tensors, &result, &lengths)
    }
}
