//! Hugging Face checkpoint directories: `config.json` with `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`), plus PEFT's `adapter_config.json` and
//! `adapter_model.safetensors` when the model carries LoRA adapters.
//!
//! Loading memory-maps each tensor's bytes in turn ([`TensorStore`]) and checks every name
//! and shape against the config. [`Model::load`], for scoring, keeps each weight in the
//! dtype it is stored in (bf16 stays bf16: half the memory of f32) and the forward pass
//! widens it to f32 where it is used; [`Model::load_trainable`], for training, casts every
//! weight to an f32 variable up front. Saving writes f32 under the same names; each file is
//! written to a temporary name, synced and renamed, so a crash never leaves a half-written
//! file under a real name.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use super::config::AdapterConfigFile;
use super::decoder::Adapter;
use super::{adapter_names, expected_shape, weight_names, LlamaConfig, Model, WeightMode};
use crate::{Result, TrainerError};

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

impl Model {
    /// Loads `dir/config.json` with `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json` (the single file wins when both exist, as in
    /// transformers), for scoring: every base weight is frozen and kept in the dtype the
    /// file stores it in (f32, f16, bf16 or f64), and [`Model::forward`] computes in f32,
    /// widening each weight where it is used. Widening f16 and bf16 to f32 is exact, so the
    /// logits are bit for bit those of [`Model::load_trainable`] while a bf16 checkpoint
    /// takes about its file size in memory instead of twice that. With
    /// `tie_word_embeddings` a stored `lm_head.weight` is ignored (transformers ties it to
    /// the embedding).
    ///
    /// When the directory also holds a PEFT adapter (`adapter_config.json` +
    /// `adapter_model.safetensors`) it is applied unmerged, its weights f32 variables.
    pub fn load(dir: &Path, device: &Device) -> Result<Model> {
        Model::load_as(dir, device, WeightMode::Frozen)
    }

    /// [`Model::load`] for training: every base weight is cast to f32 and, without an
    /// adapter in the directory, becomes a trainable variable; with one, the base weights
    /// are frozen f32 tensors.
    pub fn load_trainable(dir: &Path, device: &Device) -> Result<Model> {
        Model::load_as(dir, device, WeightMode::Trainable)
    }

    fn load_as(dir: &Path, device: &Device, mode: WeightMode) -> Result<Model> {
        let config = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
        let store = TensorStore::open(dir)?;
        let mut tensors = HashMap::new();
        for name in weight_names(&config) {
            let stored = store.load(&name, &expected_shape(&config, &name), device)?;
            let tensor = match mode {
                WeightMode::Trainable => stored.to_dtype(DType::F32)?,
                WeightMode::Frozen => stored,
            };
            tensors.insert(name, tensor);
        }
        let mut model = Model::from_tensors(config, tensors, device, mode)?;
        model.source = Some(dir.canonicalize().map_err(|e| TrainerError::io(dir, e))?);
        let adapter_config = dir.join(ADAPTER_CONFIG_FILE);
        if adapter_config.exists() {
            model.load_adapter(&adapter_config, &dir.join(ADAPTER_WEIGHTS_FILE))?;
        }
        Ok(model)
    }

