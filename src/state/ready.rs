//! Whether a watch cache has been filled, for any number of waiters.
//!
//! kube-runtime's `Store::wait_until_ready` (5.0) keeps a single waker: when several
//! tasks wait on one store, only the last to poll is woken when the initial list
//! lands, and the others wait forever. Reconciles waiting on the Secret cache at start
//! hung that way, and a hung reconcile holds its object's slot in the controller, so
//! every later change to that grant was ignored until the next restart. The store's
//! own controller already waits on it, so any second waiter is at risk.
//!
//! Readiness is therefore read from the watch events themselves: the stream that
//! fills the store also marks a [`Ready`] once the store holds the initial list. A
//! `tokio::sync::watch` channel wakes every waiter.

use kube::runtime::watcher;
use tokio::sync::watch;

/// Marks a cache ready; fed the events of the stream that fills it.
#[derive(Debug)]
pub struct MarkReady(watch::Sender<bool>);

/// Resolves once the cache holds a full list.
#[derive(Clone, Debug)]
pub struct Ready(watch::Receiver<bool>);

/// A new, not yet ready, cache gate.
pub fn gate() -> (MarkReady, Ready) {
    let (tx, rx) = watch::channel(false);
    (MarkReady(tx), Ready(rx))
}

impl MarkReady {
    /// For `inspect_ok` on a reflected watch stream, after `reflect`: the reflector
    /// swaps the initial list into the store on `InitDone`, before passing it on.
    pub fn on_init_done<K>(self) -> impl FnMut(&watcher::Event<K>) {
        move |event| {
            if matches!(event, watcher::Event::InitDone) {
                self.0.send_replace(true);
            }
        }
    }
}

impl Ready {
    /// Whether the cache has been filled once (for readiness probes and decisions).
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the cache has been filled once. `false` when the stream that fills
    /// it is gone first (the operator is stopping): callers then read the API instead.
    pub async fn wait(&self) -> bool {
        self.0.clone().wait_for(|ready| *ready).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Secret;

    use super::*;

    #[tokio::test]
    async fn every_waiter_is_released_when_the_initial_list_lands() {
        let (mark, ready) = gate();
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let ready = ready.clone();
                tokio::spawn(async move { ready.wait().await })
            })
            .collect();
        // Let every waiter register before the list lands.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut feed = mark.on_init_done::<Secret>();
        feed(&watcher::Event::Init);
        feed(&watcher::Event::InitApply(Secret::default()));
        assert!(!*ready.0.borrow(), "ready before the initial list was complete");
        feed(&watcher::Event::InitDone);
        for w in waiters {
            let released = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("a waiter was never woken")
                .unwrap();
            assert!(released);
        }
        // Later waiters return at once, and a relist does not make it unready.
        feed(&watcher::Event::Init);
        assert!(ready.wait().await);
    }

    #[tokio::test]
    async fn waiters_are_released_unready_when_the_stream_is_gone() {
        let (mark, ready) = gate();
        let waiter = tokio::spawn({
            let ready = ready.clone();
            async move { ready.wait().await }
        });
        let feed = mark.on_init_done::<Secret>();
        drop(feed);
        let released = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("a waiter was never woken")
            .unwrap();
        assert!(!released);
    }
}
