//! The operator's allocator: mimalloc, told to give memory back at once and to use
//! small pages.
//!
//! Cedar decisions and the watch caches allocate many small, short-lived objects,
//! which mimalloc serves faster than glibc's allocator. By default it keeps freed
//! pages for a second and commits its arenas eagerly, which after a burst of grants
//! left the operator 15-20 MiB above what it holds (docs/benchmarks.md). An operator
//! sits idle between bursts, so memory back now is worth more than the few frees
//! a delay would save.
//!
//! mimalloc also asks the kernel for transparent huge pages on its arenas
//! (`MADV_HUGEPAGE`), so every 2 MiB region the heap touches becomes resident as a
//! whole: with 16.5 MiB of live heap at 1,000 grants the operator held 45 MiB, 36 MiB
//! of it in huge pages. Turning them off for the process keeps the resident heap
//! close to what is live. mimalloc's own switch for this is read once, before `main`,
//! from the environment, so `tune` sets the process's flag itself.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the version the
/// `mimalloc` crate builds); libmimalloc-sys names only the stable options. The
/// `option_indexes_match_the_bundled_mimalloc` test checks both numbers.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`, likewise.
const PURGE_DELAY: mi_option_t = 15;
/// `mi_option_allow_thp`, likewise.
const ALLOW_THP: mi_option_t = 43;

/// Applies the settings above. Call once, early in `main`.
pub fn tune() {
    // SAFETY: plain setters of mimalloc's global options, valid at any time.
    unsafe {
        mi_option_set(PURGE_DELAY, 0);
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        // No further MADV_HUGEPAGE on new OS allocations.
        mi_option_set(ALLOW_THP, 0);
    }
    disable_transparent_huge_pages();
}

/// Sets the process's "no transparent huge pages" flag: from now on no page fault
/// in any mapping (mimalloc's arena included, madvised or not) gets a huge page.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Only costs memory; the operator works the same.
        eprintln!(
            "mandate: could not disable transparent huge pages ({}); resident memory may be higher",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

/// Whether the process's "no transparent huge pages" flag is set.
#[cfg(target_os = "linux")]
pub fn transparent_huge_pages_disabled() -> bool {
    // SAFETY: as above; PR_GET_THP_DISABLE returns the flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}

/// The current (purge delay, eager arena commit, allow THP) settings.
pub fn settings() -> (std::ffi::c_long, std::ffi::c_long, std::ffi::c_long) {
    // SAFETY: plain getters of mimalloc's global options.
    unsafe {
        (
            mi_option_get(PURGE_DELAY),
            mi_option_get(ARENA_EAGER_COMMIT),
            mi_option_get(ALLOW_THP),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_indexes_match_the_bundled_mimalloc() {
        // The defaults in mimalloc v3's options.c: a 1000 ms purge delay, eager
        // commit 2 ("on overcommitting systems"), huge pages allowed. Wrong indexes
        // would read others.
        if [
            "MIMALLOC_PURGE_DELAY",
            "MIMALLOC_ARENA_EAGER_COMMIT",
            "MIMALLOC_ALLOW_THP",
        ]
        .iter()
        .all(|v| std::env::var_os(v).is_none())
        {
            assert_eq!(settings(), (1000, 2, 1));
        }
        tune();
        assert_eq!(settings(), (0, 0, 0));
        #[cfg(target_os = "linux")]
        assert!(transparent_huge_pages_disabled());
    }
}
