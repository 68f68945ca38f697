//! The device behind `PALM_CUDA_EMULATE=1` (and behind the CUDA tests on a machine without a
//! GPU): the PTX virtual machine (`palm-ptx-vm`) executing the committed PTX on the CPU, with
//! its memory standing in for device memory. The pool, the launch plans and the launch checks
//! are the same as on a GPU; only the driver calls are replaced.
//!
//! Settings from the environment, read when the device opens:
//! - `PALM_VM_SMS` — the SM count the device reports (default 16; plans size grids and choose
//!   tiles by it, so a small count reaches the large-tile paths at small shapes);
//! - `PALM_VM_THREADS` — host threads running CTAs (default: all cores; 1 runs CTAs in order,
//!   which makes float atomics deterministic);
//! - `PALM_VM_PROFILE=PATH` — append one JSON line of counters per launch to PATH.

use super::launch::{KArg, LaunchCfg};
use crate::{Error, Result};
use palm_kernels::Family;
use palm_ptx_vm as vm;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// SM count of the VM device unless `PALM_VM_SMS` says otherwise.
pub const DEFAULT_VM_SMS: u32 = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn vm_err(e: vm::Error) -> Error {
    Error::Driver(format!("PTX VM: {e}"))
}

/// A numeric setting's value (`None` when unset or blank).
fn parse_num(name: &str, value: Option<&str>) -> Result<Option<u64>> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Invalid(format!("{name}={v}: expected a non-negative integer"))),
        _ => Ok(None),
    }
}

/// `PALM_VM_SMS`: 1 to 1024, default [`DEFAULT_VM_SMS`].
fn sms_setting(value: Option<&str>) -> Result<u32> {
    let sms = parse_num("PALM_VM_SMS", value)?.unwrap_or(DEFAULT_VM_SMS as u64);
    if sms == 0 || sms > 1024 {
        return Err(Error::Invalid(format!(
            "PALM_VM_SMS={sms}: expected 1 to 1024"
        )));
    }
    Ok(sms as u32)
}

/// `PALM_VM_THREADS`: host threads for CTAs (0 or unset: all cores), at most 1024.
fn threads_setting(value: Option<&str>) -> Result<usize> {
    Ok(parse_num("PALM_VM_THREADS", value)?.unwrap_or(0).min(1024) as usize)
}

/// The VM as a device: memory, parsed modules, settings, and what was launched.
pub struct Vm {
    pub mem: vm::Memory,
    modules: Mutex<HashMap<&'static str, Arc<vm::Module>>>,
    settings: vm::Settings,
    pub sms: u32,
    profile: Option<Mutex<std::fs::File>>,
    stats: Mutex<BTreeMap<String, KernelStats>>,
}

/// What the VM ran of one kernel in this process.
#[derive(Debug, Clone, Default)]
pub struct KernelStats {
    pub launches: u64,
    /// Counters summed over the launches.
    pub counters: vm::Counters,
}

impl Vm {
    pub fn from_env() -> Result<Vm> {
        let env = |name: &str| std::env::var(name).ok();
        let sms = sms_setting(env("PALM_VM_SMS").as_deref())?;
        let threads = threads_setting(env("PALM_VM_THREADS").as_deref())?;
        let profile = match std::env::var("PALM_VM_PROFILE") {
            Ok(p) if !p.trim().is_empty() => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|source| Error::Io {
                        path: p.clone().into(),
                        source,
                    })?;
                Some(Mutex::new(f))
            }
            _ => None,
        };
        Ok(Vm {
            mem: vm::Memory::new(),
            modules: Mutex::new(HashMap::new()),
            settings: vm::Settings {
                threads,
                ..vm::Settings::default()
            },
            sms,
            profile,
            stats: Mutex::new(BTreeMap::new()),
        })
    }

    /// The family's module, parsed on first use.
    fn module(&self, family: &'static Family) -> Result<Arc<vm::Module>> {
        let mut mods = lock(&self.modules);
        if let Some(m) = mods.get(family.name) {
            return Ok(m.clone());
        }
        let m = Arc::new(vm::parse(&format!("{}.ptx", family.name), family.ptx).map_err(vm_err)?);
        mods.insert(family.name, m.clone());
        Ok(m)
    }

    /// Run one launch (already checked against the PTX signature by the caller).
    pub fn launch(
        &self,
        family: &'static Family,
        name: &str,
        cfg: &LaunchCfg,
        args: &[KArg],
    ) -> Result<()> {
        let module = self.module(family)?;
        let vargs: Vec<vm::Arg> = args
            .iter()
            .map(|a| match *a {
                KArg::Ptr(v) | KArg::U64(v) => vm::Arg::B64(v),
                KArg::I64(v) => vm::Arg::B64(v as u64),
                KArg::I32(v) => vm::Arg::B32(v as u32),
                KArg::U32(v) => vm::Arg::B32(v),
                KArg::F32(v) => vm::Arg::B32(v.to_bits()),
            })
            .collect();
        let vcfg = vm::LaunchConfig {
            grid: [cfg.grid.0, cfg.grid.1, cfg.grid.2],
            block: [cfg.block.0, cfg.block.1, cfg.block.2],
            shared_bytes: cfg.shared_bytes,
        };
        let counters =
            vm::launch(&module, name, &vcfg, &vargs, &self.mem, &self.settings).map_err(vm_err)?;
        {
            let mut stats = lock(&self.stats);
            let s = stats.entry(name.to_string()).or_default();
            s.launches += 1;
            s.counters.add(&counters);
        }
        if let Some(p) = &self.profile {
            let k = module.kernel(name).map(|k| k.static_shared).unwrap_or(0);
            let line = format!(
                "{{\"kernel\":\"{name}\",\"grid\":[{},{},{}],\"block\":[{},{},{}],\"shared_bytes\":{},\
                 \"static_shared_bytes\":{k},{}}}\n",
                cfg.grid.0,
                cfg.grid.1,
                cfg.grid.2,
                cfg.block.0,
                cfg.block.1,
                cfg.block.2,
                cfg.shared_bytes,
                counters.json_fields()
            );
            lock(p)
                .write_all(line.as_bytes())
                .map_err(|source| Error::Io {
                    path: "PALM_VM_PROFILE".into(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Launches and counters per kernel so far (since the last [`Vm::take_stats`]).
    pub fn stats(&self) -> BTreeMap<String, KernelStats> {
        lock(&self.stats).clone()
    }

    /// The statistics so far, starting afresh.
    pub fn take_stats(&self) -> BTreeMap<String, KernelStats> {
        std::mem::take(&mut *lock(&self.stats))
    }
}

impl From<vm::Error> for Error {
    fn from(e: vm::Error) -> Error {
        vm_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reject_hostile_values() {
        assert_eq!(sms_setting(None).unwrap(), DEFAULT_VM_SMS);
        assert_eq!(sms_setting(Some(" ")).unwrap(), DEFAULT_VM_SMS);
        assert_eq!(sms_setting(Some("4")).unwrap(), 4);
        for bad in [
            "0",
            "1025",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "NaN",
            "1e3",
        ] {
            let e = sms_setting(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("PALM_VM_SMS"), "{bad}: {e}");
        }
        assert_eq!(threads_setting(None).unwrap(), 0);
        assert_eq!(threads_setting(Some("18446744073709551615")).unwrap(), 1024);
        assert!(threads_setting(Some("two")).is_err());
    }
}
