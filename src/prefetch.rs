//! Software prefetch hints, shared by the CPU backend's SGD loops and the
//! stager's per-rating walk: both visit rows in a random order, so each row
//! costs a cache miss unless it is asked for well ahead.

use std::sync::atomic::AtomicU32;

/// A hint to bring the cache line at `x` in, for any address, valid or not: a prefetch reads nothing
/// architecturally and cannot fault.
#[inline(always)]
pub(crate) fn prefetch_ptr<T>(x: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see above; no dereference happens.
    unsafe {
        std::arch::x86_64::_mm_prefetch(x as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// [`prefetch`] of every cache line of a row.
#[inline(always)]
pub(crate) fn prefetch_row(row: &[AtomicU32]) {
    prefetch_span(row.as_ptr(), row.len());
}

/// [`prefetch_ptr`] of every cache line of the `len` values from `base`
/// (which need not be valid: nothing is read).
#[inline(always)]
pub(crate) fn prefetch_span<T>(base: *const T, len: usize) {
    if len > 0 {
        for off in (0..len).step_by(16).chain([len - 1]) {
            prefetch_ptr(base.wrapping_add(off));
        }
    }
}
