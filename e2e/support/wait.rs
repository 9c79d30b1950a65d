//! Waiting on conditions, never on time: each wait watches the object and returns as
//! soon as the predicate holds, or panics with what it was waiting for at the timeout.

use std::{fmt::Debug, time::Duration};

use kube::{Api, Resource, runtime::wait::await_condition};
use serde::de::DeserializeOwned;

/// Generous enough for a loaded 2-core machine; a healthy run takes a fraction of it.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until object `name` exists and satisfies `pred`; returns it.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, pred: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    wait_for_within(api, name, what, TIMEOUT, pred).await
}

pub async fn wait_for_within<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration, pred: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let cond = move |obj: Option<&K>| obj.is_some_and(&pred);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} disappeared while waiting for {what}"),
        Ok(Err(e)) => panic!("watch failed while waiting for {name} to be {what}: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!("timed out after {timeout:?} waiting for {name} to be {what}; last seen: {last:#?}")
        }
    }
}

/// Waits until object `name` is gone (deleted and finalized).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let cond = |obj: Option<&K>| obj.is_none();
    match tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("watch failed while waiting for {name} to be deleted ({what}): {e}"),
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {name} to be deleted ({what})"),
    }
}

/// Asks `probe` until it returns `Ok`, for answers no watch reports (a decision, a
/// process's readiness endpoint, a log line); panics at the timeout with the last `Err`.
pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {TIMEOUT:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
