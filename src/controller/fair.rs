//! Per-namespace fairness for grant reconciles (threat 39).
//!
//! kube-runtime's controller runs reconciles in the order they were scheduled. A
//! namespace that deletes 5,000 grants at once would fill every slot and make a single
//! revocation in another namespace wait behind all 5,000. So the controller itself runs
//! unbounded, and each reconcile first takes a permit from this gate: at most `permits`
//! run at once (the API connections and buffers they hold stay bounded), and a free
//! permit goes to the namespaces with waiters in turn, one reconcile each. A tenant's
//! flood then costs another namespace at most one reconcile per busy namespace, not
//! the flood's length.
//!
//! The permit itself travels through the waiter's channel, so a waiter dropped after it
//! was handed a permit (its reconcile cancelled) drops the permit, which passes it on:
//! no permit is ever lost.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

#[derive(Default)]
struct Inner {
    free: usize,
    /// Namespaces with waiters, in the order they get the next permits.
    turn: VecDeque<String>,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
}

/// Hands out permits to reconcile, round-robin over namespaces.
#[derive(Clone)]
pub struct FairGate {
    inner: Arc<Mutex<Inner>>,
}

/// Held for the length of one reconcile; dropping it hands it to the next waiter.
pub struct Permit {
    gate: Option<Arc<Mutex<Inner>>>,
}

impl FairGate {
    pub fn new(permits: usize) -> FairGate {
        FairGate {
            inner: Arc::new(Mutex::new(Inner {
                free: permits.max(1),
                ..Default::default()
            })),
        }
    }

    /// Waits for a permit for a reconcile in `namespace`.
    pub async fn acquire(&self, namespace: &str) -> Permit {
        let rx = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.free > 0 && inner.turn.is_empty() {
                inner.free -= 1;
                return Permit {
                    gate: Some(self.inner.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = inner.waiting.entry(namespace.to_string()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                inner.turn.push_back(namespace.to_string());
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The gate is gone (the process is stopping): nothing to be fair about.
            Err(_) => Permit { gate: None },
        }
    }

    /// Reconciles waiting for a permit, for the metrics.
    pub fn waiting(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.waiting.values().map(VecDeque::len).sum()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(gate) = self.gate.take() else { return };
        let mut next = Permit {
            gate: Some(gate.clone()),
        };
        let mut inner = gate.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(ns) = inner.turn.pop_front() {
            let Some(queue) = inner.waiting.get_mut(&ns) else {
                continue;
            };
            let Some(tx) = queue.pop_front() else {
                inner.waiting.remove(&ns);
                continue;
            };
            if queue.is_empty() {
                inner.waiting.remove(&ns);
            } else {
                inner.turn.push_back(ns);
            }
            match tx.send(next) {
                Ok(()) => return,
                // That waiter was cancelled: try the next one.
                Err(back) => next = back,
            }
        }
        // Nobody waits: the permit goes back to the pool. `next` must not run this again.
        next.gate = None;
        inner.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains the gate one permit at a time and returns the namespaces in the order
    /// they were served.
    async fn order(
        gate: &FairGate,
        first: Permit,
        mut rxs: Vec<(String, tokio::task::JoinHandle<Permit>)>,
    ) -> Vec<String> {
        let mut served = vec![];
        drop(first);
        while !rxs.is_empty() {
            let i = loop {
                if let Some(i) = rxs.iter().position(|(_, h)| h.is_finished()) {
                    break i;
                }
                tokio::task::yield_now().await;
            };
            let (ns, h) = rxs.remove(i);
            let permit = h.await.unwrap();
            served.push(ns);
            drop(permit);
        }
        assert_eq!(gate.waiting(), 0);
        served
    }

    async fn queue(gate: &FairGate, ns: &str) -> (String, tokio::task::JoinHandle<Permit>) {
        let g = gate.clone();
        let name = ns.to_string();
        let before = gate.waiting();
        let h = tokio::spawn(async move { g.acquire(&name).await });
        // Queued in the order of these calls.
        while gate.waiting() == before {
            tokio::task::yield_now().await;
        }
        (ns.to_string(), h)
    }

    #[tokio::test]
    async fn threat_39_a_flooding_namespace_waits_its_turn_behind_one_reconcile() {
        let gate = FairGate::new(1);
        let first = gate.acquire("flood").await;
        let mut waiters = vec![];
        for _ in 0..50 {
            waiters.push(queue(&gate, "flood").await);
        }
        waiters.push(queue(&gate, "quiet").await);
        let served = order(&gate, first, waiters).await;
        let quiet = served.iter().position(|n| n == "quiet").unwrap();
        assert!(quiet <= 1, "the quiet namespace was served {quiet}th: {served:?}");
    }

    #[tokio::test]
    async fn no_permit_is_lost_when_a_waiter_is_cancelled() {
        let gate = FairGate::new(1);
        let first = gate.acquire("a").await;
        let (_, cancelled) = queue(&gate, "a").await;
        let (_, kept) = queue(&gate, "b").await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(first);
        let permit = tokio::time::timeout(std::time::Duration::from_secs(10), kept)
            .await
            .expect("the permit reached the live waiter")
            .unwrap();
        drop(permit);
        // And it came back to the pool: a new acquire is served at once.
        let again = tokio::time::timeout(std::time::Duration::from_secs(10), gate.acquire("c")).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn at_most_the_permits_run_at_once() {
        let gate = FairGate::new(3);
        let held: Vec<Permit> = futures::future::join_all((0..3).map(|i| {
            let g = gate.clone();
            async move { g.acquire(&format!("ns{i}")).await }
        }))
        .await;
        let (_, fourth) = queue(&gate, "ns0").await;
        assert!(!fourth.is_finished());
        drop(held);
        assert!(fourth.await.is_ok());
    }
}
