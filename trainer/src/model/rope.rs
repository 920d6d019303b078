//! Rotary position embeddings: the RoPE scaling types transformers defines for LLaMA-family
//! models ([`RopeScaling`]), read from either `config.json` layout, and the inverse
//! frequencies and attention factor each one yields.
//!
//! [`inverse_frequencies`] follows transformers' `modeling_rope_utils.py` (version 5)
//! operation for operation, including which steps run in f32 (the frequency tensors) and
//! which in f64 (Python scalars), so that the rotary tables and hence the logits agree
//! with `LlamaForCausalLM` to float rounding.

use serde_json::{Map, Value};

use crate::{Result, TrainerError};

/// The RoPE scaling types ladder implements, with their parameters as `config.json` gives
/// them. Plain RoPE is the absence of a scaling (`rope_type: "default"`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// NTK-aware scaling recomputed for the sequence length: when a forward pass is longer
    /// than `max_position_embeddings`, the base grows with the length; shorter passes use
    /// plain RoPE.
    Dynamic { factor: f64 },
    /// Llama 3.1's smooth interpolation between scaled low and unscaled high frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        /// `max_position_embeddings` when absent (transformers' standardisation).
        original_max_position_embeddings: Option<usize>,
    },
    /// YaRN: frequency-dependent interpolation plus an attention factor on cos/sin.
    Yarn(YarnScaling),
    /// LongRoPE (Phi-3's): a rescale factor per frequency, one list for passes up to
    /// `original_max_position_embeddings` and one for longer passes, plus an attention
    /// factor on cos/sin.
    LongRope(LongRopeScaling),
}

/// The parameters of LongRoPE scaling; absent ones take transformers' defaults when used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LongRopeScaling {
    /// One factor per frequency (`head_dim / 2`), used while a pass is no longer than
    /// `original_max_position_embeddings`.
    pub short_factor: Vec<f64>,
    /// One factor per frequency, used for longer passes.
    pub long_factor: Vec<f64>,
    /// `max_position_embeddings / original_max_position_embeddings` when absent; only the
    /// default attention factor depends on it.
    pub factor: Option<f64>,
    /// `sqrt(1 + ln(factor) / ln(original_max_position_embeddings))` when absent (1 for a
    /// factor of at most 1).
    pub attention_factor: Option<f64>,
    /// `max_position_embeddings` when absent (transformers' standardisation).
    pub original_max_position_embeddings: Option<usize>,
}

/// The parameters of YaRN scaling; absent ones take transformers' defaults when used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct YarnScaling {
    /// `max_position_embeddings / original_max_position_embeddings` when absent.
    pub factor: Option<f64>,
    /// `max_position_embeddings` when absent.
    pub original_max_position_embeddings: Option<usize>,
    /// `0.1 ln(factor) + 1` (or the `mscale` / `mscale_all_dim` ratio) when absent.
    pub attention_factor: Option<f64>,
    /// 32 when absent or 0.
    pub beta_fast: Option<f64>,
    /// 1 when absent or 0.
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Whether the correction range is rounded outwards to whole dimensions; true when absent.
    pub truncate: Option<bool>,
}

/// The RoPE types a `config.json` may name, for error messages.
const ROPE_TYPES: &str = "default, linear, dynamic, llama3, yarn, longrope";

