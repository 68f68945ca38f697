//! Per-launch performance counters, the questions a performance engineer asks first: how much
//! work was issued and how much of each warp did it (SIMT efficiency), are global accesses
//! coalesced (requests vs 32-byte sectors), does shared memory conflict (wavefronts vs the
//! ideal), how much is tensor-core math.

use crate::ir::Op;

/// Instruction families the counters group issued warp instructions by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Integer and bit arithmetic, compares and selects on integers.
    Int,
    /// f32 arithmetic (add, mul, fma, min/max, compares on floats).
    Fp32,
    /// Special functions: ex2, rcp, rsqrt, sqrt, div, lg2, sin, cos, tanh.
    Sfu,
    /// Conversions and moves.
    Move,
    /// Branches, returns, predicate logic.
    Control,
    LdGlobal,
    StGlobal,
    LdShared,
    StShared,
    Atomic,
    Param,
    Ldmatrix,
    CpAsync,
    Mma,
    /// shfl, vote, match.
    Warp,
    Barrier,
}

impl Family {
    pub const ALL: [Family; 16] = [
        Family::Int,
        Family::Fp32,
        Family::Sfu,
        Family::Move,
        Family::Control,
        Family::LdGlobal,
        Family::StGlobal,
        Family::LdShared,
        Family::StShared,
        Family::Atomic,
        Family::Param,
        Family::Ldmatrix,
        Family::CpAsync,
        Family::Mma,
        Family::Warp,
        Family::Barrier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Int => "int",
            Family::Fp32 => "fp32",
            Family::Sfu => "sfu",
            Family::Move => "move",
            Family::Control => "control",
            Family::LdGlobal => "ld_global",
            Family::StGlobal => "st_global",
            Family::LdShared => "ld_shared",
            Family::StShared => "st_shared",
            Family::Atomic => "atomic",
            Family::Param => "param",
            Family::Ldmatrix => "ldmatrix",
            Family::CpAsync => "cp_async",
            Family::Mma => "mma",
            Family::Warp => "warp",
            Family::Barrier => "barrier",
        }
    }

    pub fn of(op: &Op) -> Family {
        use crate::ir::{FOp, FUnOp, Space, Ty};
        match op {
            Op::Mov { .. }
            | Op::Pack { .. }
            | Op::Unpack { .. }
            | Op::Cvt { .. }
            | Op::CvtPack { .. } => Family::Move,
            Op::Int { .. } | Op::IntUn { .. } | Op::Mad { .. } | Op::Bfi { .. } => Family::Int,
            Op::F { op: FOp::Div, .. } => Family::Sfu,
            Op::F { .. } | Op::Fma { .. } => Family::Fp32,
            Op::FUn {
                op: FUnOp::Neg | FUnOp::Abs,
                ..
            } => Family::Fp32,
            Op::FUn { .. } => Family::Sfu,
            Op::Setp { ty, .. } => {
                if *ty == Ty::F32 {
                    Family::Fp32
                } else {
                    Family::Int
                }
            }
            Op::Selp { .. } => Family::Int,
            Op::PredOp { .. } | Op::Bra { .. } | Op::Ret => Family::Control,
            Op::Ld {
                space: Space::Param,
                ..
            } => Family::Param,
            Op::Ld {
                space: Space::Shared,
                ..
            } => Family::LdShared,
            Op::Ld { .. } => Family::LdGlobal,
            Op::St {
                space: Space::Shared,
                ..
            } => Family::StShared,
            Op::St { .. } => Family::StGlobal,
            Op::Atom { .. } => Family::Atomic,
            Op::Bar | Op::WarpSync { .. } => Family::Barrier,
            Op::Shfl { .. } | Op::Vote { .. } | Op::Match { .. } | Op::Redux { .. } => Family::Warp,
            Op::Mma { .. } => Family::Mma,
            Op::Ldmatrix { .. } => Family::Ldmatrix,
            Op::CpAsync { .. } | Op::CpAsyncCommit | Op::CpAsyncWait { .. } => Family::CpAsync,
        }
    }
}

