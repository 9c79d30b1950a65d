//! Our own latest writes, so a reconcile can tell whether the watch cache has caught up.
//!
//! A reconcile usually runs because of our own previous write (a finalizer, the
//! Secret, the status). Reading the grant and its Secret from the API server every
//! time would double the requests per issuance; reading them from the cache is only
//! safe once the cache holds what we wrote. So each write records the resourceVersion
//! the API server returned, and a cached object is trusted only if it is exactly that
//! version (resourceVersions are opaque: equality is the only comparison allowed).
//! Anything else, including a version someone else wrote, is read fresh.

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

#[derive(Clone, Debug, Default)]
struct Writes {
    grant: Option<String>,
    secret: Option<SecretWrite>,
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

    /// Whether a cached grant at `cached_rv` already reflects our last write to it.
    pub fn grant_is_current(&self, uid: &str, cached_rv: Option<&str>) -> bool {
        match self.get(uid).grant {
            None => true,
            Some(rv) => cached_rv == Some(rv.as_str()),
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
    pub fn is_own_secret_write(&self, secret: &k8s_openapi::api::core::v1::Secret, deleted: bool) -> bool {
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
            SecretWrite::Version(rv) => !deleted && secret.metadata.resource_version.as_deref() == Some(rv.as_str()),
            SecretWrite::Unknown => false,
        }
    }

    pub fn wrote_grant(&self, uid: &str, rv: Option<String>) {
        self.with(uid, |w| w.grant = rv);
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
            w.grant = Some(String::new());
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
        assert!(w.grant_is_current("u", Some("1")));
        w.wrote_grant("u", Some("5".into()));
        assert!(!w.grant_is_current("u", Some("4")), "cache trails our write");
        assert!(!w.grant_is_current("u", Some("6")), "someone else wrote: read fresh");
        assert!(w.grant_is_current("u", Some("5")));
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
        assert!(!w.grant_is_current("u", Some("5")));
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
