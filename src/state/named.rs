//! A watch's objects by namespace and name, each kept only as what Mandate read of it.
//!
//! kube's reflector store holds every object whole: an `Arc`, a 360-byte `ObjectMeta`
//! (most of its fields empty, all of them there) with its strings, and an `ObjectRef`
//! key with two more strings: about 800 bytes per Pod before anything Mandate reads.
//! Where a cache is only ever looked up by name, this keeps a value per object, and
//! its name twice (namespace and name, as keys).
//!
//! Like the reflector, a relist replaces the whole map at once, when its list is
//! complete, so a lookup never sees half a list.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use kube::{Resource, runtime::watcher};

type ByName<V> = HashMap<String, HashMap<String, V>>;

struct Inner<V> {
    /// namespace -> name -> value.
    by_ns: ByName<V>,
    /// The list being received during a relist; swapped in on `InitDone`.
    relist: Option<ByName<V>>,
}

/// Shared, cheap to clone.
pub struct Named<V>(Arc<RwLock<Inner<V>>>);

impl<V> Clone for Named<V> {
    fn clone(&self) -> Self {
        Named(self.0.clone())
    }
}

impl<V> Default for Named<V> {
    fn default() -> Self {
        Named(Arc::new(RwLock::new(Inner {
            by_ns: HashMap::new(),
            relist: None,
        })))
    }
}

fn insert<V>(map: &mut ByName<V>, ns: &str, name: &str, value: V) {
    match map.get_mut(ns) {
        Some(names) => {
            names.insert(name.to_string(), value);
        }
        None => {
            map.insert(ns.to_string(), HashMap::from([(name.to_string(), value)]));
        }
    }
}

impl<V: Clone> Named<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.by_ns.get(namespace)?.get(name).cloned()
    }

    /// What `pick` takes from each value, under the read lock.
    pub fn collect<R, C: FromIterator<R>>(&self, pick: impl FnMut(&V) -> Option<R>) -> C {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_ns
            .values()
            .flat_map(HashMap::values)
            .filter_map(pick)
            .collect()
    }

    /// What `pick` takes from each value in `namespace`, under the read lock.
    pub fn collect_in<R, C: FromIterator<R> + Default>(&self, namespace: &str, pick: impl FnMut(&V) -> Option<R>) -> C {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        match inner.by_ns.get(namespace) {
            Some(names) => names.values().filter_map(pick).collect(),
            None => C::default(),
        }
    }

    /// How many values in `namespace` match.
    pub fn count_in(&self, namespace: &str, mut matches: impl FnMut(&V) -> bool) -> usize {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_ns
            .get(namespace)
            .map_or(0, |names| names.values().filter(|v| matches(v)).count())
    }

    /// Applies one watch event, keeping `read` of each object.
    pub fn on_event<K: Resource>(&self, event: &watcher::Event<K>, read: impl Fn(&K) -> V) {
        fn place<K: Resource>(o: &K) -> (&str, &str) {
            let m = o.meta();
            (
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            )
        }
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(o) => {
                let (ns, name) = place(o);
                insert(&mut inner.by_ns, ns, name, read(o));
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = place(o);
                if let Some(names) = inner.by_ns.get_mut(ns) {
                    names.remove(name);
                    if names.is_empty() {
                        inner.by_ns.remove(ns);
                    }
                }
            }
            watcher::Event::Init => inner.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (ns, name) = place(o);
                let value = read(o);
                match inner.relist.as_mut() {
                    Some(list) => insert(list, ns, name, value),
                    // Outside a relist (never from kube's watcher): the object still counts.
                    None => insert(&mut inner.by_ns, ns, name, value),
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = inner.relist.take() {
                    inner.by_ns = list;
                }
            }
        }
    }
}