/// Counts for one launch (summed over its CTAs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub ctas: u64,
    pub warps: u64,
    /// Warp instructions issued (a predicated-off instruction is still issued).
    pub warp_instructions: u64,
    /// Lane instructions executed: the active lanes of each issued instruction whose guard held.
    pub lane_instructions: u64,
    /// Warp instructions by [`Family`] (index = position in [`Family::ALL`]).
    pub by_family: [u64; 16],
    pub global_load_requests: u64,
    pub global_load_sectors: u64,
    /// Bytes the lanes asked for: sectors × 32 / bytes is the coalescing overhead (1 = ideal).
    pub global_load_bytes: u64,
    pub global_store_requests: u64,
    pub global_store_sectors: u64,
    pub global_store_bytes: u64,
    pub global_atomic_requests: u64,
    pub shared_load_requests: u64,
    pub shared_store_requests: u64,
    /// Shared-memory wavefronts (incl. ldmatrix and cp.async writes) and the extra wavefronts
    /// bank conflicts cost beyond the ideal.
    pub shared_wavefronts: u64,
    pub shared_bank_conflicts: u64,
    /// `mma.sync` warp instructions (each 16×8×16 multiply-adds = 4096 flops).
    pub mma: u64,
    /// `bar.sync` executed, counted per warp.
    pub barriers: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.ctas += o.ctas;
        self.warps += o.warps;
        self.warp_instructions += o.warp_instructions;
        self.lane_instructions += o.lane_instructions;
        for (a, b) in self.by_family.iter_mut().zip(o.by_family) {
            *a += b;
        }
        self.global_load_requests += o.global_load_requests;
        self.global_load_sectors += o.global_load_sectors;
        self.global_load_bytes += o.global_load_bytes;
        self.global_store_requests += o.global_store_requests;
        self.global_store_sectors += o.global_store_sectors;
        self.global_store_bytes += o.global_store_bytes;
        self.global_atomic_requests += o.global_atomic_requests;
        self.shared_load_requests += o.shared_load_requests;
        self.shared_store_requests += o.shared_store_requests;
        self.shared_wavefronts += o.shared_wavefronts;
        self.shared_bank_conflicts += o.shared_bank_conflicts;
        self.mma += o.mma;
        self.barriers += o.barriers;
    }

    /// Lane instructions over issued warp instructions × 32.
    pub fn simt_efficiency(&self) -> f64 {
        if self.warp_instructions == 0 {
            return 0.0;
        }
        self.lane_instructions as f64 / (32.0 * self.warp_instructions as f64)
    }

    pub fn family(&self, f: Family) -> u64 {
        self.by_family[Family::ALL.iter().position(|&x| x == f).unwrap_or(0)]
    }

    /// One JSON object (no trailing newline) with every counter, for `PALM_VM_PROFILE` lines.
    pub fn json_fields(&self) -> String {
        let fam: Vec<String> = Family::ALL
            .iter()
            .zip(self.by_family)
            .map(|(f, n)| format!("\"{}\":{n}", f.name()))
            .collect();
        format!(
            "\"ctas\":{},\"warps\":{},\"instructions\":{},\"lane_instructions\":{},\"simt_efficiency\":{:.4},\
             \"by_family\":{{{}}},\"global_load_requests\":{},\"global_load_sectors\":{},\"global_load_bytes\":{},\
             \"global_store_requests\":{},\"global_store_sectors\":{},\"global_store_bytes\":{},\"global_atomic_requests\":{},\
             \"shared_load_requests\":{},\"shared_store_requests\":{},\"shared_wavefronts\":{},\
             \"shared_bank_conflicts\":{},\"mma\":{},\"barriers\":{}",
            self.ctas,
            self.warps,
            self.warp_instructions,
            self.lane_instructions,
            self.simt_efficiency(),
            fam.join(","),
            self.global_load_requests,
            self.global_load_sectors,
            self.global_load_bytes,
            self.global_store_requests,
            self.global_store_sectors,
            self.global_store_bytes,
            self.global_atomic_requests,
            self.shared_load_requests,
            self.shared_store_requests,
            self.shared_wavefronts,
            self.shared_bank_conflicts,
            self.mma,
            self.barriers
        )
    }
}
