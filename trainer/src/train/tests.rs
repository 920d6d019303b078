//! Tests of `trainer/src/train.rs`.

use super::*;
use crate::model::{AttentionType, ModelFamily, RopeScaling, YarnScaling};
use serde_json::json;

fn config(value: serde_json::Value) -> TrainConfig {
    TrainConfig::from_json(&value).unwrap()
}

fn tiny(steps: u64) -> serde_json::Value {
    json!({
        "model": {"init": "random", "arch": {"d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2}},
        "data": {"task": "synthetic-arith", "examples": 2000, "validation_sequences": 4},
        "optim": {"lr": 3e-3, "warmup": 3, "weight_decay": 0.01},
        "steps": steps,
        "batch_size": 4,
        "grad_accum": 2,
        "seq_len": 32,
        "log_every": 1,
        "checkpoint_every": 5,
        "device": "cpu",
        "seed": 11,
    })
}

fn run(config: &TrainConfig, out: &Path, stop_after: Option<u64>) -> (Outcome, Recorded) {
    let mut recorded = Recorded {
        stop_after,
        ..Recorded::default()
    };
    let outcome = train(config, Path::new("."), out, &SingleRank, &mut recorded).unwrap();
    (outcome, recorded)
}

/// A run stopped after step 8 (its last checkpoint is at step 5) and restarted in
/// the same directory reproduces the uninterrupted run's losses from step 6 on,
/// bit for bit.
#[test]
fn resumed_run_reproduces_the_uninterrupted_losses() {
    let config = config(tiny(12));
    let whole_dir = tempfile::tempdir().unwrap();
    let (whole, whole_log) = run(&config, whole_dir.path(), None);
    assert_eq!(whole.steps, 12);
    assert_eq!(whole_log.losses.len(), 12);

    let split_dir = tempfile::tempdir().unwrap();
    let (first, first_log) = run(&config, split_dir.path(), Some(8));
    assert!(first.interrupted);
    assert_eq!(first_log.losses.len(), 8);
    assert_eq!(first_log.losses[..], whole_log.losses[..8]);
    let (second, second_log) = run(&config, split_dir.path(), None);
    assert_eq!(second.resumed_from, Some(5));
    let resumed: Vec<(u64, f64)> = second_log.losses.clone();
    assert_eq!(resumed.first().map(|(s, _)| *s), Some(6));
    assert_eq!(
        resumed[..],
        whole_log.losses[5..],
        "losses after the checkpoint differ"
    );
    // The final models are identical too.
    let a = Model::load(&whole_dir.path().join("model"), &Device::Cpu).unwrap();
    let b = Model::load(&split_dir.path().join("model"), &Device::Cpu).unwrap();
    for ((name, x), (_, y)) in a.named_tensors().iter().zip(b.named_tensors()) {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y, "{name}");
    }
}

#[test]
fn a_checkpoint_from_another_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = run(&config(tiny(12)), dir.path(), Some(6));
    let mut other = tiny(12);
    other["optim"]["lr"] = json!(1e-2);
    let mut recorded = Recorded::default();
    let error = train(
        &config(other),
        Path::new("."),
        dir.path(),
        &SingleRank,
        &mut recorded,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("different configuration"), "{error}");
}

