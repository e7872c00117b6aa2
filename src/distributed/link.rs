//! Messages between ranks, every wait bounded: a rank that dies or stops
//! answering (a SIGSTOP, a hung node) ends the run with an error naming it
//! within the wait limit, instead of hanging the job. Everything, the
//! model's rows and the control figures alike, goes by non-blocking
//! point-to-point messages (`MPI_Isend`, `MPI_Irecv`) polled against a
//! deadline, since MPI's blocking calls and collectives cannot time out.
//! The model's messages carry tag [`MODEL`], the control figures
//! [`CONTROL`], so that an outside count (tests/mpi/count_bytes.c) can tell
//! them apart.

use mpi::ffi;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The model's rows: what `wire_bytes` counts.
pub const MODEL: i32 = 0;
/// Control figures (stop votes, losses, byte counts): not the model's
/// traffic, and not counted in `wire_bytes`.
pub const CONTROL: i32 = 1;

/// A message to send.
pub struct Outgoing<'a> {
    pub to: usize,
    pub tag: i32,
    pub bytes: &'a [u8],
}

/// A message to receive, of a length both sides know.
pub struct Incoming<'a> {
    pub from: usize,
    pub tag: i32,
    pub bytes: &'a mut [u8],
}

/// `MPI_COMM_WORLD` with a bound on every wait.
pub struct Link {
    pub rank: usize,
    pub ranks: usize,
    limit: Duration,
}

fn count(len: usize) -> Result<c_int> {
    c_int::try_from(len).map_err(|_| {
        Error::arg(
            "`distributed`",
            "rotate",
            format!("a message of {len} bytes is more than MPI's 2^31 − 1: use more bins"),
        )
    })
}

impl Link {
    /// The world of a started MPI; `limit` bounds every wait.
    pub fn world(limit: Duration) -> Self {
        let (rank, ranks) = super::world();
        Link { rank, ranks, limit }
    }

    /// Starts every send and receive, then waits for all of them, at most
    /// the limit: past it, the first rank still owed a message is named.
    pub fn exchange(&self, out: &[Outgoing], inc: &mut [Incoming]) -> Result<()> {
        let mut requests = Vec::with_capacity(out.len() + inc.len());
        // Every count first: a message too long for MPI is refused before
        // any request is posted, never with requests left in flight.
        let sends = out.iter().map(|o| count(o.bytes.len())).collect::<Result<Vec<_>>>()?;
        let recvs = inc.iter().map(|i| count(i.bytes.len())).collect::<Result<Vec<_>>>()?;
        // SAFETY: each buffer outlives its request: every request is
        // completed below, or cancelled and freed before an error returns.
        unsafe {
            for (o, &n) in out.iter().zip(&sends) {
                let mut r = ffi::RSMPI_REQUEST_NULL;
                ffi::MPI_Isend(
                    o.bytes.as_ptr() as *const c_void,
                    n,
                    ffi::RSMPI_UINT8_T,
                    o.to as c_int,
                    o.tag,
                    ffi::RSMPI_COMM_WORLD,
                    &mut r,
                );
                requests.push(r);
            }
            for (i, &n) in inc.iter_mut().zip(&recvs) {
                let mut r = ffi::RSMPI_REQUEST_NULL;
                ffi::MPI_Irecv(
                    i.bytes.as_mut_ptr() as *mut c_void,
                    n,
                    ffi::RSMPI_UINT8_T,
                    i.from as c_int,
                    i.tag,
                    ffi::RSMPI_COMM_WORLD,
                    &mut r,
                );
                requests.push(r);
            }
        }
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            let mut done: c_int = 0;
            // SAFETY: `requests` holds live requests or MPI_REQUEST_NULL.
            unsafe {
                ffi::MPI_Testall(requests.len() as c_int, requests.as_mut_ptr(), &mut done, ffi::RSMPI_STATUSES_IGNORE)
            };
            if done != 0 {
                return Ok(());
            }
            if start.elapsed() > self.limit {
                return Err(self.give_up(&mut requests, out, inc));
            }
            // Spin briefly (a message between ranks on one machine takes
            // microseconds), then sleep, leaving the core to the ranks it
            // shares a machine with.
            polls += 1;
            if polls < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// The error past the limit, naming the ranks still owing a message
    /// (or, where only sends are pending, the ranks not taking them): one
    /// of them stopped or died, or waits in turn for one that did. The
    /// pending requests are cancelled and freed, so that no buffer
    /// outlives them.
    fn give_up(&self, requests: &mut [ffi::MPI_Request], out: &[Outgoing], inc: &[Incoming]) -> Error {
        // SAFETY: reading an MPI constant.
        let null = unsafe { ffi::RSMPI_REQUEST_NULL };
        let mut silent: Vec<usize> =
            inc.iter().enumerate().filter(|&(k, _)| requests[out.len() + k] != null).map(|(_, i)| i.from).collect();
        let what = if silent.is_empty() {
            silent = out.iter().enumerate().filter(|&(k, _)| requests[k] != null).map(|(_, o)| o.to).collect();
            "took nothing"
        } else {
            "sent nothing"
        };
        silent.sort_unstable();
        silent.dedup();
        for r in requests.iter_mut().filter(|r| **r != null) {
            // SAFETY: a live request of this process.
            unsafe {
                ffi::MPI_Cancel(r);
                ffi::MPI_Request_free(r);
            }
        }
        let names: Vec<String> = silent.iter().map(|r| r.to_string()).collect();
        Error::Peer {
            ranks: names.join(", "),
            reason: format!(
                "{what} for {:.0} s: stopped, dead, or waiting for one that is; rank {} ends the run (the limit \
                 is `rank_timeout`)",
                self.limit.as_secs_f64(),
                self.rank
            ),
        }
    }

    /// Every rank's `value`, in rank order: a control message to and from
    /// every other rank.
    pub fn everyone<T: bytemuck::Pod + Default>(&self, value: T) -> Result<Vec<T>> {
        let mut all = vec![T::default(); self.ranks];
        all[self.rank] = value;
        let mine = [value];
        let out: Vec<Outgoing> = (0..self.ranks)
            .filter(|&k| k != self.rank)
            .map(|to| Outgoing { to, tag: CONTROL, bytes: bytemuck::cast_slice(&mine) })
            .collect();
        let mut theirs = vec![T::default(); self.ranks];
        {
            let mut inc: Vec<Incoming> = theirs
                .chunks_exact_mut(1)
                .enumerate()
                .filter(|&(k, _)| k != self.rank)
                .map(|(from, slot)| Incoming { from, tag: CONTROL, bytes: bytemuck::cast_slice_mut(slot) })
                .collect();
            self.exchange(&out, &mut inc)?;
        }
        for (k, v) in theirs.into_iter().enumerate() {
            if k != self.rank {
                all[k] = v;
            }
        }
        Ok(all)
    }
}
