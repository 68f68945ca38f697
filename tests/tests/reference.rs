//! The seed's reference vectors (PaLM-rlhf-pytorch 0.7.5, float64): our CPU backend in f32
//! must match logits, loss, every parameter gradient, LoRA logits and the reward model.

use palm_engine::Rng;
use palm_engine::{DType, Tensor};
use palm_model::checkpoint::{load_lora, params_of};
use palm_model::{Forward, PalmParams};
use palm_rlhf::reward::{Pooling, RewardModel, Scored};
use palm_tests::{assert_close, seed_expected, seed_model};

const TOL: f64 = 1e-4;

fn setup() -> (PalmParams, Tensor) {
    let params = params_of(&seed_model()).unwrap();
    let tokens = seed_expected()
        .get("tokens")
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    (params, tokens)
}

fn inputs(tokens: &Tensor) -> Tensor {
    let n = tokens.dims()[1];
    tokens.narrow(1, 0, n - 1).unwrap().contiguous().unwrap()
}

fn expected(name: &str) -> Vec<f32> {
    seed_expected().get(name).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn logits_match_seed() {
    let (params, tokens) = setup();
    let logits = params
        .logits(&inputs(&tokens), &mut Forward::default())
        .unwrap();
    assert_eq!(logits.dims(), &[2, 33, 256]);
    assert_close(
        "logits",
        &logits.to_vec::<f32>().unwrap(),
        &expected("logits"),
        TOL,
    );
}

#[test]
fn loss_and_every_gradient_match_seed() {
    let (params, tokens) = setup();
    let (loss, count) = params.loss(&tokens, &mut Forward::default()).unwrap();
    assert!(count > 0);
    assert_close("loss", &[loss.to_scalar().unwrap()], &expected("loss"), TOL);
    let grads = loss.backward().unwrap();
    let named = params.named();
    assert_eq!(named.len(), 2 + 4 * params.config.depth);
    for (name, p) in named {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_close(
            &format!("grad {name}"),
            &g.to_vec::<f32>().unwrap(),
            &expected(&format!("grad.{name}")),
            TOL,
        );
    }
}

#[test]
fn lora_logits_match_seed() {
    let (params, tokens) = setup();
    let exp = seed_expected();
    let lora = load_lora(&exp, &params.config, "actor")
        .unwrap()
        .expect("actor scope present");
    assert_eq!(lora.r, 4);
    let logits = params
        .logits(
            &inputs(&tokens),
            &mut Forward {
                lora: Some(&lora),
                ..Default::default()
            },
        )
        .unwrap();
    let want = expected("logits_lora_actor");
    assert_close(
        "logits with LoRA",
        &logits.to_vec::<f32>().unwrap(),
        &want,
        TOL,
    );
    // And the adapters really change the output (B is not zero in the reference).
    let plain = expected("logits");
    assert!(palm_tests::rel_err(&want, &plain) > 1e-3);
}

#[test]
fn lora_merged_equals_lora_applied() {
    let (mut params, tokens) = setup();
    let lora = load_lora(&seed_expected(), &params.config, "actor")
        .unwrap()
        .unwrap();
    lora.merge_into(&mut params).unwrap();
    let merged = params
        .logits(&inputs(&tokens), &mut Forward::default())
        .unwrap();
    assert_close(
        "merged LoRA logits",
        &merged.to_vec::<f32>().unwrap(),
        &expected("logits_lora_actor"),
        TOL,
    );
}

#[test]
fn reward_model_forward_matches_seed() {
    // The seed's RewardModel: segment embeddings (prompt / response) added to the token
    // embeddings, mean of the final-LN output over all positions, dot with to_pred.
    let (params, tokens) = setup();
    let exp = seed_expected();
    let mask = exp
        .get("reward.prompt_mask")
        .unwrap()
        .to_vec::<u8>()
        .unwrap();
    let ids = tokens.to_vec::<u32>().unwrap();
    let n = tokens.dims()[1];
    let mut rm = RewardModel::new(params, Pooling::Mean, &mut Rng::new(0)).unwrap();
    rm.prompt_embed = exp.get("reward.prompt_embed").unwrap();
    rm.response_embed = exp.get("reward.response_embed").unwrap();
    rm.head = exp.get("reward.to_pred.weight").unwrap();
    let rows: Vec<(usize, &[u32])> = ids
        .chunks(n)
        .zip(mask.chunks(n))
        .map(|(row, m)| {
            let plen = m.iter().take_while(|&&x| x != 0).count();
            assert!(m[plen..].iter().all(|&x| x == 0), "prompt mask is a prefix");
            (plen, row)
        })
        .collect();
    let batch: Vec<Scored> = rows
        .iter()
        .map(|(p, row)| Scored {
            prompt: &row[..*p],
            response: &row[*p..],
        })
        .collect();
    let pred = rm.scores(&batch).unwrap();
    assert_close(
        "reward",
        &pred.to_vec::<f32>().unwrap(),
        &expected("reward.expected"),
        TOL,
    );
}
