//! The PaLM forward pass, exactly the seed's (docs/model.md): one LayerNorm per block feeding a
//! fused projection, parallel multi-query attention (RoPE + xPos) and SwiGLU feedforward on
//! one residual; final LayerNorm; logits tied to the embedding.

use crate::{Error, KvCache, LoraScope, PalmParams, Result};
use palm_engine::{
    DType, Device, RopeTables, Tensor, attention, cross_entropy, embedding, layer_norm, rope,
    swiglu,
};

/// Options of one forward call.
#[derive(Default)]
pub struct Forward<'a> {
    /// Adapters to add (the seed's `finetune_scope`).
    pub lora: Option<&'a LoraScope>,
    /// Added to the token embeddings, (b, n, D): the reward model's segment embeddings.
    pub extra_embed: Option<&'a Tensor>,
    /// Incremental decoding: keys/values of earlier positions; the new ones are appended.
    pub cache: Option<&'a mut KvCache>,
}

impl PalmParams {
    /// Final-LayerNorm output (b, n, D) for token ids (b, n) u32.
    pub fn embed(&self, tokens: &Tensor, opts: &mut Forward) -> Result<Tensor> {
        let c = &self.config;
        let (b, n) = match tokens.dims() {
            [b, n] => (*b, *n),
            d => {
                return Err(Error::Invalid(format!(
                    "tokens must be (batch, seq), got {d:?}"
                )));
            }
        };
        if let Some(l) = opts.lora
            && l.layers.len() != c.depth
        {
            return Err(Error::Invalid(format!(
                "LoRA scope '{}' has {} layers, model has {}",
                l.name,
                l.layers.len(),
                c.depth
            )));
        }
        // Positions: the seed centres xPos on n/2 for a full pass; with a cache the positions are
        // absolute (centre 0) so every step agrees. Attention depends only on differences.
        let start = opts.cache.as_ref().map_or(0, |k| k.len());
        let center = if opts.cache.is_some() {
            0.0
        } else {
            (n / 2) as f64
        };
        let tables = RopeTables::shared(
            c.dim_head,
            start,
            n,
            center,
            c.use_xpos,
            c.xpos_scale_base as f64,
        )?;
        let scale = (c.dim_head as f32).powf(-0.5);
        let dims = c.fused_dims();

        // Mixed precision on the GPU: the f32 master weights are cast to bf16 here (the cast is
        // a graph op, so their gradients arrive in f32) and activations stay bf16.
        let w = |t: &Tensor| t.to_dtype(self.compute_dtype());
        let tokens = tokens.to_device(self.device())?;
        let mut x = embedding(&w(&self.token_emb)?, &tokens)?;
        if let Some(e) = opts.extra_embed {
            x = x.add(&e.to_dtype(x.dtype())?)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let lora = opts.lora.map(|l| &l.layers[i]);
            let h = layer_norm(&x, &w(&layer.norm_gamma)?)?;
            // The fused projection as two products over row ranges of its weight (read in
            // place): q, k, v, and the feedforward's x and gate. The second's gradient is then
            // SwiGLU's, already one buffer; one product's would be assembled from five pieces,
            // a memory-bound copy of 4736 columns per token and layer (on the CPU, 1.3% of an
            // `enwik8` step's time, with the other core idle meanwhile).
            let proj = w(&layer.fused_proj)?;
            let qkv = dims[0] + dims[1] + dims[2];
            let p_attn = h.matmul(&proj.narrow(0, 0, qkv)?.t()?)?;
            let p_ff = h.matmul(&proj.narrow(0, qkv, dims[3] + dims[4])?.t()?)?;
            let parts = p_attn.split(2, &dims[..3])?;
            let (mut q, mut k, mut v) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
            let ff_parts = p_ff.split(2, &dims[3..])?;
            if let Some(l) = lora {
                q = q.add(&l[0].apply(&h)?)?;
                k = k.add(&l[1].apply(&h)?)?;
                v = v.add(&l[2].apply(&h)?)?;
            }
            let q = q
                .reshape(&[b, n, c.heads, c.dim_head])?
                .transpose(1, 2)?
                .contiguous()?;
            let q = rope(&q, &tables, false)?;
            let mut k = rope(&k.contiguous()?, &tables, true)?;
            let mut v = v.contiguous()?;
            if let Some(cache) = opts.cache.as_deref_mut() {
                (k, v) = cache.extend(i, k, v)?;
            }
            let o = attention(&q, &k, &v, scale)?;
            let o = o.transpose(1, 2)?.reshape(&[b, n, c.attn_inner()])?;
            let mut attn_out = o.matmul(&w(&layer.attn_out)?.t()?)?;
            if let Some(l) = lora {
                attn_out = attn_out.add(&l[3].apply(&o)?)?;
            }
            let ff = swiglu(&ff_parts[0], &ff_parts[1])?.matmul(&w(&layer.ff_out)?.t()?)?;
            x = x.add(&attn_out)?.add(&ff)?;
        }
        if let Some(cache) = opts.cache.as_deref_mut() {
            cache.advance(n);
        }
        Ok(layer_norm(&x, &w(&self.norm_gamma)?)?)
    }

    /// The dtype the forward computes in: bf16 on a GPU (tensor cores), f32 on the CPU.
    pub fn compute_dtype(&self) -> DType {
        match self.device() {
            Device::Cpu => DType::F32,
            Device::Cuda(_) => DType::BF16,
        }
    }

    /// Logits (b, n, V), in the compute dtype.
    pub fn logits(&self, tokens: &Tensor, opts: &mut Forward) -> Result<Tensor> {
        let e = self.embed(tokens, opts)?;
        let table = self.token_emb.to_dtype(self.compute_dtype())?;
        Ok(e.matmul(&table.t()?)?)
    }

    /// The seed's autoregressive loss on a (b, n + 1) batch: predict tokens[:, 1:] from
    /// tokens[:, :-1], mean over targets ≠ 0. Returns (loss, counted targets).
    pub fn loss(&self, tokens: &Tensor, opts: &mut Forward) -> Result<(Tensor, usize)> {
        let n = tokens.dims().get(1).copied().unwrap_or(0);
        if tokens.rank() != 2 || n < 2 {
            return Err(Error::Invalid(format!(
                "loss needs (batch, seq ≥ 2) tokens, got {:?}",
                tokens.dims()
            )));
        }
        let inputs = tokens.narrow(1, 0, n - 1)?.contiguous()?;
        let targets = tokens.narrow(1, 1, n - 1)?.contiguous()?;
        self.loss_on(&inputs, &targets, opts)
    }

    /// Mean cross-entropy of next-token `targets` (b, n) given `inputs` (b, n); targets equal
    /// to 0 are not counted (padding, or tokens a task does not train on, e.g. SFT prompts).
    pub fn loss_on(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        opts: &mut Forward,
    ) -> Result<(Tensor, usize)> {
        let logits = self.logits(inputs, opts)?;
        Ok(cross_entropy(&logits, &targets.to_device(self.device())?)?)
    }
}
