//! The operator's allocator: mimalloc, told to give memory back at once.
//!
//! Cedar decisions and the watch caches allocate many small, short-lived objects,
//! which mimalloc serves faster than glibc's allocator. By default it keeps freed
//! pages for a second and commits its arenas eagerly, which after a burst of grants
//! left the operator 15-20 MiB above what it holds (docs/benchmarks.md). An operator
//! sits idle between bursts, so memory back now is worth more than the few frees
//! a delay would save.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the version the
/// `mimalloc` crate builds); libmimalloc-sys names only the stable options. The
/// `option_indexes_match_the_bundled_mimalloc` test checks both numbers.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`, likewise.
const PURGE_DELAY: mi_option_t = 15;

/// Applies the settings above. Call once, early in `main`.
pub fn tune() {
    // SAFETY: plain setters of mimalloc's global options, valid at any time.
    unsafe {
        mi_option_set(PURGE_DELAY, 0);
        mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

/// The current (purge delay, eager arena commit) settings.
pub fn settings() -> (std::ffi::c_long, std::ffi::c_long) {
    // SAFETY: plain getters of mimalloc's global options.
    unsafe { (mi_option_get(PURGE_DELAY), mi_option_get(ARENA_EAGER_COMMIT)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_indexes_match_the_bundled_mimalloc() {
        // The defaults in mimalloc v3's options.c: a 1000 ms purge delay, eager
        // commit 2 ("on overcommitting systems"). Wrong indexes would read others.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
            && std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none()
        {
            assert_eq!(settings(), (1000, 2));
        }
        tune();
        assert_eq!(settings(), (0, 0));
    }
}
