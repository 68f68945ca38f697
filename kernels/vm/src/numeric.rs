//! Floating-point semantics of the PTX instructions the VM runs: bf16 conversion, directed
//! rounding, flush-to-zero, the NaN rules of `min`/`max`. Correctly rounded wherever the ISA
//! asks for it; approximate instructions are computed correctly rounded too (inside their
//! stated error bounds).

use crate::ir::Rnd;

/// `cvt.rn.bf16.f32`: round to nearest even; NaN → the canonical NaN 0x7FFF.
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FFF;
    }
    let b = x.to_bits();
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Flush a subnormal to a zero of the same sign.
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// The next f32 toward −∞ / +∞ (for finite `x`).
fn next_down(x: f32) -> f32 {
    if x == 0.0 {
        return -f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b - 1 } else { b + 1 })
}

fn next_up(x: f32) -> f32 {
    -next_down(-x)
}

/// Round the exact value `s + e` (two f64 with |e| ≤ ulp(s)/2, as from TwoSum) to f32 in
/// direction `rnd`. `zero_sign_neg` gives the sign of an exact zero.
fn round_pair(s: f64, e: f64, rnd: Rnd, zero_sign_neg: bool) -> f32 {
    if s == 0.0 && e == 0.0 {
        return if zero_sign_neg { -0.0 } else { 0.0 };
    }
    let near = s as f32;
    match rnd {
        Rnd::Rn => {
            // `s` is the f64 nearest the exact value; rounding it again to f32 can only go wrong
            // on an exact f32 tie, which `e` breaks.
            let n = near as f64;
            let other = if n > s {
                next_down(near)
            } else {
                next_up(near)
            };
            let mid = (n + other as f64) / 2.0;
            if s == mid && e != 0.0 {
                if (e > 0.0) == (other as f64 > n) {
                    other
                } else {
                    near
                }
            } else {
                near
            }
        }
        Rnd::Rm | Rnd::Rz | Rnd::Rp => {
            let down = matches!(rnd, Rnd::Rm)
                || (matches!(rnd, Rnd::Rz) && (s > 0.0 || (s == 0.0 && e > 0.0)));
            if near.is_infinite() {
                // Overflow: directed rounding stops at the largest finite value.
                let toward_inf = if near > 0.0 { !down } else { down };
                return if toward_inf {
                    near
                } else {
                    f32::MAX.copysign(near)
                };
            }
            let n = near as f64;
            if down {
                let mut r = if n > s { next_down(near) } else { near };
                if r as f64 == s && e < 0.0 {
                    r = next_down(r);
                }
                r
            } else {
                let mut r = if n < s { next_up(near) } else { near };
                if r as f64 == s && e > 0.0 {
                    r = next_up(r);
                }
                r
            }
        }
    }
}

/// `fma.rnd.f32`: a·b + c rounded once.
pub fn fma(a: f32, b: f32, c: f32, rnd: Rnd) -> f32 {
    if rnd == Rnd::Rn || !(a.is_finite() && b.is_finite() && c.is_finite()) {
        return a.mul_add(b, c);
    }
    let p = a as f64 * b as f64; // exact: 24 + 24 bits
    let c = c as f64;
    let s = p + c;
    // TwoSum: the exact rounding error of p + c.
    let bb = s - p;
    let e = (p - (s - bb)) + (c - bb);
    let zero_neg = if p == 0.0 && c == 0.0 {
        (p.is_sign_negative() && c.is_sign_negative())
            || (rnd == Rnd::Rm && (p.is_sign_negative() || c.is_sign_negative()))
    } else {
        rnd == Rnd::Rm
    };
    round_pair(s, e, rnd, zero_neg)
}

/// add/sub/mul with a rounding mode (round to nearest uses the native operation).
pub fn arith(op: crate::ir::FOp, a: f32, b: f32, rnd: Rnd) -> f32 {
    use crate::ir::FOp;
    match op {
        FOp::Add => fma(1.0, a, b, rnd),
        FOp::Sub => fma(1.0, a, -b, rnd),
        // Adding a zero leaves an exact zero product's sign alone only when the zero is −0
        // (x + −0 = x), except toward −∞ where +0 + −0 = −0: there +0 is the neutral one.
        FOp::Mul => fma(a, b, if rnd == Rnd::Rm { 0.0 } else { -0.0 }, rnd),
        FOp::Div => div(a, b, rnd),
        FOp::Min => fmin(a, b),
        FOp::Max => fmax(a, b),
        FOp::Copysign => b.copysign(a),
    }
}

