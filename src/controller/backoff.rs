//! Retries of failed reconciles: exponential per object, capped, and an Event only when
//! the reason changes.
//!
//! kube's controller requeues whatever the error policy says and keeps no memory of
//! earlier failures. A fixed short delay with a Warning Event per attempt turned one
//! persistent failure into tens of thousands of Events (and API writes) within minutes.
//! Here each object's consecutive failures double its delay, from [`FIRST`] to
//! [`MAX`] (short enough that a revocation waiting on a transient API error is retried
//! promptly), and its Event is posted once per distinct reason; a success clears it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// The delay after a first failure.
pub const FIRST: Duration = Duration::from_millis(500);
/// The longest delay between retries.
pub const MAX: Duration = Duration::from_secs(60);

/// The delay before retry number `attempts` (1 for the first failure).
pub fn delay(attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    FIRST.saturating_mul(factor).min(MAX)
}

struct Entry {
    attempts: u32,
    reason: &'static str,
}

/// Consecutive failures per object (by UID).
#[derive(Default)]
pub struct ErrorBackoff(Mutex<HashMap<String, Entry>>);

/// What to do about one failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Retry {
    pub after: Duration,
    /// The reason differs from the previous failure's (or there was none): post an Event.
    pub announce: bool,
}

impl ErrorBackoff {
    pub fn failed(&self, key: &str, reason: &'static str) -> Retry {
        let mut map = self.0.lock().expect("backoff lock");
        let entry = map.entry(key.to_string()).or_insert(Entry {
            attempts: 0,
            reason: "",
        });
        let announce = entry.reason != reason;
        entry.attempts = entry.attempts.saturating_add(1);
        entry.reason = reason;
        Retry {
            after: delay(entry.attempts),
            announce,
        }
    }

    pub fn succeeded(&self, key: &str) {
        let mut map = self.0.lock().expect("backoff lock");
        map.remove(key);
    }
}

/// The API server refuses Events whose note exceeds 1 KiB (the whole Event is lost);
/// longer notes are cut at a character boundary and marked.
pub const MAX_NOTE_BYTES: usize = 1024;

pub fn truncate_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    const MARK: &str = "…";
    let mut end = MAX_NOTE_BYTES - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_to_a_cap_and_announce_only_a_new_reason() {
        let b = ErrorBackoff::default();
        let first = b.failed("u", "WriteSecretFailed");
        assert_eq!(
            first,
            Retry {
                after: FIRST,
                announce: true
            }
        );
        let second = b.failed("u", "WriteSecretFailed");
        assert_eq!(
            second,
            Retry {
                after: FIRST * 2,
                announce: false
            }
        );
        for _ in 0..40 {
            b.failed("u", "WriteSecretFailed");
        }
        assert_eq!(b.failed("u", "WriteSecretFailed").after, MAX);
        assert!(b.failed("u", "FetchTaskFailed").announce, "a new reason is announced");
        assert!(b.failed("other", "FetchTaskFailed").announce, "per object");
        b.succeeded("u");
        assert_eq!(
            b.failed("u", "FetchTaskFailed"),
            Retry {
                after: FIRST,
                announce: true
            }
        );
    }

    #[test]
    fn event_notes_fit_the_api_limit_on_a_character_boundary() {
        assert_eq!(truncate_note("short".into()), "short");
        let long = "é".repeat(2000);
        let cut = truncate_note(long);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