/// Gradient accumulation is normalised by the step's target count: two
/// micro-batches of 4 give the same update as one batch of 8.
#[test]
fn accumulation_equals_one_big_batch() {
    let mut accumulated = tiny(3);
    accumulated["checkpoint_every"] = json!(null);
    let mut big = accumulated.clone();
    big["batch_size"] = json!(8);
    big["grad_accum"] = json!(1);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (_, a) = run(&config(accumulated), dir_a.path(), None);
    let (_, b) = run(&config(big), dir_b.path(), None);
    for ((_, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

fn metric(outcome_metrics: &[(String, f64)], name: &str) -> f64 {
    outcome_metrics
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {outcome_metrics:?}"))
        .1
}

fn tensors(model: &Model) -> Vec<(String, Vec<f32>)> {
    model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// A base model trained briefly on `synthetic-kv` is saved, reloaded and fine-tuned
/// further, fully and with LoRA: both lower the held-out loss and raise accuracy on
/// the held-out multiple-choice twin; every trainable tensor changes and, with LoRA,
/// every base tensor stays bit-identical.
#[test]
fn fine_tuning_a_saved_model_lowers_loss_and_raises_accuracy() {
    let base_dir = tempfile::tempdir().unwrap();
    let common = json!({
        "data": {"task": "synthetic-kv", "examples": 4000, "validation_sequences": 8},
        "batch_size": 8,
        "seq_len": 64,
        "log_every": 10,
        "device": "cpu",
        "eval": [{"task": "synthetic-kv-mc", "limit": 96}],
    });
    let with = |extra: serde_json::Value| {
        let mut value = common.clone();
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        config(value)
    };
    let base = with(json!({
        "model": {"init": "random", "arch": {"d_model": 64, "layers": 2, "heads": 4}},
        "optim": {"lr": 3e-3, "warmup": 5},
        "steps": 30,
    }));
    let (outcome, _) = run(&base, base_dir.path(), None);
    let saved = outcome.model_dir.expect("saved");
    let base_model = Model::load(&saved, &Device::Cpu).unwrap();
    let base_tensors = tensors(&base_model);

    for (label, extra) in [
        ("full", json!({"optim": {"lr": 3e-3, "warmup": 5}})),
        (
            "lora",
            json!({"optim": {"lr": 1e-2, "warmup": 5},
                       "lora": {"rank": 8, "targets": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"]}}),
        ),
    ] {
        let mut value = extra.clone();
        value["model"] = json!({"path": saved.display().to_string()});
        value["steps"] = json!(120);
        let tune = with(value);
        let before = setup(&tune, Path::new("."), &Device::Cpu).unwrap();
        let (start_metrics, _) = evaluate(
            &before.model,
            &before.tokenizer,
            before.held_out.as_ref(),
            &before.tasks,
            0,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let (outcome, _) = run(&tune, out.path(), None);
        let end_metrics = outcome.final_metrics;
        let (loss0, loss1) = (
            metric(&start_metrics, "eval/loss"),
            metric(&end_metrics, "eval/loss"),
        );
        let acc = "eval/synthetic-kv-mc/acc";
        let (acc0, acc1) = (metric(&start_metrics, acc), metric(&end_metrics, acc));
        eprintln!("{label}: eval/loss {loss0:.4} -> {loss1:.4}, acc {acc0:.3} -> {acc1:.3}");
        assert!(
            loss1 < loss0,
            "{label}: held-out loss did not fall: {loss0} -> {loss1}"
        );
        assert!(
            acc1 > acc0,
            "{label}: accuracy did not rise: {acc0} -> {acc1}"
        );

        let tuned = Model::load(&outcome.model_dir.unwrap(), &Device::Cpu).unwrap();
        let after = tensors(&tuned);
        let before_by_name: std::collections::BTreeMap<_, _> =
            base_tensors.iter().cloned().collect();
        let mut adapters = 0;
        for (name, values) in &after {
            match before_by_name.get(name) {
                Some(original) if label == "lora" => {
                    assert_eq!(original, values, "lora: frozen {name} changed")
                }
                Some(original) => assert_ne!(original, values, "full: {name} did not train"),
                None => {
                    assert!(name.contains("lora_"), "unexpected tensor {name}");
                    adapters += 1;
                    assert!(values.iter().any(|v| *v != 0.0), "{name} is all zero");
                }
            }
        }
        if label == "lora" {
            // A and B for each of 7 modules in each of 2 layers.
            assert_eq!(adapters, 2 * 7 * 2);
            // B starts at zero, so non-zero B means it trained; A must have moved
            // from its seeded start too.
            let fresh = setup(&tune, Path::new("."), &Device::Cpu).unwrap();
            let start: std::collections::BTreeMap<_, _> =
                tensors(&fresh.model).into_iter().collect();
            for (name, values) in after.iter().filter(|(n, _)| n.contains("lora_")) {
                assert_ne!(&start[name], values, "{name} did not train");
            }
        } else {
            assert_eq!(adapters, 0);
        }
    }
}

/// A small base model of each family, with what sets the family apart and a RoPE scaling:
/// LLaMA with attention and MLP biases and Llama 3 scaling, Mistral with a window shorter
/// than the training sequences, Qwen2 (q/k/v biases, tied embeddings, a windowed second
/// layer) with YaRN, Qwen3 (q/k
/// norms, `head_dim` 16, attention biases) with linear scaling.
fn family_base(family: ModelFamily) -> LlamaConfig {
    let base = LlamaConfig {
        model_type: family,
        vocab_size: Tokenizer::byte().vocab_size(),
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..LlamaConfig::default()
    };
    match family {
        ModelFamily::Llama => LlamaConfig {
            attention_bias: true,
            mlp_bias: true,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: Some(32),
            }),
            ..base
        },
        ModelFamily::Mistral => LlamaConfig {
            sliding_window: Some(6),
            ..base
        },
        ModelFamily::Qwen2 => LlamaConfig {
            tie_word_embeddings: true,
            sliding_window: Some(6),
            layer_types: Some(vec![AttentionType::Full, AttentionType::Sliding]),
            rope_scaling: Some(RopeScaling::Yarn(YarnScaling {
                factor: Some(2.0),
                original_max_position_embeddings: Some(32),
                ..YarnScaling::default()
            })),
            ..base
        },
        ModelFamily::Qwen3 => LlamaConfig {
            head_dim: Some(16),
            attention_bias: true,
            rope_scaling: Some(RopeScaling::Linear { factor: 2.0 }),
            ..base
        },
    }
}

/// Each family loads from a saved directory, trains a few steps through the real loop, fully
/// and with LoRA, is evaluated, and saves a model that reloads with the family's config: in full
/// fine-tuning every tensor (biases and q/k norms included) moves; with LoRA every base
/// tensor stays bit-identical and the adapters move.
#[test]
fn every_model_family_loads_fine_tunes_full_and_lora_and_saves() {
    for family in [
        ModelFamily::Llama,
        ModelFamily::Mistral,
        ModelFamily::Qwen2,
        ModelFamily::Qwen3,
    ] {
        let base_config = family_base(family);
        let base_dir = tempfile::tempdir().unwrap();
        Model::random(base_config.clone(), 5, &Device::Cpu)
            .unwrap()
            .save(base_dir.path(), false)
            .unwrap();
        let base_tensors: std::collections::BTreeMap<_, _> =
            tensors(&Model::load(base_dir.path(), &Device::Cpu).unwrap())
                .into_iter()
                .collect();
        for lora in [false, true] {
            let mut value = json!({
                "model": {"path": base_dir.path().display().to_string()},
                "data": {"task": "synthetic-arith", "examples": 200, "validation_sequences": 2},
                "optim": {"lr": 1e-2, "warmup": 0},
                "steps": 2,
                "batch_size": 2,
                "seq_len": 16,
                "log_every": 1,
                "device": "cpu",
                "seed": 3,
                "eval": [{"task": "synthetic-arith-mc", "limit": 4}],
            });
            if lora {
                value["lora"] = json!({"rank": 2, "targets": ["q_proj", "k_proj", "v_proj",
                    "o_proj", "gate_proj", "up_proj", "down_proj"]});
            }
            let out = tempfile::tempdir().unwrap();
            let (outcome, _) = run(&config(value), out.path(), None);
            let acc = metric(&outcome.final_metrics, "eval/synthetic-arith-mc/acc");
            assert!((0.0..=1.0).contains(&acc), "{family:?}: acc {acc}");
            let tuned = Model::load(&outcome.model_dir.unwrap(), &Device::Cpu).unwrap();
            assert_eq!(tuned.config(), &base_config, "{family:?} (lora: {lora})");
            let mut adapters = 0;
            for (name, values) in tensors(&tuned) {
                match base_tensors.get(&name) {
                    Some(original) if lora => {
                        assert_eq!(original, &values, "{family:?} lora: frozen {name} changed")
                    }
                    Some(original) => {
                        assert_ne!(original, &values, "{family:?} full: {name} did not train")
                    }
                    None => {
                        assert!(lora && name.contains(".lora_"), "unexpected tensor {name}");
                        adapters += 1;
                    }
                }
            }
            assert_eq!(adapters, if lora { 2 * 7 * 2 } else { 0 }, "{family:?}");
        }
    }
}

/// Two data-parallel ranks, each on half of every batch, end with the weights of one
/// rank on the whole batch (up to float summation order), through the same training
/// loop and `Collective` trait the NCCL backend plugs into.
#[test]
fn two_ranks_on_half_batches_equal_one_rank_on_the_whole_batch() {
    let mut single = tiny(6);
    single["checkpoint_every"] = json!(null);
    single["batch_size"] = json!(8);
    single["grad_accum"] = json!(1);
    let mut parallel = single.clone();
    parallel["data_parallel"] = json!(2);
    let dir_single = tempfile::tempdir().unwrap();
    let dir_parallel = tempfile::tempdir().unwrap();
    let mut log_single = Recorded::default();
    let mut log_parallel = Recorded::default();
    train_run(
        &config(single),
        Path::new("."),
        dir_single.path(),
        &mut log_single,
    )
    .unwrap();
    train_run(
        &config(parallel),
        Path::new("."),
        dir_parallel.path(),
        &mut log_parallel,
    )
    .unwrap();
    for ((_, a), (_, b)) in log_single.losses.iter().zip(&log_parallel.losses) {
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
    }
    let a = Model::load(&dir_single.path().join("model"), &Device::Cpu).unwrap();
    let b = Model::load(&dir_parallel.path().join("model"), &Device::Cpu).unwrap();
    let start = Model::random(a.config().clone(), 11, &Device::Cpu).unwrap();
    let mut largest = 0f32;
    for (((name, x), (_, y)), (_, s)) in tensors(&a).iter().zip(tensors(&b)).zip(tensors(&start)) {
        assert_ne!(x, &s, "{name} did not train");
        for (p, q) in x.iter().zip(&y) {
            largest = largest.max((p - q).abs());
        }
    }
    eprintln!("largest weight difference after 6 steps: {largest:e}");
    // Tolerance: f32 sums in a different order, amplified by 6 Adam steps.
    assert!(largest < 1e-4, "weights differ by up to {largest}");
}

/// Two ranks as separate endpoints of the TCP collective (what the agent's one
/// process per GPU uses on a CPU node), sharing one run directory, end with exactly
/// the weights of two in-process ranks: both sum in rank order. Only rank 0 reports
/// and writes the model.
#[test]
fn tcp_ranks_train_bit_for_bit_like_in_process_ranks() {
    let mut value = tiny(6);
    value["checkpoint_every"] = json!(3);
    value["batch_size"] = json!(8);
    value["grad_accum"] = json!(1);
    let mut threaded = value.clone();
    threaded["data_parallel"] = json!(2);
    let dir_threads = tempfile::tempdir().unwrap();
    let mut log_threads = Recorded::default();
    train_run(
        &config(threaded),
        Path::new("."),
        dir_threads.path(),
        &mut log_threads,
    )
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir_tcp = tempfile::tempdir().unwrap();
    let tcp_config = config(value);
    let launched = |rank: usize| {
        crate::launch::Launched::from_vars(|name| match name {
            "WORLD_SIZE" => Some("2".to_string()),
            "RANK" | "LOCAL_RANK" => Some(rank.to_string()),
            "MASTER_PORT" => Some(port.to_string()),
            "LADDER_RUN_ID" => Some("run-tcp".to_string()),
            _ => None,
        })
        .unwrap()
        .unwrap()
    };
    let (log_tcp, log_rank1) = std::thread::scope(|scope| {
        let (config, dir) = (&tcp_config, dir_tcp.path());
        let second = scope.spawn(move || {
            let mut log = Recorded::default();
            crate::launch::train_launched(
                config,
                Path::new("."),
                dir,
                Some(&launched(1)),
                &mut log,
            )
            .unwrap();
            log
        });
        let mut log = Recorded::default();
        let outcome = crate::launch::train_launched(
            config,
            Path::new("."),
            dir,
            Some(&launched(0)),
            &mut log,
        )
        .unwrap();
        assert!(outcome.model_dir.is_some(), "rank 0 saves the model");
        (log, second.join().unwrap())
    });
    assert!(log_rank1.metrics.is_empty(), "rank 1 reports nothing");
    // Everything rank 0 reported (losses, evaluation) agrees, except throughput.
    let timeless = |log: &Recorded| {
        log.metrics
            .iter()
            .map(|(step, values)| {
                let kept: Vec<_> = values
                    .iter()
                    .filter(|(name, _)| name != "train/tokens_per_s")
                    .cloned()
                    .collect();
                (*step, kept)
            })
            .collect::<Vec<_>>()
    };
    assert!(!log_tcp.metrics.is_empty());
    assert_eq!(timeless(&log_tcp), timeless(&log_threads));
    let a = Model::load(&dir_threads.path().join("model"), &Device::Cpu).unwrap();
    let b = Model::load(&dir_tcp.path().join("model"), &Device::Cpu).unwrap();
    for ((name, x), (_, y)) in tensors(&a).iter().zip(tensors(&b)) {
        assert_eq!(x, &y, "{name} differs between TCP and in-process ranks");
    }
    let losses = |log: &Recorded| {
        log.losses
            .iter()
            .map(|(_, l)| l.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&log_tcp), losses(&log_threads));
}
