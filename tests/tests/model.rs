//! Model behaviour beyond the reference vectors: KV-cache decoding, sampling semantics,
//! determinism, checkpoint round trips and zero-copy loading.

use palm_engine::{Rng, SafeFile, Tensor, no_grad};
use palm_model::checkpoint::{load_lora, load_model, save_model};
use palm_model::{
    Forward, KvCache, LoraScope, PalmConfig, PalmParams, SampleSettings, generate, sample_next,
};
use palm_tests::assert_close;

fn small() -> (PalmParams, Rng) {
    let mut rng = Rng::new(7);
    let params = PalmParams::init(&PalmConfig::new(256, 32, 2, 2, 16), &mut rng).unwrap();
    (params, rng)
}

fn tokens(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), &[1, ids.len()]).unwrap()
}

/// Two rows decoded through the cache (a prefill of 5, then one token at a time, past two
/// growths of its buffers) give the logits of one full forward pass.
#[test]
fn kv_cache_decode_equals_full_forward() {
    let (params, _) = small();
    let _g = no_grad();
    let text = "Four score and seven years ago our fathers brought forth on this continent, a new \
                nation, conceived in Liberty, and dedicated to the proposition that all men are \
                created equal.";
    let first: Vec<u32> = text.bytes().map(u32::from).collect();
    let second: Vec<u32> = first.iter().rev().copied().collect();
    let n = first.len();
    let rows = |range: std::ops::Range<usize>| {
        let ids: Vec<u32> = [&first[range.clone()], &second[range.clone()]].concat();
        Tensor::from_vec(ids, &[2, range.len()]).unwrap()
    };
    let full = params
        .logits(&rows(0..n), &mut Forward::default())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut cache = KvCache::new(params.config.depth);
    let v = params.config.num_tokens;
    let mut steps = [Vec::new(), Vec::new()];
    let mut feed = |range: std::ops::Range<usize>, cache: &mut KvCache| {
        let len = range.len();
        let l = params
            .logits(
                &rows(range),
                &mut Forward {
                    cache: Some(cache),
                    ..Default::default()
                },
            )
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (r, out) in steps.iter_mut().enumerate() {
            out.extend_from_slice(&l[r * len * v..(r + 1) * len * v]);
        }
    };
    feed(0..5, &mut cache);
    assert_eq!(cache.capacity(), 64);
    for i in 5..n {
        feed(i..i + 1, &mut cache);
    }
    assert_eq!(cache.len(), n);
    assert!(
        n > 128,
        "the text is long enough for the buffers to grow twice"
    );
    assert_eq!(cache.capacity(), n.next_power_of_two());
    assert_close("cached logits", &steps.concat(), &full, 1e-4);
}

#[test]
fn greedy_and_top_k_1_pick_the_argmax() {
    let logits = [0.1, 2.0, -1.0, 1.9, 0.0];
    let mut rng = Rng::new(1);
    let greedy = SampleSettings {
        temperature: 0.0,
        ..Default::default()
    };
    assert_eq!(sample_next(&logits, &greedy, &mut rng), 1);
    let k1 = SampleSettings {
        temperature: 5.0,
        top_k: Some(1),
        ..Default::default()
    };
    for _ in 0..50 {
        assert_eq!(sample_next(&logits, &k1, &mut rng), 1);
    }
}

#[test]
fn top_k_and_top_p_restrict_the_support() {
    // Probabilities at temperature 1: softmax of these logits.
    let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0, -2.0];
    let mut rng = Rng::new(3);
    let k3 = SampleSettings {
        top_k: Some(3),
        ..Default::default()
    };
    let mut seen = [0usize; 6];
    for _ in 0..3000 {
        seen[sample_next(&logits, &k3, &mut rng) as usize] += 1;
    }
    assert!(
        seen[..3].iter().all(|&c| c > 0) && seen[3..].iter().all(|&c| c == 0),
        "{seen:?}"
    );
    // softmax ≈ [0.6364, 0.2341, 0.0861, 0.0317, ...]: p = 0.8 needs the first two, p = 0.9 three.
    for (p, keep) in [(0.5, 1), (0.8, 2), (0.9, 3)] {
        let s = SampleSettings {
            top_p: Some(p),
            ..Default::default()
        };
        let mut seen = [0usize; 6];
        for _ in 0..3000 {
            seen[sample_next(&logits, &s, &mut rng) as usize] += 1;
        }
        assert!(
            seen[..keep].iter().all(|&c| c > 0) && seen[keep..].iter().all(|&c| c == 0),
            "p {p}: {seen:?}"
        );
    }
    // Frequencies follow the renormalised distribution over the top 2: 0.731 / 0.269.
    let s = SampleSettings {
        top_k: Some(2),
        ..Default::default()
    };
    let n = 20000;
    let first = (0..n)
        .filter(|_| sample_next(&logits, &s, &mut rng) == 0)
        .count() as f64
        / n as f64;
    assert!((first - 0.7311).abs() < 0.015, "{first}");
}