impl RopeScaling {
    /// transformers' `rope_type` name.
    pub fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn(_) => "yarn",
            RopeScaling::LongRope(_) => "longrope",
        }
    }

    /// The block as transformers 4 writes it under `rope_scaling` (`rope_type` plus the
    /// parameters that are set), which transformers 5 reads too.
    pub fn to_json(&self) -> Value {
        let mut block = Map::new();
        block.insert("rope_type".into(), self.rope_type().into());
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                block.insert(key.to_string(), value);
            }
        };
        match self {
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                put("factor", Some((*factor).into()));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                put("factor", Some((*factor).into()));
                put("low_freq_factor", Some((*low_freq_factor).into()));
                put("high_freq_factor", Some((*high_freq_factor).into()));
                put(
                    "original_max_position_embeddings",
                    original_max_position_embeddings.map(Value::from),
                );
            }
            RopeScaling::Yarn(yarn) => {
                put("factor", yarn.factor.map(Value::from));
                put(
                    "original_max_position_embeddings",
                    yarn.original_max_position_embeddings.map(Value::from),
                );
                put("attention_factor", yarn.attention_factor.map(Value::from));
                put("beta_fast", yarn.beta_fast.map(Value::from));
                put("beta_slow", yarn.beta_slow.map(Value::from));
                put("mscale", yarn.mscale.map(Value::from));
                put("mscale_all_dim", yarn.mscale_all_dim.map(Value::from));
                put("truncate", yarn.truncate.map(Value::from));
            }
            RopeScaling::LongRope(long) => {
                put("short_factor", Some(long.short_factor.clone().into()));
                put("long_factor", Some(long.long_factor.clone().into()));
                put("factor", long.factor.map(Value::from));
                put("attention_factor", long.attention_factor.map(Value::from));
                put(
                    "original_max_position_embeddings",
                    long.original_max_position_embeddings.map(Value::from),
                );
            }
        }
        Value::Object(block)
    }

    /// Checks the values: factors finite and positive, Llama 3's two frequency factors
    /// distinct, lengths nonzero. Errors name `{field}.{key}`.
    pub(super) fn validate(&self, field: &str) -> Result<()> {
        let positive = |key: &str, value: Option<f64>| -> Result<()> {
            match value {
                Some(v) if !(v.is_finite() && v > 0.0) => Err(rope_error(
                    field,
                    key,
                    format!("{v} is not supported (expected a finite number > 0)"),
                )),
                _ => Ok(()),
            }
        };
        let nonzero = |key: &str, value: Option<usize>| -> Result<()> {
            match value {
                Some(0) => Err(rope_error(field, key, "must be greater than 0")),
                _ => Ok(()),
            }
        };
        match self {
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                positive("factor", Some(*factor))
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", Some(*factor))?;
                positive("low_freq_factor", Some(*low_freq_factor))?;
                positive("high_freq_factor", Some(*high_freq_factor))?;
                if low_freq_factor == high_freq_factor {
                    return Err(rope_error(
                        field,
                        "high_freq_factor",
                        "must differ from low_freq_factor (the smoothing divides by their difference)",
                    ));
                }
                nonzero(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )
            }
            RopeScaling::Yarn(yarn) => {
                positive("factor", yarn.factor)?;
                nonzero(
                    "original_max_position_embeddings",
                    yarn.original_max_position_embeddings,
                )?;
                for (key, value) in [
                    ("attention_factor", yarn.attention_factor),
                    ("beta_fast", yarn.beta_fast),
                    ("beta_slow", yarn.beta_slow),
                    ("mscale", yarn.mscale),
                    ("mscale_all_dim", yarn.mscale_all_dim),
                ] {
                    if value.is_some_and(|v| !v.is_finite()) {
                        return Err(rope_error(field, key, "must be a finite number"));
                    }
                }
                Ok(())
            }
            RopeScaling::LongRope(long) => {
                for (key, factors) in [
                    ("short_factor", &long.short_factor),
                    ("long_factor", &long.long_factor),
                ] {
                    for value in factors {
                        positive(key, Some(*value))?;
                    }
                }
                positive("factor", long.factor)?;
                positive("attention_factor", long.attention_factor)?;
                nonzero(
                    "original_max_position_embeddings",
                    long.original_max_position_embeddings,
                )
            }
        }
    }
}

fn rope_error(field: &str, key: &str, message: impl Into<String>) -> TrainerError {
    TrainerError::config(format!("config.json: {field}.{key}"), message)
}

/// What one RoPE block of a `config.json` says: its `rope_theta`, when it carries one, and
/// its scaling (`None` for `rope_type: "default"`).
#[derive(Debug, PartialEq)]
pub(super) struct RopeBlock {
    pub(super) theta: Option<f64>,
    pub(super) scaling: Option<RopeScaling>,
}

