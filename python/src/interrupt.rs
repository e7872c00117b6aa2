//! Ctrl-C while an epoch runs with the GIL released (docs/ARCHITECTURE.md,
//! "The Python package"). Python's own SIGINT handler only notes the signal;
//! its `KeyboardInterrupt` comes once the epoch returns, which may be long.
//! For the epoch's length [`Watch`] puts a handler in front of whatever
//! handler is installed: it sets the run's cancel flag (the engine stops at
//! its next batch) and then calls the previous handler, so that Python still
//! notes the signal. When the epoch returns the previous action is put back
//! exactly as it was, whatever it was (a later `signal.signal` in Python, or
//! a notebook kernel's own handler, stays in charge between epochs).

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The cancel flag of the run being watched (null when none is).
static CANCEL: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());
/// Whether SIGINT arrived while watched with no handler of Python's to note
/// it (`SIG_DFL`).
static UNHANDLED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod imp {
    use super::*;
    use std::mem::MaybeUninit;

    /// The action that was installed before ours; written before ours is
    /// installed and read only by our handler until it is put back.
    static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

    extern "C" fn on_sigint(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: PREVIOUS was written before this handler was installed.
        let previous = unsafe { (*std::ptr::addr_of!(PREVIOUS)).assume_init_ref() };
        let handler = previous.sa_sigaction;
        if handler == libc::SIG_IGN {
            // The program chose to ignore Ctrl-C: so does the run.
            return;
        }
        let cancel = CANCEL.load(Ordering::SeqCst);
        if !cancel.is_null() {
            // SAFETY: the flag outlives the watch (`Watch::new`'s contract).
            unsafe { (*cancel).store(true, Ordering::SeqCst) };
        }
        if handler == libc::SIG_DFL {
            // Nothing of Python's to note it: `Watch::unhandled` says so.
            UNHANDLED.store(true, Ordering::SeqCst);
            return;
        }
        // SAFETY: calling the installed handler as the kernel would have.
        unsafe {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(signal, info, context);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(signal);
            }
        }
    }

    pub(super) fn install() -> std::io::Result<()> {
        // SAFETY: plain sigaction calls; PREVIOUS is written before our
        // handler can run and only read by it afterwards.
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigint as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut ours.sa_mask);
            let previous = (*std::ptr::addr_of_mut!(PREVIOUS)).as_mut_ptr();
            if libc::sigaction(libc::SIGINT, std::ptr::null(), previous) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::sigaction(libc::SIGINT, &ours, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub(super) fn restore() {
        // SAFETY: puts back the action `install` saved.
        unsafe {
            let previous = (*std::ptr::addr_of!(PREVIOUS)).as_ptr();
            libc::sigaction(libc::SIGINT, previous, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
mod imp {
    // Elsewhere Ctrl-C is heard between epochs only (Python's own handler).
    pub(super) fn install() -> std::io::Result<()> {
        Ok(())
    }
    pub(super) fn restore() {}
}

/// SIGINT watched for one epoch; the previous action is put back on drop
/// (a panic included).
pub struct Watch(());

impl Watch {
    /// Watches for SIGINT, setting `cancel` when it comes. `cancel` must
    /// outlive the watch; one watch at a time (Python's main thread).
    pub fn new(cancel: &AtomicBool) -> std::io::Result<Watch> {
        UNHANDLED.store(false, Ordering::SeqCst);
        CANCEL.store(cancel as *const AtomicBool as *mut AtomicBool, Ordering::SeqCst);
        if let Err(e) = imp::install() {
            CANCEL.store(std::ptr::null_mut(), Ordering::SeqCst);
            return Err(e);
        }
        Ok(Watch(()))
    }

    /// Whether SIGINT came while watched and no handler of Python's was
    /// there to note it (the process's default action was in place).
    pub fn unhandled(&self) -> bool {
        UNHANDLED.load(Ordering::SeqCst)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        imp::restore();
        CANCEL.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}
