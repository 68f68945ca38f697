//! Launch plumbing that needs no GPU: kernel arguments, launch shapes, the kernels' PTX
//! signatures, and the checks every launch passes before it reaches the driver.

use crate::{Error, Result};
use palm_kernels::{FAMILIES, Family};

/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// One kernel argument. Device pointers, `i64` and `u64` are 8 bytes, the rest 4, as in the PTX.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KArg {
    /// A device address (a buffer's `ptr()`, or 0 for a nullable pointer).
    Ptr(u64),
    I64(i64),
    U64(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl KArg {
    /// The PTX parameter type this argument matches.
    pub fn param(&self) -> Param {
        match self {
            KArg::Ptr(_) | KArg::I64(_) | KArg::U64(_) => Param::U64,
            KArg::I32(_) | KArg::U32(_) => Param::U32,
            KArg::F32(_) => Param::F32,
        }
    }
}

/// A kernel parameter as declared in the PTX (`.param .u64`, `.param .u32`, `.param .f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    U64,
    U32,
    F32,
    /// Any other declaration (a struct by value, `.f64`, ...): no argument type matches it.
    Other,
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchCfg {
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> Self {
        LaunchCfg {
            grid,
            block,
            shared_bytes,
        }
    }

    /// A grid-stride launch over `n` elements: `block` threads per block, at most `16 × sms`
    /// blocks (kernels/README.md), at least one.
    pub fn grid_stride(n: usize, block: u32, sms: u32) -> Self {
        let blocks = n.div_ceil(block.max(1) as usize);
        let cap = 16 * sms.max(1) as usize;
        let grid = blocks.clamp(1, cap) as u32;
        LaunchCfg::new((grid, 1, 1), (block, 1, 1), 0)
    }

    /// A row launch: one block per row, grid-stride over rows beyond 65535.
    pub fn rows(rows: usize, block: u32, shared_bytes: u32) -> Self {
        let grid = rows.clamp(1, 65535) as u32;
        LaunchCfg::new((grid, 1, 1), (block, 1, 1), shared_bytes)
    }
}

/// The family that declares kernel `name`.
pub fn find_family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.functions.contains(&name))
}

/// The family named `family` (`"elementwise"`, `"matmul"`, ...).
pub fn family_by_name(family: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == family)
}

/// Kernel `name` of `family` as the `&'static str` the family declares, or an error that lists
/// what the family does declare.
pub fn declared_kernel(family: &Family, name: &str) -> Result<&'static str> {
    family
        .functions
        .iter()
        .copied()
        .find(|f| *f == name)
        .ok_or_else(|| {
            let hint = find_family(name)
                .map(|f| format!(" (it is in family '{}')", f.name))
                .unwrap_or_default();
            Error::Invalid(format!(
                "unknown kernel '{name}' in family '{}'{hint}; it declares: {}",
                family.name,
                family.functions.join(", ")
            ))
        })
}

/// The parameter list of `.entry name(...)` in a PTX text; `None` when there is no such entry.
pub fn ptx_params(ptx: &str, name: &str) -> Option<Vec<Param>> {
    let header = format!(".entry {name}(");
    let start = ptx.find(&header)? + header.len();
    let body = &ptx[start..start + ptx[start..].find(')')?];
    let params = body
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut words = p.split_whitespace();
            match (words.next(), words.next()) {
                (Some(".param"), Some(".u64" | ".s64" | ".b64")) => Param::U64,
                (Some(".param"), Some(".u32" | ".s32" | ".b32")) => Param::U32,
                (Some(".param"), Some(".f32")) => Param::F32,
                _ => Param::Other,
            }
        })
        .collect();
    Some(params)
}

/// Dynamic shared memory a kernel is documented to launch with (kernels/README.md), for the
/// kernels that need more than [`DEFAULT_DYNAMIC_SMEM`] and so need the opt-in attribute.
/// Kernels whose amount depends on the shape (`layernorm_bwd_*`: cols·4 B) opt in at launch.
pub fn declared_dynamic_smem(name: &str) -> Option<u32> {
    match name {
        "matmul_nn_bf16"
        | "matmul_nt_bf16"
        | "matmul_tn_bf16"
        | "matmul_nn_bf16_f32out"
        | "matmul_nt_bf16_f32out"
        | "matmul_tn_bf16_f32out" => Some(81920),
        "attention_d128_fwd_bf16" => Some(87040),
        "attention_d128_bwd_bf16" => Some(57600),
        _ => None,
    }
}

/// Check a launch before it reaches the driver: arguments against the PTX signature (count and
/// 4/8-byte kind: a mismatch would be undefined behaviour on the device), launch dimensions
/// against CUDA's limits, dynamic shared memory against the device's opt-in maximum.
pub fn check_launch(
    kernel: &str,
    params: &[Param],
    args: &[KArg],
    cfg: &LaunchCfg,
    max_dynamic_smem: u32,
) -> Result<()> {
    let bad = |msg: String| Err(Error::Invalid(format!("launch of kernel {kernel}: {msg}")));
    if params.len() != args.len() {
        return bad(format!(
            "{} arguments given, the kernel takes {}",
            args.len(),
            params.len()
        ));
    }
    for (i, (p, a)) in params.iter().zip(args).enumerate() {
        if a.param() != *p {
            return bad(format!("argument {i} is {a:?}, the PTX declares {p:?}"));
        }
    }
    let (gx, gy, gz) = cfg.grid;
    let (bx, by, bz) = cfg.block;
    if gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 {
        return bad(format!(
            "empty grid {:?} or block {:?}",
            cfg.grid, cfg.block
        ));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return bad(format!("grid {:?} beyond (2^31-1, 65535, 65535)", cfg.grid));
    }
    if bx > 1024 || by > 1024 || bz > 64 || (bx as u64 * by as u64 * bz as u64) > 1024 {
        return bad(format!("block {:?} beyond 1024 threads", cfg.block));
    }
    if cfg.shared_bytes > max_dynamic_smem {
        return bad(format!(
            "{} B of dynamic shared memory requested, the device allows {max_dynamic_smem} B",
            cfg.shared_bytes
        ));
    }
    Ok(())
}
