//! Unit tests of the VM, family by family, on small hand-written PTX kernels with hand-computed
//! expectations (the PTX ISA's rules, worked out in the comments): integer and bit operations,
//! floating point and conversions, control flow and reconvergence, barriers and exits,
//! atomics, parameters, the memory checks, launch and parse errors, and the counters.

mod common;

use common::*;
use palm_ptx_vm::{Arg, Check, Error, LaunchConfig, Memory, Settings};

const HEAD: &str = ".version 9.0\n.target sm_90a\n.address_size 64\n";

fn ptx(body: &str) -> String {
    format!("{HEAD}\n{body}")
}

// ------------------------------------------------------------------------ scalar harness

/// What a scalar case must produce.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Exact bits (32-bit results zero-extended).
    Bits(u64),
    /// An f32 NaN (any payload).
    NanF32,
    /// A bf16 NaN in the low 16 bits.
    NanBf16,
    /// An f32 within `ulps` units in the last place of the value.
    Ulps(f32, u32),
}

fn f(x: f32) -> Want {
    Want::Bits(x.to_bits() as u64)
}

fn u(x: u32) -> Want {
    Want::Bits(x as u64)
}

fn i(x: i32) -> Want {
    Want::Bits(x as u32 as u64)
}

fn w(x: u64) -> Want {
    Want::Bits(x)
}

