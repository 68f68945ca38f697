//! The VM against the warp-level facts of `kernels/facts.cu`: each kernel runs on inputs the test
//! chooses, and its output is checked against values computed here from the PTX ISA's rules
//! (fragment layouts of ldmatrix and mma.m16n8k16, cp.async zero fill, shfl.sync lane
//! selection and clamping, vote/match/redux), never from our own kernels. Every kernel is
//! correct, so every launch must also pass all the VM's checks.

mod common;

use common::*;
use palm_ptx_vm::{Arg, Memory, Module};

fn facts() -> Module {
    module("facts.ptx", include_str!("kernels/facts.ptx"))
}

/// A small deterministic generator (xorshift), so inputs vary without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------- (a)

/// Run mma_fragment_facts on A (16×16) and B (16×8), both as bf16 bits; returns C (16×8).
fn mma(a: &[u16], b: &[u16]) -> Vec<f32> {
    let m = facts();
    let mem = Memory::new();
    // The kernel takes Bᵀ (8×16 row-major): bt[n*16 + k] = B[k][n].
    let bt: Vec<u16> = (0..128).map(|i| b[(i % 16) * 8 + i / 16]).collect();
    let pa = put_u16(&mem, a);
    let pb = put_u16(&mem, &bt);
    let c = out32(&mem, 128);
    let counters = run(
        &m,
        "mma_fragment_facts",
        1,
        32,
        &[Arg::B64(pa), Arg::B64(pb), Arg::B64(c)],
        &mem,
    );
    assert_eq!(counters.mma, 1);
    get_f32(&mem, c, 128)
}

/// C = A·B in f64 from the bf16 inputs, and Σ|A_ik·B_kj| (the scale of the rounding error).
fn reference(a: &[u16], b: &[u16]) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0f64; 128];
    let mut s = vec![0f64; 128];
    for i in 0..16 {
        for j in 0..8 {
            for k in 0..16 {
                let p = bf16_value(a[i * 16 + k]) as f64 * bf16_value(b[k * 8 + j]) as f64;
                c[i * 8 + j] += p;
                s[i * 8 + j] += p.abs();
            }
        }
    }
    (c, s)
}

#[test]
fn mma_m16n8k16_small_integers_are_exact() {
    // Distinct small integers everywhere, so a misplaced element changes the sums.
    let a: Vec<u16> = (0..256)
        .map(|e| {
            let (i, k) = (e / 16, e % 16);
            bf16_exact(((i * 3 + k * 5) % 11) as f32 - 5.0)
        })
        .collect();
    let b: Vec<u16> = (0..128)
        .map(|e| {
            let (k, n) = (e / 8, e % 8);
            bf16_exact(((k * 7 + n * 2) % 9) as f32 - 4.0)
        })
        .collect();
    let c = mma(&a, &b);
    let (want, _) = reference(&a, &b);
    for i in 0..128 {
        assert_eq!(c[i] as f64, want[i], "C[{}][{}]", i / 8, i % 8);
    }
}

#[test]
fn mma_m16n8k16_general_values_within_rounding() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Arbitrary finite bf16 values with varied exponents and signs.
    let mut val = || {
        let sign = (rng.below(2) as u16) << 15;
        let exp = (120 + rng.below(14)) as u16; // 2^-7 .. 2^6
        let man = rng.below(128) as u16;
        sign | (exp << 7) | man
    };
    let a: Vec<u16> = (0..256).map(|_| val()).collect();
    let b: Vec<u16> = (0..128).map(|_| val()).collect();
    let c = mma(&a, &b);
    let (want, scale) = reference(&a, &b);
    for i in 0..128 {
        // f32 accumulation of 16 products: at most ~16 roundings of 2^-24 relative to Σ|p|.
        let tol = scale[i] * 16.0 * f32::EPSILON as f64;
        assert!(
            (c[i] as f64 - want[i]).abs() <= tol,
            "C[{}][{}] = {} vs {} (tol {tol})",
            i / 8,
            i % 8,
            c[i],
            want[i]
        );
    }
}

// ---------------------------------------------------------------------------------------- (b)

