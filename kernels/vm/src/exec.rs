//! Running a launch: CTAs in parallel, each CTA's warps scheduled until they all wait at the
//! barrier or exit, each warp's lanes in lockstep under a SIMT stack.

use crate::counters::{Counters, Family};
use crate::ir::*;
use crate::memory::{Memory, Regions};
use crate::numeric::{self, bf16_to_f32, f32_to_bf16, ftz};
use crate::{Check, Error, Fault, Result};
use rayon::prelude::*;
use std::sync::Mutex;

/// A kernel argument, laid out by the kernel's parameter list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A 4-byte parameter (`.u32/.s32/.b32/.f32`).
    B32(u32),
    /// An 8-byte parameter (`.u64/.s64/.b64`, pointers).
    B64(u64),
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// How the VM runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Host threads running CTAs (1 = in order, deterministic atomics; 0 = rayon's default).
    pub threads: usize,
    /// Shared memory a CTA may use, static + dynamic (H100/H200: 227 KB).
    pub max_shared: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            threads: 0,
            max_shared: 232_448,
        }
    }
}

/// One entry of a warp's SIMT stack.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pc: u32,
    mask: u32,
    /// Where these lanes rejoin the entry below (`u32::MAX`: only at exit).
    rpc: u32,
}

/// A `cp.async` issued and not yet landed.
#[derive(Debug, Clone, Copy)]
struct Pending {
    lane: u8,
    /// Commit group (`u32::MAX` until committed).
    group: u32,
    dst: u32,
    len: u8,
    data: [u8; 16],
}

struct Warp {
    r32: Vec<[u32; 32]>,
    r64: Vec<[u64; 32]>,
    pred: Vec<u32>,
    stack: Vec<Entry>,
    /// Lanes that exist (the last warp of a block may be partial).
    valid: u32,
    exited: u32,
    at_bar: bool,
    pending: Vec<Pending>,
    committed: [u32; 32],
}

impl Warp {
    fn new(k: &Kernel) -> Self {
        Warp {
            r32: vec![[0; 32]; k.n32 as usize],
            r64: vec![[0; 32]; k.n64 as usize],
            pred: vec![0; k.npred as usize],
            stack: Vec::with_capacity(16),
            valid: 0,
            exited: 0,
            at_bar: false,
            pending: Vec::new(),
            committed: [0; 32],
        }
    }

    fn reset(&mut self, valid: u32) {
        self.stack.clear();
        self.stack.push(Entry {
            pc: 0,
            mask: valid,
            rpc: u32::MAX,
        });
        self.valid = valid;
        self.exited = 0;
        self.at_bar = false;
        self.pending.clear();
        self.committed = [0; 32];
    }

    fn done(&self) -> bool {
        self.stack.is_empty()
    }
}

/// Shadow state of one 2-byte granule of shared memory.
#[derive(Debug, Clone, Copy, Default)]
struct Gran {
    /// The CTA generation that last wrote it (initcheck).
    init: u32,
    w_ep: u32,
    r_ep: u32,
    a_ep: u32,
    w_tid: u16,
    r_tid: u16,
    a_tid: u16,
    /// The warp of the readers (`MULTI`: several warps).
    r_warp: u16,
    /// `bar.warp.sync` count of the writer's / readers' warp at the access (a later warp sync
    /// orders them before that warp's next accesses).
    w_ws: u32,
    r_ws: u32,
    /// Thread id + 1 of a `cp.async` in flight into it, else 0.
    inflight: u16,
}

const MULTI: u16 = u16::MAX;

/// Per-host-thread scratch reused across CTAs.
struct Scratch {
    warps: Vec<Warp>,
    shared: Vec<u8>,
    shadow: Vec<Gran>,
    cta_gen: u32,
    epoch: u32,
}

/// Everything fixed for one launch.
struct Launch<'a> {
    m: &'a Module,
    k: &'a Kernel,
    cfg: LaunchConfig,
    params: Vec<u8>,
    regions: Regions,
    shared_total: usize,
    nthreads: u32,
    nwarps: u32,
}

/// Run `kernel` of `module` over `cfg` with `args` on `mem`. Returns the launch's counters, or
/// the first fault (lowest CTA) a check found.
pub fn launch(
    module: &Module,
    kernel: &str,
    cfg: &LaunchConfig,
    args: &[Arg],
    mem: &Memory,
    settings: &Settings,
) -> Result<Counters> {
    let k = module
        .kernel(kernel)
        .ok_or_else(|| Error::Launch(format!("no kernel '{kernel}' in {}", module.name)))?;
    let bad = |m: String| Err(Error::Launch(format!("launch of {kernel}: {m}")));
    if args.len() != k.params.len() {
        return bad(format!(
            "{} arguments given, the kernel takes {}",
            args.len(),
            k.params.len()
        ));
    }
    let mut params = vec![0u8; k.param_bytes as usize];
    for (i, (p, a)) in k.params.iter().zip(args).enumerate() {
        let o = p.offset as usize;
        match (p.ty.bytes(), a) {
            (4, Arg::B32(v)) => params[o..o + 4].copy_from_slice(&v.to_le_bytes()),
            (8, Arg::B64(v)) => params[o..o + 8].copy_from_slice(&v.to_le_bytes()),
            _ => {
                return bad(format!(
                    "argument {i} is {a:?}, the PTX declares {:?}",
                    p.ty
                ));
            }
        }
    }
    let [bx, by, bz] = cfg.block;
    let [gx, gy, gz] = cfg.grid;
    let nthreads = bx as u64 * by as u64 * bz as u64;
    if gx == 0 || gy == 0 || gz == 0 || nthreads == 0 {
        return bad(format!(
            "empty grid {:?} or block {:?}",
            cfg.grid, cfg.block
        ));
    }
    if nthreads > 1024 || bz > 64 || gy > 65535 || gz > 65535 || gx > i32::MAX as u32 {
        return bad(format!(
            "grid {:?} / block {:?} beyond CUDA's limits",
            cfg.grid, cfg.block
        ));
    }
    if let Some(mx) = k.maxntid
        && nthreads > mx[0] as u64 * mx[1] as u64 * mx[2] as u64
    {
        return bad(format!(
            "block {:?} has more threads than .maxntid {mx:?}",
            cfg.block
        ));
    }
    if let Some(rq) = k.reqntid
        && cfg.block != rq
    {
        return bad(format!(
            "block {:?} differs from .reqntid {rq:?}",
            cfg.block
        ));
    }
    let shared_total = k.extern_offset as u64 + cfg.shared_bytes as u64;
    let shared_total = if cfg.shared_bytes == 0 {
        k.static_shared as u64
    } else {
        shared_total
    };
    if shared_total > settings.max_shared as u64 {
        return bad(format!(
            "{} B of shared memory ({} static + {} dynamic) beyond the device's {} B",
            shared_total, k.static_shared, cfg.shared_bytes, settings.max_shared
        ));
    }
    let l = Launch {
        m: module,
        k,
        cfg: *cfg,
        params,
        regions: mem.regions(),
        shared_total: shared_total as usize,
        nthreads: nthreads as u32,
        nwarps: nthreads.div_ceil(32) as u32,
    };
    let total = gx as u64 * gy as u64 * gz as u64;
    let first_fault: Mutex<Option<(u64, Error)>> = Mutex::new(None);
    let stop_at = std::sync::atomic::AtomicU64::new(u64::MAX);
    let run = |s: &mut Scratch, cta: u64| -> Counters {
        if cta > stop_at.load(std::sync::atomic::Ordering::Relaxed) {
            return Counters::default();
        }
        let mut c = Counters::default();
        if let Err(e) = run_cta(&l, s, cta, &mut c) {
            let mut f = first_fault.lock().unwrap_or_else(|p| p.into_inner());
            if f.as_ref().is_none_or(|(i, _)| cta < *i) {
                *f = Some((cta, e));
                stop_at.fetch_min(cta, std::sync::atomic::Ordering::Relaxed);
            }
        }
        c
    };
    let new_scratch = || Scratch {
        warps: (0..l.nwarps).map(|_| Warp::new(k)).collect(),
        shared: vec![0; l.shared_total],
        shadow: vec![Gran::default(); l.shared_total.div_ceil(2)],
        cta_gen: 0,
        epoch: 0,
    };
    let counters = if settings.threads == 1 || total == 1 {
        let mut s = new_scratch();
        let mut c = Counters::default();
        for cta in 0..total {
            c.add(&run(&mut s, cta));
        }
        c
    } else {
        (0..total)
            .into_par_iter()
            .map_init(new_scratch, |s, cta| run(s, cta))
            .reduce(Counters::default, |mut a, b| {
                a.add(&b);
                a
            })
    };
    if let Some((_, e)) = first_fault.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(counters)
}

