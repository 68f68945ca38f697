//! Shared helpers for the integration tests: embedded reference data (so test binaries run
//! anywhere, including the GPU machine) and closeness checks.

pub mod badfiles;
pub mod fuzz;
pub mod gradcheck;

use palm_engine::SafeFile;

/// Moments made for a 3-element parameter, then a step over a 4-element one on `device`, or over
/// two parameters: errors naming the sizes, before any update (the device kernel would run past
/// the moments).
pub fn assert_adamw_refuses_a_parameter_of_another_size(device: palm_engine::Device) {
    let on = |n: usize| {
        let t = palm_engine::Tensor::from_vec(vec![1f32; n], &[n]).unwrap();
        t.to_device(device).unwrap().as_var()
    };
    let mut opt = palm_engine::AdamW::new(Default::default(), &[on(3)]).unwrap();
    let mut other = [on(4)];
    let grads = other[0].sum_all().unwrap().backward().unwrap();
    let err = opt.step(&mut other, &grads, 1e-3).unwrap_err().to_string();
    assert!(
        err.contains("4 elements") && err.contains("moments 3"),
        "{err}"
    );
    let err = opt.step(&mut [on(3), on(3)], &grads, 1e-3).unwrap_err();
    assert!(
        err.to_string()
            .contains("2 parameters for an optimizer made for 1"),
        "{err}"
    );
    assert_eq!(opt.step_count(), 0, "a refused step still counted");
}

/// The seed's tiny model (PaLM-rlhf-pytorch 0.7.5, float64 → f32).
pub fn seed_model() -> SafeFile {
    SafeFile::from_static(
        "palm_seed_tiny.safetensors",
        include_bytes!("../data/palm_seed_tiny.safetensors"),
    )
    .expect("embedded seed model parses")
}

/// What the seed computed on that model: logits, loss, gradients, LoRA logits, reward.
pub fn seed_expected() -> SafeFile {
    SafeFile::from_static(
        "palm_seed_tiny.expected.safetensors",
        include_bytes!("../data/palm_seed_tiny.expected.safetensors"),
    )
    .expect("embedded expected vectors parse")
}

/// ‖got − want‖ / ‖want‖.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Panics with the name and the error when `got` is not within `tol` (relative, in norm) of
/// `want`, or when any element differs by more than `tol` relative to the largest reference.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_close_elementwise(name, got, want, tol, tol)
}

/// [`assert_close`] with its own bound `elem_tol` on the largest elementwise difference
/// (relative to the largest reference element), for bf16 results composed of several rounded
/// steps, where one element may be off by a few bf16 steps while the norm stays within `tol`.
pub fn assert_close_elementwise(name: &str, got: &[f32], want: &[f32], tol: f64, elem_tol: f64) {
    assert!(
        want.iter().any(|&v| v != 0.0),
        "{name}: reference is all zeros, the test would prove nothing"
    );
    let rel = rel_err(got, want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        rel <= tol && max_abs <= elem_tol * scale,
        "{name}: relative error {rel:.3e} (tolerance {tol:.0e}), max abs diff {max_abs:.3e} (scale \
         {scale:.3e}, tolerance {elem_tol:.0e} of it)"
    );
}