#[test]
fn ldmatrix_fragments_with_and_without_trans() {
    let m = facts();
    let mem = Memory::new();
    // M[r][c] = a distinct bit pattern per element (not all are finite bf16; only moved).
    let mat: Vec<u16> = (0..64)
        .map(|e| 0xA000 ^ ((e as u16) * 0x0101 + 7))
        .collect();
    let at = |r: usize, c: usize| mat[r * 8 + c] as u32;
    let pm = put_u16(&mem, &mat);
    let out = out32(&mem, 64);
    let counters = run(
        &m,
        "ldmatrix_trans_facts",
        1,
        32,
        &[Arg::B64(pm), Arg::B64(out)],
        &mem,
    );
    assert_eq!(counters.family(palm_ptx_vm::Family::Ldmatrix), 2);
    let got = get_u32(&mem, out, 64);
    for t in 0..32 {
        // .trans: lane t holds column t/4, rows 2(t%4) (low half) and 2(t%4)+1 (high half).
        let trans = at(2 * (t % 4), t / 4) | (at(2 * (t % 4) + 1, t / 4) << 16);
        // No .trans: row t/4, columns 2(t%4) (low) and 2(t%4)+1 (high).
        let plain = at(t / 4, 2 * (t % 4)) | (at(t / 4, 2 * (t % 4) + 1) << 16);
        assert_eq!(got[t], trans, "lane {t} .trans");
        assert_eq!(got[32 + t], plain, "lane {t} no .trans");
    }
}

// ---------------------------------------------------------------------------------------- (c)

fn zfill(valid: usize) {
    let m = facts();
    let mem = Memory::new();
    let x = mem.alloc(512);
    let src: Vec<u8> = (0..512).map(|i| (i * 37 + 11) as u8 | 0x01).collect();
    // Only the first `valid` bytes of each lane's 16-byte chunk are written: a read of any
    // other byte would be an initcheck finding, so this also checks that only they are read.
    for l in 0..32 {
        mem.write(x + 16 * l as u64, &src[16 * l..16 * l + valid])
            .unwrap();
    }
    let out = out32(&mem, 128);
    run(
        &m,
        "cp_async_zfill",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out), Arg::B32(valid as u32)],
        &mem,
    );
    let mut got = vec![0u8; 512];
    mem.read(out, &mut got, true).unwrap();
    for l in 0..32 {
        for b in 0..16 {
            let i = 16 * l + b;
            let want = if b < valid { src[i] } else { 0 };
            assert_eq!(got[i], want, "valid_bytes {valid}: lane {l} byte {b}");
        }
    }
}

#[test]
fn cp_async_zfill_nothing_valid() {
    zfill(0);
}

#[test]
fn cp_async_zfill_one_float_valid() {
    zfill(4);
}

#[test]
fn cp_async_zfill_seven_bytes_valid() {
    // Not a multiple of the element size: float 1 keeps 3 source bytes and a zero high byte.
    zfill(7);
}

#[test]
fn cp_async_zfill_all_valid() {
    zfill(16);
}

#[test]
fn cp_async_zfill_reads_nothing_past_the_valid_bytes() {
    // The source ends right after lane 31's valid bytes: reading the chunk's tail would run
    // past the allocation.
    let m = facts();
    let mem = Memory::new();
    let valid = 6;
    let len = 16 * 31 + valid;
    let x = mem.alloc(len);
    let src: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
    mem.write(x, &src).unwrap();
    let out = out32(&mem, 128);
    run(
        &m,
        "cp_async_zfill",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out), Arg::B32(valid as u32)],
        &mem,
    );
    let got = get_u32(&mem, out, 128);
    // Lane 31, float 1: its low 2 bytes are x's bytes 4..6 of the chunk, the high 2 bytes zero.
    let base = 16 * 31;
    let want = u32::from_le_bytes([src[base + 4], src[base + 5], 0, 0]);
    assert_eq!(got[4 * 31 + 1], want);
    assert_eq!(got[4 * 31 + 2], 0);
}

// ---------------------------------------------------------------------------------------- (d)

fn lanes_input() -> Vec<i32> {
    (0..32).map(|l| 1000 + 17 * l - (l * l) % 7).collect()
}

