//! Loops compiled for the widest vector unit the CPU has, chosen at run time, and the
//! reductions written so they vectorise.
//!
//! The crate is built for baseline x86-64 (SSE2, four lanes, no FMA), so a hot loop runs 16 lanes
//! wide only inside a function compiled with AVX-512 enabled. `widest!` compiles one
//! `#[inline(always)]` body three times (AVX-512, AVX2 + FMA, baseline) and dispatches on the
//! CPU's features; the body is a plain function, not a closure, because a closure handed to a
//! wider function was not inlined into it (it lost 24% once, BENCHMARKS.md).

/// `widest!(fn name(args) [-> R] = body;)` defines `name`, which runs `body` (an
/// `#[inline(always)]` fn with the same arguments) compiled for AVX-512, or AVX2 + FMA, or
/// baseline.
macro_rules! widest {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above), all `avx512` requires.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above), all `avx2`
                    // requires.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use widest;

/// Lanes of the running sums below: one AVX-512 register.
const LANES: usize = 16;

/// Σ x, in 16 running sums added up at the end (a single running sum is a chain of dependent
/// adds, 4 cycles each, which no compiler may reorder).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ x·y, in 16 running sums as `sum`.
#[inline(always)]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (xc, yc) in xs.zip(ys) {
        for l in 0..LANES {
            acc[l] += xc[l] * yc[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element (−∞ for none; NaN elements are passed over, as `f32::max` does), in 16
/// running maxima.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..LANES {
            // One compare-and-pick (a single `vmaxps`): a NaN compares false and is passed
            // over, and acc is never NaN. `f32::max` checks both sides for NaN, a chain of
            // three instructions per vector that made the attention's softmax rows 1.5× slower.
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    widest! {
        /// The three reductions at once, through the dispatch.
        fn reductions(x: &[f32], y: &[f32]) -> (f32, f32, f32) = reductions_body;
    }

    #[inline(always)]
    fn reductions_body(x: &[f32], y: &[f32]) -> (f32, f32, f32) {
        (sum(x), dot(x, y), max(x))
    }

    /// Sums, dot products and maxima agree with f64 sums and a plain maximum, at lengths around
    /// the lane count; a NaN is passed over by the maximum and carried by the sum.
    #[test]
    fn reductions_match_the_definition() {
        let mut rng = crate::Rng::new(5);
        for len in [0, 1, 15, 16, 17, 33, 100, 1000] {
            let x: Vec<f32> = (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect();
            let y: Vec<f32> = (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect();
            let (s, d, m) = reductions(&x, &y);
            let want_s: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let want_d: f64 = x.iter().zip(&y).map(|(&a, &b)| f64::from(a * b)).sum();
            let want_m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(
                (f64::from(s) - want_s).abs() < 1e-5 * (1.0 + len as f64),
                "{len}"
            );
            assert!(
                (f64::from(d) - want_d).abs() < 1e-5 * (1.0 + len as f64),
                "{len}"
            );
            assert_eq!(m, want_m, "{len}");
        }
        let x = [1.0, f32::NAN, 3.0, -2.0];
        let (s, _, m) = reductions(&x, &x);
        assert!(s.is_nan());
        assert_eq!(m, 3.0);
    }
}
