//! The grant controller's work queue: fair across namespaces (threat 39), and cheap
//! to wait in.
//!
//! kube-runtime's controller runs reconciles in the order they were scheduled, so a
//! namespace that deletes 5,000 grants at once would make a single revocation in
//! another namespace wait behind all 5,000. Mandate used to run that controller
//! unbounded and make each reconcile wait for a permit from a fair gate. That held
//! every waiting reconcile inside the controller: at 10,000 grants, 10,000 spawned
//! tasks, each with a slot of about 550 bytes in the runner's table and an entry in
//! its scheduler, tables that never shrink once grown (14.5 MiB after the fill,
//! docs/benchmarks.md). Here a waiting grant is only its key, and a fixed number of
//! workers (`--grant-concurrency`) take keys namespace by namespace in turn: a free
//! worker serves the next namespace with keys waiting, one key each. A tenant's
//! flood then costs another namespace at most one reconcile per busy namespace.
//!
//! The semantics are client-go's workqueue: a key waits in the queue at most once; a
//! key being reconciled is handed to no other worker; a key added while it is being
//! reconciled is queued again when that reconcile ends, so no change is missed.
//! Delayed adds (a requeue at renewal time, a retry's backoff) wait in a timer queue,
//! the earliest time for a key winning as in kube's scheduler, and join the queue
//! when due.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::time::{DelayQueue, delay_queue};

use crate::api::ToolGrant;

pub type Key = ObjectRef<ToolGrant>;

/// Past this many entries, an idle queue gives its tables' memory back.
const SHRINK_ABOVE: usize = 1024;

#[derive(Default)]
struct Inner {
    /// Namespaces with keys waiting, in the order they are served.
    turn: VecDeque<String>,
    waiting: HashMap<String, VecDeque<Key>>,
    /// Keys that need a reconcile: waiting, or added while being reconciled.
    dirty: HashSet<Key>,
    /// Keys a worker is reconciling.
    processing: HashSet<Key>,
    closed: bool,
}

impl Inner {
    fn push(&mut self, key: Key) {
        let ns = key.namespace.as_deref().unwrap_or_default();
        match self.waiting.get_mut(ns) {
            Some(queue) => queue.push_back(key),
            None => {
                let ns = ns.to_string();
                self.turn.push_back(ns.clone());
                self.waiting.insert(ns, VecDeque::from([key]));
            }
        }
    }

    fn pop(&mut self) -> Option<Key> {
        while let Some(ns) = self.turn.pop_front() {
            let Some(queue) = self.waiting.get_mut(&ns) else {
                continue;
            };
            let Some(key) = queue.pop_front() else {
                self.waiting.remove(&ns);
                continue;
            };
            if queue.is_empty() {
                self.waiting.remove(&ns);
            } else {
                self.turn.push_back(ns);
            }
            self.dirty.remove(&key);
            self.processing.insert(key.clone());
            if self.dirty.is_empty() && self.dirty.capacity() > SHRINK_ABOVE {
                // A flood has drained: hashbrown never shrinks by itself.
                self.dirty.shrink_to_fit();
                self.waiting.shrink_to_fit();
                self.turn.shrink_to_fit();
            }
            return Some(key);
        }
        None
    }
}

/// Keys of grants to reconcile. Shared: triggers add, workers take.
pub struct WorkQueue {
    inner: Mutex<Inner>,
    /// Wakes a worker when a key was queued (or the queue closed).
    ready: Notify,
    /// Delayed adds, to the timer task.
    later: mpsc::UnboundedSender<(Key, Instant)>,
}

impl WorkQueue {
    /// A new, open queue, and its timer task on the current runtime.
    pub fn new() -> Arc<WorkQueue> {
        let (later, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(WorkQueue {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            later,
        });
        tokio::spawn(timers(Arc::downgrade(&queue), rx));
        queue
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` for a reconcile, unless it already waits for one.
    pub fn add(&self, mut key: Key) {
        // Equality ignores `extra`; the queue need not hold its strings.
        key.extra = Default::default();
        let mut inner = self.lock();
        if inner.closed || inner.dirty.contains(&key) {
            return;
        }
        inner.dirty.insert(key.clone());
        if inner.processing.contains(&key) {
            // Queued again by `done`, after the running reconcile.
            return;
        }
        inner.push(key);
        drop(inner);
        self.ready.notify_one();
    }

    /// Queues `key` once `after` has passed (at once for zero). An earlier pending
    /// time for the same key stands.
    pub fn add_after(&self, key: Key, after: Duration) {
        if after.is_zero() {
            return self.add(key);
        }
        // The timer task lives as long as the queue.
        let _ = self.later.send((key, Instant::now() + after));
    }

    /// The next key to reconcile, once there is one; `None` once the queue is closed.
    /// The caller must call [`WorkQueue::done`] with it when the reconcile ends.
    pub async fn next(&self) -> Option<Key> {
        loop {
            // Registered before looking, so an add in between is not missed.
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if inner.closed {
                    return None;
                }
                if let Some(key) = inner.pop() {
                    if !inner.turn.is_empty() {
                        // More is waiting: pass the wake-up on to another worker.
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Ends the reconcile of `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &Key) {
        let mut inner = self.lock();
        inner.processing.remove(key);
        if inner.dirty.contains(key) && !inner.closed {
            inner.push(key.clone());
            drop(inner);
            self.ready.notify_one();
        }
    }

    /// Stops handing out keys: every waiting worker's `next` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Keys waiting for a worker (not those being reconciled).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.values().map(VecDeque::len).sum()
    }
}