/// Reads one RoPE block: transformers 4's `rope_scaling` or transformers 5's
/// `rope_parameters` (`field` names which, for errors). The type is read from `rope_type`,
/// or from the older `type`; a key that is not a parameter of that type, a missing
/// required parameter, a non-number and an unknown type are errors naming
/// `{field}.{key}`.
pub(super) fn read_rope_block(block: &Map<String, Value>, field: &str) -> Result<RopeBlock> {
    let type_of = |key: &str| -> Result<Option<&str>> {
        match block.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(name)) => Ok(Some(name.as_str())),
            Some(other) => Err(rope_error(
                field,
                key,
                format!("expected a string, found {other}"),
            )),
        }
    };
    let (type_key, rope_type) = match (type_of("rope_type")?, type_of("type")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(rope_error(
                field,
                "type",
                format!("{b:?} disagrees with rope_type {a:?}"),
            ));
        }
        (Some(name), _) => ("rope_type", name),
        (None, Some(name)) => ("type", name),
        (None, None) => ("rope_type", "default"),
    };
    let parameters: &[&str] = match rope_type {
        "default" => &[],
        "linear" | "dynamic" => &["factor"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "longrope" => &[
            "short_factor",
            "long_factor",
            "factor",
            "attention_factor",
            "original_max_position_embeddings",
        ],
        other => {
            return Err(rope_error(
                field,
                type_key,
                format!("RoPE type {other:?} is not supported (expected one of: {ROPE_TYPES})"),
            ));
        }
    };
    for key in block.keys() {
        if matches!(key.as_str(), "rope_type" | "type" | "rope_theta")
            || parameters.contains(&key.as_str())
        {
            continue;
        }
        let message = if key == "partial_rotary_factor" {
            "partial rotary embeddings are not supported (ladder rotates the whole head)"
                .to_string()
        } else if parameters.is_empty() {
            format!("is not a parameter of RoPE type {rope_type:?}, which takes none")
        } else {
            format!(
                "is not a parameter of RoPE type {rope_type:?} (expected: {})",
                parameters.join(", ")
            )
        };
        return Err(rope_error(field, key, message));
    }

    let number = |key: &str| -> Result<Option<f64>> {
        match block.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| rope_error(field, key, format!("expected a number, found {value}"))),
        }
    };
    let required = |key: &str| -> Result<f64> {
        number(key)?.ok_or_else(|| {
            rope_error(
                field,
                key,
                format!("missing; RoPE type {rope_type:?} requires it"),
            )
        })
    };
    let length = |key: &str| -> Result<Option<usize>> {
        match block.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                rope_error(
                    field,
                    key,
                    format!("expected a whole number, found {value}"),
                )
            }),
        }
    };
    let theta = number("rope_theta")?;
    let scaling = match rope_type {
        "linear" => Some(RopeScaling::Linear {
            factor: required("factor")?,
        }),
        "dynamic" => Some(RopeScaling::Dynamic {
            factor: required("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: required("factor")?,
            low_freq_factor: required("low_freq_factor")?,
            high_freq_factor: required("high_freq_factor")?,
            original_max_position_embeddings: length("original_max_position_embeddings")?,
        }),
        "yarn" => {
            let truncate = match block.get("truncate") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(other) => {
                    return Err(rope_error(
                        field,
                        "truncate",
                        format!("expected true or false, found {other}"),
                    ));
                }
            };
            let yarn = YarnScaling {
                factor: number("factor")?,
                original_max_position_embeddings: length("original_max_position_embeddings")?,
                attention_factor: number("attention_factor")?,
                beta_fast: number("beta_fast")?,
                beta_slow: number("beta_slow")?,
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
                truncate,
            };
            if yarn.factor.is_none() && yarn.original_max_position_embeddings.is_none() {
                return Err(rope_error(
                    field,
                    "factor",
                    "missing; YaRN needs a factor (or original_max_position_embeddings to derive it)",
                ));
            }
            Some(RopeScaling::Yarn(yarn))
        }
        "longrope" => {
            let factors = |key: &str| -> Result<Vec<f64>> {
                let Some(value) = block.get(key).filter(|v| !v.is_null()) else {
                    return Err(rope_error(
                        field,
                        key,
                        "missing; RoPE type \"longrope\" requires it",
                    ));
                };
                let numbers = value.as_array().map(|items| {
                    items
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<Vec<f64>>>()
                });
                match numbers {
                    Some(Some(numbers)) if !numbers.is_empty() => Ok(numbers),
                    _ => Err(rope_error(
                        field,
                        key,
                        format!("expected a non-empty list of numbers, found {value}"),
                    )),
                }
            };
            Some(RopeScaling::LongRope(LongRopeScaling {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                factor: number("factor")?,
                attention_factor: number("attention_factor")?,
                original_max_position_embeddings: length("original_max_position_embeddings")?,
            }))
        }
        _ => None,
    };
    if let Some(scaling) = &scaling {
        scaling.validate(field)?;
    }
    Ok(RopeBlock { theta, scaling })
}

