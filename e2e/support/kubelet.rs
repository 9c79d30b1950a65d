//! The kubelet's part. Nothing runs Pods on the local control plane, so tests decide
//! how a Pod ends by writing its status, exactly as a kubelet would; the real Job
//! controller then reacts to it.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

use super::TIMEOUT;

/// How a Pod's containers ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// Marks a Pod as started and running (phase Running, `startTime` set).
pub async fn start_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({ "status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status patched to Running")
}

/// Ends a Pod: every container terminated with exit code 0 (Succeeded) or 1 (Failed).
pub async fn finish_pod(pods: &Api<Pod>, name: &str, outcome: Outcome) -> Pod {
    let pod = pods.get(name).await.expect("pod exists");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (phase, code, reason) = match outcome {
        Outcome::Succeeded => ("Succeeded", 0, "Completed"),
        Outcome::Failed => ("Failed", 1, "Error"),
    };
    let containers: Vec<_> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c, "image": "e2e", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now } },
            })
        })
        .collect();
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| t.0.to_string())
        .unwrap_or(now.clone());
    let status = json!({ "status": {
        "phase": phase,
        "startTime": start,
        "conditions": [{ "type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "PodCompleted" }],
        "containerStatuses": statuses,
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status patched")
}

/// Waits until the Job controller has created a Pod for Job `job` and returns it.
pub async fn wait_for_job_pod(pods: &Api<Pod>, job: &str) -> Pod {
    let cfg = watcher::Config::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let mut stream = watcher(pods.clone(), cfg).applied_objects().boxed();
    match tokio::time::timeout(TIMEOUT, stream.try_next()).await {
        Ok(Ok(Some(pod))) => pod,
        Ok(Ok(None)) => panic!("pod watch for job {job} ended"),
        Ok(Err(e)) => panic!("pod watch for job {job} failed: {e}"),
        Err(_) => panic!("timed out waiting for the Job controller to create a pod for {job}"),
    }
}

/// Plays the kubelet for a Job: waits for its Pod, then ends it with `outcome`.
pub async fn finish_job_pod(pods: &Api<Pod>, job: &str, outcome: Outcome) -> Pod {
    let pod = wait_for_job_pod(pods, job).await;
    finish_pod(pods, &pod.name_any(), outcome).await
}