/// Holds delayed adds until they are due; ends with the queue.
async fn timers(queue: Weak<WorkQueue>, mut rx: mpsc::UnboundedReceiver<(Key, Instant)>) {
    let mut delays: DelayQueue<Key> = DelayQueue::new();
    let mut pending: HashMap<Key, (delay_queue::Key, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            add = rx.recv() => {
                let Some((key, at)) = add else { return };
                match pending.get_mut(&key) {
                    Some((_, when)) if *when <= at => {}
                    Some((slot, when)) => {
                        delays.reset_at(slot, at);
                        *when = at;
                    }
                    None => {
                        let slot = delays.insert_at(key.clone(), at);
                        pending.insert(key, (slot, at));
                    }
                }
            }
            Some(due) = delays.next(), if !delays.is_empty() => {
                let key = due.into_inner();
                pending.remove(&key);
                let Some(queue) = queue.upgrade() else { return };
                queue.add(key);
                if pending.is_empty() && pending.capacity() > SHRINK_ABOVE {
                    pending.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> Key {
        ObjectRef::new(name).within(ns)
    }

    async fn take(queue: &WorkQueue) -> Key {
        tokio::time::timeout(Duration::from_secs(10), queue.next())
            .await
            .expect("a key is handed out")
            .expect("the queue is open")
    }

    #[tokio::test]
    async fn threat_39_a_flooding_namespace_waits_its_turn_behind_one_reconcile() {
        let queue = WorkQueue::new();
        for i in 0..50 {
            queue.add(key("flood", &format!("g{i}")));
        }
        queue.add(key("quiet", "revoke-me"));
        let mut served = vec![];
        while queue.waiting() > 0 {
            let k = take(&queue).await;
            queue.done(&k);
            served.push(k);
        }
        assert_eq!(served.len(), 51);
        let quiet = served
            .iter()
            .position(|k| k.namespace.as_deref() == Some("quiet"))
            .unwrap();
        assert!(quiet <= 1, "the quiet namespace was served {quiet}th of 51");
        // Within a namespace, first added, first served.
        let flood: Vec<&str> = served
            .iter()
            .filter(|k| k.name != "revoke-me")
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(flood[..3], ["g0", "g1", "g2"]);
    }

    #[tokio::test]
    async fn a_key_waits_once_however_often_it_is_added() {
        let queue = WorkQueue::new();
        for _ in 0..5 {
            queue.add(key("a", "g"));
        }
        assert_eq!(queue.waiting(), 1);
    }

    #[tokio::test]
    async fn a_key_added_while_reconciled_runs_again_after_and_never_twice_at_once() {
        let queue = WorkQueue::new();
        queue.add(key("a", "g"));
        let k = take(&queue).await;
        queue.add(key("a", "g"));
        assert_eq!(queue.waiting(), 0, "not handed to a second worker while the first runs");
        queue.done(&k);
        assert_eq!(queue.waiting(), 1, "the change that came meanwhile is not lost");
        let again = take(&queue).await;
        assert_eq!(again, k);
        queue.done(&again);
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiting_worker_is_woken_by_an_add() {
        let queue = WorkQueue::new();
        let q = queue.clone();
        let worker = tokio::spawn(async move { q.next().await });
        tokio::task::yield_now().await;
        queue.add(key("a", "g"));
        let got = tokio::time::timeout(Duration::from_secs(10), worker).await;
        assert_eq!(got.expect("woken").unwrap(), Some(key("a", "g")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_add_joins_the_queue_when_due_and_the_earliest_time_wins() {
        let queue = WorkQueue::new();
        queue.add_after(key("a", "g"), Duration::from_secs(60));
        queue.add_after(key("a", "g"), Duration::from_secs(5));
        queue.add_after(key("a", "g"), Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert_eq!(queue.waiting(), 0, "not before it is due");
        // The paused clock jumps to the next timer once every task is idle.
        // Within `take`'s 10 s: the 5 s add, not the 30 or 60 s ones.
        let k = take(&queue).await;
        assert_eq!(k, key("a", "g"));
        queue.done(&k);
        // The later times were folded into the earliest: nothing else is pending.
        let more = tokio::time::timeout(Duration::from_secs(120), queue.next()).await;
        assert!(more.is_err(), "one delayed add per key, at the earliest time");
    }

    #[tokio::test]
    async fn closing_releases_every_waiting_worker() {
        let queue = WorkQueue::new();
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let q = queue.clone();
                tokio::spawn(async move { q.next().await })
            })
            .collect();
        tokio::task::yield_now().await;
        queue.close();
        for w in workers {
            let got = tokio::time::timeout(Duration::from_secs(10), w).await;
            assert_eq!(got.expect("released").unwrap(), None);
        }
        queue.add(key("a", "g"));
        assert_eq!(queue.waiting(), 0, "a closed queue takes nothing");
    }
}
