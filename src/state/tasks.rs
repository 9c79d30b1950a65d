//! Tasks by UID: whether each is still running, for the decision service.
//!
//! Fed by the same watches that trigger the grant controller (Jobs, Pods, and each
//! other task kind a grant names), so a finished task is seen by the next decision,
//! not the next reconcile. Each watch is one source; a relist replaces its source's
//! entries only once the whole list is in, so a decision never sees a half-empty
//! index. A task that is not here (deleted, or of a kind whose watch has not synced)
//! is unknown, and unknown denies.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use kube::{api::DynamicObject, runtime::watcher};

use crate::{
    decide::{
        authorize::TaskFacts,
        task::{FinishedConditions, TaskKind, TaskState, observe},
    },
    state::{
        cached::{BuiltinTask, TaskObject},
        named::Named,
    },
};

#[derive(Default)]
struct Inner {
    /// uid -> (source, facts).
    by_uid: HashMap<String, (Arc<str>, TaskFacts)>,
    /// Sources in the middle of a relist, and what their list holds so far.
    relisting: HashMap<Arc<str>, Vec<TaskFacts>>,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct TaskIndex(Arc<RwLock<Inner>>);

/// What a task object says, as the index keeps it.
pub fn facts_of(kind: TaskKind, obj: &DynamicObject, finished: &FinishedConditions) -> TaskFacts {
    facts(&observe(kind, obj, finished))
}

/// What the index keeps of an adapter's reading.
pub fn facts(state: &TaskState) -> TaskFacts {
    TaskFacts {
        uid: state.uid.clone(),
        finished: state.finished.as_ref().map(|(o, _)| *o),
        deadline: state.deadline,
    }
}

impl TaskIndex {
    /// Applies one watch event of `source`, reading each object with `read`.
    pub fn on_event<K>(&self, source: &Arc<str>, event: &watcher::Event<K>, read: impl Fn(&K) -> Option<TaskFacts>) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(obj) => {
                if let Some(f) = read(obj).filter(|f| !f.uid.is_empty()) {
                    inner.by_uid.insert(f.uid.clone(), (source.clone(), f));
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(f) = read(obj) {
                    inner.by_uid.remove(&f.uid);
                }
            }
            watcher::Event::Init => {
                inner.relisting.insert(source.clone(), Vec::new());
            }
            watcher::Event::InitApply(obj) => {
                if let Some(f) = read(obj).filter(|f| !f.uid.is_empty())
                    && let Some(list) = inner.relisting.get_mut(source)
                {
                    list.push(f);
                }
            }
            watcher::Event::InitDone => {
                let list = inner.relisting.remove(source).unwrap_or_default();
                inner.by_uid.retain(|_, (s, _)| s != source);
                for f in list {
                    inner.by_uid.insert(f.uid.clone(), (source.clone(), f));
                }
            }
        }
    }

    pub fn get(&self, uid: &str) -> Option<TaskFacts> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.by_uid.get(uid).map(|(_, f)| f.clone())
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pods or Jobs by namespace and name, as the task adapter read them: what the grant
/// controller looks up before it asks the API server (see [`Named`] for why not
/// kube's reflector store).
#[derive(Clone, Default)]
pub struct TaskStore(Named<TaskState>);

impl TaskStore {
    pub fn get(&self, namespace: &str, name: &str) -> Option<TaskState> {
        self.0.get(namespace, name)
    }

    /// Applies one watch event.
    pub fn on_event<K: BuiltinTask>(&self, event: &watcher::Event<TaskObject<K>>) {
        self.0.on_event(event, |o| o.state.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::task::Outcome;

    fn facts(uid: &str, finished: Option<Outcome>) -> TaskFacts {
        TaskFacts {
            uid: uid.into(),
            finished,
            deadline: None,
        }
    }

    #[test]
    fn a_relist_replaces_its_source_only_when_complete() {
        let idx = TaskIndex::default();
        let (jobs, pods): (Arc<str>, Arc<str>) = ("jobs".into(), "pods".into());
        let read = |f: &TaskFacts| Some(f.clone());
        idx.on_event(&jobs, &watcher::Event::Apply(facts("j1", None)), read);
        idx.on_event(&pods, &watcher::Event::Apply(facts("p1", None)), read);
        idx.on_event(&jobs, &watcher::Event::Init, read);
        idx.on_event(&jobs, &watcher::Event::InitApply(facts("j2", None)), read);
        // Mid-relist the old entries still answer.
        assert!(idx.get("j1").is_some());
        assert!(idx.get("j2").is_none());
        idx.on_event(&jobs, &watcher::Event::InitDone, read);
        assert!(idx.get("j1").is_none(), "gone from the new list");
        assert!(idx.get("j2").is_some());
        assert!(idx.get("p1").is_some(), "another source's entries stay");
    }

    fn pod(ns: &str, name: &str, phase: &str) -> crate::state::cached::PodTask {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn the_task_store_follows_the_watch_and_swaps_a_relist_in_whole() {
        let store = TaskStore::default();
        store.on_event(&watcher::Event::Apply(pod("a", "p1", "Running")));
        store.on_event(&watcher::Event::Apply(pod("b", "p1", "Running")));
        assert_eq!(store.get("a", "p1").unwrap().uid, "a-p1");
        assert!(store.get("a", "p1").unwrap().finished.is_none());
        store.on_event(&watcher::Event::Apply(pod("a", "p1", "Succeeded")));
        assert_eq!(
            store.get("a", "p1").unwrap().finished.map(|f| f.0),
            Some(Outcome::Succeeded),
            "an update replaces what was read"
        );
        store.on_event(&watcher::Event::Delete(pod("b", "p1", "Running")));
        assert!(store.get("b", "p1").is_none());
        assert!(
            store.get("a", "p1").is_some(),
            "by namespace and name: another namespace's is kept"
        );
        store.on_event::<crate::state::cached::PodKind>(&watcher::Event::Init);
        store.on_event(&watcher::Event::InitApply(pod("a", "p2", "Running")));
        assert!(store.get("a", "p1").is_some(), "mid-relist the old list still answers");
        assert!(store.get("a", "p2").is_none());
        store.on_event::<crate::state::cached::PodKind>(&watcher::Event::InitDone);
        assert!(store.get("a", "p1").is_none(), "gone from the new list");
        assert!(store.get("a", "p2").is_some());
    }

    #[test]
    fn a_finished_or_deleted_task_is_seen_at_once() {
        let idx = TaskIndex::default();
        let src: Arc<str> = "jobs".into();
        let read = |f: &TaskFacts| Some(f.clone());
        idx.on_event(&src, &watcher::Event::Apply(facts("j1", None)), read);
        idx.on_event(
            &src,
            &watcher::Event::Apply(facts("j1", Some(Outcome::Succeeded))),
            read,
        );
        assert_eq!(idx.get("j1").unwrap().finished, Some(Outcome::Succeeded));
        idx.on_event(&src, &watcher::Event::Delete(facts("j1", None)), read);
        assert!(idx.get("j1").is_none());
    }
}
