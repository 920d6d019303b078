//! Hugging Face checkpoint directories: `config.json` with `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`), plus PEFT's `adapter_config.json` and
//! `adapter_model.safetensors` when the model carries LoRA adapters.
//!
//! Loading casts f16/bf16/f64 weights to f32 and checks every name and shape against the
//! config. Saving writes f32 under the same names; each file is written to a temporary name,
//! synced and renamed, so a crash never leaves a half-written file under a real name.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor, Var};
use safetensors::{Dtype, SafeTensors};

use super::config::AdapterConfigFile;
use super::decoder::Adapter;
use super::{adapter_names, expected_shape, weight_names, LlamaConfig, Model};
use crate::{Result, TrainerError};

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

impl Model {
    /// Loads `dir/config.json` with `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json` (the single file wins when both exist, as in
    /// transformers). Weights are cast to f32. With `tie_word_embeddings` a stored
    /// `lm_head.weight` is ignored (transformers ties it to the embedding).
    ///
    /// When the directory also holds a PEFT adapter (`adapter_config.json` +
    /// `adapter_model.safetensors`) it is applied unmerged, with the base weights frozen.
    pub fn load(dir: &Path, device: &Device) -> Result<Model> {
        let config = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
        let store = TensorStore::open(dir)?;
        let mut tensors = HashMap::new();
        for name in weight_names(&config) {
            let tensor = store.load(&name, &expected_shape(&config, &name), device)?;
            tensors.insert(name, tensor);
        }
        let mut model = Model::from_tensors(config, tensors, device)?;
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

/// The safetensors files of one checkpoint read into memory, with the file each tensor
/// lives in.
struct TensorStore {
    /// `(path, bytes)` per file.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
    /// Where a tensor missing from `routing` is reported: the single file or the index.
    listing: PathBuf,
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
            let path = dir.join(shard);
            let bytes = std::fs::read(&path).map_err(|e| TrainerError::io(&path, e))?;
            files.push((path, bytes));
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
        let bytes = std::fs::read(path).map_err(|e| TrainerError::io(path, e))?;
        let names: Vec<String> = SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainerError::invalid(path.display(), e.to_string()))?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let routing = names.into_iter().map(|name| (name, 0)).collect();
        Ok(TensorStore {
            files: vec![(path.to_path_buf(), bytes)],
            routing,
            listing: path.to_path_buf(),
        })
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.routing.keys()
    }

    /// Tensor `name` as f32, after checking it has `shape` and a float dtype.
    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(&file) = self.routing.get(name) else {
            return Err(TrainerError::invalid(
                self.listing.display(),
                format!("missing tensor {name}"),
            ));
        };
        let (path, bytes) = &self.files[file];
        let invalid = |message: String| TrainerError::invalid(path.display(), message);
        let safetensors = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let view = safetensors
            .tensor(name)
            .map_err(|_| invalid(format!("missing tensor {name}")))?;
        if view.shape() != shape {
            return Err(invalid(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        if !matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            return Err(invalid(format!(
                "tensor {name} has dtype {:?}, expected a float type (f32, f16, bf16, f64)",
                view.dtype()
            )));
        }
        Ok(view.load(device)?.to_dtype(DType::F32)?)
    }
}
