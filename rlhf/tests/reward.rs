//! Reward model: the pairwise ranking loss against a direct computation, its gradient, and
//! scores that do not depend on the padding of a batch. (The seed's reward forward is checked
//! in tests/tests/reference.rs.)

use palm_engine::{Rng, Tensor};
use palm_model::{PalmConfig, PalmParams};
use palm_rlhf::reward::{Pooling, RewardModel, Scored, ranking_loss};

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[test]
fn ranking_loss_is_the_mean_over_all_pairs() {
    let s = [2.0f32, 1.0, -1.0, 0.5];
    for margin in [0.0f32, 0.7] {
        let scores = Tensor::from_vec(s.to_vec(), &[4]).unwrap().as_var();
        let loss = ranking_loss(&scores, margin).unwrap();
        // Direct: mean over i < j of −log σ(s_i − s_j − m) = softplus(−(s_i − s_j − m)).
        let (mut want, mut grad, mut pairs) = (0.0f64, [0.0f64; 4], 0.0);
        for i in 0..4 {
            for j in i + 1..4 {
                let x = (s[i] - s[j] - margin) as f64;
                want += softplus(-x);
                let sig = 1.0 / (1.0 + x.exp()); // σ(−x) = −d softplus(−x)/dx
                grad[i] -= sig;
                grad[j] += sig;
                pairs += 1.0;
            }
        }
        want /= pairs;
        let got = loss.to_scalar().unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-6,
            "margin {margin}: {got} vs {want}"
        );
        let g = loss
            .backward()
            .unwrap()
            .get(&scores)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (a, b) in g.iter().zip(grad.iter().map(|x| x / pairs)) {
            assert!((*a as f64 - b).abs() < 1e-6, "gradient {g:?} vs {grad:?}");
        }
    }
    // Stable far from zero (no log(0)).
    let big = Tensor::from_vec(vec![-60.0f32, 60.0], &[2]).unwrap();
    assert!((ranking_loss(&big, 0.0).unwrap().to_scalar().unwrap() - 120.0).abs() < 1e-3);
    assert!(ranking_loss(&Tensor::from_vec(vec![1.0f32], &[1]).unwrap(), 0.0).is_err());
}

#[test]
fn scores_do_not_depend_on_batch_padding() {
    let mut rng = Rng::new(3);
    let trunk = PalmParams::init(&PalmConfig::new(256, 32, 2, 2, 16), &mut rng).unwrap();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let mut rm = RewardModel::new(trunk.clone(), pooling, &mut rng).unwrap();
        // Non-zero segment embeddings, so the prompt/response split matters.
        rm.prompt_embed = Tensor::randn(&[32], 0.5, &mut rng).as_var();
        rm.response_embed = Tensor::randn(&[32], 0.5, &mut rng).as_var();
        let (p, r1, r2) = (
            vec![72, 105, 58],
            vec![32, 121, 101, 115],
            vec![32, 110, 111, 44, 32, 116, 104, 97, 110, 107, 115],
        );
        let alone = rm
            .scores(&[Scored {
                prompt: &p,
                response: &r1,
            }])
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let both = rm
            .scores(&[
                Scored {
                    prompt: &p,
                    response: &r1,
                },
                Scored {
                    prompt: &p,
                    response: &r2,
                },
            ])
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            (alone[0] - both[0]).abs() < 1e-5,
            "{pooling:?}: {alone:?} vs {both:?}"
        );
        assert!(
            (both[0] - both[1]).abs() > 1e-6,
            "different responses, same score"
        );
        // Moving the prompt/response boundary changes the score (segment embeddings differ).
        let shifted = rm
            .scores(&[Scored {
                prompt: &p[..2],
                response: &[&p[2..], &r1[..]].concat(),
            }])
            .unwrap();
        assert!((shifted.to_vec::<f32>().unwrap()[0] - alone[0]).abs() > 1e-6);
    }
}