/// The settings the rotary tables are computed from.
#[derive(Clone, Copy, Debug)]
pub(super) struct RopeSettings<'a> {
    pub(super) theta: f64,
    pub(super) head_dim: usize,
    pub(super) max_position_embeddings: usize,
    pub(super) scaling: Option<&'a RopeScaling>,
}

/// The inverse frequencies (`head_dim / 2` of them) and the factor cos and sin are
/// multiplied by, for a forward pass over positions `0..seq`, as transformers computes
/// them (`seq` matters only to `dynamic`).
pub(super) fn inverse_frequencies(settings: RopeSettings<'_>, seq: usize) -> (Vec<f32>, f32) {
    let dim = settings.head_dim;
    let max_positions = settings.max_position_embeddings;
    match settings.scaling {
        None => (default_frequencies(settings.theta, dim), 1.0),
        Some(RopeScaling::Linear { factor }) => {
            let factor = *factor as f32;
            let frequencies = default_frequencies(settings.theta, dim)
                .into_iter()
                .map(|f| f / factor)
                .collect();
            (frequencies, 1.0)
        }
        Some(RopeScaling::Dynamic { factor }) => {
            // transformers recomputes the base once a pass is longer than
            // max_position_embeddings; shorter passes see the base for exactly that length.
            let length = seq.max(max_positions) as f64;
            let growth = factor * length / max_positions as f64 - (factor - 1.0);
            let base = settings.theta * growth.powf(dim as f64 / (dim as f64 - 2.0));
            (default_frequencies(base, dim), 1.0)
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old_context = original_max_position_embeddings.unwrap_or(max_positions) as f64;
            let low_freq_wavelen = (old_context / low_freq_factor) as f32;
            let high_freq_wavelen = (old_context / high_freq_factor) as f32;
            let factor32 = *factor as f32;
            let low32 = *low_freq_factor as f32;
            let spread = (high_freq_factor - low_freq_factor) as f32;
            let two_pi = std::f64::consts::TAU as f32;
            let frequencies = default_frequencies(settings.theta, dim)
                .into_iter()
                .map(|inv_freq| {
                    let wavelen = two_pi / inv_freq;
                    let scaled = if wavelen > low_freq_wavelen {
                        inv_freq / factor32
                    } else {
                        inv_freq
                    };
                    let is_medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    if !is_medium {
                        return scaled;
                    }
                    let smooth = (old_context as f32 / wavelen - low32) / spread;
                    (1.0 - smooth) * scaled / factor32 + smooth * scaled
                })
                .collect();
            (frequencies, 1.0)
        }
        Some(RopeScaling::Yarn(yarn)) => yarn_frequencies(settings, yarn),
        Some(RopeScaling::LongRope(long)) => longrope_frequencies(settings, long, seq),
    }
}

