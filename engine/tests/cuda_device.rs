//! The CUDA device layer. CPU tests: discovery fails cleanly without a driver, the skip rule,
//! and the launch checks against the committed PTX. GPU tests skip (printing why) without a GPU
//! and fail instead under `PALM_REQUIRE_GPU=1`.

use palm_engine::cuda::launch::{
    self, DEFAULT_DYNAMIC_SMEM, KArg, LaunchCfg, Param, check_launch, declared_dynamic_smem,
};
use palm_engine::cuda::{self, CudaDevice, gpu_or_skip, gpu_or_skip_with, gpu_required, probe};
use palm_engine::{DeviceRequest, Error};
use palm_kernels::{ELEMENTWISE, FAMILIES, MATMUL};

/// The messages discovery may fail with; each names its cause.
fn is_clear_no_gpu_message(msg: &str) -> bool {
    [
        "no CUDA driver (libcuda.so) found",
        "reports no GPU",
        "compute capability",
        "the engine's PTX needs 13.0",
        "failed:",
        "panicked",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

// ----- CPU -----

#[test]
fn probe_never_panics_and_explains() {
    match probe() {
        Ok(devices) => {
            assert!(!devices.is_empty());
            assert!(devices.iter().any(|d| d.check_supported().is_ok()));
            for d in &devices {
                assert!(!d.name.is_empty() && d.total_memory > 0, "{d:?}");
            }
        }
        Err(Error::NoCuda(msg)) => {
            eprintln!("probe: {msg}");
            assert!(is_clear_no_gpu_message(&msg), "unclear: {msg}");
            assert!(
                !gpu_required(),
                "PALM_REQUIRE_GPU=1 but probe failed: {msg}"
            );
        }
        Err(other) => panic!("probe returned a non-NoCuda error: {other:?}"),
    }
    // Twice: nothing is left half-initialised.
    assert_eq!(probe().is_ok(), probe().is_ok());
}

#[test]
fn auto_picks_the_gpu_when_usable_and_explains_the_fallback() {
    let (device, notice) = DeviceRequest::Auto.resolve().unwrap();
    match cuda::check_available() {
        Ok(()) => {
            assert_eq!(device, palm_engine::Device::Cuda(0));
            assert!(notice.is_none());
            assert!(DeviceRequest::Cuda.resolve().is_ok());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(is_clear_no_gpu_message(&msg), "unclear: {msg}");
            assert!(!gpu_required(), "PALM_REQUIRE_GPU=1 but: {msg}");
            assert_eq!(device, palm_engine::Device::Cpu);
            assert!(notice.unwrap().contains("using the CPU"));
            let err = DeviceRequest::Cuda.resolve().unwrap_err().to_string();
            assert!(err.contains("CUDA is not available"), "{err}");
        }
    }
}

#[test]
fn device_get_fails_cleanly_without_a_gpu() {
    if probe().is_ok() {
        eprintln!("skipped: device_get_fails_cleanly_without_a_gpu: a GPU is present");
        return;
    }
    // cuda:0 may be the PTX VM here (other tests in this binary fall back to it); cuda:7 never is.
    let e = CudaDevice::get(7).unwrap_err();
    assert!(matches!(e, Error::NoCuda(_)), "{e:?}");
}

#[test]
fn skip_rule() {
    if probe().is_ok() {
        assert!(gpu_or_skip_with("skip_rule", false).is_some());
        assert!(gpu_or_skip_with("skip_rule", true).is_some());
        return;
    }
    // Without a GPU the tests run on the PTX VM, unless a GPU is required.
    let vm = gpu_or_skip_with("skip_rule", false).expect("the PTX VM opens without a GPU");
    assert!(vm.is_emulated());
    if std::env::var("PALM_CUDA_EMULATE").is_ok_and(|v| v.trim() == "1") {
        assert!(gpu_or_skip_with("skip_rule", true).is_some());
        return;
    }
    let failed = std::panic::catch_unwind(|| gpu_or_skip_with("skip_rule", true));
    let payload = failed.expect_err("PALM_REQUIRE_GPU=1 must turn a skip into a failure");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        msg.contains("PALM_REQUIRE_GPU=1") && msg.contains("skip_rule"),
        "{msg}"
    );
}

#[test]
fn every_declared_kernel_has_a_plain_ptx_signature() {
    for fam in FAMILIES {
        for &name in fam.functions {
            let params = launch::ptx_params(fam.ptx, name)
                .unwrap_or_else(|| panic!("{name}: no .entry in {}.ptx", fam.name));
            assert!(!params.is_empty(), "{name}");
            assert!(!params.contains(&Param::Other), "{name}: {params:?}");
            assert_eq!(launch::find_family(name).unwrap().name, fam.name);
        }
    }
    use Param::*;
    // fill_fwd_f32(f32* out, i64 n, f32 value)
    assert_eq!(
        launch::ptx_params(ELEMENTWISE.ptx, "fill_fwd_f32").unwrap(),
        [U64, U64, F32]
    );
    // matmul(A, B, C, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, alpha, beta)
    let mm = launch::ptx_params(MATMUL.ptx, "matmul_nn_bf16").unwrap();
    assert_eq!(
        mm,
        [
            U64, U64, U64, U32, U32, U32, U32, U32, U32, U64, U64, U64, F32, F32
        ]
    );
    // No prefix confusion: `fill_fwd_f32` is not `fill_fwd_f32x`, matmul_nn_bf16 not _64.
    assert!(launch::ptx_params(ELEMENTWISE.ptx, "fill_fwd_f3").is_none());
    assert_eq!(
        launch::ptx_params(MATMUL.ptx, "matmul_nn_bf16_64")
            .unwrap()
            .len(),
        14
    );
}

#[test]
fn unknown_kernel_names_are_clear_errors() {
    let e = launch::declared_kernel(&ELEMENTWISE, "fill_fwd_f64")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fill_fwd_f64") && e.contains("elementwise") && e.contains("fill_fwd_f32"));
    let e = launch::declared_kernel(&ELEMENTWISE, "matmul_nn_bf16")
        .unwrap_err()
        .to_string();
    assert!(e.contains("it is in family 'matmul'"), "{e}");
    assert_eq!(
        launch::declared_kernel(&ELEMENTWISE, "fill_fwd_f32").unwrap(),
        "fill_fwd_f32"
    );
    assert!(launch::family_by_name("attention").is_some());
    assert!(launch::family_by_name("nope").is_none());
}

#[test]
fn large_shared_memory_table_names_real_kernels() {
    let mut n = 0;
    for fam in FAMILIES {
        for &name in fam.functions {
            if let Some(bytes) = declared_dynamic_smem(name) {
                assert!(bytes > DEFAULT_DYNAMIC_SMEM, "{name}");
                n += 1;
            }
        }
    }
    assert_eq!(n, 8, "6 big-tile matmuls + attention d128 fwd and bwd");
}

#[test]
fn launch_checks() {
    let params = [Param::U64, Param::U64, Param::F32];
    let ok_args = [KArg::Ptr(0x1000), KArg::I64(10), KArg::F32(1.5)];
    let cfg = LaunchCfg::grid_stride(10, 256, 132);
    check_launch("fill_fwd_f32", &params, &ok_args, &cfg, 48 * 1024).unwrap();
    let err = |args: &[KArg], cfg: LaunchCfg| {
        check_launch("fill_fwd_f32", &params, args, &cfg, 48 * 1024)
            .unwrap_err()
            .to_string()
    };
    let e = err(&ok_args[..2], cfg);
    assert!(
        e.contains("fill_fwd_f32") && e.contains("2 arguments given, the kernel takes 3"),
        "{e}"
    );
    let e = err(&[KArg::Ptr(0), KArg::I32(10), KArg::F32(1.5)], cfg);
    assert!(e.contains("argument 1"), "{e}");
    let e = err(&[KArg::Ptr(0), KArg::I64(10), KArg::U32(1)], cfg);
    assert!(e.contains("argument 2"), "{e}");
    assert!(err(&ok_args, LaunchCfg::new((0, 1, 1), (256, 1, 1), 0)).contains("empty grid"));
    assert!(err(&ok_args, LaunchCfg::new((1, 1, 1), (2048, 1, 1), 0)).contains("1024 threads"));
    assert!(err(&ok_args, LaunchCfg::new((1, 1, 1), (32, 32, 2), 0)).contains("1024 threads"));
    assert!(err(&ok_args, LaunchCfg::new((1, 70000, 1), (32, 1, 1), 0)).contains("grid"));
    assert!(err(&ok_args, LaunchCfg::new((1, 1, 1), (32, 1, 1), 50_000)).contains("shared memory"));
}

#[test]
fn launch_shapes() {
    assert_eq!(LaunchCfg::grid_stride(0, 256, 132).grid, (1, 1, 1));
    assert_eq!(LaunchCfg::grid_stride(1000, 256, 132).grid, (4, 1, 1));
    assert_eq!(
        LaunchCfg::grid_stride(1 << 30, 256, 132).grid,
        (16 * 132, 1, 1)
    );
    assert_eq!(LaunchCfg::rows(100_000, 1024, 0).grid, (65535, 1, 1));
    assert_eq!(LaunchCfg::rows(3, 128, 64).shared_bytes, 64);
}

// ----- GPU (skipped without one) -----

/// GPU tests share one device and its pool; one at a time keeps pool assertions exact.
static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    GPU.lock().unwrap_or_else(|p| p.into_inner())
}

