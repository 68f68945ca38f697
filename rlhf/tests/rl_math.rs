//! The RLHF math against direct f64 computations of each formula on small cases: masks, log-probs
//! and entropy, k1/k3, GAE (against the explicit sum of discounted TD errors), whitening, PPO's
//! clipped losses in and out of the clip range, the KL controllers, DPO and GRPO. Gradients are
//! checked by central finite differences.

use palm_engine::Tensor;
use palm_rlhf::rl_math::*;

/// Tensor of `x` (as a parameter) with the loss `f` builds, and its gradient.
fn value_and_grad(x: &[f32], dims: &[usize], f: &dyn Fn(&Tensor) -> Tensor) -> (f64, Vec<f32>) {
    let t = Tensor::from_vec(x.to_vec(), dims).unwrap().as_var();
    let loss = f(&t);
    let v = loss.to_scalar().unwrap() as f64;
    let g = loss.backward().unwrap();
    let g = g
        .get(&t)
        .map(|g| g.to_vec::<f32>().unwrap())
        .unwrap_or_else(|| vec![0.0; x.len()]);
    (v, g)
}

/// Central finite differences of `f` at `x`, compared with the backward pass.
fn check_grad(x: &[f32], dims: &[usize], f: &dyn Fn(&Tensor) -> Tensor) {
    let (_, analytic) = value_and_grad(x, dims, f);
    let h = 1e-2f32;
    for i in 0..x.len() {
        let at = |d: f32| {
            let mut y = x.to_vec();
            y[i] += d;
            f(&Tensor::from_vec(y, dims).unwrap()).to_scalar().unwrap() as f64
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        let a = analytic[i] as f64;
        assert!(
            (a - numeric).abs() < 2e-3 + 1e-2 * numeric.abs(),
            "gradient {i}: backward {a} vs finite difference {numeric} (all: {analytic:?})"
        );
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

#[test]
fn response_mask_counts_response_tokens_up_to_eos() {
    // prompt [5, 6], response [7, 2, 9] with EOS 2; width 6 (one padding target beyond).
    let tokens = [5, 6, 7, 2, 9];
    // targets: t0→6 (prompt), t1→7, t2→2 (EOS, counted), t3→9 (after EOS), t4, t5 padding.
    assert_eq!(
        response_mask(&tokens, 2, Some(2), 6),
        vec![0., 1., 1., 0., 0., 0.]
    );
    assert_eq!(
        response_mask(&tokens, 2, None, 6),
        vec![0., 1., 1., 1., 0., 0.]
    );
    // An EOS inside the prompt does not end the response.
    assert_eq!(
        response_mask(&[2, 2, 7, 8], 2, Some(2), 3),
        vec![0., 1., 1.]
    );
    // Nothing to count when the response is empty.
    assert_eq!(response_mask(&[5, 6], 2, None, 3), vec![0., 0., 0.]);
}

#[test]
fn token_logprobs_entropy_and_masked_sums() {
    let (b, n, v) = (2, 3, 4);
    let logits: Vec<f32> = (0..b * n * v)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
        .collect();
    let ids = vec![3u32, 0, 2, 1, 1, 3];
    let lt = Tensor::from_vec(logits.clone(), &[b, n, v]).unwrap();
    let it = Tensor::from_vec(ids.clone(), &[b, n]).unwrap();
    let lp = token_logprobs(&lt, &it).unwrap().to_vec::<f32>().unwrap();
    let ent = token_entropy(&lt).unwrap().to_vec::<f32>().unwrap();
    for r in 0..b * n {
        let row: Vec<f64> = logits[r * v..(r + 1) * v]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let ls = log_softmax(&row);
        close(lp[r] as f64, ls[ids[r] as usize], "log-prob");
        let h: f64 = -ls.iter().map(|l| l.exp() * l).sum::<f64>();
        close(ent[r] as f64, h, "entropy");
    }
    // Row sums over counted tokens only: the prompt/padding positions do not contribute.
    let mask = [0., 1., 1., 1., 0., 0.];
    let sums = masked_row_sums(&token_logprobs(&lt, &it).unwrap(), &mask)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    close(sums[0] as f64, (lp[1] + lp[2]) as f64, "row 0 sum");
    close(sums[1] as f64, lp[3] as f64, "row 1 sum");
    // Gradients: log-prob sums and the mean entropy.
    let it2 = it.clone();
    check_grad(&logits, &[b, n, v], &|x| {
        masked_row_sums(&token_logprobs(x, &it2).unwrap(), &mask)
            .unwrap()
            .sum_all()
            .unwrap()
    });
    check_grad(&logits, &[b, n, v], &|x| {
        masked_mean(&token_entropy(x).unwrap(), &mask).unwrap()
    });
    // Masked positions get no gradient at all.
    let (_, g) = value_and_grad(&logits, &[b, n, v], &|x| {
        masked_row_sums(&token_logprobs(x, &it).unwrap(), &mask)
            .unwrap()
            .sum_all()
            .unwrap()
    });
    assert!(g[..v].iter().chain(&g[4 * v..]).all(|&x| x == 0.0));
    assert!(token_logprobs(&lt, &Tensor::from_vec(vec![4u32; 6], &[b, n]).unwrap()).is_err());
}

#[test]
fn kl_estimators() {
    let logp = [-1.0f32, -2.0, -0.5, -3.0];
    let reference = [-1.0f32, -1.5, -1.2, -0.1];
    let lt = Tensor::from_vec(logp.to_vec(), &[4]).unwrap();
    let rt = Tensor::from_vec(reference.to_vec(), &[4]).unwrap();
    let k1 = kl_k1(&lt, &rt).unwrap().to_vec::<f32>().unwrap();
    let k3 = kl_k3(&lt, &rt).unwrap().to_vec::<f32>().unwrap();
    for i in 0..4 {
        let (p, q) = (logp[i] as f64, reference[i] as f64);
        close(k1[i] as f64, p - q, "k1");
        let r = (q - p).exp();
        close(k3[i] as f64, r - 1.0 - (q - p), "k3");
        assert!(k3[i] >= 0.0);
        close(kl_k1_host(logp[i], reference[i]) as f64, p - q, "k1 host");
        close(
            kl_k3_host(logp[i], reference[i]) as f64,
            r - 1.0 - (q - p),
            "k3 host",
        );
    }
    assert_eq!(k3[0], 0.0, "k3 is 0 where the policies agree");
    // d k3/d logπ = 1 − r.
    let (_, g) = value_and_grad(&logp, &[4], &|x| kl_k3(x, &rt).unwrap().sum_all().unwrap());
    for i in 0..4 {
        let r = ((reference[i] - logp[i]) as f64).exp();
        close(g[i] as f64, 1.0 - r, "k3 gradient");
    }
}

#[test]
fn gae_matches_the_sum_of_discounted_td_errors() {
    // Two rows of 6: row 0 prompt (2) + 3 response tokens + padding; row 1 all response.
    let n = 6;
    let mask = [0., 0., 1., 1., 1., 0., 1., 1., 1., 1., 1., 1.];
    let rewards = [9., 9., 0.1, -0.2, 1.0, 9., 0.0, 0.3, -0.1, 0.0, 0.2, 2.0];
    let values = [5., 5., 0.5, 0.4, -0.3, 5., 0.1, 0.2, 0.0, -0.2, 0.3, 0.6];
    for (gamma, lam) in [(1.0f32, 0.95f32), (0.9, 0.8)] {
        let out = gae(&rewards, &values, &mask, n, gamma, lam).unwrap();
        for row in 0..2 {
            let valid: Vec<usize> = (row * n..(row + 1) * n)
                .filter(|&t| mask[t] > 0.0)
                .collect();
            // δ_k over the counted tokens, V after the last one 0.
            let delta: Vec<f64> = valid
                .iter()
                .enumerate()
                .map(|(k, &t)| {
                    let next = valid.get(k + 1).map_or(0.0, |&u| values[u] as f64);
                    rewards[t] as f64 + gamma as f64 * next - values[t] as f64
                })
                .collect();
            for (k, &t) in valid.iter().enumerate() {
                let a: f64 = (k..valid.len())
                    .map(|l| (gamma as f64 * lam as f64).powi((l - k) as i32) * delta[l])
                    .sum();
                close(out.advantages[t] as f64, a, "advantage");
                close(out.returns[t] as f64, a + values[t] as f64, "return");
            }
        }
        for t in (0..12).filter(|&t| mask[t] == 0.0) {
            assert_eq!((out.advantages[t], out.returns[t]), (0.0, 0.0));
        }
    }
    assert!(gae(&rewards, &values, &mask, 5, 1.0, 0.95).is_err());
}

#[test]
fn token_rewards_and_whitening() {
    let mask = [0., 1., 1., 0., 1., 1., 1., 0.];
    let kl = [5.0, 0.5, -0.2, 5.0, 0.1, 0.3, 0.2, 5.0];
    let r = token_rewards(&kl, &[2.0, -1.0], &mask, 0.1).unwrap();
    let want = [0.0, -0.05, 0.02 + 2.0, 0.0, -0.01, -0.03, -0.02 - 1.0, 0.0];
    for i in 0..8 {
        close(r[i] as f64, want[i], "token reward");
    }
    let x = [3.0f32, 1.0, 2.0, 100.0, 4.0, -1.0, 0.5, -50.0];
    let w = whiten(&x, &mask, true).unwrap();
    let valid: Vec<f64> = (0..8)
        .filter(|&i| mask[i] > 0.0)
        .map(|i| w[i] as f64)
        .collect();
    let k = valid.len() as f64;
    let mean = valid.iter().sum::<f64>() / k;
    let var = valid.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
    assert!(
        mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
        "{mean} {var}"
    );
    assert!((0..8).filter(|&i| mask[i] == 0.0).all(|i| w[i] == 0.0));
    let raw_mean = [1.0, 2.0, 4.0, -1.0, 0.5].iter().sum::<f64>() / 5.0;
    let kept = whiten(&x, &mask, false).unwrap();
    close((kept[1] - w[1]) as f64, raw_mean, "mean kept");
    assert!(whiten(&x, &[0., 1., 0., 0., 0., 0., 0., 0.], true).is_err());
}

/// max(−A·ρ, −A·clip(ρ)) in f64.
fn surrogate(logp: f64, old: f64, adv: f64, eps: f64) -> (f64, bool) {
    let ratio = (logp - old).exp();
    let a = -adv * ratio;
    let b = -adv * ratio.clamp(1.0 - eps, 1.0 + eps);
    (a.max(b), b > a)
}

#[test]
fn ppo_policy_loss_in_and_out_of_the_clip_range() {
    let eps = 0.2;
    // Ratios 1.05 (in), 1.5 (above), 0.6 (below), 0.9 (in), with both advantage signs; the
    // last token is masked and holds garbage that must not matter.
    let old = [-1.0f32, -1.0, -1.0, -1.0, -2.0, -1.0, -1.0];
    let logp: Vec<f32> = [1.05f32, 1.5, 0.6, 0.9, 1.5, 0.6, 1.0]
        .iter()
        .zip(&old)
        .map(|(r, o)| o + r.ln())
        .chain([80.0])
        .collect();
    let old: Vec<f32> = old.iter().copied().chain([-80.0]).collect();
    let adv = [1.0f32, 1.0, 1.0, -1.0, -2.0, -0.5, 0.7, 1e6];
    let mask = [1., 1., 1., 1., 1., 1., 1., 0.];
    let dims = [2, 4];
    let f = |x: &Tensor| ppo_policy_loss(x, &old, &adv, &mask, eps).unwrap().loss;
    let out = ppo_policy_loss(
        &Tensor::from_vec(logp.clone(), &dims).unwrap(),
        &old,
        &adv,
        &mask,
        eps,
    )
    .unwrap();
    let (mut want, mut clipped, mut kl) = (0.0, 0.0, 0.0);
    for i in 0..7 {
        let (l, c) = surrogate(logp[i] as f64, old[i] as f64, adv[i] as f64, eps as f64);
        want += l / 7.0;
        clipped += f64::from(u8::from(c)) / 7.0;
        kl += 0.5 * ((logp[i] - old[i]) as f64).powi(2) / 7.0;
    }
    close(out.loss.to_scalar().unwrap() as f64, want, "policy loss");
    close(out.clip_frac as f64, clipped, "clip fraction");
    close(out.approx_kl as f64, kl, "approx-KL");
    // The clip binds only where it lowers the objective: ρ = 1.5 with A > 0 (token 1) and
    // ρ = 0.6 with A < 0 (token 5); ρ = 0.6 with A > 0 and ρ = 1.5 with A < 0 stay unclipped.
    close(clipped, 2.0 / 7.0, "two clipped tokens");
    check_grad(&logp, &dims, &f);
    // Gradient: −A·ρ/n where unclipped, 0 where clipped or masked.
    let (_, g) = value_and_grad(&logp, &dims, &f);
    for i in 0..8 {
        let (_, c) = surrogate(logp[i] as f64, old[i] as f64, adv[i] as f64, eps as f64);
        let ratio = ((logp[i] - old[i]) as f64).exp();
        let want = if mask[i] == 0.0 || c {
            0.0
        } else {
            -adv[i] as f64 * ratio / 7.0
        };
        close(g[i] as f64, want, "policy gradient");
    }
}

#[test]
fn ppo_value_loss_and_total() {
    let eps_v = 0.2;
    let old = [0.0f32, 0.0, 1.0, 1.0, 0.5, 9.0];
    // V − V_old: 0.1 (in), 0.5 (out, moving toward R → clipped branch larger), −0.5, 0.3.
    let v = [0.1f32, 0.5, 0.5, 1.3, 0.4, -9.0];
    let ret = [1.0f32, 1.0, 2.0, 0.0, 0.45, 3.0];
    let mask = [1., 1., 1., 1., 1., 0.];
    let dims = [2, 3];
    let out = ppo_value_loss(
        &Tensor::from_vec(v.to_vec(), &dims).unwrap(),
        &old,
        &ret,
        &mask,
        eps_v,
    )
    .unwrap();
    let (mut want, mut clipped) = (0.0, 0.0);
    for i in 0..5 {
        let (vi, oi, ri) = (v[i] as f64, old[i] as f64, ret[i] as f64);
        let a = (vi - ri).powi(2);
        let vc = oi + (vi - oi).clamp(-0.2, 0.2);
        let b = (vc - ri).powi(2);
        want += 0.5 * a.max(b) / 5.0;
        clipped += f64::from(u8::from(b > a)) / 5.0;
    }
    close(out.loss.to_scalar().unwrap() as f64, want, "value loss");
    close(out.clip_frac as f64, clipped, "value clip fraction");
    assert!(clipped > 0.0 && clipped < 1.0, "{clipped}");
    let fv = |x: &Tensor| ppo_value_loss(x, &old, &ret, &mask, eps_v).unwrap().loss;
    check_grad(&v, &dims, &fv);

    // The total: policy + vf_coef·value − ent_coef·entropy.
    let logp = [-1.0f32, -0.8, -1.3, -0.7, -1.1, -1.0];
    let old_logp = [-1.0f32, -1.0, -1.0, -1.0, -1.0, -1.0];
    let adv = [0.5f32, -0.3, 1.0, 0.2, -1.0, 0.0];
    let ent = [1.0f32, 2.0, 0.5, 0.7, 1.2, 50.0];
    let batch = PpoBatch {
        old_logp: &old_logp,
        old_values: &old,
        advantages: &adv,
        returns: &ret,
        mask: &mask,
    };
    let cfg = PpoConfig::default();
    let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), &dims).unwrap();
    let total = ppo_loss(&t(&logp), &t(&ent), &t(&v), &batch, &cfg).unwrap();
    let pg = ppo_policy_loss(&t(&logp), &old_logp, &adv, &mask, cfg.clip).unwrap();
    let mean_ent = ent[..5].iter().map(|&e| e as f64).sum::<f64>() / 5.0;
    let want_total = pg.loss.to_scalar().unwrap() as f64 + cfg.vf_coef as f64 * want
        - cfg.ent_coef as f64 * mean_ent;
    close(
        total.loss.to_scalar().unwrap() as f64,
        want_total,
        "PPO total",
    );
    close(total.entropy as f64, mean_ent, "mean entropy");
    close(total.value_loss as f64, want, "logged value loss");
}

#[test]
fn kl_controllers() {
    let mut fixed = KlController::fixed(0.05).unwrap();
    fixed.update(10.0, 256);
    assert_eq!(fixed.beta(), 0.05);
    let mut k = KlController::adaptive(0.2, 6.0, 10000.0).unwrap();
    // KL 7.5 against 6: error 0.25, clipped to 0.2.
    k.update(7.5, 512);
    let want = 0.2 * (1.0 + 0.2 * 512.0 / 10000.0);
    close(k.beta() as f64, want, "β up");
    // KL 5.4: error −0.1, within the clip.
    k.update(5.4, 1000);
    let want = want * (1.0 + (5.4 - 6.0) / 6.0 * 1000.0 / 10000.0);
    close(k.beta() as f64, want, "β down");
    assert!(KlController::adaptive(0.1, 0.0, 100.0).is_err());
    assert!(KlController::fixed(-1.0).is_err());
}

#[test]
fn dpo_loss_value_gradient_sign_and_metrics() {
    let beta = 0.1f32;
    let chosen = [-10.0f32, -20.0, -5.0];
    let rejected = [-12.0f32, -15.0, -5.5];
    let ref_c = [-11.0f32, -19.0, -5.0];
    let ref_r = [-11.0f32, -16.0, -5.0];
    let out = dpo_loss(
        &Tensor::from_vec(chosen.to_vec(), &[3]).unwrap(),
        &Tensor::from_vec(rejected.to_vec(), &[3]).unwrap(),
        &ref_c,
        &ref_r,
        beta,
    )
    .unwrap();
    let (mut want, mut correct, mut margin) = (0.0, 0, 0.0);
    for i in 0..3 {
        let c = beta as f64 * (chosen[i] - ref_c[i]) as f64;
        let r = beta as f64 * (rejected[i] - ref_r[i]) as f64;
        let x = c - r;
        want += (1.0 + (-x).exp()).ln() / 3.0;
        correct += usize::from(c > r);
        margin += x / 3.0;
    }
    close(out.loss.to_scalar().unwrap() as f64, want, "DPO loss");
    assert_eq!((out.stats.correct, out.stats.pairs), (correct, 3));
    assert_eq!(correct, 2, "pairs 0 and 2 right, pair 1 wrong");
    close(out.stats.margin as f64, margin, "margin");
    // With policy = reference the loss is log 2 and no pair is counted right (ties).
    let same = dpo_loss(
        &Tensor::from_vec(ref_c.to_vec(), &[3]).unwrap(),
        &Tensor::from_vec(ref_r.to_vec(), &[3]).unwrap(),
        &ref_c,
        &ref_r,
        beta,
    )
    .unwrap();
    close(
        same.loss.to_scalar().unwrap() as f64,
        2f64.ln(),
        "loss at the reference",
    );
    assert_eq!(same.stats.correct, 0);
    // Gradient: ∂L/∂logπ(y_w) = −β·σ(−x)/B < 0 and ∂L/∂logπ(y_l) = +β·σ(−x)/B > 0, so a descent
    // step raises the chosen and lowers the rejected log-prob.
    let rt = Tensor::from_vec(rejected.to_vec(), &[3]).unwrap();
    let (_, gc) = value_and_grad(&chosen, &[3], &|x| {
        dpo_loss(x, &rt, &ref_c, &ref_r, beta).unwrap().loss
    });
    let ct = Tensor::from_vec(chosen.to_vec(), &[3]).unwrap();
    let (_, gr) = value_and_grad(&rejected, &[3], &|x| {
        dpo_loss(&ct, x, &ref_c, &ref_r, beta).unwrap().loss
    });
    for i in 0..3 {
        let x = beta as f64 * ((chosen[i] - ref_c[i]) - (rejected[i] - ref_r[i])) as f64;
        let s = 1.0 / (1.0 + x.exp());
        assert!(gc[i] < 0.0 && gr[i] > 0.0);
        close(gc[i] as f64, -beta as f64 * s / 3.0, "chosen gradient");
        close(gr[i] as f64, beta as f64 * s / 3.0, "rejected gradient");
    }
    // Stable far out: x = −100 gives loss 100, not inf.
    let far = dpo_loss(
        &Tensor::from_vec(vec![-1000.0f32], &[1]).unwrap(),
        &Tensor::from_vec(vec![0.0f32], &[1]).unwrap(),
        &[0.0],
        &[0.0],
        beta,
    )
    .unwrap();
    close(far.loss.to_scalar().unwrap() as f64, 100.0, "far loss");
    assert!(dpo_loss(&ct, &rt, &ref_c[..2], &ref_r, beta).is_err());
}

#[test]
fn grpo_advantages_and_loss() {
    let rewards = [1.0f32, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0];
    let adv = group_advantages(&rewards, 4, 1e-4).unwrap();
    // Group 1: mean 2.5, unbiased std √(5/3).
    let std = (5.0f64 / 3.0).sqrt();
    for i in 0..4 {
        close(
            adv[i] as f64,
            (rewards[i] as f64 - 2.5) / (std + 1e-4),
            "advantage",
        );
    }
    assert!(adv[4..].iter().all(|&a| a == 0.0), "equal rewards → 0");
    assert!(group_advantages(&rewards, 3, 1e-4).is_err());
    assert!(group_advantages(&rewards, 1, 1e-4).is_err());

    // Three responses of widths 4: lengths 2, 4, 1 (the rest masked, holding garbage).
    let (b, n) = (3, 4);
    let mask = [0., 1., 1., 0., 1., 1., 1., 1., 0., 0., 1., 0.];
    let logp = [
        9.0f32, -1.0, -0.5, 40.0, -2.0, -1.2, -0.3, -0.9, -9.0, 30.0, -1.5, 7.0,
    ];
    let old = [
        0.0f32, -1.1, -0.9, 0.0, -2.0, -1.0, -0.8, -0.9, 0.0, 0.0, -1.2, 0.0,
    ];
    let reference = [
        0.0f32, -1.0, -0.7, 0.0, -1.5, -1.4, -0.3, -1.0, 0.0, 0.0, -1.0, 0.0,
    ];
    let adv = [0.8f32, -1.2, 0.5];
    let (eps, beta) = (0.2f32, 0.04f32);
    let out = grpo_loss(
        &Tensor::from_vec(logp.to_vec(), &[b, n]).unwrap(),
        &old,
        &reference,
        &adv,
        &mask,
        eps,
        beta,
    )
    .unwrap();
    let (mut want, mut kl, mut tokens) = (0.0, 0.0, 0.0);
    for (row, &a) in adv.iter().enumerate() {
        let idx: Vec<usize> = (row * n..(row + 1) * n)
            .filter(|&t| mask[t] > 0.0)
            .collect();
        let mut s = 0.0;
        for &t in &idx {
            let (l, _) = surrogate(logp[t] as f64, old[t] as f64, a as f64, eps as f64);
            let lr = (reference[t] - logp[t]) as f64;
            let k3 = lr.exp() - 1.0 - lr;
            s += l + beta as f64 * k3;
            kl += k3;
            tokens += 1.0;
        }
        want += s / idx.len() as f64 / b as f64;
    }
    close(out.loss.to_scalar().unwrap() as f64, want, "GRPO loss");
    close(out.kl as f64, kl / tokens, "GRPO KL");
    let f = |x: &Tensor| {
        grpo_loss(x, &old, &reference, &adv, &mask, eps, beta)
            .unwrap()
            .loss
    };
    check_grad(&logp, &[b, n], &f);
    // Without β the reference is not needed.
    assert!(
        grpo_loss(
            &Tensor::from_vec(logp.to_vec(), &[b, n]).unwrap(),
            &old,
            &[],
            &adv,
            &mask,
            eps,
            0.0
        )
        .is_ok()
    );
}