#[test]
fn settings_are_validated() {
    let (params, mut rng) = small();
    for s in [
        SampleSettings {
            temperature: -1.0,
            ..Default::default()
        },
        SampleSettings {
            top_k: Some(0),
            ..Default::default()
        },
        SampleSettings {
            top_p: Some(1.5),
            ..Default::default()
        },
        SampleSettings {
            top_p: Some(0.0),
            ..Default::default()
        },
    ] {
        assert!(
            generate(&params, &[vec![65]], &s, None, &mut rng).is_err(),
            "{s:?}"
        );
    }
    assert!(
        generate(
            &params,
            &[vec![65], vec![65, 66]],
            &SampleSettings::default(),
            None,
            &mut rng
        )
        .is_err()
    );
    assert!(
        generate(
            &params,
            &[vec![]],
            &SampleSettings::default(),
            None,
            &mut rng
        )
        .is_err()
    );
    assert_eq!(
        SampleSettings::from_filter_thres(0.9, 256),
        (26, 0.100000024)
    );
}

#[test]
fn sampling_is_seeded() {
    let (params, _) = small();
    let s = SampleSettings {
        max_tokens: 12,
        ..Default::default()
    };
    let run = |seed| {
        generate(
            &params,
            &[vec![84, 104, 101]],
            &s,
            None,
            &mut Rng::new(seed),
        )
        .unwrap()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn a_finished_row_stops_while_others_go_on() {
    let (params, _) = small();
    let prompts = vec![vec![72u32, 105], vec![87, 111]];
    let greedy = SampleSettings {
        temperature: 0.0,
        max_tokens: 10,
        ..Default::default()
    };
    let free = generate(&params, &prompts, &greedy, None, &mut Rng::new(0)).unwrap();
    // An EOS that row 0 emits early and row 1 never emits.
    let (at, eos) = free[0]
        .iter()
        .enumerate()
        .find(|(_, t)| !free[1].contains(t))
        .map(|(i, &t)| (i, t))
        .expect("the two rows differ for this seed");
    let with_eos = SampleSettings {
        eos: Some(eos),
        ..greedy
    };
    let out = generate(&params, &prompts, &with_eos, None, &mut Rng::new(0)).unwrap();
    assert_eq!(out[0], free[0][..at].to_vec());
    assert_eq!(out[1], free[1]);
}

#[test]
fn checkpoint_round_trip_is_exact_and_zero_copy() {
    let (params, mut rng) = small();
    let mut lora = LoraScope::new(&params.config, "actor", 4, None, &mut rng).unwrap();
    // Non-zero B so the adapters matter.
    for t in lora.tensors_mut() {
        *t = Tensor::randn(t.dims(), 0.1, &mut rng).as_var();
    }
    let dir = std::env::temp_dir().join(format!("palm-model-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    save_model(&path, &params, &[&lora]).unwrap();
    let (loaded, file) = load_model(&path).unwrap();
    assert_eq!(loaded.config, params.config);
    for ((n, a), (_, b)) in params.named().iter().zip(loaded.named()) {
        assert_eq!(
            a.to_vec::<f32>().unwrap(),
            b.to_vec::<f32>().unwrap(),
            "{n}"
        );
        assert!(b.is_mapped(), "{n} was copied, not mapped");
    }
    let lora2 = load_lora(&file, &params.config, "actor").unwrap().unwrap();
    let ids = tokens(&[1, 2, 3, 4, 5]);
    let run = |p: &PalmParams, l: &LoraScope| {
        p.logits(
            &ids,
            &mut Forward {
                lora: Some(l),
                ..Default::default()
            },
        )
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
    };
    assert_eq!(run(&params, &lora), run(&loaded, &lora2));
    // The seed's buffers and the tied output weight are written for the seed to load.
    let f = SafeFile::open(&path).unwrap();
    for name in [
        "to_logits.weight",
        "norm.beta",
        "layers.1.fn.rotary_emb.inv_freq",
        "layers.0.fn.rotary_emb.scale",
    ] {
        assert!(f.contains(name), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_is_deterministic() {
    let run = || {
        let (mut params, mut rng) = small();
        let mut opt = palm_engine::AdamW::new(Default::default(), &params.tensors()).unwrap();
        for _ in 0..3 {
            let ids: Vec<u32> = (0..2 * 17).map(|_| 1 + rng.below(255) as u32).collect();
            let (loss, _) = params
                .loss(
                    &Tensor::from_vec(ids, &[2, 17]).unwrap(),
                    &mut Forward::default(),
                )
                .unwrap();
            let grads = loss.backward().unwrap();
            let mut ts = params.tensors();
            opt.step(&mut ts, &grads, 1e-3).unwrap();
            params.set_tensors(ts).unwrap();
        }
        params
            .tensors()
            .iter()
            .flat_map(|t| t.to_vec::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn adamw_refuses_parameters_it_was_not_made_for() {
    // Not a panic inside the update loop.
    palm_tests::assert_adamw_refuses_a_parameter_of_another_size(palm_engine::Device::Cpu);
}

/// `AdamW::clip_and_step` folds the clip's factor into the update: the same weights, moments and
/// norm, bit for bit, as `clip_grad_norm` then `step`, whether the clip bites or not; and a
/// non-finite norm stops it before anything changes.
#[test]
fn clip_and_step_is_clipping_then_stepping() {
    let mut rng = Rng::new(7);
    let start: Vec<Tensor> = [vec![5, 3], vec![4]]
        .iter()
        .map(|d| Tensor::randn(d, 1.0, &mut rng).as_var())
        .collect();
    let loss_of = |ps: &[Tensor], k: f32| {
        let l = ps[0].sqr().unwrap().sum_all().unwrap();
        l.add(&ps[1].sum_all().unwrap()).unwrap().scale(k).unwrap()
    };
    // Gradient norms well above and below the limit 1.0.
    for k in [4.0f32, 0.01] {
        let (mut a, mut b) = (start.clone(), start.clone());
        let mut opt_a = palm_engine::AdamW::new(Default::default(), &a).unwrap();
        let mut opt_b = palm_engine::AdamW::new(Default::default(), &b).unwrap();
        for _ in 0..3 {
            let mut ga = loss_of(&a, k).backward().unwrap();
            let na = palm_engine::clip_grad_norm(&mut ga, &a, 1.0).unwrap();
            opt_a.step(&mut a, &ga, 1e-2).unwrap();
            let gb = loss_of(&b, k).backward().unwrap();
            let nb = opt_b.clip_and_step(&mut b, &gb, 1e-2, 1.0).unwrap();
            assert_eq!(na.to_bits(), nb.to_bits());
            assert!((k > 1.0) == (na > 1.0), "norm {na} at scale {k}");
        }
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
        }
        assert_eq!(opt_a.state().unwrap(), opt_b.state().unwrap());
    }
    let mut ps = start.clone();
    let mut opt = palm_engine::AdamW::new(Default::default(), &ps).unwrap();
    let grads = loss_of(&ps, f32::NAN).backward().unwrap();
    let err = opt.clip_and_step(&mut ps, &grads, 1e-2, 1.0).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    assert_eq!(opt.step_count(), 0);
    for (x, y) in ps.iter().zip(&start) {
        assert_eq!(x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
    }
}

/// xPos's scales overflow f32 some 28,000 positions from the centre (then the logits were NaN
/// after a long generation): a decode that would pass the limit is refused before it starts,
/// and the rotary tables refuse such positions themselves.
#[test]
fn decoding_past_xpos_reach_is_refused_up_front() {
    let (params, mut rng) = small();
    let max = params.config.max_decode_len();
    assert!((20_000..40_000).contains(&max), "{max}");
    let s = SampleSettings {
        max_tokens: max,
        ..Default::default()
    };
    let err = generate(&params, &[vec![1, 2]], &s, None, &mut rng)
        .expect_err("past the reach")
        .to_string();
    assert!(
        err.contains("xPos") && err.contains(&max.to_string()),
        "{err}"
    );
    let reach = palm_engine::RopeTables::xpos_reach(512.0);
    assert!(palm_engine::RopeTables::new(16, reach, 1, 0.0, true, 512.0).is_ok());
    assert!(palm_engine::RopeTables::new(16, reach + 1, 1, 0.0, true, 512.0).is_err());
    assert!(palm_engine::RopeTables::new(16, 0, 2 * reach + 3, reach as f64, true, 512.0).is_err());
    assert!(palm_engine::RopeTables::new(16, reach + 1, 1, 0.0, false, 512.0).is_ok());
    let mut plain = params.config.clone();
    plain.use_xpos = false;
    assert_eq!(plain.max_decode_len(), usize::MAX);
}
