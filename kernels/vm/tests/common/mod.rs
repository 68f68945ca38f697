//! Helpers shared by the VM's integration tests: buffers in VM memory, launches, fault matching.

#![allow(dead_code)]

use palm_ptx_vm::{Arg, Check, Counters, Error, Fault, LaunchConfig, Memory, Module, Settings};

/// Parse a module or fail the test with the parser's message.
pub fn module(name: &str, text: &str) -> Module {
    palm_ptx_vm::parse(name, text).unwrap_or_else(|e| panic!("{e}"))
}

/// A 1-D launch.
pub fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        shared_bytes: 0,
    }
}

/// Launch `kernel` over a 1-D grid with default settings.
pub fn launch(
    m: &Module,
    kernel: &str,
    grid: u32,
    block: u32,
    args: &[Arg],
    mem: &Memory,
) -> palm_ptx_vm::Result<Counters> {
    palm_ptx_vm::launch(
        m,
        kernel,
        &cfg(grid, block),
        args,
        mem,
        &Settings::default(),
    )
}

/// Launch and fail the test with the VM's finding if there is one.
pub fn run(
    m: &Module,
    kernel: &str,
    grid: u32,
    block: u32,
    args: &[Arg],
    mem: &Memory,
) -> Counters {
    launch(m, kernel, grid, block, args, mem).unwrap_or_else(|e| panic!("{kernel}: {e}"))
}

/// The fault of a launch that must fail a check.
pub fn fault(r: palm_ptx_vm::Result<Counters>) -> Fault {
    match r {
        Err(Error::Fault(f)) => *f,
        Err(e) => panic!("expected a fault, got another error: {e}"),
        Ok(_) => panic!("expected a fault, the launch passed"),
    }
}

/// Assert the fault's check, with the whole fault in the message when it differs.
pub fn assert_check(f: &Fault, check: Check) {
    assert_eq!(f.check, check, "wrong check; the fault: {f}");
}

/// Bytes of a slice of plain values (little-endian, as the device stores them).
pub fn bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A new allocation holding `v`.
pub fn put_u32(mem: &Memory, v: &[u32]) -> u64 {
    let p = mem.alloc(4 * v.len());
    mem.write(p, &bytes_u32(v)).unwrap();
    p
}

pub fn put_i32(mem: &Memory, v: &[i32]) -> u64 {
    let u: Vec<u32> = v.iter().map(|&x| x as u32).collect();
    put_u32(mem, &u)
}

pub fn put_f32(mem: &Memory, v: &[f32]) -> u64 {
    let u: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    put_u32(mem, &u)
}

pub fn put_u16(mem: &Memory, v: &[u16]) -> u64 {
    let p = mem.alloc(2 * v.len());
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write(p, &b).unwrap();
    p
}

/// A new allocation of `n` 4-byte elements, never written (a kernel output: reading it back
/// with initcheck proves the kernel wrote every element).
pub fn out32(mem: &Memory, n: usize) -> u64 {
    mem.alloc(4 * n)
}

/// Read `n` u32 back, every byte required to have been written.
pub fn get_u32(mem: &Memory, p: u64, n: usize) -> Vec<u32> {
    let mut b = vec![0u8; 4 * n];
    mem.read(p, &mut b, true).unwrap_or_else(|e| panic!("{e}"));
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn get_i32(mem: &Memory, p: u64, n: usize) -> Vec<i32> {
    get_u32(mem, p, n).into_iter().map(|x| x as i32).collect()
}

pub fn get_f32(mem: &Memory, p: u64, n: usize) -> Vec<f32> {
    get_u32(mem, p, n).into_iter().map(f32::from_bits).collect()
}

pub fn get_u64(mem: &Memory, p: u64, n: usize) -> Vec<u64> {
    let mut b = vec![0u8; 8 * n];
    mem.read(p, &mut b, true).unwrap_or_else(|e| panic!("{e}"));
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// bf16 bits of an f32 that is exactly representable in bf16 (test inputs are chosen so).
pub fn bf16_exact(x: f32) -> u16 {
    let b = x.to_bits();
    assert_eq!(b & 0xFFFF, 0, "{x} is not exactly a bf16");
    (b >> 16) as u16
}

pub fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The PTX line number in a fault's `at` (`file.ptx:LINE …`).
pub fn ptx_line(f: &Fault, file: &str) -> usize {
    let rest =
        f.at.strip_prefix(&format!("{file}:"))
            .unwrap_or_else(|| panic!("`at` does not start with {file}: {f}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no PTX line number in `at`: {f}"))
}
