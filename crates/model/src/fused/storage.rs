//! What every fused op family uses: its input storage as f32 slices, its gradients shaped as candle's
//! backward wants them, and the one call into the gemm kernel.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use candle_core::{
    backend::BackendStorage, CpuStorage, Error, Layout, Result, Storage, StorageRef, Tensor,
};

/// The contiguous f32 slice a layout describes.
pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(Error::Msg(format!(
            "{what}: expected f32, got {:?}",
            s.dtype()
        )));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(Error::Msg(format!("{what}: input must be contiguous"))),
    }
}

/// A tensor's values as a contiguous f32 slice (for the backward passes): borrowed from its storage
/// when it is contiguous f32 on the CPU, copied otherwise.
pub(super) enum Values<'a> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Values::Borrowed(guard, a, b) => match &**guard {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*a..*b],
                _ => unreachable!("checked when borrowed"),
            },
            Values::Owned(v) => v,
        }
    }
}

pub(super) fn values(t: &Tensor) -> Result<Values<'_>> {
    let (guard, layout) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) = (&*guard, layout.contiguous_offsets())
    {
        return Ok(Values::Borrowed(guard, a, b));
    }
    drop(guard);
    Ok(Values::Owned(t.flatten_all()?.to_vec1::<f32>()?))
}

/// `n` floats written by `fill`, without zero-filling them first.
///
/// # Safety
/// `fill` must write every one of the `n` elements.
pub(super) unsafe fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` wrote all n elements (the caller's contract).
    unsafe { v.set_len(n) };
    v
}

/// The gradients of a two-input op as candle's backward wants them, shaped like the inputs.
pub(super) fn grads2(
    a: &Tensor,
    da: Vec<f32>,
    b: &Tensor,
    db: Vec<f32>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dev = a.device();
    Ok((
        Some(Tensor::from_vec(da, a.shape(), dev)?),
        Some(Tensor::from_vec(db, b.shape(), dev)?),
    ))
}

/// The one call into the gemm kernel: `c[i·c_rs + j] (+)= scale · Σ_l a[i, l] b[l, j]`, a [m×k] and
/// b [k×n] given by (row stride, column stride).
///
/// # Safety
/// `c` must be valid for writes of `c_len` floats, and initialised when `accumulate` is set.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    c: *mut f32,
    c_len: usize,
    c_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
    scale: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= c_rs && c_len >= (m - 1) * c_rs + n);
    assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above keep every index the kernel touches inside `a`, `b` and the
    // `c_len` floats at `c`, which the caller vouches for.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
    }
}
