//! The host tables as the GPU engine reads and writes them: rows by global
//! id (users, then items), through raw pointers, so that during a staged
//! epoch the scheduler thread can copy rows out for the steps it decides
//! while the device thread writes back the rows that return.
//!
//! Which thread may touch which row when is the engine's protocol, not the
//! type's (see `driver::pipelined`): a row is read by the scheduler only
//! once every write-back that carries it has landed, and the device thread
//! writes a row only while completing such a write-back.

use std::marker::PhantomData;

use crate::model::Model;
use crate::prefetch::prefetch_span;

/// A model's tables, borrowed for the engine.
pub struct HostTables<'m> {
    users: *mut f32,
    items: *mut f32,
    n_users: u32,
    n_items: u32,
    stride: usize,
    writable: bool,
    _borrow: PhantomData<&'m mut Model>,
}

// SAFETY: the tables are plain floats; which rows each thread touches is the
// engine's protocol (module docs), and the borrow keeps the model alive and
// otherwise untouched.
unsafe impl Send for HostTables<'_> {}
unsafe impl Sync for HostTables<'_> {}

impl<'m> HostTables<'m> {
    /// Rows of `model` to read and write.
    pub fn new(model: &'m mut Model) -> Self {
        HostTables {
            users: model.users.as_mut_ptr(),
            items: model.items.as_mut_ptr(),
            n_users: model.n_users() as u32,
            n_items: model.n_items() as u32,
            stride: model.stride,
            writable: true,
            _borrow: PhantomData,
        }
    }

    /// Rows of `model` to read only.
    pub fn read_only(model: &'m Model) -> Self {
        HostTables {
            users: model.users.as_ptr() as *mut f32,
            items: model.items.as_ptr() as *mut f32,
            n_users: model.n_users() as u32,
            n_items: model.n_items() as u32,
            stride: model.stride,
            writable: false,
            _borrow: PhantomData,
        }
    }

    /// Floats per row.
    pub fn stride(&self) -> usize {
        self.stride
    }

    fn at(&self, g: u32) -> *mut f32 {
        if g < self.n_users {
            self.users.wrapping_add(g as usize * self.stride)
        } else {
            assert!(g - self.n_users < self.n_items, "row {g} outside the tables");
            self.items.wrapping_add((g - self.n_users) as usize * self.stride)
        }
    }

    /// Global row `g`, to read.
    ///
    /// # Safety
    /// No thread may write the row while the slice lives.
    pub unsafe fn row(&self, g: u32) -> &[f32] {
        // SAFETY: in bounds (`at` checks items; users are below n_users by
        // the branch), and the caller keeps writers away.
        unsafe { std::slice::from_raw_parts(self.at(g), self.stride) }
    }

    /// Global row `g`, to write.
    ///
    /// # Safety
    /// No other thread may read or write the row while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut(&self, g: u32) -> &mut [f32] {
        assert!(self.writable, "the tables were lent read-only");
        // SAFETY: as in `row`, and the caller keeps every other access away.
        unsafe { std::slice::from_raw_parts_mut(self.at(g), self.stride) }
    }

    /// Asks for row `g` ahead of its copy (a hint: reads nothing).
    pub fn prefetch(&self, g: u32) {
        if g < self.n_users + self.n_items {
            prefetch_span(self.at(g) as *const f32, self.stride);
        }
    }
}