/// A real GPU: these tests load kernel modules, time events and exhaust device memory, which the
/// PTX VM (`PALM_CUDA_EMULATE=1`, or no GPU) does not model.
fn hardware(test: &str) -> Option<std::sync::Arc<CudaDevice>> {
    let dev = gpu_or_skip(test)?;
    if dev.is_emulated() {
        eprintln!("skipped: {test}: needs a real GPU, not the PTX VM");
        return None;
    }
    Some(dev)
}

#[test]
fn gpu_discovery() {
    let _serial = serial();
    let Some(dev) = hardware("gpu_discovery") else {
        return;
    };
    let info = dev.info();
    eprintln!("{info}");
    assert_eq!(info.compute_capability, cuda::REQUIRED_CAPABILITY);
    assert!(info.total_memory > 0 && !info.name.is_empty());
    assert!(probe().unwrap().contains(info));
    assert!(dev.num_sms() > 0);
    // One device per ordinal, shared.
    assert!(std::sync::Arc::ptr_eq(
        &dev,
        &CudaDevice::get(info.ordinal).unwrap()
    ));
}

#[test]
fn gpu_loads_every_family_and_kernel() {
    let _serial = serial();
    let Some(dev) = hardware("gpu_loads_every_family_and_kernel") else {
        return;
    };
    for fam in FAMILIES {
        for &name in fam.functions {
            let k = dev
                .kernel(fam, name)
                .unwrap_or_else(|e| panic!("{}/{name}: {e}", fam.name));
            assert_eq!((k.family, k.name), (fam.name, name));
            assert_eq!(k.params(), launch::ptx_params(fam.ptx, name).unwrap());
        }
    }
    let again = dev.kernel_by_name("matmul_nn_bf16").unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &again,
        &dev.kernel(&MATMUL, "matmul_nn_bf16").unwrap()
    ));
    let e = dev
        .kernel(&ELEMENTWISE, "no_such_kernel")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no_such_kernel") && e.contains("elementwise"),
        "{e}"
    );
}