fn run_cta(l: &Launch, s: &mut Scratch, cta: u64, c: &mut Counters) -> Result<()> {
    let [gx, gy, _] = l.cfg.grid;
    let ctaid = [
        (cta % gx as u64) as u32,
        ((cta / gx as u64) % gy as u64) as u32,
        (cta / (gx as u64 * gy as u64)) as u32,
    ];
    s.cta_gen = s.cta_gen.wrapping_add(1).max(1);
    s.epoch = s.epoch.wrapping_add(1).max(1);
    let mut warps = std::mem::take(&mut s.warps);
    for (w, warp) in warps.iter_mut().enumerate() {
        let first = w as u32 * 32;
        let n = (l.nthreads - first).min(32);
        warp.reset(if n == 32 { u32::MAX } else { (1u32 << n) - 1 });
    }
    c.ctas += 1;
    c.warps += l.nwarps as u64;
    let mut cta_ctx = Cta {
        l,
        ctaid,
        shared: &mut s.shared,
        shadow: &mut s.shadow,
        cta_gen: s.cta_gen,
        epoch: s.epoch,
        c,
        wsync: vec![0; l.nwarps as usize],
        hint: 0,
        unwritten_read: None,
    };
    let result = (|| {
        loop {
            for (w, warp) in warps.iter_mut().enumerate() {
                if !warp.done()
                    && !warp.at_bar
                    && let Err(e) = cta_ctx.run_warp(warp, w as u32)
                {
                    // A race explains an earlier read of unwritten shared bytes (the write it
                    // raced with came later in this schedule); any other finding comes after
                    // that read.
                    let race = matches!(&e, Error::Fault(f) if f.check == Check::Racecheck);
                    return Err(match cta_ctx.unwritten_read.take() {
                        Some((first, _)) if !race => first,
                        _ => e,
                    });
                }
            }
            // No other thread wrote those bytes before the barrier (or the end): initcheck.
            if let Some((e, _)) = cta_ctx.unwritten_read.take() {
                return Err(e);
            }
            let waiting = warps.iter().filter(|w| w.at_bar).count();
            if waiting == 0 {
                return Ok(());
            }
            // Every warp is at the barrier or has exited: release it.
            cta_ctx.epoch = cta_ctx.epoch.wrapping_add(1).max(1);
            cta_ctx.c.barriers += waiting as u64;
            for w in warps.iter_mut() {
                w.at_bar = false;
            }
        }
    })();
    s.epoch = cta_ctx.epoch;
    s.warps = warps;
    result
}

/// One CTA in flight.
struct Cta<'a, 'b> {
    l: &'a Launch<'a>,
    ctaid: [u32; 3],
    shared: &'b mut Vec<u8>,
    shadow: &'b mut Vec<Gran>,
    cta_gen: u32,
    epoch: u32,
    c: &'b mut Counters,
    /// `bar.warp.sync`s executed by each warp in this CTA.
    wsync: Vec<u32>,
    /// Last region an access hit (most accesses of a warp hit the same few).
    hint: usize,
    /// The first shared read of bytes not written in this CTA, in this barrier interval, and the
    /// CTA's instruction count then. Warps run one after another, so a write by another warp
    /// later in the interval would make it a race (reported as such); the initcheck finding
    /// stands when the interval ends without one, or after [`DEFER_LIMIT`] more instructions
    /// (the value read may be garbage steering a loop).
    unwritten_read: Option<(Error, u64)>,
}

/// Warp instructions a CTA may run while an initcheck finding waits for its barrier interval.
const DEFER_LIMIT: u64 = 1 << 22;

/// Lanes set in `m`.
#[inline]
fn lanes(mut m: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let l = m.trailing_zeros() as usize;
        m &= m - 1;
        Some(l)
    })
}

