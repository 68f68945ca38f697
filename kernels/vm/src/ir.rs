//! The decoded form of a PTX kernel: what the parser produces and the executor runs. Registers
//! are dense indices into three files (32-bit, 64-bit, predicates); 16-bit registers live in the
//! 32-bit file, zero-extended. Every operand is resolved at parse time (symbols to addresses,
//! labels to instruction indices), so the executor's loop does no string handling.

/// A register file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// `.b16/.b32/.u32/.s32/.f32` and friends (16-bit values zero-extended).
    B32,
    /// `.b64/.u64/.s64/.f64`.
    B64,
    /// `.pred`.
    Pred,
}

/// One register: its file and index in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    pub file: File,
    pub idx: u32,
}

/// Special registers our PTX reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
}

/// A source operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    Reg(Reg),
    /// An immediate as raw bits (floats as their bit pattern in the instruction's type).
    Imm(u64),
    Sreg(Sreg),
}

/// A memory address: `[reg + offset]` or `[offset]` (symbols resolved into the offset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Addr {
    pub base: Option<Reg>,
    pub offset: i64,
}

/// Scalar types in instruction suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F32,
    F64,
    Bf16,
    Bf16x2,
    Pred,
}

impl Ty {
    pub fn bits(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }
    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub fn float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64 | Ty::Bf16 | Ty::Bf16x2)
    }
}

/// State spaces of memory instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
    /// No space given: a generic address (global memory in our kernels: the pointer tables).
    Generic,
}

/// Two-operand integer and bit operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

/// One-operand integer and bit operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntUnOp {
    Not,
    Neg,
    Abs,
    Popc,
    Clz,
    Brev,
    /// `bfind.u32`/`.s32` (`shiftamt` given separately).
    Bfind {
        shiftamt: bool,
    },
}

/// Rounding of floating-point results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    /// To nearest even (the default where an instruction has no modifier).
    Rn,
    Rz,
    Rm,
    Rp,
}

/// Two-operand f32 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    /// `div.rn` (IEEE), `div.full` and `div.approx` (both within 2 ulp; computed exactly here).
    Div,
    Min,
    Max,
    Copysign,
}

/// One-operand f32 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FUnOp {
    Neg,
    Abs,
    Sqrt,
    Rcp,
    Rsqrt,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
}

/// Comparisons of `setp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    // Unordered float comparisons (true when either is NaN).
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// Boolean operations on predicates (and `setp`'s combining form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

/// `shfl.sync` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// `vote.sync` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteMode {
    Ballot,
    All,
    Any,
    Uni,
}

/// `redux.sync` operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduxOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
}

/// `atom` / `red` operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    And,
    Or,
    Xor,
    Cas,
}

/// Integer rounding of float-to-float `cvt` (`.rni .rzi .rmi .rpi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IRnd {
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

