//! The collective between ranks that are separate processes on the CPU: rank 0 listens
//! on `MASTER_ADDR:MASTER_PORT` (the agent picks a free port for each run), the other
//! ranks connect to it, and every collective goes through rank 0, which sums the
//! contributions in rank order. The sums are therefore bit-identical to the in-process
//! [`CpuCollective`](super::CpuCollective)'s, and every rank gets the same bits.
//!
//! The same rendezvous carries the NCCL unique id from rank 0 to the others when the
//! ranks are on GPUs ([`TcpCollective::broadcast_bytes`]).
//!
//! Wire format, all integers little-endian: a joining rank sends `LDR1`, its rank (u32),
//! the world size (u32) and a token (u32 length + UTF-8: the run id, so a rank of another
//! run that found the port cannot join); rank 0 answers one byte, 1, once every rank has
//! joined. A collective is then one frame per rank to rank 0 and one frame back, a frame
//! being a u64 byte count and the bytes (f32 values little-endian).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{flatten, restore};
use crate::collective::Collective;
use crate::{Result, TrainerError};

const MAGIC: &[u8; 4] = b"LDR1";
/// Largest frame accepted: a guard against reading a stranger's bytes as a length.
const MAX_FRAME_BYTES: u64 = 1 << 40;

/// Where and how long ranks meet.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Rank 0's listening address (`MASTER_ADDR:MASTER_PORT`).
    pub address: String,
    pub rank: usize,
    pub world_size: usize,
    /// The same on every rank of one run (the run id); a mismatch is refused.
    pub token: String,
    /// How long rank 0 waits for everyone and the others retry connecting.
    pub timeout: Duration,
}

/// One rank's end of a process group that talks over TCP through rank 0.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks `1..world`, in rank order. Other ranks: the one
    /// stream to rank 0. Behind a lock because the collective trait takes `&self`.
    peers: Mutex<Vec<TcpStream>>,
    address: String,
}

fn failure(message: impl Into<String>) -> TrainerError {
    TrainerError::Collective(message.into())
}

impl TcpCollective {
    /// Forms the group: rank 0 accepts `world_size - 1` ranks, the others connect
    /// (retrying until rank 0 listens). Fails, naming what is missing, after `timeout`.
    pub fn connect(rendezvous: &Rendezvous) -> Result<TcpCollective> {
        let Rendezvous {
            address,
            rank,
            world_size,
            token,
            timeout,
        } = rendezvous;
        if *world_size == 0 || rank >= world_size {
            return Err(failure(format!(
                "rank {rank} is not in a world of size {world_size} (RANK must be below WORLD_SIZE)"
            )));
        }
        let deadline = Instant::now() + *timeout;
        let peers = if *rank == 0 {
            accept_all(address, *world_size, token, deadline)?
        } else {
            vec![join(address, *rank, *world_size, token, deadline)?]
        };
        Ok(TcpCollective {
            rank: *rank,
            world: *world_size,
            peers: Mutex::new(peers),
            address: address.clone(),
        })
    }

    fn lost(&self, peer: usize, error: std::io::Error) -> TrainerError {
        if self.rank == 0 {
            failure(format!(
                "rank 0 lost rank {peer} ({error}); that rank probably failed, see its log"
            ))
        } else {
            failure(format!(
                "rank {} lost rank 0 at {} ({error}); rank 0 probably failed, see its log",
                self.rank, self.address
            ))
        }
    }

    /// Rank 0's `payload` reaches every rank (returned on all, unchanged on rank 0).
    pub fn broadcast_bytes(&self, payload: Vec<u8>) -> Result<Vec<u8>> {
        let mut peers = self.peers.lock().expect("collective lock");
        if self.rank == 0 {
            for (index, peer) in peers.iter_mut().enumerate() {
                write_frame(peer, &payload).map_err(|error| self.lost(index + 1, error))?;
            }
            Ok(payload)
        } else {
            read_frame(&mut peers[0]).map_err(|error| self.lost(0, error))
        }
    }