#[test]
fn gpu_fill_round_trip_through_the_pool() {
    let _serial = serial();
    let Some(dev) = hardware("gpu_fill_round_trip_through_the_pool") else {
        return;
    };
    let n = 1_000_003usize; // not a multiple of the 8-wide vector path
    let fill = dev.kernel(&ELEMENTWISE, "fill_fwd_f32").unwrap();
    // Poison first, then fill all but the last 5 elements.
    let buf = dev.upload(&vec![f32::NAN; n]).unwrap();
    let m = n - 5;
    let cfg = LaunchCfg::grid_stride(m, 256, dev.num_sms());
    dev.launch(
        &fill,
        cfg,
        &[buf.arg(), KArg::I64(m as i64), KArg::F32(3.25)],
    )
    .unwrap();
    let host: Vec<f32> = dev.to_vec(&buf, n).unwrap();
    assert!(host[..m].iter().all(|&x| x == 3.25));
    assert!(
        host[m..].iter().all(|x| x.is_nan()),
        "the fill wrote past n"
    );
    let st = dev.pool_stats();
    assert!(st.in_use >= 4 * n && st.reserved >= st.in_use, "{st:?}");
    // Freed and asked again: with the pool on, the same block comes back from the cache.
    let ptr = buf.ptr();
    drop(buf);
    let again = dev.alloc(4 * n).unwrap();
    if dev.pool_enabled() {
        assert_eq!(again.ptr(), ptr);
    }
    // Wrong arguments are refused before the driver sees them.
    let e = dev.launch(&fill, cfg, &[again.arg(), KArg::I32(1), KArg::F32(0.0)]);
    assert!(matches!(e, Err(Error::Invalid(_))), "{e:?}");
    dev.synchronize().unwrap();
}

#[test]
fn gpu_event_timed_launch() {
    let _serial = serial();
    let Some(dev) = hardware("gpu_event_timed_launch") else {
        return;
    };
    let fill = dev.kernel(&ELEMENTWISE, "fill_fwd_f32").unwrap();
    let n = 1 << 24;
    let buf = dev.alloc(4 * n).unwrap();
    let cfg = LaunchCfg::grid_stride(n, 256, dev.num_sms());
    let args = [buf.arg(), KArg::I64(n as i64), KArg::F32(1.0)];
    let ms = dev.launch_timed(&fill, cfg, &args).unwrap();
    assert!(ms.is_finite() && ms > 0.0, "{ms}");
    let timer = dev.timer().unwrap();
    for _ in 0..10 {
        dev.launch(&fill, cfg, &args).unwrap();
    }
    let total = timer.elapsed_ms(&dev).unwrap();
    let gbps = 10.0 * 4.0 * n as f64 / (total as f64 * 1e-3) / 1e9;
    eprintln!("fill_fwd_f32 {n} elements: {ms:.3} ms once, {total:.3} ms for 10 ({gbps:.0} GB/s)");
    assert!(total.is_finite() && total > 0.0);
}

#[test]
fn gpu_out_of_memory_is_an_error() {
    let _serial = serial();
    let Some(dev) = hardware("gpu_out_of_memory_is_an_error") else {
        return;
    };
    let too_much = dev.info().total_memory * 2;
    match dev.alloc(too_much) {
        Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, too_much),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // The device still works afterwards.
    let b = dev.alloc_zeroed(1 << 20).unwrap();
    let host: Vec<u32> = dev.to_vec(&b, 1 << 18).unwrap();
    assert!(host.iter().all(|&x| x == 0));
}
