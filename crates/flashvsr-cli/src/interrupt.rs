//! Ctrl-C, SIGTERM and SIGHUP: the first signal asks the work loops to stop cleanly (outputs
//! are aborted, so no partial file remains, and the exit status is 130); a second one exits at
//! once (what it leaves behind, the next run into the same folder removes: see `partials`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Exit status after an interruption (128 + SIGINT), as shells expect.
pub const EXIT_CODE: i32 = 130;

/// The error a loop returns when it stopped because of a signal.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted; nothing was written")
    }
}

impl std::error::Error for Interrupted {}

pub fn install() {
    // ctrlc's `termination` feature adds SIGTERM and SIGHUP to SIGINT. Failing to install (a
    // handler already set) only loses the clean stop. Messages ignore write errors: after
    // SIGHUP the terminal may be gone.
    let _ = ctrlc::set_handler(|| {
        REQUESTED.store(true, Ordering::SeqCst);
        if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
            let _ = writeln!(std::io::stderr(), "\ninterrupted twice; exiting now");
            std::process::exit(EXIT_CODE);
        }
        let _ = writeln!(
            std::io::stderr(),
            "\nstopping (press Ctrl-C again to quit at once)..."
        );
    });
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// [`requested`], giving a signal that is on its way a moment to land: Ctrl-C reaches the
/// ffmpeg children too, and the error from a dead ffmpeg can reach the main thread before the
/// handler thread has run. For error paths only (it waits).
pub fn requested_or_pending() -> bool {
    requested() || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        requested()
    }
}

/// Whether an error chain stems from an interruption.
pub fn is_interrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Interrupted>())
}
