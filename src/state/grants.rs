//! The grant cache: each ToolGrant as the fields its many readers read (`GrantFacts`),
//! plus the whole object packed for the one reader that needs it whole.
//!
//! kube's reflector store kept every grant as it was decoded: a 1,392-byte struct
//! behind an `Arc` and about as much again in strings and vectors, 31 MiB of the
//! operator's 80 MiB heap at 10,000 grants (docs/benchmarks.md). The decision service,
//! the task, identity and approval scans and the sweeper read a dozen small fields of
//! it. The grant reconcile needs the object exactly as the API server sent it: it
//! carries status fields it did not recompute forward and writes the status whole by
//! server-side apply, so a field missing from its copy would be erased. So each entry
//! keeps the fields read in place and the whole grant as JSON compressed with zstd
//! against a dictionary that is a typical grant (`grant_dictionary.json`): a grant's
//! 2.2 KB of JSON becomes about 320 bytes, unpacked only when the grant is reconciled.
//! An entry whose grant could not be packed says so, and its reconcile reads the grant
//! from the API server instead.

use std::sync::{Arc, LazyLock, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Resource, ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};
use zstd::{
    bulk::{Compressor, Decompressor},
    dict::{DecoderDictionary, EncoderDictionary},
};

use crate::{
    api::{GrantFacts, ToolGrant},
    state::named::Named,
};

/// A cached grant: what its readers read, and the grant whole, packed.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantEntry {
    pub facts: GrantFacts,
    /// The grant as decoded from its watch event, packed (`None`: packing failed).
    packed: Option<Box<[u8]>>,
}

/// Why a cached grant cannot be had whole.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the grant was not packed when it was cached")]
    NotPacked,
    #[error("the packed grant does not say its size")]
    NoSize,
    #[error("decompressing the packed grant: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("decoding the unpacked grant: {0}")]
    Decode(#[source] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
enum PackError {
    #[error("encoding the grant: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("compressing the grant: {0}")]
    Compress(#[source] std::io::Error),
}

/// zstd's default level. Measured on a typical issued grant (2,255 bytes of JSON):
/// level 3 packs it to 322 bytes in 7 µs, level 9 to 313 in 16 µs, level 19 to 314 in
/// 380 µs; the dictionary does nearly all the work, and every watch event packs once.
const LEVEL: i32 = 3;

/// The dictionary, prepared once. Raw content (not a trained dictionary): zstd finds
/// the field names, enum values and message templates of a grant in it.
static DICTIONARY: LazyLock<(EncoderDictionary<'static>, DecoderDictionary<'static>)> = LazyLock::new(|| {
    let raw = include_bytes!("grant_dictionary.json");
    (EncoderDictionary::copy(raw, LEVEL), DecoderDictionary::copy(raw))
});

/// One compression and one decompression context for the process: a context holds
/// hundreds of kilobytes of tables, and a grant packs or unpacks in microseconds.
struct Codec {
    compressor: Mutex<Option<Compressor<'static>>>,
    decompressor: Mutex<Option<Decompressor<'static>>>,
}

static CODEC: LazyLock<Codec> = LazyLock::new(|| Codec {
    compressor: Mutex::new(Compressor::with_prepared_dictionary(&DICTIONARY.0).ok()),
    decompressor: Mutex::new(Decompressor::with_prepared_dictionary(&DICTIONARY.1).ok()),
});

fn no_context() -> std::io::Error {
    std::io::Error::other("no zstd context could be created")
}

fn pack(grant: &ToolGrant) -> Result<Box<[u8]>, PackError> {
    let json = serde_json::to_vec(grant).map_err(PackError::Encode)?;
    let mut guard = CODEC.compressor.lock().unwrap_or_else(|e| e.into_inner());
    let compressor = guard.as_mut().ok_or_else(no_context).map_err(PackError::Compress)?;
    // `compress` sizes its buffer for the worst case; the box keeps only what is used.
    let packed = compressor.compress(&json).map_err(PackError::Compress)?;
    Ok(packed.into_boxed_slice())
}

fn unpack(packed: &[u8]) -> Result<ToolGrant, UnpackError> {
    let size = zstd::zstd_safe::get_frame_content_size(packed)
        .ok()
        .flatten()
        .ok_or(UnpackError::NoSize)?;
    let json = {
        let mut guard = CODEC.decompressor.lock().unwrap_or_else(|e| e.into_inner());
        let decompressor = guard.as_mut().ok_or_else(no_context).map_err(UnpackError::Decompress)?;
        decompressor
            .decompress(packed, size as usize)
            .map_err(UnpackError::Decompress)?
    };
    serde_json::from_slice(&json).map_err(UnpackError::Decode)
}

impl GrantEntry {
    /// What the cache keeps of `grant`.
    pub fn of(grant: &ToolGrant) -> Self {
        let packed = match pack(grant) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(grant = %grant.name_any(), namespace = ?grant.metadata.namespace, error = %e,
                    "could not pack the grant for the cache; its reconciles read it from the API server");
                None
            }
        };
        GrantEntry {
            facts: GrantFacts::of(grant),
            packed,
        }
    }

    /// The grant whole, as its watch event carried it.
    pub fn unpack(&self) -> Result<ToolGrant, UnpackError> {
        unpack(self.packed.as_deref().ok_or(UnpackError::NotPacked)?)
    }

    /// The size of the packed grant, for the benchmarks and tests.
    pub fn packed_len(&self) -> Option<usize> {
        self.packed.as_deref().map(<[u8]>::len)
    }

    pub fn key(&self) -> ObjectRef<ToolGrant> {
        ObjectRef::new(&self.facts.name).within(&self.facts.namespace)
    }

    /// What Events about the grant point at.
    pub fn object_ref(&self) -> ObjectReference {
        let f = &self.facts;
        ObjectReference {
            api_version: Some(ToolGrant::api_version(&()).into_owned()),
            kind: Some(ToolGrant::kind(&()).into_owned()),
            name: Some(f.name.clone()),
            namespace: Some(f.namespace.clone()),
            uid: Some(f.uid.clone()),
            resource_version: f.resource_version.clone(),
            ..Default::default()
        }
    }
}

