//! What an optimiser trains, seen the same way whoever owns it: named tensors in a fixed order
//! (the optimiser's moments follow that order), replaced together after a step. The model, a
//! LoRA scope, PPO's critic, a reward model and a DPO policy implement it, so one checkpoint
//! format and one optimiser step serve every training loop.

use crate::{Error, LoraScope, PalmParams, Result};
use palm_engine::Tensor;

pub trait Trainable {
    /// The trained tensors with their checkpoint names, in the optimiser's order.
    fn trained(&self) -> Vec<(String, Tensor)>;

    /// The same tensors, mutable, in the same order.
    fn trained_mut(&mut self) -> Vec<&mut Tensor>;

    /// The trained tensors alone, in order.
    fn trained_tensors(&self) -> Vec<Tensor> {
        self.trained().into_iter().map(|(_, t)| t).collect()
    }

    /// Replace every trained tensor (the order of [`Trainable::trained`]), checking the count
    /// and each shape.
    fn set_trained(&mut self, new: Vec<Tensor>) -> Result<()> {
        let slots = self.trained_mut();
        if slots.len() != new.len() {
            return Err(Error::Invalid(format!(
                "expected {} trained tensors, got {}",
                slots.len(),
                new.len()
            )));
        }
        for (slot, t) in slots.into_iter().zip(new) {
            if slot.dims() != t.dims() {
                return Err(Error::Invalid(format!(
                    "a trained tensor of shape {:?} replaced by {:?}",
                    slot.dims(),
                    t.dims()
                )));
            }
            *slot = t;
        }
        Ok(())
    }
}

impl Trainable for PalmParams {
    fn trained(&self) -> Vec<(String, Tensor)> {
        self.named()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect()
    }
    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        self.tensors_mut()
    }
}

impl Trainable for LoraScope {
    fn trained(&self) -> Vec<(String, Tensor)> {
        self.named()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect()
    }
    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        self.tensors_mut()
    }
}
