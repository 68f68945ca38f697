//! PTX text → [`Module`]: the subset our toolchain emits (ISA 9.0, `sm_90a`), checked strictly.
//! Anything not understood — a directive, an instruction form, a modifier, an operand — is an
//! error naming the file, line and text, never skipped.

use crate::ir::*;
use crate::{Error, Result};
use std::collections::HashMap;

/// Parse a PTX module. `name` is used in messages (e.g. `matmul.ptx`).
pub fn parse(name: &str, text: &str) -> Result<Module> {
    Parser::new(name).run(text)
}

/// A shared-memory variable (module level or a kernel's own).
#[derive(Debug, Clone)]
struct SharedVar {
    name: String,
    align: u32,
    /// `None` for `.extern` (dynamic) arrays.
    size: Option<u32>,
}

/// One raw statement of a kernel body, with its line and source location.
struct Stmt {
    text: String,
    line: u32,
    loc: Option<(u32, u32)>,
    inlined_at: Option<(u32, u32)>,
}

struct Parser {
    name: String,
    files: Vec<String>,
    module_shared: Vec<SharedVar>,
    kernels: Vec<Kernel>,
}

fn err(file: &str, line: u32, text: &str, msg: impl Into<String>) -> Error {
    Error::Parse {
        file: file.to_string(),
        line,
        text: text.trim().to_string(),
        msg: msg.into(),
    }
}

/// Strip a `//` comment.
fn strip_comment(s: &str) -> &str {
    match s.find("//") {
        Some(i) => &s[..i],
        None => s,
    }
}

