//! palm-bench: criterion benches for the CPU backend (benches/) and shared workload setup, so
//! the benches and the torch anchor (`bench/torch_anchor.py`) run the same shapes.

use palm_engine::{AdamW, Device, Error, Result, Rng, Tensor};
use palm_model::{Forward, PalmConfig, PalmParams};

/// The anchor's training workloads: (config, batch, seq).
pub fn train_workload(name: &str) -> Option<(PalmConfig, usize, usize)> {
    let (batch, seq) = match name {
        "tiny" => (2, 64),
        "enwik8" => (4, 1024),
        "small" => (16, 1024),
        "1b" => (8, 2048),
        _ => return None,
    };
    Some((PalmConfig::preset(name)?, batch, seq))
}

/// One full training step as the anchor times it: forward, loss, backward, clip 0.5, AdamW.
pub struct TrainStep {
    pub params: PalmParams,
    opt: AdamW,
    data: Tensor,
}

impl TrainStep {
    pub fn new(config: &PalmConfig, batch: usize, seq: usize) -> Self {
        Self::on(config, batch, seq, Device::Cpu).expect("CPU training step")
    }

    /// The same step with parameters, optimizer state and data on `device`.
    pub fn on(config: &PalmConfig, batch: usize, seq: usize, device: Device) -> Result<Self> {
        let mut rng = Rng::new(0);
        let params = PalmParams::init(config, &mut rng)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .to_device(device)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let ids: Vec<u32> = (0..batch * (seq + 1))
            .map(|_| 1 + rng.below(config.num_tokens - 1) as u32)
            .collect();
        let data = Tensor::from_vec(ids, &[batch, seq + 1])?.to_device(device)?;
        let opt = AdamW::new(
            palm_engine::AdamWConfig {
                lr: 1e-4,
                ..Default::default()
            },
            &params.tensors(),
        )?;
        Ok(TrainStep { params, opt, data })
    }

    pub fn step(&mut self) -> f32 {
        self.try_step().expect("training step")
    }

    /// Forward, loss, then the training loops' own step (backward, clip 0.5, AdamW); the loss.
    pub fn try_step(&mut self) -> Result<f32> {
        let (loss, _) = self
            .params
            .loss(&self.data, &mut Forward::default())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let (params, opt) = (&mut self.params, &mut self.opt);
        let (value, _) = palm_rlhf::trainer::optimise(params, opt, loss, "the loss", 1e-4, 0.5)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(value)
    }
}