#[test]
fn shfl_modes_follow_the_isa() {
    let m = facts();
    let mem = Memory::new();
    let v = lanes_input();
    let x = put_i32(&mem, &v);
    let out = out32(&mem, 160);
    run(&m, "shfl_modes", 1, 32, &[Arg::B64(x), Arg::B64(out)], &mem);
    let got = get_i32(&mem, out, 160);
    for l in 0..32usize {
        // up by 3: a source lane below 0 is out of range, the lane keeps its own value.
        let up = if l >= 3 { v[l - 3] } else { v[l] };
        let xor5 = v[l ^ 5];
        let idx = v[(7 * l) % 32];
        // down by 2: a source lane past 31 is out of range.
        let down = if l + 2 < 32 { v[l + 2] } else { v[l] };
        // xor 1 at width 8 stays inside the lane's 8-lane segment.
        let xor1w8 = v[l ^ 1];
        assert_eq!(got[l], up, "up 3, lane {l}");
        assert_eq!(got[32 + l], xor5, "xor 5, lane {l}");
        assert_eq!(got[64 + l], idx, "idx 7l%32, lane {l}");
        assert_eq!(got[96 + l], down, "down 2, lane {l}");
        assert_eq!(got[128 + l], xor1w8, "xor 1 width 8, lane {l}");
    }
}

#[test]
fn shfl_sub_warp_widths_clamp_to_the_segment() {
    let m = facts();
    let mem = Memory::new();
    let v = lanes_input();
    let x = put_i32(&mem, &v);
    let out = out32(&mem, 96);
    run(
        &m,
        "shfl_width_facts",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    );
    let got = get_i32(&mem, out, 96);
    for l in 0..32usize {
        let up = if l % 8 >= 1 { v[l - 1] } else { v[l] };
        let down = if l % 16 + 3 < 16 { v[l + 3] } else { v[l] };
        let idx = v[(l & !7) + 9 % 8];
        assert_eq!(got[l], up, "up 1 width 8, lane {l}");
        assert_eq!(got[32 + l], down, "down 3 width 16, lane {l}");
        assert_eq!(got[64 + l], idx, "idx 9 width 8, lane {l}");
    }
}

// ---------------------------------------------------------------------------------------- (f)

#[test]
fn match_any_groups_equal_values() {
    let m = facts();
    let mem = Memory::new();
    // Groups of varied sizes, including singletons.
    let v: Vec<i32> = (0..32)
        .map(|l: i32| match l % 7 {
            0 => -1,
            1 | 4 => 5,
            2 => l, // unique
            _ => 1 << 20,
        })
        .collect();
    let x = put_i32(&mem, &v);
    let out = out32(&mem, 32);
    run(
        &m,
        "match_any_facts",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    );
    let got = get_u32(&mem, out, 32);
    for l in 0..32 {
        let want = (0..32)
            .filter(|&j| v[j] == v[l])
            .fold(0u32, |m, j| m | 1 << j);
        assert_eq!(got[l], want, "lane {l}");
        assert_ne!(got[l] & (1 << l), 0);
    }
}

// ---------------------------------------------------------------------------------------- (g)

fn vote(v: &[i32]) {
    let m = facts();
    let mem = Memory::new();
    let x = put_i32(&mem, v);
    let out = out32(&mem, 160);
    run(&m, "vote_facts", 1, 32, &[Arg::B64(x), Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 160);
    let ballot = (0..32).filter(|&j| v[j] != 0).fold(0u32, |m, j| m | 1 << j);
    let any = v.iter().any(|&x| x != 0) as u32;
    let all = v.iter().all(|&x| x != 0) as u32;
    let sum = v.iter().fold(0u32, |s, &x| s.wrapping_add(x as u32));
    let same = if v.iter().all(|&x| x == v[0]) {
        u32::MAX
    } else {
        0
    };
    for l in 0..32 {
        assert_eq!(got[l], ballot, "ballot, lane {l}");
        assert_eq!(got[32 + l], any, "any, lane {l}");
        assert_eq!(got[64 + l], all, "all, lane {l}");
        assert_eq!(got[96 + l], sum, "redux add, lane {l}");
        assert_eq!(got[128 + l], same, "match.all, lane {l}");
    }
}

#[test]
fn vote_mixed_predicates() {
    let v: Vec<i32> = (0..32)
        .map(|l| if l % 3 == 1 { 0 } else { l * 1_000_003 - 9 })
        .collect();
    vote(&v);
}

#[test]
fn vote_all_zero() {
    vote(&[0; 32]);
}

#[test]
fn vote_all_equal_and_wrapping_sum() {
    // 32 × 0x7FFFFFFF wraps modulo 2^32; every value equal: match.all gives the full mask.
    vote(&[i32::MAX; 32]);
}

#[test]
fn vote_negative_values_sum_modulo() {
    let v: Vec<i32> = (0..32).map(|l| -(l * l) - 1).collect();
    vote(&v);
}