    /// Applies a PEFT adapter to a model without one; every adapter tensor must be present
    /// with its expected shape, and no other tensor may be.
    fn load_adapter(&mut self, config_path: &Path, weights_path: &Path) -> Result<()> {
        let lora = AdapterConfigFile::read(config_path)?;
        let store = TensorStore::single(weights_path)?;
        let mut expected = Vec::new();
        let dtype = self.dtype();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (module, projection) in layer.projections_mut() {
                if !lora.targets_module(module) {
                    continue;
                }
                let path = if matches!(module, "gate_proj" | "up_proj" | "down_proj") {
                    format!("mlp.{module}")
                } else {
                    format!("self_attn.{module}")
                };
                let (out_dim, in_dim) = projection.weight.tensor().dims2()?;
                let (a_name, b_name) = adapter_names(i, &path);
                let a = store.load(&a_name, &[lora.rank, in_dim], &self.device)?;
                let b = store.load(&b_name, &[out_dim, lora.rank], &self.device)?;
                projection.adapter = Some(Adapter {
                    a: Var::from_tensor(&a.to_dtype(dtype)?)?,
                    b: Var::from_tensor(&b.to_dtype(dtype)?)?,
                    scale: lora.scale(),
                });
                expected.push(a_name);
                expected.push(b_name);
            }
        }
        if let Some(unexpected) = store.names().find(|name| !expected.contains(*name)) {
            return Err(TrainerError::invalid(
                weights_path.display(),
                format!(
                    "unexpected tensor {unexpected} (adapter targets: {})",
                    lora.targets.join(", ")
                ),
            ));
        }
        self.freeze_base();
        self.lora = Some(lora);
        Ok(())
    }

    /// Writes `config.json` and `model.safetensors` (f32, HF names) into `dir`, creating it.
    ///
    /// With LoRA, `merge == true` folds the adapters into the weights (`W + (alpha/r) B A`)
    /// and writes no adapter; `merge == false` writes the base weights plus PEFT's
    /// `adapter_config.json` and `adapter_model.safetensors`. Adapter files left in `dir` by
    /// an earlier save are removed when no adapter is written, so a reload never applies a
    /// stale adapter. The adapter's `base_model_name_or_path` is the directory the base
    /// was loaded from, or `dir` itself (which holds the base weights too) for a model
    /// that was not loaded, so `peft.AutoPeftModelForCausalLM` finds its base.
    pub fn save(&self, dir: &Path, merge: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        let mut base = BTreeMap::new();
        let mut adapters = BTreeMap::new();
        for (name, param) in self.params() {
            if name.contains(".lora_") {
                if !merge {
                    adapters.insert(name, param.tensor().clone());
                }
                continue;
            }
            base.insert(name, param.tensor().clone());
        }
        if merge {
            for (i, layer) in self.layers.iter().enumerate() {
                for (path, _, projection) in layer.projections() {
                    if projection.adapter.is_some() {
                        base.insert(
                            format!("model.layers.{i}.{path}.weight"),
                            projection.merged_weight()?,
                        );
                    }
                }
            }
        }

        let mut files = vec![
            (dir.join(CONFIG_FILE), self.config.to_json().into_bytes()),
            (dir.join(WEIGHTS_FILE), serialize_f32(&base)?),
        ];
        let write_adapter = !merge && !adapters.is_empty();
        if let (true, Some(lora)) = (write_adapter, &self.lora) {
            let base = match &self.source {
                Some(source) => source.clone(),
                None => dir.canonicalize().map_err(|e| TrainerError::io(dir, e))?,
            };
            let adapter_config = AdapterConfigFile::from_lora(lora, &base.display().to_string());
            let json =
                serde_json::to_string_pretty(&adapter_config).expect("adapter config serializes");
            files.push((dir.join(ADAPTER_CONFIG_FILE), json.into_bytes()));
            files.push((dir.join(ADAPTER_WEIGHTS_FILE), serialize_f32(&adapters)?));
        }

        // Write every file under a temporary name first, then rename them all, so the window
        // in which the directory mixes old and new files is as short as possible.
        let mut staged = Vec::with_capacity(files.len());
        for (path, bytes) in &files {
            staged.push((write_temporary(path, bytes)?, path));
        }
        if !write_adapter {
            for stale in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
                let path = dir.join(stale);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|e| TrainerError::io(&path, e))?;
                }
            }
        }
        for (temporary, path) in staged {
            std::fs::rename(&temporary, path).map_err(|e| TrainerError::io(path, e))?;
        }
        Ok(())
    }
}

/// Writes a randomly initialised checkpoint of `config` into `dir` (`config.json` and one
/// `model.safetensors` with every weight in `dtype`), generating each tensor only while it
/// is written, so a model far larger than memory in f32 can be written: the largest single
/// tensor is the most held at once. Weights are drawn as [`Model::random`] draws them
/// (normal(0, 0.02), norm weights 1, biases 0), each tensor from its own generator seeded
/// with `seed` and its position, so the file does not depend on the write order. Returns
/// the size of `model.safetensors` in bytes. For benchmarks and tests of large models.
pub fn write_random_checkpoint(
    dir: &Path,
    config: &LlamaConfig,
    dtype: DType,
    seed: u64,
) -> Result<u64> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let config_path = dir.join(CONFIG_FILE);
    std::fs::write(&config_path, config.to_json())
        .map_err(|e| TrainerError::io(&config_path, e))?;
    let tensors: Vec<(String, RandomTensor)> = weight_names(config)
        .into_iter()
        .enumerate()
        .map(|(index, name)| {
            let fill = if name.ends_with("norm.weight") {
                Fill::Ones
            } else if name.ends_with(".bias") {
                Fill::Zeros
            } else {
                Fill::Normal(seed.wrapping_add(index as u64))
            };
            let shape = expected_shape(config, &name);
            let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
            let tensor = RandomTensor {
                shape,
                dtype,
                bytes,
                fill,
            };
            (name, tensor)
        })
        .collect();
    let path = dir.join(WEIGHTS_FILE);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), &path)
        .map_err(|e| TrainerError::invalid(path.display(), e.to_string()))?;
    let size = std::fs::metadata(&path).map_err(|e| TrainerError::io(&path, e))?;
    Ok(size.len())
}

