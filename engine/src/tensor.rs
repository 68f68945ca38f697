//! The tensor: shared immutable data, a strided layout, and (when it takes part in a gradient)
//! the op that made it.

use crate::autograd::{self, Op};
use crate::cuda::CudaDevice;
use crate::layout::{Layout, elem_count};
use crate::storage::{Buf, CpuElement, CpuStorage, Storage};
use crate::{DType, Device, Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    id: TensorId,
    storage: Arc<Storage>,
    layout: Layout,
    dtype: DType,
    /// How this tensor was made, kept only when a gradient may flow through it.
    op: Option<Op>,
    /// A leaf whose gradient is wanted (a parameter).
    is_var: bool,
    /// The same values in another dtype, written alongside (the bf16 copy of an f32 master
    /// weight that the optimizer's kernel stores in the same pass): `to_dtype` returns it
    /// instead of casting again.
    shadow: OnceLock<Tensor>,
}

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.dims(),
            self.dtype(),
            self.device()
        )
    }
}

impl Tensor {
    pub(crate) fn new(storage: Arc<Storage>, layout: Layout, op: Option<Op>) -> Self {
        let dtype = storage.dtype();
        let op = op.filter(|_| autograd::grad_enabled());
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            storage,
            layout,
            dtype,
            op,
            is_var: false,
            shadow: OnceLock::new(),
        }))
    }

    /// The result of an op: records `op` when any of `inputs` tracks gradients.
    pub(crate) fn from_op(
        storage: Storage,
        dims: &[usize],
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Self {
        let op = inputs.iter().any(|t| t.tracks()).then(op);
        Tensor::new(Arc::new(storage), Layout::contiguous(dims), op)
    }

    /// A view of this tensor's data with another layout.
    pub(crate) fn view(&self, layout: Layout, op: impl FnOnce() -> Op) -> Self {
        let op = self.tracks().then(op);
        Tensor::new(self.0.storage.clone(), layout, op)
    }

    pub fn from_vec<T: CpuElement>(data: Vec<T>, dims: &[usize]) -> Result<Self> {
        if data.len() != elem_count(dims) {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements for shape {dims:?}", data.len()),
            ));
        }
        Ok(Self::from_cpu(T::wrap(Buf::Owned(data)), dims))
    }

    pub(crate) fn from_cpu(s: CpuStorage, dims: &[usize]) -> Self {
        Self::from_storage(Storage::Cpu(s), dims)
    }

    /// An untracked contiguous tensor over new storage.
    pub(crate) fn from_storage(s: Storage, dims: &[usize]) -> Self {
        Tensor::new(Arc::new(s), Layout::contiguous(dims), None)
    }

    /// The same data with `op` recorded when any of `inputs` tracks gradients.
    pub(crate) fn record(&self, inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Self {
        let op = inputs.iter().any(|t| t.tracks()).then(op);
        Tensor::new(self.0.storage.clone(), self.0.layout.clone(), op)
    }

    pub fn zeros(dims: &[usize], dtype: DType, device: Device) -> Result<Self> {
        Tensor::full(0.0, dims, dtype, device)
    }

    pub fn full(value: f32, dims: &[usize], dtype: DType, device: Device) -> Result<Self> {
        let n = elem_count(dims);
        let s = match device {
            Device::Cpu => Storage::Cpu(crate::cpu::filled(value, n, dtype)),
            Device::Cuda(i) => Storage::Cuda(crate::cuda::ops::elementwise::full(
                &CudaDevice::get(i)?,
                n,
                dtype,
                value,
            )?),
        };
        Ok(Tensor::from_storage(s, dims))
    }

    pub fn scalar(value: f32) -> Self {
        Self::from_cpu(CpuStorage::F32(Buf::Owned(vec![value])), &[])
    }

    /// Normal(0, std) samples from `rng`.
    pub fn randn(dims: &[usize], std: f32, rng: &mut crate::Rng) -> Self {
        let data = (0..elem_count(dims)).map(|_| rng.normal() * std).collect();
        Self::from_cpu(CpuStorage::F32(Buf::Owned(data)), dims)
    }

    /// Mark as a leaf whose gradient `backward` should return (a parameter).
    pub fn as_var(&self) -> Self {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            op: None,
            is_var: true,
            // Same storage, so the same values in the other dtype.
            shadow: self.0.shadow.clone(),
        }))
    }

    /// Attach `copy`, the values of this tensor in another dtype (contiguous, same shape and
    /// device); later `to_dtype` calls to that dtype return it. Ignored when one is attached.
    pub(crate) fn set_shadow(&self, copy: Tensor) -> Result<()> {
        if copy.dims() != self.dims() || copy.device() != self.device() {
            return Err(Error::Invalid(format!(
                "internal: shadow {:?} on {} for a tensor {:?} on {}",
                copy.dims(),
                copy.device(),
                self.dims(),
                self.device()
            )));
        }
        let _ = self.0.shadow.set(copy.detach());
        Ok(())
    }

    /// The attached copy in `dtype`, if any.
    pub(crate) fn shadow(&self, dtype: DType) -> Option<&Tensor> {
        self.0.shadow.get().filter(|s| s.dtype() == dtype)
    }

    /// The same data, cut off from the gradient graph.
    pub fn detach(&self) -> Self {
        Tensor::new(self.0.storage.clone(), self.0.layout.clone(), None)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }
    /// Whether `self` and `other` are views of one buffer.
    pub(crate) fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
    /// Another view of this tensor's buffer, recording no op.
    pub(crate) fn view_untracked(&self, layout: Layout) -> Tensor {
        Tensor::new(self.0.storage.clone(), layout, None)
    }
    /// This tensor's data for writing, when nothing else can see it: no other handle to the
    /// tensor or view of its storage, and no gradient to keep consistent. The bf16 shadow, if
    /// any, is dropped since it would go stale.
    pub(crate) fn storage_mut(&mut self) -> Option<&mut Storage> {
        let inner = Arc::get_mut(&mut self.0)?;
        if inner.is_var || inner.op.is_some() {
            return None;
        }
        inner.shadow = OnceLock::new();
        Arc::get_mut(&mut inner.storage)
    }
    pub fn is_var(&self) -> bool {
        self.0.is_var
    }
    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }
    /// Whether a gradient can flow into this tensor.
    pub fn tracks(&self) -> bool {
        self.0.is_var || self.0.op.is_some()
    }
    /// Whether the data comes straight from a memory-mapped file (no copy was made).
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.0.storage, Storage::Cpu(s) if s.is_mapped())
    }

    /// The size of dimension `d`, with a shape error naming the op if it does not exist.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.dims().get(d).copied().ok_or_else(|| {
            Error::shape(
                "dim",
                format!("dimension {d} of a tensor of shape {:?}", self.dims()),
            )
        })
    }

    pub(crate) fn cpu(&self) -> Result<&CpuStorage> {
        match &*self.0.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::DeviceMismatch {
                op: "host access (copy the tensor to the CPU first)",
                lhs: self.device(),
                rhs: Device::Cpu,
            }),
        }
    }

    /// The elements in row-major order, copied to the host.
    pub fn to_vec<T: CpuElement>(&self) -> Result<Vec<T>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_vec();
        }
        let data = T::view(self.cpu()?).ok_or(Error::DType {
            op: "to_vec",
            got: self.dtype(),
            want: T::DTYPE.name(),
        })?;
        Ok(crate::cpu::gather(data, self.layout()))
    }

    /// Contiguous f32 elements (casting bf16), for host-side use.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.to_dtype(DType::F32)?.to_vec::<f32>()
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("tensor of shape {:?} is not a scalar", self.dims()),
            ));
        }
        Ok(self.to_f32_vec()?[0])
    }

    /// This tensor on `device` (itself when it is there already). The copy is contiguous and
    /// untracked: parameters are moved before training, not inside the graph.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let s = match (self.storage(), device) {
            (Storage::Cpu(s), Device::Cuda(i)) => Storage::Cuda(
                crate::cuda::ops::elementwise::upload(&CudaDevice::get(i)?, (s, self.layout()))?,
            ),
            (Storage::Cuda(s), Device::Cpu) => {
                Storage::Cpu(crate::cuda::ops::elementwise::download((s, self.layout()))?)
            }
            // One GPU to another: through the host.
            (Storage::Cuda(_), Device::Cuda(_)) => {
                return self.to_device(Device::Cpu)?.to_device(device);
            }
            (Storage::Cpu(_), Device::Cpu) => return Ok(self.clone()),
        };
        Ok(Tensor::from_storage(s, self.dims()))
    }

    // ---- views -------------------------------------------------------------------------

    pub fn reshape(&self, dims: &[usize]) -> Result<Self> {
        let t = if self.layout().is_contiguous() {
            self.clone()
        } else {
            self.contiguous()?
        };
        let layout = t.layout().reshape(dims)?;
        Ok(t.view(layout, || Op::Reshape(t.clone())))
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Self> {
        let layout = self.layout().transpose(a, b)?;
        Ok(self.view(layout, || Op::Transpose(self.clone(), a, b)))
    }

    /// Swap the last two dimensions.
    pub fn t(&self) -> Result<Self> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::shape(
                "t",
                format!("needs rank >= 2, got {:?}", self.dims()),
            ));
        }
        self.transpose(r - 2, r - 1)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        let layout = self.layout().narrow(dim, start, len)?;
        Ok(self.view(layout, || Op::Narrow(self.clone(), dim, start)))
    }

    /// Split `dim` into consecutive pieces of the given sizes (views).
    pub fn split(&self, dim: usize, sizes: &[usize]) -> Result<Vec<Self>> {
        if sizes.iter().sum::<usize>() != self.dim(dim)? {
            return Err(Error::shape(
                "split",
                format!(
                    "sizes {sizes:?} do not add up to dim {dim} of {:?}",
                    self.dims()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let t = self.narrow(dim, start, len);
                start += len;
                t
            })
            .collect()
    }

    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Self> {
        if self.dims() == dims {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_as(dims)?;
        Ok(self.view(layout, || Op::Broadcast(self.clone())))
    }

    /// A contiguous copy when the view is strided; itself otherwise.
    pub fn contiguous(&self) -> Result<Self> {
        if self.layout().is_contiguous() {
            return Ok(self.clone());
        }
        let out = crate::storage::on_backend!("contiguous", [self => s], {
            crate::backend::Backend::copy((s, self.layout()))
        })?;
        Ok(Tensor::from_op(out, self.dims(), &[self], || {
            Op::Copy(self.clone())
        }))
    }
}
