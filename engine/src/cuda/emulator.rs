//! An emulated CUDA device (`PALM_CUDA_EMULATE=1`): device memory is host memory at fake device
//! addresses, and each kernel launch is carried out by a plain Rust rendering of that kernel's
//! contract in `kernels/README.md` (the CUDA C is not executed).
//!
//! What it checks without a GPU: everything on the Rust side of a launch — which kernel a plan
//! picks, the order and meaning of its arguments, strides and offsets, the sizes of the buffers
//! it allocates (every access is bounds-checked against its allocation), dtype conversions, and
//! the ops' gradients composed from kernels. What it cannot check: the kernels themselves (tiling,
//! fragments, shared memory, races) — only a real GPU run does that. Numbers are f32 with bf16
//! rounding where a buffer is bf16, so the CPU-vs-CUDA tests apply unchanged.

use super::launch::{KArg, LaunchCfg};
use crate::{Error, Result};
use half::bf16;
use std::collections::BTreeMap;

/// Element types a kernel reads or writes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    F32,
    Bf16,
    U32,
}

impl Ty {
    fn size(self) -> usize {
        match self {
            Ty::Bf16 => 2,
            _ => 4,
        }
    }
    /// The type named by a kernel's suffix (`…_bf16`, `…_f32`, `…_u32`).
    fn of(name: &str) -> Ty {
        if name.ends_with("_bf16") {
            Ty::Bf16
        } else if name.ends_with("_u32") {
            Ty::U32
        } else {
            Ty::F32
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Driver(format!("emulated device: {}", msg.into()))
}

/// Host memory standing in for device memory.
#[derive(Default)]
pub struct Emulator {
    blocks: BTreeMap<u64, Vec<u8>>,
    next: u64,
}

impl Emulator {
    pub fn new() -> Self {
        Emulator {
            blocks: BTreeMap::new(),
            next: 1 << 32,
        }
    }

    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let ptr = self.next;
        // 512-byte aligned like the pool's blocks, with a gap so overruns land nowhere.
        self.next += (bytes as u64).div_ceil(512) * 512 + 512;
        self.blocks.insert(ptr, vec![0xA5; bytes]);
        ptr
    }

    pub fn free(&mut self, ptr: u64) {
        self.blocks.remove(&ptr);
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.blocks.values().map(Vec::len).sum()
    }

    /// (allocation base, offset) of `len` bytes at `addr`, or an out-of-bounds error.
    fn locate(&self, addr: u64, len: usize) -> Result<(u64, usize)> {
        let (&base, block) = self
            .blocks
            .range(..=addr)
            .next_back()
            .ok_or_else(|| bad(format!("address {addr:#x} is not device memory")))?;
        let off = (addr - base) as usize;
        if off + len > block.len() {
            return Err(bad(format!(
                "{len} bytes at {addr:#x} run past the end of a {}-byte allocation (offset {off})",
                block.len()
            )));
        }
        Ok((base, off))
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Result<&[u8]> {
        let (base, off) = self.locate(addr, len)?;
        Ok(&self.blocks[&base][off..off + len])
    }

    pub fn bytes_mut(&mut self, addr: u64, len: usize) -> Result<&mut [u8]> {
        let (base, off) = self.locate(addr, len)?;
        let block = self
            .blocks
            .get_mut(&base)
            .ok_or_else(|| bad("lost block"))?;
        Ok(&mut block[off..off + len])
    }

    pub fn memset(&mut self, addr: u64, value: u8, len: usize) -> Result<()> {
        self.bytes_mut(addr, len)?.fill(value);
        Ok(())
    }

    pub fn copy(&mut self, dst: u64, src: u64, len: usize) -> Result<()> {
        let data = self.bytes(src, len)?.to_vec();
        self.bytes_mut(dst, len)?.copy_from_slice(&data);
        Ok(())
    }

    // ---- element access ----------------------------------------------------------------

    /// `n` elements at `ptr` as f32 (u32 values are converted).
    fn load(&self, ptr: u64, ty: Ty, n: usize) -> Result<Vec<f32>> {
        let b = self.bytes(ptr, n * ty.size())?;
        Ok(match ty {
            Ty::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(b),
            Ty::Bf16 => bytemuck::pod_collect_to_vec::<u8, bf16>(b)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            Ty::U32 => bytemuck::pod_collect_to_vec::<u8, u32>(b)
                .iter()
                .map(|&v| v as f32)
                .collect(),
        })
    }

    fn load_u32(&self, ptr: u64, n: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(self.bytes(ptr, n * 4)?))
    }

    fn store(&mut self, ptr: u64, ty: Ty, v: &[f32]) -> Result<()> {
        let out = self.bytes_mut(ptr, v.len() * ty.size())?;
        match ty {
            Ty::F32 => out.copy_from_slice(bytemuck::cast_slice(v)),
            Ty::Bf16 => {
                let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                out.copy_from_slice(bytemuck::cast_slice(&h));
            }
            Ty::U32 => {
                let u: Vec<u32> = v.iter().map(|&x| x as u32).collect();
                out.copy_from_slice(bytemuck::cast_slice(&u));
            }
        }
        Ok(())
    }

    fn store_u32(&mut self, ptr: u64, v: &[u32]) -> Result<()> {
        self.bytes_mut(ptr, v.len() * 4)?
            .copy_from_slice(bytemuck::cast_slice(v));
        Ok(())
    }

    /// The whole rest of the allocation at `ptr`, for strided reads: element `i` is `v[i]`.
    fn load_rest(&self, ptr: u64, ty: Ty) -> Result<Vec<f32>> {
        let (base, off) = self.locate(ptr, 0)?;
        let n = (self.blocks[&base].len() - off) / ty.size();
        self.load(ptr, ty, n)
    }

    // ---- kernels -------------------------------------------------------------------------

    /// Carry out one launch (already checked against the PTX signature by the caller).
    pub fn launch(&mut self, name: &str, cfg: &LaunchCfg, a: &[KArg]) -> Result<()> {
        let ty = Ty::of(name);
        let op = name.split("_fwd").next().unwrap_or(name);
        let a = Args(a);
        match name {
            _ if name.starts_with("matmul_") => self.matmul(name, cfg, &a),
            _ if name.starts_with("attention_bwd_pre") => self.attention_bwd_pre(&a),
            _ if name.starts_with("attention_") && name.contains("_fwd") => {
                self.attention_fwd(name, &a)
            }
            _ if name.starts_with("attention_") => self.attention_bwd(name, &a),
            "to_bf16_fwd_f32" | "to_f32_fwd_bf16" => {
                let (from, to) = if name.ends_with("f32") {
                    (Ty::F32, Ty::Bf16)
                } else {
                    (Ty::Bf16, Ty::F32)
                };
                let v = self.load(a.p(0), from, a.n(2)?)?;
                self.store(a.p(1), to, &v)
            }
            _ if name.starts_with("fill_fwd") => {
                let n = a.n(1)?;
                if ty == Ty::U32 {
                    self.store_u32(a.p(0), &vec![a.u32(2); n])
                } else {
                    self.store(a.p(0), ty, &vec![a.f(2); n])
                }
            }
            _ if name.starts_with("copy_strided") => self.copy_strided(ty, &a, false),
            _ if name.starts_with("copy_into") => self.copy_strided(ty, &a, true),
            _ if name.ends_with("_fwd_bf16") || name.ends_with("_fwd_f32") => match op {
                "add" | "sub" | "mul" | "div" => {
                    let n = a.n(3)?;
                    let (x, y) = (self.load(a.p(0), ty, n)?, self.load(a.p(1), ty, n)?);
                    let f: fn(f32, f32) -> f32 = match op {
                        "add" => |x, y| x + y,
                        "sub" => |x, y| x - y,
                        "mul" => |x, y| x * y,
                        _ => |x, y| x / y,
                    };
                    let out: Vec<f32> = x.iter().zip(&y).map(|(&x, &y)| f(x, y)).collect();
                    self.store(a.p(2), ty, &out)
                }
                "affine" => {
                    let n = a.n(2)?;
                    let (s, b) = (a.f(3), a.f(4));
                    let out: Vec<f32> = self
                        .load(a.p(0), ty, n)?
                        .iter()
                        .map(|x| x * s + b)
                        .collect();
                    self.store(a.p(1), ty, &out)
                }
                "neg" | "exp" | "log" | "sqr" | "sqrt" | "sigmoid" | "silu" | "tanh" => {
                    let n = a.n(2)?;
                    let f: fn(f32) -> f32 = match op {
                        "neg" => |x| -x,
                        "exp" => f32::exp,
                        "log" => f32::ln,
                        "sqr" => |x| x * x,
                        "sqrt" => f32::sqrt,
                        "sigmoid" => |x| 1.0 / (1.0 + (-x).exp()),
                        "silu" => |x| x / (1.0 + (-x).exp()),
                        _ => f32::tanh,
                    };
                    let out: Vec<f32> = self.load(a.p(0), ty, n)?.into_iter().map(f).collect();
                    self.store(a.p(1), ty, &out)
                }
                "sum_rows" | "max_rows" => {
                    let (rows, cols) = (a.n(2)?, a.n(3)?);
                    let x = self.load(a.p(0), ty, rows * cols)?;
                    let out: Vec<f32> = x
                        .chunks(cols.max(1))
                        .take(rows)
                        .map(|r| {
                            if op == "sum_rows" {
                                r.iter().sum()
                            } else {
                                r.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                            }
                        })
                        .collect();
                    self.store(a.p(1), ty, &out)
                }
                "sum_cols" => {
                    let (rows, cols) = (a.n(2)?, a.n(3)?);
                    let x = self.load(a.p(0), ty, rows * cols)?;
                    let out: Vec<f32> = (0..cols)
                        .map(|c| (0..rows).map(|r| x[r * cols + c]).sum())
                        .collect();
                    self.store(a.p(1), ty, &out)
                }
                "sumsq" => {
                    let x = self.load(a.p(0), ty, a.n(1)?)?;
                    let mut acc = self.load(a.p(2), Ty::F32, 1)?;
                    acc[0] += x.iter().map(|v| v * v).sum::<f32>();
                    self.store(a.p(2), Ty::F32, &acc)
                }
                "embedding" => self.embedding_fwd(ty, &a),
                "layernorm" => self.layernorm_fwd(ty, &a),
                "rope" => self.rope(ty, &a, false),
                "swiglu" => self.swiglu_fwd(ty, &a),
                "cross_entropy" => self.cross_entropy_fwd(ty, &a),
                "logprob" => self.logprob_fwd(ty, &a),
                "sample" => self.sample(ty, &a),
                "adamw" => self.adamw(ty, &a),
                "adamw_multi" => self.adamw_multi(ty, &a),
                _ => Err(bad(format!("kernel {name} is not emulated"))),
            },
            "embedding_bwd_bf16" | "embedding_bwd_f32" => self.embedding_bwd(ty, &a),
            "layernorm_bwd_bf16" | "layernorm_bwd_f32" => self.layernorm_bwd(ty, cfg, &a),
            "layernorm_dgamma_bwd_f32" => {
                let (parts, cols) = (a.n(2)?, a.n(3)?);
                let p = self.load(a.p(0), Ty::F32, parts * cols)?;
                let out: Vec<f32> = (0..cols)
                    .map(|c| (0..parts).map(|q| p[q * cols + c]).sum())
                    .collect();
                self.store(a.p(1), Ty::F32, &out)
            }
            "rope_bwd_bf16" | "rope_bwd_f32" => self.rope(ty, &a, true),
            "swiglu_bwd_bf16" | "swiglu_bwd_f32" => self.swiglu_bwd(ty, &a),
            "cross_entropy_bwd_bf16" | "cross_entropy_bwd_f32" => self.cross_entropy_bwd(ty, &a),
            "logprob_bwd_bf16" | "logprob_bwd_f32" => self.logprob_bwd(ty, &a),
            _ => Err(bad(format!("kernel {name} is not emulated"))),
        }
    }

    fn copy_strided(&mut self, ty: Ty, a: &Args, into: bool) -> Result<()> {
        let n = a.n(2)?;
        let d: Vec<i64> = (3..7).map(|i| a.i(i)).collect();
        let s: Vec<i64> = (7..11).map(|i| a.i(i)).collect();
        let soff = a.i(11);
        let (t, doff) = if into {
            ((12..16).map(|i| a.i(i)).collect(), a.i(16))
        } else {
            (vec![d[1] * d[2] * d[3], d[2] * d[3], d[3], 1], 0)
        };
        if d.iter().product::<i64>() != n as i64 {
            return Err(bad(format!("copy of {n} elements with dims {d:?}")));
        }
        let src = self.load_rest(a.p(0), ty)?;
        let dst_all = self.load_rest(a.p(1), ty)?;
        let mut dst = dst_all;
        for i in 0..n as i64 {
            let (i3, r) = (i % d[3], i / d[3]);
            let (i2, r) = (r % d[2], r / d[2]);
            let (i1, i0) = (r % d[1], r / d[1]);
            let si = soff + i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3];
            let di = doff + i0 * t[0] + i1 * t[1] + i2 * t[2] + i3 * t[3];
            let v = *src
                .get(usize::try_from(si).map_err(|_| bad("negative source index"))?)
                .ok_or_else(|| bad(format!("copy reads element {si} past its allocation")))?;
            *dst.get_mut(usize::try_from(di).map_err(|_| bad("negative destination index"))?)
                .ok_or_else(|| bad(format!("copy writes element {di} past its allocation")))? = v;
        }
        self.store(a.p(1), ty, &dst)
    }