/// How [`RandomTensor`] fills its values.
#[derive(Clone, Copy)]
enum Fill {
    Ones,
    Zeros,
    /// normal(0, 0.02) from a `ChaCha8Rng` with this seed.
    Normal(u64),
}

/// A tensor whose bytes are generated when the safetensors writer asks for them.
struct RandomTensor {
    shape: Vec<usize>,
    dtype: DType,
    bytes: usize,
    fill: Fill,
}

impl safetensors::View for RandomTensor {
    fn dtype(&self) -> Dtype {
        self.dtype.into()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        use rand::SeedableRng;
        let count = self.shape.iter().product();
        let values = match self.fill {
            Fill::Ones => vec![1f32; count],
            Fill::Zeros => vec![0f32; count],
            Fill::Normal(seed) => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                super::normal_values(&mut rng, count, super::INIT_STD)
            }
        };
        // The writer's `View` cannot fail; a tensor of the shape it declared always converts.
        let tensor = Tensor::from_vec(values, self.shape.as_slice(), &Device::Cpu)
            .and_then(|t| t.to_dtype(self.dtype))
            .expect("a CPU tensor converts to a float dtype");
        let bytes = safetensors::View::data(&tensor).into_owned();
        debug_assert_eq!(bytes.len(), self.bytes);
        std::borrow::Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes
    }
}

/// safetensors bytes of `tensors` cast to f32, with the `{"format": "pt"}` metadata
/// transformers expects.
fn serialize_f32(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut converted = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        converted.push((name.clone(), tensor.to_dtype(DType::F32)?.contiguous()?));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(converted, Some(metadata))
        .map_err(|e| TrainerError::invalid("safetensors", e.to_string()))
}

