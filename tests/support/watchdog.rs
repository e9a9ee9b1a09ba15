//! A watchdog for tests that could deadlock: it aborts the process with a message
//! instead of letting a hang stall the test run.

use std::time::Duration;

/// Aborts the process if the returned sender is not signalled (or dropped) within
/// `limit`.
pub fn watchdog(what: &'static str, limit: Duration) -> crossbeam_channel::Sender<()> {
    let (done, wait) = crossbeam_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("watchdog: `{what}` did not finish in {limit:?}: deadlock");
            std::process::abort();
        }
    });
    done
}
