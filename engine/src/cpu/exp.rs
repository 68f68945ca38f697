//! e^x for the CPU backend's softmax loops, written so a loop of it vectorises (libm's `expf`
//! is a call per element: 15% of a small attention's forward+backward). Relative error below
//! 3e-7 (f32's rounding is 6e-8) over the range where e^x is a normal f32; 0 below it, +∞ above
//! it, NaN for NaN.

/// e^x: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in two parts so r is exact), e^r by a
/// degree-6 polynomial fitted for least relative error on that interval (7e-8, below f32's
/// rounding), and 2^n written into the exponent bits.
///
/// Written with fused multiply-adds: the callers' loops are compiled for AVX-512 or AVX2 + FMA
/// (`simd::widest!`), where each is one instruction (elsewhere `mul_add` is a library call:
/// correct, slower).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer (no rounding instruction
    // needed, so the loop vectorises on any x86-64).
    const ROUND: f32 = 12_582_912.0;
    // Outside [−87, 88] the argument moves to where the exponent bits below come out as 0
    // (n = −127: e^x is 0) or as all ones (n = 128: +∞), so two selects give the limits; a
    // NaN fails both comparisons and stays NaN throughout.
    let x = if x < -87.0 {
        -88.0
    } else if x > 88.0 {
        88.8
    } else {
        x
    };
    // t holds n in its low mantissa bits (n ∈ [−127, 128]).
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // Horner's rule: in a loop of 16-lane vectors the throughput of the FMA units bounds it,
    // not the chain's latency (other elements' chains interleave).
    const C: [f32; 7] = [
        1.0,
        1.0,
        0.499_999_9,
        0.166_664_2,
        0.041_668_225,
        0.008_374_816,
        0.001_383_684_6,
    ];
    let mut p = C[6];
    for c in C[..6].iter().rev() {
        p = p.mul_add(r, *c);
    }
    // 2^n: n + 127 into the exponent bits. From t's bits, not `n as i32`: a float-to-int cast
    // saturates and maps NaN to 0, which compilers do lane by lane (it kept the loop scalar).
    // t's bits are 0x4B40_0000 + n, whose part above n shifts out.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn matches_f64_to_a_few_ulps_and_keeps_the_special_values() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }
}
