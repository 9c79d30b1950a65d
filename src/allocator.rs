//! The operator's allocator: mimalloc, on small pages.
//!
//! Cedar decisions and the watch caches allocate many small, short-lived objects,
//! which mimalloc serves faster than glibc's allocator (a third off a decision).
//!
//! mimalloc asks the kernel for transparent huge pages on its arenas
//! (`MADV_HUGEPAGE`), so every 2 MiB region the heap touches becomes resident as a
//! whole: with 16.5 MiB of live heap at 1,000 grants the operator held 45 MiB of
//! heap, 36 MiB of it in huge pages. With them off for the process the resident heap
//! is about 25 MiB (docs/benchmarks.md). mimalloc's own switch for this is read from
//! the environment once, before `main`, so `tune` sets the process's flag itself.
//!
//! Earlier versions also set mimalloc's purge delay to 0 and turned off eager arena
//! commit, to give memory back sooner after a burst. With small pages that no longer
//! changes the resident set measurably, and it made decisions slower (p99 at 1,000
//! policies 107 µs against 73-79 µs in back-to-back runs: pages given back at once
//! are faulted in again by the next decision), so mimalloc's defaults stand.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_allow_thp` in mimalloc v3's `mimalloc.h` (the version the `mimalloc`
/// crate builds); libmimalloc-sys names only the stable options. The
/// `option_index_matches_the_bundled_mimalloc` test checks the number.
const ALLOW_THP: mi_option_t = 43;

/// Applies the settings above. Call once, early in `main`.
pub fn tune() {
    // SAFETY: a plain setter of mimalloc's global options, valid at any time. This
    // stops further MADV_HUGEPAGE advice on new OS allocations.
    unsafe { mi_option_set(ALLOW_THP, 0) };
    disable_transparent_huge_pages();
}

/// Sets the process's "no transparent huge pages" flag: from now on no page fault
/// in any mapping (mimalloc's arena included, advised or not) gets a huge page.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Only costs memory; the operator works the same. (Logging is not set up yet.)
        eprintln!(
            "mandate: could not turn off transparent huge pages ({}); resident memory may be higher",
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

/// mimalloc's current "allow transparent huge pages" setting.
pub fn huge_pages_allowed() -> std::ffi::c_long {
    // SAFETY: a plain getter of mimalloc's global options.
    unsafe { mi_option_get(ALLOW_THP) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_index_matches_the_bundled_mimalloc() {
        // The default in mimalloc v3's options.c is 1 (huge pages allowed); a wrong
        // index would read another option.
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            assert_eq!(huge_pages_allowed(), 1);
        }
        tune();
        assert_eq!(huge_pages_allowed(), 0);
        #[cfg(target_os = "linux")]
        assert!(transparent_huge_pages_disabled());
    }
}