fn mask_of(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

/// A typed source value as i64/u64 (sign-extended for signed types).
fn typed(v: u64, ty: Ty) -> u64 {
    if ty.signed() {
        sext(v, ty.bits()) as u64
    } else {
        v & mask_of(ty.bits())
    }
}

fn f(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

fn fb(x: f32) -> u64 {
    x.to_bits() as u64
}

impl<'a, 'b> Cta<'a, 'b> {
    fn fault(&self, check: Check, wid: u32, lane: usize, pc: usize, msg: String) -> Error {
        let t = wid * 32 + lane as u32;
        let [bx, by, _] = self.l.cfg.block;
        let ins = &self.l.k.code[pc.min(self.l.k.code.len() - 1)];
        Error::Fault(Box::new(Fault {
            check,
            kernel: self.l.k.name.clone(),
            block: self.ctaid,
            thread: [t % bx, (t / bx) % by, t / (bx * by)],
            at: self.l.m.where_(ins),
            instruction: ins.text.to_string(),
            msg,
        }))
    }

    fn tid_of(&self, wid: u32, lane: usize) -> [u32; 3] {
        let t = wid * 32 + lane as u32;
        let [bx, by, _] = self.l.cfg.block;
        [t % bx, (t / bx) % by, t / (bx * by)]
    }

    fn sreg(&self, s: Sreg, wid: u32, lane: usize) -> u64 {
        let cfg = &self.l.cfg;
        (match s {
            Sreg::Tid(d) => self.tid_of(wid, lane)[d as usize],
            Sreg::Ntid(d) => cfg.block[d as usize],
            Sreg::Ctaid(d) => self.ctaid[d as usize],
            Sreg::Nctaid(d) => cfg.grid[d as usize],
            Sreg::LaneId => lane as u32,
            Sreg::WarpId => wid,
        }) as u64
    }

    /// A source operand for all 32 lanes.
    #[inline]
    fn fetch(&self, w: &Warp, op: &Operand, wid: u32) -> [u64; 32] {
        match op {
            Operand::Reg(r) => match r.file {
                File::B32 => {
                    let v = &w.r32[r.idx as usize];
                    std::array::from_fn(|l| v[l] as u64)
                }
                File::B64 => w.r64[r.idx as usize],
                File::Pred => {
                    let p = w.pred[r.idx as usize];
                    std::array::from_fn(|l| ((p >> l) & 1) as u64)
                }
            },
            Operand::Imm(v) => [*v; 32],
            Operand::Sreg(s) => std::array::from_fn(|l| self.sreg(*s, wid, l)),
        }
    }

    /// `d = f(the sources)` on each lane of `exec`: the shape of every pure per-lane instruction.
    fn lanewise<const N: usize>(
        &self,
        w: &mut Warp,
        wid: u32,
        exec: u32,
        d: Reg,
        srcs: [&Operand; N],
        f: impl Fn([u64; N]) -> u64,
    ) {
        let vals: [[u64; 32]; N] = srcs.map(|s| self.fetch(w, s, wid));
        let mut out = [0u64; 32];
        for l in lanes(exec) {
            out[l] = f(std::array::from_fn(|i| vals[i][l]));
        }
        put(w, d, &out, exec);
    }

    /// Up to four operands (vector stores, packs, mma accumulators) without allocating.
    fn fetch_all(&self, w: &Warp, ops: &[Operand], wid: u32) -> [[u64; 32]; 4] {
        let mut out = [[0u64; 32]; 4];
        for (o, op) in out.iter_mut().zip(ops) {
            *o = self.fetch(w, op, wid);
        }
        out
    }

    #[inline]
    fn get(&self, w: &Warp, op: &Operand, wid: u32, l: usize) -> u64 {
        match op {
            Operand::Reg(r) => read_reg(w, *r, l),
            Operand::Imm(v) => *v,
            Operand::Sreg(s) => self.sreg(*s, wid, l),
        }
    }

    fn run_warp(&mut self, w: &mut Warp, wid: u32) -> Result<()> {
        let code = &self.l.k.code;
        loop {
            let Some(top) = w.stack.last().copied() else {
                return Ok(());
            };
            if let Some((_, since)) = &self.unwritten_read
                && self.c.warp_instructions - since > DEFER_LIMIT
            {
                return Err(self.unwritten_read.take().expect("checked").0);
            }
            let mask = top.mask & !w.exited;
            if mask == 0 || top.pc == top.rpc {
                w.stack.pop();
                continue;
            }
            let pc = top.pc as usize;
            let Some(ins) = code.get(pc) else {
                return Err(self.fault(
                    Check::Execution,
                    wid,
                    mask.trailing_zeros() as usize,
                    code.len() - 1,
                    "execution ran past the end of the kernel".into(),
                ));
            };
            let exec = match ins.guard {
                None => mask,
                Some((p, neg)) => {
                    let bits = w.pred[p.idx as usize];
                    mask & if neg { !bits } else { bits }
                }
            };
            self.c.warp_instructions += 1;
            self.c.lane_instructions += exec.count_ones() as u64;
            let fam = Family::of(&ins.op);
            self.c.by_family[fam as usize] += 1;
            match &ins.op {
                Op::Bra { target } => {
                    let top = w.stack.last_mut().expect("non-empty stack");
                    let not = mask & !exec;
                    if not == 0 {
                        top.pc = *target;
                    } else if exec == 0 {
                        top.pc += 1;
                    } else {
                        let rpc = self.l.k.reconverge[pc];
                        top.pc = rpc;
                        top.mask = mask;
                        if pc as u32 + 1 != rpc {
                            w.stack.push(Entry {
                                pc: pc as u32 + 1,
                                mask: not,
                                rpc,
                            });
                        }
                        if *target != rpc {
                            w.stack.push(Entry {
                                pc: *target,
                                mask: exec,
                                rpc,
                            });
                        }
                    }
                }
                Op::Ret => {
                    w.exited |= exec;
                    // Copies in flight of exiting lanes never land anywhere anyone may read.
                    w.pending.retain(|p| exec >> p.lane & 1 == 0);
                    if let Some(top) = w.stack.last_mut() {
                        top.pc += 1;
                    }
                }
                Op::Bar => {
                    let live = w.valid & !w.exited;
                    if exec != live {
                        let missing = live & !exec;
                        return Err(self.fault(
                            Check::Synccheck,
                            wid,
                            exec.trailing_zeros().min(31) as usize,
                            pc,
                            format!(
                                "bar.sync reached by lanes {exec:#010x} of the warp while lanes {missing:#010x} \
                                 have not exited and are elsewhere (a barrier in divergent code)"
                            ),
                        ));
                    }
                    w.stack.last_mut().expect("non-empty stack").pc += 1;
                    w.at_bar = true;
                    return Ok(());
                }
                _ => {
                    if exec != 0 || matches!(ins.op, Op::Mma { .. } | Op::Ldmatrix { .. }) {
                        self.step(w, wid, pc, exec, mask)?;
                    }
                    w.stack.last_mut().expect("non-empty stack").pc += 1;
                }
            }
        }
    }

    /// Execute a non-control instruction on lanes `exec` (of `mask` reaching it).
    fn step(&mut self, w: &mut Warp, wid: u32, pc: usize, exec: u32, mask: u32) -> Result<()> {
        let ins = &self.l.k.code[pc];
        match &ins.op {
            Op::Mov { d, a } => {
                let v = self.fetch(w, a, wid);
                put(w, *d, &v, exec);
            }
            Op::Pack {
                d,
                parts,
                part_bits,
            } => {
                let vals = self.fetch_all(w, parts, wid);
                let out: [u64; 32] = std::array::from_fn(|l| {
                    vals[..parts.len()]
                        .iter()
                        .enumerate()
                        .fold(0u64, |acc, (i, v)| {
                            acc | ((v[l] & mask_of(*part_bits)) << (i as u32 * part_bits))
                        })
                });
                put(w, *d, &out, exec);
            }
            Op::Unpack { ds, a, part_bits } => {
                let v = self.fetch(w, a, wid);
                for (i, d) in ds.iter().enumerate() {
                    if let Some(d) = d {
                        let out: [u64; 32] = std::array::from_fn(|l| {
                            (v[l] >> (i as u32 * part_bits)) & mask_of(*part_bits)
                        });
                        put(w, *d, &out, exec);
                    }
                }
            }
            Op::Int { op, ty, d, a, b } => {
                self.lanewise(w, wid, exec, *d, [a, b], |[x, y]| int_bin(*op, *ty, x, y))
            }
            Op::IntUn { op, ty, d, a } => {
                self.lanewise(w, wid, exec, *d, [a], |[x]| int_un(*op, *ty, x))
            }
            Op::Mad {
                mode,
                ty,
                d,
                a,
                b,
                c,
            } => {
                let wide_ty = if *mode == IntOp::MulWide {
                    wide(*ty)
                } else {
                    *ty
                };
                self.lanewise(w, wid, exec, *d, [a, b, c], |[x, y, z]| {
                    int_bin(IntOp::Add, wide_ty, int_bin(*mode, *ty, x, y), z)
                })
            }
            Op::Bfi {
                ty,
                d,
                a,
                b,
                pos,
                len,
            } => {
                let bits = ty.bits();
                self.lanewise(w, wid, exec, *d, [a, b, pos, len], |[x, y, p, n]| {
                    let (p, n) = ((p & 0xFF) as u32, (n & 0xFF) as u32);
                    let v = if n == 0 || p >= bits {
                        y
                    } else {
                        let n = n.min(bits - p);
                        let fmask = mask_of(n) << p;
                        (y & !fmask) | ((x << p) & fmask)
                    };
                    v & mask_of(bits)
                })
            }
            Op::F {
                op,
                ftz: z,
                rnd,
                d,
                a,
                b,
            } => {
                let flush = |v: f32| if *z { ftz(v) } else { v };
                self.lanewise(w, wid, exec, *d, [a, b], |[x, y]| {
                    let (x, y) = (flush(f(x)), flush(f(y)));
                    let r = match (rnd, op) {
                        (Rnd::Rn, FOp::Add) => x + y,
                        (Rnd::Rn, FOp::Sub) => x - y,
                        (Rnd::Rn, FOp::Mul) => x * y,
                        _ => numeric::arith(*op, x, y, *rnd),
                    };
                    fb(flush(r))
                })
            }
            Op::FUn { op, ftz: z, d, a } => {
                let flush = |v: f32| if *z { ftz(v) } else { v };
                self.lanewise(w, wid, exec, *d, [a], |[x]| {
                    let x = flush(f(x));
                    let r = match op {
                        FUnOp::Neg => -x,
                        FUnOp::Abs => x.abs(),
                        FUnOp::Sqrt => x.sqrt(),
                        FUnOp::Rcp => 1.0 / x,
                        FUnOp::Rsqrt => (1.0 / (x as f64).sqrt()) as f32,
                        FUnOp::Ex2 => (x as f64).exp2() as f32,
                        FUnOp::Lg2 => (x as f64).log2() as f32,
                        FUnOp::Sin => (x as f64).sin() as f32,
                        FUnOp::Cos => (x as f64).cos() as f32,
                        FUnOp::Tanh => (x as f64).tanh() as f32,
                    };
                    fb(flush(r))
                })
            }
            Op::Fma {
                rnd,
                ftz: z,
                sat,
                d,
                a,
                b,
                c,
            } => {
                let flush = |v: f32| if *z { ftz(v) } else { v };
                self.lanewise(w, wid, exec, *d, [a, b, c], |[x, y, c]| {
                    let mut r = flush(numeric::fma(flush(f(x)), flush(f(y)), flush(f(c)), *rnd));
                    if *sat {
                        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
                    }
                    fb(r)
                })
            }
            Op::Setp {
                cmp,
                ty,
                d,
                d2,
                a,
                b,
                comb,
            } => {
                let (av, bv) = (self.fetch(w, a, wid), self.fetch(w, b, wid));
                let mut t = 0u32;
                for l in lanes(exec) {
                    if compare(*cmp, *ty, av[l], bv[l]) {
                        t |= 1 << l;
                    }
                }
                let mut f2 = exec & !t;
                if let Some((op, p, neg)) = comb {
                    let pv = if *neg {
                        !w.pred[p.idx as usize]
                    } else {
                        w.pred[p.idx as usize]
                    };
                    let apply = |x: u32| match op {
                        BoolOp::And => x & pv,
                        BoolOp::Or => x | pv,
                        BoolOp::Xor => x ^ pv,
                    };
                    f2 = apply(f2);
                    t = apply(t);
                }
                set_pred(w, *d, t, exec);
                if let Some(d2) = d2 {
                    set_pred(w, *d2, f2, exec);
                }
            }
            Op::Selp { d, a, b, p, neg } => {
                let (av, bv) = (self.fetch(w, a, wid), self.fetch(w, b, wid));
                let pv = w.pred[p.idx as usize] ^ if *neg { u32::MAX } else { 0 };
                let out: [u64; 32] =
                    std::array::from_fn(|l| if pv >> l & 1 == 1 { av[l] } else { bv[l] });
                put(w, *d, &out, exec);
            }
            Op::PredOp { op, d, a, b } => {
                let (av, bv) = (self.fetch(w, a, wid), self.fetch(w, b, wid));
                let mut t = 0u32;
                for l in lanes(exec) {
                    let (x, y) = (av[l] & 1 == 1, bv[l] & 1 == 1);
                    let r = match op {
                        Some(BoolOp::And) => x & y,
                        Some(BoolOp::Or) => x | y,
                        Some(BoolOp::Xor) => x ^ y,
                        None => !x,
                    };
                    if r {
                        t |= 1 << l;
                    }
                }
                set_pred(w, *d, t, exec);
            }
            Op::Cvt {
                dty,
                sty,
                rnd,
                irnd,
                sat,
                ftz: z,
                d,
                a,
            } => {
                let av = self.fetch(w, a, wid);
                let mut out = [0u64; 32];
                for l in lanes(exec) {
                    out[l] = cvt(*dty, *sty, *rnd, *irnd, *sat, *z, av[l]).ok_or_else(|| {
                        self.fault(Check::Execution, wid, l, pc, "unsupported cvt form".into())
                    })?;
                }
                put(w, *d, &out, exec);
            }
            Op::CvtPack { relu, d, a, b } => {
                let r = |x: f32| {
                    let x = if *relu && !x.is_nan() { x.max(0.0) } else { x };
                    f32_to_bf16(x) as u64
                };
                self.lanewise(w, wid, exec, *d, [a, b], |[x, y]| (r(f(x)) << 16) | r(f(y)))
            }
            Op::Ld {
                space,
                ty,
                ds,
                addr,
            } => self.load(w, wid, pc, exec, *space, *ty, ds, addr)?,
            Op::St {
                space,
                ty,
                srcs,
                addr,
            } => self.store(w, wid, pc, exec, *space, *ty, srcs, addr)?,
            Op::Atom {
                space,
                op,
                ty,
                d,
                addr,
                b,
                c,
            } => self.atom(w, wid, pc, exec, *space, *op, *ty, *d, addr, b, c.as_ref())?,
            Op::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                mask: mk,
            } => {
                let membermask = self.get(w, mk, wid, exec.trailing_zeros() as usize) as u32;
                self.check_members(w, wid, pc, exec, mask, membermask, "shfl.sync")?;
                let (av, bv, cv) = (
                    self.fetch(w, a, wid),
                    self.fetch(w, b, wid),
                    self.fetch(w, c, wid),
                );
                let mut out = [0u64; 32];
                let mut pout = 0u32;
                for l in lanes(exec) {
                    let lane = l as u32;
                    let bval = (bv[l] & 0x1F) as u32;
                    let cval = (cv[l] & 0x1F) as u32;
                    let seg = ((cv[l] >> 8) & 0x1F) as u32;
                    let max_lane = (lane & seg) | (cval & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match mode {
                        ShflMode::Up => {
                            let j = lane as i32 - bval as i32;
                            (j, j >= max_lane as i32)
                        }
                        ShflMode::Down => {
                            let j = (lane + bval) as i32;
                            (j, j <= max_lane as i32)
                        }
                        ShflMode::Bfly => {
                            let j = (lane ^ bval) as i32;
                            (j, j <= max_lane as i32)
                        }
                        ShflMode::Idx => {
                            let j = (min_lane | (bval & !seg)) as i32;
                            (j, j <= max_lane as i32)
                        }
                    };
                    let src = if ok { j as usize } else { l };
                    if ok && exec >> src & 1 == 0 {
                        return Err(self.fault(
                            Check::Synccheck,
                            wid,
                            l,
                            pc,
                            format!("shfl.sync reads lane {src}, which is not executing it (its value is undefined)"),
                        ));
                    }
                    out[l] = av[src];
                    if ok {
                        pout |= 1 << l;
                    }
                }
                put(w, *d, &out, exec);
                if let Some(p) = p {
                    set_pred(w, *p, pout, exec);
                }
            }
            Op::Vote {
                mode,
                d,
                p,
                neg,
                mask: mk,
            } => {
                let membermask = self.get(w, mk, wid, exec.trailing_zeros() as usize) as u32;
                self.check_members(w, wid, pc, exec, mask, membermask, "vote.sync")?;
                let pv = (if *neg {
                    !w.pred[p.idx as usize]
                } else {
                    w.pred[p.idx as usize]
                }) & exec;
                match mode {
                    VoteMode::Ballot => put(w, *d, &[pv as u64; 32], exec),
                    _ => {
                        let r = match mode {
                            VoteMode::All => pv == exec,
                            VoteMode::Any => pv != 0,
                            _ => pv == exec || pv == 0,
                        };
                        set_pred(w, *d, if r { u32::MAX } else { 0 }, exec);
                    }
                }
            }
            Op::Match {
                all,
                ty,
                d,
                p,
                a,
                mask: mk,
            } => {
                let membermask = self.get(w, mk, wid, exec.trailing_zeros() as usize) as u32;
                self.check_members(w, wid, pc, exec, mask, membermask, "match.sync")?;
                let av = self.fetch(w, a, wid);
                let mut out = [0u64; 32];
                let first = exec.trailing_zeros() as usize;
                let same = lanes(exec).all(|l| typed(av[l], *ty) == typed(av[first], *ty));
                for l in lanes(exec) {
                    let mut m = 0u32;
                    for j in lanes(exec) {
                        if typed(av[j], *ty) == typed(av[l], *ty) {
                            m |= 1 << j;
                        }
                    }
                    out[l] = if *all {
                        if same { exec as u64 } else { 0 }
                    } else {
                        m as u64
                    };
                }
                put(w, *d, &out, exec);
                if let Some(p) = p {
                    set_pred(w, *p, if same { u32::MAX } else { 0 }, exec);
                }
            }
            Op::Redux {
                op,
                ty,
                d,
                a,
                mask: mk,
            } => {
                let membermask = self.get(w, mk, wid, exec.trailing_zeros() as usize) as u32;
                self.check_members(w, wid, pc, exec, mask, membermask, "redux.sync")?;
                let av = self.fetch(w, a, wid);
                let vals = lanes(exec).map(|l| av[l] as u32);
                let r = match op {
                    ReduxOp::Add => vals.fold(0u32, u32::wrapping_add),
                    ReduxOp::And => vals.fold(u32::MAX, |x, y| x & y),
                    ReduxOp::Or => vals.fold(0, |x, y| x | y),
                    ReduxOp::Xor => vals.fold(0, |x, y| x ^ y),
                    ReduxOp::Min if ty.signed() => vals.map(|v| v as i32).min().unwrap_or(0) as u32,
                    ReduxOp::Max if ty.signed() => vals.map(|v| v as i32).max().unwrap_or(0) as u32,
                    ReduxOp::Min => vals.min().unwrap_or(0),
                    ReduxOp::Max => vals.max().unwrap_or(0),
                };
                put(w, *d, &[r as u64; 32], exec);
            }
            Op::Mma { d, a, b, c } => self.mma(w, wid, pc, exec, mask, d, a, b, c)?,
            Op::Ldmatrix { trans, ds, addr } => {
                self.ldmatrix(w, wid, pc, exec, mask, *trans, ds, addr)?
            }
            Op::CpAsync {
                dst,
                src,
                cp_size,
                src_size,
            } => self.cp_async(w, wid, pc, exec, dst, src, *cp_size, src_size.as_ref())?,
            Op::CpAsyncCommit => cp_commit(w, exec),
            Op::CpAsyncWait { n, all } => {
                if *all {
                    cp_commit(w, exec);
                }
                self.cp_wait(w, wid, pc, exec, *n)?
            }
            Op::WarpSync { mask: mk } => {
                let membermask = self.get(w, mk, wid, exec.trailing_zeros() as usize) as u32;
                self.check_members(w, wid, pc, exec, mask, membermask, "bar.warp.sync")?;
                self.wsync[wid as usize] += 1;
            }
            Op::Bra { .. } | Op::Ret | Op::Bar => unreachable!("handled by run_warp"),
        }
        Ok(())
    }

    /// A `.sync` collective: every member named must be executing it, and every executing lane
    /// must be a member.
    fn check_members(
        &self,
        w: &Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        mask: u32,
        members: u32,
        what: &str,
    ) -> Result<()> {
        let _ = mask;
        let lane = exec.trailing_zeros() as usize;
        if exec & !members != 0 {
            return Err(self.fault(
                Check::Synccheck,
                wid,
                lane,
                pc,
                format!("{what}: lanes {:#010x} execute it but are not in the member mask {members:#010x}", exec & !members),
            ));
        }
        let absent = members & !exec & w.valid;
        if absent != 0 {
            return Err(self.fault(
                Check::Synccheck,
                wid,
                lane,
                pc,
                format!(
                    "{what}: member lanes {absent:#010x} of mask {members:#010x} do not execute it \
                     (inactive, exited or on another path)"
                ),
            ));
        }
        Ok(())
    }

    // ----- addresses -----

    fn addr_of(&self, w: &Warp, a: &Addr, l: usize) -> u64 {
        let base = match a.base {
            Some(r) => read_reg(w, r, l),
            None => 0,
        };
        base.wrapping_add(a.offset as u64)
    }

    /// The region of a global access, checked for bounds and alignment.
    fn global(&mut self, wid: u32, l: usize, pc: usize, addr: u64, size: u32) -> Result<usize> {
        if !addr.is_multiple_of(size as u64) {
            return Err(self.fault(
                Check::Memcheck,
                wid,
                l,
                pc,
                format!("misaligned {size}-byte global access at {addr:#x}"),
            ));
        }
        let mut hint = self.hint;
        match self.l.regions.find(addr, size as u64, &mut hint) {
            Ok(i) => {
                self.hint = hint;
                Ok(i)
            }
            Err(msg) => {
                Err(self.fault(Check::Memcheck, wid, l, pc, format!("global memory: {msg}")))
            }
        }
    }

    fn global_load(&mut self, wid: u32, l: usize, pc: usize, addr: u64, size: u32) -> Result<u128> {
        let i = self.global(wid, l, pc, addr, size)?;
        let r = &self.l.regions.list[i];
        let off = r.off(addr);
        if !r.seg.is_init(off, size as usize) {
            return Err(self.fault(
                Check::Initcheck,
                wid,
                l,
                pc,
                format!(
                    "{size}-byte global read at {addr:#x} (offset {} of the {}-byte allocation at {:#x}) \
                     of bytes never written since allocation",
                    addr - r.start,
                    r.end - r.start,
                    r.start
                ),
            ));
        }
        Ok(r.seg.load(off, size as usize))
    }

    fn global_store(
        &mut self,
        wid: u32,
        l: usize,
        pc: usize,
        addr: u64,
        size: u32,
        v: u128,
    ) -> Result<()> {
        let i = self.global(wid, l, pc, addr, size)?;
        let r = &self.l.regions.list[i];
        let off = r.off(addr);
        r.seg.store(off, size as usize, v);
        r.seg.mark_init(off, size as usize);
        Ok(())
    }

    /// Check a shared access and return its offset.
    fn shared_at(&self, wid: u32, l: usize, pc: usize, addr: u64, size: u32) -> Result<usize> {
        if !addr.is_multiple_of(size as u64) {
            return Err(self.fault(
                Check::Memcheck,
                wid,
                l,
                pc,
                format!("misaligned {size}-byte shared access at {addr:#x}"),
            ));
        }
        if addr.saturating_add(size as u64) > self.l.shared_total as u64 {
            return Err(self.fault(
                Check::Memcheck,
                wid,
                l,
                pc,
                format!(
                    "{size}-byte shared access at {addr:#x} past the {} B of shared memory ({} static + {} dynamic)",
                    self.l.shared_total,
                    self.l.k.static_shared,
                    self.l.shared_total.saturating_sub(self.l.k.extern_offset as usize)
                ),
            ));
        }
        Ok(addr as usize)
    }

    /// Racecheck and initcheck of a shared access by thread `t`, then record it.
    fn shadow(
        &mut self,
        wid: u32,
        l: usize,
        pc: usize,
        off: usize,
        size: u32,
        kind: Access,
    ) -> Result<()> {
        let t = (wid * 32 + l as u32) as u16;
        let ep = self.epoch;
        for g in off / 2..(off + size as usize).div_ceil(2) {
            let s = self.shadow[g];
            let other = |tid: u16| tid != t;
            let ws = self.wsync[wid as usize];
            // A conflicting earlier write / read: another thread, same barrier interval, and not
            // ordered by a bar.warp.sync of this thread's warp since.
            let w_conflict =
                s.w_ep == ep && other(s.w_tid) && !(s.w_tid as u32 / 32 == wid && s.w_ws < ws);
            let r_conflict =
                s.r_ep == ep && other(s.r_tid) && !(s.r_warp as u32 == wid && s.r_ws < ws);
            if s.inflight != 0 {
                let owner = s.inflight - 1;
                let msg = if owner == t && kind == Access::Read {
                    return Err(self.fault(
                        Check::Synccheck,
                        wid,
                        l,
                        pc,
                        format!(
                            "shared bytes at {:#x} read before the cp.async writing them was waited for \
                             (cp.async.wait_group)",
                            g * 2
                        ),
                    ));
                } else {
                    format!(
                        "shared bytes at {:#x} accessed while a cp.async of thread {:?} into them is in flight",
                        g * 2,
                        self.tid_of(owner as u32 / 32, owner as usize % 32)
                    )
                };
                let check = if owner == t {
                    Check::Synccheck
                } else {
                    Check::Racecheck
                };
                return Err(self.fault(check, wid, l, pc, msg));
            }
            let hazard = |what: &str, tid: u16| -> String {
                let who = if tid == MULTI {
                    "several threads".to_string()
                } else {
                    format!(
                        "thread {:?}",
                        self.tid_of(tid as u32 / 32, tid as usize % 32)
                    )
                };
                format!(
                    "{what} hazard on shared bytes at {:#x} with {who} in the same barrier interval",
                    g * 2
                )
            };
            // The hazards each kind of access has with the interval's earlier accesses.
            let a_conflict = s.a_ep == ep && other(s.a_tid);
            let hazards: [(bool, &str, u16); 3] = match kind {
                Access::Read => [
                    (w_conflict, "read-after-write", s.w_tid),
                    (a_conflict, "read-after-atomic", s.a_tid),
                    (false, "", 0),
                ],
                Access::Write | Access::AsyncIssue => [
                    (w_conflict, "write-after-write", s.w_tid),
                    (r_conflict, "write-after-read", s.r_tid),
                    (a_conflict, "write-after-atomic", s.a_tid),
                ],
                Access::Atomic => [
                    (w_conflict, "atomic-after-write", s.w_tid),
                    (r_conflict, "atomic-after-read", s.r_tid),
                    (false, "", 0),
                ],
            };
            if let Some(&(_, what, tid)) = hazards.iter().find(|h| h.0) {
                return Err(self.fault(Check::Racecheck, wid, l, pc, hazard(what, tid)));
            }
            match kind {
                Access::Read if s.init != self.cta_gen && self.unwritten_read.is_none() => {
                    let now = self.c.warp_instructions;
                    self.unwritten_read = Some((
                        self.fault(
                            Check::Initcheck,
                            wid,
                            l,
                            pc,
                            format!(
                                "shared read at {:#x} of bytes never written in this CTA \
                                 (nor by another thread later in the barrier interval)",
                                g * 2
                            ),
                        ),
                        now,
                    ));
                }
                Access::Atomic if s.init != self.cta_gen => {
                    return Err(self.fault(
                        Check::Initcheck,
                        wid,
                        l,
                        pc,
                        format!(
                            "shared atomic at {:#x} on bytes never written in this CTA",
                            g * 2
                        ),
                    ));
                }
                _ => {}
            }
            let s = &mut self.shadow[g];
            match kind {
                Access::Read => {
                    if s.r_ep != ep {
                        s.r_ep = ep;
                        s.r_tid = t;
                        s.r_warp = wid as u16;
                        s.r_ws = ws;
                    } else {
                        if s.r_tid != t {
                            s.r_tid = MULTI;
                        }
                        if s.r_warp != wid as u16 {
                            s.r_warp = MULTI;
                        }
                        s.r_ws = s.r_ws.max(ws);
                    }
                }
                Access::Write => {
                    s.w_ep = ep;
                    s.w_tid = t;
                    s.w_ws = ws;
                    s.init = self.cta_gen;
                }
                Access::AsyncIssue => s.inflight = t + 1,
                Access::Atomic => {
                    if s.a_ep != ep {
                        s.a_ep = ep;
                        s.a_tid = t;
                    } else if s.a_tid != t {
                        s.a_tid = MULTI;
                    }
                }
            }
        }
        Ok(())
    }

    fn shared_load(&mut self, wid: u32, l: usize, pc: usize, addr: u64, size: u32) -> Result<u128> {
        let off = self.shared_at(wid, l, pc, addr, size)?;
        self.shadow(wid, l, pc, off, size, Access::Read)?;
        let mut b = [0u8; 16];
        b[..size as usize].copy_from_slice(&self.shared[off..off + size as usize]);
        Ok(u128::from_le_bytes(b))
    }

    fn shared_store(
        &mut self,
        wid: u32,
        l: usize,
        pc: usize,
        addr: u64,
        size: u32,
        v: u128,
    ) -> Result<()> {
        let off = self.shared_at(wid, l, pc, addr, size)?;
        self.shadow(wid, l, pc, off, size, Access::Write)?;
        self.shared[off..off + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
        Ok(())
    }

    // ----- memory instructions -----

    /// Each executing lane's address of a memory instruction, counted as one warp request of
    /// `size` bytes per lane.
    fn request(
        &mut self,
        w: &Warp,
        exec: u32,
        space: Space,
        addr: &Addr,
        size: u32,
        load: bool,
    ) -> [u64; 32] {
        let mut addrs = [0u64; 32];
        for l in lanes(exec) {
            addrs[l] = self.addr_of(w, addr, l);
        }
        match space {
            Space::Global | Space::Generic => {
                let bytes = size as u64 * exec.count_ones() as u64;
                self.count_global(exec, &addrs, size, bytes, load)
            }
            Space::Shared => self.count_shared(exec, &addrs, size, load),
            Space::Param => {}
        }
        addrs
    }

    fn load(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        space: Space,
        ty: Ty,
        ds: &[Reg],
        addr: &Addr,
    ) -> Result<()> {
        let size = ty.bytes();
        let n = ds.len() as u32;
        let addrs = self.request(w, exec, space, addr, size * n, true);
        for l in lanes(exec) {
            let a = addrs[l];
            let v: u128 = match space {
                Space::Param => {
                    let o = a as usize;
                    let total = (size * n) as usize;
                    if a > u32::MAX as u64 || o + total > self.l.params.len() {
                        return Err(self.fault(
                            Check::Memcheck,
                            wid,
                            l,
                            pc,
                            format!("parameter read at {a} out of range"),
                        ));
                    }
                    let mut b = [0u8; 16];
                    b[..total].copy_from_slice(&self.l.params[o..o + total]);
                    u128::from_le_bytes(b)
                }
                Space::Shared => self.shared_load(wid, l, pc, a, size * n)?,
                Space::Global | Space::Generic => self.global_load(wid, l, pc, a, size * n)?,
            };
            for (i, d) in ds.iter().enumerate() {
                let part = (v >> (i as u32 * size * 8)) as u64 & mask_of(size * 8);
                write_reg(w, *d, l, typed(part, ty));
            }
        }
        Ok(())
    }

    fn store(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        space: Space,
        ty: Ty,
        srcs: &[Operand],
        addr: &Addr,
    ) -> Result<()> {
        let size = ty.bytes();
        let n = srcs.len() as u32;
        if space == Space::Param {
            return Err(self.fault(
                Check::Execution,
                wid,
                exec.trailing_zeros() as usize,
                pc,
                "store to .param".into(),
            ));
        }
        let addrs = self.request(w, exec, space, addr, size * n, false);
        let vals = self.fetch_all(w, srcs, wid);
        for l in lanes(exec) {
            let mut v = 0u128;
            for (i, s) in vals[..srcs.len()].iter().enumerate() {
                v |= ((s[l] & mask_of(size * 8)) as u128) << (i as u32 * size * 8);
            }
            match space {
                Space::Shared => self.shared_store(wid, l, pc, addrs[l], size * n, v)?,
                _ => self.global_store(wid, l, pc, addrs[l], size * n, v)?,
            }
        }
        Ok(())
    }

    fn atom(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        space: Space,
        op: AtomOp,
        ty: Ty,
        d: Option<Reg>,
        addr: &Addr,
        b: &Operand,
        c: Option<&Operand>,
    ) -> Result<()> {
        if ty.bytes() != 4 {
            return Err(self.fault(
                Check::Execution,
                wid,
                exec.trailing_zeros() as usize,
                pc,
                "only 32-bit atomics are supported".into(),
            ));
        }
        let bv = self.fetch(w, b, wid);
        let cv = c.map(|c| self.fetch(w, c, wid));
        let mut addrs = [0u64; 32];
        for l in lanes(exec) {
            addrs[l] = self.addr_of(w, addr, l);
        }
        if space == Space::Shared {
            self.count_shared(exec, &addrs, 4, false);
        } else {
            self.c.global_atomic_requests += 1;
        }
        let global_space = space != Space::Shared;
        let apply = |old: u32, l: usize| -> u32 {
            let v = bv[l] as u32;
            match op {
                AtomOp::Add if ty == Ty::F32 => {
                    let r = if global_space {
                        numeric::atomic_add_f32(f32::from_bits(old), f32::from_bits(v))
                    } else {
                        f32::from_bits(old) + f32::from_bits(v)
                    };
                    r.to_bits()
                }
                AtomOp::Add => old.wrapping_add(v),
                AtomOp::Min if ty == Ty::F32 => {
                    numeric::fmin(f32::from_bits(old), f32::from_bits(v)).to_bits()
                }
                AtomOp::Max if ty == Ty::F32 => {
                    numeric::fmax(f32::from_bits(old), f32::from_bits(v)).to_bits()
                }
                AtomOp::Min if ty.signed() => (old as i32).min(v as i32) as u32,
                AtomOp::Max if ty.signed() => (old as i32).max(v as i32) as u32,
                AtomOp::Min => old.min(v),
                AtomOp::Max => old.max(v),
                AtomOp::Exch => v,
                AtomOp::And => old & v,
                AtomOp::Or => old | v,
                AtomOp::Xor => old ^ v,
                AtomOp::Cas => {
                    if old == v {
                        cv.map(|c| c[l] as u32).unwrap_or(old)
                    } else {
                        old
                    }
                }
            }
        };
        for l in lanes(exec) {
            let a = addrs[l];
            let old = if space == Space::Shared {
                let off = self.shared_at(wid, l, pc, a, 4)?;
                self.shadow(wid, l, pc, off, 4, Access::Atomic)?;
                let old =
                    u32::from_le_bytes(self.shared[off..off + 4].try_into().expect("4 bytes"));
                self.shared[off..off + 4].copy_from_slice(&apply(old, l).to_le_bytes());
                old
            } else {
                let i = self.global(wid, l, pc, a, 4)?;
                let r = &self.l.regions.list[i];
                let off = r.off(a);
                if !r.seg.is_init(off, 4) {
                    return Err(self.fault(
                        Check::Initcheck,
                        wid,
                        l,
                        pc,
                        format!("atomic on global bytes at {a:#x} never written since allocation"),
                    ));
                }
                let word = r.seg.word(off);
                let mut old = word.load(std::sync::atomic::Ordering::Relaxed);
                loop {
                    let new = apply(old, l);
                    match word.compare_exchange_weak(
                        old,
                        new,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    ) {
                        Ok(_) => break old,
                        Err(x) => old = x,
                    }
                }
            };
            if let Some(d) = d {
                write_reg(w, d, l, typed(old as u64, ty));
            }
        }
        Ok(())
    }

    // ----- tensor cores and async copies -----

    fn all_lanes(
        &self,
        w: &Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        mask: u32,
        what: &str,
    ) -> Result<()> {
        if exec != u32::MAX || mask != u32::MAX {
            return Err(self.fault(
                Check::Synccheck,
                wid,
                exec.trailing_zeros().min(31) as usize,
                pc,
                format!("{what} (.sync.aligned) executed by lanes {exec:#010x}: all 32 lanes must execute it together (valid {:#010x})", w.valid),
            ));
        }
        Ok(())
    }

    fn mma(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        mask: u32,
        d: &[Reg; 4],
        a: &[Reg; 4],
        b: &[Reg; 2],
        c: &[Operand; 4],
    ) -> Result<()> {
        self.all_lanes(w, wid, pc, exec, mask, "mma.sync")?;
        self.c.mma += 1;
        let mut am = [[0f64; 16]; 16];
        let mut bm = [[0f64; 8]; 16];
        let mut cm = [[0f64; 8]; 16];
        let cvals = self.fetch_all(w, c, wid);
        for l in 0..32usize {
            let (g, q) = (l / 4, l % 4);
            for (r, reg) in a.iter().enumerate() {
                let v = read_reg(w, *reg, l) as u32;
                for h in 0..2 {
                    let i = 2 * r + h; // element a_i
                    let row = if matches!(i, 0 | 1 | 4 | 5) { g } else { g + 8 };
                    let col = 2 * q + (i & 1) + if i >= 4 { 8 } else { 0 };
                    am[row][col] = bf16_to_f32((v >> (16 * h)) as u16) as f64;
                }
            }
            for (r, reg) in b.iter().enumerate() {
                let v = read_reg(w, *reg, l) as u32;
                for h in 0..2 {
                    let i = 2 * r + h;
                    let k = 2 * q + (i & 1) + if i >= 2 { 8 } else { 0 };
                    bm[k][g] = bf16_to_f32((v >> (16 * h)) as u16) as f64;
                }
            }
            for (i, cv) in cvals.iter().enumerate() {
                let row = if i < 2 { g } else { g + 8 };
                cm[row][2 * q + (i & 1)] = f(cv[l]) as f64;
            }
        }
        for l in 0..32usize {
            let (g, q) = (l / 4, l % 4);
            for (i, reg) in d.iter().enumerate() {
                let row = if i < 2 { g } else { g + 8 };
                let col = 2 * q + (i & 1);
                let mut acc = cm[row][col];
                for (k, bk) in bm.iter().enumerate() {
                    acc += am[row][k] * bk[col];
                }
                write_reg(w, *reg, l, fb(acc as f32));
            }
        }
        Ok(())
    }

    fn ldmatrix(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        mask: u32,
        trans: bool,
        ds: &[Reg],
        addr: &Addr,
    ) -> Result<()> {
        self.all_lanes(w, wid, pc, exec, mask, "ldmatrix")?;
        let num = ds.len();
        // rows[m][r] = the 8 b16 elements of row r of matrix m.
        let mut rows = [[[0u16; 8]; 8]; 4];
        let mut addrs = [0u64; 32];
        for l in 0..8 * num {
            addrs[l] = self.addr_of(w, addr, l);
        }
        // Each matrix is one phase: 8 rows of 16 bytes.
        for m in 0..num {
            let mut a8 = [0u64; 32];
            a8[..8].copy_from_slice(&addrs[8 * m..8 * m + 8]);
            self.count_phase(0xFF, &a8, 16);
        }
        self.c.shared_load_requests += 1;
        for m in 0..num {
            for r in 0..8 {
                let l = 8 * m + r;
                let v = self.shared_load(wid, l, pc, addrs[l], 16)?;
                for e in 0..8 {
                    rows[m][r][e] = (v >> (16 * e)) as u16;
                }
            }
        }
        for (m, d) in ds.iter().enumerate() {
            for l in 0..32usize {
                let (lo, hi) = if trans {
                    (rows[m][2 * (l % 4)][l / 4], rows[m][2 * (l % 4) + 1][l / 4])
                } else {
                    (rows[m][l / 4][2 * (l % 4)], rows[m][l / 4][2 * (l % 4) + 1])
                };
                write_reg(w, *d, l, (lo as u64) | ((hi as u64) << 16));
            }
        }
        Ok(())
    }

    fn cp_async(
        &mut self,
        w: &mut Warp,
        wid: u32,
        pc: usize,
        exec: u32,
        dst: &Addr,
        src: &Addr,
        cp_size: u32,
        src_size: Option<&Operand>,
    ) -> Result<()> {
        let ss = src_size.map(|s| self.fetch(w, s, wid));
        let mut daddrs = [0u64; 32];
        let mut saddrs = [0u64; 32];
        for l in lanes(exec) {
            daddrs[l] = self.addr_of(w, dst, l);
            saddrs[l] = self.addr_of(w, src, l);
        }
        // Only lanes with a non-zero src-size read global memory (the rest zero-fill).
        let mut reading = 0u32;
        let mut bytes = 0u64;
        for l in lanes(exec) {
            let n = ss.map(|s| s[l] as u32).unwrap_or(cp_size).min(cp_size);
            if n > 0 {
                reading |= 1 << l;
                bytes += n as u64;
            }
        }
        self.count_global(reading, &saddrs, cp_size, bytes, true);
        self.count_shared(exec, &daddrs, cp_size, false);
        for l in lanes(exec) {
            let n = ss.map(|s| s[l] as u32).unwrap_or(cp_size);
            if n > cp_size {
                return Err(self.fault(
                    Check::Execution,
                    wid,
                    l,
                    pc,
                    format!("cp.async src-size {n} exceeds cp-size {cp_size}"),
                ));
            }
            let mut data = [0u8; 16];
            if n > 0 {
                if !saddrs[l].is_multiple_of(cp_size as u64) {
                    return Err(self.fault(
                        Check::Memcheck,
                        wid,
                        l,
                        pc,
                        format!("misaligned cp.async source {:#x}", saddrs[l]),
                    ));
                }
                // Only the first `n` bytes are read (bounds only: the alignment the ISA asks
                // for is cp-size's, checked above; `n` need not be a power of two).
                let mut hint = self.hint;
                let i = self
                    .l
                    .regions
                    .find(saddrs[l], n as u64, &mut hint)
                    .map_err(|msg| {
                        self.fault(Check::Memcheck, wid, l, pc, format!("global memory: {msg}"))
                    })?;
                let r = &self.l.regions.list[i];
                let off = r.off(saddrs[l]);
                for (k, byte) in data.iter_mut().enumerate().take(n as usize) {
                    if !r.seg.is_init(off + k, 1) {
                        return Err(self.fault(
                            Check::Initcheck,
                            wid,
                            l,
                            pc,
                            format!("cp.async reads global bytes at {:#x} never written since allocation", saddrs[l] + k as u64),
                        ));
                    }
                    *byte = r.seg.load(off + k, 1) as u8;
                }
            }
            let doff = self.shared_at(wid, l, pc, daddrs[l], cp_size)?;
            self.shadow(wid, l, pc, doff, cp_size, Access::AsyncIssue)?;
            w.pending.push(Pending {
                lane: l as u8,
                group: u32::MAX,
                dst: doff as u32,
                len: cp_size as u8,
                data,
            });
        }
        Ok(())
    }

    fn cp_wait(&mut self, w: &mut Warp, wid: u32, pc: usize, exec: u32, n: u32) -> Result<()> {
        // Land the copies in place (issue order), keeping the rest, without allocating.
        let mut i = 0;
        while i < w.pending.len() {
            let p = w.pending[i];
            let l = p.lane as usize;
            let committed = w.committed[l];
            let lands = exec >> l & 1 == 1 && p.group != u32::MAX && p.group + n < committed;
            if !lands {
                i += 1;
                continue;
            }
            w.pending.remove(i);
            let off = p.dst as usize;
            for g in off / 2..(off + p.len as usize).div_ceil(2) {
                self.shadow[g].inflight = 0;
            }
            self.shadow(wid, l, pc, off, p.len as u32, Access::Write)?;
            self.shared[off..off + p.len as usize].copy_from_slice(&p.data[..p.len as usize]);
        }
        Ok(())
    }

    // ----- counters -----

    /// A global request by lanes `exec`, each touching `size` bytes at its address (`bytes` in
    /// all, which a partial `cp.async` makes less than `size` per lane).
    fn count_global(&mut self, exec: u32, addrs: &[u64; 32], size: u32, bytes: u64, load: bool) {
        if exec == 0 {
            return;
        }
        let mut sectors = [0u64; 64];
        let mut n = 0;
        for l in lanes(exec) {
            let first = addrs[l] >> 5;
            let last = (addrs[l].saturating_add(size as u64 - 1)) >> 5;
            for s in first..=last.min(first + 1) {
                sectors[n] = s;
                n += 1;
            }
        }
        let s = &mut sectors[..n];
        s.sort_unstable();
        let mut distinct = 0;
        for i in 0..s.len() {
            if i == 0 || s[i] != s[i - 1] {
                distinct += 1;
            }
        }
        if load {
            self.c.global_load_requests += 1;
            self.c.global_load_sectors += distinct;
            self.c.global_load_bytes += bytes;
        } else {
            self.c.global_store_requests += 1;
            self.c.global_store_sectors += distinct;
            self.c.global_store_bytes += bytes;
        }
    }

    fn count_shared(&mut self, exec: u32, addrs: &[u64; 32], size: u32, load: bool) {
        if load {
            self.c.shared_load_requests += 1;
        } else {
            self.c.shared_store_requests += 1;
        }
        // 8-byte accesses are served per half warp, 16-byte ones per quarter warp.
        let per_phase = match size {
            16 => 8,
            8 => 16,
            _ => 32,
        };
        for p in 0..32 / per_phase {
            let m = if per_phase == 32 {
                u32::MAX
            } else {
                ((1u32 << per_phase) - 1) << (p * per_phase)
            };
            let phase = exec & m;
            if phase != 0 {
                self.count_phase(phase, addrs, size);
            }
        }
    }

    /// Wavefronts of one phase: the most distinct 4-byte words any bank must deliver.
    fn count_phase(&mut self, phase: u32, addrs: &[u64; 32], size: u32) {
        let mut words = [0u64; 128];
        let mut n = 0;
        for l in lanes(phase) {
            let first = addrs[l] >> 2;
            for k in 0..size.div_ceil(4) as u64 {
                words[n] = first + k;
                n += 1;
            }
        }
        let ws = &mut words[..n];
        ws.sort_unstable();
        let mut per_bank = [0u8; 32];
        for i in 0..ws.len() {
            if i == 0 || ws[i] != ws[i - 1] {
                per_bank[(ws[i] % 32) as usize] += 1;
            }
        }
        let wf = per_bank.iter().copied().max().unwrap_or(0).max(1) as u64;
        // Accesses wider than a word need size/4 wavefronts per 32 words at least.
        let ideal = (n as u64).div_ceil(32).max(1);
        self.c.shared_wavefronts += wf.max(ideal);
        self.c.shared_bank_conflicts += wf.max(ideal) - ideal;
    }
}

/// `cp.async.commit_group` for lanes `exec`: their uncommitted copies form a new group.
fn cp_commit(w: &mut Warp, exec: u32) {
    for p in w.pending.iter_mut() {
        if exec >> p.lane & 1 == 1 && p.group == u32::MAX {
            p.group = w.committed[p.lane as usize];
        }
    }
    for l in lanes(exec) {
        w.committed[l] += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Atomic,
    AsyncIssue,
}

#[inline]
fn read_reg(w: &Warp, r: Reg, l: usize) -> u64 {
    match r.file {
        File::B32 => w.r32[r.idx as usize][l] as u64,
        File::B64 => w.r64[r.idx as usize][l],
        File::Pred => ((w.pred[r.idx as usize] >> l) & 1) as u64,
    }
}

#[inline]
fn write_reg(w: &mut Warp, r: Reg, l: usize, v: u64) {
    match r.file {
        File::B32 => w.r32[r.idx as usize][l] = v as u32,
        File::B64 => w.r64[r.idx as usize][l] = v,
        File::Pred => {
            let p = &mut w.pred[r.idx as usize];
            *p = (*p & !(1 << l)) | (((v & 1) as u32) << l);
        }
    }
}

#[inline]
fn put(w: &mut Warp, d: Reg, v: &[u64; 32], exec: u32) {
    match d.file {
        File::B32 => {
            let r = &mut w.r32[d.idx as usize];
            if exec == u32::MAX {
                for l in 0..32 {
                    r[l] = v[l] as u32;
                }
            } else {
                for l in lanes(exec) {
                    r[l] = v[l] as u32;
                }
            }
        }
        File::B64 => {
            let r = &mut w.r64[d.idx as usize];
            for l in lanes(exec) {
                r[l] = v[l];
            }
        }
        File::Pred => {
            let mut bits = 0u32;
            for l in 0..32 {
                bits |= ((v[l] & 1) as u32) << l;
            }
            set_pred(w, d, bits, exec);
        }
    }
}

fn set_pred(w: &mut Warp, d: Reg, bits: u32, exec: u32) {
    let p = &mut w.pred[d.idx as usize];
    *p = (*p & !exec) | (bits & exec);
}

/// The type of a `.wide` result.
fn wide(ty: Ty) -> Ty {
    match ty {
        Ty::S16 => Ty::S32,
        Ty::U16 => Ty::U32,
        Ty::S32 => Ty::S64,
        _ => Ty::U64,
    }
}

fn int_bin(op: IntOp, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let m = mask_of(bits);
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    let (ua, ub) = (a & m, b & m);
    let signed = ty.signed();
    let r = match op {
        IntOp::Add => ua.wrapping_add(ub),
        IntOp::Sub => ua.wrapping_sub(ub),
        IntOp::MulLo => ua.wrapping_mul(ub),
        IntOp::MulHi => {
            if signed {
                ((sa as i128 * sb as i128) >> bits) as u64
            } else {
                ((ua as u128 * ub as u128) >> bits) as u64
            }
        }
        IntOp::MulWide => {
            let r = if signed {
                (sa as i128 * sb as i128) as u64
            } else {
                (ua as u128 * ub as u128) as u64
            };
            return r & mask_of(2 * bits);
        }
        IntOp::Div => {
            if ub == 0 {
                m
            } else if signed {
                sa.wrapping_div(sb) as u64
            } else {
                ua / ub
            }
        }
        IntOp::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                sa.wrapping_rem(sb) as u64
            } else {
                ua % ub
            }
        }
        IntOp::Min => {
            if signed {
                sa.min(sb) as u64
            } else {
                ua.min(ub)
            }
        }
        IntOp::Max => {
            if signed {
                sa.max(sb) as u64
            } else {
                ua.max(ub)
            }
        }
        IntOp::And => ua & ub,
        IntOp::Or => ua | ub,
        IntOp::Xor => ua ^ ub,
        IntOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= bits as u64 { 0 } else { ua << s }
        }
        IntOp::Shr => {
            let s = (b & 0xFFFF_FFFF).min(bits as u64);
            if signed {
                if s >= bits as u64 {
                    (sa >> 63) as u64
                } else {
                    (sa >> s) as u64
                }
            } else if s >= bits as u64 {
                0
            } else {
                ua >> s
            }
        }
    };
    r & m
}

fn int_un(op: IntUnOp, ty: Ty, a: u64) -> u64 {
    let bits = ty.bits();
    let m = mask_of(bits);
    let ua = a & m;
    let r = match op {
        IntUnOp::Not => !ua,
        IntUnOp::Neg => ua.wrapping_neg(),
        IntUnOp::Abs => sext(a, bits).unsigned_abs(),
        IntUnOp::Popc => ua.count_ones() as u64,
        IntUnOp::Clz => (ua.leading_zeros() - (64 - bits)) as u64,
        IntUnOp::Brev => ua.reverse_bits() >> (64 - bits),
        IntUnOp::Bfind { shiftamt } => {
            // The most significant non-sign bit; all ones when there is none.
            let v = if ty.signed() && sext(a, bits) < 0 {
                !ua & m
            } else {
                ua
            };
            if v == 0 {
                return 0xFFFF_FFFF;
            }
            let pos = 63 - v.leading_zeros() as u64;
            return if shiftamt {
                (bits as u64 - 1) - pos
            } else {
                pos
            };
        }
    };
    r & m
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    if ty.float() {
        let (x, y) = if ty == Ty::F64 {
            (f64::from_bits(a), f64::from_bits(b))
        } else {
            (f(a) as f64, f(b) as f64)
        };
        let unordered = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Num => !unordered,
            Cmp::Nan => unordered,
            Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => false,
        };
    }
    let bits = ty.bits();
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    let (ua, ub) = (a & mask_of(bits), b & mask_of(bits));
    let s = ty.signed();
    match cmp {
        Cmp::Eq => ua == ub,
        Cmp::Ne => ua != ub,
        Cmp::Lt => {
            if s {
                sa < sb
            } else {
                ua < ub
            }
        }
        Cmp::Le => {
            if s {
                sa <= sb
            } else {
                ua <= ub
            }
        }
        Cmp::Gt => {
            if s {
                sa > sb
            } else {
                ua > ub
            }
        }
        Cmp::Ge => {
            if s {
                sa >= sb
            } else {
                ua >= ub
            }
        }
        Cmp::Lo => ua < ub,
        Cmp::Ls => ua <= ub,
        Cmp::Hi => ua > ub,
        Cmp::Hs => ua >= ub,
        _ => false,
    }
}