    fn embedding_fwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (n, dim, vocab) = (a.n(3)?, a.n(4)?, a.n(5)?);
        let ids = self.load_u32(a.p(0), n)?;
        let table = self.load(a.p(1), ty, vocab * dim)?;
        let mut out = vec![0.0; n * dim];
        for (r, &id) in ids.iter().enumerate() {
            if (id as usize) < vocab {
                out[r * dim..(r + 1) * dim]
                    .copy_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
            }
        }
        self.store(a.p(2), ty, &out)
    }

    fn embedding_bwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (n, dim, vocab) = (a.n(3)?, a.n(4)?, a.n(5)?);
        let ids = self.load_u32(a.p(0), n)?;
        let g = self.load(a.p(1), ty, n * dim)?;
        let mut out = self.load(a.p(2), Ty::F32, vocab * dim)?;
        for (r, &id) in ids.iter().enumerate() {
            if (id as usize) < vocab {
                for c in 0..dim {
                    out[id as usize * dim + c] += g[r * dim + c];
                }
            }
        }
        self.store(a.p(2), Ty::F32, &out)
    }

    fn layernorm_fwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, cols, eps) = (a.n(5)?, a.n(6)?, a.f(7));
        let x = self.load(a.p(0), ty, rows * cols)?;
        let g = self.load(a.p(1), ty, cols)?;
        let (mut y, mut mean, mut rstd) =
            (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let mu = row.iter().sum::<f32>() / cols as f32;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / cols as f32;
            let rs = 1.0 / (var + eps).sqrt();
            for c in 0..cols {
                y[r * cols + c] = (row[c] - mu) * rs * (g[c] + 1.0);
            }
            (mean[r], rstd[r]) = (mu, rs);
        }
        self.store(a.p(2), ty, &y)?;
        if a.p(3) != 0 {
            self.store(a.p(3), Ty::F32, &mean)?;
        }
        if a.p(4) != 0 {
            self.store(a.p(4), Ty::F32, &rstd)?;
        }
        Ok(())
    }

    fn layernorm_bwd(&mut self, ty: Ty, cfg: &LaunchCfg, a: &Args) -> Result<()> {
        let (rows, cols) = (a.n(7)?, a.n(8)?);
        let parts = cfg.grid.0 as usize;
        if a.p(6) != 0 && cfg.shared_bytes as usize != cols * 4 {
            return Err(bad(
                "layernorm_bwd needs cols·4 bytes of dynamic shared memory",
            ));
        }
        let x = self.load(a.p(0), ty, rows * cols)?;
        let g = self.load(a.p(1), ty, cols)?;
        let dy = self.load(a.p(2), ty, rows * cols)?;
        let mean = self.load(a.p(3), Ty::F32, rows)?;
        let rstd = self.load(a.p(4), Ty::F32, rows)?;
        let mut dx = vec![0.0; rows * cols];
        let mut partial = vec![0.0; parts * cols];
        for r in 0..rows {
            let xh: Vec<f32> = (0..cols)
                .map(|c| (x[r * cols + c] - mean[r]) * rstd[r])
                .collect();
            let dxh: Vec<f32> = (0..cols).map(|c| dy[r * cols + c] * (g[c] + 1.0)).collect();
            let m1 = dxh.iter().sum::<f32>() / cols as f32;
            let m2 = dxh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f32>() / cols as f32;
            for c in 0..cols {
                dx[r * cols + c] = rstd[r] * (dxh[c] - m1 - xh[c] * m2);
                partial[(r % parts) * cols + c] += dy[r * cols + c] * xh[c];
            }
        }
        self.store(a.p(5), ty, &dx)?;
        if a.p(6) != 0 {
            self.store(a.p(6), Ty::F32, &partial)?;
        }
        Ok(())
    }

    fn rope(&mut self, ty: Ty, a: &Args, bwd: bool) -> Result<()> {
        let (rows, dh, hpp, n, offset, sign) =
            (a.n(5)?, a.n(6)?, a.n(7)?, a.n(8)?, a.n(9)?, a.i(10));
        let half = dh / 2;
        let x = self.load(a.p(0), ty, rows * dh)?;
        let npos = n + offset;
        let cos = self.load(a.p(2), Ty::F32, npos * dh)?;
        let sin = self.load(a.p(3), Ty::F32, npos * dh)?;
        let scale = if a.p(4) != 0 {
            Some(self.load(a.p(4), Ty::F32, npos * dh)?)
        } else {
            None
        };
        let mut out = vec![0.0; rows * dh];
        for r in 0..rows {
            let t = ((r / hpp.max(1)) % n.max(1) + offset) * dh;
            let s = |j: usize| match (&scale, sign) {
                (Some(sc), 1) => sc[t + j],
                (Some(sc), -1) => 1.0 / sc[t + j],
                _ => 1.0,
            };
            let u = &x[r * dh..(r + 1) * dh];
            for j in 0..dh {
                out[r * dh + j] = if !bwd {
                    let rot = if j < half { -u[j + half] } else { u[j - half] };
                    (u[j] * cos[t + j] + rot * sin[t + j]) * s(j)
                } else if j < half {
                    u[j] * cos[t + j] * s(j) + u[j + half] * sin[t + j + half] * s(j + half)
                } else {
                    u[j] * cos[t + j] * s(j) - u[j - half] * sin[t + j - half] * s(j - half)
                };
            }
        }
        self.store(a.p(1), ty, &out)
    }

    fn swiglu_fwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (ld, xo, go, rows, f) = (a.n(1)?, a.n(2)?, a.n(3)?, a.n(5)?, a.n(6)?);
        let p = self.load_rest(a.p(0), ty)?;
        let mut out = vec![0.0; rows * f];
        for r in 0..rows {
            for c in 0..f {
                let (x, g) = (get(&p, r * ld + xo + c)?, get(&p, r * ld + go + c)?);
                out[r * f + c] = x * g / (1.0 + (-g).exp());
            }
        }
        self.store(a.p(4), ty, &out)
    }

    fn swiglu_bwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (ld, xo, go) = (a.n(1)?, a.n(2)?, a.n(3)?);
        let (ldd, dxo, dgo, rows, f) = (a.n(6)?, a.n(7)?, a.n(8)?, a.n(9)?, a.n(10)?);
        let p = self.load_rest(a.p(0), ty)?;
        let dout = self.load(a.p(4), ty, rows * f)?;
        let mut dp = self.load_rest(a.p(5), ty)?;
        for r in 0..rows {
            for c in 0..f {
                let (x, g) = (get(&p, r * ld + xo + c)?, get(&p, r * ld + go + c)?);
                let s = 1.0 / (1.0 + (-g).exp());
                let d = dout[r * f + c];
                *get_mut(&mut dp, r * ldd + dxo + c)? = d * g * s;
                *get_mut(&mut dp, r * ldd + dgo + c)? = d * x * s * (1.0 + g * (1.0 - s));
            }
        }
        self.store(a.p(5), ty, &dp)
    }

    fn cross_entropy_fwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, v) = (a.n(4)?, a.n(5)?);
        let x = self.load(a.p(0), ty, rows * v)?;
        let t = self.load_u32(a.p(1), rows)?;
        let (mut loss, mut lse) = (vec![0.0; rows], vec![0.0; rows]);
        for r in 0..rows {
            let row = &x[r * v..(r + 1) * v];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            lse[r] = m + row.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
            let tr = t[r] as usize;
            if tr != 0 && tr < v {
                loss[r] = lse[r] - row[tr];
            }
        }
        self.store(a.p(2), Ty::F32, &loss)?;
        if a.p(3) != 0 {
            self.store(a.p(3), Ty::F32, &lse)?;
        }
        Ok(())
    }

    fn cross_entropy_bwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, v, scale) = (a.n(4)?, a.n(5)?, a.f(6));
        let x = self.load(a.p(0), ty, rows * v)?;
        let t = self.load_u32(a.p(1), rows)?;
        let lse = self.load(a.p(2), Ty::F32, rows)?;
        let dl = if a.p(7) != 0 {
            self.load(a.p(7), Ty::F32, 1)?[0]
        } else {
            1.0
        };
        let mut out = vec![0.0; rows * v];
        for r in 0..rows {
            let tr = t[r] as usize;
            if tr == 0 || tr >= v {
                continue;
            }
            for c in 0..v {
                let p = (x[r * v + c] - lse[r]).exp();
                out[r * v + c] = (p - if c == tr { 1.0 } else { 0.0 }) * scale * dl;
            }
        }
        self.store(a.p(3), ty, &out)
    }

    fn logprob_fwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, v, it) = (a.n(5)?, a.n(6)?, a.f(7));
        let x = self.load(a.p(0), ty, rows * v)?;
        let ids = if a.p(2) != 0 {
            self.load_u32(a.p(1), rows)?
        } else {
            Vec::new()
        };
        let (mut lp, mut h, mut lse) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
        for r in 0..rows {
            let z: Vec<f32> = x[r * v..(r + 1) * v].iter().map(|x| x * it).collect();
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let l = m + z.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
            lse[r] = l;
            h[r] = l - z.iter().map(|z| (z - l).exp() * z).sum::<f32>();
            if let Some(&id) = ids.get(r) {
                lp[r] = z.get(id as usize).map_or(0.0, |z| z - l);
            }
        }
        for (p, vals) in [(a.p(2), &lp), (a.p(3), &h), (a.p(4), &lse)] {
            if p != 0 {
                self.store(p, Ty::F32, vals)?;
            }
        }
        Ok(())
    }

    fn logprob_bwd(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, v, it) = (a.n(7)?, a.n(8)?, a.f(9));
        let x = self.load(a.p(0), ty, rows * v)?;
        let ids = if a.p(1) != 0 {
            self.load_u32(a.p(1), rows)?
        } else {
            Vec::new()
        };
        let lse = self.load(a.p(2), Ty::F32, rows)?;
        let opt = |s: &Self, p: u64| {
            if p != 0 {
                s.load(p, Ty::F32, rows).map(Some)
            } else {
                Ok(None)
            }
        };
        let (dlp, dh) = (opt(self, a.p(4))?, opt(self, a.p(5))?);
        let h = if dh.is_some() {
            opt(self, a.p(3))?
        } else {
            None
        };
        let mut out = vec![0.0; rows * v];
        for r in 0..rows {
            let id = ids.get(r).map_or(usize::MAX, |&i| i as usize);
            let gl = dlp
                .as_ref()
                .map_or(0.0, |d| if id < v { d[r] } else { 0.0 });
            let (gh, hr) = (
                dh.as_ref().map_or(0.0, |d| d[r]),
                h.as_ref().map_or(0.0, |h| h[r]),
            );
            for c in 0..v {
                let lp = x[r * v + c] * it - lse[r];
                let p = lp.exp();
                let onehot = if c == id { 1.0 } else { 0.0 };
                out[r * v + c] = it * (gl * (onehot - p) - gh * p * (lp + hr));
            }
        }
        self.store(a.p(6), ty, &out)
    }

    fn adamw(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let n = a.n(5)?;
        let (lr, b1, b2, eps, wd, bc1, bc2, gs) = (
            a.f(6),
            a.f(7),
            a.f(8),
            a.f(9),
            a.f(10),
            a.f(11),
            a.f(12),
            a.f(13),
        );
        let clip = if a.p(14) != 0 {
            let sq = self.load(a.p(14), Ty::F32, 1)?[0];
            (a.f(15) / (sq.sqrt() + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let mut p = self.load(a.p(0), Ty::F32, n)?;
        let mut m = self.load(a.p(1), Ty::F32, n)?;
        let mut v = self.load(a.p(2), Ty::F32, n)?;
        let g = self.load(a.p(3), ty, n)?;
        for i in 0..n {
            let gi = g[i] * gs * clip;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] = p[i] * (1.0 - lr * wd) - (lr / bc1) * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
        }
        self.store(a.p(0), Ty::F32, &p)?;
        self.store(a.p(1), Ty::F32, &m)?;
        self.store(a.p(2), Ty::F32, &v)?;
        if a.p(4) != 0 {
            self.store(a.p(4), Ty::Bf16, &p)?;
        }
        Ok(())
    }

    /// The multi-tensor kernel: pointer arrays read from device memory, then the single-tensor
    /// update on each (weight decay per tensor when that array is given).
    fn adamw_multi(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let n = a.n(7)?;
        let words = |s: &Self, p: u64| -> Result<Vec<u64>> {
            Ok(bytemuck::pod_collect_to_vec(s.bytes(p, n * 8)?))
        };
        let (ps, ms, vs, gs) = (
            words(self, a.p(0))?,
            words(self, a.p(1))?,
            words(self, a.p(2))?,
            words(self, a.p(3))?,
        );
        let bf = if a.p(4) != 0 {
            words(self, a.p(4))?
        } else {
            vec![0; n]
        };
        let sizes = words(self, a.p(5))?;
        let wds = if a.p(6) != 0 {
            self.load(a.p(6), Ty::F32, n)?
        } else {
            vec![a.f(12); n]
        };
        for t in 0..n {
            let mut args = vec![
                KArg::Ptr(ps[t]),
                KArg::Ptr(ms[t]),
                KArg::Ptr(vs[t]),
                KArg::Ptr(gs[t]),
                KArg::Ptr(bf[t]),
                KArg::I64(sizes[t] as i64),
            ];
            args.extend((8..12).map(|i| a.0[i]));
            args.push(KArg::F32(wds[t]));
            args.extend((13..18).map(|i| a.0[i]));
            self.adamw(ty, &Args(&args))?;
        }
        Ok(())
    }

    fn sample(&mut self, ty: Ty, a: &Args) -> Result<()> {
        let (rows, v) = (a.n(2)?, a.n(3)?);
        let (temp, top_k, top_p, seed, step) = (a.f(4), a.i(5), a.f(6), a.u64(7), a.u64(8));
        let x = self.load(a.p(0), ty, rows * v)?;
        let mut out = vec![0u32; rows];
        for (r, o) in out.iter_mut().enumerate() {
            let row = &x[r * v..(r + 1) * v];
            // Order: value descending, index ascending.
            let mut idx: Vec<usize> = (0..v).collect();
            // temperature ≤ 0 or NaN: greedy.
            if temp.is_nan() || temp <= 0.0 {
                idx.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
                *o = idx[0] as u32;
                continue;
            }
            let z: Vec<f32> = row.iter().map(|&x| x * (1.0 / temp)).collect();
            idx.sort_by(|&i, &j| z[j].total_cmp(&z[i]).then(i.cmp(&j)));
            if top_k > 0 && (top_k as usize) < v {
                idx.truncate(top_k as usize);
            }
            let m = z[idx[0]];
            let mass: Vec<f32> = idx.iter().map(|&c| (z[c] - m).exp()).collect();
            let total: f32 = mass.iter().sum();
            let mut keep = vec![true; idx.len()];
            if top_p < 1.0 {
                let mut before = 0.0;
                for (k, e) in keep.iter_mut().zip(&mass) {
                    *k = before <= top_p * total;
                    before += e;
                }
            }
            let u01 = (philox(seed, step, r as u32) >> 8) as f32 / (1u32 << 24) as f32;
            let kept_total: f32 = mass
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| e)
                .sum();
            let u = u01 * kept_total;
            // The first kept element in index order whose inclusive cumulative mass exceeds u.
            let mut by_index: Vec<(usize, f32)> = idx
                .iter()
                .zip(&mass)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|((&c, &e), _)| (c, e))
                .collect();
            by_index.sort_by_key(|&(c, _)| c);
            let mut acc = 0.0;
            let mut pick = by_index.last().map_or(0, |&(c, _)| c);
            for &(c, e) in &by_index {
                acc += e;
                if u < acc && e > 0.0 {
                    pick = c;
                    break;
                }
            }
            *o = pick as u32;
        }
        self.store_u32(a.p(1), &out)
    }

    fn matmul(&mut self, name: &str, cfg: &LaunchCfg, a: &Args) -> Result<()> {
        let layout = &name["matmul_".len().."matmul_".len() + 2];
        let (ta, tb) = (layout.starts_with('t'), layout.ends_with('t'));
        let out_ty = if name.ends_with("_f32out") {
            Ty::F32
        } else {
            Ty::Bf16
        };
        let (m, n, k) = (a.n(3)?, a.n(4)?, a.n(5)?);
        let (lda, ldb, ldc) = (a.n(6)?, a.n(7)?, a.n(8)?);
        let (sa, sb, sc) = (a.n(9)?, a.n(10)?, a.n(11)?);
        let (alpha, beta) = (a.f(12), a.f(13));
        let batch = cfg.grid.2 as usize;
        let bm = if name.contains("_64") || name.contains("unaligned") {
            64
        } else {
            128
        };
        if cfg.grid.0 as usize != n.div_ceil(bm) || cfg.grid.1 as usize != m.div_ceil(bm) {
            return Err(bad(format!(
                "{name}: grid {:?} does not cover {m}×{n}",
                cfg.grid
            )));
        }
        let av = self.load_rest(a.p(0), Ty::Bf16)?;
        let bv = self.load_rest(a.p(1), Ty::Bf16)?;
        let mut cv = self.load_rest(a.p(2), out_ty)?;
        for z in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f32;
                    for l in 0..k {
                        let ai = z * sa + if ta { l * lda + i } else { i * lda + l };
                        let bi = z * sb + if tb { j * ldb + l } else { l * ldb + j };
                        acc += get(&av, ai)? * get(&bv, bi)?;
                    }
                    let c = get_mut(&mut cv, z * sc + i * ldc + j)?;
                    *c = alpha * acc + if beta != 0.0 { beta * *c } else { 0.0 };
                }
            }
        }
        self.store(a.p(2), out_ty, &cv)
    }

    /// d from the kernel name (`attention_d64_…`, `attention_d128_…`).
    fn head_dim(name: &str) -> usize {
        if name.contains("_d128_") { 128 } else { 64 }
    }

    fn attention_fwd(&mut self, name: &str, a: &Args) -> Result<()> {
        let d = Self::head_dim(name);
        let (b, h, n, m) = (a.n(5)?, a.n(6)?, a.n(7)?, a.n(8)?);
        let st = |i: usize| a.n(i);
        let (qs, ks, vs, os) = (
            [st(9)?, st(10)?, st(11)?],
            [st(12)?, 0, st(13)?],
            [st(14)?, 0, st(15)?],
            [st(16)?, st(17)?, st(18)?],
        );
        let (scale, causal) = (a.f(19), a.i(20) != 0);
        let q = self.load_rest(a.p(0), Ty::Bf16)?;
        let k = self.load_rest(a.p(1), Ty::Bf16)?;
        let v = self.load_rest(a.p(2), Ty::Bf16)?;
        let mut out = self.load_rest(a.p(3), Ty::Bf16)?;
        let mut lse = vec![0.0; b * h * n];
        let at = |s: [usize; 3], bi: usize, hi: usize, i: usize| bi * s[0] + hi * s[1] + i * s[2];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..n {
                    let visible = |j: usize| !causal || j <= i + (m - n);
                    let mut scores = vec![f32::NEG_INFINITY; m];
                    for (j, sc) in scores.iter_mut().enumerate().filter(|(j, _)| visible(*j)) {
                        let mut dot = 0.0;
                        for c in 0..d {
                            dot += get(&q, at(qs, bi, hi, i) + c)? * get(&k, at(ks, bi, 0, j) + c)?;
                        }
                        *sc = dot * scale;
                    }
                    let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let row = at(os, bi, hi, i);
                    if mx == f32::NEG_INFINITY {
                        lse[(bi * h + hi) * n + i] = f32::NEG_INFINITY;
                        for c in 0..d {
                            *get_mut(&mut out, row + c)? = 0.0;
                        }
                        continue;
                    }
                    let sum: f32 = scores.iter().map(|s| (s - mx).exp()).sum();
                    let l = mx + sum.ln();
                    lse[(bi * h + hi) * n + i] = l;
                    for c in 0..d {
                        let mut acc = 0.0;
                        for (j, s) in scores.iter().enumerate().filter(|(j, _)| visible(*j)) {
                            acc += (s - l).exp() * get(&v, at(vs, bi, 0, j) + c)?;
                        }
                        *get_mut(&mut out, row + c)? = acc;
                    }
                }
            }
        }
        self.store(a.p(3), Ty::Bf16, &out)?;
        if a.p(4) != 0 {
            self.store(a.p(4), Ty::F32, &lse)?;
        }
        Ok(())
    }

    fn attention_bwd_pre(&mut self, a: &Args) -> Result<()> {
        let (b, h, n, d) = (a.n(3)?, a.n(4)?, a.n(5)?, a.n(6)?);
        let (os, ds) = ([a.n(7)?, a.n(8)?, a.n(9)?], [a.n(10)?, a.n(11)?, a.n(12)?]);
        let o = self.load_rest(a.p(0), Ty::Bf16)?;
        let g = self.load_rest(a.p(1), Ty::Bf16)?;
        let mut dvec = vec![0.0; b * h * n];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..n {
                    let (ro, rg) = (
                        bi * os[0] + hi * os[1] + i * os[2],
                        bi * ds[0] + hi * ds[1] + i * ds[2],
                    );
                    let mut acc = 0.0;
                    for c in 0..d {
                        acc += get(&o, ro + c)? * get(&g, rg + c)?;
                    }
                    dvec[(bi * h + hi) * n + i] = acc;
                }
            }
        }
        self.store(a.p(2), Ty::F32, &dvec)
    }

    fn attention_bwd(&mut self, name: &str, a: &Args) -> Result<()> {
        let d = Self::head_dim(name);
        let (b, h, n, m) = (a.n(9)?, a.n(10)?, a.n(11)?, a.n(12)?);
        let st = |i: usize| a.n(i);
        let (qs, ks, vs, gs) = (
            [st(13)?, st(14)?, st(15)?],
            [st(16)?, 0, st(17)?],
            [st(18)?, 0, st(19)?],
            [st(20)?, st(21)?, st(22)?],
        );
        let (scale, causal) = (a.f(23), a.i(24) != 0);
        let q = self.load_rest(a.p(0), Ty::Bf16)?;
        let k = self.load_rest(a.p(1), Ty::Bf16)?;
        let v = self.load_rest(a.p(2), Ty::Bf16)?;
        let g = self.load_rest(a.p(3), Ty::Bf16)?;
        let lse = self.load(a.p(4), Ty::F32, b * h * n)?;
        let dvec = self.load(a.p(5), Ty::F32, b * h * n)?;
        let mut dq = self.load(a.p(6), Ty::F32, b * h * n * d)?;
        let mut dk = self.load(a.p(7), Ty::F32, b * m * d)?;
        let mut dv = self.load(a.p(8), Ty::F32, b * m * d)?;
        let at = |s: [usize; 3], bi: usize, hi: usize, i: usize| bi * s[0] + hi * s[1] + i * s[2];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..n {
                    let r = (bi * h + hi) * n + i;
                    for j in (0..m).filter(|&j| !causal || j <= i + (m - n)) {
                        let (mut s, mut dp) = (0.0, 0.0);
                        for c in 0..d {
                            s += get(&q, at(qs, bi, hi, i) + c)? * get(&k, at(ks, bi, 0, j) + c)?;
                            dp += get(&g, at(gs, bi, hi, i) + c)? * get(&v, at(vs, bi, 0, j) + c)?;
                        }
                        let p = (s * scale - lse[r]).exp();
                        let ds = p * (dp - dvec[r]);
                        for c in 0..d {
                            dv[(bi * m + j) * d + c] += p * get(&g, at(gs, bi, hi, i) + c)?;
                            dq[r * d + c] += scale * ds * get(&k, at(ks, bi, 0, j) + c)?;
                            dk[(bi * m + j) * d + c] +=
                                scale * ds * get(&q, at(qs, bi, hi, i) + c)?;
                        }
                    }
                }
            }
        }
        self.store(a.p(6), Ty::F32, &dq)?;
        self.store(a.p(7), Ty::F32, &dk)?;
        self.store(a.p(8), Ty::F32, &dv)
    }
}

