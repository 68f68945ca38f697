//! A virtual machine that executes PTX — the exact text our kernels compile to — on the CPU.
//!
//! - [`parse`] decodes a module once ([`ir`]); unknown forms are errors naming the line.
//! - [`launch`] runs a kernel over a grid: each warp's 32 lanes in lockstep with an active mask,
//!   divergent lanes reconverging at the branch's immediate post-dominator ([`cfg`]), `bar.sync`
//!   over the CTA, CTAs independent and run in parallel.
//! - Every launch is checked like compute-sanitizer, stricter ([`Check`]): memcheck per live
//!   allocation, racecheck on shared memory within a barrier interval (across warps and lanes),
//!   initcheck on global and shared reads, synccheck on barriers, `.sync` collectives and
//!   `cp.async` groups. The first finding fails the launch with a [`Fault`] naming the kernel,
//!   block, thread and PTX line (and the `.cu` line when the PTX has line info).
//! - Each launch returns [`Counters`] for performance work.
//!
//! What it cannot tell: timing, the driver's JIT, register limits, bit-exact tensor-core rounding
//! (mma accumulates exactly here, then rounds once), weak memory ordering.

// Lane loops index several per-lane arrays by the lane number; iterators would hide that.
#![allow(clippy::needless_range_loop)]
// An instruction's handler takes the warp, its id, the pc, the masks and the operands.
#![allow(clippy::too_many_arguments)]

pub mod cfg;
pub mod counters;
mod exec;
pub mod ir;
pub mod memory;
pub mod numeric;
pub mod parse;

pub use counters::{Counters, Family};
pub use exec::{Arg, LaunchConfig, Settings, launch};
pub use ir::Module;
pub use memory::Memory;
pub use parse::parse;

/// Which check found a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// An access outside its allocation or shared memory, or misaligned.
    Memcheck,
    /// Two threads touching the same shared bytes within one barrier interval, one writing.
    Racecheck,
    /// A read of bytes never written since allocation (global) or since the CTA began (shared).
    Initcheck,
    /// A barrier or `.sync` collective reached by part of its members; a `cp.async` destination
    /// read before its group was waited for.
    Synccheck,
    /// An instruction that cannot execute (division of the grid, a fall off the code).
    Execution,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Check::Memcheck => "memcheck",
            Check::Racecheck => "racecheck",
            Check::Initcheck => "initcheck",
            Check::Synccheck => "synccheck",
            Check::Execution => "execution",
        })
    }
}

/// A finding of a launch: where, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub check: Check,
    pub kernel: String,
    pub block: [u32; 3],
    pub thread: [u32; 3],
    /// `file.ptx:LINE (src.cu:LINE)`, or `file.ptx:LINE (header:LINE, inlined at src.cu:LINE)`.
    pub at: String,
    /// The PTX instruction text.
    pub instruction: String,
    pub msg: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: kernel {} block ({},{},{}) thread ({},{},{}) at {} `{}`: {}",
            self.check,
            self.kernel,
            self.block[0],
            self.block[1],
            self.block[2],
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.at,
            self.instruction,
            self.msg
        )
    }
}

/// Errors of the VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// PTX the VM does not understand.
    Parse {
        file: String,
        line: u32,
        text: String,
        msg: String,
    },
    /// A launch that cannot start (unknown kernel, wrong arguments, bad shape).
    Launch(String),
    /// A check failed while the kernel ran.
    Fault(Box<Fault>),
    /// A host-side memory operation outside live memory, or reading unwritten bytes.
    Memory(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Parse {
                file,
                line,
                text,
                msg,
            } => write!(f, "{file}:{line}: {msg}: `{text}`"),
            Error::Launch(m) | Error::Memory(m) => f.write_str(m),
            Error::Fault(fault) => fault.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
