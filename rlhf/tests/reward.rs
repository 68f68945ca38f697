//! Reward model: the pairwise ranking loss against a direct computation, its gradient, scores
//! that do not depend on the padding of a batch, save → load, the frozen trunk under LoRA, and
//! the training data's cutting and held-out split. (The seed's reward forward is checked
//! in tests/tests/reference.rs.)

use palm_engine::{Rng, Tensor};
use palm_model::{PalmConfig, PalmParams, Trainable};
use palm_rlhf::data::{PairRecord, PreferenceRecord, RankingRecord};
use palm_rlhf::reward::{Pooling, RewardModel, Scored, ranking_loss};
use palm_rlhf::reward_train::{Ranked, batch_loss, split_held_out};

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

fn record(prompt: &str, responses: &[&str]) -> PreferenceRecord {
    PreferenceRecord::Ranking(RankingRecord {
        prompt: prompt.into(),
        responses: responses.iter().map(|r| r.to_string()).collect(),
    })
}

fn ids(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

#[test]
fn rankings_are_cut_to_the_sequence_length() {
    let r = record("abcdef", &["xy", "wxyz"]);
    let (whole, cut) = Ranked::new(&r, 10, &palm_model::Tokenizer::bytes()).unwrap();
    assert!(!cut);
    assert_eq!(
        (whole.prompt, whole.responses),
        (ids("abcdef"), vec![ids("xy"), ids("wxyz")])
    );
    // The prompt loses its front until the longest response fits, for every response alike.
    let (r6, cut) = Ranked::new(&r, 6, &palm_model::Tokenizer::bytes()).unwrap();
    assert!(cut);
    assert_eq!(
        (r6.prompt, r6.responses),
        (ids("ef"), vec![ids("xy"), ids("wxyz")])
    );
    // Responses keep at most max_len − 1 tokens; the prompt keeps its last one.
    let (r3, _) = Ranked::new(&r, 3, &palm_model::Tokenizer::bytes()).unwrap();
    assert_eq!(
        (r3.prompt, r3.responses),
        (ids("f"), vec![ids("xy"), ids("wx")])
    );
    // Pairs are rankings of two with their margin.
    let pair = PreferenceRecord::Pair(PairRecord {
        prompt: "p".into(),
        chosen: "good".into(),
        rejected: "bad".into(),
        margin: Some(0.5),
    });
    let (p, _) = Ranked::new(&pair, 10, &palm_model::Tokenizer::bytes()).unwrap();
    assert_eq!(
        (p.pairs(), p.responses, p.margin),
        (1, vec![ids("good"), ids("bad")], 0.5)
    );
    assert_eq!(
        Ranked::new(
            &record("p", &["a", "b", "c", "d"]),
            9,
            &palm_model::Tokenizer::bytes()
        )
        .unwrap()
        .0
        .pairs(),
        6
    );
}

#[test]
fn held_out_split_is_seeded_and_disjoint() {
    let split = |n, frac, seed| split_held_out(n, frac, &mut Rng::new(seed)).unwrap();
    let (train, val) = split(10, 0.25, 1);
    // round(2.5) = 3 held out.
    assert_eq!((train.len(), val.len()), (7, 3));
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert_eq!(split(10, 0.25, 1), (train.clone(), val.clone()));
    assert_ne!(split(10, 0.25, 2).1, val);
    // At least one on each side.
    assert_eq!(split(2, 0.01, 0).1.len(), 1);
    assert_eq!(split(3, 0.99, 0).0.len(), 1);
    assert!(split_held_out(1, 0.5, &mut Rng::new(0)).is_err());
}

/// A reward model with every part non-trivial: segment embeddings and, optionally, adapters
/// whose B is not zero (so they change the scores).
fn busy_model(pooling: Pooling, lora: bool, rng: &mut Rng) -> RewardModel {
    let trunk = PalmParams::init(&PalmConfig::new(256, 32, 2, 2, 16), rng).unwrap();
    let mut rm = RewardModel::new(trunk, pooling, rng).unwrap();
    rm.prompt_embed = Tensor::randn(&[32], 0.5, rng).as_var();
    rm.response_embed = Tensor::randn(&[32], 0.5, rng).as_var();
    if lora {
        rm.add_lora(4, rng).unwrap();
        for l in rm.lora.as_mut().unwrap().layers.iter_mut().flatten() {
            l.b = Tensor::randn(l.b.dims(), 0.05, rng).as_var();
        }
    }
    rm
}

#[test]
fn save_then_load_scores_identically() {
    let dir = std::env::temp_dir().join(format!("palm-test-rm-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let responses = [" yes", " no, thanks", "?"];
    for (pooling, lora) in [(Pooling::Mean, false), (Pooling::Last, true)] {
        let mut rng = Rng::new(11);
        let rm = busy_model(pooling, lora, &mut rng);
        let want = rm.score_texts("Hi:", &responses).unwrap();
        let path = dir.join(format!("rm-{lora}.safetensors"));
        rm.save(&path).unwrap();
        let mut back = RewardModel::load(&path).unwrap();
        assert_eq!((back.pooling, back.lora.is_some()), (pooling, lora));
        assert_eq!(back.score_texts("Hi:", &responses).unwrap(), want);
        if lora {
            // The adapters were saved and matter: without them the scores differ.
            back.lora = None;
            assert_ne!(back.score_texts("Hi:", &responses).unwrap(), want);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_freezes_the_trunk() {
    let mut rng = Rng::new(5);
    let rm = busy_model(Pooling::Mean, true, &mut rng);
    let r = Ranked::new(
        &record("Q:", &[" aaa", " bb", " c"]),
        16,
        &palm_model::Tokenizer::bytes(),
    )
    .unwrap()
    .0;
    let grads = batch_loss(&rm, &[&r]).unwrap().backward().unwrap();
    for (name, t) in rm.trunk.named() {
        assert!(grads.get(t).is_none(), "{name} got a gradient");
    }
    let trainable = rm.trained_tensors();
    // 4 adapters × (A, B) per layer, 2 layers, then the segment embeddings and the head.
    assert_eq!(trainable.len(), 2 * 4 * 2 + 3);
    for t in &trainable {
        assert!(grads.get(t).is_some(), "a trainable tensor got no gradient");
    }
    // Without adapters the trunk trains.
    let full = busy_model(Pooling::Mean, false, &mut rng);
    assert_eq!(full.trained_tensors().len(), full.trunk.named().len() + 3);
    let grads = batch_loss(&full, &[&r]).unwrap().backward().unwrap();
    assert!(grads.get(&full.trunk.token_emb).is_some());
}
