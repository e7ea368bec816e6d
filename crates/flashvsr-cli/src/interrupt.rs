//! Ctrl-C: the first press asks the work loops to stop cleanly (outputs are aborted, so no
//! partial file remains); a second press exits at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static PRESSES: AtomicUsize = AtomicUsize::new(0);

/// Exit status after an interruption (128 + SIGINT), as shells expect.
pub const EXIT_CODE: i32 = 130;

/// The error a loop returns when it stopped because of Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted; nothing was written")
    }
}

impl std::error::Error for Interrupted {}

pub fn install() {
    // Failing to install (e.g. a handler already set) only loses the clean stop.
    let _ = ctrlc::set_handler(|| {
        REQUESTED.store(true, Ordering::SeqCst);
        if PRESSES.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("\ninterrupted twice; exiting now");
            std::process::exit(EXIT_CODE);
        }
        eprintln!("\nstopping (press Ctrl-C again to quit at once)...");
    });
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Whether an error chain stems from an interruption.
pub fn is_interrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Interrupted>())
}
