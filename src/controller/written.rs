//! Our own latest writes, so a reconcile can tell whether the watch cache has caught up.
//!
//! A reconcile usually runs because of our own previous write (a finalizer, the
//! Secret, the status). Reading the grant and its Secret from the API server every
//! time would double the requests per issuance; reading them from the cache is only
//! safe once the cache holds what we wrote. So each write records the resourceVersion
//! the API server returned, and a cached object is trusted only if it is exactly that
//! version (resourceVersions are opaque: equality is the only comparison allowed).
//!
//! A cached grant at a version we saw or wrote *before* our latest write is simply
//! behind: the event of our latest write is on its way and will run the grant again,
//! so that reconcile is skipped rather than answered with a GET. Anything else,
//! including a version someone else wrote, is read fresh.

use std::{collections::HashMap, sync::Mutex};

/// What we last did to a grant's Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SecretWrite {
    /// Created or applied; the API server returned this resourceVersion.
    Version(String),
    /// Deleted.
    Deleted,
    /// Our write failed in a way that says the cache is wrong (the Secret already
    /// existed): the next reconcile must read it.
    Unknown,
}

/// How far back a grant's versions are remembered.
const GRANT_HISTORY: usize = 4;

#[derive(Clone, Debug, Default)]
struct Writes {
    /// Versions of the grant we read or wrote, oldest first; the last is the latest
    /// we know of. Empty until we write.
    grant: Vec<String>,
    secret: Option<SecretWrite>,
}

/// Whether a cached grant can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedGrant {
    /// It reflects our latest write (or we never wrote).
    Current,
    /// It is a version before our latest write: the watch event of that write is still
    /// to come, and will run the grant again.
    Behind,
    /// A version we never saw: read the grant fresh.
    Unknown,
}

/// Latest writes per grant UID.
#[derive(Debug, Default)]
pub struct Written {
    by_grant: Mutex<HashMap<String, Writes>>,
}

impl Written {
    fn with<R>(&self, uid: &str, f: impl FnOnce(&mut Writes) -> R) -> R {
        let mut map = self.by_grant.lock().expect("written map");
        f(map.entry(uid.to_string()).or_default())
    }

    fn get(&self, uid: &str) -> Writes {
        self.by_grant
            .lock()
            .expect("written map")
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether a cached grant at `cached_rv` reflects our last write to it.
    pub fn cached_grant(&self, uid: &str, cached_rv: Option<&str>) -> CachedGrant {
        let history = self.get(uid).grant;
        let Some((latest, earlier)) = history.split_last() else {
            return CachedGrant::Current;
        };
        match cached_rv {
            Some(rv) if rv == latest && !latest.is_empty() => CachedGrant::Current,
            // An empty entry (see `distrust`) never matches.
            Some(rv) if earlier.iter().any(|e| !e.is_empty() && e == rv) => CachedGrant::Behind,
            _ => CachedGrant::Unknown,
        }
    }

    /// Whether the cached Secret (`None` when the cache has none) reflects our last
    /// write to it. With no write recorded the cache is trusted: creating a Secret is
    /// create-only, so a Secret the cache missed makes the create fail, never overwrites.
    pub fn secret_is_current(&self, uid: &str, cached_rv: Option<&str>) -> bool {
        match self.get(uid).secret {
            None => true,
            Some(SecretWrite::Version(rv)) => cached_rv == Some(rv.as_str()),
            Some(SecretWrite::Deleted) => cached_rv.is_none(),
            Some(SecretWrite::Unknown) => false,
        }
    }

    /// Whether a watch event for `secret` (`deleted` for a deletion) is exactly our
    /// own last write to its grant's Secret: created or applied at that
    /// resourceVersion, or deleted by us.
    pub fn is_own_secret_write(&self, secret: &impl kube::Resource, deleted: bool) -> bool {
        use kube::ResourceExt;
        let Some(uid) = secret
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.as_str())
        else {
            return false;
        };
        let Some(last) = self
            .by_grant
            .lock()
            .expect("written map")
            .get(uid)
            .and_then(|w| w.secret.clone())
        else {
            return false;
        };
        match last {
            SecretWrite::Deleted => deleted,
            SecretWrite::Version(rv) => !deleted && secret.meta().resource_version.as_deref() == Some(rv.as_str()),
            SecretWrite::Unknown => false,
        }
    }

    /// Records our write of the grant at `rv`, made by a reconcile that started from
    /// the grant at `from` (so a cache still at `from` is behind), or a fresh read
    /// (`from` None).
    pub fn wrote_grant(&self, uid: &str, from: Option<String>, rv: Option<String>) {
        self.with(uid, |w| {
            if let Some(from) = from.filter(|f| !w.grant.contains(f)) {
                w.grant.push(from);
            }
            // A write that returned no version leaves nothing to match: read fresh.
            w.grant.push(rv.unwrap_or_default());
            let excess = w.grant.len().saturating_sub(GRANT_HISTORY);
            w.grant.drain(..excess);
        });
    }

    pub fn wrote_secret(&self, uid: &str, rv: Option<String>) {
        self.with(uid, |w| {
            w.secret = Some(rv.map(SecretWrite::Version).unwrap_or(SecretWrite::Unknown))
        });
    }