/// Split a line into statements: `;`-terminated pieces, with scope braces (`{` opening an inline
/// asm block, `}` closing it) removed but vector braces (`{%r1, %r2}`) kept.
fn statements(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth_vec = 0;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => {
                // A vector operand starts with `{%` (after optional spaces) or `{_` (a sink).
                let rest: String = chars[i + 1..].iter().collect();
                let t = rest.trim_start();
                if t.starts_with('%') || t.starts_with('_') {
                    depth_vec += 1;
                    cur.push(c);
                } else if cur.trim().is_empty() {
                    out.push("{".to_string());
                    cur.clear();
                } else {
                    cur.push(c);
                }
            }
            '}' => {
                if depth_vec > 0 {
                    depth_vec -= 1;
                    cur.push(c);
                } else {
                    if !cur.trim().is_empty() {
                        out.push(cur.trim().to_string());
                    }
                    cur.clear();
                    out.push("}".to_string());
                }
            }
            ';' if depth_vec == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let body = body.strip_suffix('U').unwrap_or(body);
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()? as i64
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|b| b.is_ascii_digit()) {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else {
        body.parse::<u64>().ok()? as i64
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

fn ty_of(s: &str) -> Option<Ty> {
    Some(match s {
        "b8" => Ty::B8,
        "b16" => Ty::B16,
        "b32" => Ty::B32,
        "b64" => Ty::B64,
        "u8" => Ty::U8,
        "u16" => Ty::U16,
        "u32" => Ty::U32,
        "u64" => Ty::U64,
        "s8" => Ty::S8,
        "s16" => Ty::S16,
        "s32" => Ty::S32,
        "s64" => Ty::S64,
        "f32" => Ty::F32,
        "f64" => Ty::F64,
        "bf16" => Ty::Bf16,
        "bf16x2" => Ty::Bf16x2,
        "pred" => Ty::Pred,
        _ => return None,
    })
}

fn cmp_of(s: &str) -> Option<Cmp> {
    Some(match s {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

/// Split operands at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' => {
                depth += 1;
                cur.push(c)
            }
            '}' | ']' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Register declarations of one kernel: a name prefix (`%r` of `%r<30>`) or an exact name.
#[derive(Default)]
struct Regs {
    ranges: HashMap<String, (File, u32, u32)>,
    n32: u32,
    n64: u32,
    npred: u32,
}

impl Regs {
    fn declare(&mut self, ty: Ty, name: &str, count: Option<u32>) {
        let file = match ty {
            Ty::Pred => File::Pred,
            t if t.bits() == 64 => File::B64,
            _ => File::B32,
        };
        let n = count.unwrap_or(1);
        let slot = match file {
            File::B32 => &mut self.n32,
            File::B64 => &mut self.n64,
            File::Pred => &mut self.npred,
        };
        let base = *slot;
        *slot += n;
        let key = if count.is_some() {
            format!("{name}<>")
        } else {
            name.to_string()
        };
        self.ranges.insert(key, (file, base, n));
    }

    fn lookup(&self, name: &str) -> Option<Reg> {
        if let Some(&(file, base, _)) = self.ranges.get(name) {
            return Some(Reg { file, idx: base });
        }
        let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (prefix, num) = name.split_at(digits);
        let num: u32 = num.parse().ok()?;
        let &(file, base, n) = self.ranges.get(&format!("{prefix}<>"))?;
        (num < n).then_some(Reg {
            file,
            idx: base + num,
        })
    }
}

impl Parser {
    fn new(name: &str) -> Self {
        Parser {
            name: name.to_string(),
            files: Vec::new(),
            module_shared: Vec::new(),
            kernels: Vec::new(),
        }
    }

    fn run(mut self, text: &str) -> Result<Module> {
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        let mut address_size_seen = false;
        while i < lines.len() {
            let lno = i as u32 + 1;
            let raw = lines[i];
            let line = strip_comment(raw).trim();
            i += 1;
            if line.is_empty() {
                continue;
            }
            let bad = |msg: &str| err(&self.name, lno, raw, msg);
            let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
            match words[0] {
                ".version" => {
                    let v = words.get(1).copied().unwrap_or("");
                    let major: u32 = v
                        .split('.')
                        .next()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    if !(7..=9).contains(&major) {
                        return Err(bad("unsupported PTX ISA version (the VM knows 7.x–9.x)"));
                    }
                }
                ".target" => {
                    let t = words.get(1).copied().unwrap_or("").trim_end_matches(',');
                    if !matches!(t, "sm_80" | "sm_86" | "sm_89" | "sm_90" | "sm_90a") {
                        return Err(bad("unsupported target (the VM runs sm_80–sm_90a code)"));
                    }
                }
                ".address_size" => {
                    if words.get(1) != Some(&"64") {
                        return Err(bad("only 64-bit addressing is supported"));
                    }
                    address_size_seen = true;
                }
                ".file" => {
                    let idx: usize = words
                        .get(1)
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| bad("bad .file index"))?;
                    let q1 = line.find('"').ok_or_else(|| bad("bad .file name"))?;
                    let q2 = line[q1 + 1..]
                        .find('"')
                        .ok_or_else(|| bad("bad .file name"))?;
                    let fname = &line[q1 + 1..q1 + 1 + q2];
                    if self.files.len() <= idx {
                        self.files.resize(idx + 1, String::new());
                    }
                    self.files[idx] = fname.rsplit('/').next().unwrap_or(fname).to_string();
                }
                ".extern" | ".shared" => {
                    let v =
                        parse_shared_decl(line).ok_or_else(|| bad("bad .shared declaration"))?;
                    self.module_shared.push(v);
                }
                ".section" => {
                    // Debug sections (`-lineinfo`'s `.debug_str`): skip the braced block.
                    let mut depth = 0;
                    let mut opened = false;
                    let mut j = i - 1;
                    while j < lines.len() {
                        let t = strip_comment(lines[j]);
                        depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
                        opened |= t.contains('{');
                        j += 1;
                        if opened && depth <= 0 {
                            break;
                        }
                    }
                    if !opened || depth > 0 {
                        return Err(bad("unterminated .section"));
                    }
                    i = j;
                }
                ".visible" | ".entry" => {
                    if !address_size_seen {
                        return Err(bad(".entry before .address_size 64"));
                    }
                    i = self.kernel(&lines, i - 1)?;
                }
                _ => return Err(bad("unknown module-level directive")),
            }
        }
        Ok(Module {
            name: self.name,
            kernels: self.kernels,
            files: self.files,
        })
    }

    /// Parse the kernel whose `.entry` is on line index `start`; returns the index after it.
    fn kernel(&mut self, lines: &[&str], start: usize) -> Result<usize> {
        let file = self.name.clone();
        let header_line = start as u32 + 1;
        // Header: `.visible .entry NAME(` … `)` then performance directives, then `{`.
        let mut header = String::new();
        let mut i = start;
        loop {
            let l = lines
                .get(i)
                .ok_or_else(|| err(&file, header_line, lines[start], "unterminated .entry"))?;
            header.push_str(strip_comment(l));
            header.push(' ');
            i += 1;
            if strip_comment(l).contains(')') || strip_comment(l).trim_end().ends_with("()") {
                break;
            }
        }
        let open = header
            .find('(')
            .ok_or_else(|| err(&file, header_line, &header, "no parameter list"))?;
        let close = header
            .rfind(')')
            .ok_or_else(|| err(&file, header_line, &header, "no parameter list"))?;
        let name = header[..open]
            .split_whitespace()
            .last()
            .filter(|_| header[..open].contains(".entry"))
            .ok_or_else(|| err(&file, header_line, &header, "no .entry name"))?
            .to_string();
        let mut params = Vec::new();
        let mut param_bytes = 0u32;
        for p in header[open + 1..close].split(',') {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let (pname, ty, size, align) = parse_param(p)
                .ok_or_else(|| err(&file, header_line, p, "unsupported parameter declaration"))?;
            let offset = param_bytes.next_multiple_of(align);
            param_bytes = offset + size;
            params.push(Param {
                name: pname,
                ty,
                offset,
            });
        }
        let mut maxntid = None;
        let mut reqntid = None;
        // Directives up to the body's `{`.
        loop {
            let lno = i as u32 + 1;
            let l = lines
                .get(i)
                .ok_or_else(|| err(&file, header_line, &name, "kernel has no body"))?;
            let t = strip_comment(l).trim();
            i += 1;
            if t.is_empty() {
                continue;
            }
            if t == "{" {
                break;
            }
            let mut w = t.splitn(2, char::is_whitespace);
            let d = w.next().unwrap_or("");
            let rest = w.next().unwrap_or("");
            let dims = || -> Option<[u32; 3]> {
                let v: Vec<u32> = rest
                    .split(',')
                    .map(|x| x.trim().parse().ok())
                    .collect::<Option<_>>()?;
                Some([
                    *v.first()?,
                    v.get(1).copied().unwrap_or(1),
                    v.get(2).copied().unwrap_or(1),
                ])
            };
            match d {
                ".maxntid" => {
                    maxntid = Some(dims().ok_or_else(|| err(&file, lno, l, "bad .maxntid"))?)
                }
                ".reqntid" => {
                    reqntid = Some(dims().ok_or_else(|| err(&file, lno, l, "bad .reqntid"))?)
                }
                ".minnctapersm" | ".maxnreg" | ".maxnctapersm" => {}
                _ => return Err(err(&file, lno, l, "unknown kernel directive")),
            }
        }
        // Body: collect statements until the matching `}`.
        let mut depth = 1;
        let mut stmts: Vec<Stmt> = Vec::new();
        let mut loc = None;
        let mut inlined_at = None;
        let mut regs = Regs::default();
        let mut local_shared = Vec::new();
        while depth > 0 {
            let lno = i as u32 + 1;
            let l = lines
                .get(i)
                .ok_or_else(|| err(&file, header_line, &name, "unterminated kernel body"))?;
            i += 1;
            for s in statements(strip_comment(l)) {
                let s = s.trim();
                if s.is_empty() {
                    continue;
                }
                if s == "{" {
                    depth += 1;
                    continue;
                }
                if s == "}" {
                    depth -= 1;
                    continue;
                }
                if let Some(rest) = s.strip_prefix(".loc") {
                    // `.loc F L C[, function_name $L…, inlined_at F L C]`
                    let nums = |t: &str| -> Option<(u32, u32)> {
                        let w: Vec<&str> = t.split_whitespace().collect();
                        let f = w.first()?.parse().ok()?;
                        let l = w.get(1)?.trim_end_matches(',').parse().ok()?;
                        Some((f, l))
                    };
                    let (head, tail) = match rest.find("inlined_at") {
                        Some(p) => (&rest[..p], Some(&rest[p + "inlined_at".len()..])),
                        None => (rest, None),
                    };
                    loc = nums(head);
                    inlined_at = tail.and_then(nums);
                    continue;
                }
                if s.starts_with(".reg") {
                    parse_reg_decl(s, &mut regs)
                        .ok_or_else(|| err(&file, lno, l, "bad .reg declaration"))?;
                    continue;
                }
                if s.starts_with(".shared") {
                    local_shared.push(
                        parse_shared_decl(s)
                            .ok_or_else(|| err(&file, lno, l, "bad .shared declaration"))?,
                    );
                    continue;
                }
                if s.starts_with(".pragma") {
                    continue;
                }
                if s.starts_with('.') {
                    return Err(err(&file, lno, l, "unknown directive in a kernel body"));
                }
                stmts.push(Stmt {
                    text: s.to_string(),
                    line: lno,
                    loc,
                    inlined_at,
                });
            }
        }
        // Shared layout: the module-level variables this kernel names, then its own; extern
        // arrays after all static ones.
        let body_text: String = stmts
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let mut shared = HashMap::new();
        let mut off = 0u32;
        let mut extern_align = 16u32;
        let mut externs = Vec::new();
        let used = |v: &SharedVar| mentions(&body_text, &v.name);
        for v in self
            .module_shared
            .iter()
            .filter(|v| used(v))
            .chain(local_shared.iter())
        {
            match v.size {
                Some(sz) => {
                    off = off.next_multiple_of(v.align.max(1));
                    shared.insert(v.name.clone(), off);
                    off += sz;
                }
                None => {
                    extern_align = extern_align.max(v.align);
                    externs.push(v.name.clone());
                }
            }
        }
        let static_shared = off;
        let extern_offset = off.next_multiple_of(extern_align);
        for e in externs {
            shared.insert(e, extern_offset);
        }
        // Labels → instruction indices.
        let mut labels = HashMap::new();
        let mut instrs_text = Vec::new();
        for s in stmts {
            if let Some(label) = s.text.strip_suffix(':') {
                labels.insert(label.trim().to_string(), instrs_text.len() as u32);
            } else {
                instrs_text.push(s);
            }
        }
        let ctx = Decoder {
            file: &file,
            regs,
            params: params.iter().map(|p| (p.name.clone(), p.offset)).collect(),
            shared,
            labels,
        };
        let mut code = Vec::with_capacity(instrs_text.len());
        for s in &instrs_text {
            code.push(ctx.decode(s)?);
        }
        if !matches!(code.last().map(|c| &c.op), Some(Op::Ret | Op::Bra { .. })) {
            return Err(err(
                &file,
                header_line,
                &name,
                "kernel body does not end in ret or bra",
            ));
        }
        let reconverge = crate::cfg::reconvergence(&code);
        self.kernels.push(Kernel {
            name,
            params,
            param_bytes,
            n32: ctx.regs.n32,
            n64: ctx.regs.n64,
            npred: ctx.regs.npred,
            static_shared,
            extern_offset,
            maxntid,
            reqntid,
            code,
            reconverge,
            line: header_line,
        });
        Ok(i)
    }
}

/// Whether `text` names the identifier `name` (not as part of a longer identifier).
fn mentions(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut from = 0;
    while let Some(p) = text[from..].find(name) {
        let s = from + p;
        let e = s + name.len();
        let before = text[..s].chars().next_back();
        let after = text[e..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return true;
        }
        from = e;
    }
    false
}

/// `.param .u64 NAME` (optionally `.ptr .global .align N`), or `.param .align A .b8 NAME[N]`.
fn parse_param(p: &str) -> Option<(String, Ty, u32, u32)> {
    let words: Vec<&str> = p.split_whitespace().collect();
    if words.first() != Some(&".param") {
        return None;
    }
    let name = words.last()?.to_string();
    let mut ty = None;
    let mut align = None;
    let mut k = 1;
    while k < words.len() - 1 {
        let w = words[k];
        if w == ".align" {
            align = words.get(k + 1).and_then(|a| a.parse::<u32>().ok());
            k += 2;
            continue;
        }
        if w == ".ptr" || w == ".global" || w == ".shared" || w == ".const" {
            k += 1;
            continue;
        }
        ty = Some(ty_of(w.strip_prefix('.')?)?);
        k += 1;
    }
    let ty = ty?;
    if let Some(b) = name.find('[') {
        let n: u32 = name[b + 1..].trim_end_matches(']').parse().ok()?;
        return Some((
            name[..b].to_string(),
            ty,
            n * ty.bytes(),
            align.unwrap_or(ty.bytes()),
        ));
    }
    Some((name, ty, ty.bytes(), ty.bytes()))
}

/// `[.extern] .shared .align A .b8 NAME[N]` (`NAME[]` for extern).
fn parse_shared_decl(s: &str) -> Option<SharedVar> {
    let s = s.trim().trim_end_matches(';');
    let words: Vec<&str> = s.split_whitespace().collect();
    let is_extern = words.first() == Some(&".extern");
    let mut align = 1;
    let mut ty = None;
    let mut k = if is_extern { 1 } else { 0 };
    if words.get(k) != Some(&".shared") {
        return None;
    }
    k += 1;
    while k < words.len() - 1 {
        if words[k] == ".align" {
            align = words.get(k + 1)?.parse().ok()?;
            k += 2;
        } else {
            ty = Some(ty_of(words[k].strip_prefix('.')?)?);
            k += 1;
        }
    }
    let ty = ty.unwrap_or(Ty::B8);
    let decl = words.last()?;
    let (name, size) = match decl.find('[') {
        Some(b) => {
            let inner = decl[b + 1..].trim_end_matches(']');
            let size = if inner.is_empty() {
                None
            } else {
                Some(inner.parse::<u32>().ok()? * ty.bytes())
            };
            (decl[..b].to_string(), size)
        }
        None => (decl.to_string(), Some(ty.bytes())),
    };
    if is_extern != size.is_none() {
        return None;
    }
    Some(SharedVar {
        name,
        align: align.max(ty.bytes()),
        size,
    })
}

/// `.reg .TY %name<N>;` or `.reg .TY %a, %b;`
fn parse_reg_decl(s: &str, regs: &mut Regs) -> Option<()> {
    let s = s.trim().trim_end_matches(';');
    let rest = s.strip_prefix(".reg")?.trim_start();
    let (tyw, names) = rest.split_once(char::is_whitespace)?;
    let ty = ty_of(tyw.strip_prefix('.')?)?;
    for n in names.split(',') {
        let n = n.trim();
        if let Some(b) = n.find('<') {
            let count: u32 = n[b + 1..].trim_end_matches('>').parse().ok()?;
            regs.declare(ty, &n[..b], Some(count));
        } else {
            regs.declare(ty, n, None);
        }
    }
    Some(())
}

/// Modifiers of an opcode, consumed as they are recognised; leftovers are an error.
struct Mods<'a> {
    list: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn take(&mut self, m: &str) -> bool {
        match self.list.iter().position(|x| *x == m) {
            Some(p) => {
                self.list.remove(p);
                true
            }
            None => false,
        }
    }
    fn take_any(&mut self, ms: &[&str]) -> Option<&'a str> {
        let p = self.list.iter().position(|x| ms.contains(x))?;
        Some(self.list.remove(p))
    }
    /// The last type modifier.
    fn ty(&mut self) -> Option<Ty> {
        let p = self.list.iter().rposition(|x| ty_of(x).is_some())?;
        ty_of(self.list.remove(p))
    }
    fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        while let Some(p) = self.list.iter().position(|x| ty_of(x).is_some()) {
            out.push(ty_of(self.list.remove(p)).unwrap_or(Ty::B32));
        }
        out
    }
    fn space(&mut self) -> Space {
        match self.take_any(&["global", "shared", "param", "shared::cta", "local", "const"]) {
            Some("global") => Space::Global,
            Some("shared") | Some("shared::cta") => Space::Shared,
            Some("param") => Space::Param,
            Some(_) => Space::Generic, // rejected by the caller
            None => Space::Generic,
        }
    }
}