/// transformers' `_compute_longrope_parameters` with its `longrope_frequency_update`: the
/// long factors for a pass longer than `original_max_position_embeddings`, else the short
/// ones; `1 / (factor_i * theta^(2i / dim))` in f32.
fn longrope_frequencies(
    settings: RopeSettings<'_>,
    long: &LongRopeScaling,
    seq: usize,
) -> (Vec<f32>, f32) {
    let dim = settings.head_dim;
    let original = long
        .original_max_position_embeddings
        .unwrap_or(settings.max_position_embeddings);
    let factor = long
        .factor
        .unwrap_or(settings.max_position_embeddings as f64 / original as f64);
    let attention_factor = match long.attention_factor {
        Some(given) => given,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    let factors = if seq > original {
        &long.long_factor
    } else {
        &long.short_factor
    };
    let base = settings.theta as f32;
    let frequencies = (0..dim / 2)
        .map(|i| {
            let ext = factors[i] as f32;
            1.0 / (ext * base.powf((2 * i) as f32 / dim as f32))
        })
        .collect();
    (frequencies, attention_factor as f32)
}

/// `1 / theta^(2i / dim)` in f32, as `torch.arange(0, dim, 2).float() / dim` and a Python
/// float base compute it.
fn default_frequencies(theta: f64, dim: usize) -> Vec<f32> {
    let base = theta as f32;
    (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect()
}

fn yarn_frequencies(settings: RopeSettings<'_>, yarn: &YarnScaling) -> (Vec<f32>, f32) {
    let dim = settings.head_dim;
    let base = settings.theta;
    let original = yarn
        .original_max_position_embeddings
        .unwrap_or(settings.max_position_embeddings) as f64;
    let factor = yarn
        .factor
        .unwrap_or(settings.max_position_embeddings as f64 / original);
    let mscale_of = |scale: f64, mscale: f64| -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * mscale * scale.ln() + 1.0
        }
    };
    // Python truthiness: a zero mscale counts as absent.
    let set = |value: Option<f64>| value.filter(|v| *v != 0.0);
    let attention_factor = match (
        yarn.attention_factor,
        set(yarn.mscale),
        set(yarn.mscale_all_dim),
    ) {
        (Some(given), _, _) => given,
        (None, Some(mscale), Some(all_dim)) => {
            mscale_of(factor, mscale) / mscale_of(factor, all_dim)
        }
        (None, _, _) => mscale_of(factor, 1.0),
    };
    let beta_fast = set(yarn.beta_fast).unwrap_or(32.0);
    let beta_slow = set(yarn.beta_slow).unwrap_or(1.0);
    let correction_dim = |rotations: f64| -> f64 {
        (dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if yarn.truncate.unwrap_or(true) {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min((dim - 1) as f64);
    if low == high {
        high += 0.001;
    }
    let (low32, span32) = (low as f32, (high - low) as f32);
    let base32 = base as f32;
    let factor32 = factor as f32;
    let frequencies = (0..dim / 2)
        .map(|i| {
            let pos_freq = base32.powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor32 * pos_freq);
            let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    (frequencies, attention_factor as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(scaling: Option<&RopeScaling>) -> RopeSettings<'_> {
        RopeSettings {
            theta: 10000.0,
            head_dim: 8,
            max_position_embeddings: 16,
            scaling,
        }
    }

    #[test]
    fn longrope_switches_to_the_long_factors_past_the_original_length() {
        let long = RopeScaling::LongRope(LongRopeScaling {
            short_factor: vec![1.0, 2.0, 4.0, 8.0],
            long_factor: vec![1.0, 3.0, 9.0, 27.0],
            original_max_position_embeddings: Some(4),
            ..LongRopeScaling::default()
        });
        let (short, attention) = inverse_frequencies(settings(Some(&long)), 4);
        let (longer, same_attention) = inverse_frequencies(settings(Some(&long)), 5);
        for i in 0..4 {
            let (s, l) = ([1.0f32, 2.0, 4.0, 8.0][i], [1.0f32, 3.0, 9.0, 27.0][i]);
            let power = 10000f32.powf((2 * i) as f32 / 8.0);
            assert_eq!(short[i], 1.0 / (s * power), "{i}");
            assert_eq!(longer[i], 1.0 / (l * power), "{i}");
        }
        // factor = 16 / 4 by default: sqrt(1 + ln 4 / ln 4).
        assert_eq!(attention, 2f32.sqrt());
        assert_eq!(attention, same_attention);
        let given = RopeScaling::LongRope(LongRopeScaling {
            short_factor: vec![1.0; 4],
            long_factor: vec![1.0; 4],
            factor: Some(0.5),
            ..LongRopeScaling::default()
        });
        assert_eq!(inverse_frequencies(settings(Some(&given)), 4).1, 1.0);
    }

    #[test]
    fn linear_divides_every_frequency_by_the_factor() {
        let (plain, _) = inverse_frequencies(settings(None), 4);
        let linear = RopeScaling::Linear { factor: 4.0 };
        let (scaled, attention) = inverse_frequencies(settings(Some(&linear)), 4);
        assert_eq!(attention, 1.0);
        for (p, s) in plain.iter().zip(&scaled) {
            assert_eq!(*s, p / 4.0);
        }
    }

    #[test]
    fn dynamic_is_plain_rope_up_to_max_positions_and_grows_the_base_beyond() {
        let dynamic = RopeScaling::Dynamic { factor: 2.0 };
        let (plain, _) = inverse_frequencies(settings(None), 16);
        let (short, _) = inverse_frequencies(settings(Some(&dynamic)), 16);
        assert_eq!(plain, short);
        let (long, _) = inverse_frequencies(settings(Some(&dynamic)), 32);
        // base * (2 * 32/16 - 1)^(8/6): the first frequency stays 1, the others shrink.
        assert_eq!(long[0], 1.0);
        assert!(long[1..].iter().zip(&plain[1..]).all(|(l, p)| l < p));
    }

    #[test]
    fn llama3_keeps_high_frequencies_scales_low_ones_and_smooths_between() {
        // Wavelengths 2π·(1, 10, 100, 1000) against bands 256/8 = 32 and 256/1 = 256.
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 8.0,
            original_max_position_embeddings: Some(256),
        };
        let (plain, _) = inverse_frequencies(settings(None), 4);
        let (scaled, _) = inverse_frequencies(settings(Some(&llama3)), 4);
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
        assert_eq!(scaled[2], plain[2] / 8.0);
        assert_eq!(scaled[3], plain[3] / 8.0);
    }

    #[test]
    fn yarn_attention_factor_follows_the_paper_or_the_mscale_ratio() {
        let yarn = RopeScaling::Yarn(YarnScaling {
            factor: Some(4.0),
            ..YarnScaling::default()
        });
        let (_, attention) = inverse_frequencies(settings(Some(&yarn)), 4);
        assert_eq!(attention, (0.1 * 4f64.ln() + 1.0) as f32);
        let ratio = RopeScaling::Yarn(YarnScaling {
            factor: Some(4.0),
            mscale: Some(2.0),
            mscale_all_dim: Some(1.0),
            ..YarnScaling::default()
        });
        let (_, attention) = inverse_frequencies(settings(Some(&ratio)), 4);
        let expected = (0.2 * 4f64.ln() + 1.0) / (0.1 * 4f64.ln() + 1.0);
        assert_eq!(attention, expected as f32);
    }

    #[test]
    fn unknown_rope_types_and_keys_are_named() {
        let read = |json: serde_json::Value| {
            read_rope_block(json.as_object().unwrap(), "rope_parameters")
                .unwrap_err()
                .to_string()
        };
        let error = read(serde_json::json!({"rope_type": "mrope", "factor": 2.0}));
        assert!(
            error.starts_with("config.json: rope_parameters.rope_type:"),
            "{error}"
        );
        let error = read(serde_json::json!({"rope_type": "longrope", "factor": 2.0,
            "long_factor": [1.0]}));
        assert!(
            error.starts_with("config.json: rope_parameters.short_factor: missing"),
            "{error}"
        );
        let error = read(serde_json::json!({"rope_type": "longrope",
            "short_factor": [1.0, "x"], "long_factor": [1.0]}));
        assert!(
            error.starts_with(
                "config.json: rope_parameters.short_factor: expected a non-empty list"
            ),
            "{error}"
        );
        let error = read(serde_json::json!({"type": "su"}));
        assert!(
            error.starts_with("config.json: rope_parameters.type:"),
            "{error}"
        );
        let error = read(serde_json::json!({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}));
        assert!(
            error.starts_with("config.json: rope_parameters.beta_fast:"),
            "{error}"
        );
        let error = read(serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
        assert!(
            error.starts_with("config.json: rope_parameters.low_freq_factor:"),
            "{error}"
        );
        let error = read(serde_json::json!({"rope_type": "linear", "factor": "2"}));
        assert!(
            error.starts_with("config.json: rope_parameters.factor:"),
            "{error}"
        );
    }
}
