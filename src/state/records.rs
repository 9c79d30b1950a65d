//! The revocation record in memory: every CertificateRecord, by serial and by grant UID.
//!
//! Fed by the one watch on CertificateRecords (in the CA's namespace). The grant
//! reconcile reads a grant's serials from it (including any its status forgot after a
//! crash), the ledger builds the CRL from its revoked entries, the sweeper finds
//! records whose grant vanished, and the decision service will answer "is this serial
//! still good?" from it. A relist replaces the whole index at once (on `InitDone`), so
//! no reader ever sees half a list.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::watcher};

use crate::api::CertificateRecord;
pub use crate::api::RecordFacts;

#[derive(Default)]
struct Inner {
    by_serial: HashMap<String, RecordFacts>,
    /// A grant has a handful of serials (one per issuance or renewal): a small Vec
    /// costs a tenth of a BTreeSet's node per grant, which adds up at 100,000 records.
    by_grant: HashMap<String, Vec<String>>,
    /// The list being received during a relist; swapped in on `InitDone`.
    relist: Option<HashMap<String, RecordFacts>>,
}

impl Inner {
    fn insert(&mut self, mut f: RecordFacts) {
        // A revocation never goes away (the CRD refuses it), so an older event arriving
        // after our own later write never un-revokes a serial here: a CRL signed in
        // between would otherwise drop it.
        if let Some(old) = self.by_serial.get(&f.serial)
            && f.revoked.is_none()
            && old.revoked.is_some()
        {
            f.revoked = old.revoked;
        }
        if let Some(old) = self.by_serial.get(&f.serial)
            && old.grant_uid != f.grant_uid
        {
            let uid = old.grant_uid.clone();
            self.unlink(&uid, &f.serial);
        }
        let serials = self.by_grant.entry(f.grant_uid.clone()).or_default();
        if !serials.contains(&f.serial) {
            serials.push(f.serial.clone());
        }
        self.by_serial.insert(f.serial.clone(), f);
    }

    fn unlink(&mut self, uid: &str, serial: &str) {
        if let Some(set) = self.by_grant.get_mut(uid) {
            set.retain(|s| s != serial);
            if set.is_empty() {
                self.by_grant.remove(uid);
            }
        }
    }

    fn remove(&mut self, serial: &str) {
        if let Some(old) = self.by_serial.remove(serial) {
            self.unlink(&old.grant_uid, serial);
        }
    }

    fn replace(&mut self, all: HashMap<String, RecordFacts>) {
        let old = std::mem::take(&mut self.by_serial);
        self.by_grant.clear();
        for (serial, mut f) in all {
            // A list taken before our latest write still never un-revokes.
            if f.revoked.is_none()
                && let Some(prev) = old.get(&serial)
            {
                f.revoked = prev.revoked;
            }
            self.insert(f);
        }
    }
}

/// Every CertificateRecord, indexed. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct RecordIndex(Arc<RwLock<Inner>>);

impl RecordIndex {
    /// Applies one watch event; for `inspect` on the record watch.
    pub fn on_event(&self, event: &watcher::Event<CertificateRecord>) {
        let mut inner = self.0.write().expect("record index lock");
        match event {
            watcher::Event::Init => inner.relist = Some(HashMap::new()),
            watcher::Event::InitApply(r) => {
                let f = RecordFacts::of(r);
                match inner.relist.as_mut() {
                    Some(list) => {
                        list.insert(f.serial.clone(), f);
                    }
                    None => inner.insert(f),
                }
            }
            watcher::Event::InitDone => {
                let all = inner.relist.take().unwrap_or_default();
                inner.replace(all);
            }
            watcher::Event::Apply(r) => inner.insert(RecordFacts::of(r)),
            watcher::Event::Delete(r) => inner.remove(&r.name_any()),
        }
    }

    /// Notes a record the operator itself just wrote, before its watch event arrives,
    /// so a reconcile right after never reads an older state than its own write.
    pub fn wrote(&self, r: &CertificateRecord) {
        self.0.write().expect("record index lock").insert(RecordFacts::of(r));
    }