/// Everything the decoder of one kernel's statements needs.
struct Decoder<'a> {
    file: &'a str,
    regs: Regs,
    params: HashMap<String, u32>,
    shared: HashMap<String, u32>,
    labels: HashMap<String, u32>,
}

impl Decoder<'_> {
    fn decode(&self, s: &Stmt) -> Result<Instr> {
        let bad = |msg: String| err(self.file, s.line, &s.text, msg);
        let mut text = s.text.as_str();
        let mut guard = None;
        if let Some(rest) = text.strip_prefix('@') {
            let (g, r) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("guard without instruction".into()))?;
            let (neg, pname) = match g.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, g),
            };
            let p = self
                .regs
                .lookup(pname)
                .filter(|r| r.file == File::Pred)
                .ok_or_else(|| bad(format!("unknown guard predicate {g}")))?;
            guard = Some((p, neg));
            text = r.trim();
        }
        let (opcode, args) = match text.split_once(char::is_whitespace) {
            Some((o, a)) => (o, a.trim()),
            None => (text, ""),
        };
        let ops = split_operands(args);
        let op = self.op(opcode, &ops).map_err(bad)?;
        Ok(Instr {
            guard,
            op,
            line: s.line,
            text: s.text.as_str().into(),
            loc: s.loc,
            inlined_at: s.inlined_at,
        })
    }

    fn reg(&self, s: &str) -> std::result::Result<Reg, String> {
        self.regs
            .lookup(s.trim())
            .ok_or_else(|| format!("unknown register '{s}'"))
    }

    fn reg_in(&self, s: &str, file: File) -> std::result::Result<Reg, String> {
        let r = self.reg(s)?;
        if r.file != file {
            return Err(format!("register '{s}' is not a {file:?} register"));
        }
        Ok(r)
    }

    /// A source operand; `ty` decides how float literals and widths are read.
    fn operand(&self, s: &str, ty: Ty) -> std::result::Result<Operand, String> {
        let s = s.trim();
        if let Some(sr) = sreg(s) {
            return Ok(Operand::Sreg(sr));
        }
        if s.starts_with('%') {
            return Ok(Operand::Reg(self.reg(s)?));
        }
        if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
            let bits = u32::from_str_radix(h, 16).map_err(|_| format!("bad f32 literal '{s}'"))?;
            return Ok(Operand::Imm(match ty {
                Ty::F64 => f64::from(f32::from_bits(bits)).to_bits(),
                _ => bits as u64,
            }));
        }
        if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
            let bits = u64::from_str_radix(h, 16).map_err(|_| format!("bad f64 literal '{s}'"))?;
            return Ok(Operand::Imm(match ty {
                Ty::F32 => (f64::from_bits(bits) as f32).to_bits() as u64,
                _ => bits,
            }));
        }
        if let Some(v) = parse_int(s) {
            if ty == Ty::F32 {
                return Ok(Operand::Imm((v as f32).to_bits() as u64));
            }
            return Ok(Operand::Imm(v as u64));
        }
        if let Some(&off) = self.shared.get(s) {
            return Ok(Operand::Imm(off as u64));
        }
        Err(format!("unknown operand '{s}'"))
    }

    fn addr(&self, s: &str, space: Space) -> std::result::Result<Addr, String> {
        let inner = s
            .trim()
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| format!("expected an address, got '{s}'"))?
            .trim();
        let (base, off) = match inner.find('+') {
            Some(p) => (inner[..p].trim(), inner[p + 1..].trim()),
            None => (inner, ""),
        };
        let mut offset = if off.is_empty() {
            0
        } else {
            parse_int(off).ok_or_else(|| format!("bad address offset '{off}'"))?
        };
        let base = if base.starts_with('%') {
            Some(self.reg(base)?)
        } else if let Some(&p) = self.params.get(base).filter(|_| space == Space::Param) {
            offset += p as i64;
            None
        } else if let Some(&sh) = self.shared.get(base) {
            offset += sh as i64;
            None
        } else if let Some(v) = parse_int(base) {
            offset += v;
            None
        } else {
            return Err(format!("unknown address base '{base}'"));
        };
        Ok(Addr { base, offset })
    }

    fn vec_regs(&self, s: &str) -> std::result::Result<Vec<Reg>, String> {
        let inner = s
            .trim()
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| format!("expected a vector, got '{s}'"))?;
        inner.split(',').map(|r| self.reg(r)).collect()
    }

    fn vec_ops(&self, s: &str, ty: Ty) -> std::result::Result<Vec<Operand>, String> {
        let s = s.trim();
        match s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            Some(inner) => inner.split(',').map(|r| self.operand(r, ty)).collect(),
            None => Ok(vec![self.operand(s, ty)?]),
        }
    }

    /// A predicate source, possibly negated (`!%p1`).
    fn pred_src(&self, s: &str) -> std::result::Result<(Reg, bool), String> {
        let s = s.trim();
        match s.strip_prefix('!') {
            Some(p) => Ok((self.reg_in(p, File::Pred)?, true)),
            None => Ok((self.reg_in(s, File::Pred)?, false)),
        }
    }

    fn op(&self, opcode: &str, a: &[String]) -> std::result::Result<Op, String> {
        let mut parts = opcode.split('.');
        let base = parts.next().unwrap_or("");
        let mut m = Mods {
            list: parts.collect(),
        };
        let n = |k: usize| -> std::result::Result<(), String> {
            if a.len() == k {
                Ok(())
            } else {
                Err(format!("{base} takes {k} operands, got {}", a.len()))
            }
        };
        let op = match base {
            "mov" => {
                let ty = m.ty().ok_or("mov without a type")?;
                n(2)?;
                if a[0].starts_with('{') {
                    let ds = a[0]
                        .trim_matches(|c| c == '{' || c == '}')
                        .split(',')
                        .map(|r| {
                            let r = r.trim();
                            if r == "_" {
                                Ok(None)
                            } else {
                                self.reg(r).map(Some)
                            }
                        })
                        .collect::<std::result::Result<Vec<_>, String>>()?;
                    if !(2..=4).contains(&ds.len()) || ty.bits() % ds.len() as u32 != 0 {
                        return Err("mov unpacks into 2 to 4 equal parts".into());
                    }
                    let part_bits = ty.bits() / ds.len() as u32;
                    Op::Unpack {
                        ds,
                        a: self.operand(&a[1], ty)?,
                        part_bits,
                    }
                } else if a[1].starts_with('{') {
                    let parts = self.vec_ops(&a[1], Ty::B32)?;
                    if !(2..=4).contains(&parts.len()) || ty.bits() % parts.len() as u32 != 0 {
                        return Err("mov packs 2 to 4 equal parts".into());
                    }
                    let part_bits = ty.bits() / parts.len() as u32;
                    Op::Pack {
                        d: self.reg(&a[0])?,
                        parts,
                        part_bits,
                    }
                } else {
                    let d = self.reg(&a[0])?;
                    Op::Mov {
                        d,
                        a: self.operand(&a[1], ty)?,
                    }
                }
            }
            "cvta" => {
                if !(m.take("to") && m.take("global")) {
                    return Err("only cvta.to.global is supported".into());
                }
                m.ty();
                n(2)?;
                Op::Mov {
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], Ty::U64)?,
                }
            }
            "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor"
            | "shl" | "shr" | "copysign" => {
                let ty = m.ty().ok_or("no type")?;
                n(3)?;
                if ty == Ty::Pred {
                    let op = match base {
                        "and" => BoolOp::And,
                        "or" => BoolOp::Or,
                        "xor" => BoolOp::Xor,
                        _ => return Err("bad predicate operation".into()),
                    };
                    Op::PredOp {
                        op: Some(op),
                        d: self.reg_in(&a[0], File::Pred)?,
                        a: self.operand(&a[1], ty)?,
                        b: self.operand(&a[2], ty)?,
                    }
                } else if ty == Ty::F32 {
                    let ftz = m.take("ftz");
                    let rnd = rnd_of(&mut m);
                    let approx = m.take("approx") | m.take("full");
                    let _ = approx;
                    let op = match base {
                        "add" => FOp::Add,
                        "sub" => FOp::Sub,
                        "mul" => FOp::Mul,
                        "div" => FOp::Div,
                        "min" => FOp::Min,
                        "max" => FOp::Max,
                        "copysign" => FOp::Copysign,
                        _ => return Err(format!("{base} on f32")),
                    };
                    Op::F {
                        op,
                        ftz,
                        rnd: rnd.unwrap_or(Rnd::Rn),
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], ty)?,
                        b: self.operand(&a[2], ty)?,
                    }
                } else {
                    let op = match base {
                        "add" => IntOp::Add,
                        "sub" => IntOp::Sub,
                        "mul" => match m.take_any(&["lo", "hi", "wide"]) {
                            Some("lo") => IntOp::MulLo,
                            Some("hi") => IntOp::MulHi,
                            Some("wide") => IntOp::MulWide,
                            _ => return Err("integer mul needs .lo/.hi/.wide".into()),
                        },
                        "div" => IntOp::Div,
                        "rem" => IntOp::Rem,
                        "min" => IntOp::Min,
                        "max" => IntOp::Max,
                        "and" => IntOp::And,
                        "or" => IntOp::Or,
                        "xor" => IntOp::Xor,
                        "shl" => IntOp::Shl,
                        "shr" => IntOp::Shr,
                        _ => return Err(format!("{base} on integers")),
                    };
                    let src_ty = ty;
                    Op::Int {
                        op,
                        ty,
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], src_ty)?,
                        b: self.operand(
                            &a[2],
                            if matches!(op, IntOp::Shl | IntOp::Shr) {
                                Ty::U32
                            } else {
                                src_ty
                            },
                        )?,
                    }
                }
            }
            "mad" => {
                let mode = match m.take_any(&["lo", "hi", "wide"]) {
                    Some("lo") => IntOp::MulLo,
                    Some("hi") => IntOp::MulHi,
                    Some("wide") => IntOp::MulWide,
                    _ => return Err("mad needs .lo/.hi/.wide".into()),
                };
                let ty = m.ty().ok_or("no type")?;
                n(4)?;
                Op::Mad {
                    mode,
                    ty,
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], ty)?,
                    b: self.operand(&a[2], ty)?,
                    c: self.operand(&a[3], ty)?,
                }
            }
            "fma" => {
                let rnd = rnd_of(&mut m).ok_or("fma needs a rounding modifier")?;
                let ftz = m.take("ftz");
                let sat = m.take("sat");
                let ty = m.ty().ok_or("no type")?;
                if ty != Ty::F32 {
                    return Err("only fma.f32 is supported".into());
                }
                n(4)?;
                Op::Fma {
                    rnd,
                    ftz,
                    sat,
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], ty)?,
                    b: self.operand(&a[2], ty)?,
                    c: self.operand(&a[3], ty)?,
                }
            }
            "neg" | "abs" | "not" | "popc" | "clz" | "brev" | "bfind" | "sqrt" | "rcp"
            | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
                let shiftamt = m.take("shiftamt");
                let ty = m.ty().ok_or("no type")?;
                n(2)?;
                if ty == Ty::Pred {
                    if base != "not" {
                        return Err(format!("{base}.pred"));
                    }
                    Op::PredOp {
                        op: None,
                        d: self.reg_in(&a[0], File::Pred)?,
                        a: self.operand(&a[1], ty)?,
                        b: Operand::Imm(0),
                    }
                } else if ty == Ty::F32 {
                    let ftz = m.take("ftz");
                    let _ = m.take_any(&["approx", "rn", "full"]);
                    let op = match base {
                        "neg" => FUnOp::Neg,
                        "abs" => FUnOp::Abs,
                        "sqrt" => FUnOp::Sqrt,
                        "rcp" => FUnOp::Rcp,
                        "rsqrt" => FUnOp::Rsqrt,
                        "ex2" => FUnOp::Ex2,
                        "lg2" => FUnOp::Lg2,
                        "sin" => FUnOp::Sin,
                        "cos" => FUnOp::Cos,
                        "tanh" => FUnOp::Tanh,
                        _ => return Err(format!("{base} on f32")),
                    };
                    Op::FUn {
                        op,
                        ftz,
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], ty)?,
                    }
                } else {
                    let op = match base {
                        "neg" => IntUnOp::Neg,
                        "abs" => IntUnOp::Abs,
                        "not" => IntUnOp::Not,
                        "popc" => IntUnOp::Popc,
                        "clz" => IntUnOp::Clz,
                        "brev" => IntUnOp::Brev,
                        "bfind" => IntUnOp::Bfind { shiftamt },
                        _ => return Err(format!("{base} on integers")),
                    };
                    Op::IntUn {
                        op,
                        ty,
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], ty)?,
                    }
                }
            }
            "bfi" => {
                let ty = m.ty().ok_or("no type")?;
                n(5)?;
                Op::Bfi {
                    ty,
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], ty)?,
                    b: self.operand(&a[2], ty)?,
                    pos: self.operand(&a[3], Ty::U32)?,
                    len: self.operand(&a[4], Ty::U32)?,
                }
            }
            "setp" => {
                let cmp = m
                    .list
                    .first()
                    .and_then(|c| cmp_of(c))
                    .ok_or("setp needs a comparison")?;
                m.list.remove(0);
                let comb_op = match m.take_any(&["and", "or", "xor"]) {
                    Some("and") => Some(BoolOp::And),
                    Some("or") => Some(BoolOp::Or),
                    Some("xor") => Some(BoolOp::Xor),
                    _ => None,
                };
                let _ = m.take("ftz");
                let ty = m.ty().ok_or("no type")?;
                let (d, d2) = match a[0].split_once('|') {
                    Some((p, q)) => (
                        self.reg_in(p, File::Pred)?,
                        Some(self.reg_in(q, File::Pred)?),
                    ),
                    None => (self.reg_in(&a[0], File::Pred)?, None),
                };
                let comb = match comb_op {
                    Some(op) => {
                        n(4)?;
                        let (p, neg) = self.pred_src(&a[3])?;
                        Some((op, p, neg))
                    }
                    None => {
                        n(3)?;
                        None
                    }
                };
                Op::Setp {
                    cmp,
                    ty,
                    d,
                    d2,
                    a: self.operand(&a[1], ty)?,
                    b: self.operand(&a[2], ty)?,
                    comb,
                }
            }
            "selp" => {
                let ty = m.ty().ok_or("no type")?;
                n(4)?;
                let (p, neg) = self.pred_src(&a[3])?;
                Op::Selp {
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], ty)?,
                    b: self.operand(&a[2], ty)?,
                    p,
                    neg,
                }
            }
            "cvt" => {
                let relu = m.take("relu");
                let rnd = rnd_of(&mut m);
                let irnd = match m.take_any(&["rni", "rzi", "rmi", "rpi"]) {
                    Some("rni") => Some(IRnd::Rni),
                    Some("rzi") => Some(IRnd::Rzi),
                    Some("rmi") => Some(IRnd::Rmi),
                    Some("rpi") => Some(IRnd::Rpi),
                    _ => None,
                };
                let ftz = m.take("ftz");
                let sat = m.take("sat");
                let tys = m.types();
                if tys.len() != 2 {
                    return Err("cvt needs a destination and a source type".into());
                }
                let (dty, sty) = (tys[0], tys[1]);
                if dty == Ty::Bf16x2 {
                    if sty != Ty::F32 || rnd != Some(Rnd::Rn) {
                        return Err("only cvt.rn.bf16x2.f32 is supported".into());
                    }
                    n(3)?;
                    Op::CvtPack {
                        relu,
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], Ty::F32)?,
                        b: self.operand(&a[2], Ty::F32)?,
                    }
                } else {
                    if relu {
                        return Err(".relu only on bf16x2".into());
                    }
                    n(2)?;
                    Op::Cvt {
                        dty,
                        sty,
                        rnd,
                        irnd,
                        sat,
                        ftz,
                        d: self.reg(&a[0])?,
                        a: self.operand(&a[1], sty)?,
                    }
                }
            }
            "ld" | "st" => {
                let space = m.space();
                if m.list.iter().any(|x| matches!(*x, "local" | "const")) {
                    return Err("local/const memory is not supported".into());
                }
                let _ = m.take("nc");
                let _ = m.take_any(&["ca", "cg", "cs", "lu", "cv", "wb", "wt", "volatile"]);
                let vec = match m.take_any(&["v2", "v4"]) {
                    Some("v2") => 2,
                    Some("v4") => 4,
                    _ => 1,
                };
                let ty = m.ty().ok_or("no type")?;
                n(2)?;
                if base == "ld" {
                    let ds = if vec > 1 {
                        self.vec_regs(&a[0])?
                    } else {
                        vec![self.reg(&a[0])?]
                    };
                    if ds.len() != vec {
                        return Err("vector width mismatch".into());
                    }
                    Op::Ld {
                        space,
                        ty,
                        ds,
                        addr: self.addr(&a[1], space)?,
                    }
                } else {
                    let srcs = self.vec_ops(&a[1], ty)?;
                    if srcs.len() != vec {
                        return Err("vector width mismatch".into());
                    }
                    Op::St {
                        space,
                        ty,
                        srcs,
                        addr: self.addr(&a[0], space)?,
                    }
                }
            }
            "atom" | "red" => {
                let space = m.space();
                let _ = m.take_any(&["relaxed", "acq_rel", "acquire", "release"]);
                let _ = m.take_any(&["gpu", "cta", "sys"]);
                let op = match m.take_any(&["add", "min", "max", "exch", "and", "or", "xor", "cas"])
                {
                    Some("add") => AtomOp::Add,
                    Some("min") => AtomOp::Min,
                    Some("max") => AtomOp::Max,
                    Some("exch") => AtomOp::Exch,
                    Some("and") => AtomOp::And,
                    Some("or") => AtomOp::Or,
                    Some("xor") => AtomOp::Xor,
                    Some("cas") => AtomOp::Cas,
                    _ => return Err("unknown atomic operation".into()),
                };
                let ty = m.ty().ok_or("no type")?;
                if base == "atom" {
                    let k = if op == AtomOp::Cas { 4 } else { 3 };
                    n(k)?;
                    Op::Atom {
                        space,
                        op,
                        ty,
                        d: Some(self.reg(&a[0])?),
                        addr: self.addr(&a[1], space)?,
                        b: self.operand(&a[2], ty)?,
                        c: if k == 4 {
                            Some(self.operand(&a[3], ty)?)
                        } else {
                            None
                        },
                    }
                } else {
                    n(2)?;
                    Op::Atom {
                        space,
                        op,
                        ty,
                        d: None,
                        addr: self.addr(&a[0], space)?,
                        b: self.operand(&a[1], ty)?,
                        c: None,
                    }
                }
            }
            "bra" => {
                let _ = m.take("uni");
                n(1)?;
                let target = *self
                    .labels
                    .get(a[0].trim())
                    .ok_or_else(|| format!("unknown label '{}'", a[0]))?;
                Op::Bra { target }
            }
            "bar" if m.list.first() == Some(&"warp") => {
                m.list.clear();
                if opcode != "bar.warp.sync" {
                    return Err("only bar.warp.sync is supported".into());
                }
                n(1)?;
                Op::WarpSync {
                    mask: self.operand(&a[0], Ty::B32)?,
                }
            }
            "bar" | "barrier" => {
                let _ = m.take("aligned");
                if !(m.take("sync") || m.take("cta")) && base == "bar" {
                    return Err("only bar.sync is supported".into());
                }
                let _ = m.take("sync");
                n(1)?;
                if parse_int(&a[0]) != Some(0) {
                    return Err("only barrier 0 with all threads is supported".into());
                }
                Op::Bar
            }
            "ret" | "exit" => {
                n(0)?;
                Op::Ret
            }
            "shfl" => {
                if !m.take("sync") {
                    return Err("only shfl.sync is supported".into());
                }
                let mode = match m.take_any(&["up", "down", "bfly", "idx"]) {
                    Some("up") => ShflMode::Up,
                    Some("down") => ShflMode::Down,
                    Some("bfly") => ShflMode::Bfly,
                    _ => ShflMode::Idx,
                };
                let _ = m.ty();
                n(5)?;
                let (d, p) = match a[0].split_once('|') {
                    Some((d, p)) => (self.reg(d)?, Some(self.reg_in(p, File::Pred)?)),
                    None => (self.reg(&a[0])?, None),
                };
                Op::Shfl {
                    mode,
                    d,
                    p,
                    a: self.operand(&a[1], Ty::B32)?,
                    b: self.operand(&a[2], Ty::B32)?,
                    c: self.operand(&a[3], Ty::B32)?,
                    mask: self.operand(&a[4], Ty::B32)?,
                }
            }
            "vote" => {
                if !m.take("sync") {
                    return Err("only vote.sync is supported".into());
                }
                let mode = match m.take_any(&["ballot", "all", "any", "uni"]) {
                    Some("ballot") => VoteMode::Ballot,
                    Some("all") => VoteMode::All,
                    Some("any") => VoteMode::Any,
                    Some("uni") => VoteMode::Uni,
                    _ => return Err("unknown vote mode".into()),
                };
                let _ = m.ty();
                n(3)?;
                let (p, neg) = self.pred_src(&a[1])?;
                Op::Vote {
                    mode,
                    d: self.reg(&a[0])?,
                    p,
                    neg,
                    mask: self.operand(&a[2], Ty::B32)?,
                }
            }
            "match" => {
                let all = match m.take_any(&["any", "all"]) {
                    Some("any") => false,
                    Some("all") => true,
                    _ => return Err("match needs .any or .all".into()),
                };
                if !m.take("sync") {
                    return Err("only match.sync is supported".into());
                }
                let ty = m.ty().ok_or("no type")?;
                n(3)?;
                let (d, p) = match a[0].split_once('|') {
                    Some((d, p)) if all => (self.reg(d)?, Some(self.reg_in(p, File::Pred)?)),
                    Some(_) => return Err("match.any has no predicate destination".into()),
                    None => (self.reg(&a[0])?, None),
                };
                Op::Match {
                    all,
                    ty,
                    d,
                    p,
                    a: self.operand(&a[1], ty)?,
                    mask: self.operand(&a[2], Ty::B32)?,
                }
            }
            "redux" => {
                if !m.take("sync") {
                    return Err("only redux.sync is supported".into());
                }
                let op = match m.take_any(&["add", "min", "max", "and", "or", "xor"]) {
                    Some("add") => ReduxOp::Add,
                    Some("min") => ReduxOp::Min,
                    Some("max") => ReduxOp::Max,
                    Some("and") => ReduxOp::And,
                    Some("or") => ReduxOp::Or,
                    Some("xor") => ReduxOp::Xor,
                    _ => return Err("unknown redux operation".into()),
                };
                let ty = m.ty().ok_or("no type")?;
                if ty.bits() != 32 || ty.float() {
                    return Err("redux.sync takes a 32-bit integer type".into());
                }
                n(3)?;
                Op::Redux {
                    op,
                    ty,
                    d: self.reg(&a[0])?,
                    a: self.operand(&a[1], ty)?,
                    mask: self.operand(&a[2], Ty::B32)?,
                }
            }
            "mma" => {
                let want = [
                    "sync", "aligned", "m16n8k16", "row", "col", "f32", "bf16", "bf16", "f32",
                ];
                if m.list != want {
                    return Err(
                        "only mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 is supported"
                            .into(),
                    );
                }
                m.list.clear();
                n(4)?;
                let d = self.vec_regs(&a[0])?;
                let av = self.vec_regs(&a[1])?;
                let bv = self.vec_regs(&a[2])?;
                let cv = self.vec_ops(&a[3], Ty::F32)?;
                if d.len() != 4 || av.len() != 4 || bv.len() != 2 || cv.len() != 4 {
                    return Err("m16n8k16 takes 4 D, 4 A, 2 B and 4 C registers".into());
                }
                Op::Mma {
                    d: [d[0], d[1], d[2], d[3]],
                    a: [av[0], av[1], av[2], av[3]],
                    b: [bv[0], bv[1]],
                    c: [cv[0], cv[1], cv[2], cv[3]],
                }
            }
            "ldmatrix" => {
                if !(m.take("sync") && m.take("aligned") && m.take("m8n8")) {
                    return Err("only ldmatrix.sync.aligned.m8n8 is supported".into());
                }
                let num = match m.take_any(&["x1", "x2", "x4"]) {
                    Some("x1") => 1,
                    Some("x2") => 2,
                    Some("x4") => 4,
                    _ => return Err("ldmatrix needs .x1/.x2/.x4".into()),
                };
                let trans = m.take("trans");
                if m.space() != Space::Shared || m.ty() != Some(Ty::B16) {
                    return Err("ldmatrix must be .shared.b16".into());
                }
                n(2)?;
                let ds = self.vec_regs(&a[0])?;
                if ds.len() != num {
                    return Err("ldmatrix destination count differs from .xN".into());
                }
                Op::Ldmatrix {
                    trans,
                    ds,
                    addr: self.addr(&a[1], Space::Shared)?,
                }
            }
            "cp" => {
                if !m.take("async") {
                    return Err("only cp.async is supported".into());
                }
                if m.take("commit_group") {
                    n(0)?;
                    Op::CpAsyncCommit
                } else if m.take("wait_group") {
                    n(1)?;
                    Op::CpAsyncWait {
                        n: parse_int(&a[0]).ok_or("wait_group needs a constant")? as u32,
                        all: false,
                    }
                } else if m.take("wait_all") {
                    n(0)?;
                    Op::CpAsyncWait { n: 0, all: true }
                } else {
                    let _ = m.take_any(&["ca", "cg"]);
                    let dst_space = m.space();
                    let src_space = m.space();
                    if dst_space != Space::Shared || src_space != Space::Global {
                        return Err("cp.async must be .shared.global".into());
                    }
                    if a.len() != 3 && a.len() != 4 {
                        return Err("cp.async takes 3 or 4 operands".into());
                    }
                    let cp_size = parse_int(&a[2]).ok_or("cp-size must be a constant")? as u32;
                    if ![4, 8, 16].contains(&cp_size) {
                        return Err("cp-size must be 4, 8 or 16".into());
                    }
                    Op::CpAsync {
                        dst: self.addr(&a[0], Space::Shared)?,
                        src: self.addr(&a[1], Space::Global)?,
                        cp_size,
                        src_size: match a.get(3) {
                            Some(s) => Some(self.operand(s, Ty::U32)?),
                            None => None,
                        },
                    }
                }
            }
            _ => return Err(format!("unknown instruction '{opcode}'")),
        };
        if !m.list.is_empty() {
            return Err(format!(
                "unsupported modifier(s) {:?} on '{opcode}'",
                m.list
            ));
        }
        if let Op::Ld {
            space: Space::Generic,
            ..
        }
        | Op::St {
            space: Space::Generic,
            ..
        } = &op
        {
            // fine: generic addresses resolve to global memory
        }
        Ok(op)
    }
}

fn rnd_of(m: &mut Mods) -> Option<Rnd> {
    match m.take_any(&["rn", "rz", "rm", "rp"]) {
        Some("rn") => Some(Rnd::Rn),
        Some("rz") => Some(Rnd::Rz),
        Some("rm") => Some(Rnd::Rm),
        Some("rp") => Some(Rnd::Rp),
        _ => None,
    }
}

fn sreg(s: &str) -> Option<Sreg> {
    let dim = |c: &str| match c {
        "x" => Some(0),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (name, d) = s.split_once('.').unwrap_or((s, ""));
    Some(match name {
        "%tid" => Sreg::Tid(dim(d)?),
        "%ntid" => Sreg::Ntid(dim(d)?),
        "%ctaid" => Sreg::Ctaid(dim(d)?),
        "%nctaid" => Sreg::Nctaid(dim(d)?),
        "%laneid" if d.is_empty() => Sreg::LaneId,
        "%warpid" if d.is_empty() => Sreg::WarpId,
        _ => return None,
    })
}
