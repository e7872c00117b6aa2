//! Scoped worker threads that a one-thread run does without: it then runs
//! its one job on the calling thread, which is also how the browser build
//! (wasm32, where no thread can be spawned) runs every job.

/// Runs `jobs`, each on its own scoped thread where there are several, and
/// returns their results in order. `what` names the workers in the panic
/// message should one of them panic.
pub(crate) fn join_all<R: Send, F: FnOnce() -> R + Send>(jobs: impl IntoIterator<Item = F>, what: &str) -> Vec<R> {
    let mut jobs: Vec<F> = jobs.into_iter().collect();
    if jobs.len() <= 1 {
        return jobs.pop().map(|f| f()).into_iter().collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|f| scope.spawn(f)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("{what} panicked"))).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_in_job_order_on_any_number_of_threads() {
        for n in [0usize, 1, 2, 5] {
            let out = super::join_all((0..n).map(|k| move || k * 10), "test worker");
            assert_eq!(out, (0..n).map(|k| k * 10).collect::<Vec<_>>());
        }
    }
}