/// A decoded instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Mov {
        d: Reg,
        a: Operand,
    },
    /// `mov.bN d, {a, b, …}`: pack parts (low first) of `part_bits` each.
    Pack {
        d: Reg,
        parts: Vec<Operand>,
        part_bits: u32,
    },
    /// `mov.bN {x, y, …}, a`: unpack (x gets the low part).
    Unpack {
        ds: Vec<Option<Reg>>,
        a: Operand,
        part_bits: u32,
    },
    Int {
        op: IntOp,
        ty: Ty,
        d: Reg,
        a: Operand,
        b: Operand,
    },
    IntUn {
        op: IntUnOp,
        ty: Ty,
        d: Reg,
        a: Operand,
    },
    /// `mad.lo/.hi/.wide`: `a·b + c` on the low/high half or widened.
    Mad {
        mode: IntOp,
        ty: Ty,
        d: Reg,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    /// `bfi.bN d, a, b, pos, len`: insert `len` low bits of a into b at `pos`.
    Bfi {
        ty: Ty,
        d: Reg,
        a: Operand,
        b: Operand,
        pos: Operand,
        len: Operand,
    },
    F {
        op: FOp,
        ftz: bool,
        rnd: Rnd,
        d: Reg,
        a: Operand,
        b: Operand,
    },
    FUn {
        op: FUnOp,
        /// Whether the result is the exact (correctly rounded) value or an approximation within
        /// the ISA's bound; the VM computes both correctly rounded.
        ftz: bool,
        d: Reg,
        a: Operand,
    },
    Fma {
        rnd: Rnd,
        ftz: bool,
        sat: bool,
        d: Reg,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        d: Reg,
        /// The complement destination of `setp … p|q`.
        d2: Option<Reg>,
        a: Operand,
        b: Operand,
        /// `setp.cmp.bool`: combine with a predicate (negated when the bool is true).
        comb: Option<(BoolOp, Reg, bool)>,
    },
    Selp {
        d: Reg,
        a: Operand,
        b: Operand,
        p: Reg,
        neg: bool,
    },
    /// `and/or/xor.pred` (b absent for `not.pred`).
    PredOp {
        op: Option<BoolOp>,
        d: Reg,
        a: Operand,
        b: Operand,
    },
    Cvt {
        dty: Ty,
        sty: Ty,
        rnd: Option<Rnd>,
        irnd: Option<IRnd>,
        sat: bool,
        ftz: bool,
        d: Reg,
        a: Operand,
    },
    /// `cvt.rn[.relu].bf16x2.f32 d, a, b`: a to the upper half, b to the lower.
    CvtPack {
        relu: bool,
        d: Reg,
        a: Operand,
        b: Operand,
    },
    Ld {
        space: Space,
        ty: Ty,
        ds: Vec<Reg>,
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        srcs: Vec<Operand>,
        addr: Addr,
    },
    Atom {
        space: Space,
        op: AtomOp,
        ty: Ty,
        /// Absent for `red`.
        d: Option<Reg>,
        addr: Addr,
        b: Operand,
        c: Option<Operand>,
    },
    Bra {
        target: u32,
    },
    Bar,
    /// `bar.warp.sync membermask` (`__syncwarp`).
    WarpSync {
        mask: Operand,
    },
    Ret,
    Shfl {
        mode: ShflMode,
        d: Reg,
        p: Option<Reg>,
        a: Operand,
        b: Operand,
        c: Operand,
        mask: Operand,
    },
    Vote {
        mode: VoteMode,
        d: Reg,
        p: Reg,
        neg: bool,
        mask: Operand,
    },
    /// `match.any.sync` (`all` false) or `match.all.sync d[|p]` (`all` true).
    Match {
        all: bool,
        ty: Ty,
        d: Reg,
        p: Option<Reg>,
        a: Operand,
        mask: Operand,
    },
    /// `redux.sync.op.ty d, a, membermask`.
    Redux {
        op: ReduxOp,
        ty: Ty,
        d: Reg,
        a: Operand,
        mask: Operand,
    },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`.
    Mma {
        d: [Reg; 4],
        a: [Reg; 4],
        b: [Reg; 2],
        c: [Operand; 4],
    },
    /// `ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16`.
    Ldmatrix {
        trans: bool,
        ds: Vec<Reg>,
        addr: Addr,
    },
    /// `cp.async.ca/cg.shared.global [dst], [src], cp_size[, src_size]`.
    CpAsync {
        dst: Addr,
        src: Addr,
        cp_size: u32,
        src_size: Option<Operand>,
    },
    CpAsyncCommit,
    /// `cp.async.wait_group n`, or `cp.async.wait_all` (`all`: the thread's uncommitted copies
    /// are waited for too, as by `cp.async.commit_group; cp.async.wait_group 0`).
    CpAsyncWait {
        n: u32,
        all: bool,
    },
}

/// An instruction with its guard predicate and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    pub guard: Option<(Reg, bool)>,
    pub op: Op,
    /// 1-based line in the PTX file, and its text (for messages).
    pub line: u32,
    pub text: Box<str>,
    /// Source location from `.loc` (index into [`Module::files`], line), when the PTX has line info.
    pub loc: Option<(u32, u32)>,
    /// Where that code was inlined (`.loc … inlined_at F L`), when it was.
    pub inlined_at: Option<(u32, u32)>,
}

impl Instr {
    /// The counter family of this instruction (see [`crate::counters`]).
    pub fn family(&self) -> crate::counters::Family {
        crate::counters::Family::of(&self.op)
    }
}

/// A kernel parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
    /// Byte offset in the parameter buffer (naturally aligned).
    pub offset: u32,
}

/// One `.entry`.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub param_bytes: u32,
    /// Register file sizes (32-bit, 64-bit, predicate).
    pub n32: u32,
    pub n64: u32,
    pub npred: u32,
    /// Static shared memory (module-level variables this kernel uses and its own), bytes.
    pub static_shared: u32,
    /// Offset of `.extern .shared` arrays (the end of static shared, aligned).
    pub extern_offset: u32,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
    pub code: Vec<Instr>,
    /// For each instruction index: where a divergent branch there reconverges (the immediate
    /// post-dominator), `u32::MAX` for the exit.
    pub reconverge: Vec<u32>,
    /// Line of the `.entry` in the PTX file.
    pub line: u32,
}

/// A parsed PTX module.
#[derive(Debug, Clone)]
pub struct Module {
    /// The name used in messages (e.g. `matmul.ptx`).
    pub name: String,
    pub kernels: Vec<Kernel>,
    /// `.file` names by index (the index the `.file` directive gives; gaps are empty).
    pub files: Vec<String>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
    /// "`file.ptx:LINE` (`src.cu:LINE`)" for an instruction, for messages; code inlined from a
    /// header also names the line it was inlined at: "(`header:LINE`, inlined at `src.cu:LINE`)".
    pub fn where_(&self, ins: &Instr) -> String {
        let file = |f: u32| {
            self.files
                .get(f as usize)
                .map(String::as_str)
                .unwrap_or("?")
        };
        match (ins.loc, ins.inlined_at) {
            (Some((f, l)), Some((fi, li))) => format!(
                "{}:{} ({}:{}, inlined at {}:{})",
                self.name,
                ins.line,
                file(f),
                l,
                file(fi),
                li
            ),
            (Some((f, l)), None) => format!("{}:{} ({}:{})", self.name, ins.line, file(f), l),
            _ => format!("{}:{}", self.name, ins.line),
        }
    }
}