/// Writes `bytes` next to `path` under a hidden temporary name, synced to disk.
fn write_temporary(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file =
        std::fs::File::create(&temporary).map_err(|e| TrainerError::io(&temporary, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TrainerError::io(&temporary, e))?;
    Ok(temporary)
}

/// The safetensors files of one checkpoint, memory-mapped one tensor at a time, with the
/// file each tensor lives in.
///
/// Opening a file maps it only to read and check its header; [`TensorStore::load`] then
/// maps just the bytes of the tensor it copies out and unmaps them right after, so the
/// file's pages never stay in the process's resident set. (Mapping the whole file for the
/// whole load, as candle's `MmapedSafetensors` does, would keep every page read resident
/// next to its copy: peak RSS twice the file.)
struct TensorStore {
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
    /// Where a tensor missing from `routing` is reported: the single file or the index.
    listing: PathBuf,
}

/// One safetensors file whose header has been read and checked.
struct MappedFile {
    path: PathBuf,
    file: std::fs::File,
    /// Byte offset of the data section: the 8-byte header length plus the header.
    data_start: usize,
    metadata: Metadata,
}

impl TensorStore {
    /// `dir/model.safetensors`, or else the shards of `dir/model.safetensors.index.json`.
    fn open(dir: &Path) -> Result<TensorStore> {
        let single = dir.join(WEIGHTS_FILE);
        if single.exists() {
            return TensorStore::single(&single);
        }
        let index_path = dir.join(WEIGHTS_INDEX_FILE);
        if !index_path.exists() {
            return Err(TrainerError::invalid(
                dir.display(),
                format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the checkpoint directory"),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| TrainerError::io(&index_path, e))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| {
            TrainerError::invalid(
                format!("{}:{}:{}", index_path.display(), e.line(), e.column()),
                e.to_string(),
            )
        })?;
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::with_capacity(shard_names.len());
        for shard in &shard_names {
            files.push(MappedFile::open(&dir.join(shard))?);
        }
        let routing = index
            .weight_map
            .iter()
            .map(|(name, shard)| {
                let position = shard_names.binary_search(&shard).expect("shard listed");
                (name.clone(), position)
            })
            .collect();
        Ok(TensorStore {
            files,
            routing,
            listing: index_path,
        })
    }

    fn single(path: &Path) -> Result<TensorStore> {
        let file = MappedFile::open(path)?;
        let routing = file
            .metadata
            .tensors()
            .into_keys()
            .map(|name| (name, 0))
            .collect();
        Ok(TensorStore {
            files: vec![file],
            routing,
            listing: path.to_path_buf(),
        })
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.routing.keys()
    }

    /// Tensor `name` in the dtype it is stored in, after checking it has `shape` and a
    /// float dtype (f32, f16, bf16 or f64).
    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(&file) = self.routing.get(name) else {
            return Err(TrainerError::invalid(
                self.listing.display(),
                format!("missing tensor {name}"),
            ));
        };
        self.files[file].load(name, shape, device)
    }
}

impl MappedFile {
    /// Maps `path` to read its header, checks that the header is well formed and that the
    /// file holds every byte the header promises, and unmaps it again. A truncated file is
    /// reported with the first tensor whose bytes are missing.
    fn open(path: &Path) -> Result<MappedFile> {
        let file = std::fs::File::open(path).map_err(|e| TrainerError::io(path, e))?;
        // SAFETY: the mapping is read-only and only read here. Another process truncating
        // or rewriting the file while it is mapped could make these reads see changed
        // bytes or fault; every memory-mapped checkpoint loader (transformers, candle)
        // accepts that caveat, and checkpoints are not rewritten in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TrainerError::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|error| {
            let message = match error {
                safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                    truncation_message(&map).unwrap_or_else(|| error.to_string())
                }
                safetensors::SafeTensorError::TensorInvalidInfo => invalid_info_message(&map)
                    .unwrap_or_else(|| format!("{error} (corrupt header)")),
                _ => format!("not a valid safetensors file: {error}"),
            };
            TrainerError::invalid(path.display(), message)
        })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Maps the bytes of tensor `name`, copies them into a tensor of the stored dtype on
    /// `device` and unmaps them.
    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let invalid = |message: String| TrainerError::invalid(self.path.display(), message);
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| invalid(format!("missing tensor {name}")))?;
        if info.shape != shape {
            return Err(invalid(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
        if !matches!(
            info.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            return Err(invalid(format!(
                "tensor {name} has dtype {:?}, expected a float type (f32, f16, bf16, f64)",
                info.dtype
            )));
        }
        let dtype = DType::try_from(info.dtype)?;
        let (start, end) = info.data_offsets;
        if start == end {
            return Ok(Tensor::from_raw_buffer(&[], dtype, shape, device)?);
        }
        // SAFETY: as in `MappedFile::open`; `open` checked that the data section holds
        // `start..end`, and the mapping is dropped before this function returns.
        let bytes = unsafe {
            memmap2::MmapOptions::new()
                .offset((self.data_start + start) as u64)
                .len(end - start)
                .map(&self.file)
        }
        .map_err(|e| TrainerError::io(&self.path, e))?;
        Tensor::from_raw_buffer(&bytes, dtype, shape, device)
            .map_err(|e| invalid(format!("tensor {name}: {e}")))
    }
}

/// The raw header entries of a safetensors buffer (`name -> {dtype, shape,
/// data_offsets}`) and the length of its data section, when the header itself parses; used
/// only to explain why `SafeTensors::read_metadata` refused a file.
fn raw_header(buffer: &[u8]) -> Option<(Vec<(String, serde_json::Value)>, usize)> {
    let header_len = usize::try_from(u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?)).ok()?;
    let header = buffer.get(8..8usize.checked_add(header_len)?)?;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    let mut tensors: Vec<(String, serde_json::Value)> = entries
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .collect();
    let offset =
        |entry: &serde_json::Value, i: usize| entry["data_offsets"][i].as_u64().unwrap_or(u64::MAX);
    tensors.sort_by_key(|(_, entry)| offset(entry, 0));
    Some((tensors, buffer.len() - 8 - header_len))
}

/// Names the first tensor whose bytes lie past the end of a truncated file.
fn truncation_message(buffer: &[u8]) -> Option<String> {
    let (tensors, data_len) = raw_header(buffer)?;
    let (name, entry) = tensors.iter().find(|(_, entry)| {
        entry["data_offsets"][1]
            .as_u64()
            .is_some_and(|end| end > data_len as u64)
    })?;
    let offsets = &entry["data_offsets"];
    Some(format!(
        "truncated: tensor {name} needs bytes {}..{} of the data section but the file holds \
         only {data_len} (an interrupted download or copy; fetch or save the file again)",
        offsets[0], offsets[1]
    ))
}

/// Names the first tensor whose byte span does not match its shape and dtype.
fn invalid_info_message(buffer: &[u8]) -> Option<String> {
    let (tensors, _) = raw_header(buffer)?;
    tensors.iter().find_map(|(name, entry)| {
        let dtype: Dtype = serde_json::from_value(entry["dtype"].clone()).ok()?;
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).ok()?;
        let start = entry["data_offsets"][0].as_u64()?;
        let end = entry["data_offsets"][1].as_u64()?;
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        let needed = elements.checked_mul(dtype.bitsize())? / 8;
        (end.checked_sub(start) != Some(needed as u64)).then(|| {
            format!(
                "corrupt header: tensor {name} of dtype {dtype:?} and shape {shape:?} needs \
                 {needed} bytes but its offsets {start}..{end} span {}",
                end.wrapping_sub(start)
            )
        })
    })
}