    pub fn deleted_secret(&self, uid: &str) {
        self.with(uid, |w| w.secret = Some(SecretWrite::Deleted));
    }

    /// The cache disagreed with reality: read the Secret fresh next time.
    pub fn secret_unknown(&self, uid: &str) {
        self.with(uid, |w| w.secret = Some(SecretWrite::Unknown));
    }

    /// A reconcile failed part-way: whatever we wrote last is uncertain, so the next
    /// reconcile reads both the grant and its Secret fresh.
    pub fn distrust(&self, uid: &str) {
        self.with(uid, |w| {
            // No resourceVersion is empty, so this never matches a cached grant.
            w.grant = vec![String::new()];
            w.secret = Some(SecretWrite::Unknown);
        });
    }

    /// The grant is gone: drop its entry so the map does not grow.
    pub fn forget(&self, uid: &str) {
        self.by_grant.lock().expect("written map").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_trusted_until_we_write_then_only_at_our_version() {
        let w = Written::default();
        assert_eq!(
            w.cached_grant("u", Some("1")),
            CachedGrant::Current,
            "nothing written yet"
        );
        w.wrote_grant("u", Some("1".into()), Some("5".into()));
        assert_eq!(
            w.cached_grant("u", Some("1")),
            CachedGrant::Behind,
            "where our write started"
        );
        assert_eq!(
            w.cached_grant("u", Some("4")),
            CachedGrant::Unknown,
            "a version we never saw"
        );
        assert_eq!(
            w.cached_grant("u", Some("6")),
            CachedGrant::Unknown,
            "someone else wrote"
        );
        assert_eq!(w.cached_grant("u", Some("5")), CachedGrant::Current);
        // Status at 7, then the finalizer at 8, by one reconcile that started at 5.
        w.wrote_grant("u", Some("5".into()), Some("7".into()));
        w.wrote_grant("u", Some("5".into()), Some("8".into()));
        assert_eq!(w.cached_grant("u", Some("7")), CachedGrant::Behind);
        assert_eq!(w.cached_grant("u", Some("5")), CachedGrant::Behind);
        assert_eq!(w.cached_grant("u", Some("8")), CachedGrant::Current);
        // Someone else's write, read fresh, becomes the latest.
        w.wrote_grant("u", None, Some("9".into()));
        assert_eq!(w.cached_grant("u", Some("8")), CachedGrant::Behind);
        assert_eq!(w.cached_grant("u", Some("9")), CachedGrant::Current);
        // Only the last few versions are remembered; older ones are read fresh.
        for rv in ["10", "11", "12", "13"] {
            w.wrote_grant("u", None, Some(rv.into()));
        }
        assert_eq!(w.cached_grant("u", Some("5")), CachedGrant::Unknown);
        w.distrust("u");
        assert_eq!(w.cached_grant("u", Some("13")), CachedGrant::Unknown);
        assert_eq!(w.cached_grant("u", Some("")), CachedGrant::Unknown);
    }

    #[test]
    fn secret_state_follows_create_delete_and_conflicts() {
        let w = Written::default();
        assert!(w.secret_is_current("u", None));
        w.wrote_secret("u", Some("7".into()));
        assert!(!w.secret_is_current("u", None), "created but not cached yet");
        assert!(w.secret_is_current("u", Some("7")));
        w.deleted_secret("u");
        assert!(!w.secret_is_current("u", Some("7")), "deleted but still cached");
        assert!(w.secret_is_current("u", None));
        w.secret_unknown("u");
        assert!(!w.secret_is_current("u", None));
        assert!(!w.secret_is_current("u", Some("7")));
        w.forget("u");
        assert!(w.secret_is_current("u", None));
        w.distrust("u");
        assert_eq!(w.cached_grant("u", Some("5")), CachedGrant::Unknown);
        assert!(!w.secret_is_current("u", None));
    }

    #[test]
    fn only_the_exact_own_secret_write_is_recognised() {
        let secret = |owner: &str, rv: &str| -> k8s_openapi::api::core::v1::Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "s", "resourceVersion": rv, "ownerReferences": [{
                    "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "name": "g", "uid": owner, "controller": true,
                }] },
            }))
            .unwrap()
        };
        let w = Written::default();
        assert!(!w.is_own_secret_write(&secret("u", "7"), false), "nothing written yet");
        w.wrote_secret("u", Some("7".into()));
        assert!(w.is_own_secret_write(&secret("u", "7"), false));
        assert!(
            !w.is_own_secret_write(&secret("u", "8"), false),
            "someone else's change"
        );
        assert!(
            !w.is_own_secret_write(&secret("other", "7"), false),
            "another grant's Secret"
        );
        assert!(
            !w.is_own_secret_write(&secret("u", "7"), true),
            "deleted, but not by us"
        );
        w.deleted_secret("u");
        assert!(w.is_own_secret_write(&secret("u", "7"), true));
        assert!(
            !w.is_own_secret_write(&secret("u", "9"), false),
            "recreated by someone else"
        );
        w.secret_unknown("u");
        assert!(!w.is_own_secret_write(&secret("u", "7"), true));
    }
}
