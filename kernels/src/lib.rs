//! The project's GPU kernels as committed PTX, embedded at build time.
//!
//! Sources are `kernels/cuda/<family>.cu` (+ `common.cuh`); `kernels/gen-ptx` compiles them for
//! `sm_90a` with the pinned CUDA 13.0 toolchain into `kernels/ptx/<family>.ptx`. Each family below
//! carries its PTX text and the names of its `extern "C"` kernels; signatures and launch shapes are
//! listed in `kernels/README.md`. No logic lives here: load `ptx` as a module and look the functions
//! up by name.

/// One kernel family: a `.cu` source compiled to one PTX module.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The family name (`cuda/<name>.cu`, `ptx/<name>.ptx`).
    pub name: &'static str,
    /// The PTX text; its first line is `// source-sha256: <hash of the .cu + common.cuh>`.
    pub ptx: &'static str,
    /// The kernel (`.entry`) names in this module.
    pub functions: &'static [&'static str],
}

/// `cuda/adamw.cu`
pub const ADAMW: Family = Family {
    name: "adamw",
    ptx: include_str!("../ptx/adamw.ptx"),
    functions: &["adamw_multi_fwd_bf16", "adamw_multi_fwd_f32"],
};

/// `cuda/attention.cu`
pub const ATTENTION: Family = Family {
    name: "attention",
    ptx: include_str!("../ptx/attention.ptx"),
    functions: &[
        "attention_d64_fwd_bf16",
        "attention_d128_fwd_bf16",
        "attention_bwd_pre_bf16",
        "attention_d64_bwd_bf16",
        "attention_d128_bwd_bf16",
    ],
};

/// `cuda/cross_entropy.cu`
pub const CROSS_ENTROPY: Family = Family {
    name: "cross_entropy",
    ptx: include_str!("../ptx/cross_entropy.ptx"),
    functions: &[
        "cross_entropy_fwd_bf16",
        "cross_entropy_fwd_f32",
        "cross_entropy_bwd_bf16",
        "cross_entropy_bwd_f32",
    ],
};

/// `cuda/elementwise.cu`
pub const ELEMENTWISE: Family = Family {
    name: "elementwise",
    ptx: include_str!("../ptx/elementwise.ptx"),
    functions: &[
        "add_fwd_bf16",
        "add_fwd_f32",
        "sub_fwd_bf16",
        "sub_fwd_f32",
        "mul_fwd_bf16",
        "mul_fwd_f32",
        "div_fwd_bf16",
        "div_fwd_f32",
        "max_fwd_bf16",
        "max_fwd_f32",
        "min_fwd_bf16",
        "min_fwd_f32",
        "ge_fwd_bf16",
        "ge_fwd_f32",
        "log_fwd_bf16",
        "log_fwd_f32",
        "sqr_fwd_bf16",
        "sqr_fwd_f32",
        "sqrt_fwd_bf16",
        "sqrt_fwd_f32",
        "sigmoid_fwd_bf16",
        "sigmoid_fwd_f32",
        "tanh_fwd_bf16",
        "tanh_fwd_f32",
        "affine_fwd_bf16",
        "affine_fwd_f32",
        "neg_fwd_bf16",
        "neg_fwd_f32",
        "exp_fwd_bf16",
        "exp_fwd_f32",
        "silu_fwd_bf16",
        "silu_fwd_f32",
        "to_bf16_fwd_f32",
        "to_f32_fwd_bf16",
        "fill_fwd_f32",
        "fill_fwd_bf16",
        "fill_fwd_u32",
        "copy_strided_fwd_bf16",
        "copy_strided_fwd_f32",
        "copy_strided_fwd_u32",
        "copy_into_fwd_bf16",
        "copy_into_fwd_f32",
        "copy_into_fwd_u32",
    ],
};

/// `cuda/embedding.cu`
pub const EMBEDDING: Family = Family {
    name: "embedding",
    ptx: include_str!("../ptx/embedding.ptx"),
    functions: &[
        "embedding_fwd_bf16",
        "embedding_fwd_f32",
        "embedding_bwd_bf16",
        "embedding_bwd_f32",
    ],
};

/// `cuda/layernorm.cu`
pub const LAYERNORM: Family = Family {
    name: "layernorm",
    ptx: include_str!("../ptx/layernorm.ptx"),
    functions: &[
        "layernorm_fwd_bf16",
        "layernorm_fwd_f32",
        "layernorm_bwd_bf16",
        "layernorm_bwd_f32",
        "layernorm_dgamma_bwd_f32",
    ],
};

/// `cuda/logprob.cu`
pub const LOGPROB: Family = Family {
    name: "logprob",
    ptx: include_str!("../ptx/logprob.ptx"),
    functions: &[
        "logprob_fwd_bf16",
        "logprob_fwd_f32",
        "logprob_bwd_bf16",
        "logprob_bwd_f32",
    ],
};

/// `cuda/matmul.cu`
pub const MATMUL: Family = Family {
    name: "matmul",
    ptx: include_str!("../ptx/matmul.ptx"),
    functions: &[
        "matmul_nn_bf16",
        "matmul_nt_bf16",
        "matmul_tn_bf16",
        "matmul_nn_bf16_64",
        "matmul_nt_bf16_64",
        "matmul_tn_bf16_64",
        "matmul_nn_bf16_unaligned",
        "matmul_nt_bf16_unaligned",
        "matmul_tn_bf16_unaligned",
        "matmul_nn_bf16_f32out",
        "matmul_nt_bf16_f32out",
        "matmul_tn_bf16_f32out",
        "matmul_nn_bf16_64_f32out",
        "matmul_nt_bf16_64_f32out",
        "matmul_tn_bf16_64_f32out",
        "matmul_nn_bf16_unaligned_f32out",
        "matmul_nt_bf16_unaligned_f32out",
        "matmul_tn_bf16_unaligned_f32out",
    ],
};

/// `cuda/reduce.cu`
pub const REDUCE: Family = Family {
    name: "reduce",
    ptx: include_str!("../ptx/reduce.ptx"),
    functions: &[
        "sum_rows_fwd_f32",
        "max_rows_fwd_bf16",
        "max_rows_fwd_f32",
        "sum_cols_fwd_f32",
        "sumsq_multi_fwd_bf16",
        "sumsq_multi_fwd_f32",
    ],
};

/// `cuda/rope.cu`
pub const ROPE: Family = Family {
    name: "rope",
    ptx: include_str!("../ptx/rope.ptx"),
    functions: &[
        "rope_fwd_bf16",
        "rope_fwd_f32",
        "rope_bwd_bf16",
        "rope_bwd_f32",
    ],
};

/// `cuda/sampling.cu`
pub const SAMPLING: Family = Family {
    name: "sampling",
    ptx: include_str!("../ptx/sampling.ptx"),
    functions: &["sample_fwd_bf16", "sample_fwd_f32"],
};

/// `cuda/swiglu.cu`
pub const SWIGLU: Family = Family {
    name: "swiglu",
    ptx: include_str!("../ptx/swiglu.ptx"),
    functions: &[
        "swiglu_fwd_bf16",
        "swiglu_fwd_f32",
        "swiglu_bwd_bf16",
        "swiglu_bwd_f32",
    ],
};

/// Every family, sorted by name.
pub const FAMILIES: &[Family] = &[
    ADAMW,
    ATTENTION,
    CROSS_ENTROPY,
    ELEMENTWISE,
    EMBEDDING,
    LAYERNORM,
    LOGPROB,
    MATMUL,
    REDUCE,
    ROPE,
    SAMPLING,
    SWIGLU,
];
