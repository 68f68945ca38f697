//! The VM's sanitizer finds each seeded defect of `kernels/bugs.cu`, and only it: every kernel
//! is launched as its header documents, on inputs fully written from the host, and the launch
//! must fail with the check the defect calls for, naming the kernel, the PTX line of the
//! faulting instruction and the `.cu` line it came from. Where it is cheap, the same kernel
//! launched so that the defect cannot fire (or the correct twin kernel) passes.

mod common;

use common::*;
use palm_ptx_vm::{Arg, Check, Fault, Memory, Module};

const PTX: &str = include_str!("kernels/bugs.ptx");

fn bugs() -> Module {
    module("bugs.ptx", PTX)
}

/// The common shape of every finding: the check, the kernel, a PTX line whose text is the
/// faulting instruction (starting with `opcode`), and the `.cu` line of the defect.
fn assert_fault(f: &Fault, check: Check, kernel: &str, opcode: &str, cu_lines: &[u32]) {
    assert_check(f, check);
    assert_eq!(f.kernel, kernel, "{f}");
    assert!(
        f.instruction.starts_with(opcode),
        "expected the fault on `{opcode}…`: {f}"
    );
    let line = ptx_line(f, "bugs.ptx");
    let text = PTX.lines().nth(line - 1).unwrap_or("").trim();
    let want: String = f
        .instruction
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let got: String = text
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        got, want,
        "bugs.ptx:{line} is not the faulting instruction: {f}"
    );
    assert!(
        cu_lines
            .iter()
            .any(|l| f.at.contains(&format!("bugs.cu:{l})"))
                || f.at.contains(&format!("bugs.cu:{l},"))),
        "expected bugs.cu:{cu_lines:?} in `at`: {f}"
    );
    assert!(!f.msg.is_empty());
}

fn floats(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32) * 0.5 - 7.0).collect()
}

// ---------------------------------------------------------------------------------------- (a)

#[test]
fn oob_tail_reads_past_both_buffers() {
    let m = bugs();
    let mem = Memory::new();
    let n = 300;
    let x = put_f32(&mem, &floats(n));
    let y = out32(&mem, n);
    let f = fault(launch(
        &m,
        "bug_oob_tail",
        2,
        256,
        &[Arg::B64(x), Arg::B64(y), Arg::B32(n as u32)],
        &mem,
    ));
    assert_fault(&f, Check::Memcheck, "bug_oob_tail", "ld.global.f32", &[28]);
    // The first offender: i = n = 300, thread 44 of block 1, reading x + 4n.
    assert_eq!(f.block, [1, 0, 0], "{f}");
    assert_eq!(f.thread, [44, 0, 0], "{f}");
    assert!(f.msg.contains(&format!("{:#x}", x + 4 * n as u64)), "{f}");
}

#[test]
fn oob_tail_without_a_tail_is_clean() {
    // n a multiple of 256: the missing guard is never needed.
    let m = bugs();
    let mem = Memory::new();
    let n = 512;
    let xs = floats(n);
    let x = put_f32(&mem, &xs);
    let y = out32(&mem, n);
    run(
        &m,
        "bug_oob_tail",
        2,
        256,
        &[Arg::B64(x), Arg::B64(y), Arg::B32(n as u32)],
        &mem,
    );
    let got = get_f32(&mem, y, n);
    for i in 0..n {
        assert_eq!(got[i], 2.0 * xs[i], "y[{i}]");
    }
}

// ---------------------------------------------------------------------------------------- (b)