    pub fn get(&self, serial: &str) -> Option<RecordFacts> {
        self.0.read().expect("record index lock").by_serial.get(serial).cloned()
    }

    /// Every record of the grant with this UID, any state.
    pub fn for_grant(&self, uid: &str) -> Vec<RecordFacts> {
        let inner = self.0.read().expect("record index lock");
        inner
            .by_grant
            .get(uid)
            .map(|set| set.iter().filter_map(|s| inner.by_serial.get(s).cloned()).collect())
            .unwrap_or_default()
    }

    /// Every revoked record whose certificate has not expired at `now`: what the CRL lists.
    pub fn revoked_unexpired(&self, now: Timestamp) -> Vec<RecordFacts> {
        let inner = self.0.read().expect("record index lock");
        let mut out: Vec<RecordFacts> = inner
            .by_serial
            .values()
            .filter(|f| f.revoked.is_some() && f.not_after > now)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.serial.cmp(&b.serial));
        out
    }

    /// Every record `keep` picks, cloned (with 100,000 records, cloning them all is
    /// tens of MiB for a moment; a sweep needs a handful).
    pub fn select(&self, mut keep: impl FnMut(&RecordFacts) -> bool) -> Vec<RecordFacts> {
        let inner = self.0.read().expect("record index lock");
        inner.by_serial.values().filter(|f| keep(f)).cloned().collect()
    }

    /// Maps every revoked record through `f` (the CRL needs a few fields of each).
    pub fn revoked_map<T>(&self, mut f: impl FnMut(&RecordFacts) -> Option<T>) -> Vec<T> {
        let inner = self.0.read().expect("record index lock");
        inner
            .by_serial
            .values()
            .filter(|r| r.revoked.is_some())
            .filter_map(&mut f)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.read().expect("record index lock").by_serial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(serial: &str, uid: &str, revoked: bool) -> CertificateRecord {
        let mut spec = json!({
            "serialNumber": serial, "notAfter": "2030-01-01T00:00:00Z",
            "grant": {"namespace": "ns", "name": "g", "uid": uid, "generation": 1},
            "task": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "t"},
            "identity": "a",
        });
        if revoked {
            spec["revocation"] = json!({"time": "2029-01-01T00:00:00Z", "reason": "TaskCompleted"});
        }
        serde_json::from_value(json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "CertificateRecord",
            "metadata": {"name": serial, "namespace": "ca"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_complete() {
        let idx = RecordIndex::default();
        idx.on_event(&watcher::Event::Apply(record("aa", "g1", false)));
        idx.on_event(&watcher::Event::Init);
        idx.on_event(&watcher::Event::InitApply(record("bb", "g1", true)));
        // Mid-relist, readers still see the previous full list.
        assert!(idx.get("aa").is_some());
        assert!(idx.get("bb").is_none());
        idx.on_event(&watcher::Event::InitDone);
        assert!(idx.get("aa").is_none(), "gone from the new list");
        assert_eq!(idx.for_grant("g1").len(), 1);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(idx.revoked_unexpired(now).len(), 1);
    }

    #[test]
    fn threat_36_a_late_event_of_an_earlier_version_never_un_revokes() {
        let idx = RecordIndex::default();
        idx.wrote(&record("aa", "g1", true));
        // The watch delivers the create (unrevoked) after our revoking patch.
        idx.on_event(&watcher::Event::Apply(record("aa", "g1", false)));
        assert!(idx.get("aa").unwrap().revoked.is_some());
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(idx.revoked_unexpired(now).len(), 1);
    }

    #[test]
    fn serials_are_found_by_grant_uid_not_by_name() {
        let idx = RecordIndex::default();
        idx.on_event(&watcher::Event::Apply(record("aa", "old-uid", true)));
        idx.on_event(&watcher::Event::Apply(record("bb", "new-uid", false)));
        assert_eq!(
            idx.for_grant("new-uid")
                .iter()
                .map(|f| f.serial.as_str())
                .collect::<Vec<_>>(),
            ["bb"]
        );
        idx.on_event(&watcher::Event::Delete(record("bb", "new-uid", false)));
        assert!(idx.for_grant("new-uid").is_empty());
        assert_eq!(idx.len(), 1);
    }
}