    /// Every rank's `values` summed element-wise in rank order, on every rank.
    fn sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>> {
        let mut peers = self.peers.lock().expect("collective lock");
        if self.rank == 0 {
            for (index, peer) in peers.iter_mut().enumerate() {
                let bytes = read_frame(peer).map_err(|error| self.lost(index + 1, error))?;
                if bytes.len() != values.len() * 4 {
                    return Err(failure(format!(
                        "rank {} sent {} values where rank 0 has {}: the ranks' models differ",
                        index + 1,
                        bytes.len() / 4,
                        values.len()
                    )));
                }
                for (acc, chunk) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                    *acc += f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                }
            }
            let bytes = to_bytes(&values);
            for (index, peer) in peers.iter_mut().enumerate() {
                write_frame(peer, &bytes).map_err(|error| self.lost(index + 1, error))?;
            }
            Ok(values)
        } else {
            write_frame(&mut peers[0], &to_bytes(&values)).map_err(|error| self.lost(0, error))?;
            let bytes = read_frame(&mut peers[0]).map_err(|error| self.lost(0, error))?;
            from_bytes(&bytes, values.len())
        }
    }
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

fn from_bytes(bytes: &[u8], expected: usize) -> Result<Vec<f32>> {
    if bytes.len() != expected * 4 {
        return Err(failure(format!(
            "rank 0 sent {} values where this rank has {expected}: the ranks' models differ",
            bytes.len() / 4
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect())
}

fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(bytes.len() as u64).to_le_bytes())?;
    stream.write_all(bytes)?;
    stream.flush()
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 8];
    stream.read_exact(&mut length)?;
    let length = u64::from_le_bytes(length);
    if length > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes is not from a ladder rank"),
        ));
    }
    let mut bytes = vec![0u8; length as usize];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .map_err(|error| failure(format!("MASTER_ADDR:MASTER_PORT {address}: {error}")))?
        .next()
        .ok_or_else(|| {
            failure(format!(
                "MASTER_ADDR:MASTER_PORT {address} resolves to nothing"
            ))
        })
}

