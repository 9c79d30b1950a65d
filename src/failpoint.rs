//! Crash points, for the end-to-end tests of the crash windows (threat 31).
//!
//! Built only with the `failpoints` feature (the e2e suite's build): a point named in
//! the `FAILPOINTS` environment variable (`issue-after-record=return`, the `fail`
//! crate's syntax) aborts the process there, as a SIGKILL between two writes would. In
//! every other build a point is nothing at all.

/// Aborts the process here if `FAILPOINTS` names `name` (with the `failpoints` feature).
#[inline]
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        tracing::error!(failpoint = name, "crash point reached; aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Reads `FAILPOINTS`; keep the returned value alive for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