/// Run one thread through every case. Inputs are loaded into `%r1…` (as u32) and `%f1…` (the
/// same bits as f32). In a case's code, `$d` is its 32-bit destination, `$D` a 64-bit one,
/// `$h`/`$g` 16-bit scratch registers and `$p`/`$q` predicates; `;` separates instructions.
fn scalar(inputs: &[u32], cases: &[(&str, Want)]) {
    let mut body = String::new();
    for k in 0..inputs.len() {
        let n = k + 1;
        body += &format!(
            "\tld.global.u32 %r{n}, [%rd1+{}];\n\tmov.b32 %f{n}, %r{n};\n",
            4 * k
        );
    }
    for (c, (code, _)) in cases.iter().enumerate() {
        let (r, rd) = (format!("%r{}", 100 + c), format!("%rd{}", 100 + c));
        let code = code
            .replace("$d", &r)
            .replace("$D", &rd)
            .replace("$h", &format!("%rs{}", 2 * c))
            .replace("$g", &format!("%rs{}", 2 * c + 1))
            .replace("$p", &format!("%p{}", 2 * c))
            .replace("$q", &format!("%p{}", 2 * c + 1));
        for ins in code.split(';') {
            body += &format!("\t{};\n", ins.trim());
        }
        if !code.contains(&rd) {
            body += &format!("\tcvt.u64.u32 {rd}, {r};\n");
        }
        body += &format!("\tst.global.u64 [%rd2+{}], {rd};\n", 8 * c);
    }
    let n = 100 + cases.len() + 1;
    let text = ptx(&format!(
        ".visible .entry scalar(\n\t.param .u64 p_in,\n\t.param .u64 p_out\n)\n{{\n\
         \t.reg .pred %p<{n2}>;\n\t.reg .b16 %rs<{n2}>;\n\t.reg .b32 %r<{n}>;\n\
         \t.reg .f32 %f<{n}>;\n\t.reg .b64 %rd<{n}>;\n\
         \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n{body}\tret;\n}}\n",
        n2 = 2 * cases.len() + 2
    ));
    let m = module("scalar.ptx", &text);
    let mem = Memory::new();
    let pin = put_u32(&mem, inputs);
    let out = mem.alloc(8 * cases.len());
    run(&m, "scalar", 1, 1, &[Arg::B64(pin), Arg::B64(out)], &mem);
    let got = get_u64(&mem, out, cases.len());
    let mut bad = Vec::new();
    for (c, ((code, want), g)) in cases.iter().zip(&got).enumerate() {
        let ok = match *want {
            Want::Bits(b) => *g == b,
            Want::NanF32 => f32::from_bits(*g as u32).is_nan() && *g >> 32 == 0,
            Want::NanBf16 => {
                *g >> 16 == 0 && (*g as u16 & 0x7F80) == 0x7F80 && (*g as u16 & 0x7F) != 0
            }
            Want::Ulps(x, n) => {
                let y = f32::from_bits(*g as u32);
                *g >> 32 == 0
                    && y.is_finite()
                    && (y.to_bits() as i64 - x.to_bits() as i64).unsigned_abs() <= n as u64
                    && y.is_sign_negative() == x.is_sign_negative()
            }
        };
        if !ok {
            bad.push(format!("case {c} `{code}`: got {g:#x}, want {want:x?}"));
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

// ------------------------------------------------------------------------ integers

/// %r1 = −7, %r2 = 2, %r3 = 0x8000_0000, %r4 = 0xFFFF_FFFF, %r5 = 40, %r6 = 3, %r7 = 7,
/// %r8 = 0xF0F0_1234, %r9 = 0x0001_0000, %r10 = 0x1234_5678, %r11 = 0xAB, %r12 = 0, %r13 = 1.
const INTS: [u32; 13] = [
    -7i32 as u32,
    2,
    0x8000_0000,
    0xFFFF_FFFF,
    40,
    3,
    7,
    0xF0F0_1234,
    0x0001_0000,
    0x1234_5678,
    0xAB,
    0,
    1,
];

#[test]
fn integer_add_sub_mul_wrap() {
    scalar(
        &INTS,
        &[
            ("add.u32 $d, %r4, %r2", u(1)),              // 2^32 − 1 + 2 wraps to 1
            ("add.s32 $d, %r3, %r4", u(0x7FFF_FFFF)),    // INT_MIN + (−1) wraps
            ("sub.u32 $d, %r2, %r6", u(0xFFFF_FFFF)),    // 2 − 3
            ("sub.s32 $d, %r3, %r13", u(0x7FFF_FFFF)),   // INT_MIN − 1
            ("mul.lo.u32 $d, %r4, %r2", u(0xFFFF_FFFE)), // low half of 2^33 − 2
            ("mul.lo.s32 $d, %r1, %r6", i(-21)),         //
            ("mul.hi.u32 $d, %r4, %r4", u(0xFFFF_FFFE)), // (2^32−1)^2 = 0xFFFFFFFE_00000001
            ("mul.hi.s32 $d, %r4, %r4", u(0)),           // (−1)·(−1) = 1: high half 0
            ("mul.hi.s32 $d, %r1, %r3", u(3)),           // −7 · −2^31 = 0x3_8000_0000
            ("mul.hi.u32 $d, %r1, %r3", u(0x7FFF_FFFC)), // 0xFFFFFFF9 · 2^31
            ("mul.hi.s32 $d, %r1, %r7", i(-1)),          // −49: high half all ones
            ("mul.wide.s32 $D, %r1, %r6", w(-21i64 as u64)),
            ("mul.wide.u32 $D, %r1, %r6", w(0x2_FFFF_FFEB)), // 3 · 0xFFFFFFF9
            ("mul.wide.s32 $D, %r3, %r3", w(1 << 62)),       // (−2^31)^2
            ("mul.wide.u32 $D, %r4, %r4", w(0xFFFF_FFFE_0000_0001)),
            ("mad.lo.s32 $d, %r1, %r6, %r7", i(-14)), // −21 + 7
            ("mad.wide.s32 $D, %r1, %r6, 100", w(79)), // −21 + 100 in 64 bits
            ("neg.s32 $d, %r2", i(-2)),
            ("abs.s32 $d, %r1", u(7)),
        ],
    );
}

#[test]
fn integer_div_rem_signed_and_unsigned() {
    scalar(
        &INTS,
        &[
            // Signed division truncates toward zero; the remainder takes the dividend's sign.
            ("div.s32 $d, %r1, %r2", i(-3)),          // −7 / 2
            ("rem.s32 $d, %r1, %r2", i(-1)),          // −7 % 2
            ("div.s32 $d, %r7, -2", i(-3)),           // 7 / −2
            ("rem.s32 $d, %r7, -2", i(1)),            // 7 % −2
            ("div.s32 $d, %r1, -2", i(3)),            // −7 / −2
            ("rem.s32 $d, %r1, -2", i(-1)),           // −7 % −2
            ("div.u32 $d, %r1, %r2", u(0x7FFF_FFFC)), // 4294967289 / 2
            ("rem.u32 $d, %r1, %r7", u(4)),           // 4294967289 = 7·613566755 + 4
            ("div.u32 $d, %r4, %r4", u(1)),
        ],
    );
}

#[test]
fn integer_shifts_clamp_at_the_width() {
    scalar(
        &INTS,
        &[
            ("shl.b32 $d, %r6, %r5", u(0)), // count 40 clamps to 32: all out
            ("shl.b32 $d, %r6, 31", u(0x8000_0000)),
            ("shl.b32 $d, %r13, 32", u(0)),
            ("shr.u32 $d, %r3, %r5", u(0)),
            ("shr.s32 $d, %r3, %r5", u(0xFFFF_FFFF)), // clamped arithmetic shift: sign fill
            ("shr.s32 $d, %r10, %r5", u(0)),          // … of a positive value: 0
            ("shr.s32 $d, %r1, 1", i(-4)),            // −7 >> 1 rounds toward −∞
            ("shr.b32 $d, %r1, 1", u(0x7FFF_FFFC)),   // .b32 shifts logically
            ("shr.u32 $d, %r4, 32", u(0)),
            ("shr.u32 $d, %r4, 31", u(1)),
        ],
    );
}

#[test]
fn integer_bit_operations() {
    scalar(
        &INTS,
        &[
            ("and.b32 $d, %r8, %r10", u(0xF0F0_1234 & 0x1234_5678)),
            ("or.b32 $d, %r8, %r10", u(0xF0F0_1234 | 0x1234_5678)),
            ("xor.b32 $d, %r8, %r10", u(0xF0F0_1234 ^ 0x1234_5678)),
            ("not.b32 $d, %r8", u(0x0F0F_EDCB)),
            // bfi: insert the low `len` bits of a into b at `pos`.
            ("bfi.b32 $d, %r11, %r4, 8, 8", u(0xFFFF_ABFF)),
            ("bfi.b32 $d, %r11, %r12, 28, 8", u(0xB000_0000)), // only 4 bits fit above 28
            ("bfi.b32 $d, %r11, %r10, 4, 0", u(0x1234_5678)),  // len 0: b unchanged
            ("bfi.b32 $d, %r11, %r10, 32, 4", u(0x1234_5678)), // pos past the msb: b
            ("brev.b32 $d, %r13", u(0x8000_0000)),
            ("brev.b32 $d, %r10", u(0x1E6A_2C48)),
            ("clz.b32 $d, %r12", u(32)),
            ("clz.b32 $d, %r9", u(15)),
            ("clz.b32 $d, %r3", u(0)),
            ("popc.b32 $d, %r8", u(13)), // 4 + 4 + popc(0x1234) = 5
            ("popc.b32 $d, %r4", u(32)),
            ("popc.b32 $d, %r12", u(0)),
            // bfind: position of the most significant non-sign bit; .shiftamt: 31 − that.
            ("bfind.u32 $d, %r9", u(16)),
            ("bfind.shiftamt.u32 $d, %r9", u(15)),
            ("bfind.u32 $d, %r10", u(28)),
            ("bfind.u32 $d, %r12", u(0xFFFF_FFFF)), // none: all ones, with or without .shiftamt
            ("bfind.shiftamt.u32 $d, %r12", u(0xFFFF_FFFF)),
            ("bfind.s32 $d, %r1", u(2)), // −7 = …11111001: highest 0 bit is bit 2
            ("bfind.shiftamt.s32 $d, %r1", u(29)),
            ("bfind.s32 $d, %r4", u(0xFFFF_FFFF)), // −1 has no non-sign bit
        ],
    );
}

#[test]
fn integer_min_max_setp_selp() {
    scalar(
        &INTS,
        &[
            ("min.s32 $d, %r1, %r2", i(-7)),
            ("min.u32 $d, %r1, %r2", u(2)),
            ("max.s32 $d, %r1, %r2", u(2)),
            ("max.u32 $d, %r1, %r2", i(-7)),
            ("max.s32 $d, %r3, %r4", i(-1)),
            (
                "setp.lt.s32 $p, %r1, %r2; selp.u32 $d, 111, 222, $p",
                u(111),
            ), // −7 < 2
            (
                "setp.lt.u32 $p, %r1, %r2; selp.u32 $d, 111, 222, $p",
                u(222),
            ), // 0xFFFFFFF9 < 2
            (
                "setp.lo.u32 $p, %r2, %r1; selp.u32 $d, 111, 222, $p",
                u(111),
            ),
            (
                "setp.hi.u32 $p, %r1, %r2; selp.u32 $d, 111, 222, $p",
                u(111),
            ),
            (
                "setp.gt.s32 $p, %r1, %r2; selp.u32 $d, 111, 222, $p",
                u(222),
            ),
            (
                "setp.ge.s32 $p, %r3, %r1; selp.u32 $d, 111, 222, $p",
                u(222),
            ), // INT_MIN ≥ −7
            (
                "setp.ge.u32 $p, %r3, %r2; selp.u32 $d, 111, 222, $p",
                u(111),
            ),
            (
                "setp.ls.u32 $p, %r4, %r4; selp.u32 $d, 111, 222, $p",
                u(111),
            ),
            (
                "setp.ne.s32 $p, %r4, %r4; selp.u32 $d, 111, 222, $p",
                u(222),
            ),
            ("setp.eq.u32 $p, %r12, 0; selp.u32 $d, 111, 222, $p", u(111)),
            // The complement destination: q = !(a < b).
            (
                "setp.lt.s32 $p|$q, %r1, %r2; selp.u32 $d, 111, 222, $q",
                u(222),
            ),
            // Combining: p = (a > b) OR q.
            (
                "setp.eq.u32 $q, %r2, 2; setp.gt.s32.or $p, %r1, %r2, $q; selp.u32 $d, 111, 222, $p",
                u(111),
            ),
            (
                "setp.eq.u32 $q, %r2, 2; setp.lt.s32.and $p, %r1, %r2, !$q; selp.u32 $d, 111, 222, $p",
                u(222),
            ),
        ],
    );
}

// ------------------------------------------------------------------------ floats

/// f1 = 1, f2 = −1, f3 = 2^-30, f4 = −2^-30, f5 = 3, f6 = +0, f7 = NaN, f8 = 2, f9 = 0.5,
/// f10 = −0, f11 = 3e10, f12 = −3e10, f13 = −2.7, f14 = −2.5, f15 = 2.5,
/// f16 = 1 + 2^-8 (0x3F808000), f17 = 0x3F818000, f18 = 0x3F808001, f19 = −∞, f20 = 10,
/// f21 = −3.3, f22 = 8, r23 = 16777217 (integer), f24 = −5, f25 = 1 + 2^-23,
/// r26 = −7 (integer), r27 = 0x1234_5678 (bits).
fn floats() -> Vec<u32> {
    [
        1.0f32,
        -1.0,
        2f32.powi(-30),
        -(2f32.powi(-30)),
        3.0,
        0.0,
        f32::NAN,
        2.0,
        0.5,
        -0.0,
        3e10,
        -3e10,
        -2.7,
        -2.5,
        2.5,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0x3F80_8001),
        f32::NEG_INFINITY,
        10.0,
        -3.3,
        8.0,
        f32::from_bits(16_777_217),
        -5.0,
        1.0 + f32::EPSILON,
    ]
    .iter()
    .map(|x| x.to_bits())
    .chain([-7i32 as u32, 0x1234_5678])
    .collect()
}

#[test]
fn fma_and_directed_rounding() {
    let next_after_one = f32::from_bits(0x3F80_0001); // 1 + 2^-23
    let below_one = f32::from_bits(0x3F7F_FFFF); // 1 − 2^-24
    scalar(
        &floats(),
        &[
            // −1·1 − 2^-30 is not an f32: to nearest −1, toward −∞ the next f32 below −1.
            ("fma.rn.f32 $d, %f2, %f1, %f4", f(-1.0)),
            ("fma.rm.f32 $d, %f2, %f1, %f4", f(-next_after_one)),
            ("fma.rz.f32 $d, %f2, %f1, %f4", f(-1.0)),
            ("fma.rp.f32 $d, %f2, %f1, %f4", f(-1.0)),
            ("fma.rp.f32 $d, %f1, %f1, %f3", f(next_after_one)),
            ("fma.rm.f32 $d, %f1, %f1, %f3", f(1.0)),
            // (1 + 2^-23)^2 − 1 = 2^-22 + 2^-46: a tie at 2^-22's precision, even is 2^-22.
            ("fma.rn.f32 $d, %f25, %f25, %f2", f(2f32.powi(-22))),
            (
                "fma.rp.f32 $d, %f25, %f25, %f2",
                f(2f32.powi(-22) + 2f32.powi(-45)),
            ),
            // Exact cancellation is +0, except toward −∞.
            ("fma.rn.f32 $d, %f1, %f1, %f2", f(0.0)),
            ("fma.rm.f32 $d, %f1, %f1, %f2", f(-0.0)),
            ("add.rn.f32 $d, %f1, %f3", f(1.0)),
            ("add.rp.f32 $d, %f1, %f3", f(next_after_one)),
            ("sub.rm.f32 $d, %f1, %f3", f(below_one)),
            ("sub.rz.f32 $d, %f1, %f3", f(below_one)),
            ("sub.rp.f32 $d, %f1, %f3", f(1.0)),
            // An exact zero product keeps its sign whatever the rounding.
            ("mul.rn.f32 $d, %f6, %f1", f(0.0)),
            ("mul.rm.f32 $d, %f6, %f1", f(0.0)),
            ("mul.rm.f32 $d, %f10, %f1", f(-0.0)),
            ("mul.rz.f32 $d, %f5, %f9", f(1.5)),
        ],
    );
}

#[test]
fn division_sqrt_rcp_are_correctly_rounded() {
    // 1/3 = 0.0101…₂: 24 significant bits give 0x3EAAAAAA, the rest (0.101…) rounds up.
    scalar(
        &floats(),
        &[
            ("div.rn.f32 $d, %f1, %f5", u(0x3EAA_AAAB)),
            ("div.rz.f32 $d, %f1, %f5", u(0x3EAA_AAAA)),
            ("div.rm.f32 $d, %f1, %f5", u(0x3EAA_AAAA)),
            ("div.rp.f32 $d, %f1, %f5", u(0x3EAA_AAAB)),
            ("div.rm.f32 $d, %f2, %f5", u(0xBEAA_AAAB)),
            ("div.rz.f32 $d, %f2, %f5", u(0xBEAA_AAAA)),
            ("div.rp.f32 $d, %f2, %f5", u(0xBEAA_AAAA)),
            ("div.rn.f32 $d, %f1, %f22", f(0.125)), // exact quotients stay exact
            ("div.rp.f32 $d, %f1, %f22", f(0.125)),
            ("div.rm.f32 $d, %f20, %f2", f(-10.0)),
            ("div.rn.f32 $d, %f1, %f6", f(f32::INFINITY)),
            ("div.rn.f32 $d, %f6, %f6", Want::NanF32),
            ("sqrt.rn.f32 $d, %f8", u(0x3FB5_04F3)), // √2 = 1.0110101000001001111001100110…₂
            ("sqrt.rn.f32 $d, %f20", u(0x404A_62C2)), // √10 = 3.16227766…
            ("sqrt.rn.f32 $d, %f2", Want::NanF32),
            ("sqrt.rn.f32 $d, %f10", f(-0.0)),
            ("rcp.rn.f32 $d, %f5", u(0x3EAA_AAAB)),
            ("rcp.rn.f32 $d, %f22", f(0.125)),
            ("rcp.rn.f32 $d, %f6", f(f32::INFINITY)),
            ("rcp.rn.f32 $d, %f10", f(f32::NEG_INFINITY)),
        ],
    );
}

/// The f32 neighbours of an f64 value: (largest ≤ x, smallest ≥ x).
fn f32_bracket(x: f64) -> (f32, f32) {
    let c = x as f32;
    let step = |v: f32, up: bool| {
        let b = v.to_bits();
        f32::from_bits(if (v > 0.0) == up { b + 1 } else { b - 1 })
    };
    if (c as f64) == x {
        (c, c)
    } else if (c as f64) < x {
        (c, step(c, true))
    } else {
        (step(c, false), c)
    }
}

#[test]
fn directed_division_matches_a_reference_on_random_operands() {
    // Reference: the f64 quotient of two f32 values is never within half an f64 ulp of an f32
    // unless it equals one, so the f32 values bracketing it bracket the exact quotient.
    let text = ptx(
        ".visible .entry divs(\n\t.param .u64 p_a,\n\t.param .u64 p_b,\n\t.param .u64 p_out\n)\n{\n\
         \t.reg .b32 %r<4>;\n\t.reg .f32 %f<8>;\n\t.reg .b64 %rd<12>;\n\
         \tld.param.u64 %rd1, [p_a];\n\tld.param.u64 %rd2, [p_b];\n\tld.param.u64 %rd3, [p_out];\n\
         \tmov.u32 %r1, %ctaid.x;\n\tmov.u32 %r2, %tid.x;\n\tmad.lo.u32 %r3, %r1, 64, %r2;\n\
         \tmul.wide.u32 %rd4, %r3, 4;\n\tadd.s64 %rd5, %rd1, %rd4;\n\tadd.s64 %rd6, %rd2, %rd4;\n\
         \tld.global.f32 %f1, [%rd5];\n\tld.global.f32 %f2, [%rd6];\n\
         \tdiv.rz.f32 %f3, %f1, %f2;\n\tdiv.rm.f32 %f4, %f1, %f2;\n\tdiv.rp.f32 %f5, %f1, %f2;\n\
         \tmul.wide.u32 %rd7, %r3, 12;\n\tadd.s64 %rd8, %rd3, %rd7;\n\
         \tst.global.f32 [%rd8], %f3;\n\tst.global.f32 [%rd8+4], %f4;\n\tst.global.f32 [%rd8+8], %f5;\n\
         \tret;\n}\n",
    );
    let m = module("divs.ptx", &text);
    let mem = Memory::new();
    let n = 64 * 64;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut val = || {
        let r = rnd();
        let sign = (r & 1) as u32;
        let exp = 127 - 20 + ((r >> 1) % 41) as u32;
        let man = ((r >> 8) as u32) & 0x7F_FFFF;
        // A few significands with few bits set make exact quotients likely too.
        let man = if r >> 60 == 0 { man & 0x70_0000 } else { man };
        f32::from_bits(sign << 31 | exp << 23 | man)
    };
    let a: Vec<f32> = (0..n).map(|_| val()).collect();
    let b: Vec<f32> = (0..n).map(|_| val()).collect();
    let (pa, pb) = (put_f32(&mem, &a), put_f32(&mem, &b));
    let out = out32(&mem, 3 * n);
    run(
        &m,
        "divs",
        64,
        64,
        &[Arg::B64(pa), Arg::B64(pb), Arg::B64(out)],
        &mem,
    );
    let got = get_f32(&mem, out, 3 * n);
    let mut exact = 0;
    for k in 0..n {
        let (lo, hi) = f32_bracket(a[k] as f64 / b[k] as f64);
        exact += (lo == hi) as usize;
        let rz = if lo >= 0.0 { lo } else { hi };
        let what = format!("{:e} / {:e}", a[k], b[k]);
        assert_eq!(got[3 * k].to_bits(), rz.to_bits(), "div.rz {what}");
        assert_eq!(got[3 * k + 1].to_bits(), lo.to_bits(), "div.rm {what}");
        assert_eq!(got[3 * k + 2].to_bits(), hi.to_bits(), "div.rp {what}");
    }
    assert!(exact > 0, "some quotients should be exact");
}

#[test]
fn min_max_nan_and_signed_zero() {
    scalar(
        &floats(),
        &[
            // One NaN operand: the result is the other operand.
            ("min.f32 $d, %f7, %f8", f(2.0)),
            ("min.f32 $d, %f8, %f7", f(2.0)),
            ("max.f32 $d, %f1, %f7", f(1.0)),
            ("max.f32 $d, %f7, %f2", f(-1.0)),
            ("min.f32 $d, %f7, %f7", Want::NanF32),
            ("max.f32 $d, %f7, %f7", Want::NanF32),
            // −0 < +0.
            ("min.f32 $d, %f6, %f10", f(-0.0)),
            ("max.f32 $d, %f10, %f6", f(0.0)),
            ("min.f32 $d, %f19, %f12", f(f32::NEG_INFINITY)),
            ("max.f32 $d, %f11, %f12", f(3e10)),
        ],
    );
}

/// 2^x of an f32 input, in f64, rounded once.
fn ex2(x: f32) -> f32 {
    (x as f64).exp2() as f32
}

#[test]
fn ex2_approx_within_two_ulp() {
    scalar(
        &floats(),
        &[
            (
                "ex2.approx.f32 $d, %f9",
                Want::Ulps(std::f32::consts::SQRT_2, 2),
            ),
            ("ex2.approx.ftz.f32 $d, %f21", Want::Ulps(ex2(-3.3), 2)),
            ("ex2.approx.f32 $d, %f13", Want::Ulps(ex2(-2.7), 2)),
            ("ex2.approx.f32 $d, %f20", Want::Ulps(1024.0, 2)),
            ("ex2.approx.f32 $d, %f6", Want::Ulps(1.0, 2)),
            ("ex2.approx.f32 $d, %f24", Want::Ulps(0.03125, 2)),
            ("ex2.approx.f32 $d, %f19", f(0.0)), // 2^−∞
        ],
    );
}

#[test]
fn bf16_conversions_and_packing() {
    let cvt16 = |src: &str| format!("cvt.rn.bf16.f32 $h, {src}; cvt.u32.u16 $d, $h");
    let c16: Vec<String> = ["%f16", "%f17", "%f18", "%f19", "%f7", "%f13", "%f1", "%f10"]
        .iter()
        .map(|s| cvt16(s))
        .collect();
    scalar(
        &floats(),
        &[
            // 1 + 2^-8 is halfway between bf16 1.0 (0x3F80) and 0x3F81: ties to even, down.
            (c16[0].as_str(), u(0x3F80)),
            // 0x3F818000 is halfway between 0x3F81 and 0x3F82: ties to even, up.
            (c16[1].as_str(), u(0x3F82)),
            // Just above halfway: up.
            (c16[2].as_str(), u(0x3F81)),
            (c16[3].as_str(), u(0xFF80)),
            (c16[4].as_str(), Want::NanBf16),
            // −2.7 = 0xC02CCCCD: the dropped half 0xCCCD is above 0x8000, round up in magnitude.
            (c16[5].as_str(), u(0xC02D)),
            (c16[6].as_str(), u(0x3F80)),
            (c16[7].as_str(), u(0x8000)),
            // cvt.rn.bf16x2.f32 d, a, b: a goes to the upper half, b to the lower.
            ("cvt.rn.bf16x2.f32 $d, %f1, %f8", u(0x3F80_4000)),
            ("cvt.rn.bf16x2.f32 $d, %f16, %f17", u(0x3F80_3F82)),
            ("cvt.rn.relu.bf16x2.f32 $d, %f2, %f8", u(0x0000_4000)),
            // mov.b32 {lo, hi}, r: the first destination gets the low half.
            ("mov.b32 {$h, $g}, %r27; cvt.u32.u16 $d, $h", u(0x5678)),
            ("mov.b32 {$h, $g}, %r27; cvt.u32.u16 $d, $g", u(0x1234)),
            // … and mov.b32 r, {lo, hi} packs the first source into the low half.
            (
                "mov.b32 {$h, $g}, %r27; mov.b32 $d, {$g, $h}",
                u(0x5678_1234),
            ),
            // bf16 → f32 is exact.
            (
                "mov.b32 {$h, $g}, %r27; cvt.f32.bf16 $d, $g",
                u(0x1234_0000),
            ),
        ],
    );
}

#[test]
fn float_to_integer_conversions() {
    scalar(
        &floats(),
        &[
            // Out-of-range values saturate; NaN converts to 0 (f32 source, 32-bit destination).
            ("cvt.rzi.s32.f32 $d, %f11", u(0x7FFF_FFFF)),
            ("cvt.rzi.s32.f32 $d, %f12", u(0x8000_0000)),
            ("cvt.rzi.s32.f32 $d, %f7", u(0)),
            ("cvt.rzi.s32.f32 $d, %f19", u(0x8000_0000)),
            ("cvt.rzi.s32.f32 $d, %f13", i(-2)),
            ("cvt.rzi.u32.f32 $d, %f24", u(0)),
            ("cvt.rzi.u32.f32 $d, %f11", u(0xFFFF_FFFF)),
            ("cvt.rzi.u32.f32 $d, %f7", u(0)),
            ("cvt.rni.s32.f32 $d, %f15", i(2)), // ties to even
            ("cvt.rni.s32.f32 $d, %f14", i(-2)),
            ("cvt.rmi.s32.f32 $d, %f13", i(-3)),
            ("cvt.rpi.s32.f32 $d, %f13", i(-2)),
            ("cvt.rzi.s64.f32 $D, %f12", w(-30_000_001_024i64 as u64)),
            // PTX ISA 9.0: a NaN converted to a 64-bit integer from f32 is 1 << 63
            // (MININT for .s64, (MAXINT >> 1) + 1 for .u64); only 32-bit-or-less destinations
            // of non-f64 sources get 0.
            ("cvt.rzi.s64.f32 $D, %f7", w(1 << 63)),
            ("cvt.rzi.u64.f32 $D, %f7", w(1 << 63)),
            // Float rounding to an integral float.
            ("cvt.rmi.f32.f32 $d, %f14", f(-3.0)),
            ("cvt.rmi.f32.f32 $d, %f15", f(2.0)),
            ("cvt.rpi.f32.f32 $d, %f14", f(-2.0)),
            ("cvt.rni.f32.f32 $d, %f15", f(2.0)),
            ("cvt.rni.f32.f32 $d, %f14", f(-2.0)),
            ("cvt.rzi.f32.f32 $d, %f13", f(-2.0)),
            ("cvt.rmi.f32.f32 $d, %f7", Want::NanF32),
            // Integer to float rounds to nearest even: 2^24 + 1 → 2^24.
            ("cvt.rn.f32.s32 $d, %r23", f(16_777_216.0)),
            ("cvt.rn.f32.s32 $d, %r26", f(-7.0)),
            ("cvt.rn.f32.u32 $d, %r26", f(4_294_967_296.0)), // 2^32 − 7 rounds to 2^32
        ],
    );
}

// ------------------------------------------------------------------------ control flow

/// A kernel `name(.param .u64 p_out)` with the given registers and body.
fn kernel1(name: &str, body: &str) -> String {
    ptx(&format!(
        ".visible .entry {name}(\n\t.param .u64 p_out\n)\n{{\n\
         \t.reg .pred %p<16>;\n\t.reg .b32 %r<32>;\n\t.reg .b64 %rd<16>;\n\
         \tld.param.u64 %rd1, [p_out];\n\tmov.u32 %r1, %tid.x;\n\
         \tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n{body}\n\tret;\n}}\n"
    ))
}

#[test]
fn divergent_if_else_reconverges() {
    // Odd and even lanes write different values, then every lane runs the join code; the
    // ballot with a full mask after the join fails the launch unless all 32 lanes are there.
    let text = kernel1(
        "ifelse",
        "\tand.b32 %r2, %r1, 1;\n\tsetp.eq.u32 %p1, %r2, 0;\n\t@%p1 bra EVEN;\n\
         \tadd.u32 %r3, %r1, 200;\n\tbra JOIN;\nEVEN:\n\tadd.u32 %r3, %r1, 100;\nJOIN:\n\
         \tadd.u32 %r3, %r3, 1000;\n\tsetp.ne.u32 %p2, %r1, 9999;\n\
         \tvote.sync.ballot.b32 %r4, %p2, -1;\n\
         \tst.global.u32 [%rd3], %r3;\n\tst.global.u32 [%rd3+256], %r4;",
    );
    let m = module("ifelse.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 128);
    let c = run(&m, "ifelse", 1, 64, &[Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 128);
    for t in 0..64u32 {
        let want = t + if t % 2 == 0 { 100 } else { 200 } + 1000;
        assert_eq!(got[t as usize], want, "thread {t}");
        assert_eq!(
            got[64 + t as usize],
            u32::MAX,
            "ballot after the join, thread {t}"
        );
    }
    assert!(
        c.simt_efficiency() < 1.0 && c.simt_efficiency() > 0.5,
        "{c:?}"
    );
}

#[test]
fn loop_with_a_lane_dependent_trip_count() {
    // Thread t runs the loop t times: sum = Σ_{k<t} (k + k²), then all rejoin.
    let text = kernel1(
        "loop",
        "\tmov.u32 %r2, 0;\n\tmov.u32 %r3, 0;\nLOOP:\n\tsetp.ge.u32 %p1, %r2, %r1;\n\
         \t@%p1 bra DONE;\n\tmad.lo.u32 %r3, %r2, %r2, %r3;\n\tadd.u32 %r3, %r3, %r2;\n\
         \tadd.u32 %r2, %r2, 1;\n\tbra LOOP;\nDONE:\n\tsetp.eq.u32 %p2, %r2, %r1;\n\
         \tvote.sync.ballot.b32 %r4, %p2, -1;\n\
         \tst.global.u32 [%rd3], %r3;\n\tst.global.u32 [%rd3+256], %r2;\n\
         \tst.global.u32 [%rd3+512], %r4;",
    );
    let m = module("loop.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 192);
    run(&m, "loop", 1, 64, &[Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 192);
    for t in 0..64u32 {
        let want: u32 = (0..t).map(|k| k + k * k).sum();
        assert_eq!(got[t as usize], want, "sum, thread {t}");
        assert_eq!(got[64 + t as usize], t, "trip count, thread {t}");
        assert_eq!(
            got[128 + t as usize],
            u32::MAX,
            "ballot after the loop, thread {t}"
        );
    }
}

#[test]
fn do_while_loop_with_a_backward_conditional_branch() {
    // x = 1; do { x = 3x + 1 } while (++i < t % 5 + 1): thread t iterates t % 5 + 1 times.
    let text = kernel1(
        "dowhile",
        "\trem.u32 %r5, %r1, 5;\n\tadd.u32 %r5, %r5, 1;\n\tmov.u32 %r2, 0;\n\tmov.u32 %r3, 1;\n\
         LOOP:\n\tmad.lo.u32 %r3, %r3, 3, 1;\n\tadd.u32 %r2, %r2, 1;\n\
         \tsetp.lt.u32 %p1, %r2, %r5;\n\t@%p1 bra LOOP;\n\
         \tsetp.ne.u32 %p2, %r3, 0;\n\tvote.sync.ballot.b32 %r4, %p2, -1;\n\
         \tst.global.u32 [%rd3], %r3;\n\tst.global.u32 [%rd3+128], %r4;",
    );
    let m = module("dowhile.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 64);
    run(&m, "dowhile", 1, 32, &[Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 64);
    for t in 0..32u32 {
        let mut x = 1u32;
        for _ in 0..t % 5 + 1 {
            x = 3 * x + 1;
        }
        assert_eq!(got[t as usize], x, "thread {t}");
        assert_eq!(got[32 + t as usize], u32::MAX, "thread {t}");
    }
}

#[test]
fn nested_divergence() {
    // t < 16: (odd ? 2 : 1) + 10; else (t % 3 == 0 ? 4 : 3) + 20.
    let text = kernel1(
        "nested",
        "\tsetp.lt.u32 %p1, %r1, 16;\n\t@!%p1 bra OUTER_ELSE;\n\
         \tand.b32 %r2, %r1, 1;\n\tsetp.eq.u32 %p2, %r2, 1;\n\t@%p2 bra A_ODD;\n\
         \tmov.u32 %r3, 1;\n\tbra A_JOIN;\nA_ODD:\n\tmov.u32 %r3, 2;\nA_JOIN:\n\
         \tadd.u32 %r3, %r3, 10;\n\tbra JOIN;\nOUTER_ELSE:\n\
         \trem.u32 %r2, %r1, 3;\n\tsetp.eq.u32 %p3, %r2, 0;\n\t@%p3 bra B_THREE;\n\
         \tmov.u32 %r3, 3;\n\tbra B_JOIN;\nB_THREE:\n\tmov.u32 %r3, 4;\nB_JOIN:\n\
         \tadd.u32 %r3, %r3, 20;\nJOIN:\n\tsetp.ne.u32 %p4, %r3, 0;\n\
         \tvote.sync.ballot.b32 %r4, %p4, -1;\n\
         \tst.global.u32 [%rd3], %r3;\n\tst.global.u32 [%rd3+256], %r4;",
    );
    let m = module("nested.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 128);
    run(&m, "nested", 1, 64, &[Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 128);
    for t in 0..64u32 {
        let want = if t < 16 {
            (if t % 2 == 1 { 2 } else { 1 }) + 10
        } else {
            (if t % 3 == 0 { 4 } else { 3 }) + 20
        };
        assert_eq!(got[t as usize], want, "thread {t}");
        assert_eq!(got[64 + t as usize], u32::MAX, "thread {t}");
    }
}

/// Threads write s[t], those with `exit` return, the rest pass a barrier and read s[n-1-t].
fn exit_then_barrier(block: u32, exit_cond: &str, exits: impl Fn(u32) -> bool) {
    let text = ptx(&format!(
        ".visible .entry exitbar(\n\t.param .u64 p_out\n)\n{{\n\
         \t.reg .pred %p<8>;\n\t.reg .b32 %r<32>;\n\t.reg .b64 %rd<8>;\n\
         \t.shared .align 4 .b8 s[{bytes}];\n\
         \tld.param.u64 %rd1, [p_out];\n\tmov.u32 %r1, %tid.x;\n\
         \tshl.b32 %r2, %r1, 2;\n\tmov.u32 %r3, s;\n\tadd.u32 %r4, %r3, %r2;\n\
         \tmul.lo.u32 %r10, %r1, 7;\n\tst.shared.u32 [%r4], %r10;\n\
         {exit_cond}\n\t@%p1 ret;\n\tbar.sync 0;\n\
         \tmov.u32 %r5, {last};\n\tsub.u32 %r6, %r5, %r1;\n\tshl.b32 %r7, %r6, 2;\n\
         \tadd.u32 %r8, %r3, %r7;\n\tld.shared.u32 %r9, [%r8];\n\
         \tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\
         \tst.global.u32 [%rd3], %r9;\n\tret;\n}}\n",
        bytes = 4 * block,
        last = block - 1
    ));
    let m = module("exitbar.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, block as usize);
    let c = run(&m, "exitbar", 1, block, &[Arg::B64(out)], &mem);
    for t in 0..block {
        let mut b = [0u8; 4];
        let r = mem.read(out + 4 * t as u64, &mut b, true);
        if exits(t) {
            assert!(
                r.is_err(),
                "thread {t} exited: its output must stay unwritten"
            );
        } else {
            r.unwrap();
            assert_eq!(u32::from_le_bytes(b), 7 * (block - 1 - t), "thread {t}");
        }
    }
    assert!(c.barriers > 0);
}

#[test]
fn early_ret_of_some_lanes_then_bar_sync() {
    // Every third thread exits, splitting both warps: exited threads count as arrived.
    exit_then_barrier(
        64,
        "\trem.u32 %r11, %r1, 3;\n\tsetp.eq.u32 %p1, %r11, 0;",
        |t| t % 3 == 0,
    );
}

#[test]
fn early_ret_of_a_whole_warp_then_bar_sync() {
    // Warp 1 exits entirely, warps 0 and 2 in part.
    exit_then_barrier(
        96,
        "\trem.u32 %r11, %r1, 3;\n\tsetp.eq.u32 %p2, %r11, 0;\n\tshr.u32 %r12, %r1, 5;\n\
         \tsetp.eq.u32 %p3, %r12, 1;\n\tor.pred %p1, %p2, %p3;",
        |t| t % 3 == 0 || t / 32 == 1,
    );
}

/// 4 warps: s[t] = 3t + 1; bar; a = s[(t+32)%128], b = s[127-t]; [bar]; s[t] = a + b; bar;
/// out[t] = s[(t+64)%128].
fn four_warps(middle_barrier: bool) -> String {
    ptx(&format!(
        ".visible .entry bar4(\n\t.param .u64 p_out\n)\n{{\n\
         \t.reg .b32 %r<32>;\n\t.reg .b64 %rd<8>;\n\t.shared .align 4 .b8 s[512];\n\
         \tld.param.u64 %rd1, [p_out];\n\tmov.u32 %r1, %tid.x;\n\tmov.u32 %r2, s;\n\
         \tshl.b32 %r3, %r1, 2;\n\tadd.u32 %r4, %r2, %r3;\n\
         \tmad.lo.u32 %r5, %r1, 3, 1;\n\tst.shared.u32 [%r4], %r5;\n\tbar.sync 0;\n\
         \tadd.u32 %r6, %r1, 32;\n\tand.b32 %r6, %r6, 127;\n\tshl.b32 %r6, %r6, 2;\n\
         \tadd.u32 %r6, %r2, %r6;\n\tld.shared.u32 %r7, [%r6];\n\
         \tmov.u32 %r8, 127;\n\tsub.u32 %r8, %r8, %r1;\n\tshl.b32 %r8, %r8, 2;\n\
         \tadd.u32 %r8, %r2, %r8;\n\tld.shared.u32 %r9, [%r8];\n\
         {mid}\tadd.u32 %r10, %r7, %r9;\n\tst.shared.u32 [%r4], %r10;\n\tbar.sync 0;\n\
         \tadd.u32 %r11, %r1, 64;\n\tand.b32 %r11, %r11, 127;\n\tshl.b32 %r11, %r11, 2;\n\
         \tadd.u32 %r11, %r2, %r11;\n\tld.shared.u32 %r12, [%r11];\n\
         \tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\
         \tst.global.u32 [%rd3], %r12;\n\tret;\n}}\n",
        mid = if middle_barrier {
            "\tbar.sync 0;\n"
        } else {
            ""
        }
    ))
}

#[test]
fn bar_sync_across_four_warps_orders_shared_accesses() {
    let m = module("bar4.ptx", &four_warps(true));
    let mem = Memory::new();
    let out = out32(&mem, 128);
    let c = run(&m, "bar4", 1, 128, &[Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 128);
    let s0 = |t: u32| 3 * t + 1;
    let s1 = |t: u32| s0((t + 32) % 128) + s0(127 - t);
    for t in 0..128u32 {
        assert_eq!(got[t as usize], s1((t + 64) % 128), "thread {t}");
    }
    assert_eq!(c.barriers, 3 * 4, "3 barriers × 4 warps");
}

#[test]
fn overwrite_without_the_barrier_is_a_race() {
    // Without the middle barrier, a warp overwrites s[t] that another warp read in the same
    // barrier interval.
    let m = module("bar4.ptx", &four_warps(false));
    let mem = Memory::new();
    let out = out32(&mem, 128);
    let f = fault(launch(&m, "bar4", 1, 128, &[Arg::B64(out)], &mem));
    assert_check(&f, Check::Racecheck);
    assert_eq!(f.kernel, "bar4");
    assert!(f.instruction.starts_with("st.shared.u32"), "{f}");
    assert!(f.msg.contains("write-after-read"), "{f}");
}

#[test]
fn unwritten_shared_value_steering_a_loop_ends_in_initcheck() {
    // CTA 0 leaves 0xFFFFFFFF in shared memory; CTA 1 (run after it on the same host thread)
    // reads the word without writing it and loops that many times. The read is reported as
    // an initcheck finding once the CTA has run long enough, not after 2^32 iterations.
    let text = ptx(".visible .entry stale(\n\t.param .u64 p_out\n)\n{\n\
         \t.reg .pred %p<8>;\n\t.reg .b32 %r<8>;\n\t.reg .b64 %rd<4>;\n\
         \t.shared .align 4 .b8 s[4];\n\tld.param.u64 %rd1, [p_out];\n\
         \tmov.u32 %r1, %ctaid.x;\n\tmov.u32 %r2, %tid.x;\n\
         \tsetp.eq.u32 %p1, %r1, 0;\n\tsetp.eq.u32 %p2, %r2, 0;\n\tand.pred %p3, %p1, %p2;\n\
         \t@%p3 st.shared.u32 [s], 5;\n\tbar.sync 0;\n\tld.shared.u32 %r3, [s];\n\
         \tmov.u32 %r4, 0;\nLOOP:\n\tsetp.ge.u32 %p4, %r4, %r3;\n\t@%p4 bra DONE;\n\
         \tadd.u32 %r4, %r4, 1;\n\tbra LOOP;\nDONE:\n\tbar.sync 0;\n\
         \t@%p3 st.shared.u32 [s], -1;\n\tret;\n}\n");
    let m = module("stale.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 1);
    let settings = Settings {
        threads: 1,
        ..Settings::default()
    };
    let f = fault(palm_ptx_vm::launch(
        &m,
        "stale",
        &cfg(2, 32),
        &[Arg::B64(out)],
        &mem,
        &settings,
    ));
    assert_check(&f, Check::Initcheck);
    assert_eq!(f.block, [1, 0, 0], "{f}");
    assert!(f.instruction.starts_with("ld.shared.u32"), "{f}");
}

// ------------------------------------------------------------------------ atomics

#[test]
fn atom_global_add_f32_from_many_ctas() {
    let text = ptx(
        ".visible .entry atomadd(\n\t.param .u64 p_sum,\n\t.param .u64 p_old\n)\n{\n\
         \t.reg .b32 %r<16>;\n\t.reg .f32 %f<8>;\n\t.reg .b64 %rd<8>;\n\
         \tld.param.u64 %rd1, [p_sum];\n\tld.param.u64 %rd2, [p_old];\n\
         \tmov.u32 %r1, %ctaid.x;\n\tmov.u32 %r2, %ntid.x;\n\tmov.u32 %r3, %tid.x;\n\
         \tmad.lo.u32 %r4, %r1, %r2, %r3;\n\
         \tatom.global.add.f32 %f1, [%rd1], 0f3F800000;\n\
         \trem.u32 %r5, %r4, 5;\n\tcvt.rn.f32.u32 %f2, %r5;\n\
         \tatom.global.add.f32 %f3, [%rd1+4], %f2;\n\
         \tred.global.add.f32 [%rd1+8], %f2;\n\
         \tmul.wide.u32 %rd3, %r4, 4;\n\tadd.s64 %rd4, %rd2, %rd3;\n\
         \tst.global.f32 [%rd4], %f1;\n\tret;\n}\n",
    );
    let m = module("atomadd.ptx", &text);
    let mem = Memory::new();
    let sum = put_f32(&mem, &[0.0, 0.0, 0.5]);
    let (grid, block) = (64u32, 64u32);
    let n = (grid * block) as usize;
    let old = out32(&mem, n);
    let c = run(
        &m,
        "atomadd",
        grid,
        block,
        &[Arg::B64(sum), Arg::B64(old)],
        &mem,
    );
    let s = get_f32(&mem, sum, 3);
    let want: f32 = (0..n).map(|g| (g % 5) as f32).sum();
    assert_eq!(s[0], n as f32);
    assert_eq!(s[1], want);
    assert_eq!(s[2], want + 0.5);
    // Each add of 1.0 saw a distinct old value: exactly 0, 1, …, n − 1 in some order.
    let mut olds: Vec<u32> = get_f32(&mem, old, n).iter().map(|&x| x as u32).collect();
    olds.sort_unstable();
    assert!(olds.iter().enumerate().all(|(i, &v)| v == i as u32));
    assert_eq!(c.global_atomic_requests, 3 * (n as u64 / 32));
}

#[test]
fn atom_shared_max_signed_and_min_unsigned() {
    let text = ptx(
        ".visible .entry atomsh(\n\t.param .u64 p_in,\n\t.param .u64 p_out\n)\n{\n\
         \t.reg .pred %p<4>;\n\t.reg .b32 %r<16>;\n\t.reg .b64 %rd<8>;\n\
         \t.shared .align 4 .b8 m[8];\n\
         \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n\
         \tmov.u32 %r1, %tid.x;\n\tsetp.eq.u32 %p1, %r1, 0;\n\
         \t@%p1 st.shared.u32 [m], -2147483648;\n\t@%p1 st.shared.u32 [m+4], -1;\n\
         \tbar.sync 0;\n\
         \tmul.wide.u32 %rd3, %r1, 4;\n\tadd.s64 %rd4, %rd1, %rd3;\n\
         \tld.global.u32 %r2, [%rd4];\n\
         \tatom.shared.max.s32 %r3, [m], %r2;\n\tatom.shared.min.u32 %r4, [m+4], %r2;\n\
         \tbar.sync 0;\n\
         \t@%p1 ld.shared.u32 %r5, [m];\n\t@%p1 ld.shared.u32 %r6, [m+4];\n\
         \t@%p1 st.global.u32 [%rd2], %r5;\n\t@%p1 st.global.u32 [%rd2+4], %r6;\n\
         \tret;\n}\n",
    );
    let m = module("atomsh.ptx", &text);
    let mem = Memory::new();
    let v: Vec<i32> = (0..128).map(|t: i32| (t * 7919) % 1000 - 600).collect();
    let pin = put_i32(&mem, &v);
    let out = out32(&mem, 2);
    run(&m, "atomsh", 1, 128, &[Arg::B64(pin), Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 2);
    let smax = *v.iter().max().unwrap();
    let umin = v.iter().map(|&x| x as u32).min().unwrap();
    assert!(smax > 0 && v.iter().any(|&x| x < 0));
    assert_eq!(got[0] as i32, smax, "signed max");
    assert_eq!(got[1], umin, "unsigned min (negatives are huge)");
}

// ------------------------------------------------------------------------ parameters

#[test]
fn ld_param_s32_into_a_64_bit_register_sign_extends() {
    let text = ptx(
        ".visible .entry params(\n\t.param .u64 p_out,\n\t.param .s32 p_v\n)\n{\n\
         \t.reg .b64 %rd<8>;\n\tld.param.u64 %rd1, [p_out];\n\
         \tld.param.s32 %rd2, [p_v];\n\tld.param.u32 %rd3, [p_v];\n\
         \tst.global.u64 [%rd1], %rd2;\n\tst.global.u64 [%rd1+8], %rd3;\n\tret;\n}\n",
    );
    let m = module("params.ptx", &text);
    let mem = Memory::new();
    let out = mem.alloc(16);
    run(
        &m,
        "params",
        1,
        1,
        &[Arg::B64(out), Arg::B32(-5i32 as u32)],
        &mem,
    );
    let got = get_u64(&mem, out, 2);
    assert_eq!(got[0], -5i64 as u64, "signed: sign-extended");
    assert_eq!(got[1], 0xFFFF_FFFB, "unsigned: zero-extended");
}

// ------------------------------------------------------------------------ memory checks

/// out[t] = in[t] for `n` threads of one block.
fn copy_kernel() -> palm_ptx_vm::Module {
    module(
        "copy.ptx",
        &ptx(
            ".visible .entry copy(\n\t.param .u64 p_in,\n\t.param .u64 p_out\n)\n{\n\
             \t.reg .b32 %r<4>;\n\t.reg .f32 %f<2>;\n\t.reg .b64 %rd<8>;\n\
             \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n\
             \tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd3, %r1, 4;\n\
             \tadd.s64 %rd4, %rd1, %rd3;\n\tld.global.f32 %f1, [%rd4];\n\
             \tadd.s64 %rd5, %rd2, %rd3;\n\tst.global.f32 [%rd5], %f1;\n\tret;\n}\n",
        ),
    )
}

#[test]
fn reading_a_never_written_allocation_is_initcheck() {
    let m = copy_kernel();
    let mem = Memory::new();
    let x = mem.alloc(128);
    let out = out32(&mem, 32);
    let f = fault(launch(
        &m,
        "copy",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Initcheck);
    assert_eq!(f.thread, [0, 0, 0]);
    assert!(f.instruction.starts_with("ld.global.f32"), "{f}");
    // Written but for the last element: the first reader of it is thread 31.
    mem.write(x, &[0u8; 124]).unwrap();
    let f = fault(launch(
        &m,
        "copy",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Initcheck);
    assert_eq!(f.thread, [31, 0, 0]);
    // Fully written: clean.
    mem.write(x + 124, &[0u8; 4]).unwrap();
    run(&m, "copy", 1, 32, &[Arg::B64(x), Arg::B64(out)], &mem);
}

#[test]
fn one_element_past_an_allocation_is_memcheck_with_a_neighbour_allocated() {
    let m = copy_kernel();
    let mem = Memory::new();
    let n = 32;
    let x = put_f32(&mem, &vec![1.5; n]);
    // The next allocation, made right after and fully written.
    let next = put_f32(&mem, &vec![2.5; 64]);
    assert!(next > x);
    let out = out32(&mem, n + 1);
    let f = fault(launch(
        &m,
        "copy",
        1,
        n as u32 + 1,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Memcheck);
    assert_eq!(f.thread, [n as u32, 0, 0]);
    assert!(f.instruction.starts_with("ld.global.f32"), "{f}");
    assert!(f.msg.contains(&format!("{:#x}", x + 4 * n as u64)), "{f}");
}

#[test]
fn past_a_sub_allocation_inside_a_live_segment_is_memcheck() {
    // A caching allocator's view: one segment, two live allocations with a gap between them.
    // The gap is backed by the segment but belongs to no allocation.
    let m = copy_kernel();
    let mem = Memory::new();
    let seg = mem.alloc_segment(1024);
    mem.mark_live(seg, 500).unwrap();
    mem.mark_live(seg + 512, 512).unwrap();
    mem.write(seg, &[0u8; 500]).unwrap();
    mem.write(seg + 512, &[0u8; 512]).unwrap();
    let out = out32(&mem, 126);
    // 125 floats fit in 500 bytes: thread 125 reads bytes 500..504.
    let f = fault(launch(
        &m,
        "copy",
        1,
        126,
        &[Arg::B64(seg), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Memcheck);
    assert_eq!(f.thread, [125, 0, 0]);
    run(&m, "copy", 1, 125, &[Arg::B64(seg), Arg::B64(out)], &mem);
}

#[test]
fn misaligned_scalar_global_access_is_memcheck() {
    let m = copy_kernel();
    let mem = Memory::new();
    let x = put_f32(&mem, &[0.0; 33]);
    let out = out32(&mem, 32);
    let f = fault(launch(
        &m,
        "copy",
        1,
        32,
        &[Arg::B64(x + 2), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Memcheck);
    assert!(f.msg.contains("misaligned"), "{f}");
}

// ------------------------------------------------------------------------ launch and parse

#[test]
fn maxntid_limits_the_block() {
    let text = ptx(
        ".visible .entry small(\n\t.param .u64 p_out\n)\n.maxntid 64, 1, 1\n{\n\
         \t.reg .b32 %r<4>;\n\t.reg .b64 %rd<8>;\n\tld.param.u64 %rd1, [p_out];\n\
         \tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\
         \tst.global.u32 [%rd3], %r1;\n\tret;\n}\n",
    );
    let m = module("small.ptx", &text);
    let mem = Memory::new();
    let out = out32(&mem, 128);
    match launch(&m, "small", 1, 128, &[Arg::B64(out)], &mem) {
        Err(Error::Launch(msg)) => assert!(msg.contains("maxntid"), "{msg}"),
        other => panic!("expected a launch error, got {other:?}"),
    }
    run(&m, "small", 1, 64, &[Arg::B64(out)], &mem);
    // A 2-D block of 8×8 is 64 threads too.
    let c = LaunchConfig {
        grid: [1, 1, 1],
        block: [8, 8, 1],
        shared_bytes: 0,
    };
    palm_ptx_vm::launch(
        &m,
        "small",
        &c,
        &[Arg::B64(out)],
        &mem,
        &Settings::default(),
    )
    .unwrap();
}

#[test]
fn launch_errors_name_the_problem() {
    let m = copy_kernel();
    let mem = Memory::new();
    let x = put_f32(&mem, &[0.0; 32]);
    for (args, what) in [
        (vec![Arg::B64(x)], "arguments"),
        (vec![Arg::B64(x), Arg::B32(0)], "argument 1"),
    ] {
        match launch(&m, "copy", 1, 32, &args, &mem) {
            Err(Error::Launch(msg)) => assert!(msg.contains(what), "{msg}"),
            other => panic!("expected a launch error, got {other:?}"),
        }
    }
    assert!(matches!(
        launch(&m, "nope", 1, 32, &[], &mem),
        Err(Error::Launch(_))
    ));
    assert!(matches!(
        launch(&m, "copy", 1, 2048, &[Arg::B64(x), Arg::B64(x)], &mem),
        Err(Error::Launch(_))
    ));
}

fn parse_error(text: &str) -> (u32, String, String) {
    match palm_ptx_vm::parse("bad.ptx", text) {
        Err(Error::Parse {
            file,
            line,
            text,
            msg,
        }) => {
            assert_eq!(file, "bad.ptx");
            (line, text, msg)
        }
        Err(e) => panic!("expected a parse error, got {e}"),
        Ok(_) => panic!("expected a parse error, the module parsed"),
    }
}

fn with_instruction(ins: &str) -> (String, u32) {
    let text = ptx(&format!(
        ".visible .entry k(\n\t.param .u64 p\n)\n{{\n\t.reg .b32 %r<4>;\n\
         \tmov.u32 %r1, 1;\n\t{ins}\n\tret;\n}}\n"
    ));
    let line = text.lines().position(|l| l.contains(ins)).unwrap() as u32 + 1;
    (text, line)
}

#[test]
fn unknown_instruction_is_a_parse_error_naming_the_line() {
    let (text, line) = with_instruction("frobnicate.u32 %r2, %r1;");
    let (l, t, msg) = parse_error(&text);
    assert_eq!(l, line);
    assert!(t.contains("frobnicate"), "{t}");
    assert!(msg.contains("frobnicate"), "{msg}");
}

#[test]
fn unknown_modifier_is_a_parse_error_naming_the_line() {
    let (text, line) = with_instruction("add.wibble.u32 %r2, %r1, %r1;");
    let (l, t, msg) = parse_error(&text);
    assert_eq!(l, line);
    assert!(t.contains("add.wibble.u32"), "{t}");
    assert!(msg.contains("wibble"), "{msg}");
}

#[test]
fn unknown_register_is_a_parse_error() {
    let (text, line) = with_instruction("add.u32 %r2, %r1, %q7;");
    let (l, _, msg) = parse_error(&text);
    assert_eq!(l, line);
    assert!(msg.contains("%q7"), "{msg}");
}

// ------------------------------------------------------------------------ cp.async

#[test]
fn cp_async_wait_all_lands_uncommitted_copies() {
    // The PTX ISA: cp.async.wait_all waits for all prior cp.async operations of the thread,
    // committed to a group or not (as cp.async.commit_group + cp.async.wait_group 0).
    let text = ptx(
        ".visible .entry waitall(\n\t.param .u64 p_in,\n\t.param .u64 p_out\n)\n{\n\
         \t.reg .b32 %r<8>;\n\t.reg .b64 %rd<8>;\n\t.shared .align 16 .b8 s[512];\n\
         \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n\
         \tmov.u32 %r1, %tid.x;\n\tshl.b32 %r2, %r1, 4;\n\tmov.u32 %r3, s;\n\
         \tadd.u32 %r4, %r3, %r2;\n\tcvt.u64.u32 %rd3, %r2;\n\tadd.s64 %rd4, %rd1, %rd3;\n\
         \tcp.async.cg.shared.global [%r4], [%rd4], 16;\n\tcp.async.wait_all;\n\
         \tld.shared.v4.u32 {%r5, %r6, %r7, %r1}, [%r4];\n\tadd.s64 %rd5, %rd2, %rd3;\n\
         \tst.global.v4.u32 [%rd5], {%r5, %r6, %r7, %r1};\n\tret;\n}\n",
    );
    let m = module("waitall.ptx", &text);
    let mem = Memory::new();
    let v: Vec<u32> = (0..128).map(|i| i * 3 + 1).collect();
    let x = put_u32(&mem, &v);
    let out = out32(&mem, 128);
    run(&m, "waitall", 1, 32, &[Arg::B64(x), Arg::B64(out)], &mem);
    assert_eq!(get_u32(&mem, out, 128), v);
}

#[test]
fn cp_async_wait_group_keeps_the_newest_groups_pending() {
    // Two groups; wait_group 1 lands the first only: reading the second's bytes is a finding.
    let body = |read_second: bool| {
        ptx(&format!(
            ".visible .entry groups(\n\t.param .u64 p_in,\n\t.param .u64 p_out\n)\n{{\n\
             \t.reg .b32 %r<8>;\n\t.reg .b64 %rd<8>;\n\t.shared .align 16 .b8 s[1024];\n\
             \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n\
             \tmov.u32 %r1, %tid.x;\n\tshl.b32 %r2, %r1, 4;\n\tmov.u32 %r3, s;\n\
             \tadd.u32 %r4, %r3, %r2;\n\tcvt.u64.u32 %rd3, %r2;\n\tadd.s64 %rd4, %rd1, %rd3;\n\
             \tcp.async.cg.shared.global [%r4], [%rd4], 16;\n\tcp.async.commit_group;\n\
             \tcp.async.cg.shared.global [%r4+512], [%rd4+512], 16;\n\tcp.async.commit_group;\n\
             \tcp.async.wait_group 1;\n\tld.shared.u32 %r5, [%r4{off}];\n\
             \tcp.async.wait_group 0;\n\tld.shared.u32 %r6, [%r4+512];\n\
             \tadd.u32 %r7, %r5, %r6;\n\tmul.wide.u32 %rd5, %r1, 4;\n\
             \tadd.s64 %rd6, %rd2, %rd5;\n\tst.global.u32 [%rd6], %r7;\n\tret;\n}}\n",
            off = if read_second { "+512" } else { "" }
        ))
    };
    let mem = Memory::new();
    let v: Vec<u32> = (0..256).collect();
    let x = put_u32(&mem, &v);
    let out = out32(&mem, 32);
    let m = module("groups.ptx", &body(false));
    run(&m, "groups", 1, 32, &[Arg::B64(x), Arg::B64(out)], &mem);
    let got = get_u32(&mem, out, 32);
    for l in 0..32 {
        assert_eq!(got[l], v[4 * l] + v[128 + 4 * l], "lane {l}");
    }
    let m = module("groups.ptx", &body(true));
    let f = fault(launch(
        &m,
        "groups",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Synccheck);
    assert!(f.instruction.starts_with("ld.shared.u32"), "{f}");
}

// ------------------------------------------------------------------------ counters

/// out[t] = in[stride·t] for 32 lanes.
fn strided_load(stride: u32) -> palm_ptx_vm::Counters {
    let text = ptx(
        ".visible .entry strided(\n\t.param .u64 p_in,\n\t.param .u64 p_out,\n\t.param .u32 p_s\n)\n{\n\
         \t.reg .b32 %r<10>;\n\t.reg .f32 %f<2>;\n\t.reg .b64 %rd<8>;\n\
         \tld.param.u64 %rd1, [p_in];\n\tld.param.u64 %rd2, [p_out];\n\tld.param.u32 %r9, [p_s];\n\
         \tmov.u32 %r1, %tid.x;\n\tmul.lo.u32 %r2, %r1, %r9;\n\tmul.wide.u32 %rd3, %r2, 4;\n\
         \tadd.s64 %rd4, %rd1, %rd3;\n\tld.global.f32 %f1, [%rd4];\n\
         \tmul.wide.u32 %rd5, %r1, 4;\n\tadd.s64 %rd6, %rd2, %rd5;\n\
         \tst.global.f32 [%rd6], %f1;\n\tret;\n}\n",
    );
    let m = module("strided.ptx", &text);
    let mem = Memory::new();
    let x = put_f32(&mem, &vec![1.0; 32 * 32]);
    assert_eq!(x % 128, 0);
    let out = out32(&mem, 32);
    run(
        &m,
        "strided",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out), Arg::B32(stride)],
        &mem,
    )
}

#[test]
fn coalesced_load_is_one_request_of_four_sectors() {
    let c = strided_load(1);
    assert_eq!(c.global_load_requests, 1);
    assert_eq!(c.global_load_sectors, 4); // 128 contiguous bytes = 4 sectors of 32 B
    assert_eq!(c.global_store_requests, 1);
    assert_eq!(c.global_store_sectors, 4);
}

#[test]
fn strided_load_touches_a_sector_per_lane() {
    let c = strided_load(32);
    assert_eq!(c.global_load_requests, 1);
    assert_eq!(c.global_load_sectors, 32); // 128 B apart: every lane its own sector
    let c = strided_load(2);
    assert_eq!(c.global_load_sectors, 8);
}

/// s[stride·t] = t for 32 lanes; returns the counters.
fn strided_shared_store(stride: u32) -> palm_ptx_vm::Counters {
    let text = ptx(".visible .entry sstore(\n\t.param .u32 p_s\n)\n{\n\
         \t.reg .b32 %r<8>;\n\t.shared .align 4 .b8 s[4096];\n\
         \tld.param.u32 %r1, [p_s];\n\tmov.u32 %r2, %tid.x;\n\tmul.lo.u32 %r3, %r2, %r1;\n\
         \tshl.b32 %r3, %r3, 2;\n\tmov.u32 %r4, s;\n\tadd.u32 %r5, %r4, %r3;\n\
         \tcvt.rn.f32.u32 %r6, %r2;\n\tst.shared.f32 [%r5], %r6;\n\tret;\n}\n");
    let m = module("sstore.ptx", &text);
    let mem = Memory::new();
    run(&m, "sstore", 1, 32, &[Arg::B32(stride)], &mem)
}

#[test]
fn shared_bank_conflicts() {
    // Stride 32 words: every lane in bank 0, 32 wavefronts, 31 of them extra.
    let c = strided_shared_store(32);
    assert_eq!(c.shared_store_requests, 1);
    assert_eq!(c.shared_wavefronts, 32);
    assert_eq!(c.shared_bank_conflicts, 31);
    // Stride 1: 32 banks, one wavefront.
    let c = strided_shared_store(1);
    assert_eq!(c.shared_wavefronts, 1);
    assert_eq!(c.shared_bank_conflicts, 0);
    // Stride 2: two lanes per even bank.
    let c = strided_shared_store(2);
    assert_eq!(c.shared_wavefronts, 2);
    assert_eq!(c.shared_bank_conflicts, 1);
}

#[test]
fn a_wild_pointer_near_the_top_of_the_address_space_is_memcheck_not_a_panic() {
    let m = copy_kernel();
    let mem = Memory::new();
    let out = out32(&mem, 32);
    // Thread 0 reads the last 4 bytes of the address space: their end is 2^64.
    let f = fault(launch(
        &m,
        "copy",
        1,
        32,
        &[Arg::B64(u64::MAX - 3), Arg::B64(out)],
        &mem,
    ));
    assert_check(&f, Check::Memcheck);
}