fn get(v: &[f32], i: usize) -> Result<f32> {
    v.get(i)
        .copied()
        .ok_or_else(|| bad(format!("read of element {i} past its allocation")))
}

fn get_mut(v: &mut [f32], i: usize) -> Result<&mut f32> {
    v.get_mut(i)
        .ok_or_else(|| bad(format!("write of element {i} past its allocation")))
}

/// Kernel arguments by position.
struct Args<'a>(&'a [KArg]);

impl Args<'_> {
    fn p(&self, i: usize) -> u64 {
        match self.0.get(i) {
            Some(KArg::Ptr(v) | KArg::U64(v)) => *v,
            _ => 0,
        }
    }
    fn i(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(KArg::I64(v)) => *v,
            Some(KArg::I32(v)) => *v as i64,
            Some(KArg::U32(v)) => *v as i64,
            Some(KArg::U64(v) | KArg::Ptr(v)) => *v as i64,
            _ => 0,
        }
    }
    /// A size argument (negative → error).
    fn n(&self, i: usize) -> Result<usize> {
        usize::try_from(self.i(i)).map_err(|_| bad(format!("argument {i} is a negative size")))
    }
    fn f(&self, i: usize) -> f32 {
        match self.0.get(i) {
            Some(KArg::F32(v)) => *v,
            _ => 0.0,
        }
    }
    fn u32(&self, i: usize) -> u32 {
        self.i(i) as u32
    }
    fn u64(&self, i: usize) -> u64 {
        self.p(i)
    }
}

/// The top 32 bits of lane x of Philox4x32-10 with counter {row, step_lo, step_hi, 0} and key
/// {seed_lo, seed_hi} (the kernel uses the top 24 bits of x).
fn philox(seed: u64, step: u64, row: u32) -> u32 {
    let mut c = [row, step as u32, (step >> 32) as u32, 0u32];
    let mut k = [seed as u32, (seed >> 32) as u32];
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(0x9E37_79B9);
            k[1] = k[1].wrapping_add(0xBB67_AE85);
        }
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c[0]
}