/// `cvt`; `None` for a form the VM does not implement.
fn cvt(
    dty: Ty,
    sty: Ty,
    rnd: Option<Rnd>,
    irnd: Option<IRnd>,
    sat: bool,
    z: bool,
    a: u64,
) -> Option<u64> {
    let int = |t: Ty| !t.float() && t != Ty::Pred;
    Some(match (dty, sty) {
        (d, s) if int(d) && int(s) => {
            let v = typed(a, s);
            if sat {
                let (lo, hi) = if d.signed() {
                    (-(1i128 << (d.bits() - 1)), (1i128 << (d.bits() - 1)) - 1)
                } else {
                    (0, (1i128 << d.bits()) - 1)
                };
                let x = if s.signed() {
                    v as i64 as i128
                } else {
                    v as i128
                };
                x.clamp(lo, hi) as u64 & mask_of(d.bits())
            } else {
                v & mask_of(d.bits())
            }
        }
        (Ty::F32, Ty::Bf16) => fb(bf16_to_f32(a as u16)),
        (Ty::Bf16, Ty::F32) => {
            if rnd != Some(Rnd::Rn) {
                return None;
            }
            let mut x = f(a);
            if z {
                x = ftz(x);
            }
            if sat {
                x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
            }
            f32_to_bf16(x) as u64
        }
        (Ty::F32, s) if int(s) => {
            if rnd.is_some_and(|r| r != Rnd::Rn) {
                return None;
            }
            let v = typed(a, s);
            fb(if s.signed() {
                v as i64 as f32
            } else {
                v as f32
            })
        }
        (d, Ty::F32) if int(d) => {
            let mut x = f(a);
            if z {
                x = ftz(x);
            }
            let r = match irnd? {
                IRnd::Rni => x.round_ties_even(),
                IRnd::Rzi => x.trunc(),
                IRnd::Rmi => x.floor(),
                IRnd::Rpi => x.ceil(),
            };
            // Saturating; NaN to 0, except to a 64-bit integer: 1 << 63 (PTX ISA 9.0, cvt).
            let v: i128 = if r.is_nan() {
                if d.bits() == 64 { 1 << 63 } else { 0 }
            } else if d.signed() {
                let lo = -(1i128 << (d.bits() - 1));
                let hi = (1i128 << (d.bits() - 1)) - 1;
                (r as f64 as i128).clamp(lo, hi)
            } else {
                (r as f64 as i128).clamp(0, (1i128 << d.bits()) - 1)
            };
            v as u64 & mask_of(d.bits())
        }
        (Ty::F32, Ty::F32) => {
            let mut x = f(a);
            if z {
                x = ftz(x);
            }
            if let Some(i) = irnd {
                x = match i {
                    IRnd::Rni => x.round_ties_even(),
                    IRnd::Rzi => x.trunc(),
                    IRnd::Rmi => x.floor(),
                    IRnd::Rpi => x.ceil(),
                };
            }
            if sat {
                x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
            }
            fb(x)
        }
        (Ty::F64, Ty::F32) => (f(a) as f64).to_bits(),
        (Ty::F32, Ty::F64) => {
            if rnd != Some(Rnd::Rn) {
                return None;
            }
            fb(f64::from_bits(a) as f32)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_edge_cases() {
        // Shifts clamp their count.
        assert_eq!(int_bin(IntOp::Shl, Ty::B32, 1, 40), 0);
        assert_eq!(int_bin(IntOp::Shr, Ty::S32, 0x8000_0000, 99), 0xFFFF_FFFF);
        assert_eq!(int_bin(IntOp::Shr, Ty::U32, 0x8000_0000, 31), 1);
        // mul.hi / mul.wide.
        assert_eq!(int_bin(IntOp::MulHi, Ty::U32, 0xFFFF_FFFF, 2), 1);
        assert_eq!(
            int_bin(IntOp::MulWide, Ty::S32, (-3i32) as u32 as u64, 5),
            (-15i64) as u64
        );
        assert_eq!(
            int_bin(IntOp::MulWide, Ty::U32, 0xFFFF_FFFF, 0xFFFF_FFFF),
            0xFFFF_FFFE_0000_0001
        );
        // Signed division truncates toward zero; rem takes the dividend's sign.
        assert_eq!(
            int_bin(IntOp::Div, Ty::S32, (-7i32) as u32 as u64, 2),
            (-3i32) as u32 as u64
        );
        assert_eq!(
            int_bin(IntOp::Rem, Ty::S32, (-7i32) as u32 as u64, 2),
            (-1i32) as u32 as u64
        );
        assert_eq!(
            int_bin(IntOp::Min, Ty::S32, (-1i32) as u32 as u64, 1),
            0xFFFF_FFFF
        );
        assert_eq!(int_bin(IntOp::Min, Ty::U32, (-1i32) as u32 as u64, 1), 1);
        // bfind.shiftamt of 1 is 31; of 0 all ones.
        assert_eq!(int_un(IntUnOp::Bfind { shiftamt: true }, Ty::U32, 1), 31);
        assert_eq!(int_un(IntUnOp::Bfind { shiftamt: false }, Ty::U32, 0x80), 7);
        assert_eq!(
            int_un(IntUnOp::Bfind { shiftamt: false }, Ty::U32, 0),
            0xFFFF_FFFF
        );
        assert_eq!(int_un(IntUnOp::Brev, Ty::B32, 1), 0x8000_0000);
        assert_eq!(int_un(IntUnOp::Clz, Ty::B32, 1), 31);
        assert_eq!(int_un(IntUnOp::Popc, Ty::B32, 0xF0F0), 8);
    }

    #[test]
    fn conversions() {
        // Float to int saturates, NaN → 0.
        assert_eq!(
            cvt(
                Ty::S32,
                Ty::F32,
                None,
                Some(IRnd::Rzi),
                false,
                false,
                fb(3e10)
            ),
            Some(0x7FFF_FFFF)
        );
        assert_eq!(
            cvt(
                Ty::S32,
                Ty::F32,
                None,
                Some(IRnd::Rzi),
                false,
                false,
                fb(-2.7)
            ),
            Some((-2i32) as u32 as u64)
        );
        assert_eq!(
            cvt(
                Ty::S32,
                Ty::F32,
                None,
                Some(IRnd::Rzi),
                false,
                false,
                fb(f32::NAN)
            ),
            Some(0)
        );
        assert_eq!(
            cvt(
                Ty::F32,
                Ty::F32,
                None,
                Some(IRnd::Rmi),
                false,
                false,
                fb(-2.5)
            ),
            Some(fb(-3.0))
        );
        assert_eq!(
            cvt(Ty::F32, Ty::F32, None, None, true, false, fb(1.5)),
            Some(fb(1.0))
        );
        assert_eq!(
            cvt(Ty::F32, Ty::F32, None, None, true, false, fb(f32::NAN)),
            Some(fb(0.0))
        );
        assert_eq!(
            cvt(Ty::S64, Ty::S32, None, None, false, false, 0xFFFF_FFFF),
            Some(u64::MAX)
        );
        assert_eq!(
            cvt(Ty::U64, Ty::U32, None, None, false, false, 0xFFFF_FFFF),
            Some(0xFFFF_FFFF)
        );
        assert_eq!(
            cvt(Ty::U32, Ty::U64, None, None, false, false, 0x1_0000_0002),
            Some(2)
        );
        assert_eq!(
            cvt(
                Ty::F32,
                Ty::S32,
                Some(Rnd::Rn),
                None,
                false,
                false,
                (-5i32) as u32 as u64
            ),
            Some(fb(-5.0))
        );
        // 2^24 + 1 rounds to even.
        assert_eq!(
            cvt(
                Ty::F32,
                Ty::U32,
                Some(Rnd::Rn),
                None,
                false,
                false,
                16_777_217
            ),
            Some(fb(16_777_216.0))
        );
    }

    #[test]
    fn float_compares_are_ordered_unless_u() {
        let nan = fb(f32::NAN);
        assert!(!compare(Cmp::Ne, Ty::F32, nan, fb(1.0)));
        assert!(compare(Cmp::Neu, Ty::F32, nan, fb(1.0)));
        assert!(compare(Cmp::Geu, Ty::F32, nan, fb(1.0)));
        assert!(!compare(Cmp::Ge, Ty::F32, nan, fb(1.0)));
        assert!(compare(Cmp::Lt, Ty::S32, 0xFFFF_FFFF, 0));
        assert!(!compare(Cmp::Lt, Ty::U32, 0xFFFF_FFFF, 0));
    }
}