/// Every grant the watch has seen, by namespace and name. Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct GrantCache(Named<Arc<GrantEntry>>);

impl GrantCache {
    /// Applies one event of the grant watch.
    pub fn on_event(&self, event: &watcher::Event<ToolGrant>) {
        self.0.on_event(event, |g| Arc::new(GrantEntry::of(g)));
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<GrantEntry>> {
        self.0.get(namespace, name)
    }

    pub fn get_ref(&self, key: &ObjectRef<ToolGrant>) -> Option<Arc<GrantEntry>> {
        self.get(key.namespace.as_deref().unwrap_or_default(), &key.name)
    }

    /// Every grant's key.
    pub fn keys(&self) -> Vec<ObjectRef<ToolGrant>> {
        self.0.collect(|g| Some(g.key()))
    }

    /// Keys of the grants in `ns` that `matches`. Runs on every task, identity and
    /// approval event, so it copies nothing but the matches.
    pub fn keys_where(&self, ns: Option<&str>, matches: impl Fn(&GrantFacts) -> bool) -> Vec<ObjectRef<ToolGrant>> {
        let Some(ns) = ns else { return vec![] };
        self.0.collect_in(ns, |g| matches(&g.facts).then(|| g.key()))
    }

    /// How many grants in `ns` match.
    pub fn count_where(&self, ns: &str, matches: impl Fn(&GrantFacts) -> bool) -> usize {
        self.0.count_in(ns, |g| matches(&g.facts))
    }

    /// Grants in `obj_ns` whose `taskRef` names the object.
    pub fn for_task(
        &self,
        api_version: &str,
        kind: &str,
        obj_ns: Option<&str>,
        obj_name: &str,
    ) -> Vec<ObjectRef<ToolGrant>> {
        self.keys_where(obj_ns, |g| {
            g.task.name == obj_name && g.task.kind == kind && g.task.api_version == api_version
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GrantPhase, TaskRef};

    /// ToolGrant has no `PartialEq`: compared as the JSON it is.
    fn same(g: &ToolGrant) -> serde_json::Value {
        serde_json::to_value(g).unwrap()
    }

    fn sample() -> ToolGrant {
        serde_json::from_slice(include_bytes!("grant_dictionary.json")).expect("the dictionary is a grant")
    }

    #[test]
    fn the_dictionary_is_a_whole_grant_in_the_current_schema() {
        // A field renamed or removed in the API types, or moved, leaves the dictionary
        // behind: the packing still works, but packs worse. The dictionary must be a
        // grant with every status field, byte for byte as the cache encodes it.
        let raw = include_str!("grant_dictionary.json").trim_end();
        let again = serde_json::to_string(&sample()).unwrap();
        assert_eq!(raw, again, "regenerate grant_dictionary.json as the right-hand side");
        let status = sample().status.unwrap();
        assert!(status.certificate.is_some() && status.decision.is_some() && status.revocation.is_some());
        assert!(status.approval.is_some() && !status.superseded.is_empty() && !status.conditions.is_empty());
    }

    #[test]
    fn a_cached_grant_unpacks_to_exactly_the_grant_it_was_made_from() {
        let mut g = sample();
        g.metadata.uid = Some("2f7c9a52-1b0e-4c3d-9e8f-7a6b5c4d3e2f".into());
        g.metadata.name = Some("another".into());
        g.status.as_mut().unwrap().phase = Some(GrantPhase::Revoked);
        let entry = GrantEntry::of(&g);
        let facts = &entry.facts;
        let back = entry.unpack().unwrap();
        assert_eq!(same(&back), same(&g));
        assert_eq!(
            (&back.metadata, &back.spec, &back.status),
            (&g.metadata, &g.spec, &g.status)
        );
        assert_eq!(facts.uid, "2f7c9a52-1b0e-4c3d-9e8f-7a6b5c4d3e2f");
        assert_eq!(facts.phase, Some(GrantPhase::Revoked));
        assert!(facts.deleting);
        assert_eq!(facts.identity, "agent");
        assert_eq!(facts.task.kind, "Job");
        assert_eq!(entry.key(), ObjectRef::new("another").within("agents"));
        // The dictionary does the work: the same grant packed without it is several
        // times larger.
        let json = serde_json::to_vec(&g).unwrap();
        let plain = zstd::bulk::compress(&json, LEVEL).unwrap();
        let packed = entry.packed_len().unwrap();
        assert!(
            packed * 3 < plain.len(),
            "packed {packed} B, without the dictionary {} B",
            plain.len()
        );
    }

    #[test]
    fn a_grant_without_status_or_optional_fields_round_trips() {
        let g = ToolGrant::new(
            "bare",
            crate::api::ToolGrantSpec {
                identity_ref: crate::api::IdentityRef { name: "a".into() },
                task_ref: TaskRef {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: "p".into(),
                },
                tools: vec![],
                ttl: None,
                secret_name: None,
                purpose: "p".into(),
                data_sensitivity: None,
                requester: None,
            },
        );
        let entry = GrantEntry::of(&g);
        let facts = &entry.facts;
        assert_eq!(same(&entry.unpack().unwrap()), same(&g));
        assert_eq!((facts.phase, facts.deleting, facts.generation), (None, false, 0));
    }

    #[test]
    fn garbage_is_an_error_not_a_grant() {
        assert!(matches!(unpack(b"not zstd"), Err(UnpackError::NoSize)));
        let mut entry = GrantEntry::of(&sample());
        entry.packed = None;
        assert!(matches!(entry.unpack(), Err(UnpackError::NotPacked)));
        // A valid frame of something that is not a grant.
        let frame = CODEC
            .compressor
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .compress(b"[1,2,3]")
            .unwrap();
        assert!(matches!(unpack(&frame), Err(UnpackError::Decode(_))));
    }

    #[test]
    fn scans_see_only_their_namespace_and_the_watch_s_latest_state() {
        let cache = GrantCache::default();
        let mut a = sample();
        a.metadata.namespace = Some("n1".into());
        a.metadata.name = Some("a".into());
        let mut b = a.clone();
        b.metadata.namespace = Some("n2".into());
        cache.on_event(&watcher::Event::Apply(a.clone()));
        cache.on_event(&watcher::Event::Apply(b.clone()));
        let task = |ns| cache.for_task("batch/v1", "Job", Some(ns), "task-0001");
        assert_eq!(task("n1"), vec![ObjectRef::new("a").within("n1")]);
        assert_eq!(task("n2"), vec![ObjectRef::new("a").within("n2")]);
        assert!(cache.for_task("v1", "Job", Some("n1"), "task-0001").is_empty());
        assert!(cache.keys_where(None, |_| true).is_empty());
        assert_eq!(cache.count_where("n1", |g| g.identity == "agent"), 1);
        assert_eq!(cache.keys().len(), 2);
        a.status.as_mut().unwrap().phase = Some(GrantPhase::Expired);
        cache.on_event(&watcher::Event::Apply(a.clone()));
        assert_eq!(cache.get("n1", "a").unwrap().facts.phase, Some(GrantPhase::Expired));
        assert_eq!(same(&cache.get("n1", "a").unwrap().unpack().unwrap()), same(&a));
        cache.on_event(&watcher::Event::Delete(a));
        assert!(cache.get("n1", "a").is_none());
        assert_eq!(cache.count_where("n1", |_| true), 0);
    }
}
