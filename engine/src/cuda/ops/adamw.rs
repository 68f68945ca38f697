//! Mixed-precision AdamW (`adamw.cu`): f32 parameters and moments, f32 or bf16 gradients,
//! updated in place in one pass that also writes the bf16 copy of each new parameter; one
//! launch for all tensors (`step_multi`).

use super::{BLOCK, Launch, ptr, suffix};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{Result, Tensor};

/// The hyper-parameters of one step: the CPU reference's (weight decay per tensor in
/// `step_multi`'s slots).
pub use crate::backend::AdamWHyper as Step;

/// One launch updating `n` tensors whose pointer arrays sit in one device table (see
/// [`step_multi`] for its layout); per-tensor weight decays come from the table.
pub fn plan_multi(gsfx: &str, table: u64, n: usize, h: &Step, sms: u32) -> Launch {
    let word = |k: usize| table + (k * n * 8) as u64;
    Launch::new(
        format!("adamw_multi_fwd_{gsfx}"),
        LaunchCfg::new((4 * sms.max(1), 1, 1), (BLOCK, 1, 1), 0),
        vec![
            KArg::Ptr(word(0)),
            KArg::Ptr(word(1)),
            KArg::Ptr(word(2)),
            KArg::Ptr(word(3)),
            KArg::Ptr(word(4)),
            KArg::Ptr(word(5)),
            KArg::Ptr(word(6)),
            KArg::I32(n as i32),
            KArg::F32(h.lr),
            KArg::F32(h.beta1),
            KArg::F32(h.beta2),
            KArg::F32(h.eps),
            KArg::F32(0.0),
            KArg::F32(h.bias1),
            KArg::F32(h.bias2),
            KArg::F32(1.0),
            KArg::Ptr(0),
            KArg::F32(0.0),
        ],
    )
}

/// One tensor of a multi-tensor step: the private parameter copy the step writes, its
/// moments, its gradient and its weight decay.
pub struct Slot<'a> {
    pub param: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub grad: &'a Tensor,
    pub weight_decay: f32,
}

/// Update every slot's parameter and moments in one launch per gradient dtype, writing a bf16
/// copy of each new parameter in the same pass; returns those copies. The pointer arrays go to
/// the device in one table: params, m, v, grads, bf16 copies, sizes (8-byte words, n each),
/// then the weight decays (n f32).
pub(crate) fn step_multi(slots: &[Slot], h: &Step) -> Result<Vec<Tensor>> {
    super::untracked(|| {
        let Some(first) = slots.first() else {
            return Ok(Vec::new());
        };
        let dev = super::device_of(first.param)?;
        let mut copies = Vec::with_capacity(slots.len());
        let grads: Vec<Tensor> = slots
            .iter()
            .map(|s| s.grad.contiguous())
            .collect::<Result<_>>()?;
        for s in slots {
            copies.push(super::tensor(
                super::alloc(&dev, crate::DType::BF16, s.param.elem_count())?,
                s.param.dims(),
            ));
        }
        for dtype in [crate::DType::F32, crate::DType::BF16] {
            let group: Vec<usize> = (0..slots.len())
                .filter(|&i| grads[i].dtype() == dtype)
                .collect();
            if group.is_empty() {
                continue;
            }
            let n = group.len();
            let mut words = vec![0u64; 6 * n + n.div_ceil(2)];
            for (j, &i) in group.iter().enumerate() {
                let s = &slots[i];
                words[j] = ptr(s.param)?;
                words[n + j] = ptr(s.m)?;
                words[2 * n + j] = ptr(s.v)?;
                words[3 * n + j] = ptr(&grads[i])?;
                words[4 * n + j] = ptr(&copies[i])?;
                words[5 * n + j] = s.param.elem_count() as u64;
            }
            let decays: &mut [f32] = bytemuck::cast_slice_mut(&mut words[6 * n..]);
            for (j, &i) in group.iter().enumerate() {
                decays[j] = slots[i].weight_decay;
            }
            let table = dev.upload(&words)?;
            dev.run(&plan_multi(
                suffix(dtype, "adamw")?,
                table.ptr(),
                n,
                h,
                dev.num_sms(),
            ))?;
        }
        Ok(copies)
    })
}

/// A private copy of a contiguous f32 device tensor (the new parameter the step writes).
pub(crate) fn private_copy(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    let s = super::storage(&t)?;
    let size = s.dtype().size_in_bytes();
    let buf = s.device().copy_range(
        s.buffer(),
        t.layout().offset() * size,
        t.elem_count() * size,
    )?;
    Ok(super::tensor(
        crate::cuda::CudaStorage::new(buf, t.dtype()),
        t.dims(),
    ))
}
