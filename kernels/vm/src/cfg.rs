//! Control flow of a kernel: basic blocks and immediate post-dominators, which is where the lanes
//! of a warp that diverged at a branch meet again (the reconvergence point of the SIMT stack).

use crate::ir::{Instr, Op};

/// The exit node's index in the block graph (one past the last block).
const NONE: usize = usize::MAX;

/// For every instruction: the reconvergence instruction of a branch there (`u32::MAX` = exit;
/// other instructions get `u32::MAX` too, unused).
pub fn reconvergence(code: &[Instr]) -> Vec<u32> {
    let n = code.len();
    // Leaders: the first instruction, branch targets, and instructions after a branch or ret.
    let mut leader = vec![false; n + 1];
    leader[0] = true;
    for (pc, ins) in code.iter().enumerate() {
        match ins.op {
            Op::Bra { target } => {
                leader[target as usize] = true;
                leader[pc + 1] = true;
            }
            Op::Ret => leader[pc + 1] = true,
            _ => {}
        }
    }
    let starts: Vec<usize> = (0..n).filter(|&i| leader[i]).collect();
    let mut block_of = vec![0usize; n];
    for (b, &s) in starts.iter().enumerate() {
        let end = starts.get(b + 1).copied().unwrap_or(n);
        block_of[s..end].fill(b);
    }
    let nb = starts.len();
    let exit = nb;
    // Successors of each block (exit = nb).
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nb];
    for b in 0..nb {
        let end = starts.get(b + 1).copied().unwrap_or(n);
        let last = &code[end - 1];
        let fall = if end < n { block_of[end] } else { exit };
        match last.op {
            Op::Bra { target } => {
                succ[b].push(block_of[target as usize]);
                if last.guard.is_some() {
                    succ[b].push(fall);
                }
            }
            Op::Ret => {
                succ[b].push(exit);
                if last.guard.is_some() {
                    succ[b].push(fall);
                }
            }
            _ => succ[b].push(fall),
        }
    }
    let ipdom = post_dominators(&succ, exit);
    let mut out = vec![u32::MAX; n];
    for (pc, ins) in code.iter().enumerate() {
        if matches!(ins.op, Op::Bra { .. }) && ins.guard.is_some() {
            let p = ipdom[block_of[pc]];
            out[pc] = if p == exit || p == NONE {
                u32::MAX
            } else {
                starts[p] as u32
            };
        }
    }
    out
}

/// Immediate post-dominator of every block (`exit` for blocks whose only post-dominator is the
/// exit, `NONE` for blocks that cannot reach it), by Cooper, Harvey and Kennedy's iteration on
/// the reversed graph.
fn post_dominators(succ: &[Vec<usize>], exit: usize) -> Vec<usize> {
    let nb = succ.len();
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); nb + 1];
    for (b, ss) in succ.iter().enumerate() {
        for &s in ss {
            pred[s].push(b);
        }
    }
    // Postorder of the reversed graph from the exit (iterative DFS over predecessors).
    let mut order = Vec::with_capacity(nb + 1);
    let mut seen = vec![false; nb + 1];
    let mut stack = vec![(exit, 0usize)];
    seen[exit] = true;
    while let Some((v, i)) = stack.pop() {
        if i < pred[v].len() {
            stack.push((v, i + 1));
            let w = pred[v][i];
            if !seen[w] {
                seen[w] = true;
                stack.push((w, 0));
            }
        } else {
            order.push(v);
        }
    }
    let mut po = vec![usize::MAX; nb + 1];
    for (i, &v) in order.iter().enumerate() {
        po[v] = i;
    }
    let mut idom = vec![NONE; nb + 1];
    idom[exit] = exit;
    let mut changed = true;
    while changed {
        changed = false;
        for &b in order.iter().rev() {
            if b == exit {
                continue;
            }
            let mut new = NONE;
            for &s in &succ[b] {
                if idom[s] == NONE {
                    continue;
                }
                new = if new == NONE {
                    s
                } else {
                    let (mut x, mut y) = (s, new);
                    while x != y {
                        while po[x] < po[y] {
                            x = idom[x];
                        }
                        while po[y] < po[x] {
                            y = idom[y];
                        }
                    }
                    x
                };
            }
            if new != NONE && idom[b] != new {
                idom[b] = new;
                changed = true;
            }
        }
    }
    idom.truncate(nb);
    idom
}
