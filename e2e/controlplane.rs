//! Proof that the control plane under test is real: the real Job controller, the real
//! garbage collector, and CRDs from `crds/` accepted by the real API server.

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

use crate::support::{
    self, TestNamespace,
    kubelet::{self, Outcome},
    wait::wait_deleted,
    wait_for,
};

pub fn job(name: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "agent", "image": "example.invalid/agent:1" }],
            }},
        },
    }))
    .unwrap()
}

fn job_has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[tokio::test]
async fn api_server_reports_the_pinned_kubernetes_version() {
    let client = support::client().await;
    let info = client.apiserver_version().await.expect("/version answers");
    let pinned = std::fs::read_to_string(support::repo_root().join("e2e/controlplane/KUBE_VERSION")).unwrap();
    assert_eq!(info.git_version, format!("v{}", pinned.trim()));
    // The Rust client is built for the same minor (k8s-openapi's version feature).
    assert_eq!(
        format!("{}.{}", info.major, info.minor),
        format!("1.{}", pinned.trim().split('.').nth(1).unwrap())
    );
}

#[tokio::test]
async fn job_whose_pod_succeeds_is_completed_by_the_real_job_controller() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "job").await;
    let jobs: Api<Job> = ns.api();
    let pods: Api<Pod> = ns.api();
    jobs.create(&PostParams::default(), &job("work")).await.unwrap();
    let pod = kubelet::wait_for_job_pod(&pods, "work").await;
    kubelet::start_pod(&pods, &pod.name_any()).await;
    kubelet::finish_pod(&pods, &pod.name_any(), Outcome::Succeeded).await;
    let done = wait_for(&jobs, "work", "Complete", |j| job_has_condition(j, "Complete")).await;
    assert_eq!(done.status.unwrap().succeeded, Some(1));
    ns.cleanup().await;
}

#[tokio::test]
async fn job_whose_pod_fails_is_failed_by_the_real_job_controller() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "jobfail").await;
    let jobs: Api<Job> = ns.api();
    let pods: Api<Pod> = ns.api();
    jobs.create(&PostParams::default(), &job("work")).await.unwrap();
    kubelet::finish_job_pod(&pods, "work", Outcome::Failed).await;
    wait_for(&jobs, "work", "Failed", |j| job_has_condition(j, "Failed")).await;
    ns.cleanup().await;
}

#[tokio::test]
async fn object_is_garbage_collected_after_its_owner_is_deleted() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = ns.api();
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "owner" } })).unwrap(),
        )
        .await
        .unwrap();
    let child: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "child",
            "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap() }],
        },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &child).await.unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_deleted(&cms, "child", "garbage-collected after its owner").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn crds_from_the_repository_are_established() {
    let client = support::client().await;
    let crds = support::install_crds(&client).await;
    let names: Vec<_> = crds.iter().map(|c| c.name_any()).collect();
    assert_eq!(
        names,
        [
            "agentidentities.mandate.dev",
            "toolgrants.mandate.dev",
            "toolgrantapprovals.mandate.dev",
            "agentpolicies.mandate.dev",
            "certificaterecords.mandate.dev"
        ]
    );
    for crd in crds {
        let accepted = crd.status.unwrap().conditions.unwrap();
        assert!(
            accepted
                .iter()
                .any(|c| c.type_ == "NamesAccepted" && c.status == "True")
        );
    }
}
