//! Waiting for the device in a browser (docs/ARCHITECTURE.md, "The
//! browser page"). A browser delivers WebGPU's answers (a buffer mapped,
//! submitted work done) only while the script is back in its event loop,
//! so the engine's waits cannot spin or block there. They suspend instead:
//! the page calls the library through `WebAssembly.promising`, and a wait
//! calls [`suspend`], an import that the page wraps in
//! `WebAssembly.Suspending` (JavaScript Promise Integration). The stack is
//! set aside, the event loop runs, and the callback that answers the wait
//! calls [`wake`], which resumes it. The engine's code is the same as
//! natively, one wait at a time, and its model is the same.

#[link(wasm_import_module = "rowstage_jspi")]
unsafe extern "C" {
    /// Suspends until [`wake`] is called (or a second passes, so that a
    /// wait whose answer never comes ends in a timeout, not a hang).
    #[link_name = "suspend"]
    fn suspend_import();
    /// Resumes a suspended [`suspend`]; nothing when none is.
    #[link_name = "wake"]
    fn wake_import();
}

/// Hands control to the browser until a device callback calls [`wake`].
pub fn suspend() {
    // SAFETY: an import without arguments or result; the page provides it.
    unsafe { suspend_import() }
}

/// Called by every device callback that a wait may be waiting for.
pub fn wake() {
    // SAFETY: as above.
    unsafe { wake_import() }
}
