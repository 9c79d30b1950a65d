//! Kubernetes Events (`events.k8s.io/v1`) for the objects Mandate reconciles, with a
//! bounded memory of recent ones.
//!
//! kube-runtime's `Recorder` keeps every Event it published in the last six minutes,
//! whole (about 2 KiB each), so that a repeat becomes a series; and it walks that
//! whole cache on every publish. Issuing 10,000 grants made it the largest single
//! item of the operator's heap (about 23 MiB) and a quadratic cost of the fill. This
//! one remembers at most [`RECENT`] Events, each as its key's hash, name, namespace
//! and count (like client-go's event aggregation, whose cache is an LRU of 4,096), so
//! a repeat within [`SERIES_WINDOW`] still becomes a series, and memory stays flat.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Mutex,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// Events remembered for series at most.
pub const RECENT: usize = 4096;
/// A repeat within this long of the last one extends its series (kube-runtime's and
/// client-go's window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// An Event already published: enough to extend its series.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    namespace: String,
    count: i32,
    last: Timestamp,
}

/// What to do for one Event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Publish {
    Create,
    /// Patch the series of this Event to `count`.
    Series {
        name: String,
        namespace: String,
        count: i32,
    },
}

/// The bounded memory of recent Events, by key hash; oldest first in `order`.
#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, Seen>,
    order: VecDeque<u64>,
}

impl Recent {
    fn plan(&self, key: u64, now: Timestamp) -> Publish {
        match self.by_key.get(&key) {
            Some(s) if s.last + SERIES_WINDOW > now => Publish::Series {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                count: s.count + 1,
            },
            _ => Publish::Create,
        }
    }

    fn remember(&mut self, key: u64, seen: Seen) {
        if self.by_key.insert(key, seen).is_none() {
            self.order.push_back(key);
        }
        while self.by_key.len() > RECENT {
            let Some(old) = self.order.pop_front() else { break };
            self.by_key.remove(&old);
        }
    }
}

/// Publishes Events as `reporter`.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Mutex<Recent>,
}

/// The same key kube-runtime and client-go aggregate on: who reports, about what,
/// and the event's type, action and reason (not its note).
fn key(reporter: &Reporter, ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reporter.controller.hash(&mut h);
    reporter.instance.hash(&mut h);
    matches!(ev.type_, EventType::Warning).hash(&mut h);
    ev.action.hash(&mut h);
    ev.reason.hash(&mut h);
    for r in std::iter::once(regarding).chain(ev.secondary.as_ref()) {
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(&mut h);
    }
    h.finish()
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            recent: Mutex::default(),
        }
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or_else(|| controller.clone())),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    /// Publishes `ev` about `regarding` (in its namespace, `default` for cluster-scoped
    /// objects), or extends the series of the same Event published moments ago.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key(&self.reporter, ev, regarding);
        let plan = self.recent.lock().unwrap_or_else(|e| e.into_inner()).plan(key, now);
        let seen = match plan {
            Publish::Series { name, namespace, count } => {
                let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
                match events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Seen {
                        name,
                        namespace,
                        count,
                        last: now,
                    },
                    // The Event expired (the API server keeps them an hour): a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => self.create(ev, regarding, now).await?,
                    Err(e) => return Err(e),
                }
            }
            Publish::Create => self.create(ev, regarding, now).await?,
        };
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(key, seen);
        Ok(())
    }

    async fn create(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> Result<Seen, kube::Error> {
        let event = self.event(ev, regarding, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        events.create(&PostParams::default(), &event).await?;
        Ok(Seen {
            name: event.metadata.name.unwrap_or_default(),
            namespace,
            count: 1,
            last: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, last: Timestamp) -> Seen {
        Seen {
            name: name.into(),
            namespace: "ns".into(),
            count: 1,
            last,
        }
    }

    #[test]
    fn a_repeat_within_the_window_extends_the_series_and_a_late_one_is_new() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let mut r = Recent::default();
        assert_eq!(r.plan(7, t0), Publish::Create);
        r.remember(7, seen("g.1", t0));
        assert_eq!(
            r.plan(7, t0 + SignedDuration::from_mins(5)),
            Publish::Series {
                name: "g.1".into(),
                namespace: "ns".into(),
                count: 2
            }
        );
        assert_eq!(r.plan(7, t0 + SERIES_WINDOW), Publish::Create);
        assert_eq!(r.plan(8, t0), Publish::Create, "another key is another event");
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let mut r = Recent::default();
        for k in 0..(RECENT as u64 + 100) {
            r.remember(k, seen("e", t0));
        }
        assert_eq!(r.by_key.len(), RECENT);
        assert_eq!(r.order.len(), RECENT);
        assert_eq!(r.plan(0, t0), Publish::Create, "the oldest was forgotten");
        assert!(matches!(r.plan(RECENT as u64 + 99, t0), Publish::Series { .. }));
        // Remembering a key again does not grow the order.
        r.remember(RECENT as u64 + 99, seen("e", t0));
        assert_eq!(r.order.len(), RECENT);
    }

    #[test]
    fn the_key_ignores_the_note_and_tells_objects_apart() {
        let reporter = Reporter {
            controller: "mandate".into(),
            instance: None,
        };
        let ev = |note: &str| Event {
            type_: EventType::Normal,
            reason: "Issued".into(),
            note: Some(note.into()),
            action: "Issue".into(),
            secondary: None,
        };
        let obj = |uid: &str| ObjectReference {
            kind: Some("ToolGrant".into()),
            namespace: Some("ns".into()),
            name: Some("g".into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        assert_eq!(key(&reporter, &ev("a"), &obj("1")), key(&reporter, &ev("b"), &obj("1")));
        assert_ne!(key(&reporter, &ev("a"), &obj("1")), key(&reporter, &ev("a"), &obj("2")));
    }
}