/// `div.rnd.f32`: a / b correctly rounded in direction `rnd`.
pub fn div(a: f32, b: f32, rnd: Rnd) -> f32 {
    let q = a / b;
    if rnd == Rnd::Rn || !a.is_finite() || !b.is_finite() || b == 0.0 || a == 0.0 {
        return q;
    }
    if q.is_infinite() {
        // Overflow to nearest: directed rounding toward zero stops at the largest finite value.
        let toward_inf = match rnd {
            Rnd::Rp => q > 0.0,
            Rnd::Rm => q < 0.0,
            _ => false,
        };
        return if toward_inf { q } else { f32::MAX.copysign(q) };
    }
    // The residual a − q·b is exact in f64 (q·b has at most 48 significant bits), and its sign
    // against b's says on which side of q the exact quotient lies.
    let r = (-(q as f64)).mul_add(b as f64, a as f64);
    if r == 0.0 {
        return q;
    }
    let above = (r > 0.0) == (b > 0.0);
    let up = match rnd {
        Rnd::Rp => true,
        Rnd::Rm => false,
        _ => q < 0.0 || (q == 0.0 && !above),
    };
    match (above, up) {
        (true, true) => next_up(q),
        (false, false) => next_down(q),
        _ => q,
    }
}

/// `min.f32`: the non-NaN operand when one is NaN; −0 < +0.
pub fn fmin(a: f32, b: f32) -> f32 {
    min_or_max(a, b, true)
}

/// `max.f32`: the non-NaN operand when one is NaN; +0 > −0.
pub fn fmax(a: f32, b: f32) -> f32 {
    min_or_max(a, b, false)
}

fn min_or_max(a: f32, b: f32, min: bool) -> f32 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f32::from_bits(0x7FFF_FFFF),
        (true, false) => b,
        (false, true) => a,
        // Equal values differ at most in the sign of zero: −0 is the smaller.
        _ if a == b => {
            if a.is_sign_negative() == min {
                a
            } else {
                b
            }
        }
        _ if (a < b) == min => a,
        _ => b,
    }
}

/// `atom.add.f32` on global memory: subnormal inputs and results flushed to zero.
pub fn atomic_add_f32(old: f32, v: f32) -> f32 {
    ftz(ftz(old) + ftz(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        // Halfway with an odd low bit rounds up to even.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7FFF);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(bf16_to_f32(0xC040), -3.0);
    }

    #[test]
    fn fma_directed_rounding() {
        // 1 + 2^-30 is not an f32: RM keeps 1, RP goes to 1 + 2^-23, RN to 1.
        let tiny = 2f32.powi(-30);
        assert_eq!(fma(1.0, 1.0, tiny, Rnd::Rm), 1.0);
        assert_eq!(fma(1.0, 1.0, tiny, Rnd::Rp), 1.0 + f32::EPSILON);
        assert_eq!(fma(1.0, 1.0, tiny, Rnd::Rn), 1.0);
        // Negative: −1 − 2^-30 rounds down (away from zero) under RM.
        assert_eq!(fma(-1.0, 1.0, -tiny, Rnd::Rm), -1.0 - f32::EPSILON);
        assert_eq!(fma(-1.0, 1.0, -tiny, Rnd::Rz), -1.0);
        // An error term below f64 resolution: 1 + 2^-60 + 2^-100 style via a product.
        let a = 1.0 + f32::EPSILON; // 1 + 2^-23
        // a·a = 1 + 2^-22 + 2^-46 exactly; minus 1: 2^-22 + 2^-46 → RM to 2^-22.
        assert_eq!(fma(a, a, -1.0, Rnd::Rm), 2f32.powi(-22));
        assert_eq!(fma(a, a, -1.0, Rnd::Rp), 2f32.powi(-22) + 2f32.powi(-45));
        // Exact cancellation: +0 except under RM.
        assert!(fma(1.0, 1.0, -1.0, Rnd::Rm).is_sign_negative());
        assert!(fma(1.0, 1.0, -1.0, Rnd::Rz).is_sign_positive());
        // Overflow: RM of a huge positive value stops at MAX.
        assert_eq!(fma(f32::MAX, 2.0, 0.0, Rnd::Rm), f32::MAX);
        assert_eq!(fma(f32::MAX, 2.0, 0.0, Rnd::Rp), f32::INFINITY);
    }

    #[test]
    fn min_max_nan() {
        assert_eq!(fmin(f32::NAN, 2.0), 2.0);
        assert_eq!(fmax(1.0, f32::NAN), 1.0);
        assert!(fmin(-0.0, 0.0).is_sign_negative());
        assert!(fmax(-0.0, 0.0).is_sign_positive());
    }
}