/// Rank 0: accepts every other rank, checks its hello, and releases them all at once.
fn accept_all(
    address: &str,
    world: usize,
    token: &str,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    let listener = TcpListener::bind(resolve(address)?).map_err(|error| {
        failure(format!(
            "rank 0 cannot listen on {address} ({error}); is MASTER_PORT in use?"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|error| failure(format!("rank 0: {error}")))?;
    let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(|error| failure(format!("rank 0: {error}")))?;
                // A hello must arrive promptly; a stray connection must not stall us.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                match read_hello(&mut stream, world, token) {
                    Ok(rank) if slots[rank - 1].is_none() => {
                        let _ = stream.set_read_timeout(None);
                        slots[rank - 1] = Some(stream);
                    }
                    Ok(rank) => {
                        return Err(failure(format!(
                            "two processes joined as rank {rank} (from {from}); RANK must differ per process"
                        )))
                    }
                    Err(HelloError::Stranger(reason)) => {
                        tracing::warn!(%from, reason, "refused a connection that is not a rank of this run");
                    }
                    Err(HelloError::Fatal(reason)) => return Err(failure(reason)),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, slot)| slot.is_none())
                        .map(|(index, _)| (index + 1).to_string())
                        .collect();
                    return Err(failure(format!(
                        "rank 0 waited at {address} but rank(s) {} never joined",
                        missing.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(failure(format!("rank 0 accepting at {address}: {error}"))),
        }
    }
    let mut peers: Vec<TcpStream> = slots
        .into_iter()
        .map(|slot| slot.expect("all joined"))
        .collect();
    for (index, stream) in peers.iter_mut().enumerate() {
        stream.write_all(&[1]).map_err(|error| {
            failure(format!(
                "rank 0 lost rank {} while forming the group: {error}",
                index + 1
            ))
        })?;
    }
    Ok(peers)
}

enum HelloError {
    /// Not a rank of this run (wrong magic or token): ignored.
    Stranger(String),
    /// A rank of this run that disagrees with rank 0: the run cannot go on.
    Fatal(String),
}

fn read_hello(stream: &mut TcpStream, world: usize, token: &str) -> Result<usize, HelloError> {
    let stranger = |error: std::io::Error| HelloError::Stranger(error.to_string());
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).map_err(stranger)?;
    if &head[0..4] != MAGIC {
        return Err(HelloError::Stranger("bad greeting".into()));
    }
    let rank = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
    let their_world = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
    let token_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
    if token_len > 4096 {
        return Err(HelloError::Stranger("oversized token".into()));
    }
    let mut their_token = vec![0u8; token_len];
    stream.read_exact(&mut their_token).map_err(stranger)?;
    if their_token != token.as_bytes() {
        return Err(HelloError::Stranger(format!(
            "token {:?} is not this run's",
            String::from_utf8_lossy(&their_token)
        )));
    }
    if their_world != world {
        return Err(HelloError::Fatal(format!(
            "rank {rank} says WORLD_SIZE={their_world}, rank 0 has {world}"
        )));
    }
    if rank == 0 || rank >= world {
        return Err(HelloError::Fatal(format!(
            "a process joined as rank {rank}, which is not in 1..{world}"
        )));
    }
    Ok(rank)
}

/// A rank other than 0: connects (retrying while rank 0 starts), says hello, and waits
/// until rank 0 has everyone.
fn join(
    address: &str,
    rank: usize,
    world: usize,
    token: &str,
    deadline: Instant,
) -> Result<TcpStream> {
    let target = resolve(address)?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(error) => {
                if Instant::now() >= deadline {
                    return Err(failure(format!(
                        "rank {rank} could not reach rank 0 at {address}: {error}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let io = |error: std::io::Error| {
        failure(format!("rank {rank} joining rank 0 at {address}: {error}"))
    };
    stream.set_nodelay(true).map_err(io)?;
    let mut hello = Vec::with_capacity(16 + token.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    hello.extend_from_slice(&(token.len() as u32).to_le_bytes());
    hello.extend_from_slice(token.as_bytes());
    stream.write_all(&hello).map_err(io)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(remaining.max(Duration::from_secs(1))))
        .map_err(io)?;
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).map_err(|error| {
        failure(format!(
            "rank {rank} joined rank 0 at {address} but the group never formed: {error}"
        ))
    })?;
    stream.set_read_timeout(None).map_err(io)?;
    Ok(stream)
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let parts = flatten(tensors)?;
        let lengths: Vec<usize> = parts.iter().map(Vec::len).collect();
        let summed = self.sum(parts.concat())?;
        restore(tensors, &split(summed, &lengths))
    }

    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let parts = flatten(tensors)?;
        let lengths: Vec<usize> = parts.iter().map(Vec::len).collect();
        let total: usize = lengths.iter().sum();
        let bytes = self.broadcast_bytes(to_bytes(&parts.concat()))?;
        let values = from_bytes(&bytes, total)?;
        restore(tensors, &split(values, &lengths))
    }
}

fn split(values: Vec<f32>, lengths: &[usize]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(lengths.len());
    let mut offset = 0;
    for &length in lengths {
        out.push(values[offset..offset + length].to_vec());
        offset += length;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::CpuCollective;
    use candle_core::Device;

    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn rendezvous(address: &str, rank: usize, world: usize) -> Rendezvous {
        Rendezvous {
            address: address.to_string(),
            rank,
            world_size: world,
            token: "run-1".into(),
            timeout: Duration::from_secs(20),
        }
    }

    fn inputs(rank: usize) -> Vec<Tensor> {
        let r = rank as f32;
        vec![
            Tensor::new(&[0.1f32 * r + 0.3, 1e-7, -2.5 * r], &Device::Cpu).unwrap(),
            Tensor::new(&[[r * 10.0 + 0.7], [1.0 / (r + 3.0)]], &Device::Cpu).unwrap(),
        ]
    }

    fn as_bits(tensors: &[Tensor]) -> Vec<Vec<u32>> {
        tensors
            .iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f32::to_bits)
                    .collect()
            })
            .collect()
    }

    /// Three processes' worth of ranks (threads with separate sockets) get exactly the
    /// bits the in-process collective gives, for sums and broadcasts.
    #[test]
    fn tcp_ranks_agree_bit_for_bit_with_the_in_process_collective() {
        let address = free_address();
        let world = 3;
        // Rank 2 starts first: joining ranks retry until rank 0 listens.
        let handles: Vec<_> = (0..world)
            .rev()
            .map(|rank| {
                let address = address.clone();
                std::thread::spawn(move || {
                    let collective =
                        TcpCollective::connect(&rendezvous(&address, rank, world)).unwrap();
                    assert_eq!(collective.rank(), rank);
                    let mut summed = inputs(rank);
                    collective.all_reduce_sum(&mut summed).unwrap();
                    let mut shared = inputs(rank);
                    collective.broadcast(&mut shared).unwrap();
                    (rank, as_bits(&summed), as_bits(&shared))
                })
            })
            .collect();
        let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.sort_by_key(|(rank, _, _)| *rank);

        let reference: Vec<_> = CpuCollective::group(world)
            .into_iter()
            .map(|collective| {
                std::thread::spawn(move || {
                    let mut summed = inputs(collective.rank());
                    collective.all_reduce_sum(&mut summed).unwrap();
                    as_bits(&summed)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for (rank, summed, shared) in &results {
            assert_eq!(summed, &reference[*rank], "rank {rank}'s sum");
            assert_eq!(shared, &as_bits(&inputs(0)), "rank {rank}'s broadcast");
        }
    }

    #[test]
    fn a_rank_that_dies_fails_the_others_with_a_message_naming_it() {
        let address = free_address();
        let first = {
            let address = address.clone();
            std::thread::spawn(move || {
                let collective = TcpCollective::connect(&rendezvous(&address, 0, 2)).unwrap();
                let mut t = vec![Tensor::new(&[1f32], &Device::Cpu).unwrap()];
                collective.all_reduce_sum(&mut t).map(|_| ())
            })
        };
        let second = TcpCollective::connect(&rendezvous(&address, 1, 2)).unwrap();
        drop(second); // the process of rank 1 exits before its first collective
        let error = first.join().unwrap().unwrap_err().to_string();
        assert!(error.contains("rank 0 lost rank 1"), "{error}");
    }

    #[test]
    fn rendezvous_times_out_naming_the_missing_rank_and_ignores_strangers() {
        let address = free_address();
        let mut meet = rendezvous(&address, 0, 3);
        meet.timeout = Duration::from_millis(1500);
        let waiter = std::thread::spawn(move || TcpCollective::connect(&meet).map(|_| ()));
        // A rank of another run (different token) is turned away, rank 2 comes, rank 1
        // never does.
        let mut stranger = rendezvous(&address, 1, 3);
        stranger.token = "another-run".into();
        stranger.timeout = Duration::from_millis(1200);
        let stranger = std::thread::spawn(move || TcpCollective::connect(&stranger).map(|_| ()));
        let mut two = rendezvous(&address, 2, 3);
        two.timeout = Duration::from_millis(1200);
        let two = std::thread::spawn(move || TcpCollective::connect(&two).map(|_| ()));
        let error = waiter.join().unwrap().unwrap_err().to_string();
        assert!(error.contains("rank(s) 1 never joined"), "{error}");
        assert!(stranger.join().unwrap().is_err());
        assert!(
            two.join().unwrap().is_err(),
            "the group never formed for rank 2"
        );
    }

    #[test]
    fn bad_rank_numbers_are_refused() {
        let error = TcpCollective::connect(&rendezvous("127.0.0.1:1", 2, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("RANK must be below WORLD_SIZE"), "{error}");
    }
}
