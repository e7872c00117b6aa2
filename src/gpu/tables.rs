//! The host tables as the GPU engine reads and writes them: rows by global
//! id (users `0..U`, then items), from a model lent mutably (training, where
//! write-backs land) or read-only (evaluation, which only stages rows in).

use crate::model::Model;
use crate::prefetch::prefetch_span;

/// A model's tables, borrowed for the engine.
pub enum HostTables<'m> {
    Mut(&'m mut Model),
    Read(&'m Model),
}

impl HostTables<'_> {
    fn model(&self) -> &Model {
        match self {
            HostTables::Mut(m) => m,
            HostTables::Read(m) => m,
        }
    }

    /// Floats per row.
    pub fn stride(&self) -> usize {
        self.model().stride
    }

    /// Global row `g`.
    pub fn row(&self, g: u32) -> &[f32] {
        let m = self.model();
        let n_users = m.n_users() as u32;
        if g < n_users { m.user_row(g) } else { m.item_row(g - n_users) }
    }

    /// Global row `g`, to write; `None` on tables lent read-only.
    pub fn row_mut(&mut self, g: u32) -> Option<&mut [f32]> {
        let HostTables::Mut(m) = self else { return None };
        let (s, n_users) = (m.stride, m.n_users() as u32);
        Some(if g < n_users {
            &mut m.users[g as usize * s..][..s]
        } else {
            &mut m.items[(g - n_users) as usize * s..][..s]
        })
    }

    /// Asks for row `g` ahead of its copy (a hint: reads nothing).
    pub fn prefetch(&self, g: u32) {
        let m = self.model();
        let (s, n_users) = (m.stride, m.n_users() as u32);
        let table = if g < n_users { &m.users } else { &m.items };
        let at = if g < n_users { g } else { g - n_users } as usize * s;
        prefetch_span(table.as_ptr().wrapping_add(at), s);
    }
}