#[test]
fn missing_barrier_is_a_race() {
    let m = bugs();
    let mem = Memory::new();
    let x = put_f32(&mem, &floats(128));
    let out = out32(&mem, 128);
    let f = fault(launch(
        &m,
        "bug_missing_barrier",
        1,
        128,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    // The hazard is reported at whichever of the two accesses comes second: the store of
    // buf[t] (line 44) or the load of buf[(t+32)%128] (line 46).
    assert_fault(&f, Check::Racecheck, "bug_missing_barrier", "", &[44, 46]);
    assert!(
        f.instruction.starts_with("st.shared.f32") || f.instruction.starts_with("ld.shared.f32"),
        "{f}"
    );
    assert!(f.msg.contains("hazard"), "{f}");
}

// ---------------------------------------------------------------------------------------- (c)

#[test]
fn wrong_fragment_reads_unwritten_padding() {
    let m = bugs();
    let mem = Memory::new();
    let a: Vec<u16> = (0..256)
        .map(|i| bf16_exact(((i % 13) as f32) - 6.0))
        .collect();
    let b: Vec<u16> = (0..128)
        .map(|i| bf16_exact(((i % 5) as f32) - 2.0))
        .collect();
    let pa = put_u16(&mem, &a);
    let pb = put_u16(&mem, &b);
    let c = out32(&mem, 128);
    let f = fault(launch(
        &m,
        "bug_wrong_fragment",
        1,
        32,
        &[Arg::B64(pa), Arg::B64(pb), Arg::B64(c)],
        &mem,
    ));
    assert_fault(
        &f,
        Check::Initcheck,
        "bug_wrong_fragment",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        &[90],
    );
    // Lanes 16..31 address the padding (sA + 48r + 32): the first of them is lane 16, row 0.
    assert_eq!(f.thread, [16, 0, 0], "{f}");
}

// ---------------------------------------------------------------------------------------- (d)

#[test]
fn cp_async_destination_read_before_wait() {
    let m = bugs();
    let mem = Memory::new();
    let x = put_f32(&mem, &floats(128));
    let out = out32(&mem, 128);
    let f = fault(launch(
        &m,
        "bug_cp_async_early",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_fault(
        &f,
        Check::Synccheck,
        "bug_cp_async_early",
        "ld.shared.v4.f32",
        &[128],
    );
    assert_eq!(f.thread, [0, 0, 0], "{f}");
    assert!(f.msg.contains("cp.async"), "{f}");
}

// ---------------------------------------------------------------------------------------- (e)

#[test]
fn shfl_names_lanes_that_do_not_execute_it() {
    let m = bugs();
    let mem = Memory::new();
    let x = put_f32(&mem, &floats(32));
    let out = out32(&mem, 32);
    let f = fault(launch(
        &m,
        "bug_shfl_inactive",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    // The shfl comes from __shfl_sync in a CUDA header, inlined at bugs.cu:148.
    assert_fault(
        &f,
        Check::Synccheck,
        "bug_shfl_inactive",
        "shfl.sync.idx.b32",
        &[148],
    );
    assert!(f.thread[0] < 16, "only lanes 0..15 execute the shfl: {f}");
    assert!(
        f.msg.contains("0xffff0000"),
        "lanes 16..31 are named missing: {f}"
    );
}

// ---------------------------------------------------------------------------------------- (f)

#[test]
fn barrier_under_a_condition_that_splits_a_warp() {
    let m = bugs();
    let mem = Memory::new();
    let out = out32(&mem, 64);
    let f = fault(launch(
        &m,
        "bug_divergent_barrier",
        1,
        64,
        &[Arg::B64(out)],
        &mem,
    ));
    assert_fault(
        &f,
        Check::Synccheck,
        "bug_divergent_barrier",
        "bar.sync",
        &[163],
    );
    // Warp 1 is split: threads 32..47 reach the barrier, 48..63 do not.
    assert!((32..48).contains(&f.thread[0]), "{f}");
    assert!(
        f.msg.contains("0xffff0000"),
        "threads 48..63 are named missing: {f}"
    );
}

#[test]
fn barrier_under_a_warp_uniform_condition_is_clean() {
    // The same kernel with a block of 48 threads: the condition `t < 48` holds for every thread,
    // so all of them reach the barrier.
    let m = bugs();
    let mem = Memory::new();
    let out = out32(&mem, 48);
    run(&m, "bug_divergent_barrier", 1, 48, &[Arg::B64(out)], &mem);
    let got = get_f32(&mem, out, 48);
    for (t, v) in got.iter().enumerate() {
        assert_eq!(*v, t as f32);
    }
}

// ---------------------------------------------------------------------------------------- (g)

#[test]
fn uninitialised_shared_read() {
    let m = bugs();
    let mem = Memory::new();
    let out = out32(&mem, 64);
    let f = fault(launch(
        &m,
        "bug_uninit_shared",
        1,
        64,
        &[Arg::B64(out)],
        &mem,
    ));
    assert_fault(
        &f,
        Check::Initcheck,
        "bug_uninit_shared",
        "ld.shared.f32",
        &[182],
    );
    // Threads 0..31 read s[63 - t], never written.
    assert!(f.thread[0] < 32, "{f}");
}

#[test]
fn uninitialised_shared_read_is_reported_deterministically() {
    // CTAs and warps run in a fixed order: the same launch reports the same first finding.
    let m = bugs();
    let mem = Memory::new();
    let out = out32(&mem, 64);
    let a = fault(launch(
        &m,
        "bug_uninit_shared",
        1,
        64,
        &[Arg::B64(out)],
        &mem,
    ));
    let b = fault(launch(
        &m,
        "bug_uninit_shared",
        1,
        64,
        &[Arg::B64(out)],
        &mem,
    ));
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------- (h)

#[test]
fn misaligned_vector_load() {
    let m = bugs();
    let mem = Memory::new();
    let x = put_f32(&mem, &floats(129));
    assert_eq!(x % 16, 0);
    let out = out32(&mem, 32);
    let f = fault(launch(
        &m,
        "bug_misaligned",
        1,
        32,
        &[Arg::B64(x), Arg::B64(out)],
        &mem,
    ));
    assert_fault(
        &f,
        Check::Memcheck,
        "bug_misaligned",
        "ld.global.v4.f32",
        &[195],
    );
    assert_eq!(f.thread, [0, 0, 0], "{f}");
    assert!(f.msg.contains("misaligned"), "{f}");
    assert!(f.msg.contains(&format!("{:#x}", x + 4)), "{f}");
}

// ------------------------------------------------------------------------------------------

#[test]
fn every_bug_kernel_is_covered() {
    let m = bugs();
    let names: Vec<&str> = m.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "bug_oob_tail",
            "bug_missing_barrier",
            "bug_wrong_fragment",
            "bug_cp_async_early",
            "bug_shfl_inactive",
            "bug_divergent_barrier",
            "bug_uninit_shared",
            "bug_misaligned",
        ]
    );
}
