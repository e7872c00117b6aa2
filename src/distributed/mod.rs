//! Training across MPI ranks (the `mpi` feature; docs/ARCHITECTURE.md,
//! "Past one machine"). Every rank runs the same run: the same data, split,
//! layout and control flow, so that each makes the same decisions (which
//! setting, when to stop) without being told. What differs is which blocks
//! a rank trains: [`RotateCpu`] is a [`Backend`] that walks the blocked
//! order's rounds ([`crate::engine::rotate`]), trains its own blocks and
//! passes bins to the ranks that train them next.
//!
//! MPI is Open MPI or MPICH through the `mpi` crate; the front end starts it
//! ([`start`]) and holds the returned guard until it exits.

mod link;
mod rotate;

pub use rotate::RotateCpu;

use mpi::topology::{Communicator, SimpleCommunicator};

/// Environment variables an MPI launcher sets in every process it starts:
/// Open MPI's `mpirun`, MPICH's Hydra, PMIx launchers and Slurm's `srun`.
const LAUNCHED_BY: [&str; 5] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS"];

/// Whether an MPI launcher started this process.
pub fn launched() -> bool {
    LAUNCHED_BY.iter().any(|v| std::env::var_os(v).is_some())
}

/// MPI started for this process: finalised when dropped, so the front end
/// holds it until it exits.
pub struct Started {
    _universe: mpi::environment::Universe,
}

/// Starts MPI (main thread only calls it: `Funneled`). `None` where it was
/// started already.
pub fn start() -> Option<Started> {
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
    Some(Started { _universe: universe })
}

/// This process's rank and the world's size; `(0, 1)` where MPI was not
/// started.
pub fn world() -> (usize, usize) {
    if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
        return (0, 1);
    }
    let w = SimpleCommunicator::world();
    (w.rank() as usize, w.size() as usize)
}
