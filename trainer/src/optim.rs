//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update), the
//! learning-rate schedule and global-norm gradient clipping.
//!
//! The optimizer's state (first and second moments per variable, step count) can be
//! exported and restored exactly, which a resumed run needs to continue bit for bit.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use ladder_spec::train_config::OptimConfig;

use crate::{Result, TrainerError};

/// The learning rate at optimizer step `step` (0-based) of `total`: linear warmup over
/// `warmup` steps (step `s < warmup` uses `lr × (s + 1) / warmup`, so no step is
/// wasted at 0), then `cosine`, `linear` or `constant` decay to `min_lr_ratio × lr` at
/// the last step.
pub fn learning_rate(config: &OptimConfig, step: u64, total: u64) -> f64 {
    let peak = config.lr;
    if step < config.warmup {
        return peak * (step + 1) as f64 / config.warmup as f64;
    }
    let decay_steps = total.saturating_sub(config.warmup).max(1);
    let progress = ((step - config.warmup) as f64 / decay_steps as f64).clamp(0.0, 1.0);
    let factor = match config.schedule.as_str() {
        "linear" => 1.0 - progress,
        "constant" => 1.0,
        _ => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    let floor = config.min_lr_ratio;
    peak * (floor + (1.0 - floor) * factor)
}

/// AdamW over a fixed, named list of variables.
pub struct AdamW {
    config: OptimConfig,
    vars: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Updates applied so far.
    steps: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: OptimConfig) -> Result<Self> {
        let mut first = Vec::with_capacity(vars.len());
        let mut second = Vec::with_capacity(vars.len());
        for (_, var) in &vars {
            first.push(var.zeros_like()?);
            second.push(var.zeros_like()?);
        }
        Ok(AdamW {
            config,
            vars,
            first,
            second,
            steps: 0,
        })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update with learning rate `lr`; `grads[i]` belongs to `vars[i]`.
    /// Weight decay applies to matrices only (not norm weights), as is usual for
    /// transformers.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        debug_assert_eq!(grads.len(), self.vars.len());
        self.steps += 1;
        let OptimConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        for (index, grad) in grads.iter().enumerate() {
            let var = &self.vars[index].1;
            let first = ((&self.first[index] * beta1)? + (grad * (1.0 - beta1))?)?;
            let second = ((&self.second[index] * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&first / bias1)?;
            let v_hat = (&second / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let decayed = if weight_decay > 0.0 && var.rank() >= 2 {
                (var.as_tensor() * (1.0 - lr * weight_decay))?
            } else {
                var.as_tensor().clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.first[index] = first;
            self.second[index] = second;
        }
        Ok(())
    }

    /// The state as named tensors (`m.<var>`, `v.<var>`) plus the step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut tensors = HashMap::new();
        for (index, (name, _)) in self.vars.iter().enumerate() {
            tensors.insert(format!("m.{name}"), self.first[index].clone());
            tensors.insert(format!("v.{name}"), self.second[index].clone());
        }
        (tensors, self.steps)
    }

    /// Restores what [`AdamW::state`] exported; every variable's moments must be there
    /// with the right shape.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (index, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [
                ("m", &mut self.first[index]),
                ("v", &mut self.second[index]),
            ] {
                let key = format!("{prefix}.{name}");
                let tensor = tensors.get(&key).ok_or_else(|| {
                    TrainerError::invalid("optimizer.safetensors", format!("missing {key}"))
                })?;
                if tensor.dims() != var.dims() {
                    return Err(TrainerError::invalid(
                        "optimizer.safetensors",
                        format!(
                            "{key} has shape {:?}, the variable {:?}",
                            tensor.dims(),
                            var.dims()
                        ),
                    ));
                }
                *slot = tensor.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm` (0 disables);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for grad in grads.iter() {
        total += grad
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for grad in grads.iter_mut() {
            *grad = (&*grad * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn config() -> OptimConfig {
        OptimConfig {
            lr: 0.1,
            weight_decay: 0.01,
            warmup: 0,
            ..OptimConfig::default()
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let mut c = config();
        c.warmup = 10;
        c.lr = 1.0;
        assert!((learning_rate(&c, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 9, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&c, 60, 110) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&c, 110, 110).abs() < 1e-12);
        c.schedule = "linear".into();
        assert!((learning_rate(&c, 35, 110) - 0.75).abs() < 1e-12);
        c.min_lr_ratio = 0.1;
        assert!((learning_rate(&c, 110, 110) - 0.1).abs() < 1e-12);
        c.schedule = "constant".into();
        assert!((learning_rate(&c, 80, 110) - 1.0).abs() < 1e-12);
    }

    /// Two AdamW steps against the update written out by hand (PyTorch's formulas).
    #[test]
    fn adamw_matches_the_reference_update() {
        let device = Device::Cpu;
        let var = Var::from_vec(vec![1.0f32, -2.0, 0.5, 3.0], (2, 2), &device).unwrap();
        let mut adam = AdamW::new(vec![("w".into(), var.clone())], config()).unwrap();
        let grads = [[0.5f32, -1.0, 0.0, 2.0], [0.1, 0.1, -0.3, 1.0]];
        let (b1, b2, eps, lr, wd) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64, 0.01f64);
        let mut p = [1.0f64, -2.0, 0.5, 3.0];
        let mut m = [0f64; 4];
        let mut v = [0f64; 4];
        for (t, g) in grads.iter().enumerate() {
            let grad = Tensor::from_vec(g.to_vec(), (2, 2), &device).unwrap();
            adam.step(&[grad], lr).unwrap();
            let t = (t + 1) as i32;
            for i in 0..4 {
                let gi = g[i] as f64;
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..4 {
            assert!(
                (got[i] as f64 - p[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                got[i],
                p[i]
            );
        }
        // State round trip: a fresh optimizer restored from the state continues identically.
        let (state, steps) = adam.state();
        let twin = Var::from_tensor(var.as_tensor()).unwrap();
        let mut restored = AdamW::new(vec![("w".into(), twin.clone())], config()).unwrap();
        restored.restore(&state, steps).unwrap();
        let grad = Tensor::from_vec(vec![0.3f32, 0.2, 0.1, 0.0], (2, 2), &device).unwrap();
        adam.step(std::slice::from_ref(&grad), lr).unwrap();
        restored.step(&[grad], lr).unwrap();
        let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = twin.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let device = Device::Cpu;
        let mut grads = vec![
            Tensor::new(&[3.0f32], &device).unwrap(),
            Tensor::new(&[4.0f32], &device).unwrap(),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a: Vec<f32> = grads[0].to_vec1().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
        let norm = clip_grad_norm(&mut grads, 0.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
